//! Objects written by `flowstate compile` load with the standard tools,
//! which use libbpf 1.x: `ip` (XDP), `tc` (clsact + bpf filter) and
//! `bpftool`, whose map dump shows the state table's named fields.
//! Run `.ci/install-deps` first; missing tools make these tests SKIP.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use flowstate_netlab::{Netns, Topology};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn skip(test: &str) -> bool {
    if flowstate_testkit::skip_if(test, flowstate_netlab::skip_reason()) {
        return true;
    }
    for tool in ["ip", "tc", "bpftool"] {
        let found = Command::new(tool).arg("-V").output().is_ok()
            || Command::new(tool).arg("version").output().is_ok();
        if !found {
            return flowstate_testkit::skip(
                test,
                format!("{tool} is not installed (run .ci/install-deps)"),
            );
        }
    }
    false
}

/// `flowstate compile` into `dir`.
fn compile(dir: &Path, program: &str, hook: &str) -> PathBuf {
    let out = dir.join(program.replace(".fsm", ".o"));
    let status = Command::cargo_bin("flowstate")
        .unwrap()
        .args(["compile", "--hook", hook, "-o"])
        .arg(&out)
        .arg(example(program))
        .status()
        .unwrap();
    assert!(status.success(), "flowstate compile {program}");
    out
}

/// One namespace with a veth pair whose `dut` end the tools attach to.
fn lab(tag: &str) -> (Topology, Netns) {
    let mut topology = Topology::new(tag).expect("topology");
    let ns = topology.add_netns("dut").expect("netns");
    topology.add_veth(&ns, "dut", &ns, "peer").expect("veth");
    ns.set_up("dut").unwrap();
    ns.set_up("peer").unwrap();
    (topology, ns)
}

#[test]
fn ip_link_attaches_a_compiled_xdp_program() {
    if skip("ip_link_attaches_a_compiled_xdp_program") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = compile(dir.path(), "portknock.fsm", "xdp");
    let (_topology, ns) = lab("ipxdp");
    let path = object.to_str().unwrap();
    ns.ip(&[
        "link", "set", "dev", "dut", "xdp", "obj", path, "sec", "xdp",
    ])
    .expect("ip accepts the object");
    let shown = ns.ip(&["-d", "link", "show", "dev", "dut"]).unwrap();
    assert!(shown.contains("prog/xdp"), "{shown}");
    ns.ip(&["link", "set", "dev", "dut", "xdp", "off"]).unwrap();
    let shown = ns.ip(&["-d", "link", "show", "dev", "dut"]).unwrap();
    assert!(!shown.contains("prog/xdp"), "{shown}");
}

#[test]
fn tc_attaches_a_compiled_classifier() {
    if skip("tc_attaches_a_compiled_classifier") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = compile(dir.path(), "tokenbucket.fsm", "tc");
    let (_topology, ns) = lab("tcbpf");
    let path = object.to_str().unwrap();
    ns.exec("tc", &["qdisc", "add", "dev", "dut", "clsact"])
        .unwrap();
    ns.exec(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            "dut",
            "ingress",
            "bpf",
            "da",
            "obj",
            path,
            "sec",
            "classifier",
        ],
    )
    .expect("tc accepts the object");
    let shown = ns
        .exec("tc", &["filter", "show", "dev", "dut", "ingress"])
        .unwrap();
    assert!(shown.contains("tokenbucket"), "{shown}");
    assert!(shown.contains("direct-action"), "{shown}");
}

#[test]
fn bpftool_loads_the_object_and_dumps_named_fields() {
    if skip("bpftool_loads_the_object_and_dumps_named_fields") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = compile(dir.path(), "tokenbucket.fsm", "xdp");
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/flowstate-interop-{}",
        std::process::id()
    ));
    let maps = PathBuf::from(format!("{}-maps", pin.display()));
    struct Unpin(Vec<PathBuf>);
    impl Drop for Unpin {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let _unpin = Unpin(vec![pin.clone(), maps.clone()]);
    let bpftool = |args: &[&str]| {
        let out = Command::new("bpftool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    bpftool(&[
        "prog",
        "load",
        object.to_str().unwrap(),
        pin.to_str().unwrap(),
        "pinmaps",
        maps.to_str().unwrap(),
    ]);
    let shown = bpftool(&["prog", "show", "pinned", pin.to_str().unwrap()]);
    assert!(shown.contains("tokenbucket"), "{shown}");

    // Put one flow in the table and read it back by field name.
    let flows = maps.join("flows");
    let source =
        flowstate_lang::compile(&std::fs::read_to_string(example("tokenbucket.fsm")).unwrap())
            .unwrap()
            .program;
    let layout = flowstate_codegen::Layout::new(&source, false);
    let value = vec!["0"; layout.value_size];
    let mut args = vec!["map", "update", "pinned", flows.to_str().unwrap(), "key"];
    args.extend(["10", "0", "0", "1", "value"]);
    args.extend(value.iter().copied());
    bpftool(&args);
    let dump = bpftool(&["map", "dump", "pinned", flows.to_str().unwrap()]);
    for name in ["ip_src", "state", "last_seen", "tmin", "tmax"] {
        assert!(dump.contains(name), "`{name}` not in the dump:\n{dump}");
    }
}

/// A program with a register, a global, a row that writes both and one
/// that sends an event.
const COUNTING: &str = "program counting\nhook xdp\nflow ip.src\nstates NEW, SEEN\n\
                        registers hits = 0\nglobals total = 100\ndefault pass\ntable\n  \
                        * udp.dport == 9 => drop, hits = hits + 1, total = total + 1, next SEEN\n  \
                        * udp.dport == 10 => controller then drop\n  \
                        * * => pass\nend\n";

