//! Rows that write packet fields (`ip.ttl = ip.ttl - 1`): the bytecode twin
//! of `flowstate_wire::rewrite`, which the interpreter applies.
//!
//! Two steps, so that a row's writes keep its parallel semantics and
//! happen once:
//!
//! 1. When the row's commit starts, before anything is written, every
//!    value is evaluated (from the packet and registers as they were
//!    before the row) and cut to its field's width, into the frame's write
//!    slots. A commit that starts over evaluates them again.
//! 2. After the commit (the entry written, or nothing to write), just
//!    before the verdict's tail, the values are stored into the packet in
//!    the row's order, each followed by the checksums that cover it,
//!    updated with the arithmetic `flowstate_wire::rewrite` fixes (RFC
//!    1624, one field at a time), so both executions give the same bytes.
//!
//! Where the headers are comes from the parser: it leaves the layer-3 and
//! transport headers' offsets and the transport protocol in frame slots
//! (`parse::ParseRequest::headers`). A row only fires when the packet
//! carries every field it writes (`lower::row_presence`), so the offsets
//! are there; each store is still bounds-checked for the verifier.
//!
//! XDP only for now: at TC an skb may carry a checksum the stack trusts
//! (`CHECKSUM_COMPLETE`) or a VLAN tag in metadata, which direct writes
//! would not keep right; such programs are refused with a message.

use flowstate_asm::Reg::*;
use flowstate_asm::{Insn, JmpOp, Label, Reg, Size};
use flowstate_lang::ir::{Hook, Program, Row};
use flowstate_wire::offsets as off;
use flowstate_wire::rewrite::{checksums, Checksum};
use flowstate_wire::Field;

use super::{Emitter, ROW_ENV};
use crate::parse::{sk_buff, xdp_md, L3_SLOT, L4_SLOT, PROTO_SLOT};

/// Why `program` cannot be compiled for `hook` because of its field
/// writes (`None` when it can).
pub(crate) fn unsupported(program: &Program, hook: Hook) -> Option<String> {
    if hook == Hook::Xdp {
        return None;
    }
    let lines: Vec<String> = program
        .rows
        .iter()
        .filter(|r| !r.writes.is_empty())
        .map(|r| r.pos.line.to_string())
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(format!(
        "rows that write packet fields (line {}) are compiled for XDP only: at TC the kernel \
         may trust a checksum or hold a VLAN tag that direct writes would not keep right; \
         use `hook xdp`, or `flowstate replay` to run the program in the interpreter",
        lines.join(", ")
    ))
}

/// The header a field is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Header {
    Ethernet,
    /// IPv4 or ARP, at the parser's layer-3 offset.
    Network,
    Transport,
}

/// Where `field` lives: its header, its offset in it, and how many bytes
/// of that header must be in the packet for the store and its checksum.
fn place(field: Field) -> (Header, i16, i16) {
    let eth = off::ETH_HEADER_LEN as i16;
    let ipv4 = off::IPV4_MIN_LEN as i16;
    let arp = off::ARP_LEN as i16;
    let o = |x: usize| x as i16;
    match field {
        Field::EthDst => (Header::Ethernet, o(off::ETH_DST), eth),
        Field::EthSrc => (Header::Ethernet, o(off::ETH_SRC), eth),
        Field::VlanId => (Header::Ethernet, eth, eth + 4),
        Field::IpSrc => (Header::Network, o(off::IPV4_SRC), ipv4),
        Field::IpDst => (Header::Network, o(off::IPV4_DST), ipv4),
        Field::IpTtl => (Header::Network, o(off::IPV4_TTL), ipv4),
        Field::IpDscp => (Header::Network, o(off::IPV4_TOS), ipv4),
        Field::ArpOp => (Header::Network, o(off::ARP_OP), arp),
        Field::ArpSha => (Header::Network, o(off::ARP_SHA), arp),
        Field::ArpSpa => (Header::Network, o(off::ARP_SPA), arp),
        Field::ArpTha => (Header::Network, o(off::ARP_THA), arp),
        Field::ArpTpa => (Header::Network, o(off::ARP_TPA), arp),
        Field::TcpSport => (Header::Transport, o(off::TCP_SPORT), o(off::TCP_MIN_LEN)),
        Field::TcpDport => (Header::Transport, o(off::TCP_DPORT), o(off::TCP_MIN_LEN)),
        Field::UdpSport => (Header::Transport, o(off::UDP_SPORT), o(off::UDP_HEADER_LEN)),
        Field::UdpDport => (Header::Transport, o(off::UDP_DPORT), o(off::UDP_HEADER_LEN)),
        Field::IcmpType => (Header::Transport, o(off::ICMP_TYPE), o(off::ICMP_MIN_LEN)),
        Field::IcmpCode => (Header::Transport, o(off::ICMP_CODE), o(off::ICMP_MIN_LEN)),
        // Not writable (the checker refuses them); never reached.
        _ => (Header::Ethernet, 0, eth),
    }
}

/// Header offsets are at most 14 + 8 + 60: larger means a bug, and the
/// bound tells the verifier how far the pointer may move.
const MAX_HEADER_OFFSET: i32 = 255;

