//! `.BTF.ext`: where each function starts (func_info) and which source
//! line each stretch of instructions came from (line_info).
//!
//! Why it is written: the kernel loads a program as an extension
//! (`BPF_PROG_TYPE_EXT`, how a libxdp dispatcher runs it) only with
//! func_info, and `bpftool prog dump xlated linum` shows the `.fsm` lines
//! from line_info.
//!
//! Format (kernel `include/uapi/linux/btf.h`, `struct btf_ext_header`, and
//! libbpf's reading of it): a 32-byte header, then the func_info block
//! (record size, then per ELF section: section name offset, record count,
//! records), then the line_info block laid out the same way. Offsets of
//! instructions are in bytes from the start of their ELF section; every
//! name is an offset into the `.BTF` string section.

/// `struct bpf_func_info`: 8 bytes.
const FUNC_INFO_REC_SIZE: u32 = 8;
/// `struct bpf_line_info`: 16 bytes.
const LINE_INFO_REC_SIZE: u32 = 16;
const HEADER_LEN: u32 = 32;
const BTF_MAGIC: u16 = 0xeb9f;
/// The column shares `line_col` with the line: `line << 10 | column`.
const LINE_SHIFT: u32 = 10;
/// Largest line number `line_col` holds.
pub(crate) const MAX_LINE: u32 = (1 << (32 - LINE_SHIFT)) - 1;

/// One function start: `insn_off` in bytes from the section start, and
/// its BTF `FUNC` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FuncRecord {
    pub insn_off: u32,
    pub type_id: u32,
}

/// One line record; the offsets name strings in `.BTF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineRecord {
    pub insn_off: u32,
    pub file_name_off: u32,
    pub line_off: u32,
    pub line: u32,
    pub column: u32,
}

/// The records of one ELF section; `name_off` is the section's name in
/// the `.BTF` strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SectionInfo {
    pub name_off: u32,
    pub funcs: Vec<FuncRecord>,
    pub lines: Vec<LineRecord>,
}

/// The `.BTF.ext` bytes for `sections`. Records are written sorted by
/// instruction offset, as the kernel requires.
pub(crate) fn encode(sections: &[SectionInfo]) -> Vec<u8> {
    let mut func_block = FUNC_INFO_REC_SIZE.to_le_bytes().to_vec();
    let mut line_block = LINE_INFO_REC_SIZE.to_le_bytes().to_vec();
    for section in sections {
        let mut funcs = section.funcs.clone();
        funcs.sort_by_key(|f| f.insn_off);
        if !funcs.is_empty() {
            push_words(&mut func_block, &[section.name_off, funcs.len() as u32]);
            for f in &funcs {
                push_words(&mut func_block, &[f.insn_off, f.type_id]);
            }
        }
        let mut lines = section.lines.clone();
        lines.sort_by_key(|l| l.insn_off);
        if !lines.is_empty() {
            push_words(&mut line_block, &[section.name_off, lines.len() as u32]);
            for l in &lines {
                let line_col = (l.line.min(MAX_LINE) << LINE_SHIFT) | l.column.min(1023);
                push_words(
                    &mut line_block,
                    &[l.insn_off, l.file_name_off, l.line_off, line_col],
                );
            }
        }
    }
    // libbpf refuses a block that has a record size but no records: an
    // empty block is left out entirely (length 0).
    let func_len = if func_block.len() > 4 {
        func_block.len() as u32
    } else {
        func_block.clear();
        0
    };
    let line_len = if line_block.len() > 4 {
        line_block.len() as u32
    } else {
        line_block.clear();
        0
    };
    let mut out = Vec::with_capacity((HEADER_LEN + func_len + line_len) as usize);
    out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    out.push(1); // version
    out.push(0); // flags
                 // hdr_len, func_info_off/len, line_info_off/len, core_relo_off/len;
                 // offsets count from the end of the header.
    push_words(
        &mut out,
        &[
            HEADER_LEN,
            0,
            func_len,
            func_len,
            line_len,
            func_len + line_len,
            0,
        ],
    );
    out.extend_from_slice(&func_block);
    out.extend_from_slice(&line_block);
    out
}

