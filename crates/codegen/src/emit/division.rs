//! Signed division and modulo, with or without the cpu v4 instructions.
//!
//! `s/=` and `s%=` came with Linux 6.6. Without them the magnitudes are
//! divided unsigned and the sign put back: the quotient is negative when
//! the signs differ, the remainder takes the dividend's sign. That is
//! truncating division as the interpreter does it (`wrapping_div`,
//! `wrapping_rem`): `i64::MIN`'s magnitude, negated in place, is 2^63
//! read unsigned, so `i64::MIN / -1` wraps to `i64::MIN` and
//! `i64::MIN % -1` is 0. Divisors are non-zero constants (the checker
//! says so). The sign is kept in which branch runs, not in a register:
//! the evaluator may have none to spare.

use super::*;

impl Emitter<'_> {
    /// `dst = dst / divisor` (or `%` for [`BinOp::Mod`]), signed and
    /// truncating. May clobber a register `divisor`, nothing else.
    pub(super) fn divide(&mut self, op: BinOp, dst: Reg, divisor: Operand) {
        let modulo = op == BinOp::Mod;
        if self.target.features.signed_division {
            let insn = if modulo {
                Insn::mod64(dst, divisor)
            } else {
                Insn::div64(dst, divisor)
            };
            self.emit(signed(insn));
            return;
        }
        let negative = self.label();
        let done = self.label();
        self.jmp(JmpOp::Slt, dst, 0, negative);
        self.divide_magnitudes(modulo, dst, divisor, false);
        self.goto(done);
        self.asm.bind(negative);
        self.emit(Insn::neg64(dst));
        self.divide_magnitudes(modulo, dst, divisor, true);
        self.asm.bind(done);
    }

    /// `dst` (a magnitude, read unsigned) divided by `divisor`'s
    /// magnitude, then negated where the signed result is negative
    /// (`dividend_negative`: the dividend was).
    fn divide_magnitudes(
        &mut self,
        modulo: bool,
        dst: Reg,
        divisor: Operand,
        dividend_negative: bool,
    ) {
        let unsigned = |magnitude: Operand| {
            if modulo {
                Insn::mod64(dst, magnitude)
            } else {
                Insn::div64(dst, magnitude)
            }
        };
        match divisor {
            Operand::Imm(c) => {
                if c == i32::MIN {
                    // 2^31 does not fit an immediate: a shift or a mask.
                    self.emit(if modulo {
                        Insn::and64(dst, i32::MAX)
                    } else {
                        Insn::rsh64(dst, 31)
                    });
                } else {
                    self.emit(unsigned(Operand::Imm(c.abs())));
                }
                let negate = if modulo {
                    dividend_negative
                } else {
                    dividend_negative != (c < 0)
                };
                if negate {
                    self.emit(Insn::neg64(dst));
                }
            }
            Operand::Reg(src) => {
                if modulo {
                    self.emit(Insn::jsge(src, 0, 1));
                    self.emit(Insn::neg64(src));
                    self.emit(unsigned(Operand::Reg(src)));
                    if dividend_negative {
                        self.emit(Insn::neg64(dst));
                    }
                    return;
                }
                // Quotient: negative when exactly one sign is.
                let divisor_negative = self.label();
                let done = self.label();
                self.jmp(JmpOp::Slt, src, 0, divisor_negative);
                self.emit(unsigned(Operand::Reg(src)));
                if dividend_negative {
                    self.emit(Insn::neg64(dst));
                }
                self.goto(done);
                self.asm.bind(divisor_negative);
                self.emit(Insn::neg64(src));
                self.emit(unsigned(Operand::Reg(src)));
                if !dividend_negative {
                    self.emit(Insn::neg64(dst));
                }
                self.asm.bind(done);
            }
        }
    }
}
