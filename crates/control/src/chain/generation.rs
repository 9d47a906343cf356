//! Loading one generation of a chain: every function compiled as a link
//! of the chain (`flowstate_codegen::Options::chain`), loaded against its
//! own pinned maps (created on its first generation, reused after, so its
//! state is kept) and a fresh program array, whose slots are then filled.
//! Nothing is attached here: the caller swaps the hook's link to the
//! head (see the `chain` module doc).

use std::path::PathBuf;

use flowstate_codegen::chain::{ChainLink, CHAIN_MAP, MAX_FUNCTIONS};
use flowstate_lang::ir::{Hook, Program};
use flowstate_runtime::{RawMap, UpdateMode};

use super::store;
use crate::kernel::{self, LoadedObject};
use crate::netns::Place;
use crate::{globals, host, ports, trust, ControlError};

/// A function to load: its name in the chain and its program.
#[derive(Debug, Clone)]
pub(crate) struct FunctionSource {
    pub name: String,
    pub source_path: PathBuf,
    pub source: String,
    pub program: Program,
}

/// A generation in the kernel; its programs and array are pinned, so
/// dropping it unloads nothing.
pub(crate) struct Generation {
    pub prog_ids: Vec<u32>,
    pub symbols: Vec<String>,
    /// Kept open until the caller is done with them.
    _objects: Vec<LoadedObject>,
}

impl Generation {
    /// The head's program, which the hook's link runs.
    pub fn head(&mut self) -> &mut LoadedObject {
        &mut self._objects[0]
    }
}

/// Loads `functions` (chain order) as generation `generation` of chain
/// `chain`, pinned under its `gen/G` directory. The caller removes that
/// directory (and any function maps it did not have before) on failure.
pub(crate) fn load(
    chain: &str,
    generation: u64,
    functions: &[FunctionSource],
    hook: Hook,
    place: &Place,
) -> Result<Generation, ControlError> {
    if functions.is_empty() || functions.len() > MAX_FUNCTIONS as usize {
        return Err(ControlError::Chain(format!(
            "a chain holds 1 to {MAX_FUNCTIONS} functions (asked for {}): the kernel follows \
             at most 33 tail calls per packet",
            functions.len()
        )));
    }
    let chain_dir = store::chain_dir(chain);
    trust::trusted_dir(&store::chains_root(), true)?;
    trust::create_private_dir(&chain_dir)?;
    trust::create_private_dir(&chain_dir.join("fn"))?;
    trust::create_private_dir(&chain_dir.join("gen"))?;
    let gen_dir = store::generation_dir(chain, generation);
    trust::create_private_dir(&gen_dir)?;
    let array_pin = gen_dir.join("array");

    let mut objects = Vec::with_capacity(functions.len());
    let mut prog_ids = Vec::with_capacity(functions.len());
    let mut symbols = Vec::with_capacity(functions.len());
    for (position, function) in functions.iter().enumerate() {
        let program = &function.program;
        let options = flowstate_codegen::Options {
            hook: Some(hook),
            source: crate::source_text(&function.source_path, &function.source),
            target: host::target(),
            globals_reused: !program.globals.is_empty(),
            chain: Some(ChainLink::after(position as u32)),
            ..flowstate_codegen::Options::default()
        };
        let output = flowstate_codegen::compile(program, &options)
            .map_err(|e| ControlError::Codegen(format!("{}: {e}", function.name)))?;
        let fn_dir = store::chain_dir(chain).join("fn").join(&function.name);
        let maps_dir = store::function_maps(chain, &function.name);
        trust::create_private_dir(&fn_dir)?;
        trust::create_private_dir(&maps_dir)?;
        check_kept_table(&function.name, &output.layout, &maps_dir)?;
        if let Some(map) = output.layout.globals_map {
            let path = maps_dir.join(map);
            if !path.exists() {
                globals::create_pinned(program, &output.layout, &path)?;
            }
        }
        let mut pins: Vec<(&'static str, PathBuf)> = crate::map_names(&output.layout)
            .into_iter()
            .map(|m| (m, maps_dir.join(m)))
            .collect();
        pins.push((CHAIN_MAP, array_pin.clone()));
        let port_indexes = ports::resolve_at(&output.layout, place)?;
        let mut loaded = kernel::load(&output.object, &output.program_name, &pins, &port_indexes)?;
        loaded.pin_program(&gen_dir.join(&function.name))?;
        prog_ids.push(loaded.prog_id()?);
        symbols.push(output.program_name.clone());
        objects.push(loaded);
    }
    // Every function but the head waits in its slot; the head is run by
    // the hook's link.
    let array = RawMap::from_pin(&array_pin)
        .map_err(|e| ControlError::kernel(format!("opening {}", array_pin.display()), e))?;
    for (slot, object) in objects.iter().enumerate().skip(1) {
        let fd = object.prog_fd()? as u32;
        array
            .update(
                &(slot as u32).to_le_bytes(),
                &fd.to_le_bytes(),
                UpdateMode::Any,
            )
            .map_err(|e| ControlError::kernel("filling the chain's program array", e))?;
    }
    Ok(Generation {
        prog_ids,
        symbols,
        _objects: objects,
    })
}

/// A function's table is kept across generations only when the new
/// program reads it the same way (see `replace`); the sizes are checked
/// here too, so that a mismatch is refused plainly, not by the loader.
fn check_kept_table(
    function: &str,
    layout: &flowstate_codegen::Layout,
    maps_dir: &std::path::Path,
) -> Result<(), ControlError> {
    let path = maps_dir.join(layout.flows_map);
    if !path.exists() {
        return Ok(());
    }
    let flows = RawMap::from_pin(&path)
        .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))?;
    if flows.key_size() != layout.key_size || flows.value_size() != layout.value_size {
        return Err(ControlError::Chain(format!(
            "{function}: the new program's flow table has {}/{} byte keys/values, the running \
             one {}/{}: a chained function keeps its table only across programs with the same \
             flow key, states and registers; remove the function and add it again to start it \
             with an empty table",
            layout.key_size,
            layout.value_size,
            flows.key_size(),
            flows.value_size()
        )));
    }
    Ok(())
}
