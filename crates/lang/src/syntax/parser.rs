//! Tokens -> syntax tree. The parser never gives up: an error is reported
//! and parsing resumes at the next line (so at the next declaration or
//! table row), so one run reports every syntax error.
//!
//! Nesting (parentheses, unary operators, negations, operator chains) is
//! capped at [`MAX_NESTING`] so that no input can exhaust the stack here
//! or in the passes that walk the tree.

// A syntax error is a whole `Diagnostic` (with its fold count and places);
// errors are rare and the parser is not a hot path, so no boxing.
#![allow(clippy::result_large_err)]

use super::ast::*;
use super::lexer::{LitKind, Span, Tok, Token};
use crate::diag::{Collector, Diagnostic};
use crate::ir::{BinOp, CmpOp, ControllerThen};

/// Deepest expression tree (or negation chain) accepted.
pub const MAX_NESTING: u32 = 100;

type PResult<T> = Result<T, Diagnostic>;

const DECL_KEYWORDS: &str =
    "program, hook, flow, update, states, timeout, registers, globals, const, flows, default, table";
const ACTIONS_HELP: &str = "a row needs one verdict: `pass`, `drop`, `tx`, `redirect IFNAME` or \
     `controller [then pass|drop]`; then optionally `next STATE` and `REG = EXPR`";

pub fn parse_tokens(tokens: Vec<Token>) -> (File, Vec<Diagnostic>) {
    let mut p = Parser {
        tokens,
        pos: 0,
        diags: Collector::default(),
    };
    let file = p.file();
    (file, p.diags.into_vec())
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    diags: Collector,
}

/// A parsed expression and the depth of its tree.
type Deep = (Expr, u32);

impl Parser {
    // ---- token helpers -------------------------------------------------

    fn tok_at(&self, ahead: usize) -> &Tok {
        self.tokens
            .get(self.pos + ahead)
            .or(self.tokens.last())
            .map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek(&self) -> &Tok {
        self.tok_at(0)
    }

    fn span(&self) -> Span {
        self.tokens
            .get(self.pos)
            .or(self.tokens.last())
            .map_or(0..0, |t| t.span.clone())
    }

    /// End of the previous token (where a just-parsed construct ends).
    fn prev_end(&self) -> usize {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .map_or(0, |t| t.span.end)
    }

    fn bump(&mut self) -> Span {
        let span = self.span();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        span
    }

    fn at_name(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Name(n) if n == kw)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == tok {
            self.bump();
            true
        } else {
            false
        }
    }

