//! Shrinking a failing case: fewer packets, then a smaller program, while
//! the failure persists.
//!
//! Packets are removed in chunks, halving the chunk size down to one
//! (delta debugging's simple form); the clock values of the packets kept
//! are left as they were. The program is shrunk by single edits (drop a
//! row, a field pattern, a condition, an update, a `next`, a timeout, a
//! register, a global) until no edit keeps the failure. Every edited
//! program is printed and compiled again, so it is always a valid program
//! and its text is the reproduction; the compiler folds what an edit left
//! constant (a dropped register reads as 0).

use std::time::{Duration, Instant};

use flowstate_lang::ir::{Expr, Program, RegTarget, StatePattern};

use crate::gen::reprint;
use crate::packets::Packet;

/// Attempts (runs of the failing predicate) before minimising stops and
/// returns what it has: each attempt loads a program into the kernel.
pub const MAX_ATTEMPTS: usize = 600;
/// Wall time after which minimising stops and returns what it has.
pub const MAX_TIME: Duration = Duration::from_secs(120);

/// Shrink `program` and `packets` while `still_fails` holds. The predicate
/// is assumed to hold for the inputs.
pub fn minimise(
    program: &Program,
    packets: &[Packet],
    still_fails: &dyn Fn(&Program, &[Packet]) -> bool,
) -> (Program, Vec<Packet>) {
    let mut budget = MAX_ATTEMPTS;
    let deadline = Instant::now() + MAX_TIME;
    let mut attempt = |p: &Program, pk: &[Packet]| {
        if budget == 0 || Instant::now() > deadline {
            return false;
        }
        budget -= 1;
        still_fails(p, pk)
    };
    let mut program = program.clone();
    let mut packets = packets.to_vec();
    // Packets first (cheap to drop, and a short sequence makes every later
    // attempt cheaper), then the program, then packets again: a smaller
    // program often needs fewer packets.
    shrink_packets(&program, &mut packets, &mut attempt);
    shrink_program(&mut program, &packets, &mut attempt);
    shrink_packets(&program, &mut packets, &mut attempt);
    (program, packets)
}

fn shrink_packets(
    program: &Program,
    packets: &mut Vec<Packet>,
    attempt: &mut dyn FnMut(&Program, &[Packet]) -> bool,
) {
    let mut chunk = packets.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < packets.len() {
            let end = (start + chunk).min(packets.len());
            let mut candidate = packets.clone();
            candidate.drain(start..end);
            if !candidate.is_empty() && attempt(program, &candidate) {
                *packets = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            return;
        }
        chunk = chunk.div_ceil(2);
    }
}

fn shrink_program(
    program: &mut Program,
    packets: &[Packet],
    attempt: &mut dyn FnMut(&Program, &[Packet]) -> bool,
) {
    loop {
        let mut improved = false;
        for candidate in edits(program) {
            let Ok((_, compiled)) = reprint(&candidate) else {
                continue;
            };
            if attempt(&compiled, packets) {
                *program = compiled;
                improved = true;
                break;
            }
        }
        if !improved {
            return;
        }
    }
}

/// Every single-step simplification of `p`, biggest first.
pub fn edits(p: &Program) -> Vec<Program> {
    let mut out = Vec::new();
    for i in 0..p.rows.len() {
        if p.rows.len() > 1 {
            let mut q = p.clone();
            q.rows.remove(i);
            out.push(q);
        }
    }
    for i in 0..p.registers.len() {
        out.push(remove_register(p, i));
    }
    for i in 0..p.globals.len() {
        out.push(remove_global(p, i));
    }
    for (i, state) in p.states.iter().enumerate() {
        if state.timeout.is_some() {
            let mut q = p.clone();
            q.states[i].timeout = None;
            out.push(q);
        }
    }
    for (i, row) in p.rows.iter().enumerate() {
        for j in 0..row.fields.len() {
            let mut q = p.clone();
            q.rows[i].fields.remove(j);
            out.push(q);
        }
        for j in 0..row.conditions.len() {
            let mut q = p.clone();
            q.rows[i].conditions.remove(j);
            out.push(q);
        }
        for j in 0..row.updates.len() {
            let mut q = p.clone();
            q.rows[i].updates.remove(j);
            out.push(q);
        }
        if row.next.is_some() {
            let mut q = p.clone();
            q.rows[i].next = None;
            out.push(q);
        }
        if row.state != StatePattern::Any {
            let mut q = p.clone();
            q.rows[i].state = StatePattern::Any;
            out.push(q);
        }
    }
    out
}

