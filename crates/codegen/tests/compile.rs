//! Compilation without a kernel: layouts, listings, limits, errors.

use flowstate_codegen::{check_limits, compile, CodegenError, EntryView, Layout, Options};
use flowstate_interp::Key;
use flowstate_lang::ir::{Program, StateId};
use flowstate_wire::{Field, Headers};

fn program(source: &str) -> Program {
    match flowstate_lang::compile(source) {
        Ok(c) => c.program,
        Err(d) => panic!("{d:?}"),
    }
}

fn portknock() -> Program {
    program(include_str!("../../../examples/portknock.fsm"))
}

fn tokenbucket() -> Program {
    program(include_str!("../../../examples/tokenbucket.fsm"))
}

fn with_table(decls: &str, rows: &str) -> String {
    format!("program t\nhook xdp\nstates A, B\ndefault pass\n{decls}table\n{rows}end\n")
}

#[test]
fn entries_round_trip_through_the_layout() {
    let layout = Layout::new(&tokenbucket(), false);
    assert_eq!(layout.value_size, 24 + 2 * 8);
    let entry = EntryView {
        state: StateId(1),
        registers: vec![i64::MIN, -5],
        created: -1,
        last_seen: i64::MAX,
    };
    let bytes = layout.encode_entry(&entry);
    assert_eq!(bytes.len(), layout.value_size);
    assert_eq!(&bytes[layout.lock_offset..layout.lock_offset + 4], &[0; 4]);
    assert_eq!(layout.decode_entry(&bytes), entry);
    // A short value decodes without panicking.
    assert_eq!(layout.decode_entry(&[]).registers, vec![0, 0]);
}

#[test]
fn counter_indexes_follow_the_rows() {
    let layout = Layout::new(&portknock(), false);
    assert_eq!(
        (
            layout.counter_default,
            layout.counter_contention,
            layout.counter_table_full,
            layout.counter_count
        ),
        (7, 8, 9, 10)
    );
    assert_eq!(layout.globals_map, None);
    assert_eq!(layout.events_map, None);
    assert_eq!(layout.clock_map, None);
    assert_eq!(Layout::new(&portknock(), true).clock_map, Some("clock"));
}

#[test]
fn key_layout_is_the_interpreters() {
    let p = program(&with_table(
        "flow ip.src, tcp.dport, eth.src, ip6.dst, vlan.id\n",
        "  * * => pass\n",
    ));
    let layout = Layout::new(&p, false);
    let mut h = Headers::default();
    h.set(Field::IpSrc, 0x0a00_0001);
    h.set(Field::TcpDport, 22);
    h.set(Field::EthSrc, 0x0200_0000_0001);
    h.set(Field::Ip6Dst, 0x2001_0db8 << 96 | 7);
    h.set(Field::VlanId, 0xabc);
    let key = Key::pack(&layout.key_fields, &h).unwrap();
    assert_eq!(key.as_bytes().len(), layout.key_size);
    assert_eq!(layout.key_size, 4 + 2 + 6 + 16 + 2);
}

#[test]
fn both_examples_compile_with_annotated_listings() {
    for (p, section) in [(portknock(), "xdp"), (tokenbucket(), "classifier")] {
        let out = compile(&p, &Options::default()).unwrap();
        assert_eq!(&out.object[..4], b"\x7fELF");
        assert_eq!(out.section, section);
        assert_eq!(out.program_name, p.name);
        assert!(
            out.insn_count > 50 && out.insn_count < 2000,
            "{}",
            out.insn_count
        );
        // Every row's source line annotates the code that tests it.
        for row in &p.rows {
            let needle = format!("; line {}: row", row.pos.line);
            assert!(out.listing.contains(&needle), "{needle}\n{}", out.listing);
        }
        assert!(out.listing.contains("flows"), "map names in the listing");
    }
}

