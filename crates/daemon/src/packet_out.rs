//! Packet-out: the slow path's way back to the wire. A controller sends a
//! raw Ethernet frame out of an interface (in a network namespace).
//!
//! Sent with an `AF_PACKET` raw socket bound to the interface, made on a
//! thread that entered the namespace (the socket belongs to the namespace
//! it was made in). Why this rather than a `BPF_PROG_TEST_RUN` of a tiny
//! XDP program with live frames: it needs no program and no kernel newer
//! than the ring buffer's, the frame goes out exactly as given (through
//! the interface's TC egress hook and qdisc, as any sent frame does), and
//! the peer receives it as from the wire. The frame is not looped back to
//! the host's own stack; to hand a frame to a host, send it out of the
//! interface facing that host.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// The body of `POST /v1/packet-out`: the frame as hex or as base64.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketOut {
    pub dev: String,
    /// An `ip netns` name; the daemon's own namespace when absent.
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub frame_hex: Option<String>,
    #[serde(default)]
    pub frame_base64: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub dev: String,
    pub netns: Option<String>,
    pub ifindex: u32,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PacketOutError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no network namespace {name} ({message}): give an `ip netns` name, or none for the daemon's own")]
    NoSuchNetns { name: String, message: String },
    #[error("no interface {dev} in {place}: check `ip link`{hint}")]
    NoSuchInterface {
        dev: String,
        place: String,
        hint: &'static str,
    },
    #[error("sending the frame out of {dev} failed: {message}")]
    Send { dev: String, message: String },
}

impl PacketOutError {
    pub fn status(&self) -> StatusCode {
        match self {
            PacketOutError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PacketOutError::NoSuchNetns { .. } | PacketOutError::NoSuchInterface { .. } => {
                StatusCode::NOT_FOUND
            }
            PacketOutError::Send { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Ethernet header bytes: the least a frame has.
const ETH_HEADER: usize = 14;
/// The largest frame accepted (a jumbo frame and its header).
const MAX_FRAME: usize = 65_535;

/// Sends `request`'s frame.
pub fn send(request: &PacketOut) -> Result<Sent, PacketOutError> {
    let frame = frame_of(request)?;
    let dev = request.dev.clone();
    let netns = request.netns.clone();
    let (ifindex, bytes) = match &netns {
        None => send_here(&dev, &frame, "the daemon's network namespace")?,
        Some(name) => {
            let file = open_netns(name)?;
            let place = format!("network namespace {name}");
            in_netns(&file, || send_here(&dev, &frame, &place)).map_err(|message| {
                PacketOutError::NoSuchNetns {
                    name: name.clone(),
                    message,
                }
            })??
        }
    };
    Ok(Sent {
        dev,
        netns,
        ifindex,
        bytes,
    })
}

fn frame_of(request: &PacketOut) -> Result<Vec<u8>, PacketOutError> {
    let frame = match (&request.frame_hex, &request.frame_base64) {
        (Some(hex), None) => decode_hex(hex),
        (None, Some(b64)) => decode_base64(b64),
        _ => Err("give the frame as `frame_hex` or `frame_base64` (one of them)".to_string()),
    }
    .map_err(PacketOutError::BadRequest)?;
    if !(ETH_HEADER..=MAX_FRAME).contains(&frame.len()) {
        return Err(PacketOutError::BadRequest(format!(
            "the frame has {} bytes: an Ethernet frame has {ETH_HEADER} to {MAX_FRAME} \
             (destination and source MAC, EtherType, payload)",
            frame.len()
        )));
    }
    Ok(frame)
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("frame_hex has an odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "frame_hex: {:?} is not a hex byte",
                        String::from_utf8_lossy(pair)
                    )
                })
        })
        .collect()
}

/// Standard base64 (RFC 4648, `+/`, padding optional).
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let symbols = symbols
        .strip_suffix(b"==")
        .or_else(|| symbols.strip_suffix(b"="))
        .unwrap_or(&symbols);
    if symbols.len() % 4 == 1 {
        return Err("frame_base64 is cut short (its length is not possible in base64)".into());
    }
    let mut out = Vec::with_capacity(symbols.len() * 3 / 4);
    for chunk in symbols.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c).ok_or_else(|| {
                format!("frame_base64: {:?} is not a base64 character", c as char)
            })?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

fn open_netns(name: &str) -> Result<File, PacketOutError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let not_found = |message: String| PacketOutError::NoSuchNetns {
        name: name.to_string(),
        message,
    };
    if !valid {
        return Err(not_found("not a namespace name".into()));
    }
    File::open(Path::new(flowstate_control::netns::NETNS_DIR).join(name))
        .map_err(|e| not_found(e.to_string()))
}

/// Runs `f` on a thread that entered the namespace `file`.
fn in_netns<T: Send>(file: &File, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let fd = file.as_raw_fd();
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // SAFETY: fd is an open namespace handle for the whole scope;
            // setns changes only this thread's namespace.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Sends `frame` out of `dev` of the calling thread's namespace.
fn send_here(dev: &str, frame: &[u8], place: &str) -> Result<(u32, usize), PacketOutError> {
    let no_such = |hint| PacketOutError::NoSuchInterface {
        dev: dev.to_string(),
        place: place.to_string(),
        hint,
    };
    let Ok(c_dev) = std::ffi::CString::new(dev) else {
        return Err(no_such(""));
    };
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_dev.as_ptr()) };
    if ifindex == 0 {
        return Err(no_such(
            " (with `ip -n NETNS link` for a namespace; give `netns`)",
        ));
    }
    let failed = |what: &str| PacketOutError::Send {
        dev: dev.to_string(),
        message: format!("{what}: {}", std::io::Error::last_os_error()),
    };
    // Protocol 0: this socket receives nothing, it only sends.
    // SAFETY: plain socket creation; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(failed("opening an AF_PACKET socket"));
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // The EtherType as the frame has it (network order both sides).
    addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and addr are valid for the given lengths.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        let hint = match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENETDOWN) => " (the interface is down: `ip link set DEV up`)",
            Some(libc::EMSGSIZE) => " (the frame is longer than the interface's MTU allows)",
            _ => "",
        };
        return Err(failed(&format!("sendto{hint}")));
    }
    Ok((ifindex, sent as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_decode_to_the_same_bytes() {
        let bytes: Vec<u8> = (0u8..=20).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_hex(&hex).unwrap(), bytes);
        assert_eq!(decode_hex("0a:0B 0c").unwrap(), vec![10, 11, 12]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        // RFC 4648's examples.
        assert_eq!(decode_base64("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(decode_base64("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(decode_base64("Zm9vYmE=").unwrap(), b"fooba");
        assert_eq!(decode_base64("Zm8").unwrap(), b"fo");
        assert!(decode_base64("Zm9v!").is_err());
    }

    #[test]
    fn a_frame_needs_an_ethernet_header_and_one_encoding() {
        let request = |hex: Option<&str>, b64: Option<&str>| PacketOut {
            dev: "lo".into(),
            netns: None,
            frame_hex: hex.map(String::from),
            frame_base64: b64.map(String::from),
        };
        assert!(frame_of(&request(Some("00"), None)).is_err());
        assert!(frame_of(&request(None, None)).is_err());
        assert!(frame_of(&request(Some("00"), Some("AA=="))).is_err());
        assert_eq!(
            frame_of(&request(Some(&"ab".repeat(14)), None))
                .unwrap()
                .len(),
            14
        );
    }
}
