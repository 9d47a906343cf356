//! Sharing a TC hook: flowstate instances and a foreign (hand-written)
//! TC program on one veth ingress, through TCX and through clsact (forced
//! with `TcVia::Clsact` on kernels that have TCX; the only way on 6.1).
//! Every program counts what it sees; the order is set with
//! `Order::Before/After` and checked with `list`'s hook programs.
//!
//! The TCX tests run in full on kernel 6.6+; before it they check that a
//! TCX run is refused cleanly (`tcx_refused_here`). The clsact ones run
//! anywhere. Each
//! test's namespaces (and so its interfaces, qdiscs and filters) go with
//! its netlab Topology, and its instances are stopped by guards.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use flowstate_control::{
    list, open, run_in_netns, stop, AttachPoint, Order, Relative, RunSpec, TcPlacement, TcVia,
};
use flowstate_netlab::{send_udp, Netns, Topology};
use flowstate_obj::{BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection};
use flowstate_runtime::{clsact, LoadOptions, Loaded, ProgramLink, TcDirection, TcOrder};

const DEV: &str = "stsw";
const PEER_DEV: &str = "stpeer";
const SW_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const PORT: u16 = 5555;

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// TCX_NEXT: let the next program on the hook decide.
const TC_ACT_UNSPEC: i32 = -1;

/// Counts IPv4 packets per source in register `n`; `VERDICT` for each.
const COUNTER: &str = "program stackcount\nhook tc ingress\nflow ip.src\nstates S\n\
                       registers n = 0\ndefault pass\ntable\n  S * => VERDICT, n = n + 1\nend\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Tcx,
    Clsact,
}

/// Skips only when the machine cannot run kernel tests at all. A kernel
/// without TCX is no reason: a TCX test checks the refusal there instead
/// (see [`tcx_refused_here`]).
fn skip(test: &str) -> bool {
    let reason = flowstate_netlab::skip_reason().or_else(flowstate_runtime::kernel_unavailable);
    flowstate_testkit::skip_if(test, reason)
}

/// On a kernel without TCX (before 6.6), checks what a TCX test can
/// check there and returns true: `run --tc-attach tcx` is refused with a
/// message that says why and what to use, nothing is pinned, listed or
/// attached, and the kernel itself refuses a TCX link. With TCX, returns
/// false and the test runs in full.
fn tcx_refused_here(tag: &str) -> bool {
    let tcx = flowstate_runtime::kernel_features()
        .get(flowstate_runtime::Feature::Tcx)
        .is_present();
    if tcx {
        return false;
    }
    let lab = Lab::new(tag);
    let name = unique(tag);
    let path = lab.dir.join("p.fsm");
    std::fs::write(&path, COUNTER.replace("VERDICT", "pass")).unwrap();
    let spec = RunSpec {
        program_path: path,
        dev: DEV.to_string(),
        attach: Some(AttachPoint::TcIngress),
        name: Some(name.clone()),
        tc: TcPlacement {
            via: TcVia::Tcx,
            order: Order::Last,
        },
    };
    let err = run_in_netns(&spec, Some(lab.switch.name())).unwrap_err();
    let _cleanup = Running(name.clone());
    let text = err.to_string();
    assert!(
        text.contains("has no TCX")
            && text.contains("nothing was attached")
            && text.contains("--tc-attach clsact"),
        "{text}"
    );
    assert!(!flowstate_control::pin_root().join(&name).exists());
    assert!(list().unwrap().iter().all(|i| i.name != name));
    let ifindex = lab.ifindex;
    let filters = lab
        .switch
        .run_in(|| clsact::filters(ifindex, TcDirection::Ingress))
        .unwrap()
        .unwrap();
    assert!(filters.is_empty(), "{filters:?}");
    let mut foreign = Foreign::load(TC_ACT_OK);
    let loaded = &mut foreign.loaded;
    let attached = lab
        .switch
        .run_in(|| loaded.attach_tcx("foreign_tc", DEV, TcDirection::Ingress, TcOrder::Last))
        .unwrap();
    assert!(
        attached.is_err(),
        "the probe found no TCX, yet a TCX link was made"
    );
    true
}

