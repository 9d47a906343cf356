//! The parsing rules of the crate doc, layer by layer, and the builder that
//! the tests (and the trace generators) use to make packets.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowstate_wire::build::{checksum_ok, mac, PacketBuilder};
use flowstate_wire::offsets::*;
use flowstate_wire::{layout, parse, Field, Headers};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xabcd, 2);

fn eth() -> PacketBuilder {
    PacketBuilder::eth(mac(1), mac(2))
}

fn present(h: &Headers) -> Vec<Field> {
    h.present().map(|(f, _)| f).collect()
}

const META: [Field; 2] = [Field::PktLen, Field::PktIfindex];
const ETH: [Field; 2] = [Field::EthSrc, Field::EthDst];
const IPV4: [Field; 5] = [
    Field::IpSrc,
    Field::IpDst,
    Field::IpProto,
    Field::IpTtl,
    Field::IpDscp,
];
const IPV6: [Field; 3] = [Field::Ip6Src, Field::Ip6Dst, Field::Ip6Next];
const TCP: [Field; 3] = [Field::TcpSport, Field::TcpDport, Field::TcpFlags];
const UDP: [Field; 2] = [Field::UdpSport, Field::UdpDport];
const ICMP: [Field; 2] = [Field::IcmpType, Field::IcmpCode];

/// The fields of the given groups, in catalogue order (as `present` lists them).
fn fields(groups: &[&[Field]]) -> Vec<Field> {
    let mut all: Vec<Field> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    all.sort();
    all
}

#[test]
fn untagged_ipv4_udp_gives_every_field_of_its_layers() {
    let frame = eth()
        .ipv4(A, B)
        .ttl(17)
        .dscp(46)
        .udp(40000, 1111)
        .payload(10)
        .build();
    let h = parse(&frame, 7);
    assert_eq!(h.get(Field::EthSrc), Some(0x0200_0000_0001));
    assert_eq!(h.get(Field::EthDst), Some(0x0200_0000_0002));
    assert_eq!(h.get(Field::EthType), Some(0x0800));
    assert_eq!(h.get(Field::VlanId), None);
    assert_eq!(h.get(Field::IpSrc), Some(u32::from(A).into()));
    assert_eq!(h.get(Field::IpDst), Some(u32::from(B).into()));
    assert_eq!(h.get(Field::IpProto), Some(17));
    assert_eq!(h.get(Field::IpTtl), Some(17));
    assert_eq!(h.get(Field::IpDscp), Some(46));
    assert_eq!(h.get(Field::UdpSport), Some(40000));
    assert_eq!(h.get(Field::UdpDport), Some(1111));
    assert_eq!(h.get(Field::PktLen), Some(14 + 20 + 8 + 10));
    assert_eq!(h.get(Field::PktIfindex), Some(7));
    assert_eq!(
        present(&h),
        fields(&[&META, &ETH, &[Field::EthType], &IPV4, &UDP])
    );
}

#[test]
fn no_vlan_tag_leaves_vlan_id_absent() {
    let h = parse(&eth().ethertype(ETHERTYPE_ARP).payload(28).build(), 1);
    assert_eq!(h.get(Field::EthType), Some(0x0806));
    assert_eq!(h.get(Field::VlanId), None);
}

#[test]
fn one_tag_gives_its_vid_and_the_inner_ethertype() {
    let frame = eth().tag(ETHERTYPE_VLAN, 0xe000 | 42).ipv4(A, B).build();
    let h = parse(&frame, 1);
    // Priority bits are not part of the VID.
    assert_eq!(h.get(Field::VlanId), Some(42));
    assert_eq!(h.get(Field::EthType), Some(0x0800));
    assert_eq!(h.get(Field::IpSrc), Some(u32::from(A).into()));
    assert_eq!(layout(&frame).vlan_tags, 1);
}

