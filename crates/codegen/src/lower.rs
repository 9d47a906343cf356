//! Stage 2: the XFSM table as a decision structure.
//!
//! The table is compiled into code, not looked up: the generated program
//! first switches on the flow's state, then tries, in priority order, the
//! rows whose state pattern covers that state. Within one state's rows, a
//! run of consecutive rows that all test one field for an exact value
//! becomes a binary search over the sorted constants; rows outside the run
//! (wildcards, ranges, other fields) stay where they were, so the first
//! matching row still wins.
//!
//! Rows with the same effects (action, updates, next state, and whether
//! `next` is written) share one commit block (updates, table write,
//! counters, verdict), whatever state branch reaches it: a table of a
//! thousand `=> drop` rows has one commit, so both its code and the
//! verifier's walk grow by a few instructions per row, not by a commit per
//! row. The next state is static in a branch because `next` omitted means
//! "the branch's state". A shared commit learns which row fired from a
//! stack slot the row test writes (see `emit`), for the per-row counters.

use std::collections::HashMap;

use flowstate_lang::ir::{CmpOp, Condition, Pattern, Program, Row, StateId, StatePattern};
use flowstate_wire::Field;

use crate::layout::visit_fields;

/// Consecutive exact tests on one field that become a binary search.
const SEARCH_MIN_ROWS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lowered {
    /// One branch per declared state, in state order.
    pub branches: Vec<StateBranch>,
    /// The commit blocks the branches jump to.
    pub commits: Vec<Commit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateBranch {
    pub state: StateId,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Test one row; on success go to its commit block.
    Row(RowTest),
    /// Rows that all require `field == constant`, grouped by constant
    /// (sorted ascending); each group keeps its rows in priority order.
    Search {
        field: Field,
        cases: Vec<(u64, Vec<RowTest>)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowTest {
    pub row: usize,
    /// Index into [`Lowered::commits`].
    pub commit: usize,
    /// A field pattern already decided by an enclosing search.
    pub decided: Option<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The first row that reaches this commit: its effects are every
    /// sharing row's effects.
    pub row: usize,
    pub next: StateId,
    /// Every row that reaches it, ascending (`row` first).
    pub rows: Vec<usize>,
}

impl Commit {
    /// Whether several rows share it (the row index then comes from the
    /// row test at run time).
    pub fn shared(&self) -> bool {
        self.rows.len() > 1
    }
}

/// What makes two rows' commits interchangeable: everything a commit
/// block does except counting the row. `Debug` text compares structure
/// (the IR's expressions are not `Hash`).
fn effect_key(row: &Row, next: StateId) -> String {
    format!(
        "{:?}|{:?}|{}|{}",
        row.action,
        row.updates,
        next.0,
        row.next.is_some()
    )
}

pub(crate) fn lower(program: &Program) -> Lowered {
    let mut commits: Vec<Commit> = Vec::new();
    let mut by_effect: HashMap<String, usize> = HashMap::new();
    let mut commit_of = |index: usize, next: StateId| -> usize {
        let i = *by_effect
            .entry(effect_key(&program.rows[index], next))
            .or_insert_with(|| {
                commits.push(Commit {
                    row: index,
                    next,
                    rows: Vec::new(),
                });
                commits.len() - 1
            });
        commits[i].rows.push(index);
        i
    };
    let mut branches = Vec::with_capacity(program.states.len());
    for s in 0..program.states.len() {
        let state = StateId(s as u16);
        let rows: Vec<RowTest> = program
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| covers(&row.state, state))
            .map(|(index, row)| RowTest {
                row: index,
                commit: commit_of(index, row.next.unwrap_or(state)),
                decided: None,
            })
            .collect();
        branches.push(StateBranch {
            state,
            decisions: decide(program, rows),
        });
    }
    for commit in &mut commits {
        commit.rows.sort_unstable();
        commit.rows.dedup();
    }
    Lowered { branches, commits }
}

fn covers(pattern: &StatePattern, state: StateId) -> bool {
    match pattern {
        StatePattern::Any => true,
        StatePattern::Set(states) => states.contains(&state),
    }
}

/// The exact value a row requires of `field`, if it requires one that
/// fits a register.
fn exact_on(row: &Row, field: Field) -> Option<u64> {
    row.fields.iter().find_map(|m| match m.pattern {
        Pattern::Exact(v) if m.field == field && field.bits() <= 64 => u64::try_from(v).ok(),
        _ => None,
    })
}

/// Groups runs of exact tests on one field into searches.
fn decide(program: &Program, rows: Vec<RowTest>) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let best = program.rows[rows[i].row]
            .fields
            .iter()
            .filter_map(|m| {
                exact_on(&program.rows[rows[i].row], m.field)?;
                let run = rows[i..]
                    .iter()
                    .take_while(|t| exact_on(&program.rows[t.row], m.field).is_some())
                    .count();
                Some((run, m.field))
            })
            .max_by_key(|(run, _)| *run);
        match best {
            Some((run, field)) if run >= SEARCH_MIN_ROWS => {
                let mut cases: Vec<(u64, Vec<RowTest>)> = Vec::new();
                for t in &rows[i..i + run] {
                    let value = exact_on(&program.rows[t.row], field).unwrap_or(0);
                    let test = RowTest {
                        decided: Some(field),
                        ..t.clone()
                    };
                    match cases.iter_mut().find(|(v, _)| *v == value) {
                        Some((_, tests)) => tests.push(test),
                        None => cases.push((value, vec![test])),
                    }
                }
                cases.sort_by_key(|(v, _)| *v);
                out.push(Decision::Search { field, cases });
                i += run;
            }
            _ => {
                out.push(Decision::Row(rows[i].clone()));
                i += 1;
            }
        }
    }
    out
}

