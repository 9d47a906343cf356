//! The raw `bpf(2)` calls aya 0.14 has no byte-level API for: map element
//! lookup, update, delete and key iteration on a map fd, and loading a
//! program from bare instructions against maps opened by fd (the
//! editor; see `raw_program.rs`). Every such call goes through [`bpf`],
//! the one place with `unsafe` syscalls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// `enum bpf_cmd` in include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `bpf_attr` member used by the map element commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

/// A `bpf_attr` prefix for one command: `#[repr(C)]`, laid out as the
/// kernel's union member, every pointer in it valid for the call.
///
/// # Safety
/// Implementors must be exactly such layouts; the kernel reads and writes
/// `size_of::<Self>()` bytes of them and the buffers they point to.
pub(crate) unsafe trait BpfAttr {}

// SAFETY: the layout of the map element commands' member.
unsafe impl BpfAttr for MapElemAttr {}

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `func_info_cnt`
/// (the zero pad is `line_info_rec_size`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgLoadAttr {
    pub(crate) prog_type: u32,
    pub(crate) insn_cnt: u32,
    pub(crate) insns: u64,
    pub(crate) license: u64,
    pub(crate) log_level: u32,
    pub(crate) log_size: u32,
    pub(crate) log_buf: u64,
    pub(crate) kern_version: u32,
    pub(crate) prog_flags: u32,
    pub(crate) prog_name: [u8; 16],
    pub(crate) prog_ifindex: u32,
    pub(crate) expected_attach_type: u32,
    pub(crate) prog_btf_fd: u32,
    pub(crate) func_info_rec_size: u32,
    pub(crate) func_info: u64,
    pub(crate) func_info_cnt: u32,
    pub(crate) _pad: u32,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for ProgLoadAttr {}

/// The `BPF_BTF_LOAD` member of `union bpf_attr`, up to `btf_log_level`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct BtfLoadAttr {
    pub(crate) btf: u64,
    pub(crate) btf_log_buf: u64,
    pub(crate) btf_size: u32,
    pub(crate) btf_log_size: u32,
    pub(crate) btf_log_level: u32,
    /// Explicit, so it is zero: a kernel before 6.4 (no
    /// `btf_log_true_size` here) refuses non-zero bytes past its fields.
    pub(crate) _pad: u32,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for BtfLoadAttr {}

/// The `BPF_PROG_TEST_RUN` member of `union bpf_attr`, up to `batch_size`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct TestRunAttr {
    pub(crate) prog_fd: u32,
    pub(crate) retval: u32,
    pub(crate) data_size_in: u32,
    pub(crate) data_size_out: u32,
    pub(crate) data_in: u64,
    pub(crate) data_out: u64,
    pub(crate) repeat: u32,
    pub(crate) duration: u32,
    pub(crate) ctx_size_in: u32,
    pub(crate) ctx_size_out: u32,
    pub(crate) ctx_in: u64,
    pub(crate) ctx_out: u64,
    pub(crate) flags: u32,
    pub(crate) cpu: u32,
    pub(crate) batch_size: u32,
    pub(crate) _pad: u32,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for TestRunAttr {}

/// The single syscall entry point. `attr` must be the `bpf_attr` layout
/// for `cmd`, with any pointers in it valid for the call. Returns the
/// syscall's result (a new fd for the commands that make one).
pub(crate) fn bpf<A: BpfAttr>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix (see
    // BpfAttr); the kernel reads at most size_of::<A>() bytes of it, and
    // the buffers it points to are checked by the callers to be as long
    // as the kernel will read or write.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn attr(fd: BorrowedFd<'_>, key: *const u8, value: *const u8, flags: u64) -> MapElemAttr {
    MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as u64,
        value: value as u64,
        flags,
        ..MapElemAttr::default()
    }
}