/// `flowstate ARGS`, its standard output parsed as JSON.
fn flowstate_json(args: &[&str]) -> serde_json::Value {
    let out = Command::cargo_bin("flowstate")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flowstate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn flows_globals_and_stats_of_a_program_loaded_by_bpftool() {
    if skip("flows_globals_and_stats_of_a_program_loaded_by_bpftool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("counting.fsm");
    std::fs::write(&source, COUNTING).unwrap();
    let object = dir.path().join("counting.o");
    let status = Command::cargo_bin("flowstate")
        .unwrap()
        .args(["compile", "-o"])
        .arg(&object)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    let pin = PathBuf::from(format!("/sys/fs/bpf/flowstate-meta-{}", std::process::id()));
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unpin = Unpin(pin.clone());
    let out = Command::new("bpftool")
        .args(["prog", "load"])
        .arg(&object)
        .arg(&pin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(&pin)
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let id = shown["id"].as_u64().unwrap().to_string();
    // bpftool shows the metadata's one-line summary too.
    let summary = shown["metadata"]["flowstate"].as_str().unwrap_or_default();
    assert!(summary.starts_with("counting "), "{shown}");

    // Packets through the loaded program: 10.0.0.1 three times, 10.0.0.2
    // once, all to port 9.
    let program = flowstate_runtime::RawProgram::from_pin(&pin).unwrap();
    let frame = |src: [u8; 4], port: u16| {
        flowstate_wire::build::PacketBuilder::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, [10, 0, 0, 100])
            .udp(40000, port)
            .build()
    };
    for (src, times) in [([10, 0, 0, 1], 3), ([10, 0, 0, 2], 1)] {
        for _ in 0..times {
            let verdict = program.test_run(&frame(src, 9)).unwrap().retval;
            assert_eq!(verdict, 1, "XDP_DROP");
        }
    }
    // One event waits in the ring buffer for the reader below.
    let verdict = program.test_run(&frame([10, 0, 0, 3], 10)).unwrap().retval;
    assert_eq!(verdict, 1, "XDP_DROP");

    for by in [["--prog-id", id.as_str()], ["--pin", pin.to_str().unwrap()]] {
        let flows = flowstate_json(&["flows", by[0], by[1], "--json"]);
        let rows: Vec<(String, String, i64)> = flows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["registers"]["hits"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("10.0.0.1".to_string(), "SEEN".to_string(), 3),
                ("10.0.0.2".to_string(), "SEEN".to_string(), 1)
            ],
            "{by:?}"
        );
        let globals = flowstate_json(&["globals", by[0], by[1], "--json"]);
        assert_eq!(globals["total"], 104, "{by:?}");
        let stats = flowstate_json(&["stats", by[0], by[1], "--json", "--interval", "0.01"]);
        assert_eq!(stats["rows"][0]["packets"], 4, "{by:?}: {stats}");
        assert_eq!(stats["flows_by_state"]["SEEN"], 2, "{by:?}: {stats}");
    }
    let event = flowstate_json(&[
        "events",
        "--prog-id",
        &id,
        "--json",
        "--count",
        "1",
        "--timeout",
        "5",
    ]);
    assert_eq!(event["key"], "10.0.0.3", "{event}");
    assert_eq!(event["row_line"], 10, "{event}");
}

#[test]
fn flows_finds_the_metadata_of_a_program_ip_attached() {
    if skip("flows_finds_the_metadata_of_a_program_ip_attached") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = compile(dir.path(), "portknock.fsm", "xdp");
    let (_topology, ns) = lab("ipmeta");
    ns.ip(&[
        "link",
        "set",
        "dev",
        "dut",
        "xdp",
        "obj",
        object.to_str().unwrap(),
        "sec",
        "xdp",
    ])
    .expect("ip accepts the object");
    let shown = ns.ip(&["-j", "-d", "link", "show", "dev", "dut"]).unwrap();
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let id = shown[0]["xdp"]["prog"]["id"].as_u64().unwrap().to_string();
    let flows = flowstate_json(&["flows", "--prog-id", &id, "--json"]);
    assert_eq!(flows, serde_json::json!([]));
    let stats = flowstate_json(&["stats", "--prog-id", &id, "--json", "--interval", "0.01"]);
    assert_eq!(stats["flows_by_state"]["OPEN"], 0, "{stats}");
}

/// libbpf loads the object's `.BTF.ext`, and the kernel keeps its
/// line_info: the translated program shows the `.fsm` file and the text
/// of each row's line.
#[test]
fn bpftool_shows_the_fsm_lines_of_a_loaded_program() {
    if skip("bpftool_shows_the_fsm_lines_of_a_loaded_program") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = compile(dir.path(), "portknock.fsm", "xdp");
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/flowstate-linum-{}",
        std::process::id()
    ));
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unpin = Unpin(pin.clone());
    let bpftool = |args: &[&str]| {
        let out = Command::new("bpftool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pin_text = pin.to_str().unwrap();
    bpftool(&["prog", "load", object.to_str().unwrap(), pin_text]);
    let xlated = bpftool(&["prog", "dump", "xlated", "pinned", pin_text, "linum"]);
    let source = std::fs::read_to_string(example("portknock.fsm")).unwrap();
    let (number, text) = source
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("tcp.dport == 22"))
        .expect("the example has its OPEN row");
    let expected = format!(
        "; {} [file:portknock.fsm line_num:{} line_col:1]",
        text.trim(),
        number + 1
    );
    assert!(
        xlated.lines().any(|l| l.trim() == expected),
        "no line `{expected}` in:\n{xlated}"
    );
}
