//! Packet sequences for differential runs: mostly well-formed frames built
//! from small pools of addresses and ports, so that flows repeat and their
//! state evolves, plus adversarial frames (truncated at random lengths,
//! bogus IHL, bogus IP version, random bytes, runts).
//!
//! The pools are public: the program generator draws its pattern values
//! from them ([`field_values`]), so that generated rows actually match.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowstate_lang::ir::Hook;
use flowstate_wire::build::{mac, PacketBuilder};
use flowstate_wire::offsets as off;
use flowstate_wire::Field;

use crate::rng::Rng;

/// `BPF_PROG_TEST_RUN` refuses frames shorter than an Ethernet header
/// (`ETH_HLEN`) with EINVAL; only the interpreter sees them.
pub const MIN_TEST_RUN_LEN: usize = off::ETH_HEADER_LEN;

/// Why `BPF_PROG_TEST_RUN` refuses `frame` at `hook` (EINVAL), if it does.
/// Measured on Linux 6.18: every hook refuses frames shorter than
/// `ETH_HLEN`; TC (skb) test runs also refuse a frame whose (outer)
/// ethertype is IPv4 with fewer than 20 bytes after the Ethernet header, or
/// IPv6 with fewer than 40, whatever those bytes hold. VLAN-tagged frames
/// are not checked. Such frames are left to the interpreter.
pub fn test_run_refuses(frame: &[u8], hook: Hook) -> Option<&'static str> {
    if frame.len() < MIN_TEST_RUN_LEN {
        return Some("shorter than an Ethernet header");
    }
    if hook == Hook::Xdp {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[off::ETH_TYPE], frame[off::ETH_TYPE + 1]]);
    let l3 = frame.len() - off::ETH_HEADER_LEN;
    match ethertype {
        off::ETHERTYPE_IPV4 if l3 < off::IPV4_MIN_LEN => Some("TC: IPv4 header cut short"),
        off::ETHERTYPE_IPV6 if l3 < off::IPV6_HEADER_LEN => Some("TC: IPv6 header cut short"),
        _ => None,
    }
}

/// A frame and the clock value it is processed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub now: i64,
    pub frame: Vec<u8>,
}

/// The clock at the first packet. Not zero, so that `now`-based register
/// initial values differ from constant zeros.
pub const CLOCK_START: i64 = 1_000_000_000;

/// Host numbers of the Ethernet addresses (see [`mac`]).
pub const MAC_HOSTS: [u32; 4] = [1, 2, 3, 0x0102_0304];
pub const IPV4_ADDRS: [[u8; 4]; 6] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 0, 3],
    [10, 0, 1, 7],
    [192, 168, 1, 1],
    [172, 16, 0, 9],
];
pub const IPV6_ADDRS: [u128; 4] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0001,
    0x2001_0db8_0000_0000_0000_0000_0000_0002,
    0x2001_0db8_0000_0001_0000_0000_0000_0003,
    0xfe80_0000_0000_0000_0000_0000_0000_0009,
];
pub const PORTS: [u16; 8] = [22, 53, 80, 443, 1111, 2222, 40000, 65535];
pub const VLAN_IDS: [u16; 4] = [1, 10, 20, 4095];
pub const TCP_FLAGS: [u8; 6] = [0x02, 0x10, 0x12, 0x11, 0x04, 0x18];
pub const TTLS: [u8; 4] = [1, 2, 64, 255];
pub const DSCPS: [u8; 3] = [0, 10, 46];
pub const ICMP_TYPES: [(u8, u8); 3] = [(8, 0), (0, 0), (3, 1)];
pub const ICMPV6_TYPES: [(u8, u8); 3] = [(128, 0), (129, 0), (135, 0)];
/// Payload lengths: small, so `pkt.len` conditions split packets both ways.
pub const PAYLOAD_LENS: [usize; 5] = [0, 1, 16, 64, 200];

