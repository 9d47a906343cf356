//! An assembler with labels, map relocations and source annotations.
//!
//! Instructions are appended one slot at a time (`ld_imm64` takes two). A jump to a label is
//! emitted with a zero offset and a fixup is recorded; [`Assembler::finish`] resolves every fixup
//! once all labels are bound, so forward and backward jumps are handled alike. Offsets are in
//! slots, relative to the slot after the jump, and must fit the 16-bit `off` field (`ja` and
//! conditional jumps) or the 32-bit `imm` field (local calls and function addresses).
//!
//! Errors (unbound label, offset too large, write to R10, ...) are collected while emitting and
//! returned by `finish`, so a code generator can emit without checking every call.

use crate::insn::{opcode, Insn, JmpOp, Operand, Reg};
use std::fmt;

/// A jump target, created by [`Assembler::new_label`] and placed by [`Assembler::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(pub u32);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// A map, as a small id the caller maps to a name and, at load time, to a file descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapRef(pub u32);

impl fmt::Display for MapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "map#{}", self.0)
    }
}

/// What the loader must patch into a map-referencing `ld_imm64`.
///
/// The emitted bytes follow the kernel's convention (what `BPF_PROG_LOAD` takes once the fd is
/// filled in). An ELF object follows clang's instead, which aya-obj 0.3 (`relocate_maps`)
/// expects: it sets `src` itself, writes the fd into the first slot's `imm`, and for a `Value`
/// load sets the second slot's `imm` to the first slot's `imm` plus the symbol's address. So an
/// object writer keeps `Fd` loads as they are, and moves a `Value` load's offset from the second
/// slot's `imm` to the first's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapRelocKind {
    /// `src = PSEUDO_MAP_FD`; the first slot's `imm` (emitted as 0) becomes the map's fd.
    Fd,
    /// `src = PSEUDO_MAP_VALUE`; the first slot's `imm` (emitted as 0) becomes the map's fd and
    /// the second slot's `imm` holds `offset` into the map's value (key 0 of an array).
    Value { offset: u32 },
}

/// A `ld_imm64` that refers to a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapReloc {
    /// Slot index of the first half of the `ld_imm64`.
    pub insn_index: usize,
    pub map: MapRef,
    pub kind: MapRelocKind,
}

/// Notes attached to the instruction at `slot`, shown above it in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    /// Slot of the annotated instruction; equal to the program length for notes left after the
    /// last instruction.
    pub slot: usize,
    pub line: Option<u32>,
    pub notes: Vec<String>,
}

impl Annotation {
    /// The comment lines, e.g. `; line 12: OPEN tcp.dport == 22 => pass`.
    pub fn comment_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut notes = self.notes.iter();
        match (self.line, notes.next()) {
            (Some(line), Some(note)) => lines.push(format!("; line {line}: {note}")),
            (Some(line), None) => lines.push(format!("; line {line}")),
            (None, Some(note)) => lines.push(format!("; {note}")),
            (None, None) => {}
        }
        lines.extend(notes.map(|note| format!("; {note}")));
        lines
    }
}

/// Why assembly failed. Every variant names the slot of the offending instruction where there
/// is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {label} is used at slot {slot} but never bound")]
    UnboundLabel { label: Label, slot: usize },
    #[error("label {label} is bound twice (at slots {first} and {second})")]
    LabelBoundTwice {
        label: Label,
        first: usize,
        second: usize,
    },
    #[error("label {label} does not belong to this assembler")]
    UnknownLabel { label: Label },
    #[error("jump at slot {slot} to slot {target}: offset {offset} does not fit in {bits} bits")]
    OffsetOutOfRange {
        slot: usize,
        target: usize,
        offset: i64,
        bits: u8,
    },
    #[error("jump at slot {slot} targets slot {target}, past the last instruction")]
    TargetPastEnd { slot: usize, target: usize },
    #[error("instruction at slot {slot} writes the read-only frame pointer r10")]
    WritesFramePointer { slot: usize },
}

