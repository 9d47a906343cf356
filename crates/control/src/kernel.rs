//! The aya calls of the control plane: loading an object with its maps
//! pinned (or reused from pins), attaching through a `bpf_link`, pinning
//! the link and replacing the program on a pinned link.
//!
//! flowstate-runtime's loader creates fresh maps only; hot replacement
//! needs aya's `EbpfLoader::map_pin_path`, which opens a map already pinned
//! at the path (or creates and pins it there), so this module talks to aya
//! directly.

use std::path::Path;

use aya::maps::Array;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Program, ProgramError, SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};

use crate::{AttachPoint, ControlError, XdpMode};

/// The interface's index, or a clear error.
pub(crate) fn ifindex(dev: &str) -> Result<u32, ControlError> {
    let Ok(c_dev) = std::ffi::CString::new(dev) else {
        return Err(ControlError::NoSuchInterface(dev.to_string()));
    };
    // SAFETY: c_dev is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(c_dev.as_ptr()) };
    if index == 0 {
        Err(ControlError::NoSuchInterface(dev.to_string()))
    } else {
        Ok(index)
    }
}

/// An object in the kernel, its program verified.
pub(crate) struct LoadedObject {
    ebpf: Ebpf,
    program: String,
}

/// Loads `object`; each `(map, path)` in `pins` is opened from its pin if
/// one exists there, else created and pinned there. `ports`: the ifindex
/// of each slot of the `ports` map (see [`crate::ports`]), written before
/// the program can run.
pub(crate) fn load(
    object: &[u8],
    program: &str,
    pins: &[(&'static str, std::path::PathBuf)],
    ports: &[u32],
) -> Result<LoadedObject, ControlError> {
    let mut loader = EbpfLoader::new();
    loader.verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
    let object = pin_maps(&mut loader, object, pins)?;
    let mut ebpf = loader
        .load(object)
        .map_err(|e| permission_or(e, |e| ControlError::kernel("loading the object", e)))?;
    fill_ports(&mut ebpf, ports)?;
    let loaded = match ebpf.program_mut(program) {
        Some(Program::Xdp(p)) => p.load(),
        Some(Program::SchedClassifier(p)) => p.load(),
        Some(_) | None => {
            return Err(ControlError::kernel(
                "loading the object",
                format!("no XDP or TC program named {program}"),
            ))
        }
    };
    loaded.map_err(program_error)?;
    Ok(LoadedObject {
        ebpf,
        program: program.to_string(),
    })
}

/// Loads `program` of `object` as an XDP program that only a dispatcher
/// slot's extension tail-calls (see `RawProgram::load_xdp_object`), on
/// the maps of `sibling`, a build of the same object already loaded (its
/// pinned maps opened, its `ports` filled).
pub(crate) fn load_tail_call_target(
    object: &[u8],
    program: &str,
    sibling: &LoadedObject,
) -> Result<flowstate_runtime::RawProgram, ControlError> {
    let maps = sibling
        .ebpf
        .maps()
        .map(|(name, map)| {
            flowstate_runtime::RawMap::from_map(name, map)
                .map(|raw| (name.to_string(), raw))
                .map_err(|e| ControlError::kernel(format!("opening map {name}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let by_name: Vec<(&str, &flowstate_runtime::RawMap)> = maps
        .iter()
        .map(|(name, map)| (name.as_str(), map))
        .collect();
    flowstate_runtime::RawProgram::load_xdp_object(object, program, &by_name)
        .map_err(|e| ControlError::kernel(format!("loading {program}"), e))
}

/// Loads `object` as [`load`] does, its program as an extension replacing
/// function `slot` of program `target` (a dispatcher's slot).
pub(crate) fn load_extension(
    object: &[u8],
    program: &str,
    pins: &[(&'static str, std::path::PathBuf)],
    ports: &[u32],
    target: &aya::programs::ProgramFd,
    slot: &str,
) -> Result<LoadedObject, ControlError> {
    let mut loader = EbpfLoader::new();
    loader.verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
    loader.extension(program);
    let object = pin_maps(&mut loader, object, pins)?;
    let mut ebpf = loader
        .load(object)
        .map_err(|e| permission_or(e, |e| ControlError::kernel("loading the object", e)))?;
    fill_ports(&mut ebpf, ports)?;
    let Some(Program::Extension(ext)) = ebpf.program_mut(program) else {
        return Err(ControlError::kernel(
            "loading the object",
            format!("no program named {program}"),
        ));
    };
    let target = target
        .try_clone()
        .map_err(|e| ControlError::kernel("duplicating the dispatcher's fd", e))?;
    ext.load(target, slot).map_err(program_error)?;
    Ok(LoadedObject {
        ebpf,
        program: program.to_string(),
    })
}

/// Tells `loader` where each map of `pins` is pinned, under the name the
/// loader gives it: the globals' map is `.data` in a portable object and
/// `globals` in one built to reuse it (`Options::globals_reused`). Returns
/// the object, after checking it has the form its globals' pin calls for:
/// aya writes a `.data` object's initial values even into a map it reuses.
fn pin_maps<'p>(
    loader: &mut EbpfLoader<'p>,
    object: &'p [u8],
    pins: &'p [(&'static str, std::path::PathBuf)],
) -> Result<&'p [u8], ControlError> {
    use flowstate_codegen::layout::{GLOBALS_MAP, GLOBALS_SECTION};
    for (map, path) in pins {
        loader.map_pin_path(map, path.as_path());
        if *map != GLOBALS_MAP {
            continue;
        }
        loader.map_pin_path(GLOBALS_SECTION, path.as_path());
        let portable = flowstate_obj::has_section(object, GLOBALS_SECTION)
            .map_err(|e| ControlError::kernel("loading the object", e))?;
        if portable == path.exists() {
            return Err(ControlError::kernel(
                "loading the object",
                format!(
                    "internal error (a flowstate bug): an object whose globals are {} with \
                     {} pinned at {}",
                    if portable { "in .data" } else { "a reused map" },
                    if portable { "a map already" } else { "no map" },
                    path.display()
                ),
            ));
        }
    }
    Ok(object)
}

/// A new fd for the loaded program (to hand to the dispatcher code).
impl LoadedObject {
    pub fn program_fd(&self) -> Result<std::os::fd::OwnedFd, ControlError> {
        use std::os::fd::AsFd;
        let program = self
            .ebpf
            .program(&self.program)
            .ok_or_else(|| ControlError::kernel("program", format!("{} vanished", self.program)))?;
        program
            .fd()
            .map_err(|e| ControlError::kernel("program fd", e))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| ControlError::kernel("duplicating the program fd", e))
    }
}

/// Writes the redirect ports' ifindexes into the object's `ports` map.
fn fill_ports(ebpf: &mut Ebpf, ports: &[u32]) -> Result<(), ControlError> {
    if ports.is_empty() {
        return Ok(());
    }
    let error = |e: String| ControlError::kernel("filling the redirect ports map", e);
    let map = ebpf
        .map_mut(flowstate_codegen::layout::PORTS_MAP)
        .ok_or_else(|| error("the object has no ports map".to_string()))?;
    let mut array: Array<_, u32> = Array::try_from(map).map_err(|e| error(e.to_string()))?;
    for (slot, ifindex) in ports.iter().enumerate() {
        array
            .set(slot as u32, ifindex, 0)
            .map_err(|e| error(e.to_string()))?;
    }
    Ok(())
}

fn program_error(e: ProgramError) -> ControlError {
    match e {
        ProgramError::LoadError { verifier_log, .. } => ControlError::Verifier {
            log: verifier_log.to_string(),
        },
        other => permission_or(other, |e| ControlError::kernel("loading the program", e)),
    }
}

/// EPERM anywhere in an error's text means missing privileges.
fn permission_or<E: std::fmt::Display>(e: E, f: impl FnOnce(E) -> ControlError) -> ControlError {
    let text = e.to_string();
    if text.contains("Operation not permitted") {
        ControlError::NeedsRoot
    } else {
        f(e)
    }
}

impl LoadedObject {
    fn program_mut(&mut self) -> Result<&mut Program, ControlError> {
        self.ebpf
            .program_mut(&self.program)
            .ok_or_else(|| ControlError::kernel("program", format!("{} vanished", self.program)))
    }

    pub fn prog_id(&self) -> Result<u32, ControlError> {
        let program = self
            .ebpf
            .program(&self.program)
            .ok_or_else(|| ControlError::kernel("program", format!("{} vanished", self.program)))?;
        program
            .info()
            .map(|info| info.id())
            .map_err(|e| ControlError::kernel("reading program info", e))
    }

    pub fn pin_program(&mut self, path: &Path) -> Result<(), ControlError> {
        self.program_mut()?
            .pin(path)
            .map_err(|e| ControlError::kernel(format!("pinning {}", path.display()), e))
    }

    /// Attaches through a `bpf_link`; returns the link and the mode name.
    pub fn attach(
        &mut self,
        dev: &str,
        attach: AttachPoint,
        order: aya::programs::LinkOrder,
    ) -> Result<(FdLink, String), ControlError> {
        let attach_error = |message: String| ControlError::Attach {
            dev: dev.to_string(),
            message,
        };
        match (self.program_mut()?, attach) {
            (Program::Xdp(xdp), AttachPoint::Xdp { mode }) => {
                let tries: &[(aya::programs::XdpMode, &str)] = match mode {
                    XdpMode::Native => &[(aya::programs::XdpMode::Driver, "native")],
                    XdpMode::Generic => &[(aya::programs::XdpMode::Skb, "generic")],
                    XdpMode::Auto => &[
                        (aya::programs::XdpMode::Driver, "native"),
                        (aya::programs::XdpMode::Skb, "generic"),
                    ],
                };
                let mut last = String::new();
                for (mode, name) in tries {
                    match attach_xdp(xdp, dev, *mode) {
                        Ok(link) => return Ok((link, name.to_string())),
                        Err(e) => last = describe_attach_error(&e, "XDP", name),
                    }
                }
                Err(attach_error(last))
            }
            (Program::SchedClassifier(tc), AttachPoint::TcIngress | AttachPoint::TcEgress) => {
                let direction = if attach == AttachPoint::TcIngress {
                    TcAttachType::Ingress
                } else {
                    TcAttachType::Egress
                };
                let link = attach_tc(tc, dev, direction, order)
                    .map_err(|e| attach_error(describe_attach_error(&e, "TC", "tcx")))?;
                Ok((link, "tcx".to_string()))
            }
            _ => Err(attach_error(format!(
                "the program was compiled for another hook than {}",
                attach.hook_name()
            ))),
        }
    }

    /// Attaches as a clsact filter (direct action) at `filter`'s priority
    /// on interface `ifindex`; call in the interface's namespace.
    pub fn attach_filter(
        &self,
        dev: &str,
        ifindex: u32,
        attach: AttachPoint,
        filter: &crate::tc::TcFilter,
    ) -> Result<(), ControlError> {
        use std::os::fd::BorrowedFd;
        let fd = self.prog_fd()?;
        // SAFETY: the fd belongs to the program this object holds.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        flowstate_runtime::clsact::add_filter(
            ifindex,
            crate::tc::direction(attach),
            filter.priority,
            fd,
            &self.program,
        )
        .map_err(|e| ControlError::Attach {
            dev: dev.to_string(),
            message: format!(
                "adding a clsact filter at priority {}: {e}",
                filter.priority
            ),
        })
    }

    /// The program's name (a clsact filter's label).
    pub fn program_name(&self) -> &str {
        &self.program
    }
}

fn attach_xdp(
    xdp: &mut Xdp,
    dev: &str,
    mode: aya::programs::XdpMode,
) -> Result<FdLink, ProgramError> {
    let id = xdp.attach(dev, mode)?;
    let link = xdp.take_link(id)?;
    FdLink::try_from(link).map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))
}

fn attach_tc(
    tc: &mut SchedClassifier,
    dev: &str,
    direction: TcAttachType,
    order: aya::programs::LinkOrder,
) -> Result<FdLink, ProgramError> {
    let id = tc.attach_with_options(
        dev,
        direction,
        aya::programs::tc::TcAttachOptions::TcxOrder(order),
    )?;
    let link = tc.take_link(id)?;
    FdLink::try_from(link).map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))
}

