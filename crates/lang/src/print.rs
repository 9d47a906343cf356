//! Program -> source text, in the language's own notation.
//!
//! Each function prints one piece of the IR; [`program`] prints a whole
//! program that parses back to an equal [`Program`] (row positions aside:
//! they become the printed lines). Constants are printed folded, as the IR
//! holds them; `const` declarations are gone by then.
//!
//! Expressions are printed with the fewest parentheses that keep the tree's
//! shape under these binding levels (tightest first): `* / %`, `+ -`,
//! `<< >>`, `&`, `^`, `|`, all left-associative. The bitwise and shift
//! operators get parentheses whenever they meet a different operator, so
//! the text means the same thing to a reader used to either C or Rust
//! precedence.

use std::fmt::Write;

use flowstate_wire::{format_value, Field, ValueFormat};

use crate::ir::{
    Action, BinOp, CondMatch, Condition, ControllerThen, Expr, FullPolicy, Hook, Pattern, Program,
    RegTarget, Row, StatePattern, Update,
};

/// Printed for an index that the checker would never have produced:
/// printing must not panic, even on an unchecked program.
const UNKNOWN: &str = "?";

/// A field value in its natural notation (`10.0.0.1`, `syn|ack`, `0x0800`).
pub fn value(field: Field, v: u128) -> String {
    format_value(field.format(), v)
}

/// A field pattern: `tcp.dport == 22`, `ip.src in 10.0.0.0/8`,
/// `tcp.dport in 1000..2000`, `udp.dport in {53, 123}`.
pub fn pattern(field: Field, pattern: &Pattern) -> String {
    let name = field.name();
    match pattern {
        Pattern::Exact(v) => format!("{name} == {}", value(field, *v)),
        Pattern::Masked { value: v, mask } => match prefix_len(field, *mask) {
            Some(len) => format!("{name} in {}/{len}", value(field, *v)),
            None => format!("{name} in {}/{}", value(field, *v), mask_text(field, *mask)),
        },
        Pattern::Range { lo, hi } => {
            format!("{name} in {}..{}", value(field, *lo), value(field, *hi))
        }
        Pattern::Set(values) => {
            let items: Vec<String> = values.iter().map(|v| value(field, *v)).collect();
            format!("{name} in {{{}}}", items.join(", "))
        }
    }
}

/// The prefix length of `mask` when it is leading ones followed by zeros
/// within the field's width, for address fields (the only ones people write
/// as prefixes).
fn prefix_len(field: Field, mask: u128) -> Option<u32> {
    if !matches!(field.format(), ValueFormat::Ipv4 | ValueFormat::Ipv6) {
        return None;
    }
    let bits = field.bits();
    let width_mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if mask & !width_mask != 0 {
        return None;
    }
    // Shift the field to the top of the u128 so "leading ones" is simple.
    let top = mask << (128 - bits);
    let ones = top.leading_ones();
    (top.checked_shl(ones).unwrap_or(0) == 0).then_some(ones)
}

/// A mask that is not a prefix: addresses and flags in their own notation,
/// plain numbers in hex (a bit mask reads better that way).
fn mask_text(field: Field, mask: u128) -> String {
    match field.format() {
        ValueFormat::Decimal => format!("{mask:#x}"),
        format => format_value(format, mask),
    }
}

/// Binding level of a binary operator written infix; higher binds tighter.
/// `min`/`max` are calls, so they never need parentheses.
fn level(op: BinOp) -> u8 {
    match op {
        BinOp::Min | BinOp::Max => 10,
        BinOp::Mul | BinOp::Div | BinOp::Mod => 6,
        BinOp::Add | BinOp::Sub => 5,
        BinOp::Shl | BinOp::Shr => 4,
        BinOp::And => 3,
        BinOp::Xor => 2,
        BinOp::Or => 1,
    }
}

fn is_bitwise(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Shl | BinOp::Shr | BinOp::And | BinOp::Xor | BinOp::Or
    )
}

