//! flowstated on veths in test network namespaces: configuration applied
//! at start, on SIGHUP and on `POST /v1/config/reload` (adding, changing,
//! removing instances), a bad file refused with its position and nothing
//! changed, a CLI-run instance never touched, the API's instance and flow
//! operations, the metrics after traffic, and a daemon killed (-9) and
//! restarted adopting its instances with their flows.
//!
//! Each test has its own namespaces (netlab), instance names (pid and a
//! counter) and daemon directories; instances are stopped at cleanup even
//! when the test fails.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{encode, eventually, sample, unique, Daemon, Scratch};
use flowstate_control::RunSpec;
use flowstate_netlab::{Netns, Topology};

const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const PORT: u16 = 5555;
const PAYLOAD: usize = 16;

/// Counts UDP datagrams to PORT per source in register `n`.
fn counter(name: &str, hook: &str, extra_comment: &str) -> String {
    format!(
        "# {extra_comment}\nprogram {name}\nhook {hook}\nflow ip.src\nstates S\nregisters n = 0\n\
         default pass\ntable\n  S udp.dport == {PORT} => pass, n = n + 1\nend\n"
    )
}

/// The line of the counting row in [`counter`]'s text.
const COUNT_ROW_LINE: &str = "9";

struct Lab {
    topology: Topology,
    sender: Netns,
    receiver: Netns,
}

/// Sender `sa` (SENDER_IP) and receiver `rb` (RECEIVER_IP) on one veth.
fn lab(tag: &str) -> Lab {
    let mut topology = Topology::new(tag).unwrap();
    let sender = topology.add_netns("a").unwrap();
    let receiver = topology.add_netns("b").unwrap();
    topology
        .link(&sender, "sa", SENDER_IP, &receiver, "rb", RECEIVER_IP, 24)
        .unwrap();
    Lab {
        topology,
        sender,
        receiver,
    }
}

impl Lab {
    /// Stops `name` at cleanup, whatever the test did with it.
    fn stop_at_cleanup(&mut self, name: &str) {
        let name = name.to_string();
        self.topology.on_cleanup(format!("stop {name}"), move || {
            let _ = flowstate_control::stop(&name);
        });
    }

    /// Sends `count` datagrams to RECEIVER_IP:PORT, after one to another
    /// port so that the neighbour is resolved (no datagram waits on ARP).
    fn send(&self, count: usize) {
        let socket = self
            .sender
            .udp_socket(SocketAddrV4::new(SENDER_IP, 0))
            .unwrap();
        let other = SocketAddrV4::new(RECEIVER_IP, PORT + 1);
        socket.send_to(&[0; PAYLOAD], other).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let to = SocketAddrV4::new(RECEIVER_IP, PORT);
        for _ in 0..count {
            socket.send_to(&[0; PAYLOAD], to).unwrap();
            // Paced: a burst could overflow the veth's queue.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn instance_config(name: &str, program: &str, dev: &str, netns: &Netns, extra: &str) -> String {
    format!(
        "[[instance]]\nname = \"{name}\"\nprogram = \"{program}\"\ndev = \"{dev}\"\n\
         netns = \"{}\"\n{extra}",
        netns.name()
    )
}

fn prog_id(instance: &serde_json::Value) -> u64 {
    instance["prog_id"].as_u64().unwrap()
}

fn change_of<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["instance"] == name)
        .unwrap_or_else(|| panic!("no change for {name} in {report}"))
}

