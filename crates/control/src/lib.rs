//! flowstate-control: the control plane. Runs compiled programs on
//! interfaces so that they outlive the command that started them, replaces
//! them atomically keeping their state, and reads and edits that state.
//!
//! ```text
//!  run:    source ─lang─▶ IR ─codegen─▶ ELF ─aya─▶ maps pinned, program verified
//!          ─▶ program pinned ─▶ attached (bpf_link) ─▶ link pinned ─▶ metadata written
//!  reload: new ELF loaded with the running maps reused (or new maps + migration)
//!          ─▶ bpf_link_update on the pinned link (atomic) ─▶ pins and metadata updated
//!  open:   metadata ─▶ saved source recompiled ─▶ pinned maps reopened ─▶ Handle
//! ```
//!
//! Where things live:
//! - `/sys/fs/bpf/flowstate/NAME/link`, `prog`, `maps/<map>`: bpffs pins.
//!   The pinned link keeps the program attached after the process exits.
//!   A TC instance attached through clsact (no TCX) has no link: its
//!   filter stays on its own, and the metadata names it ([`tc`]).
//! - `/run/flowstate/NAME.json`: metadata ([`meta`]), including a copy of
//!   the program text, so `flows`, `stats` and `reload` decode the maps
//!   even after the source file changed. bpffs holds only BPF objects, and
//!   `/run` is a tmpfs cleared at boot exactly like bpffs, so pins and
//!   metadata disappear together.
//! - Both roots are used only when no other user could change them
//!   ([`trust`]); `FLOWSTATE_PIN_ROOT` and `FLOWSTATE_RUN_DIR` move them.
//!   The interface may be in another network namespace ([`netns`],
//!   [`run_in_netns`]); the pins and metadata stay on the host.
//!
//! Failure rule: [`run`] either returns a running instance or leaves no pin,
//! no metadata and nothing attached. [`reload`] either swaps the program or
//! leaves the running one and its pins untouched.
//!
//! Panic rule: nothing here panics on user input (program text, key text,
//! names, metadata files).

pub mod chain;
mod edit;
mod foreign;
mod globals;
mod handle;
pub mod host;
pub mod journal;
mod kernel;
pub mod keytext;
mod links;
pub mod lock;
pub mod meta;
pub mod netns;
mod paths;
mod ports;
mod reload;
mod share_table;
mod shared;
pub mod summary;
pub mod tc;
pub mod trust;

pub use shared::{run_placed, run_placed_with, run_shared, xdp_occupant, XdpShare};

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flowstate_codegen::Layout;
use flowstate_lang::ir::{Hook, Program};
use serde::{Deserialize, Serialize};

pub use foreign::{open_program, ProgramRef};
pub use handle::{open, Event, Events, FlowRow, Handle, RowStat, Stats};
pub use journal::{Outcome, Repaired};
pub use lock::InstanceLock;
pub use paths::{meta_dir, pin_root};
pub use reload::{reload, FlowsMigration, ReloadReport};
pub use tc::{HookProgram, Order, Relative, TcFilter, TcPlacement, TcVia};

use journal::{Journal, Op};
use meta::Meta;

/// How an XDP program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// In the driver (veth, most physical NICs).
    Native,
    /// In the kernel's network stack, for any interface (slower).
    Generic,
}

/// Where a program attaches on its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachPoint {
    Xdp { mode: XdpMode },
    TcIngress,
    TcEgress,
}

impl AttachPoint {
    /// The program's own hook, with XDP in auto mode.
    pub fn of_hook(hook: Hook) -> AttachPoint {
        match hook {
            Hook::Xdp => AttachPoint::Xdp {
                mode: XdpMode::Auto,
            },
            Hook::TcIngress => AttachPoint::TcIngress,
            Hook::TcEgress => AttachPoint::TcEgress,
        }
    }

    pub fn hook(self) -> Hook {
        match self {
            AttachPoint::Xdp { .. } => Hook::Xdp,
            AttachPoint::TcIngress => Hook::TcIngress,
            AttachPoint::TcEgress => Hook::TcEgress,
        }
    }

    /// `xdp`, `tc-ingress`, `tc-egress`: how the CLI writes it.
    pub fn hook_name(self) -> &'static str {
        match self {
            AttachPoint::Xdp { .. } => "xdp",
            AttachPoint::TcIngress => "tc-ingress",
            AttachPoint::TcEgress => "tc-egress",
        }
    }
}

/// What to run, and where.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub program_path: PathBuf,
    pub dev: String,
    /// `None`: the program's `hook`.
    pub attach: Option<AttachPoint>,
    /// `None`: the program's name.
    pub name: Option<String>,
    /// TC only: TCX or clsact, and the place among the hook's programs.
    pub tc: TcPlacement,
}

