//! Who may touch flowstate's pins and metadata, and programs in network
//! namespaces: a directory another user made first is refused, another
//! user cannot rename an instance away, `stop` detaches through the
//! kernel even when the pins were moved, `run --netns` attaches inside a
//! namespace while the pins stay on the host, and `ip netns exec` neither
//! loses the program nor hides the host's instances from `list`.
//!
//! Root with BPF only (else SKIP through flowstate-testkit). Each test has
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
