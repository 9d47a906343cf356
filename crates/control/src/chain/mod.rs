//! Service chains (issue 9, docs/chains.md): an ordered list of flowstate
//! functions on one attach point, where `pass` of one continues in the
//! next and drop, tx and redirect end the chain.
//!
//! Every change (create, add, remove, move, replace) builds a new
//! *generation*: every function loaded again as a link of the chain
//! (`flowstate_codegen::chain`) against its own pinned maps, kept across
//! generations, and a fresh program array ([`generation`]); then the
//! hook's link is switched to the new head with one `bpf_link_update`.
//! A packet runs either the old chain or the new one, whole; each
//! function keeps its flows, globals and counters. The old generation is
//! unpinned only after an RCU grace period, when no packet can still be
//! in it (a program array is emptied when its last pin goes, and a packet
//! in the old chain would otherwise fall out of it at the next hop).
//!
//! Crash safety, as for instances ([`crate::journal`]): each step is
//! journalled before it runs (`/run/flowstate/chains/NAME.journal`, op
//! `chain-create`, `chain-change` or `chain-stop`; the fault injection
//! points are `chain-OP:STEP`); the program on the hook's link decides
//! whether an interrupted change is finished (the new generation's head
//! runs: metadata written, old generation dropped) or undone (the new
//! generation dropped, the old chain untouched). The chain's lock is the
//! instance lock of its name.
//!
//! Each function is visible to `flows`, `flow`, `stats`, `globals` and
//! `events` as `CHAIN/FUNC` ([`open_function`]).

mod generation;
mod store;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use generation::FunctionSource;
use store::ChainJournal;
pub use store::{ChainMeta, FunctionMeta};

use crate::journal::Outcome;
use crate::lock::InstanceLock;
use crate::meta::{source_hash, Meta};
use crate::{kernel, netns, paths, trust, AttachPoint, ControlError, Handle};

/// Steps of `chain create`, in order.
pub const CREATE_STEPS: &[&str] = &["load", "attach", "pin-link", "write-meta"];
/// Steps of a change (add, remove, move, replace), in order.
pub const CHANGE_STEPS: &[&str] = &["load", "swap", "write-meta", "cleanup"];
/// Steps of `chain stop`, in order.
pub const STOP_STEPS: &[&str] = &["detach", "remove"];

/// One function to put in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    /// Its name in the chain; `None`: the program's name.
    pub name: Option<String>,
    pub program_path: PathBuf,
}

/// A chain to create.
#[derive(Debug, Clone)]
pub struct ChainSpec {
    pub name: String,
    pub dev: String,
    pub attach: AttachPoint,
    /// A network namespace under /run/netns; `None`: this one.
    pub netns: Option<String>,
    pub functions: Vec<FunctionSpec>,
}

/// What was done to an interrupted chain change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRepaired {
    pub name: String,
    pub op: String,
    pub step: String,
    pub pid: u32,
    pub outcome: Outcome,
}

impl std::fmt::Display for ChainRepaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.outcome {
            Outcome::Finished => "finished",
            Outcome::Undone => "undone",
        };
        write!(
            f,
            "chain {}: the {} interrupted at step {} (pid {}) was {how}",
            self.name, self.op, self.step, self.pid
        )
    }
}

fn read_function(spec: &FunctionSpec) -> Result<FunctionSource, ControlError> {
    let source = crate::read_source(&spec.program_path)?;
    let program = crate::compile_source(&spec.program_path, &source)?;
    let name = spec.name.clone().unwrap_or_else(|| program.name.clone());
    paths::check_name(&name)?;
    Ok(FunctionSource {
        name,
        source_path: spec.program_path.clone(),
        source,
        program,
    })
}

fn recorded_function(function: &FunctionMeta) -> Result<FunctionSource, ControlError> {
    Ok(FunctionSource {
        name: function.name.clone(),
        source_path: function.source_path.clone(),
        source: function.source.clone(),
        program: crate::compile_source(&function.source_path, &function.source)?,
    })
}

fn check_unique(functions: &[FunctionSource]) -> Result<(), ControlError> {
    for (i, f) in functions.iter().enumerate() {
        if functions[..i].iter().any(|g| g.name == f.name) {
            return Err(ControlError::Chain(format!(
                "two functions of the chain are named {:?}: name them apart (FILE=NAME, or \
                 --name)",
                f.name
            )));
        }
    }
    Ok(())
}

