//! Sharing the TC hook: how a TC instance is attached (a TCX link, or a
//! clsact filter where TCX is missing or not wanted), where it sits among
//! the other programs on the hook, and the one handle ([`Attachment`])
//! through which `list`, `stop`, `reload` and the repairs find, check and
//! swap the program whichever way it is attached.
//!
//! TCX: the pinned link `NAME/link`; order through BPF_F_BEFORE/AFTER
//! relative to a program id. clsact: no link exists, so the metadata
//! records the filter's name ([`TcFilter`]: priority and handle on the
//! instance's interface and direction); order through priorities (lower
//! runs first).

use std::path::{Path, PathBuf};

use flowstate_runtime::clsact::{self, Filter, Placement};
use flowstate_runtime::TcDirection;
use serde::{Deserialize, Serialize};

use crate::meta::Meta;
use crate::netns::Place;
use crate::{kernel, paths, AttachPoint, ControlError};

/// How a TC program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcVia {
    /// TCX where the kernel has it (6.6+), else clsact.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl TcVia {
    /// `FLOWSTATE_TC_ATTACH=tcx|clsact|auto` overrides `Auto` (tests
    /// force the clsact path on a kernel with TCX through it).
    fn resolve(self) -> Result<Resolved, ControlError> {
        let chosen = match self {
            TcVia::Auto => match std::env::var("FLOWSTATE_TC_ATTACH").ok().as_deref() {
                Some("tcx") => TcVia::Tcx,
                Some("clsact") => TcVia::Clsact,
                _ => TcVia::Auto,
            },
            other => other,
        };
        let has_tcx = || {
            flowstate_runtime::kernel_features()
                .get(flowstate_runtime::Feature::Tcx)
                .is_present()
        };
        Ok(match chosen {
            // Refused before anything is loaded or attached: aya would
            // only fail later, with an error that does not say why. (A
            // probe that could not tell lets the attach try.)
            TcVia::Tcx if tcx_absent() => return Err(no_tcx()),
            TcVia::Tcx => Resolved::Tcx,
            TcVia::Clsact => Resolved::Clsact,
            TcVia::Auto if has_tcx() => Resolved::Tcx,
            TcVia::Auto => Resolved::Clsact,
        })
    }
}

/// Whether the probe found that this kernel refuses TCX.
fn tcx_absent() -> bool {
    matches!(
        flowstate_runtime::kernel_features().get(flowstate_runtime::Feature::Tcx),
        flowstate_runtime::Presence::Absent { .. }
    )
}

/// `--tc-attach tcx` (or `FLOWSTATE_TC_ATTACH=tcx`) on a kernel whose
/// probe found no TCX.
fn no_tcx() -> ControlError {
    let features = flowstate_runtime::kernel_features();
    let reason = match features.get(flowstate_runtime::Feature::Tcx) {
        flowstate_runtime::Presence::Absent { reason } => reason.clone(),
        other => format!("{other:?}"),
    };
    ControlError::Kernel {
        what: "--tc-attach tcx".to_string(),
        message: format!(
            "this kernel ({}) has no TCX (TC programs attached through a bpf_link, Linux 6.6; \
             {reason}); nothing was attached. Use --tc-attach clsact, or auto (the default), \
             which takes clsact where TCX is missing",
            features.release
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    Tcx,
    Clsact,
}

/// Another program on the hook, named at `run --before/--after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relative {
    /// A flowstate instance.
    Instance(String),
    /// A program id (`bpftool prog show`).
    Program(u32),
    /// A pinned program (or link) under bpffs.
    Pinned(PathBuf),
}

impl Relative {
    /// `NAME`, `ID` or `/PATH`, as the CLI takes it.
    pub fn parse(text: &str) -> Relative {
        if let Ok(id) = text.parse::<u32>() {
            Relative::Program(id)
        } else if text.contains('/') {
            Relative::Pinned(PathBuf::from(text))
        } else {
            Relative::Instance(text.to_string())
        }
    }

    fn describe(&self) -> String {
        match self {
            Relative::Instance(name) => format!("instance {name}"),
            Relative::Program(id) => format!("program {id}"),
            Relative::Pinned(path) => format!("the program pinned at {}", path.display()),
        }
    }

    /// The program id it names.
    fn prog_id(&self) -> Result<u32, ControlError> {
        match self {
            Relative::Instance(name) => {
                let meta = Meta::load(&paths::meta_path(name))
                    .map_err(|_| ControlError::NotRunning(name.clone()))?;
                Ok(meta.prog_id)
            }
            Relative::Program(id) => Ok(*id),
            Relative::Pinned(path) => pinned_prog_id(path),
        }
    }
}

/// The program of a pinned program, or of a pinned link. The kernel
/// answers the info call for either kind of fd, each with its own struct,
/// so the fd's kind comes from its fdinfo (a link's has `link_type`).
fn pinned_prog_id(path: &Path) -> Result<u32, ControlError> {
    use std::os::fd::AsRawFd;
    if let Ok(fd) = crate::links::obj_get(path) {
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .unwrap_or_default();
        if fdinfo.lines().any(|l| l.starts_with("link_type:")) {
            return crate::links::state_of(std::os::fd::AsFd::as_fd(&fd))
                .map(|link| link.prog_id)
                .map_err(|e| ControlError::kernel(format!("reading {}", path.display()), e));
        }
    }
    aya::programs::ProgramInfo::from_pin(path)
        .map(|info| info.id())
        .map_err(|e| {
            ControlError::kernel(
                format!("reading {}", path.display()),
                format!("{e}: give a pinned program or link, a program id or an instance name"),
            )
        })
}

/// Where a TC program goes on its hook: first in line by default is the
/// kernel's choice; flowstate puts it last unless told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Last,
    Before(Relative),
    After(Relative),
}

