//! Text -> instructions, for the syntax [`crate::disasm`] prints (llvm-objdump's, plus this
//! crate's spelling of pseudo loads and local calls). Numbers are decimal or `0x` hex.
//!
//! One instruction per line. Ignored: empty lines, `;` comments, a leading `slot:` as a listing
//! prints it, and a trailing `<target>` after a jump.

use crate::insn::{opcode, AluOp, AtomicOp, Insn, JmpOp, Operand, Reg, Size};
use crate::Helper;

/// A line that is not an instruction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Assemble a whole text, one instruction per line, into slots.
pub fn assemble_text(source: &str) -> Result<Vec<Insn>, ParseError> {
    let mut insns = Vec::new();
    for (index, line) in source.lines().enumerate() {
        let parsed = parse_line(line).map_err(|message| ParseError {
            line: index + 1,
            message,
        })?;
        insns.extend(parsed);
    }
    Ok(insns)
}

/// One instruction (one or two slots); empty for a blank or comment-only line.
pub fn parse_line(line: &str) -> Result<Vec<Insn>, String> {
    let mut text = line;
    if let Some(comment) = text.find(';') {
        text = &text[..comment];
    }
    let mut text = text.trim();
    if let Some((slot, rest)) = text.split_once(':') {
        if !slot.is_empty() && slot.trim().bytes().all(|byte| byte.is_ascii_digit()) {
            text = rest.trim();
        }
    }
    if text.ends_with('>') {
        if let Some(start) = text.rfind(" <") {
            text = text[..start].trim_end();
        }
    }
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, pos: 0 };
    let insns = parser.statement()?;
    match parser.peek() {
        None => Ok(insns),
        Some(extra) => Err(format!("unexpected `{extra}` after the instruction")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Number(u64),
    Punct(&'static str),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Word(word) => f.write_str(word),
            Token::Number(number) => write!(f, "{number}"),
            Token::Punct(punct) => f.write_str(punct),
        }
    }
}

/// Longest first, so that `s>>=` wins over `s>` and `<<=` over `<`.
const PUNCTS: [&str; 31] = [
    "s>>=", "<<=", ">>=", "s>=", "s<=", "==", "!=", ">=", "<=", "+=", "-=", "*=", "/=", "%=", "|=",
    "&=", "^=", "s>", "s<", ">", "<", "=", "+", "-", "*", "(", ")", ",", "&", "|", "^",
];

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    while let Some(first) = rest.chars().next() {
        if first.is_whitespace() {
            rest = &rest[first.len_utf8()..];
        } else if let Some(punct) = PUNCTS.iter().find(|punct| rest.starts_with(**punct)) {
            tokens.push(Token::Punct(punct));
            rest = &rest[punct.len()..];
        } else if first.is_ascii_digit() {
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            let literal = &rest[..end];
            let value = match literal.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => literal.parse(),
            }
            .map_err(|_| format!("bad number `{literal}`"))?;
            tokens.push(Token::Number(value));
            rest = &rest[end..];
        } else if first.is_ascii_alphabetic() || first == '_' {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            tokens.push(Token::Word(rest[..end].to_string()));
            rest = &rest[end..];
        } else {
            return Err(format!("unexpected character `{first}`"));
        }
    }
    Ok(tokens)
}

/// A register as written: `r1` (64-bit view) or `w1` (32-bit view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RegRef {
    reg: Reg,
    wide: bool,
}

fn register(word: &str) -> Option<RegRef> {
    let (wide, digits) = match word.split_at_checked(1)? {
        ("r", digits) => (true, digits),
        ("w", digits) => (false, digits),
        _ => return None,
    };
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let reg = Reg::from_index(digits.parse().ok()?)?;
    Some(RegRef { reg, wide })
}

fn size_named(word: &str) -> Option<Size> {
    Some(match word {
        "u8" => Size::B,
        "u16" => Size::H,
        "u32" => Size::W,
        "u64" => Size::DW,
        _ => return None,
    })
}

fn alu_op(punct: &str) -> Option<AluOp> {
    AluOp::ALL
        .into_iter()
        .find(|op| op.symbol() == punct && *op != AluOp::Mov)
}

