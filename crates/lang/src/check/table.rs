//! Table analysis on checked rows: rows that can never match because an
//! earlier row takes all their packets, and whether the table matches
//! every packet.
//!
//! Both analyses are conservative: "covers" is claimed only when it is
//! certain, so a warning is never wrong, though some dead rows go unseen
//! (e.g. one covered by two earlier rows together).

use flowstate_wire::Field;

use super::width_mask;
use crate::diag::{Diagnostic, LineIndex};
use crate::ir::{Pattern, Program, Row, StatePattern};
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
    for (j, later) in program.rows.iter().enumerate() {
        let Some(i) = program.rows[..j]
            .iter()
            .position(|earlier| row_covers(earlier, later))
        else {
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

/// Every packet that `later` matches, `earlier` matches too.
fn row_covers(earlier: &Row, later: &Row) -> bool {
    state_covers(&earlier.state, &later.state)
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
        if !(row.fields.is_empty() && row.conditions.is_empty()) {
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
