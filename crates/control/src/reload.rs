//! Hot replacement: a new version of a running program, swapped in on the
//! pinned link with `bpf_link_update`, keeping the state.
//!
//! Each map of the new program is either the running one, reused through
//! its pin (aya's `map_pin_path` opens it instead of creating one), or a
//! new one pinned beside it as `maps/next_<map>` (bpffs refuses names
//! with dots):
//!
//! - `flows`: reused when states, registers, key, capacity and full policy
//!   are unchanged, so not a single update is lost. Otherwise a new map,
//!   filled before the swap with every entry migrated (states by name,
//!   missing ones -> the initial state; registers by name, new ones -> their
//!   constant initial value or 0), and topped up after the swap with the
//!   entries the old program wrote meanwhile. A key change is refused
//!   unless `reset_state`, which starts from an empty table.
//! - `globals`: reused when the names are unchanged, else migrated by name.
//! - `counters`: reused when the rows are unchanged, else new (zero).
//! - `events`: reused when both versions send events.
//!
//! Before the swap nothing visible changes: a failure (program errors,
//! verifier, migration) removes the `next_` pins and leaves the running
//! program as it was. After the swap, the `next_` pins replace the old ones
//! and the metadata is rewritten.

use std::path::{Path, PathBuf};

use flowstate_codegen::{EntryView, Layout};
use flowstate_lang::ir::{Program, StateId};
use flowstate_runtime::{RawMap, UpdateMode};

use crate::handle::{initial_registers, row_text};
use crate::journal::{self, Journal, Op, Outcome, ReloadPlan};
use crate::lock::InstanceLock;
use crate::meta::{source_hash, Meta};
use crate::{kernel, paths, ControlError};

/// What happened to the state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowsMigration {
    /// Same layout: the new program uses the running map.
    Reused,
    /// New layout: entries copied into a new map, by name.
    Migrated,
    /// `reset_state`: the new program starts from an empty table.
    Reset,
}

/// The outcome of [`reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub old_prog_id: u32,
    pub new_prog_id: u32,
    pub flows: FlowsMigration,
    /// Entries in the new program's table right after the swap.
    pub flows_carried: usize,
    /// Entries whose state no longer exists, now in the initial state.
    pub flows_remapped: usize,
    /// Entries that did not fit the new table (smaller capacity).
    pub flows_lost: usize,
    /// Whether the per-row counters restarted from zero (rows changed).
    pub counters_reset: bool,
    pub source_hash: String,
}

/// How a map of the new program is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Reuse,
    New,
}

/// Pins to remove if the reload fails before the swap.
struct NextPins(Vec<PathBuf>);

impl Drop for NextPins {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes the journal of a reload that failed before its swap (the
/// failure undid it: the staged pins went with [`NextPins`]).
struct JournalOnDrop<'a>(Option<&'a str>);

impl Drop for JournalOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            let _ = journal::remove(name);
        }
    }
}

