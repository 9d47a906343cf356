//! Namespaces, veths and sockets for real (root only; prints `SKIP` and
//! passes otherwise): what a topology builds works, and what it built is
//! gone after drop, after a panic, and after SIGINT/SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::Duration;

use flowstate_netlab::{send_udp, skip_reason, Netns, SwitchLab, TcpServer, Topology, UdpSink};

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, skip_reason())
}

#[test]
fn dropping_a_topology_deletes_its_namespaces() {
    if skip("dropping_a_topology_deletes_its_namespaces") {
        return;
    }
    let mut topology = Topology::new("lab-drop").unwrap();
    let a = topology.add_netns("a").unwrap();
    let b = topology.add_netns("b").unwrap();
    topology.add_veth(&a, "va", &b, "vb").unwrap();
    assert!(a.exists() && b.exists());
    assert!(a.ip(&["link", "show", "va"]).unwrap().contains("UP"));
    drop(topology);
    assert!(!a.exists(), "{} left behind", a.name());
    assert!(!b.exists(), "{} left behind", b.name());
}

#[test]
fn a_panic_still_deletes_the_namespaces() {
    if skip("a_panic_still_deletes_the_namespaces") {
        return;
    }
    let mut created = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topology = Topology::new("lab-panic").unwrap();
        created = Some(topology.add_netns("x").unwrap());
        panic!("test failure in the middle of a live test");
    }));
    assert!(outcome.is_err());
    let netns = created.expect("namespace was created before the panic");
    assert!(!netns.exists(), "{} left behind", netns.name());
}

#[test]
fn interfaces_stay_in_their_namespaces() {
    if skip("interfaces_stay_in_their_namespaces") {
        return;
    }
    let lab = SwitchLab::build("lab-iso").unwrap();
    assert!(lab.switch.ifindex(SwitchLab::SWITCH_CLIENT_DEV).is_ok());
    assert!(lab.client.ifindex(SwitchLab::SWITCH_CLIENT_DEV).is_err());
    // The caller's namespace never sees the lab's addresses: binding one
    // works only inside.
    let client_addr = SocketAddrV4::new(SwitchLab::CLIENT_ADDR, 0);
    assert!(lab.client.udp_socket(client_addr).is_ok());
    assert!(std::net::UdpSocket::bind(client_addr).is_err());
}

#[test]
fn client_reaches_server_through_the_switch() {
    if skip("client_reaches_server_through_the_switch") {
        return;
    }
    let lab = SwitchLab::build("lab-route").unwrap();
    let server =
        TcpServer::start(&lab.server, SocketAddrV4::new(SwitchLab::SERVER_ADDR, 22)).unwrap();
    let stream = lab
        .client
        .tcp_connect(server.addr(), Duration::from_secs(2))
        .unwrap();
    let stream = stream.expect("TCP connect through the switch");
    assert_eq!(
        stream.local_addr().unwrap().ip(),
        std::net::IpAddr::V4(SwitchLab::CLIENT_ADDR)
    );
    drop(stream);
    let sink =
        UdpSink::start(&lab.server, SocketAddrV4::new(SwitchLab::SERVER_ADDR, 9000)).unwrap();
    let socket = lab
        .client
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    assert_eq!(send_udp(&socket, sink.addr(), b"hello", 50), 50);
    assert_eq!(
        sink.settle(Duration::from_millis(200), Duration::from_secs(3)),
        50
    );
    // The accept loop polls; give it a moment to count.
    for _ in 0..200 {
        if server.accepted() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.accepted(), 1);
}

#[test]
fn a_closed_port_is_refused_not_timed_out() {
    if skip("a_closed_port_is_refused_not_timed_out") {
        return;
    }
    let lab = SwitchLab::build("lab-refuse").unwrap();
    let outcome = lab
        .client
        .tcp_connect(
            SocketAddrV4::new(SwitchLab::SERVER_ADDR, 23),
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(
        outcome.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[test]
fn commands_run_inside_the_namespace() {
    if skip("commands_run_inside_the_namespace") {
        return;
    }
    let mut topology = Topology::new("lab-exec").unwrap();
    let netns = topology.add_netns("n").unwrap();
    let links = netns.exec("ip", &["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo inside: {links}");
    let output = netns
        .command("cat")
        .unwrap()
        .arg("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    assert!(Netns::from_name(netns.name()).unwrap().exists());
}

#[test]
fn commands_inside_still_see_the_bpffs() {
    if skip("commands_inside_still_see_the_bpffs") {
        return;
    }
    let mut topology = Topology::new("lab-bpffs").unwrap();
    let netns = topology.add_netns("n").unwrap();
    let outside = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .unwrap();
    let inside = netns
        .exec("stat", &["-f", "-c", "%T", "/sys/fs/bpf"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout), inside);
}

/// Child half of the signal tests: builds a topology, prints the
/// namespace's name, and waits to be killed. Run only by the tests below.
#[test]
#[ignore = "helper process for the signal tests"]
fn signal_child() {
    let Ok(tag) = std::env::var("NETLAB_SIGNAL_CHILD") else {
        return;
    };
    let mut topology = Topology::new(&tag).unwrap();
    let netns = topology.add_netns("held").unwrap();
    println!("{}", netns.name());
    std::thread::sleep(Duration::from_secs(30));
    panic!("the parent test should have signalled this process");
}

fn signal_cleans_up(test: &str, signal: libc::c_int) {
    if skip(test) {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "signal_child", "--ignored", "--nocapture"])
        .env("NETLAB_SIGNAL_CHILD", "lab-signal")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let name = lines
        .find_map(|line| line.ok().filter(|l| l.starts_with("fs-lab-signal-")))
        .expect("the child printed its namespace");
    let netns = Netns::from_name(&name).unwrap();
    assert!(netns.exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!netns.exists(), "{name} left behind after the signal");
}

#[test]
fn sigint_deletes_the_namespaces() {
    signal_cleans_up("sigint_deletes_the_namespaces", libc::SIGINT);
}

#[test]
fn sigterm_deletes_the_namespaces() {
    signal_cleans_up("sigterm_deletes_the_namespaces", libc::SIGTERM);
}

#[test]
fn sweep_removes_namespaces_of_dead_processes_only() {
    if skip("sweep_removes_namespaces_of_dead_processes_only") {
        return;
    }
    // pid_max is at most 2^22, so this pid cannot be alive.
    let dead = "fs-lab-sweep-99999999-0-x";
    Command::new("ip")
        .args(["netns", "add", dead])
        .status()
        .unwrap();
    let mut topology = Topology::new("lab-sweep").unwrap();
    let alive = topology.add_netns("y").unwrap();
    let deleted = flowstate_netlab::sweep_stale("lab-sweep").unwrap();
    assert_eq!(deleted, [dead]);
    assert!(alive.exists());
}