/// The foreign program: adds 1 to `count[0]` for every packet and returns
/// `verdict[0]` (a TC action; 0 = TC_ACT_OK until set).
fn foreign_object() -> Vec<u8> {
    fn encode(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> Vec<u8> {
        let mut slot = vec![opcode, (src << 4) | dst];
        slot.extend_from_slice(&off.to_le_bytes());
        slot.extend_from_slice(&imm.to_le_bytes());
        slot
    }
    let ld_map = |dst: u8| {
        let mut both = encode(0x18, dst, 0, 0, 0);
        both.extend_from_slice(&[0; 8]);
        both
    };
    let lookup_at = |slot: i16| {
        vec![
            encode(0x62, 10, 0, slot, 0), // *(u32 *)(r10 + slot) = 0
            encode(0xbf, 2, 10, 0, 0),    // r2 = r10
            encode(0x07, 2, 0, 0, slot as i32),
        ]
    };
    let mut parts = lookup_at(-4);
    let count_slot = parts.len();
    parts.extend([
        ld_map(1),
        encode(0x85, 0, 0, 0, 1), // map_lookup_elem
        encode(0x15, 0, 0, 2, 0), // if r0 == 0 goto +2
        encode(0xb7, 1, 0, 0, 1), // r1 = 1
        encode(0xdb, 0, 1, 0, 0), // lock *(u64 *)(r0 + 0) += r1
    ]);
    parts.extend(lookup_at(-8));
    let verdict_slot = parts.iter().map(|p| p.len()).sum::<usize>() / 8;
    let count_slot = parts[..count_slot].iter().map(|p| p.len()).sum::<usize>() / 8;
    parts.extend([
        ld_map(1),
        encode(0x85, 0, 0, 0, 1),
        encode(0x15, 0, 0, 2, 0),
        encode(0x61, 0, 0, 0, 0), // r0 = *(u32 *)(r0 + 0)
        encode(0x95, 0, 0, 0, 0),
        encode(0xb7, 0, 0, 0, 0),
        encode(0x95, 0, 0, 0, 0),
    ]);
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new(
            "count",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u64(),
            1,
        ))
        .add_map(MapDef::new(
            "verdict",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u32(),
            1,
        ))
        .add_program(ProgramDef {
            name: "foreign_tc".into(),
            section: ProgramSection::Classifier,
            insns: parts.concat(),
            map_relocs: vec![
                (count_slot, "count".into()),
                (verdict_slot, "verdict".into()),
            ],
        });
    builder.build().expect("valid object")
}

/// The foreign program, loaded, and how it is attached (if it is).
struct Foreign {
    loaded: Loaded,
    id: u32,
    link: Option<ProgramLink>,
    filter: Option<u16>,
}

impl Foreign {
    fn load(verdict: i32) -> Foreign {
        let loaded = flowstate_runtime::load(&foreign_object(), &LoadOptions::default()).unwrap();
        loaded
            .map("verdict")
            .unwrap()
            .array_set(0, &verdict.to_le_bytes())
            .unwrap();
        let id = loaded.program_id("foreign_tc").unwrap();
        Foreign {
            loaded,
            id,
            link: None,
            filter: None,
        }
    }

    fn count(&self) -> u64 {
        let bytes = self.loaded.map("count").unwrap().array_get(0).unwrap();
        u64::from_le_bytes(bytes[..8].try_into().unwrap())
    }

    fn attach_tcx(&mut self, lab: &Lab, order: TcOrder) {
        let loaded = &mut self.loaded;
        let link = lab
            .switch
            .run_in(|| loaded.attach_tcx("foreign_tc", DEV, TcDirection::Ingress, order))
            .unwrap()
            .unwrap();
        self.link = Some(link);
    }

    fn attach_clsact(&mut self, lab: &Lab, priority: u16) {
        let loaded = &self.loaded;
        let ifindex = lab.ifindex;
        lab.switch
            .run_in(|| loaded.attach_clsact("foreign_tc", ifindex, TcDirection::Ingress, priority))
            .unwrap()
            .unwrap();
        self.filter = Some(priority);
    }

    fn detach(&mut self, lab: &Lab) {
        if let Some(link) = self.link.take() {
            lab.switch.run_in(|| link.detach()).unwrap().unwrap();
        }
        if let Some(priority) = self.filter.take() {
            let ifindex = lab.ifindex;
            lab.switch
                .run_in(|| clsact::delete_filter(ifindex, TcDirection::Ingress, priority))
                .unwrap()
                .unwrap();
        }
    }
}

