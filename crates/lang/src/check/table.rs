//! Table analysis on checked rows: rows that can never match because an
//! earlier row takes all their packets, and whether the table matches
//! every packet.
//!
//! Both analyses are conservative: "covers" is claimed only when it is
//! certain, so a warning is never wrong, though some dead rows go unseen
//! (e.g. one covered by two earlier rows together).

use std::collections::HashMap;

use flowstate_wire::Field;

use super::width_mask;
use crate::diag::{Diagnostic, LineIndex};
use crate::ir::{CondMatch, Expr, Pattern, Program, Row, StateId, StatePattern};
use crate::syntax::Span;

/// Patterns with at most this many values are compared value by value.
const ENUMERATE_LIMIT: u128 = 4096;

/// A warning for each row that an earlier row covers. `spans[i]` is the
/// source span of `program.rows[i]`.
pub(super) fn unreachable_rows(
    program: &Program,
    spans: &[Span],
    lines: &LineIndex<'_>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let (first_covering, _) = first_covering_rows(&program.rows);
    for (j, covering) in first_covering.into_iter().enumerate() {
        let Some(i) = covering else {
            continue;
        };
        let (Some(later_span), Some(earlier_span)) = (spans.get(j), spans.get(i)) else {
            continue;
        };
        let (line, _) = lines.line_col(earlier_span.start);
        out.push(
            Diagnostic::warning(
                format!(
                    "row can never match: the row at line {line} matches all its packets first"
                ),
                later_span.clone(),
                "unreachable row",
            )
            .with_note(earlier_span.clone(), "this row comes first and covers it")
            .with_help("the first matching row wins: move this row above it, or remove it"),
        );
    }
    out
}

/// A fact that every row covered by a given row has. Each row is filed
/// under some of its own facts; a later row looks only in the files of its
/// facts, so it meets every earlier row that could cover it, and few others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fact<'a> {
    /// The row's first state is this one (a row for a set of states covers
    /// only rows whose states are all in the set, so also the first).
    FirstStateIn(StateId),
    /// The row has this condition.
    Condition(&'a CondMatch),
    /// The row's values of `field` start in the aligned block `index` of
    /// `2^level` values. A covering pattern spanning fewer than `2^level`
    /// values touches at most two such blocks, and the covered row's
    /// lowest value lies in one of them.
    Block {
        field: Field,
        level: u32,
        index: u128,
    },
}

/// For each row, the first earlier row that covers it, and how many pairs
/// of rows were compared (for the tests: it grows about linearly with the
/// rows for the usual table shapes). The same answer as trying every
/// earlier row in order, only without trying most of them.
fn first_covering_rows(rows: &[Row]) -> (Vec<Option<usize>>, usize) {
    // Where each row may be filed: groups of facts, each group enough on its
    // own (a row is filed under every fact of the chosen group).
    let filings: Vec<Vec<Vec<Fact<'_>>>> = rows.iter().map(filing_options).collect();
    let mut levels: HashMap<Field, Vec<u32>> = HashMap::new();
    for fact in filings.iter().flatten().flatten() {
        if let Fact::Block { field, level, .. } = fact {
            let used = levels.entry(*field).or_default();
            if !used.contains(level) {
                used.push(*level);
            }
        }
    }
    let lookups: Vec<Vec<Fact<'_>>> = rows.iter().map(|r| row_facts(r, &levels)).collect();
    // A row filed under a fact is compared with every later row that looks
    // there: file each row where the fewest rows look.
    let mut lookers: HashMap<Fact<'_>, usize> = HashMap::new();
    for fact in lookups.iter().flatten() {
        *lookers.entry(*fact).or_default() += 1;
    }

    let mut files: HashMap<Fact<'_>, Vec<usize>> = HashMap::new();
    // The first row that matches every packet covers every later row.
    let mut covers_all: Option<usize> = None;
    let mut found = Vec::with_capacity(rows.len());
    let mut compared = 0usize;
    for (j, later) in rows.iter().enumerate() {
        let mut first = covers_all;
        for fact in &lookups[j] {
            for &i in files.get(fact).map_or(&[][..], Vec::as_slice) {
                if first.is_some_and(|f| f <= i) {
                    break;
                }
                compared += 1;
                if row_covers(&rows[i], later) {
                    first = Some(i);
                    break;
                }
            }
        }
        found.push(first);

        let cheapest = filings[j].iter().min_by_key(|group| {
            group
                .iter()
                .map(|f| lookers.get(f).unwrap_or(&0))
                .sum::<usize>()
        });
        match cheapest {
            Some(group) => {
                for fact in group {
                    files.entry(*fact).or_default().push(j);
                }
            }
            None if never_matches(later) => {}
            None => {
                covers_all.get_or_insert(j);
            }
        }
    }
    (found, compared)
}

