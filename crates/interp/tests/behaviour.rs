//! The reference interpreter against the behaviours DESIGN.md and the seeds
//! promise: port knocking, the token bucket, update scope, timeouts, the
//! full-table policies and entry elision.

use std::net::Ipv4Addr;

use flowstate_interp::{DefaultReason, Machine};
use flowstate_lang::ir::Program;
use flowstate_wire::build::{mac, PacketBuilder};

const SECOND: i64 = 1_000_000_000;

fn program(text: &str) -> Program {
    match flowstate_lang::compile(text) {
        Ok(c) => c.program,
        Err(d) => panic!("test program does not compile: {d:#?}"),
    }
}

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn example(name: &str) -> Program {
    let text = std::fs::read_to_string(examples_dir().join(name)).expect("example exists");
    program(&text)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn udp(src: u8, dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(src as u32), mac(100))
        .ipv4(ip(src), ip(100))
        .udp(40000, dport)
        .build()
}

fn tcp(src: u8, dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(src as u32), mac(100))
        .ipv4(ip(src), ip(100))
        .tcp(40000, dport, 0x02)
        .build()
}

fn verdict(m: &mut Machine, frame: &[u8], now: i64) -> &'static str {
    m.process(frame, 1, now).action.verdict_name()
}

fn knock(m: &mut Machine, src: u8, ports: &[u16], start: i64) -> i64 {
    let mut t = start;
    for &p in ports {
        assert_eq!(verdict(m, &udp(src, p), t), "drop", "knocks are dropped");
        t += SECOND / 10;
    }
    t
}

#[test]
fn portknock_right_sequence_opens_ssh_for_that_source_only() {
    let p = example("portknock.fsm");
    let mut m = Machine::new(&p);
    assert_eq!(
        verdict(&mut m, &tcp(1, 22), 0),
        "drop",
        "closed before knocking"
    );
    let t = knock(&mut m, 1, &[1111, 2222, 3333, 4444], SECOND);
    assert_eq!(
        verdict(&mut m, &tcp(1, 22), t),
        "pass",
        "open after knocking"
    );
    assert_eq!(verdict(&mut m, &tcp(1, 22), t + 1), "pass", "stays open");
    assert_eq!(
        verdict(&mut m, &tcp(2, 22), t + 2),
        "drop",
        "other source closed"
    );
    assert_eq!(
        verdict(&mut m, &tcp(1, 80), t + 3),
        "drop",
        "only port 22 opens"
    );
}

#[test]
fn portknock_wrong_port_or_order_does_not_open() {
    let p = example("portknock.fsm");
    let mut m = Machine::new(&p);
    let t = knock(&mut m, 1, &[1111, 2222, 3334, 4444], 0);
    assert_eq!(verdict(&mut m, &tcp(1, 22), t), "drop", "wrong port");
    let t = knock(&mut m, 2, &[2222, 1111, 3333, 4444], t);
    assert_eq!(verdict(&mut m, &tcp(2, 22), t), "drop", "wrong order");
    // A knock from another source in the middle breaks nothing for source 3,
    // but source 4's knocks do not count for source 3.
    let t = knock(&mut m, 3, &[1111, 2222], t);
    let t = knock(&mut m, 4, &[3333, 4444], t);
    assert_eq!(
        verdict(&mut m, &tcp(3, 22), t),
        "drop",
        "knocks are per source"
    );
    assert_eq!(
        verdict(&mut m, &tcp(4, 22), t),
        "drop",
        "knocks are per source"
    );
}

#[test]
fn portknock_open_state_rolls_back_after_idle_timeout() {
    let p = example("portknock.fsm");
    let open = p.state_by_name("OPEN").unwrap();
    let idle = p.states[open.0 as usize].timeout.unwrap().idle_ns.unwrap();
    let mut m = Machine::new(&p);
    let t = knock(&mut m, 1, &[1111, 2222, 3333, 4444], 0);
    assert_eq!(verdict(&mut m, &tcp(1, 22), t), "pass");
    // Just inside the timeout the flow is still open and the clock restarts.
    assert_eq!(verdict(&mut m, &tcp(1, 22), t + idle), "pass");
    let step = m.process(&tcp(1, 22), 1, t + 2 * idle + 1);
    assert_eq!(step.action.verdict_name(), "drop", "closed after idling");
    assert_eq!(step.state_before, p.state_by_name("DEFAULT"));
}

