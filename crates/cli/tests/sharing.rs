//! `run --xdp-share`: flowstate and a program loaded by xdp-loader share
//! the switch's client-facing interface through libxdp's dispatcher. Both
//! see the client's traffic, in either priority order; a drop ends the
//! chain; either can leave first; `xdp-loader status` and `flowstate list`
//! show both. A program attached alone (not through a dispatcher) is
//! refused and left attached.
//!
//! Needs root, xdp-loader (`.ci/install-deps`) and a kernel that loads
//! extension programs (some refuse them: run these in the VM,
//! `.ci/vm/run-kernel 6.12 --bin target/release/deps/sharing-HASH -- sharing-HASH`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;

use flowstate_netlab::{send_udp, Netns, SwitchLab};
use flowstate_obj::{BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection};
use flowstate_runtime::dispatcher::{self, XdpOccupant};
use flowstate_runtime::RawMap;

const DEV: &str = SwitchLab::SWITCH_CLIENT_DEV;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

/// Counts flows by source address; every IPv4 packet passes.
const PASS_ALL: &str = "program share_pass
hook xdp
flow ip.src
states SEEN
default pass
table
  SEEN  *  => pass
end
";

/// Where the kernel refuses extension programs (some do, EPERM) the
/// dispatcher cannot run: there the test checks what flowstate must do
/// instead (`shared` refuses and attaches nothing, `auto` attaches alone)
/// and returns true. The sharing itself runs in the VM matrix
/// (`.ci/vm/matrix`, under CI=true), whose kernels load extensions.
fn skip(test: &str) -> bool {
    if flowstate_testkit::skip_if(test, flowstate_netlab::skip_reason()) {
        return true;
    }
    let Some(why) = dispatcher::extensions_unavailable() else {
        return skip_without_xdp_loader(test);
    };
    eprintln!("NOTE {test}: {why}; checked the refusal and the fallback instead");
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut lab = Lab::new(&format!("noext{n}"));
    let name = lab.name("shared");
    let err = lab.run_flowstate(&name, 50, "shared").unwrap_err();
    assert!(err.contains("extension programs"), "{err}");
    assert_eq!(lab.occupant(), XdpOccupant::Free, "nothing attached");
    let name = lab.name("auto");
    lab.run_flowstate(&name, 50, "auto").unwrap();
    assert!(
        matches!(lab.occupant(), XdpOccupant::Program { .. }),
        "auto attaches alone"
    );
    lab.stop_flowstate(&name);
    true
}

fn skip_without_xdp_loader(test: &str) -> bool {
    let reason = None.or_else(|| {
        let found = Command::new("xdp-loader")
            .args(["status", "--version"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("xdp-loader"));
        (!found).then(|| "xdp-loader is not installed (run .ci/install-deps)".to_string())
    });
    flowstate_testkit::skip_if(test, reason)
}

/// An XDP program that adds 1 to `hits[0]` for every packet, then
/// returns `verdict`: what a foreign tool might load.
fn counter_object(verdict: i32) -> Vec<u8> {
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut out = [code, (src << 4) | dst, 0, 0, 0, 0, 0, 0];
        out[2..4].copy_from_slice(&off.to_le_bytes());
        out[4..].copy_from_slice(&imm.to_le_bytes());
        out
    }
    let code = [
        insn(0x62, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
        insn(0xbf, 2, 10, 0, 0),  // r2 = r10
        insn(0x07, 2, 0, 0, -4),  // r2 += -4
        insn(0x18, 1, 0, 0, 0),   // r1 = &hits (relocated)
        insn(0, 0, 0, 0, 0),
        insn(0x85, 0, 0, 0, 1), // call map_lookup_elem
        insn(0x15, 0, 0, 2, 0), // if r0 == 0 goto +2
        insn(0xb7, 1, 0, 0, 1), // r1 = 1
        insn(0xdb, 0, 1, 0, 0), // lock *(u64 *)(r0 + 0) += r1
        insn(0xb7, 0, 0, 0, verdict),
        insn(0x95, 0, 0, 0, 0),
    ];
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new(
            "hits",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u64(),
            1,
        ))
        .add_program(ProgramDef {
            name: "counter".into(),
            section: ProgramSection::Xdp,
            insns: code.concat(),
            map_relocs: vec![(3, "hits".into())],
        });
    builder.build().unwrap()
}