#[test]
fn the_clock_follows_what_the_program_reads() {
    let listing = |p: &Program, test_clock| {
        let options = Options {
            test_clock,
            ..Options::default()
        };
        compile(p, &options).unwrap().listing
    };
    // Timeouts only: the coarse clock.
    assert!(listing(&portknock(), false).contains("bpf_ktime_get_coarse_ns"));
    // `now` in expressions: the precise one.
    let tb = listing(&tokenbucket(), false);
    assert!(tb.contains("bpf_ktime_get_ns") && !tb.contains("coarse"));
    // The test clock reads a map instead.
    let test = listing(&tokenbucket(), true);
    assert!(!test.contains("bpf_ktime") && test.contains("clock"));
    // No timeout, no `now`: no clock at all.
    let p = program(&with_table("flow ip.src\n", "  * * => drop\n"));
    assert!(!listing(&p, false).contains("bpf_ktime"));
}

#[test]
fn hook_override_changes_the_section() {
    let options = Options {
        hook: Some(flowstate_lang::ir::Hook::Xdp),
        ..Options::default()
    };
    let out = compile(&tokenbucket(), &options).unwrap();
    assert_eq!(out.section, "xdp");
}

#[test]
fn redirect_names_resolve_at_load_not_at_compile() {
    // Neither interface exists here: the object is still built, with one
    // `ports` slot per distinct name, in order of first use.
    let p = program(&with_table(
        "flow ip.src\n",
        "  * ip.src == 1 => redirect nosuchif0\n  * ip.src == 2 => redirect \"nosuch-1\"\n  * ip.src == 3 => redirect nosuchif0\n  * * => pass\n",
    ));
    let out = compile(&p, &Options::default()).unwrap();
    assert_eq!(out.layout.ports_map, Some("ports"));
    assert_eq!(out.layout.ports, ["nosuchif0", "nosuch-1"]);
    assert!(out.listing.contains("ports[1]"), "{}", out.listing);
    assert_eq!(check_limits(&p), Ok(()));
    // A program without redirects has no ports map.
    let plain = compile(&tokenbucket(), &Options::default()).unwrap();
    assert_eq!(plain.layout.ports_map, None);
}

#[test]
fn too_many_registers_exceed_the_stack() {
    let names: Vec<String> = (0..40).map(|i| format!("r{i} = 0")).collect();
    let p = program(&with_table(
        &format!("flow ip.src\nregisters {}\n", names.join(", ")),
        "  * * => pass\n",
    ));
    let problems = check_limits(&p).unwrap_err();
    assert!(
        problems[0].contains("bytes of eBPF stack (limit 512)")
            && problems[0].contains("40 registers"),
        "{problems:?}"
    );
    assert!(matches!(
        compile(&p, &Options::default()),
        Err(CodegenError::Limits(_))
    ));
}

#[test]
fn key_sizes_must_agree() {
    // The checker refuses this program; a hand-built one still gets a
    // message, not a panic or a broken object.
    let mut p = portknock();
    p.update_key = vec![Field::TcpDport];
    let problems = check_limits(&p).unwrap_err();
    assert!(problems[0].contains("same size"), "{problems:?}");
}

#[test]
fn deep_expressions_spill_and_still_assemble() {
    // Right-leaning nesting deeper than the six evaluator registers.
    let mut e = String::from("ip.ttl");
    for i in 0..12 {
        e = format!("(pkt.len * {i}) + ({e} - tcp.dport)");
        e = format!("tcp.sport ^ ({e})");
    }
    let p = program(&with_table(
        "flow ip.src\nregisters x = 0\n",
        &format!("  * * => pass, x = {e}\n"),
    ));
    let out = compile(&p, &Options::default()).unwrap();
    assert!(out.insn_count > 0);
}

#[test]
fn big_exact_tables_use_a_binary_search() {
    let rows: String = (0..200)
        .map(|i| format!("  A tcp.dport == {} => drop\n", 1000 + 7 * i))
        .collect();
    let p = program(&with_table(
        "flow ip.src\n",
        &format!("{rows}  * * => pass\n"),
    ));
    let out = compile(&p, &Options::default()).unwrap();
    assert!(out
        .listing
        .contains("binary search over 200 tcp.dport intervals"));
    assert_eq!(check_limits(&p), Ok(()));
}

