//! `run --xdp-share`: a program that shares its interface's XDP hook with
//! other programs through the libxdp dispatcher protocol
//! (`flowstate_runtime::dispatcher`), so xdp-loader, bpfman and flowstate
//! stack programs on one interface.
//!
//! What differs from a program attached alone:
//! - The program is loaded as an extension of a slot of a new dispatcher
//!   and the dispatcher swapped in; the pins that keep it attached are
//!   libxdp's (`/sys/fs/bpf/xdp/dispatch-IFINDEX-ID/`), so the instance
//!   keeps no `link` pin, only `prog` and its maps. The metadata records
//!   the run priority (`Meta::xdp_priority`).
//! - `stop` takes the program out of the dispatcher (a new dispatcher runs
//!   the others; the last one out leaves the hook empty).
//! - `reload` ([`DispatcherSlot`]) loads the new program as an extension
//!   against the running dispatcher, then swaps it into the instance's
//!   slot in one dispatcher swap (the slot's priority and chain-call
//!   actions kept, the other programs re-linked as they were). A
//!   migrating reload swaps its handoff build, its bridge and the new
//!   program into the slot in turn; the handoff tail-calls a plain XDP
//!   build of the bridge (no kernel takes an extension in a program
//!   array from 6.12 on).
//! - Crash safety: the dispatcher swap is the only step that changes what
//!   the interface runs, and the old dispatcher keeps running until it
//!   succeeds. The journal records the instance before the swap, so an
//!   interrupted `run` is undone (the program taken out again, if the
//!   swap happened) by the next command on the name.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flowstate_runtime::dispatcher::{self, NewComponent, XdpOccupant, CHAIN_ON_PASS};

use crate::journal::{Journal, Op};
use crate::lock::InstanceLock;
use crate::meta::Meta;
use crate::{
    codegen, journal, kernel, map_names, netns, paths, source_text, trust, within, AttachPoint,
    ControlError, Instance, JournalOnDrop, RunSpec, XdpMode,
};

/// How `run` treats an XDP hook other programs may want too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpShare {
    /// Attach alone through a `bpf_link`; refuse a hook in use.
    Exclusive,
    /// Join the interface's libxdp dispatcher, making one if needed.
    Shared,
    /// Join a dispatcher already there; else attach alone.
    Auto,
}

/// Runs `spec` in namespace `netns` as `share` asks: in the interface's
/// XDP dispatcher (at `priority`), or attached alone. Only an XDP attach
/// (named in `spec`, or the program's own hook) can share; for `Auto`, a
/// dispatcher must already be there, and a query that fails (no such
/// device, ...) leaves the error to the exclusive path, which says it
/// plainly. What `flowstate run` and the daemon both do.
pub fn run_placed(
    spec: &RunSpec,
    netns: Option<&str>,
    share: XdpShare,
    priority: u32,
) -> Result<Instance, ControlError> {
    run_placed_with(spec, netns, share, priority, None)
}

/// [`run_placed`]; with `share_table`, the new instance reads and writes
/// that running instance's flow table (`run --share-table`, see
/// `share_table.rs`).
pub fn run_placed_with(
    spec: &RunSpec,
    netns: Option<&str>,
    share: XdpShare,
    priority: u32,
    share_table: Option<&str>,
) -> Result<Instance, ControlError> {
    let at_xdp = match spec.attach {
        Some(point) => matches!(point, crate::AttachPoint::Xdp { .. }),
        None => std::fs::read_to_string(&spec.program_path)
            .ok()
            .and_then(|text| flowstate_lang::compile(&text).ok())
            .is_some_and(|c| c.program.hook == flowstate_lang::ir::Hook::Xdp),
    };
    let shared = at_xdp
        && match share {
            XdpShare::Shared => true,
            XdpShare::Exclusive => false,
            XdpShare::Auto => matches!(
                xdp_occupant(&spec.dev, netns),
                Ok(XdpOccupant::Dispatcher { .. })
            ),
        };
    if shared {
        run_shared_with(spec, netns, priority, share_table)
    } else {
        crate::run_in_netns_with(spec, netns, share_table)
    }
}

