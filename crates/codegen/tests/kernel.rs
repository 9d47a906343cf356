//! Compiled programs in the kernel (BPF_PROG_TEST_RUN with the test clock)
//! against the reference interpreter: verdicts, states, registers,
//! timestamps, globals and counters must agree packet for packet.
//! Needs root and bpffs; prints SKIP otherwise.

use flowstate_codegen::{compile, Options, Output};
use flowstate_interp::Machine;
use flowstate_lang::ir::{Action, ControllerThen, Hook, Program};
use flowstate_runtime::{load, LoadOptions, Loaded};
use flowstate_wire::build::{mac, PacketBuilder};

/// What a test run reports as the ingress interface (loopback).
const TEST_RUN_IFINDEX: u32 = 1;

fn skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (CAP_BPF, CAP_NET_ADMIN)".to_string())
    } else {
        flowstate_runtime::ensure_bpffs(flowstate_runtime::BPFFS_ROOT)
            .err()
            .map(|e| format!("no bpffs: {e}"))
    };
    match reason {
        Some(reason) => {
            eprintln!("SKIP {test}: {reason}");
            true
        }
        None => false,
    }
}

fn program(source: &str) -> Program {
    match flowstate_lang::compile(source) {
        Ok(c) => c.program,
        Err(d) => panic!("{d:?}"),
    }
}

fn test_options() -> Options {
    Options {
        test_clock: true,
        ifindex_of: Box::new(|_| Some(1)),
        ..Options::default()
    }
}

fn load_output(output: &Output) -> Loaded {
    match load(&output.object, &LoadOptions::default()) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{e}\n{}", output.listing),
    }
}

/// The kernel's return value for an action.
fn verdict(action: &Action, hook: Hook) -> u32 {
    let xdp = hook == Hook::Xdp;
    match action {
        Action::Pass
        | Action::Controller {
            then: ControllerThen::Pass,
        } => {
            if xdp {
                2
            } else {
                0
            }
        }
        Action::Drop
        | Action::Controller {
            then: ControllerThen::Drop,
        } => {
            if xdp {
                1
            } else {
                2
            }
        }
        Action::Tx => 3,
        // bpf_redirect's return value.
        Action::Redirect { .. } => {
            if xdp {
                4
            } else {
                7
            }
        }
    }
}

/// A program in the kernel beside the interpreter.
struct Pair<'p> {
    output: Output,
    loaded: Loaded,
    machine: Machine<'p>,
}

impl<'p> Pair<'p> {
    fn new(program: &'p Program, options: &Options) -> Pair<'p> {
        let output = compile(program, options).unwrap();
        let loaded = load_output(&output);
        Pair {
            output,
            loaded,
            machine: Machine::new(program),
        }
    }

    /// Runs one packet through both, checks verdicts and tables agree.
    fn step(&mut self, frame: &[u8], now: i64) {
        let clock = self.loaded.map("clock").unwrap();
        clock.array_set(0, &now.to_le_bytes()).unwrap();
        let got = self
            .loaded
            .test_run(&self.output.program_name, frame, 1)
            .unwrap()
            .retval;
        let step = self.machine.process(frame, TEST_RUN_IFINDEX, now);
        let want = verdict(step.action, self.output.hook);
        assert_eq!(got, want, "verdict at now={now}: interpreter {step:?}");
        self.compare_tables(now);
    }

    fn compare_tables(&self, now: i64) {
        let layout = &self.output.layout;
        let flows = self.loaded.map(layout.flows_map).unwrap();
        let mut kernel: Vec<(Vec<u8>, flowstate_codegen::EntryView)> = flows
            .entries()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, layout.decode_entry(&v)))
            .collect();
        kernel.sort_by(|a, b| a.0.cmp(&b.0));
        let interp: Vec<(Vec<u8>, flowstate_codegen::EntryView)> = self
            .machine
            .table()
            .sorted()
            .into_iter()
            .map(|(k, e)| {
                (
                    k.as_bytes().to_vec(),
                    flowstate_codegen::EntryView {
                        state: e.state,
                        registers: e.registers.clone(),
                        created: e.created,
                        last_seen: e.last_seen,
                    },
                )
            })
            .collect();
        assert_eq!(kernel, interp, "state tables at now={now}");
        if let Some(name) = layout.globals_map {
            let globals = self.loaded.map(name).unwrap().array_get(0).unwrap();
            assert_eq!(
                layout.decode_globals(&globals),
                self.machine.globals(),
                "globals at now={now}"
            );
        }
    }

    /// Packets and bytes per counter index, summed over CPUs.
    fn counter(&self, index: u32) -> (u64, u64) {
        let counters = self.loaded.map(self.output.layout.counters_map).unwrap();
        let sums = counters
            .sum_u64_per_cpu(&index.to_le_bytes())
            .unwrap()
            .unwrap();
        (sums[0], sums[1])
    }

    fn check_counters(&self) {
        for (i, c) in self.machine.row_hits().iter().enumerate() {
            assert_eq!(self.counter(i as u32), (c.packets, c.bytes), "row {i}");
        }
        let d = self.machine.default_hits();
        assert_eq!(
            self.counter(self.output.layout.counter_default),
            (d.packets, d.bytes),
            "default"
        );
    }
}

