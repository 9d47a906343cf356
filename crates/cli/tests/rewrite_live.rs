//! Field rewriting on a live interface: an XDP program that turns UDP
//! datagrams to port 7 round (addresses, ports and MACs swapped, TTL and
//! DSCP set) and sends them back out with `tx` answers the peer itself:
//! nothing in the switch namespace listens on port 7, so only the rewritten
//! frame can reach the peer's socket, and the peer's IP stack checks the
//! header checksum the program updated. The peer sees the TTL and TOS the
//! row wrote. The namespaces go with the netlab Topology; the instance is
//! stopped by a guard.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use flowstate_netlab::Topology;

const DEV: &str = "rwsw";
const PEER_DEV: &str = "rwpeer";
const SWITCH: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

const PROGRAM: &str = "program udpecho\nhook xdp\nflow ip.src\nstates S\nregisters n = 0\n\
default pass\ntable\n  * udp.dport == 7 => tx, n = n + 1, ip.src = ip.dst, ip.dst = ip.src, \
udp.sport = udp.dport, udp.dport = udp.sport, eth.src = eth.dst, eth.dst = eth.src, \
ip.ttl = 9, ip.dscp = 46\nend\n";

struct Stop(String);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_flowstate"))
            .args(["stop", &self.0])
            .output();
    }
}

/// One datagram's payload, TTL and TOS, read with `recvmsg` and the
/// IP_RECVTTL / IP_RECVTOS control messages.
fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, Ipv4Addr, u16, i32, i32)> {
    let fd = socket.as_raw_fd();
    let mut buf = [0u8; 256];
    let mut control = [0u8; 128];
    let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: every pointer in `msg` points at a live local buffer of the
    // length given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let (mut ttl, mut tos) = (-1, -1);
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TTL) => ttl = *(data as *const i32),
                (libc::IPPROTO_IP, libc::IP_TOS) => tos = i32::from(*data),
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let addr = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
    let port = u16::from_be(from.sin_port);
    Some((buf[..n as usize].to_vec(), addr, port, ttl, tos))
}

fn set_int(socket: &UdpSocket, level: i32, name: i32, value: i32) {
    // SAFETY: a plain int option on a socket this test owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt {level}/{name}");
}

#[test]
fn xdp_udp_echo_answers_the_peer_with_rewritten_headers() {
    let test = "xdp_udp_echo_answers_the_peer_with_rewritten_headers";
    if flowstate_testkit::skip_if(test, flowstate_netlab::skip_reason()) {
        return;
    }
    let mut topology = Topology::new("rwlive").expect("topology");
    let switch = topology.add_netns("sw").unwrap();
    let peer = topology.add_netns("peer").unwrap();
    topology
        .link(&switch, DEV, SWITCH, &peer, PEER_DEV, PEER, 24)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("fs-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let remove = dir.clone();
    topology.on_cleanup("remove the program copy", move || {
        let _ = std::fs::remove_dir_all(&remove);
    });
    let path = dir.join("udpecho.fsm");
    std::fs::write(&path, PROGRAM).unwrap();
    let socket = peer
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    set_int(&socket, libc::IPPROTO_IP, libc::IP_RECVTTL, 1);
    set_int(&socket, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
    // Without a UDP checksum: a veth may leave it to an offload that the
    // turned-round frame never gets (the IP header checksum is still
    // checked by the peer's stack).
    set_int(&socket, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1);
    let to = SocketAddrV4::new(SWITCH, 7);

    // Before the program: nobody answers on port 7.
    socket.send_to(b"before", to).unwrap();
    assert!(
        receive(&socket).is_none(),
        "port 7 answered without the program"
    );

    let name = format!("rw{}", std::process::id());
    let _stop = Stop(name.clone());
    let mut run = switch.command(env!("CARGO_BIN_EXE_flowstate")).unwrap();
    let out = run
        .args(["run", path.to_str().unwrap(), "--dev", DEV, "--name", &name])
        .args(["--xdp-mode", "generic"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flowstate run: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut answered = None;
    for _ in 0..5 {
        socket.send_to(b"hello", to).unwrap();
        if let Some(reply) = receive(&socket) {
            answered = Some(reply);
            break;
        }
    }
    let (payload, from, port, ttl, tos) = answered.expect("no reply from the XDP program");
    assert_eq!(payload, b"hello");
    assert_eq!((from, port), (SWITCH, 7));
    assert_eq!(ttl, 9, "the row's TTL");
    assert_eq!(tos >> 2, 46, "the row's DSCP");
}