/// What runs at `dev`'s XDP hook (in namespace `netns`).
pub fn xdp_occupant(dev: &str, netns: Option<&str>) -> Result<XdpOccupant, ControlError> {
    let target = netns.map(netns::Target::open).transpose()?;
    within(target.as_ref(), || {
        let ifindex = kernel::ifindex(dev)?;
        dispatcher::xdp_occupant(ifindex).map_err(|e| ControlError::Attach {
            dev: dev.to_string(),
            message: e.to_string(),
        })
    })?
}

/// [`crate::run_in_netns`] through the interface's dispatcher at run
/// priority `priority` (libxdp's default is
/// [`dispatcher::DEFAULT_PRIORITY`]); `pass` goes on to the next program.
pub fn run_shared(
    spec: &RunSpec,
    netns_name: Option<&str>,
    priority: u32,
) -> Result<Instance, ControlError> {
    run_shared_with(spec, netns_name, priority, None)
}

fn run_shared_with(
    spec: &RunSpec,
    netns_name: Option<&str>,
    priority: u32,
    share_table: Option<&str>,
) -> Result<Instance, ControlError> {
    let crate::PreparedRun {
        target,
        place,
        source,
        program,
        name,
    } = crate::prepare_run(spec, netns_name)?;
    let attach = spec.attach.unwrap_or(AttachPoint::of_hook(program.hook));
    let AttachPoint::Xdp { mode } = attach else {
        return Err(ControlError::Attach {
            dev: spec.dev.clone(),
            message: "--xdp-share is for XDP programs; TC programs share their hook in order \
                      (see --before/--after)"
                .into(),
        });
    };
    if let Some(why) = dispatcher::extensions_unavailable() {
        return Err(ControlError::Attach {
            dev: spec.dev.clone(),
            message: format!("{why}; run with --xdp-share exclusive to attach alone"),
        });
    }
    let ifindex = within(target.as_ref(), || kernel::ifindex(&spec.dev))??;
    let output = codegen(
        &program,
        attach.hook(),
        source_text(&spec.program_path, &source),
        // The globals' map is made here, typed for bpftool, before the load.
        !program.globals.is_empty(),
    )?;
    let port_indexes = crate::ports::resolve_at(&output.layout, &place)?;

    flowstate_runtime::ensure_bpffs(flowstate_runtime::BPFFS_ROOT)
        .map_err(|e| ControlError::kernel("mounting bpffs", e))?;
    paths::check_roots(true)?;
    let _lock = InstanceLock::acquire(&name)?;
    journal::repair_locked(&name)?;
    if paths::pin_dir(&name).exists()
        || paths::meta_path(&name).exists()
        || crate::chain::is_chain(&name)
    {
        return Err(ControlError::NameTaken(name));
    }
    let pin_dir = paths::pin_dir(&name);
    let maps_dir = pin_dir.join("maps");
    let mode_name = match mode {
        XdpMode::Generic => "generic",
        XdpMode::Native | XdpMode::Auto => "native",
    };
    let mut meta = Meta::new(
        &name,
        &spec.dev,
        ifindex,
        attach,
        mode_name,
        0,
        SystemTime::now(),
        &spec.program_path,
        &source,
        &output.program_name,
    );
    meta.netns = place.name.clone();
    meta.netns_inode = place.inode;
    meta.xdp_priority = Some(priority);
    meta.shared_table = share_table.map(str::to_string);
    // Recorded before anything is loaded: a repair knows where to look.
    let mut journal = Journal::new(
        &name,
        Op::Run {
            meta: Some(Box::new(meta.clone())),
        },
    );
    journal.step("pin-maps")?;
    let mut guard = crate::paths::RemoveOnDrop::new(pin_dir.clone());
    let mut journal_guard = JournalOnDrop(Some(name.clone()));
    trust::create_private_dir(&pin_dir)?;
    trust::create_private_dir(&maps_dir)?;
    if let Some(with) = share_table {
        crate::share_table::pin_shared_flows(with, &name, &program, &output.layout, &maps_dir)?;
    }
    let pins: Vec<(&'static str, PathBuf)> = map_names(&output.layout)
        .into_iter()
        .map(|m| (m, maps_dir.join(m)))
        .collect();
    if let Some(map) = output.layout.globals_map {
        crate::globals::create_pinned(&program, &output.layout, &maps_dir.join(map))?;
    }

    journal.step("attach")?;
    let mut loaded = None;
    let load_error = std::sync::Mutex::new(None);
    let joined = {
        let object = &output.object;
        let symbol = &output.program_name;
        let pins = &pins;
        let port_indexes = &port_indexes;
        let loaded = &mut loaded;
        let load_error = &load_error;
        let prog_pin = pin_dir.join("prog");
        let mode_flags = match mode {
            XdpMode::Generic => dispatcher::XDP_FLAGS_SKB_MODE,
            XdpMode::Native | XdpMode::Auto => dispatcher::XDP_FLAGS_DRV_MODE,
        };
        within(target.as_ref(), move || {
            dispatcher::join(
                ifindex,
                NewComponent {
                    name: symbol.clone(),
                    priority,
                    chain_call_actions: CHAIN_ON_PASS,
                    load: Box::new(move |dispatcher_fd, slot| {
                        let mut attempt = || -> Result<std::os::fd::OwnedFd, ControlError> {
                            let mut object = kernel::load_extension(
                                object,
                                symbol,
                                pins,
                                port_indexes,
                                dispatcher_fd,
                                slot,
                            )?;
                            object.pin_program(&prog_pin)?;
                            let fd = object.program_fd()?;
                            *loaded = Some(object);
                            Ok(fd)
                        };
                        attempt().map_err(|e| {
                            let text = e.to_string();
                            if let Ok(mut slot) = load_error.lock() {
                                *slot = Some(e);
                            }
                            flowstate_runtime::RuntimeError::Dispatcher(text)
                        })
                    }),
                },
                mode_flags,
            )
        })?
    };
    let joined = match joined {
        Ok(joined) => joined,
        Err(e) => {
            let loading = load_error.into_inner().ok().flatten();
            return Err(loading.unwrap_or(ControlError::Attach {
                dev: spec.dev.clone(),
                message: e.to_string(),
            }));
        }
    };
    meta.prog_id = joined.prog_id;
    meta.started_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    journal.op = Op::Run {
        meta: Some(Box::new(meta.clone())),
    };
    journal.step("write-meta")?;
    meta.save(&paths::meta_path(&name))?;
    guard.disarm();
    journal_guard.0 = None;
    journal.finish()?;
    drop(loaded);
    Ok(crate::instance_of(&meta, 0, None))
}

/// Takes the instance's program out of its dispatcher (see [`crate::stop`]).
/// The program is found by its pin, else by the metadata's id.
pub(crate) fn leave(meta: &Meta) -> Result<(), ControlError> {
    let prog_id =
        program_id_of_pin(&paths::pin_dir(&meta.name).join("prog")).unwrap_or(meta.prog_id);
    if prog_id == 0 {
        return Ok(());
    }
    let place = meta.place();
    let left = netns::run_at(&place, || dispatcher::leave(meta.ifindex, prog_id));
    match left {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ControlError::Attach {
            dev: meta.dev.clone(),
            message: format!("taking program {prog_id} out of the XDP dispatcher: {e}"),
        }),
        // The namespace is gone, and its interfaces with it.
        Err(_) => Ok(()),
    }
}

