//! Every example program against its capture and against random packets,
//! in the kernel and in the interpreter. Needs root and bpffs: prints
//! `SKIP <test>: <reason>` otherwise.

use std::path::{Path, PathBuf};

use flowstate_difftest::packets::{self, Packet};
use flowstate_difftest::rng::Rng;
use flowstate_difftest::{check, skip};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `(name, source, capture frames as packets)` for every `examples/*.fsm`.
fn examples() -> Vec<(String, String, Vec<Packet>)> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "fsm"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        let capture = path.with_extension("pcap");
        let frames = if capture.exists() {
            flowstate_capture::read_capture(&capture).unwrap()
        } else {
            Vec::new()
        };
        let packets = frames
            .into_iter()
            .map(|f| Packet {
                now: f.time_ns,
                frame: f.data,
            })
            .collect();
        out.push((name, source, packets));
    }
    out
}

#[test]
fn examples_agree_on_their_captures() {
    if skip("examples_agree_on_their_captures") {
        return;
    }
    let all = examples();
    assert!(all.len() >= 2, "expected the example programs");
    for (name, source, packets) in all {
        assert!(!packets.is_empty(), "{name} has no capture");
        let program = flowstate_lang::compile(&source).unwrap().program;
        match check(
            &program,
            &packets,
            &format!("example {name} on its capture"),
        ) {
            Ok(stats) => {
                assert_eq!(stats.packets, packets.len());
                assert!(stats.row_hits > 0, "{name}: no row fired");
                eprintln!("{name}: {stats:?}");
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}

#[test]
fn examples_agree_on_random_packets() {
    if skip("examples_agree_on_random_packets") {
        return;
    }
    for (name, source, _) in examples() {
        let program = flowstate_lang::compile(&source).unwrap().program;
        for seed in 0..20u64 {
            let packets = packets::sequence(&mut Rng::new(seed), 300);
            if let Err(failure) = check(
                &program,
                &packets,
                &format!("example {name}, packet seed {seed}"),
            ) {
                panic!("{failure}");
            }
        }
    }
}
