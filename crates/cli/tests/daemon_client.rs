//! The control commands as flowstated's client (`--daemon`,
//! `FLOWSTATE_DAEMON`), against a stand-in daemon: a Unix socket in the
//! test that records each request and answers what the real API would.
//! No kernel needed; the real daemon's API is tested in crates/daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use serde_json::Value;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

/// A stand-in daemon answering every request with `status` and `answer`.
struct StandIn {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    _dir: tempfile::TempDir,
}

impl StandIn {
    fn start(status: u16, answer: &'static str) -> StandIn {
        StandIn::start_raw(format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        ))
    }

    /// A stand-in answering every request with `reply`, head and body.
    fn start_raw(reply: String) -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                record.lock().unwrap().push(Seen {
                    method,
                    path,
                    body: String::from_utf8(body).unwrap(),
                });
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        StandIn {
            socket,
            seen,
            _dir: dir,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn flowstate() -> Command {
    let mut command = Command::cargo_bin("flowstate").expect("binary built");
    command.env_remove("FLOWSTATE_DAEMON");
    command
}

#[test]
fn list_goes_to_the_daemon_and_prints_its_answer() {
    let daemon = StandIn::start(
        200,
        r#"[{"name":"fw","dev":"eth0","netns":null,"hook":"xdp","mode":"native","prog_id":7,"flows":3,"owner":"config"}]"#,
    );
    let out = flowstate()
        .arg(format!("--daemon={}", daemon.socket.display()))
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed[0]["owner"], "config");
    let seen = daemon.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/v1/instances")
    );

    let out = flowstate()
        .env("FLOWSTATE_DAEMON", &daemon.socket)
        .arg("list")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OWNER") && text.contains("fw") && text.contains("config"),
        "{text}"
    );
}

#[test]
fn a_flow_edit_is_a_patch_of_the_percent_encoded_key() {
    let daemon = StandIn::start(
        200,
        r#"{"key":"10.0.0.1 22","state":"OPEN","registers":{"n":5}}"#,
    );
    let out = flowstate()
        .env("FLOWSTATE_DAEMON", &daemon.socket)
        .args(["flow", "fw", "10.0.0.1 22", "set", "n=5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "fw: 10.0.0.1 22 OPEN n=5"
    );
    let seen = daemon.seen();
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].path, "/v1/instances/fw/flows/10.0.0.1%2022");
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body, serde_json::json!({ "registers": { "n": 5 } }));
}

const NO_SUCH_DEV: &str = "fs-nodev0";

#[test]
fn run_sends_the_placement_with_an_absolute_program_path() {
    // No interface of this machine: should the command ever act directly
    // instead of asking the daemon, it fails rather than attaching to the
    // host's real interface (it once left portknock on eth0 that way).
    let daemon = StandIn::start(
        201,
        r#"{"name":"knock","dev":"eth0","hook":"xdp","prog_id":9,"owner":"api"}"#,
    );
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let out = flowstate()
        .current_dir(&examples)
        .arg("--daemon=".to_string() + &daemon.socket.display().to_string())
        .args([
            "run",
            "portknock.fsm",
            "--dev",
            NO_SUCH_DEV,
            "--xdp-mode",
            "generic",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = daemon.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/instances")
    );
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["name"], "portknock", "the program's name: {body}");
    assert_eq!(body["xdp_mode"], "generic");
    assert_eq!(body["dev"], NO_SUCH_DEV);
    let program = PathBuf::from(body["program"].as_str().unwrap());
    assert!(
        program.is_absolute() && program.ends_with("portknock.fsm"),
        "{body}"
    );
}

#[test]
fn the_daemons_error_is_the_commands_error() {
    let daemon = StandIn::start(
        404,
        r#"{"error":"no program named \"nope\" is running (see `flowstate list`)","status":404}"#,
    );
    let out = flowstate()
        .env("FLOWSTATE_DAEMON", &daemon.socket)
        .args(["stop", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no program named \"nope\" is running"),
        "{stderr}"
    );
    assert_eq!(daemon.seen()[0].method, "DELETE");
}