/// Whether `child`, an operand of `parent` (on the right when `right`),
/// needs parentheses to keep the tree's shape.
fn needs_parens(parent: BinOp, child: &Expr, right: bool) -> bool {
    let Expr::Binary(op, _, _) = child else {
        return false;
    };
    let op = *op;
    if matches!(op, BinOp::Min | BinOp::Max) || matches!(parent, BinOp::Min | BinOp::Max) {
        return false;
    }
    if op != parent && (is_bitwise(op) || is_bitwise(parent)) {
        return true;
    }
    let (child_level, parent_level) = (level(op), level(parent));
    child_level < parent_level || (right && child_level == parent_level)
}

/// An expression; register names come from `program`.
pub fn expr(program: &Program, e: &Expr) -> String {
    let mut out = String::new();
    write_expr(&mut out, program, e);
    out
}

fn write_expr(out: &mut String, program: &Program, e: &Expr) {
    match e {
        Expr::Const(c) => write_const(out, *c),
        Expr::Field(f) => out.push_str(f.name()),
        Expr::Reg(id) => out.push_str(
            program
                .registers
                .get(id.0 as usize)
                .map_or(UNKNOWN, |r| r.name.as_str()),
        ),
        Expr::Global(id) => out.push_str(
            program
                .globals
                .get(id.0 as usize)
                .map_or(UNKNOWN, |g| g.name.as_str()),
        ),
        Expr::Now => out.push_str("now"),
        Expr::Binary(op @ (BinOp::Min | BinOp::Max), a, b) => {
            out.push_str(op.symbol());
            out.push('(');
            write_expr(out, program, a);
            out.push_str(", ");
            write_expr(out, program, b);
            out.push(')');
        }
        Expr::Binary(op, a, b) => {
            write_operand(out, program, *op, a, false);
            let _ = write!(out, " {} ", op.symbol());
            write_operand(out, program, *op, b, true);
        }
    }
}

fn write_operand(out: &mut String, program: &Program, parent: BinOp, e: &Expr, right: bool) {
    if needs_parens(parent, e, right) {
        out.push('(');
        write_expr(out, program, e);
        out.push(')');
    } else {
        write_expr(out, program, e);
    }
}

/// Negative constants are parenthesised so that `a - (-1)` never reads as
/// `a - -1`; `i64::MIN` has no positive literal, so it is written as the
/// expression that folds back to it.
fn write_const(out: &mut String, c: i64) {
    if c == i64::MIN {
        let _ = write!(out, "(-{} - 1)", i64::MAX);
    } else if c < 0 {
        let _ = write!(out, "({c})");
    } else {
        let _ = write!(out, "{c}");
    }
}

/// A comparison: `now >= tmin`.
pub fn condition(program: &Program, c: &Condition) -> String {
    format!(
        "{} {} {}",
        expr(program, &c.lhs),
        c.op.symbol(),
        expr(program, &c.rhs)
    )
}

/// A condition pattern: the condition, or `!(...)` when negated.
pub fn cond_match(program: &Program, c: &CondMatch) -> String {
    if c.negated {
        format!("!({})", condition(program, &c.cond))
    } else {
        condition(program, &c.cond)
    }
}

/// `pass`, `drop`, `tx`, `redirect eth1`, `redirect "veth-a"`,
/// `redirect port` (a register), `controller then drop`. An interface
/// named like one of the program's registers is quoted only by
/// [`action_in`].
pub fn action(a: &Action) -> String {
    match a {
        Action::Pass => "pass".to_string(),
        Action::Drop => "drop".to_string(),
        Action::Tx => "tx".to_string(),
        Action::Redirect { ifname } if is_plain_name(ifname) => format!("redirect {ifname}"),
        Action::Redirect { ifname } => format!("redirect \"{ifname}\""),
        Action::RedirectPort { name, .. } => format!("redirect {name}"),
        Action::Controller { then } => match then {
            ControllerThen::Pass => "controller then pass".to_string(),
            ControllerThen::Drop => "controller then drop".to_string(),
        },
    }
}

/// `*`, `OPEN` or `{STEP_1, STEP_2}`.
pub fn state_pattern(program: &Program, p: &StatePattern) -> String {
    match p {
        StatePattern::Any => "*".to_string(),
        StatePattern::Set(ids) => {
            let names: Vec<&str> = ids.iter().map(|id| state_name(program, id.0)).collect();
            match names.as_slice() {
                [one] => (*one).to_string(),
                _ => format!("{{{}}}", names.join(", ")),
            }
        }
    }
}

