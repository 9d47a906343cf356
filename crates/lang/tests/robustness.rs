//! No input makes the front end panic, and whatever compiles prints back
//! to the same program. Case counts come from PROPTEST_CASES (proptest's
//! own variable); run with e.g. PROPTEST_CASES=20000 for a long soak.

use flowstate_lang::diag::render;
use flowstate_lang::ir::{Program, SourcePos};
use flowstate_lang::{compile, print};
use proptest::prelude::*;

const PORTKNOCK: &str = include_str!("../../../examples/portknock.fsm");
const TOKENBUCKET: &str = include_str!("../../../examples/tokenbucket.fsm");

/// Words and punctuation the language uses, plus some near misses.
const VOCABULARY: &[&str] = &[
    "program",
    "hook",
    "xdp",
    "tc",
    "ingress",
    "egress",
    "flow",
    "update",
    "states",
    "timeout",
    "idle",
    "hard",
    "rollback",
    "registers",
    "globals",
    "const",
    "flows",
    "evict",
    "refuse",
    "default",
    "table",
    "end",
    "pass",
    "drop",
    "tx",
    "redirect",
    "controller",
    "then",
    "next",
    "now",
    "min",
    "max",
    "not",
    "in",
    "has",
    "syn",
    "ack",
    "A",
    "B",
    "r",
    "g",
    "C",
    "ip.src",
    "ip6.src",
    "tcp.dport",
    "tcp.flags",
    "pkt.len",
    "eth.src",
    "x.y",
    "0",
    "1",
    "22",
    "65536",
    "0x0800",
    "0xffff_ffff_ffff_ffff_ffff",
    "10.0.0.0",
    "2001:db8::",
    "02:00:00:00:00:01",
    "30s",
    "500ms",
    "200/s",
    "0/s",
    "8",
    "*",
    "=>",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "<<",
    ">>",
    "+",
    "-",
    "/",
    "%",
    "&",
    "|",
    "^",
    "!",
    "(",
    ")",
    "{",
    "}",
    ",",
    "..",
    "\n",
    "\n",
    "\n",
    "#",
    "\"eth1\"",
    "\"",
    "é",
];

/// Every error must come with a span inside the text, and rendering must
/// work; a success must print and compile back to an equal program.
fn check_total(src: &str) {
    match compile(src) {
        Ok(c) => {
            for w in &c.warnings {
                assert!(w.span.end <= src.len());
            }
            let text = print::program(&c.program);
            let again = compile(&text).unwrap_or_else(|d| {
                panic!(
                    "printed program does not compile:\n{text}\n{}",
                    render(&d, "p", &text, false)
                )
            });
            assert_eq!(
                strip(&c.program),
                strip(&again.program),
                "\n{src}\n---\n{text}"
            );
        }
        Err(diags) => {
            assert!(diags.iter().any(|d| d.is_error()));
            for d in &diags {
                assert!(
                    d.span.start <= d.span.end && d.span.end <= src.len(),
                    "{d:?}"
                );
                // Folded repeats point into the text too, and are counted.
                assert!(d.repeat_spans.len() <= d.repeats as usize, "{d:?}");
                for r in &d.repeat_spans {
                    assert!(r.start <= r.end && r.end <= src.len(), "{d:?}");
                }
            }
            // Each diagnostic shows file:line:column and a caret.
            let text = render(&diags, "f.fsm", src, false);
            for d in &diags {
                let (line, column) = d.line_col(src);
                let place = format!("--> f.fsm:{line}:{column}");
                assert!(text.contains(&place), "no {place} in\n{text}");
            }
            assert!(
                text.matches('^').count() >= diags.len(),
                "a caret per diagnostic:\n{text}"
            );
        }
    }
}

fn strip(p: &Program) -> Program {
    let mut p = p.clone();
    for r in &mut p.rows {
        r.pos = SourcePos::default();
    }
    p
}

fn token_stream() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCABULARY), 0..80).prop_map(|t| t.join(" "))
}

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, word: &'static str },
    SwapLines { a: usize, b: usize },
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1..12usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::sample::select(VOCABULARY))
            .prop_map(|(at, word)| Edit::Insert { at, word }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines { a, b }),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = src.chars().collect();
    for e in edits {
        match e {
            Edit::Delete { at, len } => {
                let at = at % (chars.len() + 1);
                let end = (at + len).min(chars.len());
                chars.drain(at..end);
            }
            Edit::Insert { at, word } => {
                let at = at % (chars.len() + 1);
                let padded: Vec<char> = format!(" {word} ").chars().collect();
                chars.splice(at..at, padded);
            }
            Edit::SwapLines { a, b } => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let n = lines.len();
                    lines.swap(a % n, b % n);
                }
                chars = lines.join("\n").chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_total(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_token_streams_never_panic(src in token_stream()) {
        check_total(&src);
    }

    #[test]
    fn token_streams_after_a_valid_header_never_panic(rows in token_stream()) {
        let src = format!("program p\nhook xdp\nflow ip.src\nstates A, B\nregisters r = 0\nglobals g = 1\nconst C = 2\ntable\n{rows}\nend\n");
        check_total(&src);
    }

    #[test]
    fn mutated_examples_never_panic(which in any::<bool>(), edits in edits()) {
        let base = if which { PORTKNOCK } else { TOKENBUCKET };
        check_total(&apply(base, &edits));
    }
}

#[test]
fn examples_survive_every_single_line_deletion() {
    for base in [PORTKNOCK, TOKENBUCKET] {
        let lines: Vec<&str> = base.lines().collect();
        for skip in 0..lines.len() {
            let src: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            check_total(&src.join("\n"));
        }
    }
}
