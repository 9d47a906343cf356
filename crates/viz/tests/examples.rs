//! The two DESIGN.md examples, built as IR by hand (the lines are those of
//! the examples' source text), drawn as DOT and SVG.
//!
//! Set `FLOWSTATE_VIZ_OUT=dir` to also write the pictures there, for looking
//! at them (`rsvg-convert dir/portknock.svg -o portknock.png`).

use flowstate_lang::ir::{
    Action, BinOp, CmpOp, CondMatch, Condition, Expr, FieldMatch, FullPolicy, Hook, Pattern,
    Program, RegId, RegTarget, Register, Row, SourcePos, State, StateId, StatePattern, Timeout,
    Update,
};
use flowstate_viz::graph::{EdgeKind, Graph, NodeKind};
use flowstate_viz::{to_dot, to_svg};
use flowstate_wire::Field;

const SECOND: i64 = 1_000_000_000;

fn row(line: u32, state: StatePattern, action: Action, next: Option<u16>) -> Row {
    Row {
        pos: SourcePos { line, column: 3 },
        state,
        fields: Vec::new(),
        conditions: Vec::new(),
        action,
        updates: Vec::new(),
        writes: Vec::new(),
        next: next.map(StateId),
    }
}

fn one(state: u16) -> StatePattern {
    StatePattern::Set(vec![StateId(state)])
}

fn exact(field: Field, value: u128) -> FieldMatch {
    FieldMatch {
        field,
        pattern: Pattern::Exact(value),
    }
}

fn portknock() -> Program {
    let states = ["DEFAULT", "STEP_1", "STEP_2", "STEP_3", "OPEN"];
    let mut rows = Vec::new();
    for (i, port) in [1111, 2222, 3333, 4444].into_iter().enumerate() {
        let mut r = row(
            11 + i as u32,
            one(i as u16),
            Action::Drop,
            Some(i as u16 + 1),
        );
        r.fields.push(exact(Field::UdpDport, port));
        rows.push(r);
    }
    let mut ssh = row(15, one(4), Action::Pass, None);
    ssh.fields.push(exact(Field::TcpDport, 22));
    rows.push(ssh);
    rows.push(row(16, one(4), Action::Drop, None));
    rows.push(row(17, StatePattern::Any, Action::Drop, Some(0)));
    Program {
        name: "portknock".to_string(),
        hook: Hook::Xdp,
        lookup_key: vec![Field::IpSrc],
        update_key: vec![Field::IpSrc],
        states: states
            .iter()
            .map(|name| State {
                name: name.to_string(),
                timeout: (*name == "OPEN").then_some(Timeout {
                    idle_ns: Some(30 * SECOND),
                    hard_ns: None,
                    rollback: StateId(0),
                }),
            })
            .collect(),
        registers: Vec::new(),
        globals: Vec::new(),
        rows,
        default_action: Action::Pass,
        capacity: 65536,
        full_policy: FullPolicy::EvictLeastRecent,
    }
}

fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::Binary(op, Box::new(a), Box::new(b))
}

fn cond(op: CmpOp, lhs: Expr, rhs: Expr) -> CondMatch {
    CondMatch {
        cond: Condition { op, lhs, rhs },
        negated: false,
    }
}

fn set(reg: u16, value: Expr) -> Update {
    Update {
        target: RegTarget::Flow(RegId(reg)),
        value,
    }
}