#[test]
fn qinq_gives_the_outer_vid() {
    for frame in [
        eth()
            .qinq(100)
            .vlan(200)
            .ipv4(A, B)
            .tcp(1, 22, TCP_SYN)
            .build(),
        eth()
            .vlan(100)
            .vlan(200)
            .ipv4(A, B)
            .tcp(1, 22, TCP_SYN)
            .build(),
    ] {
        let h = parse(&frame, 1);
        assert_eq!(h.get(Field::VlanId), Some(100));
        assert_eq!(h.get(Field::EthType), Some(0x0800));
        assert_eq!(h.get(Field::TcpDport), Some(22));
        assert_eq!(h.get(Field::TcpFlags), Some(u128::from(TCP_SYN)));
        assert_eq!(layout(&frame).vlan_tags, 2);
    }
}

#[test]
fn a_third_tag_is_not_parsed_and_reads_as_its_tpid() {
    let frame = eth().vlan(1).vlan(2).vlan(3).ipv4(A, B).build();
    let h = parse(&frame, 1);
    assert_eq!(h.get(Field::VlanId), Some(1));
    assert_eq!(h.get(Field::EthType), Some(u128::from(ETHERTYPE_VLAN)));
    assert_eq!(h.get(Field::IpSrc), None);
}

#[test]
fn a_truncated_tag_hides_vlan_and_everything_above() {
    let frame = eth().vlan(5).vlan(6).ipv4(A, B).build();
    // Cut inside the second tag.
    let h = parse(&frame[..20], 1);
    assert_eq!(present(&h), fields(&[&META, &ETH]));
}

#[test]
fn ipv4_options_are_skipped() {
    let options = [0x94, 0x04, 0, 0, 1, 1, 1]; // router alert, NOPs
    let frame = eth()
        .ipv4(A, B)
        .options(&options)
        .tcp(1234, 22, TCP_SYN | TCP_ACK_FLAG)
        .build();
    assert_eq!(frame[14] & 0x0f, 7, "8 option bytes after padding");
    let h = parse(&frame, 1);
    assert_eq!(h.get(Field::TcpSport), Some(1234));
    assert_eq!(h.get(Field::TcpDport), Some(22));
    assert_eq!(h.get(Field::TcpFlags), Some(0x12));
    assert_eq!(layout(&frame).transport, Some((IP_PROTO_TCP, 14 + 28)));
}

#[test]
fn ihl_below_five_makes_ipv4_absent() {
    for ihl in 0..5u8 {
        let mut frame = eth().ipv4(A, B).udp(1, 2).build();
        frame[14] = 0x40 | ihl;
        let h = parse(&frame, 1);
        assert_eq!(
            present(&h),
            fields(&[&META, &ETH, &[Field::EthType]]),
            "ihl {ihl}"
        );
    }
}

#[test]
fn ihl_past_the_frame_makes_ipv4_absent() {
    let mut frame = eth().ipv4(A, B).protocol(99).payload(8).build();
    frame[14] = 0x4f; // 60-byte header, only 28 bytes there
    let h = parse(&frame, 1);
    assert_eq!(h.get(Field::IpSrc), None);
    // With the bytes present it parses again.
    frame.resize(14 + 60, 0);
    assert_eq!(parse(&frame, 1).get(Field::IpProto), Some(99));
}

#[test]
fn wrong_ip_version_makes_the_ip_layer_absent() {
    let mut v4 = eth().ipv4(A, B).udp(1, 2).build();
    v4[14] = 0x65;
    assert_eq!(parse(&v4, 1).get(Field::IpSrc), None);
    assert_eq!(parse(&v4, 1).get(Field::UdpDport), None);

    let mut v6 = eth().ipv6(A6, B6).udp(1, 2).build();
    v6[14] = 0x40;
    assert_eq!(parse(&v6, 1).get(Field::Ip6Src), None);
    assert_eq!(parse(&v6, 1).get(Field::UdpDport), None);
    assert_eq!(parse(&v6, 1).get(Field::EthType), Some(0x86dd));
}