    fn eat_name(&mut self, kw: &str) -> bool {
        if self.at_name(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn at_line_end(&self) -> bool {
        matches!(self.peek(), Tok::Newline | Tok::Eof)
    }

    fn expected(&self, what: &str) -> Diagnostic {
        let found = self.peek().describe();
        Diagnostic::error(
            format!("expected {what}, found {found}"),
            self.span(),
            format!("expected {what}"),
        )
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> PResult<Span> {
        if self.peek() == tok {
            Ok(self.bump())
        } else {
            Err(self.expected(what))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match self.peek() {
            Tok::Name(n) => {
                let name = n.clone();
                let span = self.bump();
                Ok(Ident { name, span })
            }
            _ => Err(self.expected(what)),
        }
    }

    /// After a comma, a list may continue on the next line.
    fn skip_newlines(&mut self) {
        while self.eat(&Tok::Newline) {}
    }

    fn skip_line(&mut self) {
        while !self.at_line_end() {
            self.bump();
        }
    }

    fn end_of_line(&mut self, what: &str) -> PResult<()> {
        if self.at_line_end() {
            Ok(())
        } else {
            Err(self.expected(&format!("end of line after {what}")))
        }
    }

    // ---- file and declarations -----------------------------------------

    fn file(&mut self) -> File {
        let mut file = File::default();
        loop {
            self.skip_newlines();
            let start = self.span();
            match self.peek().clone() {
                Tok::Eof => break,
                Tok::Name(kw) if kw == "table" => {
                    let keyword = self.bump();
                    let rows = self.rows(&keyword);
                    if file.table.is_some() {
                        self.diags.push(
                            Diagnostic::error(
                                "a second `table`",
                                keyword.clone(),
                                "only one table is allowed",
                            )
                            .with_help("merge the rows into the first table"),
                        );
                    } else {
                        file.table = Some(Table { keyword, rows });
                    }
                }
                Tok::Name(kw) => {
                    let keyword = self.bump();
                    let parsed = self
                        .decl(&kw, &keyword)
                        .and_then(|kind| self.end_of_line(&format!("`{kw}`")).map(|_| kind));
                    match parsed {
                        Ok(kind) => {
                            if file.table.is_some() {
                                self.diags.push(
                                    Diagnostic::error(
                                        "declaration after the table",
                                        keyword.clone(),
                                        "declarations come before `table`",
                                    )
                                    .with_help("move this line above `table`"),
                                );
                            }
                            file.decls.push(Decl {
                                kind,
                                keyword,
                                span: start.start..self.prev_end(),
                            });
                        }
                        Err(d) => {
                            self.diags.push(d);
                            self.skip_line();
                        }
                    }
                }
                _ => {
                    let d = self.expected("a declaration");
                    self.diags.push(
                        d.with_help(format!("declarations start with one of: {DECL_KEYWORDS}")),
                    );
                    self.skip_line();
                }
            }
        }
        file
    }

    fn decl(&mut self, kw: &str, keyword: &Span) -> PResult<DeclKind> {
        Ok(match kw {
            "program" => DeclKind::Program(self.ident("a program name")?),
            "hook" => DeclKind::Hook(self.hook()?),
            "flow" => DeclKind::Flow(self.name_list("a field name")?),
            "update" => DeclKind::Update(self.name_list("a field name")?),
            "states" => DeclKind::States(self.name_list("a state name")?),
            "timeout" => self.timeout(keyword)?,
            "registers" => DeclKind::Registers(self.bindings()?),
            "globals" => DeclKind::Globals(self.bindings()?),
            "const" => DeclKind::Const(self.binding()?),
            "flows" => {
                let capacity = self.expr()?;
                let policy = if self.eat_name("evict") {
                    Some(PolicyKind::Evict)
                } else if self.eat_name("refuse") {
                    Some(PolicyKind::Refuse)
                } else if self.at_line_end() {
                    None
                } else {
                    return Err(self
                        .expected("`evict` or `refuse`")
                        .with_help("write `flows N evict` or `flows N refuse`"));
                };
                DeclKind::Flows { capacity, policy }
            }
            "default" => {
                let (verdict, _) = self
                    .verdict()?
                    .ok_or_else(|| self.expected("a verdict").with_help(ACTIONS_HELP))?;
                if self.peek() == &Tok::Comma {
                    return Err(self
                        .expected("end of line")
                        .with_help("`default` takes a verdict only: no `next` or updates"));
                }
                DeclKind::Default(verdict)
            }
            _ => {
                return Err(Diagnostic::error(
                    format!("unknown declaration `{kw}`"),
                    keyword.clone(),
                    "not a declaration keyword",
                )
                .with_help(suggest_help(
                    kw,
                    DECL_KEYWORDS.split(", "),
                    "declarations",
                )));
            }
        })
    }

    fn hook(&mut self) -> PResult<HookKind> {
        const HELP: &str = "write `hook xdp`, `hook tc ingress` or `hook tc egress`";
        if self.eat_name("xdp") {
            return Ok(HookKind::Xdp);
        }
        if self.eat_name("tc") {
            if self.eat_name("ingress") {
                return Ok(HookKind::TcIngress);
            }
            if self.eat_name("egress") {
                return Ok(HookKind::TcEgress);
            }
            return Err(self.expected("`ingress` or `egress`").with_help(HELP));
        }
        Err(self.expected("a hook").with_help(HELP))
    }

    fn name_list(&mut self, what: &str) -> PResult<Vec<Ident>> {
        let mut names = vec![self.ident(what)?];
        while self.eat(&Tok::Comma) {
            self.skip_newlines();
            names.push(self.ident(what)?);
        }
        Ok(names)
    }

    fn binding(&mut self) -> PResult<Binding> {
        let name = self.ident("a name")?;
        self.expect(&Tok::Assign, "`=` and an initial value")?;
        let value = self.expr()?;
        Ok(Binding { name, value })
    }

    fn bindings(&mut self) -> PResult<Vec<Binding>> {
        let mut list = vec![self.binding()?];
        while self.eat(&Tok::Comma) {
            self.skip_newlines();
            list.push(self.binding()?);
        }
        Ok(list)
    }

    fn timeout(&mut self, keyword: &Span) -> PResult<DeclKind> {
        let state = self.ident("a state name")?;
        let (mut idle, mut hard, mut rollback) = (None, None, None);
        loop {
            let clause = self.span();
            let duplicate = |what: &str| {
                Diagnostic::error(
                    format!("`{what}` given twice"),
                    clause.clone(),
                    "second time",
                )
            };
            if self.eat_name("idle") {
                if idle.is_some() {
                    return Err(duplicate("idle"));
                }
                idle = Some(self.expr()?);
            } else if self.eat_name("hard") {
                if hard.is_some() {
                    return Err(duplicate("hard"));
                }
                hard = Some(self.expr()?);
            } else if self.eat_name("rollback") {
                if rollback.is_some() {
                    return Err(duplicate("rollback"));
                }
                rollback = Some(self.ident("a state name")?);
            } else if self.at_line_end() {
                break;
            } else {
                return Err(self.expected("`idle`, `hard` or `rollback`"));
            }
        }
        if idle.is_none() && hard.is_none() {
            return Err(Diagnostic::error(
                "timeout without a duration",
                keyword.start..self.prev_end(),
                "needs `idle` or `hard`",
            )
            .with_help("write `timeout STATE idle DUR [hard DUR] [rollback STATE]`"));
        }
        Ok(DeclKind::Timeout {
            state,
            idle,
            hard,
            rollback,
        })
    }

    // ---- table ---------------------------------------------------------

    fn rows(&mut self, keyword: &Span) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Err(d) = self.end_of_line("`table`") {
            self.diags
                .push(d.with_help("rows start on the line after `table`"));
            self.skip_line();
        }
        loop {
            self.skip_newlines();
            if self.eat_name("end") {
                if let Err(d) = self.end_of_line("`end`") {
                    self.diags.push(d);
                    self.skip_line();
                }
                return rows;
            }
            if self.peek() == &Tok::Eof {
                self.diags.push(
                    Diagnostic::error(
                        "table without `end`",
                        keyword.clone(),
                        "this table is never closed",
                    )
                    .with_help("close the table with a line `end`"),
                );
                return rows;
            }
            match self.row() {
                Ok(row) => rows.push(row),
                Err(d) => {
                    self.diags.push(d);
                    self.skip_line();
                }
            }
        }
    }

    fn row(&mut self) -> PResult<Row> {
        let start = self.span().start;
        let state = self.state_pattern()?;
        let mut items = Vec::new();
        if self.peek() == &Tok::Star {
            // `*`: no constraint; it stands alone before `=>`.
            self.bump();
            if self.peek() != &Tok::Arrow {
                return Err(self
                    .expected("`=>`")
                    .with_help("`*` matches every packet and stands alone before `=>`"));
            }
        } else if self.peek() != &Tok::Arrow {
            items.push(self.item(0)?);
            while self.eat(&Tok::Comma) {
                self.skip_newlines();
                items.push(self.item(0)?);
            }
        }
        let arrow = self.expect(&Tok::Arrow, "`,` or `=>`")?;
        let mut actions = vec![self.action()?];
        while self.eat(&Tok::Comma) {
            self.skip_newlines();
            actions.push(self.action()?);
        }
        self.end_of_line("the row's actions")?;
        Ok(Row {
            span: start..self.prev_end(),
            state,
            items,
            actions,
            arrow,
        })
    }

    fn state_pattern(&mut self) -> PResult<StatePat> {
        if self.peek() == &Tok::Star {
            return Ok(StatePat::Any(self.bump()));
        }
        let mut names = Vec::new();
        if self.eat(&Tok::LBrace) {
            names.push(self.ident("a state name")?);
            while self.eat(&Tok::Comma) {
                self.skip_newlines();
                names.push(self.ident("a state name")?);
            }
            self.expect(&Tok::RBrace, "`,` or `}`")?;
        } else {
            let first = self
                .ident("a state pattern (`*`, a state, or `{A, B}`)")
                .map_err(|d| {
                    d.with_help("a row starts with `*`, a state name, or a set `{A, B}`")
                })?;
            names.push(first);
            while self.eat(&Tok::Pipe) {
                names.push(self.ident("a state name")?);
            }
        }
        Ok(StatePat::Names(names))
    }

    fn item(&mut self, depth: u32) -> PResult<Item> {
        let start = self.span();
        if depth > MAX_NESTING {
            return Err(too_deep(start));
        }
        if self.eat(&Tok::Bang) {
            self.expect(&Tok::LParen, "`(` after `!`")?;
            let inner = self.item(depth + 1)?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(Item {
                negated: !inner.negated,
                kind: inner.kind,
                span: start.start..self.prev_end(),
            });
        }
        if self.eat_name("not") {
            let inner = self.item(depth + 1)?;
            return Ok(Item {
                negated: !inner.negated,
                kind: inner.kind,
                span: start.start..self.prev_end(),
            });
        }
        if let Tok::Name(name) = self.peek() {
            let is_field_match = name.contains('.')
                && (self.tok_at(1) == &Tok::EqEq
                    || matches!(self.tok_at(1), Tok::Name(n) if n == "in" || n == "has"));
            if is_field_match {
                return self.field_match(start);
            }
        }
        let (lhs, _) = self.expr_deep(false, depth)?;
        let op = match self.peek() {
            Tok::EqEq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            _ => {
                return Err(self
                    .expected("a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`)")
                    .with_help(
                        "a match item is `FIELD == PATTERN`, `FIELD in PATTERN`, \
                         `FIELD has FLAGS` or a comparison `EXPR < EXPR`",
                    ))
            }
        };
        self.bump();
        let (rhs, _) = self.expr_deep(false, depth)?;
        Ok(Item {
            negated: false,
            kind: ItemKind::Compare { lhs, op, rhs },
            span: start.start..self.prev_end(),
        })
    }

    fn field_match(&mut self, start: Span) -> PResult<Item> {
        let field = self.ident("a field")?;
        let op = if self.eat(&Tok::EqEq) {
            MatchOp::Eq
        } else if self.eat_name("in") {
            MatchOp::In
        } else {
            self.bump();
            MatchOp::Has
        };
        let pattern = if op == MatchOp::Has {
            PatternAst::Value(self.pattern_value()?)
        } else {
            self.pattern()?
        };
        Ok(Item {
            negated: false,
            kind: ItemKind::Match { field, op, pattern },
            span: start.start..self.prev_end(),
        })
    }

    fn pattern_value(&mut self) -> PResult<Expr> {
        Ok(self.expr_deep(true, 0)?.0)
    }

    fn pattern(&mut self) -> PResult<PatternAst> {
        if self.peek() == &Tok::Star {
            return Ok(PatternAst::Present(self.bump()));
        }
        if self.peek() == &Tok::LBrace {
            let open = self.bump();
            let mut values = vec![self.pattern_value()?];
            while self.eat(&Tok::Comma) {
                self.skip_newlines();
                values.push(self.pattern_value()?);
            }
            if self.peek() == &Tok::DotDot {
                return Err(self
                    .expected("`,` or `}`")
                    .with_help("a set holds single values; write a range as its own pattern"));
            }
            self.expect(&Tok::RBrace, "`,` or `}`")?;
            return Ok(PatternAst::Set {
                values,
                span: open.start..self.prev_end(),
            });
        }
        let value = self.pattern_value()?;
        if self.eat(&Tok::Slash) {
            let rhs = self.pattern_value()?;
            return Ok(PatternAst::Slash { value, rhs });
        }
        if self.eat(&Tok::DotDot) {
            let hi = self.pattern_value()?;
            return Ok(PatternAst::Range { lo: value, hi });
        }
        Ok(PatternAst::Value(value))
    }

    // ---- actions -------------------------------------------------------

    /// A verdict if the next word is one.
    fn verdict(&mut self) -> PResult<Option<(Verdict, Span)>> {
        let start = self.span();
        let verdict = if self.eat_name("pass") {
            Verdict::Pass
        } else if self.eat_name("drop") {
            Verdict::Drop
        } else if self.eat_name("tx") {
            Verdict::Tx
        } else if self.eat_name("redirect") {
            let (target, quoted) = match self.peek().clone() {
                Tok::Str(s) => (
                    Ident {
                        name: s,
                        span: self.bump(),
                    },
                    true,
                ),
                Tok::Name(_) => (self.ident("an interface name or a register")?, false),
                _ => {
                    return Err(self.expected("an interface name or a register").with_help(
                        "write `redirect eth1`, `redirect \"veth-a\"` or `redirect REGISTER`",
                    ))
                }
            };
            Verdict::Redirect { target, quoted }
        } else if self.eat_name("controller") {
            let then = if self.eat_name("then") {
                if self.eat_name("pass") {
                    Some(ControllerThen::Pass)
                } else if self.eat_name("drop") {
                    Some(ControllerThen::Drop)
                } else {
                    return Err(self.expected("`pass` or `drop` after `then`"));
                }
            } else {
                None
            };
            Verdict::Controller(then)
        } else {
            return Ok(None);
        };
        Ok(Some((verdict, start.start..self.prev_end())))
    }

    fn action(&mut self) -> PResult<ActionItem> {
        if let Some((verdict, span)) = self.verdict()? {
            return Ok(ActionItem::Verdict(verdict, span));
        }
        let start = self.span();
        if self.at_name("next") && matches!(self.tok_at(1), Tok::Name(_)) {
            self.bump();
            let state = self.ident("a state name")?;
            return Ok(ActionItem::Next(state, start.start..self.prev_end()));
        }
        if matches!(self.peek(), Tok::Name(_)) && self.tok_at(1) == &Tok::Assign {
            let target = self.ident("a register")?;
            self.bump();
            let value = self.expr()?;
            return Ok(ActionItem::Assign { target, value });
        }
        Err(self.expected("an action").with_help(ACTIONS_HELP))
    }

    // ---- expressions ---------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        Ok(self.expr_deep(false, 0)?.0)
    }

    /// `no_slash`: in a pattern, `/` introduces a prefix or mask, so it is
    /// not division (inside parentheses it is again).
    fn expr_deep(&mut self, no_slash: bool, depth: u32) -> PResult<Deep> {
        self.binary(0, no_slash, depth)
    }

    fn binary(&mut self, min_prec: u8, no_slash: bool, depth: u32) -> PResult<Deep> {
        let (mut lhs, mut lhs_depth) = self.unary(depth)?;
        loop {
            let (op, prec) = match self.peek() {
                Tok::Pipe => (BinOp::Or, 1),
                Tok::Caret => (BinOp::Xor, 2),
                Tok::Amp => (BinOp::And, 3),
                Tok::Shl => (BinOp::Shl, 4),
                Tok::Shr => (BinOp::Shr, 4),
                Tok::Plus => (BinOp::Add, 5),
                Tok::Minus => (BinOp::Sub, 5),
                Tok::Star => (BinOp::Mul, 6),
                Tok::Slash if !no_slash => (BinOp::Div, 6),
                Tok::Percent => (BinOp::Mod, 6),
                _ => break,
            };
            if prec < min_prec {
                break;
            }
            self.bump();
            let (rhs, rhs_depth) = self.binary(prec + 1, no_slash, depth + 1)?;
            let tree_depth = lhs_depth.max(rhs_depth) + 1;
            let span = lhs.span.start..rhs.span.end;
            if depth + tree_depth > MAX_NESTING {
                return Err(too_deep(span));
            }
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
            lhs_depth = tree_depth;
        }
        Ok((lhs, lhs_depth))
    }

    fn unary(&mut self, depth: u32) -> PResult<Deep> {
        let start = self.span();
        if depth > MAX_NESTING {
            return Err(too_deep(start));
        }
        if self.eat(&Tok::Minus) {
            let (inner, d) = self.unary(depth + 1)?;
            let span = start.start..inner.span.end;
            return Ok((
                Expr {
                    kind: ExprKind::Neg(Box::new(inner)),
                    span,
                },
                d + 1,
            ));
        }
        if self.eat(&Tok::LParen) {
            let (inner, d) = self.binary(0, false, depth + 1)?;
            self.expect(&Tok::RParen, "`)`")?;
            // Keep the parentheses in the span: it is what the user sees.
            return Ok((
                Expr {
                    kind: inner.kind,
                    span: start.start..self.prev_end(),
                },
                d,
            ));
        }
        match self.peek().clone() {
            Tok::Lit(kind, value) => {
                self.bump();
                Ok((
                    Expr {
                        kind: ExprKind::Lit(kind, value),
                        span: start,
                    },
                    1,
                ))
            }
            Tok::Name(n) if n == "now" => {
                self.bump();
                Ok((
                    Expr {
                        kind: ExprKind::Now,
                        span: start,
                    },
                    1,
                ))
            }
            Tok::Name(n) if (n == "min" || n == "max") && self.tok_at(1) == &Tok::LParen => {
                self.bump();
                self.bump();
                let (a, da) = self.binary(0, false, depth + 1)?;
                self.expect(
                    &Tok::Comma,
                    &format!("`,` between the two arguments of `{n}`"),
                )?;
                let (b, db) = self.binary(0, false, depth + 1)?;
                self.expect(&Tok::RParen, "`)`")?;
                let op = if n == "min" { BinOp::Min } else { BinOp::Max };
                Ok((
                    Expr {
                        kind: ExprKind::Binary(op, Box::new(a), Box::new(b)),
                        span: start.start..self.prev_end(),
                    },
                    da.max(db) + 1,
                ))
            }
            Tok::Name(n) => {
                self.bump();
                Ok((
                    Expr {
                        kind: ExprKind::Name(n),
                        span: start,
                    },
                    1,
                ))
            }
            _ => Err(self.expected("an expression")),
        }
    }
}

fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::error(
        "expression nested too deeply",
        span,
        format!("more than {MAX_NESTING} levels"),
    )
    .with_help("split the expression, or name parts of it with `const`")
}

/// Names listed in a "did you mean" help; a longer list is cut short.
const LISTED_CHOICES: usize = 20;

#[cfg(test)]
thread_local! {
    /// Names compared by [`suggest_help`] on this thread (tests count them).
    pub(crate) static NAMES_COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// "did you mean `x`? valid KIND: a, b, c" for a misspelt name.
pub(crate) fn suggest_help<'a>(
    name: &str,
    choices: impl IntoIterator<Item = &'a str>,
    kind: &str,
) -> String {
    let choices: Vec<&str> = choices.into_iter().collect();
    #[cfg(test)]
    NAMES_COMPARED.with(|n| n.set(n.get() + choices.len()));
    let closest = choices
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), *c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c);
    let list = match choices.len() {
        0 => "none declared".to_string(),
        n if n <= LISTED_CHOICES => choices.join(", "),
        n => format!(
            "{}, and {} more",
            choices[..LISTED_CHOICES].join(", "),
            n - LISTED_CHOICES
        ),
    };
    match closest {
        Some(c) => format!("did you mean `{c}`? {kind}: {list}"),
        None => format!("{kind}: {list}"),
    }
}

