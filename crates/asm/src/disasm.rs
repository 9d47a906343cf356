//! Disassembler in llvm-objdump's syntax (immediates in hex, as `--print-imm-hex` prints them).
//!
//! LLVM has no syntax for the kernel's pseudo loads, local calls or some newer forms, so this
//! crate uses its own spelling for them, which the parser in [`crate::parse`] reads back:
//!
//! | instruction | text |
//! | --- | --- |
//! | `ld_imm64`, `src = PSEUDO_MAP_FD` | `r1 = map_fd(0x0) ll` |
//! | `ld_imm64`, `src = PSEUDO_MAP_VALUE` | `r1 = map_value(0x0) + 0x10 ll` |
//! | `ld_imm64`, `src = PSEUDO_FUNC` | `r1 = func(pc+0x3) ll` |
//! | `call`, `src = PSEUDO_CALL` | `call pc+0x3` |
//!
//! `gotol +0x12345` and `may_goto +0x3` are LLVM's spellings.
//!
//! Anything that is not a valid instruction prints as `<unknown>`; nothing here panics.

use crate::assembler::{MapRef, Program};
use crate::insn::{opcode::*, AluOp, AtomicOp, Insn, JmpOp, Size};
use crate::Helper;
use std::collections::HashMap;
use std::fmt::Write as _;

const UNKNOWN: &str = "<unknown>";

/// `0x5`, `-0x5`.
pub(crate) fn signed_hex(value: i64) -> String {
    if value < 0 {
        format!("-{:#x}", value.unsigned_abs())
    } else {
        format!("{value:#x}")
    }
}

/// `+0x5`, `-0x5`, `+0x0`: a relative offset.
pub(crate) fn relative_hex(value: i64) -> String {
    if value < 0 {
        format!("-{:#x}", value.unsigned_abs())
    } else {
        format!("+{value:#x}")
    }
}

fn size_name(size: Size) -> &'static str {
    match size {
        Size::B => "u8",
        Size::H => "u16",
        Size::W => "u32",
        Size::DW => "u64",
    }
}

/// `(r1 + 0x4)`
fn address(base: u8, off: i16) -> String {
    let sign = if off < 0 { '-' } else { '+' };
    format!("(r{base} {sign} {:#x})", off.unsigned_abs())
}

fn valid_regs(insn: &Insn) -> bool {
    insn.dst <= 10 && insn.src <= 10
}

/// One instruction as text. `next` is the following slot, needed by `ld_imm64`.
pub fn format_insn(insn: &Insn, next: Option<&Insn>) -> String {
    if !valid_regs(insn) {
        return UNKNOWN.to_string();
    }
    let text = match insn.class() {
        LD => format_ld(insn, next),
        LDX => format_ldx(insn),
        ST => format_st(insn),
        STX => format_stx(insn),
        ALU | ALU64 => format_alu(insn),
        JMP | JMP32 => format_jmp(insn),
        _ => None,
    };
    text.unwrap_or_else(|| UNKNOWN.to_string())
}

fn format_ld(insn: &Insn, next: Option<&Insn>) -> Option<String> {
    if !insn.is_wide() {
        return None;
    }
    let next = next?;
    let dst = insn.dst;
    Some(match insn.src {
        0 => {
            let value = u64::from(insn.imm as u32) | (u64::from(next.imm as u32) << 32);
            format!("r{dst} = {} ll", signed_hex(value as i64))
        }
        PSEUDO_MAP_FD => format!("r{dst} = map_fd({}) ll", signed_hex(insn.imm.into())),
        PSEUDO_MAP_VALUE => format!(
            "r{dst} = map_value({}) + {:#x} ll",
            signed_hex(insn.imm.into()),
            next.imm as u32
        ),
        PSEUDO_FUNC => format!("r{dst} = func(pc{}) ll", relative_hex(insn.imm.into())),
        _ => return None,
    })
}

fn format_ldx(insn: &Insn) -> Option<String> {
    if insn.code & 0xe0 != MEM {
        return None;
    }
    let size = size_name(Size::from_bits(insn.code));
    Some(format!(
        "r{} = *({size} *){}",
        insn.dst,
        address(insn.src, insn.off)
    ))
}