#[test]
fn portknock_seed_table_verdicts() {
    // The seed (openstate-with-ebpf.md): knocks are dropped and advance the
    // state; any other packet sends the flow back to DEFAULT.
    let p = example("portknock.fsm");
    let mut m = Machine::new(&p);
    let s = |name: &str| p.state_by_name(name);
    let step = m.process(&udp(1, 1111), 1, 0);
    assert_eq!(
        (step.state_before, step.state_after),
        (s("DEFAULT"), s("STEP_1"))
    );
    let step = m.process(&udp(1, 2222), 1, 1);
    assert_eq!(
        (step.state_before, step.state_after),
        (s("STEP_1"), s("STEP_2"))
    );
    let step = m.process(&udp(1, 9999), 1, 2);
    assert_eq!(step.action.verdict_name(), "drop");
    assert_eq!(step.state_after, s("DEFAULT"), "a wrong knock resets");
    assert!(m.table().is_empty(), "a flow back in DEFAULT is not stored");
    // Non-IP traffic has no ip.src: default verdict, no state.
    let arp = PacketBuilder::eth(mac(1), mac(2))
        .arp_request(ip(1), ip(2))
        .build();
    let step = m.process(&arp, 1, 3);
    assert_eq!(step.default_reason, Some(DefaultReason::NoKey));
    assert_eq!(step.action.verdict_name(), "pass");
}

/// Passed packets of a burst of `n` packets all at `now = 0`, then one packet
/// every `gap` ns, through the token bucket example.
fn bucket_passes(p: &Program, times: &[i64]) -> Vec<bool> {
    let mut m = Machine::new(p);
    let frame = udp(1, 5000);
    times
        .iter()
        .map(|&t| verdict(&mut m, &frame, t) == "pass")
        .collect()
}

#[test]
fn token_bucket_burst_passes_six_then_one_per_second() {
    let p = example("tokenbucket.fsm");
    let burst = vec![10 * SECOND; 100];
    let passed = bucket_passes(&p, &burst);
    assert_eq!(passed.iter().filter(|&&x| x).count(), 6);
    assert!(passed[..6].iter().all(|&x| x), "the first six pass");

    // The burst keeps coming: 10 packets per second for 5 seconds.
    let mut times = burst.clone();
    for i in 1..=50 {
        times.push(10 * SECOND + i * SECOND / 10);
    }
    let passed = bucket_passes(&p, &times);
    let later = passed[100..].iter().filter(|&&x| x).count();
    assert_eq!(later, 5, "one token per second while the burst continues");
}

/// The bucket's definition, independently of the program: B tokens, one new
/// token every Q, the first packet opens a full bucket without taking one.
/// Returns how many of `times` (sorted) pass.
fn bucket_by_definition(b: i64, q: i64, times: &[i64]) -> usize {
    let mut passed = 0;
    let mut tokens = 0i64;
    let mut last_refill = 0i64;
    for (i, &t) in times.iter().enumerate() {
        if i == 0 {
            passed += 1;
            tokens = b;
            last_refill = t;
            continue;
        }
        let earned = (t - last_refill) / q;
        if earned > 0 {
            tokens = (tokens + earned).min(b);
            last_refill += earned * q;
        }
        if tokens > 0 {
            tokens -= 1;
            passed += 1;
        }
    }
    passed
}

