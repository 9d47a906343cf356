//! Chained functions in the kernel (BPF_PROG_TEST_RUN through
//! `flowstate_runtime::chain`): `pass` continues in the next function,
//! drop ends the chain, the last function's `pass` is the verdict, and
//! each function keeps its own flows. Needs root and bpffs; SKIP otherwise.

use flowstate_codegen::chain::ChainLink;
use flowstate_codegen::{compile, Options, Output, Target};
use flowstate_lang::ir::Hook;
use flowstate_runtime::chain::{load_chain, ChainFunction, LoadedChain};
use flowstate_runtime::LoadOptions;
use flowstate_wire::build::{mac, PacketBuilder};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;

/// The running kernel's target (as `flowstate run` builds), so that the
/// tests run in the 6.1 VM too (`.ci/vm/run-kernel`).
fn kernel_target() -> Target {
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

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_runtime::kernel_unavailable())
}

/// A function that drops `udp.dport == drop_port`, passes the rest (row 1),
/// and counts each flow's packets in `n`; `controller` sends the passed
/// packets to the controller first.
fn function(name: &str, hook: &str, drop_port: u16, controller: bool) -> String {
    let pass = if controller {
        "controller then pass"
    } else {
        "pass"
    };
    format!(
        "program {name}\nhook {hook}\nflow ip.src\nstates S\nregisters n = 0\ndefault pass\n\
         table\n  S udp.dport == {drop_port} => drop, n = n + 1\n  S * => {pass}, n = n + 1\nend\n"
    )
}

fn build(texts: &[String], chained: bool) -> Vec<Output> {
    texts
        .iter()
        .enumerate()
        .map(|(position, text)| {
            let program = flowstate_lang::compile(text).unwrap().program;
            let options = Options {
                chain: chained.then(|| ChainLink::after(position as u32)),
                target: kernel_target(),
                ..Options::default()
            };
            compile(&program, &options).unwrap()
        })
        .collect()
}

fn load(outputs: &[Output]) -> LoadedChain {
    let functions: Vec<ChainFunction> = outputs
        .iter()
        .map(|o| ChainFunction {
            object: &o.object,
            program: &o.program_name,
        })
        .collect();
    match load_chain(&functions, &LoadOptions::default()) {
        Ok(chain) => chain,
        Err(e) => panic!("{e}\n{}", outputs[0].listing),
    }
}

fn udp(src: u8, dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, src], [10, 0, 0, 2])
        .udp(40000, dport)
        .payload(18)
        .build()
}

/// Packets function `index` counted under `row`.
fn row_packets(chain: &LoadedChain, outputs: &[Output], index: usize, row: u32) -> u64 {
    let (loaded, _) = chain.function(index).unwrap();
    let counters = loaded.map(outputs[index].layout.counters_map).unwrap();
    counters
        .sum_u64_per_cpu(&row.to_le_bytes())
        .unwrap()
        .map_or(0, |sums| sums[0])
}

/// The flow's `n` in function `index`'s table.
fn flow_count(chain: &LoadedChain, outputs: &[Output], index: usize, src: u8) -> Option<i64> {
    let (loaded, _) = chain.function(index).unwrap();
    let flows = loaded.map(outputs[index].layout.flows_map).unwrap();
    flows
        .lookup(&[10, 0, 0, src])
        .unwrap()
        .map(|v| outputs[index].layout.decode_entry(&v).registers[0])
}