/// The ways to file `row`: each group holds facts that every row it covers
/// has. No group: the row covers every row (or, matching nothing, none).
fn filing_options(row: &Row) -> Vec<Vec<Fact<'_>>> {
    let mut options = Vec::new();
    if let StatePattern::Set(states) = &row.state {
        options.push(states.iter().map(|s| Fact::FirstStateIn(*s)).collect());
    }
    for c in &row.conditions {
        options.push(vec![Fact::Condition(c)]);
    }
    for m in &row.fields {
        let Some((lo, hi)) = bounds(&m.pattern, width_mask(m.field)) else {
            // Matches nothing: covers nothing.
            return Vec::new();
        };
        let level = u128::BITS - (hi - lo).leading_zeros();
        let block = |v: u128| Fact::Block {
            field: m.field,
            level,
            index: v.checked_shr(level).unwrap_or(0),
        };
        let mut group = vec![block(lo)];
        if block(hi) != block(lo) {
            group.push(block(hi));
        }
        options.push(group);
    }
    options
}

/// A row none of whose patterns matches anything.
fn never_matches(row: &Row) -> bool {
    row.fields
        .iter()
        .any(|m| bounds(&m.pattern, width_mask(m.field)).is_none())
}

/// The facts `row` has, as far as any filed row can ask for them (`levels`:
/// the block sizes in use per field).
fn row_facts<'a>(row: &'a Row, levels: &HashMap<Field, Vec<u32>>) -> Vec<Fact<'a>> {
    let mut facts = Vec::new();
    if let StatePattern::Set(states) = &row.state {
        facts.extend(states.first().map(|s| Fact::FirstStateIn(*s)));
    }
    facts.extend(row.conditions.iter().map(Fact::Condition));
    for m in &row.fields {
        // A pattern that matches nothing is covered by no pattern.
        let Some((lo, _)) = bounds(&m.pattern, width_mask(m.field)) else {
            continue;
        };
        for &level in levels.get(&m.field).map_or(&[][..], Vec::as_slice) {
            facts.push(Fact::Block {
                field: m.field,
                level,
                index: lo.checked_shr(level).unwrap_or(0),
            });
        }
    }
    facts
}

