//! Interrupted and concurrent control commands: `run` and `reload` killed
//! (SIGKILL, or SIGINT as Ctrl-C sends) at every journalled step through
//! `FLOWSTATE_TEST_CRASH_AT` / `FLOWSTATE_TEST_SIGINT_AT`, then repaired
//! by `flowstate repair` or by the next command; and reloads started at
//! the same time. After each, the instance must be consistent: no journal,
//! no staged pin, metadata naming the program on the link, the link
//! attached (or, for a `run` killed before its link was pinned, nothing
//! left at all), flows in OPEN still OPEN, and the program on the link
//! counting into the map that `flows` reads.
//!
//! Root with BPF only (else SKIP through flowstate-testkit). Each test has
//! its own namespaces (flowstate-netlab, removed on drop and on failure)
//! and instance names carrying the pid.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flowstate_control::journal::{RELOAD_STEPS, RUN_STEPS};
use flowstate_netlab::{send_udp, Netns, Topology};
use serde_json::Value;

/// One test at a time: `flowstate list` (and every locking command) repairs
/// any instance whose lock is free, so one test's command would finish the
/// interrupted change another test is about to inspect.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const DEV: &str = "crsw";
const PEER_DEV: &str = "crpeer";
const SW_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Counts UDP datagrams to port 9 per source; OPEN flows are made by
/// editing and see no traffic.
const V1: &str = "program crash\nhook xdp\nflow ip.src\nstates NEW, SEEN, OPEN\n\
                  registers count = 0\ndefault pass\ntable\n\
                  \x20 OPEN * => pass\n\
                  \x20 * udp.dport == 9 => pass, count = count + 1, next SEEN\n\
                  \x20 * * => pass\nend\n";
/// Same states and registers: the flows map is reused.
fn v2() -> String {
    V1.replace("  * * => pass", "  * udp.dport == 7 => drop\n  * * => pass")
}
/// A register more: the flows map is migrated.
fn v3() -> String {
    V1.replace("registers count = 0", "registers count = 0, extra = 5")
}

const OPEN_KEYS: [&str; 3] = ["10.9.0.1", "10.9.0.2", "10.9.0.3"];

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_netlab::skip_reason())
}

