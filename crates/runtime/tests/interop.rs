//! The objects flowstate-obj writes load with the real tools: `ip` (XDP),
//! `tc` (clsact + bpf filter) and `bpftool`, which all use libbpf 1.x.
//! `bpftool map dump` shows the BTF-named fields of a map value.
//! Run `.ci/install-deps` first; missing tools make these tests SKIP.

mod common;

use common::*;

fn tools_missing(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    for tool in ["ip", "tc", "bpftool"] {
        if run(tool, &["-V"]).is_err() && run(tool, &["version"]).is_err() {
            return flowstate_testkit::skip(
                test,
                format!("{tool} not installed (run .ci/install-deps)"),
            );
        }
    }
    false
}

/// The object in a file, removed on drop.
struct ObjectFile {
    path: std::path::PathBuf,
}

impl ObjectFile {
    fn new(tag: &str, bytes: &[u8]) -> ObjectFile {
        let path = std::env::temp_dir().join(format!("flowstate-{tag}-{}.o", std::process::id()));
        std::fs::write(&path, bytes).expect("write object");
        ObjectFile { path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for ObjectFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn ip_link_loads_xdp_section() {
    if tools_missing("ip_link_loads_xdp_section") {
        return;
    }
    let object = ObjectFile::new("ip", &counting_object());
    let netns = Netns::new("ipxdp");
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
    let shown = netns
        .exec("ip", &["-d", "link", "show", "dev", "veth0"])
        .unwrap();
    assert!(shown.contains("prog/xdp"), "{shown}");
    netns
        .exec("ip", &["link", "set", "dev", "veth0", "xdp", "off"])
        .unwrap();
    let shown = netns
        .exec("ip", &["-d", "link", "show", "dev", "veth0"])
        .unwrap();
    assert!(!shown.contains("prog/xdp"), "{shown}");
}

#[test]
fn tc_filter_loads_classifier_section() {
    if tools_missing("tc_filter_loads_classifier_section") {
        return;
    }
    let object = ObjectFile::new("tc", &counting_object());
    let netns = Netns::new("tcfilter");
    netns
        .exec("tc", &["qdisc", "add", "dev", "veth0", "clsact"])
        .unwrap();
    netns
        .exec(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                "veth0",
                "ingress",
                "bpf",
                "da",
                "obj",
                object.path(),
                "sec",
                "classifier",
            ],
        )
        .unwrap();
    let shown = netns
        .exec("tc", &["filter", "show", "dev", "veth0", "ingress"])
        .unwrap();
    assert!(shown.contains("count_tc"), "{shown}");
    assert!(shown.contains("direct-action"), "{shown}");
}

#[test]
fn bpftool_loads_object_and_dumps_named_fields() {
    if tools_missing("bpftool_loads_object_and_dumps_named_fields") {
        return;
    }
    let object = ObjectFile::new("bpftool", &counting_object());
    let pins = PinDir::new("bpftool");
    let progs = pins.join("progs");
    let maps = pins.join("maps");
    let (progs, maps) = (progs.to_str().unwrap(), maps.to_str().unwrap());
    run(
        "bpftool",
        &["prog", "loadall", object.path(), progs, "pinmaps", maps],
    )
    .unwrap();
    let listed = run(
        "bpftool",
        &["prog", "show", "pinned", &format!("{progs}/count_xdp")],
    )
    .unwrap();
    assert!(listed.contains("xdp"), "{listed}");
    let listed = run(
        "bpftool",
        &["prog", "show", "pinned", &format!("{progs}/count_tc")],
    )
    .unwrap();
    assert!(listed.contains("sched_cls"), "{listed}");

    let flows = format!("{maps}/flows");
    run(
        "bpftool",
        &[
            "map", "update", "pinned", &flows, "key", "7", "0", "0", "0", "value", "3", "0", "0",
            "0", "0", "0", "0", "0", "42", "0", "0", "0", "0", "0", "0", "0",
        ],
    )
    .unwrap();
    let dump = run("bpftool", &["-j", "map", "dump", "pinned", &flows]).unwrap();
    eprintln!("bpftool map dump: {dump}");
    assert!(dump.contains(r#""state":3"#), "{dump}");
    assert!(dump.contains(r#""packets":42"#), "{dump}");

    // The single-program form of the brief pins the first program.
    let single = pins.join("single");
    run(
        "bpftool",
        &["prog", "load", object.path(), single.to_str().unwrap()],
    )
    .unwrap();
    assert!(single.exists());
}
