//! flowstate-asm: the eBPF instruction layer.
//!
//! flowstate emits eBPF bytecode itself. This crate is its assembler: pure Rust, no syscalls.
//!
//! - [`insn`]: the 8-byte kernel instruction [`Insn`], typed registers ([`Reg`]), sizes and
//!   operations, constructors that read like assembly (`Insn::add64(R1, 5)`,
//!   `Insn::ldx(Size::W, R1, R1, 4)`), `encode`/`decode`.
//! - [`assembler`]: [`Assembler`] with labels resolved in a final pass, map relocations and
//!   source annotations, producing a [`Program`].
//! - [`disasm`]: llvm-objdump style text and annotated listings.
//! - [`parse`]: the same text back into instructions.
//!
//! ```
//! use flowstate_asm::{Assembler, Helper, Insn, JmpOp, MapRef, Reg::*};
//!
//! let mut asm = Assembler::new();
//! let miss = asm.new_label();
//! asm.source_line(3);
//! asm.ld_map_fd(R1, MapRef(0));
//! asm.emit(Insn::call(Helper::MAP_LOOKUP_ELEM));
//! asm.jmp(JmpOp::Eq, R0, 0, miss);
//! asm.emit(Insn::ldx(flowstate_asm::Size::W, R0, R0, 0));
//! asm.bind(miss);
//! asm.emit(Insn::exit());
//! let program = asm.finish().unwrap();
//! assert_eq!(program.insns[3], Insn::jeq(R0, 0, 1));
//! assert_eq!(program.bytes().len(), 6 * 8);
//! ```
//!
//! Panic rule: nothing in this crate panics on any input. Bad jumps and labels are
//! [`AsmError`]s, bad text is a [`ParseError`], and any 8 bytes decode and disassemble
//! (as `<unknown>` when they are not an instruction).

pub mod assembler;
pub mod disasm;
mod helper;
pub mod insn;
pub mod parse;

pub use assembler::{
    Annotation, AsmError, Assembler, Label, MapRef, MapReloc, MapRelocKind, Program,
};
pub use disasm::{disassemble, format_insn, listing};
pub use helper::Helper;
pub use insn::{
    decode_all, encode_all, AluOp, AtomicOp, DecodeError, Insn, JmpOp, Operand, Reg, Size,
};
pub use parse::{assemble_text, parse_line, ParseError};
