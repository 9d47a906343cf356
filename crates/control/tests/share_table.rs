//! `run --share-table`: two instances on one flow table. An XDP program and
//! a TC ingress program on one interface count each packet of a flow into
//! one entry; a program whose table differs is refused with nothing left
//! behind; either instance can stop first; a reload that would give a
//! sharing instance a new table is refused. A veth pair per test (one end
//! in a namespace of the test's own), removed by Drop guards. Needs root
//! with BPF: prints `SKIP <test>: <reason>` otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use flowstate_control::{open, reload, run_placed_with, stop, ControlError, RunSpec, XdpShare};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair: `host` in the root namespace, its peer in namespace `ns`.
struct Net {
    ns: String,
    host: String,
    host_ip: String,
    peer_ip: String,
}

impl Net {
    fn new(tag: u8) -> Net {
        let pid = std::process::id();
        let net = format!("10.{}.{}", 150 + pid % 100, 200 + tag);
        let n = Net {
            ns: format!("fs-shtab-{pid}-{tag}"),
            host: format!("fs{}s{tag}", pid % 100_000),
            host_ip: format!("{net}.1"),
            peer_ip: format!("{net}.2"),
        };
        sh(&format!("ip netns add {}", n.ns));
        sh(&format!(
            "ip link add {h} type veth peer name {h}p && ip link set {h}p netns {ns} && \
             ip addr add {hip}/24 dev {h} && ip link set {h} up && \
             ip -n {ns} addr add {pip}/24 dev {h}p && ip -n {ns} link set {h}p up",
            h = n.host,
            ns = n.ns,
            hip = n.host_ip,
            pip = n.peer_ip
        ));
        n
    }

    /// `count` UDP datagrams from the peer to the host.
    fn udp(&self, count: u32) {
        sh(&format!(
            "ip netns exec {} bash -c 'for i in $(seq {count}); do echo x > /dev/udp/{}/5555; \
             done'",
            self.ns, self.host_ip
        ));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Stops the instance on drop.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = stop(&self.0);
    }
}

struct TempProgram(PathBuf);

impl TempProgram {
    fn new(tag: &str, text: &str) -> TempProgram {
        let path = std::env::temp_dir().join(format!("fs-shtab-{}-{tag}.fsm", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempProgram(path)
    }
}

impl Drop for TempProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Counts a source's UDP packets by `step`; everything passes.
fn counter(hook: &str, step: u32) -> String {
    format!(
        "program count{step}\nhook {hook}\nflow ip.src\nstates SEEN\nregisters n = 0\n\
         flows 64 evict\ndefault pass\ntable\n  * udp.dport == 5555 => pass, n = n + {step}\nend\n"
    )
}

fn start(
    net: &Net,
    program: &Path,
    name: &str,
    share: Option<&str>,
) -> Result<Running, ControlError> {
    run_placed_with(
        &RunSpec {
            program_path: program.to_path_buf(),
            dev: net.host.clone(),
            attach: None,
            name: Some(name.to_string()),
            tc: Default::default(),
        },
        None,
        XdpShare::Exclusive,
        50,
        share,
    )
    .map(|_| Running(name.to_string()))
}

fn count_of(name: &str, source: &str) -> Option<i64> {
    let row = open(name).unwrap().flow(source).unwrap()?;
    Some(row.registers[0].1)
}

#[test]
fn xdp_and_tc_instances_count_into_one_shared_entry() {
    if flowstate_testkit::skip_if(
        "xdp_and_tc_instances_count_into_one_shared_entry",
        flowstate_netlab::skip_reason(),
    ) {
        return;
    }
    let net = Net::new(1);
    let pid = std::process::id();
    let (xdp, tc) = (
        TempProgram::new("xdp", &counter("xdp", 1)),
        TempProgram::new("tc", &counter("tc ingress", 100)),
    );
    let (first, second) = (format!("shtab{pid}a"), format!("shtab{pid}b"));
    let first_guard = start(&net, &xdp.0, &first, None).unwrap();
    let _second = start(&net, &tc.0, &second, Some(&first)).unwrap();
    net.udp(5);
    // Each packet went through XDP (+1) and then TC ingress (+100), into
    // one entry both instances read.
    assert_eq!(count_of(&first, &net.peer_ip), Some(505));
    assert_eq!(count_of(&second, &net.peer_ip), Some(505));

    // A reload that keeps the layout keeps the sharing; one that would
    // make a new table is refused.
    let grow = |hook: &str, step| counter(hook, step).replace("flows 64", "flows 128");
    let (grown_tc, grown_xdp) = (
        TempProgram::new("grown-tc", &grow("tc ingress", 100)),
        TempProgram::new("grown-xdp", &grow("xdp", 1)),
    );
    let err = reload(&second, &grown_tc.0, false).unwrap_err();
    assert!(
        matches!(err, ControlError::ShareTable { .. })
            && err.to_string().contains("new flow table"),
        "{err}"
    );
    let err = reload(&first, &grown_xdp.0, false).unwrap_err();
    assert!(matches!(err, ControlError::ShareTable { .. }), "{err}");

    // The first can stop first: the second keeps the table.
    drop(first_guard);
    assert_eq!(count_of(&second, &net.peer_ip), Some(505));
    net.udp(1);
    assert_eq!(count_of(&second, &net.peer_ip), Some(605));
}

#[test]
fn a_program_with_another_table_layout_is_refused_and_leaves_nothing() {
    if flowstate_testkit::skip_if(
        "a_program_with_another_table_layout_is_refused_and_leaves_nothing",
        flowstate_netlab::skip_reason(),
    ) {
        return;
    }
    let net = Net::new(2);
    let pid = std::process::id();
    let owner = TempProgram::new("owner", &counter("xdp", 1));
    let other = TempProgram::new(
        "other",
        &counter("tc ingress", 1).replace("registers n = 0", "registers n = 0, m = 0"),
    );
    let (first, second) = (format!("shtab{pid}c"), format!("shtab{pid}d"));
    let _first = start(&net, &owner.0, &first, None).unwrap();
    let err = start(&net, &other.0, &second, Some(&first))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, ControlError::ShareTable { .. }), "{text}");
    assert!(text.contains("the list of registers differs"), "{text}");
    assert!(
        !flowstate_control::pin_root().join(&second).exists(),
        "pins left behind"
    );
    assert!(
        !flowstate_control::meta_dir()
            .join(format!("{second}.json"))
            .exists(),
        "metadata left behind"
    );

    // Sharing an instance that does not run says so.
    let missing = format!("shtab{pid}none");
    let err = start(&net, &owner.0, &second, Some(&missing))
        .err()
        .expect("refused");
    assert!(matches!(err, ControlError::NotRunning(_)), "{err}");
}
