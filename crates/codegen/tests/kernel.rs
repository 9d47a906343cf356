//! Compiled programs in the kernel (BPF_PROG_TEST_RUN with the test clock)
//! against the reference interpreter: verdicts, states, registers,
//! timestamps, globals and counters must agree packet for packet.
//! Needs root and bpffs; prints SKIP otherwise.

use flowstate_codegen::testing::{compile_with_conflict, StagedConflict};
use flowstate_codegen::{compile, Options, Output, Target};
use flowstate_interp::Machine;
use flowstate_lang::ir::{Action, ControllerThen, Hook, Program};
use flowstate_runtime::{load, LoadOptions, Loaded};
use flowstate_wire::build::{mac, PacketBuilder};

/// What a test run reports as the ingress interface (loopback).
const TEST_RUN_IFINDEX: u32 = 1;

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_runtime::kernel_unavailable())
}

fn program(source: &str) -> Program {
    match flowstate_lang::compile(source) {
        Ok(c) => c.program,
        Err(d) => panic!("{d:?}"),
    }
}

/// The target these tests build for: `FLOWSTATE_TARGET` (a kernel
/// version) when set, else the running kernel's, from its probed features
/// (what `flowstate run` builds; on a kernel without `may_goto`, the
/// `bpf_loop` fallback), as `flowstate_difftest::test_target` does.
fn kernel_target() -> Target {
    match std::env::var("FLOWSTATE_TARGET") {
        Ok(text) if !text.is_empty() => {
            Target::parse(&text).unwrap_or_else(|why| panic!("FLOWSTATE_TARGET={text}: {why}"))
        }
        _ => {
            let features = flowstate_runtime::kernel_features();
            if !features.may_goto.is_present() && !features.bpf_loop.is_present() {
                // No permission to probe: nothing loads either.
                return Target::newest();
            }
            Target::from_host(
                features.may_goto.is_present(),
                features.bpf_loop.is_present(),
                features.gotol.is_present(),
                features.signed_division.is_present(),
            )
        }
    }
}

/// Default options, for the kernel's target.
fn kernel_options() -> Options {
    Options {
        target: kernel_target(),
        ..Options::default()
    }
}

fn test_options() -> Options {
    Options {
        test_clock: true,
        ..kernel_options()
    }
}

fn load_output(output: &Output) -> Loaded {
    let loaded = load_unfilled(output);
    // What `flowstate run` does: every redirect port resolved (here to
    // the test run's interface).
    if let Some(ports) = output.layout.ports_map {
        let map = loaded.map(ports).unwrap();
        for slot in 0..output.layout.ports.len() as u32 {
            map.array_set(slot, &TEST_RUN_IFINDEX.to_le_bytes())
                .unwrap();
        }
    }
    loaded
}