fn state_name(program: &Program, index: u16) -> &str {
    program
        .states
        .get(index as usize)
        .map_or(UNKNOWN, |s| s.name.as_str())
}

/// A whole row as written in a table: `STATE ITEMS => EFFECTS`.
pub fn row(program: &Program, row: &Row) -> String {
    format!(
        "{} {} => {}",
        state_pattern(program, &row.state),
        row_items(program, row),
        row_effects(program, row)
    )
}

/// The text between a row's state pattern and `=>`: field patterns, then
/// conditions, comma-separated; `*` when the row matches every packet.
pub fn row_items(program: &Program, row: &Row) -> String {
    let items: Vec<String> = row
        .fields
        .iter()
        .map(|m| pattern(m.field, &m.pattern))
        .chain(row.conditions.iter().map(|c| cond_match(program, c)))
        .collect();
    if items.is_empty() {
        "*".to_string()
    } else {
        items.join(", ")
    }
}

/// One register assignment: `tmin = tmin + 1000000000`.
pub fn update(program: &Program, u: &Update) -> String {
    let target = match u.target {
        RegTarget::Flow(id) => program
            .registers
            .get(id.0 as usize)
            .map(|r| r.name.as_str()),
        RegTarget::Global(id) => program.globals.get(id.0 as usize).map(|g| g.name.as_str()),
    };
    format!(
        "{} = {}",
        target.unwrap_or(UNKNOWN),
        expr(program, &u.value)
    )
}

/// [`action`] as it reads in `program`: an interface named like one of its
/// registers or globals is quoted, so it is not taken for the register.
pub fn action_in(program: &Program, a: &Action) -> String {
    match a {
        Action::Redirect { ifname }
            if program.registers.iter().any(|r| &r.name == ifname)
                || program.globals.iter().any(|g| &g.name == ifname) =>
        {
            format!("redirect \"{ifname}\"")
        }
        _ => action(a),
    }
}

/// Whether an interface name reads as a bare word after `redirect`.
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !crate::check::RESERVED.contains(&name)
}

/// `FIELD = EXPR`, a constant address in its notation.
pub fn field_write(program: &Program, w: &crate::ir::FieldWrite) -> String {
    use flowstate_wire::ValueFormat;
    let value = match (&w.value, w.field.format()) {
        (Expr::Const(c), format @ (ValueFormat::Mac | ValueFormat::Ipv4)) => {
            flowstate_wire::format_value(format, crate::ir::FieldWrite::cut(w.field, *c))
        }
        (value, _) => expr(program, value),
    };
    format!("{} = {value}", w.field)
}

/// The text after `=>`: the action, the register updates, then `next S`.
pub fn row_effects(program: &Program, row: &Row) -> String {
    let mut parts = vec![action_in(program, &row.action)];
    parts.extend(row.updates.iter().map(|u| update(program, u)));
    parts.extend(row.writes.iter().map(|w| field_write(program, w)));
    if let Some(next) = row.next {
        parts.push(format!("next {}", state_name(program, next.0)));
    }
    parts.join(", ")
}

/// A duration in the largest unit that writes it exactly (`30s`, `1m`,
/// `500ms`), or plain nanoseconds.
pub fn duration(ns: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    for (scale, unit) in UNITS {
        if ns != 0 && ns % scale == 0 {
            return format!("{}{unit}", ns / scale);
        }
    }
    ns.to_string()
}

/// `xdp`, `tc ingress`, `tc egress`.
pub fn hook(h: Hook) -> &'static str {
    match h {
        Hook::Xdp => "xdp",
        Hook::TcIngress => "tc ingress",
        Hook::TcEgress => "tc egress",
    }
}

fn field_list(fields: &[Field]) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    names.join(", ")
}

