//! Stage 2: the XFSM table as a decision structure.
//!
//! The table is compiled into code, not looked up: the generated program
//! first switches on the flow's state, then tries, in priority order, the
//! rows whose state pattern covers that state. Within one state's rows, a
//! run of consecutive rows that all test one field for an exact value, a
//! range or a set becomes a binary search over disjoint intervals of that field
//! (the ranges cut where any of them starts or ends, each piece listing the
//! rows that cover it in priority order, up to the first that needs
//! nothing else); rows outside the run (wildcards, masks, other fields)
//! stay where they were, so the first matching row still wins. Besides
//! speed, the search keeps the number of branches on any path logarithmic
//! in rows: the verifier gives up on a path with more than 8,192 pending
//! branches, which a chain of a few thousand row tests reaches.
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
    /// Rows that all require `field` in an interval (an exact value is a
    /// one-value interval), as disjoint cases sorted ascending; each case
    /// keeps the rows that cover it in priority order.
    Search { field: Field, cases: Vec<Case> },
}

/// One piece of a [`Decision::Search`]: the values `lo..=hi` of the field
/// and the rows to try, in order, when the field is one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Case {
    pub lo: u64,
    pub hi: u64,
    pub tests: Vec<RowTest>,
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
        "{:?}|{:?}|{:?}|{}|{}",
        row.action,
        row.updates,
        row.writes,
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

/// The intervals of values a row requires of `field` (an exact value, a
/// range, or a set: one interval per member), if it requires such a
/// pattern and the field fits a register.
fn intervals_on(row: &Row, field: Field) -> Option<Vec<(u64, u64)>> {
    if field.bits() > 64 {
        return None;
    }
    let narrow = |v: u128| u64::try_from(v).ok();
    row.fields.iter().find_map(|m| match &m.pattern {
        _ if m.field != field => None,
        Pattern::Exact(v) => Some(vec![(narrow(*v)?, narrow(*v)?)]),
        Pattern::Range { lo, hi } => Some(vec![(narrow(*lo)?, narrow(*hi)?)]),
        Pattern::Set(values) => values
            .iter()
            .map(|v| Some((narrow(*v)?, narrow(*v)?)))
            .collect(),
        Pattern::Masked { .. } => None,
    })
}

/// Whether a row matches every packet whose `field` is in its interval:
/// it tests nothing else and reads no other field that could be absent.
fn decided_by(row: &Row, field: Field) -> bool {
    row.fields.len() == 1
        && row.conditions.is_empty()
        && row_presence(row) & !(1u32 << (field as u32)) == 0
}

/// Groups runs of interval tests on one field into searches.
fn decide(program: &Program, rows: Vec<RowTest>) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let row = &program.rows[rows[i].row];
        let best = row
            .fields
            .iter()
            .filter(|m| intervals_on(row, m.field).is_some())
            .map(|m| {
                let run = rows[i..]
                    .iter()
                    .take_while(|t| intervals_on(&program.rows[t.row], m.field).is_some())
                    .count();
                (run, m.field)
            })
            .max_by_key(|(run, _)| *run);
        let search = match best {
            Some((run, field)) if run >= SEARCH_MIN_ROWS => {
                interval_cases(program, field, &rows[i..i + run]).map(|cases| (run, field, cases))
            }
            _ => None,
        };
        match search {
            Some((run, field, cases)) => {
                out.push(Decision::Search { field, cases });
                i += run;
            }
            None => {
                out.push(Decision::Row(rows[i].clone()));
                i += 1;
            }
        }
    }
    out
}

