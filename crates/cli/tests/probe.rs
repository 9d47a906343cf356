//! `flowstate probe`: the kernel's release and its features, as a table
//! and as JSON. Works without root too (features then read "unknown").

use assert_cmd::Command;
use serde_json::Value;

fn flowstate() -> Command {
    Command::cargo_bin("flowstate").expect("binary built")
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn probe_json_names_the_kernel_and_every_feature_once() {
    let out = flowstate().args(["probe", "--json"]).assert().success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["release"], release().as_str());
    let features = report["features"].as_array().unwrap();
    let mut names: Vec<&str> = features
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for expected in [
        "may_goto",
        "gotol",
        "sdiv_smod",
        "tcx",
        "xdp_link",
        "bpf_loop",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for f in features {
        let present = f["present"].as_str().unwrap();
        assert!(["yes", "no", "unknown"].contains(&present), "{f}");
        // A "no" or "unknown" says why.
        assert_eq!(present == "yes", f["reason"].is_null(), "{f}");
    }
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "a feature listed twice");
}

#[test]
fn probe_table_has_one_line_per_feature() {
    let out = flowstate().arg("probe").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), format!("kernel {}", release()));
    assert!(lines.next().unwrap().starts_with("feature"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), flowstate_runtime::Feature::ALL.len(), "{text}");
    assert!(rows.iter().any(|r| r.starts_with("may_goto ")), "{text}");
}