#[test]
fn a_non_first_fragment_has_no_transport() {
    let later = eth().ipv4(A, B).fragment(185, false).udp(1, 2).build();
    let h = parse(&later, 1);
    assert_eq!(h.get(Field::IpProto), Some(17));
    assert_eq!(h.get(Field::UdpSport), None);
    assert_eq!(h.get(Field::UdpDport), None);

    let first = eth().ipv4(A, B).fragment(0, true).udp(1, 2).build();
    assert_eq!(parse(&first, 1).get(Field::UdpDport), Some(2));
}

#[test]
fn ipv6_carries_tcp_udp_and_icmpv6() {
    let tcp = parse(&eth().ipv6(A6, B6).tcp(5, 22, TCP_FIN).build(), 1);
    assert_eq!(tcp.get(Field::Ip6Src), Some(u128::from(A6)));
    assert_eq!(tcp.get(Field::Ip6Dst), Some(u128::from(B6)));
    assert_eq!(tcp.get(Field::Ip6Next), Some(6));
    assert_eq!(tcp.get(Field::TcpDport), Some(22));
    assert_eq!(tcp.get(Field::IpSrc), None);

    let udp = parse(&eth().ipv6(A6, B6).udp(53, 5353).build(), 1);
    assert_eq!(udp.get(Field::UdpSport), Some(53));
    assert_eq!(udp.get(Field::UdpDport), Some(5353));

    let icmp = parse(&eth().ipv6(A6, B6).icmpv6(135, 0).build(), 1);
    assert_eq!(icmp.get(Field::IcmpType), Some(135));
    assert_eq!(icmp.get(Field::IcmpCode), Some(0));
    assert_eq!(
        present(&icmp),
        fields(&[&META, &ETH, &[Field::EthType], &IPV6, &ICMP])
    );
}

#[test]
fn icmp_belongs_to_ipv4_and_icmpv6_to_ipv6() {
    let v4 = parse(&eth().ipv4(A, B).icmp(8, 0).build(), 1);
    assert_eq!(v4.get(Field::IcmpType), Some(8));

    // Protocol 58 over IPv4, and 1 over IPv6, are not parsed.
    let v4_58 = parse(&eth().ipv4(A, B).protocol(58).payload(8).build(), 1);
    assert_eq!(v4_58.get(Field::IcmpType), None);
    let v6_1 = parse(&eth().ipv6(A6, B6).protocol(1).payload(8).build(), 1);
    assert_eq!(v6_1.get(Field::IcmpType), None);
    assert_eq!(v6_1.get(Field::Ip6Next), Some(1));
}

#[test]
fn an_unknown_transport_keeps_the_ip_fields() {
    let h = parse(&eth().ipv4(A, B).protocol(47).payload(30).build(), 1);
    assert_eq!(h.get(Field::IpProto), Some(47));
    assert_eq!(
        present(&h),
        fields(&[&META, &ETH, &[Field::EthType], &IPV4])
    );
}

/// Cut `frame` at every length and compare the present fields with the
/// thresholds where each group becomes complete.
fn check_truncations(frame: &[u8], thresholds: &[(usize, &[Field])]) {
    for n in 0..=frame.len() {
        let expected = fields(
            &std::iter::once(&META[..])
                .chain(
                    thresholds
                        .iter()
                        .filter(|(at, _)| n >= *at)
                        .map(|(_, g)| *g),
                )
                .collect::<Vec<_>>(),
        );
        let h = parse(&frame[..n], 3);
        assert_eq!(present(&h), expected, "cut at {n} of {}", frame.len());
        assert_eq!(h.get(Field::PktLen), Some(n as u128));
    }
}

#[test]
fn truncating_untagged_ipv4_tcp_at_every_length() {
    let frame = eth().ipv4(A, B).tcp(1, 22, TCP_SYN).payload(6).build();
    check_truncations(
        &frame,
        &[(14, &ETH), (14, &[Field::EthType]), (34, &IPV4), (54, &TCP)],
    );
}