/// A program running on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub dev: String,
    pub ifindex: u32,
    pub attach: AttachPoint,
    /// `native` or `generic` for XDP, `tcx` or `clsact` for TC.
    pub mode: String,
    /// The kernel's id of the running program (`bpftool prog show id N`).
    pub prog_id: u32,
    pub started: SystemTime,
    pub source_path: PathBuf,
    /// First 12 hex digits of the SHA-256 of the program text.
    pub source_hash: String,
    /// Entries in the state table now.
    pub flows: usize,
    /// Times the program was hot-replaced.
    pub reloads: u32,
    /// Why the instance is not (fully) running: pins and metadata disagree,
    /// the interface is gone, or another program took the link. `None`
    /// when everything checks out. `flowstate stop NAME` cleans it up.
    pub problem: Option<String>,
    /// The network namespace of the interface, by its name under
    /// /run/netns; `None`: the namespace `run` was called in, unnamed
    /// (normally the host's).
    pub netns: Option<String>,
    /// What `list` could not check from where it runs (e.g. the name of
    /// an interface in a namespace it cannot enter), with what the kernel
    /// says instead. Not a problem: nothing to clean up.
    pub note: Option<String>,
    /// TC: every program on the instance's hook, in run order (this one
    /// included); empty for XDP or when the hook could not be read.
    pub hook_programs: Vec<HookProgram>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo")]
    NeedsRoot,
    #[error("invalid name {0:?}: use 1 to 64 letters, digits, '_' or '-'")]
    InvalidName(String),
    #[error("cannot read {path}: {io}")]
    ReadSource { path: PathBuf, io: std::io::Error },
    /// The program text has errors; `rendered` shows them with carets.
    #[error("{path}: the program has errors; nothing was run\n{rendered}")]
    Program { path: PathBuf, rendered: String },
    #[error("cannot compile for the kernel: {0}")]
    Codegen(String),
    #[error("no interface named {0:?} (see `ip link`)")]
    NoSuchInterface(String),
    #[error("no interface named {dev:?} in network namespace {netns} (see `ip -n {netns} link`)")]
    NoSuchInterfaceIn { dev: String, netns: String },
    /// A program without flowstate's metadata among its maps.
    #[error(
        "{program} carries no flowstate metadata: it was not compiled by flowstate (or by a \
         flowstate from before objects carried it); recompile it with `flowstate compile`"
    )]
    NotFlowstate { program: String },
    /// A `redirect IFNAME` target missing where the program would run.
    #[error(
        "the program redirects to {port:?}, but {place} has no interface of that name: create \
         it, or change the program's `redirect`; nothing was changed"
    )]
    NoSuchPort { port: String, place: String },
    #[error(
        "a program named {0:?} is already running: pick another --name, or `flowstate stop {0}`"
    )]
    NameTaken(String),
    #[error("no program named {0:?} is running (see `flowstate list`)")]
    NotRunning(String),
    /// The verifier refused the program: a code generator bug. `log` is
    /// the verifier's full output.
    #[error(
        "the kernel's verifier rejected the program (a flowstate bug: please report it with the \
         program); nothing was attached.\n{log}"
    )]
    Verifier { log: String },
    #[error("cannot attach to {dev}: {message}")]
    Attach { dev: String, message: String },
    #[error(
        "the flow key changed from ({old}) to ({new}): the running flows cannot be carried over. \
         Reload with --reset-state to start from an empty state table"
    )]
    KeyLayoutChanged { old: String, new: String },
    #[error("bad key: {0}")]
    Key(String),
    #[error("no {kind} named {name:?}; the program has: {known}")]
    NoSuchName {
        kind: &'static str,
        name: String,
        known: String,
    },
    #[error("no flow {0} in the state table")]
    NoSuchFlow(String),
    /// A pin or metadata directory that another user could change (see
    /// [`trust`]).
    #[error("refusing to use {path}: {why}. To fix: {fix}")]
    Untrusted {
        path: PathBuf,
        why: String,
        fix: String,
    },
    /// `stop` could not take the program off its interface.
    #[error(
        "{name}: program {prog_id} is still attached (ifindex {ifindex}, link {link}) and \
         could not be detached: {message}. Its metadata is kept; find the link with `bpftool \
         link show id {link}`, remove its pins, then run `flowstate stop {name}` again"
    )]
    StillAttached {
        name: String,
        prog_id: u32,
        link: u32,
        ifindex: u32,
        message: String,
    },
    #[error(
        "no network namespace {name:?} ({message}): `ip netns list` shows the names; create \
         one with `ip netns add NAME`"
    )]
    NoSuchNetns { name: String, message: String },
    /// Under `ip netns exec` (or any private mount namespace without
    /// bpffs) when the host's mounts cannot be reached (see [`netns`]).
    #[error(
        "flowstate runs in a private mount namespace (as `ip netns exec` makes) where bpffs is \
         not mounted at /sys/fs/bpf, and cannot reach the host's: pins made here would vanish \
         when the command exits, and the host's instances are invisible. Run flowstate from \
         the host instead, naming the namespace: `flowstate run PROGRAM --netns NAME --dev \
         IFACE` (or mount bpffs on the host first: `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    PrivateMounts,
    /// A chain command refused (see [`chain`]); the text says why and
    /// what to do.
    #[error("{0}")]
    Chain(String),
    #[error("metadata {path}: {message}")]
    Metadata { path: PathBuf, message: String },
    /// `run --share-table` refused: the tables cannot be one.
    #[error("{name} cannot share the flow table of {with}: {why}")]
    ShareTable {
        name: String,
        with: String,
        why: String,
    },
    #[error("{what}: {message}")]
    Kernel { what: String, message: String },
    /// Another command holds the instance lock (see [`lock`]).
    #[error(
        "another flowstate command{holder} is changing {name} and did not finish within \
         {waited:?}: try again later (FLOWSTATE_LOCK_TIMEOUT sets the wait, in seconds)"
    )]
    Busy {
        name: String,
        holder: String,
        waited: std::time::Duration,
    },
}

