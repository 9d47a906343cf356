//! The checked program: plain data that the interpreter and the code
//! generator walk. Everything here has passed the static checks, so:
//!
//! - every `StateId`, `RegId`, `GlobalId` indexes its vector;
//! - every divisor and modulus is a non-zero constant;
//! - no 128-bit field appears in an expression (only in patterns and keys);
//! - constant sub-expressions are folded;
//! - pattern values fit the width of their field.
//!
//! Neither interpretation nor code generation may panic on a `Program`
//! produced by [`crate::check`].

use flowstate_wire::Field;

/// Index of a state in [`Program::states`]; state 0 is the initial state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(pub u16);

/// Index of a per-flow register in [`Program::registers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegId(pub u16);

/// Index of a global register in [`Program::globals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GlobalId(pub u16);

/// Where the compiled program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

/// A 1-based line and column in the program text, for messages and for
/// annotating generated code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SourcePos {
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub name: String,
    pub hook: Hook,
    /// Lookup scope (`flow`): fields packed, in this order, into the key the
    /// state table is read with.
    pub lookup_key: Vec<Field>,
    /// Update scope (`update`): the key the state table is written with.
    /// Same fields in the same order as `lookup_key` when not declared.
    pub update_key: Vec<Field>,
    /// `states`, in declaration order; index 0 is the initial state.
    pub states: Vec<State>,
    /// Per-flow registers.
    pub registers: Vec<Register>,
    /// Global registers (one value shared by all flows).
    pub globals: Vec<Global>,
    /// The XFSM table, in priority order: the first matching row wins.
    pub rows: Vec<Row>,
    /// Applied when the packet has no key, or when no row matches.
    pub default_action: Action,
    /// Maximum number of entries in the state table (`flows N`).
    pub capacity: u32,
    /// What a new flow meets when the table is full.
    pub full_policy: FullPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub name: String,
    pub timeout: Option<Timeout>,
}

/// `timeout STATE idle D [hard D] [rollback S]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// Nanoseconds since the entry was last seen after which it expires.
    pub idle_ns: Option<i64>,
    /// Nanoseconds since the entry was created after which it expires.
    pub hard_ns: Option<i64>,
    /// The state an expired entry reads as (its registers reset).
    pub rollback: StateId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    pub name: String,
    /// Evaluated when a flow has no entry (or an expired one), with the
    /// current packet and clock. May read fields and `now`, not registers.
    pub init: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    pub name: String,
    pub init: i64,
}

/// Policy when a new flow finds the state table full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Evict the least recently seen flow to make room.
    EvictLeastRecent,
    /// The new flow's packet gets the default action and nothing is written.
    RefuseNew,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Where the row is written; `line` identifies the row to users.
    pub pos: SourcePos,
    pub state: StatePattern,
    /// All must match (a field absent from the packet never matches).
    pub fields: Vec<FieldMatch>,
    /// All must hold (each possibly negated).
    pub conditions: Vec<CondMatch>,
    pub action: Action,
    /// Assignments, evaluated in parallel: every right-hand side reads the
    /// values from before the row.
    pub updates: Vec<Update>,
    /// Packet field assignments (`ip.ttl = ip.ttl - 1`), evaluated in
    /// parallel with `updates` from the values before the row; each value
    /// is cut to the field's width. A packet that lacks a written field
    /// does not match the row (as for a field an update reads). The rules
    /// for bytes and checksums are in `flowstate_wire::rewrite`.
    pub writes: Vec<FieldWrite>,
    /// `None` keeps the current state.
    pub next: Option<StateId>,
}

/// `FIELD = EXPR` in a row's actions.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldWrite {
    pub field: Field,
    pub value: Expr,
}

