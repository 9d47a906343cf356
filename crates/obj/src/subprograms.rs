//! Bpf-to-bpf subprograms (a `bpf_loop` callback, say) in `.text`.
//!
//! A caller gives one instruction stream per program, its subprograms
//! after its last instruction, found the way the kernel finds them: the
//! targets of `call` with src 1 (BPF_PSEUDO_CALL) and of `ld_imm64` with
//! src 4 (BPF_PSEUDO_FUNC). Loaders link a program's subprograms only
//! from `.text` (libbpf: "no .text section found yet sub-program call
//! exists"; aya 0.14 keeps a function's func_info only at its symbol),
//! so the writer moves them there, as clang places static functions:
//! each a local `STT_FUNC` symbol in `.text`, the `ld_imm64` of its
//! address relocated (`R_BPF_64_64`) against the `.text` section symbol
//! with the byte offset in `imm`, a `FUNC` (static) per subprogram in
//! `.BTF`, and its func_info record under `.text` in `.BTF.ext`.
//! The loader appends the subprogram after the program again.

use object::write::{
    Object, Relocation, SectionId, StandardSegment, Symbol, SymbolId, SymbolSection,
};
use object::{elf, RelocationFlags, SectionKind, SymbolFlags, SymbolKind, SymbolScope};

use crate::{btf, btf_ext, ObjError, ProgramDef, SLOT_SIZE};

const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const PSEUDO_CALL: u8 = 1;
const PSEUDO_FUNC: u8 = 4;

/// `.text` as it is filled: the section (made on first use) and the
/// func_info records of what it holds.
#[derive(Default)]
pub(crate) struct Text {
    section: Option<SectionId>,
    funcs: Vec<btf_ext::FuncRecord>,
    pub(crate) lines: Vec<btf_ext::LineRecord>,
}

/// What moved out of one program.
#[derive(Default)]
pub(crate) struct Moved {
    /// Slots of the program's `ld_imm64`s of a subprogram's address.
    address_loads: Vec<usize>,
    /// Map loads now in `.text`: byte offset there, map name.
    pub(crate) map_loads: Vec<(u64, String)>,
    /// Where each subprogram starts in `.text`, in bytes.
    pub(crate) starts: Vec<u64>,
}

impl Text {
    /// `program` without its subprograms, which are appended to `.text`;
    /// the returned list says which `ld_imm64` to relocate.
    pub(crate) fn take_subprograms(
        &mut self,
        obj: &mut Object<'_>,
        btf: &mut btf::BtfWriter,
        program: &ProgramDef,
        sub_proto: u32,
    ) -> Result<(ProgramDef, Moved), ObjError> {
        let starts = btf_ext::subprogram_starts(&program.insns);
        let Some(&first) = starts.first() else {
            return Ok((program.clone(), Moved::default()));
        };
        let unsupported = |why: String| ObjError::InvalidProgram {
            program: program.name.clone(),
            reason: why,
        };
        let slots = program.insns.len() / SLOT_SIZE;
        let section = *self.section.get_or_insert_with(|| {
            obj.add_section(
                obj.segment_name(StandardSegment::Text).to_vec(),
                b".text".to_vec(),
                SectionKind::Text,
            )
        });
        // Each subprogram up to the next one's start (the symbols tile
        // `.text`, which aya requires).
        let mut text_offset_of = Vec::new();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(slots);
            let bytes = &program.insns[start * SLOT_SIZE..end * SLOT_SIZE];
            let offset = obj.append_section_data(section, bytes, SLOT_SIZE as u64);
            let name = format!("{}_sub{start}", program.name);
            obj.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: offset,
                size: bytes.len() as u64,
                kind: SymbolKind::Text,
                scope: SymbolScope::Compilation,
                weak: false,
                section: SymbolSection::Section(section),
                flags: SymbolFlags::None,
            });
            let func = btf.func_static(&name, sub_proto);
            self.funcs.push(btf_ext::FuncRecord {
                insn_off: offset as u32,
                type_id: func,
            });
            text_offset_of.push((start, offset));
        }
        let mut main = program.clone();
        main.insns.truncate(first * SLOT_SIZE);
        main.map_relocs.retain(|(slot, _)| *slot < first);
        let mut moved = Moved {
            starts: text_offset_of.iter().map(|(_, offset)| *offset).collect(),
            ..Moved::default()
        };
        for (slot, map) in program.map_relocs.iter().filter(|(slot, _)| *slot >= first) {
            let Some(&(start, offset)) = text_offset_of.iter().rev().find(|(s, _)| s <= slot)
            else {
                continue;
            };
            moved
                .map_loads
                .push((offset + ((slot - start) * SLOT_SIZE) as u64, map.clone()));
        }
        let mut slot = 0;
        while slot < first {
            let insn = &mut main.insns[slot * SLOT_SIZE..(slot + 1) * SLOT_SIZE];
            let src = insn[1] >> 4;
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            let target = (slot as i64 + 1 + i64::from(imm)) as usize;
            match (insn[0], src) {
                (LD_IMM64, PSEUDO_FUNC) => {
                    let Some(&(_, text_offset)) =
                        text_offset_of.iter().find(|(start, _)| *start == target)
                    else {
                        return Err(unsupported(format!(
                            "slot {slot} loads the address of slot {target}, not a function"
                        )));
                    };
                    // The relocation's addend: the offset in bytes, in imm.
                    insn[4..8].copy_from_slice(&(text_offset as i32).to_le_bytes());
                    moved.address_loads.push(slot);
                }
                (CALL, PSEUDO_CALL) => {
                    return Err(unsupported(
                        "bpf-to-bpf calls are not written yet (only callback addresses)".into(),
                    ));
                }
                _ => {}
            }
            slot += if insn[0] == LD_IMM64 { 2 } else { 1 };
        }
        Ok((main, moved))
    }

    /// The relocations of what moved out of the program placed at byte
    /// `start` of `section`: its address loads against `.text`, and the
    /// map loads now in `.text` against their maps (`map_symbol`).
    pub(crate) fn relocate(
        &self,
        obj: &mut Object<'_>,
        section: SectionId,
        start: u64,
        moved: &Moved,
        map_symbol: &dyn Fn(&str) -> Option<SymbolId>,
    ) -> Result<(), ObjError> {
        let Some(text) = self.section else {
            return Ok(());
        };
        let text_symbol = obj.section_symbol(text);
        let add = |obj: &mut Object<'_>, section, offset, symbol| {
            obj.add_relocation(
                section,
                Relocation {
                    offset,
                    symbol,
                    addend: 0,
                    flags: RelocationFlags::Elf {
                        r_type: elf::R_BPF_64_64,
                    },
                },
            )
            .map_err(|e| ObjError::Write(e.to_string()))
        };
        for &slot in &moved.address_loads {
            add(obj, section, start + (slot * SLOT_SIZE) as u64, text_symbol)?;
        }
        for (offset, map) in &moved.map_loads {
            if let Some(symbol) = map_symbol(map) {
                add(obj, text, *offset, symbol)?;
            }
        }
        Ok(())
    }

    /// The `.BTF.ext` records of `.text`, if anything went there.
    pub(crate) fn finish(self, btf: &mut btf::BtfWriter) -> Option<btf_ext::SectionInfo> {
        self.section?;
        Some(btf_ext::SectionInfo {
            name_off: btf.string(".text"),
            funcs: self.funcs,
            lines: self.lines,
        })
    }
}
