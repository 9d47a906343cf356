//! Chains of random programs, kernel against interpreter: 2 or 3 generated
//! functions on one hook, linked by tail calls in the kernel and by
//! `flowstate_interp::Chain` in the interpreter, agreeing after every
//! packet on the verdict, the function that ended the chain, and every
//! function's flow table and globals (some cases with two functions on
//! one shared table). Needs root and bpffs: prints `SKIP <test>: <reason>`
//! otherwise.
//!
//! `FLOWSTATE_DIFFTEST_PROGRAMS` sets the chains per test function (the VM
//! matrix runs 40); `FLOWSTATE_DIFFTEST_SEED` offsets the seeds.

use std::time::Instant;

use flowstate_difftest::chain::{check_chain, share_layout, ChainCase, ChainStats};
use flowstate_difftest::rng::Rng;
use flowstate_difftest::{gen, packets, skip};
use flowstate_lang::ir::{Action, Program};

/// Chains per test function in a release build (2 functions: about a
/// minute each on a shared 2-core machine).
const CHAINS_PER_PART: u64 = 60;
const UNOPTIMISED_DIVISOR: u64 = 8;
const PACKETS_PER_CHAIN: usize = 200;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// The chain for `seed`: 2 or 3 generated functions on the head's hook;
/// every function but the last passes by default half the time (so that
/// packets go on); in about a third, the last function shares the first's
/// table (the first's rows in another order, another default).
fn chain_case(seed: u64) -> ChainCase {
    let mut rng = Rng::new(seed ^ 0x00c4_a1d1_ff00);
    let len = 2 + rng.below(2) as usize;
    let mut programs: Vec<Program> = (0..len)
        .map(|i| gen::random_program(&mut Rng::new(seed.wrapping_mul(4).wrapping_add(i as u64))))
        .collect();
    let hook = programs[0].hook;
    let last = len - 1;
    let mut shares = Vec::new();
    if rng.percent(35) {
        let mut sharer = programs[0].clone();
        let turn = rng.index(sharer.rows.len().max(1));
        sharer.rows.rotate_left(turn);
        sharer.rows.reverse();
        sharer.default_action = programs[last].default_action.clone();
        let (owner, _) = programs.split_at_mut(last);
        share_layout(&mut owner[0], &mut sharer);
        programs[last] = sharer;
        shares.push((last, 0));
    }
    for (i, program) in programs.iter_mut().enumerate() {
        program.hook = hook;
        // The kernel writes packet fields at XDP only (codegen refuses
        // them at TC); the generator wrote them for the program's own hook.
        if hook != flowstate_lang::ir::Hook::Xdp {
            for row in &mut program.rows {
                row.writes.clear();
            }
        }
        program.name = format!("f{i}");
        if i < last && rng.percent(50) {
            program.default_action = Action::Pass;
        }
    }
    let programs = programs
        .iter()
        .map(|p| match gen::round_trip(p) {
            Ok((_, compiled)) => compiled,
            Err(e) => panic!("chain seed {seed}: {e}"),
        })
        .collect();
    ChainCase { programs, shares }
}

fn run_part(test: &str, part: u64) {
    if skip(test) {
        return;
    }
    let default = if cfg!(debug_assertions) {
        CHAINS_PER_PART / UNOPTIMISED_DIVISOR
    } else {
        CHAINS_PER_PART
    };
    let count = env_u64("FLOWSTATE_DIFFTEST_PROGRAMS").unwrap_or(default);
    let base = env_u64("FLOWSTATE_DIFFTEST_SEED").unwrap_or(0);
    let start = Instant::now();
    let mut total = ChainStats::default();
    let mut shared_cases = 0;
    let mut three = 0;
    for i in 0..count {
        let seed = base.wrapping_add(part * 1_000_000 + i);
        let case = chain_case(seed);
        shared_cases += usize::from(!case.shares.is_empty());
        three += usize::from(case.programs.len() == 3);
        let packets = packets::sequence(&mut Rng::new(!seed), PACKETS_PER_CHAIN);
        match check_chain(&case, &packets, &format!("chain seed {seed}")) {
            Ok(stats) => total.add(&stats),
            Err(failure) => panic!("{failure}"),
        }
    }
    eprintln!(
        "{test}: {count} chains ({three} of 3, {shared_cases} sharing a table), {:.1}s, {total:?}",
        start.elapsed().as_secs_f64()
    );
    // Every position ended some chains: packets went on past the head.
    assert!(total.ended_by.len() == 3, "{total:?}");
    assert!(total.ended_by.iter().all(|&n| n > 0), "{total:?}");
    assert!(total.stats.row_hits * 5 > total.stats.packets, "{total:?}");
    assert!(
        shared_cases > 0 && three > 0,
        "no shared or three-function case"
    );
}

#[test]
fn random_chains_part_0() {
    run_part("random_chains_part_0", 0);
}

#[test]
fn random_chains_part_1() {
    run_part("random_chains_part_1", 1);
}
