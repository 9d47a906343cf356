//! Who may touch flowstate's pins and metadata, and programs in network
//! namespaces: a directory another user made first is refused, another
//! user cannot rename an instance away, `stop` detaches through the
//! kernel even when the pins were moved, `run --netns` attaches inside a
//! namespace while the pins stay on the host, `ip netns exec` neither
//! loses the program nor hides the host's instances from `list` (or is
//! refused when it cannot reach the host's mounts), and `list` checks an
//! instance in its own namespace, or says what it cannot see.
//!
//! Root with BPF only (else SKIP through flowstate-testkit); some tests
//! also run `ip`, `unshare`, `mkdir`, `mv` and `sleep`. Each test has
//! its own namespaces (flowstate-netlab), its own pin root and run
//! directory (`FLOWSTATE_PIN_ROOT`, `FLOWSTATE_RUN_DIR`, named with the
//! pid), all removed on drop and on failure.

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flowstate_netlab::{Netns, Topology};
use serde_json::Value;

/// The unprivileged user the hostile steps run as.
const NOBODY: u32 = 65534;
const DEV: &str = "trsw";
const PEER_DEV: &str = "trpeer";

const PROGRAM: &str = "program trust\nhook xdp\nflow ip.src\nstates NEW, SEEN\n\
                       default pass\ntable\n  * udp.dport == 9 => pass, next SEEN\nend\n";

fn skip(test: &str) -> bool {
    let reason = flowstate_netlab::skip_reason()
        .or_else(|| (!Path::new("/sys/fs/bpf").is_dir()).then(|| "no /sys/fs/bpf".to_string()));
    flowstate_testkit::skip_if(test, reason)
}

