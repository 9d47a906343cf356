//! Properties of the parser over arbitrary bytes and over built packets.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowstate_wire::build::PacketBuilder;
use flowstate_wire::offsets::*;
use flowstate_wire::{parse, Field};
use proptest::prelude::*;

/// Random frames whose first 14 bytes are often an ethertype the parser
/// follows, so that the deeper layers are reached too.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let ethertypes = prop_oneof![
        Just(ETHERTYPE_IPV4),
        Just(ETHERTYPE_IPV6),
        Just(ETHERTYPE_VLAN),
        Just(ETHERTYPE_QINQ),
        any::<u16>(),
    ];
    (
        proptest::collection::vec(any::<u8>(), 0..120),
        ethertypes,
        any::<bool>(),
    )
        .prop_map(|(mut bytes, ty, steer)| {
            if steer && bytes.len() >= 14 {
                bytes[12..14].copy_from_slice(&ty.to_be_bytes());
                if bytes.len() > 14 && ty == ETHERTYPE_IPV4 {
                    // Version 4, IHL anywhere from 0 to 15.
                    bytes[14] = 0x40 | (bytes[14] & 0x0f);
                } else if bytes.len() > 14 && ty == ETHERTYPE_IPV6 {
                    bytes[14] = 0x60 | (bytes[14] & 0x0f);
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_parse_without_panic_and_keep_metadata(frame in frames(), ifindex in any::<u32>()) {
        let h = parse(&frame, ifindex);
        prop_assert_eq!(h.get(Field::PktLen), Some(frame.len() as u128));
        prop_assert_eq!(h.get(Field::PktIfindex), Some(u128::from(ifindex)));
        for (field, value) in h.present() {
            let fits = field.bits() >= 128 || value >> field.bits() == 0;
            prop_assert!(fits, "{} = {:#x}", field, value);
        }
    }

    /// Every rule only ever asks for bytes to be present, so cutting a frame
    /// can hide fields but never invent or change one.
    #[test]
    fn a_prefix_shows_a_subset_of_the_fields(frame in frames(), cut in any::<prop::sample::Index>()) {
        let n = cut.index(frame.len() + 1);
        let full = parse(&frame, 1);
        let prefix = parse(&frame[..n], 1);
        for (field, value) in prefix.present() {
            if field != Field::PktLen {
                prop_assert_eq!(full.get(field), Some(value), "{}", field);
            }
        }
    }

    /// Transport fields appear only with an IP layer under them.
    #[test]
    fn transport_fields_need_an_ip_layer(frame in frames()) {
        let h = parse(&frame, 1);
        let has_ip = h.has(Field::IpSrc) || h.has(Field::Ip6Src);
        for f in [Field::TcpDport, Field::UdpDport, Field::IcmpType] {
            prop_assert!(!h.has(f) || has_ip);
        }
        prop_assert!(!(h.has(Field::IpSrc) && h.has(Field::Ip6Src)));
    }
}

#[derive(Debug, Clone)]
enum Net {
    V4 {
        src: u32,
        dst: u32,
        ttl: u8,
        dscp: u8,
        options: Vec<u8>,
        frag: u16,
    },
    V6 {
        src: u128,
        dst: u128,
        hop: u8,
    },
}

#[derive(Debug, Clone, Copy)]
enum L4 {
    Tcp(u16, u16, u8),
    Udp(u16, u16),
    Icmp(u8, u8),
}

#[derive(Debug, Clone)]
struct Spec {
    src: [u8; 6],
    dst: [u8; 6],
    tags: Vec<(bool, u16)>,
    net: Net,
    l4: L4,
    payload: usize,
}

fn specs() -> impl Strategy<Value = Spec> {
    let net = prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            0u8..64,
            proptest::collection::vec(any::<u8>(), 0..=40),
            prop_oneof![Just(0u16), 1u16..0x2000],
        )
            .prop_map(|(src, dst, ttl, dscp, options, frag)| Net::V4 {
                src,
                dst,
                ttl,
                dscp,
                options,
                frag
            }),
        (any::<u128>(), any::<u128>(), any::<u8>()).prop_map(|(src, dst, hop)| Net::V6 {
            src,
            dst,
            hop
        }),
    ];
    let l4 = prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(s, d, f)| L4::Tcp(s, d, f)),
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| L4::Udp(s, d)),
        (any::<u8>(), any::<u8>()).prop_map(|(t, c)| L4::Icmp(t, c)),
    ];
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        proptest::collection::vec((any::<bool>(), 0u16..4096), 0..=2),
        net,
        l4,
        0usize..64,
    )
        .prop_map(|(src, dst, tags, net, l4, payload)| Spec {
            src,
            dst,
            tags,
            net,
            l4,
            payload,
        })
}

