//! Writing header fields into a frame with the checksums kept right.
//!
//! A row's field assignments (`ip.ttl = ip.ttl - 1`) are applied here by
//! the reference interpreter, and the code generator emits the same steps,
//! so both produce the same bytes. The rules:
//!
//! - Only the fields [`writable`] accepts can be written; each value is
//!   the field's width (the caller masks it). A field the frame does not
//!   carry is left alone (a row that writes one never fires: it reads as
//!   absent, like a field read in an update).
//! - `ip.dscp` keeps the two ECN bits of the TOS byte.
//! - `vlan.id` sets the VID of the outermost tag (priority and DEI kept).
//! - Checksums are updated incrementally (RFC 1624, eqn. 3), never
//!   recomputed, so a checksum that was wrong stays wrong by the same
//!   amount: the IPv4 header checksum for `ip.*`; the TCP or UDP checksum
//!   for its ports and, through the pseudo-header, for `ip.src`/`ip.dst`;
//!   the ICMP (or ICMPv6) checksum for `icmp.type`/`icmp.code`. A UDP
//!   checksum of 0 (none) stays 0, and a computed 0 is sent as 0xffff.
//!   Ethernet, VLAN and ARP fields have no checksum.
//!
//! The arithmetic is fixed so that every execution gets the same bytes:
//! writes are applied in the row's order, and after each one every
//! checksum covering it becomes [`update_checksum`] of the 16-bit words
//! the write changed (a byte at an even offset of its header is the high
//! byte of its word, at an odd offset the low byte, the other byte taken
//! as 0).

use crate::offsets as off;
use crate::{layout, Field, Layout};

/// Whether programs may assign `field`.
pub fn writable(field: Field) -> bool {
    matches!(
        field,
        Field::EthSrc
            | Field::EthDst
            | Field::VlanId
            | Field::IpSrc
            | Field::IpDst
            | Field::IpTtl
            | Field::IpDscp
            | Field::TcpSport
            | Field::TcpDport
            | Field::UdpSport
            | Field::UdpDport
            | Field::IcmpType
            | Field::IcmpCode
            | Field::ArpOp
            | Field::ArpSha
            | Field::ArpSpa
            | Field::ArpTha
            | Field::ArpTpa
    )
}

/// The checksum a field's words count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    Ipv4Header,
    /// TCP or UDP, whichever the packet carries.
    Transport,
    Icmp,
}

/// The checksums that cover `field` (the transport one through the
/// pseudo-header for IPv4 addresses).
pub fn checksums(field: Field) -> &'static [Checksum] {
    match field {
        Field::IpSrc | Field::IpDst => &[Checksum::Ipv4Header, Checksum::Transport],
        Field::IpTtl | Field::IpDscp => &[Checksum::Ipv4Header],
        Field::TcpSport | Field::TcpDport | Field::UdpSport | Field::UdpDport => {
            &[Checksum::Transport]
        }
        Field::IcmpType | Field::IcmpCode => &[Checksum::Icmp],
        _ => &[],
    }
}

