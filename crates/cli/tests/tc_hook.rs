//! `flowstate run --before/--after/--tc-attach` and `list`'s view of a
//! shared TC hook, through the binary. Each test's namespaces (with their
//! interfaces, qdiscs and filters) go with its netlab Topology; its
//! instances are stopped by guards.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};

use flowstate_netlab::{Netns, Topology};
use serde_json::Value;

const DEV: &str = "hksw";
const PEER_DEV: &str = "hkpeer";

fn program(name: &str) -> String {
    format!(
        "program {name}\nhook tc ingress\nflow ip.src\nstates S\ndefault pass\ntable\n  S * => \
         pass\nend\n"
    )
}

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_netlab::skip_reason())
}

struct Lab {
    _topology: Topology,
    switch: Netns,
    dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let mut topology = Topology::new(tag).expect("topology");
        let switch = topology.add_netns("sw").unwrap();
        let peer = topology.add_netns("peer").unwrap();
        topology
            .link(
                &switch,
                DEV,
                Ipv4Addr::new(10, 79, 0, 1),
                &peer,
                PEER_DEV,
                Ipv4Addr::new(10, 79, 0, 2),
                24,
            )
            .unwrap();
        let dir = std::env::temp_dir().join(format!("fs-hook-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let remove = dir.clone();
        topology.on_cleanup("remove program copies", move || {
            let _ = std::fs::remove_dir_all(&remove);
        });
        Lab {
            _topology: topology,
            switch,
            dir,
        }
    }

    fn flowstate(&self, args: &[&str]) -> Output {
        let mut command = self
            .switch
            .command(env!("CARGO_BIN_EXE_flowstate"))
            .unwrap();
        command.args(args).env_remove("FLOWSTATE_TC_ATTACH");
        command.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.flowstate(args);
        assert!(
            out.status.success(),
            "flowstate {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write(&self, name: &str) -> String {
        let path = self.dir.join(format!("{name}.fsm"));
        std::fs::write(&path, program(name)).unwrap();
        path.display().to_string()
    }

    fn listed(&self, name: &str) -> Value {
        let all: Value = serde_json::from_str(&self.ok(&["list", "--json"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed"))
    }
}

struct Stop(String);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_flowstate"))
            .args(["stop", &self.0])
            .output();
    }
}

/// Two instances through clsact, the second `--before` the first by
/// name: `list` shows the order (POS, HOOK line, JSON), `tc` the two
/// filters; stopping both leaves no filter and no clsact qdisc.
#[test]
fn run_before_another_instance_and_list_the_hook() {
    if skip("run_before_another_instance_and_list_the_hook") {
        return;
    }
    let lab = Lab::new("hkcls");
    let pid = std::process::id();
    let (a, b) = (format!("h{pid}-a"), format!("h{pid}-b"));
    let _stop = (Stop(a.clone()), Stop(b.clone()));
    let pa = lab.write("hooka");
    let pb = lab.write("hookb");
    let out = lab.ok(&[
        "run",
        &pa,
        "--dev",
        DEV,
        "--name",
        &a,
        "--tc-attach",
        "clsact",
    ]);
    assert!(out.contains("clsact"), "{out}");
    lab.ok(&[
        "run",
        &pb,
        "--dev",
        DEV,
        "--name",
        &b,
        "--tc-attach",
        "clsact",
        "--before",
        &a,
    ]);
    let (ia, ib) = (lab.listed(&a), lab.listed(&b));
    let (ida, idb) = (
        ia["prog_id"].as_u64().unwrap(),
        ib["prog_id"].as_u64().unwrap(),
    );
    let chain: Vec<u64> = ia["hook_programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prog_id"].as_u64().unwrap())
        .collect();
    assert_eq!(chain, [idb, ida], "{ia}");
    assert_eq!(ia["mode"], "clsact");
    let text = lab.ok(&["list"]);
    assert!(text.contains("POS"), "{text}");
    let hook_line = text
        .lines()
        .find(|l| l.starts_with(&format!("HOOK {a} ")))
        .unwrap_or_else(|| panic!("no HOOK line for {a}: {text}"));
    assert!(
        hook_line.ends_with(&format!("{idb} hookb, *{ida} hooka")),
        "{hook_line}"
    );
    let filters = lab
        .switch
        .exec("tc", &["filter", "show", "dev", DEV, "ingress"])
        .unwrap();
    assert_eq!(filters.matches("direct-action").count(), 2, "{filters}");

    lab.ok(&["stop", &a]);
    lab.ok(&["stop", &b]);
    let qdiscs = lab
        .switch
        .exec("tc", &["qdisc", "show", "dev", DEV])
        .unwrap();
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}

/// `--before` at XDP is refused: nothing to order there.
#[test]
fn before_at_xdp_is_refused() {
    if skip("before_at_xdp_is_refused") {
        return;
    }
    let lab = Lab::new("hkxdp");
    let name = format!("h{}-x", std::process::id());
    let _stop = Stop(name.clone());
    let path = lab.write("hookx");
    let out = lab.flowstate(&[
        "run", &path, "--dev", DEV, "--name", &name, "--hook", "xdp", "--before", "7",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--before/--after"), "{err}");
}

/// `--tc-attach tcx` does what the kernel can: with TCX (6.6+) the
/// instance runs through it and `list` says so; without it the run is
/// refused before anything is loaded, saying why and what to use, and
/// nothing is listed or attached (no clsact qdisc either).
#[test]
fn tc_attach_tcx_follows_the_probe() {
    if skip("tc_attach_tcx_follows_the_probe") {
        return;
    }
    let tcx = flowstate_runtime::kernel_features()
        .get(flowstate_runtime::Feature::Tcx)
        .is_present();
    let lab = Lab::new("hktcx");
    let name = format!("h{}-t", std::process::id());
    let _stop = Stop(name.clone());
    let path = lab.write("hookt");
    let args = [
        "run",
        &path,
        "--dev",
        DEV,
        "--name",
        &name,
        "--tc-attach",
        "tcx",
    ];
    if tcx {
        lab.ok(&args);
        assert_eq!(lab.listed(&name)["mode"], "tcx");
        lab.ok(&["stop", &name]);
        return;
    }
    let out = lab.flowstate(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("has no TCX") && err.contains("--tc-attach clsact"),
        "{err}"
    );
    let all: Value = serde_json::from_str(&lab.ok(&["list", "--json"])).unwrap();
    assert!(
        all.as_array().unwrap().iter().all(|i| i["name"] != name),
        "{all}"
    );
    let qdiscs = lab
        .switch
        .exec("tc", &["qdisc", "show", "dev", DEV])
        .unwrap();
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}