/// Loaded as `ip` or `bpftool` would: the `ports` map left empty.
fn load_unfilled(output: &Output) -> Loaded {
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
                // TCX_NEXT / TC_ACT_UNSPEC: the next program on the hook runs.
                -1i32 as u32
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
        Action::Redirect { .. } | Action::RedirectPort { .. } => {
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
        Pair::with_output(program, compile(program, options).unwrap())
    }

    fn with_output(program: &'p Program, output: Output) -> Pair<'p> {
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
            let globals = self
                .loaded
                .map(flowstate_codegen::layout::loader_name(name))
                .unwrap()
                .array_get(0)
                .unwrap();
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
fn redirect_ports_filled_redirect_and_unfilled_drop() {
    if skip("redirect_ports_filled_redirect_and_unfilled_drop") {
        return;
    }
    let source = "program ports\nhook xdp\nflow ip.src\nstates A\ndefault pass\ntable\n  \
                  * udp.dport == 1 => redirect eth7\n  * udp.dport == 2 => redirect \"port-b\"\n  \
                  * * => pass\nend\n";
    let p = program(source);
    for (hook, redirected, dropped) in [(Hook::Xdp, 4, 1), (Hook::TcIngress, 7, 2)] {
        let options = Options {
            hook: Some(hook),
            ..test_options()
        };
        let output = compile(&p, &options).unwrap();
        assert_eq!(output.layout.ports, ["eth7", "port-b"]);
        let run = |loaded: &Loaded, frame: &[u8]| {
            loaded
                .test_run(&output.program_name, frame, 1)
                .unwrap()
                .retval
        };
        // Filled: both ports redirect; the rows' counters count them.
        let filled = load_output(&output);
        assert_eq!(run(&filled, &udp([10, 0, 0, 1], 1)), redirected, "{hook:?}");
        assert_eq!(run(&filled, &udp([10, 0, 0, 1], 2)), redirected, "{hook:?}");
        // Unfilled (a foreign loader): the redirect drops; other rows run.
        let unfilled = load_unfilled(&output);
        assert_eq!(run(&unfilled, &udp([10, 0, 0, 1], 1)), dropped, "{hook:?}");
        assert_eq!(run(&unfilled, &udp([10, 0, 0, 1], 2)), dropped, "{hook:?}");
        assert_eq!(
            run(&unfilled, &udp([10, 0, 0, 1], 3)),
            verdict(&Action::Pass, hook)
        );
        // One slot filled: only that port redirects.
        let ports = unfilled.map("ports").unwrap();
        ports.array_set(1, &TEST_RUN_IFINDEX.to_le_bytes()).unwrap();
        assert_eq!(run(&unfilled, &udp([10, 0, 0, 1], 1)), dropped, "{hook:?}");
        assert_eq!(
            run(&unfilled, &udp([10, 0, 0, 1], 2)),
            redirected,
            "{hook:?}"
        );
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
                    .map(flowstate_codegen::layout::GLOBALS_SECTION)
                    .unwrap()
                    .array_set(0, &layout.encode_globals(&[x]))
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

/// Runs `frames` (with their clock times) through the kernel and the
/// interpreter; returns the pair for further checks.
fn agree<'p>(p: &'p Program, hook: Hook, frames: &[(Vec<u8>, i64)]) -> Pair<'p> {
    let options = Options {
        hook: Some(hook),
        ..test_options()
    };
    let mut pair = Pair::new(p, &options);
    for (frame, now) in frames {
        pair.step(frame, *now);
    }
    pair.check_counters();
    pair
}

fn eth_frame(src: u32, dst: u32) -> Vec<u8> {
    PacketBuilder::eth(mac(src), mac(dst))
        .ipv4([10, 0, 0, src as u8], [10, 0, 0, dst as u8])
        .udp(1, 2)
        .payload(src as usize % 7)
        .build()
}

#[test]
fn update_key_differs_like_a_learning_switch() {
    if skip("update_key_differs_like_a_learning_switch") {
        return;
    }
    let p = program(
        "program learn\nhook xdp\nflow eth.dst\nupdate eth.src\nstates UNKNOWN, KNOWN\n\
         registers seen = 0\ntimeout KNOWN hard 10s\ndefault pass\ntable\n\
         \x20 UNKNOWN * => pass, seen = pkt.len, next KNOWN\n\
         \x20 KNOWN * => drop, seen = seen + 1\nend\n",
    );
    let mut frames = Vec::new();
    let mut now = SECOND;
    for (src, dst, dt) in [
        (1, 2, 1),
        (2, 1, 1),
        (1, 2, 1),
        (3, 1, 1),
        (1, 3, 1),
        (2, 2, 1),
        (1, 2, 11 * SECOND),
        (2, 1, 1),
        (1, 2, 1),
    ] {
        now += dt;
        frames.push((eth_frame(src, dst), now));
    }
    agree(&p, Hook::Xdp, &frames);
    agree(&p, Hook::TcIngress, &frames);
}

#[test]
fn globals_add_atomically_and_by_compare_and_swap() {
    if skip("globals_add_atomically_and_by_compare_and_swap") {
        return;
    }
    let p = program(
        "program glob\nhook xdp\nflow ip.src\nstates A\nglobals bytes = 0, peak = -5, mix = 3\n\
         default pass\ntable\n\
         \x20 A udp.dport == 2 => pass, bytes = bytes + pkt.len, peak = max(peak, pkt.len), mix = mix * 3 - bytes\n\
         \x20 A * => drop, bytes = pkt.len + bytes, mix = peak\nend\n",
    );
    let frames: Vec<(Vec<u8>, i64)> = (0..12)
        .map(|i| {
            let frame = if i % 3 == 0 {
                tcp([10, 0, 0, i], 80)
            } else {
                eth_frame(u32::from(i) + 1, 9)
            };
            (frame, SECOND * i64::from(i))
        })
        .collect();
    agree(&p, Hook::Xdp, &frames);
}

#[test]
fn a_full_refusing_table_gives_the_default_and_counts_it() {
    if skip("a_full_refusing_table_gives_the_default_and_counts_it") {
        return;
    }
    let p = program(
        "program full\nhook xdp\nflow ip.src\nflows 2 refuse\nstates A, B\nglobals n = 0\n\
         default pass\ntable\n\
         \x20 * * => drop, n = n + 1, next B\nend\n",
    );
    let frames: Vec<(Vec<u8>, i64)> = [1u8, 2, 3, 1, 4, 2]
        .iter()
        .enumerate()
        .map(|(i, &src)| (udp([10, 0, 0, src], 7), i as i64))
        .collect();
    let pair = agree(&p, Hook::Xdp, &frames);
    let layout = &pair.output.layout;
    assert_eq!(pair.counter(layout.counter_table_full).0, 2);
    assert_eq!(pair.counter(layout.counter_contention).0, 0);
}

#[test]
fn entries_back_in_the_initial_state_are_deleted() {
    if skip("entries_back_in_the_initial_state_are_deleted") {
        return;
    }
    let p = program(
        "program elide\nhook xdp\nflow ip.src\nstates A, B\nregisters r = 4\ndefault pass\n\
         table\n\
         \x20 A udp.dport == 1 => pass, r = 5, next B\n\
         \x20 B udp.dport == 2 => pass, r = 4, next A\n\
         \x20 B udp.dport == 3 => pass, next A\n\
         \x20 B udp.dport == 4 => pass, r = r - 1\n\
         \x20 A * => drop\nend\n",
    );
    let src = [10, 0, 0, 1];
    let ports = [1, 2, 9, 1, 3, 1, 4, 3, 4];
    let frames: Vec<(Vec<u8>, i64)> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| (udp(src, port), i as i64 * SECOND))
        .collect();
    let pair = agree(&p, Hook::Xdp, &frames);
    // The last packet left the flow in A with r = 4: no entry.
    assert!(pair.machine.table().is_empty());
}

#[test]
fn patterns_conditions_and_wide_keys_agree() {
    if skip("patterns_conditions_and_wide_keys_agree") {
        return;
    }
    let ports: String = (0..9)
        .map(|i| format!("  A tcp.dport == {} => tx, x = x + {i}\n", 100 + 10 * i))
        .collect();
    let source = format!(
        "program pat\nhook xdp\nflow eth.src, ip.src, tcp.sport\nstates A, B, C\n\
         registers x = pkt.len, y = -1\ntimeout B idle 2s\ntimeout C hard 3s rollback B\ndefault pass\ntable\n\
         \x20 A ip.src in 10.1.0.0/16, tcp.flags has syn => drop, next B\n\
         {ports}\
         \x20 A tcp.dport in {{7, 9, 11, 13, 15, 17, 19}} => pass, y = x % 5, next C\n\
         \x20 B tcp.dport in 1000..2000, !(pkt.len < 70) => drop, y = (x << 3) >> 2, next C\n\
         \x20 B ip.ttl > 60 => pass, x = min(x, y) - now / 1000000000\n\
         \x20 C * => pass, x = x ^ tcp.sport, next A\n\
         \x20 * * => drop\nend\n"
    );
    let p = program(&source);
    let mut frames = Vec::new();
    let mut now = 1;
    let mut seed = 0x9e37_79b9_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..300 {
        let r = next();
        let src = [10, (r & 1) as u8, 0, (r >> 1 & 3) as u8];
        let dport = match r >> 3 & 7 {
            0 => 100 + 10 * (r >> 6 & 15) as u16,
            1 => 7 + 2 * (r >> 6 & 7) as u16,
            2 => 990 + (r >> 6 & 31) as u16 * 40,
            _ => (r >> 6) as u16,
        };
        let flags = if r >> 11 & 1 == 1 { 0x02 } else { 0x10 };
        let frame = PacketBuilder::eth(mac(r >> 12 & 1), mac(9))
            .ipv4(src, [10, 0, 0, 2])
            .ttl(50 + (r >> 14 & 31) as u8)
            .tcp(1 + (r >> 20 & 1) as u16, dport, flags)
            .payload((r >> 21 & 63) as usize)
            .build();
        now += i64::from(r >> 24) * 20_000_000;
        frames.push((frame, now));
    }
    // Some frames without a key (IPv6 has no ip.src).
    frames.push((
        PacketBuilder::eth(mac(1), mac(2))
            .ipv6([0u16; 8], [1u16; 8])
            .tcp(1, 2, 0)
            .build(),
        now + 1,
    ));
    agree(&p, Hook::Xdp, &frames);
}

#[test]
fn controller_events_carry_row_state_key_and_head() {
    if skip("controller_events_carry_row_state_key_and_head") {
        return;
    }
    let p = program(
        "program ctl\nhook xdp\nflow ip.src, udp.dport\nstates A, B\ndefault controller then drop\n\
         table\n\
         \x20 A udp.dport == 53 => controller then pass, next B\n\
         \x20 B udp.dport == 53 => pass\nend\n",
    );
    for hook in [Hook::Xdp, Hook::TcIngress] {
        let options = Options {
            hook: Some(hook),
            ..test_options()
        };
        let mut pair = Pair::new(&p, &options);
        let dns = udp([10, 0, 0, 7], 53);
        let other = udp([10, 0, 0, 7], 54);
        let short = vec![0xabu8; 14];
        let mut big = tcp([10, 0, 0, 8], 1);
        big.resize(300, 0x5a);
        for (i, frame) in [&dns, &dns, &other, &short, &big].into_iter().enumerate() {
            pair.step(frame, 1000 + i as i64);
        }
        pair.check_counters();

        let layout = &pair.output.layout;
        let path = format!(
            "{}/flowstate-codegen-test-events-{}",
            flowstate_runtime::BPFFS_ROOT,
            std::process::id()
        );
        let _ = std::fs::remove_file(&path);
        pair.loaded
            .pin_map(layout.events_map.unwrap(), &path)
            .unwrap();
        let data = aya::maps::MapData::from_pin(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)).unwrap();
        let mut events = Vec::new();
        while let Some(record) = ring.next() {
            events.push(layout.decode_event(&record).unwrap());
        }
        // The first dns packet (row 0), then the default for 54, the
        // short frame and the TCP one: four events.
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[0].row, Some(0));
        assert_eq!(events[0].state, 1, "the state after the packet");
        assert_eq!(events[0].time, 1000);
        assert_eq!(events[0].key, vec![10, 0, 0, 7, 0, 53]);
        assert_eq!(events[0].head, dns);
        assert_eq!(events[1].row, None);
        assert_eq!(events[1].key, vec![10, 0, 0, 7, 0, 54]);
        assert_eq!(events[1].state, 0, "no row matched: state unchanged");
        assert_eq!(events[2].head, short, "{hook:?}");
        assert_eq!(events[2].key, vec![0; 6], "no key");
        assert_eq!(events[3].pkt_len, 300);
        assert_eq!(events[3].head, big[..128].to_vec());
    }
}