#[test]
fn token_bucket_at_200k_tokens_per_second_matches_the_definition() {
    let text = std::fs::read_to_string(examples_dir().join("tokenbucket.fsm"))
        .unwrap()
        .replace("const Q = 1s", "const Q = 5us");
    let p = program(&text);
    // Saturating traffic: one packet every 1.3 us for 2 s (about 770 kpps
    // offered against 200,000 tokens per second).
    let times: Vec<i64> = (0..(2 * SECOND / 1300))
        .map(|i| SECOND + i * 1300)
        .collect();
    let passed = bucket_passes(&p, &times).iter().filter(|&&x| x).count();
    let expected = bucket_by_definition(5, 5_000, &times);
    let error = (passed as f64 - expected as f64).abs() / expected as f64;
    assert!(
        error <= 0.0001,
        "passed {passed}, the bucket's definition gives {expected} ({:.5} % off)",
        error * 100.0
    );
    // And both are 200,000 per second plus the burst, within 0.01 %.
    let ideal = 2 * 200_000 + 5;
    assert!((passed as f64 - ideal as f64).abs() / (ideal as f64) < 0.0001);
}

#[test]
fn update_scope_learning_switch() {
    // Look up by destination, write by source: the table learns where each
    // MAC lives from the packets it sends.
    let p = program(
        "program learn\nhook xdp\nflow eth.dst\nupdate eth.src\nstates UNKNOWN, KNOWN\n\
         registers port = 0\ndefault pass\n\
         table\n  * * => pass, port = pkt.ifindex, next KNOWN\nend\n",
    );
    let mut m = Machine::new(&p);
    let a_to_b = PacketBuilder::eth(mac(1), mac(2))
        .ipv4(ip(1), ip(2))
        .build();
    let b_to_a = PacketBuilder::eth(mac(2), mac(1))
        .ipv4(ip(2), ip(1))
        .build();
    let step = m.process(&a_to_b, 7, 0);
    let unknown = p.state_by_name("UNKNOWN");
    let known = p.state_by_name("KNOWN");
    assert_eq!(step.state_before, unknown, "B was never seen as a source");
    let step = m.process(&b_to_a, 9, 1);
    assert_eq!(
        step.state_before, known,
        "A was learned from its first packet"
    );
    let table = m.table().sorted();
    assert_eq!(table.len(), 2);
    let ports: Vec<i64> = table.iter().map(|(_, e)| e.registers[0]).collect();
    assert_eq!(
        ports,
        vec![7, 9],
        "A on port 7, B on port 9 (keys sorted by MAC)"
    );
}

#[test]
fn refuse_policy_gives_new_flows_the_default_without_state() {
    let p = program(
        "program cap\nhook xdp\nflow ip.src\nstates NEW, SEEN\nflows 2 refuse\ndefault drop\n\
         table\n  * * => pass, next SEEN\nend\n",
    );
    let mut m = Machine::new(&p);
    for src in 1..=2 {
        assert_eq!(verdict(&mut m, &udp(src, 1), src as i64), "pass");
    }
    let step = m.process(&udp(3, 1), 1, 3);
    assert_eq!(step.default_reason, Some(DefaultReason::TableFull));
    assert_eq!(step.action.verdict_name(), "drop");
    assert_eq!(m.table().len(), 2);
    assert_eq!(verdict(&mut m, &udp(1, 1), 4), "pass", "known flows go on");
}

#[test]
fn evict_policy_replaces_the_least_recently_seen_flow() {
    let p = program(
        "program cap\nhook xdp\nflow ip.src\nstates NEW, SEEN\nflows 2 evict\ndefault drop\n\
         table\n  * * => pass, next SEEN\nend\n",
    );
    let mut m = Machine::new(&p);
    m.process(&udp(1, 1), 1, 1);
    m.process(&udp(2, 1), 1, 2);
    m.process(&udp(1, 1), 1, 3); // 1 is now more recent than 2
    let step = m.process(&udp(3, 1), 1, 4);
    assert_eq!(step.action.verdict_name(), "pass");
    let evicted: Vec<String> = step
        .evicted
        .iter()
        .map(|k| k.display(&p.lookup_key))
        .collect();
    assert_eq!(evicted, ["10.0.0.2"]);
    assert_eq!(m.table().len(), 2);
}