/// Says what an attach failure means and what to do about it.
fn describe_attach_error(e: &ProgramError, hook: &str, mode: &str) -> String {
    let text = match e {
        ProgramError::SyscallError(s) => format!("{}: {}", s.call, s.io_error),
        other => other.to_string(),
    };
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EBUSY) | Some(libc::EEXIST) => format!(
            "the interface already has an {hook} program attached ({text}); remove it first \
             (`ip link set dev DEV xdp off`, or `flowstate list` / `bpftool net`){}",
            if hook == "XDP" {
                ", or share the hook: load that program with `xdp-loader load DEV OBJECT` \
                 (libxdp's dispatcher) and run flowstate with --xdp-share shared"
            } else {
                ""
            }
        ),
        Some(libc::EOPNOTSUPP) => format!(
            "the driver does not support {hook} in {mode} mode ({text}); try --xdp-mode generic"
        ),
        Some(libc::EPERM) => "needs root (CAP_BPF, CAP_NET_ADMIN)".to_string(),
        Some(libc::ENOENT) if hook == "TC" => format!(
            "the program named by --before/--after is not on this hook ({text}); see `flowstate \
             list` (HOOK lines) or `bpftool net`"
        ),
        _ => text,
    }
}

/// Pins the link so the program stays attached after this process exits.
pub(crate) fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink, ControlError> {
    link.pin(path)
        .map_err(|e| ControlError::kernel(format!("pinning the link at {}", path.display()), e))
}

