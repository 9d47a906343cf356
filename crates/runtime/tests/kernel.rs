//! Loads objects written by flowstate-obj into the kernel and runs them
//! with BPF_PROG_TEST_RUN. Needs root and bpffs; prints SKIP otherwise.

mod common;

use common::insn::*;
use common::*;
use flowstate_obj::{
    BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection, StructType,
};
use flowstate_runtime::{load, LoadOptions, ProgramKind, RuntimeError, UpdateMode};

fn flow_entry(state: u32, packets: u64) -> Vec<u8> {
    let mut value = vec![0u8; 16];
    value[0..4].copy_from_slice(&state.to_le_bytes());
    value[8..16].copy_from_slice(&packets.to_le_bytes());
    value
}

fn packets_of(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[8..16].try_into().unwrap())
}

fn count_and_verdict(program: &str, verdicts: [u32; 2]) {
    let loaded = load(&counting_object(), &LoadOptions::default()).unwrap();
    let flows = loaded.map("flows").unwrap();
    let verdict = loaded.map("verdict").unwrap();
    assert_eq!((flows.key_size(), flows.value_size()), (4, 16));
    flows
        .update(
            &FLOW_KEY.to_le_bytes(),
            &flow_entry(3, 0),
            UpdateMode::NoExist,
        )
        .unwrap();
    let packet = udp_packet();

    verdict.array_set(0, &verdicts[0].to_le_bytes()).unwrap();
    let first = loaded.test_run(program, &packet, 1).unwrap();
    assert_eq!(first.retval, verdicts[0]);
    assert_eq!(
        first.data_out, packet,
        "the program does not touch the packet"
    );
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(packets_of(&value), 1);
    assert_eq!(&value[0..4], &3u32.to_le_bytes(), "state untouched");

    verdict.array_set(0, &verdicts[1].to_le_bytes()).unwrap();
    let second = loaded.test_run(program, &packet, 10).unwrap();
    assert_eq!(second.retval, verdicts[1]);
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(packets_of(&value), 11, "one increment per repetition");
    assert_eq!(verdict.array_get(0).unwrap(), verdicts[1].to_le_bytes());

    // A packet for a flow without an entry counts nothing.
    assert!(flows.delete(&FLOW_KEY.to_le_bytes()).unwrap());
    assert!(!flows.delete(&FLOW_KEY.to_le_bytes()).unwrap());
    loaded.test_run(program, &packet, 1).unwrap();
    assert_eq!(flows.keys().unwrap(), Vec::<Vec<u8>>::new());
}

#[test]
fn xdp_counts_in_hash_and_returns_array_verdict() {
    if skip("xdp_counts_in_hash_and_returns_array_verdict") {
        return;
    }
    count_and_verdict("count_xdp", [XDP_DROP, XDP_PASS]);
}

#[test]
fn tc_counts_in_hash_and_returns_array_verdict() {
    if skip("tc_counts_in_hash_and_returns_array_verdict") {
        return;
    }
    count_and_verdict("count_tc", [TC_ACT_SHOT, TC_ACT_OK]);
}

#[test]
fn loaded_lists_programs_maps_and_stats() {
    if skip("loaded_lists_programs_maps_and_stats") {
        return;
    }
    let loaded = load(&counting_object(), &LoadOptions::default()).unwrap();
    let mut programs = loaded.programs();
    programs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        programs,
        [
            ("count_tc".to_string(), ProgramKind::Tc),
            ("count_xdp".to_string(), ProgramKind::Xdp)
        ]
    );
    let mut maps = loaded.map_names();
    maps.sort();
    assert_eq!(maps, ["flows", "verdict"]);
    let stats = loaded.stats("count_xdp").unwrap();
    let verified = stats.verified_insns.expect("kernel reports verified_insns");
    assert!(verified >= 15, "verified {verified} instructions");
    assert!(stats.jited_bytes > 0, "JIT is always on here");
    eprintln!("count_xdp: {stats:?}");
    assert!(matches!(
        loaded.stats("nope"),
        Err(RuntimeError::NoSuchProgram(_))
    ));
    assert!(matches!(
        loaded.map("nope"),
        Err(RuntimeError::NoSuchMap(_))
    ));
}

