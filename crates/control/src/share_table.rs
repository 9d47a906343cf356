//! `run --share-table INSTANCE`: a new instance that reads and writes the
//! flows map of a running one (one firewall state seen from two
//! interfaces, or from ingress and egress of one host).
//!
//! How: before the new program loads, the running instance's flows map is
//! opened from its pin and pinned a second time in the new instance's own
//! maps directory; the load then reuses that pin as it reuses any pinned
//! map. Each instance holds its own pin, so either can be stopped first
//! and the other keeps the table, and every command that opens an
//! instance's maps (`flows`, `flow`, edits, `reload`) sees the shared one.
//! Per-flow atomicity is the same protocol as two CPUs running one program
//! (the difftest `shared_table` suite tests two programs on one map).
//!
//! Refused, before anything is loaded, when the tables' layouts differ:
//! the programs must have the same flow and update keys, states (and
//! timeouts), registers (and initial values), capacity and full policy
//! (`flowstate_interp::check_shareable`), and the pinned map's type and
//! sizes must be those the new program expects.
//!
//! Limits: a reload that changes the table's layout (a migrating reload)
//! gives the reloaded instance a new map, which ends the sharing; such a
//! reload of an instance that shares is refused.

use std::path::Path;

use flowstate_codegen::layout::Layout;
use flowstate_lang::ir::Program;
use flowstate_runtime::RawMap;

use crate::meta::Meta;
use crate::{compile_source, paths, ControlError};

/// Pins `with`'s flows map as `maps_dir/<flows map>`, after checking that
/// `program` (laid out as `layout`) may share it.
pub(crate) fn pin_shared_flows(
    with: &str,
    name: &str,
    program: &Program,
    layout: &Layout,
    maps_dir: &Path,
) -> Result<(), ControlError> {
    let refuse = |why: String| ControlError::ShareTable {
        name: name.to_string(),
        with: with.to_string(),
        why: format!("{why}; nothing was run"),
    };
    let meta_path = paths::meta_path(with);
    if !meta_path.exists() {
        return Err(ControlError::NotRunning(with.to_string()));
    }
    let meta = Meta::load(&meta_path)?;
    let theirs = compile_source(&meta.source_path, &meta.source)?;
    flowstate_interp::check_shareable(&theirs, program).map_err(|e| refuse(e.to_string()))?;
    let pin = paths::pin_dir(with).join("maps").join(layout.flows_map);
    let map = RawMap::from_pin(&pin).map_err(|e| {
        refuse(format!(
            "its flows map is not pinned at {} ({e}); `flowstate list` says what is wrong \
             with it",
            pin.display()
        ))
    })?;
    let expected = (layout.key_size, layout.value_size, program.capacity);
    let found = (map.key_size(), map.value_size(), map.max_entries());
    if expected != found {
        return Err(refuse(format!(
            "its flows map has keys of {} bytes, values of {} bytes and {} entries, this \
             program's would have {}, {} and {}: was it built by another flowstate version? \
             Reload it first",
            found.0, found.1, found.2, expected.0, expected.1, expected.2
        )));
    }
    let data = aya::maps::MapData::from_pin(&pin)
        .map_err(|e| ControlError::kernel(format!("opening {}", pin.display()), e))?;
    let ours = maps_dir.join(layout.flows_map);
    data.pin(&ours).map_err(|e| {
        ControlError::kernel(format!("pinning the shared table at {}", ours.display()), e)
    })?;
    Ok(())
}

/// The instances that share a table with `name` (recorded either way),
/// for refusing a change that would end the sharing.
pub(crate) fn sharing_with(name: &str, meta: &Meta) -> Vec<String> {
    let mut names: Vec<String> = meta.shared_table.iter().cloned().collect();
    for other in paths::meta_names().unwrap_or_default() {
        if other == name {
            continue;
        }
        if let Ok(theirs) = Meta::load(&paths::meta_path(&other)) {
            if theirs.shared_table.as_deref() == Some(name) {
                names.push(other);
            }
        }
    }
    names
}
