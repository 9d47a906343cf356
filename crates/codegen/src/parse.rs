//! Header parsing in eBPF: the bytecode twin of [`flowstate_wire::parse`].
//!
//! [`emit_parse`] emits straight-line code (forward jumps only) that walks
//! Ethernet, up to two VLAN tags, IPv4 or IPv6 and the transport header by
//! the rules in the `flowstate_wire` crate doc, storing each requested
//! field in its stack slot and its presence in a bitmask register. Header
//! offsets come from [`flowstate_wire::offsets`], the same constants the
//! reference parser reads.
//!
//! Only what the requested fields need is emitted: a program that uses
//! `eth.src` alone never looks past the Ethernet header, one that uses
//! `ip.src` alone never looks at ports. Presence still follows the full
//! rules: `ip.src` is present only after a whole, valid IPv4 header
//! (version, IHL and IHL*4 bytes checked), a port only in a first fragment.
//!
//! # Registers
//!
//! | register | on exit |
//! | --- | --- |
//! | [`CTX`] (R6) | the context pointer R1 held on entry |
//! | [`PRESENCE`] (R9) | bit `field as usize` set iff the field is requested *and* present |
//! | R0-R5, R7, R8 | clobbered |
//!
//! While parsing, R7 is the packet start (moved 4 bytes per VLAN tag, so
//! the layer-3 header is always at R7 + 14), R8 is `data_end`, R2 the raw
//! ethertype, R4 the transport header minus 14 and R5 the IP protocol.
//!
//! # Verifier
//!
//! Every packet load is dominated by a check `ptr + n > data_end` on the
//! same pointer. The IPv4 header length is masked to 4 bits and checked
//! against 5 before it is scaled, so the verifier knows it is in [20, 60]
//! when it is added to the packet pointer; the transport header is then
//! checked from that variable-offset pointer.
//!
//! For XDP, `pkt.len` is `data_end - data`, a pointer subtraction the
//! verifier allows only to privileged loaders (CAP_PERFMON), which
//! flowstate always is; it is the length of the linear part, which is the
//! whole frame unless the program is loaded for multi-buffer XDP.
//!
//! # TC sees the frame as the wire does
//!
//! Two things make an skb differ from the frame on the wire; the TC parser
//! undoes both, so that it agrees with `flowstate_wire::parse` of that
//! frame (the veth test in `tests/parse_kernel.rs` checks both):
//!
//! - The receive path moves the outer VLAN tag into skb metadata before TC
//!   ingress (and with VLAN offload a transmitted tag stays there past TC
//!   egress). When `__sk_buff.vlan_present` is set, that tag is the first
//!   tag (`vlan.id` from `vlan_tci`), one more may follow in the data, and
//!   `pkt.len` is `skb->len + 4`.
//! - Direct packet access sees only the linear part of the skb. When it is
//!   shorter than both the packet and [`MAX_HEADERS_LEN`], the parser calls
//!   `bpf_skb_pull_data` for that much (almost never: drivers and GRO keep
//!   the headers linear; AF_PACKET jumbo frames do not).
//!
//! XDP (native or generic) runs before either happens and sees the frame.

use flowstate_asm::{Assembler, Helper, Insn, JmpOp, Label, Reg, Size};
use flowstate_lang::ir::Hook;
use flowstate_wire::offsets as off;
use flowstate_wire::{Field, Layer};

/// Holds the context pointer after [`emit_parse`].
pub const CTX: Reg = Reg::R6;
/// Holds the presence bitmask after [`emit_parse`].
pub const PRESENCE: Reg = Reg::R9;

/// `struct xdp_md` (include/uapi/linux/bpf.h): u32 fields.
pub mod xdp_md {
    pub const DATA: i16 = 0;
    pub const DATA_END: i16 = 4;
    pub const INGRESS_IFINDEX: i16 = 12;
}

/// `struct __sk_buff` (include/uapi/linux/bpf.h): u32 fields.
pub mod sk_buff {
    pub const LEN: i16 = 0;
    /// Non-zero when the outer VLAN tag is held in metadata, not in data.
    pub const VLAN_PRESENT: i16 = 20;
    pub const VLAN_TCI: i16 = 24;
    pub const IFINDEX: i16 = 40;
    pub const DATA: i16 = 76;
    pub const DATA_END: i16 = 80;
}