#[test]
fn hash_iteration_and_update_modes() {
    if skip("hash_iteration_and_update_modes") {
        return;
    }
    let loaded = load(&counting_object(), &LoadOptions::default()).unwrap();
    let flows = loaded.map("flows").unwrap();
    for key in 1..=5u32 {
        flows
            .update(
                &key.to_le_bytes(),
                &flow_entry(key, u64::from(key) * 10),
                UpdateMode::Any,
            )
            .unwrap();
    }
    let mut entries = flows.entries().unwrap();
    entries.sort();
    assert_eq!(entries.len(), 5);
    for (key, value) in &entries {
        let key = u32::from_le_bytes(key.as_slice().try_into().unwrap());
        assert_eq!(packets_of(value), u64::from(key) * 10);
    }
    // NoExist on an existing key and Exist on a missing one fail.
    assert!(flows
        .update(&1u32.to_le_bytes(), &flow_entry(0, 0), UpdateMode::NoExist)
        .is_err());
    assert!(flows
        .update(&99u32.to_le_bytes(), &flow_entry(0, 0), UpdateMode::Exist)
        .is_err());
    // Wrong sizes never reach the kernel.
    assert!(matches!(
        flows.lookup(&[1, 2]),
        Err(RuntimeError::WrongSize { what: "key", .. })
    ));
    assert!(matches!(
        flows.update(&1u32.to_le_bytes(), &[0; 3], UpdateMode::Any),
        Err(RuntimeError::WrongSize { what: "value", .. })
    ));
    let verdict = loaded.map("verdict").unwrap();
    assert!(matches!(
        verdict.array_set(1, &0u32.to_le_bytes()),
        Err(RuntimeError::IndexOutOfRange { index: 1, .. })
    ));
    assert!(matches!(
        verdict.array_get(5),
        Err(RuntimeError::IndexOutOfRange { index: 5, .. })
    ));
}

#[test]
fn verifier_rejection_keeps_the_log() {
    if skip("verifier_rejection_keeps_the_log") {
        return;
    }
    // `exit` without setting r0: the verifier refuses to return garbage.
    let mut builder = ObjectBuilder::new();
    builder.add_program(ProgramDef {
        name: "bad".into(),
        section: ProgramSection::Xdp,
        insns: exit(),
        map_relocs: vec![],
    });
    let err = load(&builder.build().unwrap(), &LoadOptions::default()).unwrap_err();
    let RuntimeError::Verifier { program, log, .. } = &err else {
        panic!("expected a verifier error, got {err}");
    };
    assert_eq!(program, "bad");
    assert!(log.contains("R0 !read_ok"), "log: {log}");
    assert!(err.to_string().contains("R0 !read_ok"));
}

/// `r0 = cmpxchg(&flows[7].packets, 0, 5)`, then return the old value.
#[test]
fn cmpxchg_on_map_value_is_accepted() {
    if skip("cmpxchg_on_map_value_is_accepted") {
        return;
    }
    let mut parts = vec![
        st_w(R10, -4, FLOW_KEY as i32),
        mov_reg(R2, R10),
        add_imm(R2, -4),
    ];
    let reloc = slot_of(&parts);
    parts.extend([
        ld_map(R1),
        call(MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, 4),
        mov_reg(R6, R0),
        mov_imm(R0, 0),
        mov_imm(R1, 5),
        cmpxchg_dw(R6, R1, 8),
        exit(),
    ]);
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new(
            "flows",
            MapKind::LruHash,
            BtfType::u32(),
            flow_value(),
            16,
        ))
        .add_program(ProgramDef {
            name: "cas".into(),
            section: ProgramSection::Xdp,
            insns: parts.concat(),
            map_relocs: vec![(reloc, "flows".into())],
        });
    let loaded = load(&builder.build().unwrap(), &LoadOptions::default()).unwrap();
    let flows = loaded.map("flows").unwrap();
    flows
        .update(&FLOW_KEY.to_le_bytes(), &flow_entry(0, 0), UpdateMode::Any)
        .unwrap();
    // First run: 0 == expected, so 5 is stored; the old value 0 comes back.
    assert_eq!(loaded.test_run("cas", &udp_packet(), 1).unwrap().retval, 0);
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(packets_of(&value), 5);
    // Second run: 5 != 0, nothing stored; the current value comes back.
    assert_eq!(loaded.test_run("cas", &udp_packet(), 1).unwrap().retval, 5);
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(packets_of(&value), 5);
}