/// A name no other reload attempt uses: pid and time, in hex.
fn attempt_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Replaces the program of instance `name` by the one in `program_path`,
/// atomically, keeping its state (see the module doc).
///
/// Holds the instance lock throughout (a concurrent reload waits, then
/// reloads the program this one left) and journals each step
/// ([`journal::RELOAD_STEPS`]): one killed before its swap is undone by
/// the next command, one killed after it is finished.
pub fn reload(
    name: &str,
    program_path: &Path,
    reset_state: bool,
) -> Result<ReloadReport, ControlError> {
    paths::check_name(name)?;
    let source = crate::read_source(program_path)?;
    let new = crate::compile_source(program_path, &source)?;
    crate::check_privileges()?;
    let _lock = InstanceLock::acquire(name)?;
    journal::repair_locked(name)?;
    let meta_path = paths::meta_path(name);
    if !meta_path.exists() {
        return Err(ControlError::NotRunning(name.to_string()));
    }
    let meta = Meta::load(&meta_path)?;
    let old = crate::compile_source(&meta.source_path, &meta.source)?;
    if old.lookup_key != new.lookup_key && !reset_state {
        let show = |p: &Program| {
            p.lookup_key
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(ControlError::KeyLayoutChanged {
            old: show(&old),
            new: show(&new),
        });
    }
    // The link's kind is fixed: compile for where the program runs.
    let output = crate::codegen(&new, meta.attach.hook())?;
    let old_layout = Layout::new(&old, false);
    let new_layout = &output.layout;

    let flows_plan = if !reset_state && same_flows(&old, &new) {
        Plan::Reuse
    } else {
        Plan::New
    };
    // The map stores each global as its distance from its initial value
    // (a zeroed map reads as the initial values), so initial values count.
    let globals_plan = if globals_decl(&old) == globals_decl(&new) {
        Plan::Reuse
    } else {
        Plan::New
    };
    let counters_plan = if rows_text(&old) == rows_text(&new) {
        Plan::Reuse
    } else {
        Plan::New
    };
    let events_plan =
        if old_layout.events_map.is_some() && old_layout.key_size == new_layout.key_size {
            Plan::Reuse
        } else {
            Plan::New
        };
    let plan_of = |map: &str| match map {
        m if m == new_layout.flows_map => flows_plan,
        m if Some(m) == new_layout.globals_map => globals_plan,
        m if m == new_layout.counters_map => counters_plan,
        m if Some(m) == new_layout.events_map => events_plan,
        _ => Plan::New,
    };

    let attempt = attempt_id();
    let pin_dir = paths::pin_dir(name);
    let maps_dir = pin_dir.join("maps");
    let mut pins = Vec::new();
    let mut renames = Vec::new();
    for map in crate::map_names(new_layout) {
        let current = maps_dir.join(map);
        match plan_of(map) {
            Plan::Reuse => pins.push((map, current)),
            Plan::New => {
                let staged = maps_dir.join(paths::staged_name(&attempt, map));
                pins.push((map, staged.clone()));
                renames.push((staged, current));
            }
        }
    }
    let kept = crate::map_names(new_layout);
    let dropped = crate::map_names(&old_layout)
        .into_iter()
        .filter(|m| !kept.contains(m))
        .map(|m| maps_dir.join(m))
        .collect();
    let prog_staged = pin_dir.join(paths::staged_name(&attempt, "prog"));
    let mut new_meta = meta.clone();
    new_meta.prog_id = 0;
    new_meta.source = source;
    new_meta.source_hash = source_hash(&new_meta.source);
    new_meta.source_path =
        std::fs::canonicalize(program_path).unwrap_or_else(|_| program_path.to_path_buf());
    new_meta.program_symbol = output.program_name.clone();
    new_meta.reloads += 1;
    let migrate = flows_plan == Plan::New && !reset_state;
    let mut plan = ReloadPlan {
        attempt,
        old: meta.clone(),
        new: new_meta,
        renames: renames.clone(),
        prog_staged: prog_staged.clone(),
        dropped,
        migrate,
        bridge: None,
    };
    let mut journal = Journal::new(name, Op::Reload(Box::new(plan.clone())));
    journal.step("stage")?;
    // Until the swap, a failure removes the staged pins and the journal.
    let mut next = NextPins(renames.iter().map(|(staged, _)| staged.clone()).collect());
    next.0.push(prog_staged.clone());
    let mut journal_guard = JournalOnDrop(Some(name));

    let mut loaded = kernel::load(&output.object, &output.program_name, &pins)?;
    loaded.pin_program(&prog_staged)?;
    let new_prog_id = loaded.prog_id()?;
    plan.new.prog_id = new_prog_id;
    journal.op = Op::Reload(Box::new(plan.clone()));
    journal.step("migrate")?;

    let new_flows = open_map(&pin_of(&pins, new_layout.flows_map))?;
    let old_flows = open_map(&maps_dir.join(old_layout.flows_map))?;
    let migration = Migration {
        old: &old,
        new: &new,
        old_layout: &old_layout,
        new_layout,
    };
    let mut tally = Tally::default();
    if migrate {
        migration.copy_flows(&old_flows, &new_flows, &mut tally, false)?;
    }
    if let (Some(map), Plan::New) = (new_layout.globals_map, globals_plan) {
        let new_globals = open_map(&pin_of(&pins, map))?;
        let old_globals = match old_layout.globals_map {
            Some(m) if !reset_state => Some(open_map(&maps_dir.join(m))?),
            _ => None,
        };
        migration.copy_globals(old_globals.as_ref(), &new_globals)?;
    }

    // The swap: from here on the new program runs, and the reload can only
    // go forward (a failure leaves the journal for the next command).
    journal.step("swap")?;
    loaded.replace(&pin_dir.join("link"), meta.attach)?;
    next.0.clear();
    journal_guard.0 = None;
    drop(loaded);

    roll_forward(
        name,
        &plan,
        Some(&mut journal),
        "sweep",
        &migration,
        &mut tally,
    )?;
    journal.finish()?;

    let flows_carried = open_map(&maps_dir.join(new_layout.flows_map))?
        .keys()
        .map_or(0, |k| k.len());
    Ok(ReloadReport {
        old_prog_id: meta.prog_id,
        new_prog_id,
        flows: match flows_plan {
            Plan::Reuse => FlowsMigration::Reused,
            Plan::New if reset_state => FlowsMigration::Reset,
            Plan::New => FlowsMigration::Migrated,
        },
        flows_carried,
        flows_remapped: tally.remapped.len(),
        flows_lost: tally.lost,
        counters_reset: counters_plan == Plan::New,
        source_hash: plan.new.source_hash,
    })
}

fn open_map(path: &Path) -> Result<RawMap, ControlError> {
    RawMap::from_pin(path)
        .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))
}

