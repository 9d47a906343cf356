//! Two CPUs on one flow: per-flow updates must be atomic (DESIGN.md 1.9).
//!
//! Two threads, pinned to CPUs 0 and 1, run BPF_PROG_TEST_RUN with a large
//! repeat count on packets of one flow. A counting program must end with
//! `count` equal to the packets sent; a program updating two registers
//! together must keep `b == 2a`. Compiled without per-flow locking, the
//! same run must lose updates, which proves the test can fail. Needs root,
//! bpffs and two CPUs: prints `SKIP <test>: <reason>` otherwise.

use std::sync::Mutex;

use flowstate_difftest::{pin_to_cpu, skip, test_options, Kernel};
use flowstate_lang::ir::Program;
use flowstate_wire::build::{mac, PacketBuilder};

/// Test runs per thread, and packets per test run.
const CALLS: u32 = 4;
const REPEAT: u32 = 50_000;
const THREADS: usize = 2;
const TOTAL: i64 = (THREADS as u32 * CALLS * REPEAT) as i64;

fn compile(source: &str) -> Program {
    flowstate_lang::compile(source).unwrap().program
}

fn counting() -> Program {
    compile(
        "program count\nhook xdp\nflow ip.src\nstates S\nregisters count = 0\n\
         flows 16 refuse\ndefault drop\n\ntable\n  * * => pass, count = count + 1\nend\n",
    )
}

fn pair() -> Program {
    compile(
        "program pair\nhook xdp\nflow ip.src\nstates S\nregisters a = 0, b = 0\n\
         flows 16 evict\ndefault drop\n\ntable\n  * * => pass, a = a + 1, b = b + 2\nend\n",
    )
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run the flow's packet `TOTAL` times over two pinned threads; the
/// flow's registers at the end, and the packets counted as lock contention.
fn hammer(program: &Program, atomic: bool) -> (Vec<i64>, u64) {
    let kernel = Kernel::load(program, &test_options(atomic)).unwrap();
    kernel.set_clock(1_000_000_000).unwrap();
    let frame = PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .udp(40000, 53)
        .build();
    let name = kernel.output().program_name.clone();
    std::thread::scope(|s| {
        for cpu in 0..THREADS {
            let (kernel, frame, name) = (&kernel, &frame, &name);
            s.spawn(move || {
                pin_to_cpu(cpu).unwrap();
                for _ in 0..CALLS {
                    kernel.loaded().test_run(name, frame, REPEAT).unwrap();
                }
            });
        }
    });
    let table = kernel.table().unwrap();
    assert_eq!(table.len(), 1, "one flow");
    let contention = kernel
        .counter(kernel.output().layout.counter_contention)
        .unwrap()
        .packets;
    (table[0].registers.clone(), contention)
}

/// The tests in this file each take both CPUs: run them one at a time, or
/// they would preempt each other's lock holders.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn needs_two_cpus(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    if cpus() < THREADS {
        return flowstate_testkit::skip(test, format!("needs {THREADS} CPUs, have {}", cpus()));
    }
    false
}

/// Packets that gave up waiting for the flow's lock get the default action
/// and are counted, not lost silently; the tests still require none.
fn report_contention(contention: u64) {
    if contention > 0 {
        eprintln!(
            "lock contention: {contention} of {TOTAL} packets gave up on the flow's lock \
             ({:.3}%)",
            contention as f64 * 100.0 / TOTAL as f64
        );
    }
}

#[test]
fn two_cpus_never_lose_a_count() {
    if needs_two_cpus("two_cpus_never_lose_a_count") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (registers, contention) = hammer(&counting(), true);
    report_contention(contention);
    assert_eq!(registers[0] + contention as i64, TOTAL, "updates lost");
    assert_eq!(contention, 0, "packets gave up on the lock");
}

#[test]
fn two_cpus_update_two_registers_together() {
    if needs_two_cpus("two_cpus_update_two_registers_together") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (registers, contention) = hammer(&pair(), true);
    report_contention(contention);
    let (a, b) = (registers[0], registers[1]);
    assert_eq!(b, 2 * a, "a and b updated apart");
    assert_eq!(a + contention as i64, TOTAL, "updates lost");
    assert_eq!(contention, 0, "packets gave up on the lock");
}

#[test]
fn without_locking_updates_are_lost() {
    if needs_two_cpus("without_locking_updates_are_lost") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Races are likely, not certain: a few tries.
    let mut counts = Vec::new();
    for _ in 0..5 {
        let (registers, _) = hammer(&counting(), false);
        counts.push(registers[0]);
        if registers[0] < TOTAL {
            eprintln!("non-atomic: counted {} of {TOTAL}", registers[0]);
            return;
        }
    }
    panic!("no update lost without locking in 5 tries: {counts:?}");
}