#[test]
fn config_applies_at_start_on_sighup_and_on_request_and_a_bad_file_changes_nothing() {
    const TEST: &str = "config_applies_at_start_on_sighup_and_on_request";
    if common::skip(TEST) {
        return;
    }
    let mut lab = lab("dcfg");
    let scratch = Scratch::new("cfg");
    let xdp = unique("dx");
    let tc = unique("dt");
    let cli = unique("dc");
    for name in [&xdp, &tc, &cli] {
        lab.stop_at_cleanup(name);
    }
    let programs = &scratch.0;
    std::fs::write(programs.join("xdp.fsm"), counter("dx", "xdp", "v1")).unwrap();
    std::fs::write(programs.join("tc.fsm"), counter("dt", "tc ingress", "v1")).unwrap();

    // The operator's one-shot instance, on the sender's side.
    let cli_instance = flowstate_control::run_in_netns(
        &RunSpec {
            program_path: programs.join("tc.fsm"),
            dev: "sa".into(),
            name: Some(cli.clone()),
            ..RunSpec::default()
        },
        Some(lab.sender.name()),
    )
    .unwrap();

    let xdp_file = programs.join("xdp.fsm").display().to_string();
    let tc_file = programs.join("tc.fsm").display().to_string();
    let mut daemon = Daemon::start(&scratch.0.join("d"));
    // Declares the CLI's name too: the daemon must leave that one alone.
    daemon.write_config(
        "10-xdp.toml",
        &instance_config(&xdp, &xdp_file, "rb", &lab.receiver, ""),
    );
    daemon.write_config(
        "20-clash.toml",
        &instance_config(&cli, &tc_file, "sa", &lab.sender, ""),
    );
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    assert_eq!(change_of(&report, &xdp)["action"], "started", "{report}");
    assert_eq!(change_of(&report, &cli)["action"], "left-alone", "{report}");
    let first = daemon.instance(&xdp).expect("the declared instance runs");
    assert_eq!(first["owner"], "config");
    assert_eq!(first["netns"], lab.receiver.name());
    let cli_seen = daemon.instance(&cli).unwrap();
    assert_eq!(cli_seen["owner"], serde_json::Value::Null);
    assert_eq!(prog_id(&cli_seen), u64::from(cli_instance.prog_id));

    // SIGHUP: a changed program is reloaded (a new register: the flows
    // migrate to the new layout), a new instance started, and the
    // clashing declaration dropped.
    const SENT: usize = 5;
    lab.send(SENT);
    let v2 = counter("dx", "xdp", "v2").replace("registers n = 0", "registers n = 0, m = 7");
    std::fs::write(programs.join("xdp.fsm"), v2).unwrap();
    daemon.write_config(
        "30-tc.toml",
        &instance_config(
            &tc,
            &tc_file,
            "rb",
            &lab.receiver,
            "hook = \"tc-ingress\"\n",
        ),
    );
    daemon.remove_config("20-clash.toml");
    daemon.signal(libc::SIGHUP);
    let tc_seen = eventually("the SIGHUP apply", || daemon.instance(&tc));
    assert_eq!(tc_seen["hook"], "tc-ingress");
    let reloaded = daemon.instance(&xdp).unwrap();
    assert_ne!(prog_id(&reloaded), prog_id(&first), "{reloaded}");
    assert_eq!(reloaded["reloads"], 1);
    let status = daemon.json("GET", "/v1/config", None, 200);
    let change = change_of(&status["last_apply"], &xdp);
    assert_eq!(change["action"], "reloaded", "{status}");
    assert_eq!(change["flows"], "migrated", "{status}");
    let flow_path = format!(
        "/v1/instances/{xdp}/flows/{}",
        encode(&SENDER_IP.to_string())
    );
    let flow = daemon.json("GET", &flow_path, None, 200);
    assert_eq!(flow["registers"]["n"], SENT as u64, "{flow}");

    // A bad file: refused with file, line and column; nothing changes.
    let before: Vec<u64> = [&xdp, &tc, &cli]
        .iter()
        .map(|n| prog_id(&daemon.instance(n).unwrap()))
        .collect();
    std::fs::write(programs.join("xdp.fsm"), counter("dx", "xdp", "v3")).unwrap();
    daemon.write_config(
        "40-bad.toml",
        "[[instance]]\nname = \"x\"\nprogram = \"p.fsm\"\n  device = \"eth0\"\n",
    );
    let (code, body) = daemon.request("POST", "/v1/config/reload", None);
    assert_eq!(code, 422, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["file"].as_str().unwrap().ends_with("40-bad.toml"),
        "{error}"
    );
    assert_eq!(
        (error["line"].as_u64(), error["column"].as_u64()),
        (Some(4), Some(3))
    );
    assert!(
        error["error"].as_str().unwrap().contains("40-bad.toml:4:3"),
        "{error}"
    );
    let after: Vec<u64> = [&xdp, &tc, &cli]
        .iter()
        .map(|n| prog_id(&daemon.instance(n).unwrap()))
        .collect();
    assert_eq!(before, after, "a refused configuration changed instances");
    daemon.remove_config("40-bad.toml");

    // Removing a declaration stops that instance only.
    daemon.remove_config("10-xdp.toml");
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    assert_eq!(change_of(&report, &xdp)["action"], "stopped", "{report}");
    assert_eq!(change_of(&report, &tc)["action"], "unchanged", "{report}");
    assert!(daemon.instance(&xdp).is_none());
    assert!(daemon.instance(&tc).is_some());
    let cli_after = daemon
        .instance(&cli)
        .expect("the CLI's instance still runs");
    assert_eq!(prog_id(&cli_after), u64::from(cli_instance.prog_id));
    assert_eq!(cli_after["reloads"], 0);

    // Where it attaches changed: stopped and run again.
    let tc_before = prog_id(&daemon.instance(&tc).unwrap());
    daemon.write_config(
        "30-tc.toml",
        &instance_config(
            &tc,
            &tc_file,
            "rb",
            &lab.receiver,
            "hook = \"tc-ingress\"\ntc_attach = \"clsact\"\n",
        ),
    );
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    assert_eq!(change_of(&report, &tc)["action"], "restarted", "{report}");
    let moved = daemon.instance(&tc).unwrap();
    assert_eq!(moved["mode"], "clsact", "{moved}");
    assert_ne!(prog_id(&moved), tc_before);

    // The daemon's instance stopped and run again by hand under the same
    // name: that one is not the daemon's any more.
    flowstate_control::stop(&tc).unwrap();
    let by_hand = flowstate_control::run_in_netns(
        &RunSpec {
            program_path: programs.join("xdp.fsm"),
            dev: "rb".into(),
            name: Some(tc.clone()),
            ..RunSpec::default()
        },
        Some(lab.receiver.name()),
    )
    .unwrap();
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    assert_eq!(change_of(&report, &tc)["action"], "left-alone", "{report}");
    let seen = daemon.instance(&tc).unwrap();
    assert_eq!(prog_id(&seen), u64::from(by_hand.prog_id));
    assert_eq!(seen["owner"], serde_json::Value::Null);
    daemon.kill();
}

