//! What the `bpf_loop` fallback (kernels without `may_goto`, Linux 6.1
//! say) costs the verifier, against the `may_goto` build of the same
//! program, both loaded in the running kernel: the fallback's waits are
//! bounded rounds the verifier walks one by one, so they must stay few
//! (issue 8: 32 rounds made a 5-row table cost 13 times as much, and
//! generated programs hit E2BIG). Relative figures only, from the
//! kernel's `verified_insns`. Needs root and a kernel with `may_goto`
//! (6.9) and `bpf_loop`; prints SKIP otherwise (it is not run in the VMs).

use flowstate_codegen::{compile, Options, Target};
use flowstate_runtime::{load, LoadOptions};

/// The fallback may cost at most this many times the `may_goto` build.
const MAX_RATIO: f64 = 2.0;
/// Known limit: a write under an update key races inserts of its own, and
/// each of its rounds is walked with what follows (`INSERT_ROUNDS` in
/// `emit/wait.rs`): measured 3.2 on 6.18.
const MAX_RATIO_UPDATE_KEY: f64 = 4.5;

fn skip(test: &str) -> bool {
    if flowstate_testkit::skip_if(test, flowstate_runtime::kernel_unavailable()) {
        return true;
    }
    let features = flowstate_runtime::kernel_features();
    if !features.may_goto.is_present() {
        return flowstate_testkit::skip(test, "needs may_goto (Linux 6.9) to compare with");
    }
    false
}

/// Instructions the verifier processed for `source` built for `target`.
fn verified(source: &str, target: Target) -> u32 {
    let program = match flowstate_lang::compile(source) {
        Ok(c) => c.program,
        Err(d) => panic!("{d:?}"),
    };
    let options = Options {
        target,
        ..Options::default()
    };
    let output = compile(&program, &options).unwrap();
    let loaded = match load(&output.object, &LoadOptions::default()) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{e}\n{}", output.listing),
    };
    let stats = loaded.stats(&output.program_name).unwrap();
    stats
        .verified_insns
        .expect("the kernel reports verified_insns")
}

fn table(name: &str, flow: &str, rows: &[String]) -> String {
    format!(
        "program {name}\nhook xdp\nflow {flow}\nstates S, T\nregisters n = 0\nglobals g = 0\n\
         default pass\ntable\n{}end\n",
        rows.iter().map(|r| format!("  {r}\n")).collect::<String>()
    )
}

fn assert_cheap(name: &str, source: &str, max_ratio: f64) {
    let fallback_target = Target::parse("6.1").unwrap();
    let fallback = verified(source, fallback_target);
    let newest = verified(source, Target::newest());
    let ratio = f64::from(fallback) / f64::from(newest);
    eprintln!("{name}: bpf_loop fallback {fallback}, may_goto {newest} (x{ratio:.2})");
    assert!(
        ratio <= max_ratio,
        "{name}: the 6.1 build costs the verifier {fallback} instructions, {ratio:.2} times the \
         may_goto build's {newest} (at most {max_ratio})"
    );
}

#[test]
fn a_five_row_table_verifies_within_twice_the_may_goto_cost() {
    if skip("a_five_row_table_verifies_within_twice_the_may_goto_cost") {
        return;
    }
    let rows: Vec<String> = (0..5)
        .map(|i| format!("S udp.dport == {} => drop, next T", 1000 + i))
        .chain(["T * => pass, n = n + 1, next S".to_string()])
        .collect();
    assert_cheap("five rows", &table("five", "ip.src", &rows), MAX_RATIO);
}

#[test]
fn a_table_writing_under_an_update_key_verifies_within_its_bound() {
    if skip("a_table_writing_under_an_update_key_verifies_within_its_bound") {
        return;
    }
    let rows: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "S udp.dport == {} => drop, n = n + {i}, g = g * 2 + n, next T",
                1000 + i
            )
        })
        .chain(["T * => pass, next S".to_string()])
        .collect();
    let source =
        table("upd", "ip.src", &rows).replace("flow ip.src\n", "flow ip.src\nupdate ip.dst\n");
    assert_cheap("update key", &source, MAX_RATIO_UPDATE_KEY);
}
