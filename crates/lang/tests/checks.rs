//! Every static check: its message, line and column (and help where it
//! matters), plus the warnings and the learning-switch example.

use flowstate_lang::compile;
use flowstate_lang::diag::{render, Diagnostic, Severity};
use flowstate_lang::ir::*;
use flowstate_wire::Field;

/// A complete program around `body` (declarations and/or rows): the
/// header takes lines 1-8, so `body` starts on line 9 and rows after the
/// `table` line (line 9 when `table` is first in `body`).
fn program(decls: &str, rows: &str) -> String {
    format!(
        "program t\nhook xdp\nflow ip.src\nstates A, B\nregisters r = 0\nglobals g = 0\nconst C = 3\ndefault pass\n{decls}table\n{rows}end\n"
    )
}

fn diags(src: &str) -> Vec<Diagnostic> {
    match compile(src) {
        Ok(c) => c.warnings,
        Err(d) => d,
    }
}

/// The one error `src` has: message, line, column.
fn error(src: &str) -> (String, u32, u32, Option<String>) {
    let ds: Vec<Diagnostic> = diags(src)
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(
        ds.len(),
        1,
        "expected one error, got:\n{}",
        render(&ds, "t.fsm", src, false)
    );
    let (line, col) = ds[0].line_col(src);
    (ds[0].message.clone(), line, col, ds[0].help.clone())
}

fn assert_error(src: &str, message: &str, line: u32, col: u32) -> Option<String> {
    let (m, l, c, help) = error(src);
    assert_eq!((m.as_str(), l, c), (message, line, col), "\n{src}");
    help
}

fn warnings(src: &str) -> Vec<(String, u32, u32)> {
    let c = compile(src).unwrap_or_else(|d| panic!("{}", render(&d, "t.fsm", src, false)));
    c.warnings
        .iter()
        .map(|d| {
            assert_eq!(d.severity, Severity::Warning);
            let (l, col) = d.line_col(src);
            (d.message.clone(), l, col)
        })
        .collect()
}

#[test]
fn base_program_is_clean() {
    let src = program("", "  * * => pass\n");
    assert_eq!(warnings(&src), vec![]);
}

// ---- unknown names ---------------------------------------------------------

#[test]
fn unknown_state_suggests_the_closest() {
    let src = program("", "  AA * => pass\n");
    let help = assert_error(&src, "unknown state `AA`", 10, 3).unwrap();
    assert_eq!(help, "did you mean `A`? states: A, B");
    let src = program("", "  A * => pass, next Z\n");
    let help = assert_error(&src, "unknown state `Z`", 10, 21).unwrap();
    assert_eq!(help, "states: A, B");
}

#[test]
fn unknown_field_suggests_the_closest() {
    let src = program("", "  A tcp.dprot == 22 => pass\n");
    let help = assert_error(&src, "unknown field `tcp.dprot`", 10, 5).unwrap();
    assert!(
        help.starts_with("did you mean `tcp.dport`? fields: eth.src,"),
        "{help}"
    );
    let src = program("", "  A * => pass, r = ip.scr + 1\n");
    assert_error(&src, "unknown field `ip.scr`", 10, 20);
    let src = "program t\nhook xdp\nflow ip.sorce\nstates A\ntable\nend\n";
    assert_error(src, "unknown field `ip.sorce`", 3, 6);
}

#[test]
fn unknown_register_and_name() {
    let src = program("", "  A * => pass, rr = 1\n");
    let help = assert_error(&src, "unknown register `rr`", 10, 16).unwrap();
    assert_eq!(help, "did you mean `r`? registers and globals: r, g");
    let src = program("", "  A now > CC => pass\n");
    let help = assert_error(&src, "unknown name `CC`", 10, 11).unwrap();
    assert!(help.starts_with("did you mean `C`?"), "{help}");
    let src = program("", "  A now > A => pass\n");
    let help = assert_error(&src, "unknown name `A`", 10, 11).unwrap();
    assert!(help.contains("`A` is a state"), "{help}");
    let src = program("", "  A * => pass, C = 1\n");
    assert_error(&src, "cannot assign to const `C`", 10, 16);
}