/// The id of the program a pinned link runs.
pub(crate) fn link_program_id(path: &Path) -> Result<u32, ControlError> {
    let pinned = PinnedLink::from_pin(path)
        .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))?;
    let fd_link = FdLink::from(pinned);
    fd_link
        .info()
        .map(|info| info.program_id())
        .map_err(|e| ControlError::kernel("reading link info", e))
}

/// Removes a link pin and detaches the program now. Unlinking the pin
/// alone would leave the detach to a kernel work item (it runs a moment
/// later); closing the last fd instead detaches synchronously, so hold an
/// fd across the unlink and close it last.
pub(crate) fn unpin_link(path: &Path) -> Result<(), ControlError> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            let fd_link = pinned
                .unpin()
                .map_err(|e| ControlError::kernel(format!("removing {}", path.display()), e))?;
            drop(fd_link);
            Ok(())
        }
        // Not a usable link (stale pin): just remove the file.
        Err(_) => std::fs::remove_file(path)
            .map_err(|e| ControlError::kernel(format!("removing {}", path.display()), e)),
    }
}

impl LoadedObject {
    /// The program's fd, for a program array slot.
    pub fn prog_fd(&self) -> Result<std::os::fd::RawFd, ControlError> {
        use std::os::fd::{AsFd, AsRawFd};
        let program = self
            .ebpf
            .program(&self.program)
            .ok_or_else(|| ControlError::kernel("program", format!("{} vanished", self.program)))?;
        let fd = program
            .fd()
            .map_err(|e| ControlError::kernel("program fd", e))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Runs the (XDP) program once on `packet` with `BPF_PROG_TEST_RUN`;
    /// its return value.
    pub fn test_run(&self, packet: &[u8]) -> Result<u32, ControlError> {
        use aya::programs::{TestRun, TestRunOptions};
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::default()
        };
        match self.ebpf.program(&self.program) {
            Some(Program::Xdp(p)) => p
                .test_run(opts)
                .map(|r| r.return_value)
                .map_err(|e| ControlError::kernel("BPF_PROG_TEST_RUN", e)),
            _ => Err(ControlError::kernel(
                "BPF_PROG_TEST_RUN",
                format!("{} is not an XDP program", self.program),
            )),
        }
    }
}

