//! A small builder of well-formed frames, for tests and trace generators.
//!
//! ```
//! use flowstate_wire::build::PacketBuilder;
//! use flowstate_wire::{parse, Field};
//!
//! let frame = PacketBuilder::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
//!     .vlan(10)
//!     .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
//!     .udp(40000, 1111)
//!     .payload(16)
//!     .build();
//! let h = parse(&frame, 1);
//! assert_eq!(h.get(Field::UdpDport), Some(1111));
//! assert_eq!(h.get(Field::VlanId), Some(10));
//! ```
//!
//! Lengths (IPv4 total length, IPv6 payload length, UDP length) and
//! checksums (IPv4 header, TCP, UDP, ICMP, ICMPv6) are computed by
//! [`PacketBuilder::build`]. Frames are not padded to the Ethernet minimum,
//! so `pkt.len` is exactly what was asked for.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::offsets as off;

/// A frame under construction. Every method takes and returns the builder,
/// so a frame reads as one chain; [`PacketBuilder::build`] renders it and
/// can be called any number of times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketBuilder {
    src: [u8; 6],
    dst: [u8; 6],
    /// (TPID, TCI), outermost first.
    tags: Vec<(u16, u16)>,
    network: Network,
    transport: Transport,
    payload: Vec<u8>,
    truncate: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Network {
    /// Only an ethertype; the payload follows the Ethernet header.
    Raw(u16),
    Ipv4(Ipv4),
    Ipv6(Ipv6),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    tos: u8,
    ident: u16,
    options: Vec<u8>,
    /// Fragment offset in 8-byte units and the MF flag.
    fragment: (u16, bool),
    /// Protocol number when no transport header is built.
    protocol: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ipv6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    traffic_class: u8,
    /// Next header when no transport header is built.
    next: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    None,
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp { ty: u8, code: u8 },
    Icmpv6 { ty: u8, code: u8 },
}

/// IPv4 protocol number used when an IPv4 packet has no transport header
/// (253 is reserved for experimentation, RFC 3692).
const EXPERIMENTAL_PROTOCOL: u8 = 253;
/// IPv6 "no next header".
const IPV6_NO_NEXT: u8 = 59;

impl PacketBuilder {
    /// An Ethernet frame from `src` to `dst`; without a network layer its
    /// ethertype is 0x88b5 (local experimental) and it carries the payload.
    pub fn eth(src: [u8; 6], dst: [u8; 6]) -> Self {
        PacketBuilder {
            src,
            dst,
            tags: Vec::new(),
            network: Network::Raw(0x88b5),
            transport: Transport::None,
            payload: Vec::new(),
            truncate: None,
        }
    }

    /// Append an 802.1Q tag (TPID 0x8100) with VID `id` (low 12 bits kept).
    /// The first tag added is the outermost.
    pub fn vlan(self, id: u16) -> Self {
        self.tag(off::ETHERTYPE_VLAN, id & off::VLAN_ID_MASK)
    }

    /// Append an 802.1ad service tag (TPID 0x88a8) with VID `id`.
    pub fn qinq(self, id: u16) -> Self {
        self.tag(off::ETHERTYPE_QINQ, id & off::VLAN_ID_MASK)
    }

    /// Append a tag with any TPID and full TCI (priority bits included).
    pub fn tag(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push((tpid, tci));
        self
    }

