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
        let path = self.dir.join(format!("{name}.fsm"));
        std::fs::write(&path, PASS_ALL).unwrap();
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
    // Reload is not supported in a dispatcher yet: refused, nothing moves.
    let program = lab.dir.join(format!("{ours}.fsm"));
    let out = flowstate()
        .arg("reload")
        .arg(&ours)
        .arg(&program)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("shared XDP dispatcher"), "{text}");
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