/// Puts the program pinned at `prog_pin` on the link pinned at
/// `link_pin` (`bpf_link_update`, atomic like [`LoadedObject::replace`]).
pub(crate) fn replace_with_pinned(link_pin: &Path, prog_pin: &Path) -> Result<(), ControlError> {
    link_update(link_pin, prog_pin)?.map_err(|e| ControlError::kernel("bpf_link_update", e))
}

/// [`replace_with_pinned`], except that a link the kernel has severed
/// (its interface is gone: `ENOLINK`) is `Ok(false)`, not an error.
pub(crate) fn replace_with_pinned_unless_severed(
    link_pin: &Path,
    prog_pin: &Path,
) -> Result<bool, ControlError> {
    match link_update(link_pin, prog_pin)? {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(false),
        Err(e) => Err(ControlError::kernel("bpf_link_update", e)),
    }
}

/// `BPF_LINK_UPDATE` of the pinned link to the pinned program: the outer
/// error is opening the pins, the inner one the update itself.
fn link_update(link_pin: &Path, prog_pin: &Path) -> Result<std::io::Result<()>, ControlError> {
    use std::os::fd::AsRawFd;
    let prog = obj_get(prog_pin)?;
    link_update_raw(link_pin, prog.as_raw_fd())
}

/// `BPF_LINK_UPDATE` of the pinned link to the program behind `prog_fd`
/// (atomic like [`replace_with_pinned`]).
pub(crate) fn link_update_fd(
    link_pin: &Path,
    prog_fd: std::os::fd::RawFd,
) -> Result<(), ControlError> {
    link_update_raw(link_pin, prog_fd)?.map_err(|e| ControlError::kernel("bpf_link_update", e))
}

fn link_update_raw(
    link_pin: &Path,
    prog_fd: std::os::fd::RawFd,
) -> Result<std::io::Result<()>, ControlError> {
    let link = obj_get(link_pin)?;
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    use std::os::fd::AsRawFd;
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog_fd as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    Ok(crate::links::bpf(BPF_LINK_UPDATE, &mut attr).map(drop))
}

const BPF_LINK_UPDATE: libc::c_long = 29;

/// Opens a pinned object.
fn obj_get(path: &Path) -> Result<std::os::fd::OwnedFd, ControlError> {
    crate::links::obj_get(path)
        .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))
}

/// Waits until no program run that started before the call can still be
/// running: XDP and TC programs run inside RCU read-side sections, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU grace period
/// (`synchronize_rcu`). Where the kernel refuses it (`nohz_full`), waits
/// a second instead, far longer than any packet's run.
pub(crate) fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret != 0 {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