/// `flows 4 evict`, one row that always writes (and counts) the flow.
const EVICT_4: &str = "program cap\nhook xdp\nflow ip.src\nstates NEW, SEEN\nregisters n = 0\n\
    flows 4 evict\ndefault drop\ntable\n  * * => pass, n = n + 1, next SEEN\nend\n";

/// Issue 7's scenario: sources 1 2 3 4 1 5 6 1 7 5 6 through `flows 4 evict`.
#[test]
fn evict_scenario_removes_exactly_2_3_4() {
    let p = program(EVICT_4);
    let mut m = Machine::new(&p);
    let sources = [1u8, 2, 3, 4, 1, 5, 6, 1, 7, 5, 6];
    let mut evictions = Vec::new();
    for (t, &src) in sources.iter().enumerate() {
        let step = m.process(&udp(src, 1), 1, t as i64);
        assert_eq!(step.action.verdict_name(), "pass", "packet {t}: admitted");
        assert!(m.table().len() <= 4);
        for victim in &step.evicted {
            evictions.push((t, victim.display(&p.lookup_key)));
        }
    }
    let at = |t: usize, src: &str| (t, src.to_string());
    assert_eq!(
        evictions,
        [at(5, "10.0.0.2"), at(6, "10.0.0.3"), at(8, "10.0.0.4")],
        "each new flow evicts the least recently seen one, and only then"
    );
    let table: Vec<(String, i64)> = m
        .table()
        .sorted()
        .iter()
        .map(|(k, e)| (k.display(&p.lookup_key), e.registers[0]))
        .collect();
    let flow = |src: &str, n: i64| (src.to_string(), n);
    assert_eq!(
        table,
        [
            flow("10.0.0.1", 3),
            flow("10.0.0.5", 2),
            flow("10.0.0.6", 2),
            flow("10.0.0.7", 1)
        ]
    );
}

#[test]
fn chosen_victims_are_evicted_only_when_a_new_flow_is_written() {
    let p = program(EVICT_4);
    let mut m = Machine::new(&p);
    for src in 1..=4 {
        m.process(&udp(src, 1), 1, i64::from(src));
    }
    let key = |src: u8| {
        let headers = flowstate_wire::parse(&udp(src, 1), 1);
        flowstate_interp::Key::pack(&p.lookup_key, &headers).unwrap()
    };
    // An existing flow: nothing is evicted, whatever the caller chose.
    let step = m.process_evicting(&udp(2, 1), 1, 5, &[key(4)]);
    assert!(step.evicted.is_empty());
    // A new flow, with two victims that are not the least recently seen
    // (that would be 1): both go, nothing else, and the packet's own
    // verdict and entry are unaffected.
    let step = m.process_evicting(&udp(5, 1), 1, 6, &[key(4), key(2)]);
    assert_eq!(step.evicted, [key(4), key(2)]);
    assert_eq!(step.action.verdict_name(), "pass");
    assert_eq!(m.table().len(), 3);
    assert_eq!(m.table().get(&key(5)).unwrap().registers, [1]);
    // An evicted flow reads as new.
    let step = m.process(&udp(2, 1), 1, 7);
    assert_eq!(step.state_before, p.state_by_name("NEW"));
    assert_eq!(m.table().get(&key(2)).unwrap().registers, [1]);
}

