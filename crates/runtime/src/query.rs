//! Whether the kernel still holds a program, asked by its id: the check
//! that a stopped instance left nothing behind. A bpf link holds a
//! reference on its program, and so do pins and open fds, so a program id
//! the kernel no longer knows means no link, pin or fd of it is left.

use std::io;

use crate::RuntimeError;

/// `BPF_PROG_GET_FD_BY_ID` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// The `bpf_attr` member of the `*_GET_FD_BY_ID` commands.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Whether program `id` is still loaded. The kernel frees a program a
/// moment after its last reference goes (link release is deferred), so a
/// caller that just stopped one polls.
pub fn program_loaded(id: u32) -> Result<bool, RuntimeError> {
    let mut attr = GetFdByIdAttr {
        id,
        ..GetFdByIdAttr::default()
    };
    // SAFETY: attr is a live bpf_attr prefix of the size passed; the
    // kernel only reads it. A returned fd is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &mut attr as *mut GetFdByIdAttr,
            std::mem::size_of::<GetFdByIdAttr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just gave this process that fd.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        Ok(false)
    } else {
        Err(RuntimeError::syscall("BPF_PROG_GET_FD_BY_ID", error))
    }
}
