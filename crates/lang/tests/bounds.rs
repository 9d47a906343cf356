//! Resource use on bad input (issue 7): output in proportion to the distinct
//! problems, not to their repetitions; the text size is bounded; the
//! analyses stay near-linear in the number of rows.

use flowstate_lang::diag::{render, Diagnostic, LineIndex, SHOWN_PER_KIND};
use flowstate_lang::{compile, MAX_SOURCE_BYTES};

fn errors(src: &str) -> Vec<Diagnostic> {
    compile(src).expect_err("the program has errors")
}

fn with_states(states: &str) -> String {
    format!("program p\nhook xdp\nflow ip.src\nstates {states}\ntable\n  * * => pass\nend\n")
}

#[test]
fn thousands_of_duplicate_states_are_one_error_with_a_count() {
    let states = vec!["A"; 5000].join(", ");
    let src = with_states(&states);
    let ds = errors(&src);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0].message, "duplicate state `A`");
    assert_eq!(ds[0].repeats, 4998);
    // The first folded one is the third `A`, at column 8 + 3 + 3.
    assert_eq!(
        LineIndex::new(&src).line_col(ds[0].repeat_spans[0].start),
        (4, 14)
    );

    let text = render(&ds, "p.fsm", &src, false);
    assert!(text.contains("--> p.fsm:4:11"), "{text}");
    assert!(text.contains("^ already declared"), "{text}");
    assert!(
        text.contains("= and 4,998 more like this, at 4:14, 4:17"),
        "{text}"
    );
    // Was 150 MB: the 15 kB line once per duplicate; now one window of it.
    assert!(text.len() < 1000, "{} bytes", text.len());
}

#[test]
fn many_distinct_errors_of_one_kind_show_a_few_then_a_count() {
    let states: Vec<String> = (0..5000).map(|i| format!("S{i}, S{i}")).collect();
    let src = with_states(&states.join(", "));
    let ds = errors(&src);
    assert_eq!(ds.len(), SHOWN_PER_KIND, "{ds:?}");
    assert_eq!(ds[0].message, "duplicate state `S0`");
    assert_eq!(
        ds[SHOWN_PER_KIND - 1].repeats as usize,
        5000 - SHOWN_PER_KIND
    );
    let text = render(&ds, "p.fsm", &src, false);
    assert!(text.contains("and 4,992 more like this"), "{text}");
    // The 50 kB line is shown as a window around each caret.
    assert!(text.len() < 4000, "{} bytes", text.len());
}

#[test]
fn a_line_of_garbage_per_line_is_one_error_per_kind() {
    let src: String = (0..100_000).map(|i| format!("x{i} = 1\n")).collect();
    let ds = errors(&src);
    assert!(ds.len() <= 2 * SHOWN_PER_KIND, "{} diagnostics", ds.len());
    let folded: u32 = ds.iter().map(|d| 1 + d.repeats).sum();
    assert!(folded >= 100_000, "{folded}");
}

#[test]
fn text_over_the_limit_is_refused_naming_the_limit() {
    let src = "#".repeat(MAX_SOURCE_BYTES + 1);
    let ds = errors(&src);
    assert_eq!(ds.len(), 1);
    assert!(ds[0].message.contains("4 MiB"), "{}", ds[0].message);
    let text = render(&ds, "big.fsm", &src, false);
    assert!(text.contains("--> big.fsm:1:1"), "{text}");
    assert!(text.len() < 1000, "{text}");
    // A comment just under the limit is read (and lacks declarations).
    let src = "#".repeat(MAX_SOURCE_BYTES);
    assert!(errors(&src)
        .iter()
        .all(|d| d.message.starts_with("missing")));
}

/// `n` declared states and `n` rows naming a state that does not exist.
fn unknown_states(n: usize) -> String {
    let states: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
    let mut src = format!(
        "program p\nhook xdp\nflow ip.src\nstates {}\ndefault pass\ntable\n",
        states.join(", ")
    );
    for i in 0..n {
        src.push_str(&format!("  T{i} * => pass\n"));
    }
    src + "end\n"
}

#[test]
fn unknown_names_among_thousands_are_a_short_report() {
    // (The work it takes is counted in check::tests.)
    let large = unknown_states(20_000);
    let ds = errors(&large);
    assert_eq!(ds.len(), SHOWN_PER_KIND);
    let total: usize = ds.iter().map(Diagnostic::count).sum();
    assert_eq!(total, 20_000);
    // The help lists a few states, not all 20,000.
    let help = ds[0].help.as_deref().unwrap();
    assert!(help.ends_with("S19, and 19980 more"), "{help}");
    // Was 1.2 MB: every help listed all 20,000 states.
    assert!(render(&ds, "p.fsm", &large, false).len() < 4000);
}