struct Lab {
    lab: SwitchLab,
    dir: PathBuf,
    tag: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let mut lab = SwitchLab::build(tag).expect("building the network");
        let dir =
            std::env::temp_dir().join(format!("flowstate-share-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let remove = dir.clone();
        lab.topology.on_cleanup("remove files", move || {
            let _ = std::fs::remove_dir_all(&remove);
        });
        Lab {
            lab,
            dir,
            tag: tag.to_string(),
        }
    }

    fn name(&self, what: &str) -> String {
        format!("sh-{}-{what}-{}", self.tag, std::process::id())
    }

    fn switch(&self) -> &Netns {
        &self.lab.switch
    }

    /// xdp-loader in the switch. xdp-loader allows one run at a time (a
    /// PID lock file; a second at once fails with "Unable to read PID
    /// from lockfile"): this binary's runs take turns, and a run that met
    /// another process's is tried again.
    fn xdp_loader(&self, args: &[&str]) -> std::process::Output {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let once = || {
            self.switch()
                .command("xdp-loader")
                .unwrap()
                .args(args)
                .output()
                .unwrap()
        };
        let mut out = once();
        for _ in 0..50 {
            if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("lockfile") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            out = once();
        }
        out
    }

    /// `flowstate run --xdp-share shared --priority P`; stopped at cleanup.
    fn run_flowstate(&mut self, name: &str, priority: u32, share: &str) -> Result<String, String> {
        self.run_flowstate_env(name, priority, share, &[])
    }

    fn run_flowstate_env(
        &mut self,
        name: &str,
        priority: u32,
        share: &str,
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        self.run_program(name, priority, share, PASS_ALL, env)
    }

    fn run_program(
        &mut self,
        name: &str,
        priority: u32,
        share: &str,
        text: &str,
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        let path = self.dir.join(format!("{name}.fsm"));
        std::fs::write(&path, text).unwrap();
        let owned = name.to_string();
        self.lab
            .topology
            .on_cleanup(format!("stop {name}"), move || {
                let _ = flowstate_control::stop(&owned);
            });
        let out = flowstate_in(self.switch())
            .args(["run", "--dev", DEV, "--name", name, "--xdp-share", share])
            .args(["--priority", &priority.to_string()])
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn stop_flowstate(&self, name: &str) {
        let out = flowstate().args(["stop", name]).output().unwrap();
        assert!(out.status.success(), "stop {name}: {out:?}");
    }

    /// xdp-loader loads a counter returning `verdict` at `priority`;
    /// returns its program id.
    fn load_foreign(&mut self, verdict: i32, priority: u32) -> u32 {
        let object = self.dir.join(format!("counter-{verdict}-{priority}.o"));
        std::fs::write(&object, counter_object(verdict)).unwrap();
        let before = self.components();
        let priority = priority.to_string();
        let out = self.xdp_loader(&[
            "load",
            "-m",
            "native",
            "-P",
            &priority,
            DEV,
            object.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "xdp-loader load: {out:?}");
        let ids: Vec<u32> = self
            .components()
            .iter()
            .map(|c| c.prog_id)
            .filter(|id| !before.iter().any(|c| c.prog_id == *id))
            .collect();
        assert_eq!(ids.len(), 1, "xdp-loader added one program");
        let switch = self.switch().name().to_string();
        self.lab.topology.on_cleanup("xdp-loader unload", move || {
            let _ = Netns::from_name(&switch).and_then(|ns| {
                ns.command("xdp-loader")
                    .map(|mut c| c.args(["unload", "--all", DEV]).output())
            });
        });
        ids[0]
    }

    fn unload_foreign(&self, prog_id: u32) {
        let out = self.xdp_loader(&["unload", "-i", &prog_id.to_string(), DEV]);
        assert!(out.status.success(), "xdp-loader unload: {out:?}");
    }

    fn status(&self) -> String {
        let out = self.xdp_loader(&["status", DEV]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ifindex(&self) -> u32 {
        self.switch().ifindex(DEV).unwrap()
    }

    fn occupant(&self) -> XdpOccupant {
        let ifindex = self.ifindex();
        self.switch()
            .run_in(|| dispatcher::xdp_occupant(ifindex))
            .unwrap()
            .unwrap()
    }

    fn components(&self) -> Vec<dispatcher::Component> {
        match self.occupant() {
            XdpOccupant::Dispatcher { components, .. } => components,
            _ => Vec::new(),
        }
    }

    /// Sends `count` datagrams from the client to the server.
    fn send(&self, count: usize) {
        let socket = self
            .lab
            .client
            .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        let to = SocketAddrV4::new(SwitchLab::SERVER_ADDR, 9000);
        assert_eq!(send_udp(&socket, to, b"x", count), count);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn flowstate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowstate"))
}

fn flowstate_in(netns: &Netns) -> Command {
    netns
        .command(env!("CARGO_BIN_EXE_flowstate"))
        .expect("namespace")
}

/// Packets the instance counted (every row and the default).
fn seen_by_flowstate(name: &str) -> u64 {
    let out = flowstate()
        .args(["stats", name, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stats {name}: {out:?}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: u64 = stats["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    rows + stats["default"]["packets"].as_u64().unwrap()
}

fn seen_by_foreign(prog_id: u32) -> u64 {
    let maps = RawMap::of_program(prog_id).unwrap();
    let hits = maps.iter().find(|m| m.name() == "hits").unwrap();
    u64::from_le_bytes(hits.array_get(0).unwrap()[..8].try_into().unwrap())
}

fn list_mode(name: &str) -> String {
    let out = flowstate().args(["list", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
        .clone();
    assert!(entry["problem"].is_null(), "{entry}");
    entry["mode"].as_str().unwrap().to_string()
}

#[test]
fn flowstate_and_a_foreign_program_share_in_both_orders() {
    if skip("flowstate_and_a_foreign_program_share_in_both_orders") {
        return;
    }
    let mut lab = Lab::new("both");

    // Round 1: flowstate first (priority 10), xdp-loader's after (20);
    // flowstate leaves first.
    let ours = lab.name("a");
    lab.run_flowstate(&ours, 10, "shared").unwrap();
    let theirs = lab.load_foreign(XDP_PASS, 20);
    let status = lab.status();
    assert!(
        status.contains("share_pass") && status.contains("counter"),
        "{status}"
    );
    assert!(
        list_mode(&ours).contains("dispatcher 1/2 prio 10"),
        "{}",
        list_mode(&ours)
    );
    lab.send(10);
    assert!(seen_by_flowstate(&ours) >= 10);
    assert!(
        seen_by_foreign(theirs) >= 10,
        "pass goes on to the next program"
    );
    lab.stop_flowstate(&ours);
    assert_eq!(lab.components().len(), 1, "xdp-loader's program stays");
    let before = seen_by_foreign(theirs);
    lab.send(5);
    assert!(seen_by_foreign(theirs) >= before + 5);
    lab.unload_foreign(theirs);
    assert_eq!(lab.occupant(), XdpOccupant::Free);

    // Round 2: xdp-loader's first (priority 20), flowstate joins after
    // it (30) in auto mode; xdp-loader's leaves first.
    let theirs = lab.load_foreign(XDP_PASS, 20);
    let ours = lab.name("b");
    lab.run_flowstate(&ours, 30, "auto").unwrap();
    assert!(
        list_mode(&ours).contains("dispatcher 2/2 prio 30"),
        "{}",
        list_mode(&ours)
    );
    let status = lab.status();
    assert!(
        status.contains("share_pass") && status.contains("counter"),
        "{status}"
    );
    lab.send(10);
    assert!(seen_by_foreign(theirs) >= 10);
    assert!(seen_by_flowstate(&ours) >= 10);
    // A reload keeps the slot (more in the reload tests below).
    let out = lab.reload(&ours, PASS_ALL, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        list_mode(&ours).contains("dispatcher 2/2 prio 30"),
        "{}",
        list_mode(&ours)
    );
    assert_eq!(lab.components().len(), 2);
    lab.unload_foreign(theirs);
    assert!(
        list_mode(&ours).contains("dispatcher 1/1"),
        "{}",
        list_mode(&ours)
    );
    let before = seen_by_flowstate(&ours);
    lab.send(5);
    assert!(
        seen_by_flowstate(&ours) >= before + 5,
        "flowstate runs on alone"
    );
    lab.stop_flowstate(&ours);
    assert_eq!(
        lab.occupant(),
        XdpOccupant::Free,
        "the last one out empties the hook"
    );
}

#[test]
fn a_drop_ends_the_chain_in_priority_order() {
    if skip("a_drop_ends_the_chain_in_priority_order") {
        return;
    }
    let mut lab = Lab::new("drop");
    // Resolve the neighbours first: a dropper would drop the ARP replies.
    lab.send(3);
    // A foreign dropper before flowstate: flowstate sees nothing.
    let dropper = lab.load_foreign(XDP_DROP, 10);
    let ours = lab.name("c");
    lab.run_flowstate(&ours, 20, "shared").unwrap();
    lab.send(10);
    assert!(seen_by_foreign(dropper) >= 10);
    assert_eq!(seen_by_flowstate(&ours), 0, "the drop ended the chain");
    lab.unload_foreign(dropper);
    // A foreign dropper after flowstate: both see everything.
    let dropper = lab.load_foreign(XDP_DROP, 40);
    lab.send(10);
    assert!(seen_by_flowstate(&ours) >= 10);
    assert!(seen_by_foreign(dropper) >= 10);
    lab.stop_flowstate(&ours);
    lab.unload_foreign(dropper);
    assert_eq!(lab.occupant(), XdpOccupant::Free);
}

#[test]
fn run_refuses_a_program_attached_alone_and_leaves_it() {
    if skip("run_refuses_a_program_attached_alone_and_leaves_it") {
        return;
    }
    let mut lab = Lab::new("alone");
    let object = lab.dir.join("alone.o");
    std::fs::write(&object, counter_object(XDP_PASS)).unwrap();
    lab.switch()
        .ip(&[
            "link",
            "set",
            "dev",
            DEV,
            "xdp",
            "obj",
            object.to_str().unwrap(),
            "sec",
            "xdp",
        ])
        .unwrap();
    let before = lab.occupant();
    assert!(matches!(before, XdpOccupant::Program { .. }), "{before:?}");
    for share in ["auto", "shared"] {
        let name = lab.name(share);
        let err = lab.run_flowstate(&name, 50, share).unwrap_err();
        assert!(err.contains("xdp-loader load"), "{share}: {err}");
        assert_eq!(
            lab.occupant(),
            before,
            "{share}: the program stays attached"
        );
    }
}

#[test]
fn an_interrupted_shared_run_or_stop_leaves_the_interface_working() {
    if skip("an_interrupted_shared_run_or_stop_leaves_the_interface_working") {
        return;
    }
    let mut lab = Lab::new("crash");
    let theirs = lab.load_foreign(XDP_PASS, 20);
    // Killed before joining, and after joining but before its metadata:
    // the next command on the name takes it out again.
    for step in ["attach", "write-meta"] {
        let ours = lab.name(&step.replace('-', ""));
        let crash = format!("run:{step}");
        let killed =
            lab.run_flowstate_env(&ours, 10, "shared", &[("FLOWSTATE_TEST_CRASH_AT", &crash)]);
        assert!(killed.is_err(), "{step}: the run was killed");
        let joined = usize::from(step == "write-meta");
        assert_eq!(
            lab.components().len(),
            1 + joined,
            "{step}: before the repair"
        );
        let out = flowstate().args(["repair", &ours]).output().unwrap();
        assert!(out.status.success(), "{step}: repair: {out:?}");
        let left: Vec<u32> = lab.components().iter().map(|c| c.prog_id).collect();
        assert_eq!(left, [theirs], "{step}: only xdp-loader's program runs");
    }
    // Killed before leaving: the repair finishes the stop.
    let ours = lab.name("stopped");
    lab.run_flowstate(&ours, 10, "shared").unwrap();
    assert_eq!(lab.components().len(), 2);
    let out = flowstate()
        .args(["stop", &ours])
        .env("FLOWSTATE_TEST_CRASH_AT", "stop:leave-dispatcher")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the stop was killed");
    let out = flowstate().args(["repair", &ours]).output().unwrap();
    assert!(out.status.success(), "repair: {out:?}");
    let left: Vec<u32> = lab.components().iter().map(|c| c.prog_id).collect();
    assert_eq!(left, [theirs]);
    let before = seen_by_foreign(theirs);
    lab.send(5);
    assert!(
        seen_by_foreign(theirs) >= before + 5,
        "the interface still works"
    );
    lab.unload_foreign(theirs);
}

/// Counts each flow's packets in register `n`: every packet adds one,
/// whichever version of the program (or, during a migrating reload, its
/// handoff build or bridge) sees it.
const COUNT_V1: &str = "program share_pass
hook xdp
flow ip.src
states SEEN
registers n = 0
default pass
table
  SEEN  *  => pass, n = n + 1
end
";

/// A new row: the state table keeps its layout (a plain reload).
const COUNT_V2: &str = "program share_pass
hook xdp
flow ip.src
states SEEN
registers n = 0
default pass
table
  SEEN  udp.dport == 1  => pass, n = n + 1
  SEEN  *  => pass, n = n + 1
end
";

/// A new state: the state table changes layout (a migrating reload: the
/// flows move to a new table, `n` kept by name).
const COUNT_V3: &str = "program share_pass
hook xdp
flow ip.src
states SEEN, LATER
registers n = 0
default pass
table
  SEEN  *  => pass, n = n + 1
end
";

impl Lab {
    /// `flowstate reload NAME` to a program of text `text`.
    fn reload(&self, name: &str, text: &str, env: &[(&str, &str)]) -> std::process::Output {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{name}-v{n}.fsm"));
        std::fs::write(&path, text).unwrap();
        flowstate()
            .arg("reload")
            .arg(name)
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Datagrams from the client to the server until stopped.
    fn start_traffic(&self) -> Traffic {
        let socket = self
            .lab
            .client
            .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let to = SocketAddrV4::new(SwitchLab::SERVER_ADDR, 9000);
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                sent += send_udp(&socket, to, b"x", 10);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            sent
        });
        Traffic { stop, sender }
    }

    /// Our slot's position, the foreign program's, and the priorities: what
    /// a reload must keep.
    fn layout(&self, theirs: u32) -> (usize, usize, Vec<u32>) {
        let components = self.components();
        let at = |f: &dyn Fn(u32) -> bool| components.iter().position(|c| f(c.prog_id)).unwrap();
        (
            at(&|id| id != theirs),
            at(&|id| id == theirs),
            components.iter().map(|c| c.priority).collect(),
        )
    }

    fn our_prog_id(&self, theirs: u32) -> u32 {
        let components = self.components();
        assert_eq!(components.len(), 2, "{components:?}");
        components
            .iter()
            .find(|c| c.prog_id != theirs)
            .unwrap()
            .prog_id
    }
}

struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<usize>,
}

impl Traffic {
    /// Stops sending; the datagrams sent, once they have arrived.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.sender.join().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        sent as u64
    }
}

/// The client's packets the instance counted in its flow's register `n`.
fn counted(name: &str) -> u64 {
    let out = flowstate()
        .args(["flows", name, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "flows {name}: {out:?}");
    let flows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let client = SwitchLab::CLIENT_ADDR.to_string();
    flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"].as_str() == Some(client.as_str()))
        .map_or(0, |f| f["registers"]["n"].as_u64().unwrap())
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Files under the instance's pin directory (a staged pin left behind
/// shows here).
fn pins_of(name: &str) -> Vec<String> {
    let dir = flowstate_control::pin_root().join(name);
    let mut names = Vec::new();
    for sub in [dir.clone(), dir.join("maps")] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    names.sort();
    names
}

/// A reload of a program in the dispatcher, under traffic, with
/// xdp-loader's counter before it and after it: the instance keeps its
/// slot and priority, the foreign program its id and every packet, and the
/// flow's count (register `n`) goes on through the reload with every
/// packet counted (none met no program). A migrating reload (a new
/// layout) does the same, moving the flow with its count into the new
/// table; one with `--reset-state` goes through.
#[test]
fn reload_in_the_dispatcher_under_traffic_in_both_orders() {
    if skip("reload_in_the_dispatcher_under_traffic_in_both_orders") {
        return;
    }
    for (round, ours_first) in [(0, true), (1, false)] {
        let mut lab = Lab::new(&format!("rl{round}"));
        lab.send(3);
        let ours = lab.name("r");
        let (our_priority, their_priority) = if ours_first { (10, 20) } else { (30, 20) };
        let theirs = if ours_first {
            lab.run_program(&ours, our_priority, "shared", COUNT_V1, &[])
                .unwrap();
            lab.load_foreign(XDP_PASS, their_priority)
        } else {
            let theirs = lab.load_foreign(XDP_PASS, their_priority);
            lab.run_program(&ours, our_priority, "shared", COUNT_V1, &[])
                .unwrap();
            theirs
        };
        let layout = lab.layout(theirs);
        assert_eq!(layout.0, usize::from(!ours_first), "round {round}");
        lab.send(5);
        let (counted_before, foreign_before) = (counted(&ours), seen_by_foreign(theirs));
        assert!(counted_before >= 5, "round {round}: {counted_before}");

        let traffic = lab.start_traffic();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let old_id = lab.our_prog_id(theirs);
        let out = lab.reload(&ours, COUNT_V2, &[]);
        assert!(out.status.success(), "round {round}: plain reload: {out:?}");
        assert!(text(&out).contains("kept as is"), "{}", text(&out));
        let plain_id = lab.our_prog_id(theirs);
        assert_ne!(plain_id, old_id, "round {round}: a new program runs");
        assert_eq!(lab.layout(theirs), layout, "round {round}: same slots");
        // A migrating reload: the flow moves, counting on.
        let out = lab.reload(&ours, COUNT_V3, &[]);
        assert!(
            out.status.success(),
            "round {round}: migrating reload: {out:?}"
        );
        assert!(text(&out).contains("migrated"), "{}", text(&out));
        let migrated_id = lab.our_prog_id(theirs);
        assert_ne!(migrated_id, plain_id, "round {round}: a new program runs");
        assert_eq!(lab.layout(theirs), layout, "round {round}: same slots");
        // And back to the first layout, under traffic still.
        let out = lab.reload(&ours, COUNT_V1, &[]);
        assert!(
            out.status.success(),
            "round {round}: migrating back: {out:?}"
        );
        let sent = traffic.stop();

        assert!(sent > 0);
        let foreign = seen_by_foreign(theirs) - foreign_before;
        assert!(
            foreign >= sent,
            "round {round}: xdp-loader's program saw {foreign} of {sent}"
        );
        let ours_counted = counted(&ours) - counted_before;
        assert!(
            ours_counted >= sent,
            "round {round}: the flow counted {ours_counted} of {sent} through the reloads"
        );
        let mode = list_mode(&ours);
        assert!(
            mode.contains(&format!(
                "dispatcher {}/2 prio {our_priority}",
                layout.0 + 1
            )),
            "{mode}"
        );
        // A new layout with an empty table goes through.
        let path = lab.dir.join(format!("{ours}-reset.fsm"));
        std::fs::write(&path, COUNT_V3).unwrap();
        let out = flowstate()
            .args(["reload", "--reset-state", &ours])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "round {round}: reset: {out:?}");
        assert_eq!(counted(&ours), 0, "round {round}: an empty table");
        assert_eq!(lab.layout(theirs), layout, "round {round}: same slots");
        let status = lab.status();
        assert!(
            status.contains("share_pass") && status.contains("counter"),
            "{status}"
        );
        lab.stop_flowstate(&ours);
        let left: Vec<u32> = lab.components().iter().map(|c| c.prog_id).collect();
        assert_eq!(left, [theirs], "round {round}: xdp-loader's program stays");
        lab.unload_foreign(theirs);
        assert_eq!(lab.occupant(), XdpOccupant::Free);
    }
}

/// A reload that fails (at its swap, as a refusal of the kernel there
/// would: `FLOWSTATE_TEST_FAIL_AT`), plain or migrating, leaves
/// everything as it was: the same dispatcher with the same programs, the
/// instance's pins, no journal, and both programs counting.
#[test]
fn a_refused_reload_in_the_dispatcher_leaves_everything_as_it_was() {
    if skip("a_refused_reload_in_the_dispatcher_leaves_everything_as_it_was") {
        return;
    }
    let mut lab = Lab::new("rlno");
    lab.send(3);
    let theirs = lab.load_foreign(XDP_PASS, 20);
    let ours = lab.name("r");
    lab.run_program(&ours, 10, "shared", COUNT_V1, &[]).unwrap();
    lab.send(5);
    for (kind, text_v, says) in [
        ("plain", COUNT_V2, "FLOWSTATE_TEST_FAIL_AT"),
        ("migrating", COUNT_V3, "FLOWSTATE_TEST_FAIL_AT"),
    ] {
        let before = lab.occupant();
        let pins = pins_of(&ours);
        let out = lab.reload(&ours, text_v, &[("FLOWSTATE_TEST_FAIL_AT", "reload:swap")]);
        assert!(!out.status.success(), "{kind}: {out:?}");
        assert!(text(&out).contains(says), "{kind}: {}", text(&out));
        assert_eq!(lab.occupant(), before, "{kind}: the same dispatcher");
        assert_eq!(pins_of(&ours), pins, "{kind}: no staged pin left");
        assert!(
            !flowstate_control::meta_dir()
                .join(format!("{ours}.journal"))
                .exists(),
            "{kind}: no journal left"
        );
        let (counted_before, foreign_before) = (counted(&ours), seen_by_foreign(theirs));
        lab.send(5);
        assert!(
            counted(&ours) >= counted_before + 5,
            "{kind}: ours counts on"
        );
        assert!(seen_by_foreign(theirs) >= foreign_before + 5, "{kind}");
    }
    // Without the fault the reload goes through.
    let out = lab.reload(&ours, COUNT_V2, &[]);
    assert!(out.status.success(), "{out:?}");
    lab.stop_flowstate(&ours);
    lab.unload_foreign(theirs);
}

/// Each step of a reload in the dispatcher, killed (SIGKILL), then
/// `flowstate repair`, for a plain reload and a migrating one (which
/// puts its handoff build and bridge in the slot in turn): the instance
/// runs (the old program or the new one, as its metadata says) in its
/// slot, the foreign program keeps its id, no staged pin is left, the
/// flow keeps counting (moved, for a migration), and a next reload works.
#[test]
fn a_reload_in_the_dispatcher_killed_at_each_step_is_repaired() {
    if skip("a_reload_in_the_dispatcher_killed_at_each_step_is_repaired") {
        return;
    }
    let mut lab = Lab::new("rlkill");
    lab.send(3);
    let theirs = lab.load_foreign(XDP_PASS, 20);
    let ours = lab.name("r");
    lab.run_program(&ours, 30, "shared", COUNT_V1, &[]).unwrap();
    let layout = lab.layout(theirs);
    let pins = pins_of(&ours);
    // v1 and v2 share the state table's layout; v3 has another.
    let mut current = COUNT_V1;
    for (kind, other) in [("plain", COUNT_V2), ("migrating", COUNT_V3)] {
        for step in [
            "stage",
            "migrate",
            "swap",
            "bridge",
            "sweep",
            "final-swap",
            "rename",
            "write-meta",
        ] {
            let next = if current == other { COUNT_V1 } else { other };
            let context = format!("{kind} reload killed at {step}");
            lab.send(2);
            let counted_before = counted(&ours);
            let crash = format!("reload:{step}");
            let out = lab.reload(&ours, next, &[("FLOWSTATE_TEST_CRASH_AT", &crash)]);
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&out.status),
                Some(9),
                "{context}: killed: {}",
                text(&out)
            );
            let out = flowstate().args(["repair", &ours]).output().unwrap();
            assert!(out.status.success(), "{context}: repair: {out:?}");
            let repaired = text(&out);
            if repaired.contains("finished") {
                current = next;
            } else {
                assert!(repaired.contains("undone"), "{context}: {repaired}");
            }
            assert_eq!(lab.layout(theirs), layout, "{context}: same slots");
            let listed = list_mode(&ours);
            assert!(
                listed.contains("dispatcher 2/2 prio 30"),
                "{context}: {listed}"
            );
            let mut now = pins_of(&ours);
            now.retain(|p| !p.starts_with("migration") && !p.starts_with("successor"));
            assert_eq!(now, pins, "{context}: the pins of a running instance");
            let foreign_before = seen_by_foreign(theirs);
            lab.send(5);
            assert!(
                counted(&ours) >= counted_before + 5,
                "{context}: the flow counts on"
            );
            assert!(seen_by_foreign(theirs) >= foreign_before + 5, "{context}");
        }
    }
    let out = lab.reload(&ours, COUNT_V2, &[]);
    assert!(out.status.success(), "a reload after the repairs: {out:?}");
    lab.stop_flowstate(&ours);
    assert_eq!(lab.components().len(), 1);
    lab.unload_foreign(theirs);
}
