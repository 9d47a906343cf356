//! A full state table, in the kernel and in the interpreter.
//!
//! `refuse` is exact (a plain hash map of the declared size): both
//! executions must agree entry for entry, packet for packet. `evict` is the
//! kernel's LRU hash, whose eviction is approximate (per-CPU free lists;
//! the victim is not always the least recently used entry, and an entry can
//! be evicted before the map is full): for it, the documented properties
//! are checked instead. Needs root and bpffs: prints `SKIP <test>: <reason>`
//! otherwise.

use flowstate_difftest::{
    check, expected_retval, interp_table, pin_to_cpu, skip, test_options, FlowRecord, Kernel,
    Packet, TEST_RUN_IFINDEX,
};
use flowstate_interp::{Entry, Key, Machine};
use flowstate_lang::ir::{Program, StateId};
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

/// Rounds over 10 sources, in an order that changes between rounds, one
/// millisecond apart.
fn packets() -> Vec<Packet> {
    let mut out = Vec::new();
    let mut now = 1_000_000_000;
    for round in 0..6u8 {
        for i in 0..FLOWS {
            let host = (i * (round + 3)) % FLOWS + 1;
            let dport = if (i + round) % 4 == 0 { 53 } else { 80 };
            let frame = PacketBuilder::eth(mac(u32::from(host)), mac(100))
                .ipv4([10, 0, 0, host], [10, 0, 0, 100])
                .udp(40000, dport)
                .payload(8)
                .build();
            out.push(Packet { now, frame });
            now += 1_000_000;
        }
    }
    out
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

/// Make the interpreter's table equal to the kernel's, so that the next
/// packet starts from the same table in both.
fn resync(machine: &mut Machine<'_>, table: &[FlowRecord]) {
    let t = machine.table_mut();
    t.clear();
    // Oldest first, so that the interpreter's least recently seen entry is
    // the kernel's least recently seen one.
    let mut by_age: Vec<&FlowRecord> = table.iter().collect();
    by_age.sort_by_key(|r| r.last_seen);
    for r in by_age {
        let key = Key::from_bytes(&r.key).unwrap();
        let entry = Entry {
            state: StateId(r.state),
            registers: r.registers.clone(),
            created: r.created,
            last_seen: r.last_seen,
        };
        t.insert(key, entry).unwrap();
    }
}

#[test]
fn evict_policy_keeps_the_documented_properties() {
    if skip("evict_policy_keeps_the_documented_properties") {
        return;
    }
    let program = program("evict");
    let kernel = Kernel::load(&program, &test_options(true)).unwrap();
    let hook = kernel.output().hook;
    let mut machine = Machine::new(&program);
    let mut early_evictions = 0;
    let mut seen_flows: Vec<Vec<u8>> = Vec::new();
    let mut evictions = 0;
    let mut other_victims = 0;
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    for (i, p) in packets().iter().enumerate() {
        // Start each packet from the kernel's table: the victim of an
        // eviction may differ, nothing else may.
        let before = kernel.table().unwrap();
        resync(&mut machine, &before);
        let step = machine.process(&p.frame, TEST_RUN_IFINDEX, p.now);
        // Alternate CPUs: the LRU keeps free entries in per-CPU lists.
        pin_to_cpu(i % cpus).unwrap();
        let retval = kernel.run(&p.frame, p.now).unwrap();
        let after = kernel.table().unwrap();

        // Verdicts agree (the flow starts from the same entry in both).
        assert_eq!(retval, expected_retval(step.action, hook), "packet {i}");
        // The table never holds more than its capacity.
        assert!(
            after.len() <= CAPACITY,
            "packet {i}: {} entries",
            after.len()
        );
        // The most recent flow is present, with the interpreter's entry.
        let key = step.key.unwrap();
        let mine = interp_table(&machine)
            .into_iter()
            .find(|r| r.key == key.as_bytes())
            .unwrap();
        let theirs = after.iter().find(|r| r.key == key.as_bytes());
        assert_eq!(theirs, Some(&mine), "packet {i}: the flow just written");

        if !seen_flows.contains(&mine.key) {
            seen_flows.push(mine.key.clone());
        }
        let lost: Vec<&FlowRecord> = before
            .iter()
            .filter(|r| !after.iter().any(|a| a.key == r.key))
            .collect();
        evictions += lost.len();
        if !lost.is_empty() && before.len() < CAPACITY {
            early_evictions += 1;
        }
        if let ([victim], [lost]) = (step.evicted.as_slice(), lost.as_slice()) {
            if victim.as_bytes() != lost.key {
                other_victims += 1;
            }
        }
    }
    assert_eq!(seen_flows.len(), FLOWS as usize);
    assert!(evictions > 0, "10 flows through 4 slots must evict");
    // Measured, not asserted: how often the kernel's LRU evicted while the
    // table still had room (its free entries sit in per-CPU lists), and how
    // often its victim was not the least recently seen flow.
    eprintln!(
        "evict: {evictions} evictions, {early_evictions} of them before the table was full, \
         {other_victims} of a flow other than the least recently seen"
    );
}
