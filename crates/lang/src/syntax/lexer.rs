//! Text -> tokens. Newlines are tokens: the language is line-oriented.
//!
//! Words are runs of letters, digits, `_`, `.` and `:`, so that
//! `tcp.dport`, `10.0.0.1`, `2001:db8::1` and `02:00:00:00:00:01` are
//! single tokens; `..` ends a word (for ranges `1000..2000`). A word that
//! starts with a digit or contains `:` is a literal, anything else is a
//! name. `N/s` directly after a decimal number is a rate.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::diag::{Collector, Diagnostic};

pub type Span = Range<usize>;

/// How a literal was written; it decides, e.g., whether `/8` is a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LitKind {
    Decimal,
    Hex,
    /// A duration, already in nanoseconds.
    Duration,
    /// A rate `N/s`, already turned into the interval 1 s / N in nanoseconds.
    Rate,
    Ipv4,
    Ipv6,
    Mac,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A name, possibly dotted (`tcp.dport`). Keywords are names too; the
    /// parser gives them meaning by position.
    Name(String),
    Lit(LitKind, u128),
    Str(String),
    Newline,
    Comma,
    /// `=>`
    Arrow,
    /// `=`
    Assign,
    EqEq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Shl,
    Shr,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Amp,
    Pipe,
    Caret,
    Bang,
    LParen,
    RParen,
    LBrace,
    RBrace,
    DotDot,
    Eof,
}