/// A switch namespace with a veth to a peer namespace, and pin and
/// metadata roots of the test's own.
struct Lab {
    _topology: Topology,
    switch: Netns,
    peer: Netns,
    pin_root: PathBuf,
    run_dir: PathBuf,
    program: PathBuf,
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
                Ipv4Addr::new(10, 78, 0, 1),
                &peer,
                PEER_DEV,
                Ipv4Addr::new(10, 78, 0, 2),
                24,
            )
            .unwrap();
        let unique = format!("fstrust-{tag}-{}", std::process::id());
        let pin_root = Path::new("/sys/fs/bpf").join(&unique);
        let run_dir = Path::new("/run").join(&unique);
        let program = std::env::temp_dir().join(format!("{unique}.fsm"));
        std::fs::write(&program, PROGRAM).unwrap();
        // Registered first, so it runs last: after the namespaces (and so
        // the interfaces) are gone, removing the pins frees everything.
        let (pins, run, prog) = (pin_root.clone(), run_dir.clone(), program.clone());
        topology.on_cleanup("remove the test's roots", move || {
            let _ = std::fs::remove_dir_all(&pins);
            let _ = std::fs::remove_dir_all(&run);
            let _ = std::fs::remove_file(&prog);
        });
        Lab {
            _topology: topology,
            switch,
            peer,
            pin_root,
            run_dir,
            program,
        }
    }

    /// `flowstate ARGS` from the host (no namespace entered), with the
    /// test's roots.
    fn flowstate(&self, args: &[&str]) -> Output {
        self.with_roots(Command::new(env!("CARGO_BIN_EXE_flowstate")))
            .args(args)
            .output()
            .unwrap()
    }

    /// `flowstate ARGS` run inside the switch namespace with the caller's
    /// mounts (how a program on the host runs a command there).
    fn flowstate_in_switch(&self, args: &[&str]) -> Output {
        let command = self
            .switch
            .command(env!("CARGO_BIN_EXE_flowstate"))
            .unwrap();
        self.with_roots(command).args(args).output().unwrap()
    }

    fn with_roots(&self, mut command: Command) -> Command {
        command
            .env("FLOWSTATE_PIN_ROOT", &self.pin_root)
            .env("FLOWSTATE_RUN_DIR", &self.run_dir)
            .env("FLOWSTATE_LOCK_TIMEOUT", "10");
        command
    }

    /// `flowstate list --json` run by `command` (from the host, or from
    /// elsewhere), as JSON values.
    fn list_with(&self, command: Command) -> Vec<Value> {
        let out = self
            .with_roots(command)
            .args(["list", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "list: {}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn list(&self) -> Vec<Value> {
        self.list_with(Command::new(env!("CARGO_BIN_EXE_flowstate")))
    }

    /// The XDP program ids the kernel reports on the switch's interface.
    fn xdp_ids(&self) -> Vec<u32> {
        self.switch
            .xdp_programs(DEV)
            .expect("netlink XDP query")
            .into_iter()
            .map(|x| x.prog_id)
            .collect()
    }

    /// [`Lab::xdp_ids`] once the kernel has released a detached link (it
    /// does so a moment after the last reference goes).
    fn xdp_ids_settled(&self) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let ids = self.xdp_ids();
            if ids.is_empty() || Instant::now() > deadline {
                return ids;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program ARGS` as the unprivileged user.
fn as_nobody(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut command = Command::new(program);
    for a in args {
        command.arg(a);
    }
    command.uid(NOBODY).gid(NOBODY).output().unwrap()
}

#[test]
fn a_pin_root_made_by_another_user_is_refused() {
    if skip("a_pin_root_made_by_another_user_is_refused") {
        return;
    }
    let lab = Lab::new("trown");
    // bpffs is mode 1777: anyone may create the directory first.
    let made = as_nobody("mkdir", &[&lab.pin_root]);
    assert!(made.status.success(), "mkdir as nobody: {}", text(&made));
    assert_eq!(std::fs::metadata(&lab.pin_root).unwrap().uid(), NOBODY);

    let program = lab.program.to_str().unwrap();
    let run = lab.flowstate_in_switch(&["run", program, "--dev", DEV, "--name", "own"]);
    if run.status.success() {
        // The attack the refusal prevents: the owner of the directory
        // moves root's instance away, and `stop` must still tell the truth.
        let moved = as_nobody(
            "mv",
            &[&lab.pin_root.join("own"), &lab.pin_root.join("own-x")],
        );
        let stop = lab.flowstate(&["stop", "own"]);
        let left = lab.xdp_ids_settled();
        assert!(
            !stop.status.success() || left.is_empty(),
            "after the other user's mv ({}), `stop` said {} while programs {left:?} stay \
             attached",
            moved.status,
            text(&stop)
        );
        panic!("run used a pin root owned by uid {NOBODY}: {}", text(&run));
    }
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("owned by uid 65534") && stderr.contains("rm -r"),
        "the refusal says what is wrong and what to do: {}",
        text(&run)
    );
    assert!(lab.xdp_ids().is_empty(), "nothing attached");
    assert!(
        !lab.run_dir.join("own.json").exists(),
        "no metadata written"
    );
}

#[test]
fn another_user_cannot_rename_an_instance() {
    if skip("another_user_cannot_rename_an_instance") {
        return;
    }
    let lab = Lab::new("trmode");
    let program = lab.program.to_str().unwrap();
    let run = lab.flowstate_in_switch(&["run", program, "--dev", DEV, "--name", "mine"]);
    assert!(run.status.success(), "run: {}", text(&run));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();
    for dir in [&lab.pin_root, &lab.pin_root.join("mine"), &lab.run_dir] {
        assert_eq!(
            (owner(dir), mode(dir)),
            (0, 0o700),
            "{} is root's, mode 0700",
            dir.display()
        );
    }
    let meta = lab.run_dir.join("mine.json");
    assert_eq!(mode(&meta), 0o600, "metadata is 0600");

    let moved = as_nobody(
        "mv",
        &[&lab.pin_root.join("mine"), &lab.pin_root.join("gone")],
    );
    assert!(!moved.status.success(), "nobody moved it: {}", text(&moved));
    assert!(lab.pin_root.join("mine/link").exists());

    let stop = lab.flowstate(&["stop", "mine"]);
    assert!(stop.status.success(), "stop: {}", text(&stop));
    assert_eq!(lab.xdp_ids_settled(), Vec::<u32>::new(), "detached");
}

#[test]
fn stop_detaches_through_the_kernel_when_the_pins_were_moved() {
    if skip("stop_detaches_through_the_kernel_when_the_pins_were_moved") {
        return;
    }
    let lab = Lab::new("trstop");
    let program = lab.program.to_str().unwrap();
    let run = lab.flowstate_in_switch(&["run", program, "--dev", DEV, "--name", "mv"]);
    assert!(run.status.success(), "run: {}", text(&run));
    assert_eq!(lab.xdp_ids().len(), 1);
    // Whatever moved it (root can), the pin path no longer leads to the
    // link: `stop` must find the link through the kernel.
    std::fs::rename(lab.pin_root.join("mv"), lab.pin_root.join("elsewhere")).unwrap();
    let stop = lab.flowstate(&["stop", "mv"]);
    let left = lab.xdp_ids_settled();
    assert!(
        stop.status.success() && left.is_empty(),
        "stop must detach the program or say it could not; it said {} and programs {left:?} \
         are attached",
        text(&stop)
    );
}

/// The one listed instance named `name`.
fn listed<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} listed: {all:?}"))
}

fn run_json(out: &Output) -> Value {
    assert!(out.status.success(), "run: {}", text(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn run_with_netns_attaches_inside_and_keeps_pins_on_the_host() {
    if skip("run_with_netns_attaches_inside_and_keeps_pins_on_the_host") {
        return;
    }
    let lab = Lab::new("trnetns");
    let program = lab.program.to_str().unwrap();
    let netns = lab.switch.name();
    // From the host: the interface exists only inside the namespace.
    let run = lab.flowstate(&[
        "run", program, "--netns", netns, "--dev", DEV, "--name", "nsrun", "--json",
    ]);
    let instance = run_json(&run);
    let prog_id = instance["prog_id"].as_u64().unwrap() as u32;
    assert_eq!(instance["netns"], netns);
    // The command has exited: the pins keep it attached.
    assert_eq!(lab.xdp_ids(), vec![prog_id]);
    assert!(lab.pin_root.join("nsrun/link").exists());

    let all = lab.list();
    let mine = listed(&all, "nsrun");
    assert_eq!(mine["netns"], netns, "{mine}");
    assert_eq!(mine["problem"], Value::Null, "{mine}");
    assert_eq!(
        mine["note"],
        Value::Null,
        "checked inside the namespace: {mine}"
    );

    let stop = lab.flowstate(&["stop", "nsrun"]);
    assert!(stop.status.success(), "stop: {}", text(&stop));
    assert_eq!(lab.xdp_ids_settled(), Vec::<u32>::new());
    assert!(!lab.pin_root.join("nsrun").exists());
    assert!(!lab.run_dir.join("nsrun.json").exists());
}

#[test]
fn ip_netns_exec_keeps_the_program_and_sees_the_host_instances() {
    let reason = flowstate_netlab::missing_tool("ip");
    if flowstate_testkit::skip_if(
        "ip_netns_exec_keeps_the_program_and_sees_the_host_instances",
        reason,
    ) || skip("ip_netns_exec_keeps_the_program_and_sees_the_host_instances")
    {
        return;
    }
    let lab = Lab::new("trexec");
    let program = lab.program.to_str().unwrap();
    let ip_netns_exec = |netns: &str| {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_flowstate")]);
        command
    };
    let run = lab
        .with_roots(ip_netns_exec(lab.switch.name()))
        .args(["run", program, "--dev", DEV, "--name", "exec", "--json"])
        .output()
        .unwrap();
    let instance = run_json(&run);
    let prog_id = instance["prog_id"].as_u64().unwrap() as u32;

    // Seen, and healthy, from the host and from inside another namespace.
    for (from, all) in [
        ("the host", lab.list()),
        (
            "ip netns exec peer",
            lab.list_with(ip_netns_exec(lab.peer.name())),
        ),
    ] {
        let mine = listed(&all, "exec");
        assert_eq!(mine["problem"], Value::Null, "from {from}: {mine}");
        assert_eq!(mine["prog_id"], prog_id, "from {from}: {mine}");
    }
    // Checked after the lists: a bpffs mounted in the command's private
    // mount namespace would have been torn down by now.
    assert_eq!(
        lab.xdp_ids(),
        vec![prog_id],
        "the program outlives `ip netns exec` ({})",
        text(&run)
    );
    assert_eq!(instance["netns"], lab.switch.name(), "recorded by name");

    let stop = lab
        .with_roots(ip_netns_exec(lab.peer.name()))
        .args(["stop", "exec"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "stop: {}", text(&stop));
    assert_eq!(lab.xdp_ids_settled(), Vec::<u32>::new());
    assert!(!lab.run_dir.join("exec.json").exists(), "no stale metadata");
}

#[test]
fn list_says_what_it_cannot_see_and_stop_still_works() {
    let test = "list_says_what_it_cannot_see_and_stop_still_works";
    if flowstate_testkit::skip_if(test, flowstate_netlab::missing_tool("ip")) || skip(test) {
        return;
    }
    let lab = Lab::new("trblind");
    let program = lab.program.to_str().unwrap();
    let netns = lab.switch.name().to_string();
    let run = lab.flowstate(&[
        "run", program, "--netns", &netns, "--dev", DEV, "--name", "blind", "--json",
    ]);
    let prog_id = run_json(&run)["prog_id"].as_u64().unwrap() as u32;
    // A thread keeps the namespace alive while its name goes away, so no
    // command can enter it by name any more.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let keeper = lab
        .switch
        .spawn_in(move || {
            let _ = wait.recv();
        })
        .unwrap();
    let switch_file = std::fs::File::open(lab.switch.path()).unwrap();
    lab.switch.delete().unwrap();

    let all = lab.list();
    let mine = listed(&all, "blind");
    assert_eq!(mine["problem"], Value::Null, "attached, not gone: {mine}");
    let note = mine["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&netns) && note.contains("is running"),
        "the note says which namespace and what the kernel says: {mine}"
    );

    let stop = lab.flowstate(&["stop", "blind"]);
    assert!(stop.status.success(), "stop: {}", text(&stop));
    // Asked inside the (unnamed now) namespace through the kept handle.
    let ids = {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let ids = xdp_ids_via(&switch_file);
            if ids.is_empty() || Instant::now() > deadline {
                break ids;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(ids.is_empty(), "program {prog_id} detached: {ids:?}");
    let _ = release.send(());
    keeper.join().unwrap();
}

/// XDP program ids on `DEV` in the namespace `handle` refers to, asked from
/// a thread inside it (the namespace has no name any more).
fn xdp_ids_via(handle: &std::fs::File) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let fd = handle.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd; only this thread moves.
                assert_eq!(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }, 0);
                let ip = Command::new("ip")
                    .args(["-d", "link", "show", "dev", DEV])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&ip.stdout)
                    .split("prog/xdp id ")
                    .skip(1)
                    .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                    .collect()
            })
            .join()
            .unwrap()
    })
}

#[test]
fn ip_netns_exec_with_no_way_back_to_the_host_mounts_is_refused() {
    let test = "ip_netns_exec_with_no_way_back_to_the_host_mounts_is_refused";
    let tools =
        flowstate_netlab::missing_tool("ip").or_else(|| flowstate_netlab::missing_tool("unshare"));
    if flowstate_testkit::skip_if(test, tools) || skip(test) {
        return;
    }
    let lab = Lab::new("trnoway");
    let program = lab.program.to_str().unwrap();
    // In a PID namespace of its own (`ip` execs flowstate as its PID 1),
    // no process with the host's mounts is in sight.
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "ip",
        "netns",
        "exec",
    ]);
    command.args([lab.switch.name(), env!("CARGO_BIN_EXE_flowstate")]);
    let run = lab
        .with_roots(command)
        .args(["run", program, "--dev", DEV, "--name", "noway"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("--netns"),
        "refused, pointing to --netns: {}",
        text(&run)
    );
    assert!(lab.xdp_ids().is_empty(), "nothing attached");
    assert!(
        !lab.run_dir.join("noway.json").exists(),
        "no stale metadata"
    );
}

#[test]
fn list_names_the_namespace_whose_deletion_detached_the_program() {
    let test = "list_names_the_namespace_whose_deletion_detached_the_program";
    if skip(test) {
        return;
    }
    let lab = Lab::new("trgone");
    let program = lab.program.to_str().unwrap();
    let netns = lab.switch.name().to_string();
    let run = lab.flowstate(&[
        "run", program, "--netns", &netns, "--dev", DEV, "--name", "gone", "--json",
    ]);
    run_json(&run);
    // Nothing else holds the namespace: deleting it destroys the veth,
    // and the kernel detaches the link (a moment later).
    lab.switch.delete().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let problem = loop {
        let all = lab.list();
        let problem = listed(&all, "gone")["problem"].clone();
        if !problem.is_null() || Instant::now() > deadline {
            break problem;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let problem = problem.as_str().unwrap_or_default().to_string();
    assert!(
        problem.contains("detached") && problem.contains(&netns),
        "the problem says the kernel detached it and where it was: {problem:?}"
    );
    let stop = lab.flowstate(&["stop", "gone"]);
    assert!(stop.status.success(), "stop cleans up: {}", text(&stop));
    assert!(!lab.pin_root.join("gone").exists());
    assert!(!lab.run_dir.join("gone.json").exists());
}

#[test]
fn list_checks_a_namespace_without_a_name_through_a_process_in_it() {
    let test = "list_checks_a_namespace_without_a_name_through_a_process_in_it";
    if skip(test) {
        return;
    }
    let lab = Lab::new("trproc");
    let program = lab.program.to_str().unwrap();
    let netns = lab.switch.name().to_string();
    let run = lab.flowstate(&[
        "run", program, "--netns", &netns, "--dev", DEV, "--name", "proc", "--json",
    ]);
    run_json(&run);
    // A process keeps the namespace (as a container's processes keep
    // theirs) while its name goes away.
    let mut resident = lab
        .switch
        .command("sleep")
        .unwrap()
        .arg("60")
        .spawn()
        .unwrap();
    lab.switch.delete().unwrap();
    let all = lab.list();
    let _ = resident.kill();
    let _ = resident.wait();
    let mine = listed(&all, "proc");
    assert_eq!(mine["problem"], Value::Null, "{mine}");
    assert_eq!(
        mine["note"],
        Value::Null,
        "checked inside, through the process: {mine}"
    );
    let stop = lab.flowstate(&["stop", "proc"]);
    assert!(stop.status.success(), "stop: {}", text(&stop));
}