impl ControlError {
    pub(crate) fn kernel(what: impl Into<String>, err: impl std::fmt::Display) -> ControlError {
        ControlError::Kernel {
            what: what.into(),
            message: err.to_string(),
        }
    }
}

/// Compiles, loads, attaches and pins a program. It keeps running after the
/// calling process exits, until [`stop`].
///
/// Holds the instance lock throughout and journals each step
/// ([`journal::RUN_STEPS`]): a `run` killed before its link is pinned is
/// undone by the next command on the name (nothing stays pinned or
/// attached), one killed after it is finished (its metadata written).
pub fn run(spec: &RunSpec) -> Result<Instance, ControlError> {
    run_in_netns(spec, None)
}

/// What every way of running starts from: the namespace entered (if
/// any) and where it is, the program's text and checked program, and the
/// instance's name; names and privileges checked.
pub(crate) struct PreparedRun {
    pub target: Option<netns::Target>,
    pub place: netns::Place,
    pub source: String,
    pub program: Program,
    pub name: String,
}

pub(crate) fn prepare_run(
    spec: &RunSpec,
    netns: Option<&str>,
) -> Result<PreparedRun, ControlError> {
    if let Some(name) = &spec.name {
        paths::check_name(name)?;
    }
    let target = netns.map(netns::Target::open).transpose()?;
    let place = match &target {
        Some(t) => t.place.clone(),
        None => netns::current_place()?,
    };
    let source = read_source(&spec.program_path)?;
    let program = compile_source(&spec.program_path, &source)?;
    let name = spec.name.clone().unwrap_or_else(|| program.name.clone());
    paths::check_name(&name)?;
    check_privileges()?;
    Ok(PreparedRun {
        target,
        place,
        source,
        program,
        name,
    })
}

/// [`run`] on an interface of network namespace `netns` (a name under
/// /run/netns, as `ip netns` makes): the interface is looked up and the
/// program attached from inside it, while pins and metadata stay on the
/// host. `None`: the caller's namespace (recorded by name if it has one).
pub fn run_in_netns(spec: &RunSpec, netns: Option<&str>) -> Result<Instance, ControlError> {
    run_in_netns_with(spec, netns, None)
}

