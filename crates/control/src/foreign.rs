//! Programs flowstate did not start: loaded by `ip`, `tc`, `bpftool`,
//! bpfman or anything else from an object `flowstate compile` wrote.
//!
//! The object carries its metadata in `.rodata` (see
//! [`flowstate_codegen::meta`]) and the program references it, so the
//! kernel lists that map among the program's. From a program id (or a
//! pinned program) this module finds the program's maps through its info,
//! reads the metadata, compiles the program text it holds, and opens the
//! flows, globals (the object's `.data`) and counters maps by their kernel
//! names: the same
//! [`Handle`] a `flowstate run` instance has, for reading.

use std::path::PathBuf;

use aya::programs::ProgramInfo;
use flowstate_codegen::{meta, Layout};
use flowstate_runtime::RawMap;

use crate::meta::Meta;
use crate::{AttachPoint, ControlError, Handle};

/// How the program is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramRef {
    /// Its kernel id (`bpftool prog show`).
    Id(u32),
    /// Where it is pinned on bpffs.
    Pin(PathBuf),
}

impl std::fmt::Display for ProgramRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProgramRef::Id(id) => write!(f, "program id {id}"),
            ProgramRef::Pin(path) => write!(f, "program pinned at {}", path.display()),
        }
    }
}

/// Opens the maps of the program `which` names, decoded with the program
/// text its object carries.
pub fn open_program(which: &ProgramRef) -> Result<Handle, ControlError> {
    let info = program_info(which)?;
    let map_ids = info
        .map_ids()
        .map_err(|e| ControlError::kernel(format!("reading the maps of {which}"), e))?
        .unwrap_or_default();
    let mut maps: Vec<Option<(u32, RawMap)>> = map_ids
        .iter()
        .map(|&id| {
            RawMap::from_id(id)
                .map(|m| Some((id, m)))
                .map_err(|e| ControlError::kernel(format!("opening map id {id} of {which}"), e))
        })
        .collect::<Result<_, _>>()?;
    let object_meta = maps
        .iter()
        .flatten()
        .find_map(|(_, map)| metadata_of(map))
        .ok_or_else(|| ControlError::NotFlowstate {
            program: which.to_string(),
        })?
        .map_err(|message| {
            ControlError::kernel(format!("reading the metadata of {which}"), message)
        })?;
    let path = PathBuf::from(format!("<metadata of {which}>"));
    let program = crate::compile_source(&path, &object_meta.text)?;
    let layout = Layout::new(&program, false);
    let globals = match layout.globals_map {
        Some(_) => Some(
            globals_map(&mut maps, &object_meta, &layout).ok_or_else(|| {
                let name = match object_meta.globals {
                    meta::GlobalsForm::Values => "<object>.data (its globals)",
                    meta::GlobalsForm::Offsets => "globals",
                };
                ControlError::kernel(
                    format!("opening the maps of {which}"),
                    format!("the program has no map named {name} (its object's metadata names it)"),
                )
            })?,
        ),
        None => None,
    };
    // Kernel names are cut at 15 bytes (BPF_OBJ_NAME_LEN - 1).
    let mut take = |name: Option<&str>| -> Option<(u32, RawMap)> {
        let name = name?;
        let cut = &name[..name.len().min(15)];
        maps.iter_mut()
            .find(|slot| slot.as_ref().is_some_and(|(_, m)| m.name() == cut))?
            .take()
    };
    let missing = |name: &str| {
        ControlError::kernel(
            format!("opening the maps of {which}"),
            format!("the program has no map named {name} (its object's metadata names it)"),
        )
    };
    let (_, flows) = take(Some(layout.flows_map)).ok_or_else(|| missing(layout.flows_map))?;
    if flows.key_size() != layout.key_size || flows.value_size() != layout.value_size {
        return Err(ControlError::kernel(
            format!("opening the flows map of {which}"),
            format!(
                "it has {}/{} byte keys/values, the program text in its metadata {}/{}",
                flows.key_size(),
                flows.value_size(),
                layout.key_size,
                layout.value_size
            ),
        ));
    }
    let (_, counters) =
        take(Some(layout.counters_map)).ok_or_else(|| missing(layout.counters_map))?;
    let events_id = take(layout.events_map).map(|(id, _)| id);
    let meta = foreign_meta(which, &info, &object_meta);
    Ok(Handle::from_maps(
        meta, program, flows, globals, counters, events_id,
    ))
}

/// Takes the globals' map from `maps`: the object's `.data` (aya names it
/// `.data`, libbpf `<object>.data`), one element of the globals' size; for
/// an object of metadata format 1, the map named `globals`.
fn globals_map(
    maps: &mut [Option<(u32, RawMap)>],
    object_meta: &meta::ObjectMeta,
    layout: &Layout,
) -> Option<RawMap> {
    let fits = |m: &RawMap| match object_meta.globals {
        meta::GlobalsForm::Values => {
            m.name()
                .ends_with(flowstate_codegen::layout::GLOBALS_SECTION)
                && m.max_entries() == 1
                && m.value_size() == layout.globals_size
        }
        meta::GlobalsForm::Offsets => m.name() == flowstate_codegen::layout::GLOBALS_MAP,
    };
    maps.iter_mut()
        .find(|slot| slot.as_ref().is_some_and(|(_, m)| fits(m)))?
        .take()
        .map(|(_, m)| m)
}

fn program_info(which: &ProgramRef) -> Result<ProgramInfo, ControlError> {
    match which {
        ProgramRef::Pin(path) => ProgramInfo::from_pin(path)
            .map_err(|e| ControlError::kernel(format!("opening the {which}"), e)),
        ProgramRef::Id(id) => aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == *id)
            .ok_or_else(|| {
                ControlError::kernel(
                    format!("finding {which}"),
                    "no such program is loaded (see `bpftool prog show`; needs root)",
                )
            }),
    }
}

/// The metadata document if `map` is a `.rodata` holding one: `None` for
/// other maps, `Some(Err)` for a document this flowstate cannot read.
fn metadata_of(map: &RawMap) -> Option<Result<meta::ObjectMeta, String>> {
    // libbpf names it `<object>.rodata`, aya `.rodata`.
    if !map.name().ends_with(".rodata") || map.max_entries() != 1 {
        return None;
    }
    let value = map.array_get(0).ok()?;
    let document = meta::parse(&value);
    match &document {
        Err(e) if e.starts_with("not flowstate metadata") => None,
        _ => Some(document),
    }
}

/// What [`Handle::meta`] says of a program flowstate did not start.
fn foreign_meta(which: &ProgramRef, info: &ProgramInfo, object: &meta::ObjectMeta) -> Meta {
    let started = info.loaded_at().unwrap_or(std::time::UNIX_EPOCH);
    let mut meta = Meta::new(
        &object.program,
        "",
        0,
        AttachPoint::of_hook(object.hook),
        "foreign",
        info.id(),
        started,
        &PathBuf::from(which.to_string()),
        &object.text,
        &object.program,
    );
    meta.source_hash = object.text_hash.clone();
    meta
}
