//! Service chains on a live interface (the switch of flowstate-netlab's
//! client/switch/server network): traffic through three functions in
//! order; add, remove, move and replace under TCP traffic with no segment
//! lost and each function's flows kept; a command SIGKILLed at each step
//! of a change, then `repair`.
//!
//! Root with BPF only: elsewhere each test prints `SKIP <test>: <reason>`
//! and passes. Every test builds its own namespaces and chain names (pid
//! and tag); the netlab `Topology` stops the chain and removes the
//! namespaces also when a test fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_control::chain::{self, ChainMeta, ChainSpec, FunctionSpec};
use flowstate_control::{AttachPoint, XdpMode};
use flowstate_netlab::{send_udp, Netns, SwitchLab};

const DEV: &str = SwitchLab::SWITCH_CLIENT_DEV;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

fn skip(test: &str) -> bool {
    let reason = flowstate_netlab::skip_reason().or_else(flowstate_runtime::kernel_unavailable);
    flowstate_testkit::skip_if(test, reason)
}

/// A function keyed by the source address: drops UDP to `drop_port`,
/// passes the rest, counting each flow's packets in `n` (plus `bonus` on
/// each pass: how a replaced version shows it runs).
fn function(name: &str, drop_port: u16, bonus: u32) -> String {
    let pass_update = if bonus == 0 {
        "n = n + 1".to_string()
    } else {
        format!("n = n + {}", 1 + bonus)
    };
    format!(
        "program {name}\nhook xdp\nflow ip.src\nstates S\nregisters n = 0\ndefault pass\ntable\n\
         \x20 S udp.dport == {drop_port} => drop, n = n + 1\n\
         \x20 S * => pass, {pass_update}\nend\n"
    )
}