/// Values the generator produces for `field` (plus a few it does not, so
/// that exact patterns sometimes never match).
pub fn field_values(field: Field) -> Vec<u128> {
    let ports = || PORTS.iter().map(|&p| u128::from(p)).collect();
    match field {
        Field::EthSrc | Field::EthDst => MAC_HOSTS.iter().map(|&n| mac_value(mac(n))).collect(),
        Field::EthType => vec![0x0800, 0x86dd, 0x0806, 0x88b5, 0x8100],
        Field::VlanId => VLAN_IDS.iter().map(|&v| u128::from(v)).collect(),
        Field::IpSrc | Field::IpDst => IPV4_ADDRS
            .iter()
            .map(|a| u128::from(u32::from_be_bytes(*a)))
            .collect(),
        Field::IpProto | Field::Ip6Next => vec![1, 6, 17, 58, 253, 59],
        Field::IpTtl => TTLS.iter().map(|&v| u128::from(v)).collect(),
        Field::IpDscp => DSCPS.iter().map(|&v| u128::from(v)).collect(),
        Field::Ip6Src | Field::Ip6Dst => IPV6_ADDRS.to_vec(),
        Field::TcpSport | Field::TcpDport | Field::UdpSport | Field::UdpDport => ports(),
        Field::TcpFlags => TCP_FLAGS.iter().map(|&v| u128::from(v)).collect(),
        Field::IcmpType => vec![0, 3, 8, 128, 129, 135],
        Field::IcmpCode => vec![0, 1],
        Field::PktLen => vec![14, 42, 54, 60, 74, 100, 300],
        Field::PktIfindex => vec![1, 2],
        Field::ArpOp => vec![1, 2],
        // Requests carry a zero target hardware address.
        Field::ArpSha | Field::ArpTha => std::iter::once(0)
            .chain(MAC_HOSTS.iter().map(|&n| mac_value(mac(n))))
            .collect(),
        Field::ArpSpa | Field::ArpTpa => IPV4_ADDRS
            .iter()
            .map(|a| u128::from(u32::from_be_bytes(*a)))
            .collect(),
    }
}

fn mac_value(m: [u8; 6]) -> u128 {
    m.iter().fold(0u128, |acc, &b| (acc << 8) | u128::from(b))
}

fn pick_copy<T: Copy>(rng: &mut Rng, items: &[T], fallback: T) -> T {
    rng.pick(items).copied().unwrap_or(fallback)
}

fn port(rng: &mut Rng) -> u16 {
    pick_copy(rng, &PORTS, 80)
}

fn ipv4(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::from(pick_copy(rng, &IPV4_ADDRS, [10, 0, 0, 1]))
}

fn ipv6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::from(pick_copy(rng, &IPV6_ADDRS, 1))
}

/// Ethernet, maybe tagged, with addresses from the pool.
fn ethernet(rng: &mut Rng) -> PacketBuilder {
    let src = mac(pick_copy(rng, &MAC_HOSTS, 1));
    let dst = mac(pick_copy(rng, &MAC_HOSTS, 2));
    let mut b = PacketBuilder::eth(src, dst);
    match rng.below(10) {
        0 => b = b.vlan(pick_copy(rng, &VLAN_IDS, 10)),
        1 => {
            b = b
                .qinq(pick_copy(rng, &VLAN_IDS, 10))
                .vlan(pick_copy(rng, &VLAN_IDS, 20))
        }
        _ => {}
    }
    b
}

fn ipv4_transport(rng: &mut Rng, b: PacketBuilder) -> PacketBuilder {
    match rng.below(10) {
        0..=3 => b.tcp(port(rng), port(rng), pick_copy(rng, &TCP_FLAGS, 0x02)),
        4..=7 => b.udp(port(rng), port(rng)),
        8 => {
            let (ty, code) = pick_copy(rng, &ICMP_TYPES, (8, 0));
            b.icmp(ty, code)
        }
        _ => b.protocol(253),
    }
}

/// A well-formed frame from the pools.
pub fn well_formed(rng: &mut Rng) -> PacketBuilder {
    let b = ethernet(rng);
    let b = match rng.below(20) {
        0..=11 => {
            let mut b = b
                .ipv4(ipv4(rng), ipv4(rng))
                .ttl(pick_copy(rng, &TTLS, 64))
                .dscp(pick_copy(rng, &DSCPS, 0));
            if rng.percent(10) {
                // Options change where the transport header starts.
                let len = rng.range(1, 40) as usize;
                b = b.options(&vec![1u8; len]);
            }
            if rng.percent(8) {
                // A later fragment has no transport header; a first one
                // with MF set does.
                let offset = if rng.percent(50) { 0 } else { 185 };
                b = b.fragment(offset, rng.percent(50));
            }
            ipv4_transport(rng, b)
        }
        12..=16 => {
            let b = b.ipv6(ipv6(rng), ipv6(rng)).ttl(pick_copy(rng, &TTLS, 64));
            match rng.below(8) {
                0..=2 => b.tcp(port(rng), port(rng), pick_copy(rng, &TCP_FLAGS, 0x02)),
                3..=5 => b.udp(port(rng), port(rng)),
                6 => {
                    let (ty, code) = pick_copy(rng, &ICMPV6_TYPES, (128, 0));
                    b.icmpv6(ty, code)
                }
                _ => b.protocol(59),
            }
        }
        17 | 18 => b.arp_request(ipv4(rng), ipv4(rng)),
        _ => b.ethertype(0x88b5),
    };
    b.payload(pick_copy(rng, &PAYLOAD_LENS, 0))
}