/// Where a label's resolved offset goes.
#[derive(Clone, Copy, Debug)]
enum FixupField {
    /// The 16-bit `off` of a jump.
    Off,
    /// The 32-bit `imm` of a local call or a `PSEUDO_FUNC` load.
    Imm,
}

#[derive(Clone, Copy, Debug)]
struct Fixup {
    slot: usize,
    label: Label,
    field: FixupField,
}

/// Builds a [`Program`]. See the module documentation.
#[derive(Debug, Default)]
pub struct Assembler {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<Fixup>,
    relocs: Vec<MapReloc>,
    annotations: Vec<Annotation>,
    pending: Option<Annotation>,
    error: Option<AsmError>,
}

impl Assembler {
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Number of slots emitted so far: the slot the next instruction will take.
    pub fn slot(&self) -> usize {
        self.insns.len()
    }

    fn record_error(&mut self, error: AsmError) {
        // The first error is the one worth reporting; later ones often follow from it.
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    fn push(&mut self, insn: Insn) {
        if let Some(mut annotation) = self.pending.take() {
            annotation.slot = self.insns.len();
            self.annotations.push(annotation);
        }
        if insn.written_reg() == Some(Reg::R10.index()) {
            self.record_error(AsmError::WritesFramePointer {
                slot: self.insns.len(),
            });
        }
        self.insns.push(insn);
    }

    /// Append a one-slot instruction as is.
    pub fn emit(&mut self, insn: Insn) {
        self.push(insn);
    }

    /// Append a two-slot instruction (`ld_imm64`) as is.
    pub fn emit_wide(&mut self, pair: [Insn; 2]) {
        let [first, second] = pair;
        self.push(first);
        // The second half is part of the same instruction: annotations never land on it.
        self.insns.push(second);
    }

    /// `dst = value ll`.
    pub fn ld_imm64(&mut self, dst: Reg, value: u64) {
        self.emit_wide(Insn::ld_imm64(dst, value));
    }

    /// `dst = map_fd(map) ll`: a pointer to the map, for helper calls.
    pub fn ld_map_fd(&mut self, dst: Reg, map: MapRef) {
        self.relocs.push(MapReloc {
            insn_index: self.slot(),
            map,
            kind: MapRelocKind::Fd,
        });
        self.emit_wide(Insn::ld_pseudo(dst, opcode::PSEUDO_MAP_FD, 0, 0));
    }

    /// `dst = &map_value(map)[offset] ll`: a direct pointer into an array map's first value.
    pub fn ld_map_value(&mut self, dst: Reg, map: MapRef, offset: u32) {
        self.relocs.push(MapReloc {
            insn_index: self.slot(),
            map,
            kind: MapRelocKind::Value { offset },
        });
        self.emit_wide(Insn::ld_pseudo(
            dst,
            opcode::PSEUDO_MAP_VALUE,
            0,
            offset as i32,
        ));
    }

    /// `dst = address of the function at label` (a `bpf_loop` callback, say).
    pub fn ld_func(&mut self, dst: Reg, label: Label) {
        self.add_fixup(label, FixupField::Imm);
        self.emit_wide(Insn::ld_pseudo(dst, opcode::PSEUDO_FUNC, 0, 0));
    }

    pub fn new_label(&mut self) -> Label {
        let label = Label(self.labels.len() as u32);
        self.labels.push(None);
        label
    }

    /// Place `label` at the next instruction's slot.
    pub fn bind(&mut self, label: Label) {
        let here = self.slot();
        match self.labels.get_mut(label.0 as usize) {
            None => self.record_error(AsmError::UnknownLabel { label }),
            Some(Some(first)) => {
                let first = *first;
                self.record_error(AsmError::LabelBoundTwice {
                    label,
                    first,
                    second: here,
                });
            }
            Some(slot @ None) => *slot = Some(here),
        }
    }

    /// The slot a label is bound to, if it is bound yet.
    pub fn label_slot(&self, label: Label) -> Option<usize> {
        self.labels.get(label.0 as usize).copied().flatten()
    }

    fn add_fixup(&mut self, label: Label, field: FixupField) {
        if label.0 as usize >= self.labels.len() {
            self.record_error(AsmError::UnknownLabel { label });
        }
        self.fixups.push(Fixup {
            slot: self.slot(),
            label,
            field,
        });
    }

    /// `goto label`.
    pub fn ja(&mut self, label: Label) {
        self.add_fixup(label, FixupField::Off);
        self.push(Insn::ja(0));
    }

    /// `gotol label`: an unconditional jump with a 32-bit offset.
    pub fn gotol(&mut self, label: Label) {
        self.add_fixup(label, FixupField::Imm);
        self.push(Insn::gotol(0));
    }

    /// `may_goto label`: to `label` once the run's loop budget is spent, else on.
    pub fn may_goto(&mut self, label: Label) {
        self.add_fixup(label, FixupField::Off);
        self.push(Insn::may_goto(0));
    }

    /// `if dst op src goto label`, comparing 64 bits.
    pub fn jmp(&mut self, op: JmpOp, dst: Reg, src: impl Into<Operand>, label: Label) {
        self.add_fixup(label, FixupField::Off);
        self.push(Insn::jmp(op, dst, src, 0));
    }

    /// `if wdst op wsrc goto label`, comparing the low 32 bits.
    pub fn jmp32(&mut self, op: JmpOp, dst: Reg, src: impl Into<Operand>, label: Label) {
        self.add_fixup(label, FixupField::Off);
        self.push(Insn::jmp32(op, dst, src, 0));
    }

    /// Call the function of this program that starts at `label`.
    pub fn call_local(&mut self, label: Label) {
        self.add_fixup(label, FixupField::Imm);
        self.push(Insn::call_local(0));
    }

    /// Attach a note to the next instruction.
    pub fn annotate(&mut self, text: impl Into<String>) {
        self.pending_annotation().notes.push(text.into());
    }

    /// Attach a source line number to the next instruction.
    pub fn source_line(&mut self, line: u32) {
        self.pending_annotation().line = Some(line);
    }

    fn pending_annotation(&mut self) -> &mut Annotation {
        self.pending.get_or_insert_with(|| Annotation {
            slot: 0,
            line: None,
            notes: Vec::new(),
        })
    }

    /// Resolve every label reference and return the program.
    pub fn finish(mut self) -> Result<Program, AsmError> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        for fixup in &self.fixups {
            let target = self.labels[fixup.label.0 as usize].ok_or(AsmError::UnboundLabel {
                label: fixup.label,
                slot: fixup.slot,
            })?;
            if target >= self.insns.len() {
                return Err(AsmError::TargetPastEnd {
                    slot: fixup.slot,
                    target,
                });
            }
            let offset = target as i64 - (fixup.slot as i64 + 1);
            let out_of_range = |bits| AsmError::OffsetOutOfRange {
                slot: fixup.slot,
                target,
                offset,
                bits,
            };
            let insn = &mut self.insns[fixup.slot];
            match fixup.field {
                FixupField::Off => {
                    insn.off = i16::try_from(offset).map_err(|_| out_of_range(16))?
                }
                FixupField::Imm => {
                    insn.imm = i32::try_from(offset).map_err(|_| out_of_range(32))?
                }
            }
        }
        if let Some(mut annotation) = self.pending.take() {
            annotation.slot = self.insns.len();
            self.annotations.push(annotation);
        }
        Ok(Program {
            insns: self.insns,
            relocs: self.relocs,
            annotations: self.annotations,
        })
    }
}