fn jmp_op(punct: &str) -> Option<JmpOp> {
    JmpOp::ALL.into_iter().find(|op| op.symbol() == punct)
}

fn narrow<T: TryFrom<i64>>(value: i64, what: &str) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("{what} {value} out of range"))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Result<Token, String> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| "unexpected end of line".to_string())?;
        self.pos += 1;
        Ok(token)
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(token) => format!("`{token}`"),
            None => "end of line".to_string(),
        }
    }

    fn eat_punct(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(p)) if *p == punct) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, punct: &str) -> Result<(), String> {
        if self.eat_punct(punct) {
            Ok(())
        } else {
            Err(format!("expected `{punct}`, found {}", self.found()))
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<(), String> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(format!("expected `{word}`, found {}", self.found()))
        }
    }

    fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Token::Word(word) => Ok(word),
            other => Err(format!("expected a name, found `{other}`")),
        }
    }

    fn peek_reg(&self) -> Option<RegRef> {
        match self.peek() {
            Some(Token::Word(word)) => register(word),
            _ => None,
        }
    }

    fn reg(&mut self) -> Result<RegRef, String> {
        let found = self.found();
        let reg = self
            .peek_reg()
            .ok_or_else(|| format!("expected a register, found {found}"))?;
        self.pos += 1;
        Ok(reg)
    }

    /// A register of the given view (`r` when `wide`, else `w`).
    fn reg_of(&mut self, wide: bool) -> Result<Reg, String> {
        let reg = self.reg()?;
        if reg.wide != wide {
            let want = if wide { 'r' } else { 'w' };
            return Err(format!("expected a {want} register"));
        }
        Ok(reg.reg)
    }

    /// `0x5`, `-0x5`, `+0x5`.
    fn signed(&mut self) -> Result<i64, String> {
        let negative = if self.eat_punct("-") {
            true
        } else {
            self.eat_punct("+");
            false
        };
        match self.next()? {
            Token::Number(value) => {
                let value = i128::from(value);
                let value = if negative { -value } else { value };
                i64::try_from(value).map_err(|_| format!("number {value} out of range"))
            }
            other => Err(format!("expected a number, found `{other}`")),
        }
    }

    /// `rN + off` / `rN - off`, as inside an address.
    fn base_offset(&mut self) -> Result<(Reg, i16), String> {
        let base = self.reg_of(true)?;
        let sign = if self.eat_punct("-") {
            -1
        } else {
            self.expect_punct("+")?;
            1
        };
        let magnitude = self.signed()?;
        Ok((base, narrow(sign * magnitude, "offset")?))
    }

    /// `*(u32 *)(r1 + 0x4)` after the leading `*`.
    fn memory(&mut self) -> Result<(Size, Reg, i16), String> {
        self.expect_punct("(")?;
        let size = self.size()?;
        self.expect_punct("*")?;
        self.expect_punct(")")?;
        self.expect_punct("(")?;
        let (base, off) = self.base_offset()?;
        self.expect_punct(")")?;
        Ok((size, base, off))
    }

    fn size(&mut self) -> Result<Size, String> {
        let word = self.word()?;
        size_named(&word).ok_or_else(|| format!("expected u8, u16, u32 or u64, found `{word}`"))
    }

    fn operand(&mut self, wide: bool) -> Result<Operand, String> {
        if self.peek_reg().is_some() {
            Ok(Operand::Reg(self.reg_of(wide)?))
        } else {
            Ok(Operand::Imm(narrow(self.signed()?, "immediate")?))
        }
    }

    fn statement(&mut self) -> Result<Vec<Insn>, String> {
        if self.eat_word("exit") {
            return Ok(vec![Insn::exit()]);
        }
        if self.eat_word("call") {
            if self.eat_word("pc") {
                return Ok(vec![Insn::call_local(narrow(self.signed()?, "offset")?)]);
            }
            let id = self.signed()?;
            return Ok(vec![Insn::call(Helper(narrow(id, "helper id")?))]);
        }
        if self.eat_word("goto") {
            return Ok(vec![Insn::ja(narrow(self.signed()?, "offset")?)]);
        }
        if self.eat_word("gotol") {
            return Ok(vec![Insn::gotol(narrow(self.signed()?, "offset")?)]);
        }
        if self.eat_word("may_goto") {
            return Ok(vec![Insn::may_goto(narrow(self.signed()?, "offset")?)]);
        }
        if self.eat_word("if") {
            let dst = self.reg()?;
            let op = match self.next()? {
                Token::Punct(punct) => {
                    jmp_op(punct).ok_or_else(|| format!("`{punct}` is not a comparison"))?
                }
                other => return Err(format!("expected a comparison, found `{other}`")),
            };
            let src = self.operand(dst.wide)?;
            self.expect_word("goto")?;
            let off = narrow(self.signed()?, "offset")?;
            return Ok(vec![if dst.wide {
                Insn::jmp(op, dst.reg, src, off)
            } else {
                Insn::jmp32(op, dst.reg, src, off)
            }]);
        }
        if self.eat_word("lock") {
            self.expect_punct("*")?;
            let (size, base, off) = self.memory()?;
            let op = match self.next()? {
                Token::Punct("+=") => AtomicOp::Add,
                Token::Punct("|=") => AtomicOp::Or,
                Token::Punct("&=") => AtomicOp::And,
                Token::Punct("^=") => AtomicOp::Xor,
                other => return Err(format!("expected += |= &= or ^=, found `{other}`")),
            };
            if !matches!(size, Size::W | Size::DW) {
                return Err("atomics operate on u32 or u64".to_string());
            }
            let src = self.reg_of(size == Size::DW)?;
            return atomic(size, op, base, src, off);
        }
        if self.eat_punct("*") {
            let (size, base, off) = self.memory()?;
            self.expect_punct("=")?;
            if self.peek_reg().is_some() {
                let src = self.reg_of(true)?;
                return Ok(vec![Insn::stx(size, base, src, off)]);
            }
            let imm = narrow(self.signed()?, "immediate")?;
            return Ok(vec![Insn::st(size, base, off, imm)]);
        }
        let dst = self.reg()?;
        match self.next()? {
            Token::Punct("=") => self.assignment(dst),
            Token::Punct(punct) => {
                let op = alu_op(punct)
                    .ok_or_else(|| format!("`{punct}` is not an assignment operator"))?;
                let src = self.operand(dst.wide)?;
                Ok(vec![alu(op, dst, src)])
            }
            other => Err(format!("expected an assignment, found `{other}`")),
        }
    }

    /// The right-hand side of `dst = ...`.
    fn assignment(&mut self, dst: RegRef) -> Result<Vec<Insn>, String> {
        if let Some(src) = self.peek_reg() {
            self.pos += 1;
            if src.wide != dst.wide {
                return Err("both registers must be r or both w".to_string());
            }
            return Ok(vec![alu(AluOp::Mov, dst, Operand::Reg(src.reg))]);
        }
        if self.eat_punct("*") {
            let (size, base, off) = self.memory()?;
            if !dst.wide {
                return Err("loads write an r register".to_string());
            }
            return Ok(vec![Insn::ldx(size, dst.reg, base, off)]);
        }
        if matches!(self.peek(), Some(Token::Punct("-")))
            && matches!(self.tokens.get(self.pos + 1), Some(Token::Word(_)))
        {
            self.pos += 1;
            let src = self.reg()?;
            if src != dst {
                return Err("negation must be `rN = -rN`".to_string());
            }
            return Ok(vec![if dst.wide {
                Insn::neg64(dst.reg)
            } else {
                Insn::neg32(dst.reg)
            }]);
        }
        if let Some(Token::Word(word)) = self.peek().cloned() {
            self.pos += 1;
            return self.named_assignment(dst, &word);
        }
        let value = self.signed()?;
        if self.eat_word("ll") {
            if !dst.wide {
                return Err("ld_imm64 writes an r register".to_string());
            }
            return Ok(Insn::ld_imm64(dst.reg, value as u64).to_vec());
        }
        let imm = narrow(value, "immediate")?;
        Ok(vec![alu(AluOp::Mov, dst, Operand::Imm(imm))])
    }

    /// `dst = be16 dst`, `dst = map_fd(..) ll`, `dst = atomic_fetch_add(..)`, ...
    fn named_assignment(&mut self, dst: RegRef, word: &str) -> Result<Vec<Insn>, String> {
        let wide_dst = || {
            if dst.wide {
                Ok(dst.reg)
            } else {
                Err(format!("`{word}` writes an r register"))
            }
        };
        let endian = [
            ("be16", Insn::be16 as fn(Reg) -> Insn),
            ("be32", Insn::be32),
            ("be64", Insn::be64),
            ("le16", Insn::le16),
            ("le32", Insn::le32),
            ("le64", Insn::le64),
        ];
        if let Some((_, build)) = endian.iter().find(|(name, _)| *name == word) {
            let dst = wide_dst()?;
            if self.reg_of(true)? != dst {
                return Err(format!("`{word}` converts a register in place"));
            }
            return Ok(vec![build(dst)]);
        }
        match word {
            "map_fd" => {
                let dst = wide_dst()?;
                self.expect_punct("(")?;
                let imm = narrow(self.signed()?, "map fd")?;
                self.expect_punct(")")?;
                self.expect_word("ll")?;
                Ok(Insn::ld_pseudo(dst, opcode::PSEUDO_MAP_FD, imm, 0).to_vec())
            }
            "map_value" => {
                let dst = wide_dst()?;
                self.expect_punct("(")?;
                let imm = narrow(self.signed()?, "map fd")?;
                self.expect_punct(")")?;
                self.expect_punct("+")?;
                let offset: u32 = narrow(self.signed()?, "value offset")?;
                self.expect_word("ll")?;
                Ok(Insn::ld_pseudo(dst, opcode::PSEUDO_MAP_VALUE, imm, offset as i32).to_vec())
            }
            "func" => {
                let dst = wide_dst()?;
                self.expect_punct("(")?;
                self.expect_word("pc")?;
                let imm = narrow(self.signed()?, "offset")?;
                self.expect_punct(")")?;
                self.expect_word("ll")?;
                Ok(Insn::ld_pseudo(dst, opcode::PSEUDO_FUNC, imm, 0).to_vec())
            }
            _ => self.atomic_call(dst, word),
        }
    }

    /// `atomic_fetch_OP((uN *)(base + off), src)`, `xchg_64(base + off, src)`,
    /// `cmpxchg_64(base + off, r0, src)` and their 32-bit forms.
    fn atomic_call(&mut self, dst: RegRef, word: &str) -> Result<Vec<Insn>, String> {
        let fetch = [
            ("atomic_fetch_add", AtomicOp::FetchAdd),
            ("atomic_fetch_or", AtomicOp::FetchOr),
            ("atomic_fetch_and", AtomicOp::FetchAnd),
            ("atomic_fetch_xor", AtomicOp::FetchXor),
        ];
        self.expect_punct("(")?;
        let (op, size, base, off) = if let Some((_, op)) = fetch.iter().find(|(n, _)| *n == word) {
            self.expect_punct("(")?;
            let size = self.size()?;
            self.expect_punct("*")?;
            self.expect_punct(")")?;
            self.expect_punct("(")?;
            let (base, off) = self.base_offset()?;
            self.expect_punct(")")?;
            (*op, size, base, off)
        } else {
            let (op, size) = match word {
                "xchg_64" => (AtomicOp::Xchg, Size::DW),
                "xchg32_32" => (AtomicOp::Xchg, Size::W),
                "cmpxchg_64" => (AtomicOp::CmpXchg, Size::DW),
                "cmpxchg32_32" => (AtomicOp::CmpXchg, Size::W),
                _ => return Err(format!("unknown operation `{word}`")),
            };
            let (base, off) = self.base_offset()?;
            (op, size, base, off)
        };
        let wide = size == Size::DW;
        if dst.wide != wide {
            return Err(format!("`{word}` result register has the wrong width"));
        }
        self.expect_punct(",")?;
        if op == AtomicOp::CmpXchg {
            if self.reg_of(wide)? != Reg::R0 || dst.reg != Reg::R0 {
                return Err("cmpxchg compares with and writes r0".to_string());
            }
            self.expect_punct(",")?;
        }
        let src = self.reg_of(wide)?;
        self.expect_punct(")")?;
        if op != AtomicOp::CmpXchg && src != dst.reg {
            return Err(format!(
                "`{word}` returns the old value in its source register"
            ));
        }
        atomic(size, op, base, src, off)
    }
}

