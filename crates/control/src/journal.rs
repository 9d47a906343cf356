//! The per-instance journal, `/run/flowstate/NAME.journal`: what a
//! multi-step change (run, reload, stop) was about to do, so that the next
//! command on the instance finishes or undoes it.
//!
//! Protocol: before each step, the command writes the journal with that
//! step's name and everything needed to finish or undo the change (a
//! temporary file, fsynced, renamed over the journal, the directory
//! fsynced), and only then performs the step; when the change is complete,
//! it removes the journal. A journal on disk therefore names the step that
//! may or may not have happened; every repair action is written so that
//! it is right in both cases (idempotent).
//!
//! Invariants:
//! - Only the holder of the instance lock ([`crate::lock`]) writes,
//!   repairs or removes a journal.
//! - A journal exists if and only if a change was interrupted or is in
//!   progress (under the lock).
//! - After [`repair`], the metadata, the pins and the program on the link
//!   agree: an interrupted `run` is either complete (its link was pinned)
//!   or gone without a trace; an interrupted `reload` is either complete
//!   (the link ran the new program) or undone (every staged pin removed,
//!   the old program and its maps untouched); an interrupted `stop` is
//!   complete.
//!
//! Fault injection, for tests only: `FLOWSTATE_TEST_CRASH_AT=STEP` makes
//! the command SIGKILL itself right after journaling STEP (so the step has
//! not run); `FLOWSTATE_TEST_SIGINT_AT=STEP` sends it SIGINT there
//! instead; `FLOWSTATE_TEST_FAIL_AT=STEP` makes the step fail with an
//! error, as a refusal of the kernel there would. STEP is `op:step`, e.g. `reload:swap` (see [`RUN_STEPS`],
//! [`RELOAD_STEPS`], [`STOP_STEPS`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::meta::Meta;
use crate::{paths, ControlError};

/// Bumped when the format changes incompatibly.
const FORMAT_VERSION: u32 = 1;

/// The steps of `run`, in order.
pub const RUN_STEPS: &[&str] = &["pin-maps", "pin-prog", "attach", "pin-link", "write-meta"];
/// The steps of `reload`, in order. `bridge`, `sweep` and `final-swap`
/// do something only when the flows map is migrated (see
/// [`crate::reload`]): `swap` then puts the old program's handoff build
/// on the link, `bridge` the new program reading the old table through,
/// `sweep` moves the flows left, `final-swap` puts the new program.
pub const RELOAD_STEPS: &[&str] = &[
    "stage",
    "migrate",
    "swap",
    "bridge",
    "sweep",
    "final-swap",
    "rename",
    "write-meta",
];
/// The steps of `stop`, in order.
pub const STOP_STEPS: &[&str] = &[
    "leave-dispatcher",
    "unpin-link",
    "remove-pins",
    "remove-meta",
];

/// One interrupted (or running) change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub version: u32,
    pub name: String,
    pub pid: u32,
    /// The step about to run (or running).
    pub step: String,
    pub op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Op {
    /// `meta`: what the metadata will be, known from `pin-link` on.
    Run {
        meta: Option<Box<Meta>>,
    },
    Reload(Box<ReloadPlan>),
    Stop,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Run { .. } => "run",
            Op::Reload(_) => "reload",
            Op::Stop => "stop",
        }
    }
}

/// What a reload does, recorded before it touches anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReloadPlan {
    /// Unique per attempt: staged pins carry it in their names, so two
    /// attempts (or a leftover) never share a pin.
    pub attempt: String,
    /// The metadata before the reload.
    pub old: Meta,
    /// The metadata after it; `prog_id` is the final program's, known
    /// from `migrate` on (0 before).
    pub new: Meta,
    /// Staged map pins and the pins they replace.
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// The staged pin of the final program.
    pub prog_staged: PathBuf,
    /// Pins of maps the new program no longer has.
    pub dropped: Vec<PathBuf>,
    /// The flows map is migrated (not reused, not reset).
    pub migrate: bool,
    /// Migrating: the extra programs and pins (names known from `stage`,
    /// program ids from `migrate`).
    pub migration: Option<MigrationStage>,
}

/// The programs and pins of a migrating reload besides the final ones
/// (see `flowstate_codegen::migrate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MigrationStage {
    /// The old program's handoff build: on the link from `swap` to
    /// `bridge`.
    pub handoff_id: u32,
    /// The bridge (the new program reading the old table through): on
    /// the link from `bridge` to `final-swap`; pinned until `rename`.
    pub bridge_id: u32,
    pub bridge_pin: PathBuf,
    /// The `migration` map (counters and the `drained` word).
    pub migration_pin: PathBuf,
    /// The handoff build's `successor` array (slot 0: the bridge).
    pub successor_pin: PathBuf,
    /// In a shared XDP dispatcher: the bridge loaded a second time, for
    /// the slot (the one in `successor`, an unattached extension, is only
    /// ever tail-called). Known from `migrate` on; none elsewhere.
    #[serde(default)]
    pub slot_bridge: Option<SlotBridge>,
}

/// The bridge as the extension a dispatcher slot runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SlotBridge {
    pub id: u32,
    pub pin: PathBuf,
}

impl MigrationStage {
    /// Every pin it makes.
    pub fn pins(&self) -> Vec<&PathBuf> {
        let mut pins = vec![&self.bridge_pin, &self.migration_pin, &self.successor_pin];
        pins.extend(self.slot_bridge.as_ref().map(|b| &b.pin));
        pins
    }

    /// The bridge program that goes where the instance runs at `bridge`.
    pub fn hooked_bridge_pin(&self) -> &PathBuf {
        self.slot_bridge
            .as_ref()
            .map_or(&self.bridge_pin, |b| &b.pin)
    }