struct Lab {
    _topology: Topology,
    switch: Netns,
    ifindex: u32,
    socket: UdpSocket,
    sink: UdpSocket,
    dir: std::path::PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let mut topology = Topology::new(tag).expect("topology");
        let switch = topology.add_netns("sw").unwrap();
        let peer = topology.add_netns("peer").unwrap();
        topology
            .link(&switch, DEV, SW_IP, &peer, PEER_DEV, PEER_IP, 24)
            .unwrap();
        // A fixed neighbour: a foreign program that drops would drop the
        // ARP exchange too, and then nothing would be sent at all.
        let shown = switch.ip(&["-o", "link", "show", "dev", DEV]).unwrap();
        let mac = shown
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC address in {shown}"))
            .to_string();
        peer.ip(&[
            "neigh",
            "replace",
            &SW_IP.to_string(),
            "lladdr",
            mac.trim(),
            "dev",
            PEER_DEV,
            "nud",
            "permanent",
        ])
        .unwrap();
        let ifindex = switch.ifindex(DEV).unwrap();
        let socket = peer
            .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        let sink = switch.udp_socket(SocketAddrV4::new(SW_IP, PORT)).unwrap();
        sink.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("fs-stack-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let remove = dir.clone();
        topology.on_cleanup("remove program copies", move || {
            let _ = std::fs::remove_dir_all(&remove);
        });
        Lab {
            _topology: topology,
            switch,
            ifindex,
            socket,
            sink,
            dir,
        }
    }

    /// Runs the counter (with `verdict` for every IPv4 packet) as `name`.
    fn run(&self, name: &str, verdict: &str, via: Via, order: Order) -> Running {
        let path = self.dir.join(format!("{name}.fsm"));
        std::fs::write(&path, COUNTER.replace("VERDICT", verdict)).unwrap();
        let spec = RunSpec {
            program_path: path,
            dev: DEV.to_string(),
            attach: Some(AttachPoint::TcIngress),
            name: Some(name.to_string()),
            tc: TcPlacement {
                via: match via {
                    Via::Tcx => TcVia::Tcx,
                    Via::Clsact => TcVia::Clsact,
                },
                order,
            },
        };
        let instance = run_in_netns(&spec, Some(self.switch.name()))
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        let mode = match via {
            Via::Tcx => "tcx",
            Via::Clsact => "clsact",
        };
        assert_eq!(instance.mode, mode);
        Running(name.to_string())
    }

    /// Sends `n` datagrams from the peer; returns how many reached the
    /// switch's socket.
    fn send(&self, n: usize) -> usize {
        assert_eq!(
            send_udp(&self.socket, SocketAddrV4::new(SW_IP, PORT), b"x", n),
            n
        );
        let mut received = 0;
        let mut buffer = [0u8; 16];
        while self.sink.recv(&mut buffer).is_ok() {
            received += 1;
        }
        received
    }
}

/// Stops the instance on drop, so a failing test leaves no pins.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = stop(&self.0);
    }
}

/// What the counter instance `name` counted from the peer.
fn counted(name: &str) -> i64 {
    open(name)
        .unwrap()
        .flows(None, None)
        .unwrap()
        .iter()
        .find(|f| f.key == PEER_IP.to_string())
        .and_then(|f| f.registers.iter().find(|(r, _)| r == "n").map(|(_, v)| *v))
        .unwrap_or(0)
}

/// The ids on the instance's hook, in run order, as `list` shows them.
fn hook_of(name: &str) -> Vec<u32> {
    let all = list().unwrap();
    let me = all.iter().find(|i| i.name == name).expect("listed");
    assert_eq!(me.problem, None, "{name}: {me:?}");
    me.hook_programs.iter().map(|p| p.prog_id).collect()
}

fn prog_id(name: &str) -> u32 {
    list()
        .unwrap()
        .into_iter()
        .find(|i| i.name == name)
        .expect("listed")
        .prog_id
}

fn unique(tag: &str) -> String {
    format!("s{}-{tag}", std::process::id())
}

