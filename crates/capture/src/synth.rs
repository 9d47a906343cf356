//! Deterministic synthetic traces.
//!
//! Every generator is a pure function of its arguments (the random ones
//! take a seed), so examples, tests and benchmarks replay exactly the same
//! packets on every machine. All frames come from interface 1 and their
//! times start at 0 ns.
//!
//! Addresses: hosts are `10.0.0.N` ([`host`]); a host's MAC is `02:00`
//! followed by its IPv4 address (`02:00:0a:00:00:01` for 10.0.0.1). The
//! protected server is `10.0.0.100`. ARP requests go to the broadcast MAC,
//! everything else to the server's MAC.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowstate_wire::build::{mac, PacketBuilder};
use flowstate_wire::offsets::{TCP_ACK_FLAG, TCP_SYN};

use crate::Frame;

/// One nanosecond-based unit each, to write times readably.
pub const MS: i64 = 1_000_000;
pub const SEC: i64 = 1_000_000_000;

/// The server behind the port-knocking gate.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// The knock sequence of the port-knocking example.
pub const KNOCKS: [u16; 4] = [1111, 2222, 3333, 4444];
/// The port the knocks open.
pub const SSH: u16 = 22;

/// Address of host `n` (1-based): `10.0.0.0 + n`.
pub fn host(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)).wrapping_add(n))
}

fn from(ip: Ipv4Addr) -> PacketBuilder {
    PacketBuilder::eth(mac(u32::from(ip)), mac(u32::from(SERVER)))
}

/// An ARP request from `src` asking for `target`, broadcast.
fn arp(time_ns: i64, src: Ipv4Addr, target: Ipv4Addr) -> Frame {
    let data = PacketBuilder::eth(mac(u32::from(src)), [0xff; 6])
        .arp_request(src, target)
        .build();
    frame(time_ns, data)
}

fn frame(time_ns: i64, data: Vec<u8>) -> Frame {
    Frame {
        time_ns,
        data,
        ifindex: 1,
    }
}

/// A UDP datagram from `src` to the server.
pub fn udp_to_server(time_ns: i64, src: Ipv4Addr, sport: u16, dport: u16) -> Frame {
    let data = from(src)
        .ipv4(src, SERVER)
        .udp(sport, dport)
        .payload(8)
        .build();
    frame(time_ns, data)
}

/// A TCP segment from `src` to the server.
pub fn tcp_to_server(time_ns: i64, src: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Frame {
    let data = from(src).ipv4(src, SERVER).tcp(sport, dport, flags).build();
    frame(time_ns, data)
}

/// One step of a scripted trace: the frame, what it shows, and whether
/// the port-knocking program of DESIGN.md §4 passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub frame: Frame,
    pub note: &'static str,
    pub passes: bool,
}

/// The port-knocking story, step by step, with the verdicts the program of
/// DESIGN.md §4 (`flow ip.src`, knocks 1111, 2222, 3333, 4444, `OPEN`
/// idle 30 s, `default pass`) must give:
///
/// - ARP and IPv6 neighbour discovery pass (no `ip.src`: default).
/// - Host A (10.0.0.1) knocks in order (dropped), then opens TCP 22
///   (passes); other traffic from A while open is dropped but keeps the
///   entry fresh.
/// - Host B (10.0.0.2) tries TCP 22 without knocking: dropped.
/// - Host C (10.0.0.3) knocks 1111, 3333, 2222, 4444 (wrong order): every
///   packet dropped, TCP 22 stays closed.
/// - Host A idles 35 s (> 30 s) and tries TCP 22 again: closed, dropped.
pub fn portknock_script() -> Vec<Step> {
    let a = host(1);
    let b = host(2);
    let c = host(3);
    let mut steps = Vec::new();
    let mut step = |frame, note, passes| {
        steps.push(Step {
            frame,
            note,
            passes,
        })
    };

    step(arp(0, a, SERVER), "A asks ARP for the server", true);
    for (i, port) in KNOCKS.into_iter().enumerate() {
        let t = SEC + i as i64 * 500 * MS;
        step(udp_to_server(t, a, 40000, port), "A knocks", false);
    }
    step(
        tcp_to_server(3 * SEC, a, 50000, SSH, TCP_SYN),
        "A opens SSH",
        true,
    );
    step(
        tcp_to_server(3 * SEC + 100 * MS, a, 50000, SSH, TCP_ACK_FLAG),
        "A talks SSH",
        true,
    );
    step(
        udp_to_server(3 * SEC + 500 * MS, a, 40001, 53),
        "A sends other traffic while open",
        false,
    );
    step(
        tcp_to_server(4 * SEC, b, 50001, SSH, TCP_SYN),
        "B tries SSH without knocking",
        false,
    );
    for (i, port) in [1111, 3333, 2222, 4444].into_iter().enumerate() {
        let t = 5 * SEC + i as i64 * 500 * MS;
        step(
            udp_to_server(t, c, 40002, port),
            "C knocks in the wrong order",
            false,
        );
    }
    step(
        tcp_to_server(7 * SEC, c, 50002, SSH, TCP_SYN),
        "C tries SSH after wrong knocks",
        false,
    );
    step(
        tcp_to_server(10 * SEC, a, 50000, SSH, TCP_ACK_FLAG),
        "A talks SSH again (idle 6.5 s < 30 s)",
        true,
    );
    let ndp = from(c)
        .ipv6(
            [0xfe80, 0, 0, 0, 0, 0, 0, 3],
            [0xff02, 0, 0, 0, 0, 1, 0xff00, 100],
        )
        .ttl(255)
        .icmpv6(135, 0)
        // The ICMPv6 header's last word is the reserved field; the target
        // address (fe80::64) follows.
        .payload_bytes(&Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x64).octets())
        .build();
    step(
        frame(12 * SEC, ndp),
        "C asks IPv6 neighbour discovery",
        true,
    );
    step(arp(20 * SEC, SERVER, b), "the server asks ARP for B", true);
    step(
        tcp_to_server(45 * SEC, a, 50003, SSH, TCP_SYN),
        "A tries SSH after 35 s idle: closed",
        false,
    );
    steps
}

