//! The control plane on real interfaces: a veth pair per test, one end in
//! the root namespace (where programs attach), the other in a namespace
//! the test creates, sending real packets. Everything the tests create is
//! removed by Drop guards, also when a test fails. Needs root with BPF;
//! otherwise each test prints `SKIP <test>: <reason>` and passes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_runtime::TcDirection;

use flowstate_control::{
    list, open, reload, run, run_in_netns, stop, AttachPoint, ControlError, FlowsMigration,
    RunSpec, TcPlacement, TcVia, XdpMode,
};

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    if caps & (1 << 12) == 0 || caps & ((1 << 39) | (1 << 21)) == 0 {
        return Some("needs root (CAP_BPF, CAP_NET_ADMIN)".into());
    }
    if !sh("ip netns list").0 {
        return Some("no `ip` command with netns support".into());
    }
    None
}

macro_rules! require_root {
    ($name:expr) => {
        if flowstate_testkit::skip_if($name, skip_reason()) {
            return;
        }
    };
}

fn sh(cmd: &str) -> (bool, String) {
    match Command::new("sh").arg("-c").arg(cmd).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "`{cmd}` failed: {out}");
    out
}

/// A veth pair: `host` in the root namespace (10.X.T.1), `peer` in
/// namespace `ns` (10.X.T.2).
struct Net {
    ns: String,
    host: String,
    host_ip: String,
    peer_ip: String,
}

impl Net {
    fn new(tag: u8) -> Net {
        let pid = std::process::id();
        let ns = format!("fs-ctl-{pid}-{tag}");
        let host = format!("fc{}h{tag}", pid % 100_000);
        let peer = format!("fc{}p{tag}", pid % 100_000);
        let net = format!("10.{}.{tag}", 100 + pid % 100);
        let n = Net {
            ns: ns.clone(),
            host: host.clone(),
            host_ip: format!("{net}.1"),
            peer_ip: format!("{net}.2"),
        };
        must(&format!("ip netns add {ns}"));
        must(&format!(
            "ip link add {host} type veth peer name {peer} && ip link set {peer} netns {ns} && \
             ip addr add {net}.1/24 dev {host} && ip link set {host} up && \
             ip -n {ns} addr add {net}.2/24 dev {peer} && ip -n {ns} link set {peer} up && \
             ip -n {ns} link set lo up"
        ));
        n
    }

    /// `count` UDP datagrams from the peer to the host, port `port`.
    fn udp(&self, port: u16, count: u32) {
        must(&format!(
            "ip netns exec {} bash -c 'for i in $(seq {count}); do echo x > /dev/udp/{}/{port}; \
             done'",
            self.ns, self.host_ip
        ));
    }

    fn xdp_shown(&self) -> bool {
        must(&format!("ip -d link show dev {}", self.host)).contains("prog/xdp")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {}", self.host));
        let _ = sh(&format!("ip netns del {}", self.ns));
    }
}

/// Stops the instance on drop, so a failing test leaves no pins.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = stop(&self.0);
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A program text in a file of its own.
struct TempProgram(PathBuf);