/// Two CPUs hammer one flow's counter: with per-flow atomicity no update
/// is lost (packets that gave up waiting are counted as contention).
#[test]
fn two_cpus_lose_no_update_of_one_flow() {
    if skip("two_cpus_lose_no_update_of_one_flow") {
        return;
    }
    let p = program(
        "program cnt\nhook xdp\nflow ip.src\nstates A\nregisters n = 0\ndefault pass\ntable\n\
         \x20 * * => pass, n = n + 1\nend\n",
    );
    const PER_THREAD: u32 = 300_000;
    let output = compile(&p, &kernel_options()).unwrap();
    let loaded = load_output(&output);
    let stats = loaded.stats(&output.program_name).unwrap();
    eprintln!(
        "verifier processed {:?} insns for {} slots",
        stats.verified_insns, output.insn_count
    );
    let frame = udp([10, 9, 9, 9], 1);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loaded
                    .test_run(&output.program_name, &frame, PER_THREAD)
                    .unwrap();
            });
        }
    });
    let layout = &output.layout;
    let value = loaded
        .map("flows")
        .unwrap()
        .lookup(&[10, 9, 9, 9])
        .unwrap()
        .unwrap();
    let n = layout.decode_entry(&value).registers[0];
    let counters = loaded.map(layout.counters_map).unwrap();
    let count = |i: u32| counters.sum_u64_per_cpu(&i.to_le_bytes()).unwrap().unwrap()[0];
    let contention = count(layout.counter_contention);
    eprintln!("n = {n}, contention = {contention}, row = {}", count(0));
    assert_eq!(
        n as u64,
        count(0),
        "every counted row hit is in the register"
    );
    assert_eq!(count(0) + contention, 2 * u64::from(PER_THREAD));
}

