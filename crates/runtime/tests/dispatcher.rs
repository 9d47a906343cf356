//! The libxdp dispatcher protocol against libxdp itself: a program joined
//! through `flowstate_runtime::dispatcher` and one loaded with
//! `xdp-loader` share `veth0`, both see the frames sent into `veth1` in
//! their priority order, and either leaves without disturbing the other.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use aya::programs::Program;
use aya::{Ebpf, EbpfLoader};
use common::*;
use flowstate_runtime::dispatcher::{self, NewComponent, XdpOccupant, CHAIN_ON_PASS};
use flowstate_runtime::{RawMap, UpdateMode};

/// Where the kernel refuses extension programs (some do, EPERM) the
/// protocol cannot run: there the test checks what must happen instead (a
/// join fails and leaves the hook as it was) and returns true. The
/// sharing itself runs in the VM matrix (`.ci/vm/matrix`, under CI=true),
/// whose kernels load extensions.
fn skip_without_extensions(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    let Some(why) = dispatcher::extensions_unavailable() else {
        return false;
    };
    eprintln!("NOTE {test}: {why}; checked that a join fails cleanly instead");
    // One namespace per test: they run at once.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let netns = Netns::new(&format!("dspx{n}"));
    let ifindex = netns.enter(|| ifindex("veth0"));
    let mut keep = None;
    let joined = netns.enter(|| {
        dispatcher::join(
            ifindex,
            NewComponent {
                name: "count_xdp".into(),
                priority: 50,
                chain_call_actions: CHAIN_ON_PASS,
                load: Box::new(|d, slot| try_load_counter(&mut keep, d, slot)),
            },
            dispatcher::XDP_FLAGS_DRV_MODE,
        )
    });
    assert!(joined.is_err(), "{joined:?}");
    assert_eq!(
        netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap(),
        XdpOccupant::Free,
        "a failed join leaves the hook free"
    );
    let leftovers = std::fs::read_dir(dispatcher::pin_base())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(&format!("dispatch-{ifindex}-")) && !dispatcher_running(&name)
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "no pins left by the failed join");
    true
}

/// Whether the dispatcher a `dispatch-IFINDEX-ID` directory names is
/// still loaded (another test's, running now).
fn dispatcher_running(dir: &str) -> bool {
    dir.rsplit('-')
        .next()
        .and_then(|id| id.parse::<u32>().ok())
        .is_some_and(|id| flowstate_runtime::program_loaded(id).unwrap_or(false))
}

fn try_load_counter(
    keep: &mut Option<Ebpf>,
    dispatcher: &aya::programs::ProgramFd,
    slot: &str,
) -> Result<OwnedFd, flowstate_runtime::RuntimeError> {
    let mut ebpf = EbpfLoader::new()
        .extension("count_xdp")
        .load(&counting_object())
        .map_err(|e| flowstate_runtime::RuntimeError::Dispatcher(e.to_string()))?;
    let Some(Program::Extension(ext)) = ebpf.program_mut("count_xdp") else {
        panic!("count_xdp is not an extension");
    };
    ext.load(dispatcher.try_clone().unwrap(), slot)
        .map_err(|e| flowstate_runtime::RuntimeError::Dispatcher(e.to_string()))?;
    let fd = ext.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
    *keep = Some(ebpf);
    Ok(fd)
}

fn skip_without_xdp_loader(test: &str) -> bool {
    if skip_without_extensions(test) {
        return true;
    }
    // `xdp-loader status --version` prints the version and exits 1.
    let found = std::process::Command::new("xdp-loader")
        .args(["status", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("xdp-loader version"));
    let missing = (!found).then_some("xdp-loader is not installed (run .ci/install-deps)");
    flowstate_testkit::skip_if(test, missing)
}

/// The counting program as an extension of `dispatcher`'s `slot`, kept
/// alive (with its maps) in `keep`.
fn load_counter(
    keep: &mut Option<Ebpf>,
    dispatcher: &aya::programs::ProgramFd,
    slot: &str,
) -> OwnedFd {
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::DEBUG | aya::VerifierLogLevel::STATS)
        .extension("count_xdp")
        .load(&counting_object())
        .expect("object");
    let Some(Program::Extension(ext)) = ebpf.program_mut("count_xdp") else {
        panic!("count_xdp is not an extension");
    };
    ext.load(dispatcher.try_clone().unwrap(), slot)
        .expect("loads as an extension");
    let fd = ext.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
    for (name, value) in [
        ("flows", vec![0u8; 16]),
        ("verdict", XDP_PASS.to_le_bytes().to_vec()),
    ] {
        let map = ebpf.map(name).unwrap();
        let raw = RawMap::from_map(name, map).unwrap();
        let key = if name == "flows" { FLOW_KEY } else { 0 };
        raw.update(&key.to_le_bytes(), &value, UpdateMode::Any)
            .unwrap();
    }
    *keep = Some(ebpf);
    fd
}