/// flowstate's `pass` then a foreign program that drops: the foreign
/// program sees every packet (the chain went on) and nothing arrives.
/// With `pass` as TC_ACT_OK (before this change) the chain ended at
/// flowstate: the foreign program saw nothing and every datagram arrived.
fn pass_continues_to_a_foreign_drop(tag: &str, via: Via) {
    let lab = Lab::new(tag);
    let name = unique(tag);
    let _running = lab.run(&name, "pass", via, Order::Last);
    let mut foreign = Foreign::load(TC_ACT_SHOT);
    match via {
        Via::Tcx => foreign.attach_tcx(&lab, TcOrder::Last),
        Via::Clsact => {
            let ifindex = lab.ifindex;
            let filters = lab
                .switch
                .run_in(|| clsact::filters(ifindex, TcDirection::Ingress))
                .unwrap()
                .unwrap();
            let ours = filters.iter().map(|f| f.priority).max().unwrap();
            foreign.attach_clsact(&lab, ours + 1);
        }
    }
    assert_eq!(hook_of(&name), [prog_id(&name), foreign.id]);
    let received = lab.send(20);
    assert_eq!(counted(&name), 20, "flowstate saw every datagram");
    assert!(
        foreign.count() >= 20,
        "the foreign program after flowstate saw {} of 20: `pass` ended the chain",
        foreign.count()
    );
    assert_eq!(received, 0, "the foreign program dropped them");
    foreign.detach(&lab);
}

#[test]
fn pass_continues_the_tcx_chain_to_a_foreign_drop() {
    if skip("pass_continues_the_tcx_chain_to_a_foreign_drop") || tcx_refused_here("stptcx") {
        return;
    }
    pass_continues_to_a_foreign_drop("stptcx", Via::Tcx);
}

#[test]
fn pass_continues_the_clsact_filters_to_a_foreign_drop() {
    if skip("pass_continues_the_clsact_filters_to_a_foreign_drop") {
        return;
    }
    pass_continues_to_a_foreign_drop("stpcls", Via::Clsact);
}

/// A foreign program first; flowstate A before it and B after it; every
/// program sees the traffic in each arrangement; detaching in another
/// order than attaching leaves the rest running and in order.
fn share_in_both_orders(tag: &str, via: Via) {
    let lab = Lab::new(tag);
    let mut foreign = Foreign::load(TC_ACT_UNSPEC);
    match via {
        Via::Tcx => foreign.attach_tcx(&lab, TcOrder::Last),
        Via::Clsact => foreign.attach_clsact(&lab, clsact::DEFAULT_PRIORITY),
    }
    let a = unique(&format!("{tag}a"));
    let b = unique(&format!("{tag}b"));
    let running_a = lab.run(
        &a,
        "pass",
        via,
        Order::Before(Relative::Program(foreign.id)),
    );
    assert_eq!(hook_of(&a), [prog_id(&a), foreign.id], "A before");
    assert_eq!(lab.send(10), 10, "every program passes");
    assert_eq!(counted(&a), 10);
    assert!(
        foreign.count() >= 10,
        "foreign after A: {}",
        foreign.count()
    );

    // B after the foreign program.
    let _running_b = lab.run(&b, "pass", via, Order::After(Relative::Program(foreign.id)));
    assert_eq!(
        hook_of(&b),
        [prog_id(&a), foreign.id, prog_id(&b)],
        "A, foreign, B"
    );
    let before = foreign.count();
    assert_eq!(lab.send(10), 10);
    assert_eq!((counted(&a), counted(&b)), (20, 10));
    assert!(foreign.count() >= before + 10);

    // Detach in another order: A first, then the foreign program.
    drop(running_a);
    assert_eq!(hook_of(&b), [foreign.id, prog_id(&b)], "A stopped");
    let before = foreign.count();
    assert_eq!(lab.send(10), 10);
    assert_eq!(counted(&b), 20);
    assert!(foreign.count() >= before + 10);
    foreign.detach(&lab);
    assert_eq!(hook_of(&b), [prog_id(&b)], "foreign detached");
    assert_eq!(lab.send(5), 5);
    assert_eq!(counted(&b), 25);
}

#[test]
fn flowstate_and_a_foreign_program_share_the_tcx_hook_in_both_orders() {
    if skip("flowstate_and_a_foreign_program_share_the_tcx_hook_in_both_orders")
        || tcx_refused_here("stotcx")
    {
        return;
    }
    share_in_both_orders("stotcx", Via::Tcx);
}

