//! The `flowstate` commands as a user runs them: exit codes, text and JSON
//! output, files written.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use flowstate_capture::{read_capture, synth};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(name: &str) -> String {
    root().join("examples").join(name).display().to_string()
}

fn flowstate() -> Command {
    Command::cargo_bin("flowstate").expect("binary built")
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

#[test]
fn check_summarises_a_valid_program() {
    let out = flowstate()
        .args(["check", &example("portknock.fsm")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("flow key  ip.src (4 bytes)"), "{text}");
    assert!(text.contains("OPEN: idle 30s rollback DEFAULT"), "{text}");
    assert!(text.contains("rows      7"), "{text}");
}

#[test]
fn check_json_reports_errors_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.fsm");
    std::fs::write(
        &bad,
        "program p\nhook xdp\nflow ip.src\nstates A\ntable\n  B * => pass\nend\n",
    )
    .unwrap();
    let out = flowstate()
        .args(["check", "--json", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(6), Some(3))
    );
    assert!(d["message"].as_str().unwrap().contains("unknown state"));

    // The text form shows the caret under the span.
    let out = flowstate()
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.fsm:6:3"), "{err}");
    assert!(err.contains("  B * => pass\n  |   ^"), "{err}");
}

#[test]
fn replay_json_gives_the_scripted_verdicts_for_portknock() {
    let script = synth::portknock_script();
    let out = flowstate()
        .args([
            "replay",
            "--json",
            &example("portknock.fsm"),
            &example("portknock.pcap"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    assert_eq!(
        lines.len(),
        script.len() + 1,
        "one line per packet + summary"
    );
    for (i, (line, step)) in lines.iter().zip(&script).enumerate() {
        assert_eq!(line["index"], i);
        for key in ["verdict", "state_before", "state_after", "row", "key"] {
            assert!(line.get(key).is_some(), "packet {i} lacks {key}");
        }
        let passes = line["verdict"] == "pass";
        assert_eq!(passes, step.passes, "packet {i} ({}): {line}", step.note);
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"], true);
    assert_eq!(summary["packets"], script.len());
}

#[test]
fn replay_text_names_rows_by_source_line() {
    let out = flowstate()
        .args([
            "replay",
            &example("portknock.fsm"),
            &example("portknock.pcap"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DEFAULT -> STEP_1"), "{text}");
    assert!(text.contains("STEP_3 -> OPEN"), "{text}");
    assert!(text.contains("by row:"), "{text}");
    assert!(text.contains("default"), "{text}");
}

#[test]
fn replay_writes_passed_and_dropped_packets() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass.pcap");
    let drop = dir.path().join("drop.pcap");
    let out = flowstate()
        .args([
            "replay",
            "--quiet",
            &example("tokenbucket.fsm"),
            &example("tokenbucket.pcap"),
            "--write-pass",
            pass.to_str().unwrap(),
            "--write-drop",
            drop.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = read_capture(Path::new(&example("tokenbucket.pcap"))).unwrap();
    let passed = read_capture(&pass).unwrap();
    let dropped = read_capture(&drop).unwrap();
    assert_eq!(passed.len() + dropped.len(), all.len());
    // The burst of 100 from host A passes 6, then one token per second.
    let source = |f: &flowstate_capture::Frame| {
        flowstate_wire::parse(&f.data, 1).get(flowstate_wire::Field::IpSrc)
    };
    let burst_passed = passed
        .iter()
        .filter(|f| f.time_ns == all[0].time_ns && source(f) == source(&all[0]))
        .count();
    assert_eq!(burst_passed, 6);
    assert!(dropped.iter().all(|f| all.iter().any(|a| a.data == f.data)));
}

#[test]
fn graph_draws_svg_and_dot() {
    let out = flowstate()
        .args(["graph", &example("portknock.fsm")])
        .output()
        .unwrap();
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{svg}");
    for state in ["DEFAULT", "STEP_1", "OPEN"] {
        assert!(svg.contains(state));
    }
    let out = flowstate()
        .args(["graph", "--format", "dot", &example("tokenbucket.fsm")])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.contains("digraph"), "{dot}");
    assert!(dot.contains("ACTIVE"));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = flowstate()
        .args(["check", "/nonexistent/p.fsm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("flowstate: cannot read /nonexistent/p.fsm"),
        "{err}"
    );
}

#[test]
fn compile_writes_an_elf_object_and_disasm_names_source_lines() {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("pk.o");
    let out = flowstate()
        .args([
            "compile",
            &example("portknock.fsm"),
            "-o",
            obj.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&obj).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    let out = flowstate()
        .args(["disasm", &example("portknock.fsm")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Row of line 15 (`OPEN tcp.dport == 22 => pass`) is annotated.
    assert!(text.contains("; line 15"), "{text}");
    assert!(text.contains("exit"), "{text}");
}

#[test]
fn verify_reports_verifier_acceptance() {
    if flowstate_testkit::skip_if(
        "verify_reports_verifier_acceptance",
        flowstate_testkit::not_root(),
    ) {
        return;
    }
    for (file, hook) in [("portknock.fsm", "xdp"), ("tokenbucket.fsm", "tc")] {
        let out = flowstate()
            .args(["verify", "--json", "--hook", hook, &example(file)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["accepted"], true);
        assert!(v["verified_insns"].as_u64().unwrap() > 0);
    }
}

/// An ARP responder for 10.0.0.1: its replies go to `--write-tx` as the
/// kernel would send them; other packets pass unchanged.
#[test]
fn replay_writes_rewritten_replies_to_write_tx() {
    use flowstate_wire::build::{mac, PacketBuilder};
    use flowstate_wire::{parse, Field};
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("arp.fsm");
    std::fs::write(
        &program,
        "program arp\nhook xdp\nflow eth.src\nstates S\ndefault pass\ntable\n\
         * arp.op == 1, arp.tpa == 10.0.0.1 => tx, arp.op = 2, arp.tha = arp.sha, \
         arp.tpa = arp.spa, arp.sha = 02:00:00:00:00:aa, arp.spa = 10.0.0.1, \
         eth.dst = eth.src, eth.src = 02:00:00:00:00:aa\nend\n",
    )
    .unwrap();
    let frames: Vec<flowstate_capture::Frame> = [
        PacketBuilder::eth(mac(7), [0xff; 6]).arp_request([10, 0, 0, 7], [10, 0, 0, 1]),
        PacketBuilder::eth(mac(7), [0xff; 6]).arp_request([10, 0, 0, 7], [10, 0, 0, 2]),
        PacketBuilder::eth(mac(7), mac(1))
            .ipv4([10, 0, 0, 7], [10, 0, 0, 1])
            .udp(1, 2),
    ]
    .iter()
    .enumerate()
    .map(|(i, b)| flowstate_capture::Frame {
        time_ns: i as i64 * 1000,
        data: b.build(),
        ifindex: 1,
    })
    .collect();
    let capture = dir.path().join("in.pcap");
    flowstate_capture::write_capture(&capture, &frames).unwrap();
    let (tx, pass) = (dir.path().join("tx.pcap"), dir.path().join("pass.pcap"));
    let out = flowstate()
        .args(["replay", "--quiet"])
        .args([&program, &capture])
        .arg("--write-tx")
        .arg(&tx)
        .arg("--write-pass")
        .arg(&pass)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = read_capture(&tx).unwrap();
    assert_eq!(sent.len(), 1);
    let reply = parse(&sent[0].data, 1);
    assert_eq!(reply.get(Field::ArpOp), Some(2));
    assert_eq!(reply.get(Field::ArpSpa), Some(0x0a00_0001));
    assert_eq!(reply.get(Field::ArpTpa), Some(0x0a00_0007));
    assert_eq!(reply.get(Field::EthDst), Some(0x0200_0000_0007));
    assert_eq!(reply.get(Field::EthSrc), Some(0x0200_0000_00aa));
    let passed = read_capture(&pass).unwrap();
    let passed: Vec<&[u8]> = passed.iter().map(|f| f.data.as_slice()).collect();
    assert_eq!(passed, [&frames[1].data[..], &frames[2].data[..]]);
}