/// [`run_in_netns`]; with `share_table`, the new instance reads and writes
/// that running instance's flow table (see [`share_table`]).
pub(crate) fn run_in_netns_with(
    spec: &RunSpec,
    netns: Option<&str>,
    share_table: Option<&str>,
) -> Result<Instance, ControlError> {
    let PreparedRun {
        target,
        place,
        source,
        program,
        name,
    } = prepare_run(spec, netns)?;
    let ifindex =
        within(target.as_ref(), || kernel::ifindex(&spec.dev))?.map_err(|e| match (e, netns) {
            (ControlError::NoSuchInterface(dev), Some(netns)) => ControlError::NoSuchInterfaceIn {
                dev,
                netns: netns.to_string(),
            },
            (e, _) => e,
        })?;
    let attach = spec.attach.unwrap_or(AttachPoint::of_hook(program.hook));
    if !matches!(attach, AttachPoint::Xdp { .. }) {
        // A TC attach this kernel cannot make is refused before anything
        // is loaded (`--tc-attach tcx` without TCX).
        spec.tc.resolve()?;
    }
    let output = codegen(
        &program,
        attach.hook(),
        source_text(&spec.program_path, &source),
        // The globals' map is made here, typed for bpftool, before the load.
        !program.globals.is_empty(),
    )?;
    let port_indexes = ports::resolve_at(&output.layout, &place)?;

    flowstate_runtime::ensure_bpffs(flowstate_runtime::BPFFS_ROOT)
        .map_err(|e| ControlError::kernel("mounting bpffs", e))?;
    paths::check_roots(true)?;
    let _lock = InstanceLock::acquire(&name)?;
    journal::repair_locked(&name)?;
    if paths::pin_dir(&name).exists() || paths::meta_path(&name).exists() || chain::is_chain(&name)
    {
        return Err(ControlError::NameTaken(name));
    }
    let pin_dir = paths::pin_dir(&name);
    let maps_dir = pin_dir.join("maps");
    let mut journal = Journal::new(&name, Op::Run { meta: None });
    journal.step("pin-maps")?;
    // From here on, a failure removes every pin made so far and the
    // journal; dropping the unpinned link (if any) detaches the program.
    let mut guard = paths::RemoveOnDrop::new(pin_dir.clone());
    let mut journal_guard = JournalOnDrop(Some(name.clone()));
    trust::create_private_dir(&pin_dir)?;
    trust::create_private_dir(&maps_dir)?;
    if let Some(with) = share_table {
        share_table::pin_shared_flows(with, &name, &program, &output.layout, &maps_dir)?;
    }

    let pins: Vec<(&'static str, PathBuf)> = map_names(&output.layout)
        .into_iter()
        .map(|m| (m, maps_dir.join(m)))
        .collect();
    if let Some(map) = output.layout.globals_map {
        globals::create_pinned(&program, &output.layout, &maps_dir.join(map))?;
    }
    let mut loaded = kernel::load(&output.object, &output.program_name, &pins, &port_indexes)?;
    journal.step("pin-prog")?;
    loaded.pin_program(&pin_dir.join("prog"))?;
    let prog_id = loaded.prog_id()?;
    let via = match attach {
        AttachPoint::Xdp { .. } if spec.tc.order != Order::Last => {
            return Err(ControlError::Attach {
                dev: spec.dev.clone(),
                message: "--before/--after order programs on a TC hook; an XDP program is \
                          alone on its interface"
                    .to_string(),
            })
        }
        AttachPoint::Xdp { .. } => None,
        _ => Some(spec.tc.resolve()?),
    };
    // clsact: the filter outlives this process whatever happens, so its
    // name is chosen and journalled before it is made; the guard deletes
    // it if a later step fails.
    let mut filter_guard = None;
    let (link, mode, tc_filter) = if via == Some(tc::Resolved::Clsact) {
        let filter = within(target.as_ref(), || {
            tc::plan_filter(ifindex, attach, &spec.tc.order)
        })??;
        let mut planned = Meta::new(
            &name,
            &spec.dev,
            ifindex,
            attach,
            "clsact",
            prog_id,
            SystemTime::now(),
            &spec.program_path,
            &source,
            &output.program_name,
        );
        planned.netns = place.name.clone();
        planned.netns_inode = place.inode;
        planned.tc_filter = Some(filter);
        planned.shared_table = share_table.map(str::to_string);
        if filter.qdisc_created {
            tc::mark_qdisc_added(&place, ifindex);
        }
        journal.op = Op::Run {
            meta: Some(Box::new(planned.clone())),
        };
        filter_guard = Some(FilterOnDrop(Some(planned)));
        journal.step("attach")?;
        within(target.as_ref(), || {
            loaded.attach_filter(&spec.dev, ifindex, attach, &filter)
        })??;
        (None, "clsact".to_string(), Some(filter))
    } else {
        journal.step("attach")?;
        let order = match via {
            Some(_) => tc::tcx_order(&spec.tc.order)?,
            None => aya::programs::LinkOrder::last(),
        };
        let (link, mode) = within(target.as_ref(), || loaded.attach(&spec.dev, attach, order))??;
        (Some(link), mode, None)
    };

    let started = SystemTime::now();
    let mut meta = Meta::new(
        &name,
        &spec.dev,
        ifindex,
        attach,
        &mode,
        prog_id,
        started,
        &spec.program_path,
        &source,
        &output.program_name,
    );
    meta.netns = place.name.clone();
    meta.netns_inode = place.inode;
    meta.tc_filter = tc_filter;
    meta.shared_table = share_table.map(str::to_string);
    journal.op = Op::Run {
        meta: Some(Box::new(meta.clone())),
    };
    journal.step("pin-link")?;
    let pinned_link = match link {
        Some(link) => Some(kernel::pin_link(link, &pin_dir.join("link"))?),
        // A filter has no link: nothing to pin.
        None => None,
    };
    journal.step("write-meta")?;
    meta.save(&paths::meta_path(&name))?;
    guard.disarm();
    if let Some(filter) = filter_guard.as_mut() {
        filter.0 = None;
    }
    journal_guard.0 = None;
    journal.finish()?;
    drop(pinned_link);
    Ok(instance_of(&meta, 0, None))
}

/// Deletes the clsact filter of a `run` that failed after making it.
struct FilterOnDrop(Option<Meta>);

impl Drop for FilterOnDrop {
    fn drop(&mut self) {
        if let Some(meta) = &self.0 {
            let _ = tc::Attachment::of(meta).remove_filter(&[meta.prog_id]);
        }
    }
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

/// Removes the journal of a failed step (the failure undid the change).
struct JournalOnDrop(Option<String>);

impl Drop for JournalOnDrop {
    fn drop(&mut self) {
        if let Some(name) = &self.0 {
            let _ = journal::remove(name);
        }
    }
}

/// Repairs an interrupted `run` (see [`run`]).
pub(crate) fn repair_run(journal: &Journal) -> Result<Outcome, ControlError> {
    let name = &journal.name;
    let planned = match &journal.op {
        Op::Run { meta: Some(meta) } => Some(meta.as_ref()),
        _ => None,
    };
    if let Some(meta) = planned {
        if meta.xdp_priority.is_some() {
            // Joined a dispatcher (or not yet): take the program out.
            shared::leave(meta)?;
        }
        if journal.reached(journal::RUN_STEPS, "pin-link")
            && tc::Attachment::of(meta).program_id().ok() == Some(meta.prog_id)
        {
            meta.save(&paths::meta_path(name))?;
            return Ok(Outcome::Finished);
        }
    }
    stop_steps(name, None, planned)?;
    Ok(Outcome::Undone)
}

/// Finishes or undoes the change interrupted on instance `name` (a command
/// killed mid-way), waiting for the instance lock; `None` when there was
/// none. Every command that changes an instance does this first.
pub fn repair(name: &str) -> Result<Option<Repaired>, ControlError> {
    if let Some((chain, _function)) = name.split_once('/') {
        // A chain's function (`CHAIN/FUNC`): the chain's repair.
        chain::repair(chain)?;
        return Ok(None);
    }
    paths::check_name(name)?;
    if !paths::journal_path(name).exists() {
        return Ok(None);
    }
    check_privileges()?;
    let _lock = InstanceLock::acquire(name)?;
    journal::repair_locked(name)
}

/// [`repair`] for every instance with a journal whose lock is free now
/// (a locked one is being changed by a running command: left to it).
pub fn repair_all() -> Result<Vec<Repaired>, ControlError> {
    let mut out = Vec::new();
    for name in paths::journal_names() {
        check_privileges()?;
        if let Some(_lock) = InstanceLock::try_acquire(&name)? {
            out.extend(journal::repair_locked(&name)?);
        }
    }
    Ok(out)
}

/// Takes the lock of instance `name` for a change made outside this crate's
/// commands (live edits), after repairing an interrupted change.
pub fn lock(name: &str) -> Result<InstanceLock, ControlError> {
    if let Some((chain, _function)) = name.split_once('/') {
        // A chain's function (`CHAIN/FUNC`): the chain's lock.
        return chain::lock_for_edit(chain);
    }
    paths::check_name(name)?;
    check_privileges()?;
    let lock = InstanceLock::acquire(name)?;
    journal::repair_locked(name)?;
    Ok(lock)
}

/// Every program started by [`run`], with the pins cross-checked against
/// the metadata (see [`Instance::problem`]).
pub fn list() -> Result<Vec<Instance>, ControlError> {
    paths::check_roots(false)?;
    let mut out = Vec::new();
    let mut names = paths::meta_names()?;
    for orphan in paths::pin_names()?
        .into_iter()
        .chain(paths::journal_names())
    {
        if !names.contains(&orphan) {
            names.push(orphan);
        }
    }
    names.sort();
    for name in names {
        out.push(inspect(&name));
    }
    Ok(out)
}

fn inspect(name: &str) -> Instance {
    let mut instance = inspect_pins(name);
    if let Some(journal) = paths::journal_path(name)
        .exists()
        .then(|| Journal::load(name))
    {
        let what = match journal {
            Ok(Some(j)) => format!("{} (pid {}) at step {}", j.op_name(), j.pid, j.step),
            Ok(None) => "a change".to_string(),
            Err(e) => format!("a change ({e})"),
        };
        instance.problem = Some(format!(
            "{what} is in progress or was interrupted: `flowstate repair {name}` finishes or \
             undoes it"
        ));
    }
    instance
}

fn inspect_pins(name: &str) -> Instance {
    let meta = match Meta::load(&paths::meta_path(name)) {
        Ok(meta) => meta,
        Err(e) => {
            return Instance {
                name: name.to_string(),
                dev: String::new(),
                ifindex: 0,
                attach: AttachPoint::Xdp {
                    mode: XdpMode::Auto,
                },
                mode: String::new(),
                prog_id: 0,
                started: SystemTime::UNIX_EPOCH,
                source_path: PathBuf::new(),
                source_hash: String::new(),
                flows: 0,
                reloads: 0,
                problem: Some(format!("pins without usable metadata ({e})")),
                netns: None,
                note: None,
                hook_programs: Vec::new(),
            }
        }
    };
    let pin_dir = paths::pin_dir(name);
    let mut problem = None;
    let mut note = None;
    let mut flows = 0;
    // The kernel's view of the link first: it holds wherever the
    // interface is, even in a namespace this command cannot enter.
    let place = meta.place();
    let in_netns = || match &meta.netns {
        Some(_) => format!(" in {}", place.describe()),
        None => String::new(),
    };
    if meta.xdp_priority.is_some() {
        let (found, mode) = shared::position(&meta);
        problem = found;
        if let Ok(map) = flowstate_runtime::RawMap::from_pin(pin_dir.join("maps").join("flows")) {
            flows = map.keys().map_or(0, |k| k.len());
        }
        let mut instance = instance_of(&meta, flows, problem);
        instance.mode = mode;
        return instance;
    }
    let link_state = match &meta.tc_filter {
        Some(_) => filter_state(&meta),
        None => links::state_of_pin(&pin_dir.join("link")).map_err(|e| e.to_string()),
    };
    match link_state {
        Err(e) if meta.tc_filter.is_some() => problem = Some(e),
        Err(e) => {
            problem = Some(format!(
                "link pin unusable: {e}{}",
                attached_elsewhere(&meta)
            ))
        }
        Ok(link) if link.prog_id != meta.prog_id => {
            problem = Some(format!(
                "the {} runs program {}, the metadata says {}",
                if meta.tc_filter.is_some() {
                    "clsact filter"
                } else {
                    "link"
                },
                link.prog_id,
                meta.prog_id
            ))
        }
        Ok(link) if !link.attached() => {
            problem = Some(format!(
                "the kernel detached the link: interface {} (index {}){} is gone",
                meta.dev,
                meta.ifindex,
                in_netns()
            ))
        }
        Ok(link) if link.ifindex != meta.ifindex => {
            problem = Some(format!(
                "the link is on interface index {}, the metadata says {}",
                link.ifindex, meta.ifindex
            ))
        }
        Ok(link) => match netns::run_at(&place, || kernel::ifindex(&meta.dev).ok()) {
            Ok(Some(index)) if index == meta.ifindex => {}
            Ok(_) => {
                problem = Some(format!(
                    "interface {} (index {}){} is gone",
                    meta.dev,
                    meta.ifindex,
                    in_netns()
                ))
            }
            Err(why) => {
                note = Some(format!(
                    "{why}; the kernel says link {} is attached to interface index {}, so it \
                     is running (its name {} was not checked)",
                    link.id, link.ifindex, meta.dev
                ))
            }
        },
    }
    match flowstate_runtime::RawMap::from_pin(pin_dir.join("maps").join("flows")) {
        Ok(map) => flows = map.keys().map_or(0, |k| k.len()),
        Err(e) => {
            problem.get_or_insert_with(|| format!("flows map pin unusable: {e}"));
        }
    }
    let mut instance = instance_of(&meta, flows, problem);
    instance.note = note;
    if meta.attach.hook() != Hook::Xdp {
        instance.hook_programs = tc::hook_programs(&meta).unwrap_or_default();
    }
    instance
}

/// A clsact instance's filter as if it were a link: its program, and the
/// interface while the filter is there.
fn filter_state(meta: &Meta) -> Result<links::LinkState, String> {
    let attachment = tc::Attachment::of(meta);
    match attachment.program_id() {
        Ok(prog_id) => Ok(links::LinkState {
            id: 0,
            prog_id,
            link_type: links::LINK_TYPE_TCX,
            ifindex: meta.ifindex,
        }),
        Err(e) => Err(format!(
            "the clsact filter is gone ({e}): interface {} (index {}) was removed, or the \
             filter was deleted (`tc filter show dev {} {}`)",
            meta.dev,
            meta.ifindex,
            meta.dev,
            if meta.attach == AttachPoint::TcEgress {
                "egress"
            } else {
                "ingress"
            }
        )),
    }
}

/// What the kernel says when the link pin is unusable: whether the
/// program is still attached through a link pinned elsewhere.
fn attached_elsewhere(meta: &Meta) -> String {
    let Ok(found) = links::links_running(meta.prog_id) else {
        return String::new();
    };
    match found.iter().find(|(_, s)| s.attached()) {
        Some((_, s)) => format!(
            "; the kernel still runs program {} on ifindex {} through link {} (pinned \
             elsewhere): `flowstate stop {}` detaches it",
            meta.prog_id, s.ifindex, s.id, meta.name
        ),
        None => "; the program is not attached".to_string(),
    }
}

fn instance_of(meta: &Meta, flows: usize, problem: Option<String>) -> Instance {
    Instance {
        name: meta.name.clone(),
        dev: meta.dev.clone(),
        ifindex: meta.ifindex,
        attach: meta.attach,
        mode: meta.mode.clone(),
        prog_id: meta.prog_id,
        started: meta.started(),
        source_path: meta.source_path.clone(),
        source_hash: meta.source_hash.clone(),
        flows,
        reloads: meta.reloads,
        problem,
        netns: meta.netns.clone(),
        note: None,
        hook_programs: Vec::new(),
    }
}

/// Detaches the program and removes its pins and metadata: the interface
/// is left as it was before [`run`]. Also cleans up stale entries, and
/// first repairs an interrupted change (which may leave nothing to stop).
pub fn stop(name: &str) -> Result<(), ControlError> {
    paths::check_name(name)?;
    let exists = || {
        paths::pin_dir(name).exists()
            || paths::meta_path(name).exists()
            || paths::journal_path(name).exists()
    };
    if !exists() {
        return Err(ControlError::NotRunning(name.to_string()));
    }
    check_privileges()?;
    let lock = InstanceLock::acquire(name)?;
    journal::repair_locked(name)?;
    if !exists() {
        lock.remove_file();
        return Err(ControlError::NotRunning(name.to_string()));
    }
    let mut journal = Journal::new(name, Op::Stop);
    stop_steps(name, Some(&mut journal), None)?;
    journal.finish()?;
    lock.remove_file();
    Ok(())
}

/// The steps of `stop` ([`journal::STOP_STEPS`]), journalled when
/// `journal` is given; each is a no-op when already done. `planned`: the
/// metadata an interrupted `run` was about to write, used when there is
/// none on disk (it names a clsact filter to delete).
pub(crate) fn stop_steps(
    name: &str,
    mut journal: Option<&mut Journal>,
    planned: Option<&Meta>,
) -> Result<(), ControlError> {
    let mut step = |s: &str| match journal.as_deref_mut() {
        Some(j) => j.step(s),
        None => Ok(()),
    };
    let pin_dir = paths::pin_dir(name);
    let meta_path = paths::meta_path(name);
    if let Some(meta) = Meta::load(&meta_path)
        .ok()
        .filter(|m| m.xdp_priority.is_some())
    {
        step("leave-dispatcher")?;
        shared::leave(&meta)?;
    }
    // The link is the only thing keeping the program attached; once its
    // pin is gone and no process holds its fd, the kernel detaches it.
    step("unpin-link")?;
    let link = pin_dir.join("link");
    // What the kernel should no longer run afterwards: the program on the
    // link pin, or the one the metadata names when the pin is missing.
    let meta = Meta::load(&meta_path).ok().or_else(|| planned.cloned());
    if let Some(meta) = meta.as_ref().filter(|m| m.tc_filter.is_some()) {
        // A clsact filter: deleted only while it runs our program.
        let mut ours = vec![meta.prog_id];
        ours.extend(pinned_program_id(&pin_dir.join("prog")));
        tc::Attachment::of(meta).remove_filter(&ours)?;
    }
    let prog_id = links::state_of_pin(&link)
        .ok()
        .map(|s| s.prog_id)
        .or(meta.as_ref().map(|m| m.prog_id));
    if link.exists() {
        kernel::unpin_link(&link)?;
    }
    if let Some(prog_id) = prog_id {
        detach_elsewhere(name, prog_id, meta.as_ref().map(|m| m.ifindex))?;
    }
    step("remove-pins")?;
    if pin_dir.exists() {
        std::fs::remove_dir_all(&pin_dir)
            .map_err(|e| ControlError::kernel(format!("removing {}", pin_dir.display()), e))?;
    }
    step("remove-meta")?;
    if meta_path.exists() {
        std::fs::remove_file(&meta_path)
            .map_err(|e| ControlError::kernel(format!("removing {}", meta_path.display()), e))?;
    }
    Ok(())
}

/// The id of the program pinned at `path`, if it is one.
pub(crate) fn pinned_program_id(path: &Path) -> Option<u32> {
    aya::programs::ProgramInfo::from_pin(path)
        .ok()
        .map(|info| info.id())
}

/// Confirms through the kernel that no link runs `prog_id` any more, and
/// forces off any that still does (its pin was moved or copied: the path
/// alone cannot be trusted to be the only one). `ifindex`, when known,
/// limits this to the instance's own interface.
fn detach_elsewhere(name: &str, prog_id: u32, ifindex: Option<u32>) -> Result<(), ControlError> {
    use std::os::fd::AsFd;
    let still = |link: u32, ifindex: u32, message: String| ControlError::StillAttached {
        name: name.to_string(),
        prog_id,
        link,
        ifindex,
        message,
    };
    let found = links::links_running(prog_id)
        .map_err(|e| ControlError::kernel("listing the kernel's bpf links", e))?;
    for (fd, state) in found {
        if !state.attached() || ifindex.is_some_and(|i| i != state.ifindex) {
            continue;
        }
        links::force_detach(fd.as_fd())
            .map_err(|e| still(state.id, state.ifindex, e.to_string()))?;
        match links::state_of(fd.as_fd()) {
            Ok(after) if !after.attached() => {}
            Ok(_) => {
                return Err(still(
                    state.id,
                    state.ifindex,
                    "the kernel still reports it attached".into(),
                ))
            }
            Err(e) => return Err(still(state.id, state.ifindex, e.to_string())),
        }
        eprintln!(
            "note: {name}: link {} of program {prog_id} was still attached after {} was \
             removed (pinned elsewhere, or held open by another process); it is now detached \
             through the kernel. A stray pin keeps the detached link in memory until removed",
            state.id,
            paths::pin_dir(name).join("link").display()
        );
    }
    Ok(())
}

pub(crate) fn read_source(path: &Path) -> Result<String, ControlError> {
    use std::io::Read;
    // No further than one byte past the limit: `compile` refuses that with
    // an error naming the limit, and /dev/zero does not fill the memory.
    let limit = flowstate_lang::MAX_SOURCE_BYTES as u64 + 1;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit).read_to_string(&mut text))
        .map_err(|io| ControlError::ReadSource {
            path: path.to_path_buf(),
            io,
        })?;
    Ok(text)
}