/// Rewrite every expression of `p` with `f` (applied bottom-up).
fn map_exprs(p: &mut Program, f: &dyn Fn(Expr) -> Expr) {
    fn walk(e: Expr, f: &dyn Fn(Expr) -> Expr) -> Expr {
        match e {
            Expr::Binary(op, a, b) => f(Expr::Binary(
                op,
                Box::new(walk(*a, f)),
                Box::new(walk(*b, f)),
            )),
            other => f(other),
        }
    }
    let take = |e: &mut Expr| {
        let old = std::mem::replace(e, Expr::Const(0));
        *e = walk(old, f);
    };
    for r in &mut p.registers {
        take(&mut r.init);
    }
    for row in &mut p.rows {
        for c in &mut row.conditions {
            take(&mut c.cond.lhs);
            take(&mut c.cond.rhs);
        }
        for u in &mut row.updates {
            take(&mut u.value);
        }
    }
}

/// `p` without register `index`: reads of it become 0, assignments to it
/// go, later registers move down.
pub fn remove_register(p: &Program, index: usize) -> Program {
    let mut q = p.clone();
    q.registers.remove(index);
    let index = index as u16;
    map_exprs(&mut q, &|e| match e {
        Expr::Reg(r) if r.0 == index => Expr::Const(0),
        Expr::Reg(r) if r.0 > index => Expr::Reg(flowstate_lang::ir::RegId(r.0 - 1)),
        other => other,
    });
    for row in &mut q.rows {
        row.updates
            .retain(|u| u.target != RegTarget::Flow(flowstate_lang::ir::RegId(index)));
        for u in &mut row.updates {
            if let RegTarget::Flow(r) = &mut u.target {
                if r.0 > index {
                    r.0 -= 1;
                }
            }
        }
    }
    q
}

/// `p` without global `index`, as [`remove_register`] does for registers.
pub fn remove_global(p: &Program, index: usize) -> Program {
    let mut q = p.clone();
    q.globals.remove(index);
    let index = index as u16;
    map_exprs(&mut q, &|e| match e {
        Expr::Global(g) if g.0 == index => Expr::Const(0),
        Expr::Global(g) if g.0 > index => Expr::Global(flowstate_lang::ir::GlobalId(g.0 - 1)),
        other => other,
    });
    for row in &mut q.rows {
        row.updates
            .retain(|u| u.target != RegTarget::Global(flowstate_lang::ir::GlobalId(index)));
        for u in &mut row.updates {
            if let RegTarget::Global(g) = &mut u.target {
                if g.0 > index {
                    g.0 -= 1;
                }
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen;

    fn compile(src: &str) -> Program {
        flowstate_lang::compile(src).unwrap().program
    }

    const SRC: &str = "program m\nhook xdp\nflow ip.src\nstates A, B\n\
        registers a = 0, b = 0\nglobals g = 0\ndefault pass\n\ntable\n\
        A udp.dport == 53, b > 3 => drop, a = a + b, b = b + 1, g = g + a, next B\n\
        B * => pass, b = a * 2\nend\n";

    #[test]
    fn removing_a_register_keeps_the_program_valid() {
        let p = compile(SRC);
        let q = remove_register(&p, 0);
        let (text, compiled) = reprint(&q).unwrap();
        assert!(!text.contains(" a "), "{text}");
        // `b = a * 2` became `b = 0 * 2`, folded by the compiler.
        assert!(text.contains("b = 0"), "{text}");
        assert_eq!(compiled.registers.len(), 1);
    }

    #[test]
    fn removing_a_global_drops_its_updates() {
        let p = compile(SRC);
        let (text, _) = reprint(&remove_global(&p, 0)).unwrap();
        assert!(!text.contains("g ="), "{text}");
    }

    #[test]
    fn minimises_to_the_packet_and_row_that_matter() {
        // A fake failure: "fails" while a row reading udp.dport is present
        // and a packet with 41 bytes is in the sequence.
        let program = gen::program(11).unwrap().program;
        let mut packets: Vec<Packet> = (0..40)
            .map(|i| Packet {
                now: i,
                frame: vec![0; 20 + i as usize],
            })
            .collect();
        packets[21].frame = vec![0; 41];
        let fails = |p: &Program, pk: &[Packet]| {
            !p.rows.is_empty() && pk.iter().any(|x| x.frame.len() == 41)
        };
        let (small, few) = minimise(&program, &packets, &fails);
        assert_eq!(few.len(), 1);
        assert_eq!(few[0].frame.len(), 41);
        assert_eq!(small.rows.len(), 1);
        assert!(small.registers.is_empty() && small.globals.is_empty());
    }
}
