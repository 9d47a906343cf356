//! The 8-byte kernel instruction (`struct bpf_insn`) and constructors that read like assembly.
//!
//! Opcode values are those of `include/uapi/linux/bpf.h` and `bpf_common.h`; the encoding is
//! described in the kernel's `Documentation/bpf/standardization/instruction-set.rst`.
//! An opcode byte is `class | size | mode` for memory instructions and `class | source | op` for
//! arithmetic and jumps.

/// Opcode bits, named as in the kernel headers.
pub mod opcode {
    /// Instruction classes (low 3 bits).
    pub const LD: u8 = 0x00;
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const JMP32: u8 = 0x06;
    pub const ALU64: u8 = 0x07;

    /// Operand source bit of ALU and JMP instructions.
    pub const K: u8 = 0x00;
    pub const X: u8 = 0x08;

    /// Access sizes.
    pub const W: u8 = 0x00;
    pub const H: u8 = 0x08;
    pub const B: u8 = 0x10;
    pub const DW: u8 = 0x18;

    /// Addressing modes.
    pub const IMM: u8 = 0x00;
    pub const MEM: u8 = 0x60;
    pub const ATOMIC: u8 = 0xc0;

    /// ALU operations (high 4 bits).
    pub const ADD: u8 = 0x00;
    pub const SUB: u8 = 0x10;
    pub const MUL: u8 = 0x20;
    pub const DIV: u8 = 0x30;
    pub const OR: u8 = 0x40;
    pub const AND: u8 = 0x50;
    pub const LSH: u8 = 0x60;
    pub const RSH: u8 = 0x70;
    pub const NEG: u8 = 0x80;
    pub const MOD: u8 = 0x90;
    pub const XOR: u8 = 0xa0;
    pub const MOV: u8 = 0xb0;
    pub const ARSH: u8 = 0xc0;
    pub const END: u8 = 0xd0;

    /// Byte-order conversion direction (the source bit of `END`).
    pub const TO_LE: u8 = 0x00;
    pub const TO_BE: u8 = 0x08;

    /// Jump operations (high 4 bits).
    pub const JA: u8 = 0x00;
    pub const JEQ: u8 = 0x10;
    pub const JGT: u8 = 0x20;
    pub const JGE: u8 = 0x30;
    pub const JSET: u8 = 0x40;
    pub const JNE: u8 = 0x50;
    pub const JSGT: u8 = 0x60;
    pub const JSGE: u8 = 0x70;
    pub const CALL: u8 = 0x80;
    pub const EXIT: u8 = 0x90;
    pub const JLT: u8 = 0xa0;
    pub const JLE: u8 = 0xb0;
    pub const JSLT: u8 = 0xc0;
    pub const JSLE: u8 = 0xd0;
    /// A jump the kernel decides at run time; `src` says which kind (kernel >= 6.9).
    pub const JCOND: u8 = 0xe0;
    /// `src` of a `JMP | JCOND`: `may_goto`, taken once the program's loop budget is spent.
    pub const MAY_GOTO: u8 = 0;

    /// Atomic operations, carried in the immediate of a `STX | ATOMIC` instruction.
    pub const FETCH: i32 = 0x01;
    pub const XCHG: i32 = 0xe0 | FETCH;
    pub const CMPXCHG: i32 = 0xf0 | FETCH;

    /// `src` values of a `ld_imm64` that make the kernel patch the immediate.
    pub const PSEUDO_MAP_FD: u8 = 1;
    pub const PSEUDO_MAP_VALUE: u8 = 2;
    pub const PSEUDO_FUNC: u8 = 4;
    /// `src` value of a `call` to a function of the same program (imm is pc-relative).
    pub const PSEUDO_CALL: u8 = 1;

    /// The opcode byte of the first slot of a `ld_imm64`.
    pub const LD_IMM64: u8 = LD | DW | IMM;
}

use opcode::*;

/// A register. `R10` is the read-only frame pointer; `R0` holds return values, `R1`..`R5`
/// arguments (clobbered by calls), `R6`..`R9` are preserved across calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

impl Reg {
    /// The register with this number, if it is one (0..=10).
    pub fn from_index(index: u8) -> Option<Reg> {
        const ALL: [Reg; 11] = [
            Reg::R0,
            Reg::R1,
            Reg::R2,
            Reg::R3,
            Reg::R4,
            Reg::R5,
            Reg::R6,
            Reg::R7,
            Reg::R8,
            Reg::R9,
            Reg::R10,
        ];
        ALL.get(usize::from(index)).copied()
    }