#[test]
fn const_uses_only_earlier_consts() {
    let src =
        "program t\nhook xdp\nflow ip.src\nstates A\nconst X = Y + 1\nconst Y = 2\ntable\nend\n";
    let help = assert_error(src, "unknown name `Y`", 5, 11).unwrap();
    assert!(help.contains("declared later"), "{help}");
}

// ---- duplicates ------------------------------------------------------------

#[test]
fn duplicate_names_are_errors() {
    let src = "program t\nhook xdp\nflow ip.src\nstates A, B, A\ntable\nend\n";
    assert_error(src, "duplicate state `A`", 4, 14);
    let src = program("registers C = 1\n", "");
    assert_error(&src, "duplicate name `C`", 9, 11);
    let src = program("hook tc ingress\n", "");
    assert_error(&src, "duplicate `hook` declaration", 9, 1);
    let src = program("timeout A idle 1s\ntimeout A hard 2s\n", "");
    assert_error(&src, "second timeout for state `A`", 10, 1);
    let src = "program t\nhook xdp\nflow ip.src, ip.src\nstates A\ntable\nend\n";
    assert_error(src, "`ip.src` appears twice in the key", 3, 14);
}

#[test]
fn reserved_words_cannot_be_names() {
    let src = program("const now = 1\n", "");
    assert_error(&src, "`now` is a reserved word", 9, 7);
    let src = program("registers syn = 1\n", "");
    assert_error(&src, "`syn` is a TCP flag name", 9, 11);
}

// ---- widths and types ------------------------------------------------------

#[test]
fn wide_fields_only_in_patterns_and_keys() {
    let src = program("", "  A * => pass, r = ip6.src\n");
    let (m, l, c, _) = error(&src);
    assert_eq!((l, c), (10, 20));
    assert_eq!(
        m,
        "`ip6.src` is 128 bits wide: 128-bit fields are only for patterns and keys"
    );
    let src = program("", "  A ip6.dst != 1 => pass\n");
    assert_error(
        &src,
        "`ip6.dst` is 128 bits wide: 128-bit fields are only for patterns and keys",
        10,
        5,
    );
    let src = program("registers x = ip6.src\n", "");
    assert_error(
        &src,
        "`ip6.src` is 128 bits wide: 128-bit fields are only for patterns and keys",
        9,
        15,
    );
    // But as a pattern and a key it is fine.
    let src = "program t\nhook xdp\nflow ip6.src\nstates A\ndefault drop\ntable\n  * ip6.src in 2001:db8::/32 => pass\nend\n";
    let p = compile(src).unwrap().program;
    assert_eq!(
        p.rows[0].fields[0].pattern,
        Pattern::Masked {
            value: 0x2001_0db8 << 96,
            mask: 0xffff_ffff << 96
        }
    );
}

#[test]
fn pattern_values_must_fit_the_field() {
    let src = program("", "  A tcp.dport == 70000 => pass\n");
    let help = assert_error(&src, "value does not fit `tcp.dport` (16 bits)", 10, 18).unwrap();
    assert_eq!(help, "values of `tcp.dport` go up to 65535");
    let src = program("", "  A ip.src == 2001:db8::1 => pass\n");
    assert_error(&src, "value does not fit `ip.src` (32 bits)", 10, 15);
    let src = program("", "  A tcp.dport in {22, 65536} => pass\n");
    assert_error(&src, "value does not fit `tcp.dport` (16 bits)", 10, 23);
    let src = program("", "  A ip.src in 10.0.0.0/33 => pass\n");
    assert_error(&src, "prefix longer than `ip.src` (32 bits)", 10, 24);
    let src = program("", "  A ip.dscp in 0..64 => pass\n");
    assert_error(&src, "value does not fit `ip.dscp` (6 bits)", 10, 19);
    let src = program("", "  A tcp.dport == -1 => pass\n");
    assert_error(&src, "pattern value is negative", 10, 18);
}

#[test]
fn patterns_that_never_match_are_errors() {
    let src = program("", "  A ip.src in 10.0.0.1/8 => pass\n");
    let help = assert_error(&src, "value has bits outside the mask", 10, 15).unwrap();
    assert!(help.contains("`10.0.0.0`"), "{help}");
    let src = program("", "  A tcp.dport in 2000..1000 => pass\n");
    assert_error(&src, "empty range", 10, 18);
    let src = program("", "  A !(tcp.dport in 1..2) => pass\n");
    assert_error(&src, "a pattern cannot be negated", 10, 5);
}

