//! Live traffic: the examples attached to a real interface (the switch of
//! flowstate-netlab's client/switch/server network), observed with real
//! sockets; hot reload under traffic; stop; a SIGKILLed command; the demo.
//!
//! Root with BPF only: elsewhere each test prints `SKIP <test>: <reason>`
//! and passes. Every test builds its own namespaces (names carry the pid
//! and a counter, so the tests run in parallel) and its own program names;
//! the netlab `Topology` removes namespaces and programs also when a test
//! fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_control::{AttachPoint, Instance, RunSpec, XdpMode};
use flowstate_netlab::{send_udp, Netns, SwitchLab, TcpServer, UdpSink};
use flowstate_runtime::TcDirection;

const PORTKNOCK: &str = include_str!("../../../examples/portknock.fsm");
const TOKENBUCKET: &str = include_str!("../../../examples/tokenbucket.fsm");
const KNOCKS: [u16; 4] = [1111, 2222, 3333, 4444];
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const DEV: &str = SwitchLab::SWITCH_CLIENT_DEV;

fn skip(test: &str) -> bool {
    let reason = flowstate_netlab::skip_reason().or_else(|| {
        flowstate_runtime_bpffs()
            .err()
            .map(|e| format!("no bpffs: {e}"))
    });
    flowstate_testkit::skip_if(test, reason)
}

/// bpffs is mounted (the control plane mounts it when needed, but a
/// machine where that fails cannot run these tests).
fn flowstate_runtime_bpffs() -> Result<(), String> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .map_err(|e| e.to_string())?;
    let kind = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if kind == "bpf_fs" {
        Ok(())
    } else {
        Err(format!("/sys/fs/bpf is {kind:?}"))
    }
}

/// A lab plus a directory for program copies (removed with the lab).
struct Live {
    lab: SwitchLab,
    dir: PathBuf,
    tag: String,
}

