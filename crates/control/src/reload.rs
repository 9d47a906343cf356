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
//!   and every entry moves into it in the kernel, under the per-flow
//!   protocol, while packets keep coming (states by name, missing ones ->
//!   the initial state; registers by name, new ones -> their constant
//!   initial value or 0); see `flowstate_codegen::migrate` for why no
//!   update is lost. The link runs, in turn: the old program's handoff
//!   build (`swap`), after an RCU grace period the bridge (`bridge`: the
//!   new program pulling each flow from the old table on first sight),
//!   while after another grace period the mover sweeps what is left
//!   (`sweep`, `BPF_PROG_TEST_RUN` once per key), and the new program
//!   (`final-swap`). A key change is refused unless `reset_state`, which
//!   starts from an empty table.
//! - `globals` (the object's `.data`, pinned as `maps/globals`): reused
//!   when the names are unchanged (each holds its value, so initial values
//!   do not matter), else migrated by name; an earlier flowstate's map
//!   (offsets from the initial values) is always migrated.
//! - `counters`: reused when the rows are unchanged, else new (zero).
//! - `events`: reused when both versions send events.
//!
//! Before the swap nothing visible changes: a failure (program errors,
//! verifier) removes the `next_` pins and leaves the running program as it
//! was. After the swap, the `next_` pins replace the old ones (the bridge,
//! the `migration` map and the handoff's `successor` array are removed)
//! and the metadata is rewritten. Global registers of a changed
//! declaration are still copied by user space before the swap: an update
//! the old program makes to them meanwhile is lost (a known limit).
//!
//! In a shared XDP dispatcher (`run --xdp-share`) the swaps go through the
//! instance's slot ([`DispatcherSlot`]): each program is loaded as an
//! extension against the running dispatcher, and a swap is a new
//! dispatcher with that program in the slot (docs/sharing.md). Migrating,
//! the slot runs the handoff build, then an extension build of the bridge,
//! then the new program; the handoff's program array holds a plain XDP
//! build of the bridge (the kernel takes no extension there).

use std::path::{Path, PathBuf};

use flowstate_codegen::migrate::{self, MigrationCounts};
use flowstate_codegen::Layout;
use flowstate_lang::ir::Program;
use flowstate_runtime::{RawMap, UpdateMode};