fn push_words(out: &mut Vec<u8>, words: &[u32]) {
    for word in words {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

/// Slots where bpf-to-bpf functions start, besides slot 0: the targets of
/// `call` with src 1 (BPF_PSEUDO_CALL) and of `ld_imm64` with src 4
/// (BPF_PSEUDO_FUNC, a callback's address), both relative to the next
/// instruction. Sorted, without duplicates; targets outside the program
/// are left out (the kernel refuses those anyway).
pub(crate) fn subprogram_starts(insns: &[u8]) -> Vec<usize> {
    const CALL: u8 = 0x85;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_CALL: u8 = 1;
    const PSEUDO_FUNC: u8 = 4;
    let slots = insns.len() / 8;
    let mut starts = Vec::new();
    let mut slot = 0;
    while slot < slots {
        let insn = &insns[slot * 8..slot * 8 + 8];
        let src = insn[1] >> 4;
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        let target = match (insn[0], src) {
            (CALL, PSEUDO_CALL) => Some(slot as i64 + 1 + i64::from(imm)),
            (LD_IMM64, PSEUDO_FUNC) => Some(slot as i64 + 1 + i64::from(imm)),
            _ => None,
        };
        if let Some(target) = target {
            if target > 0 && (target as usize) < slots {
                starts.push(target as usize);
            }
        }
        slot += if insn[0] == LD_IMM64 { 2 } else { 1 };
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, src: u8, imm: i32) -> [u8; 8] {
        let mut bytes = [code, src << 4, 0, 0, 0, 0, 0, 0];
        bytes[4..].copy_from_slice(&imm.to_le_bytes());
        bytes
    }

    #[test]
    fn calls_and_callback_addresses_start_subprograms() {
        let mut code = Vec::new();
        code.extend(insn(0x85, 1, 4)); // 0: call pc+4 -> slot 5
        code.extend(insn(0x18, 4, 5)); // 1: r1 = callback at pc+5 -> slot 7
        code.extend([0; 8]); // 2: second half of ld_imm64
        code.extend(insn(0x85, 0, 181)); // 3: call helper 181 (bpf_loop): no subprogram
        code.extend(insn(0x95, 0, 0)); // 4: exit
        code.extend(insn(0x85, 1, 1)); // 5: call pc+1 -> slot 7 again
        code.extend(insn(0x95, 0, 0)); // 6: exit
        code.extend(insn(0x95, 0, 0)); // 7: exit
        assert_eq!(subprogram_starts(&code), [5, 7]);
    }

    #[test]
    fn the_second_half_of_ld_imm64_is_not_read_as_a_call() {
        let mut code = Vec::new();
        code.extend(insn(0x18, 0, 0));
        code.extend(insn(0x85, 1, 0)); // bytes of the immediate's upper half
        code.extend(insn(0x95, 0, 0));
        assert!(subprogram_starts(&code).is_empty());
    }

    #[test]
    fn a_block_without_records_is_left_out() {
        let bytes = encode(&[SectionInfo {
            name_off: 7,
            funcs: vec![FuncRecord {
                insn_off: 0,
                type_id: 3,
            }],
            lines: Vec::new(),
        }]);
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!((word(16), word(20)), (20, 0), "line_info offset and length");
        assert_eq!(bytes.len(), 32 + 20);
    }

    #[test]
    fn header_and_blocks_are_laid_out_as_libbpf_reads_them() {
        let bytes = encode(&[SectionInfo {
            name_off: 7,
            funcs: vec![FuncRecord {
                insn_off: 0,
                type_id: 3,
            }],
            lines: vec![
                LineRecord {
                    insn_off: 16,
                    file_name_off: 1,
                    line_off: 9,
                    line: 12,
                    column: 1,
                },
                LineRecord {
                    insn_off: 0,
                    file_name_off: 1,
                    line_off: 5,
                    line: 1,
                    column: 1,
                },
            ],
        }]);
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!(&bytes[..4], &[0x9f, 0xeb, 1, 0]);
        assert_eq!(word(4), 32);
        let (func_off, func_len, line_off, line_len) = (word(8), word(12), word(16), word(20));
        assert_eq!((func_off, func_len), (0, 4 + 8 + 8));
        assert_eq!((line_off, line_len), (20, 4 + 8 + 32));
        let func = 32 + func_off as usize;
        assert_eq!([word(func), word(func + 4), word(func + 8)], [8, 7, 1]);
        let line = 32 + line_off as usize;
        assert_eq!([word(line), word(line + 4), word(line + 8)], [16, 7, 2]);
        // Sorted by offset: line 1 first, then line 12 at byte 16.
        assert_eq!(word(line + 12), 0);
        assert_eq!(word(line + 24), (1 << 10) | 1);
        assert_eq!(word(line + 28), 16);
        assert_eq!(word(line + 40), (12 << 10) | 1);
        assert_eq!(bytes.len(), 32 + 20 + 44);
    }
}
