//! flowstate-asm against LLVM 14's encoder and disassembler (see `data/README.md`).

use flowstate_asm::{assemble_text, decode_all, disassemble, encode_all};

const OBJDUMP: &str = include_str!("data/llvm14.objdump");

struct Line {
    slot: usize,
    bytes: Vec<u8>,
    text: String,
}

fn reference() -> Vec<Line> {
    OBJDUMP
        .lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let slot = fields.next().unwrap().trim().trim_end_matches(':');
            let bytes = fields.next().unwrap();
            let text = fields.next().unwrap();
            // Drop llvm-objdump's `<.text+0x..>` note after a jump target.
            let text = match text.find(" <.text") {
                Some(note) => &text[..note],
                None => text,
            };
            Line {
                slot: slot.parse().unwrap(),
                bytes: bytes
                    .split_whitespace()
                    .map(|byte| u8::from_str_radix(byte, 16).unwrap())
                    .collect(),
                text: text.to_string(),
            }
        })
        .collect()
}

#[test]
fn reference_has_every_kind_of_line() {
    let lines = reference();
    assert_eq!(lines.len(), 69);
    assert!(lines.iter().any(|line| line.bytes.len() == 16));
}

#[test]
fn disassembly_matches_llvm_objdump() {
    for line in reference() {
        let insns = decode_all(&line.bytes).unwrap();
        assert_eq!(
            disassemble(&insns),
            vec![line.text.clone()],
            "slot {}",
            line.slot
        );
    }
}

#[test]
fn parsing_llvm_text_gives_llvm_bytes() {
    for line in reference() {
        let insns = assemble_text(&line.text).unwrap_or_else(|e| panic!("{}: {e}", line.text));
        assert_eq!(encode_all(&insns), line.bytes, "{}", line.text);
    }
}

#[test]
fn whole_listing_round_trips() {
    let lines = reference();
    let bytes: Vec<u8> = lines.iter().flat_map(|line| line.bytes.clone()).collect();
    let insns = decode_all(&bytes).unwrap();
    // Slot numbers advance by two after a ld_imm64, as in the kernel.
    let mut slot = 0;
    for line in &lines {
        assert_eq!(line.slot, slot);
        slot += line.bytes.len() / 8;
    }
    let text = disassemble(&insns).join("\n");
    assert_eq!(encode_all(&assemble_text(&text).unwrap()), bytes);
}
