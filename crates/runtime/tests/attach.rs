//! Attaching through aya on a veth pair in a private network namespace:
//! frames sent into `veth1` arrive at `veth0`, where the program runs.

mod common;

use common::*;
use flowstate_obj::{ObjectBuilder, ProgramSection};
use flowstate_runtime::{
    load, tcx_programs, LoadOptions, ProgramKind, ProgramLink, TcDirection, UpdateMode, XdpMode,
};

/// Counting program plus a plain `return PASS` of each kind, for replacing.
fn object() -> Vec<u8> {
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(flowstate_obj::MapDef::new(
            "flows",
            flowstate_obj::MapKind::Hash,
            flowstate_obj::BtfType::u32(),
            flow_value(),
            128,
        ))
        .add_map(flowstate_obj::MapDef::new(
            "verdict",
            flowstate_obj::MapKind::Array,
            flowstate_obj::BtfType::u32(),
            flowstate_obj::BtfType::u32(),
            1,
        ))
        .add_program(counting_program("count_xdp", ProgramSection::Xdp))
        .add_program(counting_program("count_tc", ProgramSection::Classifier))
        .add_program(constant_program(
            "pass_xdp",
            ProgramSection::Xdp,
            XDP_PASS as i32,
        ))
        .add_program(constant_program(
            "pass_tc",
            ProgramSection::Classifier,
            TC_ACT_OK as i32,
        ));
    builder.build().unwrap()
}

fn packets(loaded: &flowstate_runtime::Loaded) -> u64 {
    let value = loaded
        .map("flows")
        .unwrap()
        .lookup(&FLOW_KEY.to_le_bytes())
        .unwrap()
        .unwrap();
    u64::from_le_bytes(value[8..16].try_into().unwrap())
}

fn prepare(loaded: &flowstate_runtime::Loaded, verdict: u32) {
    loaded
        .map("flows")
        .unwrap()
        .update(&FLOW_KEY.to_le_bytes(), &[0; 16], UpdateMode::Any)
        .unwrap();
    loaded
        .map("verdict")
        .unwrap()
        .array_set(0, &verdict.to_le_bytes())
        .unwrap();
}