    /// A non-IP frame with this ethertype; the payload follows the tags.
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.network = Network::Raw(ethertype);
        self.transport = Transport::None;
        self
    }

    /// An ARP request (Ethernet/IPv4) from this frame's source asking for
    /// `target`.
    pub fn arp_request(self, sender: impl Into<Ipv4Addr>, target: impl Into<Ipv4Addr>) -> Self {
        let mut body = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        body.extend_from_slice(&self.src);
        body.extend_from_slice(&sender.into().octets());
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&target.into().octets());
        self.ethertype(off::ETHERTYPE_ARP).payload_bytes(&body)
    }

    /// An IPv4 header (TTL 64, DSCP 0, no options, not fragmented).
    pub fn ipv4(mut self, src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Self {
        self.network = Network::Ipv4(Ipv4 {
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            tos: 0,
            ident: 0,
            options: Vec::new(),
            fragment: (0, false),
            protocol: EXPERIMENTAL_PROTOCOL,
        });
        self
    }

    /// An IPv6 header (hop limit 64, traffic class 0).
    pub fn ipv6(mut self, src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Self {
        self.network = Network::Ipv6(Ipv6 {
            src: src.into(),
            dst: dst.into(),
            hop_limit: 64,
            traffic_class: 0,
            next: IPV6_NO_NEXT,
        });
        self
    }

    /// IPv4 TTL or IPv6 hop limit. No effect on a non-IP frame.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match &mut self.network {
            Network::Ipv4(ip) => ip.ttl = ttl,
            Network::Ipv6(ip) => ip.hop_limit = ttl,
            Network::Raw(_) => {}
        }
        self
    }

    /// DSCP (6 bits, higher bits dropped) in the IPv4 TOS or IPv6 traffic
    /// class. No effect on a non-IP frame.
    pub fn dscp(mut self, dscp: u8) -> Self {
        let byte = (dscp & 0x3f) << off::IPV4_DSCP_SHIFT;
        match &mut self.network {
            Network::Ipv4(ip) => ip.tos = byte,
            Network::Ipv6(ip) => ip.traffic_class = byte,
            Network::Raw(_) => {}
        }
        self
    }

    /// IPv4 identification. No effect on other frames.
    pub fn ident(mut self, ident: u16) -> Self {
        if let Network::Ipv4(ip) = &mut self.network {
            ip.ident = ident;
        }
        self
    }

    /// IPv4 options, padded with zero (end of options) to a multiple of 4
    /// bytes; anything past the 40 bytes an IPv4 header can hold is cut.
    pub fn options(mut self, options: &[u8]) -> Self {
        if let Network::Ipv4(ip) = &mut self.network {
            let max = off::IPV4_MAX_LEN - off::IPV4_MIN_LEN;
            let mut opts = options[..options.len().min(max)].to_vec();
            opts.resize(opts.len().div_ceil(4) * 4, 0);
            ip.options = opts;
        }
        self
    }

    /// IPv4 fragment offset (in 8-byte units, 13 bits kept) and MF flag.
    pub fn fragment(mut self, offset: u16, more_fragments: bool) -> Self {
        if let Network::Ipv4(ip) = &mut self.network {
            ip.fragment = (offset & off::IPV4_FRAG_OFFSET_MASK, more_fragments);
        }
        self
    }

    /// The IPv4 protocol or IPv6 next header of a packet without a built
    /// transport header (the payload follows the IP header).
    pub fn protocol(mut self, protocol: u8) -> Self {
        match &mut self.network {
            Network::Ipv4(ip) => ip.protocol = protocol,
            Network::Ipv6(ip) => ip.next = protocol,
            Network::Raw(_) => {}
        }
        self.transport = Transport::None;
        self
    }

    /// A 20-byte TCP header; `flags` is the flags byte (see
    /// [`crate::offsets::TCP_SYN`] and friends).
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.transport = Transport::Tcp {
            sport,
            dport,
            flags,
        };
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.transport = Transport::Udp { sport, dport };
        self
    }

    /// An 8-byte ICMP header (rest of header zero).
    pub fn icmp(mut self, ty: u8, code: u8) -> Self {
        self.transport = Transport::Icmp { ty, code };
        self
    }

    /// An 8-byte ICMPv6 header (rest of header zero).
    pub fn icmpv6(mut self, ty: u8, code: u8) -> Self {
        self.transport = Transport::Icmpv6 { ty, code };
        self
    }

    /// Append `len` payload bytes (a repeating 0, 1, 2, ... pattern).
    pub fn payload(mut self, len: usize) -> Self {
        self.payload.extend((0..len).map(|i| i as u8));
        self
    }

    /// Append these payload bytes.
    pub fn payload_bytes(mut self, bytes: &[u8]) -> Self {
        self.payload.extend_from_slice(bytes);
        self
    }

    /// Cut the built frame to at most `len` bytes (lengths and checksums
    /// still describe the whole packet, as in a snaplen-limited capture).
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// Render the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&self.dst);
        frame.extend_from_slice(&self.src);
        for &(tpid, tci) in &self.tags {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let ethertype = match &self.network {
            Network::Raw(ty) => *ty,
            Network::Ipv4(_) => off::ETHERTYPE_IPV4,
            Network::Ipv6(_) => off::ETHERTYPE_IPV6,
        };
        frame.extend_from_slice(&ethertype.to_be_bytes());

        let segment = self.transport_segment();
        match &self.network {
            Network::Raw(_) => frame.extend_from_slice(&self.payload),
            Network::Ipv4(ip) => {
                let protocol = self.transport_protocol().unwrap_or(ip.protocol);
                let segment = segment.map(|mut s| {
                    let pseudo = ipv4_pseudo_header(ip, protocol, s.bytes.len());
                    s.fill_checksum(&pseudo);
                    s.bytes
                });
                let body = segment.as_deref().unwrap_or(&self.payload);
                frame.extend_from_slice(&ipv4_header(ip, protocol, body.len()));
                frame.extend_from_slice(body);
            }
            Network::Ipv6(ip) => {
                let next = self.transport_protocol().unwrap_or(ip.next);
                let segment = segment.map(|mut s| {
                    let pseudo = ipv6_pseudo_header(ip, next, s.bytes.len());
                    s.fill_checksum(&pseudo);
                    s.bytes
                });
                let body = segment.as_deref().unwrap_or(&self.payload);
                frame.extend_from_slice(&ipv6_header(ip, next, body.len()));
                frame.extend_from_slice(body);
            }
        }
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        frame
    }

    fn transport_protocol(&self) -> Option<u8> {
        match self.transport {
            Transport::None => None,
            Transport::Tcp { .. } => Some(off::IP_PROTO_TCP),
            Transport::Udp { .. } => Some(off::IP_PROTO_UDP),
            Transport::Icmp { .. } => Some(off::IP_PROTO_ICMP),
            Transport::Icmpv6 { .. } => Some(off::IP_PROTO_ICMPV6),
        }
    }

    /// Transport header plus payload, checksum still zero.
    fn transport_segment(&self) -> Option<Segment> {
        let (mut bytes, checksum_at, with_pseudo) = match self.transport {
            Transport::None => return None,
            Transport::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; off::TCP_MIN_LEN];
                put16(&mut h, off::TCP_SPORT, sport);
                put16(&mut h, off::TCP_DPORT, dport);
                // A fixed, plausible sequence number; no acknowledgement.
                h[off::TCP_SEQ..off::TCP_SEQ + 4].copy_from_slice(&1u32.to_be_bytes());
                h[off::TCP_DATA_OFFSET] = ((off::TCP_MIN_LEN / 4) as u8) << 4;
                h[off::TCP_FLAGS] = flags;
                put16(&mut h, off::TCP_WINDOW, 65535);
                (h, off::TCP_CHECKSUM, true)
            }
            Transport::Udp { sport, dport } => {
                let mut h = vec![0u8; off::UDP_HEADER_LEN];
                put16(&mut h, off::UDP_SPORT, sport);
                put16(&mut h, off::UDP_DPORT, dport);
                let len = off::UDP_HEADER_LEN + self.payload.len();
                put16(&mut h, off::UDP_LEN, u16::try_from(len).unwrap_or(u16::MAX));
                (h, off::UDP_CHECKSUM, true)
            }
            Transport::Icmp { ty, code } => (icmp_header(ty, code), off::ICMP_CHECKSUM, false),
            Transport::Icmpv6 { ty, code } => (icmp_header(ty, code), off::ICMP_CHECKSUM, true),
        };
        bytes.extend_from_slice(&self.payload);
        Some(Segment {
            bytes,
            checksum_at,
            with_pseudo,
            is_udp: matches!(self.transport, Transport::Udp { .. }),
        })
    }
}