// ---- division --------------------------------------------------------------

#[test]
fn division_needs_a_nonzero_constant() {
    let src = program("", "  A * => pass, r = r / (C - 3)\n");
    assert_error(&src, "division by zero", 10, 24);
    let src = program("", "  A * => pass, r = r % 0\n");
    assert_error(&src, "modulo by zero", 10, 24);
    let src = program("", "  A * => pass, r = 10 / r\n");
    assert_error(&src, "divisor must be a constant", 10, 25);
    let src = program("const D = 1 / 0\n", "");
    assert_error(&src, "division by zero", 9, 15);
}

// ---- constants and declarations -------------------------------------------

#[test]
fn constants_must_be_constant() {
    let src = program("globals h = now\n", "");
    assert_error(&src, "`now` is not a constant", 9, 13);
    let src = program("const K = r\n", "");
    assert_error(&src, "register `r` is not a constant", 9, 11);
    let src = program("registers x = r\n", "");
    assert_error(&src, "register initial value reads a register", 9, 15);
    let src = program("registers x = g\n", "");
    assert_error(&src, "register initial value reads a global", 9, 15);
    let src = program("", "  A tcp.dport in r => pass\n");
    assert_error(&src, "register `r` is not a constant", 10, 18);
}

#[test]
fn declaration_values_are_checked() {
    let src = program("flows 0\n", "");
    assert_error(&src, "flow capacity out of range", 9, 7);
    let src = program("flows 16_777_217 refuse\n", "");
    assert_error(&src, "flow capacity out of range", 9, 7);
    let src = program("timeout A idle 0s\n", "");
    assert_error(&src, "timeout must be positive", 9, 16);
    let src = program("timeout A idle 1s rollback C\n", "");
    assert_error(&src, "unknown state `C`", 9, 28);
    let src = program("timeout A rollback B\n", "");
    assert_error(&src, "timeout without a duration", 9, 1);
    let src = program("", "  A * => redirect this-is-far-too-long\n");
    assert_error(
        &src,
        "expected end of line after the row's actions, found `-`",
        10,
        23,
    );
    let src = program("", "  A * => redirect \"this-is-far-too-long\"\n");
    assert_error(
        &src,
        "invalid interface name `this-is-far-too-long`",
        10,
        19,
    );
}

#[test]
fn missing_declarations() {
    let cases = [
        (
            "hook xdp\nflow ip.src\nstates A\ntable\nend\n",
            "missing `program` declaration",
        ),
        (
            "program p\nflow ip.src\nstates A\ntable\nend\n",
            "missing `hook` declaration",
        ),
        (
            "program p\nhook xdp\nstates A\ntable\nend\n",
            "missing `flow` declaration",
        ),
        (
            "program p\nhook xdp\nflow ip.src\ntable\nend\n",
            "missing `states` declaration",
        ),
        (
            "program p\nhook xdp\nflow ip.src\nstates A\n",
            "missing `table`",
        ),
    ];
    for (src, message) in cases {
        let help = assert_error(src, message, 1, 1);
        assert!(help.is_some(), "{message}");
    }
    let ds = diags("");
    assert_eq!(ds.len(), 5);
}

// ---- rows ------------------------------------------------------------------

#[test]
fn rows_need_exactly_one_verdict() {
    let src = program("", "  A * => next B\n");
    let help = assert_error(&src, "row has no verdict", 10, 7).unwrap();
    assert!(
        help.contains("`pass`, `drop`, `tx`, `redirect IFNAME`"),
        "{help}"
    );
    let src = program("", "  A * => pass, drop\n");
    assert_error(&src, "second verdict in a row", 10, 16);
    let src = program("", "  A * => pass, next A, next B\n");
    assert_error(&src, "second `next` in a row", 10, 24);
    let src = program("", "  A * => pass, r = 1, r = 2\n");
    assert_error(&src, "`r` assigned twice in one row", 10, 23);
}

// ---- syntax ----------------------------------------------------------------