fn tokenbucket() -> Program {
    let (tmin, tmax) = (|| Expr::Reg(RegId(0)), || Expr::Reg(RegId(1)));
    // `now - (B - 1) * Q` and `now + Q`, folded with B = 5, Q = 1s.
    let open_window = || {
        vec![
            set(0, bin(BinOp::Sub, Expr::Now, Expr::Const(4 * SECOND))),
            set(1, bin(BinOp::Add, Expr::Now, Expr::Const(SECOND))),
        ]
    };
    let mut first = row(16, one(0), Action::Pass, Some(1));
    first.updates = open_window();
    let mut inside = row(18, one(1), Action::Pass, None);
    inside.conditions = vec![
        cond(CmpOp::Ge, Expr::Now, tmin()),
        cond(CmpOp::Le, Expr::Now, tmax()),
    ];
    inside.updates = vec![
        set(0, bin(BinOp::Add, tmin(), Expr::Const(SECOND))),
        set(1, bin(BinOp::Add, tmax(), Expr::Const(SECOND))),
    ];
    let mut behind = row(20, one(1), Action::Pass, None);
    behind.conditions = vec![
        cond(CmpOp::Ge, Expr::Now, tmin()),
        cond(CmpOp::Gt, Expr::Now, tmax()),
    ];
    behind.updates = open_window();
    let mut ahead = row(22, one(1), Action::Drop, None);
    ahead.conditions = vec![cond(CmpOp::Lt, Expr::Now, tmin())];
    Program {
        name: "tokenbucket".to_string(),
        hook: Hook::TcIngress,
        lookup_key: vec![Field::IpSrc],
        update_key: vec![Field::IpSrc],
        states: ["NEW", "ACTIVE"]
            .iter()
            .map(|name| State {
                name: name.to_string(),
                timeout: None,
            })
            .collect(),
        registers: ["tmin", "tmax"]
            .iter()
            .map(|name| Register {
                name: name.to_string(),
                init: Expr::Const(0),
            })
            .collect(),
        globals: Vec::new(),
        rows: vec![first, inside, behind, ahead],
        default_action: Action::Pass,
        capacity: 65536,
        full_policy: FullPolicy::EvictLeastRecent,
    }
}

fn examples() -> Vec<Program> {
    vec![portknock(), tokenbucket(), tangled()]
}

fn save(name: &str, text: &str) {
    if let Some(dir) = std::env::var_os("FLOWSTATE_VIZ_OUT") {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, text).expect("write picture");
    }
}

#[test]
fn dot_names_every_state_and_row() {
    for program in examples() {
        let dot = to_dot(&program);
        save(&format!("{}.dot", program.name), &dot);
        assert!(dot.starts_with("digraph \""), "{dot}");
        assert!(dot.trim_end().ends_with('}'), "{dot}");
        for state in &program.states {
            assert!(dot.contains(&format!("label=\"{}", state.name)), "{dot}");
        }
        for row in &program.rows {
            assert!(dot.contains(&format!("L{}: ", row.pos.line)), "{dot}");
        }
        assert!(dot.contains("default: pass"), "{dot}");
    }
}

#[test]
fn dot_marks_initial_state_timeouts_and_wildcards() {
    let dot = to_dot(&portknock());
    assert!(
        dot.contains("s0 [label=\"DEFAULT\", peripheries=2]"),
        "{dot}"
    );
    assert!(dot.contains("__start -> s0;"), "{dot}");
    assert!(
        dot.contains("label=\"OPEN\\nidle 30s -> DEFAULT\""),
        "{dot}"
    );
    assert!(
        dot.contains("s4 -> s0 [label=\"timeout idle 30s\\l\", style=dashed"),
        "{dot}"
    );
    // The `*` row is one edge from the "any state" node, not one per state.
    assert!(
        dot.contains("any -> s0 [label=\"L17: * => drop\\l\"]"),
        "{dot}"
    );
    assert_eq!(dot.matches("L17:").count(), 1, "{dot}");
    // Both OPEN self-loop rows share one edge.
    assert!(
        dot.contains("s4 -> s4 [label=\"L15: tcp.dport == 22 => pass\\lL16: * => drop\\l\"]"),
        "{dot}"
    );
}

#[test]
fn graph_groups_rows_and_adds_the_any_node() {
    let graph = Graph::build(&portknock());
    assert_eq!(graph.nodes.len(), 6);
    assert_eq!(graph.any_node(), Some(5));
    assert_eq!(
        graph.nodes[0].kind,
        NodeKind::State {
            index: 0,
            initial: true
        }
    );
    // Four knocks, OPEN's loop, the `*` row, the timeout.
    assert_eq!(graph.edges.len(), 7);
    let timeouts: Vec<_> = graph
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Timeout)
        .collect();
    assert_eq!(timeouts.len(), 1);
    assert_eq!((timeouts[0].from, timeouts[0].to), (4, 0));

    let graph = Graph::build(&tokenbucket());
    assert_eq!(graph.any_node(), None);
    let active_loop = graph
        .edges
        .iter()
        .find(|e| e.from == 1 && e.to == 1)
        .expect("ACTIVE self-loop");
    let lines: Vec<String> = active_loop.label.iter().map(|l| l.full()).collect();
    assert_eq!(
        lines,
        [
            "L18: now >= tmin, now <= tmax => pass",
            "    tmin = tmin + 1000000000",
            "    tmax = tmax + 1000000000",
            "L20: now >= tmin, now > tmax => pass",
            "    tmin = now - 4000000000",
            "    tmax = now + 1000000000",
            "L22: now < tmin => drop",
        ]
    );
}

