//! A full state table, in the kernel and in the interpreter.
//!
//! `refuse` is exact (a plain hash map of the declared size): both
//! executions agree entry for entry, packet for packet. `evict` is the
//! kernel's LRU hash, whose choice of victims is approximate (per-CPU free
//! lists, second-chance lists, batches): the harness checks the full-table
//! promise (flowstate-interp's crate doc) on every packet, replays the
//! kernel's evictions in the interpreter and compares everything else
//! exactly. Needs root and bpffs: prints `SKIP <test>: <reason>` otherwise.

use flowstate_difftest::{
    check, compare_loaded_with, hex, pin_to_cpu, skip, test_options, FlowRecord, Kernel, Packet,
    Stats, TEST_RUN_IFINDEX,
};
use flowstate_interp::Machine;
use flowstate_lang::ir::Program;
use flowstate_wire::build::{mac, PacketBuilder};

const FLOWS: u8 = 10;
const CAPACITY: usize = 4;

fn program(policy: &str) -> Program {
    let source = format!(
        "program full\nhook xdp\nflow ip.src\nstates NEW, SEEN\nregisters n = 0\n\
         flows {CAPACITY} {policy}\ndefault drop\n\ntable\n\
         * udp.dport == 53 => drop, n = n + 10, next SEEN\n\
         * * => pass, n = n + 1, next SEEN\nend\n"
    );
    flowstate_lang::compile(&source).unwrap().program
}

fn packet(host: u8, dport: u16, now: i64) -> Packet {
    let frame = PacketBuilder::eth(mac(u32::from(host)), mac(100))
        .ipv4([10, 0, 0, host], [10, 0, 0, 100])
        .udp(40000, dport)
        .payload(8)
        .build();
    Packet { now, frame }
}

/// Rounds over 10 sources, in an order that changes between rounds, one
/// millisecond apart.
fn packets() -> Vec<Packet> {
    let mut out = Vec::new();
    let mut now = 1_000_000_000;
    for round in 0..6u8 {
        for i in 0..FLOWS {
            let host = (i * (round + 3)) % FLOWS + 1;
            let dport = if (i + round) % 4 == 0 { 53 } else { 80 };
            out.push(packet(host, dport, now));
            now += 1_000_000;
        }
    }
    out
}

/// Issue 7's scenario: sources 1 2 3 4 1 5 6 1 7 5 6.
fn issue_7_packets() -> Vec<Packet> {
    [1u8, 2, 3, 4, 1, 5, 6, 1, 7, 5, 6]
        .iter()
        .enumerate()
        .map(|(i, &host)| packet(host, 80, 1_000_000_000 + i as i64 * 1_000_000))
        .collect()
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2)
}

/// Where packet `index` of run `run` goes: all on one CPU, alternating, or
/// in a pattern that changes every packet.
fn cpu_for(run: usize, index: usize) -> usize {
    match run % 3 {
        0 => 0,
        1 => index,
        _ => (index * 7 + run) / 3,
    }
}

/// Load `program` and compare it on `packets`, moving to CPU
/// `cpu_for(run, i)` before packet `i`; what it saw, and the kernel's
/// table at the end.
fn compare_on_cpus(program: &Program, packets: &[Packet], run: usize) -> (Stats, Vec<FlowRecord>) {
    let kernel = Kernel::load(program, &test_options(true)).unwrap();
    let cpus = cpus();
    let outcome = compare_loaded_with(program, &kernel, packets, &mut |i| {
        pin_to_cpu(cpu_for(run, i) % cpus).expect("sched_setaffinity");
        Ok(())
    });
    match outcome {
        Ok(Ok(stats)) => (stats, kernel.table().unwrap()),
        Ok(Err(divergence)) => panic!("run {run}: {divergence}"),
        Err(e) => panic!("run {run}: {e}"),
    }
}

#[test]
fn refuse_policy_agrees_exactly() {
    if skip("refuse_policy_agrees_exactly") {
        return;
    }
    let program = program("refuse");
    let packets = packets();
    // Entry for entry, after every packet, and the table-full counter.
    if let Err(failure) = check(&program, &packets, "flows 4 refuse") {
        panic!("{failure}");
    }
    // And the case tests what it claims: the table filled and new flows
    // were refused.
    let mut machine = Machine::new(&program);
    let mut refused = 0;
    for p in &packets {
        let step = machine.process(&p.frame, TEST_RUN_IFINDEX, p.now);
        refused +=
            usize::from(step.default_reason == Some(flowstate_interp::DefaultReason::TableFull));
    }
    assert_eq!(machine.table().len(), CAPACITY);
    assert!(
        refused >= 6 * (FLOWS as usize - CAPACITY) - 6,
        "refused {refused}"
    );
}

#[test]
fn evict_policy_keeps_the_promise_from_both_cpus() {
    if skip("evict_policy_keeps_the_promise_from_both_cpus") {
        return;
    }
    let program = program("evict");
    let packets = packets();
    let mut total = Stats::default();
    for run in 0..6 {
        total.add(&compare_on_cpus(&program, &packets, run).0);
    }
    // 10 flows through 4 slots: most new flows make room.
    assert!(total.evictions >= 6 * 20, "{total:?}");
    assert_eq!(total.max_flows, CAPACITY, "{total:?}");
    // Measured, not asserted: how often the kernel's LRU evicted while the
    // table still had room, and chose other victims than the interpreter.
    eprintln!("evict, 6 runs: {total:?}");
}