/// The steps after the swap, from `from` on (each one idempotent, so a
/// repair may run again the step it was interrupted at).
fn roll_forward(
    name: &str,
    plan: &ReloadPlan,
    mut journal: Option<&mut Journal>,
    from: &str,
    migration: &Migration,
    tally: &mut Tally,
) -> Result<(), ControlError> {
    let pin_dir = paths::pin_dir(name);
    let maps_dir = pin_dir.join("maps");
    let steps = journal::RELOAD_STEPS;
    let begin = steps.iter().position(|s| *s == from).unwrap_or(0);
    for step in &steps[begin..] {
        if let Some(j) = journal.as_deref_mut() {
            j.step(step)?;
        }
        match *step {
            "sweep" if plan.migrate => {
                // Entries the old program created or touched while we
                // copied.
                let flows = migration.new_layout.flows_map;
                let current = maps_dir.join(flows);
                let staged = plan
                    .renames
                    .iter()
                    .find(|(_, c)| *c == current)
                    .map(|(s, _)| s.clone());
                if let Some(staged) = staged.filter(|s| s.exists()) {
                    let old_flows = open_map(&maps_dir.join(migration.old_layout.flows_map))?;
                    let new_flows = open_map(&staged)?;
                    migration.copy_flows(&old_flows, &new_flows, tally, true)?;
                }
            }
            "rename" => {
                for (staged, current) in &plan.renames {
                    if staged.exists() {
                        let _ = std::fs::remove_file(current);
                        std::fs::rename(staged, current).map_err(|e| {
                            ControlError::kernel(format!("renaming {}", staged.display()), e)
                        })?;
                    }
                }
                // Maps the new program no longer has (e.g. no more
                // `controller`).
                for path in &plan.dropped {
                    let _ = std::fs::remove_file(path);
                }
                if plan.prog_staged.exists() {
                    let prog = pin_dir.join("prog");
                    let _ = std::fs::remove_file(&prog);
                    std::fs::rename(&plan.prog_staged, &prog).map_err(|e| {
                        ControlError::kernel(format!("renaming {}", plan.prog_staged.display()), e)
                    })?;
                }
            }
            "write-meta" => plan.new.save(&paths::meta_path(name))?,
            _ => {}
        }
    }
    Ok(())
}