fn toggle() -> Program {
    compile(
        "program toggle\nhook xdp\nflow ip.src\nstates A, B\nflows 16 refuse\n\
         default drop\n\ntable\n  A * => pass, next B\n  B * => pass, next A\nend\n",
    )
}

/// Runs `frames[cpu]` on each of two pinned CPUs, `calls` test runs of
/// `repeat` packets each.
fn hammer_frames(kernel: &Kernel, frames: &[Vec<Vec<u8>>; THREADS], calls: u32, repeat: u32) {
    let name = kernel.output().program_name.clone();
    std::thread::scope(|s| {
        for (cpu, frames) in frames.iter().enumerate() {
            let name = &name;
            s.spawn(move || {
                pin_to_cpu(cpu).unwrap();
                for _ in 0..calls {
                    for frame in frames {
                        kernel.loaded().test_run(name, frame, repeat).unwrap();
                    }
                }
            });
        }
    });
}

fn udp_frame(src: [u8; 4], dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4(src, [10, 0, 0, 2])
        .udp(40000, dport)
        .build()
}

/// The elision race: every B -> A deletes the entry (equal to a missing
/// one), every A -> B inserts it again, from two CPUs at once. No packet
/// may give up (contention), and the entry must never be left dead: after
/// an even number of packets the flow reads as A (no entry), and one more
/// packet gets the row's verdict and leaves it in B.
#[test]
fn two_cpus_toggle_through_elision() {
    if needs_two_cpus("two_cpus_toggle_through_elision") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let program = toggle();
    for run in 0..3 {
        let kernel = Kernel::load(&program, &test_options(true)).unwrap();
        kernel.set_clock(1_000_000_000).unwrap();
        let frame = udp_frame([10, 0, 0, 1], 53);
        hammer_frames(
            &kernel,
            &[vec![frame.clone()], vec![frame.clone()]],
            2,
            200_000,
        );
        let layout = &kernel.output().layout;
        let contention = kernel.counter(layout.counter_contention).unwrap().packets;
        report_contention(contention);
        let table = kernel.table().unwrap();
        assert_eq!(
            contention, 0,
            "run {run}: packets gave up on the flow's lock"
        );
        assert!(
            table.is_empty(),
            "run {run}: 800,000 toggles must leave the flow in A (no entry): {table:?}"
        );
        let pass = flowstate_difftest::expected_retval(&program.rows[0].action, program.hook);
        assert_eq!(
            kernel.run(&frame, 1_000_000_000).unwrap(),
            pass,
            "run {run}"
        );
        let table = kernel.table().unwrap();
        assert_eq!(table.len(), 1, "run {run}");
        assert_eq!(table[0].state, 1, "run {run}: in B after one more packet");
    }
}

/// Every example with flows that move through their states from both
/// CPUs: port knocking (each CPU knocks the whole sequence, then talks to
/// port 22) and the token bucket. No packet may give up on a lock, and no
/// entry may be left in a state the program does not have.
#[test]
fn two_cpus_run_every_example() {
    if needs_two_cpus("two_cpus_run_every_example") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut examples: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fsm"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty());
    for path in examples {
        let source = std::fs::read_to_string(&path).unwrap();
        let program = compile(&source);
        let kernel = Kernel::load(&program, &test_options(true)).unwrap();
        kernel.set_clock(1_000_000_000).unwrap();
        // Knocks, a packet to 22, and the rest: whatever the table does
        // with them, several sources share them from both CPUs.
        let mut frames = Vec::new();
        for src in 1..=4u8 {
            for dport in [1111, 2222, 3333, 4444, 22, 80] {
                frames.push(udp_frame([10, 0, 0, src], dport));
            }
            frames.push(
                PacketBuilder::eth(mac(1), mac(2))
                    .ipv4([10, 0, 0, src], [10, 0, 0, 2])
                    .tcp(40000, 22, 0x02)
                    .build(),
            );
        }
        let skippable: Vec<Vec<u8>> = frames
            .into_iter()
            .filter(|f| flowstate_difftest::packets::test_run_refuses(f, program.hook).is_none())
            .collect();
        hammer_frames(&kernel, &[skippable.clone(), skippable], 20, 2_000);
        let layout = &kernel.output().layout;
        let contention = kernel.counter(layout.counter_contention).unwrap().packets;
        report_contention(contention);
        assert_eq!(
            contention,
            0,
            "{}: packets gave up on a lock",
            path.display()
        );
        for record in kernel.table().unwrap() {
            assert!(
                (record.state as usize) < program.states.len(),
                "{}: entry left in state {} ({record})",
                path.display(),
                record.state
            );
        }
    }
}