/// A HASH value with a `bpf_spin_lock`, taken and released around a write:
/// proves the BTF describes the value the way the kernel needs.
#[test]
fn spin_lock_in_hash_value() {
    if skip("spin_lock_in_hash_value") {
        return;
    }
    let value: BtfType = StructType::new("locked_entry")
        .field("lock", BtfType::spin_lock())
        .field("state", BtfType::u32())
        .field("packets", BtfType::u64())
        .into();
    let mut parts = vec![
        st_w(R10, -4, FLOW_KEY as i32),
        mov_reg(R2, R10),
        add_imm(R2, -4),
    ];
    let reloc = slot_of(&parts);
    parts.extend([
        ld_map(R1),
        call(MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, 8),
        mov_reg(R6, R0),
        mov_reg(R1, R6),
        call(SPIN_LOCK),
        st_w(R6, 4, 9), // state = 9, under the lock
        mov_reg(R1, R6),
        call(SPIN_UNLOCK),
        mov_imm(R0, XDP_PASS as i32),
        exit(),
        mov_imm(R0, XDP_DROP as i32),
        exit(),
    ]);
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new(
            "locked",
            MapKind::Hash,
            BtfType::u32(),
            value,
            16,
        ))
        .add_program(ProgramDef {
            name: "lock".into(),
            section: ProgramSection::Xdp,
            insns: parts.concat(),
            map_relocs: vec![(reloc, "locked".into())],
        });
    let loaded = load(&builder.build().unwrap(), &LoadOptions::default()).unwrap();
    let map = loaded.map("locked").unwrap();
    map.update(&FLOW_KEY.to_le_bytes(), &[0; 16], UpdateMode::Any)
        .unwrap();
    assert_eq!(
        loaded.test_run("lock", &udp_packet(), 1).unwrap().retval,
        XDP_PASS
    );
    let stored = map.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(&stored[4..8], &9u32.to_le_bytes());
}

#[test]
fn ring_buffer_lru_per_cpu_and_devmap_maps_load() {
    if skip("ring_buffer_lru_per_cpu_and_devmap_maps_load") {
        return;
    }
    let counters: BtfType = StructType::new("row_counters")
        .field("packets", BtfType::u64())
        .field("bytes", BtfType::u64())
        .into();
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::ring_buf("events", 1 << 16))
        .add_map(MapDef::new(
            "lru",
            MapKind::LruHash,
            BtfType::u32(),
            flow_value(),
            64,
        ))
        .add_map(MapDef::new(
            "counters",
            MapKind::PerCpuArray,
            BtfType::u32(),
            counters,
            4,
        ))
        .add_map(MapDef::new(
            "ports",
            MapKind::DevMap,
            BtfType::u32(),
            BtfType::u32(),
            4,
        ))
        .add_program(constant_program(
            "pass",
            ProgramSection::Xdp,
            XDP_PASS as i32,
        ));
    let loaded = load(&builder.build().unwrap(), &LoadOptions::default()).unwrap();
    let events = loaded.map("events").unwrap();
    assert_eq!((events.map_type(), events.max_entries()), (27, 1 << 16));
    let lru = loaded.map("lru").unwrap();
    assert_eq!(lru.map_type(), 9);
    lru.update(&1u32.to_le_bytes(), &flow_entry(1, 1), UpdateMode::Any)
        .unwrap();
    assert_eq!(lru.keys().unwrap().len(), 1);
    let ports = loaded.map("ports").unwrap();
    assert_eq!(ports.map_type(), 14);

    // Per-CPU: a write sets every CPU's slot; the sum adds them up.
    let counters = loaded.map("counters").unwrap();
    assert!(counters.is_per_cpu());
    let mut slot = Vec::new();
    slot.extend_from_slice(&3u64.to_le_bytes());
    slot.extend_from_slice(&100u64.to_le_bytes());
    counters.array_set(2, &slot).unwrap();
    let cpus = counters
        .lookup_per_cpu(&2u32.to_le_bytes())
        .unwrap()
        .unwrap();
    assert!(!cpus.is_empty());
    assert!(cpus.iter().all(|v| *v == slot));
    let n = cpus.len() as u64;
    assert_eq!(
        counters
            .sum_u64_per_cpu(&2u32.to_le_bytes())
            .unwrap()
            .unwrap(),
        [3 * n, 100 * n]
    );
    assert_eq!(
        counters
            .sum_u64_per_cpu(&0u32.to_le_bytes())
            .unwrap()
            .unwrap(),
        [0, 0]
    );
}

/// Two threads on two CPUs run the counting program on one map at once:
/// the atomic add loses no increment.
#[test]
fn concurrent_test_runs_on_two_cpus() {
    if skip("concurrent_test_runs_on_two_cpus") {
        return;
    }
    let loaded = load(&counting_object(), &LoadOptions::default()).unwrap();
    let flows = loaded.map("flows").unwrap();
    flows
        .update(&FLOW_KEY.to_le_bytes(), &flow_entry(0, 0), UpdateMode::Any)
        .unwrap();
    loaded
        .map("verdict")
        .unwrap()
        .array_set(0, &XDP_PASS.to_le_bytes())
        .unwrap();
    let online = aya::util::online_cpus().map_err(|(_, e)| e).unwrap();
    const REPEAT: u32 = 200_000;
    const CALLS: u32 = 5;
    let packet = udp_packet();
    std::thread::scope(|scope| {
        for cpu in online.iter().take(2).copied() {
            let loaded = &loaded;
            let packet = &packet;
            scope.spawn(move || {
                pin_to_cpu(cpu);
                for _ in 0..CALLS {
                    let result = loaded.test_run("count_xdp", packet, REPEAT).unwrap();
                    assert_eq!(result.retval, XDP_PASS);
                }
            });
        }
    });
    let threads = online.len().min(2) as u64;
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(packets_of(&value), threads * u64::from(REPEAT * CALLS));
}

