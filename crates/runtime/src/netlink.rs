//! XDP through rtnetlink, as libxdp attaches its dispatcher: which
//! program an interface runs (`RTM_GETLINK`, `IFLA_XDP`), and an atomic
//! swap (`RTM_SETLINK` with `XDP_FLAGS_REPLACE` and the expected old fd).
//! aya keeps its netlink calls private, and a `bpf_link` attachment could
//! not be replaced by libxdp, so the dispatcher goes through here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// include/uapi/linux/rtnetlink.h, if_link.h, netlink.h.
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const IFINFOMSG_LEN: usize = 16;
const NLMSGHDR_LEN: usize = 16;

/// `XDP_FLAGS_*`.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
pub const XDP_FLAGS_REPLACE: u32 = 16;

/// `XDP_ATTACHED_*`: how the running program is attached.
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;

/// The XDP program an interface runs, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttached {
    pub prog_id: u32,
    /// `XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE` (0 when unknown).
    pub mode_flags: u32,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn message(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSGHDR_LEN + IFINFOMSG_LEN + attrs.len());
    let len = (NLMSGHDR_LEN + IFINFOMSG_LEN + attrs.len()) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
                                                // struct ifinfomsg: family, pad, type, index, flags, change.
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(attrs);
    msg
}

/// Sends `msg` and returns the replies' messages (type, payload) until an
/// ack, an error or the end of a dump.
fn exchange(msg: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let sock = socket()?;
    // SAFETY: msg is a live buffer of msg.len() bytes.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: buf is a live buffer of buf.len() bytes.
        let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = 0;
        let got = got as usize;
        while at + NLMSGHDR_LEN <= got {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            if len < NLMSGHDR_LEN || at + len > got {
                return Err(io::Error::other("malformed netlink reply"));
            }
            let payload = buf[at + NLMSGHDR_LEN..at + len].to_vec();
            match kind {
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(payload[..4].try_into().unwrap());
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    return Ok(replies);
                }
                NLMSG_DONE => return Ok(replies),
                _ => replies.push((kind, payload)),
            }
            at += len.next_multiple_of(4);
        }
        if !replies.is_empty() {
            return Ok(replies);
        }
    }
}

/// Attributes in `bytes`: (type without flags, payload).
fn attrs(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & !NLA_F_NESTED;
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind, &bytes[4..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

/// The XDP program `ifindex` runs, whichever way it was attached.
pub fn xdp_attached(ifindex: u32) -> io::Result<Option<XdpAttached>> {
    let replies = exchange(&message(RTM_GETLINK, 0, ifindex, &[]))?;
    for (_, payload) in replies {
        let Some(link_attrs) = payload.get(IFINFOMSG_LEN..) else {
            continue;
        };
        for (kind, xdp) in attrs(link_attrs) {
            if kind != IFLA_XDP {
                continue;
            }
            let mut attached = 0u8;
            let mut prog_id = 0u32;
            for (kind, value) in attrs(xdp) {
                match (kind, value.len()) {
                    (IFLA_XDP_ATTACHED, 1..) => attached = value[0],
                    (IFLA_XDP_PROG_ID, 4..) => {
                        prog_id = u32::from_ne_bytes(value[..4].try_into().unwrap())
                    }
                    _ => {}
                }
            }
            if prog_id == 0 {
                return Ok(None);
            }
            let mode_flags = match attached {
                XDP_ATTACHED_DRV => XDP_FLAGS_DRV_MODE,
                XDP_ATTACHED_SKB => XDP_FLAGS_SKB_MODE,
                _ => 0,
            };
            return Ok(Some(XdpAttached {
                prog_id,
                mode_flags,
            }));
        }
    }
    Ok(None)
}

/// Sets `ifindex`'s XDP program to `fd` (-1: none). With `expected`, the
/// kernel swaps only if that program is the one attached now
/// (`XDP_FLAGS_REPLACE`); `flags` adds the mode and
/// `XDP_FLAGS_UPDATE_IF_NOEXIST`.
pub fn xdp_set(ifindex: u32, fd: i32, expected: Option<i32>, flags: u32) -> io::Result<()> {
    let mut nested = Vec::new();
    attr(&mut nested, IFLA_XDP_FD, &fd.to_ne_bytes());
    let flags = flags | expected.map_or(0, |_| XDP_FLAGS_REPLACE);
    attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    if let Some(expected) = expected {
        attr(&mut nested, IFLA_XDP_EXPECTED_FD, &expected.to_ne_bytes());
    }
    let mut attrs = Vec::new();
    attr(&mut attrs, IFLA_XDP | NLA_F_NESTED, &nested);
    exchange(&message(RTM_SETLINK, NLM_F_ACK, ifindex, &attrs)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut bytes = Vec::new();
        attr(&mut bytes, IFLA_XDP_ATTACHED, &[2]);
        attr(&mut bytes, IFLA_XDP_PROG_ID, &7u32.to_ne_bytes());
        assert_eq!(bytes.len(), 8 + 8);
        let parsed = attrs(&bytes);
        assert_eq!(parsed[0], (IFLA_XDP_ATTACHED, &[2u8][..]));
        assert_eq!(parsed[1], (IFLA_XDP_PROG_ID, &7u32.to_ne_bytes()[..]));
    }
}