use crate::handle::row_text;
use crate::journal::{self, Journal, MigrationStage, Op, Outcome, ReloadPlan, SlotBridge};
use crate::lock::InstanceLock;
use crate::meta::{source_hash, Meta};
use crate::shared::DispatcherSlot;
use crate::tc::Attachment;
use crate::{globals, kernel, paths, ControlError};
use flowstate_codegen::meta::GlobalsForm;

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
    // The map holds each global's value, so the same names in the same
    // order keep it (a changed initial value matters only to a new map). A
    // map an earlier flowstate made holds offsets from the initial values:
    // it is replaced, its values carried over by name.
    let old_globals_form = match Layout::new(&old, false).globals_map {
        Some(m) => globals::form_of(&open_map(&paths::pin_dir(name).join("maps").join(m))?),
        None => GlobalsForm::Values,
    };
    let globals_plan =
        if globals_names(&old) == globals_names(&new) && old_globals_form == GlobalsForm::Values {
            Plan::Reuse
        } else {
            Plan::New
        };
    // The link's kind is fixed: compile for where the program runs.
    let hook = meta.attach.hook();
    // A reused globals map must not get the object's initial values.
    let output = crate::codegen(
        &new,
        hook,
        crate::source_text(program_path, &source),
        globals_plan == Plan::Reuse,
    )?;
    let old_layout = Layout::new(&old, false);
    let new_layout = &output.layout;
    // Redirect targets, looked up where the instance runs (the old
    // program's for its handoff build).
    let new_ports = crate::ports::resolve_at(new_layout, &meta.place())?;

    let flows_plan = if !reset_state && same_flows(&old, &new) {
        Plan::Reuse
    } else {
        Plan::New
    };
    if flows_plan == Plan::New {
        // A new flows map would end a shared table silently (see
        // `share_table.rs`): refused before anything is loaded.
        let sharing = crate::share_table::sharing_with(name, &meta);
        if !sharing.is_empty() {
            return Err(ControlError::ShareTable {
                name: name.to_string(),
                with: sharing.join(", "),
                why: "this reload gives it a new flow table (the layout changes, or \
                      --reset-state), which would end the sharing; keep the table's layout, \
                      or stop the instances that share it first"
                    .to_string(),
            });
        }
    }
    let migrate = flows_plan == Plan::New && !reset_state;
    // The programs of a migration, compiled before anything changes.
    let migration_programs = if migrate {
        let codegen_error =
            |e: flowstate_codegen::CodegenError| ControlError::Codegen(e.to_string());
        // The mover runs after the swap: a program it cannot be must stop
        // the reload now.
        migrate::compile_mover(&new, &old, &codegen_options(hook)).map_err(codegen_error)?;
        // All three load after the globals' map they use exists.
        Some((
            migrate::compile_handoff(&old, &codegen_options(hook)).map_err(codegen_error)?,
            migrate::compile_bridge(&new, &old, &codegen_options(hook)).map_err(codegen_error)?,
        ))
    } else {
        None
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
    // In a shared XDP dispatcher every program that goes into the slot is
    // loaded as an extension, against the dispatcher running now.
    let shared = meta.xdp_priority.is_some();
    let slot_target = if shared {
        Some(DispatcherSlot::of(&meta, &[meta.prog_id]).load_target(meta.prog_id)?)
    } else {
        None
    };
    let load_hooked = |object: &[u8],
                       program: &str,
                       pins: &[(&'static str, PathBuf)],
                       ports: &[u32]| match &slot_target {
        Some((target, slot)) => kernel::load_extension(object, program, pins, ports, target, slot),
        None => kernel::load(object, program, pins, ports),
    };
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
    let mut plan = ReloadPlan {
        attempt: attempt.clone(),
        old: meta.clone(),
        new: new_meta,
        renames: renames.clone(),
        prog_staged: prog_staged.clone(),
        dropped,
        migrate,
        migration: migrate.then(|| MigrationStage {
            handoff_id: 0,
            bridge_id: 0,
            bridge_pin: pin_dir.join(paths::staged_name(&attempt, "bridge")),
            migration_pin: maps_dir.join(paths::staged_name(&attempt, migrate::MIGRATION_MAP)),
            successor_pin: maps_dir.join(paths::staged_name(&attempt, migrate::SUCCESSOR_MAP)),
            slot_bridge: shared.then(|| SlotBridge {
                id: 0,
                pin: pin_dir.join(paths::staged_name(&attempt, "slotbridge")),
            }),
        }),
    };
    let mut journal = Journal::new(name, Op::Reload(Box::new(plan.clone())));
    journal.step("stage")?;
    // Until the swap, a failure removes the staged pins and the journal.
    let mut next = NextPins(renames.iter().map(|(staged, _)| staged.clone()).collect());
    next.0.push(prog_staged.clone());
    if let Some(stage) = &plan.migration {
        next.0.extend(stage.pins().into_iter().cloned());
    }
    let mut journal_guard = JournalOnDrop(Some(name));

    let mut loaded = load_hooked(&output.object, &output.program_name, &pins, &new_ports)?;
    loaded.pin_program(&prog_staged)?;
    let new_prog_id = loaded.prog_id()?;
    plan.new.prog_id = new_prog_id;
    // Migrating: the bridge on the new maps and the old table, and the
    // old program's handoff build on the old maps, handing to the bridge.
    let mut handoff = None;
    if let (Some((handoff_out, bridge_out)), Some(stage)) =
        (&migration_programs, plan.migration.as_mut())
    {
        let mut bridge_pins = pins.clone();
        bridge_pins.push((migrate::OLD_FLOWS_MAP, maps_dir.join(old_layout.flows_map)));
        bridge_pins.push((migrate::MIGRATION_MAP, stage.migration_pin.clone()));
        // In a dispatcher the slot runs a second build of the bridge, an
        // extension (`SlotBridge`), loaded first: the bridge the handoff
        // tail-calls is loaded on its maps.
        let slot_build = match stage.slot_bridge.as_mut() {
            Some(slot_bridge) => {
                let mut hooked = load_hooked(
                    &bridge_out.object,
                    &bridge_out.program_name,
                    &bridge_pins,
                    &new_ports,
                )?;
                hooked.pin_program(&slot_bridge.pin)?;
                slot_bridge.id = hooked.prog_id()?;
                Some(hooked)
            }
            None => None,
        };
        // The tail call's target is always a plain program of the hook's
        // type. The kernel takes in a program array only programs of its
        // first user's type, and an extension resolves to its target's
        // (XDP); since Linux 6.12 ("Prevent tailcall infinite loop caused
        // by freplace") it refuses extensions there outright; and since a
        // 2025 change, backported (Debian's 6.12.118 has it: "Enforce
        // expected_attach_type for tailcall compatibility"), it wants the
        // caller's expected attach type, 0 for an extension, where aya
        // loads XDP programs with `BPF_XDP` (see
        // `RawProgram::load_xdp_object`). docs/sharing.md has the story.
        let mut bridge = if let Some(sibling) = &slot_build {
            TailCallTarget::Raw(kernel::load_tail_call_target(
                &bridge_out.object,
                &bridge_out.program_name,
                sibling,
            )?)
        } else {
            TailCallTarget::Aya(kernel::load(
                &bridge_out.object,
                &bridge_out.program_name,
                &bridge_pins,
                &new_ports,
            )?)
        };
        stage.bridge_id = bridge.pin_program(&stage.bridge_pin)?;
        let mut handoff_pins: Vec<(&'static str, PathBuf)> = crate::map_names(&old_layout)
            .into_iter()
            .map(|m| (m, maps_dir.join(m)))
            .collect();
        handoff_pins.push((migrate::SUCCESSOR_MAP, stage.successor_pin.clone()));
        let old_ports = crate::ports::resolve_at(&handoff_out.layout, &meta.place())?;
        let old_again = load_hooked(
            &handoff_out.object,
            &handoff_out.program_name,
            &handoff_pins,
            &old_ports,
        )?;
        stage.handoff_id = old_again.prog_id()?;
        let successor = open_map(&stage.successor_pin)?;
        let bridge_fd = bridge.prog_fd()? as u32;
        successor
            .update(
                &0u32.to_le_bytes(),
                &bridge_fd.to_le_bytes(),
                UpdateMode::Any,
            )
            .map_err(|e| ControlError::kernel("handing the old program over to the bridge", e))?;
        handoff = Some(old_again);
    }
    journal.op = Op::Reload(Box::new(plan.clone()));
    journal.step("migrate")?;

    let migration = Migration {
        old: &old,
        new: &new,
        old_layout: &old_layout,
        new_layout,
    };
    let mut tally = Tally::default();
    if let (Some(map), Plan::New) = (new_layout.globals_map, globals_plan) {
        let new_globals = open_map(&pin_of(&pins, map))?;
        let old_globals = match old_layout.globals_map {
            Some(m) if !reset_state => Some(open_map(&maps_dir.join(m))?),
            _ => None,
        };
        migration.copy_globals(old_globals.as_ref(), &new_globals)?;
    }

    // The swap: from here on the new program (or, migrating, the old
    // one's handoff build) runs, and the reload can only go forward (a
    // failure leaves the journal for the next command).
    journal.step("swap")?;
    let swapped_in = handoff.as_ref().unwrap_or(&loaded);
    let fd = swapped_in.prog_fd()?;
    // SAFETY: the fd belongs to the program `swapped_in` holds, alive here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let swapped_id = swapped_in.prog_id()?;
    Hook::of(&plan, &[swapped_id]).replace_with_fd(fd, swapped_in.program_name())?;
    next.0.clear();
    journal_guard.0 = None;
    drop(loaded);
    drop(handoff);

    roll_forward(
        name,
        &plan,
        Some(&mut journal),
        "bridge",
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
        flows_remapped: tally.remapped,
        flows_lost: tally.lost,
        counters_reset: counters_plan == Plan::New,
        source_hash: plan.new.source_hash,
    })
}

/// The bridge a migration's handoff tail-calls, as loaded (see where it
/// is loaded).
enum TailCallTarget {
    Aya(kernel::LoadedObject),
    Raw(flowstate_runtime::RawProgram),
}

impl TailCallTarget {
    /// Pins the program at `path`; its id.
    fn pin_program(&mut self, path: &Path) -> Result<u32, ControlError> {
        match self {
            TailCallTarget::Aya(object) => {
                object.pin_program(path)?;
                object.prog_id()
            }
            TailCallTarget::Raw(program) => {
                crate::links::obj_pin(program.fd(), path).map_err(|e| {
                    ControlError::kernel(format!("pinning the bridge at {}", path.display()), e)
                })?;
                aya::programs::ProgramInfo::from_pin(path)
                    .map(|info| info.id())
                    .map_err(|e| ControlError::kernel("reading the bridge's id", e))
            }
        }
    }

    fn prog_fd(&self) -> Result<std::os::fd::RawFd, ControlError> {
        match self {
            TailCallTarget::Aya(object) => object.prog_fd(),
            TailCallTarget::Raw(program) => Ok(std::os::fd::AsRawFd::as_raw_fd(&program.fd())),
        }
    }
}

/// Options of the migration's programs (handoff, bridge, mover), which
/// load after every globals' map they use exists.
fn codegen_options(hook: flowstate_lang::ir::Hook) -> flowstate_codegen::Options {
    flowstate_codegen::Options {
        hook: Some(hook),
        target: crate::host::target(),
        globals_reused: true,
        ..flowstate_codegen::Options::default()
    }
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
    let link = Hook::of(plan, &[]);
    // A repair runs without a journal of its own (it finishes another's).
    let repairing = journal.is_none();
    let steps = journal::RELOAD_STEPS;
    let begin = steps.iter().position(|s| *s == from).unwrap_or(0);
    for step in &steps[begin..] {
        if let Some(j) = journal.as_deref_mut() {
            j.step(step)?;
        }
        match (*step, &plan.migration) {
            ("bridge", Some(stage)) => {
                // No packet of the program replaced at `swap` is still
                // running: those of the handoff build know about moves.
                kernel::wait_for_running_programs();
                link.replace_with_pinned(stage.hooked_bridge_pin(), repairing)?;
            }
            ("sweep", Some(stage)) => {
                // The handoff build has stopped: the bridge stops
                // claiming keys in the old table, and the mover moves
                // what is left.
                kernel::wait_for_running_programs();
                let control = open_map(&stage.migration_pin)?;
                control
                    .array_set(migrate::MIGRATION_CONTROL, &migrate::drained_value())
                    .map_err(|e| ControlError::kernel("writing the migration's control word", e))?;
                migration.sweep(plan, stage, &maps_dir)?;
                let counts = MigrationCounts::decode(
                    &control
                        .array_get(migrate::MIGRATION_COUNTS)
                        .map_err(|e| ControlError::kernel("reading the migration's counts", e))?,
                );
                tally.remapped = counts.remapped as usize;
                tally.lost = (counts.lost + counts.conflicts) as usize;
            }
            ("final-swap", Some(_)) => {
                link.replace_with_pinned(&plan.prog_staged, repairing)?;
            }
            ("rename", _) => {
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
                if let Some(stage) = &plan.migration {
                    for path in stage.pins() {
                        let _ = std::fs::remove_file(path);
                    }
                }
                if plan.prog_staged.exists() {
                    let prog = pin_dir.join("prog");
                    let _ = std::fs::remove_file(&prog);
                    std::fs::rename(&plan.prog_staged, &prog).map_err(|e| {
                        ControlError::kernel(format!("renaming {}", plan.prog_staged.display()), e)
                    })?;
                }
            }
            ("write-meta", _) => plan.new.save(&paths::meta_path(name))?,
            _ => {}
        }
    }
    Ok(())
}

/// Where the instance's program runs: alone on its link or clsact filter,
/// or in a slot of a shared XDP dispatcher (see [`DispatcherSlot`]).
enum Hook {
    Alone(Attachment),
    Slot(DispatcherSlot),
}

impl Hook {
    /// The hook of the reload's instance; in a dispatcher, the slot that
    /// runs one of the reload's programs (or `extra`).
    fn of(plan: &ReloadPlan, extra: &[u32]) -> Hook {
        if plan.old.xdp_priority.is_none() {
            return Hook::Alone(Attachment::of(&plan.old));
        }
        let mut ours = vec![plan.old.prog_id, plan.new.prog_id];
        if let Some(stage) = &plan.migration {
            ours.push(stage.handoff_id);
            ours.push(stage.bridge_id);
            ours.extend(stage.slot_bridge.as_ref().map(|b| b.id));
        }
        ours.extend_from_slice(extra);
        Hook::Slot(DispatcherSlot::of(&plan.old, &ours))
    }

    fn replace_with_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), ControlError> {
        match self {
            Hook::Alone(attachment) => attachment.replace_with_fd(fd, name),
            Hook::Slot(slot) => slot.swap_in(fd),
        }
    }

    /// Puts the pinned program where the instance runs. When repairing,
    /// an attachment the kernel has severed (its interface is gone,
    /// `ENOLINK`; a dispatcher no longer running any of ours) runs nothing
    /// and has no traffic to hand over: the swap is skipped and the rest
    /// of the reload (maps, pins, metadata) still completes, so that
    /// `stop` can then remove the instance. A reload in progress reports
    /// it instead.
    fn replace_with_pinned(&self, prog: &Path, repairing: bool) -> Result<(), ControlError> {
        match self {
            Hook::Alone(link) if repairing => link.replace_unless_severed(prog).map(drop),
            Hook::Alone(link) => link.replace_with_pinned(prog),
            Hook::Slot(slot) => slot.swap_in_pinned(prog, repairing),
        }
    }

    /// The program running there; `Ok(None)` when nothing of ours runs
    /// (a clsact filter or dispatcher gone with its interface).
    fn program_id(&self) -> Result<Option<u32>, ControlError> {
        match self {
            Hook::Alone(attachment) => match attachment.program_id() {
                Ok(id) => Ok(Some(id)),
                Err(_) if matches!(attachment, Attachment::Filter { .. }) => Ok(None),
                Err(e) => Err(e),
            },
            Hook::Slot(slot) => slot.running(),
        }
    }
}

/// Finishes or undoes an interrupted reload: undone when the link runs the
/// old program (nothing swapped), finished from the step the program on
/// the link shows was reached otherwise.
pub(crate) fn repair(
    name: &str,
    journal: &Journal,
    plan: &ReloadPlan,
) -> Result<Outcome, ControlError> {
    let running = match Hook::of(plan, &[]).program_id()? {
        Some(id) => id,
        // A clsact filter or a dispatcher gone with its interface runs
        // nothing: undone before the swap, else finished (its swaps
        // skipped).
        None => {
            if journal.reached(journal::RELOAD_STEPS, "bridge") {
                plan.new.prog_id
            } else {
                plan.old.prog_id
            }
        }
    };
    let stage = plan.migration.as_ref();
    let reached = if plan.new.prog_id != 0 && running == plan.new.prog_id {
        if plan.migrate {
            "rename"
        } else {
            "bridge"
        }
    } else if stage.is_some_and(|s| s.is_bridge(running)) {
        "sweep"
    } else if stage.is_some_and(|s| s.handoff_id != 0 && running == s.handoff_id) {
        "bridge"
    } else if running == plan.old.prog_id {
        for (staged, _) in &plan.renames {
            let _ = std::fs::remove_file(staged);
        }
        let _ = std::fs::remove_file(&plan.prog_staged);
        if let Some(stage) = stage {
            for path in stage.pins() {
                let _ = std::fs::remove_file(path);
            }
        }
        return Ok(Outcome::Undone);
    } else {
        return Err(ControlError::kernel(
            format!("repairing {name}"),
            format!(
                "the link runs program {running}, none of the reload's (old {}, new {})",
                plan.old.prog_id, plan.new.prog_id
            ),
        ));
    };
    let old = crate::compile_source(&plan.old.source_path, &plan.old.source)?;
    let new = crate::compile_source(&plan.new.source_path, &plan.new.source)?;
    let (old_layout, new_layout) = (Layout::new(&old, false), Layout::new(&new, false));
    let migration = Migration {
        old: &old,
        new: &new,
        old_layout: &old_layout,
        new_layout: &new_layout,
    };
    // The later of the journal's step and the one the link shows.
    let from = if journal.reached(journal::RELOAD_STEPS, reached) {
        journal.step.as_str()
    } else {
        reached
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

fn globals_names(p: &Program) -> Vec<&str> {
    p.globals.iter().map(|g| g.name.as_str()).collect()
}

fn rows_text(p: &Program) -> Vec<String> {
    p.rows.iter().map(|r| row_text(p, r)).collect()
}

#[derive(Default)]
struct Tally {
    /// Flows whose state was mapped to the initial state.
    remapped: usize,
    /// Flows that did not fit the new table.
    lost: usize,
}

struct Migration<'a> {
    old: &'a Program,
    new: &'a Program,
    old_layout: &'a Layout,
    new_layout: &'a Layout,
}

impl Migration<'_> {
    /// Moves every flow left in the old table with the mover (see
    /// `flowstate_codegen::migrate`), until none is left: the bridge and
    /// the mover race for flows, and each one moves a flow at most once.
    fn sweep(
        &self,
        plan: &ReloadPlan,
        stage: &MigrationStage,
        maps_dir: &Path,
    ) -> Result<(), ControlError> {
        let hook = plan.old.attach.hook();
        let output = migrate::compile_mover(self.new, self.old, &codegen_options(hook))
            .map_err(|e| ControlError::Codegen(e.to_string()))?;
        // The new maps where they are now (staged or reused).
        let mut pins: Vec<(&'static str, PathBuf)> = crate::map_names(self.new_layout)
            .into_iter()
            .map(|m| {
                let current = maps_dir.join(m);
                let staged = plan.renames.iter().find(|(_, c)| *c == current);
                (m, staged.map_or(current.clone(), |(s, _)| s.clone()))
            })
            .collect();
        let old_flows = maps_dir.join(self.old_layout.flows_map);
        pins.push((migrate::OLD_FLOWS_MAP, old_flows.clone()));
        pins.push((migrate::MIGRATION_MAP, stage.migration_pin.clone()));
        // The mover only moves entries: it never reaches a verdict.
        let mover = kernel::load(&output.object, &output.program_name, &pins, &[])?;
        let old_map = open_map(&old_flows)?;
        let state_offset = self.old_layout.state_offset;
        for _pass in 0..3 {
            let left: Vec<Vec<u8>> = old_map
                .entries()
                .map_err(|e| ControlError::kernel("reading the old flows map", e))?
                .into_iter()
                .filter(|(_, value)| {
                    value.get(state_offset..state_offset + 4)
                        != Some(&migrate::MOVED_STATE.to_le_bytes())
                })
                .map(|(key, _)| key)
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            for key in left {
                // The kernel takes no test packet shorter than an
                // Ethernet header.
                let mut packet = key.clone();
                packet.resize(packet.len().max(14), 0);
                // An entry it could not move (held for its whole budget)
                // is found again by the next pass.
                if mover.test_run(&packet)? != migrate::MOVER_DONE {
                    continue;
                }
            }
        }
        Err(ControlError::kernel(
            "moving flows to the new table",
            "entries stayed in the old table (locked) after three passes; `flowstate repair` \
             tries again",
        ))
    }

    /// Globals by name; new ones (or all, without an old map) take their
    /// initial value.
    fn copy_globals(&self, old_map: Option<&RawMap>, new_map: &RawMap) -> Result<(), ControlError> {
        let old_values = match old_map {
            Some(m) => globals::decode(
                self.old_layout,
                globals::form_of(m),
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
        let conversion = migrate::Conversion::new(&old, &new);
        // A (index 0) is index 1 in the new program, B 0; C is gone
        // (the initial state, counted as remapped).
        use flowstate_lang::ir::StateId;
        assert_eq!(
            conversion.states,
            [Some(StateId(1)), Some(StateId(0)), None]
        );
        // z is new (its initial value), x carries.
        assert_eq!(
            conversion.registers,
            [
                migrate::RegisterSource::Initial(7),
                migrate::RegisterSource::Old(0)
            ]
        );
        assert!(!same_flows(&old, &new));
    }

    #[test]
    fn new_rows_alone_keep_the_flows_map() {
        let v2 = V1.replace("x = x + 1", "x = x + 2");
        let (old, new) = (program(V1), program(&v2));
        assert!(same_flows(&old, &new));
        assert_ne!(rows_text(&old), rows_text(&new));
        assert_eq!(globals_names(&old), globals_names(&new));
    }
}
