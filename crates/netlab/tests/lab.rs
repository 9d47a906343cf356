//! Namespaces, veths and sockets for real (root only; prints `SKIP` and
//! passes otherwise): what a topology builds works, and what it built is
//! gone after drop, after a panic, and after SIGINT/SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::Duration;

use flowstate_netlab::{
    missing_tool, send_udp, skip_reason, Netns, SwitchLab, TcpServer, Topology, UdpSink,
};

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, skip_reason())
}

/// Skips unless live networking works and `tool` is installed (tests of
/// interoperability with it; netlab itself needs none).
fn skip_without(test: &str, tool: &str) -> bool {
    flowstate_testkit::skip_if(test, skip_reason().or_else(|| missing_tool(tool)))
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
    assert!(a.is_up("va").unwrap() && b.is_up("vb").unwrap());
    assert!(a.is_up("lo").unwrap(), "loopback is brought up");
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
    // /proc/net belongs to the reading process's namespace: two header
    // lines, then one line per interface.
    let links = netns.exec("cat", &["/proc/net/dev"]).unwrap();
    let names: Vec<&str> = links
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "only lo inside: {links}");
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
    Netns::create(dead).unwrap();
    let mut topology = Topology::new("lab-sweep").unwrap();
    let alive = topology.add_netns("y").unwrap();
    let deleted = flowstate_netlab::sweep_stale("lab-sweep").unwrap();
    assert_eq!(deleted, [dead]);
    assert!(alive.exists());
}

/// Child half of `netlab_runs_no_external_command`: builds the demo's
/// network and sends traffic through it. Run only by that test, with an
/// empty PATH.
#[test]
#[ignore = "helper process for netlab_runs_no_external_command"]
fn no_tools_child() {
    if std::env::var_os("NETLAB_NO_TOOLS_CHILD").is_none() {
        return;
    }
    let lab = SwitchLab::build("lab-notools").unwrap();
    let server =
        TcpServer::start(&lab.server, SocketAddrV4::new(SwitchLab::SERVER_ADDR, 22)).unwrap();
    lab.client
        .tcp_connect(server.addr(), Duration::from_secs(2))
        .unwrap()
        .expect("TCP connect through the switch with no tools on PATH");
    lab.switch
        .sysctl("net.ipv4.tcp_early_retrans", "0")
        .unwrap();
    assert!(lab
        .switch
        .xdp_programs(SwitchLab::SWITCH_CLIENT_DEV)
        .unwrap()
        .is_empty());
    for netns in [&lab.client, &lab.switch, &lab.server] {
        println!("built {}", netns.name());
    }
}

