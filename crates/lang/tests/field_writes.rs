//! Rows that assign packet fields: what the checker accepts, what it
//! refuses (message, line, column, caret), and printing round trips.

use flowstate_lang::compile;
use flowstate_lang::diag::{render, Diagnostic, Severity};
use flowstate_lang::ir::*;
use flowstate_lang::print;
use flowstate_wire::Field;

/// Rows start on line 8.
fn program(rows: &str) -> String {
    format!(
        "program t\nhook xdp\nflow eth.src\nstates A\nregisters r = 7\ndefault pass\ntable\n{rows}end\n"
    )
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match compile(src) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

/// The one error of `src`: message, line, column, and the rendered text.
fn one_error(src: &str) -> (String, u32, u32, String) {
    let ds = errors(src);
    let text = render(&ds, "t.fsm", src, false);
    assert_eq!(ds.len(), 1, "expected one error:\n{text}");
    let (line, col) = ds[0].line_col(src);
    (ds[0].message.clone(), line, col, text)
}

#[test]
fn writes_are_checked_into_the_row_in_order() {
    let src = program(
        "  A ip.proto == 1 => tx, r = r + 1, ip.src = ip.dst, ip.dst = ip.src, ip.ttl = ip.ttl - 1, icmp.type = 0, eth.src = 02:00:00:00:00:01\n",
    );
    let c = compile(&src).unwrap_or_else(|d| panic!("{}", render(&d, "t.fsm", &src, false)));
    let row = &c.program.rows[0];
    assert_eq!(row.updates.len(), 1);
    let fields: Vec<Field> = row.writes.iter().map(|w| w.field).collect();
    assert_eq!(
        fields,
        [
            Field::IpSrc,
            Field::IpDst,
            Field::IpTtl,
            Field::IcmpType,
            Field::EthSrc
        ]
    );
    assert_eq!(row.writes[0].value, Expr::Field(Field::IpDst));
    assert_eq!(row.writes[4].value, Expr::Const(0x0200_0000_0001));
}

#[test]
fn arp_responder_compiles_and_prints_back() {
    let src = program(
        "  A arp.op == 1, arp.tpa == 10.0.0.1 => tx, arp.op = 2, arp.tha = arp.sha, arp.tpa = arp.spa, arp.sha = 02:00:00:00:00:aa, arp.spa = 10.0.0.1, eth.dst = eth.src, eth.src = 02:00:00:00:00:aa\n",
    );
    let program = compile(&src).unwrap().program;
    let text = print::program(&program);
    assert!(text.contains("arp.spa = 10.0.0.1"), "{text}");
    assert!(text.contains("eth.src = 02:00:00:00:00:aa"), "{text}");
    assert_eq!(
        compile(&text).unwrap().program.rows[0].writes,
        program.rows[0].writes,
        "{text}"
    );
}

#[test]
fn a_field_that_cannot_be_written_is_refused_with_a_caret() {
    let src = program("  A * => pass, pkt.len = 3\n");
    let (message, line, col, text) = one_error(&src);
    assert_eq!(
        (message.as_str(), line, col),
        ("cannot assign `pkt.len`", 8, 16)
    );
    assert!(text.contains("t.fsm:8:16"), "{text}");
    assert!(text.contains("^^^^^^^ not a writable field"), "{text}");
    assert!(
        text.contains("ip.ttl"),
        "the help lists writable fields: {text}"
    );

    let (message, ..) = one_error(&program("  A * => pass, ip6.src = 1\n"));
    assert_eq!(message, "cannot assign `ip6.src`");
}

#[test]
fn constants_must_fit_the_field() {
    let (message, line, col, text) = one_error(&program("  A * => pass, ip.ttl = 256\n"));
    assert_eq!(
        (message.as_str(), line, col),
        ("value does not fit `ip.ttl`", 8, 25)
    );
    assert!(text.contains("`ip.ttl` is 8 bits wide"), "{text}");
    let (message, ..) = one_error(&program("  A * => pass, ip.dscp = 64\n"));
    assert_eq!(message, "value does not fit `ip.dscp`");
    let (message, ..) = one_error(&program("  A * => pass, udp.dport = -1\n"));
    assert_eq!(message, "value does not fit `udp.dport`");
    // A MAC fits eth.src, an IPv4 address fits ip.src but not ip.ttl.
    assert!(errors(&program("  A * => pass, eth.dst = ff:ff:ff:ff:ff:ff\n")).is_empty());
    let (message, ..) = one_error(&program("  A * => pass, ip.ttl = 10.0.0.1\n"));
    assert_eq!(message, "value does not fit `ip.ttl`");
}

#[test]
fn a_field_written_twice_and_unknown_fields_are_errors() {
    let (message, line, col, text) = one_error(&program("  A * => pass, ip.ttl = 1, ip.ttl = 2\n"));
    assert_eq!(
        (message.as_str(), line, col),
        ("`ip.ttl` assigned twice in one row", 8, 28)
    );
    assert!(text.contains("first assignment"), "{text}");
    let (message, line, col, _) = one_error(&program("  A * => pass, ip.tll = 1\n"));
    assert_eq!(
        (message.as_str(), line, col),
        ("unknown field `ip.tll`", 8, 16)
    );
}

#[test]
fn a_row_that_writes_a_field_does_not_cover_rows_without_it() {
    // The first row matches only packets with a TCP header, so the second
    // is reachable; the third is covered by the second.
    let src = program("  A * => pass, tcp.dport = 80\n  A * => drop\n  A * => pass\n");
    let c = compile(&src).unwrap();
    let lines: Vec<u32> = c.warnings.iter().map(|w| w.line_col(&src).0).collect();
    assert_eq!(lines, [10], "{:?}", c.warnings);
}