/// One frame: well-formed most of the time, adversarial otherwise.
pub fn frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=84 => well_formed(rng).build(),
        85..=91 => {
            // Cut anywhere, including inside the Ethernet header.
            let full = well_formed(rng).build();
            let len = rng.below(full.len() as u64 + 1) as usize;
            full[..len].to_vec()
        }
        92..=94 => corrupt_ipv4(rng, true),
        95..=97 => corrupt_ipv4(rng, false),
        _ => {
            let len = rng.range(14, 80) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        }
    }
}

/// An IPv4 frame with a bogus IHL (`ihl`) or a bogus version.
fn corrupt_ipv4(rng: &mut Rng, ihl: bool) -> Vec<u8> {
    let b = PacketBuilder::eth(mac(1), mac(2))
        .ipv4(ipv4(rng), ipv4(rng))
        .udp(port(rng), port(rng))
        .payload(pick_copy(rng, &PAYLOAD_LENS, 0));
    let mut frame = b.build();
    let at = off::ETH_HEADER_LEN + off::IPV4_VER_IHL;
    if let Some(byte) = frame.get_mut(at) {
        *byte = if ihl {
            // 0-4 are below the minimum; 15 usually runs past the frame.
            let bogus = [0u8, 1, 4, 15, 14];
            (4 << 4) | pick_copy(rng, &bogus, 0)
        } else {
            let bogus = [0u8, 5, 6, 15];
            (pick_copy(rng, &bogus, 6) << 4) | 5
        };
    }
    frame
}

/// `n` packets with a clock that starts at [`CLOCK_START`] and advances in
/// small random steps (sometimes not at all, sometimes a larger jump), so
/// that millisecond timeouts fire now and then.
pub fn sequence(rng: &mut Rng, n: usize) -> Vec<Packet> {
    let mut now = CLOCK_START;
    (0..n)
        .map(|_| {
            now += match rng.below(10) {
                0 | 1 => 0,
                2..=7 => rng.range(1_000, 1_500_000) as i64,
                8 => rng.range(1_000_000, 5_000_000) as i64,
                _ => rng.range(5_000_000, 40_000_000) as i64,
            };
            Packet {
                now,
                frame: frame(rng),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_wire::parse;

    #[test]
    fn sequences_are_deterministic() {
        let a = sequence(&mut Rng::new(5), 200);
        let b = sequence(&mut Rng::new(5), 200);
        assert_eq!(a, b);
        assert_ne!(a, sequence(&mut Rng::new(6), 200));
    }

    #[test]
    fn clock_never_goes_back() {
        let packets = sequence(&mut Rng::new(1), 500);
        assert!(packets.windows(2).all(|w| w[0].now <= w[1].now));
        assert!(packets[0].now >= CLOCK_START);
        // Small steps: 500 packets span well under a minute.
        assert!(packets[499].now - CLOCK_START < 60_000_000_000);
    }

    #[test]
    fn mix_covers_every_layer_and_adversarial_frames() {
        let packets = sequence(&mut Rng::new(2), 5_000);
        let has = |f: Field| packets.iter().filter(|p| parse(&p.frame, 1).has(f)).count();
        for field in [
            Field::VlanId,
            Field::IpSrc,
            Field::Ip6Src,
            Field::TcpFlags,
            Field::UdpDport,
            Field::IcmpType,
        ] {
            assert!(has(field) > 20, "{field} in only {} packets", has(field));
        }
        // Frames the kernel refuses exist, and so do IPv4 ethertype frames
        // without IPv4 fields (bogus IHL or version).
        assert!(packets.iter().any(|p| p.frame.len() < MIN_TEST_RUN_LEN));
        assert!(packets.iter().any(|p| {
            let h = parse(&p.frame, 1);
            h.get(Field::EthType) == Some(0x0800) && !h.has(Field::IpSrc)
        }));
        // Flows repeat: few distinct sources.
        let mut sources: Vec<u128> = packets
            .iter()
            .filter_map(|p| parse(&p.frame, 1).get(Field::IpSrc))
            .collect();
        sources.sort_unstable();
        sources.dedup();
        assert!(sources.len() < 64, "{} sources", sources.len());
    }

    #[test]
    fn pool_values_are_what_the_frames_carry() {
        let packets = sequence(&mut Rng::new(3), 3_000);
        for field in [Field::EthSrc, Field::IpDst, Field::TcpDport, Field::Ip6Src] {
            let values = field_values(field);
            let seen = packets
                .iter()
                .filter_map(|p| parse(&p.frame, 1).get(field))
                .filter(|v| values.contains(v))
                .count();
            assert!(seen > 50, "{field}: {seen}");
        }
    }
}