impl Live {
    fn new(tag: &str) -> Live {
        let mut lab = SwitchLab::build(tag).expect("building the network");
        let dir = std::env::temp_dir().join(format!("flowstate-live-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let remove = dir.clone();
        lab.topology.on_cleanup("remove program copies", move || {
            let _ = std::fs::remove_dir_all(&remove);
        });
        Live {
            lab,
            dir,
            tag: tag.to_string(),
        }
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A program name unique to this test and process.
    fn name(&self, what: &str) -> String {
        format!("live-{}-{what}-{}", self.tag, std::process::id())
    }

    /// Registers `flowstate stop NAME` with the topology (runs before the
    /// namespaces go, also on failure).
    fn stop_on_cleanup(&mut self, name: &str) {
        let owned = name.to_string();
        self.lab
            .topology
            .on_cleanup(format!("stop {name}"), move || {
                let _ = flowstate_control::stop(&owned);
            });
    }

    /// `flowstate run` on the switch's client-facing interface.
    fn run(&mut self, path: &Path, name: &str, attach: AttachPoint) -> Instance {
        self.stop_on_cleanup(name);
        let spec = RunSpec {
            program_path: path.to_path_buf(),
            dev: DEV.to_string(),
            attach: Some(attach),
            name: Some(name.to_string()),
            tc: Default::default(),
        };
        self.lab
            .switch
            .run_in(|| flowstate_control::run(&spec))
            .unwrap()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
    }

    fn ssh(&self) -> SocketAddrV4 {
        SocketAddrV4::new(SwitchLab::SERVER_ADDR, 22)
    }

    fn connects(&self) -> bool {
        self.lab
            .client
            .tcp_connect(self.ssh(), CONNECT_TIMEOUT)
            .unwrap()
            .is_ok()
    }

    fn knock(&self) {
        let socket = self
            .lab
            .client
            .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        for port in KNOCKS {
            send_udp(
                &socket,
                SocketAddrV4::new(SwitchLab::SERVER_ADDR, port),
                b"knock",
                1,
            );
            // In order: each knock is processed before the next is sent.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Programs attached to the switch's client-facing interface, as the
    /// kernel reports them (empty: none).
    fn attached(&self) -> Vec<String> {
        attached(&self.lab.switch)
    }

    fn wait_detached(&self) -> Vec<String> {
        // A link is released a moment after its last reference goes.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let now = self.attached();
            if now.is_empty() || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// XDP programs as the kernel reports them on the link (netlink IFLA_XDP),
/// TCX programs from the kernel's TCX query (where the kernel has TCX)
/// and clsact filters from netlink.
fn attached(switch: &Netns) -> Vec<String> {
    let mut found: Vec<String> = switch
        .xdp_programs(DEV)
        .expect("netlink XDP query")
        .into_iter()
        .map(|xdp| format!("xdp id {} ({})", xdp.prog_id, xdp.mode))
        .collect();
    let ifindex = switch.ifindex(DEV).unwrap();
    for (direction, label) in [
        (TcDirection::Ingress, "ingress"),
        (TcDirection::Egress, "egress"),
    ] {
        if has_tcx() {
            let names = switch
                .run_in(|| flowstate_runtime::tcx_programs(DEV, direction))
                .unwrap()
                .unwrap();
            found.extend(names.into_iter().map(|n| format!("tcx/{label} {n}")));
        }
        let filters = switch
            .run_in(|| flowstate_runtime::clsact::filters(ifindex, direction))
            .unwrap()
            .unwrap();
        found.extend(
            filters
                .into_iter()
                .map(|f| format!("clsact/{label} {}", f.name)),
        );
    }
    found
}

fn has_tcx() -> bool {
    flowstate_runtime::kernel_features()
        .get(flowstate_runtime::Feature::Tcx)
        .is_present()
}

fn portknock_with_idle(idle: &str) -> String {
    let line = "timeout OPEN idle 30s";
    assert!(
        PORTKNOCK.contains(line),
        "examples/portknock.fsm changed its timeout line"
    );
    PORTKNOCK.replace(line, &format!("timeout OPEN idle {idle}"))
}

fn client_state(name: &str) -> Option<String> {
    let handle = flowstate_control::open(name).unwrap();
    handle
        .flow(&SwitchLab::CLIENT_ADDR.to_string())
        .unwrap()
        .map(|row| match row.expired_to {
            Some(to) => to,
            None => row.state,
        })
}

fn flowstate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowstate"))
}

/// The `flowstate` binary, run inside `netns` (interfaces are looked up
/// there) with the caller's mounts (so the pins on bpffs are shared).
fn flowstate_in(netns: &Netns) -> Command {
    netns
        .command(env!("CARGO_BIN_EXE_flowstate"))
        .expect("namespace")
}

#[test]
fn port_knocking_opens_tcp_22_through_xdp() {
    if skip("port_knocking_opens_tcp_22_through_xdp") {
        return;
    }
    let mut live = Live::new("knock");
    let _server = TcpServer::start(&live.lab.server, live.ssh()).unwrap();
    assert!(live.connects(), "the path works with no program");
    let path = live.write("portknock.fsm", &portknock_with_idle("1s"));
    let name = live.name("pk");
    let instance = live.run(
        &path,
        &name,
        AttachPoint::Xdp {
            mode: XdpMode::Auto,
        },
    );
    assert_eq!(instance.mode, "native", "veth takes XDP in the driver");
    assert_eq!(live.attached().len(), 1, "{:?}", live.attached());

    assert!(!live.connects(), "TCP 22 open before knocking");
    assert_eq!(client_state(&name), None, "a dropped SYN leaves no entry");
    live.knock();
    assert_eq!(client_state(&name).as_deref(), Some("OPEN"));
    assert!(live.connects(), "TCP 22 closed after the knock sequence");

    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        client_state(&name).as_deref(),
        Some("DEFAULT"),
        "idle timeout"
    );
    assert!(!live.connects(), "TCP 22 still open after the idle timeout");

    // A wrong sequence does not open: 2222 first sends the client back.
    let socket = live
        .lab
        .client
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    for port in [1111, 3333, 2222, 4444] {
        send_udp(
            &socket,
            SocketAddrV4::new(SwitchLab::SERVER_ADDR, port),
            b"k",
            1,
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!live.connects(), "a knock out of order opened the door");

    let stats = flowstate_control::open(&name).unwrap().stats().unwrap();
    let knocks: Vec<u64> = stats.rows.iter().take(4).map(|r| r.packets).collect();
    assert_eq!(
        knocks,
        [2, 1, 1, 1],
        "the 1111 row fired twice, the others once"
    );
}

#[test]
fn token_bucket_limits_a_udp_burst_at_tc_ingress() {
    if skip("token_bucket_limits_a_udp_burst_at_tc_ingress") {
        return;
    }
    let mut live = Live::new("bucket");
    let sink = UdpSink::start(
        &live.lab.server,
        SocketAddrV4::new(SwitchLab::SERVER_ADDR, 9000),
    )
    .unwrap();
    let socket = live
        .lab
        .client
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .unwrap();
    // Without the program every datagram arrives (and the neighbour
    // entries get resolved, so no packet waits for ARP below).
    assert_eq!(send_udp(&socket, sink.addr(), b"x", 20), 20);
    assert_eq!(
        sink.settle(Duration::from_millis(200), Duration::from_secs(2)),
        20
    );

    let path = live.write("tokenbucket.fsm", TOKENBUCKET);
    let name = live.name("tb");
    let instance = live.run(&path, &name, AttachPoint::TcIngress);
    assert_eq!(instance.mode, if has_tcx() { "tcx" } else { "clsact" });

    let start = Instant::now();
    assert_eq!(send_udp(&socket, sink.addr(), b"burst", 100), 100);
    let burst = sink.settle(Duration::from_millis(200), Duration::from_secs(2)) - 20;
    assert_eq!(burst, 6, "the first packet plus B = 5 tokens");
    assert_eq!(client_state(&name).as_deref(), Some("ACTIVE"));

    // One token comes back per second.
    std::thread::sleep(
        (start + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(send_udp(&socket, sink.addr(), b"later", 3), 3);
    let later = sink.settle(Duration::from_millis(200), Duration::from_secs(2)) - 26;
    assert_eq!(later, 1, "one token back after a second, not more");

    let stats = flowstate_control::open(&name).unwrap().stats().unwrap();
    let packets: Vec<u64> = stats.rows.iter().map(|r| r.packets).collect();
    assert_eq!(
        packets,
        [1, 6, 0, 96],
        "rows: new, take token, restart, drop"
    );
}

/// A TCP server on port 22 that reads every connection to its end and
/// counts the bytes.
struct ByteSink {
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ByteSink {
    fn start(server: &Netns, addr: SocketAddrV4) -> ByteSink {
        let listener = server.tcp_listener(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let count = count.clone();
                std::thread::spawn(move || {
                    stream.set_nonblocking(false).unwrap();
                    let mut buffer = [0u8; 65536];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        ByteSink {
            bytes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ByteSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Segments the kernel retransmitted on this connection: non-zero if any
/// segment (or its ACK) was lost on the way.
/// The sender's retransmission counters (`struct tcp_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retransmits {
    /// Segments sent again (`tcpi_total_retrans`).
    total: u32,
    /// Segments the receiver reported as duplicates it already had, by
    /// D-SACK (`tcpi_dsack_dups`, Linux 5.0): a retransmission that
    /// repaired nothing, sent because an ACK came late.
    duplicates: u32,
}

impl Retransmits {
    /// Retransmissions that delivered data the receiver had not got: the
    /// segments lost on the way.
    fn lost(&self) -> u32 {
        self.total.saturating_sub(self.duplicates)
    }
}

/// Packets the veth pairs between client and server dropped themselves
/// (a full receive ring, counted as the sender's tx_dropped), as
/// `ip -s link` reports them; the switch's program's drops are not among
/// them.
fn interface_drops(lab: &SwitchLab) -> u64 {
    let read = |netns: &Netns, dev: &str| -> u64 {
        let json = netns.ip(&["-s", "-j", "link", "show", "dev", dev]).unwrap();
        let all: serde_json::Value = serde_json::from_str(&json).unwrap();
        let stats = &all[0]["stats64"];
        stats["tx"]["dropped"].as_u64().unwrap_or(0) + stats["rx"]["dropped"].as_u64().unwrap_or(0)
    };
    read(&lab.client, SwitchLab::CLIENT_DEV)
        + read(&lab.switch, SwitchLab::SWITCH_CLIENT_DEV)
        + read(&lab.switch, SwitchLab::SWITCH_SERVER_DEV)
        + read(&lab.server, SwitchLab::SERVER_DEV)
}

/// The connection's segment size (`TCP_MAXSEG`: the MSS in use once
/// connected).
fn max_segment(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mss`.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut mss as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(ret, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
    assert!(mss > 0, "TCP_MAXSEG {mss}");
    mss as usize
}

fn retransmissions(stream: &TcpStream) -> Retransmits {
    use std::os::fd::AsRawFd;
    // Offsets in the kernel's `struct tcp_info` (include/uapi/linux/tcp.h),
    // which only grows at its end; libc's copy stops before dsack_dups.
    const TOTAL_RETRANS: usize = 100;
    const DSACK_DUPS: usize = 216;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(ret, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(len as usize >= DSACK_DUPS + 4, "TCP_INFO of {len} bytes");
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().unwrap());
    Retransmits {
        total: word(TOTAL_RETRANS),
        duplicates: word(DSACK_DUPS),
    }
}

#[test]
fn reload_under_traffic_keeps_open_flows_open_and_loses_nothing() {
    if skip("reload_under_traffic_keeps_open_flows_open_and_loses_nothing") {
        return;
    }
    let mut live = Live::new("reload");
    let sink = ByteSink::start(&live.lab.server, live.ssh());
    let first = live.write("v1.fsm", &portknock_with_idle("30s"));
    // Version 2 adds a register: a different value layout, so the state
    // table is migrated into a new map rather than reused.
    let second_text = portknock_with_idle("30s")
        .replace("states DEFAULT", "registers hits = 0\nstates DEFAULT")
        .replace(
            "OPEN     tcp.dport == 22    => pass",
            "OPEN     tcp.dport == 22    => pass, hits = hits + 1",
        );
    let second = live.write("v2.fsm", &second_text);
    let name = live.name("rl");
    live.run(
        &first,
        &name,
        AttachPoint::Xdp {
            mode: XdpMode::Auto,
        },
    );
    live.knock();
    assert_eq!(client_state(&name).as_deref(), Some("OPEN"));
    // Retransmissions must mean a lost segment, not a late ACK on a busy
    // machine: tail loss probes (sent after ~10 ms without an ACK) count as
    // retransmissions, so turn them off for the client.
    live.lab
        .client
        .sysctl("net.ipv4.tcp_early_retrans", "0")
        .unwrap();
    // One retransmission per original segment (none merged with the next),
    // so that each needless one is matched by one D-SACK (see below).
    live.lab
        .client
        .sysctl("net.ipv4.tcp_retrans_collapse", "0")
        .unwrap();

    // Traffic during the reloads: one long TCP stream of small writes, and
    // a new connection every 10 ms (each SYN must get through at once).
    let mut stream = live
        .lab
        .client
        .tcp_connect(live.ssh(), CONNECT_TIMEOUT)
        .unwrap()
        .expect("connect after knocking");
    stream.set_nodelay(true).unwrap();
    // Writes of one whole segment each: the sender counts a D-SACK's
    // duplicates as its bytes divided by the segment size, rounded up, which
    // is exact only for whole segments (the receiver's GRO may report
    // several in one block).
    let segment = max_segment(&stream);
    let running = Arc::new(AtomicBool::new(true));
    let writer = {
        let running = running.clone();
        std::thread::spawn(move || {
            let chunk = vec![7u8; segment];
            let mut sent = 0u64;
            while running.load(Ordering::Relaxed) {
                stream.write_all(&chunk).unwrap();
                sent += chunk.len() as u64;
                std::thread::sleep(Duration::from_micros(500));
            }
            (stream, sent)
        })
    };
    let connector = {
        let running = running.clone();
        let client = live.lab.client.clone();
        let ssh = live.ssh();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while running.load(Ordering::Relaxed) {
                match client.tcp_connect(ssh, CONNECT_TIMEOUT).unwrap() {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        })
    };

    let drops_before = interface_drops(&live.lab);
    std::thread::sleep(Duration::from_millis(200));
    let mut reports = Vec::new();
    for round in 0..6 {
        let path = if round % 2 == 0 { &second } else { &first };
        let report = live
            .lab
            .switch
            .run_in(|| flowstate_control::reload(&name, path, false))
            .unwrap()
            .unwrap_or_else(|e| panic!("reload {round}: {e}"));
        reports.push(report);
        std::thread::sleep(Duration::from_millis(150));
    }
    running.store(false, Ordering::Relaxed);
    let (stream, sent) = writer.join().unwrap();
    let (connects_ok, connects_failed) = connector.join().unwrap();

    for (round, report) in reports.iter().enumerate() {
        assert_ne!(report.old_prog_id, report.new_prog_id, "round {round}");
        assert!(report.flows_carried >= 1, "round {round}: {report:?}");
        assert_eq!(report.flows_remapped, 0, "round {round}: {report:?}");
    }
    assert_eq!(client_state(&name).as_deref(), Some("OPEN"));
    assert_eq!(connects_failed, 0, "{connects_ok} connects went through");
    assert!(connects_ok > 20, "only {connects_ok} connects in 1 s");
    let deadline = Instant::now() + Duration::from_secs(3);
    while sink.bytes.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.bytes.load(Ordering::Relaxed), sent);
    // A late ACK (a busy machine, a VM whose CPUs take turns) makes the
    // sender resend segments the receiver already has; the receiver's
    // D-SACK for each comes back a moment later. A segment the switch
    // dropped is never reported as a duplicate.
    // A veth whose receive ring is full (its reader starved of CPU on a
    // busy VM) drops too, and counts it; the program's drops are counted
    // nowhere there, so a lost segment the interfaces do not account for
    // is the program's.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut retransmits = retransmissions(&stream);
    let mut interfaces = interface_drops(&live.lab) - drops_before;
    while u64::from(retransmits.lost()) > interfaces && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        retransmits = retransmissions(&stream);
        interfaces = interface_drops(&live.lab) - drops_before;
    }
    eprintln!("retransmissions: {retransmits:?}; dropped by the interfaces: {interfaces}");
    assert!(
        u64::from(retransmits.lost()) <= interfaces,
        "a segment was dropped: {retransmits:?}, and the interfaces dropped {interfaces}"
    );
    drop(stream);
    // Still the same attachment, now running the last version.
    assert_eq!(live.attached().len(), 1, "{:?}", live.attached());
}

#[test]
fn stop_leaves_the_interface_as_before() {
    if skip("stop_leaves_the_interface_as_before") {
        return;
    }
    let mut live = Live::new("stop");
    // A new veth pair reports its carrier a moment after it is up (seconds
    // on a slow VM): compare with the link once it is up, as it stays.
    let show = || {
        live.lab
            .switch
            .ip(&["-d", "link", "show", "dev", DEV])
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut link_before = show();
    while !link_before.contains("state UP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        link_before = show();
    }
    assert!(link_before.contains("state UP"), "{link_before}");
    assert!(live.attached().is_empty());
    let xdp = live.write("portknock.fsm", PORTKNOCK);
    let tc = live.write("tokenbucket.fsm", TOKENBUCKET);
    let (xdp_name, tc_name) = (live.name("x"), live.name("t"));
    live.run(
        &xdp,
        &xdp_name,
        AttachPoint::Xdp {
            mode: XdpMode::Auto,
        },
    );
    live.run(&tc, &tc_name, AttachPoint::TcIngress);
    let both = live.attached();
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.iter().any(|l| l.starts_with("xdp")), "{both:?}");
    let tc_shown = if has_tcx() {
        "tcx/ingress"
    } else {
        "clsact/ingress"
    };
    assert!(both.iter().any(|l| l.contains(tc_shown)), "{both:?}");

    let out = flowstate().args(["stop", &xdp_name]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    flowstate_control::stop(&tc_name).unwrap();
    assert_eq!(live.wait_detached(), Vec::<String>::new());
    let link_after = live
        .lab
        .switch
        .ip(&["-d", "link", "show", "dev", DEV])
        .unwrap();
    assert_eq!(link_before, link_after);
    for name in [&xdp_name, &tc_name] {
        let pins = Path::new("/sys/fs/bpf/flowstate").join(name);
        assert!(!pins.exists(), "{} left behind", pins.display());
    }
    // With nothing attached, the client reaches the server unfiltered.
    let _server = TcpServer::start(&live.lab.server, live.ssh()).unwrap();
    assert!(live.connects());
}

#[test]
fn sigkill_of_a_command_leaves_the_program_running() {
    if skip("sigkill_of_a_command_leaves_the_program_running") {
        return;
    }
    let mut live = Live::new("kill");
    let _server = TcpServer::start(&live.lab.server, live.ssh()).unwrap();
    let path = live.write("portknock.fsm", PORTKNOCK);
    let name = live.name("k");
    live.stop_on_cleanup(&name);

    // `flowstate run` pins and exits; the program outlives it.
    let out = flowstate_in(&live.lab.switch)
        .args(["run", path.to_str().unwrap(), "--dev", DEV, "--name", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(live.attached().len(), 1);

    // A long-running command holding the program's maps: killed with
    // SIGKILL, no handler runs.
    let mut watch = flowstate_in(&live.lab.switch)
        .args(["stats", &name, "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its first screen, so it is killed mid-watch.
    let mut first = [0u8; 64];
    let read = watch.stdout.as_mut().unwrap().read(&mut first).unwrap();
    assert!(read > 0, "stats --watch printed nothing");
    watch.kill().unwrap();
    let status = watch.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    // Still attached, still filtering, state still kept.
    assert_eq!(live.attached().len(), 1);
    assert!(!live.connects(), "TCP 22 open before knocking");
    live.knock();
    assert!(live.connects(), "the knock did not open TCP 22");
    assert_eq!(client_state(&name).as_deref(), Some("OPEN"));

    // list and stop from new processes.
    let out = flowstate_in(&live.lab.switch)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(&name), "{listing}");
    let out = flowstate().args(["stop", &name]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(live.wait_detached(), Vec::<String>::new());
    assert!(live.connects(), "TCP 22 filtered after stop");
}

/// The program ids the demo printed (`attached: program id N, ...`).
fn demo_program_ids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter_map(|l| l.split("attached: program id ").nth(1))
        .filter_map(|rest| rest.split(',').next()?.trim().parse().ok())
        .collect()
}

/// The names in `dir` that `keep` accepts (none when `dir` is absent).
fn names_in(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

/// The demo with process id `pid`, which printed `stdout`, left nothing
/// behind: no namespace, no pin, no program (so no link), no temp copy.
fn assert_demo_left_nothing(pid: u32, stdout: &str) {
    let leftovers = names_in("/run/netns", |n| n.starts_with(&format!("fs-demo-{pid}-")));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let pins = names_in("/sys/fs/bpf/flowstate", |n| n.ends_with(&format!("-{pid}")));
    assert!(pins.is_empty(), "{pins:?}");
    let ids = demo_program_ids(stdout);
    assert!(
        !ids.is_empty(),
        "no program id in the demo's output:\n{stdout}"
    );
    // A program is freed a moment after its last link or pin goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let loaded = loop {
        let loaded: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| flowstate_runtime::program_loaded(id).unwrap())
            .collect();
        if loaded.is_empty() || Instant::now() > deadline {
            break loaded;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(loaded.is_empty(), "programs still loaded: {loaded:?}");
    assert!(!std::env::temp_dir()
        .join(format!("flowstate-demo-{pid}"))
        .exists());
}

#[test]
fn demo_runs_end_to_end() {
    if skip("demo_runs_end_to_end") {
        return;
    }
    let child = flowstate()
        .args(["demo", "--idle", "1", "--burst", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("observations as expected"), "{stdout}");
    assert!(!stdout.contains('✘'), "{stdout}");
    assert!(stdout.contains("server received 6"), "{stdout}");
    // Nothing left: the demo's namespaces carry its pid, its pins its name.
    assert_demo_left_nothing(pid, &stdout);
}

/// The README's demo command on a machine with no iproute2, procps or
/// bpftool: with nothing on PATH, any command the demo ran would fail to
/// start (and its check with it). It asks the kernel itself whether each
/// program is attached, then detached and unloaded.
#[test]
fn demo_needs_no_command_on_path() {
    if skip("demo_needs_no_command_on_path") {
        return;
    }
    let child = flowstate()
        .args(["demo", "--idle", "1", "--burst", "20"])
        .env("PATH", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("observations as expected"), "{stdout}");
    assert!(!stdout.contains('✘'), "{stdout}");
    // Both programs were seen on the interface by the kernel, then gone.
    let ids = demo_program_ids(&stdout);
    assert_eq!(ids.len(), 2, "{stdout}");
    assert!(
        stdout.contains(&format!("the kernel reports on {DEV}: xdp id {} ", ids[0])),
        "{stdout}"
    );
    let tc_shown = if has_tcx() {
        "tcx/ingress ".to_string()
    } else {
        format!("clsact/ingress id {} ", ids[1])
    };
    assert!(
        stdout.contains(&format!("the kernel reports on {DEV}: {tc_shown}")),
        "{stdout}"
    );
    for id in &ids {
        assert!(
            stdout.contains(&format!("program id {id} is unloaded")),
            "{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("has no program attached").count(),
        2,
        "{stdout}"
    );
    assert_demo_left_nothing(pid, &stdout);
}

#[test]
fn ctrl_c_during_the_demo_removes_everything() {
    if skip("ctrl_c_during_the_demo_removes_everything") {
        return;
    }
    let mut child = flowstate()
        .args(["demo", "--idle", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Interrupt while the port-knocking program runs and the client waits
    // out the idle timeout.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "the demo ended before the idle wait:\n{seen}");
        seen += &line;
        if line.contains("stays silent") {
            break;
        }
    }
    let program_pins = Path::new("/sys/fs/bpf/flowstate").join(format!("demo-portknock-{pid}"));
    assert!(
        program_pins.exists(),
        "the program is running at this point"
    );
    let ids = demo_program_ids(&seen);
    assert_eq!(ids.len(), 1, "{seen}");
    assert!(flowstate_runtime::program_loaded(ids[0]).unwrap());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!program_pins.exists(), "pins left after Ctrl-C");
    assert_demo_left_nothing(pid, &seen);
}