/// Whether a literal after `/` in a pattern is a prefix length (plain
/// decimal) rather than a mask.
pub(crate) fn is_prefix_length(e: &Expr) -> bool {
    matches!(e.kind, ExprKind::Lit(LitKind::Decimal, _))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::parse;

    fn rows(src: &str) -> Vec<Row> {
        let text = format!("table\n{src}\nend\n");
        let (file, diags) = parse(&text);
        assert!(diags.is_empty(), "{diags:?}");
        file.table.map(|t| t.rows).unwrap_or_default()
    }

    fn compare(item: &Item) -> (&Expr, CmpOp, &Expr) {
        match &item.kind {
            ItemKind::Compare { lhs, op, rhs } => (lhs, *op, rhs),
            other => panic!("not a comparison: {other:?}"),
        }
    }

    #[test]
    fn precedence_is_c_like() {
        let r = rows("* 1 + 2 * 3 << 1 & 7 ^ 1 | 8 > 0 => pass");
        let (lhs, op, _) = compare(&r[0].items[0]);
        assert_eq!(op, CmpOp::Gt);
        // The outermost operator binds loosest: `|`.
        let ExprKind::Binary(BinOp::Or, left, _) = &lhs.kind else {
            panic!("{lhs:?}")
        };
        let ExprKind::Binary(BinOp::Xor, left, _) = &left.kind else {
            panic!("{left:?}")
        };
        let ExprKind::Binary(BinOp::And, left, _) = &left.kind else {
            panic!("{left:?}")
        };
        let ExprKind::Binary(BinOp::Shl, left, _) = &left.kind else {
            panic!("{left:?}")
        };
        let ExprKind::Binary(BinOp::Add, _, right) = &left.kind else {
            panic!("{left:?}")
        };
        assert!(matches!(right.kind, ExprKind::Binary(BinOp::Mul, _, _)));
    }

    #[test]
    fn subtraction_is_left_associative() {
        let r = rows("* now - 1 - 2 > 0 => pass");
        let (lhs, _, _) = compare(&r[0].items[0]);
        let ExprKind::Binary(BinOp::Sub, left, right) = &lhs.kind else {
            panic!("{lhs:?}")
        };
        assert!(matches!(left.kind, ExprKind::Binary(BinOp::Sub, _, _)));
        assert_eq!(right.kind, ExprKind::Lit(LitKind::Decimal, 2));
    }

    #[test]
    fn patterns_and_spans() {
        let r =
            rows("  {A, B} ip.src in 10.0.0.0/8, tcp.dport == 1..2, udp.dport in {1, 2} => pass");
        let row = &r[0];
        // Spans are byte offsets in the whole text ("table\n" is 6 bytes).
        assert_eq!(row.span.start, 8);
        let StatePat::Names(names) = &row.state else {
            panic!()
        };
        assert_eq!(names[1].name, "B");
        assert_eq!(names[1].span, 12..13);
        let ItemKind::Match { field, op, pattern } = &row.items[0].kind else {
            panic!()
        };
        assert_eq!((field.name.as_str(), *op), ("ip.src", MatchOp::In));
        assert!(matches!(pattern, PatternAst::Slash { rhs, .. } if is_prefix_length(rhs)));
        assert!(matches!(
            &row.items[1].kind,
            ItemKind::Match {
                pattern: PatternAst::Range { .. },
                ..
            }
        ));
        assert!(matches!(
            &row.items[2].kind,
            ItemKind::Match { pattern: PatternAst::Set { values, .. }, .. } if values.len() == 2
        ));
    }

    #[test]
    fn negations_and_state_alternatives() {
        let r = rows("A|B !(now < r), not not now > 1, ! ( not r == 1 ) => drop");
        let StatePat::Names(names) = &r[0].state else {
            panic!()
        };
        assert_eq!(names.len(), 2);
        let negated: Vec<bool> = r[0].items.iter().map(|i| i.negated).collect();
        assert_eq!(negated, vec![true, false, false]);
    }

    #[test]
    fn actions_in_any_order_after_the_arrow() {
        let r = rows("* * => next B, r = 1, controller then drop, redirect \"veth-a\"");
        let a = &r[0].actions;
        assert!(matches!(&a[0], ActionItem::Next(id, _) if id.name == "B"));
        assert!(matches!(&a[1], ActionItem::Assign { target, .. } if target.name == "r"));
        assert!(matches!(
            &a[2],
            ActionItem::Verdict(Verdict::Controller(Some(ControllerThen::Drop)), _)
        ));
        assert!(
            matches!(&a[3], ActionItem::Verdict(Verdict::Redirect { target, quoted: true }, _) if target.name == "veth-a")
        );
    }

    #[test]
    fn slash_is_division_inside_parentheses_of_a_pattern() {
        let r = rows("* tcp.dport == (8 / 2) => pass");
        let ItemKind::Match {
            pattern: PatternAst::Value(v),
            ..
        } = &r[0].items[0].kind
        else {
            panic!()
        };
        assert!(matches!(v.kind, ExprKind::Binary(BinOp::Div, _, _)));
    }

    #[test]
    fn declarations_parse() {
        let src = "program p\nhook tc egress\ntimeout S idle 1s hard 2s rollback T\nflows 10 refuse\ndefault controller\n";
        let (file, diags) = parse(src);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(file.decls.len(), 5);
        assert_eq!(file.decls[1].kind, DeclKind::Hook(HookKind::TcEgress));
        assert!(matches!(
            &file.decls[2].kind,
            DeclKind::Timeout { idle: Some(_), hard: Some(_), rollback: Some(r), .. } if r.name == "T"
        ));
        assert!(matches!(
            &file.decls[3].kind,
            DeclKind::Flows {
                policy: Some(PolicyKind::Refuse),
                ..
            }
        ));
        assert_eq!(
            file.decls[4].kind,
            DeclKind::Default(Verdict::Controller(None))
        );
        assert_eq!(file.decls[2].span, 25..61);
    }
}
