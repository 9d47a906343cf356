//! `flowstate replay A.fsm B.fsm CAPTURE`: a capture through a chain in the
//! interpreter, and `--share-table`.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use flowstate_capture::read_capture;
use serde_json::Value;

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .display()
        .to_string()
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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_chain_hands_on_passed_packets_and_stops_at_any_other_verdict() {
    // The token bucket first (it passes a burst's first few packets),
    // then port knocking (it drops everything the capture sends).
    let (first, second) = (example("tokenbucket.fsm"), example("portknock.fsm"));
    let capture = example("tokenbucket.pcap");
    let out = flowstate()
        .args(["replay", "--json", &first, &second, &capture])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let (summary, packets) = lines.split_last().unwrap();

    // The first function alone gives the same verdicts as the chain's head.
    let alone = flowstate()
        .args(["replay", "--json", &first, &capture])
        .output()
        .unwrap();
    let alone = json_lines(&alone.stdout);
    assert_eq!(alone.len(), lines.len());

    let mut ended = [0u64; 2];
    for (packet, head_alone) in packets.iter().zip(&alone) {
        let functions = packet["functions"].as_array().unwrap();
        assert_eq!(functions[0]["verdict"], head_alone["verdict"], "{packet}");
        assert_eq!(functions[0]["function"], "tokenbucket");
        let ended_by = packet["ended_by"].as_u64().unwrap() as usize;
        assert_eq!(ended_by, functions.len(), "{packet}");
        ended[ended_by - 1] += 1;
        // Every function but the last passed; the chain's verdict is the last's.
        for f in &functions[..functions.len() - 1] {
            assert_eq!(f["verdict"], "pass", "{packet}");
        }
        assert_eq!(packet["verdict"], functions.last().unwrap()["verdict"]);
        if functions.len() == 1 {
            assert_ne!(packet["verdict"], "pass", "{packet}");
        }
    }
    assert!(
        ended[0] > 0 && ended[1] > 0,
        "both functions ended some: {ended:?}"
    );
    let summary_functions = summary["functions"].as_array().unwrap();
    assert_eq!(summary_functions[0]["ended"], ended[0]);
    assert_eq!(summary_functions[1]["ended"], ended[1]);
    assert_eq!(summary["packets"], packets.len());
}

#[test]
fn a_chain_writes_the_packets_the_whole_chain_passed() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass.pcap");
    let drop = dir.path().join("drop.pcap");
    // Passes everything but UDP port 53.
    let no_dns = write(
        dir.path(),
        "nodns.fsm",
        "program nodns\nhook xdp\nflow ip.src\nstates S\ndefault pass\ntable\n  * udp.dport == 53 => drop\nend\n",
    );
    let capture = example("tokenbucket.pcap");
    let args = |chain: &[&str]| {
        let mut all = vec!["replay".to_string(), "--quiet".to_string()];
        all.extend(chain.iter().map(|s| s.to_string()));
        all.extend([
            capture.clone(),
            "--write-pass".into(),
            pass.display().to_string(),
            "--write-drop".into(),
            drop.display().to_string(),
        ]);
        all
    };
    let bucket = example("tokenbucket.fsm");
    let out = flowstate()
        .args(args(&[&bucket, no_dns.to_str().unwrap()]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chained = (read_capture(&pass).unwrap(), read_capture(&drop).unwrap());
    let out = flowstate().args(args(&[&bucket])).output().unwrap();
    assert!(out.status.success());
    let alone = (read_capture(&pass).unwrap(), read_capture(&drop).unwrap());
    let all = read_capture(Path::new(&capture)).unwrap();
    assert_eq!(chained.0.len() + chained.1.len(), all.len());
    // The second function only takes away from what the first passed.
    assert!(chained.0.len() <= alone.0.len());
    assert!(chained
        .0
        .iter()
        .all(|f| alone.0.iter().any(|a| a.data == f.data)));
}

#[test]
fn share_table_needs_the_same_layout_and_names_what_differs() {
    let out = flowstate()
        .args([
            "replay",
            "--quiet",
            &example("tokenbucket.fsm"),
            &example("portknock.fsm"),
            &example("tokenbucket.pcap"),
            "--share-table",
            "portknock=1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the list of states differs"), "{err}");
    assert!(err.contains("--share-table portknock=1"), "{err}");

    let out = flowstate()
        .args([
            "replay",
            "--quiet",
            &example("tokenbucket.fsm"),
            &example("tokenbucket.pcap"),
            "--share-table",
            "1=3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no function 3"), "{err}");
}

#[test]
fn share_table_makes_the_second_function_read_what_the_first_wrote() {
    let dir = tempfile::tempdir().unwrap();
    // The first marks every source SEEN; the second drops SEEN sources.
    let marker = write(
        dir.path(),
        "mark.fsm",
        "program mark\nhook xdp\nflow ip.src\nstates NEW, SEEN\ndefault pass\ntable\n  \
         * * => pass, next SEEN\nend\n",
    );
    let guard = write(
        dir.path(),
        "guard.fsm",
        "program guard\nhook xdp\nflow ip.src\nstates NEW, SEEN\ndefault pass\ntable\n  \
         SEEN * => drop\nend\n",
    );
    let capture = example("tokenbucket.pcap");
    let summary = |share: bool| {
        let mut args = vec![
            "replay",
            "--quiet",
            "--json",
            marker.to_str().unwrap(),
            guard.to_str().unwrap(),
            &capture,
        ];
        if share {
            args.extend(["--share-table", "guard=mark"]);
        }
        let out = flowstate().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&out.stdout).pop().unwrap()
    };
    let packets = read_capture(Path::new(&capture)).unwrap().len();
    let shared = summary(true);
    assert_eq!(shared["by_action"]["drop"]["packets"], packets, "{shared}");
    assert_eq!(shared["functions"][1]["table_of"], 1);
    let apart = summary(false);
    assert_eq!(apart["by_action"]["pass"]["packets"], packets, "{apart}");
    assert_eq!(apart["functions"][1]["table_of"], 2);
}
