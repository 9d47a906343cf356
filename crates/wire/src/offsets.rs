//! Byte offsets, minimum lengths and code points of the headers flowstate
//! parses.
//!
//! These constants are the single source of truth for header layout: the
//! parser in this crate and the header loads emitted by the code generator
//! both read them, so the two cannot disagree about where a field lives.
//!
//! Offsets are relative to the start of their own header; the parser (and
//! the generated code) adds the start of that header in the frame.

// ---- Ethernet II -----------------------------------------------------------

/// Destination MAC address, 6 bytes.
pub const ETH_DST: usize = 0;
/// Source MAC address, 6 bytes.
pub const ETH_SRC: usize = 6;
/// Ethertype (or the TPID of the first VLAN tag), 2 bytes, big-endian.
pub const ETH_TYPE: usize = 12;
/// Length of a MAC address.
pub const ETH_ADDR_LEN: usize = 6;
/// Length of the untagged Ethernet header.
pub const ETH_HEADER_LEN: usize = 14;

// ---- 802.1Q / 802.1ad tags -------------------------------------------------
//
// A tag sits where the ethertype would be: its TPID takes the place of the
// ethertype (at `ETH_TYPE`, or at the previous tag's `VLAN_INNER_TYPE`), and
// the four bytes after that TPID are the tag body read below. A tag
// therefore starts at `ETH_HEADER_LEN + i * VLAN_TAG_LEN` for tag `i`.

/// Tag control information (PCP, DEI, VID), 2 bytes, relative to the tag.
pub const VLAN_TCI: usize = 0;
/// Ethertype (or next TPID) after the tag, 2 bytes, relative to the tag.
pub const VLAN_INNER_TYPE: usize = 2;
/// Bytes one tag adds to the Ethernet header.
pub const VLAN_TAG_LEN: usize = 4;
/// The VID bits of the TCI.
pub const VLAN_ID_MASK: u16 = 0x0fff;
/// Tags parsed at most; a further tag's TPID is reported as `eth.type`.
pub const MAX_VLAN_TAGS: usize = 2;

// ---- Ethertypes ------------------------------------------------------------

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// 802.1Q customer VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service VLAN tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

// ---- ARP (IPv4 over Ethernet only) ---------------------------------------
//
// The header follows the ethertype 0x0806, where an IPv4 header would.

/// Hardware type, 2 bytes; 1 is Ethernet.
pub const ARP_HTYPE: usize = 0;
/// Protocol type, 2 bytes; 0x0800 is IPv4.
pub const ARP_PTYPE: usize = 2;
/// Hardware address length (6) and protocol address length (4).
pub const ARP_HLEN: usize = 4;
pub const ARP_PLEN: usize = 5;
/// Operation, 2 bytes: 1 request, 2 reply.
pub const ARP_OP: usize = 6;
/// Sender hardware address, 6 bytes.
pub const ARP_SHA: usize = 8;
/// Sender protocol address, 4 bytes.
pub const ARP_SPA: usize = 14;
/// Target hardware address, 6 bytes.
pub const ARP_THA: usize = 18;
/// Target protocol address, 4 bytes.
pub const ARP_TPA: usize = 24;
/// Length of an Ethernet/IPv4 ARP header.
pub const ARP_LEN: usize = 28;
pub const ARP_HTYPE_ETHERNET: u16 = 1;
/// The first four bytes of an Ethernet/IPv4 ARP header (htype, ptype) as
/// one big-endian word, and the two length bytes after them.
pub const ARP_ETH_IPV4_TYPES: u32 = 0x0001_0800;
pub const ARP_ETH_IPV4_LENS: u16 = 0x0604;

// ---- IPv4 ------------------------------------------------------------------