fn format_st(insn: &Insn) -> Option<String> {
    if insn.code & 0xe0 != MEM {
        return None;
    }
    let size = size_name(Size::from_bits(insn.code));
    Some(format!(
        "*({size} *){} = {}",
        address(insn.dst, insn.off),
        signed_hex(insn.imm.into())
    ))
}

fn format_stx(insn: &Insn) -> Option<String> {
    let size = Size::from_bits(insn.code);
    let size_text = size_name(size);
    let at = address(insn.dst, insn.off);
    match insn.code & 0xe0 {
        MEM => Some(format!("*({size_text} *){at} = r{}", insn.src)),
        ATOMIC => {
            let (prefix, xchg, cmpxchg) = match size {
                Size::W => ('w', "xchg32_32", "cmpxchg32_32"),
                Size::DW => ('r', "xchg_64", "cmpxchg_64"),
                _ => return None,
            };
            let src = insn.src;
            let bare = &at[1..at.len() - 1];
            Some(match AtomicOp::from_imm(insn.imm)? {
                AtomicOp::Add => format!("lock *({size_text} *){at} += {prefix}{src}"),
                AtomicOp::Or => format!("lock *({size_text} *){at} |= {prefix}{src}"),
                AtomicOp::And => format!("lock *({size_text} *){at} &= {prefix}{src}"),
                AtomicOp::Xor => format!("lock *({size_text} *){at} ^= {prefix}{src}"),
                AtomicOp::FetchAdd => fetch("add", prefix, src, size_text, &at),
                AtomicOp::FetchOr => fetch("or", prefix, src, size_text, &at),
                AtomicOp::FetchAnd => fetch("and", prefix, src, size_text, &at),
                AtomicOp::FetchXor => fetch("xor", prefix, src, size_text, &at),
                AtomicOp::Xchg => format!("{prefix}{src} = {xchg}({bare}, {prefix}{src})"),
                AtomicOp::CmpXchg => {
                    format!("{prefix}0 = {cmpxchg}({bare}, {prefix}0, {prefix}{src})")
                }
            })
        }
        _ => None,
    }
}

fn fetch(op: &str, prefix: char, src: u8, size: &str, at: &str) -> String {
    format!("{prefix}{src} = atomic_fetch_{op}(({size} *){at}, {prefix}{src})")
}

fn format_alu(insn: &Insn) -> Option<String> {
    let prefix = if insn.class() == ALU64 { 'r' } else { 'w' };
    let (dst, src) = (insn.dst, insn.src);
    let op = insn.code & 0xf0;
    let from_reg = insn.code & X == X;
    match op {
        NEG if !from_reg => Some(format!("{prefix}{dst} = -{prefix}{dst}")),
        END => {
            let bits = match insn.imm {
                16 | 32 | 64 => insn.imm,
                _ => return None,
            };
            let name = match (insn.class(), from_reg) {
                (ALU, false) => "le",
                (ALU, true) => "be",
                (_, false) => "bswap",
                _ => return None,
            };
            Some(format!("r{dst} = {name}{bits} r{dst}"))
        }
        _ => {
            let op = AluOp::from_bits(op)?;
            let operand = if from_reg {
                format!("{prefix}{src}")
            } else {
                signed_hex(insn.imm.into())
            };
            // cpu v4: `off == 1` makes division and modulo signed.
            let signed = insn.off == 1 && matches!(op, AluOp::Div | AluOp::Mod);
            let symbol = op.symbol();
            let symbol = if signed {
                format!("s{symbol}")
            } else {
                symbol.to_string()
            };
            Some(format!("{prefix}{dst} {symbol} {operand}"))
        }
    }
}