/// The frames of [`portknock_script`].
pub fn portknock_demo() -> Vec<Frame> {
    portknock_script().into_iter().map(|s| s.frame).collect()
}

/// `n` UDP datagrams from `src` to the server (port 5001), the first at
/// `start_ns` and then every `gap_ns` (0: all at once).
pub fn token_burst(src: Ipv4Addr, n: usize, start_ns: i64, gap_ns: i64) -> Vec<Frame> {
    (0..n)
        .map(|i| {
            let t = start_ns.wrapping_add((i as i64).wrapping_mul(gap_ns));
            udp_to_server(t, src, 40000, 5001)
        })
        .collect()
}

/// The token-bucket trace: host A (10.0.0.1) sends 100 packets at once at
/// t = 0, then one every 250 ms from 1 s to 10.75 s; host B (10.0.0.2)
/// sends one packet every 2 s. Sorted by time (A before B on ties).
///
/// With B = 5 tokens and Q = 1 s (DESIGN.md §4), A's burst passes 6 and
/// drops 94, then one steady packet in four passes (one per Q); every
/// packet of B passes.
pub fn tokenbucket_demo() -> Vec<Frame> {
    let a = host(1);
    let b = host(2);
    let mut frames = token_burst(a, 100, 0, 0);
    frames.extend(token_burst(a, 40, SEC, 250 * MS));
    frames.extend(token_burst(b, 6, 0, 2 * SEC));
    // Stable: keeps A's frames before B's at equal times.
    frames.sort_by_key(|f| f.time_ns);
    frames
}

/// The ARP-responder trace: hosts 1 to 4 each ask twice, 100 ms apart,
/// who has the server (10.0.0.100), and once who has 10.0.0.200 (nobody
/// answers for it); host 1 then sends the server a UDP datagram. The
/// responder answers the eight requests for the server and passes the
/// rest.
pub fn arp_responder_demo() -> Vec<Frame> {
    let mut frames = Vec::new();
    for n in 1..=4 {
        let t = i64::from(n) * 10 * MS;
        frames.push(arp(t, host(n), SERVER));
        frames.push(arp(t + 100 * MS, host(n), SERVER));
        frames.push(arp(t + 200 * MS, host(n), Ipv4Addr::new(10, 0, 0, 200)));
    }
    frames.push(udp_to_server(SEC, host(1), 40000, 53));
    frames.sort_by_key(|f| f.time_ns);
    frames
}

/// The committed example captures: file name (under the workspace's
/// `examples/`) and frames.
pub fn example_captures() -> Vec<(&'static str, Vec<Frame>)> {
    vec![
        ("portknock.pcap", portknock_demo()),
        ("tokenbucket.pcap", tokenbucket_demo()),
        ("arp-responder.pcap", arp_responder_demo()),
    ]
}

/// SplitMix64 (Steele, Lea, Flood 2014). Written out here rather than taken
/// from a crate so that a seed gives the same trace forever, whatever
/// version of a random-number crate is in the lock file.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `n` packets from `flows` sources (hosts 1 to `flows`, at least one), for
/// replay benchmarks and differential tests. Each packet picks a random
/// source, which then:
///
/// - 60 %: takes the next step of its own script: the four knocks in order,
///   then TCP 22 for ever after;
/// - 15 %: sends TCP 22 whatever its progress;
/// - 10 %: knocks a random port of the sequence (often out of order);
/// - 10 %: sends UDP to a random port;
/// - 5 %: sends an ARP request (non-IP).
///
/// Packets are 1 µs apart on average (0 to 2 µs), so a million span about
/// one second and no 30 s timeout fires unless the caller spreads them.
pub fn mixed_load(n: usize, flows: u32, seed: u64) -> Vec<Frame> {
    let flows = flows.max(1);
    let mut rng = SplitMix64::new(seed);
    let mut progress = vec![0u8; flows as usize];
    let mut time = 0i64;
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        time += rng.below(2001) as i64;
        let flow = rng.below(u64::from(flows)) as u32;
        let src = host(flow + 1);
        let sport = 1024 + rng.below(60000) as u16;
        let roll = rng.below(100);
        let frame = if roll < 60 {
            let step = &mut progress[flow as usize];
            match KNOCKS.get(usize::from(*step)) {
                Some(&port) => {
                    *step += 1;
                    udp_to_server(time, src, sport, port)
                }
                None => tcp_to_server(time, src, sport, SSH, TCP_ACK_FLAG),
            }
        } else if roll < 75 {
            tcp_to_server(time, src, sport, SSH, TCP_SYN)
        } else if roll < 85 {
            let port = KNOCKS[rng.below(4) as usize];
            udp_to_server(time, src, sport, port)
        } else if roll < 95 {
            let port = rng.below(65536) as u16;
            udp_to_server(time, src, sport, port)
        } else {
            arp(time, src, SERVER)
        };
        frames.push(frame);
    }
    frames
}