/// A transport segment whose checksum is filled once the IP layer is known.
struct Segment {
    bytes: Vec<u8>,
    checksum_at: usize,
    /// ICMP over IPv4 sums the segment alone; the others add a pseudo-header.
    with_pseudo: bool,
    /// UDP sends a computed zero as 0xffff (zero means "no checksum").
    is_udp: bool,
}

impl Segment {
    fn fill_checksum(&mut self, pseudo: &[u8]) {
        let mut sum = Checksum::default();
        if self.with_pseudo {
            sum.add(pseudo);
        }
        sum.add(&self.bytes);
        let mut value = sum.finish();
        if self.is_udp && value == 0 {
            value = 0xffff;
        }
        put16(&mut self.bytes, self.checksum_at, value);
    }
}

fn icmp_header(ty: u8, code: u8) -> Vec<u8> {
    let mut h = vec![0u8; off::ICMP_HEADER_LEN];
    h[off::ICMP_TYPE] = ty;
    h[off::ICMP_CODE] = code;
    h
}

fn ipv4_header(ip: &Ipv4, protocol: u8, body_len: usize) -> Vec<u8> {
    let header_len = off::IPV4_MIN_LEN + ip.options.len();
    let mut h = vec![0u8; off::IPV4_MIN_LEN];
    h.extend_from_slice(&ip.options);
    h[off::IPV4_VER_IHL] = (off::IPV4_VERSION << 4) | (header_len / 4) as u8;
    h[off::IPV4_TOS] = ip.tos;
    let total = u16::try_from(header_len + body_len).unwrap_or(u16::MAX);
    put16(&mut h, off::IPV4_TOTAL_LEN, total);
    put16(&mut h, off::IPV4_IDENT, ip.ident);
    let (offset, more) = ip.fragment;
    let mf = if more { off::IPV4_FLAG_MF } else { 0 };
    put16(&mut h, off::IPV4_FRAG, offset | mf);
    h[off::IPV4_TTL] = ip.ttl;
    h[off::IPV4_PROTO] = protocol;
    h[off::IPV4_SRC..off::IPV4_SRC + 4].copy_from_slice(&ip.src.octets());
    h[off::IPV4_DST..off::IPV4_DST + 4].copy_from_slice(&ip.dst.octets());
    let mut sum = Checksum::default();
    sum.add(&h);
    put16(&mut h, off::IPV4_CHECKSUM, sum.finish());
    h
}