/// How and where a TC instance attaches (`run --tc-attach`, `--before`,
/// `--after`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcPlacement {
    pub via: TcVia,
    pub order: Order,
}

impl TcPlacement {
    pub(crate) fn resolve(&self) -> Result<Resolved, ControlError> {
        self.via.resolve()
    }
}

/// What names a clsact filter of an instance (with the metadata's
/// interface index, direction and namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcFilter {
    pub priority: u16,
    pub handle: u32,
    /// flowstate added the clsact qdisc: `stop` removes it once no filter
    /// is left on it.
    pub qdisc_created: bool,
}

pub(crate) fn direction(attach: AttachPoint) -> TcDirection {
    match attach {
        AttachPoint::TcEgress => TcDirection::Egress,
        _ => TcDirection::Ingress,
    }
}

/// The TCX order for `order`, as aya takes it.
pub(crate) fn tcx_order(order: &Order) -> Result<aya::programs::LinkOrder, ControlError> {
    use aya::programs::{LinkOrder, ProgramId};
    Ok(match order {
        Order::Last => LinkOrder::last(),
        // SAFETY (of ProgramId::new): an id that names no program makes
        // the kernel refuse the attach (ENOENT), reported to the user.
        Order::Before(r) => LinkOrder::before_program_id(unsafe { ProgramId::new(r.prog_id()?) }),
        Order::After(r) => LinkOrder::after_program_id(unsafe { ProgramId::new(r.prog_id()?) }),
    })
}

/// Adds the clsact qdisc if missing and chooses the filter's priority for
/// `order`; runs in the interface's namespace.
pub(crate) fn plan_filter(
    ifindex: u32,
    attach: AttachPoint,
    order: &Order,
) -> Result<TcFilter, ControlError> {
    let qdisc_created =
        clsact::add_qdisc(ifindex).map_err(|e| ControlError::kernel("adding a clsact qdisc", e))?;
    let plan = || -> Result<TcFilter, ControlError> {
        let existing = clsact::filters(ifindex, direction(attach))
            .map_err(|e| ControlError::kernel("listing the clsact filters", e))?;
        let placement = match order {
            Order::Last => Placement::Last,
            Order::Before(r) => Placement::Before(priority_of(&existing, r)?),
            Order::After(r) => Placement::After(priority_of(&existing, r)?),
        };
        let priority = clsact::priority_for(&existing, placement).ok_or_else(|| {
            ControlError::kernel(
                "placing the clsact filter",
                "no free filter priority there (`tc filter show` lists them): move the other \
                 filters apart, or attach elsewhere in the order",
            )
        })?;
        Ok(TcFilter {
            priority,
            handle: clsact::HANDLE,
            qdisc_created,
        })
    };
    plan().inspect_err(|_| {
        if qdisc_created {
            let _ = clsact::delete_qdisc(ifindex);
        }
    })
}

