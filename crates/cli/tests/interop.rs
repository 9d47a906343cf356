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
