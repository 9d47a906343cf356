//! Attaching programs to interfaces, links, atomic replacement and bpffs.
//!
//! XDP attaches through a `bpf_link` (aya falls back to netlink on kernels
//! without XDP links). TC attaches through TCX on kernel >= 6.6 (a
//! `bpf_link` too) and through a clsact qdisc before that. A `bpf_link`
//! lives as long as an fd or a bpffs pin refers to it: dropping an unpinned
//! [`ProgramLink`] detaches the program, a pinned one stays attached after
//! the process exits until [`ProgramLink::unpin`].

use std::io;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{Program, TcAttachType, XdpMode};
use aya::util::KernelVersion;

use crate::{Loaded, ProgramKind, RuntimeError};

/// Where bpffs is mounted on these machines.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why programs cannot be loaded here, if they cannot: not root, or no
/// bpffs. Kernel tests skip (through flowstate-testkit) with this reason.
pub fn kernel_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_BPF, CAP_NET_ADMIN)".to_string());
    }
    ensure_bpffs(BPFFS_ROOT)
        .err()
        .map(|e| format!("no bpffs: {e}"))
}

/// Mounts bpffs at `path` unless one is already mounted there.
pub fn ensure_bpffs(path: impl AsRef<Path>) -> Result<(), RuntimeError> {
    let path = path.as_ref();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| {
        RuntimeError::syscall("statfs", io::Error::new(io::ErrorKind::InvalidInput, e))
    })?;
    // SAFETY: statfs writes into a zeroed struct of the right type; c_path
    // is a valid NUL-terminated string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if ret == 0 && stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|io| RuntimeError::syscall("mkdir bpffs", io))?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(RuntimeError::syscall(
            "mount bpffs",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Where a TCX attach puts the program in the hook's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcOrder {
    First,
    Last,
    BeforeProgram(u32),
    AfterProgram(u32),
}

/// Which side of the interface a TC program sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcDirection {
    Ingress,
    Egress,
}

#[derive(Debug)]
enum LinkInner {
    Xdp(XdpLink),
    Tc(SchedClassifierLink),
}

/// A program attached to an interface. See the module doc for lifetimes.
#[derive(Debug)]
pub struct ProgramLink {
    inner: LinkInner,
}

fn link_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Link(e.to_string())
}

impl ProgramLink {
    pub fn kind(&self) -> ProgramKind {
        match self.inner {
            LinkInner::Xdp(_) => ProgramKind::Xdp,
            LinkInner::Tc(_) => ProgramKind::Tc,
        }
    }

    /// Pins the link at `path` so the program stays attached after this
    /// process exits; another process can [`ProgramLink::from_pin`] it and
    /// [`Loaded::replace`] the program. Needs a `bpf_link` (XDP link, TCX).
    pub fn pin(self, path: impl AsRef<Path>) -> Result<ProgramLink, RuntimeError> {
        let kind = self.kind();
        let fd_link: FdLink = match self.inner {
            LinkInner::Xdp(link) => link.try_into().map_err(link_error)?,
            LinkInner::Tc(link) => link.try_into().map_err(link_error)?,
        };
        let pinned = fd_link
            .pin(path.as_ref())
            .map_err(|source| RuntimeError::Pin {
                path: path.as_ref().display().to_string(),
                source,
            })?;
        ProgramLink::from_fd_link(FdLink::from(pinned), kind)
    }

    /// Reopens a link pinned with [`ProgramLink::pin`].
    pub fn from_pin(
        path: impl AsRef<Path>,
        kind: ProgramKind,
    ) -> Result<ProgramLink, RuntimeError> {
        let pinned = PinnedLink::from_pin(path.as_ref()).map_err(link_error)?;
        ProgramLink::from_fd_link(FdLink::from(pinned), kind)
    }