#[test]
fn syntax_errors_say_what_was_expected() {
    let src = "program t\nhook tc\n";
    let help = assert_error(
        src,
        "expected `ingress` or `egress`, found end of line",
        2,
        8,
    )
    .unwrap();
    assert!(help.contains("hook tc ingress"));
    let src = program("", "  A tcp.dport 22 => pass\n");
    assert_error(
        &src,
        "expected a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`), found a literal",
        10,
        15,
    );
    let src = program("", "  A * => frobnicate\n");
    assert_error(&src, "expected an action, found `frobnicate`", 10, 10);
    let src = program("", "  A now < (1 + 2 => pass\n");
    assert_error(&src, "expected `)`, found `=>`", 10, 18);
    let src = program("frob 3\n", "");
    assert_error(&src, "unknown declaration `frob`", 9, 1);
    let src = "program t\nhook xdp\nflow ip.src\nstates A\ntable\n  * * => pass\n";
    assert_error(src, "table without `end`", 5, 1);
    let src = program("", "  A * => pass\nend\nflows 10\n");
    // The template's own `end` follows; the first one closes the table.
    let ds = diags(&src);
    assert!(
        ds.iter()
            .any(|d| d.message == "declaration after the table"),
        "{ds:?}"
    );
}

#[test]
fn parser_recovers_and_reports_every_line() {
    let src = program(
        "hook\n",
        "  A tcp.dport == => pass\n  B * => pass\n  * * pass\n",
    );
    let found: Vec<(String, u32)> = diags(&src)
        .iter()
        .map(|d| (d.message.clone(), d.line_col(&src).0))
        .collect();
    assert_eq!(
        found,
        vec![
            ("expected a hook, found end of line".to_string(), 9),
            ("expected an expression, found `=>`".to_string(), 11),
            ("expected `=>`, found `pass`".to_string(), 13),
        ]
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    let src = program("", &format!("  A now > {deep} => pass\n"));
    // Reported where the limit is crossed: after 101 parentheses.
    assert_error(&src, "expression nested too deeply", 10, 112);
    let long = vec!["1"; 5000].join(" + ");
    let src = program(&format!("const K = {long}\n"), "");
    assert_eq!(error(&src).0, "expression nested too deeply");
    let negs = format!("{}1", "-".repeat(5000));
    assert_eq!(
        error(&program(&format!("const K = {negs}\n"), "")).0,
        "expression nested too deeply"
    );
    let nots = format!("{}now > 1", "not ".repeat(5000));
    assert_eq!(
        error(&program("", &format!("  A {nots} => pass\n"))).0,
        "expression nested too deeply"
    );
    // Moderate nesting is fine.
    let ok = format!("{}1{}", "(".repeat(50), ")".repeat(50));
    assert!(compile(&program(&format!("const K = {ok}\n"), "  * * => pass\n")).is_ok());
}

// ---- warnings --------------------------------------------------------------

#[test]
fn unreachable_row_points_at_the_earlier_row() {
    let src = program(
        "",
        "  * tcp.dport in 1000..2000 => pass\n  A tcp.dport == 1500, now > 0 => drop\n  * * => pass\n",
    );
    let w = warnings(&src);
    assert_eq!(
        w,
        vec![(
            "row can never match: the row at line 10 matches all its packets first".to_string(),
            11,
            3
        )]
    );
    let ds = compile(&src).unwrap().warnings;
    assert_eq!(ds[0].notes.len(), 1);
    // Conditions: the earlier row's must all appear in the later row.
    let src = program(
        "",
        "  A now > r => pass\n  A now > r, tcp.dport == 1 => drop\n  A now < r => drop\n  * * => pass\n",
    );
    assert_eq!(warnings(&src).len(), 1);
    assert_eq!(warnings(&src)[0].1, 11);
    // A narrower earlier row does not cover a wider later one.
    let src = program(
        "",
        "  A ip.src in 10.1.0.0/16 => pass\n  A ip.src in 10.0.0.0/8 => drop\n  {A, B} tcp.flags has syn => drop\n  A tcp.flags has syn|ack => pass\n  * * => pass\n",
    );
    let w = warnings(&src);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].1, w[0].2), (13, 3));
    assert!(w[0].0.contains("line 12"));
}