impl Emitter<'_> {
    /// Step 1: every written value, cut to its field's width, into the
    /// write slots. Clobbers the evaluator's registers.
    pub(super) fn eval_field_writes(&mut self, row: &Row) {
        if row.writes.is_empty() {
            return;
        }
        self.asm
            .annotate("field writes: every value from before the row");
        for (i, w) in row.writes.iter().enumerate() {
            self.eval(&w.value, 0, 0, ROW_ENV);
            let bits = w.field.bits() as i32;
            match bits {
                32 => self.emit(Insn::mov32(R1, R1)),
                b if b < 32 => self.emit(Insn::and64(R1, (1 << b) - 1)),
                b => {
                    self.emit(Insn::lsh64(R1, 64 - b));
                    self.emit(Insn::rsh64(R1, 64 - b));
                }
            }
            self.store_stack(self.frame.write_value(i), R1);
        }
    }

    /// Step 2: the values into the packet, checksums updated. Clobbers
    /// R0-R5.
    pub(super) fn store_field_writes(&mut self, row: &Row) {
        if row.writes.is_empty() {
            return;
        }
        self.asm.annotate("field writes: into the packet");
        for (i, w) in row.writes.iter().enumerate() {
            let skip = self.label();
            self.load_stack(R1, self.frame.write_value(i));
            self.store_field(w.field, skip);
            self.asm.bind(skip);
        }
    }

    /// R2 = the start of `header` in the packet, R3 = data_end, with `len`
    /// bytes checked to be there (else to `skip`). Clobbers R0, R4.
    fn header_pointer(&mut self, header: Header, len: i16, skip: Label) {
        let (data, data_end) = match self.target.hook {
            Hook::Xdp => (xdp_md::DATA, xdp_md::DATA_END),
            Hook::TcIngress | Hook::TcEgress => (sk_buff::DATA, sk_buff::DATA_END),
        };
        self.emit(Insn::ldx(Size::W, R2, super::CTX, data));
        self.emit(Insn::ldx(Size::W, R3, super::CTX, data_end));
        let slot = match header {
            Header::Ethernet => None,
            Header::Network => Some(L3_SLOT),
            Header::Transport => Some(L4_SLOT),
        };
        if let Some(slot) = slot {
            self.load_stack(R4, self.frame.headers + slot);
            self.jmp(JmpOp::Eq, R4, 0, skip);
            self.jmp(JmpOp::Gt, R4, MAX_HEADER_OFFSET, skip);
            self.emit(Insn::add64(R2, R4));
        }
        self.emit(Insn::mov64(R0, R2));
        self.emit(Insn::add64(R0, i32::from(len)));
        self.jmp(JmpOp::Gt, R0, R3, skip);
    }

    /// Stores R1 as `field`, then updates its checksums. R5 carries the
    /// one's-complement change of the field's 16-bit words.
    fn store_field(&mut self, field: Field, skip: Label) {
        let (header, at, len) = place(field);
        self.header_pointer(header, len, skip);
        match field {
            Field::EthSrc | Field::EthDst | Field::ArpSha | Field::ArpTha => {
                // Six bytes: the top 16 bits, then the low 32.
                self.emit(Insn::mov64(R0, R1));
                self.emit(Insn::rsh64(R0, 32));
                self.emit(Insn::be16(R0));
                self.emit(Insn::stx(Size::H, R2, R0, at));
                self.emit(Insn::mov32(R0, R1));
                self.emit(Insn::be32(R0));
                self.emit(Insn::stx(Size::W, R2, R0, at + 2));
            }
            Field::IpSrc | Field::IpDst | Field::ArpSpa | Field::ArpTpa => {
                self.emit(Insn::ldx(Size::W, R0, R2, at));
                self.emit(Insn::be32(R0));
                // R5 = !old_hi + !old_lo + new_hi + new_lo (16-bit words).
                self.emit(Insn::mov64(R5, R0));
                self.emit(Insn::rsh64(R5, 16));
                self.emit(Insn::xor64(R5, 0xffff));
                self.emit(Insn::and64(R0, 0xffff));
                self.emit(Insn::xor64(R0, 0xffff));
                self.emit(Insn::add64(R5, R0));
                self.emit(Insn::mov64(R0, R1));
                self.emit(Insn::rsh64(R0, 16));
                self.emit(Insn::add64(R5, R0));
                self.emit(Insn::mov64(R0, R1));
                self.emit(Insn::and64(R0, 0xffff));
                self.emit(Insn::add64(R5, R0));
                self.emit(Insn::mov64(R0, R1));
                self.emit(Insn::be32(R0));
                self.emit(Insn::stx(Size::W, R2, R0, at));
            }
            Field::TcpSport
            | Field::TcpDport
            | Field::UdpSport
            | Field::UdpDport
            | Field::ArpOp => {
                self.emit(Insn::ldx(Size::H, R0, R2, at));
                self.emit(Insn::be16(R0));
                self.word_change(R0);
                self.emit(Insn::mov64(R0, R1));
                self.emit(Insn::be16(R0));
                self.emit(Insn::stx(Size::H, R2, R0, at));
            }
            Field::IpTtl | Field::IcmpType | Field::IcmpCode => {
                // A byte at an even offset is the high byte of its word.
                let even = at % 2 == 0;
                self.emit(Insn::ldx(Size::B, R0, R2, at));
                self.emit(Insn::stx(Size::B, R2, R1, at));
                if even {
                    self.emit(Insn::lsh64(R0, 8));
                    self.emit(Insn::lsh64(R1, 8));
                }
                self.word_change(R0);
            }
            Field::IpDscp => {
                // The TOS byte keeps its ECN bits.
                self.emit(Insn::ldx(Size::B, R0, R2, at));
                self.emit(Insn::mov64(R4, R0));
                self.emit(Insn::and64(R4, 0x03));
                self.emit(Insn::lsh64(R1, off::IPV4_DSCP_SHIFT as i32));
                self.emit(Insn::or64(R1, R4));
                self.word_change(R0);
                self.emit(Insn::stx(Size::B, R2, R1, at));
            }
            Field::VlanId => {
                // The TCI keeps its priority and DEI bits.
                self.emit(Insn::ldx(Size::H, R0, R2, at));
                self.emit(Insn::be16(R0));
                self.emit(Insn::and64(R0, !i32::from(off::VLAN_ID_MASK) & 0xffff));
                self.emit(Insn::or64(R1, R0));
                self.emit(Insn::be16(R1));
                self.emit(Insn::stx(Size::H, R2, R1, at));
            }
            _ => {}
        }
        self.update_checksums(field, skip);
    }

    /// R5 = !old + new for one 16-bit word: `old` in a register, the new
    /// word in R1.
    fn word_change(&mut self, old: Reg) {
        self.emit(Insn::mov64(R5, old));
        self.emit(Insn::xor64(R5, 0xffff));
        self.emit(Insn::add64(R5, R1));
    }

    /// Applies the change in R5 to every checksum covering `field`.
    fn update_checksums(&mut self, field: Field, skip: Label) {
        for &sum in checksums(field) {
            match sum {
                Checksum::Ipv4Header => {
                    self.header_pointer(Header::Network, off::IPV4_MIN_LEN as i16, skip);
                    self.fold_into(off::IPV4_CHECKSUM as i16, false);
                }
                Checksum::Icmp => {
                    self.header_pointer(Header::Transport, off::ICMP_MIN_LEN as i16, skip);
                    self.fold_into(off::ICMP_CHECKSUM as i16, false);
                }
                Checksum::Transport => self.transport_checksum(field, skip),
            }
        }
    }

    /// The TCP or UDP checksum, whichever the packet carries (none for
    /// other protocols and later fragments: the parser left proto 0).
    fn transport_checksum(&mut self, field: Field, skip: Label) {
        let tcp = self.label();
        let udp = self.label();
        let done = self.label();
        let ports_only = matches!(field, Field::TcpSport | Field::TcpDport);
        let udp_only = matches!(field, Field::UdpSport | Field::UdpDport);
        if !udp_only {
            self.load_stack(R0, self.frame.headers + PROTO_SLOT);
            self.jmp(JmpOp::Eq, R0, i32::from(off::IP_PROTO_TCP), tcp);
        }
        if !ports_only {
            self.load_stack(R0, self.frame.headers + PROTO_SLOT);
            self.jmp(JmpOp::Eq, R0, i32::from(off::IP_PROTO_UDP), udp);
        }
        self.goto(done);
        self.asm.bind(tcp);
        self.header_pointer(Header::Transport, off::TCP_MIN_LEN as i16, skip);
        self.fold_into(off::TCP_CHECKSUM as i16, false);
        self.goto(done);
        self.asm.bind(udp);
        self.header_pointer(Header::Transport, off::UDP_HEADER_LEN as i16, skip);
        self.fold_into(off::UDP_CHECKSUM as i16, true);
        self.asm.bind(done);
    }

    /// The checksum at R2 + `at` after the change in R5:
    /// `!(fold(fold(!checksum + R5)))`; UDP's 0 (none) stays 0 and a
    /// computed 0 is stored as 0xffff. Clobbers R0, R4.
    fn fold_into(&mut self, at: i16, udp: bool) {
        let done = self.label();
        self.emit(Insn::ldx(Size::H, R0, R2, at));
        self.emit(Insn::be16(R0));
        if udp {
            self.jmp(JmpOp::Eq, R0, 0, done);
        }
        self.emit(Insn::xor64(R0, 0xffff));
        self.emit(Insn::add64(R0, R5));
        for _ in 0..2 {
            self.emit(Insn::mov64(R4, R0));
            self.emit(Insn::rsh64(R4, 16));
            self.emit(Insn::and64(R0, 0xffff));
            self.emit(Insn::add64(R0, R4));
        }
        self.emit(Insn::xor64(R0, 0xffff));
        if udp {
            self.emit(Insn::jne(R0, 0, 1));
            self.emit(Insn::mov64(R0, 0xffff));
        }
        self.emit(Insn::be16(R0));
        self.emit(Insn::stx(Size::H, R2, R0, at));
        self.asm.bind(done);
    }
}