fn priority_of(existing: &[Filter], relative: &Relative) -> Result<u16, ControlError> {
    let id = relative.prog_id()?;
    existing
        .iter()
        .find(|f| f.prog_id == id)
        .map(|f| f.priority)
        .ok_or_else(|| {
            ControlError::kernel(
                "placing the clsact filter",
                format!(
                    "{} (program {id}) has no clsact filter on this hook (`tc filter show dev \
                     DEV ingress` lists them)",
                    relative.describe()
                ),
            )
        })
}

/// The program of a TC instance on its interface, however attached.
#[derive(Debug, Clone)]
pub(crate) enum Attachment {
    /// A bpf_link pinned at this path (XDP or TCX).
    Link(PathBuf),
    Filter {
        place: Place,
        ifindex: u32,
        direction: TcDirection,
        filter: TcFilter,
    },
}

impl Attachment {
    pub fn of(meta: &Meta) -> Attachment {
        match meta.tc_filter {
            Some(filter) => Attachment::Filter {
                place: meta.place(),
                ifindex: meta.ifindex,
                direction: direction(meta.attach),
                filter,
            },
            None => Attachment::Link(paths::pin_dir(&meta.name).join("link")),
        }
    }

    /// Runs `f` in the filter's namespace.
    fn within<T: Send>(
        place: &Place,
        what: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> Result<T, ControlError> {
        crate::netns::run_at(place, f)
            .map_err(|why| ControlError::kernel(what, why))?
            .map_err(|e| ControlError::kernel(what, e))
    }

    /// The filter itself, `None` when it is gone.
    fn current_filter(&self) -> Result<Option<Filter>, ControlError> {
        match self {
            Attachment::Link(_) => Ok(None),
            Attachment::Filter {
                place,
                ifindex,
                direction,
                filter,
            } => Self::within(place, "reading the clsact filter", || {
                clsact::filter_at(*ifindex, *direction, filter.priority, filter.handle)
            }),
        }
    }

    /// The id of the program it runs.
    pub fn program_id(&self) -> Result<u32, ControlError> {
        match self {
            Attachment::Link(path) => kernel::link_program_id(path),
            Attachment::Filter { filter, .. } => match self.current_filter()? {
                Some(found) => Ok(found.prog_id),
                None => Err(ControlError::kernel(
                    "reading the clsact filter",
                    format!(
                        "no filter at priority {} handle {} (deleted, or its interface is gone)",
                        filter.priority, filter.handle
                    ),
                )),
            },
        }
    }

    /// Puts the pinned program in place of the running one, atomically.
    pub fn replace_with_pinned(&self, prog_pin: &Path) -> Result<(), ControlError> {
        match self {
            Attachment::Link(link) => kernel::replace_with_pinned(link, prog_pin),
            Attachment::Filter { .. } => {
                let fd = crate::links::obj_get(prog_pin).map_err(|e| {
                    ControlError::kernel(format!("opening {}", prog_pin.display()), e)
                })?;
                let name = prog_name(prog_pin);
                self.replace_with_fd(std::os::fd::AsFd::as_fd(&fd), &name)
            }
        }
    }

    /// [`Attachment::replace_with_pinned`], except that an attachment the
    /// kernel has removed with its interface is `Ok(false)`.
    pub fn replace_unless_severed(&self, prog_pin: &Path) -> Result<bool, ControlError> {
        match self {
            Attachment::Link(link) => kernel::replace_with_pinned_unless_severed(link, prog_pin),
            Attachment::Filter { .. } => match self.current_filter() {
                Ok(None) | Err(_) => Ok(false),
                Ok(Some(_)) => self.replace_with_pinned(prog_pin).map(|()| true),
            },
        }
    }

    /// Puts the program behind `fd` on the attachment, atomically.
    pub fn replace_with_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), ControlError> {
        match self {
            Attachment::Link(link) => {
                let prog = std::os::fd::AsRawFd::as_raw_fd(&fd);
                kernel::link_update_fd(link, prog)
            }
            Attachment::Filter {
                place,
                ifindex,
                direction,
                filter,
            } => {
                // The replace must not create a filter where there is none
                // (its interface went, or `tc filter del`): check first.
                if self.current_filter()?.is_none() {
                    return Err(ControlError::kernel(
                        "replacing the program of the clsact filter",
                        format!("no filter at priority {} any more", filter.priority),
                    ));
                }
                let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
                Self::within(place, "replacing the program of the clsact filter", || {
                    // SAFETY: raw is fd, open for the whole call.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
                    clsact::replace_program(*ifindex, *direction, filter.priority, fd, name)
                })
            }
        }
    }