/// What to parse and where to put it.
pub struct ParseRequest<'a> {
    pub hook: Hook,
    /// The fields the program uses (duplicates are harmless).
    pub fields: &'a [Field],
    /// Frame-pointer offset (negative, 8-byte aligned: the verifier
    /// requires aligned stack access) of each requested field's slot. A
    /// 128-bit field takes 16 bytes from there.
    pub slot: &'a dyn Fn(Field) -> i16,
    /// For programs that write packet fields: the frame-pointer offset of
    /// [`HEADER_SLOTS_LEN`] bytes where the parser leaves, as u64s, the
    /// offset from the packet start of the layer-3 header (IPv4 or ARP) at
    /// [`L3_SLOT`], of the transport header at [`L4_SLOT`] and its protocol
    /// at [`PROTO_SLOT`]; each 0 when absent (set before parsing). TCP and
    /// UDP headers are then walked even when no field of theirs is
    /// requested: an address write updates their checksums.
    pub headers: Option<i16>,
}

/// Bytes of the header offsets area ([`ParseRequest::headers`]).
pub const HEADER_SLOTS_LEN: usize = 24;
pub const L3_SLOT: i16 = 0;
pub const L4_SLOT: i16 = 8;
pub const PROTO_SLOT: i16 = 16;

/// The presence bit of `field` in [`PRESENCE`].
pub fn presence_bit(field: Field) -> u32 {
    1 << (field as u32)
}

/// Emits the parser.
///
/// On entry: R1 = context. On exit: R6 = context (preserved for the rest
/// of the program), R9 = presence bitmask (bit `field as usize` set iff the
/// field is requested and present), each requested present field stored at
/// `[R10 + slot(f)]` as a u64 holding the number `flowstate_wire::parse`
/// returns (host order); a 128-bit field (ip6.src/dst) takes 16 bytes: the
/// high 64 bits at `slot(f)`, the low 64 bits at `slot(f) + 8`. Absent
/// fields' slots are left unwritten (check R9). R0-R5, R7, R8 are
/// clobbered. Execution continues after the emitted code.
pub fn emit_parse(asm: &mut Assembler, req: &ParseRequest) {
    let mut emitter = Emitter {
        done: asm.new_label(),
        asm,
        req,
        plan: Plan::new(req.fields, req.headers.is_some()),
    };
    emitter.emit();
}

// Offsets from R7, which points 14 bytes before the layer-3 header.
const L3: usize = off::ETH_HEADER_LEN;

/// The deepest header stack the parser reads: Ethernet, two tags, IPv4
/// with 40 bytes of options, TCP.
pub const MAX_HEADERS_LEN: usize = off::ETH_HEADER_LEN
    + off::MAX_VLAN_TAGS * off::VLAN_TAG_LEN
    + off::IPV4_MAX_LEN
    + off::TCP_MIN_LEN;

/// `long bpf_skb_pull_data(struct __sk_buff *skb, u32 len)`.
const SKB_PULL_DATA: Helper = Helper(39);

/// `usize` header offsets are small constants; this keeps the casts in one
/// place (and at compile time).
const fn imm(n: usize) -> i16 {
    n as i16
}

/// A big-endian u16 as `ldx H` reads it from the packet (host order), so
/// raw loads compare without a byte swap.
const fn raw16(network: u16) -> i32 {
    u16::from_ne_bytes(network.to_be_bytes()) as i32
}

/// A big-endian u32 as `ldx W` reads it from the packet (host order).
const fn raw32(network: u32) -> i32 {
    u32::from_ne_bytes(network.to_be_bytes()) as i32
}

/// Which parts of the parser the requested fields need.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    requested: u32,
    /// Walk the VLAN tags (anything from `eth.type` up).
    tags: bool,
    ipv4: bool,
    ipv6: bool,
    tcp: bool,
    udp: bool,
    icmp: bool,
    arp: bool,
}

impl Plan {
    fn new(fields: &[Field], headers: bool) -> Plan {
        let mut plan = Plan::default();
        if headers && fields.iter().any(|f| f.layer() == Layer::Ipv4) {
            plan.tcp = true;
            plan.udp = true;
        }
        for &field in fields {
            plan.requested |= presence_bit(field);
            match field.layer() {
                Layer::Meta | Layer::Ethernet => {}
                Layer::Vlan => {}
                Layer::Ipv4 => plan.ipv4 = true,
                Layer::Ipv6 => plan.ipv6 = true,
                Layer::Tcp => plan.tcp = true,
                Layer::Udp => plan.udp = true,
                Layer::Icmp => plan.icmp = true,
                Layer::Arp => plan.arp = true,
            }
        }
        if plan.transport() {
            // A transport header can follow either IP version.
            plan.ipv4 = true;
            plan.ipv6 = true;
        }
        plan.tags = plan.ipv4
            || plan.ipv6
            || plan.arp
            || plan.has(Field::EthType)
            || plan.has(Field::VlanId);
        plan
    }

    fn has(&self, field: Field) -> bool {
        self.requested & presence_bit(field) != 0
    }