#[test]
fn big_tables_and_the_unlocked_debug_build_pass_the_verifier() {
    if skip("big_tables_and_the_unlocked_debug_build_pass_the_verifier") {
        return;
    }
    let rows: String = (0..300)
        .map(|i| {
            format!(
                "  {{A, C}} udp.dport == {} => drop, n = n + {i}, next B\n",
                1000 + 3 * i
            )
        })
        .collect();
    let states: Vec<String> = (0..20).map(|i| format!("S{i}")).collect();
    let source = format!(
        "program big\nhook tc egress\nflow ip.src, ip.dst\nstates A, B, C, {}\nregisters n = 0\n\
         timeout B idle 1s\ndefault pass\ntable\n{rows}  * ip.ttl in 1..9 => drop, next S3\n  \
         B * => pass\nend\n",
        states.join(", ")
    );
    let p = program(&source);
    for atomic in [true, false] {
        let options = Options {
            atomic,
            ..test_options()
        };
        let output = compile(&p, &options).unwrap();
        let loaded = load_output(&output);
        let stats = loaded.stats(&output.program_name).unwrap();
        eprintln!(
            "atomic={atomic}: {} slots, verifier processed {:?}",
            output.insn_count, stats.verified_insns
        );
    }
    // A few packets agree with the interpreter.
    let frames: Vec<(Vec<u8>, i64)> = [1000u16, 1003, 1897, 5, 1000, 1000]
        .iter()
        .enumerate()
        .map(|(i, &port)| (udp([10, 0, 0, 1], port), i as i64 * SECOND / 2))
        .collect();
    agree(&p, Hook::TcEgress, &frames);
}

/// The benchmark's table shape: `rows` rows `S udp.dport == PORT => drop`.
fn exact_table(rows: u16) -> String {
    let mut text =
        format!("program exact{rows}\nhook xdp\nflow ip.src\nstates S\ndefault pass\ntable\n");
    for i in 0..rows {
        text.push_str(&format!("  S udp.dport == {} => drop\n", 10_000 + i));
    }
    text.push_str("end\n");
    text
}