#[test]
fn state_sets_draw_one_edge_per_member() {
    let mut program = tokenbucket();
    program.rows = vec![row(
        5,
        StatePattern::Set(vec![StateId(0), StateId(1)]),
        Action::Drop,
        Some(0),
    )];
    let graph = Graph::build(&program);
    let ends: Vec<(usize, usize)> = graph.edges.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(ends, [(0, 0), (1, 0)]);
}

fn svg_document(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("SVG is not XML: {e}\n{svg}"))
}

/// All text content of the SVG, one string per `<text>` element.
fn svg_texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            n.descendants()
                .filter(|d| d.is_text())
                .filter_map(|d| d.text())
                .collect::<String>()
        })
        .collect()
}

#[test]
fn svg_is_xml_with_every_state_and_row() {
    for program in examples() {
        let svg = to_svg(&program);
        save(&format!("{}.svg", program.name), &svg);
        let doc = svg_document(&svg);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let texts = svg_texts(&doc);
        for state in &program.states {
            assert!(
                texts.contains(&state.name),
                "{} missing in {texts:?}",
                state.name
            );
        }
        for row in &program.rows {
            let prefix = format!("L{}: ", row.pos.line);
            assert!(
                texts.iter().any(|t| t.starts_with(&prefix)),
                "{prefix} missing in {texts:?}"
            );
        }
        assert!(texts.contains(&"default: pass".to_string()), "{texts:?}");
    }
}

#[test]
fn svg_size_covers_every_node() {
    for program in examples() {
        let svg = to_svg(&program);
        let doc = svg_document(&svg);
        let root = doc.root_element();
        let width: f64 = root
            .attribute("width")
            .and_then(|w| w.parse().ok())
            .expect("width");
        let height: f64 = root
            .attribute("height")
            .and_then(|h| h.parse().ok())
            .expect("height");
        for rect in doc.descendants().filter(|n| n.has_tag_name("rect")) {
            let (Some(x), Some(y), Some(w), Some(h)) = (
                rect.attribute("x").and_then(|v| v.parse::<f64>().ok()),
                rect.attribute("y").and_then(|v| v.parse::<f64>().ok()),
                rect.attribute("width").and_then(|v| v.parse::<f64>().ok()),
                rect.attribute("height").and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            assert!(x >= 0.0 && y >= 0.0, "rect at {x},{y}");
            assert!(
                x + w <= width && y + h <= height,
                "rect {x},{y} {w}x{h} outside {width}x{height}"
            );
        }
    }
}

#[test]
fn labels_do_not_overlap() {
    for program in examples() {
        let svg = to_svg(&program);
        let doc = svg_document(&svg);
        // Label backgrounds are the white, slightly transparent rects.
        let boxes: Vec<(f64, f64, f64, f64)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill-opacity").is_some())
            .map(|n| {
                let get = |a: &str| {
                    n.attribute(a)
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                (get("x"), get("y"), get("width"), get("height"))
            })
            .collect();
        assert_eq!(boxes.len(), Graph::build(&program).edges.len());
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                let apart =
                    a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
                assert!(apart, "{}: labels {a:?} and {b:?} overlap", program.name);
            }
        }
    }
}

#[test]
fn odd_programs_do_not_panic() {
    // No states, a dangling next state, a state set naming nothing.
    let mut program = portknock();
    program.states.clear();
    let _ = to_svg(&program);
    let _ = to_dot(&program);

    let mut program = tokenbucket();
    program.rows.push(row(30, one(9), Action::Drop, Some(7)));
    program
        .rows
        .push(row(31, StatePattern::Set(Vec::new()), Action::Drop, None));
    let svg = to_svg(&program);
    svg_document(&svg);
    let dot = to_dot(&program);
    assert!(!dot.contains("L30"), "{dot}");
}

#[test]
fn names_with_markup_are_escaped() {
    let mut program = tokenbucket();
    program.name = "a<b>&\"c\"".to_string();
    program.rows[0].action = Action::Redirect {
        ifname: "veth\"0".to_string(),
    };
    let svg = to_svg(&program);
    let doc = svg_document(&svg);
    assert!(svg_texts(&doc).contains(&"program a<b>&\"c\"".to_string()));
    let dot = to_dot(&program);
    assert!(dot.starts_with("digraph \"a<b>&\\\"c\\\"\" {"), "{dot}");
    // Not a plain name, so the printer quotes it (and DOT escapes both).
    assert!(dot.contains("redirect \\\"veth\\\"0\\\""), "{dot}");
}