fn format_jmp(insn: &Insn) -> Option<String> {
    let is_jmp64 = insn.class() == JMP;
    let op = insn.code & 0xf0;
    let from_reg = insn.code & X == X;
    match op {
        JA if is_jmp64 && !from_reg => Some(format!("goto {}", relative_hex(insn.off.into()))),
        JA if !from_reg && insn.off == 0 && insn.dst == 0 && insn.src == 0 => {
            Some(format!("gotol {}", relative_hex(insn.imm.into())))
        }
        JCOND if insn.is_may_goto() && insn.dst == 0 && insn.imm == 0 => {
            Some(format!("may_goto {}", relative_hex(insn.off.into())))
        }
        JCOND => None,
        CALL if is_jmp64 && !from_reg => match insn.src {
            0 => Some(format!("call {:#x}", insn.imm)),
            PSEUDO_CALL => Some(format!("call pc{}", relative_hex(insn.imm.into()))),
            _ => None,
        },
        EXIT if is_jmp64 && !from_reg => Some("exit".to_string()),
        _ => {
            let op = JmpOp::from_bits(op)?;
            let prefix = if is_jmp64 { 'r' } else { 'w' };
            let operand = if from_reg {
                format!("{prefix}{}", insn.src)
            } else {
                signed_hex(insn.imm.into())
            };
            Some(format!(
                "if {prefix}{} {} {operand} goto {}",
                insn.dst,
                op.symbol(),
                relative_hex(insn.off.into())
            ))
        }
    }
}

/// One line per instruction (a `ld_imm64` is one line for its two slots).
pub fn disassemble(insns: &[Insn]) -> Vec<String> {
    slots(insns)
        .map(|(slot, width)| format_insn(&insns[slot], insns.get(slot + 1).filter(|_| width == 2)))
        .collect()
}

/// (slot, width in slots) of each instruction. A trailing half `ld_imm64` has width 1.
fn slots(insns: &[Insn]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut slot = 0;
    std::iter::from_fn(move || {
        let insn = insns.get(slot)?;
        let width = if insn.is_wide() && slot + 1 < insns.len() {
            2
        } else {
            1
        };
        let here = slot;
        slot += width;
        Some((here, width))
    })
}

/// The slot a jump or local call at `slot` goes to.
fn branch_target(insn: &Insn, slot: usize) -> Option<i64> {
    let delta = if let Some(offset) = insn.jump_offset() {
        offset
    } else if (insn.code == JMP | CALL && insn.src == PSEUDO_CALL)
        || (insn.is_wide() && insn.src == PSEUDO_FUNC)
    {
        // Local calls and function addresses carry their slot offset in the immediate.
        i64::from(insn.imm)
    } else {
        return None;
    };
    Some(slot as i64 + 1 + delta)
}