/// Regression (bench, 1000 exact rows): "jump at slot 84 to slot 54803:
/// offset does not fit in 16 bits", and a verifier walk of ~1,140
/// instructions per row. Rows with one effect now share a commit block
/// and far jumps take `gotol`: 1000 and 5000 rows load, agree with the
/// interpreter, and a packet for the last row costs what one for the
/// first does.
#[test]
fn exact_tables_of_1000_and_5000_rows_load_and_agree() {
    if skip("exact_tables_of_1000_and_5000_rows_load_and_agree") {
        return;
    }
    for rows in [1000u16, 5000] {
        let p = program(&exact_table(rows));
        let output = compile(&p, &test_options()).unwrap();
        if rows == 5000 {
            assert!(output.listing.contains("gotol"), "far jumps expected");
        }
        let mut pair = Pair::with_output(&p, output);
        let verified = pair
            .loaded
            .stats(&pair.output.program_name)
            .unwrap()
            .verified_insns
            .unwrap_or(0);
        eprintln!(
            "{rows} exact rows: {} slots, verifier processed {verified}",
            pair.output.insn_count
        );
        // Linear, at a few dozen instructions per row (was ~1,140).
        assert!(
            verified < 40 * u32::from(rows),
            "{verified} for {rows} rows"
        );
        let last = 10_000 + rows - 1;
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        for (i, frame) in [
            udp(a, 10_000),
            udp(a, last),
            udp(b, 10_000 + rows / 2),
            udp(a, last + 1),
            udp(a, 9_999),
            tcp(a, 10_000),
            udp(b, last),
        ]
        .iter()
        .enumerate()
        {
            pair.step(frame, 1000 + i as i64);
        }
        pair.check_counters();
    }
}

/// Writes `lock` into the sequence word of `key`'s entry, keeping the rest.
fn set_sequence_word(loaded: &Loaded, key: &[u8], lock: u32) {
    let flows = loaded.map("flows").unwrap();
    let mut value = flows.lookup(key).unwrap().expect("an entry");
    value[..4].copy_from_slice(&lock.to_le_bytes());
    flows
        .update(key, &value, flowstate_runtime::UpdateMode::Any)
        .unwrap();
}