struct Lab {
    lab: SwitchLab,
    dir: PathBuf,
    chain: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let mut lab = SwitchLab::build(tag).expect("building the network");
        let dir =
            std::env::temp_dir().join(format!("flowstate-chain-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chain = format!("ch-{tag}-{}", std::process::id());
        let (remove, owned) = (dir.clone(), chain.clone());
        lab.topology.on_cleanup("stop the chain", move || {
            let _ = chain::stop(&owned);
            // An instance a failing test ran under the chain's name.
            let _ = flowstate_control::stop(&owned);
            let _ = std::fs::remove_dir_all(&remove);
        });
        Lab { lab, dir, chain }
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn create(&self, files: &[PathBuf]) -> ChainMeta {
        let spec = ChainSpec {
            name: self.chain.clone(),
            dev: DEV.to_string(),
            attach: AttachPoint::Xdp {
                mode: XdpMode::Auto,
            },
            netns: Some(self.lab.switch.name().to_string()),
            functions: files
                .iter()
                .map(|f| FunctionSpec {
                    name: None,
                    program_path: f.clone(),
                })
                .collect(),
        };
        chain::create(&spec).unwrap_or_else(|e| panic!("chain create: {e}"))
    }

    fn udp(&self, port: u16, count: usize) {
        let socket = self
            .lab
            .client
            .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        send_udp(
            &socket,
            SocketAddrV4::new(SwitchLab::SERVER_ADDR, port),
            b"chain",
            count,
        );
    }

    /// The client's `n` in function `function`'s table.
    fn count(&self, function: &str) -> Option<i64> {
        let handle = flowstate_control::open(&format!("{}/{function}", self.chain)).unwrap();
        let row = handle.flow(&SwitchLab::CLIENT_ADDR.to_string()).unwrap()?;
        row.registers
            .iter()
            .find(|(n, _)| n == "n")
            .map(|(_, v)| *v)
    }

    fn order(&self) -> Vec<String> {
        chain::show(&self.chain)
            .unwrap()
            .functions
            .into_iter()
            .map(|f| f.name)
            .collect()
    }
}

/// Waits until `f` holds (packets take a moment through the namespaces).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn three_functions_see_traffic_in_order_and_a_drop_ends_the_chain() {
    if skip("three_functions_see_traffic_in_order_and_a_drop_ends_the_chain") {
        return;
    }
    let lab = Lab::new("order");
    let files = [
        lab.write("a.fsm", &function("fa", 7001, 0)),
        lab.write("b.fsm", &function("fb", 7002, 0)),
        lab.write("c.fsm", &function("fc", 7003, 0)),
    ];
    let meta = lab.create(&files);
    assert_eq!(lab.order(), ["fa", "fb", "fc"]);
    assert_eq!(chain::check(&meta), None);
    lab.udp(9000, 5);
    assert!(
        eventually(|| lab.count("fc") == Some(5)),
        "{:?}",
        lab.count("fc")
    );
    assert_eq!(lab.count("fa"), Some(5));
    assert_eq!(lab.count("fb"), Some(5));
    // The first drops 7001: the others never see it.
    lab.udp(7001, 3);
    assert!(eventually(|| lab.count("fa") == Some(8)));
    // The second drops 7002: the third never sees it.
    lab.udp(7002, 2);
    assert!(eventually(|| lab.count("fb") == Some(7)));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(lab.count("fa"), Some(10));
    assert_eq!(lab.count("fc"), Some(5));
    // Visible in `flowstate list` and as CHAIN/FUNC to `flows`.
    let out = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .args(["flows", &format!("{}/fb", lab.chain)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("n=7"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .arg("list")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("CHAIN {} on {DEV}", lab.chain)) && text.contains("fa -> fb -> fc"),
        "{text}"
    );
    // An instance cannot take the chain's name.
    let clash = flowstate_control::RunSpec {
        program_path: files[0].clone(),
        dev: SwitchLab::SWITCH_SERVER_DEV.to_string(),
        name: Some(lab.chain.clone()),
        ..Default::default()
    };
    let refused = flowstate_control::run_in_netns(&clash, Some(lab.lab.switch.name()));
    assert!(
        matches!(refused, Err(flowstate_control::ControlError::NameTaken(_))),
        "{:?}",
        refused.map(|i| i.name)
    );
    chain::stop(&lab.chain).unwrap();
    assert!(
        lab.lab.switch.xdp_programs(DEV).unwrap().is_empty(),
        "stop leaves the interface bare"
    );
}

/// A TCP server that reads every connection to its end, counting bytes.
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

/// Retransmitted segments minus those the receiver reported as
/// duplicates (D-SACK): the segments lost on the way (`struct tcp_info`:
/// `tcpi_total_retrans` at 100, `tcpi_dsack_dups` at 216).
fn lost_segments(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
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
    assert!(len as usize >= 220, "TCP_INFO of {len} bytes");
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().unwrap());
    word(100).saturating_sub(word(216))
}

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
    assert_eq!(ret, 0);
    mss.max(1) as usize
}

/// Packets the veths dropped themselves (full rings), as `ip -s link`
/// counts them: not the program's.
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

