//! The DESIGN.md examples compile, exactly as written, to the expected IR.

use flowstate_lang::ir::*;
use flowstate_lang::{compile, print};
use flowstate_wire::Field;

fn example(name: &str) -> String {
    let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compiled(name: &str) -> flowstate_lang::Compiled {
    let src = example(name);
    match compile(&src) {
        Ok(c) => c,
        Err(d) => panic!("{}", flowstate_lang::diag::render(&d, name, &src, false)),
    }
}

fn set(ids: &[u16]) -> StatePattern {
    StatePattern::Set(ids.iter().map(|i| StateId(*i)).collect())
}

#[test]
fn portknock_compiles_to_the_expected_program() {
    let c = compiled("portknock.fsm");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let p = c.program;
    assert_eq!(p.name, "portknock");
    assert_eq!(p.hook, Hook::Xdp);
    assert_eq!(p.lookup_key, vec![Field::IpSrc]);
    assert_eq!(p.update_key, vec![Field::IpSrc]);
    let names: Vec<&str> = p.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["DEFAULT", "STEP_1", "STEP_2", "STEP_3", "OPEN"]);
    assert_eq!(
        p.states[4].timeout,
        Some(Timeout {
            idle_ns: Some(30_000_000_000),
            hard_ns: None,
            rollback: StateId(0)
        })
    );
    assert!(p.states[..4].iter().all(|s| s.timeout.is_none()));
    assert_eq!(p.default_action, Action::Pass);
    assert_eq!(p.capacity, 65_536);
    assert_eq!(p.full_policy, FullPolicy::EvictLeastRecent);
    assert_eq!(p.rows.len(), 7);

    let knock = |row: &Row, state: u16, port: u128, next: u16| {
        assert_eq!(row.state, set(&[state]));
        assert_eq!(
            row.fields,
            vec![FieldMatch {
                field: Field::UdpDport,
                pattern: Pattern::Exact(port)
            }]
        );
        assert!(row.conditions.is_empty());
        assert_eq!(row.action, Action::Drop);
        assert_eq!(row.next, Some(StateId(next)));
    };
    knock(&p.rows[0], 0, 1111, 1);
    knock(&p.rows[1], 1, 2222, 2);
    knock(&p.rows[2], 2, 3333, 3);
    knock(&p.rows[3], 3, 4444, 4);
    assert_eq!(p.rows[4].fields[0].pattern, Pattern::Exact(22));
    assert_eq!(p.rows[4].fields[0].field, Field::TcpDport);
    assert_eq!(
        (p.rows[4].action.clone(), p.rows[4].next),
        (Action::Pass, None)
    );
    assert!(p.rows[5].fields.is_empty());
    assert_eq!(p.rows[6].state, StatePattern::Any);
    assert_eq!(p.rows[6].next, Some(StateId(0)));
    // Row positions: line of the first row, and its indentation.
    assert_eq!(
        p.rows[0].pos,
        SourcePos {
            line: 11,
            column: 3
        }
    );
    assert_eq!(
        p.rows[6].pos,
        SourcePos {
            line: 17,
            column: 3
        }
    );
}

#[test]
fn tokenbucket_compiles_with_folded_constants() {
    let c = compiled("tokenbucket.fsm");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let p = c.program;
    assert_eq!(p.hook, Hook::TcIngress);
    assert_eq!(p.states.len(), 2);
    assert_eq!(p.registers.len(), 2);
    assert_eq!(p.registers[0].name, "tmin");
    assert_eq!(p.registers[0].init, Expr::Const(0));
    assert_eq!(p.rows.len(), 4);
    let (tmin, tmax) = (RegId(0), RegId(1));
    let bin = |op, a, b| Expr::Binary(op, Box::new(a), Box::new(b));
    const Q: i64 = 1_000_000_000;

    let open = &p.rows[0];
    assert_eq!(open.state, set(&[0]));
    assert_eq!(
        open.updates,
        vec![
            Update {
                target: RegTarget::Flow(tmin),
                // (B - 1) * Q folded.
                value: bin(BinOp::Sub, Expr::Now, Expr::Const(4_000_000_000)),
            },
            Update {
                target: RegTarget::Flow(tmax),
                value: bin(BinOp::Add, Expr::Now, Expr::Const(Q)),
            },
        ]
    );
    assert_eq!(open.next, Some(StateId(1)));

    let take = &p.rows[1];
    assert_eq!(
        take.conditions,
        vec![
            CondMatch {
                cond: Condition {
                    op: CmpOp::Ge,
                    lhs: Expr::Now,
                    rhs: Expr::Reg(tmin)
                },
                negated: false
            },
            CondMatch {
                cond: Condition {
                    op: CmpOp::Le,
                    lhs: Expr::Now,
                    rhs: Expr::Reg(tmax)
                },
                negated: false
            },
        ]
    );
    assert_eq!(
        take.updates[0].value,
        bin(BinOp::Add, Expr::Reg(tmin), Expr::Const(Q))
    );
    assert_eq!(take.next, None);
    assert_eq!(p.rows[2].conditions[1].cond.op, CmpOp::Gt);
    assert_eq!(p.rows[3].action, Action::Drop);
    assert_eq!(p.rows[3].conditions.len(), 1);
}

#[test]
fn printed_examples_compile_back_to_the_same_program() {
    for name in ["portknock.fsm", "tokenbucket.fsm", "arp-responder.fsm"] {
        let original = compiled(name).program;
        let text = print::program(&original);
        let again = match compile(&text) {
            Ok(c) => c.program,
            Err(d) => panic!(
                "{}",
                flowstate_lang::diag::render(&d, "printed", &text, false)
            ),
        };
        let strip = |p: &Program| {
            let mut p = p.clone();
            for r in &mut p.rows {
                r.pos = SourcePos::default();
            }
            p
        };
        assert_eq!(strip(&original), strip(&again), "{text}");
    }
}

/// Every complete program shown in docs/language.md compiles.
#[test]
fn programs_in_the_language_reference_compile() {
    let path = format!("{}/../../docs/language.md", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).expect("docs/language.md");
    let mut programs = 0;
    for block in doc.split("```").skip(1).step_by(2) {
        let block = block.trim_start_matches(|c: char| c != '\n');
        if !block.lines().any(|l| l.starts_with("program ")) {
            continue;
        }
        if let Err(d) = compile(block) {
            panic!("{}", flowstate_lang::diag::render(&d, "doc", block, false));
        }
        programs += 1;
    }
    assert!(programs >= 2, "found {programs} programs");
}