/// A condition up to its negation, as text (`a >= b` and `a < b` share
/// one), and the truth of that shared form when `cond` holds. Rows that
/// test one condition, or its negation, then share what a packet learned
/// about it (see `emit`'s row runs).
pub(crate) fn condition_key(cond: &Condition) -> (String, bool) {
    let (op, holds) = match cond.op {
        CmpOp::Eq => (CmpOp::Eq, true),
        CmpOp::Ne => (CmpOp::Eq, false),
        CmpOp::Lt => (CmpOp::Lt, true),
        CmpOp::Ge => (CmpOp::Lt, false),
        CmpOp::Le => (CmpOp::Le, true),
        CmpOp::Gt => (CmpOp::Le, false),
    };
    (format!("{:?} {op:?} {:?}", cond.lhs, cond.rhs), holds)
}

/// Presence bits of every field a row reads (patterns, conditions,
/// updates), leaving out fields every packet has.
pub(crate) fn row_presence(row: &Row) -> u32 {
    let mut mask = 0u32;
    let mut add = |f: Field| {
        if !matches!(f, Field::PktLen | Field::PktIfindex) {
            mask |= 1 << (f as u32);
        }
    };
    for m in &row.fields {
        add(m.field);
    }
    for c in &row.conditions {
        visit_fields(&c.cond.lhs, &mut add);
        visit_fields(&c.cond.rhs, &mut add);
    }
    for u in &row.updates {
        visit_fields(&u.value, &mut add);
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(source: &str) -> Program {
        flowstate_lang::compile(source).unwrap().program
    }

    #[test]
    fn wildcard_state_rows_reach_every_branch_with_static_next() {
        let p = program(include_str!("../../../examples/portknock.fsm"));
        let lowered = lower(&p);
        assert_eq!(lowered.branches.len(), 5);
        // OPEN (4): `OPEN tcp.dport == 22`, `OPEN *`, `* *` in that order.
        let open: Vec<usize> = lowered.branches[4]
            .decisions
            .iter()
            .map(|d| match d {
                Decision::Row(t) => t.row,
                Decision::Search { .. } => usize::MAX,
            })
            .collect();
        assert_eq!(open, vec![4, 5, 6]);
        // Row 4 keeps OPEN: its commit's next is OPEN, not a runtime value.
        let Decision::Row(t) = &lowered.branches[4].decisions[0] else {
            unreachable!()
        };
        assert_eq!(lowered.commits[t.commit].next, StateId(4));
    }

    #[test]
    fn a_condition_and_its_negation_share_a_key_with_opposite_truths() {
        let p = program(include_str!("../../../examples/tokenbucket.fsm"));
        let key = |row: usize, i: usize| condition_key(&p.rows[row].conditions[i].cond);
        // Rows 1 and 2 test `now >= tmin`; row 3 tests `now < tmin`.
        assert_eq!(key(1, 0), key(2, 0));
        assert_eq!(key(1, 0).0, key(3, 0).0);
        assert_ne!(key(1, 0).1, key(3, 0).1);
        // `now <= tmax` and `now > tmax`.
        assert_eq!(key(1, 1).0, key(2, 1).0);
        assert_ne!(key(1, 1).1, key(2, 1).1);
        assert_ne!(key(1, 0).0, key(1, 1).0);
    }

    #[test]
    fn equal_effects_share_a_commit_listing_every_row() {
        let p = program(
            "program s\nhook xdp\nflow ip.src\nstates A, B\nregisters n = 0\ndefault pass\ntable\n\
             \x20 A udp.dport == 1 => drop\n\
             \x20 A udp.dport == 2 => drop, n = 1\n\
             \x20 * udp.dport == 3 => drop\n\
             \x20 B udp.dport == 4 => drop, next B\nend\n",
        );
        let lowered = lower(&p);
        // A: rows 0 and 2 share (drop, next A); B: row 2 (next B) and row
        // 3 (`next B` written) do not, as row 3's commit checks the state.
        let rows: Vec<Vec<usize>> = lowered.commits.iter().map(|c| c.rows.clone()).collect();
        assert_eq!(rows, vec![vec![0, 2], vec![1], vec![2], vec![3]]);
        assert!(lowered.commits[0].shared());
        assert!(!lowered.commits[2].shared());
    }

    #[test]
    fn exact_runs_become_sorted_searches_between_other_rows() {
        let mut text = String::from(
            "program many\nhook xdp\nflow ip.src\nstates A, B\ndefault pass\ntable\n  A tcp.dport in 1..5 => drop\n",
        );
        for port in [90, 10, 50, 10, 70, 30] {
            text.push_str(&format!("  A tcp.dport == {port} => pass\n"));
        }
        text.push_str("  * * => drop\nend\n");
        let p = program(&text);
        let lowered = lower(&p);
        let d = &lowered.branches[0].decisions;
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(matches!(&d[0], Decision::Row(t) if t.row == 0));
        let Decision::Search { field, cases } = &d[1] else {
            panic!("expected a search: {d:?}")
        };
        assert_eq!(*field, Field::TcpDport);
        let values: Vec<u64> = cases.iter().map(|(v, _)| *v).collect();
        assert_eq!(values, vec![10, 30, 50, 70, 90]);
        // Two rows test 10: both kept, in priority order.
        let tens: Vec<usize> = cases[0].1.iter().map(|t| t.row).collect();
        assert_eq!(tens, vec![2, 4]);
        assert!(matches!(&d[2], Decision::Row(t) if t.row == 7));
        // State B sees only the wildcard row.
        assert_eq!(lowered.branches[1].decisions.len(), 1);
    }
}