#[test]
fn add_remove_move_replace_under_tcp_traffic_lose_nothing_and_keep_flows() {
    if skip("add_remove_move_replace_under_tcp_traffic_lose_nothing_and_keep_flows") {
        return;
    }
    let lab = Lab::new("live");
    let ssh = SocketAddrV4::new(SwitchLab::SERVER_ADDR, 22);
    let sink = ByteSink::start(&lab.lab.server, ssh);
    let a = lab.write("a.fsm", &function("fa", 7001, 0));
    let b = lab.write("b.fsm", &function("fb", 7002, 0));
    let c = lab.write("c.fsm", &function("fc", 7003, 0));
    let b2 = lab.write("b2.fsm", &function("fb", 7002, 1000));
    lab.create(&[a.clone(), b.clone()]);
    for (key, value) in [
        ("net.ipv4.tcp_early_retrans", "0"),
        ("net.ipv4.tcp_retrans_collapse", "0"),
    ] {
        lab.lab.client.sysctl(key, value).unwrap();
    }
    let mut stream = lab
        .lab
        .client
        .tcp_connect(ssh, CONNECT_TIMEOUT)
        .unwrap()
        .expect("connect through the chain");
    stream.set_nodelay(true).unwrap();
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
        let client = lab.lab.client.clone();
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
    let drops_before = interface_drops(&lab.lab);
    std::thread::sleep(Duration::from_millis(200));
    // Each kept function's count only grows across every change: read
    // right before and right after it (a table started afresh would read
    // a few packets, not the hundreds before).
    let counts = |lab: &Lab| -> Vec<(String, i64)> {
        lab.order()
            .into_iter()
            .map(|name| {
                let n = lab.count(&name).unwrap_or(0);
                (name, n)
            })
            .collect()
    };
    let steps: Vec<(&str, Box<Step>)> = vec![
        (
            "add",
            Box::new(|| {
                chain::add(
                    &lab.chain,
                    &FunctionSpec {
                        name: None,
                        program_path: c.clone(),
                    },
                    Some(1),
                )
            }),
        ),
        (
            "move",
            Box::new(|| chain::move_function(&lab.chain, "fa", 2)),
        ),
        (
            "replace",
            Box::new(|| chain::replace(&lab.chain, "fb", &b2)),
        ),
        ("remove", Box::new(|| chain::remove(&lab.chain, "fc"))),
        (
            "move back",
            Box::new(|| chain::move_function(&lab.chain, "fa", 0)),
        ),
    ];
    let mut orders = Vec::new();
    for (what, step) in &steps {
        let before = counts(&lab);
        step().unwrap_or_else(|e| panic!("{what}: {e}"));
        let after = counts(&lab);
        for (name, n) in &before {
            if let Some((_, m)) = after.iter().find(|(other, _)| other == name) {
                assert!(m >= n, "{what}: {name} went from {n} to {m}");
            }
        }
        orders.push(lab.order());
        std::thread::sleep(Duration::from_millis(150));
    }
    running.store(false, Ordering::Relaxed);
    let (stream, sent) = writer.join().unwrap();
    let (connects_ok, connects_failed) = connector.join().unwrap();
    assert_eq!(
        orders,
        [
            vec!["fa", "fc", "fb"],
            vec!["fc", "fb", "fa"],
            vec!["fc", "fb", "fa"],
            vec!["fb", "fa"],
            vec!["fa", "fb"],
        ]
    );
    assert_eq!(connects_failed, 0, "{connects_ok} connects went through");
    assert!(connects_ok > 10, "only {connects_ok} connects");
    let deadline = Instant::now() + Duration::from_secs(3);
    while sink.bytes.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.bytes.load(Ordering::Relaxed), sent);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut lost = lost_segments(&stream);
    let mut interfaces = interface_drops(&lab.lab) - drops_before;
    while u64::from(lost) > interfaces && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        lost = lost_segments(&stream);
        interfaces = interface_drops(&lab.lab) - drops_before;
    }
    eprintln!("lost segments: {lost}; dropped by the interfaces: {interfaces}");
    assert!(
        u64::from(lost) <= interfaces,
        "{lost} segment(s) lost, the interfaces dropped {interfaces}"
    );
    // The replaced fb runs (its pass adds 1001) and kept its count.
    let before = lab.count("fb").unwrap();
    lab.udp(9000, 1);
    assert!(eventually(|| lab.count("fb") == Some(before + 1001)));
    assert_eq!(chain::check(&chain::show(&lab.chain).unwrap()), None);
    drop(stream);
}

/// One live change of the chain.
type Step<'a> = dyn Fn() -> Result<ChainMeta, flowstate_control::ControlError> + 'a;

