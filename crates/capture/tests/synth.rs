//! The synthetic traces tell the stories their docs claim, and the
//! committed example captures are exactly what the generators make.

use std::collections::HashMap;
use std::path::PathBuf;

use flowstate_capture::synth::{
    self, example_captures, host, mixed_load, portknock_demo, portknock_script, token_burst,
    tokenbucket_demo, KNOCKS, MS, SEC,
};
use flowstate_capture::{pcap_bytes, read_capture, Frame};
use flowstate_wire::{parse, Field};

fn field(frame: &Frame, f: Field) -> Option<u128> {
    parse(&frame.data, frame.ifindex).get(f)
}

/// The port-knocking program of DESIGN.md §4, written out by hand: the
/// oracle for the `passes` flags of the script.
fn portknock_verdicts(frames: &[Frame]) -> Vec<bool> {
    const OPEN: u8 = 4;
    // ip.src -> (state, last seen)
    let mut table: HashMap<u128, (u8, i64)> = HashMap::new();
    frames
        .iter()
        .map(|frame| {
            let h = parse(&frame.data, frame.ifindex);
            let Some(src) = h.get(Field::IpSrc) else {
                return true; // default pass
            };
            let now = frame.time_ns;
            let mut state = table.get(&src).map_or(0, |&(s, seen)| {
                if s == OPEN && now - seen > 30 * SEC {
                    0
                } else {
                    s
                }
            });
            let udp = h.get(Field::UdpDport);
            let pass = match state {
                0..=3 if udp == Some(u128::from(KNOCKS[usize::from(state)])) => {
                    state += 1;
                    false
                }
                OPEN => h.get(Field::TcpDport) == Some(22),
                _ => {
                    state = 0;
                    false
                }
            };
            table.insert(src, (state, now));
            pass
        })
        .collect()
}

#[test]
fn the_portknock_script_verdicts_follow_the_design_program() {
    let script = portknock_script();
    let frames: Vec<Frame> = script.iter().map(|s| s.frame.clone()).collect();
    let expected: Vec<bool> = script.iter().map(|s| s.passes).collect();
    assert_eq!(portknock_verdicts(&frames), expected);
    assert_eq!(portknock_demo(), frames);
}