impl FieldWrite {
    /// The value written for `value` (the expression's result): its low
    /// bits, as many as the field is wide.
    pub fn cut(field: Field, value: i64) -> u128 {
        u128::from(value as u64) & (u128::MAX >> (128 - field.bits()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePattern {
    Any,
    /// One or more states (sorted, deduplicated).
    Set(Vec<StateId>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMatch {
    pub field: Field,
    pub pattern: Pattern,
}

/// A pattern on an unsigned field value (up to 128 bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(u128),
    /// `value & mask == value` (prefixes are masks with leading ones).
    Masked {
        value: u128,
        mask: u128,
    },
    /// Inclusive on both ends.
    Range {
        lo: u128,
        hi: u128,
    },
    /// Any of these exact values (sorted, deduplicated).
    Set(Vec<u128>),
}

impl Pattern {
    pub fn matches(&self, v: u128) -> bool {
        match self {
            Pattern::Exact(x) => v == *x,
            Pattern::Masked { value, mask } => v & mask == *value,
            Pattern::Range { lo, hi } => *lo <= v && v <= *hi,
            Pattern::Set(xs) => xs.binary_search(&v).is_ok(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CondMatch {
    pub cond: Condition,
    /// `true` for a negated condition (`!(a < b)`).
    pub negated: bool,
}

/// A signed 64-bit comparison.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition {
    pub op: CmpOp,
    pub lhs: Expr,
    pub rhs: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn eval(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A signed 64-bit, wrapping expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    Const(i64),
    /// A packet field of at most 63 bits (zero-extended).
    Field(Field),
    Reg(RegId),
    Global(GlobalId),
    /// Monotonic nanoseconds.
    Now,
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    /// Signed division; the divisor is a non-zero constant.
    Div,
    /// Signed remainder (sign of the dividend); non-zero constant divisor.
    Mod,
    Min,
    Max,
    And,
    Or,
    Xor,
    /// Shift amount taken modulo 64.
    Shl,
    /// Arithmetic (sign-propagating) shift, amount modulo 64.
    Shr,
}

impl BinOp {
    /// The meaning of every operator, shared by constant folding and the
    /// interpreter. `Div`/`Mod` by zero yield 0 (the checker rejects them,
    /// so this only keeps the function total).
    pub fn eval(self, a: i64, b: i64) -> i64 {
        match self {
            BinOp::Add => a.wrapping_add(b),
            BinOp::Sub => a.wrapping_sub(b),
            BinOp::Mul => a.wrapping_mul(b),
            BinOp::Div => {
                if b == 0 {
                    0
                } else {
                    a.wrapping_div(b)
                }
            }
            BinOp::Mod => {
                if b == 0 {
                    0
                } else {
                    a.wrapping_rem(b)
                }
            }
            BinOp::Min => a.min(b),
            BinOp::Max => a.max(b),
            BinOp::And => a & b,
            BinOp::Or => a | b,
            BinOp::Xor => a ^ b,
            BinOp::Shl => a.wrapping_shl((b & 63) as u32),
            BinOp::Shr => a.wrapping_shr((b & 63) as u32),
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Min => "min",
            BinOp::Max => "max",
            BinOp::And => "&",
            BinOp::Or => "|",
            BinOp::Xor => "^",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegTarget {
    Flow(RegId),
    Global(GlobalId),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub target: RegTarget,
    pub value: Expr,
}

/// The verdict part of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Bounce out of the receiving port.
    Tx,
    /// Send out of another interface, named as in the program.
    Redirect {
        ifname: String,
    },
    /// Send out of the interface whose ifindex a register (or global)
    /// holds: its value before the row. A value outside 1..=2^32-1 drops
    /// the packet (see [`port_ifindex`]). Only rows have it: the default
    /// action also runs when no flow entry was read.
    RedirectPort {
        port: RegTarget,
        /// The register's name, for printing.
        name: String,
    },
    /// Send an event with the packet head to user space, then `then`.
    Controller {
        then: ControllerThen,
    },
}

/// The ifindex a `redirect REGISTER` sends to: the value when it is one
/// (1 to 2^32-1), else `None` (the packet is dropped).
pub fn port_ifindex(value: i64) -> Option<u32> {
    u32::try_from(value).ok().filter(|&ifindex| ifindex != 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerThen {
    Pass,
    Drop,
}

impl Action {
    /// The verdict word used in replay output and JSON.
    pub fn verdict_name(&self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::Tx => "tx",
            Action::Redirect { .. } | Action::RedirectPort { .. } => "redirect",
            Action::Controller { .. } => "controller",
        }
    }
}

impl Program {
    pub fn state_name(&self, id: StateId) -> &str {
        &self.states[id.0 as usize].name
    }

    pub fn state_by_name(&self, name: &str) -> Option<StateId> {
        self.states
            .iter()
            .position(|s| s.name == name)
            .map(|i| StateId(i as u16))
    }

    /// Whether an entry equal to "initial state, initial registers" may be
    /// left out of the table (DESIGN.md 1.8): all register initial values are
    /// constants and the initial state has no timeout.
    pub fn elides_initial_entries(&self) -> bool {
        self.states[0].timeout.is_none()
            && self
                .registers
                .iter()
                .all(|r| matches!(r.init, Expr::Const(_)))
    }

    /// Register initial values where they are constants; one that reads the
    /// packet or the clock gives 0 (what an entry created without a packet,
    /// e.g. from user space, starts with).
    pub fn constant_initial_registers(&self) -> Vec<i64> {
        self.registers
            .iter()
            .map(|r| match r.init {
                Expr::Const(c) => c,
                _ => 0,
            })
            .collect()
    }

    /// Size in bytes of a packed key over `fields`.
    pub fn key_size(fields: &[Field]) -> usize {
        fields.iter().map(|f| f.key_bytes()).sum()
    }
}
