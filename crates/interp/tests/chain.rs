//! The interpreter's chains: `pass` hands the packet on, any other verdict
//! ends the chain, every function reached keeps its own state, and two
//! functions may share one table.

use std::net::Ipv4Addr;

use flowstate_interp::{check_shareable, Chain};
use flowstate_lang::ir::Program;
use flowstate_wire::build::{mac, PacketBuilder};

fn program(text: &str) -> Program {
    match flowstate_lang::compile(text) {
        Ok(c) => c.program,
        Err(d) => panic!("test program does not compile: {d:#?}"),
    }
}

fn udp(src: u8, dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(src as u32), mac(100))
        .ipv4(Ipv4Addr::new(10, 0, 0, src), Ipv4Addr::new(10, 0, 0, 100))
        .udp(40000, dport)
        .build()
}

/// Counts every packet of a source and passes it; drops port 9.
const COUNTER: &str = "program counter
hook xdp
flow ip.src
states SEEN
registers n = 0
default pass
table
  * udp.dport == 9 => drop, next SEEN, n = n + 1
  * *              => pass, next SEEN, n = n + 1
end
";

/// Drops port 7, sends port 8 to the controller (then pass), passes the rest.
const FILTER: &str = "program filter
hook xdp
flow ip.src
states NEW, HIT
default pass
table
  * udp.dport == 7 => drop, next HIT
  * udp.dport == 8 => controller, next HIT
end
";

#[test]
fn pass_continues_and_other_verdicts_end_the_chain() {
    let (a, b, c) = (program(COUNTER), program(FILTER), program(COUNTER));
    let mut chain = Chain::new(&[&a, &b, &c]);

    // Passes everything: all three functions see it.
    let step = chain.process(&udp(1, 53), 1, 10);
    assert_eq!(step.steps.len(), 3);
    assert_eq!(step.action().verdict_name(), "pass");
    assert_eq!(step.ended_by(), 2);

    // The middle function drops it: the last never sees it.
    let step = chain.process(&udp(1, 7), 1, 20);
    assert_eq!((step.ended_by(), step.action().verdict_name()), (1, "drop"));

    // `controller then pass` continues.
    let step = chain.process(&udp(1, 8), 1, 30);
    assert_eq!(step.ended_by(), 2);
    assert_eq!(step.steps[1].action.verdict_name(), "controller");

    // The first function drops port 9: nobody after it counts it.
    let step = chain.process(&udp(1, 9), 1, 40);
    assert_eq!((step.ended_by(), step.action().verdict_name()), (0, "drop"));

    let registers = |chain: &Chain, f: usize| {
        let table = chain.table(f).sorted();
        assert_eq!(table.len(), 1);
        table[0].1.registers.clone()
    };
    assert_eq!(registers(&chain, 0), vec![4], "the head saw every packet");
    assert_eq!(
        registers(&chain, 2),
        vec![2],
        "the tail saw the two that passed"
    );
    assert_eq!(chain.machine(1).row_hits()[0].packets, 1);
    assert_eq!(chain.machine(2).default_hits().packets, 0);
}

#[test]
fn a_shared_table_is_seen_by_both_functions() {
    let (a, b) = (program(COUNTER), program(COUNTER));
    let mut chain = Chain::new(&[&a, &b]);
    chain.share_table(1, 0).expect("same layout");
    chain.process(&udp(1, 53), 1, 10);
    chain.process(&udp(1, 53), 1, 20);
    // Each packet incremented the one entry twice, the second function
    // reading what the first wrote.
    let table = chain.table(1).sorted();
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].1.registers, vec![4]);
    assert_eq!(chain.table(0).sorted(), table);
    assert_eq!(chain.table_holder(1), 0);

    // Not shared: each counts on its own.
    let mut apart = Chain::new(&[&a, &b]);
    apart.process(&udp(1, 53), 1, 10);
    assert_eq!(apart.table(1).sorted()[0].1.registers, vec![1]);
}

#[test]
fn sharing_is_refused_when_the_layouts_differ() {
    let a = program(COUNTER);
    let cases = [
        (
            COUNTER.replace("flow ip.src", "flow ip.dst"),
            "the flow key",
        ),
        (
            COUNTER.replace("states SEEN", "states SEEN, OTHER"),
            "the list of states",
        ),
        (
            COUNTER.replace("n = 0", "n = 1"),
            "a register's initial value",
        ),
        (
            COUNTER
                .replace("registers n = 0", "registers m = 0")
                .replace("n = n", "m = m"),
            "the list of registers",
        ),
        (
            COUNTER.replace("default pass", "flows 10 refuse\ndefault pass"),
            "capacity",
        ),
        (
            COUNTER.replace("default pass", "timeout SEEN idle 5s\ndefault pass"),
            "a state's timeout",
        ),
    ];
    for (text, what) in cases {
        let b = program(&text);
        let err = check_shareable(&a, &b).expect_err(what);
        assert!(err.to_string().contains(what), "{what}: {err}");
        let mut chain = Chain::new(&[&a, &b]);
        assert!(chain.share_table(1, 0).is_err());
    }
    // Rows, default and hook may differ.
    let b = program(
        &COUNTER
            .replace("=> drop", "=> pass")
            .replace("hook xdp", "hook tc ingress"),
    );
    check_shareable(&a, &b).expect("only rows and hook differ");
}