    fn transport(&self) -> bool {
        self.tcp || self.udp || self.icmp
    }

    fn ethernet(&self) -> bool {
        self.tags || self.has(Field::EthSrc) || self.has(Field::EthDst)
    }

    /// The requested fields among `fields`, as presence bits.
    fn bits(&self, fields: &[Field]) -> i32 {
        let bits = fields.iter().fold(0, |acc, &f| acc | presence_bit(f));
        // At most 31 fields: the mask always fits a positive i32.
        (self.requested & bits) as i32
    }
}

struct Emitter<'a, 'r> {
    asm: &'a mut Assembler,
    req: &'a ParseRequest<'r>,
    plan: Plan,
    /// Bound after the parser: every "header absent" exit jumps here.
    done: Label,
}

use Reg::*;

impl Emitter<'_, '_> {
    fn emit(&mut self) {
        let plan = self.plan;
        self.asm.annotate("parse headers");
        self.asm.emit(Insn::mov64(CTX, R1));
        self.asm.emit(Insn::mov64(
            PRESENCE,
            plan.bits(&[Field::PktLen, Field::PktIfindex]),
        ));
        if let Some(at) = self.req.headers {
            for slot in [L3_SLOT, L4_SLOT, PROTO_SLOT] {
                self.asm.emit(Insn::st(Size::DW, R10, at + slot, 0));
            }
        }
        self.metadata();
        if plan.ethernet() {
            self.ethernet();
        }
        if plan.tags {
            self.vlan_tags();
            self.network();
        }
        self.asm.bind(self.done);
    }

    fn slot(&self, field: Field) -> i16 {
        (self.req.slot)(field)
    }

    fn store(&mut self, field: Field, value: Reg) {
        let slot = self.slot(field);
        self.asm.emit(Insn::stx(Size::DW, R10, value, slot));
    }

    fn mark_present(&mut self, fields: &[Field]) {
        let bits = self.plan.bits(fields);
        if bits != 0 {
            self.asm.emit(Insn::or64(PRESENCE, bits));
        }
    }

    /// `if base + len > data_end goto done`.
    fn need(&mut self, base: Reg, len: usize) {
        self.asm.emit(Insn::mov64(R0, base));
        self.asm.emit(Insn::add64(R0, i32::from(imm(len))));
        self.asm.jmp(JmpOp::Gt, R0, R8, self.done);
    }

    /// Loads a `size` big-endian value at `base + at` into R3, in host order.
    fn load_be(&mut self, size: Size, base: Reg, at: usize) {
        self.asm.emit(Insn::ldx(size, R3, base, imm(at)));
        match size {
            Size::B => {}
            Size::H => self.asm.emit(Insn::be16(R3)),
            Size::W => self.asm.emit(Insn::be32(R3)),
            Size::DW => self.asm.emit(Insn::be64(R3)),
        }
    }

    /// Stores `field` (a `size` big-endian value at `base + at`) if requested.
    fn field(&mut self, field: Field, size: Size, base: Reg, at: usize) {
        if self.plan.has(field) {
            self.load_be(size, base, at);
            self.store(field, R3);
        }
    }

    /// For field writes: `base + 14` as an offset from the packet start,
    /// stored in header slot `slot`. Clobbers R0, R3.
    fn store_header(&mut self, slot: i16, base: Reg) {
        let Some(at) = self.req.headers else { return };
        let data = if self.is_tc() {
            sk_buff::DATA
        } else {
            xdp_md::DATA
        };
        self.asm.emit(Insn::ldx(Size::W, R0, CTX, data));
        self.asm.emit(Insn::mov64(R3, base));
        self.asm.emit(Insn::sub64(R3, R0));
        self.asm.emit(Insn::add64(R3, i32::from(imm(L3))));
        self.asm.emit(Insn::stx(Size::DW, R10, R3, at + slot));
    }

    fn is_tc(&self) -> bool {
        matches!(self.req.hook, Hook::TcIngress | Hook::TcEgress)
    }

    fn metadata(&mut self) {
        let plan = self.plan;
        let needs_packet =
            plan.ethernet() || (self.req.hook == Hook::Xdp && plan.has(Field::PktLen));
        if needs_packet {
            self.load_packet_pointers();
        }
        if plan.has(Field::PktLen) {
            if self.is_tc() {
                self.asm.emit(Insn::ldx(Size::W, R3, CTX, sk_buff::LEN));
                // An outer tag held in metadata is part of the frame on
                // the wire (and in a capture), not of skb->len.
                self.asm
                    .emit(Insn::ldx(Size::W, R0, CTX, sk_buff::VLAN_PRESENT));
                self.asm.emit(Insn::jeq(R0, 0, 1));
                self.asm.emit(Insn::add64(R3, off::VLAN_TAG_LEN as i32));
            } else {
                self.asm.emit(Insn::mov64(R3, R8));
                self.asm.emit(Insn::sub64(R3, R7));
            }
            self.store(Field::PktLen, R3);
        }
        if plan.has(Field::PktIfindex) {
            let ifindex = if self.is_tc() {
                sk_buff::IFINDEX
            } else {
                xdp_md::INGRESS_IFINDEX
            };
            self.asm.emit(Insn::ldx(Size::W, R3, CTX, ifindex));
            self.store(Field::PktIfindex, R3);
        }
    }