#[test]
fn truncating_qinq_ipv4_with_options_and_udp_at_every_length() {
    let frame = eth()
        .qinq(7)
        .vlan(8)
        .ipv4(A, B)
        .options(&[1, 1, 1, 1, 1, 1, 1, 0])
        .udp(9, 10)
        .payload(3)
        .build();
    // 14 + 8 tag bytes, 28-byte IPv4 header, 8-byte UDP header.
    check_truncations(
        &frame,
        &[
            (14, &ETH),
            (22, &[Field::VlanId, Field::EthType]),
            (50, &IPV4),
            (58, &UDP),
        ],
    );
}

#[test]
fn truncating_vlan_ipv6_icmpv6_at_every_length() {
    let frame = eth()
        .vlan(300)
        .ipv6(A6, B6)
        .icmpv6(128, 0)
        .payload(4)
        .build();
    check_truncations(
        &frame,
        &[
            (14, &ETH),
            (18, &[Field::VlanId, Field::EthType]),
            (58, &IPV6),
            (62, &ICMP),
        ],
    );
}

#[test]
fn layout_points_at_the_headers_the_fields_come_from() {
    let frame = eth().vlan(1).ipv4(A, B).udp(1, 2).build();
    let l = layout(&frame);
    assert_eq!(l.eth, Some(0));
    assert_eq!(l.eth_type, Some(16));
    assert_eq!(l.ipv4, Some(18));
    assert_eq!(l.ipv6, None);
    assert_eq!(l.transport, Some((IP_PROTO_UDP, 38)));
    assert_eq!(layout(&frame[..10]), Default::default());
}

#[test]
fn headers_print_present_fields_in_their_notation() {
    let h = parse(&eth().ipv4(A, B).tcp(1, 22, TCP_SYN).build(), 2);
    assert_eq!(
        h.to_string(),
        "eth.src=02:00:00:00:00:01 eth.dst=02:00:00:00:00:02 eth.type=0x0800 \
         ip.src=10.0.0.1 ip.dst=192.168.1.2 ip.proto=6 ip.ttl=64 ip.dscp=0 \
         tcp.sport=1 tcp.dport=22 tcp.flags=syn pkt.len=54 pkt.ifindex=2"
    );
}

// ---- builder -----------------------------------------------------------------

#[test]
fn builder_writes_ipv4_lengths_and_checksums() {
    let frame = eth()
        .ipv4(A, B)
        .options(&[1, 1, 1, 1])
        .ident(0x1234)
        .udp(1000, 2000)
        .payload(11)
        .build();
    let ip = &frame[14..];
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 24 + 8 + 11);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 0x1234);
    assert!(checksum_ok(&[&ip[..24]]), "IPv4 header checksum");
    let udp = &ip[24..];
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 8 + 11);
    let pseudo = [&ip[12..20], &[0, 17], &(19u16).to_be_bytes()[..]].concat();
    assert!(checksum_ok(&[&pseudo, udp]), "UDP checksum");
}

#[test]
fn builder_writes_tcp_and_icmp_checksums() {
    let frame = eth().ipv4(A, B).tcp(1, 2, TCP_SYN).payload(5).build();
    let ip = &frame[14..];
    let tcp = &ip[20..];
    let pseudo = [&ip[12..20], &[0, 6], &(25u16).to_be_bytes()[..]].concat();
    assert!(checksum_ok(&[&pseudo, tcp]), "TCP checksum");

    let frame = eth().ipv4(A, B).icmp(8, 0).payload(3).build();
    assert!(checksum_ok(&[&frame[34..]]), "ICMP checksum");
}

#[test]
fn builder_writes_ipv6_payload_length_and_icmpv6_checksum() {
    let frame = eth().ipv6(A6, B6).icmpv6(128, 0).payload(4).build();
    let ip = &frame[14..];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 12);
    let mut pseudo = ip[8..40].to_vec();
    pseudo.extend_from_slice(&[0, 0, 0, 12, 0, 0, 0, 58]);
    assert!(checksum_ok(&[&pseudo, &ip[40..]]), "ICMPv6 checksum");
}