pub(crate) fn compile_source(path: &Path, source: &str) -> Result<Program, ControlError> {
    flowstate_lang::compile(source)
        .map(|c| c.program)
        .map_err(|diags| ControlError::Program {
            path: path.to_path_buf(),
            rendered: flowstate_lang::diag::render(
                &diags,
                &path.display().to_string(),
                source,
                false,
            ),
        })
}

/// The program's file name and text, for the object's metadata and
/// line_info.
pub(crate) fn source_text(path: &Path, text: &str) -> Option<flowstate_codegen::SourceText> {
    Some(flowstate_codegen::SourceText {
        file: path.file_name()?.to_string_lossy().into_owned(),
        text: text.to_string(),
    })
}

/// `globals_reused`: the object is for a load that reuses the pinned
/// globals' map (see `flowstate_codegen::Options::globals_reused`).
pub(crate) fn codegen(
    program: &Program,
    hook: Hook,
    source: Option<flowstate_codegen::SourceText>,
    globals_reused: bool,
) -> Result<flowstate_codegen::Output, ControlError> {
    let options = flowstate_codegen::Options {
        hook: Some(hook),
        source,
        target: host::target(),
        globals_reused,
        ..flowstate_codegen::Options::default()
    };
    flowstate_codegen::compile(program, &options).map_err(|e| ControlError::Codegen(e.to_string()))
}