    /// R7 = data, R8 = data_end. For TC, first makes sure the headers are
    /// in the linear part of the skb, which is all direct access sees: a
    /// packet whose linear part is shorter than both the packet and
    /// [`MAX_HEADERS_LEN`] gets `bpf_skb_pull_data` (rare: drivers and GRO
    /// keep the headers linear). If the pull fails, whatever is linear is
    /// parsed and the rest is absent.
    fn load_packet_pointers(&mut self) {
        if !self.is_tc() {
            self.asm.emit(Insn::ldx(Size::W, R7, CTX, xdp_md::DATA));
            self.asm.emit(Insn::ldx(Size::W, R8, CTX, xdp_md::DATA_END));
            return;
        }
        let linear = self.asm.new_label();
        let max = MAX_HEADERS_LEN as i32;
        self.emit_tc_pointers();
        self.asm.emit(Insn::mov64(R2, R8));
        self.asm.emit(Insn::sub64(R2, R7));
        self.asm.jmp(JmpOp::Ge, R2, max, linear);
        self.asm.emit(Insn::ldx(Size::W, R3, CTX, sk_buff::LEN));
        self.asm.jmp(JmpOp::Ge, R2, R3, linear);
        // Pull min(len, MAX_HEADERS_LEN): pulling more than the packet fails.
        self.asm.emit(Insn::mov64(R2, R3));
        self.asm.emit(Insn::jle(R2, max, 1));
        self.asm.emit(Insn::mov64(R2, max));
        self.asm.emit(Insn::mov64(R1, CTX));
        self.asm.emit(Insn::call(SKB_PULL_DATA));
        // The helper invalidates every packet pointer.
        self.emit_tc_pointers();
        self.asm.bind(linear);
    }

    fn emit_tc_pointers(&mut self) {
        self.asm.emit(Insn::ldx(Size::W, R7, CTX, sk_buff::DATA));
        self.asm
            .emit(Insn::ldx(Size::W, R8, CTX, sk_buff::DATA_END));
    }

    fn ethernet(&mut self) {
        self.asm.annotate("ethernet");
        self.need(R7, off::ETH_HEADER_LEN);
        // A MAC address is the top 48 bits of the 8 bytes loaded from its
        // start (the header is 14 bytes long, so both loads are in bounds).
        for (field, at) in [(Field::EthDst, off::ETH_DST), (Field::EthSrc, off::ETH_SRC)] {
            if self.plan.has(field) {
                self.load_be(Size::DW, R7, at);
                self.asm
                    .emit(Insn::rsh64(R3, 64 - 8 * off::ETH_ADDR_LEN as i32));
                self.store(field, R3);
            }
        }
        self.mark_present(&[Field::EthSrc, Field::EthDst]);
    }

    /// Walks up to two tags, moving R7 4 bytes per tag; leaves the raw
    /// ethertype in R2. At TC the outer tag may have been moved out of the
    /// data into skb metadata (the stack does so on receive before TC
    /// ingress; on transmit with VLAN offload it stays there until the
    /// device inserts it): it then counts as the first tag, and one more
    /// may follow in the data.
    fn vlan_tags(&mut self) {
        let tagged = self.asm.new_label();
        let untagged = self.asm.new_label();
        self.asm.annotate("vlan tags");
        if self.is_tc() {
            let in_band = self.asm.new_label();
            self.asm
                .emit(Insn::ldx(Size::W, R3, CTX, sk_buff::VLAN_PRESENT));
            self.asm.jmp(JmpOp::Eq, R3, 0, in_band);
            if self.plan.has(Field::VlanId) {
                self.asm
                    .emit(Insn::ldx(Size::W, R3, CTX, sk_buff::VLAN_TCI));
                self.asm.emit(Insn::and64(R3, i32::from(off::VLAN_ID_MASK)));
                self.store(Field::VlanId, R3);
            }
            self.data_tags(1, tagged, tagged);
            self.asm.ja(tagged);
            self.asm.bind(in_band);
        }
        self.data_tags(0, tagged, untagged);
        // After the last tag whatever follows is the ethertype, tag or not.
        self.asm.bind(tagged);
        self.mark_present(&[Field::VlanId]);
        self.asm.bind(untagged);
        if self.plan.has(Field::EthType) {
            self.asm.emit(Insn::mov64(R3, R2));
            self.asm.emit(Insn::be16(R3));
            self.store(Field::EthType, R3);
            self.mark_present(&[Field::EthType]);
        }
    }

