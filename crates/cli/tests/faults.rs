//! The command line on bad input and in bad conditions (issue 7): bounded
//! output and time on huge or repetitive programs, a closed pipe, outputs
//! that would overwrite inputs, repeated causes, and commands run without
//! the privilege they need.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowstate_control::{AttachPoint, RunSpec, XdpMode};
use flowstate_netlab::SwitchLab;

const PORTKNOCK: &str = include_str!("../../../examples/portknock.fsm");

fn flowstate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowstate"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    flowstate().args(args).output().expect("flowstate runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_panic(out: &Output) {
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn header(states: &str) -> String {
    format!("program p\nhook xdp\nflow ip.src\nstates {states}\ndefault pass\ntable\n")
}

// ---- bounded output and time ------------------------------------------------

#[test]
fn check_of_thousands_of_duplicate_states_prints_one_error_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.fsm");
    let source = header(&vec!["A"; 5000].join(", ")) + "  * * => pass\nend\n";
    std::fs::write(&path, &source).unwrap();
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("duplicate state `A`").count(), 1, "{stderr}");
    assert!(stderr.contains("and 4,998 more like this"), "{stderr}");
    // Was 150 MB: the 15 kB line once per duplicate.
    assert!(
        out.stderr.len() < 2 * source.len(),
        "{} bytes",
        out.stderr.len()
    );

    let out = run(&["check", "--json", path.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diagnostics = json["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0]["more_like_this"], 4998);
    assert_eq!(diagnostics[0]["line"], 4);
}

#[test]
fn folded_diagnostics_still_count_in_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.fsm");
    let source = header("A, B") + &"  A tcp.dport == 22 => drop\n".repeat(20) + "end\n";
    std::fs::write(&rows, source).unwrap();
    let out = run(&["check", rows.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("row can never match").count(), 1, "{stderr}");
    assert!(stderr.contains("and 18 more like this"), "{stderr}");
    assert!(
        text(&out.stdout).contains(": ok (19 warnings)"),
        "{}",
        text(&out.stdout)
    );

    let dup = dir.path().join("dup.fsm");
    std::fs::write(&dup, header(&vec!["A"; 100].join(", ")) + "end\n").unwrap();
    let capture = example("portknock.pcap");
    let out = run(&["replay", dup.to_str().unwrap(), capture.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(": 99 error(s); nothing was run"),
        "{stderr}"
    );
}

#[test]
fn check_of_an_endless_file_stops_at_the_size_limit() {
    let out = run(&["check", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/dev/zero is larger than 4194304 bytes (4 MiB), the limit"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// Every command that reads a program stops at the limit: `run` (with
/// and without `--xdp-mode`, which reads the program to learn its hook)
/// read it unbounded before its kernel-feature check. The child gets a
/// 1 GiB address-space limit, so an unbounded read fails fast instead of
/// filling the machine's memory.
#[test]
fn run_of_an_endless_file_stops_at_the_size_limit() {
    for extra in [&[][..], &["--xdp-mode", "generic"][..]] {
        let mut command = flowstate();
        command
            .args(["run", "/dev/zero", "--dev", "lo"])
            .args(extra);
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                let limit = libc::rlimit {
                    rlim_cur: 1 << 30,
                    rlim_max: 1 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().expect("flowstate runs");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("/dev/zero is larger than 4194304 bytes (4 MiB), the limit"),
            "run {extra:?}: {:?} {stderr}",
            out.status
        );
        assert_no_panic(&out);
    }
}

#[test]
fn check_of_a_file_that_is_not_text_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.fsm");
    std::fs::write(&path, b"program p\n\xff\xfe").unwrap();
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not UTF-8 text (invalid byte at offset 10)"),
        "{stderr}"
    );
}

/// `rows` exact-match rows; all valid, so the whole table is analysed.
fn table_of(rows: usize) -> String {
    let mut source = header("A, B");
    for i in 0..rows {
        source.push_str(&format!(
            "  A tcp.dport == {}, ip.src == 10.0.{}.{} => drop, next B\n",
            i % 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    source + "end\n"
}

/// The shortest of three runs, to keep other load out of the figure.
fn check_time(path: &Path) -> (Duration, Output) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..3 {
        let start = Instant::now();
        let out = run(&["check", path.to_str().unwrap()]);
        best = best.min(start.elapsed());
        last = Some(out);
    }
    (best, last.unwrap())
}

#[test]
fn check_time_grows_linearly_with_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("10k.fsm");
    let large = dir.path().join("40k.fsm");
    std::fs::write(&small, table_of(10_000)).unwrap();
    std::fs::write(&large, table_of(40_000)).unwrap();
    let (t_small, _) = check_time(&small);
    let (t_large, out) = check_time(&large);
    assert_no_panic(&out);
    // 40k rows are too many for the kernel: one error, short output.
    assert!(
        out.stdout.len() + out.stderr.len() < 4096,
        "{}",
        text(&out.stderr)
    );
    // Four times the rows: linear work takes about 4 times as long, the
    // old quadratic analysis 16 times (1.4 s -> 23 s). Generous for noise.
    let ratio = t_large.as_secs_f64() / t_small.as_secs_f64();
    assert!(
        ratio < 10.0,
        "10k rows {t_small:?}, 40k rows {t_large:?}: ratio {ratio:.1}"
    );
}

// ---- a closed pipe ------------------------------------------------------------

/// Runs `args`, reads a little of standard output, closes it, and returns
/// how the command ended.
fn read_a_little_then_close(args: &[&str]) -> (Option<i32>, String) {
    let mut child = flowstate()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stderr))
}

#[test]
fn replay_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("mixed.pcap");
    let out = run(&[
        "synth",
        "mixed",
        "--packets",
        "100000",
        "-o",
        capture.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let program = example("portknock.fsm");
    for json in [false, true] {
        let mut args = vec![
            "replay",
            program.to_str().unwrap(),
            capture.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        let (code, stderr) = read_a_little_then_close(&args);
        assert_eq!(code, Some(141), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("Broken pipe"), "{stderr}");
    }
}

#[test]
fn a_print_into_a_closed_pipe_ends_quietly() {
    // `graph` prints its whole text with print!, which panics on EPIPE.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.fsm");
    std::fs::write(&path, table_of(5_000)).unwrap();
    let (code, stderr) =
        read_a_little_then_close(&["graph", "--format", "dot", path.to_str().unwrap()]);
    assert_eq!(code, Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---- outputs that would overwrite inputs ------------------------------------

#[test]
fn replay_refuses_to_write_onto_its_capture_or_twice_to_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("in.pcap");
    std::fs::copy(example("portknock.pcap"), &capture).unwrap();
    let before = std::fs::read(&capture).unwrap();
    let symlink = dir.path().join("link.pcap");
    std::os::unix::fs::symlink(&capture, &symlink).unwrap();
    let hard = dir.path().join("hard.pcap");
    std::fs::hard_link(&capture, &hard).unwrap();
    let program = example("portknock.fsm");
    let program = program.to_str().unwrap();
    let capture_arg = capture.to_str().unwrap();

    for (option, target) in [
        ("--write-pass", &capture),
        ("--write-drop", &symlink),
        ("--write-pass", &hard),
    ] {
        let out = run(&[
            "replay",
            "-q",
            program,
            capture_arg,
            option,
            target.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("is the same file as the input capture"),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was written"), "{stderr}");
        assert_eq!(std::fs::read(&capture).unwrap(), before, "capture changed");
    }

    // Onto the program.
    let out = run(&[
        "replay",
        "-q",
        program,
        capture_arg,
        "--write-drop",
        program,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("same file as the input program"));

    // Both outputs to one new file, named two ways.
    let out_file = dir.path().join("out.pcap");
    let dotted = dir.path().join(".").join("out.pcap");
    let out = run(&[
        "replay",
        "-q",
        program,
        capture_arg,
        "--write-pass",
        out_file.to_str().unwrap(),
        "--write-drop",
        dotted.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("same file as the output --write-pass"),
        "{stderr}"
    );
    assert!(!out_file.exists());

    // Distinct files still work.
    let pass = dir.path().join("pass.pcap");
    let drop = dir.path().join("drop.pcap");
    let out = run(&[
        "replay",
        "-q",
        program,
        capture_arg,
        "--write-pass",
        pass.to_str().unwrap(),
        "--write-drop",
        drop.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(pass.exists() && drop.exists());
}

// ---- error text ----------------------------------------------------------------

#[test]
fn a_missing_file_names_its_cause_once() {
    let program = example("portknock.fsm");
    let cases: [&[&str]; 3] = [
        &["replay", program.to_str().unwrap(), "/nonexistent/in.pcap"],
        &["synth", "portknock", "-o", "/nonexistent/out.pcap"],
        &["check", "/nonexistent/p.fsm"],
    ];
    for args in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.matches("(os error 2)").count(),
            1,
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

// ---- without privilege ------------------------------------------------------

const NOBODY: u32 = 65534;

fn as_nobody(args: &[&str]) -> Output {
    flowstate()
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .output()
        .expect("flowstate runs as nobody")
}

fn assert_needs_root(args: &[&str]) {
    let out = as_nobody(args);
    assert_no_panic(&out);
    assert!(!out.status.success(), "{args:?} succeeded without root");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("needs root") && stderr.contains("CAP_BPF"),
        "{args:?}: {stderr}"
    );
}

/// Root, to become nobody, and a binary nobody may run.
fn nobody_skip_reason() -> Option<String> {
    flowstate_testkit::not_root().or_else(|| {
        let out = flowstate()
            .arg("--version")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .ok()?;
        (!out.status.success()).then(|| {
            format!(
                "uid {NOBODY} cannot run the binary: {}",
                text(&out.stderr).trim()
            )
        })
    })
}

#[test]
fn verify_and_run_without_root_say_they_need_root() {
    if flowstate_testkit::skip_if(
        "verify_and_run_without_root_say_they_need_root",
        nobody_skip_reason(),
    ) {
        return;
    }
    let program = example("portknock.fsm");
    let program = program.to_str().unwrap();
    assert_needs_root(&["verify", program]);
    assert_needs_root(&["run", program, "--dev", "lo", "--name", "faults-nobody"]);
    assert_needs_root(&["demo"]);
    // Commands that never touch the kernel get no such hint.
    let out = as_nobody(&["compile", program, "-o", "/proc/faults-cannot-write.o"]);
    assert!(
        !text(&out.stderr).contains("needs root"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn control_commands_without_root_say_they_need_root() {
    let reason = nobody_skip_reason().or_else(flowstate_netlab::skip_reason);
    if flowstate_testkit::skip_if("control_commands_without_root_say_they_need_root", reason) {
        return;
    }
    let tag = format!("nr{}", std::process::id() % 100_000);
    let mut lab = SwitchLab::build(&tag).expect("building the network");
    let name = format!("faults-nobody-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portknock.fsm");
    std::fs::write(&path, PORTKNOCK).unwrap();
    let stop = name.clone();
    lab.topology.on_cleanup(format!("stop {name}"), move || {
        let _ = flowstate_control::stop(&stop);
    });
    let spec = RunSpec {
        program_path: path.clone(),
        dev: SwitchLab::SWITCH_CLIENT_DEV.to_string(),
        attach: Some(AttachPoint::Xdp {
            mode: XdpMode::Auto,
        }),
        name: Some(name.clone()),
        tc: Default::default(),
    };
    lab.switch
        .run_in(|| flowstate_control::run(&spec))
        .unwrap()
        .unwrap_or_else(|e| panic!("run: {e}"));

    let program = path.to_str().unwrap();
    // (`repair` with nothing to repair rightly succeeds.)
    let commands: [&[&str]; 9] = [
        &["list"],
        &["flows", &name],
        &["stats", &name],
        &["globals", &name],
        &["events", &name],
        &["flow", &name, "10.0.0.1", "delete"],
        &["flush", &name],
        &["reload", &name, program],
        &["stop", &name],
    ];
    for args in commands {
        assert_needs_root(args);
    }
    // Still running, untouched.
    let out = run(&["stats", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn flows_into_a_closed_pipe_ends_quietly() {
    if flowstate_testkit::skip_if(
        "flows_into_a_closed_pipe_ends_quietly",
        flowstate_netlab::skip_reason(),
    ) {
        return;
    }
    let tag = format!("fp{}", std::process::id() % 100_000);
    let mut lab = SwitchLab::build(&tag).expect("building the network");
    let name = format!("faults-pipe-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portknock.fsm");
    std::fs::write(&path, PORTKNOCK).unwrap();
    let stop = name.clone();
    lab.topology.on_cleanup(format!("stop {name}"), move || {
        let _ = flowstate_control::stop(&stop);
    });
    let spec = RunSpec {
        program_path: path,
        dev: SwitchLab::SWITCH_CLIENT_DEV.to_string(),
        attach: Some(AttachPoint::Xdp {
            mode: XdpMode::Auto,
        }),
        name: Some(name.clone()),
        tc: Default::default(),
    };
    lab.switch
        .run_in(|| flowstate_control::run(&spec))
        .unwrap()
        .unwrap_or_else(|e| panic!("run: {e}"));
    // Enough flows that the listing is larger than a pipe's buffer.
    let handle = flowstate_control::open(&name).unwrap();
    for i in 0..3000u32 {
        let key = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        handle.set_state(&key, "OPEN").unwrap();
    }
    for json in [false, true] {
        let mut args = vec!["flows", name.as_str()];
        if json {
            args.push("--json");
        }
        let (code, stderr) = read_a_little_then_close(&args);
        assert_eq!(code, Some(141), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The names in `dir` that `keep` accepts (none when `dir` is absent).
fn names_in(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn demo_into_a_pipe_closed_midway_ends_quietly_and_cleans_up() {
    if flowstate_testkit::skip_if(
        "demo_into_a_pipe_closed_midway_ends_quietly_and_cleans_up",
        flowstate_netlab::skip_reason(),
    ) {
        return;
    }
    let mut child = flowstate()
        .args(["demo", "--idle", "1", "--burst", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read until a program is attached (namespaces and pins exist), then
    // close the pipe: the demo's next print fails.
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut program_id = None;
    while program_id.is_none() {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        program_id = line
            .split("attached: program id ")
            .nth(1)
            .and_then(|rest| rest.split(',').next()?.trim().parse::<u32>().ok());
        seen.push_str(&line);
    }
    drop(reader);
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    let program_id = program_id.unwrap_or_else(|| panic!("no program attached:\n{seen}{stderr}"));
    assert_eq!(out.status.code(), Some(141), "{seen}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let leftovers = names_in("/run/netns", |n| n.starts_with(&format!("fs-demo-{pid}-")));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let pins = names_in("/sys/fs/bpf/flowstate", |n| n.ends_with(&format!("-{pid}")));
    assert!(pins.is_empty(), "{pins:?}");
    assert!(!std::env::temp_dir()
        .join(format!("flowstate-demo-{pid}"))
        .exists());
    // A program is freed a moment after its last link or pin goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while flowstate_runtime::program_loaded(program_id).unwrap() {
        assert!(
            Instant::now() < deadline,
            "program {program_id} still loaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