fn sequence_word(loaded: &Loaded, key: &[u8]) -> Option<u32> {
    let value = loaded.map("flows").unwrap().lookup(key).unwrap()?;
    Some(u32::from_le_bytes(value[..4].try_into().unwrap()))
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Rows that write (a new entry, in place, and an elision delete) and one
/// that only refreshes `last_seen` (no lock).
const RACE: &str = "program race\nhook xdp\nflow ip.src\nstates A, B\nregisters n = 0\n\
    default drop\ntable\n\
    \x20 A udp.dport == 1 => pass, n = n + 1, next B\n\
    \x20 B udp.dport == 1 => pass, n = n + 1\n\
    \x20 B udp.dport == 9 => pass, n = 0, next A\n\
    \x20 * * => pass\nend\n";

/// A writer that holds the lock (odd sequence word) longer than the
/// packet waits: the packet takes the default action, counted as
/// contention, and writes nothing; once the word is even, the flow moves
/// on as usual.
#[test]
fn an_odd_sequence_word_gives_up_with_the_default_and_writes_nothing() {
    if skip("an_odd_sequence_word_gives_up_with_the_default_and_writes_nothing") {
        return;
    }
    let p = program(RACE);
    let output = compile(&p, &test_options()).unwrap();
    let loaded = load_output(&output);
    let layout = &output.layout;
    let name = &output.program_name;
    let key = [10, 0, 0, 1];
    let flows = loaded.map("flows").unwrap();
    let clock = loaded.map("clock").unwrap();
    let held = flowstate_codegen::EntryView {
        state: flowstate_lang::ir::StateId(1),
        registers: vec![5],
        created: 100,
        last_seen: 100,
    };
    let mut value = layout.encode_entry(&held);
    value[..4].copy_from_slice(&7u32.to_le_bytes());
    flows
        .update(&key, &value, flowstate_runtime::UpdateMode::Any)
        .unwrap();
    let counters = loaded.map(layout.counters_map).unwrap();
    let count = |i: u32| counters.sum_u64_per_cpu(&i.to_le_bytes()).unwrap().unwrap()[0];

    clock.array_set(0, &200i64.to_le_bytes()).unwrap();
    // A writing row (1) and a last_seen-only row (5) both give up, once
    // the run's `may_goto` budget is spent (x86-64: a quarter second of
    // starting over; 8M iterations elsewhere).
    for dport in [1, 5] {
        let started = std::time::Instant::now();
        let got = loaded.test_run(name, &udp(key, dport), 1).unwrap().retval;
        let waited = started.elapsed();
        // How long is the kernel's and the machine's (2.1 s in a 6.1 VM
        // under TCG, at 2 x 4M bpf_loop iterations): no bound is asserted;
        // the run returning at all, with the default, is the point.
        eprintln!("dport {dport}: gave up after {waited:?}");
        assert_eq!(got, XDP_DROP, "dport {dport}: the default action");
        assert_eq!(
            flows.lookup(&key).unwrap(),
            Some(value.clone()),
            "nothing written"
        );
    }
    assert_eq!(count(layout.counter_contention), 2);
    assert_eq!(count(layout.counter_default), 2);
    assert_eq!((count(0), count(1), count(3)), (0, 0, 0), "no row fired");

    // The writer is done: even again.
    set_sequence_word(&loaded, &key, 8);
    let got = loaded.test_run(name, &udp(key, 1), 1).unwrap().retval;
    assert_eq!(got, XDP_PASS);
    let entry = layout.decode_entry(&flows.lookup(&key).unwrap().unwrap());
    assert_eq!((entry.registers.clone(), entry.last_seen), (vec![6], 200));
    assert_eq!(
        sequence_word(&loaded, &key),
        Some(10),
        "locked once, released"
    );
    clock.array_set(0, &300i64.to_le_bytes()).unwrap();
    let got = loaded.test_run(name, &udp(key, 5), 1).unwrap().retval;
    assert_eq!(got, XDP_PASS);
    let entry = layout.decode_entry(&flows.lookup(&key).unwrap().unwrap());
    assert_eq!((entry.registers, entry.last_seen), (vec![6], 300));
    assert_eq!(
        sequence_word(&loaded, &key),
        Some(10),
        "a plain last_seen store"
    );
    assert_eq!(count(layout.counter_contention), 2);
    assert_eq!((count(0), count(1), count(3)), (0, 1, 1));
}

/// Another CPU writes the entry between this packet's unlocked read and
/// its cmpxchg (or inserts the flow just before it does): the cmpxchg (or
/// the insert) fails, the packet starts over, locking first, and applies
/// its row exactly once, as the interpreter does.
#[test]
fn a_write_between_read_and_cmpxchg_restarts_and_applies_the_row_once() {
    if skip("a_write_between_read_and_cmpxchg_restarts_and_applies_the_row_once") {
        return;
    }
    let p = program(RACE);
    let output = compile_with_conflict(&p, &test_options(), StagedConflict::Writer).unwrap();
    assert!(output.listing.contains("test build"));
    let mut pair = Pair::with_output(&p, output);
    let key = [10, 0, 0, 1];
    // New flow: the staged insert wins, ours fails with EEXIST.
    pair.step(&udp(key, 1), 1000);
    assert_eq!(
        sequence_word(&pair.loaded, &key),
        Some(2),
        "one locked write"
    );
    // Write in place: staged +2, then our locked write +2.
    pair.step(&udp(key, 1), 2000);
    assert_eq!(sequence_word(&pair.loaded, &key), Some(6));
    // Back to the initial entry: the delete too waits for the restart.
    pair.step(&udp(key, 9), 3000);
    assert_eq!(sequence_word(&pair.loaded, &key), None, "elided");
    pair.step(&udp(key, 1), 4000);
    // The last_seen-only row takes no lock: nothing staged.
    pair.step(&udp(key, 5), 5000);
    pair.check_counters();
    assert_eq!(pair.counter(pair.output.layout.counter_contention).0, 0);
}

/// Another CPU takes the lock between this packet's read and its cmpxchg
/// and keeps it: the packet starts over, waits for the lock in vain, and
/// gives up with the default action, writing nothing.
#[test]
fn a_lock_held_across_the_restart_gives_up_and_writes_nothing() {
    if skip("a_lock_held_across_the_restart_gives_up_and_writes_nothing") {
        return;
    }
    let p = program(RACE);
    let output = compile_with_conflict(&p, &test_options(), StagedConflict::Holder).unwrap();
    let loaded = load_output(&output);
    let layout = &output.layout;
    let name = &output.program_name;
    let key = [10, 0, 0, 1];
    let flows = loaded.map("flows").unwrap();
    let counters = loaded.map(layout.counters_map).unwrap();
    let count = |i: u32| counters.sum_u64_per_cpu(&i.to_le_bytes()).unwrap().unwrap()[0];
    loaded
        .map("clock")
        .unwrap()
        .array_set(0, &1000i64.to_le_bytes())
        .unwrap();

    // New flow: the staged insert (locked) wins; the restart cannot lock.
    let got = loaded.test_run(name, &udp(key, 1), 1).unwrap().retval;
    assert_eq!(got, XDP_DROP);
    let staged = layout.decode_entry(&flows.lookup(&key).unwrap().unwrap());
    assert_eq!((staged.state.0, staged.registers.clone()), (0, vec![0]));
    assert_eq!(sequence_word(&loaded, &key), Some(1), "still the holder's");
    assert_eq!(count(layout.counter_contention), 1);

    // Released; the next writing packet meets a holder again (+1 = odd).
    set_sequence_word(&loaded, &key, 2);
    let got = loaded.test_run(name, &udp(key, 1), 1).unwrap().retval;
    assert_eq!(got, XDP_DROP);
    assert_eq!(sequence_word(&loaded, &key), Some(3));
    let entry = layout.decode_entry(&flows.lookup(&key).unwrap().unwrap());
    assert_eq!(entry, staged, "nothing written");
    assert_eq!(count(layout.counter_contention), 2);
    assert_eq!(count(0), 0, "the row never fired");

    // A row that takes no lock (`* *` in B: only last_seen changes) still
    // works once the word is even. (In A that row would delete the entry,
    // which needs the lock.)
    let mut value = layout.encode_entry(&flowstate_codegen::EntryView {
        state: flowstate_lang::ir::StateId(1),
        ..staged
    });
    value[..4].copy_from_slice(&4u32.to_le_bytes());
    flows
        .update(&key, &value, flowstate_runtime::UpdateMode::Any)
        .unwrap();
    let got = loaded.test_run(name, &udp(key, 5), 1).unwrap().retval;
    assert_eq!(got, XDP_PASS);
    assert_eq!(count(3), 1);
}

/// An entry left held in the map (odd word; here also marked dead, as
/// a deleter marks it) is never taken: the locked pass looks the flow up
/// again each time round its `may_goto` loop (a deleted entry is found
/// gone, see `concurrency.rs::two_cpus_toggle_through_elision`), but one
/// that stays held is waited on until the run's budget is spent; then
/// the default action, counted as contention, and nothing written.
#[test]
fn a_held_entry_is_never_taken() {
    if skip("a_held_entry_is_never_taken") {
        return;
    }
    let p = program(RACE);
    assert!(p.elides_initial_entries(), "RACE deletes entries back in A");
    let output = compile(&p, &test_options()).unwrap();
    let loaded = load_output(&output);
    let layout = &output.layout;
    let name = &output.program_name;
    let key = [10, 0, 0, 1];
    let flows = loaded.map("flows").unwrap();
    let mut value = layout.encode_entry(&flowstate_codegen::EntryView {
        state: flowstate_lang::ir::StateId(1),
        registers: vec![5],
        created: 100,
        last_seen: 100,
    });
    value[..4].copy_from_slice(&7u32.to_le_bytes());
    value[4..8].copy_from_slice(&flowstate_codegen::testing::DEAD_STATE.to_le_bytes());
    flows
        .update(&key, &value, flowstate_runtime::UpdateMode::Any)
        .unwrap();
    loaded
        .map("clock")
        .unwrap()
        .array_set(0, &200i64.to_le_bytes())
        .unwrap();
    let counters = loaded.map(layout.counters_map).unwrap();
    let count = |i: u32| counters.sum_u64_per_cpu(&i.to_le_bytes()).unwrap().unwrap()[0];

    let got = loaded.test_run(name, &udp(key, 1), 1).unwrap().retval;
    assert_eq!(got, XDP_DROP, "the default action");
    assert_eq!(count(layout.counter_contention), 1);
    assert_eq!(flows.lookup(&key).unwrap(), Some(value), "nothing written");
}

/// Rows that test the same conditions, both ways, in different orders
/// (what a row's failure teaches the rows after it is reused): the kernel
/// still picks the interpreter's row for every combination.
#[test]
fn rows_sharing_conditions_pick_the_interpreters_row() {
    if skip("rows_sharing_conditions_pick_the_interpreters_row") {
        return;
    }
    let p = program(
        "program facts\nhook xdp\nflow ip.src\nstates A\nregisters n = 0, m = 0\n\
         default drop\ntable\n\
         \x20 A n < 3, m >= 2 => pass, n = n + 1\n\
         \x20 A n < 3, m < 2 => tx, m = m + 1\n\
         \x20 A n >= 3, n < 3 => drop, n = 100\n\
         \x20 A !(n < 3), udp.dport == 7 => pass, n = 0, m = 0\n\
         \x20 A m < 1, n >= 3 => drop, m = 5\n\
         \x20 A m >= 2, now > 50 => pass, m = m - 1\n\
         \x20 A !(m >= 2) => tx, m = m - 1\nend\n",
    );
    let mut frames = Vec::new();
    for i in 0..200u16 {
        let src = [10, 0, 0, (i % 3) as u8];
        let dport = if i % 7 < 2 { 7 } else { 8 };
        frames.push((udp(src, dport), i64::from(i) * 3));
    }
    let pair = agree(&p, Hook::Xdp, &frames);
    let fired: Vec<usize> = pair
        .machine
        .row_hits()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.packets > 0)
        .map(|(i, _)| i)
        .collect();
    // Every row that can match did (row 2 never can).
    assert_eq!(fired, vec![0, 1, 3, 4, 5, 6], "rows that fired");
}