fn udp(src: [u8; 4], dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4(src, [10, 0, 0, 2])
        .udp(40000, dport)
        .payload(18)
        .build()
}

fn tcp(src: [u8; 4], dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4(src, [10, 0, 0, 2])
        .tcp(40000, dport, 0x02)
        .payload(6)
        .build()
}

const SECOND: i64 = 1_000_000_000;

#[test]
fn portknock_agrees_with_the_interpreter() {
    if skip("portknock_agrees_with_the_interpreter") {
        return;
    }
    let p = program(include_str!("../../../examples/portknock.fsm"));
    let mut pair = Pair::new(&p, &test_options());
    let a = [10, 0, 0, 1];
    let b = [10, 0, 0, 9];
    let mut now = 5 * SECOND;
    for (frame, dt) in [
        (tcp(a, 22), 1),
        (udp(a, 1111), 1),
        (udp(b, 1111), 1),
        (udp(a, 2222), 1),
        (udp(a, 3333), 1),
        (udp(a, 4444), 1),
        (tcp(a, 22), 1),
        (tcp(a, 22), 29 * SECOND),
        (tcp(a, 80), 1),
        // Silence past the idle timeout: OPEN rolls back to DEFAULT.
        (tcp(a, 22), 31 * SECOND),
        (udp(b, 2222), 1),
        (udp(b, 9), 1),
        (vec![0u8; 20], 1),
    ] {
        now += dt;
        pair.step(&frame, now);
    }
    pair.check_counters();
}

#[test]
fn tokenbucket_agrees_with_the_interpreter() {
    if skip("tokenbucket_agrees_with_the_interpreter") {
        return;
    }
    let p = program(include_str!("../../../examples/tokenbucket.fsm"));
    for hook in [Hook::TcIngress, Hook::Xdp] {
        let options = Options {
            hook: Some(hook),
            ..test_options()
        };
        let mut pair = Pair::new(&p, &options);
        let mut now = 100 * SECOND;
        // A burst: 6 pass, then drops, then one per second.
        for i in 0..40 {
            now += SECOND / 10;
            pair.step(&udp([192, 168, 0, (i % 3) as u8], 53), now);
        }
        now += 20 * SECOND;
        pair.step(&udp([192, 168, 0, 1], 53), now);
        pair.check_counters();
    }
}

#[test]
fn signed_arithmetic_matches_binop_eval() {
    if skip("signed_arithmetic_matches_binop_eval") {
        return;
    }
    use flowstate_lang::ir::BinOp;
    // Register `a` takes the operand from the packet's TTL-derived
    // values; each row writes one result register.
    let values: [i64; 8] = [i64::MIN, i64::MIN + 1, -7, -1, 0, 1, 7, i64::MAX];
    let ops = [
        ("/", BinOp::Div),
        ("%", BinOp::Mod),
        (">>", BinOp::Shr),
        ("<<", BinOp::Shl),
        ("min", BinOp::Min),
        ("max", BinOp::Max),
    ];
    let rhs_values: [i64; 6] = [-1, 3, -3, 7, 63, 65];
    for (symbol, op) in ops {
        for rhs in rhs_values {
            let expr = |x: &str| match op {
                BinOp::Min | BinOp::Max => format!("{symbol}({x}, {rhs})"),
                _ => format!("{x} {symbol} {rhs}"),
            };
            // `x` comes from a register so nothing is folded.
            let source = format!(
                "program arith\nhook xdp\nflow ip.src\nstates S, T\nregisters x = 0, y = 0\n\
                 globals g = 0\ndefault pass\ntable\n\
                 \x20 S * => pass, x = g, next T\n\
                 \x20 T * => pass, y = {}\nend\n",
                expr("x")
            );
            let p = program(&source);
            let output = compile(&p, &test_options()).unwrap();
            let loaded = load_output(&output);
            let layout = &output.layout;
            let flows = loaded.map("flows").unwrap();
            for &x in &values {
                flows.delete(&[1, 2, 3, 4]).unwrap();
                loaded
                    .map("globals")
                    .unwrap()
                    .array_set(0, &x.to_le_bytes())
                    .unwrap();
                let frame = udp([1, 2, 3, 4], 1);
                for _ in 0..2 {
                    loaded.test_run(&output.program_name, &frame, 1).unwrap();
                }
                let value = flows.lookup(&[1, 2, 3, 4]).unwrap().unwrap();
                let entry = layout.decode_entry(&value);
                let want = op.eval(x, rhs);
                assert_eq!(
                    entry.registers[1],
                    want,
                    "{} with x = {x}: kernel {} interpreter {want}",
                    expr("x"),
                    entry.registers[1]
                );
            }
        }
    }
}