/// The counting object in a file of its own, removed on drop (bpffs
/// holds no plain files).
struct ObjectFile(std::path::PathBuf);

impl ObjectFile {
    fn new(tag: &str) -> ObjectFile {
        // Unique per call: the tests run at once in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("flowstate-{tag}-{}-{n}.o", std::process::id()));
        std::fs::write(&path, counting_object()).unwrap();
        ObjectFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ObjectFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn packets_in(flows: &RawMap) -> u64 {
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    u64::from_le_bytes(value[8..16].try_into().unwrap())
}

fn set_verdict(verdict: &RawMap, action: u32) {
    verdict.array_set(0, &action.to_le_bytes()).unwrap();
}

/// Runs xdp-loader in the namespace. Not through `ip netns exec`, whose
/// fresh /sys has no bpffs (libxdp would load without a dispatcher): the
/// child of a thread inside the namespace keeps the mounts.
/// xdp-loader itself allows one run at a time (a PID lock file; a second
/// one at once fails with "Unable to read PID from lockfile"): this
/// binary's runs take turns, and a run that met another process's is
/// tried again.
fn xdp_loader(netns: &Netns, args: &[&str]) -> Result<String, String> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut result = netns.enter(|| run("xdp-loader", args));
    for _ in 0..50 {
        match &result {
            Err(e) if e.contains("lockfile") => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                result = netns.enter(|| run("xdp-loader", args));
            }
            _ => break,
        }
    }
    result
}

/// The maps `flows` and `verdict` of program `prog_id`.
fn counter_maps(prog_id: u32) -> (RawMap, RawMap) {
    let mut maps = RawMap::of_program(prog_id).unwrap();
    let mut take = |name: &str| {
        let at = maps
            .iter()
            .position(|m| m.name() == name)
            .unwrap_or_else(|| panic!("program {prog_id} has no map {name}"));
        maps.remove(at)
    };
    (take("flows"), take("verdict"))
}

/// Loads the counting object with xdp-loader at `priority`; returns its
/// program id.
fn xdp_loader_load(netns: &Netns, priority: u32) -> u32 {
    let object = ObjectFile::new("foreign");
    let before: Vec<u32> = ids(netns);
    xdp_loader(
        netns,
        &[
            "load",
            "-m",
            "native",
            "-P",
            &priority.to_string(),
            "-n",
            "count_xdp",
            "veth0",
            object.path(),
        ],
    )
    .expect("xdp-loader loads into the dispatcher");
    let after = ids(netns);
    let new: Vec<u32> = after
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(new.len(), 1, "xdp-loader added one program: {new:?}");
    let (flows, verdict) = counter_maps(new[0]);
    flows
        .update(&FLOW_KEY.to_le_bytes(), &[0; 16], UpdateMode::Any)
        .unwrap();
    set_verdict(&verdict, XDP_PASS);
    new[0]
}

fn ids(netns: &Netns) -> Vec<u32> {
    let ifindex = netns.enter(|| ifindex("veth0"));
    match netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap() {
        XdpOccupant::Dispatcher { components, .. } => {
            components.iter().map(|c| c.prog_id).collect()
        }
        _ => Vec::new(),
    }
}

fn send(netns: &Netns, count: usize) {
    netns.enter(|| send_frames("veth1", &udp_packet(), count));
}

fn components(netns: &Netns) -> Vec<dispatcher::Component> {
    let ifindex = netns.enter(|| ifindex("veth0"));
    match netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap() {
        XdpOccupant::Dispatcher { components, .. } => components,
        other => panic!("no dispatcher on veth0: {other:?}"),
    }
}

