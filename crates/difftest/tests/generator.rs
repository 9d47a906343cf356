//! The generators on their own (no kernel needed): determinism, the
//! print/compile round trip of generated programs, coverage of the IR, and
//! the interpreter running every generated program without panicking.

use flowstate_difftest::gen;
use flowstate_difftest::packets::{self, Packet};
use flowstate_difftest::rng::Rng;
use flowstate_difftest::TEST_RUN_IFINDEX;
use flowstate_interp::Machine;
use flowstate_lang::ir::{Action, BinOp, CmpOp, Expr, FullPolicy, Pattern, Program, StatePattern};

const ROUND_TRIPS: u64 = 10_000;

#[test]
fn ten_thousand_programs_round_trip_through_their_text() {
    for seed in 0..ROUND_TRIPS {
        if let Err(e) = gen::program(seed) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn generation_is_deterministic() {
    for seed in [0, 1, 99, u64::MAX] {
        assert_eq!(
            gen::program(seed).unwrap().text,
            gen::program(seed).unwrap().text
        );
        assert_eq!(
            packets::sequence(&mut Rng::new(seed), 300),
            packets::sequence(&mut Rng::new(seed), 300)
        );
    }
}

/// What the generated programs contain, over many seeds.
#[derive(Default)]
struct Coverage {
    ops: Vec<BinOp>,
    cmps: Vec<CmpOp>,
    negated: usize,
    patterns: [usize; 4],
    state_sets: usize,
    any_state: usize,
    update_keys: usize,
    timeouts: usize,
    rollbacks: usize,
    tx: usize,
    redirect_named: usize,
    redirect_port: usize,
    controller: usize,
    shift_by_register: usize,
    now_init: usize,
}

fn walk(e: &Expr, c: &mut Coverage) {
    if let Expr::Binary(op, a, b) = e {
        if !c.ops.contains(op) {
            c.ops.push(*op);
        }
        if matches!(op, BinOp::Shl | BinOp::Shr) && matches!(**b, Expr::Reg(_)) {
            c.shift_by_register += 1;
        }
        walk(a, c);
        walk(b, c);
    }
}

fn cover(p: &Program, c: &mut Coverage) {
    if p.update_key != p.lookup_key {
        c.update_keys += 1;
    }
    for s in &p.states {
        if let Some(t) = s.timeout {
            c.timeouts += 1;
            if t.rollback.0 != 0 {
                c.rollbacks += 1;
            }
        }
    }
    for r in &p.registers {
        if r.init == Expr::Now {
            c.now_init += 1;
        }
    }
    for row in &p.rows {
        match &row.state {
            StatePattern::Any => c.any_state += 1,
            StatePattern::Set(s) if s.len() > 1 => c.state_sets += 1,
            StatePattern::Set(_) => {}
        }
        for m in &row.fields {
            let kind = match m.pattern {
                Pattern::Exact(_) => 0,
                Pattern::Masked { .. } => 1,
                Pattern::Range { .. } => 2,
                Pattern::Set(_) => 3,
            };
            c.patterns[kind] += 1;
        }
        for cm in &row.conditions {
            if !c.cmps.contains(&cm.cond.op) {
                c.cmps.push(cm.cond.op);
            }
            if cm.negated {
                c.negated += 1;
            }
            walk(&cm.cond.lhs, c);
            walk(&cm.cond.rhs, c);
        }
        for u in &row.updates {
            walk(&u.value, c);
        }
        match row.action {
            Action::Tx => c.tx += 1,
            Action::Redirect { .. } => c.redirect_named += 1,
            Action::RedirectPort { .. } => c.redirect_port += 1,
            Action::Controller { .. } => c.controller += 1,
            _ => {}
        }
    }
}

#[test]
fn generated_programs_cover_the_language() {
    let mut c = Coverage::default();
    for seed in 0..500 {
        cover(&gen::program(seed).unwrap().program, &mut c);
    }
    assert_eq!(c.ops.len(), 12, "operators seen: {:?}", c.ops);
    assert_eq!(c.cmps.len(), 6, "comparisons seen: {:?}", c.cmps);
    assert!(
        c.patterns.iter().all(|&n| n > 50),
        "patterns {:?}",
        c.patterns
    );
    for (what, n) in [
        ("negated conditions", c.negated),
        ("state sets", c.state_sets),
        ("wildcard states", c.any_state),
        ("update keys", c.update_keys),
        ("timeouts", c.timeouts),
        ("rollback states", c.rollbacks),
        ("tx", c.tx),
        ("redirects to an interface", c.redirect_named),
        ("redirects to a register", c.redirect_port),
        ("controller", c.controller),
        ("shifts by a register", c.shift_by_register),
        ("`now` initial values", c.now_init),
    ] {
        assert!(n > 10, "{what}: only {n}");
    }
}

#[test]
fn interpreter_runs_generated_programs_and_rows_fire() {
    let mut fired = 0usize;
    let mut total = 0usize;
    for seed in 0..1_000u64 {
        let g = gen::program(seed).unwrap();
        let packets: Vec<Packet> = packets::sequence(&mut Rng::new(seed ^ 0x5eed), 200);
        let mut machine = Machine::new(&g.program);
        for p in &packets {
            let step = machine.process(&p.frame, TEST_RUN_IFINDEX, p.now);
            total += 1;
            fired += usize::from(step.row.is_some());
        }
        assert!(machine.table().len() <= g.program.capacity as usize);
    }
    // Rows must match often enough for the differential runs to test
    // state evolution, not just the default.
    assert!(
        fired * 4 > total,
        "rows fired for {fired} of {total} packets"
    );
}

/// Full tables must be common under both policies, and the packets must
/// fill them: tables of a few flows, seen filling in the interpreter.
#[test]
fn small_tables_of_both_policies_fill_up() {
    let (mut evict, mut refuse) = (0, 0);
    for seed in 0..400u64 {
        let g = gen::program(seed).unwrap();
        if g.program.capacity as u64 > gen::SMALL_CAPACITY {
            continue;
        }
        let mut machine = Machine::new(&g.program);
        let mut full = false;
        for p in packets::sequence(&mut Rng::new(!seed), 300) {
            let step = machine.process(&p.frame, TEST_RUN_IFINDEX, p.now);
            full |= !step.evicted.is_empty()
                || step.default_reason == Some(flowstate_interp::DefaultReason::TableFull);
        }
        match (full, g.program.full_policy) {
            (true, FullPolicy::EvictLeastRecent) => evict += 1,
            (true, FullPolicy::RefuseNew) => refuse += 1,
            (false, _) => {}
        }
    }
    assert!(
        evict > 20 && refuse > 20,
        "full tables: {evict} evict, {refuse} refuse"
    );
}