    /// The tags in the data, from tag number `first` (0 or 1) on; ends with
    /// the ethertype after the last tag in R2. Goes to `untagged` when the
    /// first is not a tag, to `tagged` when a later one is not.
    fn data_tags(&mut self, first: usize, tagged: Label, untagged: Label) {
        let type_at = imm(off::ETH_TYPE);
        self.asm.emit(Insn::ldx(Size::H, R2, R7, type_at));
        for tag in first..off::MAX_VLAN_TAGS {
            let is_tag = self.asm.new_label();
            let not_tag = if tag == first { untagged } else { tagged };
            self.asm
                .jmp(JmpOp::Eq, R2, raw16(off::ETHERTYPE_VLAN), is_tag);
            self.asm
                .jmp(JmpOp::Ne, R2, raw16(off::ETHERTYPE_QINQ), not_tag);
            self.asm.bind(is_tag);
            // The tag body, then the next ethertype, must be there.
            self.need(R7, off::ETH_HEADER_LEN + off::VLAN_TAG_LEN);
            if tag == 0 && self.plan.has(Field::VlanId) {
                self.load_be(Size::H, R7, off::ETH_HEADER_LEN + off::VLAN_TCI);
                self.asm.emit(Insn::and64(R3, i32::from(off::VLAN_ID_MASK)));
                self.store(Field::VlanId, R3);
            }
            self.asm.emit(Insn::add64(R7, off::VLAN_TAG_LEN as i32));
            self.asm.emit(Insn::ldx(Size::H, R2, R7, type_at));
        }
    }

    fn network(&mut self) {
        let plan = self.plan;
        let transport = self.asm.new_label();
        if plan.arp {
            let not_arp = self.asm.new_label();
            self.asm
                .jmp(JmpOp::Ne, R2, raw16(off::ETHERTYPE_ARP), not_arp);
            self.arp();
            self.asm.ja(self.done);
            self.asm.bind(not_arp);
        }
        match (plan.ipv4, plan.ipv6) {
            (true, true) => {
                let ipv4 = self.asm.new_label();
                self.asm
                    .jmp(JmpOp::Eq, R2, raw16(off::ETHERTYPE_IPV4), ipv4);
                self.asm
                    .jmp(JmpOp::Ne, R2, raw16(off::ETHERTYPE_IPV6), self.done);
                self.ipv6();
                if plan.transport() {
                    self.asm.ja(transport);
                } else {
                    self.asm.ja(self.done);
                }
                self.asm.bind(ipv4);
                self.ipv4();
            }
            (true, false) => {
                self.asm
                    .jmp(JmpOp::Ne, R2, raw16(off::ETHERTYPE_IPV4), self.done);
                self.ipv4();
            }
            (false, true) => {
                self.asm
                    .jmp(JmpOp::Ne, R2, raw16(off::ETHERTYPE_IPV6), self.done);
                self.ipv6();
            }
            (false, false) => return,
        }
        if plan.transport() {
            self.asm.bind(transport);
            self.transport();
        }
    }

    /// ARP at R7 + 14: Ethernet/IPv4 only (types and lengths checked).
    fn arp(&mut self) {
        self.asm.annotate("arp");
        self.need(R7, L3 + off::ARP_LEN);
        self.asm
            .emit(Insn::ldx(Size::W, R3, R7, imm(L3 + off::ARP_HTYPE)));
        self.asm
            .jmp(JmpOp::Ne, R3, raw32(off::ARP_ETH_IPV4_TYPES), self.done);
        self.asm
            .emit(Insn::ldx(Size::H, R3, R7, imm(L3 + off::ARP_HLEN)));
        self.asm
            .jmp(JmpOp::Ne, R3, raw16(off::ARP_ETH_IPV4_LENS), self.done);
        self.store_header(L3_SLOT, R7);
        self.field(Field::ArpOp, Size::H, R7, L3 + off::ARP_OP);
        self.field(Field::ArpSpa, Size::W, R7, L3 + off::ARP_SPA);
        self.field(Field::ArpTpa, Size::W, R7, L3 + off::ARP_TPA);
        // A hardware address is the top 48 bits of 8 bytes from its start
        // (both loads end inside the 28-byte header).
        for (field, at) in [(Field::ArpSha, off::ARP_SHA), (Field::ArpTha, off::ARP_THA)] {
            if self.plan.has(field) {
                self.load_be(Size::DW, R7, L3 + at);
                self.asm
                    .emit(Insn::rsh64(R3, 64 - 8 * off::ETH_ADDR_LEN as i32));
                self.store(field, R3);
            }
        }
        self.mark_present(&[
            Field::ArpOp,
            Field::ArpSha,
            Field::ArpSpa,
            Field::ArpTha,
            Field::ArpTpa,
        ]);
    }