    /// Deletes the filter if it still runs one of `ours` (another
    /// program there now is left alone), then the clsact qdisc if
    /// flowstate added it and no filter is left on it. A no-op for a link.
    pub fn remove_filter(&self, ours: &[u32]) -> Result<(), ControlError> {
        let Attachment::Filter {
            place,
            ifindex,
            direction,
            filter,
        } = self
        else {
            return Ok(());
        };
        let found = match self.current_filter() {
            Ok(found) => found,
            // The interface (or its namespace) is gone, with the filter.
            Err(_) => return Ok(()),
        };
        if let Some(found) = found {
            if ours.contains(&found.prog_id) {
                Self::within(place, "deleting the clsact filter", || {
                    clsact::delete_filter(*ifindex, *direction, filter.priority)
                })?;
            } else {
                eprintln!(
                    "note: the clsact filter at priority {} now runs program {} ({}), not \
                     flowstate's: left in place",
                    filter.priority, found.prog_id, found.name
                );
            }
        }
        // The qdisc goes with the last filter if flowstate added it: this
        // instance, or another one since stopped (the marker).
        let marker = qdisc_marker(place, *ifindex);
        if filter.qdisc_created || marker.exists() {
            let emptied = Self::within(place, "deleting the clsact qdisc", || {
                let empty = clsact::filters(*ifindex, TcDirection::Ingress)?.is_empty()
                    && clsact::filters(*ifindex, TcDirection::Egress)?.is_empty();
                if empty {
                    clsact::delete_qdisc(*ifindex)?;
                }
                Ok(empty)
            });
            if !matches!(emptied, Ok(false)) {
                let _ = std::fs::remove_file(&marker);
            }
        }
        Ok(())
    }
}

/// A file that says flowstate added the clsact qdisc of interface
/// `ifindex` in `place`, so that whichever flowstate instance removes the
/// last filter on it also removes the qdisc (not only the instance that
/// added it, which may stop first).
fn qdisc_marker(place: &Place, ifindex: u32) -> PathBuf {
    paths::meta_dir().join(format!("clsact-{}-{ifindex}.qdisc", place.inode))
}

/// Records that flowstate added the clsact qdisc (see [`qdisc_marker`]).
pub(crate) fn mark_qdisc_added(place: &Place, ifindex: u32) {
    let _ = crate::trust::create_private_file(&qdisc_marker(place, ifindex));
}

/// The program name a pinned program was loaded with (the filter's label).
fn prog_name(prog_pin: &Path) -> String {
    aya::programs::ProgramInfo::from_pin(prog_pin)
        .ok()
        .and_then(|info| info.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "flowstate".to_string())
}

/// One program on a TC hook, in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookProgram {
    pub prog_id: u32,
    pub name: String,
}

/// The programs on the hook of a TC instance, in run order: the TCX chain
/// (bpf_prog_query), or the clsact filters by priority. Runs in the
/// interface's namespace.
pub(crate) fn hook_programs(meta: &Meta) -> Result<Vec<HookProgram>, String> {
    let direction = direction(meta.attach);
    let ifindex = meta.ifindex;
    let dev = meta.dev.clone();
    let clsact_mode = meta.tc_filter.is_some();
    crate::netns::run_at(&meta.place(), move || {
        if clsact_mode {
            clsact::filters(ifindex, direction)
                .map(|filters| {
                    filters
                        .into_iter()
                        .map(|f| HookProgram {
                            prog_id: f.prog_id,
                            name: f.name,
                        })
                        .collect()
                })
                .map_err(|e| e.to_string())
        } else {
            let attach_type = match direction {
                TcDirection::Ingress => aya::programs::TcAttachType::Ingress,
                TcDirection::Egress => aya::programs::TcAttachType::Egress,
            };
            aya::programs::SchedClassifier::query_tcx(&dev, attach_type)
                .map(|(_, programs)| {
                    programs
                        .iter()
                        .map(|p| HookProgram {
                            prog_id: p.id(),
                            name: p.name_as_str().unwrap_or_default().to_string(),
                        })
                        .collect()
                })
                .map_err(|e| e.to_string())
        }
    })?
}