/// A complete program. Table rows are aligned on their state pattern and
/// items so the table reads as one.
pub fn program(p: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "program {}", p.name);
    let _ = writeln!(out, "hook {}", hook(p.hook));
    if !p.lookup_key.is_empty() {
        let _ = writeln!(out, "flow {}", field_list(&p.lookup_key));
    }
    if p.update_key != p.lookup_key {
        let _ = writeln!(out, "update {}", field_list(&p.update_key));
    }
    let names: Vec<&str> = p.states.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(out, "states {}", names.join(", "));
    for state in &p.states {
        let Some(t) = state.timeout else { continue };
        let _ = write!(out, "timeout {}", state.name);
        if let Some(idle) = t.idle_ns {
            let _ = write!(out, " idle {}", duration(idle));
        }
        if let Some(hard) = t.hard_ns {
            let _ = write!(out, " hard {}", duration(hard));
        }
        if t.rollback.0 != 0 {
            let _ = write!(out, " rollback {}", state_name(p, t.rollback.0));
        }
        out.push('\n');
    }
    if !p.registers.is_empty() {
        let regs: Vec<String> = p
            .registers
            .iter()
            .map(|r| format!("{} = {}", r.name, expr(p, &r.init)))
            .collect();
        let _ = writeln!(out, "registers {}", regs.join(", "));
    }
    if !p.globals.is_empty() {
        let globals: Vec<String> = p
            .globals
            .iter()
            .map(|g| format!("{} = {}", g.name, g.init))
            .collect();
        let _ = writeln!(out, "globals {}", globals.join(", "));
    }
    let policy = match p.full_policy {
        FullPolicy::EvictLeastRecent => "evict",
        FullPolicy::RefuseNew => "refuse",
    };
    let _ = writeln!(out, "flows {} {policy}", p.capacity);
    let _ = writeln!(out, "default {}", action_in(p, &p.default_action));

    out.push_str("\ntable\n");
    let rows: Vec<(String, String, String)> = p
        .rows
        .iter()
        .map(|r| {
            (
                state_pattern(p, &r.state),
                row_items(p, r),
                row_effects(p, r),
            )
        })
        .collect();
    let state_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let items_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (state, items, effects) in &rows {
        let _ = writeln!(
            out,
            "  {state:<state_width$}  {items:<items_width$}  => {effects}"
        );
    }
    out.push_str("end\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{
        CmpOp, FieldMatch, Global, GlobalId, RegId, Register, SourcePos, State, StateId, Timeout,
    };

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    fn reg(i: u16) -> Expr {
        Expr::Reg(RegId(i))
    }

    fn sample() -> Program {
        Program {
            name: "sample".to_string(),
            hook: Hook::TcIngress,
            lookup_key: vec![Field::IpSrc],
            update_key: vec![Field::IpSrc],
            states: vec![
                State {
                    name: "NEW".to_string(),
                    timeout: None,
                },
                State {
                    name: "ACTIVE".to_string(),
                    timeout: Some(Timeout {
                        idle_ns: Some(30_000_000_000),
                        hard_ns: Some(60_000_000_000),
                        rollback: StateId(0),
                    }),
                },
            ],
            registers: vec![
                Register {
                    name: "a".to_string(),
                    init: Expr::Const(0),
                },
                Register {
                    name: "b".to_string(),
                    init: bin(BinOp::Add, Expr::Now, Expr::Const(5)),
                },
            ],
            globals: vec![Global {
                name: "total".to_string(),
                init: -3,
            }],
            rows: vec![Row {
                pos: SourcePos { line: 9, column: 3 },
                state: StatePattern::Set(vec![StateId(0), StateId(1)]),
                fields: vec![FieldMatch {
                    field: Field::TcpDport,
                    pattern: Pattern::Exact(22),
                }],
                conditions: vec![CondMatch {
                    cond: Condition {
                        op: CmpOp::Lt,
                        lhs: reg(0),
                        rhs: Expr::Const(10),
                    },
                    negated: true,
                }],
                action: Action::Controller {
                    then: ControllerThen::Drop,
                },
                updates: vec![Update {
                    target: RegTarget::Global(GlobalId(0)),
                    value: bin(BinOp::Add, Expr::Global(GlobalId(0)), Expr::Const(1)),
                }],
                writes: vec![],
                next: Some(StateId(1)),
            }],
            default_action: Action::Pass,
            capacity: 1024,
            full_policy: FullPolicy::RefuseNew,
        }
    }

    #[test]
    fn values_use_the_field_notation() {
        assert_eq!(value(Field::IpSrc, 0x0a00_0001), "10.0.0.1");
        assert_eq!(value(Field::TcpFlags, 0x12), "syn|ack");
        assert_eq!(value(Field::EthType, 0x0800), "0x0800");
        assert_eq!(value(Field::TcpDport, 22), "22");
        assert_eq!(value(Field::EthSrc, 0x0200_0000_0001), "02:00:00:00:00:01");
    }

    #[test]
    fn patterns_print_each_form() {
        assert_eq!(
            pattern(Field::UdpDport, &Pattern::Exact(1111)),
            "udp.dport == 1111"
        );
        assert_eq!(
            pattern(
                Field::IpSrc,
                &Pattern::Masked {
                    value: 0x0a00_0000,
                    mask: 0xff00_0000
                }
            ),
            "ip.src in 10.0.0.0/8"
        );
        // Not a prefix: the mask is spelled out.
        assert_eq!(
            pattern(
                Field::IpDst,
                &Pattern::Masked {
                    value: 0x0a00_0001,
                    mask: 0xff00_00ff
                }
            ),
            "ip.dst in 10.0.0.1/255.0.0.255"
        );
        assert_eq!(
            pattern(
                Field::TcpDport,
                &Pattern::Masked {
                    value: 0,
                    mask: 0xff00
                }
            ),
            "tcp.dport in 0/0xff00"
        );
        assert_eq!(
            pattern(
                Field::TcpFlags,
                &Pattern::Masked {
                    value: 0x02,
                    mask: 0x12
                }
            ),
            "tcp.flags in syn/syn|ack"
        );
        assert_eq!(
            pattern(Field::TcpDport, &Pattern::Range { lo: 1000, hi: 2000 }),
            "tcp.dport in 1000..2000"
        );
        assert_eq!(
            pattern(Field::UdpDport, &Pattern::Set(vec![53, 123])),
            "udp.dport in {53, 123}"
        );
    }

    #[test]
    fn prefixes_cover_the_edges() {
        assert_eq!(prefix_len(Field::IpSrc, 0xffff_ffff), Some(32));
        assert_eq!(prefix_len(Field::IpSrc, 0), Some(0));
        assert_eq!(prefix_len(Field::Ip6Src, u128::MAX), Some(128));
        assert_eq!(prefix_len(Field::Ip6Src, u128::MAX << 64), Some(64));
        // Bits beyond the field's width are not a prefix of it.
        assert_eq!(prefix_len(Field::IpSrc, 0x1_ffff_ffff), None);
        assert_eq!(prefix_len(Field::IpSrc, 0xff00_ff00), None);
        assert_eq!(prefix_len(Field::TcpDport, 0xff00), None);
    }

    #[test]
    fn expressions_keep_their_shape_with_few_parentheses() {
        let p = sample();
        let a = || reg(0);
        let b = || reg(1);
        // Left-associative chains need no parentheses...
        assert_eq!(
            expr(&p, &bin(BinOp::Sub, bin(BinOp::Sub, a(), b()), Expr::Now)),
            "a - b - now"
        );
        // ...a right-nested one does.
        assert_eq!(
            expr(&p, &bin(BinOp::Sub, a(), bin(BinOp::Sub, b(), Expr::Now))),
            "a - (b - now)"
        );
        assert_eq!(
            expr(
                &p,
                &bin(BinOp::Mul, bin(BinOp::Add, a(), b()), Expr::Const(3))
            ),
            "(a + b) * 3"
        );
        assert_eq!(
            expr(
                &p,
                &bin(BinOp::Add, a(), bin(BinOp::Mul, b(), Expr::Const(3)))
            ),
            "a + b * 3"
        );
        // Bitwise operators are always bracketed against other operators.
        assert_eq!(
            expr(
                &p,
                &bin(BinOp::And, bin(BinOp::Add, a(), b()), Expr::Const(255))
            ),
            "(a + b) & 255"
        );
        assert_eq!(
            expr(
                &p,
                &bin(BinOp::Or, bin(BinOp::Or, a(), b()), Expr::Const(1))
            ),
            "a | b | 1"
        );
        assert_eq!(
            expr(
                &p,
                &bin(BinOp::Shl, a(), bin(BinOp::And, b(), Expr::Const(7)))
            ),
            "a << (b & 7)"
        );
        assert_eq!(
            expr(
                &p,
                &bin(
                    BinOp::Min,
                    bin(BinOp::Add, a(), Expr::Const(1)),
                    bin(BinOp::Max, b(), Expr::Field(Field::PktLen))
                )
            ),
            "min(a + 1, max(b, pkt.len))"
        );
        assert_eq!(
            expr(
                &p,
                &bin(BinOp::Mul, bin(BinOp::Min, a(), b()), Expr::Const(2))
            ),
            "min(a, b) * 2"
        );
        assert_eq!(expr(&p, &Expr::Global(GlobalId(0))), "total");
    }

    #[test]
    fn negative_constants_are_parenthesised() {
        let p = sample();
        assert_eq!(
            expr(&p, &bin(BinOp::Sub, reg(0), Expr::Const(-1))),
            "a - (-1)"
        );
        assert_eq!(
            expr(&p, &Expr::Const(i64::MIN)),
            "(-9223372036854775807 - 1)"
        );
        assert_eq!(expr(&p, &Expr::Const(7)), "7");
    }

    #[test]
    fn out_of_range_indices_do_not_panic() {
        let p = sample();
        assert_eq!(expr(&p, &reg(99)), "?");
        assert_eq!(
            state_pattern(&p, &StatePattern::Set(vec![StateId(42)])),
            "?"
        );
    }

    #[test]
    fn conditions_and_actions() {
        let p = sample();
        let c = Condition {
            op: CmpOp::Ge,
            lhs: Expr::Now,
            rhs: reg(0),
        };
        assert_eq!(condition(&p, &c), "now >= a");
        assert_eq!(
            cond_match(
                &p,
                &CondMatch {
                    cond: c.clone(),
                    negated: true
                }
            ),
            "!(now >= a)"
        );
        assert_eq!(action(&Action::Pass), "pass");
        assert_eq!(action(&Action::Drop), "drop");
        assert_eq!(action(&Action::Tx), "tx");
        assert_eq!(
            action(&Action::Redirect {
                ifname: "eth1".to_string()
            }),
            "redirect eth1"
        );
        assert_eq!(
            action(&Action::Controller {
                then: ControllerThen::Pass
            }),
            "controller then pass"
        );
    }

    #[test]
    fn rows_print_items_and_effects() {
        let p = sample();
        let row = &p.rows[0];
        assert_eq!(state_pattern(&p, &row.state), "{NEW, ACTIVE}");
        assert_eq!(row_items(&p, row), "tcp.dport == 22, !(a < 10)");
        assert_eq!(
            row_effects(&p, row),
            "controller then drop, total = total + 1, next ACTIVE"
        );
        let bare = Row {
            pos: SourcePos::default(),
            state: StatePattern::Any,
            fields: vec![],
            conditions: vec![],
            action: Action::Drop,
            updates: vec![],
            writes: vec![],
            next: None,
        };
        assert_eq!(state_pattern(&p, &bare.state), "*");
        assert_eq!(row_items(&p, &bare), "*");
        assert_eq!(row_effects(&p, &bare), "drop");
    }

    #[test]
    fn durations_pick_an_exact_unit() {
        assert_eq!(duration(30_000_000_000), "30s");
        assert_eq!(duration(60_000_000_000), "1m");
        assert_eq!(duration(90_000_000_000), "90s");
        assert_eq!(duration(500_000_000), "500ms");
        assert_eq!(duration(2_000), "2us");
        assert_eq!(duration(1_500), "1500");
        assert_eq!(duration(0), "0");
    }

    /// Compile `source`, failing the test with the diagnostics on error.
    fn compile_ok(source: &str) -> Program {
        match crate::compile(source) {
            Ok(compiled) => compiled.program,
            Err(diags) => {
                let messages: Vec<String> = diags
                    .iter()
                    .map(|d| format!("{}: {} ({:?})", d.message, d.label, d.span))
                    .collect();
                panic!("does not compile: {messages:#?}\n{source}")
            }
        }
    }

    /// Row positions are where the rows were written: the printed text
    /// puts them elsewhere, and nothing else may differ.
    fn without_positions(mut p: Program) -> Program {
        for row in &mut p.rows {
            row.pos = SourcePos::default();
        }
        p
    }

    fn assert_round_trip(p: &Program) {
        let text = program(p);
        let back = compile_ok(&text);
        assert_eq!(
            without_positions(back),
            without_positions(p.clone()),
            "printed as:\n{text}"
        );
    }

    #[test]
    fn design_examples_round_trip() {
        for source in [
            include_str!("../../../examples/portknock.fsm"),
            include_str!("../../../examples/tokenbucket.fsm"),
        ] {
            assert_round_trip(&compile_ok(source));
        }
    }

    #[test]
    fn hand_built_programs_round_trip() {
        assert_round_trip(&sample());

        let mut p = sample();
        p.update_key = vec![Field::IpDst];
        p.hook = Hook::Xdp;
        p.full_policy = FullPolicy::EvictLeastRecent;
        p.default_action = Action::Redirect {
            ifname: "veth1".to_string(),
        };
        p.states[1].timeout = Some(Timeout {
            idle_ns: Some(1_500),
            hard_ns: None,
            rollback: StateId(1),
        });
        let field = |field, pattern| FieldMatch { field, pattern };
        let mut row = p.rows[0].clone();
        row.state = StatePattern::Any;
        row.fields = vec![
            field(
                Field::IpSrc,
                Pattern::Masked {
                    value: 0x0a00_0000,
                    mask: 0xff00_0000,
                },
            ),
            field(Field::UdpSport, Pattern::Range { lo: 1000, hi: 2000 }),
            field(Field::UdpDport, Pattern::Set(vec![53, 123])),
            field(Field::EthType, Pattern::Exact(0x0800)),
        ];
        row.conditions = vec![CondMatch {
            cond: Condition {
                op: CmpOp::Ne,
                lhs: bin(
                    BinOp::Mul,
                    bin(BinOp::Sub, reg(1), Expr::Now),
                    Expr::Const(-3),
                ),
                rhs: bin(
                    BinOp::Max,
                    Expr::Field(Field::PktLen),
                    bin(BinOp::And, reg(0), Expr::Const(255)),
                ),
            },
            negated: false,
        }];
        row.action = Action::Tx;
        row.updates = vec![Update {
            target: RegTarget::Flow(RegId(0)),
            value: bin(
                BinOp::Shl,
                bin(BinOp::Mod, reg(0), Expr::Const(7)),
                Expr::Const(2),
            ),
        }];
        row.next = None;
        p.rows.push(row.clone());
        // The notations that are easiest to get wrong: non-prefix masks in
        // each value format, and the constant without a positive literal.
        row.fields = vec![
            field(
                Field::IpDst,
                Pattern::Masked {
                    value: 0x0a00_0001,
                    mask: 0xff00_00ff,
                },
            ),
            field(
                Field::TcpFlags,
                Pattern::Masked {
                    value: 0x02,
                    mask: 0x12,
                },
            ),
            field(
                Field::TcpDport,
                Pattern::Masked {
                    value: 0,
                    mask: 0xff00,
                },
            ),
            field(
                Field::EthSrc,
                Pattern::Masked {
                    value: 0x0200_0000_0000,
                    mask: 0xff00_0000_0000,
                },
            ),
        ];
        row.conditions[0].cond.rhs = Expr::Const(i64::MIN);
        row.conditions[0].negated = true;
        p.rows.push(row);
        assert_round_trip(&p);
    }

    #[test]
    fn whole_program() {
        let text = program(&sample());
        let expected = "\
program sample
hook tc ingress
flow ip.src
states NEW, ACTIVE
timeout ACTIVE idle 30s hard 1m
registers a = 0, b = now + 5
globals total = -3
flows 1024 refuse
default pass

table
  {NEW, ACTIVE}  tcp.dport == 22, !(a < 10)  => controller then drop, total = total + 1, next ACTIVE
end
";
        assert_eq!(text, expected);
    }

    #[test]
    fn program_prints_update_key_and_rollback_only_when_declared() {
        let mut p = sample();
        p.update_key = vec![Field::IpDst];
        p.states[1].timeout = Some(Timeout {
            idle_ns: None,
            hard_ns: Some(1_000),
            rollback: StateId(1),
        });
        let text = program(&p);
        assert!(text.contains("\nupdate ip.dst\n"), "{text}");
        assert!(
            text.contains("\ntimeout ACTIVE hard 1us rollback ACTIVE\n"),
            "{text}"
        );
        let plain = program(&sample());
        assert!(!plain.contains("update "), "{plain}");
        assert!(!plain.contains("rollback"), "{plain}");
    }
}