    /// IPv4 at R7 + 14. With transport fields requested, leaves the
    /// protocol in R5 and the transport header at R4 + 14, or jumps to
    /// done when the rules say not to parse it.
    fn ipv4(&mut self) {
        let plan = self.plan;
        self.asm.annotate("ipv4");
        self.need(R7, L3 + off::IPV4_MIN_LEN);
        self.asm
            .emit(Insn::ldx(Size::B, R3, R7, imm(L3 + off::IPV4_VER_IHL)));
        self.asm.emit(Insn::mov64(R0, R3));
        self.asm.emit(Insn::and64(R0, 0xf0));
        self.asm
            .jmp(JmpOp::Ne, R0, i32::from(off::IPV4_VERSION) << 4, self.done);
        // Masked and bounded before scaling, so the verifier knows the
        // header length is in [20, 60] when it moves the packet pointer.
        self.asm.emit(Insn::and64(R3, 0x0f));
        self.asm
            .jmp(JmpOp::Lt, R3, i32::from(off::IPV4_MIN_IHL), self.done);
        self.asm.emit(Insn::lsh64(R3, 2));
        self.asm.emit(Insn::mov64(R4, R7));
        self.asm.emit(Insn::add64(R4, R3));
        self.need(R4, L3);
        self.store_header(L3_SLOT, R7);

        self.field(Field::IpSrc, Size::W, R7, L3 + off::IPV4_SRC);
        self.field(Field::IpDst, Size::W, R7, L3 + off::IPV4_DST);
        self.field(Field::IpTtl, Size::B, R7, L3 + off::IPV4_TTL);
        if plan.has(Field::IpDscp) {
            self.load_be(Size::B, R7, L3 + off::IPV4_TOS);
            self.asm.emit(Insn::rsh64(R3, off::IPV4_DSCP_SHIFT as i32));
            self.store(Field::IpDscp, R3);
        }
        if plan.has(Field::IpProto) || plan.transport() {
            self.asm
                .emit(Insn::ldx(Size::B, R5, R7, imm(L3 + off::IPV4_PROTO)));
            if plan.has(Field::IpProto) {
                self.store(Field::IpProto, R5);
            }
        }
        self.mark_present(&[
            Field::IpSrc,
            Field::IpDst,
            Field::IpProto,
            Field::IpTtl,
            Field::IpDscp,
        ]);
        if plan.transport() {
            // Only the first fragment carries the transport header.
            self.asm
                .emit(Insn::ldx(Size::H, R3, R7, imm(L3 + off::IPV4_FRAG)));
            self.asm
                .jmp(JmpOp::Set, R3, raw16(off::IPV4_FRAG_OFFSET_MASK), self.done);
            if plan.icmp {
                // ICMPv6 does not count over IPv4.
                self.asm
                    .jmp(JmpOp::Eq, R5, i32::from(off::IP_PROTO_ICMPV6), self.done);
            }
        }
    }

    /// IPv6 at R7 + 14; same exit contract as [`Emitter::ipv4`].
    fn ipv6(&mut self) {
        let plan = self.plan;
        self.asm.annotate("ipv6");
        self.need(R7, L3 + off::IPV6_HEADER_LEN);
        self.asm
            .emit(Insn::ldx(Size::B, R3, R7, imm(L3 + off::IPV6_VER_TC_FLOW)));
        self.asm.emit(Insn::and64(R3, 0xf0));
        self.asm
            .jmp(JmpOp::Ne, R3, i32::from(off::IPV6_VERSION) << 4, self.done);
        for (field, at) in [
            (Field::Ip6Src, off::IPV6_SRC),
            (Field::Ip6Dst, off::IPV6_DST),
        ] {
            if plan.has(field) {
                let slot = self.slot(field);
                self.load_be(Size::DW, R7, L3 + at);
                self.asm.emit(Insn::stx(Size::DW, R10, R3, slot));
                self.load_be(Size::DW, R7, L3 + at + 8);
                self.asm
                    .emit(Insn::stx(Size::DW, R10, R3, slot.saturating_add(8)));
            }
        }
        if plan.has(Field::Ip6Next) || plan.transport() {
            self.asm
                .emit(Insn::ldx(Size::B, R5, R7, imm(L3 + off::IPV6_NEXT)));
            if plan.has(Field::Ip6Next) {
                self.store(Field::Ip6Next, R5);
            }
        }
        self.mark_present(&[Field::Ip6Src, Field::Ip6Dst, Field::Ip6Next]);
        if plan.transport() {
            if plan.icmp {
                // ICMP (for IPv4) does not count over IPv6.
                self.asm
                    .jmp(JmpOp::Eq, R5, i32::from(off::IP_PROTO_ICMP), self.done);
            }
            self.asm.emit(Insn::mov64(R4, R7));
            self.asm.emit(Insn::add64(R4, off::IPV6_HEADER_LEN as i32));
        }
    }