    /// Removes the pin at `path`. The link detaches once no fd refers to
    /// it either (drop the [`ProgramLink`] too).
    pub fn unpin(path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        std::fs::remove_file(path).map_err(|io| RuntimeError::syscall("unlink pin", io))
    }

    fn from_fd_link(fd_link: FdLink, kind: ProgramKind) -> Result<ProgramLink, RuntimeError> {
        let inner = match kind {
            ProgramKind::Xdp => LinkInner::Xdp(fd_link.try_into().map_err(link_error)?),
            ProgramKind::Tc => LinkInner::Tc(fd_link.try_into().map_err(link_error)?),
        };
        Ok(ProgramLink { inner })
    }

    /// Detaches now (a pinned link stays attached until unpinned).
    pub fn detach(self) -> Result<(), RuntimeError> {
        use aya::programs::links::Link as _;
        match self.inner {
            LinkInner::Xdp(link) => link.detach(),
            LinkInner::Tc(link) => link.detach(),
        }
        .map_err(link_error)
    }
}

impl Loaded {
    /// Attaches an XDP program to `interface`.
    pub fn attach_xdp(
        &mut self,
        program: &str,
        interface: &str,
        mode: XdpMode,
    ) -> Result<ProgramLink, RuntimeError> {
        let Program::Xdp(xdp) = self.program_mut(program)? else {
            return Err(wrong_kind(program, ProgramKind::Xdp));
        };
        let id = xdp
            .attach(interface, mode)
            .map_err(|e| RuntimeError::program(program, e))?;
        let link = xdp
            .take_link(id)
            .map_err(|e| RuntimeError::program(program, e))?;
        Ok(ProgramLink {
            inner: LinkInner::Xdp(link),
        })
    }

    /// Attaches a TC program to `interface`: TCX on kernel >= 6.6, else a
    /// clsact qdisc (added if missing) and a netlink filter.
    pub fn attach_tc(
        &mut self,
        program: &str,
        interface: &str,
        direction: TcDirection,
    ) -> Result<ProgramLink, RuntimeError> {
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !has_tcx {
            // Fails with EEXIST when the qdisc is there, which is fine; a
            // real failure shows when attaching.
            let _already_there = aya::programs::tc::qdisc_add_clsact(interface);
        }
        let Program::SchedClassifier(tc) = self.program_mut(program)? else {
            return Err(wrong_kind(program, ProgramKind::Tc));
        };
        let id = tc
            .attach(interface, tc_attach_type(direction))
            .map_err(|e| RuntimeError::program(program, e))?;
        let link = tc
            .take_link(id)
            .map_err(|e| RuntimeError::program(program, e))?;
        Ok(ProgramLink {
            inner: LinkInner::Tc(link),
        })
    }

    /// Attaches a TC program through TCX at a chosen place in the chain
    /// (kernel >= 6.6); see [`TcOrder`].
    pub fn attach_tcx(
        &mut self,
        program: &str,
        interface: &str,
        direction: TcDirection,
        order: TcOrder,
    ) -> Result<ProgramLink, RuntimeError> {
        use aya::programs::tc::TcAttachOptions;
        use aya::programs::{LinkOrder, ProgramId};
        let order = match order {
            TcOrder::First => LinkOrder::first(),
            TcOrder::Last => LinkOrder::last(),
            // SAFETY (ProgramId::new): an id of no program on the hook is
            // refused by the kernel (ENOENT).
            TcOrder::BeforeProgram(id) => {
                LinkOrder::before_program_id(unsafe { ProgramId::new(id) })
            }
            TcOrder::AfterProgram(id) => LinkOrder::after_program_id(unsafe { ProgramId::new(id) }),
        };
        let Program::SchedClassifier(tc) = self.program_mut(program)? else {
            return Err(wrong_kind(program, ProgramKind::Tc));
        };
        let id = tc
            .attach_with_options(
                interface,
                tc_attach_type(direction),
                TcAttachOptions::TcxOrder(order),
            )
            .map_err(|e| RuntimeError::program(program, e))?;
        let link = tc
            .take_link(id)
            .map_err(|e| RuntimeError::program(program, e))?;
        Ok(ProgramLink {
            inner: LinkInner::Tc(link),
        })
    }