/// Version (high nibble) and IHL in 32-bit words (low nibble).
pub const IPV4_VER_IHL: usize = 0;
/// Type of service: DSCP (high 6 bits) and ECN.
pub const IPV4_TOS: usize = 1;
/// Total length, 2 bytes (written by the builder; never trusted by the parser).
pub const IPV4_TOTAL_LEN: usize = 2;
/// Identification, 2 bytes.
pub const IPV4_IDENT: usize = 4;
/// Flags (high 3 bits) and fragment offset (low 13 bits), 2 bytes.
pub const IPV4_FRAG: usize = 6;
pub const IPV4_TTL: usize = 8;
pub const IPV4_PROTO: usize = 9;
/// Header checksum, 2 bytes.
pub const IPV4_CHECKSUM: usize = 10;
pub const IPV4_SRC: usize = 12;
pub const IPV4_DST: usize = 16;
/// Length of the IPv4 header without options (IHL = 5).
pub const IPV4_MIN_LEN: usize = 20;
/// Longest IPv4 header (IHL = 15).
pub const IPV4_MAX_LEN: usize = 60;
/// The only accepted value of the version nibble.
pub const IPV4_VERSION: u8 = 4;
/// Smallest valid IHL, in 32-bit words.
pub const IPV4_MIN_IHL: u8 = 5;
/// The fragment offset bits of the `IPV4_FRAG` word (in 8-byte units).
pub const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
/// More-fragments flag in the `IPV4_FRAG` word.
pub const IPV4_FLAG_MF: u16 = 0x2000;
/// Don't-fragment flag in the `IPV4_FRAG` word.
pub const IPV4_FLAG_DF: u16 = 0x4000;
/// `ip.dscp` is the TOS byte shifted right by this.
pub const IPV4_DSCP_SHIFT: u32 = 2;

// ---- IPv6 ------------------------------------------------------------------

/// Version (high nibble), traffic class and flow label, 4 bytes.
pub const IPV6_VER_TC_FLOW: usize = 0;
/// Payload length, 2 bytes.
pub const IPV6_PAYLOAD_LEN: usize = 4;
pub const IPV6_NEXT: usize = 6;
pub const IPV6_HOP_LIMIT: usize = 7;
/// Source address, 16 bytes.
pub const IPV6_SRC: usize = 8;
/// Destination address, 16 bytes.
pub const IPV6_DST: usize = 24;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// The only accepted value of the version nibble.
pub const IPV6_VERSION: u8 = 6;
/// Length of an IPv6 address.
pub const IPV6_ADDR_LEN: usize = 16;

// ---- IP protocol numbers ---------------------------------------------------

pub const IP_PROTO_ICMP: u8 = 1;
pub const IP_PROTO_TCP: u8 = 6;
pub const IP_PROTO_UDP: u8 = 17;
pub const IP_PROTO_ICMPV6: u8 = 58;

// ---- TCP -------------------------------------------------------------------

pub const TCP_SPORT: usize = 0;
pub const TCP_DPORT: usize = 2;
pub const TCP_SEQ: usize = 4;
pub const TCP_ACK: usize = 8;
/// Data offset (high nibble), in 32-bit words.
pub const TCP_DATA_OFFSET: usize = 12;
/// The eight classic flags, CWR (bit 7) to FIN (bit 0).
pub const TCP_FLAGS: usize = 13;
pub const TCP_WINDOW: usize = 14;
pub const TCP_CHECKSUM: usize = 16;
pub const TCP_URGENT: usize = 18;
/// Length of the TCP header without options.
pub const TCP_MIN_LEN: usize = 20;

/// TCP flag bits of the `TCP_FLAGS` byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK_FLAG: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

// ---- UDP -------------------------------------------------------------------

pub const UDP_SPORT: usize = 0;
pub const UDP_DPORT: usize = 2;
/// Length of header and payload, 2 bytes.
pub const UDP_LEN: usize = 4;
pub const UDP_CHECKSUM: usize = 6;
pub const UDP_HEADER_LEN: usize = 8;

// ---- ICMP and ICMPv6 (same first four bytes) -------------------------------

pub const ICMP_TYPE: usize = 0;
pub const ICMP_CODE: usize = 1;
pub const ICMP_CHECKSUM: usize = 2;
/// What the parser needs: type, code, checksum.
pub const ICMP_MIN_LEN: usize = 4;
/// What the builder writes: type, code, checksum and the 4-byte rest of
/// header (identifier and sequence number of an echo).
pub const ICMP_HEADER_LEN: usize = 8;