#[test]
fn flowstate_and_a_foreign_program_share_the_clsact_hook_in_both_orders() {
    if skip("flowstate_and_a_foreign_program_share_the_clsact_hook_in_both_orders") {
        return;
    }
    share_in_both_orders("stocls", Via::Clsact);
}

/// flowstate first, then a foreign program put before it (the foreign
/// side chooses its place), stopped while the foreign program stays.
fn foreign_goes_first_after_flowstate(tag: &str, via: Via) {
    let lab = Lab::new(tag);
    let name = unique(tag);
    let running = lab.run(&name, "pass", via, Order::Last);
    let me = prog_id(&name);
    let mut foreign = Foreign::load(TC_ACT_UNSPEC);
    match via {
        Via::Tcx => foreign.attach_tcx(&lab, TcOrder::BeforeProgram(me)),
        Via::Clsact => foreign.attach_clsact(&lab, clsact::DEFAULT_PRIORITY - 1),
    }
    assert_eq!(hook_of(&name), [foreign.id, me]);
    assert_eq!(lab.send(10), 10);
    assert_eq!(counted(&name), 10);
    assert!(foreign.count() >= 10);
    drop(running);
    let before = foreign.count();
    assert_eq!(lab.send(10), 10);
    assert!(
        foreign.count() >= before + 10,
        "the foreign program still runs"
    );
    if via == Via::Clsact {
        // Stop left the foreign filter (and so the qdisc) alone.
        let ifindex = lab.ifindex;
        let left = lab
            .switch
            .run_in(|| clsact::filters(ifindex, TcDirection::Ingress))
            .unwrap()
            .unwrap();
        assert_eq!(
            left.iter().map(|f| f.prog_id).collect::<Vec<_>>(),
            [foreign.id]
        );
    }
    foreign.detach(&lab);
}

#[test]
fn a_foreign_program_before_flowstate_outlives_it_tcx() {
    if skip("a_foreign_program_before_flowstate_outlives_it_tcx") || tcx_refused_here("stftcx") {
        return;
    }
    foreign_goes_first_after_flowstate("stftcx", Via::Tcx);
}

#[test]
fn a_foreign_program_before_flowstate_outlives_it_clsact() {
    if skip("a_foreign_program_before_flowstate_outlives_it_clsact") {
        return;
    }
    foreign_goes_first_after_flowstate("stfcls", Via::Clsact);
}

/// A flowstate `drop` ends the chain: the foreign program after it sees
/// nothing (the other half of the `pass` semantics).
fn drop_ends_the_chain(tag: &str, via: Via) {
    let lab = Lab::new(tag);
    let name = unique(tag);
    let mut foreign = Foreign::load(TC_ACT_OK);
    match via {
        Via::Tcx => foreign.attach_tcx(&lab, TcOrder::Last),
        Via::Clsact => foreign.attach_clsact(&lab, clsact::DEFAULT_PRIORITY),
    }
    let _running = lab.run(
        &name,
        "drop",
        via,
        Order::Before(Relative::Program(foreign.id)),
    );
    let before = foreign.count();
    assert_eq!(lab.send(10), 0);
    assert_eq!(counted(&name), 10);
    assert_eq!(foreign.count(), before, "nothing got past flowstate's drop");
    foreign.detach(&lab);
}

#[test]
fn drop_ends_the_tcx_chain() {
    if skip("drop_ends_the_tcx_chain") || tcx_refused_here("stdtcx") {
        return;
    }
    drop_ends_the_chain("stdtcx", Via::Tcx);
}

#[test]
fn drop_ends_the_clsact_filters() {
    if skip("drop_ends_the_clsact_filters") {
        return;
    }
    drop_ends_the_chain("stdcls", Via::Clsact);
}