/// The kernel releases a dropped TCX link a moment after the fd closes.
fn wait_for_tcx_detach() {
    for _ in 0..200 {
        if tcx_programs("veth0", TcDirection::Ingress)
            .unwrap()
            .is_empty()
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the TCX program stayed attached 2 s after its link was dropped");
}

fn attach_count_replace_detach(kind: ProgramKind, mode: XdpMode) {
    let netns = Netns::new(match (kind, mode) {
        (ProgramKind::Tc, _) => "tcx",
        (_, XdpMode::Driver) => "xdpdrv",
        _ => "xdpskb",
    });
    let pins = PinDir::new(&netns.name);
    let link_pin = pins.join("link");
    netns.enter(|| {
        let mut loaded = load(&object(), &LoadOptions::default()).unwrap();
        prepare(
            &loaded,
            if kind == ProgramKind::Xdp {
                XDP_PASS
            } else {
                TC_ACT_OK
            },
        );
        let (counting, plain) = match kind {
            ProgramKind::Xdp => ("count_xdp", "pass_xdp"),
            ProgramKind::Tc => ("count_tc", "pass_tc"),
        };
        let link = match kind {
            ProgramKind::Xdp => loaded.attach_xdp(counting, "veth0", mode).unwrap(),
            ProgramKind::Tc => loaded
                .attach_tc(counting, "veth0", TcDirection::Ingress)
                .unwrap(),
        };
        assert_eq!(link.kind(), kind);
        send_frames("veth1", &udp_packet(), 3);
        assert_eq!(packets(&loaded), 3, "the attached program saw each frame");

        // Pin, reopen as another process would, and replace atomically.
        let link = link.pin(&link_pin).unwrap();
        drop(link);
        send_frames("veth1", &udp_packet(), 1);
        assert_eq!(packets(&loaded), 4, "a pinned link stays attached");
        let reopened = ProgramLink::from_pin(&link_pin, kind).unwrap();
        let replaced = loaded.replace(reopened, plain).unwrap();
        send_frames("veth1", &udp_packet(), 2);
        assert_eq!(packets(&loaded), 4, "the replacement does not count");

        // Unpin and drop: detached, so even the counting program put back
        // in place would not be reached; check with a fresh attach.
        ProgramLink::unpin(&link_pin).unwrap();
        replaced.detach().unwrap();
        send_frames("veth1", &udp_packet(), 1);
        assert_eq!(packets(&loaded), 4);
        let again = match kind {
            ProgramKind::Xdp => loaded.attach_xdp(counting, "veth0", mode).unwrap(),
            ProgramKind::Tc => loaded
                .attach_tc(counting, "veth0", TcDirection::Ingress)
                .unwrap(),
        };
        send_frames("veth1", &udp_packet(), 1);
        assert_eq!(packets(&loaded), 5);
        if kind == ProgramKind::Tc {
            assert_eq!(
                tcx_programs("veth0", TcDirection::Ingress).unwrap(),
                [counting]
            );
        }
        drop(again);
        if kind == ProgramKind::Tc {
            wait_for_tcx_detach();
        }
        send_frames("veth1", &udp_packet(), 1);
        assert_eq!(packets(&loaded), 5, "dropping an unpinned link detaches");
    });
}

#[test]
fn xdp_skb_mode_attach_pin_replace_detach() {
    if skip("xdp_skb_mode_attach_pin_replace_detach") {
        return;
    }
    attach_count_replace_detach(ProgramKind::Xdp, XdpMode::Skb);
}

#[test]
fn xdp_driver_mode_attach_pin_replace_detach() {
    if skip("xdp_driver_mode_attach_pin_replace_detach") {
        return;
    }
    attach_count_replace_detach(ProgramKind::Xdp, XdpMode::Driver);
}

/// Through TCX where the kernel has it (6.6+); before that, what such a
/// kernel does instead: see [`tcx_is_refused_and_clsact_runs`].
#[test]
fn tc_ingress_attach_pin_replace_detach() {
    if skip("tc_ingress_attach_pin_replace_detach") {
        return;
    }
    let tcx = flowstate_runtime::kernel_features()
        .get(flowstate_runtime::Feature::Tcx)
        .is_present();
    if tcx {
        attach_count_replace_detach(ProgramKind::Tc, XdpMode::Skb);
    } else {
        tcx_is_refused_and_clsact_runs();
    }
}

/// A kernel without TCX refuses a TCX attach, and nothing runs after
/// the refusal (no link, no filter, no frame counted); the same program
/// then runs as a clsact filter, the path flowstate takes there.
fn tcx_is_refused_and_clsact_runs() {
    use flowstate_runtime::{clsact, TcOrder};
    let netns = Netns::new("notcx");
    netns.enter(|| {
        let index = std::ffi::CString::new("veth0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(index.as_ptr()) };
        assert_ne!(ifindex, 0);
        let mut loaded = load(&object(), &LoadOptions::default()).unwrap();
        prepare(&loaded, TC_ACT_OK);
        let refused = loaded.attach_tcx("count_tc", "veth0", TcDirection::Ingress, TcOrder::Last);
        let err = match refused {
            Ok(_) => panic!("the probe found no TCX, yet a TCX link was made"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("count_tc"), "{err}");
        assert!(clsact::filters(ifindex, TcDirection::Ingress)
            .unwrap()
            .is_empty());
        send_frames("veth1", &udp_packet(), 2);
        assert_eq!(packets(&loaded), 0, "nothing was attached");
        loaded
            .attach_clsact("count_tc", ifindex, TcDirection::Ingress, 1)
            .unwrap();
        send_frames("veth1", &udp_packet(), 3);
        assert_eq!(packets(&loaded), 3, "the clsact filter saw each frame");
        clsact::delete_filter(ifindex, TcDirection::Ingress, 1).unwrap();
        clsact::delete_qdisc(ifindex).unwrap();
    });
}

#[test]
fn pinned_map_and_program_reopen() {
    if skip("pinned_map_and_program_reopen") {
        return;
    }
    let pins = PinDir::new("maps");
    let mut loaded = load(&object(), &LoadOptions::default()).unwrap();
    prepare(&loaded, XDP_DROP);
    loaded.pin_map("flows", pins.join("flows")).unwrap();
    loaded
        .pin_program("count_xdp", pins.join("count_xdp"))
        .unwrap();
    loaded.test_run("count_xdp", &udp_packet(), 2).unwrap();
    drop(loaded);
    // The map outlives the object through its pin, with its contents.
    let flows = flowstate_runtime::RawMap::from_pin(pins.join("flows")).unwrap();
    assert_eq!((flows.key_size(), flows.value_size()), (4, 16));
    let value = flows.lookup(&FLOW_KEY.to_le_bytes()).unwrap().unwrap();
    assert_eq!(u64::from_le_bytes(value[8..16].try_into().unwrap()), 2);
    assert!(pins.join("count_xdp").exists());
    assert!(flowstate_runtime::RawMap::from_pin(pins.join("missing")).is_err());
}

#[test]
fn replace_refuses_a_program_of_the_other_kind() {
    if skip("replace_refuses_a_program_of_the_other_kind") {
        return;
    }
    let netns = Netns::new("mismatch");
    netns.enter(|| {
        let mut loaded = load(&object(), &LoadOptions::default()).unwrap();
        let link = loaded
            .attach_xdp("pass_xdp", "veth0", XdpMode::Skb)
            .unwrap();
        let err = loaded.replace(link, "pass_tc").unwrap_err();
        assert!(err.to_string().contains("not a Xdp program"), "{err}");
        assert!(loaded
            .attach_tc("pass_xdp", "veth0", TcDirection::Ingress)
            .is_err());
        assert!(loaded.attach_xdp("missing", "veth0", XdpMode::Skb).is_err());
    });
}

/// clsact without flowstate's control plane: two counting programs as
/// filters at priorities 10 and 20 run in that order; TC_ACT_UNSPEC lets
/// the second run, TC_ACT_SHOT stops the chain; a program replaced in
/// place keeps the priority; deleting filters and the qdisc leaves none.
/// (The path kernels without TCX take; it runs on any kernel.)
#[test]
fn clsact_filters_run_by_priority_and_replace_in_place() {
    use flowstate_runtime::clsact;
    if skip("clsact_filters_run_by_priority_and_replace_in_place") {
        return;
    }
    let netns = Netns::new("clsact");
    netns.enter(|| {
        let index = std::ffi::CString::new("veth0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(index.as_ptr()) };
        assert_ne!(ifindex, 0);
        let first = load(&object(), &LoadOptions::default()).unwrap();
        let second = load(&object(), &LoadOptions::default()).unwrap();
        prepare(&first, -1i32 as u32);
        prepare(&second, TC_ACT_OK);
        first
            .attach_clsact("count_tc", ifindex, TcDirection::Ingress, 10)
            .unwrap();
        second
            .attach_clsact("count_tc", ifindex, TcDirection::Ingress, 20)
            .unwrap();
        let ids = |filters: Vec<clsact::Filter>| {
            filters
                .iter()
                .map(|f| (f.priority, f.prog_id))
                .collect::<Vec<_>>()
        };
        let filters = || clsact::filters(ifindex, TcDirection::Ingress).unwrap();
        assert_eq!(
            ids(filters()),
            [
                (10, first.program_id("count_tc").unwrap()),
                (20, second.program_id("count_tc").unwrap())
            ]
        );
        send_frames("veth1", &udp_packet(), 3);
        assert_eq!(
            (packets(&first), packets(&second)),
            (3, 3),
            "UNSPEC goes on"
        );

        prepare(&first, TC_ACT_SHOT);
        send_frames("veth1", &udp_packet(), 2);
        assert_eq!((packets(&first), packets(&second)), (2, 3), "SHOT ends it");

        // Replace the first filter's program: same priority, new program.
        let plain = first.program_fd("pass_tc").unwrap();
        clsact::replace_program(ifindex, TcDirection::Ingress, 10, plain, "pass_tc").unwrap();
        assert_eq!(
            ids(filters()),
            [
                (10, first.program_id("pass_tc").unwrap()),
                (20, second.program_id("count_tc").unwrap())
            ]
        );
        send_frames("veth1", &udp_packet(), 1);
        assert_eq!(
            (packets(&first), packets(&second)),
            (2, 3),
            "pass_tc (TC_ACT_OK) ends the chain and counts nothing"
        );
        clsact::delete_filter(ifindex, TcDirection::Ingress, 10).unwrap();
        send_frames("veth1", &udp_packet(), 1);
        assert_eq!(packets(&second), 4);
        clsact::delete_filter(ifindex, TcDirection::Ingress, 20).unwrap();
        assert!(filters().is_empty());
        clsact::delete_qdisc(ifindex).unwrap();
        assert!(filters().is_empty(), "no qdisc, no filters");
    });
}