/// Finishes or undoes an interrupted reload: finished when the link runs
/// the new program (the swap happened), undone when it runs the old one.
pub(crate) fn repair(
    name: &str,
    journal: &Journal,
    plan: &ReloadPlan,
) -> Result<Outcome, ControlError> {
    let link = paths::pin_dir(name).join("link");
    let running = kernel::link_program_id(&link)?;
    let swapped = plan.new.prog_id != 0 && running == plan.new.prog_id;
    if !swapped {
        if running != plan.old.prog_id {
            return Err(ControlError::kernel(
                format!("repairing {name}"),
                format!(
                    "the link runs program {running}, neither the old ({}) nor the new ({}) one",
                    plan.old.prog_id, plan.new.prog_id
                ),
            ));
        }
        for (staged, _) in &plan.renames {
            let _ = std::fs::remove_file(staged);
        }
        let _ = std::fs::remove_file(&plan.prog_staged);
        return Ok(Outcome::Undone);
    }
    let old = crate::compile_source(&plan.old.source_path, &plan.old.source)?;
    let new = crate::compile_source(&plan.new.source_path, &plan.new.source)?;
    let (old_layout, new_layout) = (Layout::new(&old, false), Layout::new(&new, false));
    let migration = Migration {
        old: &old,
        new: &new,
        old_layout: &old_layout,
        new_layout: &new_layout,
    };
    let from = if journal.reached(journal::RELOAD_STEPS, "sweep") {
        journal.step.as_str()
    } else {
        "sweep"
    };
    roll_forward(name, plan, None, from, &migration, &mut Tally::default())?;
    Ok(Outcome::Finished)
}

