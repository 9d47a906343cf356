//! The harness itself can fail: a kernel program that differs from the
//! interpreted one by one verdict is caught, and the case is minimised to
//! the packet and row that show it. Needs root and bpffs: prints
//! `SKIP <test>: <reason>` otherwise.

use flowstate_difftest::packets;
use flowstate_difftest::rng::Rng;
use flowstate_difftest::{compare_loaded, minimise, skip, test_options, Kernel, Packet};
use flowstate_lang::ir::{Action, Program};

const SOURCE: &str = "program knock\nhook xdp\nflow ip.src\nstates A, B\nregisters n = 0\n\
    flows 1024 refuse\ndefault pass\n\ntable\n\
    A udp.dport == 53 => drop, n = n + 1, next B\n\
    B udp.dport == 53 => pass, n = n + 2\n\
    * tcp.dport == 22 => drop\n\
    * * => pass\nend\n";

/// `program` with its `B`-state row's verdict flipped: the bug the harness
/// must find.
fn with_bug(program: &Program) -> Program {
    let mut buggy = program.clone();
    for row in &mut buggy.rows {
        if row.updates.len() == 1 && row.action == Action::Pass {
            row.action = Action::Drop;
        }
    }
    buggy
}

fn diverges(program: &Program, packets: &[Packet]) -> bool {
    let kernel = Kernel::load(&with_bug(program), &test_options(true)).unwrap();
    matches!(compare_loaded(program, &kernel, packets), Ok(Err(_)))
}

#[test]
fn a_wrong_verdict_is_caught_and_minimised() {
    if skip("a_wrong_verdict_is_caught_and_minimised") {
        return;
    }
    let program = flowstate_lang::compile(SOURCE).unwrap().program;
    let packets = packets::sequence(&mut Rng::new(4), 300);

    // Unchanged, the two executions agree.
    let kernel = Kernel::load(&program, &test_options(true)).unwrap();
    assert!(matches!(
        compare_loaded(&program, &kernel, &packets),
        Ok(Ok(_))
    ));

    // With the bug, they disagree on a verdict.
    let buggy = Kernel::load(&with_bug(&program), &test_options(true)).unwrap();
    let divergence = compare_loaded(&program, &buggy, &packets)
        .unwrap()
        .unwrap_err();
    assert!(divergence.what.contains("verdict"), "{divergence}");
    assert!(divergence.packet.is_some());

    // Minimised to one or two packets (one suffices once the minimiser
    // widens the buggy row's state pattern to `*`) and the rows that matter.
    let (small, few) = minimise(&program, &packets, &diverges);
    assert!(diverges(&small, &few));
    assert!(few.len() <= 2, "{few:?}");
    assert!(
        small.rows.len() <= 2,
        "{}",
        flowstate_lang::print::program(&small)
    );
    assert!(small.registers.len() <= 1);
}