/// Assembled instructions with their map relocations and annotations.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Program {
    pub insns: Vec<Insn>,
    pub relocs: Vec<MapReloc>,
    pub annotations: Vec<Annotation>,
}

impl Program {
    /// The instructions as the kernel loads them (little-endian `struct bpf_insn` array).
    pub fn bytes(&self) -> Vec<u8> {
        crate::insn::encode_all(&self.insns)
    }

    /// A listing with slot numbers, annotations, map names (`map#N`) and jump targets.
    pub fn listing(&self) -> String {
        crate::disasm::listing(self, &|map| map.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::Reg::*;
    use crate::Helper;

    #[test]
    fn forward_jump_skips_to_label() {
        let mut asm = Assembler::new();
        let done = asm.new_label();
        asm.jmp(JmpOp::Eq, R1, 0, done);
        asm.mov_placeholder();
        asm.mov_placeholder();
        asm.bind(done);
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        assert_eq!(program.insns[0], Insn::jeq(R1, 0, 2));
    }

    #[test]
    fn may_goto_and_gotol_resolve_labels() {
        let mut asm = Assembler::new();
        let (top, out) = (asm.new_label(), asm.new_label());
        asm.bind(top);
        asm.may_goto(out);
        asm.gotol(top);
        asm.bind(out);
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        assert_eq!(
            program.insns,
            [Insn::may_goto(1), Insn::gotol(-2), Insn::exit()]
        );
    }

    #[test]
    fn backward_jump_has_negative_offset() {
        let mut asm = Assembler::new();
        let top = asm.new_label();
        asm.bind(top);
        asm.emit(Insn::add64(R1, 1));
        asm.jmp32(JmpOp::Lt, R1, 10, top);
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        assert_eq!(program.insns[1], Insn::jlt32(R1, 10, -2));
    }

    #[test]
    fn ld_imm64_counts_as_two_slots() {
        let mut asm = Assembler::new();
        let done = asm.new_label();
        asm.ja(done);
        asm.ld_imm64(R0, u64::MAX);
        asm.bind(done);
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        assert_eq!(program.insns[0], Insn::ja(2));
        assert_eq!(program.insns.len(), 4);
    }

    #[test]
    fn jump_to_itself_is_minus_one() {
        let mut asm = Assembler::new();
        let here = asm.new_label();
        asm.bind(here);
        asm.ja(here);
        let program = asm.finish().unwrap();
        assert_eq!(program.insns[0], Insn::ja(-1));
    }

    #[test]
    fn offset_that_does_not_fit_i16_is_an_error() {
        let mut asm = Assembler::new();
        let far = asm.new_label();
        asm.ja(far);
        for _ in 0..32_768 {
            asm.mov_placeholder();
        }
        asm.bind(far);
        asm.emit(Insn::exit());
        assert_eq!(
            asm.finish(),
            Err(AsmError::OffsetOutOfRange {
                slot: 0,
                target: 32_769,
                offset: 32_768,
                bits: 16,
            })
        );
    }

    #[test]
    fn largest_forward_offset_fits() {
        let mut asm = Assembler::new();
        let far = asm.new_label();
        asm.ja(far);
        for _ in 0..32_767 {
            asm.mov_placeholder();
        }
        asm.bind(far);
        asm.emit(Insn::exit());
        assert_eq!(asm.finish().unwrap().insns[0], Insn::ja(i16::MAX));
    }

    #[test]
    fn unbound_label_is_an_error() {
        let mut asm = Assembler::new();
        asm.emit(Insn::mov64(R0, 0));
        let nowhere = asm.new_label();
        asm.jmp(JmpOp::Ne, R0, R1, nowhere);
        asm.emit(Insn::exit());
        assert_eq!(
            asm.finish(),
            Err(AsmError::UnboundLabel {
                label: nowhere,
                slot: 1
            })
        );
    }

    #[test]
    fn label_bound_twice_is_an_error() {
        let mut asm = Assembler::new();
        let label = asm.new_label();
        asm.bind(label);
        asm.emit(Insn::exit());
        asm.bind(label);
        asm.emit(Insn::exit());
        assert_eq!(
            asm.finish(),
            Err(AsmError::LabelBoundTwice {
                label,
                first: 0,
                second: 1
            })
        );
    }

    #[test]
    fn foreign_label_is_an_error() {
        let mut asm = Assembler::new();
        asm.ja(Label(7));
        assert_eq!(
            asm.finish(),
            Err(AsmError::UnknownLabel { label: Label(7) })
        );
    }

    #[test]
    fn label_after_last_instruction_is_an_error() {
        let mut asm = Assembler::new();
        let end = asm.new_label();
        asm.ja(end);
        asm.bind(end);
        assert_eq!(
            asm.finish(),
            Err(AsmError::TargetPastEnd { slot: 0, target: 1 })
        );
    }

    #[test]
    fn writing_r10_is_an_error() {
        let mut asm = Assembler::new();
        asm.emit(Insn::mov64(R0, 0));
        asm.emit(Insn::add64(R10, 8));
        assert_eq!(asm.finish(), Err(AsmError::WritesFramePointer { slot: 1 }));
    }

    #[test]
    fn map_loads_record_relocations() {
        let mut asm = Assembler::new();
        asm.emit(Insn::mov64(R0, 0));
        asm.ld_map_fd(R1, MapRef(3));
        asm.ld_map_value(R2, MapRef(4), 16);
        asm.emit(Insn::call(Helper::MAP_LOOKUP_ELEM));
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        assert_eq!(
            program.relocs,
            vec![
                MapReloc {
                    insn_index: 1,
                    map: MapRef(3),
                    kind: MapRelocKind::Fd
                },
                MapReloc {
                    insn_index: 3,
                    map: MapRef(4),
                    kind: MapRelocKind::Value { offset: 16 }
                },
            ]
        );
        assert_eq!(
            &program.bytes()[8..24],
            &[0x18, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            &program.bytes()[24..40],
            &[0x18, 0x22, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0]
        );
    }

    #[test]
    fn local_call_and_function_address_are_pc_relative() {
        let mut asm = Assembler::new();
        let callback = asm.new_label();
        asm.ld_func(R2, callback);
        asm.call_local(callback);
        asm.emit(Insn::exit());
        asm.bind(callback);
        asm.emit(Insn::mov64(R0, 0));
        asm.emit(Insn::exit());
        let program = asm.finish().unwrap();
        assert_eq!(program.insns[0].imm, 3);
        assert_eq!(program.insns[0].src, opcode::PSEUDO_FUNC);
        assert_eq!(program.insns[2], Insn::call_local(1));
    }

    #[test]
    fn annotations_attach_to_the_next_instruction() {
        let mut asm = Assembler::new();
        asm.emit(Insn::mov64(R0, 0));
        asm.source_line(12);
        asm.annotate("OPEN tcp.dport == 22 => pass");
        asm.ld_imm64(R1, 5);
        asm.annotate("epilogue");
        asm.emit(Insn::exit());
        asm.annotate("trailing");
        let program = asm.finish().unwrap();
        assert_eq!(
            program.annotations,
            vec![
                Annotation {
                    slot: 1,
                    line: Some(12),
                    notes: vec!["OPEN tcp.dport == 22 => pass".to_string()]
                },
                Annotation {
                    slot: 3,
                    line: None,
                    notes: vec!["epilogue".to_string()]
                },
                Annotation {
                    slot: 4,
                    line: None,
                    notes: vec!["trailing".to_string()]
                },
            ]
        );
        assert_eq!(
            program.annotations[0].comment_lines(),
            vec!["; line 12: OPEN tcp.dport == 22 => pass"]
        );
    }

    #[test]
    fn comment_lines_cover_every_combination() {
        let annotation = |line, notes: &[&str]| Annotation {
            slot: 0,
            line,
            notes: notes.iter().map(|note| note.to_string()).collect(),
        };
        assert_eq!(annotation(Some(3), &[]).comment_lines(), vec!["; line 3"]);
        assert_eq!(annotation(None, &["a"]).comment_lines(), vec!["; a"]);
        assert_eq!(
            annotation(Some(3), &["a", "b"]).comment_lines(),
            vec!["; line 3: a", "; b"]
        );
        assert!(annotation(None, &[]).comment_lines().is_empty());
    }

    impl Assembler {
        fn mov_placeholder(&mut self) {
            self.emit(Insn::mov64(R0, 0));
        }
    }
}