#[test]
fn absent_key_fields_warn_without_default() {
    let src =
        "program t\nhook xdp\nflow pkt.ifindex, ip.src\nstates A\ntable\n  * * => pass\nend\n";
    let w = warnings(src);
    assert_eq!(
        w,
        vec![(
            "key field `ip.src` may be absent: such packets get the default `pass` without state"
                .to_string(),
            3,
            19
        )]
    );
    let d = &compile(src).unwrap().warnings[0];
    assert!(d.help.as_deref().unwrap().contains("declare `default"));
    // Metadata keys are always present.
    let src = "program t\nhook xdp\nflow pkt.ifindex\nstates A\ntable\n  * * => pass\nend\n";
    assert_eq!(warnings(src), vec![]);
}

#[test]
fn uncovered_table_warns_without_default() {
    let src = "program t\nhook xdp\nflow pkt.ifindex\nstates A, B\ntable\n  A * => drop\n  B tcp.dport == 1 => drop\nend\n";
    let w = warnings(src);
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].0.as_str(), w[0].1, w[0].2),
        (
            "the table does not match every packet: the others get the default `pass`",
            5,
            1
        )
    );
    // Unconstrained rows for every state together cover the table.
    let src = "program t\nhook xdp\nflow pkt.ifindex\nstates A, B\ntable\n  A * => drop\n  B => drop\nend\n";
    assert_eq!(warnings(src), vec![]);
}

// ---- what compiles ---------------------------------------------------------

#[test]
fn learning_switch_looks_up_and_updates_by_different_keys() {
    let src = "\
program learning_switch
hook xdp
flow eth.dst
update eth.src
states UNKNOWN, PORT
registers port = pkt.ifindex
flows 4096 refuse
table
  UNKNOWN  *  => pass, next PORT
  PORT     *  => pass, port = pkt.ifindex
end
";
    let c = compile(src).unwrap_or_else(|d| panic!("{}", render(&d, "ls", src, false)));
    let p = &c.program;
    assert_eq!(p.lookup_key, vec![Field::EthDst]);
    assert_eq!(p.update_key, vec![Field::EthSrc]);
    assert_eq!(p.registers[0].init, Expr::Field(Field::PktIfindex));
    assert_eq!((p.capacity, p.full_policy), (4096, FullPolicy::RefuseNew));
    // Two key warnings (eth.dst, eth.src may be absent), no default.
    let lines: Vec<u32> = c.warnings.iter().map(|w| w.line_col(src).0).collect();
    assert_eq!(lines, vec![3, 4]);
}