fn alu(op: AluOp, dst: RegRef, src: Operand) -> Insn {
    if dst.wide {
        Insn::alu64(op, dst.reg, src)
    } else {
        Insn::alu32(op, dst.reg, src)
    }
}

fn atomic(size: Size, op: AtomicOp, base: Reg, src: Reg, off: i16) -> Result<Vec<Insn>, String> {
    match size {
        Size::DW => Ok(vec![Insn::atomic64(op, base, src, off)]),
        Size::W => Ok(vec![Insn::atomic32(op, base, src, off)]),
        _ => Err("atomics operate on u32 or u64".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disasm::disassemble;
    use crate::insn::Reg::*;

    fn one(text: &str) -> Vec<Insn> {
        parse_line(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn parses_each_form() {
        assert_eq!(one("r0 = 0"), vec![Insn::mov64(R0, 0)]);
        assert_eq!(one("w1 = -0x1"), vec![Insn::mov32(R1, -1)]);
        assert_eq!(one("r1 s>>= r2"), vec![Insn::arsh64(R1, R2)]);
        assert_eq!(one("w1 <<= 3"), vec![Insn::lsh32(R1, 3)]);
        assert_eq!(one("r1 = -r1"), vec![Insn::neg64(R1)]);
        assert_eq!(one("r4 = be16 r4"), vec![Insn::be16(R4)]);
        assert_eq!(
            one("r1 = *(u32 *)(r1 + 4)"),
            vec![Insn::ldx(Size::W, R1, R1, 4)]
        );
        assert_eq!(
            one("*(u64 *)(r10 - 0x8) = r1"),
            vec![Insn::stx(Size::DW, R10, R1, -8)]
        );
        assert_eq!(
            one("*(u8 *)(r10 - 1) = -2"),
            vec![Insn::st(Size::B, R10, -1, -2)]
        );
        assert_eq!(
            one("lock *(u32 *)(r1 + 0x0) |= w2"),
            vec![Insn::atomic32(AtomicOp::Or, R1, R2, 0)]
        );
        assert_eq!(
            one("r3 = atomic_fetch_and((u64 *)(r1 - 0x10), r3)"),
            vec![Insn::atomic64(AtomicOp::FetchAnd, R1, R3, -16)]
        );
        assert_eq!(
            one("w0 = cmpxchg32_32(r1 + 0x4, w0, w5)"),
            vec![Insn::atomic32(AtomicOp::CmpXchg, R1, R5, 4)]
        );
        assert_eq!(
            one("r0 = 0x1122334455667788 ll"),
            Insn::ld_imm64(R0, 0x1122_3344_5566_7788).to_vec()
        );
        assert_eq!(one("call 0xb5"), vec![Insn::call(Helper::LOOP)]);
        assert_eq!(one("call pc-0x3"), vec![Insn::call_local(-3)]);
        assert_eq!(one("if w1 s>= w2 goto -4"), vec![Insn::jsge32(R1, R2, -4)]);
        assert_eq!(one("if r1 & 0x8 goto +0x0"), vec![Insn::jset(R1, 8, 0)]);
        assert_eq!(one("goto +0x3"), vec![Insn::ja(3)]);
        assert_eq!(one("gotol -0x11170"), vec![Insn::gotol(-70_000)]);
        assert_eq!(one("may_goto +0x2 <9>"), vec![Insn::may_goto(2)]);
        assert_eq!(one("exit"), vec![Insn::exit()]);
    }

    #[test]
    fn ignores_listing_decorations() {
        assert_eq!(one("  12: goto +0x3 <16>"), vec![Insn::ja(3)]);
        assert_eq!(
            one("if r1 < r2 goto +0x1 <.text+0x10>"),
            vec![Insn::jlt(R1, R2, 1)]
        );
        assert_eq!(
            one("0: r1 = map_fd(0x0) ll  ; map#3"),
            Insn::ld_pseudo(R1, opcode::PSEUDO_MAP_FD, 0, 0).to_vec()
        );
        assert!(one("; line 12: OPEN tcp.dport == 22 => pass").is_empty());
        assert!(one("   ").is_empty());
    }

    #[test]
    fn rejects_malformed_lines_with_a_reason() {
        let cases = [
            ("r11 = 0", "expected a register"),
            ("w1 = r2", "both registers"),
            ("r1 = 0x100000000", "out of range"),
            ("goto +0x8000", "out of range"),
            ("r1 = *(u128 *)(r1 + 0)", "expected u8"),
            ("r1 == r2", "not an assignment"),
            ("r1 = be16 r2", "in place"),
            ("lock *(u8 *)(r1 + 0) += r2", "u32 or u64"),
            ("r1 = cmpxchg_64(r1 + 0, r0, r2)", "writes r0"),
            ("r2 = xchg_64(r1 + 0, r3)", "source register"),
            ("exit now", "after the instruction"),
            ("r1 = $", "unexpected character"),
            ("if r1 = r2 goto +1", "not a comparison"),
            ("r1 +=", "end of line"),
        ];
        for (text, reason) in cases {
            let error = parse_line(text).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn assemble_text_reports_the_line() {
        let error = assemble_text("r0 = 0\nbogus\nexit").unwrap_err();
        assert_eq!(error.line, 2);
        assert_eq!(
            assemble_text("r0 = 0\n\nexit\n").unwrap(),
            vec![Insn::mov64(R0, 0), Insn::exit()]
        );
    }

    #[test]
    fn every_constructor_round_trips_through_text() {
        let mut insns = Vec::new();
        for op in AluOp::ALL {
            insns.push(Insn::alu64(op, R1, R2));
            insns.push(Insn::alu64(op, R3, -7));
            insns.push(Insn::alu32(op, R4, R5));
            insns.push(Insn::alu32(op, R6, 0x7fff_ffff));
        }
        for op in JmpOp::ALL {
            insns.push(Insn::jmp(op, R1, R2, -3));
            insns.push(Insn::jmp(op, R1, i32::MIN, i16::MAX));
            insns.push(Insn::jmp32(op, R7, R8, i16::MIN));
            insns.push(Insn::jmp32(op, R9, 12, 0));
        }
        for op in AtomicOp::ALL {
            let src = if op == AtomicOp::CmpXchg { R2 } else { R3 };
            insns.push(Insn::atomic64(op, R1, src, -8));
            insns.push(Insn::atomic32(op, R1, src, 8));
        }
        for size in [Size::B, Size::H, Size::W, Size::DW] {
            insns.push(Insn::ldx(size, R1, R10, -16));
            insns.push(Insn::stx(size, R10, R1, -16));
            insns.push(Insn::st(size, R10, -16, -100));
        }
        for endian in [
            Insn::be16,
            Insn::be32,
            Insn::be64,
            Insn::le16,
            Insn::le32,
            Insn::le64,
            Insn::neg64,
            Insn::neg32,
        ] {
            insns.push(endian(R5));
        }
        insns.extend(Insn::ld_imm64(R1, 0));
        insns.extend(Insn::ld_imm64(R1, i64::MIN as u64));
        insns.extend(Insn::ld_pseudo(R1, opcode::PSEUDO_MAP_FD, 7, 0));
        insns.extend(Insn::ld_pseudo(R1, opcode::PSEUDO_MAP_VALUE, 7, 24));
        insns.extend(Insn::ld_pseudo(R1, opcode::PSEUDO_FUNC, -9, 0));
        insns.push(Insn::call(Helper::RINGBUF_OUTPUT));
        insns.push(Insn::call_local(5));
        insns.push(Insn::ja(-1));
        insns.push(Insn::gotol(i32::MIN));
        insns.push(Insn::gotol(0x7fff_ffff));
        insns.push(Insn::may_goto(-7));
        insns.push(Insn::exit());

        let text = disassemble(&insns).join("\n");
        let reparsed = assemble_text(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert_eq!(reparsed, insns);
        assert_eq!(disassemble(&reparsed).join("\n"), text);
    }
}