#[test]
fn metrics_flows_and_a_killed_daemon_restarted_keep_the_flows() {
    const TEST: &str = "metrics_flows_and_a_killed_daemon_restarted";
    if common::skip(TEST) {
        return;
    }
    let mut lab = lab("dmet");
    let scratch = Scratch::new("met");
    let name = unique("dm");
    let api_name = unique("da");
    lab.stop_at_cleanup(&name);
    lab.stop_at_cleanup(&api_name);
    let program = scratch.0.join("count.fsm");
    std::fs::write(&program, counter("dm", "xdp", "metrics")).unwrap();
    let root = scratch.0.join("d");
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::write(
        root.join("config").join("count.toml"),
        instance_config(
            &name,
            &program.display().to_string(),
            "rb",
            &lab.receiver,
            "",
        ),
    )
    .unwrap();
    let metrics_addr = common::free_local_port();
    let mut daemon = Daemon::start_with(&root, &["--metrics", &metrics_addr]);
    let started = daemon.instance(&name).expect("started at daemon start");

    const SENT: usize = 40;
    lab.send(SENT);
    let labels = [
        ("instance", name.as_str()),
        ("dev", "rb"),
        ("netns", lab.receiver.name()),
        ("row", COUNT_ROW_LINE),
    ];
    let packets = eventually("the row's packets", || {
        let text = daemon.metrics();
        sample(&text, "flowstate_row_packets_total", &labels).filter(|&n| n >= SENT as f64)
    });
    assert_eq!(packets, SENT as f64);
    let text = daemon.metrics();
    // XDP counts the Ethernet frame: 14 + 20 (IPv4) + 8 (UDP) + payload.
    let bytes = sample(&text, "flowstate_row_bytes_total", &labels).unwrap();
    assert_eq!(bytes, (SENT * (14 + 20 + 8 + PAYLOAD)) as f64, "{text}");
    let by_instance = [("instance", name.as_str())];
    assert_eq!(
        sample(
            &text,
            "flowstate_flows",
            &[("instance", &name), ("state", "S")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "flowstate_table_entries", &by_instance),
        Some(1.0)
    );
    assert!(sample(&text, "flowstate_table_capacity", &by_instance).unwrap() >= 1.0);
    assert_eq!(
        sample(&text, "flowstate_refused_total", &by_instance),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "flowstate_contention_total", &by_instance),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "flowstate_instance_info",
            &[("instance", &name), ("owner", "config")]
        ),
        Some(1.0),
        "{text}"
    );

    // The same over TCP, which serves nothing else.
    let (code, tcp_text) = common::tcp_metrics(&metrics_addr);
    assert_eq!(code, 200);
    assert_eq!(
        sample(&tcp_text, "flowstate_row_packets_total", &labels),
        Some(SENT as f64)
    );

    // The flow, read and edited through the API.
    let key = SENDER_IP.to_string();
    let flows = daemon.json("GET", &format!("/v1/instances/{name}/flows"), None, 200);
    assert_eq!(flows.as_array().unwrap().len(), 1, "{flows}");
    assert_eq!(flows[0]["key"], key.as_str());
    assert_eq!(flows[0]["registers"]["n"], SENT as u64);
    let flow_path = format!("/v1/instances/{name}/flows/{}", encode(&key));
    let edited = daemon.json(
        "PATCH",
        &flow_path,
        Some(r#"{"registers":{"n":1000}}"#),
        200,
    );
    assert_eq!(edited["registers"]["n"], 1000);
    let (code, body) = daemon.request("PATCH", &flow_path, Some(r#"{"registers":{"m":1}}"#));
    assert_eq!(code, 404, "an unknown register: {body}");
    let (code, _) = daemon.request("GET", "/v1/instances/no-such-instance/flows", None);
    assert_eq!(code, 404);

    // Killed and restarted: the instance is adopted, not re-attached,
    // and its flow keeps counting from where it was.
    daemon.kill_and_restart();
    let adopted = daemon.instance(&name).expect("still running");
    assert_eq!(
        prog_id(&adopted),
        prog_id(&started),
        "re-attached: {adopted}"
    );
    assert_eq!(adopted["owner"], "config");
    let status = daemon.json("GET", "/v1/config", None, 200);
    assert_eq!(
        change_of(&status["last_apply"], &name)["action"],
        "unchanged"
    );
    const MORE: usize = 10;
    lab.send(MORE);
    let flow = eventually("the flow's count after the restart", || {
        let flow = daemon.json("GET", &flow_path, None, 200);
        (flow["registers"]["n"].as_u64() >= Some(1000 + MORE as u64)).then_some(flow)
    });
    assert_eq!(flow["registers"]["n"], 1000 + MORE as u64, "{flow}");
    assert_eq!(
        sample(&daemon.metrics(), "flowstate_row_packets_total", &labels),
        Some((SENT + MORE) as f64)
    );

    // An instance run through the API survives a config apply, and goes
    // with DELETE.
    let body = format!(
        r#"{{"name":"{api_name}","program":"{}","dev":"sa","netns":"{}","hook":"tc-ingress"}}"#,
        program.display(),
        lab.sender.name()
    );
    let run = daemon.json("POST", "/v1/instances", Some(&body), 201);
    assert_eq!(run["owner"], "api", "{run}");
    let (code, _) = daemon.request("POST", "/v1/instances", Some(&body));
    assert_eq!(code, 409, "a second run of the same name");
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    assert!(
        report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["instance"] != api_name.as_str()),
        "{report}"
    );
    assert!(daemon.instance(&api_name).is_some());
    daemon.json("DELETE", &format!("/v1/instances/{api_name}"), None, 200);
    let (code, _) = daemon.request("GET", &format!("/v1/instances/{api_name}"), None);
    assert_eq!(code, 404);
    daemon.kill();
}