#[test]
fn every_pattern_and_value_form() {
    let src = program(
        "const PORT = 8000\n",
        "  A tcp.flags has syn|ack, tcp.dport in {443, 80, 22, 80}, ip.dst in 10.0.0.0/255.0.0.255 => pass\n\
         \x20 A eth.type == 0x0800/0xff00, eth.src == 02:00:00:00:00:01, tcp.sport == PORT + 1 => pass\n\
         \x20 {A, B} tcp.dport == r, !(pkt.len < 100), not tcp.flags has fin, udp.dport == * => drop\n\
         \x20 A|B pkt.len in 64..1_500, tcp.dport == (8 / 2), now - 4s > g => controller\n\
         \x20 A * => controller then drop, g = max(g, 200/s), r = min(r, -1) << 2 ^ 3 | 4 & 5\n\
         \x20 * * => redirect eth1, next B\n",
    );
    let c = compile(&src).unwrap_or_else(|d| panic!("{}", render(&d, "t", &src, false)));
    let p = &c.program;
    let r = &p.rows;
    assert_eq!(
        r[0].fields[0].pattern,
        Pattern::Masked {
            value: 0x12,
            mask: 0x12
        }
    );
    assert_eq!(r[0].fields[1].pattern, Pattern::Set(vec![22, 80, 443]));
    assert_eq!(
        r[0].fields[2].pattern,
        Pattern::Masked {
            value: 0x0a00_0000,
            mask: 0xff00_00ff
        }
    );
    assert_eq!(
        r[1].fields[0].pattern,
        Pattern::Masked {
            value: 0x0800,
            mask: 0xff00
        }
    );
    assert_eq!(r[1].fields[1].pattern, Pattern::Exact(0x0200_0000_0001));
    assert_eq!(r[1].fields[2].pattern, Pattern::Exact(8001));
    // `FIELD == register` is a condition.
    assert_eq!(
        r[2].conditions[0],
        CondMatch {
            cond: Condition {
                op: CmpOp::Eq,
                lhs: Expr::Field(Field::TcpDport),
                rhs: Expr::Reg(RegId(0))
            },
            negated: false
        }
    );
    assert!(r[2].conditions[1].negated);
    // `not tcp.flags has fin` is `(tcp.flags & fin) == fin`, negated.
    assert_eq!(
        r[2].conditions[2],
        CondMatch {
            cond: Condition {
                op: CmpOp::Eq,
                lhs: Expr::Binary(
                    BinOp::And,
                    Box::new(Expr::Field(Field::TcpFlags)),
                    Box::new(Expr::Const(1))
                ),
                rhs: Expr::Const(1)
            },
            negated: true
        }
    );
    assert_eq!(
        r[2].fields[0].pattern,
        Pattern::Masked { value: 0, mask: 0 }
    );
    assert_eq!(r[2].state, StatePattern::Set(vec![StateId(0), StateId(1)]));
    assert_eq!(r[3].state, StatePattern::Set(vec![StateId(0), StateId(1)]));
    assert_eq!(r[3].fields[0].pattern, Pattern::Range { lo: 64, hi: 1500 });
    assert_eq!(r[3].fields[1].pattern, Pattern::Exact(4));
    assert_eq!(
        r[3].conditions[0].cond.lhs,
        Expr::Binary(
            BinOp::Sub,
            Box::new(Expr::Now),
            Box::new(Expr::Const(4_000_000_000))
        )
    );
    assert_eq!(
        r[3].action,
        Action::Controller {
            then: ControllerThen::Pass
        }
    );
    assert_eq!(
        r[4].action,
        Action::Controller {
            then: ControllerThen::Drop
        }
    );
    assert_eq!(
        r[4].updates[0].value,
        Expr::Binary(
            BinOp::Max,
            Box::new(Expr::Global(GlobalId(0))),
            Box::new(Expr::Const(5_000_000))
        )
    );
    // C precedence: `((min(r,-1) << 2) ^ 3) | (4 & 5)`, with 4 & 5 folded.
    let min = Expr::Binary(
        BinOp::Min,
        Box::new(Expr::Reg(RegId(0))),
        Box::new(Expr::Const(-1)),
    );
    let shl = Expr::Binary(BinOp::Shl, Box::new(min), Box::new(Expr::Const(2)));
    let xor = Expr::Binary(BinOp::Xor, Box::new(shl), Box::new(Expr::Const(3)));
    assert_eq!(
        r[4].updates[1].value,
        Expr::Binary(BinOp::Or, Box::new(xor), Box::new(Expr::Const(4)))
    );
    assert_eq!(
        r[5].action,
        Action::Redirect {
            ifname: "eth1".to_string()
        }
    );
    assert_eq!(r[5].next, Some(StateId(1)));
}

#[test]
fn continuation_after_a_comma_and_hooks() {
    let src = "program t\nhook tc egress\nflow ip.src,\n     ip.dst\nstates A\ndefault drop\ntable\n  * * => pass,\n        next A\nend\n";
    let p = compile(src).unwrap().program;
    assert_eq!(p.hook, Hook::TcEgress);
    assert_eq!(p.lookup_key, vec![Field::IpSrc, Field::IpDst]);
    assert_eq!(p.rows[0].next, Some(StateId(0)));
    assert_eq!(p.default_action, Action::Drop);
}

#[test]
fn rendered_errors_look_like_rustc() {
    let src = program("", "  OPNE * => pass\n");
    let text = render(&diags(&src), "knock.fsm", &src, false);
    assert!(text.contains("error: unknown state `OPNE`"), "{text}");
    assert!(text.contains("--> knock.fsm:10:3"), "{text}");
    assert!(text.contains("10 |   OPNE * => pass"), "{text}");
    assert!(text.contains("^^^^ not a declared state"), "{text}");
    assert!(text.contains("= help: states: A, B"), "{text}");
}

#[test]
fn json_form_serializes() {
    let src = program("", "  A tcp.dport == 70000 => pass\n");
    let d = &diags(&src)[0];
    let json = serde_json::to_value(d.to_json("t.fsm", &src)).unwrap();
    assert_eq!(json["severity"], "error");
    assert_eq!(json["file"], "t.fsm");
    assert_eq!(
        (json["line"].as_u64(), json["column"].as_u64()),
        (Some(10), Some(18))
    );
    assert_eq!(
        (json["end_line"].as_u64(), json["end_column"].as_u64()),
        (Some(10), Some(23))
    );
    assert_eq!(json["label"], "too wide for the field");
}

