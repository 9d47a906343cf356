//! Code generation per target, without a kernel: what a kernel without
//! `may_goto` or cpu v4 gets, and the seqlock's accesses on a weakly
//! ordered CPU. (The fallbacks run in the kernel in difftest, with
//! `FLOWSTATE_TARGET=6.1`.)

use flowstate_codegen::{compile, Options, Target};
use flowstate_lang::ir::Program;

fn program(source: &str) -> Program {
    match flowstate_lang::compile(source) {
        Ok(c) => c.program,
        Err(d) => panic!("{d:?}"),
    }
}

fn portknock() -> Program {
    program(include_str!("../../../examples/portknock.fsm"))
}

fn listing(program: &Program, target: Target) -> String {
    let options = Options {
        target,
        ..Options::default()
    };
    compile(program, &options).unwrap().listing
}

/// Instruction lines only (annotations are prose).
fn instructions(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .collect()
}

#[test]
fn linux_6_1_code_has_no_may_goto_and_waits_in_bpf_loop() {
    let text = listing(&portknock(), Target::linux(6, 1).unwrap());
    let insns = instructions(&text);
    assert!(!insns.iter().any(|l| l.contains("may_goto")), "{text}");
    assert!(!insns.iter().any(|l| l.contains("gotol")), "{text}");
    assert!(insns.iter().any(|l| l.contains("bpf_loop")), "{text}");
    // The callback's address is a BPF_PSEUDO_FUNC load.
    assert!(insns.iter().any(|l| l.contains("= func(")), "{text}");
    let newest = listing(&portknock(), Target::newest());
    assert!(instructions(&newest).iter().any(|l| l.contains("may_goto")));
    assert!(!newest.contains("bpf_loop"));
}

#[test]
fn without_signed_division_division_uses_magnitudes() {
    let source = "program d\nhook xdp\nflow ip.src\nstates S\nregisters a = 0\ndefault pass\n\
                  table\n  S * => pass, a = (a + pkt.len) / -3 + (a % 7)\nend\n";
    let p = program(source);
    let old = listing(&p, Target::linux(6, 1).unwrap());
    assert!(
        !instructions(&old)
            .iter()
            .any(|l| l.contains("s/=") || l.contains("s%=")),
        "{old}"
    );
    let new = listing(&p, Target::linux(6, 6).unwrap());
    assert!(
        instructions(&new).iter().any(|l| l.contains("s/=")),
        "{new}"
    );
}

#[test]
fn weakly_ordered_seqlock_reads_and_release_are_atomics() {
    let strong = Target {
        weakly_ordered: false,
        ..Target::newest()
    };
    let weak = Target {
        weakly_ordered: true,
        ..strong
    };
    // The lock word is the first word of the entry (R7): plain loads and
    // a plain store of it on x86; fetch-add of 0 and exchange on arm64.
    let plain_read = |l: &&str| l.contains("= *(u32 *)(r7 + 0x0)");
    let plain_release = |l: &&str| l.contains("*(u32 *)(r7 + 0x0) = r1");
    let fetch = |l: &&str| l.contains("atomic_fetch_add") && l.contains("r7 + 0x0");
    let xchg = |l: &&str| l.contains("xchg") && !l.contains("cmpxchg") && l.contains("r7 + 0x0");

    let x86 = listing(&portknock(), strong);
    let x86 = instructions(&x86);
    assert!(x86.iter().any(plain_read) && x86.iter().any(plain_release));
    assert!(!x86.iter().any(fetch) && !x86.iter().any(xchg));

    let arm = listing(&portknock(), weak);
    let arm_insns = instructions(&arm);
    assert!(arm_insns.iter().any(fetch), "{arm}");
    assert!(arm_insns.iter().any(xchg), "{arm}");
    assert!(!arm_insns.iter().any(plain_release), "{arm}");
    // The seqlock copy (first pass): every read of the word is atomic.
    let copy = arm
        .split("; copy the entry to the stack view (seqlock read")
        .nth(1)
        .and_then(|rest| rest.split("\n;").next())
        .expect("the seqlock copy is annotated");
    assert!(!instructions(copy).iter().any(plain_read), "{copy}");
    assert!(
        instructions(copy).iter().filter(|l| fetch(l)).count() >= 2,
        "{copy}"
    );
}