#[test]
fn pass_continues_in_the_next_function_and_drop_ends_the_chain() {
    if skip("pass_continues_in_the_next_function_and_drop_ends_the_chain") {
        return;
    }
    let texts = [
        function("first", "xdp", 7, false),
        function("second", "xdp", 8, true),
        function("third", "xdp", 9, false),
    ];
    let outputs = build(&texts, true);
    let chain = load(&outputs);
    // Through the whole chain: each function counts it once.
    assert_eq!(chain.test_run(&udp(1, 100), 1).unwrap().retval, XDP_PASS);
    assert_eq!(chain.test_run(&udp(1, 100), 1).unwrap().retval, XDP_PASS);
    for index in 0..3 {
        assert_eq!(
            row_packets(&chain, &outputs, index, 1),
            2,
            "function {index}"
        );
        assert_eq!(
            flow_count(&chain, &outputs, index, 1),
            Some(2),
            "function {index}"
        );
    }
    // Dropped by the first: the others never see it.
    assert_eq!(chain.test_run(&udp(2, 7), 1).unwrap().retval, XDP_DROP);
    assert_eq!(row_packets(&chain, &outputs, 0, 0), 1);
    assert_eq!(flow_count(&chain, &outputs, 1, 2), None);
    assert_eq!(flow_count(&chain, &outputs, 2, 2), None);
    // Dropped by the third, after the second's `controller then pass`.
    assert_eq!(chain.test_run(&udp(3, 9), 1).unwrap().retval, XDP_DROP);
    assert_eq!(flow_count(&chain, &outputs, 0, 3), Some(1));
    assert_eq!(flow_count(&chain, &outputs, 1, 3), Some(1));
    assert_eq!(row_packets(&chain, &outputs, 2, 0), 1);
    // The default action (`pass`: no IPv4 header, no key) continues too.
    let arp = PacketBuilder::eth(mac(1), mac(2)).payload(46).build();
    assert_eq!(chain.test_run(&arp, 1).unwrap().retval, XDP_PASS);
    for index in 0..3 {
        let default_row = outputs[index].layout.counter_default;
        assert_eq!(
            row_packets(&chain, &outputs, index, default_row),
            1,
            "function {index} saw the keyless frame"
        );
    }
}

#[test]
fn an_unchained_build_does_not_continue() {
    if skip("an_unchained_build_does_not_continue") {
        return;
    }
    // The same objects without the chain option: the head's pass is final.
    let texts = [
        function("first", "xdp", 7, false),
        function("second", "xdp", 8, false),
    ];
    let plain = build(&texts, false);
    assert!(
        !plain[0].listing.contains("tail_call"),
        "{}",
        plain[0].listing
    );
    let chained = build(&texts, true);
    assert!(chained[0].listing.contains("tail_call"));
    let chain = load(&chained);
    assert_eq!(chain.test_run(&udp(1, 8), 1).unwrap().retval, XDP_DROP);
    assert_eq!(flow_count(&chain, &chained, 0, 1), Some(1));
    assert_eq!(flow_count(&chain, &chained, 1, 1), Some(1));
}

#[test]
fn a_tc_chain_continues_and_its_last_pass_is_the_hooks() {
    if skip("a_tc_chain_continues_and_its_last_pass_is_the_hooks") {
        return;
    }
    let texts = [
        function("first", "tc ingress", 7, false),
        function("second", "tc ingress", 8, false),
    ];
    let outputs = build(&texts, true);
    assert_eq!(outputs[0].hook, Hook::TcIngress);
    let chain = load(&outputs);
    assert_eq!(
        chain.test_run(&udp(1, 100), 1).unwrap().retval,
        TC_ACT_UNSPEC
    );
    assert_eq!(chain.test_run(&udp(1, 8), 1).unwrap().retval, TC_ACT_SHOT);
    assert_eq!(flow_count(&chain, &outputs, 0, 1), Some(2));
    assert_eq!(flow_count(&chain, &outputs, 1, 1), Some(2));
}

#[test]
fn every_example_loads_as_a_chained_function() {
    if skip("every_example_loads_as_a_chained_function") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for name in ["portknock.fsm", "tokenbucket.fsm", "switch/learnswitch.fsm"] {
        let path = root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let compiled = flowstate_lang::compile(&text).unwrap();
        let options = Options {
            chain: Some(ChainLink::after(0)),
            target: kernel_target(),
            ..Options::default()
        };
        let output = compile(&compiled.program, &options).unwrap();
        let functions = [ChainFunction {
            object: &output.object,
            program: &output.program_name,
        }];
        if let Err(e) = load_chain(&functions, &LoadOptions::default()) {
            panic!("{}: {e}", path.display());
        }
        seen += 1;
    }
    assert_eq!(seen, 3, "examples found: {seen}");
}