/// `rows` rows of `A tcp.dport in LO..HI => drop, next B`, disjoint.
fn range_table(rows: u32) -> String {
    let mut text =
        format!("program ranges{rows}\nhook xdp\nflow ip.src\nstates A, B\ndefault pass\ntable\n");
    for i in 0..rows {
        let lo = 1000 + 10 * i;
        text.push_str(&format!(
            "  A tcp.dport in {lo}..{} => drop, next B\n",
            lo + 5
        ));
    }
    text.push_str("end\n");
    text
}

/// Regression (issue 7): 65 range rows passed `check` and the kernel
/// refused them (a million instructions processed; 40 rows 292k): each
/// range test narrowed the field's slot, so no two rows' paths looked
/// alike. Then 4,100 rows hit the verifier's 8,192 pending branches.
/// Range runs are now searched; 65, 500 and 5,000 rows load, the walk
/// grows linearly, and packets agree with the interpreter.
#[test]
fn range_tables_of_65_500_and_5000_rows_load_and_agree() {
    if skip("range_tables_of_65_500_and_5000_rows_load_and_agree") {
        return;
    }
    let mut walked = Vec::new();
    for rows in [65u32, 500, 5000] {
        let p = program(&range_table(rows));
        let output = compile(&p, &test_options()).unwrap();
        let mut pair = Pair::with_output(&p, output);
        let verified = pair
            .loaded
            .stats(&pair.output.program_name)
            .unwrap()
            .verified_insns
            .unwrap_or(0);
        eprintln!(
            "{rows} range rows: {} slots, verifier processed {verified}",
            pair.output.insn_count
        );
        walked.push((rows, verified));
        let a = [10, 0, 0, 1];
        let last = (1000 + 10 * (rows - 1)) as u16;
        for (i, port) in [1000u16, 1005, 1006, 999, last, last + 5, last + 6, 1003]
            .into_iter()
            .enumerate()
        {
            // A fresh source per packet, so each one meets state A.
            let src = [10, 0, (i >> 8) as u8, i as u8];
            pair.step(&tcp(src, port), 1000 + i as i64);
        }
        pair.step(&udp(a, 1000), 2000);
        pair.check_counters();
    }
    // Linear: 77 times the rows cost well under 77 times the walk of 65
    // rows (it was past a million at 65).
    let (small, large) = (walked[0].1.max(1), walked[2].1);
    assert!(
        u64::from(large) < 77 * u64::from(small),
        "walk grows faster than the rows: {walked:?}"
    );
}