#[test]
fn rows_with_equal_effects_share_one_commit_block() {
    let rows: String = (0..1000)
        .map(|i| format!("  A udp.dport == {} => drop\n", 1000 + i))
        .collect();
    let p = program(&with_table(
        "flow ip.src\nregisters n = 0\n",
        &format!("{rows}  A udp.dport == 7 => drop, n = n + 1\n  * * => pass\n"),
    ));
    let out = compile(&p, &Options::default()).unwrap();
    assert!(
        out.listing
            .contains("rows 0, 1, 2, 3, 4, 5, ... (1000 rows) matched"),
        "one commit for the thousand drops"
    );
    // The row with an update keeps its own commit.
    assert!(out.listing.contains("row 1000 matched"));
    // A few slots per row (search, row index, jump), not a commit each.
    assert!(out.insn_count < 6 * 1000, "{} slots", out.insn_count);
}

#[test]
fn far_jumps_become_gotol() {
    let rows: String = (0..6000)
        .map(|i| format!("  A udp.dport == {} => drop\n", 1000 + i))
        .collect();
    let p = program(&with_table("flow ip.src\n", &rows));
    let out = compile(&p, &Options::default()).unwrap();
    let long = out.listing.lines().filter(|l| l.contains("gotol")).count();
    assert!(long > 0, "a 6000-row table spans more than 16k slots");
    assert!(!out.listing.contains("<unknown>"));
    // Every `gotol` lands inside the program.
    for line in out.listing.lines().filter(|l| l.contains("gotol")) {
        let (slot, rest) = line.split_once(':').unwrap();
        let slot: i64 = slot.trim().parse().unwrap();
        let target: i64 = rest
            .rsplit_once('<')
            .and_then(|(_, t)| t.strip_suffix('>'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!((0..out.insn_count as i64).contains(&target), "{line}");
        assert_ne!(target, slot + 1, "{line}");
    }
}

/// A table the kernel's verifier would give up on (2,000 rows with an
/// effect each measured 496k processed instructions for 121k slots; 5,000
/// of them ran into the verifier's million after a minute) is refused by
/// `check_limits` with the reason, before any kernel sees it.
#[test]
fn check_limits_refuses_what_the_verifier_would() {
    let rows: String = (0..5000)
        .map(|i| format!("  A udp.dport == {} => drop, n = n + {i}\n", 1000 + i))
        .collect();
    let p = program(&with_table("flow ip.src\nregisters n = 0\n", &rows));
    let problems = check_limits(&p).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("eBPF instructions (limit 100000)"),
        "{problems:?}"
    );
    assert!(matches!(
        compile(&p, &Options::default()),
        Err(CodegenError::Limits(_))
    ));
}

/// Regression (bench, token bucket): rows 1-3 each loaded `now` and
/// `tmin` and tested `now >= tmin` again. Now the ACTIVE branch tests
/// each condition once and compares `now` from its register.
#[test]
fn tokenbucket_tests_each_condition_once() {
    let out = compile(&tokenbucket(), &Options::default()).unwrap();
    let active: Vec<&str> = out
        .listing
        .lines()
        .skip_while(|l| !l.contains("state ACTIVE"))
        .take_while(|l| !l.contains("matched"))
        .collect();
    let tests: Vec<&&str> = active.iter().filter(|l| l.contains(": if ")).collect();
    assert_eq!(tests.len(), 2, "{active:#?}");
    // Signed, and through a copy of `now` (r8), which no test narrows.
    assert!(tests.iter().all(|l| l.contains("if r1 s")), "{active:#?}");
    assert!(!active.iter().any(|l| l.contains("if r8")), "{active:#?}");
}

#[test]
fn globals_are_in_data_unless_the_map_is_reused() {
    let program = flowstate_lang::compile(
        "program g\nhook xdp\nflow ip.src\nstates A\nglobals total = 7, floor = -2\n\
         default pass\ntable\n  * * => pass, total = total + 1\nend\n",
    )
    .unwrap()
    .program;
    let portable = compile(&program, &Options::default()).unwrap();
    assert!(flowstate_obj::has_section(&portable.object, ".data").unwrap());
    assert!(
        portable.listing.contains("map_value"),
        "{}",
        portable.listing
    );

    let reusing = Options {
        globals_reused: true,
        ..Options::default()
    };
    let reused = compile(&program, &reusing).unwrap();
    assert!(
        !flowstate_obj::has_section(&reused.object, ".data").unwrap(),
        "no bytes a loader would write over the reused map"
    );
    assert!(!reused.listing.contains("map_value"), "{}", reused.listing);
}