    /// Attaches a TC program as a clsact filter (direct action) at
    /// `priority` on interface `ifindex`, adding the qdisc if missing. The
    /// filter stays until [`crate::clsact::delete_filter`].
    pub fn attach_clsact(
        &self,
        program: &str,
        ifindex: u32,
        direction: TcDirection,
        priority: u16,
    ) -> Result<(), RuntimeError> {
        use std::os::fd::AsFd;
        let Program::SchedClassifier(tc) = self.program(program)? else {
            return Err(wrong_kind(program, ProgramKind::Tc));
        };
        let fd = tc.fd().map_err(|e| RuntimeError::program(program, e))?;
        crate::clsact::add_qdisc(ifindex)
            .map_err(|io| RuntimeError::syscall("adding a clsact qdisc", io))?;
        crate::clsact::add_filter(ifindex, direction, priority, fd.as_fd(), program)
            .map_err(|io| RuntimeError::syscall("adding a clsact filter", io))
    }

    /// Atomically puts `program` in place of the one `link` runs: no packet
    /// sees neither. Returns the link, now running `program`.
    /// `link` is consumed: on error it is dropped, which detaches it unless
    /// it is pinned (the usual case for replacement). Check
    /// [`Loaded::program_kind`] against [`ProgramLink::kind`] first to rule
    /// out the one error a caller can foresee.
    pub fn replace(
        &mut self,
        link: ProgramLink,
        program: &str,
    ) -> Result<ProgramLink, RuntimeError> {
        if self.program_kind(program)? != link.kind() {
            return Err(wrong_kind(program, link.kind()));
        }
        let inner = match (self.program_mut(program)?, link.inner) {
            (Program::Xdp(xdp), LinkInner::Xdp(old)) => {
                let id = xdp
                    .attach_to_link(old)
                    .map_err(|e| RuntimeError::program(program, e))?;
                LinkInner::Xdp(
                    xdp.take_link(id)
                        .map_err(|e| RuntimeError::program(program, e))?,
                )
            }
            (Program::SchedClassifier(tc), LinkInner::Tc(old)) => {
                let id = tc
                    .attach_to_link(old)
                    .map_err(|e| RuntimeError::program(program, e))?;
                LinkInner::Tc(
                    tc.take_link(id)
                        .map_err(|e| RuntimeError::program(program, e))?,
                )
            }
            (_, LinkInner::Xdp(_)) => return Err(wrong_kind(program, ProgramKind::Xdp)),
            (_, LinkInner::Tc(_)) => return Err(wrong_kind(program, ProgramKind::Tc)),
        };
        Ok(ProgramLink { inner })
    }
}

/// Names of the programs attached through TCX to `interface` in
/// `direction`, in run order (kernel >= 6.6). A dropped link's program
/// leaves this list shortly after the drop: the kernel detaches it when it
/// releases the link, which may come a moment later.
pub fn tcx_programs(interface: &str, direction: TcDirection) -> Result<Vec<String>, RuntimeError> {
    let (_revision, programs) =
        aya::programs::SchedClassifier::query_tcx(interface, tc_attach_type(direction))
            .map_err(|e| RuntimeError::program(interface, e))?;
    Ok(programs
        .iter()
        .map(|p| p.name_as_str().unwrap_or_default().to_string())
        .collect())
}

fn tc_attach_type(direction: TcDirection) -> TcAttachType {
    match direction {
        TcDirection::Ingress => TcAttachType::Ingress,
        TcDirection::Egress => TcAttachType::Egress,
    }
}

fn wrong_kind(program: &str, wanted: ProgramKind) -> RuntimeError {
    RuntimeError::Link(format!("program {program} is not a {wanted:?} program"))
}