/// Branches, two states in one column, edges back and across, a `*` row
/// that keeps the state: the cases the two examples do not draw.
fn tangled() -> Program {
    let flags = |value: u128, mask: u128| FieldMatch {
        field: Field::TcpFlags,
        pattern: Pattern::Masked { value, mask },
    };
    let mut rows = Vec::new();
    let mut r = row(10, one(0), Action::Pass, Some(1));
    r.fields.push(exact(Field::TcpFlags, 0x02));
    rows.push(r);
    let mut r = row(11, one(0), Action::Pass, Some(2));
    r.fields.push(exact(Field::UdpDport, 53));
    rows.push(r);
    let mut r = row(12, one(1), Action::Pass, Some(2));
    r.fields.push(flags(0x10, 0x10));
    rows.push(r);
    let mut r = row(13, one(2), Action::Pass, Some(3));
    r.fields.push(flags(0x01, 0x01));
    rows.push(r);
    let mut r = row(
        14,
        StatePattern::Set(vec![StateId(1), StateId(2)]),
        Action::Drop,
        Some(0),
    );
    r.fields.push(flags(0x04, 0x04));
    rows.push(r);
    rows.push(row(15, one(3), Action::Pass, Some(0)));
    let mut r = row(16, StatePattern::Any, Action::Drop, Some(4));
    r.conditions.push(cond(
        CmpOp::Gt,
        Expr::Field(Field::PktLen),
        Expr::Const(1500),
    ));
    rows.push(r);
    rows.push(row(17, StatePattern::Any, Action::Pass, None));
    let mut program = portknock();
    program.name = "tangled".to_string();
    program.states = ["NEW", "SYN", "EST", "FIN", "BLOCKED"]
        .iter()
        .map(|name| State {
            name: name.to_string(),
            timeout: (*name == "BLOCKED").then_some(Timeout {
                idle_ns: None,
                hard_ns: Some(60 * SECOND),
                rollback: StateId(0),
            }),
        })
        .collect();
    program.rows = rows;
    program
}

/// The hand-built IR is what the compiler makes of the examples' text, so
/// the pictures above are the pictures of the real programs.
#[test]
fn hand_built_examples_match_the_compiled_ones() {
    for (source, built) in [
        (include_str!("../../../examples/portknock.fsm"), portknock()),
        (
            include_str!("../../../examples/tokenbucket.fsm"),
            tokenbucket(),
        ),
    ] {
        let compiled = flowstate_lang::compile(source)
            .unwrap_or_else(|d| panic!("{d:?}"))
            .program;
        assert_eq!(compiled, built);
    }
}

/// Random tables over up to 12 states (a fixed-seed generator, so failures
/// reproduce): drawing never panics and always yields well-formed SVG with
/// every state in it.
#[test]
fn random_tables_draw_without_panics() {
    let mut seed: u64 = 0x5eed;
    let mut next = |bound: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % bound
    };
    for case in 0..200 {
        let state_count = 1 + next(12) as u16;
        let mut program = portknock();
        program.name = format!("random{case}");
        program.states = (0..state_count)
            .map(|i| State {
                name: format!("S{i}"),
                timeout: (next(4) == 0).then(|| Timeout {
                    idle_ns: Some(SECOND),
                    hard_ns: None,
                    rollback: StateId(next(u64::from(state_count)) as u16),
                }),
            })
            .collect();
        program.rows = (0..next(16))
            .map(|line| {
                let state = match next(5) {
                    0 => StatePattern::Any,
                    _ => StatePattern::Set(vec![StateId(next(u64::from(state_count)) as u16)]),
                };
                let next_state = (next(3) != 0).then(|| next(u64::from(state_count)) as u16);
                let mut r = row(line as u32 + 1, state, Action::Drop, next_state);
                r.fields.push(exact(Field::UdpDport, u128::from(line)));
                r
            })
            .collect();
        let svg = to_svg(&program);
        let doc = svg_document(&svg);
        let texts = svg_texts(&doc);
        for state in &program.states {
            assert!(texts.contains(&state.name), "{} in case {case}", state.name);
        }
        let dot = to_dot(&program);
        assert!(dot.ends_with("}\n"));
    }
}