/// Where `field` lives in `frame` laid out as `layout`: the byte offset of
/// the bytes the write replaces (for `ip.dscp` the TOS byte, for `vlan.id`
/// the TCI) and their length; `None` when the frame does not carry it.
pub fn location(field: Field, layout: &Layout) -> Option<(usize, usize)> {
    let l4 = |proto: &[u8]| {
        layout
            .transport
            .filter(|(p, _)| proto.contains(p))
            .map(|(_, at)| at)
    };
    let icmp = [off::IP_PROTO_ICMP, off::IP_PROTO_ICMPV6];
    Some(match field {
        Field::EthDst => (layout.eth? + off::ETH_DST, off::ETH_ADDR_LEN),
        Field::EthSrc => (layout.eth? + off::ETH_SRC, off::ETH_ADDR_LEN),
        Field::VlanId => {
            layout.eth_type?;
            if layout.vlan_tags == 0 {
                return None;
            }
            (off::ETH_HEADER_LEN + off::VLAN_TCI, 2)
        }
        Field::IpSrc => (layout.ipv4? + off::IPV4_SRC, 4),
        Field::IpDst => (layout.ipv4? + off::IPV4_DST, 4),
        Field::IpTtl => (layout.ipv4? + off::IPV4_TTL, 1),
        Field::IpDscp => (layout.ipv4? + off::IPV4_TOS, 1),
        Field::TcpSport => (l4(&[off::IP_PROTO_TCP])? + off::TCP_SPORT, 2),
        Field::TcpDport => (l4(&[off::IP_PROTO_TCP])? + off::TCP_DPORT, 2),
        Field::UdpSport => (l4(&[off::IP_PROTO_UDP])? + off::UDP_SPORT, 2),
        Field::UdpDport => (l4(&[off::IP_PROTO_UDP])? + off::UDP_DPORT, 2),
        Field::IcmpType => (l4(&icmp)? + off::ICMP_TYPE, 1),
        Field::IcmpCode => (l4(&icmp)? + off::ICMP_CODE, 1),
        Field::ArpOp => (layout.arp? + off::ARP_OP, 2),
        Field::ArpSha => (layout.arp? + off::ARP_SHA, off::ETH_ADDR_LEN),
        Field::ArpSpa => (layout.arp? + off::ARP_SPA, 4),
        Field::ArpTha => (layout.arp? + off::ARP_THA, off::ETH_ADDR_LEN),
        Field::ArpTpa => (layout.arp? + off::ARP_TPA, 4),
        _ => return None,
    })
}

/// The new bytes of `field` given its `old` bytes and the assigned `value`
/// (already masked to the field's width).
fn new_bytes(field: Field, old: &[u8], value: u128) -> Vec<u8> {
    match field {
        Field::IpDscp => vec![((value as u8) << off::IPV4_DSCP_SHIFT) | (old[0] & 0x03)],
        Field::VlanId => {
            let tci = u16::from_be_bytes([old[0], old[1]]);
            let tci = (tci & !off::VLAN_ID_MASK) | (value as u16 & off::VLAN_ID_MASK);
            tci.to_be_bytes().to_vec()
        }
        _ => value.to_be_bytes()[16 - old.len()..].to_vec(),
    }
}