    /// The transport header at R4 + 14, protocol in R5: dispatch to the
    /// requested protocols, each checking its own minimum length.
    fn transport(&mut self) {
        let plan = self.plan;
        let mut blocks: Vec<(&[u8], Transport)> = Vec::new();
        if plan.tcp {
            blocks.push((&[off::IP_PROTO_TCP], Transport::Tcp));
        }
        if plan.udp {
            blocks.push((&[off::IP_PROTO_UDP], Transport::Udp));
        }
        if plan.icmp {
            blocks.push((&[off::IP_PROTO_ICMP, off::IP_PROTO_ICMPV6], Transport::Icmp));
        }
        let Some(((last_protos, last_kind), jumped)) = blocks.split_last() else {
            return;
        };
        // Jump to each other block on its protocols; the last one is
        // reached by falling through once its last protocol is confirmed,
        // so it is emitted first.
        let labels: Vec<Label> = jumped.iter().map(|_| self.asm.new_label()).collect();
        for ((protos, _), &label) in jumped.iter().zip(&labels) {
            for &proto in protos.iter() {
                self.asm.jmp(JmpOp::Eq, R5, i32::from(proto), label);
            }
        }
        let fall_through = self.asm.new_label();
        if let Some((&last, others)) = last_protos.split_last() {
            for &proto in others {
                self.asm.jmp(JmpOp::Eq, R5, i32::from(proto), fall_through);
            }
            self.asm.jmp(JmpOp::Ne, R5, i32::from(last), self.done);
        }
        self.asm.bind(fall_through);
        self.transport_block(*last_kind);
        for ((_, kind), &label) in jumped.iter().zip(&labels) {
            self.asm.ja(self.done);
            self.asm.bind(label);
            self.transport_block(*kind);
        }
    }