fn ipv6_header(ip: &Ipv6, next: u8, body_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; off::IPV6_HEADER_LEN];
    let first = (u32::from(off::IPV6_VERSION) << 28) | (u32::from(ip.traffic_class) << 20);
    h[off::IPV6_VER_TC_FLOW..off::IPV6_VER_TC_FLOW + 4].copy_from_slice(&first.to_be_bytes());
    put16(
        &mut h,
        off::IPV6_PAYLOAD_LEN,
        u16::try_from(body_len).unwrap_or(u16::MAX),
    );
    h[off::IPV6_NEXT] = next;
    h[off::IPV6_HOP_LIMIT] = ip.hop_limit;
    h[off::IPV6_SRC..off::IPV6_SRC + 16].copy_from_slice(&ip.src.octets());
    h[off::IPV6_DST..off::IPV6_DST + 16].copy_from_slice(&ip.dst.octets());
    h
}

fn ipv4_pseudo_header(ip: &Ipv4, protocol: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&ip.src.octets());
    p.extend_from_slice(&ip.dst.octets());
    p.extend_from_slice(&[0, protocol]);
    p.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p
}

fn ipv6_pseudo_header(ip: &Ipv6, next: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&ip.src.octets());
    p.extend_from_slice(&ip.dst.octets());
    p.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    p
}

fn put16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The Internet checksum (RFC 1071): one's-complement sum of 16-bit words.
#[derive(Default)]
struct Checksum {
    sum: u64,
}

impl Checksum {
    /// Add `bytes`; every part but the last must have even length.
    fn add(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(2);
        for w in &mut words {
            self.sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.sum += u64::from(*last) << 8;
        }
    }

    fn finish(&self) -> u16 {
        let mut sum = self.sum;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

/// Verify an Internet checksum over `parts` (checksum field included):
/// true when the one's-complement sum is all ones. For tests.
pub fn checksum_ok(parts: &[&[u8]]) -> bool {
    let mut sum = Checksum::default();
    for p in parts {
        sum.add(p);
    }
    sum.finish() == 0
}

/// `02:00:00:00:00:xx`-style locally administered MAC for host number `n`.
pub fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}