/// An `n` in `1..=max` for which `accepts(n)` and, unless `n` is `max`,
/// not `accepts(n + STEP)`, given that it accepts 1 and that acceptance
/// only shrinks as `n` grows (within `STEP` of the largest: each try
/// compiles thousands of rows).
fn largest_accepted(max: u32, accepts: impl Fn(u32) -> bool) -> u32 {
    const STEP: u32 = 32;
    let (mut good, mut bad) = (1, max + 1);
    while bad - good > STEP {
        let mid = good + (bad - good) / 2;
        if accepts(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    good
}

/// The invariant "check accepts => the verifier accepts" at its edge:
/// tables that cannot be searched (masks, conditions, several fields, wide
/// sets) are chains of row tests, and the verifier gives up on a path
/// with more than 8,192 pending branches whatever its instruction budget.
/// For each shape, the longest table `check_limits` accepts loads.
#[test]
fn the_longest_chain_check_accepts_loads() {
    if skip("the_longest_chain_check_accepts_loads") {
        return;
    }
    type RowText = fn(u32) -> String;
    let shapes: [(&str, RowText); 4] = [
        ("mask", |i| {
            format!(
                "A ip.dst == 10.{}.{}.0/255.255.255.0 => drop, next B",
                i / 256 % 256,
                i % 256
            )
        }),
        ("condition", |i| {
            format!("A tcp.dport > {i} => drop, next B")
        }),
        ("mask and condition, writing", |i| {
            format!(
                "A ip.dst == 10.{}.0.0/255.255.0.0, tcp.sport < {i} => drop, n = n + {i}, next B",
                i % 256
            )
        }),
        ("wide set", |i| {
            format!(
                "A ip6.src in {{2001:db8::{i:x}, 2001:db8::1:{i:x}, 2001:db8::2:{i:x}}} => drop"
            )
        }),
    ];
    for (name, row) in shapes {
        let source = |rows: u32| {
            let mut text = String::from(
                "program chain\nhook xdp\nflow eth.src\nstates A, B\nregisters n = 0\n\
                 default pass\ntable\n",
            );
            for i in 0..rows {
                text.push_str(&format!("  {}\n", row(i)));
            }
            text.push_str("end\n");
            text
        };
        let accepted = |rows: u32| {
            flowstate_codegen::check_limits_for(&program(&source(rows)), &kernel_target()).is_ok()
        };
        let longest = largest_accepted(16_384, accepted);
        let p = program(&source(longest));
        // What `check_limits` compiles: the real clock.
        let options = kernel_options();
        let output = compile(&p, &options).unwrap();
        let loaded = match load(&output.object, &LoadOptions::default()) {
            Ok(loaded) => loaded,
            Err(e) => panic!("{name}: check accepts {longest} rows, the kernel refuses them: {e}"),
        };
        let stats = loaded.stats(&output.program_name).unwrap();
        eprintln!(
            "{name}: check accepts up to {longest} rows ({} slots, verifier processed {:?})",
            output.insn_count, stats.verified_insns
        );
        if longest < 16_384 {
            let refused = flowstate_codegen::check_limits_for(
                &program(&source(longest + 32)),
                &kernel_target(),
            );
            assert!(refused.is_err(), "{name}: not monotonic at {longest}");
        }
    }
}