fn ifindex(dev: &str) -> u32 {
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a valid NUL-terminated name.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Ours at priority `ours`, xdp-loader's at `theirs`; ours joins first
/// when `ours_first`. Checks order, sharing and each leaving.
fn share(tag: &str, ours: u32, theirs: u32, ours_first: bool, ours_leaves_first: bool) {
    let netns = Netns::new(tag);
    let ifindex = netns.enter(|| ifindex("veth0"));
    let mut keep = None;
    let join = |keep: &mut Option<Ebpf>| {
        netns
            .enter(|| {
                dispatcher::join(
                    ifindex,
                    NewComponent {
                        name: "count_xdp".into(),
                        priority: ours,
                        chain_call_actions: CHAIN_ON_PASS,
                        load: Box::new(|d, slot| Ok(load_counter(keep, d, slot))),
                    },
                    dispatcher::XDP_FLAGS_DRV_MODE,
                )
            })
            .expect("joins the dispatcher")
    };
    let (joined, their_id) = if ours_first {
        let joined = join(&mut keep);
        (joined, xdp_loader_load(&netns, theirs))
    } else {
        let theirs = xdp_loader_load(&netns, theirs);
        (join(&mut keep), theirs)
    };
    let (their_flows, their_verdict) = counter_maps(their_id);
    let ebpf = keep.as_ref().unwrap();
    let our_flows = RawMap::from_map("flows", ebpf.map("flows").unwrap()).unwrap();
    let our_verdict = RawMap::from_map("verdict", ebpf.map("verdict").unwrap()).unwrap();

    // Both listed, in priority order, by us and by xdp-loader.
    let listed = components(&netns);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let our_slot = listed
        .iter()
        .position(|c| c.prog_id == joined.prog_id)
        .unwrap();
    assert_eq!(our_slot, usize::from(ours > theirs), "{listed:?}");
    assert_eq!(listed[our_slot].priority, ours);
    assert_eq!(listed[1 - our_slot].priority, theirs);
    let status = xdp_loader(&netns, &["status", "veth0"]).unwrap();
    assert_eq!(status.matches("count_xdp").count(), 2, "{status}");
    assert!(status.contains("xdp_dispatcher"), "{status}");

    // Both pass: both see every frame.
    send(&netns, 5);
    assert_eq!((packets_in(&our_flows), packets_in(&their_flows)), (5, 5));
    // The first in run order drops: the second sees nothing more.
    let (first_verdict, second_flows) = if our_slot == 0 {
        (&our_verdict, &their_flows)
    } else {
        (&their_verdict, &our_flows)
    };
    set_verdict(first_verdict, XDP_DROP);
    send(&netns, 3);
    assert_eq!(packets_in(second_flows), 5, "a drop ends the chain");
    set_verdict(first_verdict, XDP_PASS);

    if ours_leaves_first {
        assert!(netns
            .enter(|| dispatcher::leave(ifindex, joined.prog_id))
            .unwrap());
        let left = components(&netns);
        assert_eq!(left.len(), 1, "{left:?}");
        send(&netns, 2);
        assert_eq!(
            packets_in(&their_flows),
            5 + 3 * u64::from(our_slot == 1) + 2
        );
        xdp_loader(&netns, &["unload", "--all", "veth0"]).unwrap();
    } else {
        assert_eq!(listed[1 - our_slot].prog_id, their_id);
        xdp_loader(&netns, &["unload", "-i", &their_id.to_string(), "veth0"]).unwrap();
        let left = components(&netns);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].prog_id, joined.prog_id);
        let before = packets_in(&our_flows);
        send(&netns, 2);
        assert_eq!(packets_in(&our_flows), before + 2, "ours runs on alone");
        assert!(netns
            .enter(|| dispatcher::leave(ifindex, joined.prog_id))
            .unwrap());
    }
    assert_eq!(
        netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap(),
        XdpOccupant::Free
    );
}

#[test]
fn ours_first_and_before_theirs_leaving_first() {
    if skip_without_xdp_loader("ours_first_and_before_theirs_leaving_first") {
        return;
    }
    share("dspa", 10, 20, true, true);
}

#[test]
fn theirs_first_and_ours_after_them_leaving_last() {
    if skip_without_xdp_loader("theirs_first_and_ours_after_them_leaving_last") {
        return;
    }
    share("dspb", 30, 20, false, false);
}

#[test]
fn ours_first_but_after_theirs_leaving_last() {
    if skip_without_xdp_loader("ours_first_but_after_theirs_leaving_last") {
        return;
    }
    share("dspc", 60, 40, true, false);
}

#[test]
fn theirs_first_and_ours_before_them_leaving_first() {
    if skip_without_xdp_loader("theirs_first_and_ours_before_them_leaving_first") {
        return;
    }
    share("dspd", 5, 50, false, true);
}