#[test]
fn the_portknock_story_has_every_character() {
    let frames = portknock_demo();
    assert!(frames.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    assert_eq!(frames[0].time_ns, 0);
    let from = |n: u32| u128::from(u32::from(host(n)));
    let count = |pred: &dyn Fn(&Frame) -> bool| frames.iter().filter(|f| pred(f)).count();
    // A knocks in order and then reaches SSH.
    let a_ports: Vec<u128> = frames
        .iter()
        .filter(|f| field(f, Field::IpSrc) == Some(from(1)))
        .filter_map(|f| field(f, Field::UdpDport).or(field(f, Field::TcpDport)))
        .collect();
    assert_eq!(&a_ports[..5], &[1111, 2222, 3333, 4444, 22]);
    // B never knocks.
    assert_eq!(
        count(&|f| field(f, Field::IpSrc) == Some(from(2)) && field(f, Field::UdpDport).is_some()),
        0
    );
    // Non-IP traffic: ARP.
    assert!(count(&|f| field(f, Field::EthType) == Some(0x0806)) >= 2);
    // The last SSH attempt of A comes more than 30 s after A's previous packet.
    let a_times: Vec<i64> = frames
        .iter()
        .filter(|f| field(f, Field::IpSrc) == Some(from(1)))
        .map(|f| f.time_ns)
        .collect();
    let n = a_times.len();
    assert!(a_times[n - 1] - a_times[n - 2] > 30 * SEC);
}

#[test]
fn token_burst_spaces_packets_of_one_source() {
    let frames = token_burst(host(9), 5, 7 * MS, 3 * MS);
    let times: Vec<i64> = frames.iter().map(|f| f.time_ns).collect();
    assert_eq!(times, vec![7 * MS, 10 * MS, 13 * MS, 16 * MS, 19 * MS]);
    for f in &frames {
        assert_eq!(field(f, Field::IpSrc), Some(u128::from(u32::from(host(9)))));
        assert_eq!(field(f, Field::IpProto), Some(17));
    }
    assert!(token_burst(host(1), 0, 0, 1).is_empty());
}

/// The token bucket of DESIGN.md §4 (B = 5, Q = 1 s), written out by hand.
fn tokenbucket_verdicts(frames: &[Frame]) -> Vec<(u128, bool)> {
    let (b, q) = (5, SEC);
    let mut windows: HashMap<u128, (i64, i64)> = HashMap::new();
    frames
        .iter()
        .map(|f| {
            let src = field(f, Field::IpSrc).unwrap();
            let now = f.time_ns;
            let pass = match windows.get(&src).copied() {
                None => {
                    windows.insert(src, (now - (b - 1) * q, now + q));
                    true
                }
                Some((tmin, tmax)) if now >= tmin && now <= tmax => {
                    windows.insert(src, (tmin + q, tmax + q));
                    true
                }
                Some((tmin, _)) if now >= tmin => {
                    windows.insert(src, (now - (b - 1) * q, now + q));
                    true
                }
                Some(_) => false,
            };
            (src, pass)
        })
        .collect()
}

#[test]
fn the_tokenbucket_trace_passes_six_of_the_burst_then_one_per_second() {
    let frames = tokenbucket_demo();
    let verdicts = tokenbucket_verdicts(&frames);
    let a = u128::from(u32::from(host(1)));
    let a_verdicts: Vec<bool> = verdicts.iter().filter(|v| v.0 == a).map(|v| v.1).collect();
    assert_eq!(a_verdicts.len(), 140);
    assert_eq!(a_verdicts[..100].iter().filter(|&&p| p).count(), 6);
    assert!(a_verdicts[..6].iter().all(|&p| p));
    // Steady part: one packet in four (every Q).
    let steady = &a_verdicts[100..];
    assert_eq!(steady.iter().filter(|&&p| p).count(), 10);
    assert!(steady.chunks(4).all(|c| c == [true, false, false, false]));
    // The light source always passes.
    assert!(verdicts.iter().filter(|v| v.0 != a).all(|v| v.1));
}

#[test]
fn mixed_load_is_deterministic_and_covers_the_mix() {
    let one = mixed_load(20_000, 50, 7);
    assert_eq!(one, mixed_load(20_000, 50, 7));
    assert_ne!(one, mixed_load(20_000, 50, 8));
    assert_eq!(one.len(), 20_000);
    assert!(one.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    // About 1 µs apart on average.
    let span = one.last().unwrap().time_ns;
    assert!((15_000_000..25_000_000).contains(&span), "{span}");

    let mut sources = std::collections::HashSet::new();
    let (mut knocks, mut ssh, mut arp, mut other) = (0, 0, 0, 0);
    for f in &one {
        let h = parse(&f.data, 1);
        if let Some(src) = h.get(Field::IpSrc) {
            sources.insert(src);
        }
        match (h.get(Field::UdpDport), h.get(Field::TcpDport)) {
            (Some(p), _) if KNOCKS.iter().any(|&k| u128::from(k) == p) => knocks += 1,
            (_, Some(22)) => ssh += 1,
            _ if h.get(Field::EthType) == Some(0x0806) => arp += 1,
            _ => other += 1,
        }
    }
    assert_eq!(sources.len(), 50);
    assert!(sources
        .iter()
        .all(|&s| (0x0a00_0001..=0x0a00_0032).contains(&s)));
    for (name, n) in [
        ("knocks", knocks),
        ("ssh", ssh),
        ("arp", arp),
        ("other", other),
    ] {
        assert!(n > 500, "{name}: {n}");
    }
    // Zero flows still means one source.
    assert_eq!(mixed_load(3, 0, 1).len(), 3);
}

#[test]
fn splitmix_matches_its_reference_sequence() {
    // First outputs for seed 0 from the published reference implementation.
    let mut rng = synth::SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    let mut rng = synth::SplitMix64::new(1);
    assert!((0..1000).all(|_| rng.below(10) < 10));
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn committed_example_captures_equal_the_generators() {
    for (name, frames) in example_captures() {
        let path = examples_dir().join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p flowstate-capture --example gen-captures`",
                path.display()
            )
        });
        assert!(
            committed == pcap_bytes(&frames).unwrap(),
            "{} differs from its generator; run `cargo run -p flowstate-capture --example gen-captures`",
            path.display()
        );
        assert_eq!(read_capture(&path).unwrap(), frames);
    }
}