#[test]
fn builder_truncates_and_fills_arp() {
    let full = eth().ipv4(A, B).udp(1, 2).payload(20).build();
    let cut = eth().ipv4(A, B).udp(1, 2).payload(20).truncate(40).build();
    assert_eq!(cut, full[..40]);

    let arp = eth().arp_request(A, B).build();
    assert_eq!(arp.len(), 14 + 28);
    assert_eq!(parse(&arp, 1).get(Field::EthType), Some(0x0806));
    assert_eq!(&arp[14 + 24..], &B.octets());
}

// ---- literal frames --------------------------------------------------------
//
// Builder and parser share the offsets, so a wrong offset would fool both.
// These frames are written out byte by byte from the RFC layouts instead.

#[test]
fn a_hand_written_tagged_ipv4_tcp_frame_parses_per_the_rfcs() {
    #[rustfmt::skip]
    let frame: [u8; 62] = [
        // Ethernet: dst, src, TPID 802.1Q
        0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,  0x11, 0x22, 0x33, 0x44, 0x55, 0x66,  0x81, 0x00,
        // Tag: PCP 3, VID 0x123; inner ethertype IPv4
        0x61, 0x23,  0x08, 0x00,
        // IPv4: version 4 IHL 6, TOS 0xb8 (DSCP 46), total length 44, id, flags/offset (DF),
        // TTL 33, proto TCP, checksum (unchecked), src 1.2.3.4, dst 5.6.7.8, 4 option bytes
        0x46, 0xb8, 0x00, 0x2c,  0x00, 0x01, 0x40, 0x00,  0x21, 0x06, 0x00, 0x00,
        0x01, 0x02, 0x03, 0x04,  0x05, 0x06, 0x07, 0x08,  0x01, 0x01, 0x01, 0x00,
        // TCP: sport 443, dport 51000, seq, ack, data offset 5, flags PSH|ACK, window, csum, urg
        0x01, 0xbb, 0xc7, 0x38,  0, 0, 0, 1,  0, 0, 0, 0,  0x50, 0x18, 0xff, 0xff,  0, 0, 0, 0,
    ];
    let h = parse(&frame, 4);
    assert_eq!(h.get(Field::EthDst), Some(0xaabb_ccdd_eeff));
    assert_eq!(h.get(Field::EthSrc), Some(0x1122_3344_5566));
    assert_eq!(h.get(Field::VlanId), Some(0x123));
    assert_eq!(h.get(Field::EthType), Some(0x0800));
    assert_eq!(h.get(Field::IpDscp), Some(46));
    assert_eq!(h.get(Field::IpTtl), Some(33));
    assert_eq!(h.get(Field::IpProto), Some(6));
    assert_eq!(h.get(Field::IpSrc), Some(0x0102_0304));
    assert_eq!(h.get(Field::IpDst), Some(0x0506_0708));
    assert_eq!(h.get(Field::TcpSport), Some(443));
    assert_eq!(h.get(Field::TcpDport), Some(51000));
    assert_eq!(h.get(Field::TcpFlags), Some(0x18));
    assert_eq!(h.get(Field::PktLen), Some(62));
    assert_eq!(h.get(Field::PktIfindex), Some(4));
}

#[test]
fn a_hand_written_ipv6_udp_frame_parses_per_the_rfcs() {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
    // Version 6, traffic class, flow label; payload length 8; next UDP; hop limit.
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    frame.extend_from_slice(&A6.octets());
    frame.extend_from_slice(&B6.octets());
    // UDP: sport 5353, dport 53, length 8, checksum.
    frame.extend_from_slice(&[0x14, 0xe9, 0x00, 0x35, 0, 8, 0, 0]);
    let h = parse(&frame, 1);
    assert_eq!(h.get(Field::Ip6Src), Some(u128::from(A6)));
    assert_eq!(h.get(Field::Ip6Dst), Some(u128::from(B6)));
    assert_eq!(h.get(Field::Ip6Next), Some(17));
    assert_eq!(h.get(Field::UdpSport), Some(5353));
    assert_eq!(h.get(Field::UdpDport), Some(53));
}