/// Fields a row's field writes need present (what they write and read):
/// a packet without one does not match the row.
fn written_fields(row: &Row) -> Vec<Field> {
    fn visit(e: &Expr, out: &mut Vec<Field>) {
        match e {
            Expr::Field(f) => out.push(*f),
            Expr::Binary(_, a, b) => {
                visit(a, out);
                visit(b, out);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for w in &row.writes {
        out.push(w.field);
        visit(&w.value, &mut out);
    }
    out
}

/// Every packet that `later` matches, `earlier` matches too.
fn row_covers(earlier: &Row, later: &Row) -> bool {
    state_covers(&earlier.state, &later.state)
        && written_fields(earlier)
            .iter()
            .all(|f| later.fields.iter().any(|l| l.field == *f))
        && earlier.fields.iter().all(|e| {
            later
                .fields
                .iter()
                .any(|l| l.field == e.field && pattern_covers(e.field, &e.pattern, &l.pattern))
        })
        && earlier
            .conditions
            .iter()
            .all(|c| later.conditions.contains(c))
}

fn state_covers(earlier: &StatePattern, later: &StatePattern) -> bool {
    match (earlier, later) {
        (StatePattern::Any, _) => true,
        (StatePattern::Set(_), StatePattern::Any) => false,
        (StatePattern::Set(e), StatePattern::Set(l)) => l.iter().all(|s| e.contains(s)),
    }
}

/// Every value of `field` that `b` matches, `a` matches too. False when
/// unsure, and when `b` matches nothing (that row is dead for another
/// reason, which this warning would misstate).
pub(crate) fn pattern_covers(field: Field, a: &Pattern, b: &Pattern) -> bool {
    let width = width_mask(field);
    let Some((b_lo, b_hi)) = bounds(b, width) else {
        return false;
    };
    // Cheap first: `b` reaching outside `a`'s lowest and highest values is
    // not covered (this spares walking the values of overlapping sets).
    match bounds(a, width) {
        Some((a_lo, a_hi)) if a_lo <= b_lo && b_hi <= a_hi => {}
        _ => return false,
    }
    match a {
        Pattern::Range { lo, hi } => return *lo <= b_lo && b_hi <= *hi,
        Pattern::Masked { value, mask } => {
            if let Pattern::Masked {
                value: bv,
                mask: bm,
            } = b
            {
                // `b` fixes every bit `a` looks at, to `a`'s values.
                if mask & !bm == 0 && bv & mask == *value {
                    return true;
                }
            }
            let free = width & !mask;
            // A prefix mask matches one interval.
            if free & free.wrapping_add(1) == 0 && value & free == 0 {
                return *value <= b_lo && b_hi <= value | free;
            }
        }
        Pattern::Exact(_) | Pattern::Set(_) => {}
    }
    match values(b, width) {
        Some(vs) => vs.iter().all(|v| a.matches(*v)),
        None => false,
    }
}

/// Smallest and largest matched value; `None` when nothing matches.
fn bounds(p: &Pattern, width: u128) -> Option<(u128, u128)> {
    match p {
        Pattern::Exact(x) => Some((*x, *x)),
        Pattern::Set(xs) => Some((*xs.first()?, *xs.last()?)),
        Pattern::Range { lo, hi } => (lo <= hi).then_some((*lo, *hi)),
        Pattern::Masked { value, mask } => {
            (value & !mask == 0).then_some((*value, value | (width & !mask)))
        }
    }
}

/// All matched values, when there are few.
fn values(p: &Pattern, width: u128) -> Option<Vec<u128>> {
    match p {
        Pattern::Exact(x) => Some(vec![*x]),
        Pattern::Set(xs) => Some(xs.clone()),
        Pattern::Range { lo, hi } => {
            (hi.checked_sub(*lo)? < ENUMERATE_LIMIT).then(|| (*lo..=*hi).collect())
        }
        Pattern::Masked { value, mask } => {
            let free = width & !mask;
            if free.count_ones() > 12 {
                return None;
            }
            // Walk every subset of the free bits.
            let mut out = Vec::new();
            let mut sub = free;
            loop {
                out.push(value | sub);
                if sub == 0 {
                    break;
                }
                sub = (sub - 1) & free;
            }
            Some(out)
        }
    }
}

/// Some row matches every packet: a row without field patterns or
/// conditions for `*`, or such rows for every state together.
pub(super) fn covers_all_packets(program: &Program) -> bool {
    let mut covered = vec![false; program.states.len()];
    for row in &program.rows {
        if !(row.fields.is_empty() && row.conditions.is_empty() && row.writes.is_empty()) {
            continue;
        }
        match &row.state {
            StatePattern::Any => return true,
            StatePattern::Set(ids) => {
                for id in ids {
                    if let Some(c) = covered.get_mut(id.0 as usize) {
                        *c = true;
                    }
                }
            }
        }
    }
    covered.iter().all(|c| *c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Action, CmpOp, Condition, Expr, FieldMatch, SourcePos};
    use proptest::prelude::*;

    /// The definition: the first earlier row that covers, tried in order.
    fn first_covering_naive(rows: &[Row]) -> Vec<Option<usize>> {
        (0..rows.len())
            .map(|j| rows[..j].iter().position(|e| row_covers(e, &rows[j])))
            .collect()
    }

    fn row(state: StatePattern, fields: Vec<FieldMatch>, conditions: Vec<CondMatch>) -> Row {
        Row {
            pos: SourcePos::default(),
            state,
            fields,
            conditions,
            action: Action::Drop,
            updates: Vec::new(),
            writes: Vec::new(),
            next: None,
        }
    }

    fn cond(n: i64) -> CondMatch {
        CondMatch {
            cond: Condition {
                op: CmpOp::Lt,
                lhs: Expr::Field(Field::TcpDport),
                rhs: Expr::Const(n),
            },
            negated: false,
        }
    }

    fn field(field: Field, pattern: Pattern) -> FieldMatch {
        FieldMatch { field, pattern }
    }

    /// Patterns over few values, so that rows often cover each other.
    fn pattern(f: Field) -> impl Strategy<Value = Pattern> {
        let top = width_mask(f);
        prop_oneof![
            (0u128..20).prop_map(Pattern::Exact),
            (0u128..20, 0u128..20).prop_map(|(a, b)| Pattern::Range {
                lo: a.min(b),
                hi: a.max(b)
            }),
            Just(Pattern::Range { lo: 0, hi: top }),
            prop::collection::btree_set(0u128..20, 1..5)
                .prop_map(|s| Pattern::Set(s.into_iter().collect())),
            (0u32..6, 0u128..64).prop_map(move |(host_bits, v)| {
                // A prefix: the top bits fixed, `host_bits` free.
                let mask = top & !((1u128 << host_bits) - 1);
                Pattern::Masked {
                    value: v & mask,
                    mask,
                }
            }),
            (0u128..16).prop_map(|m| Pattern::Masked { value: m, mask: m }),
        ]
    }

    fn any_row() -> impl Strategy<Value = Row> {
        let fields = [Field::TcpDport, Field::IpSrc, Field::TcpFlags];
        let state = prop_oneof![
            Just(StatePattern::Any),
            prop::collection::btree_set(0u16..3, 1..3)
                .prop_map(|s| StatePattern::Set(s.into_iter().map(StateId).collect())),
        ];
        let matches = prop::collection::vec(
            (0usize..3).prop_flat_map(move |i| pattern(fields[i]).prop_map(move |p| (i, p))),
            0..3,
        );
        let conditions = prop::collection::vec(0i64..2, 0..2);
        (state, matches, conditions).prop_map(move |(state, matches, conditions)| {
            let mut seen = Vec::new();
            let fields = matches
                .into_iter()
                .filter(|(i, _)| {
                    let fresh = !seen.contains(i);
                    seen.push(*i);
                    fresh
                })
                .map(|(i, p)| field(fields[i], p))
                .collect();
            let mut conditions: Vec<CondMatch> = conditions.into_iter().map(cond).collect();
            conditions.dedup();
            row(state, fields, conditions)
        })
    }

    proptest! {
        /// "Covers" is never claimed wrongly: checked against every value
        /// of an 8-bit field.
        #[test]
        fn covers_is_sound(a in pattern(Field::TcpFlags), b in pattern(Field::TcpFlags)) {
            if pattern_covers(Field::TcpFlags, &a, &b) {
                for v in 0..=255u128 {
                    prop_assert!(!b.matches(v) || a.matches(v), "{:?} {:?} at {}", a, b, v);
                }
            }
        }

        /// The index finds exactly what trying every earlier row finds: the
        /// warning is neither weaker nor stronger than its definition.
        #[test]
        fn indexed_search_finds_the_first_covering_row(
            rows in prop::collection::vec(any_row(), 0..40)
        ) {
            let (found, _) = first_covering_rows(&rows);
            prop_assert_eq!(found, first_covering_naive(&rows));
        }
    }

    /// A family of rows, the i-th of each.
    type Shape = Box<dyn Fn(usize) -> Row>;

    /// Comparisons for `n` rows of one shape, and for four times as many.
    fn growth(shape: impl Fn(usize) -> Row) -> (usize, usize) {
        let count = |n: usize| first_covering_rows(&(0..n).map(&shape).collect::<Vec<_>>()).1;
        (count(10_000), count(40_000))
    }

    /// Four times the rows, at most about four times the comparisons (a
    /// quadratic search made sixteen times as many, 800 million at 40k).
    #[test]
    fn comparisons_grow_linearly_with_the_rows() {
        let a = || StatePattern::Set(vec![StateId(0)]);
        let shapes: Vec<(&str, Shape)> = vec![
            (
                "exact ports",
                Box::new(move |i| {
                    row(
                        a(),
                        vec![field(Field::TcpDport, Pattern::Exact(i as u128))],
                        vec![],
                    )
                }),
            ),
            (
                "port ranges",
                Box::new(move |i| {
                    let lo = (i * 3) as u128;
                    row(
                        a(),
                        vec![field(Field::IpSrc, Pattern::Range { lo, hi: lo + 2 })],
                        vec![],
                    )
                }),
            ),
            (
                "one port, distinct sources",
                Box::new(move |i| {
                    row(
                        a(),
                        vec![
                            field(Field::TcpDport, Pattern::Exact(22)),
                            field(Field::IpSrc, Pattern::Exact(i as u128)),
                        ],
                        vec![],
                    )
                }),
            ),
            (
                "prefixes",
                Box::new(move |i| {
                    row(
                        a(),
                        vec![field(
                            Field::IpSrc,
                            Pattern::Masked {
                                value: (i as u128) << 8,
                                mask: 0xffff_ff00,
                            },
                        )],
                        vec![],
                    )
                }),
            ),
            (
                "one state each",
                Box::new(move |i| row(StatePattern::Set(vec![StateId(i as u16)]), vec![], vec![])),
            ),
            (
                "conditions",
                Box::new(move |i| row(StatePattern::Any, vec![], vec![cond(i as i64)])),
            ),
        ];
        for (name, shape) in shapes {
            let (small, large) = growth(shape);
            assert!(
                large <= 5 * small.max(10_000),
                "{name}: {small} comparisons for 10k rows, {large} for 40k"
            );
        }
    }

    #[test]
    fn ranges_and_prefixes_cover() {
        let port = Field::TcpDport;
        let range = Pattern::Range { lo: 1000, hi: 2000 };
        assert!(pattern_covers(port, &range, &Pattern::Exact(1500)));
        assert!(pattern_covers(
            port,
            &range,
            &Pattern::Set(vec![1000, 2000])
        ));
        assert!(!pattern_covers(
            port,
            &range,
            &Pattern::Set(vec![999, 2000])
        ));
        assert!(pattern_covers(
            port,
            &range,
            &Pattern::Range { lo: 1200, hi: 1300 }
        ));
        assert!(!pattern_covers(port, &Pattern::Exact(1500), &range));

        let ip = Field::IpSrc;
        let slash8 = Pattern::Masked {
            value: 0x0a00_0000,
            mask: 0xff00_0000,
        };
        let slash16 = Pattern::Masked {
            value: 0x0a01_0000,
            mask: 0xffff_0000,
        };
        assert!(pattern_covers(ip, &slash8, &slash16));
        assert!(!pattern_covers(ip, &slash16, &slash8));
        assert!(pattern_covers(ip, &slash8, &Pattern::Exact(0x0a01_0203)));
        assert!(pattern_covers(
            ip,
            &slash8,
            &Pattern::Range {
                lo: 0x0a00_0000,
                hi: 0x0aff_ffff
            }
        ));
        assert!(!pattern_covers(
            ip,
            &slash8,
            &Pattern::Range {
                lo: 0x0a00_0000,
                hi: 0x0b00_0000
            }
        ));
    }

    #[test]
    fn masks_and_sets_cover() {
        let flags = Field::TcpFlags;
        let syn = Pattern::Masked { value: 2, mask: 2 };
        assert!(pattern_covers(flags, &syn, &Pattern::Exact(0x12)));
        assert!(!pattern_covers(flags, &syn, &Pattern::Exact(0x10)));
        assert!(pattern_covers(
            flags,
            &syn,
            &Pattern::Masked {
                value: 0x12,
                mask: 0x12
            }
        ));
        // Every value of a small mask, one by one.
        let set: Vec<u128> = (0..256).filter(|v| v & 2 != 0).collect();
        assert!(pattern_covers(flags, &Pattern::Set(set), &syn));
        // "present" covers everything.
        let any = Pattern::Masked { value: 0, mask: 0 };
        assert!(pattern_covers(
            Field::Ip6Src,
            &any,
            &Pattern::Exact(u128::MAX)
        ));
        // A pattern that matches nothing is not reported as covered.
        assert!(!pattern_covers(
            flags,
            &any,
            &Pattern::Masked { value: 1, mask: 0 }
        ));
        assert!(!pattern_covers(flags, &any, &Pattern::Set(vec![])));
    }
}