impl Tok {
    /// How the token is named in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Name(n) => format!("`{n}`"),
            Tok::Lit(..) => "a literal".to_string(),
            Tok::Str(_) => "a string".to_string(),
            Tok::Newline => "end of line".to_string(),
            Tok::Eof => "end of file".to_string(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::Comma => ",",
            Tok::Arrow => "=>",
            Tok::Assign => "=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Shl => "<<",
            Tok::Shr => ">>",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Amp => "&",
            Tok::Pipe => "|",
            Tok::Caret => "^",
            Tok::Bang => "!",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::DotDot => "..",
            _ => "?",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

const NS_PER_SEC: u128 = 1_000_000_000;

/// Split `source` into tokens (always ending with `Eof`). Bad characters
/// and malformed literals are reported and skipped.
pub fn lex(source: &str) -> (Vec<Token>, Vec<Diagnostic>) {
    let mut lexer = Lexer {
        src: source,
        bytes: source.as_bytes(),
        pos: 0,
        tokens: Vec::new(),
        diags: Collector::default(),
    };
    lexer.run();
    (lexer.tokens, lexer.diags.into_vec())
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    tokens: Vec<Token>,
    diags: Collector,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':'
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn push(&mut self, tok: Tok, start: usize) {
        self.tokens.push(Token {
            tok,
            span: start..self.pos,
        });
    }

    fn run(&mut self) {
        while let Some(b) = self.peek(0) {
            let start = self.pos;
            match b {
                b'\n' => {
                    self.pos += 1;
                    self.push(Tok::Newline, start);
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'#' => {
                    while self.peek(0).is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                b'"' => self.string(),
                b'.' if self.peek(1) == Some(b'.') => {
                    self.pos += 2;
                    self.push(Tok::DotDot, start);
                }
                b if is_word_byte(b) => self.word(),
                _ => self.punct(b),
            }
        }
        let end = self.src.len();
        self.tokens.push(Token {
            tok: Tok::Eof,
            span: end..end,
        });
    }

    fn punct(&mut self, b: u8) {
        let start = self.pos;
        let two = |s: &Self, c: u8| s.peek(1) == Some(c);
        let (tok, len) = match b {
            b',' => (Tok::Comma, 1),
            b'=' if two(self, b'>') => (Tok::Arrow, 2),
            b'=' if two(self, b'=') => (Tok::EqEq, 2),
            b'=' => (Tok::Assign, 1),
            b'!' if two(self, b'=') => (Tok::Ne, 2),
            b'!' => (Tok::Bang, 1),
            b'<' if two(self, b'=') => (Tok::Le, 2),
            b'<' if two(self, b'<') => (Tok::Shl, 2),
            b'<' => (Tok::Lt, 1),
            b'>' if two(self, b'=') => (Tok::Ge, 2),
            b'>' if two(self, b'>') => (Tok::Shr, 2),
            b'>' => (Tok::Gt, 1),
            b'+' => (Tok::Plus, 1),
            b'-' => (Tok::Minus, 1),
            b'*' => (Tok::Star, 1),
            b'/' => (Tok::Slash, 1),
            b'%' => (Tok::Percent, 1),
            b'&' => (Tok::Amp, 1),
            b'|' => (Tok::Pipe, 1),
            b'^' => (Tok::Caret, 1),
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'{' => (Tok::LBrace, 1),
            b'}' => (Tok::RBrace, 1),
            _ => {
                // Skip the whole (possibly multi-byte) character.
                let ch = self.src[start..].chars().next().unwrap_or('\u{fffd}');
                self.pos += ch.len_utf8().max(1);
                self.diags.push(Diagnostic::error(
                    format!("unexpected character `{}`", ch.escape_debug()),
                    start..self.pos,
                    "not part of the language",
                ));
                return;
            }
        };
        self.pos += len;
        self.push(tok, start);
    }

    fn string(&mut self) {
        let start = self.pos;
        self.pos += 1;
        while let Some(b) = self.peek(0) {
            if b == b'"' || b == b'\n' {
                break;
            }
            self.pos += 1;
        }
        let text = self.src.get(start + 1..self.pos).unwrap_or("").to_string();
        if self.peek(0) == Some(b'"') {
            self.pos += 1;
        } else {
            self.diags.push(
                Diagnostic::error(
                    "unterminated string",
                    start..self.pos,
                    "the string starts here",
                )
                .with_help("close it with `\"` on the same line"),
            );
        }
        self.push(Tok::Str(text), start);
    }

    fn word(&mut self) {
        let start = self.pos;
        while let Some(b) = self.peek(0) {
            if !is_word_byte(b) || (b == b'.' && self.peek(1) == Some(b'.')) {
                break;
            }
            self.pos += 1;
        }
        let text = &self.src[start..self.pos];
        let first = text.as_bytes().first().copied().unwrap_or(b'a');
        if !(first.is_ascii_digit() || text.contains(':')) {
            self.push(Tok::Name(text.to_string()), start);
            return;
        }
        match classify_literal(text) {
            Ok((LitKind::Decimal, n)) if self.rate_follows() => {
                self.pos += 2;
                if n == 0 || n > NS_PER_SEC {
                    self.diags.push(
                        Diagnostic::error(
                            "rate out of range",
                            start..self.pos,
                            "the interval 1s / N must be at least 1 ns",
                        )
                        .with_help("write a rate from 1/s to 1000000000/s"),
                    );
                    self.push(Tok::Lit(LitKind::Rate, 1), start);
                } else {
                    self.push(Tok::Lit(LitKind::Rate, NS_PER_SEC / n), start);
                }
            }
            Ok((kind, value)) => self.push(Tok::Lit(kind, value), start),
            Err((message, help)) => {
                self.diags.push(
                    Diagnostic::error(message, start..self.pos, "cannot read this literal")
                        .with_help(help),
                );
                // Keep a placeholder so the parser does not report a
                // second, confusing error at the same place.
                self.push(Tok::Lit(LitKind::Decimal, 0), start);
            }
        }
    }

    /// `/s` right after a number and not followed by more of a word.
    fn rate_follows(&self) -> bool {
        self.peek(0) == Some(b'/')
            && self.peek(1) == Some(b's')
            && !self.peek(2).is_some_and(is_word_byte)
    }
}

type LitError = (String, String);

fn classify_literal(text: &str) -> Result<(LitKind, u128), LitError> {
    if text.contains(':') {
        if let Some(mac) = parse_mac(text) {
            return Ok((LitKind::Mac, mac));
        }
        return text
            .parse::<Ipv6Addr>()
            .map(|a| (LitKind::Ipv6, u128::from(a)))
            .map_err(|_| {
                (
                    format!("invalid address `{text}`"),
                    "write a MAC address like `02:00:00:00:00:01` or an IPv6 address like `2001:db8::1`"
                        .to_string(),
                )
            });
    }
    if text.contains('.') {
        return text
            .parse::<Ipv4Addr>()
            .map(|a| (LitKind::Ipv4, u128::from(u32::from(a))))
            .map_err(|_| {
                (
                    format!("invalid IPv4 address `{text}`"),
                    "write four decimal bytes like `10.0.0.1`".to_string(),
                )
            });
    }
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return parse_digits(hex, 16)
            .map(|v| (LitKind::Hex, v))
            .ok_or_else(|| {
                (
                    format!("invalid hexadecimal number `{text}`"),
                    "write hex digits after `0x`, e.g. `0x0800` (at most 128 bits)".to_string(),
                )
            });
    }
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let bad_number = || {
        (
            format!("invalid number `{text}`"),
            "write a decimal number (`_` may separate digits), a hex number `0x..`, or a \
             duration with a unit: ns, us, ms, s, m, h"
                .to_string(),
        )
    };
    let value = parse_digits(digits, 10).ok_or_else(bad_number)?;
    if unit.is_empty() {
        return Ok((LitKind::Decimal, value));
    }
    let scale: u128 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => NS_PER_SEC,
        "m" => 60 * NS_PER_SEC,
        "h" => 3600 * NS_PER_SEC,
        _ => return Err(bad_number()),
    };
    match value.checked_mul(scale) {
        Some(ns) if ns <= i64::MAX as u128 => Ok((LitKind::Duration, ns)),
        _ => Err((
            format!("duration `{text}` is too long"),
            "a duration must fit in 64-bit signed nanoseconds (about 292 years)".to_string(),
        )),
    }
}

/// Digits with optional `_` separators (not leading), at most 128 bits.
fn parse_digits(text: &str, radix: u32) -> Option<u128> {
    if text.is_empty() || text.starts_with('_') {
        return None;
    }
    let mut value: u128 = 0;
    let mut any = false;
    for c in text.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix)?;
        value = value
            .checked_mul(u128::from(radix))?
            .checked_add(u128::from(d))?;
        any = true;
    }
    any.then_some(value)
}