/// A listing: annotations as `;` comment lines above their instruction, then
/// `slot: text`, with the target slot of every jump as `<slot>` and, as trailing comments, the
/// map a `ld_imm64` refers to (named by `map_name`) and the helper a `call` calls.
pub fn listing(program: &Program, map_name: &dyn Fn(MapRef) -> String) -> String {
    let insns = &program.insns;
    let mut notes: HashMap<usize, Vec<String>> = HashMap::new();
    for annotation in &program.annotations {
        notes
            .entry(annotation.slot)
            .or_default()
            .extend(annotation.comment_lines());
    }
    let maps: HashMap<usize, MapRef> = program
        .relocs
        .iter()
        .map(|reloc| (reloc.insn_index, reloc.map))
        .collect();
    let width = insns.len().max(1).to_string().len();
    let mut out = String::new();
    for (slot, size) in slots(insns) {
        for line in notes.remove(&slot).unwrap_or_default() {
            let _ = writeln!(out, "{line}");
        }
        let insn = &insns[slot];
        let mut text = format_insn(insn, insns.get(slot + 1).filter(|_| size == 2));
        if let Some(target) = branch_target(insn, slot) {
            let _ = write!(text, " <{target}>");
        }
        if let Some(map) = maps.get(&slot) {
            let _ = write!(text, "  ; {}", map_name(*map));
        }
        if insn.code == JMP | CALL && insn.src == 0 {
            if let Some(name) = u32::try_from(insn.imm)
                .ok()
                .and_then(|id| Helper(id).name())
            {
                let _ = write!(text, "  ; bpf_{name}");
            }
        }
        let _ = writeln!(out, "{slot:>width$}: {text}");
    }
    let mut trailing: Vec<_> = notes.into_iter().collect();
    trailing.sort();
    for (_, lines) in trailing {
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assembler::Assembler;
    use crate::insn::Reg::*;

    fn text(insn: Insn) -> String {
        format_insn(&insn, None)
    }

    #[test]
    fn alu_text() {
        assert_eq!(text(Insn::mov64(R0, 0)), "r0 = 0x0");
        assert_eq!(text(Insn::mov64(R1, -1)), "r1 = -0x1");
        assert_eq!(text(Insn::mov32(R1, R2)), "w1 = w2");
        assert_eq!(text(Insn::add64(R1, 5)), "r1 += 0x5");
        assert_eq!(text(Insn::arsh32(R1, R2)), "w1 s>>= w2");
        assert_eq!(text(Insn::mod32(R1, 7)), "w1 %= 0x7");
        assert_eq!(text(Insn::neg64(R1)), "r1 = -r1");
        assert_eq!(text(Insn::neg32(R1)), "w1 = -w1");
        assert_eq!(text(Insn::be16(R1)), "r1 = be16 r1");
        assert_eq!(text(Insn::le64(R3)), "r3 = le64 r3");
    }

    #[test]
    fn memory_text() {
        assert_eq!(
            text(Insn::ldx(Size::W, R1, R1, 0)),
            "r1 = *(u32 *)(r1 + 0x0)"
        );
        assert_eq!(
            text(Insn::ldx(Size::DW, R1, R10, -8)),
            "r1 = *(u64 *)(r10 - 0x8)"
        );
        assert_eq!(
            text(Insn::stx(Size::B, R10, R1, -1)),
            "*(u8 *)(r10 - 0x1) = r1"
        );
        assert_eq!(
            text(Insn::st(Size::H, R10, -2, 80)),
            "*(u16 *)(r10 - 0x2) = 0x50"
        );
        assert_eq!(
            text(Insn::atomic64(AtomicOp::Add, R1, R2, 0)),
            "lock *(u64 *)(r1 + 0x0) += r2"
        );
        assert_eq!(
            text(Insn::atomic32(AtomicOp::Xor, R1, R2, 4)),
            "lock *(u32 *)(r1 + 0x4) ^= w2"
        );
        assert_eq!(
            text(Insn::atomic64(AtomicOp::FetchAdd, R1, R2, 0)),
            "r2 = atomic_fetch_add((u64 *)(r1 + 0x0), r2)"
        );
        assert_eq!(
            text(Insn::atomic64(AtomicOp::CmpXchg, R1, R2, 0)),
            "r0 = cmpxchg_64(r1 + 0x0, r0, r2)"
        );
        assert_eq!(
            text(Insn::atomic32(AtomicOp::CmpXchg, R1, R2, 0)),
            "w0 = cmpxchg32_32(r1 + 0x0, w0, w2)"
        );
        assert_eq!(
            text(Insn::atomic32(AtomicOp::Xchg, R1, R2, 0)),
            "w2 = xchg32_32(r1 + 0x0, w2)"
        );
    }

    #[test]
    fn control_flow_text() {
        assert_eq!(text(Insn::call(Helper::MAP_LOOKUP_ELEM)), "call 0x1");
        assert_eq!(text(Insn::call_local(-4)), "call pc-0x4");
        assert_eq!(text(Insn::exit()), "exit");
        assert_eq!(text(Insn::ja(5)), "goto +0x5");
        assert_eq!(text(Insn::jgt(R2, R3, 5)), "if r2 > r3 goto +0x5");
        assert_eq!(text(Insn::jsle(R1, -5, -2)), "if r1 s<= -0x5 goto -0x2");
        assert_eq!(text(Insn::jset32(R1, 4, 0)), "if w1 & 0x4 goto +0x0");
        assert_eq!(text(Insn::gotol(0x12345)), "gotol +0x12345");
        assert_eq!(text(Insn::gotol(-70_000)), "gotol -0x11170");
        assert_eq!(text(Insn::may_goto(3)), "may_goto +0x3");
        assert_eq!(text(Insn::may_goto(-4)), "may_goto -0x4");
        // Reserved fields set: not an instruction the kernel takes.
        assert_eq!(text(Insn::new(0xe5, 0, 1, 3, 0)), UNKNOWN);
        assert_eq!(text(Insn::new(0xe5, 0, 0, 3, 1)), UNKNOWN);
        assert_eq!(text(Insn::new(0x06, 0, 0, 3, 1)), UNKNOWN);
    }

    #[test]
    fn listing_resolves_long_and_budgeted_jumps() {
        let insns = [
            Insn::may_goto(2),
            Insn::gotol(-2),
            Insn::exit(),
            Insn::exit(),
        ];
        let program = Program {
            insns: insns.to_vec(),
            ..Program::default()
        };
        assert_eq!(
            listing(&program, &|_| String::new()),
            "0: may_goto +0x2 <3>\n1: gotol -0x2 <0>\n2: exit\n3: exit\n"
        );
    }

    #[test]
    fn wide_loads_take_two_slots() {
        let mut insns = Vec::new();
        insns.extend(Insn::ld_imm64(R0, 1));
        insns.extend(Insn::ld_imm64(R1, u64::MAX));
        insns.extend(Insn::ld_pseudo(R1, PSEUDO_MAP_FD, 0, 0));
        insns.extend(Insn::ld_pseudo(R2, PSEUDO_MAP_VALUE, 3, 16));
        insns.extend(Insn::ld_pseudo(R3, PSEUDO_FUNC, 2, 0));
        insns.push(Insn::exit());
        assert_eq!(
            disassemble(&insns),
            vec![
                "r0 = 0x1 ll",
                "r1 = -0x1 ll",
                "r1 = map_fd(0x0) ll",
                "r2 = map_value(0x3) + 0x10 ll",
                "r3 = func(pc+0x2) ll",
                "exit",
            ]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let truncated = Insn::ld_imm64(R0, 1)[0];
        assert_eq!(disassemble(&[truncated]), vec![UNKNOWN]);
        assert_eq!(text(Insn::new(0xff, 0, 0, 0, 0)), UNKNOWN);
        assert_eq!(text(Insn::new(0x07, 11, 0, 0, 0)), UNKNOWN);
        assert_eq!(text(Insn::new(0xd4, 1, 0, 0, 8)), UNKNOWN);
        assert_eq!(text(Insn::new(0xdb, 1, 2, 0, 0x33)), UNKNOWN);
        assert_eq!(text(Insn::new(0xd3, 1, 2, 0, 0)), UNKNOWN);
        // Every opcode byte with every register pair and a sample of immediates.
        for code in 0..=255u8 {
            for regs in [0x00, 0x21, 0xff] {
                for imm in [0, 1, 16, 0xe1, 0xf1, -1, i32::MIN] {
                    let insn = Insn::decode([code, regs, 1, 0, 0, 0, 0, 0]);
                    let insn = Insn { imm, ..insn };
                    assert!(!format_insn(&insn, Some(&insn)).is_empty());
                }
            }
        }
    }

    #[test]
    fn listing_shows_annotations_targets_maps_and_helpers() {
        let mut asm = Assembler::new();
        let miss = asm.new_label();
        asm.source_line(12);
        asm.annotate("OPEN tcp.dport == 22 => pass");
        asm.ld_map_fd(R1, MapRef(0));
        asm.emit(Insn::call(Helper::MAP_LOOKUP_ELEM));
        asm.jmp(JmpOp::Eq, R0, 0, miss);
        asm.emit(Insn::mov64(R0, 2));
        asm.bind(miss);
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        let names = |map: MapRef| format!("states_{}", map.0);
        assert_eq!(
            listing(&program, &names),
            "; line 12: OPEN tcp.dport == 22 => pass\n\
             0: r1 = map_fd(0x0) ll  ; states_0\n\
             2: call 0x1  ; bpf_map_lookup_elem\n\
             3: if r0 == 0x0 goto +0x1 <5>\n\
             4: r0 = 0x2\n\
             5: exit\n"
        );
        assert!(program.listing().contains("; map#0"));
    }
}
