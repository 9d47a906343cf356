//! How a globals map stores its values, which depends on the flowstate
//! that created it: today the object's `.data` (kernel name `.data`, or
//! libbpf's `<object>.data`) holds each global's value; flowstate before
//! that (metadata format `flowstate-meta/1`) made a map named `globals`
//! holding each global's difference from its initial value.

use flowstate_codegen::meta::GlobalsForm;
use flowstate_codegen::Layout;
use flowstate_runtime::RawMap;

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

/// Why an instance whose globals are in the old form cannot be edited.
pub(crate) fn offsets_refusal(instance: &str) -> String {
    format!(
        "{instance} was started by an earlier flowstate, whose globals map stores each global \
         as its difference from its initial value; this flowstate edits only globals stored as \
         values. `flowstate reload {instance} PROGRAM.fsm` moves them to the new form (their \
         values are kept), or stop it and run it again"
    )
}
