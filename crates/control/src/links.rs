//! bpf links as the kernel sees them, whatever the pins say: which links
//! run a program, where they are attached, and forcing one off its
//! interface. This is how `stop` confirms that a program is detached and
//! how `list` checks an instance attached in a network namespace it cannot
//! enter: a pin path can be renamed, the kernel's answer cannot.
//!
//! aya 0.14 exposes a link's id and program id but not its interface, nor
//! `BPF_LINK_DETACH`, so these are direct `bpf(2)` calls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Commands of `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_LINK_TYPE_XDP` and `BPF_LINK_TYPE_TCX` of `enum bpf_link_type`.
pub(crate) const LINK_TYPE_XDP: u32 = 6;
pub(crate) const LINK_TYPE_TCX: u32 = 11;

/// What the kernel says about one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub id: u32,
    pub prog_id: u32,
    pub link_type: u32,
    /// The interface of an XDP or TCX link; 0 once the link is detached
    /// (its interface went away, or it was forced off).
    pub ifindex: u32,
}

impl LinkState {
    /// Whether the link still puts its program on an interface.
    pub fn attached(&self) -> bool {
        matches!(self.link_type, LINK_TYPE_XDP | LINK_TYPE_TCX) && self.ifindex != 0
    }
}

/// The control crate's one `bpf(2)` entry point: `attr` must be the
/// `union bpf_attr` prefix for `cmd`.
pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised bpf_attr prefix of the size
    // passed; the kernel reads it and writes only within it (or into
    // buffers it points to, which the callers keep alive).
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The kernel's view of the link behind `fd`.
pub(crate) fn state_of(fd: BorrowedFd<'_>) -> io::Result<LinkState> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // struct bpf_link_info: type, id, prog_id, then (8-aligned, so from
    // word 4) a union whose xdp and tcx members start with the ifindex.
    // The rest of the buffer stays zero, as the kernel asks of a buffer
    // larger than its struct.
    let mut info = [0u32; 64];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkState {
        link_type: info[0],
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

/// The link pinned at `path` (`BPF_OBJ_GET`).
pub(crate) fn state_of_pin(path: &Path) -> io::Result<LinkState> {
    let fd = obj_get(path)?;
    state_of(std_fd(&fd))
}

/// Opens a pinned object (`BPF_OBJ_GET`).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this new fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object behind `fd` at `path` (`BPF_OBJ_PIN`).
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

fn std_fd(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

fn open_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = IdAttr {
        id,
        ..IdAttr::default()
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel just returned this new fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens link `id`, or `None` when it is gone. A link still being made
/// (by another process, at this instant) answers `EAGAIN` until it is
/// settled: asked again a few times, then passed over as not ours (a
/// program is attached by its own command, which holds the instance lock).
fn open_by_id_settled(id: u32) -> io::Result<Option<OwnedFd>> {
    for _ in 0..100 {
        match open_by_id(id) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Every link in the kernel that runs program `prog_id`, open.
pub(crate) fn links_running(prog_id: u32) -> io::Result<Vec<(OwnedFd, LinkState)>> {
    let mut found = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = IdAttr {
            id,
            ..IdAttr::default()
        };
        match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(found),
            Err(e) => return Err(e),
        }
        let fd = match open_by_id_settled(id) {
            Ok(Some(fd)) => fd,
            // Freed between the two calls, or still being made.
            Ok(None) => continue,
            Err(e) => return Err(e),
        };
        let state = state_of(std_fd(&fd))?;
        if state.prog_id == prog_id {
            found.push((fd, state));
        }
    }
}

/// Takes the link off its interface now (`BPF_LINK_DETACH`), wherever it
/// is pinned; the link object lives on, detached, until its last pin or
/// fd goes.
pub(crate) fn force_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
    }
    let mut attr = DetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}