fn program_id_of_pin(path: &std::path::Path) -> Option<u32> {
    aya::programs::ProgramInfo::from_pin(path)
        .ok()
        .map(|info| info.id())
}

/// The instance's place in its dispatcher, for `list`: a problem when it
/// is not running there, else `mode` with the slot and priority.
pub(crate) fn position(meta: &Meta) -> (Option<String>, String) {
    let place = meta.place();
    let occupant = netns::run_at(&place, || dispatcher::xdp_occupant(meta.ifindex));
    let components = match occupant {
        Ok(Ok(XdpOccupant::Dispatcher { components, .. })) => components,
        Ok(Ok(_)) => {
            return (
                Some(format!(
                    "no XDP dispatcher runs on {} (index {}) any more",
                    meta.dev, meta.ifindex
                )),
                meta.mode.clone(),
            )
        }
        Ok(Err(e)) => return (Some(e.to_string()), meta.mode.clone()),
        Err(why) => return (Some(why), meta.mode.clone()),
    };
    match components.iter().position(|c| c.prog_id == meta.prog_id) {
        Some(slot) => (
            None,
            format!(
                "{} dispatcher {}/{} prio {}",
                meta.mode,
                slot + 1,
                components.len(),
                components[slot].priority
            ),
        ),
        None => (
            Some(format!(
                "the XDP dispatcher on {} no longer runs program {}",
                meta.dev, meta.prog_id
            )),
            meta.mode.clone(),
        ),
    }
}

