//! The programs of a migrating reload in the kernel (BPF_PROG_TEST_RUN,
//! maps shared through pins as the control plane shares them): the
//! bridge pulls a flow from the old table on first sight and marks it
//! moved; the old program's handoff build hands a packet of a moved flow
//! to the bridge (a tail call), or counts it as contention without one;
//! a flow in neither table gets a tombstone in the old one until the
//! `drained` word is set; the mover moves what is left, each flow once.
//! Needs root and bpffs; SKIP otherwise.

use std::path::{Path, PathBuf};

use aya::programs::{Program as AyaProgram, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use flowstate_codegen::migrate::{
    compile_bridge, compile_handoff, compile_mover, drained_value, MigrationCounts,
    MIGRATION_CONTROL, MIGRATION_COUNTS, MIGRATION_MAP, MOVED_STATE, MOVER_DONE, OLD_FLOWS_MAP,
    SUCCESSOR_MAP,
};
use flowstate_codegen::{compile, EntryView, Layout, Options, Output};
use flowstate_lang::ir::{Program, StateId};
use flowstate_runtime::{RawMap, UpdateMode};
use flowstate_wire::build::{mac, PacketBuilder};

const PASS: u32 = 2;
const DROP: u32 = 1;

const OLD: &str = "program mig\nhook xdp\nflow ip.src\nstates A, B, C, X\n\
                   registers n = 0, gone = 9\ndefault drop\ntable\n\
                   \x20 A udp.dport == 1 => pass, n = n + 1, next B\n\
                   \x20 B udp.dport == 2 => pass, n = n + 1, next C\n\
                   \x20 C udp.dport == 9 => pass, next X\n\
                   \x20 C * => pass, n = n + 1\nend\n";

/// States reordered, X gone, D new; `gone` gone, `extra` new.
fn new_text() -> String {
    OLD.replace("states A, B, C, X", "states A, C, D, B")
        .replace("registers n = 0, gone = 9", "registers extra = 5, n = 0")
        .replace("  C udp.dport == 9 => pass, next X\n", "")
}

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_runtime::kernel_unavailable())
}

fn program(source: &str) -> Program {
    flowstate_lang::compile(source).unwrap().program
}

fn options() -> Options {
    Options {
        test_clock: true,
        ..Options::default()
    }
}

/// A pin directory of this test's own, removed on drop.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Pins {
        let dir = Path::new(flowstate_runtime::BPFFS_ROOT).join(format!(
            "fs-migtest-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pins(dir)
    }

    fn at(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loaded program whose maps named in `pins` are shared through them.
struct Loaded {
    ebpf: Ebpf,
    symbol: String,
}

impl Loaded {
    fn new(output: &Output, pins: &[(&str, PathBuf)]) -> Loaded {
        let mut loader = EbpfLoader::new();
        for (map, path) in pins {
            loader.map_pin_path(map, path.as_path());
        }
        let mut ebpf = loader.load(&output.object).unwrap();
        match ebpf.program_mut(&output.program_name) {
            Some(AyaProgram::Xdp(p)) => {
                if let Err(e) = p.load() {
                    panic!("{e:?}\n{}", output.listing)
                }
            }
            _ => panic!("no XDP program {}", output.program_name),
        }
        Loaded {
            ebpf,
            symbol: output.program_name.clone(),
        }
    }

    fn run(&self, packet: &[u8]) -> u32 {
        let Some(AyaProgram::Xdp(p)) = self.ebpf.program(&self.symbol) else {
            unreachable!()
        };
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::default()
        };
        p.test_run(opts).unwrap().return_value
    }

    fn fd(&self) -> u32 {
        use std::os::fd::{AsFd, AsRawFd};
        let program = self.ebpf.program(&self.symbol).unwrap();
        program.fd().unwrap().as_fd().as_raw_fd() as u32
    }
}

fn udp(src: u8, dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, src], [10, 0, 0, 2])
        .udp(40000, dport)
        .payload(18)
        .build()
}

fn key(src: u8) -> Vec<u8> {
    vec![10, 0, 0, src]
}

fn entry(map: &RawMap, layout: &Layout, src: u8) -> Option<EntryView> {
    map.lookup(&key(src))
        .unwrap()
        .map(|v| layout.decode_entry(&v))
}

/// The old entry is held for good and marked moved.
fn assert_moved(old_flows: &RawMap, src: u8) {
    let value = old_flows.lookup(&key(src)).unwrap().expect("old entry");
    let lock = u32::from_le_bytes(value[0..4].try_into().unwrap());
    let state = u32::from_le_bytes(value[4..8].try_into().unwrap());
    assert_eq!(state, MOVED_STATE, "10.0.0.{src}: marked moved");
    assert_eq!(lock & 1, 1, "10.0.0.{src}: held");
}