fn mac_value(mac: [u8; 6]) -> u128 {
    mac.iter().fold(0, |acc, &b| (acc << 8) | u128::from(b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn parse_recovers_what_the_builder_wrote(spec in specs()) {
        let mut b = PacketBuilder::eth(spec.src, spec.dst);
        for &(outer_type, id) in &spec.tags {
            b = if outer_type { b.qinq(id) } else { b.vlan(id) };
        }
        let v6 = matches!(spec.net, Net::V6 { .. });
        b = match &spec.net {
            Net::V4 { src, dst, ttl, dscp, options, frag } => b
                .ipv4(Ipv4Addr::from(*src), Ipv4Addr::from(*dst))
                .ttl(*ttl)
                .dscp(*dscp)
                .options(options)
                .fragment(*frag, false),
            Net::V6 { src, dst, hop } => b.ipv6(Ipv6Addr::from(*src), Ipv6Addr::from(*dst)).ttl(*hop),
        };
        b = match spec.l4 {
            L4::Tcp(s, d, f) => b.tcp(s, d, f),
            L4::Udp(s, d) => b.udp(s, d),
            L4::Icmp(t, c) if v6 => b.icmpv6(t, c),
            L4::Icmp(t, c) => b.icmp(t, c),
        };
        let frame = b.payload(spec.payload).build();
        let h = parse(&frame, 9);

        prop_assert_eq!(h.get(Field::EthSrc), Some(mac_value(spec.src)));
        prop_assert_eq!(h.get(Field::EthDst), Some(mac_value(spec.dst)));
        prop_assert_eq!(h.get(Field::VlanId), spec.tags.first().map(|t| u128::from(t.1)));
        prop_assert_eq!(h.get(Field::PktLen), Some(frame.len() as u128));
        let proto = match spec.l4 {
            L4::Tcp(..) => 6,
            L4::Udp(..) => 17,
            L4::Icmp(..) if v6 => 58,
            L4::Icmp(..) => 1,
        };
        let mut transport_parsed = true;
        match &spec.net {
            Net::V4 { src, dst, ttl, dscp, frag, .. } => {
                prop_assert_eq!(h.get(Field::EthType), Some(0x0800));
                prop_assert_eq!(h.get(Field::IpSrc), Some(u128::from(*src)));
                prop_assert_eq!(h.get(Field::IpDst), Some(u128::from(*dst)));
                prop_assert_eq!(h.get(Field::IpTtl), Some(u128::from(*ttl)));
                prop_assert_eq!(h.get(Field::IpDscp), Some(u128::from(*dscp)));
                prop_assert_eq!(h.get(Field::IpProto), Some(proto));
                transport_parsed = *frag == 0;
            }
            Net::V6 { src, dst, .. } => {
                prop_assert_eq!(h.get(Field::EthType), Some(0x86dd));
                prop_assert_eq!(h.get(Field::Ip6Src), Some(*src));
                prop_assert_eq!(h.get(Field::Ip6Dst), Some(*dst));
                prop_assert_eq!(h.get(Field::Ip6Next), Some(proto));
            }
        }
        let expect = |v: u128| transport_parsed.then_some(v);
        match spec.l4 {
            L4::Tcp(s, d, f) => {
                prop_assert_eq!(h.get(Field::TcpSport), expect(s.into()));
                prop_assert_eq!(h.get(Field::TcpDport), expect(d.into()));
                prop_assert_eq!(h.get(Field::TcpFlags), expect(f.into()));
            }
            L4::Udp(s, d) => {
                prop_assert_eq!(h.get(Field::UdpSport), expect(s.into()));
                prop_assert_eq!(h.get(Field::UdpDport), expect(d.into()));
            }
            L4::Icmp(t, c) => {
                prop_assert_eq!(h.get(Field::IcmpType), expect(t.into()));
                prop_assert_eq!(h.get(Field::IcmpCode), expect(c.into()));
            }
        }
    }
}