fn pin_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let ret = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            ret,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What a TC program sees of the `__sk_buff` in a test run.
#[test]
fn tc_test_run_context() {
    if skip("tc_test_run_context") {
        return;
    }
    // __sk_buff offsets: len 0, mark 8, protocol 16, ifindex 40.
    let field = |name: &str, offset: i16| ProgramDef {
        name: name.into(),
        section: ProgramSection::Classifier,
        insns: [ldx_w(R0, R1, offset), exit()].concat(),
        map_relocs: vec![],
    };
    let mut builder = ObjectBuilder::new();
    builder
        .add_program(field("skb_len", 0))
        .add_program(field("skb_mark", 8))
        .add_program(field("skb_protocol", 16))
        .add_program(field("skb_ifindex", 40));
    let loaded = load(&builder.build().unwrap(), &LoadOptions::default()).unwrap();
    let packet = udp_packet();
    let run = |name: &str, ctx: Option<&[u8]>| {
        loaded
            .test_run_with_ctx(name, &packet, ctx, 1)
            .unwrap()
            .retval
    };
    assert_eq!(run("skb_len", None), packet.len() as u32);
    // protocol is in network byte order.
    assert_eq!(run("skb_protocol", None), u32::from(0x0800u16.to_be()));
    assert_eq!(run("skb_ifindex", None), 1, "runs on loopback by default");
    let mut ctx = vec![0u8; 192]; // sizeof(struct __sk_buff)
    ctx[8..12].copy_from_slice(&42u32.to_le_bytes());
    assert_eq!(run("skb_mark", Some(&ctx)), 42);
}

/// Measured figure for the report: ns per iteration of a bare XDP_PASS.
#[test]
fn measure_bare_xdp_pass() {
    if skip("measure_bare_xdp_pass") {
        return;
    }
    let mut builder = ObjectBuilder::new();
    builder.add_program(constant_program(
        "pass",
        ProgramSection::Xdp,
        XDP_PASS as i32,
    ));
    let loaded = load(&builder.build().unwrap(), &LoadOptions::default()).unwrap();
    let packet = udp_packet();
    let result = loaded.test_run("pass", &packet, 1_000_000).unwrap();
    assert_eq!(result.retval, XDP_PASS);
    eprintln!(
        "bare XDP_PASS: {} ns per BPF_PROG_TEST_RUN iteration (repeat=1000000)",
        result.duration_ns
    );
    // Loose bound: catches a program that did not run in the kernel's loop.
    assert!(result.duration_ns < 10_000);
}

/// `RawProgram::load_xdp_object` (the bridge a dispatcher slot's handoff
/// tail-calls is loaded so) relocates the object's map loads as aya does:
/// run on the maps of an aya load of the same object, it counts in the
/// same flows map and returns the verdict the shared array holds. A map
/// the caller does not give is refused with its name.
#[test]
fn an_object_loaded_without_aya_runs_on_the_given_maps() {
    if skip("an_object_loaded_without_aya_runs_on_the_given_maps") {
        return;
    }
    let object = counting_object();
    let loaded = load(&object, &LoadOptions::default()).unwrap();
    let flows = loaded.map("flows").unwrap();
    let verdict = loaded.map("verdict").unwrap();
    let raw = flowstate_runtime::RawProgram::load_xdp_object(
        &object,
        "count_xdp",
        &[("flows", &flows), ("verdict", &verdict)],
    )
    .unwrap();
    flows
        .update(
            &FLOW_KEY.to_le_bytes(),
            &flow_entry(3, 0),
            UpdateMode::NoExist,
        )
        .unwrap();
    let packet = udp_packet();
    for action in [XDP_DROP, XDP_PASS] {
        verdict.array_set(0, &action.to_le_bytes()).unwrap();
        assert_eq!(raw.test_run(&packet).unwrap().retval, action);
    }
    loaded.test_run("count_xdp", &packet, 1).unwrap();
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(packets_of(&value), 3, "both programs count in one map");

    let missing =
        flowstate_runtime::RawProgram::load_xdp_object(&object, "count_xdp", &[("flows", &flows)])
            .unwrap_err()
            .to_string();
    assert!(missing.contains("verdict"), "{missing}");
}