#[test]
fn bridge_handoff_and_mover_move_each_flow_once() {
    if skip("bridge_handoff_and_mover_move_each_flow_once") {
        return;
    }
    let (old, new) = (program(OLD), program(&new_text()));
    let pins = Pins::new();
    let (old_flows_pin, new_flows_pin) = (pins.at("old_flows"), pins.at("new_flows"));
    let (clock_pin, migration_pin, successor_pin) =
        (pins.at("clock"), pins.at("migration"), pins.at("successor"));
    let old_out = compile(&old, &options()).unwrap();
    let running = Loaded::new(
        &old_out,
        &[
            ("flows", old_flows_pin.clone()),
            ("clock", clock_pin.clone()),
        ],
    );
    let clock = RawMap::from_pin(&clock_pin).unwrap();
    clock.array_set(0, &1_000i64.to_le_bytes()).unwrap();
    // 1: B (n 1); 2: C (n 2); 3: B; 4: X (gone in the new program).
    for (src, ports) in [(1, &[1][..]), (2, &[1, 2]), (3, &[1]), (4, &[1, 2, 9])] {
        for &port in ports {
            assert_eq!(running.run(&udp(src, port)), PASS);
        }
    }

    let bridge_out = compile_bridge(&new, &old, &options()).unwrap();
    let shared_new = [
        ("flows", new_flows_pin.clone()),
        ("clock", clock_pin.clone()),
        (OLD_FLOWS_MAP, old_flows_pin.clone()),
        (MIGRATION_MAP, migration_pin.clone()),
    ];
    let bridge = Loaded::new(&bridge_out, &shared_new);
    let handoff = Loaded::new(
        &compile_handoff(&old, &options()).unwrap(),
        &[
            ("flows", old_flows_pin.clone()),
            ("clock", clock_pin.clone()),
            (SUCCESSOR_MAP, successor_pin.clone()),
        ],
    );
    let mover = Loaded::new(&compile_mover(&new, &old, &options()).unwrap(), &shared_new);
    let old_flows = RawMap::from_pin(&old_flows_pin).unwrap();
    let new_flows = RawMap::from_pin(&new_flows_pin).unwrap();
    let migration = RawMap::from_pin(&migration_pin).unwrap();
    let successor = RawMap::from_pin(&successor_pin).unwrap();
    let (old_layout, new_layout) = (&old_out.layout, &bridge_out.layout);
    let state = |name: &str| new.state_by_name(name).unwrap();

    // The bridge pulls flow 1 (B, n 1) and applies its row: C, n 2.
    assert_eq!(bridge.run(&udp(1, 2)), PASS);
    let flow1 = entry(&new_flows, new_layout, 1).expect("flow 1 moved");
    assert_eq!(
        (flow1.state, flow1.registers.clone()),
        (state("C"), vec![5, 2])
    );
    assert_eq!((flow1.created, flow1.last_seen), (1_000, 1_000));
    assert_moved(&old_flows, 1);

    // An old packet of flow 1 without a successor: contention, nothing
    // written.
    assert_eq!(handoff.run(&udp(1, 3)), DROP);
    assert_eq!(entry(&new_flows, new_layout, 1).unwrap().registers, [5, 2]);
    // With the bridge as successor, the packet is the bridge's: C * => n 3.
    successor
        .update(
            &0u32.to_le_bytes(),
            &bridge.fd().to_le_bytes(),
            UpdateMode::Any,
        )
        .unwrap();
    assert_eq!(handoff.run(&udp(1, 3)), PASS);
    assert_eq!(entry(&new_flows, new_layout, 1).unwrap().registers, [5, 3]);
    assert_moved(&old_flows, 1);

    // A new flow before the old program has stopped: a tombstone in the
    // old table, so an old packet of it is handed over too.
    assert_eq!(bridge.run(&udp(9, 1)), PASS);
    assert_moved(&old_flows, 9);
    assert_eq!(handoff.run(&udp(9, 2)), PASS);
    let flow9 = entry(&new_flows, new_layout, 9).unwrap();
    assert_eq!((flow9.state, flow9.registers), (state("C"), vec![5, 2]));
    // Once drained, no tombstone.
    migration
        .array_set(MIGRATION_CONTROL, &drained_value())
        .unwrap();
    assert_eq!(bridge.run(&udp(10, 1)), PASS);
    assert_eq!(old_flows.lookup(&key(10)).unwrap(), None);

    // The mover moves 2, 3 and 4; moved flows and unknown keys are left
    // alone.
    for src in [2, 3, 4, 1, 2, 77] {
        let mut packet = key(src);
        packet.resize(14, 0);
        assert_eq!(mover.run(&packet), MOVER_DONE, "mover on 10.0.0.{src}");
    }
    let flow2 = entry(&new_flows, new_layout, 2).unwrap();
    assert_eq!((flow2.state, flow2.registers), (state("C"), vec![5, 2]));
    let flow3 = entry(&new_flows, new_layout, 3).unwrap();
    assert_eq!((flow3.state, flow3.registers), (state("B"), vec![5, 1]));
    let flow4 = entry(&new_flows, new_layout, 4).unwrap();
    assert_eq!(flow4.state, StateId(0), "X is gone: the initial state");
    assert_eq!(entry(&new_flows, new_layout, 1).unwrap().registers, [5, 3]);
    for src in [1, 2, 3, 4, 9] {
        assert_moved(&old_flows, src);
    }
    assert_eq!(old_flows.keys().unwrap().len(), 5);
    let counts = MigrationCounts::decode(&migration.array_get(MIGRATION_COUNTS).unwrap());
    assert_eq!(
        counts,
        MigrationCounts {
            moved: 4,
            remapped: 1,
            conflicts: 0,
            lost: 0
        }
    );
    // The old layout is what the old table holds.
    assert_eq!(old_layout.value_size, old_flows.value_size());
}