/// The dispatcher slot an instance's program runs in, as `reload` sees
/// it: the slot's program is replaced by putting another extension in its
/// place, in one dispatcher swap (libxdp's way of changing a dispatcher:
/// a freplace link cannot be updated in place, and a slot function takes
/// one extension at a time, so a new dispatcher is the atomic step).
#[derive(Debug, Clone)]
pub(crate) struct DispatcherSlot {
    place: crate::netns::Place,
    ifindex: u32,
    dev: String,
    /// The instance's programs that may be in the slot: the one there
    /// before a reload and those the reload puts there in turn.
    ours: Vec<u32>,
}

impl DispatcherSlot {
    /// The slot of `meta`'s instance, holding one of `ours` (ids of 0,
    /// not known yet, are left out).
    pub fn of(meta: &Meta, ours: &[u32]) -> DispatcherSlot {
        DispatcherSlot {
            place: meta.place(),
            ifindex: meta.ifindex,
            dev: meta.dev.clone(),
            ours: ours.iter().copied().filter(|id| *id != 0).collect(),
        }
    }

    fn attach_error(&self, what: &str, e: impl std::fmt::Display) -> ControlError {
        ControlError::Attach {
            dev: self.dev.clone(),
            message: format!("{what}: {e}"),
        }
    }

    fn run<T: Send>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, flowstate_runtime::RuntimeError> + Send,
    ) -> Result<T, ControlError> {
        crate::netns::run_at(&self.place, f)
            .map_err(|why| self.attach_error(what, why))?
            .map_err(|e| self.attach_error(what, e))
    }

    /// Which of our programs runs in the dispatcher (`None`: none does,
    /// e.g. the interface or the dispatcher is gone).
    pub fn running(&self) -> Result<Option<u32>, ControlError> {
        let ifindex = self.ifindex;
        let occupant = self.run("reading the XDP dispatcher", move || {
            dispatcher::xdp_occupant(ifindex)
        });
        let components = match occupant {
            Ok(XdpOccupant::Dispatcher { components, .. }) => components,
            Ok(_) => return Ok(None),
            // The namespace, and the interface with it, is gone.
            Err(_) if crate::netns::run_at(&self.place, || ()).is_err() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(components
            .iter()
            .map(|c| c.prog_id)
            .find(|id| self.ours.contains(id)))
    }

    /// The running dispatcher and slot function of program `prog_id`, to
    /// load its replacement against (see `dispatcher::slot_target`).
    pub fn load_target(
        &self,
        prog_id: u32,
    ) -> Result<(aya::programs::ProgramFd, String), ControlError> {
        let ifindex = self.ifindex;
        self.run("finding the instance's dispatcher slot", move || {
            dispatcher::slot_target(ifindex, prog_id)
        })
    }

    /// Puts the extension behind `fd` in the slot, in place of whichever
    /// of ours runs there (nothing to do when it already runs there).
    pub fn swap_in(&self, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), ControlError> {
        let prog = fd
            .try_clone_to_owned()
            .map_err(|e| ControlError::kernel("duplicating the program fd", e))?;
        let (ifindex, ours) = (self.ifindex, self.ours.clone());
        self.run(
            "swapping the program in its XDP dispatcher slot",
            move || dispatcher::swap_in(ifindex, &ours, prog),
        )
        .map(drop)
    }

    /// [`DispatcherSlot::swap_in`] of a pinned program. When `repairing`,
    /// a slot none of ours runs in any more (the interface, its
    /// namespace or the dispatcher is gone) is skipped: nothing runs
    /// there to hand over.
    pub fn swap_in_pinned(&self, prog_pin: &Path, repairing: bool) -> Result<(), ControlError> {
        if repairing && self.running()?.is_none() {
            return Ok(());
        }
        let fd = crate::links::obj_get(prog_pin)
            .map_err(|e| ControlError::kernel(format!("opening {}", prog_pin.display()), e))?;
        self.swap_in(std::os::fd::AsFd::as_fd(&fd))
    }
}