struct Lab {
    _topology: Topology,
    switch: Netns,
    socket: UdpSocket,
    dir: PathBuf,
    /// Datagrams to port 9 sent so far (what `count` must say).
    sent: i64,
    /// The programs run at TC ingress through a clsact filter (no link),
    /// instead of at XDP.
    clsact: bool,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab::with(tag, false)
    }

    /// A lab whose programs attach at TC ingress through clsact.
    fn clsact(tag: &str) -> Lab {
        Lab::with(tag, true)
    }

    fn with(tag: &str, clsact: bool) -> Lab {
        let mut topology = Topology::new(tag).expect("topology");
        let switch = topology.add_netns("sw").unwrap();
        let peer = topology.add_netns("peer").unwrap();
        topology
            .link(&switch, DEV, SW_IP, &peer, PEER_DEV, PEER_IP, 24)
            .unwrap();
        let socket = peer
            .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("fs-crash-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let remove = dir.clone();
        topology.on_cleanup("remove program copies", move || {
            let _ = std::fs::remove_dir_all(&remove);
        });
        Lab {
            _topology: topology,
            switch,
            socket,
            dir,
            sent: 0,
            clsact,
        }
    }

    /// A program text (written for XDP) for this lab's hook.
    fn text(&self, xdp_text: &str) -> String {
        if self.clsact {
            xdp_text.replace("hook xdp", "hook tc ingress")
        } else {
            xdp_text.to_string()
        }
    }

    /// `run PROGRAM --dev DEV --name NAME`, through clsact in a clsact lab.
    fn run_args<'a>(&self, program: &'a Path, name: &'a str) -> Vec<&'a str> {
        let mut args = vec![
            "run",
            program.to_str().unwrap(),
            "--dev",
            DEV,
            "--name",
            name,
        ];
        if self.clsact {
            args.extend(["--tc-attach", "clsact"]);
        }
        args
    }

    /// The pins of a whole instance: a clsact one has no link.
    fn expected_pins(&self) -> &'static [&'static str] {
        if self.clsact {
            &["maps/counters", "maps/flows", "prog"]
        } else {
            &["link", "maps/counters", "maps/flows", "prog"]
        }
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `flowstate ARGS` in the switch namespace, with `env` set.
    fn flowstate(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self
            .switch
            .command(env!("CARGO_BIN_EXE_flowstate"))
            .unwrap();
        command.args(args);
        command.env_remove("FLOWSTATE_TEST_CRASH_AT");
        command.env_remove("FLOWSTATE_TEST_SIGINT_AT");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.flowstate(args, &[]);
        assert!(
            out.status.success(),
            "flowstate {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `args` with a fault injected at `point` and checks that the
    /// command died of `signal` there.
    fn killed_at(&self, args: &[&str], var: &str, point: &str, signal: i32) {
        let out = self.flowstate(args, &[(var, point)]);
        let got = std::os::unix::process::ExitStatusExt::signal(&out.status);
        assert_eq!(
            got,
            Some(signal),
            "flowstate {args:?} with {var}={point}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether a program is on the lab's hook: XDP, or a bpf filter at
    /// TC ingress in a clsact lab.
    fn attached(&self) -> bool {
        if self.clsact {
            return self
                .switch
                .exec("tc", &["filter", "show", "dev", DEV, "ingress"])
                .unwrap()
                .contains("direct-action");
        }
        self.switch
            .ip(&["-d", "link", "show", "dev", DEV])
            .unwrap()
            .contains("prog/xdp")
    }

    /// Sends `n` counted datagrams, counted by whichever program is on
    /// the link now.
    fn send(&mut self, n: usize) {
        let to = SocketAddrV4::new(SW_IP, 9);
        assert_eq!(send_udp(&self.socket, to, b"x", n), n);
        self.sent += n as i64;
    }

    /// Sends `n` counted datagrams and waits until the instance's table
    /// (as `flows` reads it) has counted all of them (and all sent before).
    fn count_through(&mut self, name: &str, n: usize) {
        self.send(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = self.peer_count(name);
            if count == Some(self.sent) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: count {count:?}, {} datagrams sent: the program on the link does not \
                 count into the map that `flows` reads (or state was lost)",
                self.sent
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn flows(&self, name: &str) -> Vec<Value> {
        let text = self.ok(&["flows", name, "--json"]);
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn peer_count(&self, name: &str) -> Option<i64> {
        self.flows(name)
            .iter()
            .find(|f| f["key"] == PEER_IP.to_string())
            .and_then(|f| f["registers"]["count"].as_i64())
    }

    fn listed(&self, name: &str) -> Option<Value> {
        let text = self.ok(&["list", "--json"]);
        let all: Value = serde_json::from_str(&text).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
    }
}

fn pin_dir(name: &str) -> PathBuf {
    flowstate_control::pin_root().join(name)
}

fn meta_dir() -> PathBuf {
    flowstate_control::meta_dir()
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Nothing of `name` is left anywhere.
fn assert_gone(lab: &Lab, name: &str, context: &str) {
    assert!(!pin_dir(name).exists(), "{context}: pins left");
    for ext in ["json", "journal"] {
        let path = meta_dir().join(format!("{name}.{ext}"));
        assert!(!path.exists(), "{context}: {} left", path.display());
    }
    assert!(!lab.attached(), "{context}: a program stays attached");
    assert!(lab.listed(name).is_none(), "{context}: still listed");
}

/// The instance is whole: listed without a problem, its link running the
/// program its metadata names (of `hash`), exactly its own pins, OPEN
/// flows still OPEN, and the program counting into the map `flows` reads.
fn assert_consistent(lab: &mut Lab, name: &str, hash: &str, context: &str) {
    assert!(
        !meta_dir().join(format!("{name}.journal")).exists(),
        "{context}: journal left"
    );
    let listed = lab
        .listed(name)
        .unwrap_or_else(|| panic!("{context}: not listed"));
    assert_eq!(listed["problem"], Value::Null, "{context}: {listed}");
    assert_eq!(listed["source_hash"], hash, "{context}: {listed}");
    assert!(lab.attached(), "{context}: detached");
    let pins = tree(&pin_dir(name));
    assert_eq!(
        pins,
        lab.expected_pins(),
        "{context}: stray or missing pins"
    );
    let flows = lab.flows(name);
    for key in OPEN_KEYS {
        let flow = flows
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("{context}: flow {key} lost: {flows:?}"));
        assert_eq!(flow["state"], "OPEN", "{context}: {flow}");
    }
    lab.count_through(name, 3);
}

fn hash(text: &str) -> String {
    flowstate_control::meta::source_hash(text)
}

fn start(lab: &mut Lab, program: &Path, name: &str) {
    lab.ok(&lab.run_args(program, name));
    for key in OPEN_KEYS {
        lab.ok(&["flow", name, key, "set-state", "OPEN"]);
    }
}

/// Stops `name` when dropped, so a failing test leaves nothing pinned.
struct Stop(PathBuf, String);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new(&self.0).args(["stop", &self.1]).output();
    }
}

fn unique(tag: &str) -> String {
    format!("c{}-{tag}", std::process::id())
}

#[test]
fn run_killed_at_each_step_is_undone_or_finished() {
    let _serial = one_at_a_time();
    if skip("run_killed_at_each_step_is_undone_or_finished") {
        return;
    }
    run_killed_at_each_step(Lab::new("crrun"));
}

#[test]
fn clsact_run_killed_at_each_step_is_undone_or_finished() {
    let _serial = one_at_a_time();
    if skip("clsact_run_killed_at_each_step_is_undone_or_finished") {
        return;
    }
    run_killed_at_each_step(Lab::clsact("crrunc"));
}

fn run_killed_at_each_step(mut lab: Lab) {
    let text = lab.text(V1);
    let v1 = lab.write("v1.fsm", &text);
    for (i, step) in RUN_STEPS.iter().enumerate() {
        for (var, signal) in [
            ("FLOWSTATE_TEST_CRASH_AT", libc::SIGKILL),
            ("FLOWSTATE_TEST_SIGINT_AT", libc::SIGINT),
        ] {
            let name = unique(&format!("r{i}{}", signal));
            let _stop = Stop(env!("CARGO_BIN_EXE_flowstate").into(), name.clone());
            let context = format!("run killed ({var}) at {step}");
            lab.killed_at(
                &lab.run_args(&v1, &name),
                var,
                &format!("run:{step}"),
                signal,
            );
            assert!(
                meta_dir().join(format!("{name}.journal")).exists(),
                "{context}: no journal"
            );
            // Finished once attached for good: a pinned link, or a clsact
            // filter (made at `attach`, journalled as `pin-link` next).
            let pinned_link = *step == "write-meta" || (lab.clsact && *step == "pin-link");
            // Alternate the repairing command: `repair`, or the next `run`.
            if signal == libc::SIGKILL {
                let out = lab.ok(&["repair", &name]);
                let how = if pinned_link { "finished" } else { "undone" };
                assert!(out.contains(how), "{context}: {out}");
            } else {
                // The next `run` of the name repairs first.
                let out = lab.flowstate(&lab.run_args(&v1, &name), &[]);
                assert_eq!(
                    out.status.success(),
                    !pinned_link,
                    "{context}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if !pinned_link {
                    lab.ok(&["stop", &name]);
                }
            }
            if pinned_link {
                for key in OPEN_KEYS {
                    lab.ok(&["flow", &name, key, "set-state", "OPEN"]);
                }
                lab.sent = 0;
                assert_consistent(&mut lab, &name, &hash(&text), &context);
                lab.ok(&["stop", &name]);
            }
            assert_gone(&lab, &name, &context);
        }
    }
}

/// Every step of a reload of each kind, killed, then repaired by `repair`
/// or by the next reload.
fn reload_killed_at_each_step(mut lab: Lab, tag: &str, new_text: &str) {
    let v1_text = lab.text(V1);
    let new_text = &lab.text(new_text);
    let v1 = lab.write("v1.fsm", &v1_text);
    let vn = lab.write("vn.fsm", new_text);
    let name = unique(tag);
    let _stop = Stop(env!("CARGO_BIN_EXE_flowstate").into(), name.clone());
    start(&mut lab, &v1, &name);
    lab.count_through(&name, 2);
    let swap = RELOAD_STEPS.iter().position(|s| *s == "swap").unwrap();
    let mut current = (v1.clone(), v1_text.clone());
    for (i, step) in RELOAD_STEPS.iter().enumerate() {
        for (var, signal) in [
            ("FLOWSTATE_TEST_CRASH_AT", libc::SIGKILL),
            ("FLOWSTATE_TEST_SIGINT_AT", libc::SIGINT),
        ] {
            // Always from v1 to the new version, so each kill interrupts
            // the same kind of reload.
            if current.1 != v1_text {
                lab.ok(&["reload", &name, v1.to_str().unwrap()]);
                current = (v1.clone(), v1_text.clone());
            }
            let context = format!("{tag}: reload killed ({var}) at {step}");
            lab.killed_at(
                &["reload", &name, vn.to_str().unwrap()],
                var,
                &format!("reload:{step}"),
                signal,
            );
            assert!(
                meta_dir().join(format!("{name}.journal")).exists(),
                "{context}: no journal"
            );
            // Traffic to whichever program the kill left on the link (a
            // migration's handoff build or bridge, past `swap`): the
            // repair must keep every count.
            lab.send(2);
            let finished = i > swap;
            if signal == libc::SIGKILL {
                let out = lab.ok(&["repair", &name]);
                let how = if finished { "finished" } else { "undone" };
                assert!(out.contains(how), "{context}: {out}");
                if finished {
                    current = (vn.clone(), new_text.to_string());
                }
                assert_consistent(&mut lab, &name, &hash(&current.1), &context);
            } else {
                // The next command repairs by itself: a reload to v1.
                lab.ok(&["reload", &name, v1.to_str().unwrap()]);
                current = (v1.clone(), v1_text.clone());
                assert_consistent(&mut lab, &name, &hash(&v1_text), &context);
            }
        }
    }
    lab.ok(&["stop", &name]);
    assert_gone(&lab, &name, tag);
}

#[test]
fn reused_reload_killed_at_each_step_is_undone_or_finished() {
    let _serial = one_at_a_time();
    if skip("reused_reload_killed_at_each_step_is_undone_or_finished") {
        return;
    }
    reload_killed_at_each_step(Lab::new("crreuse"), "crreuse", &v2());
}

#[test]
fn clsact_reused_reload_killed_at_each_step_is_undone_or_finished() {
    let _serial = one_at_a_time();
    if skip("clsact_reused_reload_killed_at_each_step_is_undone_or_finished") {
        return;
    }
    reload_killed_at_each_step(Lab::clsact("crreusec"), "crreusec", &v2());
}

#[test]
fn migrating_reload_killed_at_each_step_is_undone_or_finished() {
    let _serial = one_at_a_time();
    if skip("migrating_reload_killed_at_each_step_is_undone_or_finished") {
        return;
    }
    reload_killed_at_each_step(Lab::new("crmig"), "crmig", &v3());
}

#[test]
fn clsact_migrating_reload_killed_at_each_step_is_undone_or_finished() {
    let _serial = one_at_a_time();
    if skip("clsact_migrating_reload_killed_at_each_step_is_undone_or_finished") {
        return;
    }
    reload_killed_at_each_step(Lab::clsact("crmigc"), "crmigc", &v3());
}

#[test]
fn concurrent_reloads_serialise_and_keep_state() {
    let _serial = one_at_a_time();
    if skip("concurrent_reloads_serialise_and_keep_state") {
        return;
    }
    let mut lab = Lab::new("crconc");
    let v1 = lab.write("v1.fsm", V1);
    let v2 = lab.write("v2.fsm", &v2());
    let v3 = lab.write("v3.fsm", &v3());
    let name = unique("conc");
    let _stop = Stop(env!("CARGO_BIN_EXE_flowstate").into(), name.clone());
    start(&mut lab, &v1, &name);
    lab.count_through(&name, 2);
    for round in 0..4 {
        let paths = [&v2, &v3, &v1, &v3];
        let children: Vec<_> = (0..3)
            .map(|k| {
                let path = paths[(round + k) % paths.len()];
                let mut command = lab.switch.command(env!("CARGO_BIN_EXE_flowstate")).unwrap();
                command
                    .args(["reload", &name, path.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        let outputs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        for out in &outputs {
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let waited = outputs
            .iter()
            .filter(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for another"))
            .count();
        let reloads = lab.listed(&name).unwrap()["reloads"].as_u64().unwrap();
        assert_eq!(reloads, 3 * (round as u64 + 1), "every reload counted");
        // Which one ran last decides the version; the metadata must name
        // the program on the link either way.
        let listed = lab.listed(&name).unwrap();
        let hash_now = listed["source_hash"].as_str().unwrap().to_string();
        assert!(
            [hash(V1), hash(&self::v2()), hash(&self::v3())].contains(&hash_now),
            "{listed}"
        );
        assert_consistent(
            &mut lab,
            &name,
            &hash_now,
            &format!("round {round} ({waited} waited)"),
        );
    }
    lab.ok(&["stop", &name]);
    assert_gone(&lab, &name, "concurrent reloads");
}

#[test]
fn a_command_waits_for_the_lock_or_gives_up_clearly() {
    let _serial = one_at_a_time();
    if skip("a_command_waits_for_the_lock_or_gives_up_clearly") {
        return;
    }
    let mut lab = Lab::new("crlock");
    let v1 = lab.write("v1.fsm", V1);
    let name = unique("lock");
    let _stop = Stop(env!("CARGO_BIN_EXE_flowstate").into(), name.clone());
    start(&mut lab, &v1, &name);
    let held = flowstate_control::InstanceLock::acquire(&name).unwrap();
    let out = lab.flowstate(
        &["reload", &name, v1.to_str().unwrap()],
        &[("FLOWSTATE_LOCK_TIMEOUT", "0.3")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("waiting for another flowstate command on {name}")),
        "{stderr}"
    );
    assert!(stderr.contains("FLOWSTATE_LOCK_TIMEOUT"), "{stderr}");
    assert_eq!(lab.listed(&name).unwrap()["reloads"], 0);
    // Readers do not wait.
    lab.ok(&["flows", &name]);
    let waiter = {
        let mut command = lab.switch.command(env!("CARGO_BIN_EXE_flowstate")).unwrap();
        command
            .args(["reload", &name, v1.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let out = waiter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.listed(&name).unwrap()["reloads"], 1);
    assert_consistent(&mut lab, &name, &hash(V1), "after waiting");
}

/// Regression: a migrating reload killed after its handoff swap, whose
/// interface then went away (its namespace deleted), could not be
/// repaired: the repair's link swap failed with "Link has been severed",
/// and `stop`, which repairs first, failed the same way, so the instance
/// stayed listed for good. A severed link has no traffic to hand over: the
/// repair finishes without it and `stop` removes everything.
#[test]
fn an_interrupted_reload_on_a_vanished_interface_can_be_stopped() {
    let _serial = one_at_a_time();
    if skip("an_interrupted_reload_on_a_vanished_interface_can_be_stopped") {
        return;
    }
    let mut lab = Lab::new("crgone");
    let v1 = lab.write("v1.fsm", V1);
    let v3 = lab.write("v3.fsm", &v3());
    let name = unique("gone");
    let _stop = Stop(env!("CARGO_BIN_EXE_flowstate").into(), name.clone());
    start(&mut lab, &v1, &name);
    lab.count_through(&name, 2);
    lab.killed_at(
        &["reload", &name, v3.to_str().unwrap()],
        "FLOWSTATE_TEST_CRASH_AT",
        "reload:bridge",
        libc::SIGKILL,
    );
    // The namespaces go, and the interface with them.
    drop(lab);
    let flowstate = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flowstate"))
            .args(args)
            .env_remove("FLOWSTATE_TEST_CRASH_AT")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = String::from_utf8_lossy(&flowstate(&["list", "--json"]).stdout).into_owned();
        if !listed.contains(&name) || listed.contains("gone") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the interface of {name} never went: {listed}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = flowstate(&["stop", &name]);
    assert!(
        out.status.success(),
        "stop: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin_dir(&name).exists(), "pins of {name} left behind");
    for leftover in ["json", "journal"] {
        let path = meta_dir().join(format!("{name}.{leftover}"));
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
