//! Globals of an object loaded by another tool (`bpftool`, libbpf 1.x):
//! the object's `.data` starts the program at its declared initial values,
//! and `bpftool map dump` shows each global's value by name, as
//! `flowstate globals --prog-id/--pin` does. Missing tools make these
//! tests SKIP (under CI=true they fail).

use std::path::PathBuf;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

/// A global that packets add to, one they only read, and one changed by
/// compare-and-swap (`peak = total`, written when above it).
const GLOBALS: &str = "program globs\nhook xdp\nflow ip.src\nstates NEW\n\
                       globals total = 100, floor = -7, peak = 5\ndefault pass\ntable\n  \
                       * udp.dport == 9 => drop, total = total + 2\n  \
                       * udp.dport == 10 => drop, peak = total + floor\n  \
                       * * => pass\nend\n";

fn skip(test: &str) -> bool {
    if flowstate_testkit::skip_if(test, flowstate_netlab::skip_reason()) {
        return true;
    }
    if Command::new("bpftool").arg("version").output().is_err() {
        return flowstate_testkit::skip(test, "bpftool is not installed (run .ci/install-deps)");
    }
    false
}

/// Removes the pins when the test ends, passed or not.
struct Unpin(Vec<PathBuf>);

impl Drop for Unpin {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    serde_json::from_slice(&run("bpftool", &all).stdout).unwrap()
}

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

/// Every value of a member named `name` anywhere in `value`.
fn members<'v>(value: &'v serde_json::Value, name: &str, found: &mut Vec<&'v serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                if key == name {
                    found.push(inner);
                }
                members(inner, name, found);
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                members(inner, name, found);
            }
        }
        _ => {}
    }
}

/// The globals as `bpftool map dump` shows the program's `.data` map: by
/// member name, from the BTF libbpf gave the map.
fn dumped_globals(prog_pin: &str) -> Vec<(String, i64)> {
    let shown = bpftool_json(&["prog", "show", "pinned", prog_pin]);
    let data_maps: Vec<String> = shown["map_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap().to_string())
        .filter(|id| {
            let map = bpftool_json(&["map", "show", "id", id]);
            map["name"].as_str().unwrap_or_default().ends_with(".data")
        })
        .collect();
    assert_eq!(data_maps.len(), 1, "one .data map among {shown}");
    let dump = bpftool_json(&["map", "dump", "id", &data_maps[0]]);
    ["total", "floor", "peak"]
        .into_iter()
        .map(|name| {
            let mut found = Vec::new();
            members(&dump, name, &mut found);
            assert_eq!(found.len(), 1, "`{name}` once in the dump: {dump}");
            (name.to_string(), found[0].as_i64().unwrap())
        })
        .collect()
}

fn named(values: &[(&str, i64)]) -> Vec<(String, i64)> {
    values.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

#[test]
fn bpftool_dumps_the_globals_as_values_by_name() {
    if skip("bpftool_dumps_the_globals_as_values_by_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("globs.fsm");
    std::fs::write(&source, GLOBALS).unwrap();
    let object = dir.path().join("globs.o");
    let status = Command::cargo_bin("flowstate")
        .unwrap()
        .args(["compile", "-o"])
        .arg(&object)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    let pin = format!("/sys/fs/bpf/flowstate-globals-{}", std::process::id());
    let _unpin = Unpin(vec![PathBuf::from(&pin)]);
    run("bpftool", &["prog", "load", object.to_str().unwrap(), &pin]);

    // Loaded by libbpf, the program starts at the declared values.
    let initial = named(&[("total", 100), ("floor", -7), ("peak", 5)]);
    assert_eq!(dumped_globals(&pin), initial);

    // Packets: two atomic adds to `total`, then `peak = total + floor`
    // by compare-and-swap.
    let program = flowstate_runtime::RawProgram::from_pin(&pin).unwrap();
    let frame = |src: [u8; 4], port: u16| {
        flowstate_wire::build::PacketBuilder::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, [10, 0, 0, 100])
            .udp(40000, port)
            .build()
    };
    for (src, port) in [([10, 0, 0, 1], 9), ([10, 0, 0, 2], 9), ([10, 0, 0, 1], 10)] {
        let verdict = program.test_run(&frame(src, port)).unwrap().retval;
        assert_eq!(verdict, 1, "XDP_DROP");
    }
    let after = named(&[("total", 104), ("floor", -7), ("peak", 97)]);
    assert_eq!(dumped_globals(&pin), after, "the values, not offsets");

    // flowstate reads the same values from the program id or its pin.
    let shown = bpftool_json(&["prog", "show", "pinned", &pin]);
    let id = shown["id"].as_u64().unwrap().to_string();
    for by in [["--prog-id", id.as_str()], ["--pin", pin.as_str()]] {
        let globals = flowstate_json(&["globals", by[0], by[1], "--json"]);
        for (name, value) in &after {
            assert_eq!(globals[name], *value, "{by:?}: {globals}");
        }
    }
}