#[test]
fn with_an_update_key_the_flow_read_may_be_the_victim() {
    // Look up by destination, write by source: inserting the source may
    // evict the destination's flow, which the packet has already read.
    let p = program(
        "program learn\nhook xdp\nflow eth.dst\nupdate eth.src\nstates UNKNOWN, KNOWN\n\
         flows 1 evict\ndefault drop\ntable\n  KNOWN * => tx\n  * * => pass, next KNOWN\nend\n",
    );
    let mut m = Machine::new(&p);
    let frame = |src: u32, dst: u32| {
        PacketBuilder::eth(mac(src), mac(dst))
            .ipv4(ip(1), ip(2))
            .build()
    };
    m.process(&frame(2, 9), 1, 0); // learns 2
    let step = m.process(&frame(1, 2), 1, 1); // reads 2 (KNOWN), writes 1
    assert_eq!(step.action.verdict_name(), "tx", "decided on the flow read");
    let two = flowstate_interp::Key::pack(&p.update_key, &flowstate_wire::parse(&frame(2, 9), 1));
    assert_eq!(step.evicted, [two.unwrap()], "the flow it read");
    assert_eq!(m.table().len(), 1);
    assert_eq!(
        m.table().sorted()[0].1.state,
        p.state_by_name("KNOWN").unwrap()
    );
}

#[test]
fn hard_timeout_counts_from_creation_and_rollback_state_is_honoured() {
    let p = program(
        "program hard\nhook xdp\nflow ip.src\nstates A, B, C\n\
         timeout B hard 10s rollback C\ndefault pass\n\
         table\n  A * => pass, next B\n  B * => pass\n  C * => drop\nend\n",
    );
    let mut m = Machine::new(&p);
    m.process(&udp(1, 1), 1, 0);
    for t in 1..=10 {
        // Traffic keeps the flow busy but the hard timeout still fires.
        assert_eq!(verdict(&mut m, &udp(1, 1), t * SECOND), "pass");
    }
    let step = m.process(&udp(1, 1), 1, 10 * SECOND + 1);
    assert_eq!(step.state_before, p.state_by_name("C"));
    assert_eq!(step.action.verdict_name(), "drop");
}

#[test]
fn no_matching_row_writes_nothing() {
    let p = program(
        "program nm\nhook xdp\nflow ip.src\nstates A, B\ntimeout B idle 5s\ndefault drop\n\
         table\n  A udp.dport == 1 => pass, next B\n  B udp.dport == 2 => pass\nend\n",
    );
    let mut m = Machine::new(&p);
    m.process(&udp(1, 1), 1, 0);
    let before = m.table().sorted()[0].1.clone();
    let step = m.process(&udp(1, 9), 1, 4 * SECOND);
    assert_eq!(step.default_reason, Some(DefaultReason::NoRowMatched));
    assert_eq!(m.table().sorted()[0].1, &before, "last-seen unchanged");
    // So the idle timeout still counts from the packet at 0.
    let step = m.process(&udp(1, 2), 1, 5 * SECOND + 1);
    assert_eq!(step.state_before, p.state_by_name("A"));
}

#[test]
fn updates_are_parallel_and_globals_count() {
    let p = program(
        "program par\nhook xdp\nflow ip.src\nstates S\nregisters a = 1, b = 2\n\
         globals total = 0\ndefault pass\n\
         table\n  * * => pass, a = b, b = a, total = total + pkt.len\nend\n",
    );
    let mut m = Machine::new(&p);
    let frame = udp(1, 1);
    m.process(&frame, 1, 0);
    assert_eq!(m.table().sorted()[0].1.registers, vec![2, 1], "swapped");
    m.process(&frame, 1, 1);
    assert!(
        m.table().is_empty(),
        "back to initial registers: not stored"
    );
    assert_eq!(m.globals(), &[2 * frame.len() as i64]);
    assert_eq!(m.row_hits()[0].packets, 2);
    assert_eq!(m.row_hits()[0].bytes, 2 * frame.len() as u64);
}

#[test]
fn row_reading_an_absent_field_does_not_match() {
    let p = program(
        "program abs\nhook xdp\nflow ip.src\nstates S\nregisters r = 0\ndefault drop\n\
         table\n  * * => pass, r = tcp.dport\nend\n",
    );
    let mut m = Machine::new(&p);
    assert_eq!(
        verdict(&mut m, &udp(1, 1), 0),
        "drop",
        "UDP has no tcp.dport"
    );
    assert_eq!(verdict(&mut m, &tcp(1, 22), 0), "pass");
}