/// Every map of a compiled program.
pub(crate) fn map_names(layout: &Layout) -> Vec<&'static str> {
    let mut names = vec![layout.flows_map, layout.counters_map];
    names.extend(layout.globals_map);
    names.extend(layout.events_map);
    names.extend(layout.clock_map);
    names
}

/// Effective capabilities: CAP_NET_ADMIN (12) and CAP_BPF (39) or
/// CAP_SYS_ADMIN (21), which older kernels ask for instead of CAP_BPF.
pub(crate) fn check_privileges() -> Result<(), ControlError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if has(12) && (has(39) || has(21)) {
        Ok(())
    } else {
        Err(ControlError::NeedsRoot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_point_round_trips_through_json() {
        for point in [
            AttachPoint::Xdp {
                mode: XdpMode::Generic,
            },
            AttachPoint::TcIngress,
            AttachPoint::TcEgress,
        ] {
            let text = serde_json::to_string(&point).unwrap();
            assert_eq!(serde_json::from_str::<AttachPoint>(&text).unwrap(), point);
        }
    }

    #[test]
    fn attach_point_follows_the_hook() {
        assert_eq!(AttachPoint::of_hook(Hook::TcEgress).hook(), Hook::TcEgress);
        assert_eq!(AttachPoint::of_hook(Hook::Xdp).hook_name(), "xdp");
    }

    #[test]
    fn program_errors_are_rendered_and_nothing_runs() {
        let err =
            compile_source(Path::new("bad.fsm"), "program p\nflow nosuch.field\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.fsm"), "{text}");
        assert!(text.contains("nothing was run"), "{text}");
    }
}