fn function_meta(
    source: &FunctionSource,
    prog_id: u32,
    symbol: &str,
    replaced: u32,
) -> FunctionMeta {
    FunctionMeta {
        name: source.name.clone(),
        source_path: std::fs::canonicalize(&source.source_path)
            .unwrap_or_else(|_| source.source_path.clone()),
        source: source.source.clone(),
        source_hash: source_hash(&source.source),
        program_symbol: symbol.to_string(),
        prog_id,
        replaced,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes the chain's lock and finishes or undoes an interrupted change.
fn lock(name: &str) -> Result<InstanceLock, ControlError> {
    paths::check_name(name)?;
    crate::check_privileges()?;
    let lock = InstanceLock::acquire(name)?;
    repair_locked(name)?;
    Ok(lock)
}

/// The lock of chain `name` for an edit of one of its functions' tables.
pub(crate) fn lock_for_edit(name: &str) -> Result<InstanceLock, ControlError> {
    lock(name)
}

/// Creates chain `spec.name`: loads its functions and attaches the head.
pub fn create(spec: &ChainSpec) -> Result<ChainMeta, ControlError> {
    paths::check_name(&spec.name)?;
    let functions: Vec<FunctionSource> = spec
        .functions
        .iter()
        .map(read_function)
        .collect::<Result<_, _>>()?;
    check_unique(&functions)?;
    crate::check_privileges()?;
    let target = spec.netns.as_deref().map(netns::Target::open).transpose()?;
    let place = match &target {
        Some(t) => t.place.clone(),
        None => netns::current_place()?,
    };
    let ifindex = within(target.as_ref(), || kernel::ifindex(&spec.dev))??;
    flowstate_runtime::ensure_bpffs(flowstate_runtime::BPFFS_ROOT)
        .map_err(|e| ControlError::kernel("mounting bpffs", e))?;
    paths::check_roots(true)?;
    trust::trusted_dir(&store::chains_root(), true)?;
    let _lock = lock(&spec.name)?;
    if store::meta_path(&spec.name).exists()
        || store::chain_dir(&spec.name).exists()
        || paths::meta_path(&spec.name).exists()
    {
        return Err(ControlError::NameTaken(spec.name.clone()));
    }
    let mut meta = ChainMeta {
        version: ChainMeta::new_version(),
        name: spec.name.clone(),
        dev: spec.dev.clone(),
        ifindex,
        attach: spec.attach,
        mode: String::new(),
        netns: place.name.clone(),
        netns_inode: place.inode,
        started_unix_ms: now_ms(),
        generation: 1,
        functions: Vec::new(),
    };
    let mut journal = ChainJournal::new("create", None, Some(meta.clone()));
    journal.step("load")?;
    let mut undo = Undo(Some(UndoPlan::Create(spec.name.clone())));
    let mut generation = generation::load(&spec.name, 1, &functions, spec.attach.hook(), &place)?;
    meta.functions = functions
        .iter()
        .zip(generation.prog_ids.iter().zip(&generation.symbols))
        .map(|(f, (id, symbol))| function_meta(f, *id, symbol, 0))
        .collect();
    journal.new = Some(meta.clone());
    journal.step("attach")?;
    let head = generation.head();
    let (link, mode) = within(target.as_ref(), || {
        head.attach(&spec.dev, spec.attach, aya::programs::LinkOrder::last())
    })??;
    meta.mode = mode;
    journal.new = Some(meta.clone());
    journal.step("pin-link")?;
    let pinned = kernel::pin_link(link, &store::link_pin(&spec.name))?;
    journal.step("write-meta")?;
    meta.save()?;
    undo.disarm();
    journal.finish()?;
    drop(pinned);
    Ok(meta)
}

/// What a failed step takes back, unless disarmed.
struct Undo(Option<UndoPlan>);

enum UndoPlan {
    /// A `create`: everything under the chain's directory.
    Create(String),
    /// A change: the new generation, and the maps of functions it added.
    Change {
        chain: String,
        generation: u64,
        added: Vec<String>,
    },
}

impl Undo {
    fn disarm(&mut self) {
        // UndoPlan has no Drop of its own: dropping it here undoes nothing.
        self.0 = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        match self.0.take() {
            Some(UndoPlan::Create(name)) => {
                let _ = kernel::unpin_link(&store::link_pin(&name));
                let _ = store::remove_tree(&store::chain_dir(&name));
                let _ = ChainJournal::new("create", None, None).finish_named(&name);
            }
            Some(UndoPlan::Change {
                chain,
                generation,
                added,
            }) => {
                let _ = store::remove_tree(&store::generation_dir(&chain, generation));
                for function in &added {
                    let _ = store::remove_tree(&function_dir(&chain, function));
                }
                let _ = ChainJournal::new("change", None, None).finish_named(&chain);
            }
            None => {}
        }
    }
}

fn function_dir(chain: &str, function: &str) -> PathBuf {
    store::chain_dir(chain).join("fn").join(function)
}

/// Adds a function at `at` (0 is the head; `None`: the end).
pub fn add(
    name: &str,
    function: &FunctionSpec,
    at: Option<usize>,
) -> Result<ChainMeta, ControlError> {
    let new = read_function(function)?;
    change(name, "add", move |functions| {
        let at = at.unwrap_or(functions.len());
        if at > functions.len() {
            return Err(ControlError::Chain(format!(
                "position {at} is past the chain's end ({} functions): positions are 0 to {}",
                functions.len(),
                functions.len()
            )));
        }
        functions.insert(at, new);
        Ok(())
    })
}

/// Takes function `function` out of the chain (its table goes with it).
pub fn remove(name: &str, function: &str) -> Result<ChainMeta, ControlError> {
    change(name, "remove", |functions| {
        let index = position_of(functions, function)?;
        if functions.len() == 1 {
            return Err(ControlError::Chain(format!(
                "{function} is the chain's only function: `flowstate chain stop {name}` stops \
                 the chain"
            )));
        }
        functions.remove(index);
        Ok(())
    })
}

/// Moves function `function` to position `to` (0 is the head).
pub fn move_function(name: &str, function: &str, to: usize) -> Result<ChainMeta, ControlError> {
    change(name, "move", |functions| {
        let index = position_of(functions, function)?;
        if to >= functions.len() {
            return Err(ControlError::Chain(format!(
                "position {to} is past the chain's end: positions are 0 to {}",
                functions.len() - 1
            )));
        }
        let f = functions.remove(index);
        functions.insert(to, f);
        Ok(())
    })
}

/// Puts the functions in `order` (every function named once).
pub fn reorder(name: &str, order: &[String]) -> Result<ChainMeta, ControlError> {
    change(name, "reorder", |functions| {
        if order.len() != functions.len() {
            return Err(ControlError::Chain(format!(
                "the new order names {} functions, the chain has {}",
                order.len(),
                functions.len()
            )));
        }
        let mut sorted = Vec::with_capacity(order.len());
        for function in order {
            let index = position_of(functions, function)?;
            sorted.push(functions[index].clone());
        }
        check_unique(&sorted)?;
        *functions = sorted;
        Ok(())
    })
}

/// Replaces function `function`'s program, keeping its table (the new
/// program must read it the same way: same flow key, states and
/// registers, in the same order).
pub fn replace(name: &str, function: &str, program_path: &Path) -> Result<ChainMeta, ControlError> {
    let spec = FunctionSpec {
        name: Some(function.to_string()),
        program_path: program_path.to_path_buf(),
    };
    let new = read_function(&spec)?;
    change(name, "replace", move |functions| {
        let index = position_of(functions, function)?;
        check_same_table(function, &functions[index].program, &new.program)?;
        functions[index] = new;
        Ok(())
    })
}

fn check_same_table(
    function: &str,
    old: &flowstate_lang::ir::Program,
    new: &flowstate_lang::ir::Program,
) -> Result<(), ControlError> {
    let states = |p: &flowstate_lang::ir::Program| -> Vec<String> {
        p.states.iter().map(|s| s.name.clone()).collect()
    };
    let registers = |p: &flowstate_lang::ir::Program| -> Vec<String> {
        p.registers.iter().map(|r| r.name.clone()).collect()
    };
    let globals = |p: &flowstate_lang::ir::Program| -> Vec<String> {
        p.globals.iter().map(|g| g.name.clone()).collect()
    };
    let same = old.lookup_key == new.lookup_key
        && old.update_key == new.update_key
        && states(old) == states(new)
        && registers(old) == registers(new)
        && globals(old) == globals(new)
        && old.capacity == new.capacity
        && old.full_policy == new.full_policy;
    if same {
        Ok(())
    } else {
        Err(ControlError::Chain(format!(
            "{function}: the new program changes the flow table (its key, states, registers, \
             globals, size or policy): a chained function is replaced keeping its table only \
             when those stay; remove it and add the new program to start with an empty table"
        )))
    }
}

fn position_of(functions: &[FunctionSource], function: &str) -> Result<usize, ControlError> {
    functions
        .iter()
        .position(|f| f.name == function)
        .ok_or_else(|| {
            ControlError::Chain(format!(
                "the chain has no function {function:?}; it has: {}",
                functions
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// A change of the function list: a new generation, swapped in whole.
fn change(
    name: &str,
    op: &str,
    edit: impl FnOnce(&mut Vec<FunctionSource>) -> Result<(), ControlError>,
) -> Result<ChainMeta, ControlError> {
    paths::check_name(name)?;
    crate::check_privileges()?;
    let _lock = lock(name)?;
    let old = ChainMeta::load(name)?;
    let mut functions: Vec<FunctionSource> = old
        .functions
        .iter()
        .map(recorded_function)
        .collect::<Result<_, _>>()?;
    edit(&mut functions)?;
    check_unique(&functions)?;
    let generation = old.generation + 1;
    let mut new = ChainMeta {
        generation,
        functions: Vec::new(),
        ..old.clone()
    };
    let added: Vec<String> = functions
        .iter()
        .filter(|f| old.function(&f.name).is_none())
        .map(|f| f.name.clone())
        .collect();
    let mut journal = ChainJournal::new("change", Some(old.clone()), Some(new.clone()));
    journal.step("load")?;
    let mut undo = Undo(Some(UndoPlan::Change {
        chain: name.to_string(),
        generation,
        added,
    }));
    let loaded = generation::load(
        name,
        generation,
        &functions,
        old.attach.hook(),
        &old.place(),
    )?;
    new.functions = functions
        .iter()
        .zip(loaded.prog_ids.iter().zip(&loaded.symbols))
        .map(|(f, (id, symbol))| {
            let replaced = old
                .function(&f.name)
                .map_or(0, |(_, o)| o.replaced + u32::from(o.source != f.source));
            function_meta(f, *id, symbol, replaced)
        })
        .collect();
    journal.new = Some(new.clone());
    journal.step("swap")?;
    let head_pin = store::generation_dir(name, generation).join(&new.functions[0].name);
    kernel::replace_with_pinned(&store::link_pin(name), &head_pin)?;
    undo.disarm();
    journal.step("write-meta")?;
    new.save()?;
    journal.step("cleanup")?;
    drop_old(&old, &new)?;
    journal.finish()?;
    drop(loaded);
    let _ = op;
    Ok(new)
}

/// After the swap: once no packet can still run the old chain, its
/// generation and the tables of the functions no longer in the chain go.
fn drop_old(old: &ChainMeta, new: &ChainMeta) -> Result<(), ControlError> {
    kernel::wait_for_running_programs();
    if old.generation != new.generation {
        store::remove_tree(&store::generation_dir(&old.name, old.generation))?;
    }
    for function in &old.functions {
        if new.function(&function.name).is_none() {
            store::remove_tree(&function_dir(&old.name, &function.name))?;
        }
    }
    Ok(())
}

/// Stops chain `name`: detaches it and removes its pins and metadata.
pub fn stop(name: &str) -> Result<(), ControlError> {
    paths::check_name(name)?;
    crate::check_privileges()?;
    let _lock = lock(name)?;
    let meta = ChainMeta::load(name)?;
    let mut journal = ChainJournal::new("stop", Some(meta), None);
    journal.step("detach")?;
    detach(name)?;
    journal.step("remove")?;
    stop_steps(name)?;
    journal.finish()
}

fn detach(name: &str) -> Result<(), ControlError> {
    let link = store::link_pin(name);
    if link.exists() {
        kernel::unpin_link(&link)?;
    }
    Ok(())
}

fn stop_steps(name: &str) -> Result<(), ControlError> {
    detach(name)?;
    store::remove_tree(&store::chain_dir(name))?;
    store::remove_file(&store::meta_path(name))
}

/// Every chain, in name order.
pub fn list() -> Result<Vec<ChainMeta>, ControlError> {
    let mut out = Vec::new();
    for name in store::chain_names() {
        out.push(ChainMeta::load(&name)?);
    }
    Ok(out)
}

/// Chain `name` as recorded; the running head's program id is checked
/// against the record by [`check`].
pub fn show(name: &str) -> Result<ChainMeta, ControlError> {
    paths::check_name(name)?;
    ChainMeta::load(name)
}

/// Why chain `name` is not running as recorded, if it is not: the link
/// gone or running another program.
pub fn check(meta: &ChainMeta) -> Option<String> {
    let link = store::link_pin(&meta.name);
    match kernel::link_program_id(&link) {
        Ok(id) if Some(id) == meta.functions.first().map(|f| f.prog_id) => None,
        Ok(id) => Some(format!(
            "the hook's link runs program {id}, not the chain's head; `flowstate chain stop {}` \
             cleans up",
            meta.name
        )),
        Err(e) => Some(format!("the hook's link is gone ({e})")),
    }
}

/// Finishes or undoes an interrupted change of chain `name`.
pub fn repair(name: &str) -> Result<Option<ChainRepaired>, ControlError> {
    paths::check_name(name)?;
    if ChainJournal::load(name)?.is_none() {
        return Ok(None);
    }
    crate::check_privileges()?;
    let _lock = InstanceLock::acquire(name)?;
    repair_locked(name)
}

/// [`repair`] for every chain with a journal whose lock is free now.
pub fn repair_all() -> Result<Vec<ChainRepaired>, ControlError> {
    let mut out = Vec::new();
    for name in store::journal_names() {
        crate::check_privileges()?;
        if let Some(_lock) = InstanceLock::try_acquire(&name)? {
            out.extend(repair_locked(&name)?);
        }
    }
    Ok(out)
}

fn repair_locked(name: &str) -> Result<Option<ChainRepaired>, ControlError> {
    let Some(journal) = ChainJournal::load(name)? else {
        return Ok(None);
    };
    let head_runs = |meta: &ChainMeta| -> bool {
        let Some(head) = meta.functions.first() else {
            return false;
        };
        let pin = store::generation_dir(name, meta.generation).join(&head.name);
        let pinned = crate::pinned_program_id(&pin);
        pinned.is_some() && kernel::link_program_id(&store::link_pin(name)).ok() == pinned
    };
    let outcome = match (journal.op.as_str(), &journal.old, &journal.new) {
        ("create", _, Some(new)) if head_runs(new) => {
            new.save()?;
            Outcome::Finished
        }
        ("create", _, _) => {
            stop_steps(name)?;
            Outcome::Undone
        }
        ("change", Some(old), Some(new)) if head_runs(new) => {
            new.save()?;
            drop_old(old, new)?;
            Outcome::Finished
        }
        ("change", Some(old), Some(new)) => {
            store::remove_tree(&store::generation_dir(name, new.generation))?;
            for function in &new.functions {
                if old.function(&function.name).is_none() {
                    store::remove_tree(&function_dir(name, &function.name))?;
                }
            }
            Outcome::Undone
        }
        _ => {
            // A stop (or a journal without its plan): finish stopping.
            stop_steps(name)?;
            Outcome::Finished
        }
    };
    journal.finish()?;
    Ok(Some(ChainRepaired {
        name: name.to_string(),
        op: format!("chain {}", journal.op),
        step: journal.step.clone(),
        pid: journal.pid,
        outcome,
    }))
}

/// The tables of function `function` of chain `chain` (`CHAIN/FUNC`).
pub(crate) fn open_function(chain: &str, function: &str) -> Result<Handle, ControlError> {
    paths::check_name(chain)?;
    paths::check_name(function)?;
    let meta = ChainMeta::load(chain)?;
    let Some((_, f)) = meta.function(function) else {
        return Err(ControlError::NotRunning(format!("{chain}/{function}")));
    };
    let mut instance = Meta::new(
        &format!("{chain}/{function}"),
        &meta.dev,
        meta.ifindex,
        meta.attach,
        &meta.mode,
        f.prog_id,
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(meta.started_unix_ms),
        &f.source_path,
        &f.source,
        &f.program_symbol,
    );
    instance.reloads = f.replaced;
    instance.netns = meta.netns.clone();
    instance.netns_inode = meta.netns_inode;
    crate::handle::open_at(
        instance,
        store::meta_path(chain),
        function_dir(chain, function),
    )
}

/// Runs `f` inside `target`, or here.
fn within<T: Send>(
    target: Option<&netns::Target>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, ControlError> {
    match target {
        Some(target) => target.run(f),
        None => Ok(f()),
    }
}

/// Whether a chain has the name `name` (instance and chain names are
/// one namespace: they share the lock).
pub(crate) fn is_chain(name: &str) -> bool {
    store::meta_path(name).exists() || store::chain_dir(name).exists()
}