fn pin_of(pins: &[(&'static str, PathBuf)], map: &str) -> PathBuf {
    pins.iter()
        .find(|(m, _)| *m == map)
        .map(|(_, p)| p.clone())
        .unwrap_or_default()
}

/// Whether the new program reads the running state table exactly as the
/// old one wrote it.
fn same_flows(old: &Program, new: &Program) -> bool {
    let states = |p: &Program| p.states.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let registers = |p: &Program| {
        p.registers
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    old.lookup_key == new.lookup_key
        && states(old) == states(new)
        && registers(old) == registers(new)
        && old.capacity == new.capacity
        && old.full_policy == new.full_policy
}

fn globals_decl(p: &Program) -> Vec<(String, i64)> {
    p.globals.iter().map(|g| (g.name.clone(), g.init)).collect()
}

fn rows_text(p: &Program) -> Vec<String> {
    p.rows.iter().map(|r| row_text(p, r)).collect()
}

#[derive(Default)]
struct Tally {
    /// Keys whose state was mapped to the initial state.
    remapped: std::collections::HashSet<Vec<u8>>,
    lost: usize,
}

struct Migration<'a> {
    old: &'a Program,
    new: &'a Program,
    old_layout: &'a Layout,
    new_layout: &'a Layout,
}

impl Migration<'_> {
    /// An old entry in the new layout; `true` when its state was remapped.
    fn entry(&self, old: &EntryView) -> (EntryView, bool) {
        let state_name = self.old.states.get(old.state.0 as usize).map(|s| &s.name);
        let state = state_name.and_then(|n| self.new.state_by_name(n));
        let initial = initial_registers(self.new);
        let registers = self
            .new
            .registers
            .iter()
            .zip(initial)
            .map(|(r, init)| {
                self.old
                    .registers
                    .iter()
                    .position(|o| o.name == r.name)
                    .and_then(|i| old.registers.get(i).copied())
                    .unwrap_or(init)
            })
            .collect();
        (
            EntryView {
                state: state.unwrap_or(StateId(0)),
                registers,
                created: old.created,
                last_seen: old.last_seen,
            },
            state.is_none(),
        )
    }

    /// Copies every old entry into `new_map`. With `top_up`, only entries
    /// missing from `new_map` or seen more recently in the old map.
    fn copy_flows(
        &self,
        old_map: &RawMap,
        new_map: &RawMap,
        tally: &mut Tally,
        top_up: bool,
    ) -> Result<(), ControlError> {
        let entries = old_map
            .entries()
            .map_err(|e| ControlError::kernel("reading the old flows map", e))?;
        for (key, value) in entries {
            let old_entry = self.old_layout.decode_entry(&value);
            if top_up {
                let current = new_map
                    .lookup(&key)
                    .map_err(|e| ControlError::kernel("reading the new flows map", e))?;
                if current.is_some_and(|c| {
                    self.new_layout.decode_entry(&c).last_seen >= old_entry.last_seen
                }) {
                    continue;
                }
            }
            let (entry, remapped) = self.entry(&old_entry);
            match new_map.update(&key, &self.new_layout.encode_entry(&entry), UpdateMode::Any) {
                Ok(()) => {
                    if remapped {
                        tally.remapped.insert(key);
                    }
                }
                // A full table (smaller capacity) refuses the rest.
                Err(_) if !top_up => tally.lost += 1,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Globals by name; new ones (or all, without an old map) take their
    /// initial value.
    fn copy_globals(&self, old_map: Option<&RawMap>, new_map: &RawMap) -> Result<(), ControlError> {
        let old_values = match old_map {
            Some(m) => self.old_layout.decode_globals(
                &m.array_get(0)
                    .map_err(|e| ControlError::kernel("reading the old globals", e))?,
            ),
            None => Vec::new(),
        };
        let values: Vec<i64> = self
            .new
            .globals
            .iter()
            .map(|g| {
                self.old
                    .globals
                    .iter()
                    .position(|o| o.name == g.name)
                    .and_then(|i| old_values.get(i).copied())
                    .unwrap_or(g.init)
            })
            .collect();
        new_map
            .array_set(0, &self.new_layout.encode_globals(&values))
            .map_err(|e| ControlError::kernel("writing the globals", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(text: &str) -> Program {
        flowstate_lang::compile(text).unwrap().program
    }

    const V1: &str = "program p\nhook xdp\nflow ip.src\nstates A, B, C\nregisters x = 1, y = 2\n\
                      default pass\ntable\n  A * => pass, x = x + 1, next B\nend\n";

    #[test]
    fn migration_maps_states_and_registers_by_name() {
        let v2 = "program p\nhook xdp\nflow ip.src\nstates B, A\nregisters z = 7, x = 0\n\
                  default pass\ntable\n  A * => pass, next B\nend\n";
        let (old, new) = (program(V1), program(v2));
        let (ol, nl) = (Layout::new(&old, false), Layout::new(&new, false));
        let m = Migration {
            old: &old,
            new: &new,
            old_layout: &ol,
            new_layout: &nl,
        };
        let entry = |state, regs: Vec<i64>| EntryView {
            state: StateId(state),
            registers: regs,
            created: 5,
            last_seen: 9,
        };
        // A (index 0) is index 1 in the new program; x carries, z is new.
        let (e, remapped) = m.entry(&entry(0, vec![41, 42]));
        assert_eq!(e, entry(1, vec![7, 41]));
        assert!(!remapped);
        // C is gone: initial state (B), counted as remapped.
        let (e, remapped) = m.entry(&entry(2, vec![3, 4]));
        assert_eq!(e.state, StateId(0));
        assert!(remapped);
        assert!(!same_flows(&old, &new));
    }

    #[test]
    fn new_rows_alone_keep_the_flows_map() {
        let v2 = V1.replace("x = x + 1", "x = x + 2");
        let (old, new) = (program(V1), program(&v2));
        assert!(same_flows(&old, &new));
        assert_ne!(rows_text(&old), rows_text(&new));
        assert_eq!(globals_decl(&old), globals_decl(&new));
    }
}