/// The whole life of a clsact instance: run, list, a plain reload (same
/// table), a migrating reload (new register), stop; the filter keeps its
/// priority through the reloads and is gone, with the qdisc flowstate
/// added, after stop.
#[test]
fn clsact_run_list_reload_and_stop() {
    if skip("clsact_run_list_reload_and_stop") {
        return;
    }
    let lab = Lab::new("stlife");
    let name = unique("life");
    let running = lab.run(&name, "pass", Via::Clsact, Order::Last);
    let ifindex = lab.ifindex;
    let filters = || {
        lab.switch
            .run_in(|| clsact::filters(ifindex, TcDirection::Ingress))
            .unwrap()
            .unwrap()
    };
    let first = prog_id(&name);
    assert_eq!(hook_of(&name), [first]);
    let priority = filters()[0].priority;
    let shown = lab
        .switch
        .exec("tc", &["filter", "show", "dev", DEV, "ingress"])
        .unwrap();
    assert!(
        shown.contains("direct-action") && shown.contains("stackcount"),
        "{shown}"
    );
    assert_eq!(lab.send(5), 5);
    assert_eq!(counted(&name), 5);

    // Same states and registers: the table is reused, the program swapped.
    let v2 = lab.dir.join("v2.fsm");
    std::fs::write(
        &v2,
        COUNTER.replace("VERDICT, n = n + 1", "pass, n = n + 2"),
    )
    .unwrap();
    let report = flowstate_control::reload(&name, &v2, false).unwrap();
    assert_eq!(report.flows, flowstate_control::FlowsMigration::Reused);
    assert_ne!(report.new_prog_id, first);
    assert_eq!(hook_of(&name), [report.new_prog_id]);
    assert_eq!(filters()[0].priority, priority, "the filter kept its place");
    assert_eq!(lab.send(5), 5);
    assert_eq!(counted(&name), 15);

    // A register more: the table is migrated through the handoff, bridge
    // and final swaps, all on the filter.
    let v3 = lab.dir.join("v3.fsm");
    std::fs::write(
        &v3,
        COUNTER
            .replace("registers n = 0", "registers n = 0, m = 0")
            .replace("VERDICT", "pass"),
    )
    .unwrap();
    let report = flowstate_control::reload(&name, &v3, false).unwrap();
    assert_eq!(report.flows, flowstate_control::FlowsMigration::Migrated);
    assert_eq!(report.flows_carried, 1);
    assert_eq!(hook_of(&name), [report.new_prog_id]);
    assert_eq!(filters().len(), 1);
    assert_eq!(filters()[0].priority, priority);
    assert_eq!(lab.send(5), 5);
    assert_eq!(counted(&name), 20);

    drop(running);
    assert!(filters().is_empty(), "stop deleted the filter");
    let qdiscs = lab
        .switch
        .exec("tc", &["qdisc", "show", "dev", DEV])
        .unwrap();
    assert!(
        !qdiscs.contains("clsact"),
        "the clsact qdisc flowstate added is gone: {qdiscs}"
    );
    assert!(!flowstate_control::pin_root().join(&name).exists());
}

/// `stop` leaves a filter that no longer runs flowstate's program (someone
/// replaced it with `tc filter replace`), and the qdisc under it.
#[test]
fn clsact_stop_leaves_a_filter_someone_else_took_over() {
    if skip("clsact_stop_leaves_a_filter_someone_else_took_over") {
        return;
    }
    let lab = Lab::new("sttake");
    let name = unique("take");
    let running = lab.run(&name, "pass", Via::Clsact, Order::Last);
    let ifindex = lab.ifindex;
    let filters = || {
        lab.switch
            .run_in(|| clsact::filters(ifindex, TcDirection::Ingress))
            .unwrap()
            .unwrap()
    };
    let priority = filters()[0].priority;
    let foreign = Foreign::load(TC_ACT_UNSPEC);
    let loaded = &foreign.loaded;
    lab.switch
        .run_in(|| {
            let fd = loaded.program_fd("foreign_tc").unwrap();
            clsact::replace_program(ifindex, TcDirection::Ingress, priority, fd, "foreign_tc")
        })
        .unwrap()
        .unwrap();
    let listed = list().unwrap();
    let me = listed.iter().find(|i| i.name == name).unwrap();
    assert!(
        me.problem
            .as_deref()
            .is_some_and(|p| p.contains(&foreign.id.to_string())),
        "{me:?}"
    );
    drop(running);
    assert_eq!(
        filters().iter().map(|f| f.prog_id).collect::<Vec<_>>(),
        [foreign.id],
        "the taken-over filter stays"
    );
    lab.switch
        .run_in(|| clsact::delete_filter(ifindex, TcDirection::Ingress, priority))
        .unwrap()
        .unwrap();
}