fn parse_mac(text: &str) -> Option<u128> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut value: u128 = 0;
    for p in parts {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        let byte = u8::from_str_radix(p, 16).ok()?;
        value = (value << 8) | u128::from(byte);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        let (tokens, diags) = lex(src);
        assert!(diags.is_empty(), "{diags:?}");
        tokens.into_iter().map(|t| t.tok).collect()
    }

    fn name(s: &str) -> Tok {
        Tok::Name(s.to_string())
    }

    #[test]
    fn words_and_literals() {
        assert_eq!(
            toks("tcp.dport == 0x0800 # c\n"),
            vec![
                name("tcp.dport"),
                Tok::EqEq,
                Tok::Lit(LitKind::Hex, 0x800),
                Tok::Newline,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("10.0.0.0/8"),
            vec![
                Tok::Lit(LitKind::Ipv4, 0x0a00_0000),
                Tok::Slash,
                Tok::Lit(LitKind::Decimal, 8),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("02:00:00:00:00:01 2001:db8::/32 ::1"),
            vec![
                Tok::Lit(LitKind::Mac, 0x0200_0000_0001),
                Tok::Lit(LitKind::Ipv6, 0x2001_0db8 << 96),
                Tok::Slash,
                Tok::Lit(LitKind::Decimal, 32),
                Tok::Lit(LitKind::Ipv6, 1),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn ranges_split_at_dot_dot() {
        assert_eq!(
            toks("1000..2_000"),
            vec![
                Tok::Lit(LitKind::Decimal, 1000),
                Tok::DotDot,
                Tok::Lit(LitKind::Decimal, 2000),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn durations_and_rates_become_nanoseconds() {
        assert_eq!(
            toks("500ms 10s 2us 1m 3ns 1h 200/s"),
            vec![
                Tok::Lit(LitKind::Duration, 500_000_000),
                Tok::Lit(LitKind::Duration, 10_000_000_000),
                Tok::Lit(LitKind::Duration, 2_000),
                Tok::Lit(LitKind::Duration, 60_000_000_000),
                Tok::Lit(LitKind::Duration, 3),
                Tok::Lit(LitKind::Duration, 3_600_000_000_000),
                Tok::Lit(LitKind::Rate, 5_000_000),
                Tok::Eof
            ]
        );
        // A rate truncates: 1 s / 3 = 333_333_333 ns.
        assert_eq!(toks("3/s")[0], Tok::Lit(LitKind::Rate, 333_333_333));
        // `/sec` is not a rate: a division by the name `sec`.
        assert_eq!(toks("3/sec")[1], Tok::Slash);
    }

    #[test]
    fn punctuation() {
        assert_eq!(
            toks("=> = == != <= < << >= > >> ! { } ( ) , | & ^ % * + -"),
            vec![
                Tok::Arrow,
                Tok::Assign,
                Tok::EqEq,
                Tok::Ne,
                Tok::Le,
                Tok::Lt,
                Tok::Shl,
                Tok::Ge,
                Tok::Gt,
                Tok::Shr,
                Tok::Bang,
                Tok::LBrace,
                Tok::RBrace,
                Tok::LParen,
                Tok::RParen,
                Tok::Comma,
                Tok::Pipe,
                Tok::Amp,
                Tok::Caret,
                Tok::Percent,
                Tok::Star,
                Tok::Plus,
                Tok::Minus,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn bad_input_is_reported_with_spans() {
        let (tokens, diags) = lex("a $ 12zz 1.2.3 99999999999999999999999999999999999999999s \"x");
        assert!(matches!(tokens.last(), Some(Token { tok: Tok::Eof, .. })));
        let messages: Vec<_> = diags
            .iter()
            .map(|d| (d.message.as_str(), d.span.clone()))
            .collect();
        assert_eq!(messages[0], ("unexpected character `$`", 2..3));
        assert_eq!(messages[1], ("invalid number `12zz`", 4..8));
        assert_eq!(messages[2], ("invalid IPv4 address `1.2.3`", 9..14));
        assert!(messages[3].0.starts_with("invalid number") || messages[3].0.contains("too long"));
        assert_eq!(messages[4].0, "unterminated string");
        let (_, diags) = lex("0/s");
        assert_eq!(diags[0].message, "rate out of range");
    }

    #[test]
    fn multibyte_characters_do_not_panic() {
        let (_, diags) = lex("é→\u{0}");
        assert_eq!(diags.len(), 3);
    }
}