    fn transport_block(&mut self, kind: Transport) {
        let l4 = L3;
        let (min_len, fields): (usize, &[(Field, Size, usize)]) = match kind {
            Transport::Tcp => (
                off::TCP_MIN_LEN,
                &[
                    (Field::TcpSport, Size::H, off::TCP_SPORT),
                    (Field::TcpDport, Size::H, off::TCP_DPORT),
                    (Field::TcpFlags, Size::B, off::TCP_FLAGS),
                ],
            ),
            Transport::Udp => (
                off::UDP_HEADER_LEN,
                &[
                    (Field::UdpSport, Size::H, off::UDP_SPORT),
                    (Field::UdpDport, Size::H, off::UDP_DPORT),
                ],
            ),
            Transport::Icmp => (
                off::ICMP_MIN_LEN,
                &[
                    (Field::IcmpType, Size::B, off::ICMP_TYPE),
                    (Field::IcmpCode, Size::B, off::ICMP_CODE),
                ],
            ),
        };
        self.asm.annotate(match kind {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Icmp => "icmp",
        });
        self.need(R4, l4 + min_len);
        if self.req.headers.is_some() {
            self.store_header(L4_SLOT, R4);
            let at = self.req.headers.unwrap_or(0);
            self.asm.emit(Insn::stx(Size::DW, R10, R5, at + PROTO_SLOT));
        }
        for &(field, size, at) in fields {
            self.field(field, size, R4, l4 + at);
        }
        let present: Vec<Field> = fields.iter().map(|&(f, _, _)| f).collect();
        self.mark_present(&present);
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    Udp,
    Icmp,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots laid out as the kernel test does: one 16-byte pair per field.
    fn slot(field: Field) -> i16 {
        -16 * (field as i16 + 1)
    }

    fn assemble(hook: Hook, fields: &[Field]) -> flowstate_asm::Program {
        let mut asm = Assembler::new();
        emit_parse(
            &mut asm,
            &ParseRequest {
                hook,
                fields,
                slot: &slot,
                headers: None,
            },
        );
        asm.emit(Insn::exit());
        asm.finish().expect("the parser assembles")
    }

    fn count(hook: Hook, fields: &[Field]) -> usize {
        assemble(hook, fields).insns.len()
    }

    fn loads_at(program: &flowstate_asm::Program, base: Reg, offset: i16) -> bool {
        program
            .insns
            .iter()
            .any(|i| i.class() == 0x01 && i.src == base.index() && i.off == offset)
    }

    #[test]
    fn every_request_assembles_for_every_hook() {
        for hook in [Hook::Xdp, Hook::TcIngress, Hook::TcEgress] {
            for field in Field::ALL {
                assemble(hook, &[field]);
            }
            assemble(hook, &Field::ALL);
            assemble(hook, &[]);
        }
    }

    #[test]
    fn metadata_only_does_not_touch_the_packet() {
        let program = assemble(Hook::TcIngress, &[Field::PktLen, Field::PktIfindex]);
        assert!(!loads_at(&program, CTX, sk_buff::DATA));
        assert!(loads_at(&program, CTX, sk_buff::LEN));
        assert!(loads_at(&program, CTX, sk_buff::IFINDEX));
        // mov r6; mov r9; len, vlan_present, jeq, add, store; ifindex,
        // store; exit.
        assert_eq!(program.insns.len(), 10, "{}", program.listing());
    }

    #[test]
    fn xdp_metadata_reads_xdp_md() {
        let program = assemble(Hook::Xdp, &[Field::PktLen, Field::PktIfindex]);
        assert!(loads_at(&program, CTX, xdp_md::DATA));
        assert!(loads_at(&program, CTX, xdp_md::DATA_END));
        assert!(loads_at(&program, CTX, xdp_md::INGRESS_IFINDEX));
    }

    fn calls(program: &flowstate_asm::Program, helper: Helper) -> bool {
        program.insns.iter().any(|&i| i == Insn::call(helper))
    }

    #[test]
    fn only_tc_pulls_data_and_reads_the_offloaded_tag() {
        let tc = assemble(Hook::TcEgress, &[Field::VlanId]);
        assert!(calls(&tc, SKB_PULL_DATA));
        assert!(loads_at(&tc, CTX, sk_buff::VLAN_PRESENT));
        assert!(loads_at(&tc, CTX, sk_buff::VLAN_TCI));
        let xdp = assemble(Hook::Xdp, &[Field::VlanId]);
        assert!(!calls(&xdp, SKB_PULL_DATA));
        // Without header fields there is nothing to pull.
        let meta = assemble(Hook::TcIngress, &[Field::PktIfindex]);
        assert!(!calls(&meta, SKB_PULL_DATA));
    }

    #[test]
    fn deepest_headers_fit_the_pull() {
        // Ethernet 14, two tags 8, IPv4 with options 60, TCP 20.
        assert_eq!(MAX_HEADERS_LEN, 102);
    }

    #[test]
    fn ethernet_only_stops_at_ethernet() {
        let program = assemble(Hook::Xdp, &[Field::EthSrc]);
        // No ethertype load: the tags are not walked.
        assert!(!loads_at(&program, R7, off::ETH_TYPE as i16));
        // Load data/data_end, check 14 bytes, load, swap, shift, store, mark.
        assert!(program.insns.len() <= 13, "{}", program.listing());
    }

    #[test]
    fn ip_src_does_not_load_ports() {
        let program = assemble(Hook::Xdp, &[Field::IpSrc]);
        assert!(!loads_at(&program, R4, imm(L3 + off::TCP_DPORT)));
        assert!(!program.listing().contains("ipv6"));
        assert!(program.insns.len() <= 45, "{}", program.listing());
    }

    #[test]
    fn instruction_counts_stay_small() {
        let typical = [Field::IpSrc, Field::IpDst, Field::TcpDport, Field::UdpDport];
        assert!(count(Hook::Xdp, &typical) <= 90);
        // Every field: 167 instructions (ARP took 28) plus the test's exit.
        let all = count(Hook::Xdp, &Field::ALL);
        assert!(all <= 170, "{all}");
    }

    #[test]
    fn presence_bits_are_distinct_and_fit_an_immediate() {
        let all = Field::ALL.iter().fold(0u32, |acc, &f| {
            assert_eq!(acc & presence_bit(f), 0);
            acc | presence_bit(f)
        });
        assert!(i32::try_from(all).is_ok());
    }

    #[test]
    fn only_forward_jumps() {
        // The parser is a DAG: the verifier walks it without loops.
        let program = assemble(Hook::Xdp, &Field::ALL);
        assert!(program
            .insns
            .iter()
            .filter(|i| i.is_jump())
            .all(|i| i.off >= 0));
    }

    #[test]
    fn raw_ethertypes_match_what_ldx_reads() {
        let wire = 0x8100u16.to_be_bytes();
        assert_eq!(raw16(0x8100), i32::from(u16::from_ne_bytes(wire)));
    }
}