impl TempProgram {
    fn new(tag: &str, text: &str) -> TempProgram {
        let path = std::env::temp_dir().join(format!("fs-ctl-{}-{tag}.fsm", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempProgram(path)
    }
}

impl Drop for TempProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `program` on the network's host interface under `name`; the guard
/// stops it (and removes its pins) when dropped.
fn start(net: &Net, program: &Path, name: &str) -> Running {
    run(&RunSpec {
        program_path: program.to_path_buf(),
        dev: net.host.clone(),
        attach: None,
        name: Some(name.to_string()),
        tc: Default::default(),
    })
    .unwrap();
    Running(name.to_string())
}

fn unique(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

fn pins_of(name: &str) -> PathBuf {
    flowstate_control::pin_root().join(name)
}

fn meta_of(name: &str) -> PathBuf {
    flowstate_control::meta_dir().join(format!("{name}.json"))
}

#[test]
fn run_list_stop_leaves_the_interface_as_before() {
    require_root!("run_list_stop_leaves_the_interface_as_before");
    let net = Net::new(1);
    assert!(!net.xdp_shown());
    let name = unique("rls");
    let instance = run(&RunSpec {
        program_path: example("portknock.fsm"),
        dev: net.host.clone(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    })
    .unwrap();
    let _guard = Running(name.clone());
    assert_eq!(instance.name, name);
    assert_eq!(instance.mode, "native", "veth has native XDP");
    assert!(instance.prog_id > 0);
    // Every fd of this process is closed by now: the pins keep it running.
    assert!(net.xdp_shown());
    assert!(pins_of(&name).join("link").exists());
    assert!(pins_of(&name).join("maps/flows").exists());
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).expect("listed");
    assert_eq!(mine.problem, None);
    assert_eq!(mine.dev, net.host);
    assert_eq!(mine.prog_id, instance.prog_id);
    assert_eq!(mine.source_hash.len(), 12);
    let bpftool = must(&format!("bpftool prog show id {}", instance.prog_id));
    assert!(bpftool.contains("xdp"), "{bpftool}");

    stop(&name).unwrap();
    assert!(!net.xdp_shown(), "stop detaches");
    assert!(!pins_of(&name).exists());
    assert!(!meta_of(&name).exists());
    assert!(list().unwrap().iter().all(|i| i.name != name));
    assert!(matches!(stop(&name), Err(ControlError::NotRunning(_))));
}

/// TC ingress through what the kernel has (TCX from 6.6, else clsact)
/// beside generic XDP on one interface. Without TCX, an explicit
/// `--tc-attach tcx` is refused first, leaving nothing behind.
#[test]
fn tc_ingress_through_tcx_and_generic_xdp() {
    require_root!("tc_ingress_through_tcx_and_generic_xdp");
    let has_tcx = flowstate_runtime::kernel_features()
        .get(flowstate_runtime::Feature::Tcx)
        .is_present();
    let net = Net::new(2);
    let ifindex = must(&format!("cat /sys/class/net/{}/ifindex", net.host))
        .trim()
        .parse::<u32>()
        .unwrap();
    let tc = unique("tc");
    let spec = |via: TcVia| RunSpec {
        program_path: example("portknock.fsm"),
        dev: net.host.clone(),
        attach: Some(AttachPoint::TcIngress),
        name: Some(tc.clone()),
        tc: TcPlacement {
            via,
            ..Default::default()
        },
    };
    let clsact_filters =
        || flowstate_runtime::clsact::filters(ifindex, TcDirection::Ingress).unwrap();
    if !has_tcx {
        let err = run(&spec(TcVia::Tcx)).unwrap_err();
        let _g = Running(tc.clone());
        let text = err.to_string();
        assert!(
            text.contains("has no TCX") && text.contains("nothing was attached"),
            "{text}"
        );
        assert!(!pins_of(&tc).exists() && !meta_of(&tc).exists());
        assert!(list().unwrap().iter().all(|i| i.name != tc));
        assert!(clsact_filters().is_empty());
    }
    let instance = run(&spec(TcVia::Auto)).unwrap();
    let _g1 = Running(tc.clone());
    let tcx = |dev: &str| flowstate_runtime::tcx_programs(dev, TcDirection::Ingress).unwrap();
    if has_tcx {
        assert_eq!(instance.mode, "tcx");
        assert_eq!(tcx(&net.host), ["portknock"]);
    } else {
        assert_eq!(instance.mode, "clsact");
        let ids: Vec<u32> = clsact_filters().iter().map(|f| f.prog_id).collect();
        assert_eq!(ids, [instance.prog_id]);
    }
    let xdp = unique("gen");
    let generic = run(&RunSpec {
        program_path: example("portknock.fsm"),
        dev: net.host.clone(),
        attach: Some(AttachPoint::Xdp {
            mode: XdpMode::Generic,
        }),
        name: Some(xdp.clone()),
        tc: Default::default(),
    })
    .unwrap();
    let _g2 = Running(xdp.clone());
    assert_eq!(generic.mode, "generic");
    // Generic XDP runs before TC and drops the first knock, so only the
    // XDP instance's table learns it.
    net.udp(1111, 1);
    let flows = open(&xdp).unwrap().flows(None, None).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state, "STEP_1");
    assert!(open(&tc).unwrap().flows(None, None).unwrap().is_empty());
    stop(&tc).unwrap();
    stop(&xdp).unwrap();
    assert!(!net.xdp_shown());
    if !has_tcx {
        assert!(clsact_filters().is_empty(), "stop deletes the filter");
        return;
    }
    // The kernel releases a TCX link shortly after its last reference.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tcx(&net.host).is_empty() {
        assert!(Instant::now() < deadline, "TC program still attached");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failures_leave_nothing_behind() {
    require_root!("failures_leave_nothing_behind");
    let net = Net::new(3);
    let name = unique("fail");
    let bad = TempProgram::new("bad", "program bad\nflow no.such.field\n");
    let err = run(&RunSpec {
        program_path: bad.0.clone(),
        dev: net.host.clone(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    })
    .unwrap_err();
    assert!(matches!(err, ControlError::Program { .. }), "{err}");
    assert!(!pins_of(&name).exists() && !meta_of(&name).exists());

    let err = run(&RunSpec {
        program_path: example("portknock.fsm"),
        dev: "fs-no-such-dev".into(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    })
    .unwrap_err();
    assert!(matches!(err, ControlError::NoSuchInterface(_)), "{err}");
    assert!(!pins_of(&name).exists() && !meta_of(&name).exists());

    let err = run(&RunSpec {
        program_path: PathBuf::from("/nonexistent/p.fsm"),
        dev: net.host.clone(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    })
    .unwrap_err();
    assert!(matches!(err, ControlError::ReadSource { .. }), "{err}");

    // Name taken: refused before touching anything; the first keeps running.
    let spec = RunSpec {
        program_path: example("portknock.fsm"),
        dev: net.host.clone(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    };
    let first = run(&spec).unwrap();
    let _guard = Running(name.clone());
    let err = run(&spec).unwrap_err();
    assert!(matches!(err, ControlError::NameTaken(_)), "{err}");
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).unwrap();
    assert_eq!((mine.prog_id, mine.problem.clone()), (first.prog_id, None));

    // A second XDP program on the same interface: attach fails, pins go.
    let other = unique("fail2");
    let err = run(&RunSpec {
        name: Some(other.clone()),
        ..spec.clone()
    })
    .unwrap_err();
    assert!(matches!(err, ControlError::Attach { .. }), "{err}");
    assert!(!pins_of(&other).exists() && !meta_of(&other).exists());
    stop(&name).unwrap();

    let err = run(&RunSpec {
        name: Some("../escape".into()),
        ..spec
    })
    .unwrap_err();
    assert!(matches!(err, ControlError::InvalidName(_)), "{err}");
}

/// A program whose only row redirects to `port`.
fn redirecting(port: &str) -> String {
    format!(
        "program redir\nhook xdp\nflow ip.src\nstates A\ndefault pass\ntable\n  \
         * udp.dport == 9 => redirect \"{port}\"\n  * * => pass\nend\n"
    )
}

#[test]
fn redirect_ports_resolve_where_the_program_runs() {
    require_root!("redirect_ports_resolve_where_the_program_runs");
    let net = Net::new(11);
    let peer = format!("fc{}p11", std::process::id() % 100_000);
    let name = unique("ports");
    let missing = TempProgram::new("ports-missing", &redirecting("fs-no-port0"));
    let host_port = TempProgram::new("ports-host", &redirecting(&net.host));
    let peer_port = TempProgram::new("ports-peer", &redirecting(&peer));
    let spec = |program: &TempProgram, dev: &str| RunSpec {
        program_path: program.0.clone(),
        dev: dev.to_string(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    };

    // A port missing here: refused, nothing left behind.
    let err = run(&spec(&missing, &net.host)).unwrap_err();
    assert!(
        matches!(&err, ControlError::NoSuchPort { port, .. } if port == "fs-no-port0"),
        "{err}"
    );
    assert!(err.to_string().contains("fs-no-port0"), "{err}");
    assert!(!pins_of(&name).exists() && !meta_of(&name).exists());

    // Inside the namespace, names are the namespace's: the host end is
    // not there, the peer is.
    let err = run_in_netns(&spec(&host_port, &peer), Some(&net.ns)).unwrap_err();
    assert!(
        matches!(&err, ControlError::NoSuchPort { place, .. } if place.contains(&net.ns)),
        "{err}"
    );
    assert!(!pins_of(&name).exists() && !meta_of(&name).exists());
    let first = run_in_netns(&spec(&peer_port, &peer), Some(&net.ns)).unwrap();
    let _guard = Running(name.clone());

    // Reload resolves in the instance's namespace too: a program naming
    // the host end is refused there and the running one stays.
    let err = reload(&name, &host_port.0, false).unwrap_err();
    assert!(matches!(err, ControlError::NoSuchPort { .. }), "{err}");
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).unwrap();
    assert_eq!((mine.prog_id, mine.problem.clone()), (first.prog_id, None));
    reload(&name, &peer_port.0, false).unwrap();
}

const CTL: &str = "program ctl\nhook xdp\nflow ip.src\nstates NEW, SEEN, OPEN\n\
                   registers count = 0\nglobals total = 5\ndefault pass\ntable\n\
                   \x20 * udp.dport == 9 => drop, count = count + 1, total = total + 1, next SEEN\n\
                   \x20 * * => pass\nend\n";

#[test]
fn flows_edits_globals_and_stats_on_real_packets() {
    require_root!("flows_edits_globals_and_stats_on_real_packets");
    let net = Net::new(4);
    let prog = TempProgram::new("ctl", CTL);
    let name = unique("edit");
    let _guard = start(&net, &prog.0, &name);
    let handle = open(&name).unwrap();
    assert_eq!(handle.globals().unwrap(), [("total".to_string(), 5)]);

    net.udp(9, 3);
    let flows = handle.flows(None, None).unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let flow = &flows[0];
    assert_eq!(flow.key, net.peer_ip);
    assert_eq!(flow.state, "SEEN");
    assert_eq!(flow.registers, [("count".to_string(), 3)]);
    assert_eq!(handle.globals().unwrap(), [("total".to_string(), 8)]);
    let stats = handle.stats().unwrap();
    assert_eq!(stats.rows[0].packets, 3);
    assert!(stats.rows[0].bytes >= 3 * 42);
    assert_eq!(stats.rows[0].line, 9);
    assert!(
        stats.rows[0].text.contains("udp.dport == 9"),
        "{}",
        stats.rows[0].text
    );
    assert_eq!(stats.flows_by_state[1], ("SEEN".to_string(), 1));

    handle.set_state(&net.peer_ip, "OPEN").unwrap();
    handle.set_register(&net.peer_ip, "count", 100).unwrap();
    handle.set_global("total", -1).unwrap();
    net.udp(9, 1);
    let flow = handle.flow(&net.peer_ip).unwrap().unwrap();
    assert_eq!(flow.registers, [("count".to_string(), 101)]);
    assert_eq!(flow.state, "SEEN", "the row's next state after the edit");
    assert_eq!(handle.globals().unwrap(), [("total".to_string(), 0)]);
    assert_eq!(handle.flows(Some("OPEN"), None).unwrap().len(), 0);
    assert_eq!(handle.flows(Some("SEEN"), Some(5)).unwrap().len(), 1);

    // A flow made from user space, then deleted; then a flush.
    handle.set_state("10.9.9.9", "OPEN").unwrap();
    assert_eq!(handle.flows(Some("OPEN"), None).unwrap()[0].key, "10.9.9.9");
    handle.delete_flow("10.9.9.9").unwrap();
    assert!(matches!(
        handle.delete_flow("10.9.9.9"),
        Err(ControlError::NoSuchFlow(_))
    ));
    assert_eq!(handle.flush().unwrap(), 1);
    assert!(handle.flows(None, None).unwrap().is_empty());

    // Bad names and keys say what exists.
    let err = handle
        .set_state(&net.peer_ip, "NOPE")
        .unwrap_err()
        .to_string();
    assert!(err.contains("NEW, SEEN, OPEN"), "{err}");
    assert!(handle.set_register(&net.peer_ip, "nope", 1).is_err());
    assert!(handle.set_global("nope", 1).is_err());
    assert!(matches!(
        handle.set_state("10.0.0", "OPEN"),
        Err(ControlError::Key(_))
    ));
    assert!(handle.events().is_err(), "no controller action");
}

#[test]
fn reload_keeps_the_globals_values() {
    require_root!("reload_keeps_the_globals_values");
    let net = Net::new(12);
    let prog = TempProgram::new("glob1", CTL);
    let name = unique("globals");
    let _guard = start(&net, &prog.0, &name);
    let total = |name: &str| open(name).unwrap().globals().unwrap();
    // bpftool reads the pinned map's values by name.
    let pin = pins_of(&name).join("maps").join("globals");
    let dump = must(&format!("bpftool -j map dump pinned {}", pin.display()));
    assert!(dump.contains("\"total\":5"), "{dump}");
    net.udp(9, 3);
    assert_eq!(total(&name), [("total".to_string(), 8)]);
    let dump = must(&format!("bpftool -j map dump pinned {}", pin.display()));
    assert!(dump.contains("\"total\":8"), "{dump}");
    open(&name).unwrap().set_global("total", 50).unwrap();

    // Same globals, another initial value and another row: the running
    // map is kept as it is (the loader must not write the object's
    // initial values over it), and the new program adds to it.
    let v2 = TempProgram::new(
        "glob2",
        &CTL.replace("globals total = 5", "globals total = 1000")
            .replace("udp.dport == 9", "udp.dport == 7"),
    );
    reload(&name, &v2.0, false).unwrap();
    assert_eq!(total(&name), [("total".to_string(), 50)]);
    net.udp(7, 2);
    assert_eq!(total(&name), [("total".to_string(), 52)]);

    // A global added: a new map, `total` carried by name, `extra` at its
    // initial value.
    let v3 = TempProgram::new(
        "glob3",
        &CTL.replace("globals total = 5", "globals total = 5, extra = -3"),
    );
    reload(&name, &v3.0, false).unwrap();
    let handle = open(&name).unwrap();
    assert_eq!(
        handle.globals().unwrap(),
        [("total".to_string(), 52), ("extra".to_string(), -3)]
    );
    net.udp(9, 1);
    assert_eq!(handle.globals().unwrap()[0], ("total".to_string(), 53));
}

#[test]
fn an_earlier_flowstates_globals_are_read_and_moved_on_reload() {
    require_root!("an_earlier_flowstates_globals_are_read_and_moved_on_reload");
    let net = Net::new(13);
    let prog = TempProgram::new("old1", CTL);
    let name = unique("oldglobals");
    let _guard = start(&net, &prog.0, &name);
    // What flowstate before `.data` pinned: a map named `globals` holding
    // each global's difference from its initial value (total = 5 + 37).
    let pin = pins_of(&name).join("maps").join("globals");
    std::fs::remove_file(&pin).unwrap();
    must(&format!(
        "bpftool map create {} type array key 4 value 8 entries 1 name globals",
        pin.display()
    ));
    must(&format!(
        "bpftool map update pinned {} key 0 0 0 0 value 37 0 0 0 0 0 0 0",
        pin.display()
    ));
    let handle = open(&name).unwrap();
    assert_eq!(handle.globals().unwrap(), [("total".to_string(), 42)]);
    let err = handle.set_global("total", 1).unwrap_err().to_string();
    assert!(
        err.contains("earlier flowstate") && err.contains("flowstate reload"),
        "{err}"
    );
    // A reload with the same globals moves them into the object's `.data`
    // map, by value.
    reload(&name, &prog.0, false).unwrap();
    let handle = open(&name).unwrap();
    assert_eq!(handle.globals().unwrap(), [("total".to_string(), 42)]);
    handle.set_global("total", 10).unwrap();
    net.udp(9, 1);
    assert_eq!(handle.globals().unwrap(), [("total".to_string(), 11)]);
}

#[test]
fn reload_keeps_state_and_remaps_by_name() {
    require_root!("reload_keeps_state_and_remaps_by_name");
    let net = Net::new(5);
    let name = unique("reload");
    let source = std::fs::read_to_string(example("portknock.fsm")).unwrap();
    let v1 = TempProgram::new("pk1", &source);
    let first = run(&RunSpec {
        program_path: v1.0.clone(),
        dev: net.host.clone(),
        attach: None,
        name: Some(name.clone()),
        tc: Default::default(),
    })
    .unwrap();
    let _guard = Running(name.clone());
    // The knock, with real packets: the flow ends OPEN.
    for port in [1111, 2222, 3333, 4444] {
        net.udp(port, 1);
    }
    let handle = open(&name).unwrap();
    assert_eq!(handle.flow(&net.peer_ip).unwrap().unwrap().state, "OPEN");

    // New rows, same states: the running table is reused.
    let v2 = TempProgram::new(
        "pk2",
        &source.replace("tcp.dport == 22", "tcp.dport == 2200"),
    );
    let report = reload(&name, &v2.0, false).unwrap();
    assert_eq!(report.flows, FlowsMigration::Reused);
    assert_eq!((report.flows_carried, report.flows_remapped), (1, 0));
    assert!(report.counters_reset);
    assert_ne!(report.new_prog_id, first.prog_id);
    assert!(net.xdp_shown());
    let handle = open(&name).unwrap();
    assert_eq!(handle.flow(&net.peer_ip).unwrap().unwrap().state, "OPEN");
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).unwrap();
    assert_eq!(mine.prog_id, report.new_prog_id);
    assert_eq!(mine.problem, None);
    assert_eq!(mine.reloads, 1);

    // A register added and STEP_3 renamed: migrated, OPEN stays OPEN,
    // the flow in STEP_3 goes back to DEFAULT and is counted.
    handle.set_state("10.1.2.3", "STEP_3").unwrap();
    let v3 = TempProgram::new(
        "pk3",
        &source
            .replace("STEP_3", "STEP_THREE")
            .replace("states DEFAULT", "registers seen = 7\nstates DEFAULT"),
    );
    let report = reload(&name, &v3.0, false).unwrap();
    assert_eq!(report.flows, FlowsMigration::Migrated);
    assert_eq!((report.flows_carried, report.flows_remapped), (2, 1));
    let handle = open(&name).unwrap();
    let flow = handle.flow(&net.peer_ip).unwrap().unwrap();
    assert_eq!(flow.state, "OPEN");
    assert_eq!(flow.registers, [("seen".to_string(), 7)]);
    assert_eq!(handle.flow("10.1.2.3").unwrap().unwrap().state, "DEFAULT");
    // The new program runs on the migrated table: OPEN drops UDP 9999
    // without leaving OPEN.
    net.udp(9999, 1);
    assert_eq!(
        handle.flow(&net.peer_ip).unwrap().unwrap().state,
        "OPEN",
        "the program uses the migrated map"
    );

    // Another key: refused, then accepted with reset_state.
    let v4 = TempProgram::new("pk4", &source.replace("flow ip.src", "flow ip.dst"));
    let err = reload(&name, &v4.0, false).unwrap_err();
    assert!(
        matches!(err, ControlError::KeyLayoutChanged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--reset-state"));
    assert_eq!(open(&name).unwrap().flows(None, None).unwrap().len(), 2);
    let report = reload(&name, &v4.0, true).unwrap();
    assert_eq!(report.flows, FlowsMigration::Reset);
    assert_eq!(report.flows_carried, 0);
    assert!(open(&name).unwrap().flows(None, None).unwrap().is_empty());
    // A reload that fails to compile leaves the running program alone.
    let bad = TempProgram::new("pk5", "program x\n");
    assert!(reload(&name, &bad.0, false).is_err());
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).unwrap();
    assert_eq!(
        (mine.prog_id, mine.problem.clone()),
        (report.new_prog_id, None)
    );
    let leftovers: Vec<_> = std::fs::read_dir(pins_of(&name).join("maps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("next_"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    stop(&name).unwrap();
    assert!(!net.xdp_shown());
}

/// Runs in a child process (see `killed_runner_leaves_the_program_running`):
/// starts an instance, says so, and waits to be killed.
#[test]
#[ignore = "helper run by another test in a child process"]
fn child_runs_and_waits() {
    let (Ok(name), Ok(dev)) = (std::env::var("FS_CTL_NAME"), std::env::var("FS_CTL_DEV")) else {
        return;
    };
    run(&RunSpec {
        program_path: example("portknock.fsm"),
        dev,
        attach: None,
        name: Some(name),
        tc: Default::default(),
    })
    .unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn killed_runner_leaves_the_program_running() {
    require_root!("killed_runner_leaves_the_program_running");
    let net = Net::new(6);
    let name = unique("kill");
    let _guard = Running(name.clone());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_runs_and_waits",
            "--nocapture",
        ])
        .env("FS_CTL_NAME", &name)
        .env("FS_CTL_DEV", &net.host)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("ready") {
            ready = true;
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert!(ready, "the child started the program");
    // kill -9: no destructor of the child runs.
    must(&format!("kill -9 {}", child.id()));
    let _ = child.wait();
    assert!(net.xdp_shown());
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).unwrap();
    assert_eq!(mine.problem, None);
    net.udp(1111, 1);
    let flows = open(&name).unwrap().flows(None, None).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state, "STEP_1", "the program still runs");
    stop(&name).unwrap();
    assert!(!net.xdp_shown());
}

#[test]
fn list_reports_an_instance_whose_interface_is_gone() {
    require_root!("list_reports_an_instance_whose_interface_is_gone");
    let name = unique("gone");
    let _guard = Running(name.clone());
    {
        let net = Net::new(7);
        run(&RunSpec {
            program_path: example("portknock.fsm"),
            dev: net.host.clone(),
            attach: None,
            name: Some(name.clone()),
            tc: Default::default(),
        })
        .unwrap();
    }
    let listed = list().unwrap();
    let mine = listed.iter().find(|i| i.name == name).unwrap();
    assert!(mine.problem.is_some(), "{mine:?}");
    stop(&name).unwrap();
    assert!(!pins_of(&name).exists() && !meta_of(&name).exists());
}

#[test]
fn controller_events_stream_with_decoded_heads() {
    require_root!("controller_events_stream_with_decoded_heads");
    let net = Net::new(8);
    let prog = TempProgram::new(
        "ev",
        "program ev\nhook tc ingress\nflow ip.src\nstates NEW, SEEN\ndefault pass\ntable\n\
         \x20 NEW udp.dport == 7 => controller then drop, next SEEN\n\
         \x20 SEEN * => pass\nend\n",
    );
    let name = unique("ev");
    let _guard = start(&net, &prog.0, &name);
    let handle = open(&name).unwrap();
    let mut events = handle.events().unwrap();
    assert_eq!(
        events.next_timeout(Duration::from_millis(50)).unwrap(),
        None
    );
    net.udp(7, 1);
    let event = events
        .next_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("an event");
    assert_eq!(event.key, net.peer_ip);
    assert_eq!(event.state, "SEEN");
    assert_eq!(event.row_line, Some(7));
    assert!(
        event.summary.starts_with(&format!("{}:", net.peer_ip))
            && event.summary.ends_with(&format!("{}:7 UDP", net.host_ip)),
        "{}",
        event.summary
    );
    assert_eq!(event.head.len(), event.pkt_len.min(128) as usize);
    // SEEN now: the next datagram passes without an event.
    net.udp(7, 1);
    assert_eq!(
        events.next_timeout(Duration::from_millis(200)).unwrap(),
        None
    );
}

const GATE: &str = "program gate\nhook xdp\nflow ip.src\nstates CLOSED, OPEN\ndefault pass\n\
                    table\n  CLOSED udp.dport == 1111 => drop, next OPEN\n\
                    \x20 CLOSED * => drop\n  OPEN * => pass\nend\n";

#[test]
fn reload_under_traffic_drops_no_packet_of_an_open_flow() {
    require_root!("reload_under_traffic_drops_no_packet_of_an_open_flow");
    let net = Net::new(9);
    let v1 = TempProgram::new("gate1", GATE);
    // Same states: the table is reused.
    let v2 = TempProgram::new(
        "gate2",
        &GATE.replace(
            "CLOSED * => drop",
            "CLOSED * => drop\n  CLOSED tcp.dport == 1 => drop",
        ),
    );
    // A register added: the table is migrated.
    let v3 = TempProgram::new(
        "gate3",
        &GATE.replace("default pass", "registers n = 0\ndefault pass"),
    );
    let name = unique("gate");
    let _guard = start(&net, &v1.0, &name);
    // The receiver: a UDP socket on the host side, behind the program.
    let socket = std::net::UdpSocket::bind(format!("{}:5000", net.host_ip)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    net.udp(5000, 1);
    assert!(socket.recv(&mut buf).is_err(), "CLOSED drops");
    net.udp(1111, 1);
    let sender = Command::new("ip")
        .args(["netns", "exec", &net.ns, "bash", "-c"])
        .arg(format!(
            "for i in $(seq 300); do echo $i > /dev/udp/{}/5000; sleep 0.01; done",
            net.host_ip
        ))
        .spawn()
        .unwrap();
    // The receiver stops at the first quiet 300 ms only once the sender
    // has finished: a reload can hold a slow machine's CPUs for longer
    // than that, and a receiver that stopped then would count datagrams
    // sent later as lost.
    let sender_done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let sender_done = sender_done.clone();
        std::thread::spawn(move || {
            let mut received = Vec::new();
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => received.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                    Err(_) if sender_done.load(Ordering::Relaxed) => break,
                    Err(_) => continue,
                }
            }
            received
        })
    };
    let mut migrated = 0;
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        let version = [&v2, &v3, &v1][round % 3];
        let report = reload(&name, &version.0, false).unwrap();
        assert_eq!(report.flows_remapped, 0);
        assert_eq!(report.flows_carried, 1);
        if report.flows == FlowsMigration::Migrated {
            migrated += 1;
        }
    }
    let status = sender.wait_with_output().unwrap().status;
    sender_done.store(true, Ordering::Relaxed);
    assert!(status.success());
    assert!(migrated >= 2, "both kinds of reload ran");
    let received = receiver.join().unwrap();
    let missing: Vec<u32> = (1..=300)
        .filter(|i| !received.contains(&i.to_string()))
        .collect();
    assert_eq!(
        (received.len(), missing),
        (300, vec![]),
        "no datagram lost across 6 reloads"
    );
    assert_eq!(
        open(&name)
            .unwrap()
            .flow(&net.peer_ip)
            .unwrap()
            .unwrap()
            .state,
        "OPEN"
    );
}