#[test]
fn not_equal_on_a_narrow_field_is_a_condition() {
    let src = program("", "  A tcp.dport != 22 => drop\n  * * => pass\n");
    let p = compile(&src).unwrap().program;
    assert!(p.rows[0].fields.is_empty());
    assert_eq!(
        p.rows[0].conditions,
        vec![CondMatch {
            cond: Condition {
                op: CmpOp::Ne,
                lhs: Expr::Field(Field::TcpDport),
                rhs: Expr::Const(22)
            },
            negated: false
        }]
    );
    // `!(FIELD == V)` keeps the comparison and negates it.
    let src = program("", "  A !(tcp.dport == 22) => drop\n  * * => pass\n");
    let p = compile(&src).unwrap().program;
    assert!(p.rows[0].conditions[0].negated);
    assert_eq!(p.rows[0].conditions[0].cond.op, CmpOp::Eq);
}

#[test]
fn update_key_must_have_the_lookup_key_layout() {
    let src =
        "program p\nhook xdp\nflow ip.src\nupdate tcp.dport\nstates A\ntable\n  * * => pass\nend\n";
    let diags = flowstate_lang::compile(src).err().unwrap_or_default();
    assert!(!diags.is_empty(), "rejected");
    let d = diags
        .iter()
        .find(|d| {
            d.message
                .contains("update key does not have the lookup key's layout")
        })
        .expect("layout error reported");
    assert_eq!(d.line_col(src), (4, 1));
    assert!(d.help.as_deref().unwrap().contains("ip.src (4 bytes)"));
}

#[test]
fn redirect_to_a_register_a_global_or_a_quoted_interface() {
    let src = program(
        "",
        "  A udp.dport == 1 => redirect r\n  A udp.dport == 2 => redirect g\n  \
         A udp.dport == 3 => redirect \"r\"\n  A * => redirect eth1\n",
    );
    let p = compile(&src).unwrap().program;
    let port = |target, name: &str| Action::RedirectPort {
        port: target,
        name: name.to_string(),
    };
    assert_eq!(p.rows[0].action, port(RegTarget::Flow(RegId(0)), "r"));
    assert_eq!(p.rows[1].action, port(RegTarget::Global(GlobalId(0)), "g"));
    // A string is always an interface name, even one named like a register.
    assert_eq!(
        p.rows[2].action,
        Action::Redirect {
            ifname: "r".to_string()
        }
    );
    assert_eq!(p.rows[3].action.verdict_name(), "redirect");
    // The printer quotes the interface named like a register, so the text
    // compiles back to the same program.
    let printed = flowstate_lang::print::program(&p);
    assert!(printed.contains("redirect \"r\""), "{printed}");
    let again = compile(&printed).unwrap().program;
    let actions = |p: &Program| p.rows.iter().map(|r| r.action.clone()).collect::<Vec<_>>();
    assert_eq!(actions(&again), actions(&p));
}

#[test]
fn the_default_action_cannot_redirect_to_a_register() {
    let src = "program t\nhook xdp\nflow ip.src\nstates A\nregisters port = 0\n\
               default redirect port\ntable\n  * * => pass\nend\n";
    let (message, line, col, help) = error(src);
    assert_eq!(
        (message.as_str(), line, col),
        (
            "the default action cannot redirect to register `port`",
            6,
            18
        )
    );
    assert!(help.unwrap().contains("redirect \"port\""));
    // Quoted, it is an interface called `port`.
    let quoted = src.replace("default redirect port", "default redirect \"port\"");
    assert!(compile(&quoted).is_ok());
}

#[test]
fn port_values_that_are_not_ifindexes_drop() {
    assert_eq!(port_ifindex(0), None);
    assert_eq!(port_ifindex(-1), None);
    assert_eq!(port_ifindex(1 << 32), None);
    assert_eq!(port_ifindex(1), Some(1));
    assert_eq!(port_ifindex(u32::MAX as i64), Some(u32::MAX));
}
