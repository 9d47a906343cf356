//! `cargo bench -p flowstate-bench --bench chain`: the price of a hop in a
//! service chain (docs/chains.md).
//!
//! The functions: `fK` keyed by the source address, dropping UDP to port
//! 700K and passing the rest while counting the flow's packets. Measured
//! in one run, on the same passing frame (a flow that already exists):
//! - `plain`: f1 compiled alone (no chain option);
//! - `chain of N` (1 to 3): f1..fN chained (tail calls through a program
//!   array), run from the head: N table lookups and updates;
//! - `one program`: a single program doing the filtering of all three
//!   (drops 7001, 7002 and 7003, counts the rest): one lookup and update.
//!
//! Printed as ns per packet (`BPF_PROG_TEST_RUN`, repeat 1,000,000, median
//! of 5) and as ratios to `one program` and to `plain`, all from the same
//! run; the per-hop figure is (chain of 3 - chain of 1) / 2. No threshold:
//! the figures are for reading, not for failing. Needs root.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use flowstate_bench::frames;
use flowstate_codegen::chain::ChainLink;
use flowstate_codegen::{compile, Options, Output};
use flowstate_runtime::chain::{load_chain, ChainFunction, LoadedChain};
use flowstate_runtime::LoadOptions;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;
const XDP_PASS: u32 = 2;

fn function(k: u32) -> String {
    format!(
        "program f{k}\nhook xdp\nflow ip.src\nstates S\nregisters n = 0\ndefault pass\ntable\n\
         \x20 S udp.dport == {} => drop, n = n + 1\n  S * => pass, n = n + 1\nend\n",
        7000 + k
    )
}

const ONE_PROGRAM: &str = "program all\nhook xdp\nflow ip.src\nstates S\nregisters n = 0\n\
    default pass\ntable\n  S udp.dport == 7001 => drop, n = n + 1\n\
    \x20 S udp.dport == 7002 => drop, n = n + 1\n  S udp.dport == 7003 => drop, n = n + 1\n\
    \x20 S * => pass, n = n + 1\nend\n";

fn build(text: &str, link: Option<ChainLink>) -> Result<Output, String> {
    let program = flowstate_lang::compile(text)
        .map_err(|d| format!("{d:?}"))?
        .program;
    let features = flowstate_runtime::kernel_features();
    let options = Options {
        chain: link,
        target: flowstate_codegen::Target::from_host(
            features.may_goto.is_present(),
            true,
            features.gotol.is_present(),
            features.signed_division.is_present(),
        ),
        ..Options::default()
    };
    compile(&program, &options).map_err(|e| e.to_string())
}

fn load(outputs: &[Output]) -> Result<LoadedChain, String> {
    let functions: Vec<ChainFunction> = outputs
        .iter()
        .map(|o| ChainFunction {
            object: &o.object,
            program: &o.program_name,
        })
        .collect();
    load_chain(&functions, &LoadOptions::default()).map_err(|e| e.to_string())
}

/// Median ns per packet of `chain` on `packet`, its verdict checked.
fn measure(chain: &LoadedChain, packet: &[u8]) -> Result<f64, String> {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let result = chain.test_run(packet, REPEAT).map_err(|e| e.to_string())?;
        if result.retval != XDP_PASS {
            return Err(format!("verdict {} instead of XDP_PASS", result.retval));
        }
        samples.push(f64::from(result.duration_ns));
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[RUNS / 2])
}

fn run() -> Result<(), String> {
    let packet = frames::udp(Ipv4Addr::new(10, 0, 0, 1), 9000);
    let plain = load(&[build(&function(1), None)?])?;
    let one = load(&[build(ONE_PROGRAM, None)?])?;
    let mut chains = Vec::new();
    for n in 1..=3u32 {
        let outputs = (1..=n)
            .map(|k| build(&function(k), Some(ChainLink::after(k - 1))))
            .collect::<Result<Vec<_>, _>>()?;
        chains.push(load(&outputs)?);
    }
    // The flow exists everywhere before measuring (one first packet).
    for loaded in [&plain, &one].into_iter().chain(&chains) {
        loaded.test_run(&packet, 1).map_err(|e| e.to_string())?;
    }
    let plain_ns = measure(&plain, &packet)?;
    let one_ns = measure(&one, &packet)?;
    let chain_ns = chains
        .iter()
        .map(|c| measure(c, &packet))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "{:<34} {:>9} {:>12} {:>10}",
        "", "ns/pkt", "/one program", "/plain"
    );
    let row = |what: &str, ns: f64| {
        println!(
            "{what:<34} {ns:>9.1} {:>12.2} {:>10.2}",
            ns / one_ns,
            ns / plain_ns
        );
    };
    row("one program (3 filters, 1 table)", one_ns);
    row("plain f1 (no chain option)", plain_ns);
    for (n, ns) in chain_ns.iter().enumerate() {
        row(&format!("chain of {} (f1..f{})", n + 1, n + 1), *ns);
    }
    let per_hop = (chain_ns[2] - chain_ns[0]) / 2.0;
    println!(
        "per hop (chain of 3 - chain of 1) / 2: {per_hop:.1} ns = {:.2} x one program; the \
         empty last slot (chain of 1 - plain): {:.1} ns",
        per_hop / one_ns,
        chain_ns[0] - plain_ns
    );
    println!(
        "BPF_PROG_TEST_RUN, {}-byte UDP frame of an existing flow, repeat {REPEAT}, median of \
         {RUNS}, all in this run",
        frames::FRAME_LEN
    );
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("flowstate-bench chain: SKIPPED: BPF_PROG_TEST_RUN needs root");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowstate-bench chain: {e}");
            ExitCode::from(1)
        }
    }
}