/// A reload swaps the program where it stands: the new program keeps the
/// old one's place between two others (TCX: the link update keeps it;
/// clsact: the same priority). The others are named by instance name and
/// by a pinned program's path.
fn reload_keeps_the_place(tag: &str, via: Via) {
    let lab = Lab::new(tag);
    let mut foreign = Foreign::load(TC_ACT_UNSPEC);
    match via {
        Via::Tcx => foreign.attach_tcx(&lab, TcOrder::Last),
        Via::Clsact => foreign.attach_clsact(&lab, clsact::DEFAULT_PRIORITY),
    }
    let pin = std::path::PathBuf::from(flowstate_runtime::BPFFS_ROOT)
        .join(format!("fs-stack-{tag}-{}", std::process::id()));
    foreign.loaded.pin_program("foreign_tc", &pin).unwrap();
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unpin = Unpin(pin.clone());
    let first = unique(&format!("{tag}f"));
    let middle = unique(&format!("{tag}m"));
    let _first = lab.run(&first, "pass", via, Order::Before(Relative::Pinned(pin)));
    let _middle = lab.run(
        &middle,
        "pass",
        via,
        Order::After(Relative::Instance(first.clone())),
    );
    assert_eq!(
        hook_of(&middle),
        [prog_id(&first), prog_id(&middle), foreign.id]
    );
    let v2 = lab.dir.join("v2.fsm");
    std::fs::write(
        &v2,
        COUNTER.replace("VERDICT, n = n + 1", "pass, n = n + 2"),
    )
    .unwrap();
    let report = flowstate_control::reload(&middle, &v2, false).unwrap();
    assert_eq!(
        hook_of(&middle),
        [prog_id(&first), report.new_prog_id, foreign.id],
        "the reloaded program kept its place"
    );
    assert_eq!(lab.send(3), 3);
    assert_eq!((counted(&first), counted(&middle)), (3, 6));
    foreign.detach(&lab);
}

#[test]
fn a_reload_keeps_the_place_on_the_tcx_hook() {
    if skip("a_reload_keeps_the_place_on_the_tcx_hook") || tcx_refused_here("strtcx") {
        return;
    }
    reload_keeps_the_place("strtcx", Via::Tcx);
}

#[test]
fn a_reload_keeps_the_place_among_the_clsact_filters() {
    if skip("a_reload_keeps_the_place_among_the_clsact_filters") {
        return;
    }
    reload_keeps_the_place("strcls", Via::Clsact);
}

/// A program named by --before that is not on the hook: refused, saying
/// so, and nothing is left behind.
fn relative_not_on_the_hook(tag: &str, via: Via) {
    let lab = Lab::new(tag);
    let foreign = Foreign::load(TC_ACT_UNSPEC);
    let name = unique(tag);
    let path = lab.dir.join("p.fsm");
    std::fs::write(&path, COUNTER.replace("VERDICT", "pass")).unwrap();
    let spec = RunSpec {
        program_path: path,
        dev: DEV.to_string(),
        attach: Some(AttachPoint::TcIngress),
        name: Some(name.clone()),
        tc: TcPlacement {
            via: match via {
                Via::Tcx => TcVia::Tcx,
                Via::Clsact => TcVia::Clsact,
            },
            order: Order::Before(Relative::Program(foreign.id)),
        },
    };
    let err = run_in_netns(&spec, Some(lab.switch.name())).unwrap_err();
    let _cleanup = Running(name.clone());
    let text = err.to_string();
    assert!(
        text.contains("not on this hook") || text.contains("has no clsact filter"),
        "{text}"
    );
    assert!(!flowstate_control::pin_root().join(&name).exists());
    assert!(list().unwrap().iter().all(|i| i.name != name));
    let ifindex = lab.ifindex;
    let filters = lab
        .switch
        .run_in(|| clsact::filters(ifindex, TcDirection::Ingress))
        .unwrap()
        .unwrap();
    assert!(filters.is_empty(), "{filters:?}");
}

#[test]
fn before_a_program_not_on_the_tcx_hook_is_refused() {
    if skip("before_a_program_not_on_the_tcx_hook_is_refused") || tcx_refused_here("stntcx") {
        return;
    }
    relative_not_on_the_hook("stntcx", Via::Tcx);
}

#[test]
fn before_a_program_not_among_the_clsact_filters_is_refused() {
    if skip("before_a_program_not_among_the_clsact_filters_is_refused") {
        return;
    }
    relative_not_on_the_hook("stncls", Via::Clsact);
}