/// `value` must be the map's full value size (times CPUs for per-CPU maps).
/// Returns `Ok(false)` when the key is absent.
pub(crate) fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = attr(fd, key.as_ptr(), value.as_mut_ptr(), 0);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut a = attr(fd, key.as_ptr(), value.as_ptr(), flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Returns `Ok(false)` when the key was absent.
pub(crate) fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut a = attr(fd, key.as_ptr(), std::ptr::null(), 0);
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first key when `key` is `None`); `Ok(false)`
/// at the end.
pub(crate) fn next_key(
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    let mut a = attr(fd, key, next.as_mut_ptr(), 0);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

// Commands of the libxdp dispatcher protocol (see `dispatcher.rs`).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_LINK_CREATE: libc::c_long = 28;

/// The `BPF_OBJ_PIN` / `BPF_OBJ_GET` member, up to `file_flags`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for ObjAttr {}

/// The `*_GET_FD_BY_ID` member: the id, then `next_id` and `open_flags`.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for GetFdByIdAttr {}

/// The `BPF_OBJ_GET_INFO_BY_FD` member.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for InfoAttr {}

/// `struct bpf_btf_info` up to `id`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
}

/// The `BPF_LINK_CREATE` member for a tracing (freplace) link: the
/// program, its target program, attach type 0, flags, target BTF id.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    target_btf_id: u32,
    _pad: u32,
    _cookie: u64,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for LinkCreateAttr {}

fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn owned(fd: i64) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the command returned a new fd that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Pins the program, map or link `fd` at `path` on bpffs.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut a = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// Opens what is pinned at `path`.
pub(crate) fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    let path = c_path(path)?;
    let mut a = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_GET, &mut a).map(owned)
}

pub(crate) fn prog_fd_by_id(id: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut a = GetFdByIdAttr {
        id,
        ..GetFdByIdAttr::default()
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut a).map(owned)
}

/// The raw BTF (`.BTF` bytes) with id `btf_id`.
pub(crate) fn btf_bytes(btf_id: u32) -> io::Result<Vec<u8>> {
    let mut a = GetFdByIdAttr {
        id: btf_id,
        ..GetFdByIdAttr::default()
    };
    let fd = bpf(BPF_BTF_GET_FD_BY_ID, &mut a).map(owned)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut info = BtfInfo {
            btf: buf.as_mut_ptr() as u64,
            btf_size: buf.len() as u32,
            ..BtfInfo::default()
        };
        let mut a = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<BtfInfo>() as u32,
            info: &mut info as *mut BtfInfo as u64,
        };
        // SAFETY-relevant: the kernel writes at most btf_size bytes to buf.
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
        if info.btf_size as usize <= buf.len() {
            buf.truncate(info.btf_size as usize);
            return Ok(buf);
        }
        buf = vec![0u8; info.btf_size as usize];
    }
}

/// Attaches the extension `prog` in place of the function with BTF id
/// `btf_id` of program `target`: a tracing link, whose fd is returned.
pub(crate) fn link_freplace(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    btf_id: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    let mut a = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        target_btf_id: btf_id,
        ..LinkCreateAttr::default()
    };
    bpf(BPF_LINK_CREATE, &mut a).map(owned)
}

/// The id of the program `fd` refers to (`bpf_prog_info.id`; the kernel
/// fills no more of the info than the length given).
pub(crate) fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; 2]; // type, id
    let mut a = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info[1])
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_BTF_LOAD: libc::c_long = 18;

/// The `bpf_attr` member of `BPF_MAP_CREATE`, up to `btf_value_type_id`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
}

// SAFETY: the layout of BPF_MAP_CREATE's member (a prefix of it).
unsafe impl BpfAttr for MapCreateAttr {}

/// Loads a BTF blob into the kernel.
pub(crate) fn btf_load(btf: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    let mut a = BtfLoadAttr {
        btf: btf.as_ptr() as u64,
        btf_size: btf.len() as u32,
        ..BtfLoadAttr::default()
    };
    bpf(BPF_BTF_LOAD, &mut a).map(owned)
}

/// Creates an array map of one element whose key (4 bytes) and value are
/// BTF types `key_type_id` and `value_type_id` of `btf`.
pub(crate) fn array_with_btf(
    name: &str,
    value_size: u32,
    btf: BorrowedFd<'_>,
    (key_type_id, value_type_id): (u32, u32),
) -> io::Result<std::os::fd::OwnedFd> {
    let mut map_name = [0u8; 16];
    for (slot, byte) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    let mut a = MapCreateAttr {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size,
        max_entries: 1,
        map_name,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: key_type_id,
        btf_value_type_id: value_type_id,
        ..MapCreateAttr::default()
    };
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}