    /// Whether `prog_id` is the bridge (either build).
    pub fn is_bridge(&self, prog_id: u32) -> bool {
        prog_id != 0
            && (prog_id == self.bridge_id
                || self.slot_bridge.as_ref().is_some_and(|b| b.id == prog_id))
    }
}

/// How [`repair`] left an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub name: String,
    /// `run`, `reload` or `stop`.
    pub op: &'static str,
    /// The step it was interrupted at.
    pub step: String,
    /// The pid of the interrupted command.
    pub pid: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The change was completed.
    Finished,
    /// The change was undone: the instance is as it was before it.
    Undone,
}

impl std::fmt::Display for Repaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.outcome {
            Outcome::Finished => "finished",
            Outcome::Undone => "undone",
        };
        write!(
            f,
            "{}: the {} interrupted at step {} (pid {}) was {how}",
            self.name, self.op, self.step, self.pid
        )
    }
}

impl Journal {
    pub fn new(name: &str, op: Op) -> Journal {
        Journal {
            version: FORMAT_VERSION,
            name: name.to_string(),
            pid: std::process::id(),
            step: String::new(),
            op,
        }
    }

    /// Records that `step` is about to run (durably), then runs the test
    /// fault injection for it.
    pub fn step(&mut self, step: &str) -> Result<(), ControlError> {
        self.step = step.to_string();
        self.save()?;
        let point = format!("{}:{step}", self.op.name());
        crash_point(&point);
        fail_point(&point)
    }

    fn save(&self) -> Result<(), ControlError> {
        let path = paths::journal_path(&self.name);
        let error =
            |e: std::io::Error| ControlError::kernel(format!("writing {}", path.display()), e);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ControlError::kernel("encoding the journal", e))?;
        let dir = paths::meta_dir();
        crate::trust::trusted_dir(&dir, true)?;
        let tmp = path.with_extension("journal-tmp");
        {
            let mut file = crate::trust::create_private_file(&tmp).map_err(error)?;
            file.write_all(&text).map_err(error)?;
            file.sync_all().map_err(error)?;
        }
        std::fs::rename(&tmp, &path).map_err(error)?;
        sync_dir(&dir);
        Ok(())
    }

    pub fn load(name: &str) -> Result<Option<Journal>, ControlError> {
        let path = paths::journal_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ControlError::kernel(
                    format!("reading {}", path.display()),
                    e,
                ))
            }
        };
        let journal: Journal = serde_json::from_str(&text).map_err(|e| ControlError::Metadata {
            path: path.clone(),
            message: format!("unreadable journal ({e}); inspect it, then remove it"),
        })?;
        if journal.version != FORMAT_VERSION || journal.name != name {
            return Err(ControlError::Metadata {
                path,
                message: format!(
                    "journal of format {} for {:?} (this flowstate writes {FORMAT_VERSION} for \
                     {name:?})",
                    journal.version, journal.name
                ),
            });
        }
        Ok(Some(journal))
    }

    /// The change is complete (or undone): forget it.
    pub fn op_name(&self) -> &'static str {
        self.op.name()
    }

    pub fn finish(self) -> Result<(), ControlError> {
        remove(&self.name)
    }

    /// Whether the journal's step comes at or after `step` in `steps`.
    pub fn reached(&self, steps: &[&str], step: &str) -> bool {
        let at = |s: &str| steps.iter().position(|x| *x == s);
        matches!((at(&self.step), at(step)), (Some(a), Some(b)) if a >= b)
    }
}

pub(crate) fn remove(name: &str) -> Result<(), ControlError> {
    let path = paths::journal_path(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(&paths::meta_dir());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ControlError::kernel(
            format!("removing {}", path.display()),
            e,
        )),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Test fault injection (see the module doc).
pub(crate) fn crash_point(point: &str) {
    let matches = |var: &str| std::env::var(var).is_ok_and(|v| v == point);
    if matches("FLOWSTATE_TEST_CRASH_AT") {
        // SAFETY: signalling ourselves; SIGKILL does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    if matches("FLOWSTATE_TEST_SIGINT_AT") {
        // SAFETY: signalling ourselves. With the default disposition the
        // process ends here, without running destructors, as on Ctrl-C.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGINT);
        }
        // A handler may defer the exit: never go past the point.
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// Test fault injection: the step fails as a refusal of the kernel would
/// (see the module doc).
pub(crate) fn fail_point(point: &str) -> Result<(), ControlError> {
    if std::env::var("FLOWSTATE_TEST_FAIL_AT").is_ok_and(|v| v == point) {
        return Err(ControlError::kernel(
            format!("step {point}"),
            "refused (FLOWSTATE_TEST_FAIL_AT)",
        ));
    }
    Ok(())
}

/// Finishes or undoes the change journalled for `name`, if any. The caller
/// holds the instance lock.
pub(crate) fn repair_locked(name: &str) -> Result<Option<Repaired>, ControlError> {
    let Some(journal) = Journal::load(name)? else {
        return Ok(None);
    };
    let (op, step, pid) = (journal.op.name(), journal.step.clone(), journal.pid);
    let outcome = match &journal.op {
        Op::Run { .. } => crate::repair_run(&journal)?,
        Op::Stop => {
            crate::stop_steps(name, None, None)?;
            Outcome::Finished
        }
        Op::Reload(plan) => crate::reload::repair(name, &journal, plan)?,
    };
    journal.finish()?;
    Ok(Some(Repaired {
        name: name.to_string(),
        op,
        step,
        pid,
        outcome,
    }))
}
