//! flowstated and chains: a `[[chain]]` table applied at start, its
//! functions reordered and one replaced by SIGHUP (each function's flows
//! kept), moved through the API, adopted by a daemon killed and restarted,
//! and stopped when the table is removed.
//!
//! Its own namespaces (netlab), chain name (pid and a counter) and daemon
//! directories; the chain is stopped at cleanup even when the test fails.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{eventually, unique, Daemon, Scratch};
use flowstate_netlab::Topology;

const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const PORT: u16 = 5556;

/// Counts UDP datagrams to PORT per source in register `n` (by `step`).
fn counter(name: &str, step: u32) -> String {
    format!(
        "program {name}\nhook xdp\nflow ip.src\nstates S\nregisters n = 0\ndefault pass\ntable\n\
         \x20 S udp.dport == {PORT} => pass, n = n + {step}\nend\n"
    )
}

fn chain_config(name: &str, netns: &str, functions: &[&str]) -> String {
    let list: Vec<String> = functions
        .iter()
        .map(|f| format!("{{ name = \"{f}\", program = \"{f}.fsm\" }}"))
        .collect();
    format!(
        "[[chain]]\nname = \"{name}\"\ndev = \"rb\"\nhook = \"xdp\"\nnetns = \"{netns}\"\n\
         functions = [{}]\n",
        list.join(", ")
    )
}

fn order(chain: &serde_json::Value) -> Vec<String> {
    chain["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

fn count(chain: &str, function: &str) -> i64 {
    let handle = flowstate_control::open(&format!("{chain}/{function}")).unwrap();
    handle
        .flow(&SENDER_IP.to_string())
        .unwrap()
        .and_then(|row| {
            row.registers
                .iter()
                .find(|(n, _)| n == "n")
                .map(|(_, v)| *v)
        })
        .unwrap_or(0)
}

#[test]
fn a_declared_chain_is_applied_reordered_by_sighup_moved_by_the_api_and_stopped() {
    const TEST: &str = "a_declared_chain_is_applied_reordered_by_sighup";
    if common::skip(TEST) {
        return;
    }
    let mut topology = Topology::new("dch").unwrap();
    let sender = topology.add_netns("a").unwrap();
    let receiver = topology.add_netns("b").unwrap();
    topology
        .link(&sender, "sa", SENDER_IP, &receiver, "rb", RECEIVER_IP, 24)
        .unwrap();
    let name = unique("dch");
    let owned = name.clone();
    topology.on_cleanup(format!("stop chain {name}"), move || {
        let _ = flowstate_control::chain::stop(&owned);
    });
    let scratch = Scratch::new("chain");
    let mut daemon = Daemon::start(&scratch.0.join("d"));
    let config_dir = daemon.config_dir.clone();
    for (f, step) in [("f1", 1), ("f2", 1), ("f3", 1)] {
        std::fs::write(config_dir.join(format!("{f}.fsm")), counter(f, step)).unwrap();
    }
    daemon.write_config(
        "10-chain.toml",
        &chain_config(&name, receiver.name(), &["f1", "f2", "f3"]),
    );
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    let label = format!("chain {name}");
    let change = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["instance"] == label.as_str())
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(change["action"], "started", "{report}");
    let path = format!("/v1/chains/{name}");
    let seen = daemon.json("GET", &path, None, 200);
    assert_eq!(order(&seen), ["f1", "f2", "f3"]);
    assert_eq!(seen["owner"], "config");

    let send = |count: usize| {
        let socket = sender.udp_socket(SocketAddrV4::new(SENDER_IP, 0)).unwrap();
        socket
            .send_to(&[0; 8], SocketAddrV4::new(RECEIVER_IP, PORT + 1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..count {
            socket
                .send_to(&[0; 8], SocketAddrV4::new(RECEIVER_IP, PORT))
                .unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    send(4);
    eventually("every function counted", || {
        (["f1", "f2", "f3"].iter().all(|f| count(&name, f) == 4)).then_some(())
    });

    // Each function's flows through the API, as instance CHAIN/FUNC.
    let flows = daemon.json(
        "GET",
        &format!("/v1/instances/{name}%2Ff2/flows"),
        None,
        200,
    );
    assert_eq!(flows.as_array().map(Vec::len), Some(1), "{flows}");

    // SIGHUP: reordered, and f2 replaced (its pass now adds 10).
    std::fs::write(config_dir.join("f2.fsm"), counter("f2", 10)).unwrap();
    daemon.write_config(
        "10-chain.toml",
        &chain_config(&name, receiver.name(), &["f3", "f1", "f2"]),
    );
    daemon.signal(libc::SIGHUP);
    let seen = eventually("the SIGHUP apply", || {
        let seen = daemon.json("GET", &path, None, 200);
        (order(&seen) == ["f3", "f1", "f2"] && seen["functions"][2]["replaced"] == 1)
            .then_some(seen)
    });
    assert_eq!(seen["problem"], serde_json::Value::Null);
    for f in ["f1", "f2", "f3"] {
        assert_eq!(count(&name, f), 4, "{f} kept its flow");
    }
    send(1);
    eventually("the new order runs", || {
        (count(&name, "f3") == 5 && count(&name, "f1") == 5 && count(&name, "f2") == 14)
            .then_some(())
    });

    // The API moves a function; a killed and restarted daemon adopts the
    // chain as it runs (the configuration's order comes back on apply).
    let before_restart = daemon.json("GET", &path, None, 200)["started_unix_ms"].clone();
    let moved = daemon.json(
        "POST",
        &format!("/v1/chains/{name}/functions/f2/move"),
        Some(r#"{"to": 0}"#),
        200,
    );
    assert_eq!(order(&moved), ["f2", "f3", "f1"]);
    daemon.kill_and_restart();
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    let change = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["instance"] == label.as_str())
        .unwrap()
        .clone();
    // The restarted daemon's start apply (or this one) put the declared
    // order back, without restarting the chain.
    assert!(
        change["action"] == "changed" || change["action"] == "unchanged",
        "{report}"
    );
    assert_eq!(
        order(&daemon.json("GET", &path, None, 200)),
        ["f3", "f1", "f2"]
    );
    assert_eq!(count(&name, "f1"), 5, "kept across the restart");
    assert_eq!(
        daemon.json("GET", &path, None, 200)["started_unix_ms"],
        before_restart,
        "adopted, not created again"
    );

    // Removed from the configuration: stopped.
    daemon.remove_config("10-chain.toml");
    let report = daemon.json("POST", "/v1/config/reload", None, 200);
    assert!(report.to_string().contains("stopped"), "{report}");
    daemon.json("GET", &path, None, 404);
    assert!(receiver.xdp_programs("rb").unwrap().is_empty());
}