#[test]
fn no_daemon_at_the_socket_says_how_to_go_without() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowstate()
        .arg(format!(
            "--daemon={}",
            dir.path().join("none.sock").display()
        ))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach flowstated"), "{stderr}");
    assert!(stderr.contains("without --daemon"), "{stderr}");
}

/// A chunked answer of `lines`, one chunk each, as axum streams it.
fn chunked(lines: &[&str]) -> String {
    let mut reply = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for line in lines {
        let line = format!("{line}\n");
        reply.push_str(&format!("{:x}\r\n{line}\r\n", line.len()));
    }
    reply.push_str("0\r\n\r\n");
    reply
}

#[test]
fn events_stream_from_the_daemon_with_lost_events_reported() {
    let event = |seq: u32| {
        format!(
            r#"{{"instance":"knock","seq":{seq},"time_ns":1,"received_unix":86400.5,"key":"10.0.0.1","state":"ASKED","row_line":9,"pkt_len":60,"head_hex":"00","summary":"10.0.0.1:4000 -> 10.0.0.2:3333 UDP"}}"#
        )
    };
    let (one, two, three) = (event(1), event(2), event(6));
    let daemon = StandIn::start_raw(chunked(&[
        &one,
        "",
        &two,
        r#"{"dropped":3,"dropped_total":3}"#,
        &three,
        r#"{"closed":"the instance is not running any more"}"#,
    ]));
    let out = flowstate()
        .arg(format!("--daemon={}", daemon.socket.display()))
        .args(["events", "knock", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = printed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 6], "events only, keep-alives skipped");
    assert!(stderr.contains("3 event(s) lost"), "{stderr}");
    assert!(stderr.contains("not running any more"), "{stderr}");
    let seen = daemon.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/v1/instances/knock/events")
    );

    // Text lines, and --count stops early.
    let daemon = StandIn::start_raw(chunked(&[&one, &two, &three]));
    let out = flowstate()
        .arg(format!("--daemon={}", daemon.socket.display()))
        .args(["events", "knock", "--count", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.starts_with("00:00:00.500  10.0.0.1"), "{text}");
    assert!(text.contains("ASKED") && text.contains("line 9"), "{text}");
    assert!(
        text.contains("10.0.0.1:4000 -> 10.0.0.2:3333 UDP"),
        "{text}"
    );
}

#[test]
fn repair_goes_to_the_daemon() {
    let daemon = StandIn::start(
        200,
        r#"{"repaired":[{"instance":"fw","message":"fw: the reload interrupted at step swap (pid 9) was finished"}]}"#,
    );
    let out = flowstate()
        .arg(format!("--daemon={}", daemon.socket.display()))
        .args(["repair", "fw"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fw: the reload interrupted at step swap"),
        "{text}"
    );
    let seen = daemon.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/repair")
    );
    assert_eq!(seen[0].body, r#"{"name":"fw"}"#);
}

#[test]
fn stats_watch_reads_the_daemon_every_interval() {
    let daemon = StandIn::start(
        200,
        r#"{"rows":[{"line":9,"text":"S * => pass","packets":40,"bytes":2320}],"default":{"packets":1,"bytes":60},"contention":0,"table_full":0,"flows_by_state":[{"state":"S","flows":1}]}"#,
    );
    // Runs until interrupted: the timeout ends it.
    let out = flowstate()
        .arg(format!("--daemon={}", daemon.socket.display()))
        .args(["stats", "fw", "--watch", "--interval", "0.2"])
        .timeout(std::time::Duration::from_secs(2))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fw: rates over"), "{text}");
    assert!(
        text.contains("S * => pass") && text.contains("flows: 1 (S 1)"),
        "{text}"
    );
    let reads = daemon.seen();
    assert!(reads.len() >= 3, "{} reads in 2 s", reads.len());
    assert!(reads
        .iter()
        .all(|r| r.method == "GET" && r.path == "/v1/instances/fw/stats"));
}