    pub fn index(self) -> u8 {
        self as u8
    }
}

/// Width of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 8 bits.
    B,
    /// 16 bits.
    H,
    /// 32 bits.
    W,
    /// 64 bits.
    DW,
}

impl Size {
    pub fn bits(self) -> u8 {
        match self {
            Size::B => B,
            Size::H => H,
            Size::W => W,
            Size::DW => DW,
        }
    }

    pub fn from_bits(code: u8) -> Size {
        match code & 0x18 {
            B => Size::B,
            H => Size::H,
            W => Size::W,
            _ => Size::DW,
        }
    }

    pub fn bytes(self) -> u32 {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }
}

/// Binary ALU operations (`dst = dst op src`); `mov` is `dst = src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    /// Unsigned division; division by zero yields 0 in the kernel.
    Div,
    /// Unsigned modulo; modulo by zero leaves dst unchanged in the kernel.
    Mod,
    Or,
    And,
    Xor,
    Lsh,
    /// Logical shift right.
    Rsh,
    /// Arithmetic (sign-extending) shift right.
    Arsh,
    Mov,
}

impl AluOp {
    pub const ALL: [AluOp; 12] = [
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Div,
        AluOp::Mod,
        AluOp::Or,
        AluOp::And,
        AluOp::Xor,
        AluOp::Lsh,
        AluOp::Rsh,
        AluOp::Arsh,
        AluOp::Mov,
    ];

    pub fn bits(self) -> u8 {
        match self {
            AluOp::Add => ADD,
            AluOp::Sub => SUB,
            AluOp::Mul => MUL,
            AluOp::Div => DIV,
            AluOp::Mod => MOD,
            AluOp::Or => OR,
            AluOp::And => AND,
            AluOp::Xor => XOR,
            AluOp::Lsh => LSH,
            AluOp::Rsh => RSH,
            AluOp::Arsh => ARSH,
            AluOp::Mov => MOV,
        }
    }

    pub fn from_bits(op: u8) -> Option<AluOp> {
        AluOp::ALL
            .into_iter()
            .find(|candidate| candidate.bits() == op)
    }

    /// The compound-assignment spelling: `+=`, `<<=`, `s>>=`, `=` for mov.
    pub fn symbol(self) -> &'static str {
        match self {
            AluOp::Add => "+=",
            AluOp::Sub => "-=",
            AluOp::Mul => "*=",
            AluOp::Div => "/=",
            AluOp::Mod => "%=",
            AluOp::Or => "|=",
            AluOp::And => "&=",
            AluOp::Xor => "^=",
            AluOp::Lsh => "<<=",
            AluOp::Rsh => ">>=",
            AluOp::Arsh => "s>>=",
            AluOp::Mov => "=",
        }
    }
}

/// Conditional jump operations. Unsigned unless named `S*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Sgt,
    Sge,
    Slt,
    Sle,
    /// Jump if `dst & src != 0`.
    Set,
}

impl JmpOp {
    pub const ALL: [JmpOp; 11] = [
        JmpOp::Eq,
        JmpOp::Ne,
        JmpOp::Gt,
        JmpOp::Ge,
        JmpOp::Lt,
        JmpOp::Le,
        JmpOp::Sgt,
        JmpOp::Sge,
        JmpOp::Slt,
        JmpOp::Sle,
        JmpOp::Set,
    ];

    pub fn bits(self) -> u8 {
        match self {
            JmpOp::Eq => JEQ,
            JmpOp::Ne => JNE,
            JmpOp::Gt => JGT,
            JmpOp::Ge => JGE,
            JmpOp::Lt => JLT,
            JmpOp::Le => JLE,
            JmpOp::Sgt => JSGT,
            JmpOp::Sge => JSGE,
            JmpOp::Slt => JSLT,
            JmpOp::Sle => JSLE,
            JmpOp::Set => JSET,
        }
    }

    pub fn from_bits(op: u8) -> Option<JmpOp> {
        JmpOp::ALL
            .into_iter()
            .find(|candidate| candidate.bits() == op)
    }

