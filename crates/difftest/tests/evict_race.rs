//! Evictions against writers, on two CPUs. The kernel's LRU unlinks an
//! element and hands it to the inserting flow (which overwrites it) without
//! taking its lock word, so a packet of the evicted flow that is reading or
//! writing that element at the moment can read, or write into, the other
//! flow's entry. That is a known limit (flowstate-codegen crate doc); these
//! tests measure it and check what does hold.
//!
//! Two CPUs hammer one flow each (BPF_PROG_TEST_RUN with a large repeat
//! count) through a table of one slot: every insert evicts the other CPU's
//! flow, and the one element goes back and forth between the two flows
//! while their packets work on it, the worst case. Every entry records its
//! own address in `own`; a packet that finds another flow's address in its
//! entry takes row 0 (`tx`), counted. Needs root, bpffs and two CPUs:
//! prints `SKIP <test>: <reason>` otherwise.

use flowstate_difftest::{pin_to_cpu, skip, test_options, Kernel};
use flowstate_lang::ir::Program;
use flowstate_wire::build::{mac, PacketBuilder};

const SOURCE: &str = "program race\nhook xdp\nflow ip.src\nstates NEW, SEEN\n\
    registers own = 0, n = 0\nflows 1 evict\ndefault drop\n\ntable\n\
    SEEN own != ip.src => tx\n\
    NEW * => pass, own = ip.src, n = 1, next SEEN\n\
    SEEN * => pass, n = n + 1\nend\n";

const CORRUPTED_ROW: u32 = 0;
const INSERT_ROW: u32 = 1;
/// Test runs per CPU, and packets per test run.
const CALLS: u32 = 10;
const REPEAT: u32 = 50_000;

fn frame(src: [u8; 4]) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4(src, [10, 0, 0, 2])
        .udp(40000, 53)
        .build()
}

fn program() -> Program {
    flowstate_lang::compile(SOURCE).unwrap().program
}

/// What one run saw.
#[derive(Debug, Default, Clone, Copy)]
struct Race {
    /// Packets that found another flow's address in their entry.
    corrupted: u64,
    /// Entries inserted: one per eviction, but for the first.
    inserts: u64,
    contention: u64,
    table_full: u64,
    /// Entries left with an odd (held) lock word.
    held: usize,
}

/// Each run takes both CPUs: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn race() -> Race {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let program = program();
    let kernel = Kernel::load(&program, &test_options(true)).unwrap();
    kernel.set_clock(1_000_000_000).unwrap();
    let name = kernel.output().program_name.clone();
    std::thread::scope(|s| {
        for cpu in 0..2u8 {
            let (kernel, name) = (&kernel, &name);
            s.spawn(move || {
                pin_to_cpu(usize::from(cpu)).unwrap();
                let own = frame([10, 0, 0, cpu + 1]);
                for _ in 0..CALLS {
                    kernel.loaded().test_run(name, &own, REPEAT).unwrap();
                }
            });
        }
    });
    let layout = &kernel.output().layout;
    let count = |i: u32| kernel.counter(i).unwrap().packets;
    let held = kernel
        .flows_map()
        .entries()
        .unwrap()
        .iter()
        .filter(|(_, value)| value[0] & 1 == 1)
        .count();
    Race {
        corrupted: count(CORRUPTED_ROW),
        inserts: count(INSERT_ROW),
        contention: count(layout.counter_contention),
        table_full: count(layout.counter_table_full),
        held,
    }
}

fn two_cpus_available(test: &str) -> bool {
    if skip(test) {
        return false;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return !flowstate_testkit::skip(test, format!("needs 2 CPUs, have {cpus}"));
    }
    true
}

/// What holds under the race: the flows evict each other (the race is
/// on), and no entry is left held, so no packet ever waits in vain.
#[test]
fn evictions_under_two_writers_leave_no_entry_held() {
    if !two_cpus_available("evictions_under_two_writers_leave_no_entry_held") {
        return;
    }
    for _ in 0..3 {
        let r = race();
        // The known limit's figures, for the record: packets that saw
        // another flow's entry, and inserts that found every slot busy
        // (allowed with fewer slots than CPUs).
        eprintln!(
            "evict race: {} inserts, {} packets saw another flow's entry, {} table full",
            r.inserts, r.corrupted, r.table_full
        );
        assert!(
            r.inserts > 1_000,
            "the flows did not evict each other: {r:?}"
        );
        assert_eq!(r.held, 0, "an entry was left held: {r:?}");
        assert_eq!(r.contention, 0, "{r:?}");
    }
}

/// The promise the known limit breaks: it fails today (up to a few
/// hundred packets in a million see another flow's entry). Run with
/// `--ignored`.
#[test]
#[ignore = "known limit: the kernel's LRU recycles an element under its reader or writer"]
fn an_evicted_flows_packet_never_sees_another_flows_entry() {
    if !two_cpus_available("an_evicted_flows_packet_never_sees_another_flows_entry") {
        return;
    }
    let runs: Vec<Race> = (0..5).map(|_| race()).collect();
    assert!(
        runs.iter().all(|r| r.corrupted == 0),
        "packets saw another flow's entry: {runs:?}"
    );
}