/// Generations and function tables on bpffs for chain `name`.
fn pinned(name: &str, what: &str) -> Vec<String> {
    let root = flowstate_control::pin_root();
    let dir = root
        .with_file_name(format!(
            "{}-chains",
            root.file_name().unwrap().to_string_lossy()
        ))
        .join(name)
        .join(what);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn sigkill_at_each_step_of_a_change_then_repair_leaves_the_old_or_the_new_chain() {
    if skip("sigkill_at_each_step_of_a_change_then_repair_leaves_the_old_or_the_new_chain") {
        return;
    }
    let lab = Lab::new("crash");
    let a = lab.write("a.fsm", &function("fa", 7001, 0));
    let b = lab.write("b.fsm", &function("fb", 7002, 0));
    let c = lab.write("c.fsm", &function("fc", 7003, 0));
    lab.create(&[a, b]);
    lab.udp(9000, 2);
    assert!(eventually(|| lab.count("fb") == Some(2)));
    let flowstate = || Command::new(env!("CARGO_BIN_EXE_flowstate"));
    for (index, step) in chain::CHANGE_STEPS.iter().enumerate() {
        let before = lab.order();
        let status = flowstate()
            .env("FLOWSTATE_TEST_CRASH_AT", format!("chain-change:{step}"))
            .args([
                "chain",
                "add",
                &lab.chain,
                &format!("c{index}={}", c.display()),
            ])
            .status()
            .unwrap();
        assert!(!status.success(), "{step}: the command was not killed");
        let out = flowstate()
            .args(["chain", "repair", &lab.chain])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{step}: {said}");
        let after = lab.order();
        let mut added = before.clone();
        added.push(format!("c{index}"));
        let finished = step != &"load" && step != &"swap";
        if finished {
            assert_eq!(after, added, "{step}: {said}");
            assert!(said.contains("finished"), "{step}: {said}");
        } else {
            assert_eq!(after, before, "{step}: {said}");
            assert!(said.contains("undone"), "{step}: {said}");
        }
        let meta = chain::show(&lab.chain).unwrap();
        assert_eq!(
            chain::check(&meta),
            None,
            "{step}: the link runs the recorded head"
        );
        assert_eq!(
            pinned(&lab.chain, "gen"),
            [meta.generation.to_string()],
            "{step}: one generation left"
        );
        let mut tables = after.clone();
        tables.sort();
        assert_eq!(
            pinned(&lab.chain, "fn"),
            tables,
            "{step}: one table per function"
        );
        // The chain still runs whole, its tables kept.
        let n = lab.count("fb").unwrap();
        lab.udp(9000, 1);
        assert!(eventually(|| lab.count("fb") == Some(n + 1)), "{step}");
    }
    chain::stop(&lab.chain).unwrap();
    // Create and stop, killed at each step, are repaired too.
    for step in chain::CREATE_STEPS.iter().chain(chain::STOP_STEPS) {
        let name = format!("{}-k", lab.chain);
        let owned = name.clone();
        let _cleanup = Defer(Some(move || {
            let _ = chain::stop(&owned);
        }));
        let op = if chain::CREATE_STEPS.contains(step) {
            "create"
        } else {
            "stop"
        };
        if op == "stop" {
            let status = flowstate()
                .args([
                    "chain", "create", &name, "--dev", DEV, "--hook", "xdp", "--netns",
                ])
                .arg(lab.lab.switch.name())
                .arg(lab.dir.join("c.fsm"))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut command = flowstate();
        command.env("FLOWSTATE_TEST_CRASH_AT", format!("chain-{op}:{step}"));
        if op == "create" {
            command
                .args([
                    "chain", "create", &name, "--dev", DEV, "--hook", "xdp", "--netns",
                ])
                .arg(lab.lab.switch.name())
                .arg(lab.dir.join("c.fsm"));
        } else {
            command.args(["chain", "stop", &name]);
        }
        assert!(!command.status().unwrap().success(), "{op}:{step}");
        let out = flowstate()
            .args(["chain", "repair", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{op}:{step}");
        let running = chain::show(&name).ok();
        let kept = op == "create" && (step == &"write-meta");
        assert_eq!(running.is_some(), kept, "{op}:{step}");
        if let Some(meta) = running {
            assert_eq!(chain::check(&meta), None, "{op}:{step}");
            chain::stop(&name).unwrap();
        }
        assert!(pinned(&name, "").is_empty(), "{op}:{step}: pins left");
        assert!(
            lab.lab.switch.xdp_programs(DEV).unwrap().is_empty(),
            "{op}:{step}: the interface is left bare"
        );
    }
}

/// Runs its closure on drop.
struct Defer<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Defer<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
