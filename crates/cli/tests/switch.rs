//! Redirects on real veths. `redirect REGISTER`:
//! `examples/switch/learnswitch.fsm`, one program attached (TC ingress) to
//! both ports of a switch namespace, learns where each station is and
//! forwards frames to the learned port. `redirect IFNAME`: `flowstate run
//! --netns` fills the port's ifindex as the switch namespace numbers it.
//!
//! ```text
//!  a: eth0 10.77.0.1 ── port-a  [switch]  port-b ── eth0 10.77.0.2 :b
//! ```
//!
//! The switch's ports have no addresses and the switch does not route:
//! a datagram reaches the other station only through the program's
//! redirect. The stations know each other's MAC (static neighbours, so no
//! ARP is needed) and have IPv6 off (no neighbour discovery frames), so
//! the only frames the switch sees are the test's.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flowstate_netlab::{send_udp, Netns, Topology, UdpSink};
use flowstate_runtime::{load, LoadOptions, TcDirection};

const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 7000;
const BURST: usize = 5;

fn skip(test: &str) -> bool {
    let reason = flowstate_netlab::skip_reason()
        .or_else(flowstate_runtime::kernel_unavailable)
        .or_else(|| flowstate_netlab::missing_tool("ip"));
    flowstate_testkit::skip_if(test, reason)
}

/// A station: a namespace without IPv6, its `eth0` linked to the
/// switch's `port`.
fn station(
    topology: &mut Topology,
    role: &str,
    switch: &Netns,
    port: &str,
    addr: Ipv4Addr,
) -> Netns {
    let ns = topology.add_netns(role).unwrap();
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    topology.add_veth(&ns, "eth0", switch, port).unwrap();
    ns.add_address("eth0", addr, 24).unwrap();
    ns
}

fn mac_of(ns: &Netns) -> String {
    let line = ns.ip(&["-br", "link", "show", "dev", "eth0"]).unwrap();
    line.split_whitespace().nth(2).unwrap().to_string()
}

/// Sends a burst from `from` to `to`'s sink and says how many arrived.
fn burst(from: &Netns, from_addr: Ipv4Addr, sink: &UdpSink) -> u64 {
    let before = sink.received();
    let socket = from.udp_socket(SocketAddrV4::new(from_addr, 0)).unwrap();
    assert_eq!(send_udp(&socket, sink.addr(), b"hello", BURST), BURST);
    sink.settle(Duration::from_millis(200), Duration::from_secs(5)) - before
}

/// The switch and its two stations, who know each other's MAC.
struct Lab {
    switch: Netns,
    a: Netns,
    b: Netns,
    mac_a: String,
    mac_b: String,
    // Last: dropping it removes the namespaces.
    _topology: Topology,
}

fn lab(tag: &str) -> Lab {
    let mut topology = Topology::new(tag).unwrap();
    let switch = topology.add_netns("sw").unwrap();
    switch
        .sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        .unwrap();
    switch
        .sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    let a = station(&mut topology, "a", &switch, "port-a", A_ADDR);
    let b = station(&mut topology, "b", &switch, "port-b", B_ADDR);
    let (mac_a, mac_b) = (mac_of(&a), mac_of(&b));
    a.ip(&[
        "neigh",
        "replace",
        &B_ADDR.to_string(),
        "lladdr",
        &mac_b,
        "dev",
        "eth0",
    ])
    .unwrap();
    b.ip(&[
        "neigh",
        "replace",
        &A_ADDR.to_string(),
        "lladdr",
        &mac_a,
        "dev",
        "eth0",
    ])
    .unwrap();

    Lab {
        switch,
        a,
        b,
        mac_a,
        mac_b,
        _topology: topology,
    }
}

#[test]
fn a_learning_switch_forwards_to_the_learned_port() {
    if skip("a_learning_switch_forwards_to_the_learned_port") {
        return;
    }
    let Lab {
        switch,
        a,
        b,
        mac_a,
        mac_b,
        _topology,
    } = lab("lsw");

    let source_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/switch/learnswitch.fsm");
    let source = std::fs::read_to_string(source_path).unwrap();
    let program = flowstate_lang::compile(&source).unwrap().program;
    let output = flowstate_codegen::compile(&program, &Default::default()).unwrap();
    let mut loaded = load(&output.object, &LoadOptions::default()).unwrap();
    let name = output.program_name.clone();
    // One program, so one table, on both ports.
    let links = switch
        .run_in(|| {
            ["port-a", "port-b"].map(|port| {
                loaded
                    .attach_tc(&name, port, TcDirection::Ingress)
                    .unwrap_or_else(|e| panic!("attaching to {port}: {e}"))
            })
        })
        .unwrap();

    let sink_a = UdpSink::start(&a, SocketAddrV4::new(A_ADDR, PORT)).unwrap();
    let sink_b = UdpSink::start(&b, SocketAddrV4::new(B_ADDR, PORT)).unwrap();
    // b has not been seen: a's frames go up the switch's stack, which
    // drops them. The switch learns a's port.
    assert_eq!(burst(&a, A_ADDR, &sink_b), 0, "forwarded before learning");
    // a was learned on port-a: b's frames are redirected there.
    assert_eq!(burst(&b, B_ADDR, &sink_a), BURST as u64, "b to a");
    // And b on port-b.
    assert_eq!(burst(&a, A_ADDR, &sink_b), BURST as u64, "a to b");

    // The table says where each station is: its port's ifindex.
    let flows = loaded.map(output.layout.flows_map).unwrap();
    let mut ports: Vec<(String, i64)> = flows
        .entries()
        .unwrap()
        .into_iter()
        .map(|(key, value)| {
            let mac: Vec<String> = key.iter().map(|b| format!("{b:02x}")).collect();
            (
                mac.join(":"),
                output.layout.decode_entry(&value).registers[0],
            )
        })
        .collect();
    ports.sort();
    let mut expected = vec![
        (mac_a, i64::from(switch.ifindex("port-a").unwrap())),
        (mac_b, i64::from(switch.ifindex("port-b").unwrap())),
    ];
    expected.sort();
    assert_eq!(ports, expected);
    drop(links);
}

/// `flowstate stop NAME` on drop.
struct Stop(String);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_flowstate"))
            .args(["stop", &self.0])
            .output();
    }
}

#[test]
fn run_fills_a_named_port_in_the_instance_namespace() {
    if skip("run_fills_a_named_port_in_the_instance_namespace") {
        return;
    }
    let lab = lab("nport");
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("toport.fsm");
    std::fs::write(
        &program,
        format!(
            "program toport\nhook tc ingress\nflow ip.src\nstates A\ndefault pass\ntable\n  \
             * udp.dport == {PORT} => redirect \"port-b\"\n  * * => pass\nend\n"
        ),
    )
    .unwrap();
    let sink_b = UdpSink::start(&lab.b, SocketAddrV4::new(B_ADDR, PORT)).unwrap();
    assert_eq!(
        burst(&lab.a, A_ADDR, &sink_b),
        0,
        "forwarded with no program"
    );

    // `port-b` exists only in the switch's namespace: that is where `run
    // --netns` looks it up.
    let name = format!("nport{}", std::process::id());
    let _stop = Stop(name.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .args([
            "run",
            "--netns",
            lab.switch.name(),
            "--dev",
            "port-a",
            "--name",
            &name,
        ])
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        burst(&lab.a, A_ADDR, &sink_b),
        BURST as u64,
        "redirected to port-b"
    );
}