    /// The comparison as llvm-objdump prints it: `==`, `s<`, `&`.
    pub fn symbol(self) -> &'static str {
        match self {
            JmpOp::Eq => "==",
            JmpOp::Ne => "!=",
            JmpOp::Gt => ">",
            JmpOp::Ge => ">=",
            JmpOp::Lt => "<",
            JmpOp::Le => "<=",
            JmpOp::Sgt => "s>",
            JmpOp::Sge => "s>=",
            JmpOp::Slt => "s<",
            JmpOp::Sle => "s<=",
            JmpOp::Set => "&",
        }
    }

    /// The jump taken exactly when this one is not (`Set` has none).
    pub fn negate(self) -> Option<JmpOp> {
        Some(match self {
            JmpOp::Eq => JmpOp::Ne,
            JmpOp::Ne => JmpOp::Eq,
            JmpOp::Gt => JmpOp::Le,
            JmpOp::Ge => JmpOp::Lt,
            JmpOp::Lt => JmpOp::Ge,
            JmpOp::Le => JmpOp::Gt,
            JmpOp::Sgt => JmpOp::Sle,
            JmpOp::Sge => JmpOp::Slt,
            JmpOp::Slt => JmpOp::Sge,
            JmpOp::Sle => JmpOp::Sgt,
            JmpOp::Set => return None,
        })
    }
}

/// Atomic read-modify-write operations (`STX | ATOMIC`, operation in the immediate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    /// `lock *(dst + off) += src`.
    Add,
    Or,
    And,
    Xor,
    /// `src = atomic_fetch_add(dst + off, src)`: adds and returns the old value in `src`.
    FetchAdd,
    FetchOr,
    FetchAnd,
    FetchXor,
    /// `src = xchg(dst + off, src)`.
    Xchg,
    /// `r0 = cmpxchg(dst + off, r0, src)`: stores `src` if the memory equals `r0`; the old value
    /// lands in `r0` either way.
    CmpXchg,
}

impl AtomicOp {
    pub const ALL: [AtomicOp; 10] = [
        AtomicOp::Add,
        AtomicOp::Or,
        AtomicOp::And,
        AtomicOp::Xor,
        AtomicOp::FetchAdd,
        AtomicOp::FetchOr,
        AtomicOp::FetchAnd,
        AtomicOp::FetchXor,
        AtomicOp::Xchg,
        AtomicOp::CmpXchg,
    ];

    pub fn imm(self) -> i32 {
        match self {
            AtomicOp::Add => i32::from(ADD),
            AtomicOp::Or => i32::from(OR),
            AtomicOp::And => i32::from(AND),
            AtomicOp::Xor => i32::from(XOR),
            AtomicOp::FetchAdd => i32::from(ADD) | FETCH,
            AtomicOp::FetchOr => i32::from(OR) | FETCH,
            AtomicOp::FetchAnd => i32::from(AND) | FETCH,
            AtomicOp::FetchXor => i32::from(XOR) | FETCH,
            AtomicOp::Xchg => XCHG,
            AtomicOp::CmpXchg => CMPXCHG,
        }
    }

    pub fn from_imm(imm: i32) -> Option<AtomicOp> {
        AtomicOp::ALL
            .into_iter()
            .find(|candidate| candidate.imm() == imm)
    }
}

/// The second operand of an ALU or jump instruction: a register or a 32-bit immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    Reg(Reg),
    Imm(i32),
}

impl From<Reg> for Operand {
    fn from(reg: Reg) -> Operand {
        Operand::Reg(reg)
    }
}

impl From<i32> for Operand {
    fn from(imm: i32) -> Operand {
        Operand::Imm(imm)
    }
}

impl Operand {
    /// (source bit, src register field, immediate).
    fn parts(self) -> (u8, u8, i32) {
        match self {
            Operand::Reg(reg) => (X, reg.index(), 0),
            Operand::Imm(imm) => (K, 0, imm),
        }
    }
}

/// One instruction slot, exactly the kernel's `struct bpf_insn`.
///
/// Fields are raw so that any 8 bytes decode; constructors only build valid instructions.
/// A `ld_imm64` occupies two slots: see [`Insn::ld_imm64`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Insn {
    pub code: u8,
    /// Destination register number (4 bits).
    pub dst: u8,
    /// Source register number (4 bits).
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

macro_rules! alu_shorthands {
    ($($op:ident: $name64:ident, $name32:ident;)*) => {$(
        #[doc = concat!("`dst ", stringify!($op), "= src`, 64-bit.")]
        pub fn $name64(dst: Reg, src: impl Into<Operand>) -> Insn {
            Insn::alu64(AluOp::$op, dst, src)
        }
        #[doc = concat!("`dst ", stringify!($op), "= src`, 32-bit (upper half of dst zeroed).")]
        pub fn $name32(dst: Reg, src: impl Into<Operand>) -> Insn {
            Insn::alu32(AluOp::$op, dst, src)
        }
    )*};
}