/// The handoff build, the bridge and the mover of every example (to the
/// example with one register more) pass the verifier, and the bridge
/// costs it about what the program does (its pull is walked once).
#[test]
fn every_example_migrates_through_the_verifier() {
    if skip("every_example_migrates_through_the_verifier") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fsm"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty());
    let options = Options::default;
    let tc = || Options {
        hook: Some(flowstate_lang::ir::Hook::TcIngress),
        ..options()
    };
    for (path, options) in paths.iter().flat_map(|p| {
        [
            (p.clone(), &options as &dyn Fn() -> Options),
            (p.clone(), &tc),
        ]
    }) {
        let old = program(&std::fs::read_to_string(&path).unwrap());
        let at_tc = options()
            .hook
            .is_some_and(|h| h != flowstate_lang::ir::Hook::Xdp);
        if at_tc && old.rows.iter().any(|r| !r.writes.is_empty()) {
            // Rows that write packet fields compile for XDP only.
            continue;
        }
        let mut new = old.clone();
        new.registers.push(flowstate_lang::ir::Register {
            name: "added".to_string(),
            init: flowstate_lang::ir::Expr::Const(3),
        });
        let verified = |output: &Output| {
            let loaded = match flowstate_runtime::load(&output.object, &Default::default()) {
                Ok(loaded) => loaded,
                Err(e) => panic!("{}: {e}", path.display()),
            };
            loaded
                .stats(&output.program_name)
                .unwrap()
                .verified_insns
                .unwrap_or(0)
        };
        let plain = verified(&compile(&new, &options()).unwrap());
        let bridge = verified(&compile_bridge(&new, &old, &options()).unwrap());
        let handoff = verified(&compile_handoff(&old, &options()).unwrap());
        let mover = verified(&compile_mover(&new, &old, &options()).unwrap());
        eprintln!(
            "{} ({:?}): verified instructions: program {plain}, bridge {bridge}, handoff \
             {handoff}, mover {mover}",
            path.display(),
            options().hook.unwrap_or(old.hook)
        );
        assert!(
            bridge <= 2 * plain + 2_000,
            "{}: the bridge costs the verifier {bridge} instructions, the program {plain}",
            path.display()
        );
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Flows counting every packet, moved while two CPUs hammer them: one
/// through the old program's handoff build (its packets of moved flows
/// handed to the bridge), one through the bridge and the mover. Every
/// packet must count exactly once in the new table.
#[test]
fn two_cpus_lose_no_update_while_flows_move() {
    if skip("two_cpus_lose_no_update_while_flows_move") {
        return;
    }
    const OLD_COUNTER: &str = "program cnt\nhook xdp\nflow ip.src\nstates A\nregisters n = 0\n\
                               default drop\ntable\n  A * => pass, n = n + 1\nend\n";
    let new_counter = OLD_COUNTER
        .replace("states A", "states A, Z")
        .replace("registers n = 0", "registers m = 4, n = 0");
    let (old, new) = (program(OLD_COUNTER), program(&new_counter));
    const FLOWS: u8 = 48;
    const ROUNDS: usize = 300;
    let pins = Pins::new();
    let (old_flows_pin, new_flows_pin) = (pins.at("old_flows"), pins.at("new_flows"));
    let shared_old = [
        ("flows", old_flows_pin.clone()),
        ("clock", pins.at("clock")),
        (SUCCESSOR_MAP, pins.at("successor")),
    ];
    let shared_new = [
        ("flows", new_flows_pin.clone()),
        ("clock", pins.at("clock")),
        (OLD_FLOWS_MAP, old_flows_pin.clone()),
        (MIGRATION_MAP, pins.at("migration")),
    ];
    let running = Loaded::new(&compile(&old, &options()).unwrap(), &shared_old[..2]);
    for src in 1..=FLOWS {
        assert_eq!(running.run(&udp(src, 1)), PASS);
    }
    let bridge_out = compile_bridge(&new, &old, &options()).unwrap();
    let bridge = Loaded::new(&bridge_out, &shared_new);
    let handoff = Loaded::new(&compile_handoff(&old, &options()).unwrap(), &shared_old);
    let mover = Loaded::new(&compile_mover(&new, &old, &options()).unwrap(), &shared_new);
    RawMap::from_pin(pins.at("successor"))
        .unwrap()
        .update(
            &0u32.to_le_bytes(),
            &bridge.fd().to_le_bytes(),
            UpdateMode::Any,
        )
        .unwrap();

    let old_side = std::thread::spawn(move || {
        pin_to_cpu(0);
        let mut refused = 0;
        for _ in 0..ROUNDS {
            for src in 1..=FLOWS {
                refused += usize::from(handoff.run(&udp(src, 1)) != PASS);
            }
        }
        refused
    });
    let new_side = std::thread::spawn(move || {
        pin_to_cpu(1);
        let mut refused = 0;
        for round in 0..ROUNDS {
            for src in 1..=FLOWS {
                // The bridge meets half the flows first; the mover takes
                // the other half while the old side still updates them.
                if (usize::from(src) + round) % 2 == 0 {
                    refused += usize::from(bridge.run(&udp(src, 1)) != PASS);
                } else {
                    let mut packet = key(src);
                    packet.resize(14, 0);
                    assert_eq!(mover.run(&packet), MOVER_DONE);
                    refused += usize::from(bridge.run(&udp(src, 1)) != PASS);
                }
            }
        }
        (refused, mover)
    });
    let refused_old = old_side.join().unwrap();
    let (refused_new, mover) = new_side.join().unwrap();
    assert_eq!(
        (refused_old, refused_new),
        (0, 0),
        "packets given the default"
    );
    let new_flows = RawMap::from_pin(&new_flows_pin).unwrap();
    let old_flows = RawMap::from_pin(&old_flows_pin).unwrap();
    for src in 1..=FLOWS {
        let mut packet = key(src);
        packet.resize(14, 0);
        assert_eq!(mover.run(&packet), MOVER_DONE);
        let flow = entry(&new_flows, &bridge_out.layout, src).expect("moved");
        assert_eq!(
            flow.registers,
            [4, 1 + 2 * ROUNDS as i64],
            "10.0.0.{src}: every packet counted once"
        );
        assert_moved(&old_flows, src);
    }
}

/// A large table (a commit per row, writing a register) migrates too: the
/// bridge's pull does not multiply the verifier's walk.
#[test]
fn a_large_table_migrates_through_the_verifier() {
    if skip("a_large_table_migrates_through_the_verifier") {
        return;
    }
    let rows: String = (0..600)
        .map(|i| {
            format!(
                "  A tcp.dport == {} => drop, n = n + {}, next B\n",
                1000 + 3 * i,
                i + 1
            )
        })
        .collect();
    let old = program(&format!(
        "program big\nhook xdp\nflow ip.src\nstates A, B\nregisters n = 0\ndefault pass\n\
         table\n{rows}  B * => pass\nend\n"
    ));
    // A register first: `n` moves from index 0 to 1.
    let new = program(&format!(
        "program big\nhook xdp\nflow ip.src\nstates A, B\nregisters added = 1, n = 0\n\
         default pass\ntable\n{rows}  B * => pass\nend\n"
    ));
    let options = Options::default;
    let verified = |output: &Output| {
        let loaded = flowstate_runtime::load(&output.object, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        loaded
            .stats(&output.program_name)
            .unwrap()
            .verified_insns
            .unwrap_or(0)
    };
    let plain = verified(&compile(&new, &options()).unwrap());
    let bridge = verified(&compile_bridge(&new, &old, &options()).unwrap());
    let handoff = verified(&compile_handoff(&old, &options()).unwrap());
    eprintln!(
        "600 rows: verified instructions: program {plain}, bridge {bridge}, handoff {handoff}"
    );
    assert!(
        bridge <= 2 * plain + 2_000,
        "bridge {bridge}, program {plain}"
    );
}