/// Cuts the run's intervals on `field` into disjoint cases, each listing
/// the rows that cover it in priority order, up to (and with) the first
/// row [`decided_by`] the field. `None` when overlapping ranges would make
/// the lists grow past a few entries per row (then the rows are tested one
/// by one).
fn interval_cases(program: &Program, field: Field, run: &[RowTest]) -> Option<Vec<Case>> {
    // Per row of the run, its intervals.
    let spans: Vec<Vec<(u64, u64)>> = run
        .iter()
        .map(|t| intervals_on(&program.rows[t.row], field).unwrap_or_default())
        .collect();
    // Where any interval starts, or starts again after one ends.
    let mut cuts: Vec<u64> = spans
        .iter()
        .flatten()
        .flat_map(|&(lo, hi)| [Some(lo), hi.checked_add(1)])
        .flatten()
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let piece_of = |value: u64| cuts.partition_point(|&c| c <= value) - 1;
    let mut lists: Vec<Vec<RowTest>> = vec![Vec::new(); cuts.len()];
    // `open[k]`: the first piece at or after k whose list still takes
    // rows (a piece closes at a row decided by the field), so rows skip
    // closed pieces without visiting them again.
    let mut open: Vec<usize> = (0..=cuts.len()).collect();
    fn find(open: &mut [usize], k: usize) -> usize {
        let mut root = k;
        while open[root] != root {
            root = open[root];
        }
        let mut at = k;
        while open[at] != root {
            let next = open[at];
            open[at] = root;
            at = next;
        }
        root
    }
    let members: usize = spans.iter().map(Vec::len).sum();
    let budget = 4 * members + 16;
    let mut entries = 0usize;
    for (test, intervals) in run.iter().zip(&spans) {
        let closes = decided_by(&program.rows[test.row], field);
        for &(lo, hi) in intervals {
            let last = piece_of(hi);
            let mut k = find(&mut open, piece_of(lo));
            while k <= last {
                entries += 1;
                if entries > budget {
                    return None;
                }
                lists[k].push(RowTest {
                    decided: Some(field),
                    ..test.clone()
                });
                if closes {
                    open[k] = k + 1;
                }
                k = find(&mut open, k + 1);
            }
        }
    }
    let mut cases: Vec<Case> = Vec::new();
    for (k, tests) in lists.into_iter().enumerate() {
        if tests.is_empty() {
            continue;
        }
        let lo = cuts[k];
        let hi = cuts.get(k + 1).map_or(u64::MAX, |next| next - 1);
        match cases.last_mut() {
            Some(prev) if prev.hi.checked_add(1) == Some(lo) && prev.tests == tests => prev.hi = hi,
            _ => cases.push(Case { lo, hi, tests }),
        }
    }
    Some(cases)
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
/// updates) or writes, leaving out fields every packet has.
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
    // A packet without a written field does not match the row.
    for w in &row.writes {
        add(w.field);
        visit_fields(&w.value, &mut add);
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

    fn cases_of(d: &Decision) -> Vec<(u64, u64, Vec<usize>)> {
        let Decision::Search { cases, .. } = d else {
            panic!("expected a search: {d:?}")
        };
        cases
            .iter()
            .map(|c| (c.lo, c.hi, c.tests.iter().map(|t| t.row).collect()))
            .collect()
    }

    #[test]
    fn exact_runs_become_sorted_searches_between_other_rows() {
        let mut text = String::from(
            "program many\nhook xdp\nflow ip.src\nstates A, B\ndefault pass\ntable\n  A tcp.dport == 0x100/0xff00 => drop\n",
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
        let Decision::Search { field, .. } = &d[1] else {
            panic!("expected a search: {d:?}")
        };
        assert_eq!(*field, Field::TcpDport);
        // Two rows test 10: the first decides it, the second is never tried.
        assert_eq!(
            cases_of(&d[1]),
            vec![
                (10, 10, vec![2]),
                (30, 30, vec![6]),
                (50, 50, vec![3]),
                (70, 70, vec![5]),
                (90, 90, vec![1]),
            ]
        );
        assert!(matches!(&d[2], Decision::Row(t) if t.row == 7));
        // State B sees only the wildcard row.
        assert_eq!(lowered.branches[1].decisions.len(), 1);
    }

    #[test]
    fn overlapping_ranges_are_cut_into_pieces_that_keep_priority() {
        let p = program(
            "program r\nhook xdp\nflow ip.src\nstates A\nregisters n = 0\ndefault pass\ntable\n\
             \x20 A tcp.dport in 10..20, n > 3 => drop\n\
             \x20 A tcp.dport in 15..30 => pass\n\
             \x20 A tcp.dport == 18 => tx\n\
             \x20 A tcp.dport in 25..40 => drop, n = n + 1\n\
             \x20 A tcp.dport == 65535 => drop\nend\n",
        );
        let lowered = lower(&p);
        let d = &lowered.branches[0].decisions;
        assert_eq!(d.len(), 1, "{d:?}");
        // Row 1 decides 15..30, so row 2 (18) and row 3 (25..30) are
        // never tried there; row 0 needs its condition, so row 1 follows.
        assert_eq!(
            cases_of(&d[0]),
            vec![
                (10, 14, vec![0]),
                (15, 20, vec![0, 1]),
                (21, 30, vec![1]),
                (31, 40, vec![3]),
                (65535, 65535, vec![4]),
            ]
        );
    }

    #[test]
    fn ranges_overlapping_too_much_stay_rows() {
        // Every range covers every other's start and no row decides: the
        // pieces' lists would grow with the square of the rows.
        let mut text = String::from(
            "program r\nhook xdp\nflow ip.src\nstates A\nregisters n = 0\ndefault pass\ntable\n",
        );
        for i in 0..40 {
            text.push_str(&format!(
                "  A tcp.dport in {i}..{}, n > {i} => drop\n",
                1000 - i
            ));
        }
        text.push_str("end\n");
        let p = program(&text);
        let lowered = lower(&p);
        let d = &lowered.branches[0].decisions;
        assert!(matches!(&d[0], Decision::Row(t) if t.row == 0), "{d:?}");
        // Code stays linear in rows: every row test emitted, counted.
        let tests: usize = d
            .iter()
            .map(|d| match d {
                Decision::Row(_) => 1,
                Decision::Search { cases, .. } => cases.iter().map(|c| c.tests.len()).sum(),
            })
            .sum();
        assert!(tests <= 4 * 40 + 16, "{tests} row tests for 40 rows");
    }

    #[test]
    fn a_range_to_the_largest_value_ends_the_last_case() {
        let p = program(
            "program r\nhook xdp\nflow ip.src\nstates A\ndefault pass\ntable\n\
             \x20 A ip.dst in 0.0.0.0..0.0.0.9 => drop\n\
             \x20 A ip.dst == 1.0.0.0 => drop\n\
             \x20 A ip.dst == 2.0.0.0 => drop\n\
             \x20 A ip.dst in 255.255.255.0..255.255.255.255 => pass\nend\n",
        );
        let lowered = lower(&p);
        assert_eq!(
            cases_of(&lowered.branches[0].decisions[0]),
            vec![
                (0, 9, vec![0]),
                (0x0100_0000, 0x0100_0000, vec![1]),
                (0x0200_0000, 0x0200_0000, vec![2]),
                (0xffff_ff00, 0xffff_ffff, vec![3]),
            ]
        );
    }
}