#[test]
fn netlab_runs_no_external_command() {
    if skip("netlab_runs_no_external_command") {
        return;
    }
    // No PATH entry exists: any `ip`, `sysctl` or other command netlab ran
    // would fail to start, and the child with it.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "no_tools_child", "--ignored", "--nocapture"])
        .env("NETLAB_NO_TOOLS_CHILD", "1")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("built "))
        .collect();
    assert_eq!(built.len(), 3, "{stdout}");
    for name in built {
        assert!(
            !Netns::from_name(name).unwrap().exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn iproute2_and_netlab_see_each_others_namespaces() {
    if skip_without("iproute2_and_netlab_see_each_others_namespaces", "ip") {
        return;
    }
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = |name: &str| {
        ip(&["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    };
    // Made here, seen and used by `ip`.
    let mut topology = Topology::new("lab-ip").unwrap();
    let ours = topology.add_netns("ours").unwrap();
    assert!(listed(ours.name()));
    let lo = ip(&["-n", ours.name(), "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    // Made by `ip`, used and deleted here.
    let theirs = format!("fs-lab-ip-{}-theirs", std::process::id());
    ip(&["netns", "add", &theirs]);
    let netns = Netns::from_name(&theirs).unwrap();
    let deleted = std::panic::catch_unwind(|| {
        netns.set_up("lo").unwrap();
        assert!(netns.is_up("lo").unwrap());
        netns.delete().unwrap();
    });
    if let Err(panic) = deleted {
        let _ = Command::new("ip").args(["netns", "del", &theirs]).status();
        std::panic::resume_unwind(panic);
    }
    assert!(!listed(&theirs), "{theirs} still listed after delete");
    drop(topology);
    assert!(
        !listed(ours.name()),
        "{} still listed after drop",
        ours.name()
    );
}

#[test]
fn a_link_moves_into_another_namespace() {
    if skip("a_link_moves_into_another_namespace") {
        return;
    }
    let mut topology = Topology::new("lab-move").unwrap();
    let a = topology.add_netns("a").unwrap();
    let b = topology.add_netns("b").unwrap();
    topology.add_veth(&a, "m0", &a, "m1").unwrap();
    assert!(a.ifindex("m1").is_ok() && b.ifindex("m1").is_err());
    a.move_link("m1", &b).unwrap();
    assert!(a.ifindex("m1").is_err(), "m1 still in {}", a.name());
    assert!(b.ifindex("m1").is_ok(), "m1 not in {}", b.name());
    // Moving a link takes it down; it comes up again in its new place.
    b.set_up("m1").unwrap();
    a.add_address("m0", Ipv4Addr::new(10, 9, 0, 1), 30).unwrap();
    b.add_address("m1", Ipv4Addr::new(10, 9, 0, 2), 30).unwrap();
    let sink = UdpSink::start(&b, SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 9000)).unwrap();
    let socket = a
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    assert_eq!(send_udp(&socket, sink.addr(), b"moved", 5), 5);
    assert_eq!(
        sink.settle(Duration::from_millis(200), Duration::from_secs(3)),
        5
    );
}

#[test]
fn sysctls_change_only_their_namespace() {
    if skip("sysctls_change_only_their_namespace") {
        return;
    }
    let mut topology = Topology::new("lab-sysctl").unwrap();
    let a = topology.add_netns("a").unwrap();
    let b = topology.add_netns("b").unwrap();
    let read = |netns: &Netns| {
        netns
            .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv4/tcp_early_retrans"))
            .unwrap()
            .unwrap()
            .trim()
            .to_string()
    };
    let before = read(&b);
    let other = if before == "0" { "1" } else { "0" };
    a.sysctl("net.ipv4.tcp_early_retrans", other).unwrap();
    assert_eq!(read(&a), other);
    assert_eq!(read(&b), before, "the sysctl leaked into {}", b.name());
    // Set when the namespace was made.
    let ipv6_off = a
        .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6"))
        .unwrap()
        .unwrap();
    assert_eq!(ipv6_off.trim(), "1");
    let err = a.sysctl("net.ipv4.no_such_key", "1").unwrap_err();
    assert!(err.to_string().contains("no_such_key"), "{err}");
    assert!(a.sysctl("../../etc/passwd", "x").is_err());
}

#[test]
fn configuration_errors_name_what_failed() {
    if skip("configuration_errors_name_what_failed") {
        return;
    }
    let mut topology = Topology::new("lab-errors").unwrap();
    let a = topology.add_netns("a").unwrap();
    let err = a.set_up("nosuch0").unwrap_err().to_string();
    assert!(err.contains("nosuch0") && err.contains(a.name()), "{err}");
    assert!(a.xdp_programs("nosuch0").is_err());
    assert!(a.xdp_programs("lo").unwrap().is_empty());
    // The kernel's refusal comes back as the request's error.
    a.add_address("lo", Ipv4Addr::new(10, 9, 1, 1), 24).unwrap();
    let err = a
        .add_address("lo", Ipv4Addr::new(10, 9, 1, 1), 24)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists"), "{err}");
    assert!(a.add_address("lo", Ipv4Addr::new(10, 9, 1, 2), 33).is_err());
    assert!(a.add_default_route(Ipv4Addr::new(192, 0, 2, 1)).is_err());
    assert!(Netns::create(a.name()).is_err(), "created twice");
}