#[test]
fn a_plain_program_is_refused_and_left_attached() {
    if skip_without_extensions("a_plain_program_is_refused_and_left_attached") {
        return;
    }
    let netns = Netns::new("dspe");
    let object = ObjectFile::new("plain");
    netns
        .exec(
            "ip",
            &[
                "link",
                "set",
                "dev",
                "veth0",
                "xdp",
                "obj",
                object.path(),
                "sec",
                "xdp",
            ],
        )
        .unwrap();
    let ifindex = netns.enter(|| ifindex("veth0"));
    let before = netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap();
    assert!(matches!(before, XdpOccupant::Program { .. }), "{before:?}");
    let mut keep = None;
    let err = netns
        .enter(|| {
            dispatcher::join(
                ifindex,
                NewComponent {
                    name: "count_xdp".into(),
                    priority: 50,
                    chain_call_actions: CHAIN_ON_PASS,
                    load: Box::new(|d, slot| Ok(load_counter(&mut keep, d, slot))),
                },
                dispatcher::XDP_FLAGS_DRV_MODE,
            )
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("xdp-loader load"), "{err}");
    assert_eq!(
        netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap(),
        before
    );
}

#[test]
fn replace_swaps_our_program_in_its_slot() {
    if skip_without_xdp_loader("replace_swaps_our_program_in_its_slot") {
        return;
    }
    let netns = Netns::new("dspr");
    let ifindex = netns.enter(|| ifindex("veth0"));
    let mut first = None;
    let joined = netns
        .enter(|| {
            dispatcher::join(
                ifindex,
                NewComponent {
                    name: "count_xdp".into(),
                    priority: 10,
                    chain_call_actions: CHAIN_ON_PASS,
                    load: Box::new(|d, slot| Ok(load_counter(&mut first, d, slot))),
                },
                dispatcher::XDP_FLAGS_DRV_MODE,
            )
        })
        .unwrap();
    let their_id = xdp_loader_load(&netns, 20);
    let mut second = None;
    let replaced = netns
        .enter(|| {
            dispatcher::replace(
                ifindex,
                joined.prog_id,
                NewComponent {
                    name: "count_xdp".into(),
                    // The slot's own priority and actions are kept.
                    priority: 99,
                    chain_call_actions: 0,
                    load: Box::new(|d, slot| Ok(load_counter(&mut second, d, slot))),
                },
            )
        })
        .unwrap();
    assert_ne!(replaced.prog_id, joined.prog_id);
    let listed = components(&netns);
    let ids: Vec<u32> = listed.iter().map(|c| c.prog_id).collect();
    assert_eq!(ids, [replaced.prog_id, their_id]);
    assert_eq!(listed[0].priority, 10);
    assert_eq!(listed[0].chain_call_actions, CHAIN_ON_PASS);
    let flows = |keep: &Option<Ebpf>| {
        RawMap::from_map("flows", keep.as_ref().unwrap().map("flows").unwrap()).unwrap()
    };
    let (their_flows, _) = counter_maps(their_id);
    send(&netns, 4);
    assert_eq!(packets_in(&flows(&first)), 0, "the old program is out");
    assert_eq!(packets_in(&flows(&second)), 4);
    assert_eq!(packets_in(&their_flows), 4, "the next program still runs");
    assert!(netns
        .enter(|| dispatcher::leave(ifindex, replaced.prog_id))
        .unwrap());
    xdp_loader(&netns, &["unload", "--all", "veth0"]).unwrap();
    assert_eq!(
        netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap(),
        XdpOccupant::Free
    );
}

/// A reload's primitive: a replacement loaded ahead of the swap against
/// the running dispatcher (`slot_target`), then put in the slot of the
/// program it replaces (`swap_in`); a second `swap_in` changes nothing,
/// and one naming no program of the dispatcher is refused and changes
/// nothing either.
#[test]
fn swap_in_puts_a_preloaded_extension_in_the_slot() {
    if skip_without_xdp_loader("swap_in_puts_a_preloaded_extension_in_the_slot") {
        return;
    }
    let netns = Netns::new("dsps");
    let ifindex = netns.enter(|| ifindex("veth0"));
    let their_id = xdp_loader_load(&netns, 20);
    let mut first = None;
    let joined = netns
        .enter(|| {
            dispatcher::join(
                ifindex,
                NewComponent {
                    name: "count_xdp".into(),
                    priority: 30,
                    chain_call_actions: CHAIN_ON_PASS,
                    load: Box::new(|d, slot| Ok(load_counter(&mut first, d, slot))),
                },
                dispatcher::XDP_FLAGS_DRV_MODE,
            )
        })
        .unwrap();
    let (target, slot) = netns
        .enter(|| dispatcher::slot_target(ifindex, joined.prog_id))
        .unwrap();
    assert_eq!(slot, "prog1", "ours runs second");
    let mut second = None;
    let fd = load_counter(&mut second, &target, &slot);
    let dispatcher_before = match netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap() {
        XdpOccupant::Dispatcher { prog_id, .. } => prog_id,
        other => panic!("{other:?}"),
    };
    let stranger =
        netns.enter(|| dispatcher::swap_in(ifindex, &[u32::MAX], fd.try_clone().unwrap()));
    assert!(stranger.is_err(), "{stranger:?}");
    let swapped = netns
        .enter(|| dispatcher::swap_in(ifindex, &[joined.prog_id], fd.try_clone().unwrap()))
        .unwrap();
    assert_ne!(swapped.dispatcher_id, dispatcher_before, "a new dispatcher");
    assert_eq!(swapped.slot, 1);
    let again = netns
        .enter(|| dispatcher::swap_in(ifindex, &[joined.prog_id], fd.try_clone().unwrap()))
        .unwrap();
    assert_eq!(again, swapped, "already in place: nothing changes");
    let listed = components(&netns);
    let ids: Vec<u32> = listed.iter().map(|c| c.prog_id).collect();
    assert_eq!(ids, [their_id, swapped.prog_id]);
    assert_eq!(listed[1].priority, 30, "the slot keeps its priority");
    assert_eq!(listed[1].chain_call_actions, CHAIN_ON_PASS);
    let flows = |keep: &Option<Ebpf>| {
        RawMap::from_map("flows", keep.as_ref().unwrap().map("flows").unwrap()).unwrap()
    };
    let (their_flows, _) = counter_maps(their_id);
    send(&netns, 4);
    assert_eq!(packets_in(&flows(&first)), 0, "the old program is out");
    assert_eq!(packets_in(&flows(&second)), 4);
    assert_eq!(packets_in(&their_flows), 4, "the program before still runs");
    assert!(netns
        .enter(|| dispatcher::leave(ifindex, swapped.prog_id))
        .unwrap());
    xdp_loader(&netns, &["unload", "--all", "veth0"]).unwrap();
    assert_eq!(
        netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap(),
        XdpOccupant::Free
    );
}

/// An extension that may move packet data (here `bpf_xdp_adjust_head(ctx,
/// 0)`; a tail call counts too) joins: the kernel (6.12's
/// `changes_pkt_data` check) refuses one in place of a slot function that
/// does not, so the slots make a no-op `bpf_xdp_adjust_tail` call, as
/// libxdp's do. It then runs: every frame passes.
#[test]
fn an_extension_that_moves_packet_data_joins() {
    if skip_without_extensions("an_extension_that_moves_packet_data_joins") {
        return;
    }
    let netns = Netns::new("dspm");
    let ifindex = netns.enter(|| ifindex("veth0"));
    let mut keep = None;
    let joined = netns.enter(|| {
        dispatcher::join(
            ifindex,
            NewComponent {
                name: "move_xdp".into(),
                priority: 50,
                chain_call_actions: CHAIN_ON_PASS,
                load: Box::new(|d, slot| {
                    let mut builder = flowstate_obj::ObjectBuilder::new();
                    builder.add_program(flowstate_obj::ProgramDef {
                        name: "move_xdp".into(),
                        section: flowstate_obj::ProgramSection::Xdp,
                        insns: [
                            // r2 = 0; call bpf_xdp_adjust_head; r0 = XDP_PASS; exit
                            [0xb7, 0x02, 0, 0, 0, 0, 0, 0],
                            [0x85, 0, 0, 0, 44, 0, 0, 0],
                            [0xb7, 0, 0, 0, 2, 0, 0, 0],
                            [0x95, 0, 0, 0, 0, 0, 0, 0],
                        ]
                        .concat(),
                        map_relocs: Vec::new(),
                    });
                    let object = builder.build().unwrap();
                    let mut ebpf = EbpfLoader::new()
                        .extension("move_xdp")
                        .load(&object)
                        .map_err(|e| flowstate_runtime::RuntimeError::Dispatcher(e.to_string()))?;
                    let Some(Program::Extension(ext)) = ebpf.program_mut("move_xdp") else {
                        panic!("move_xdp is not an extension");
                    };
                    // The error shows the verifier's log.
                    ext.load(d.try_clone().unwrap(), slot)
                        .map_err(|e| flowstate_runtime::RuntimeError::Dispatcher(e.to_string()))?;
                    let fd = ext.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
                    keep = Some(ebpf);
                    Ok(fd)
                }),
            },
            dispatcher::XDP_FLAGS_DRV_MODE,
        )
    });
    let joined = joined.expect("an extension that moves packet data joins");
    assert_eq!(components(&netns).len(), 1);
    send(&netns, 2);
    assert!(netns
        .enter(|| dispatcher::leave(ifindex, joined.prog_id))
        .unwrap());
    assert_eq!(
        netns.enter(|| dispatcher::xdp_occupant(ifindex)).unwrap(),
        XdpOccupant::Free
    );
}