macro_rules! jmp_shorthands {
    ($($op:ident: $name64:ident, $name32:ident;)*) => {$(
        #[doc = concat!("Jump by `off` slots if `dst ", stringify!($op), " src`, 64-bit compare.")]
        pub fn $name64(dst: Reg, src: impl Into<Operand>, off: i16) -> Insn {
            Insn::jmp(JmpOp::$op, dst, src, off)
        }
        #[doc = concat!("Jump by `off` slots if `dst ", stringify!($op), " src`, 32-bit compare.")]
        pub fn $name32(dst: Reg, src: impl Into<Operand>, off: i16) -> Insn {
            Insn::jmp32(JmpOp::$op, dst, src, off)
        }
    )*};
}

impl Insn {
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst: dst & 0x0f,
            src: src & 0x0f,
            off,
            imm,
        }
    }

    /// The kernel's little-endian byte layout (x86_64, arm64): code, `src << 4 | dst`, off, imm.
    pub fn encode(&self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }

    /// Inverse of [`Insn::encode`]; every byte pattern decodes.
    pub fn decode(bytes: [u8; 8]) -> Insn {
        Insn {
            code: bytes[0],
            dst: bytes[1] & 0x0f,
            src: bytes[1] >> 4,
            off: i16::from_le_bytes([bytes[2], bytes[3]]),
            imm: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    pub fn class(&self) -> u8 {
        self.code & 0x07
    }

    pub fn dst_reg(&self) -> Option<Reg> {
        Reg::from_index(self.dst)
    }

    pub fn src_reg(&self) -> Option<Reg> {
        Reg::from_index(self.src)
    }

    /// Whether this slot starts a two-slot `ld_imm64`.
    pub fn is_wide(&self) -> bool {
        self.code == LD_IMM64
    }

    // ---- ALU ----

    /// `dst op= src` on 64 bits.
    pub fn alu64(op: AluOp, dst: Reg, src: impl Into<Operand>) -> Insn {
        let (source, src, imm) = src.into().parts();
        Insn::new(ALU64 | source | op.bits(), dst.index(), src, 0, imm)
    }

    /// `dst op= src` on the low 32 bits; the result is zero-extended into dst.
    pub fn alu32(op: AluOp, dst: Reg, src: impl Into<Operand>) -> Insn {
        let (source, src, imm) = src.into().parts();
        Insn::new(ALU | source | op.bits(), dst.index(), src, 0, imm)
    }

    alu_shorthands! {
        Add: add64, add32;
        Sub: sub64, sub32;
        Mul: mul64, mul32;
        Div: div64, div32;
        Mod: mod64, mod32;
        Or: or64, or32;
        And: and64, and32;
        Xor: xor64, xor32;
        Lsh: lsh64, lsh32;
        Rsh: rsh64, rsh32;
        Arsh: arsh64, arsh32;
        Mov: mov64, mov32;
    }

    /// `dst = -dst`, 64-bit.
    pub fn neg64(dst: Reg) -> Insn {
        Insn::new(ALU64 | K | NEG, dst.index(), 0, 0, 0)
    }

    /// `dst = -dst`, 32-bit.
    pub fn neg32(dst: Reg) -> Insn {
        Insn::new(ALU | K | NEG, dst.index(), 0, 0, 0)
    }

    fn endian(direction: u8, dst: Reg, bits: i32) -> Insn {
        Insn::new(ALU | direction | END, dst.index(), 0, 0, bits)
    }

    /// `dst = htobe16(dst)`: on a little-endian host, swaps the low 2 bytes and zeroes the rest.
    /// The conversion network <-> host order for 16-bit fields.
    pub fn be16(dst: Reg) -> Insn {
        Insn::endian(TO_BE, dst, 16)
    }
    pub fn be32(dst: Reg) -> Insn {
        Insn::endian(TO_BE, dst, 32)
    }
    pub fn be64(dst: Reg) -> Insn {
        Insn::endian(TO_BE, dst, 64)
    }
    /// `dst = htole16(dst)`: on a little-endian host, only truncates to 16 bits.
    pub fn le16(dst: Reg) -> Insn {
        Insn::endian(TO_LE, dst, 16)
    }
    pub fn le32(dst: Reg) -> Insn {
        Insn::endian(TO_LE, dst, 32)
    }
    pub fn le64(dst: Reg) -> Insn {
        Insn::endian(TO_LE, dst, 64)
    }

    // ---- memory ----

    /// `dst = *(size *)(src + off)`, zero-extended.
    pub fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(LDX | size.bits() | MEM, dst.index(), src.index(), off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn stx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(STX | size.bits() | MEM, dst.index(), src.index(), off, 0)
    }

    /// `*(size *)(dst + off) = imm` (imm truncated to size; sign-extended for DW).
    pub fn st(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
        Insn::new(ST | size.bits() | MEM, dst.index(), 0, off, imm)
    }

    /// Atomic operation on the 64-bit word at `dst + off` (see [`AtomicOp`] for who gets what).
    pub fn atomic64(op: AtomicOp, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(STX | DW | ATOMIC, dst.index(), src.index(), off, op.imm())
    }

    /// Atomic operation on the 32-bit word at `dst + off`.
    pub fn atomic32(op: AtomicOp, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(STX | W | ATOMIC, dst.index(), src.index(), off, op.imm())
    }

    /// `dst = value`, any 64-bit constant; two slots.
    pub fn ld_imm64(dst: Reg, value: u64) -> [Insn; 2] {
        Insn::ld_pseudo(dst, 0, value as u32 as i32, (value >> 32) as u32 as i32)
    }

    /// A `ld_imm64` whose `src` tells the kernel how to patch it (`PSEUDO_MAP_FD`: `imm` is a map
    /// fd; `PSEUDO_MAP_VALUE`: `imm` a map fd and `next_imm` an offset into its value;
    /// `PSEUDO_FUNC`: `imm` a pc-relative slot offset).
    pub fn ld_pseudo(dst: Reg, src: u8, imm: i32, next_imm: i32) -> [Insn; 2] {
        [
            Insn::new(LD_IMM64, dst.index(), src, 0, imm),
            Insn::new(0, 0, 0, 0, next_imm),
        ]
    }

    // ---- control flow ----

    /// Call a kernel helper; arguments in R1..R5, result in R0, R1..R5 clobbered.
    pub fn call(helper: crate::Helper) -> Insn {
        Insn::new(JMP | CALL, 0, 0, 0, helper.0 as i32)
    }

    /// Call a function of the same program, `off` slots after the next instruction.
    pub fn call_local(off: i32) -> Insn {
        Insn::new(JMP | CALL, 0, PSEUDO_CALL, 0, off)
    }

    /// Return R0.
    pub fn exit() -> Insn {
        Insn::new(JMP | EXIT, 0, 0, 0, 0)
    }

    /// Jump by `off` slots (relative to the next slot), unconditionally.
    pub fn ja(off: i16) -> Insn {
        Insn::new(JMP | JA, 0, 0, off, 0)
    }

    /// `gotol`: jump by `off` slots, unconditionally, with a 32-bit offset (`JMP32 | JA`, the
    /// offset in `imm`; cpu v4, kernel >= 6.6).
    pub fn gotol(off: i32) -> Insn {
        Insn::new(JMP32 | JA, 0, 0, 0, off)
    }

    /// `may_goto`: jump by `off` slots once this run of the program has spent its loop budget,
    /// fall through before (`JMP | JCOND`, `src = MAY_GOTO`; kernel >= 6.9). The verifier
    /// accepts a loop through it without walking every iteration, provided the loop's state
    /// converges. The budget is the kernel's: `BPF_MAX_LOOPS` (8M) iterations, or, where the JIT
    /// supports timed `may_goto` (x86-64 since 6.15), a quarter second of looping per run, shared
    /// by every `may_goto` of the run.
    pub fn may_goto(off: i16) -> Insn {
        Insn::new(JMP | JCOND, 0, MAY_GOTO, off, 0)
    }

    /// Jump by `off` slots if `dst op src`, comparing 64 bits.
    pub fn jmp(op: JmpOp, dst: Reg, src: impl Into<Operand>, off: i16) -> Insn {
        let (source, src, imm) = src.into().parts();
        Insn::new(JMP | source | op.bits(), dst.index(), src, off, imm)
    }

    /// Jump by `off` slots if `dst op src`, comparing the low 32 bits.
    pub fn jmp32(op: JmpOp, dst: Reg, src: impl Into<Operand>, off: i16) -> Insn {
        let (source, src, imm) = src.into().parts();
        Insn::new(JMP32 | source | op.bits(), dst.index(), src, off, imm)
    }

    jmp_shorthands! {
        Eq: jeq, jeq32;
        Ne: jne, jne32;
        Gt: jgt, jgt32;
        Ge: jge, jge32;
        Lt: jlt, jlt32;
        Le: jle, jle32;
        Sgt: jsgt, jsgt32;
        Sge: jsge, jsge32;
        Slt: jslt, jslt32;
        Sle: jsle, jsle32;
        Set: jset, jset32;
    }

    /// Whether this is a jump whose `off` field is a branch offset (`ja`, conditionals and
    /// `may_goto`; not `call`/`exit`, nor `gotol`, whose offset is in `imm`).
    pub fn is_jump(&self) -> bool {
        let class = self.class();
        let op = self.code & 0xf0;
        (class == JMP || class == JMP32) && op != CALL && op != EXIT && !self.is_gotol()
    }

    /// Whether this is a `gotol` (offset in `imm`).
    pub fn is_gotol(&self) -> bool {
        self.code == JMP32 | JA
    }

    /// Whether this is a `may_goto`.
    pub fn is_may_goto(&self) -> bool {
        self.code == JMP | JCOND && self.src == MAY_GOTO
    }

    /// The branch offset of a jump, in slots after the next one, from `off` or (`gotol`) `imm`.
    pub fn jump_offset(&self) -> Option<i64> {
        if self.is_gotol() {
            Some(self.imm.into())
        } else if self.is_jump() {
            Some(self.off.into())
        } else {
            None
        }
    }

    /// The register this instruction writes, if any (used to reject writes to R10).
    pub fn written_reg(&self) -> Option<u8> {
        match self.class() {
            ALU | ALU64 | LDX => Some(self.dst),
            LD if self.is_wide() => Some(self.dst),
            STX if self.code & 0xe0 == ATOMIC => match AtomicOp::from_imm(self.imm) {
                Some(AtomicOp::CmpXchg) => Some(0),
                Some(op) if op.imm() & FETCH != 0 => Some(self.src),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Why a byte string is not a sequence of instructions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes is not a whole number of 8-byte instructions")]
pub struct DecodeError {
    pub len: usize,
}

/// Decode a byte string (little-endian) into instruction slots.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Insn>, DecodeError> {
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(DecodeError { len: bytes.len() });
    }
    Ok(chunks
        .map(|chunk| {
            let mut slot = [0u8; 8];
            slot.copy_from_slice(chunk);
            Insn::decode(slot)
        })
        .collect())
}

/// Encode instruction slots into the byte string the kernel loads.
pub fn encode_all(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(Insn::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::Reg::*;
    use super::*;
    use crate::Helper;

    fn bytes(insn: Insn) -> [u8; 8] {
        insn.encode()
    }

    // Reference bytes: llvm-mc 14 (`-triple bpfel -mcpu=v3 -show-encoding`), or, where LLVM 14
    // lacks the syntax, the kernel's instruction-set.rst opcode tables.

    #[test]
    fn mov_and_exit() {
        assert_eq!(bytes(Insn::mov64(R0, 0)), [0xb7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(Insn::mov64(R1, -1)),
            [0xb7, 0x01, 0, 0, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(bytes(Insn::mov32(R1, 7)), [0xb4, 0x01, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes(Insn::mov64(R1, R2)), [0xbf, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::mov32(R1, R2)), [0xbc, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::exit()), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn alu_reg_and_imm() {
        assert_eq!(bytes(Insn::add64(R1, R2)), [0x0f, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::add64(R1, 5)), [0x07, 0x01, 0, 0, 5, 0, 0, 0]);
        assert_eq!(bytes(Insn::sub32(R1, R2)), [0x1c, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::mul64(R1, 3)), [0x27, 0x01, 0, 0, 3, 0, 0, 0]);
        assert_eq!(bytes(Insn::div64(R1, R2)), [0x3f, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::mod32(R1, 7)), [0x94, 0x01, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes(Insn::or64(R1, R2)), [0x4f, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(Insn::and64(R1, 255)),
            [0x57, 0x01, 0, 0, 0xff, 0, 0, 0]
        );
        assert_eq!(bytes(Insn::xor64(R1, R2)), [0xaf, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::lsh64(R1, 3)), [0x67, 0x01, 0, 0, 3, 0, 0, 0]);
        assert_eq!(bytes(Insn::rsh64(R1, R2)), [0x7f, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::arsh64(R1, 4)), [0xc7, 0x01, 0, 0, 4, 0, 0, 0]);
        assert_eq!(bytes(Insn::arsh32(R1, R2)), [0xcc, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::neg64(R1)), [0x87, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::neg32(R1)), [0x84, 0x01, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn endian_conversions() {
        assert_eq!(bytes(Insn::be16(R1)), [0xdc, 0x01, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes(Insn::be32(R1)), [0xdc, 0x01, 0, 0, 32, 0, 0, 0]);
        assert_eq!(bytes(Insn::be64(R1)), [0xdc, 0x01, 0, 0, 64, 0, 0, 0]);
        assert_eq!(bytes(Insn::le16(R1)), [0xd4, 0x01, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes(Insn::le32(R1)), [0xd4, 0x01, 0, 0, 32, 0, 0, 0]);
        assert_eq!(bytes(Insn::le64(R1)), [0xd4, 0x01, 0, 0, 64, 0, 0, 0]);
    }

    #[test]
    fn loads_and_stores() {
        assert_eq!(
            bytes(Insn::ldx(Size::W, R1, R1, 4)),
            [0x61, 0x11, 4, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::ldx(Size::B, R1, R2, 1)),
            [0x71, 0x21, 1, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::ldx(Size::H, R1, R2, 2)),
            [0x69, 0x21, 2, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::ldx(Size::DW, R1, R10, -8)),
            [0x79, 0xa1, 0xf8, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::stx(Size::B, R10, R1, -1)),
            [0x73, 0x1a, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::stx(Size::DW, R10, R1, -8)),
            [0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::st(Size::W, R10, -4, 5)),
            [0x62, 0x0a, 0xfc, 0xff, 5, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::st(Size::DW, R10, -8, -1)),
            [0x7a, 0x0a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn atomics() {
        assert_eq!(
            bytes(Insn::atomic64(AtomicOp::Add, R1, R2, 8)),
            [0xdb, 0x21, 8, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::atomic32(AtomicOp::Add, R1, R2, 0)),
            [0xc3, 0x21, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::atomic64(AtomicOp::FetchAdd, R1, R2, 0)),
            [0xdb, 0x21, 0, 0, 0x01, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::atomic64(AtomicOp::Or, R1, R2, 8)),
            [0xdb, 0x21, 8, 0, 0x40, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::atomic64(AtomicOp::Xchg, R1, R2, 0)),
            [0xdb, 0x21, 0, 0, 0xe1, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::atomic64(AtomicOp::CmpXchg, R1, R2, 0)),
            [0xdb, 0x21, 0, 0, 0xf1, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::atomic32(AtomicOp::CmpXchg, R1, R2, 0)),
            [0xc3, 0x21, 0, 0, 0xf1, 0, 0, 0]
        );
    }

    #[test]
    fn ld_imm64_splits_value_over_two_slots() {
        let [low, high] = Insn::ld_imm64(R1, 0x1122_3344_5566_7788);
        assert_eq!(low.encode(), [0x18, 0x01, 0, 0, 0x88, 0x77, 0x66, 0x55]);
        assert_eq!(high.encode(), [0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]);
        let [low, high] = Insn::ld_imm64(R0, 1);
        assert_eq!(low.encode(), [0x18, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(high.encode(), [0; 8]);
    }

    #[test]
    fn calls_and_jumps() {
        assert_eq!(
            bytes(Insn::call(Helper::MAP_LOOKUP_ELEM)),
            [0x85, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::call(Helper::LOOP)),
            [0x85, 0, 0, 0, 0xb5, 0, 0, 0]
        );
        assert_eq!(bytes(Insn::call_local(2)), [0x85, 0x10, 0, 0, 2, 0, 0, 0]);
        assert_eq!(bytes(Insn::ja(3)), [0x05, 0, 3, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::jeq(R1, R2, 1)), [0x1d, 0x21, 1, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(Insn::jne(R1, 5, -2)),
            [0x55, 0x01, 0xfe, 0xff, 5, 0, 0, 0]
        );
        assert_eq!(bytes(Insn::jgt(R1, R2, 0)), [0x2d, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::jge(R1, 5, 0)), [0x35, 0x01, 0, 0, 5, 0, 0, 0]);
        assert_eq!(bytes(Insn::jlt(R1, R2, 0)), [0xad, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::jle(R1, 5, 0)), [0xb5, 0x01, 0, 0, 5, 0, 0, 0]);
        assert_eq!(bytes(Insn::jsgt(R1, R2, 0)), [0x6d, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::jsge(R1, 5, 0)), [0x75, 0x01, 0, 0, 5, 0, 0, 0]);
        assert_eq!(bytes(Insn::jslt(R1, R2, 0)), [0xcd, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(Insn::jsle(R1, -5, 0)),
            [0xd5, 0x01, 0, 0, 0xfb, 0xff, 0xff, 0xff]
        );
        assert_eq!(bytes(Insn::jset(R1, R2, 0)), [0x4d, 0x21, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::jset(R1, 8, 0)), [0x45, 0x01, 0, 0, 8, 0, 0, 0]);
        assert_eq!(
            bytes(Insn::jeq32(R1, R2, 1)),
            [0x1e, 0x21, 1, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::jne32(R1, 5, -2)),
            [0x56, 0x01, 0xfe, 0xff, 5, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::jslt32(R1, R2, 0)),
            [0xce, 0x21, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::jset32(R1, 4, 0)),
            [0x46, 0x01, 0, 0, 4, 0, 0, 0]
        );
    }

    // `may_goto` is `BPF_RAW_INSN(BPF_JMP | BPF_JCOND, 0, BPF_MAY_GOTO, off, 0)` (kernel
    // selftests, verifier.c `is_may_goto_insn`); `gotol` is `BPF_JMP32 | BPF_JA` with the offset in
    // `imm` (instruction-set.rst).
    #[test]
    fn long_and_budgeted_jumps() {
        assert_eq!(bytes(Insn::may_goto(3)), [0xe5, 0, 3, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(Insn::may_goto(-4)), [0xe5, 0, 0xfc, 0xff, 0, 0, 0, 0]);
        assert_eq!(
            bytes(Insn::gotol(0x12345)),
            [0x06, 0, 0, 0, 0x45, 0x23, 0x01, 0]
        );
        assert_eq!(
            bytes(Insn::gotol(-2)),
            [0x06, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn jump_offsets_come_from_off_or_imm() {
        assert_eq!(Insn::ja(-3).jump_offset(), Some(-3));
        assert_eq!(Insn::jeq(R1, 0, 7).jump_offset(), Some(7));
        assert_eq!(Insn::may_goto(-2).jump_offset(), Some(-2));
        assert_eq!(Insn::gotol(70_000).jump_offset(), Some(70_000));
        assert_eq!(Insn::call(Helper::MAP_LOOKUP_ELEM).jump_offset(), None);
        assert_eq!(Insn::exit().jump_offset(), None);
        assert_eq!(Insn::mov64(R1, 1).jump_offset(), None);
        assert!(Insn::may_goto(1).is_jump() && Insn::may_goto(1).is_may_goto());
        assert!(!Insn::gotol(1).is_jump() && Insn::gotol(1).is_gotol());
        assert!(!Insn::ja(1).is_may_goto() && !Insn::ja(1).is_gotol());
    }

    #[test]
    fn decode_inverts_encode_for_every_byte_pattern_tried() {
        for code in 0..=255u8 {
            for regs in [0x00u8, 0x21, 0xa1, 0xff] {
                let raw = [code, regs, 0x34, 0x82, 0x01, 0x80, 0x00, 0xff];
                assert_eq!(Insn::decode(raw).encode(), raw);
            }
        }
    }

    #[test]
    fn decode_all_rejects_partial_slots() {
        assert_eq!(decode_all(&[0; 12]), Err(DecodeError { len: 12 }));
        let insns = [Insn::mov64(R0, 2), Insn::exit()];
        assert_eq!(decode_all(&encode_all(&insns)), Ok(insns.to_vec()));
    }

    #[test]
    fn written_reg_sees_fetching_atomics() {
        assert_eq!(Insn::mov64(R10, 0).written_reg(), Some(10));
        assert_eq!(Insn::stx(Size::DW, R10, R1, -8).written_reg(), None);
        assert_eq!(
            Insn::atomic64(AtomicOp::Add, R1, R10, 0).written_reg(),
            None
        );
        assert_eq!(
            Insn::atomic64(AtomicOp::FetchAdd, R1, R10, 0).written_reg(),
            Some(10)
        );
        assert_eq!(
            Insn::atomic64(AtomicOp::CmpXchg, R1, R2, 0).written_reg(),
            Some(0)
        );
    }

    #[test]
    fn negated_jumps_are_complements() {
        for op in JmpOp::ALL {
            if let Some(negated) = op.negate() {
                assert_eq!(negated.negate(), Some(op));
                assert_ne!(negated, op);
            }
        }
        assert_eq!(JmpOp::Set.negate(), None);
    }

    #[test]
    fn op_tables_round_trip() {
        for op in AluOp::ALL {
            assert_eq!(AluOp::from_bits(op.bits()), Some(op));
        }
        for op in JmpOp::ALL {
            assert_eq!(JmpOp::from_bits(op.bits()), Some(op));
        }
        for op in AtomicOp::ALL {
            assert_eq!(AtomicOp::from_imm(op.imm()), Some(op));
        }
        for index in 0..=10 {
            assert_eq!(Reg::from_index(index).map(Reg::index), Some(index));
        }
        assert_eq!(Reg::from_index(11), None);
    }
}
