//! How a globals map stores its values, which depends on the flowstate
//! that created it: today the object's `.data` (kernel name `.data`, or
//! libbpf's `<object>.data`) holds each global's value; flowstate before
//! that (metadata format `flowstate-meta/1`) made a map named `globals`
//! holding each global's difference from its initial value.

use flowstate_codegen::meta::GlobalsForm;
use flowstate_codegen::Layout;
use flowstate_lang::ir::Program;
use flowstate_runtime::RawMap;
use std::path::Path;

use crate::ControlError;

/// The kernel name of the map earlier flowstate versions kept globals in.
const OFFSETS_MAP_NAME: &str = "globals";

/// The form of a globals map, by its kernel name.
pub(crate) fn form_of(map: &RawMap) -> GlobalsForm {
    if map.kernel_name() == OFFSETS_MAP_NAME {
        GlobalsForm::Offsets
    } else {
        GlobalsForm::Values
    }
}

/// One value per global of `layout` from a globals map's value.
pub(crate) fn decode(layout: &Layout, form: GlobalsForm, value: &[u8]) -> Vec<i64> {
    match form {
        GlobalsForm::Values => layout.decode_globals(value),
        GlobalsForm::Offsets => layout.decode_globals_as_offsets(value),
    }
}

/// Makes the globals' map of a new instance of `program` and pins it at
/// `path`, starting at the initial values. aya would make it from the
/// object's `.data` without BTF (raw bytes in `bpftool map dump`); made
/// here, its key and value are typed (`struct globals`, one named s64
/// each), and it is named `.data` like the map any loader makes from the
/// object. The object is then built to reuse it (`globals_reused`).
pub(crate) fn create_pinned(
    program: &Program,
    layout: &Layout,
    path: &Path,
) -> Result<(), ControlError> {
    let error = |e: String| ControlError::kernel("creating the globals map", e);
    let Some(value_type) = flowstate_codegen::layout::globals_type(program) else {
        return Ok(());
    };
    let key_type = flowstate_obj::BtfType::u32();
    let (btf, ids) = flowstate_obj::standalone_btf(&[&key_type, &value_type])
        .map_err(|e| error(e.to_string()))?;
    flowstate_runtime::create_pinned_typed_array(
        path,
        flowstate_codegen::layout::GLOBALS_SECTION,
        &btf,
        (ids[0], ids[1]),
        &layout.encode_globals(&layout.globals_initial),
    )
    .map_err(|e| error(e.to_string()))?;
    Ok(())
}

/// Why an instance whose globals are in the old form cannot be edited.
pub(crate) fn offsets_refusal(instance: &str) -> String {
    format!(
        "{instance} was started by an earlier flowstate, whose globals map stores each global \
         as its difference from its initial value; this flowstate edits only globals stored as \
         values. `flowstate reload {instance} PROGRAM.fsm` moves them to the new form (their \
         values are kept), or stop it and run it again"
    )
}
