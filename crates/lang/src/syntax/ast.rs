//! The syntax tree: what was written, with byte spans, before any name is
//! resolved. The checker turns it into [`crate::ir::Program`].

use super::lexer::{LitKind, Span};
use crate::ir::{BinOp, CmpOp, ControllerThen};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    /// Declarations in source order (duplicates are kept for the checker).
    pub decls: Vec<Decl>,
    pub table: Option<Table>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decl {
    pub kind: DeclKind,
    /// The declaration's keyword.
    pub keyword: Span,
    /// The whole line.
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Xdp,
    TcIngress,
    TcEgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Evict,
    Refuse,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeclKind {
    Program(Ident),
    Hook(HookKind),
    Flow(Vec<Ident>),
    Update(Vec<Ident>),
    States(Vec<Ident>),
    Timeout {
        state: Ident,
        idle: Option<Expr>,
        hard: Option<Expr>,
        rollback: Option<Ident>,
    },
    Registers(Vec<Binding>),
    Globals(Vec<Binding>),
    Const(Binding),
    Flows {
        capacity: Expr,
        policy: Option<PolicyKind>,
    },
    Default(Verdict),
}

/// `NAME = EXPR`
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The `table` keyword.
    pub keyword: Span,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// From the state pattern to the last action.
    pub span: Span,
    pub state: StatePat,
    /// Empty for `*`.
    pub items: Vec<Item>,
    pub actions: Vec<ActionItem>,
    /// The `=>` token (where "missing verdict" points).
    pub arrow: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StatePat {
    Any(Span),
    /// One name, `{A, B}` or `A|B`.
    Names(Vec<Ident>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// `!(...)` / `not ...`, possibly several times (odd count = negated).
    pub negated: bool,
    pub kind: ItemKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `==`
    Eq,
    /// `in`
    In,
    /// `has`: all these bits set.
    Has,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ItemKind {
    /// `FIELD == PATTERN`, `FIELD in PATTERN`, `FIELD has VALUE`.
    Match {
        field: Ident,
        op: MatchOp,
        pattern: PatternAst,
    },
    /// `EXPR OP EXPR`
    Compare { lhs: Expr, op: CmpOp, rhs: Expr },
}

#[derive(Debug, Clone, PartialEq)]
pub enum PatternAst {
    /// `*`: the field is present, any value.
    Present(Span),
    Value(Expr),
    /// `VALUE/LEN` (a plain decimal after `/`) or `VALUE/MASK`.
    Slash {
        value: Expr,
        rhs: Expr,
    },
    Range {
        lo: Expr,
        hi: Expr,
    },
    Set {
        values: Vec<Expr>,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Drop,
    Tx,
    /// `redirect NAME`: an interface, or the register (or global) of that
    /// name; `redirect "NAME"` (`quoted`) is always an interface.
    Redirect {
        target: Ident,
        quoted: bool,
    },
    Controller(Option<ControllerThen>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ActionItem {
    Verdict(Verdict, Span),
    Next(Ident, Span),
    Assign { target: Ident, value: Expr },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Lit(LitKind, u128),
    /// A const, register, global, TCP flag, or (dotted) a field.
    Name(String),
    Now,
    Neg(Box<Expr>),
    /// Includes `min(a, b)` and `max(a, b)`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}
