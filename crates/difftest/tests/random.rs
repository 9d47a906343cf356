//! Random programs on random packets, kernel against interpreter. Every
//! generated program must load (a verifier rejection is a failure) and
//! agree packet for packet. Needs root and bpffs: prints
//! `SKIP <test>: <reason>` otherwise.
//!
//! The programs are split over several test functions so that the test
//! harness runs them on both cores. `FLOWSTATE_DIFFTEST_PROGRAMS` scales
//! the count per function (default below); `FLOWSTATE_DIFFTEST_SEED`
//! offsets the seeds, to explore beyond the fixed set.

use std::time::Instant;

use flowstate_difftest::packets;
use flowstate_difftest::rng::Rng;
use flowstate_difftest::{check, gen, skip, Stats};

/// Programs per test function; 4 functions, 2,400 programs in all. In a
/// release build (`cargo test --release`) the whole file takes about a
/// minute on 2 cores.
const PROGRAMS_PER_PART: u64 = 600;
/// Without optimisations the harness is ~8x slower: run an eighth.
const UNOPTIMISED_DIVISOR: u64 = 8;
const PACKETS_PER_PROGRAM: usize = 300;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn run_part(test: &str, part: u64) {
    if skip(test) {
        return;
    }
    let default = if cfg!(debug_assertions) {
        eprintln!(
            "{test}: unoptimised build, 1/{UNOPTIMISED_DIVISOR} of the programs (use --release)"
        );
        PROGRAMS_PER_PART / UNOPTIMISED_DIVISOR
    } else {
        PROGRAMS_PER_PART
    };
    let count = env_u64("FLOWSTATE_DIFFTEST_PROGRAMS").unwrap_or(default);
    let base = env_u64("FLOWSTATE_DIFFTEST_SEED").unwrap_or(0);
    let start = Instant::now();
    let mut total = Stats::default();
    for i in 0..count {
        let seed = base.wrapping_add(part * 1_000_000 + i);
        let generated = match gen::program(seed) {
            Ok(g) => g,
            Err(e) => panic!("seed {seed}: {e}"),
        };
        let packets = packets::sequence(&mut Rng::new(!seed), PACKETS_PER_PROGRAM);
        match check(
            &generated.program,
            &packets,
            &format!("program seed {seed}"),
        ) {
            Ok(stats) => total.add(&stats),
            Err(failure) => panic!("{failure}"),
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "{test}: {} programs in {:.1}s",
                i + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "{test}: {count} programs, {:.1}s, {total:?}",
        start.elapsed().as_secs_f64()
    );
    // The runs must have exercised the machines, not only the default.
    assert!(total.row_hits * 5 > total.packets, "{total:?}");
    assert!(total.expirations > 0, "no timeout fired: {total:?}");
    // Small `evict` tables filled and the kernel evicted (gen::small_table).
    assert!(total.evictions > 0, "no flow evicted: {total:?}");
}

#[test]
fn random_programs_part_0() {
    run_part("random_programs_part_0", 0);
}

#[test]
fn random_programs_part_1() {
    run_part("random_programs_part_1", 1);
}

#[test]
fn random_programs_part_2() {
    run_part("random_programs_part_2", 2);
}

#[test]
fn random_programs_part_3() {
    run_part("random_programs_part_3", 3);
}