#[test]
fn issue_7_scenario_keeps_the_promise_on_every_run() {
    if skip("issue_7_scenario_keeps_the_promise_on_every_run") {
        return;
    }
    let program = program("evict");
    let packets = issue_7_packets();
    let mut outcomes: Vec<(String, usize)> = Vec::new();
    for run in 0..12 {
        let (stats, table) = compare_on_cpus(&program, &packets, run);
        // Sources 5, 6 and 7 are new with the table full (or nearly).
        assert!(stats.evictions >= 3, "run {run}: {stats:?}");
        // What the kernel kept, for the record.
        let kept: Vec<String> = table.iter().map(|r| r.key[3].to_string()).collect();
        let kept = format!("kept {} (cpu pattern {})", kept.join(" "), run % 3);
        match outcomes.iter_mut().find(|(k, _)| *k == kept) {
            Some((_, n)) => *n += 1,
            None => outcomes.push((kept, 1)),
        }
    }
    eprintln!("issue 7 scenario, 12 runs: {outcomes:?}");
}

/// The check can fail: a flow that disappears on a packet that inserts no
/// new flow is no eviction the promise allows.
#[test]
fn a_flow_lost_without_an_insert_is_caught() {
    if skip("a_flow_lost_without_an_insert_is_caught") {
        return;
    }
    let program = program("evict");
    let packets = issue_7_packets();
    let kernel = Kernel::load(&program, &test_options(true)).unwrap();
    // Before packet 4 (source 1, already in the table), flow 3 vanishes.
    let flow_3 = [10u8, 0, 0, 3];
    let outcome = compare_loaded_with(&program, &kernel, &packets, &mut |i| {
        if i == 4 {
            kernel.flows_map().delete(&flow_3)?;
        }
        Ok(())
    });
    let divergence = outcome.unwrap().unwrap_err();
    assert_eq!(divergence.packet, Some(4), "{divergence}");
    assert_eq!(divergence.what, "eviction", "{divergence}");
    assert!(
        divergence.kernel.contains(&hex(&flow_3)),
        "{}",
        divergence.kernel
    );

    // The same loss on a packet that inserts a new flow (source 5) reads
    // as that packet's eviction, and the runs agree.
    let kernel = Kernel::load(&program, &test_options(true)).unwrap();
    let outcome = compare_loaded_with(&program, &kernel, &packets, &mut |i| {
        if i == 5 {
            kernel.flows_map().delete(&flow_3)?;
        }
        Ok(())
    });
    let stats = outcome.unwrap().unwrap();
    assert!(
        stats.evictions >= 3 && stats.other_victims >= 1,
        "{stats:?}"
    );
}

/// Three times as many new flows as slots, from one CPU and then
/// switching CPUs every three packets: every flow admitted, the table
/// never over its capacity, and the kernel's evictions (early ones, while
/// a free slot waits in the other CPU's list, included) replayed exactly.
#[test]
fn a_stream_of_new_flows_is_always_admitted() {
    if skip("a_stream_of_new_flows_is_always_admitted") {
        return;
    }
    let cpus = cpus();
    for capacity in [8u32, 64, 256] {
        let source = format!(
            "program stream\nhook xdp\nflow ip.src\nstates NEW, SEEN\nregisters n = 0\n\
             flows {capacity} evict\ndefault drop\n\ntable\n\
             * * => pass, n = n + 1, next SEEN\nend\n"
        );
        let program = flowstate_lang::compile(&source).unwrap().program;
        let packets: Vec<Packet> = (0..3 * capacity)
            .map(|i| {
                let frame = PacketBuilder::eth(mac(1), mac(2))
                    .ipv4([10, 1, (i >> 8) as u8, i as u8], [10, 0, 0, 2])
                    .udp(40000, 80)
                    .build();
                Packet {
                    now: 1_000_000_000 + i64::from(i),
                    frame,
                }
            })
            .collect();
        for switching in [false, true] {
            let kernel = Kernel::load(&program, &test_options(true)).unwrap();
            let outcome = compare_loaded_with(&program, &kernel, &packets, &mut |i| {
                let cpu = if switching { (i / 3) % cpus } else { 0 };
                pin_to_cpu(cpu).expect("sched_setaffinity");
                Ok(())
            });
            let stats = match outcome {
                Ok(Ok(stats)) => stats,
                Ok(Err(d)) => panic!("{capacity} slots, switching {switching}: {d}"),
                Err(e) => panic!("{e}"),
            };
            // Every flow was admitted (verdicts compared), so at least
            // two in three were evicted.
            assert!(stats.evictions >= 2 * capacity as usize, "{stats:?}");
            assert_eq!(stats.max_flows, capacity as usize, "{stats:?}");
            eprintln!("{capacity} slots, switching CPUs {switching}: {stats:?}");
        }
    }
}