/// One's-complement words of `bytes` that start at `at` within their
/// header: the checksum words they touch, the bytes outside taken as 0.
fn words(bytes: &[u8], at: usize) -> Vec<u16> {
    let mut padded = Vec::with_capacity(bytes.len() + 2);
    if at % 2 == 1 {
        padded.push(0);
    }
    padded.extend_from_slice(bytes);
    if padded.len() % 2 == 1 {
        padded.push(0);
    }
    padded
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

/// `checksum` after words `old` became `new` (RFC 1624, eqn. 3): `!old
/// checksum + Σ (!old word + new word)`, folded twice, complemented.
pub fn update_checksum(checksum: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = u64::from(!checksum);
    for (&o, &n) in old.iter().zip(new) {
        sum += u64::from(!o) + u64::from(n);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Write `writes` (field, value masked to its width) into `frame`, in
/// order, updating checksums by the rules in the module doc, one field at
/// a time. Every value must have been computed before any write (a row's
/// parallel semantics): this only stores them. Fields the frame does not
/// carry are skipped.
pub fn apply(frame: &mut [u8], writes: &[(Field, u128)]) {
    let layout = layout(frame);
    // Where each checksum is, and whether it is UDP's (0 = none).
    let checksum_at = |sum: Checksum| match (sum, layout.transport) {
        (Checksum::Ipv4Header, _) => layout.ipv4.map(|ip| (ip + off::IPV4_CHECKSUM, false)),
        (Checksum::Transport, Some((off::IP_PROTO_TCP, at))) => {
            Some((at + off::TCP_CHECKSUM, false))
        }
        (Checksum::Transport, Some((off::IP_PROTO_UDP, at))) => {
            Some((at + off::UDP_CHECKSUM, true))
        }
        (Checksum::Icmp, Some((off::IP_PROTO_ICMP | off::IP_PROTO_ICMPV6, at))) => {
            Some((at + off::ICMP_CHECKSUM, false))
        }
        _ => None,
    };
    for &(field, value) in writes {
        let Some((at, len)) = location(field, &layout) else {
            continue;
        };
        let old = frame[at..at + len].to_vec();
        let new = new_bytes(field, &old, value);
        // The parity of `at` in the frame is its parity in its header:
        // IP headers start at 14 + 4k, transport headers a whole number of
        // 32-bit words after them.
        let (old_words, new_words) = (words(&old, at), words(&new, at));
        for &sum in checksums(field) {
            let Some((sum_at, udp)) = checksum_at(sum) else {
                continue;
            };
            let current = u16::from_be_bytes([frame[sum_at], frame[sum_at + 1]]);
            if udp && current == 0 {
                // UDP without a checksum stays without one.
                continue;
            }
            let mut updated = update_checksum(current, &old_words, &new_words);
            if udp && updated == 0 {
                updated = 0xffff;
            }
            frame[sum_at..sum_at + 2].copy_from_slice(&updated.to_be_bytes());
        }
        frame[at..at + len].copy_from_slice(&new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{checksum_ok, PacketBuilder};
    use crate::parse;

    fn frame() -> PacketBuilder {
        PacketBuilder::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
    }

    /// Every checksum of `frame` verified from scratch.
    fn checksums_ok(frame: &[u8]) -> bool {
        let l = layout(frame);
        let Some(ip) = l.ipv4 else { return true };
        let ihl = usize::from(frame[ip] & 0x0f) * 4;
        if !checksum_ok(&[&frame[ip..ip + ihl]]) {
            return false;
        }
        let Some((proto, at)) = l.transport else {
            return true;
        };
        let segment = &frame[at..];
        match proto {
            off::IP_PROTO_ICMP => checksum_ok(&[segment]),
            off::IP_PROTO_UDP if segment[6..8] == [0, 0] => true,
            _ => {
                let mut pseudo = frame[ip + 12..ip + 20].to_vec();
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
                checksum_ok(&[&pseudo, segment])
            }
        }
    }

    fn rewrite(builder: PacketBuilder, writes: &[(Field, u128)]) -> Vec<u8> {
        let mut bytes = builder.build();
        assert!(checksums_ok(&bytes), "the builder's frame is well formed");
        apply(&mut bytes, writes);
        bytes
    }

    #[test]
    fn addresses_and_ports_keep_every_checksum_right() {
        let tcp = frame()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .tcp(1234, 80, 2)
            .payload(7);
        let out = rewrite(
            tcp,
            &[
                (Field::IpSrc, 0xc0a8_0101),
                (Field::IpDst, 0x0a00_0001),
                (Field::TcpSport, 4321),
                (Field::TcpDport, 8080),
            ],
        );
        assert!(checksums_ok(&out));
        let h = parse(&out, 1);
        assert_eq!(h.get(Field::IpSrc), Some(0xc0a8_0101));
        assert_eq!(h.get(Field::TcpDport), Some(8080));

        let udp = frame()
            .vlan(5)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .udp(53, 5353)
            .payload(9);
        let out = rewrite(udp, &[(Field::IpSrc, 0x0102_0304), (Field::UdpDport, 53)]);
        assert!(checksums_ok(&out));
        assert_eq!(parse(&out, 1).get(Field::UdpDport), Some(53));
    }

    #[test]
    fn ttl_and_dscp_update_the_header_checksum_and_keep_ecn() {
        let mut bytes = frame()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .dscp(10)
            .udp(1, 2)
            .build();
        let ip = layout(&bytes).ipv4.unwrap();
        bytes[ip + off::IPV4_TOS] |= 0x01; // ECT(1)
                                           // Re-sum the header after the manual change, as a sender would.
        bytes[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let sum = !ones_sum(&bytes[ip..ip + 20]);
        bytes[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
        apply(&mut bytes, &[(Field::IpTtl, 63), (Field::IpDscp, 46)]);
        assert!(checksums_ok(&bytes));
        assert_eq!(bytes[ip + off::IPV4_TOS], (46 << 2) | 0x01);
        assert_eq!(parse(&bytes, 1).get(Field::IpTtl), Some(63));
    }

    fn ones_sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut bytes = frame()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .udp(1, 2)
            .payload(4)
            .build();
        let (_, at) = layout(&bytes).transport.unwrap();
        bytes[at + 6..at + 8].copy_from_slice(&[0, 0]);
        apply(
            &mut bytes,
            &[(Field::IpSrc, 0x0909_0909), (Field::UdpSport, 99)],
        );
        assert_eq!(bytes[at + 6..at + 8], [0, 0]);
        assert!(checksums_ok(&bytes));
    }

    #[test]
    fn icmp_echo_reply_from_a_request() {
        let request = frame()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .icmp(8, 0)
            .payload(12);
        let out = rewrite(
            request,
            &[
                (Field::IcmpType, 0),
                (Field::IpSrc, 0x0a00_0002),
                (Field::IpDst, 0x0a00_0001),
                (Field::EthSrc, 0x0200_0000_0002),
                (Field::EthDst, 0x0200_0000_0001),
            ],
        );
        assert!(checksums_ok(&out));
        let h = parse(&out, 1);
        assert_eq!(h.get(Field::IcmpType), Some(0));
        assert_eq!(h.get(Field::IpSrc), Some(0x0a00_0002));
        assert_eq!(h.get(Field::EthDst), Some(0x0200_0000_0001));
    }

    #[test]
    fn arp_fields_and_vlan_id_are_written_in_place() {
        let request = frame()
            .vlan(0x123)
            .arp_request([10, 0, 0, 1], [10, 0, 0, 9]);
        let mut bytes = request.build();
        bytes[14] |= 0xe0; // priority 7
        apply(
            &mut bytes,
            &[
                (Field::ArpOp, 2),
                (Field::ArpTha, 0x0200_0000_0001),
                (Field::ArpSpa, 0x0a00_0009),
                (Field::VlanId, 7),
            ],
        );
        let h = parse(&bytes, 1);
        assert_eq!(h.get(Field::ArpOp), Some(2));
        assert_eq!(h.get(Field::ArpTha), Some(0x0200_0000_0001));
        assert_eq!(h.get(Field::ArpSpa), Some(0x0a00_0009));
        assert_eq!(h.get(Field::VlanId), Some(7));
        assert_eq!(bytes[14] >> 5, 7, "priority kept");
    }

    #[test]
    fn absent_fields_are_left_alone() {
        let before = frame().ipv4([10, 0, 0, 1], [10, 0, 0, 2]).udp(1, 2).build();
        let mut after = before.clone();
        apply(
            &mut after,
            &[(Field::TcpDport, 5), (Field::ArpOp, 2), (Field::VlanId, 3)],
        );
        assert_eq!(before, after);
    }

    #[test]
    fn every_writable_field_has_a_location_in_some_frame() {
        let frames = [
            frame()
                .vlan(1)
                .ipv4([1, 1, 1, 1], [2, 2, 2, 2])
                .tcp(1, 2, 0)
                .build(),
            frame().ipv4([1, 1, 1, 1], [2, 2, 2, 2]).udp(1, 2).build(),
            frame().ipv4([1, 1, 1, 1], [2, 2, 2, 2]).icmp(8, 0).build(),
            frame().arp_request([1, 1, 1, 1], [2, 2, 2, 2]).build(),
        ];
        for f in Field::ALL.into_iter().filter(|&f| writable(f)) {
            assert!(
                frames.iter().any(|b| location(f, &layout(b)).is_some()),
                "{f} has nowhere to be written"
            );
        }
    }
}
