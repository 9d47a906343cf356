//! `flowstate demo`: the two examples on real interfaces, told step by step.
//!
//! Network (flowstate-netlab's `SwitchLab`): client 10.0.1.2 ── switch ──
//! server 10.0.2.2, the switch routing between two veth pairs. Programs run
//! on the switch's client-facing interface, so they see every packet the
//! client sends. The client and the server are real sockets in their
//! namespaces.
//!
//! Every observation is a check: the demo goes on after a failed one (the
//! rest of the story is still worth seeing) and exits 1 at the end. The
//! network, the programs' pins and the temporary program copy are removed
//! at the end, on error and on Ctrl-C (netlab's `Topology` guard).

use std::io::{ErrorKind, IsTerminal};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flowstate_control::{AttachPoint, Handle, Instance, RunSpec, XdpMode};
use flowstate_netlab::{send_udp, Netns, SwitchLab, TcpServer, UdpSink};
use flowstate_runtime::TcDirection;

/// The examples, built in so the demo runs from any directory.
const PORTKNOCK: &str = include_str!("../../../../examples/portknock.fsm");
const TOKENBUCKET: &str = include_str!("../../../../examples/tokenbucket.fsm");

/// The idle timeout in examples/portknock.fsm, replaced by `--idle`.
const PORTKNOCK_TIMEOUT: &str = "timeout OPEN idle 30s";

/// The knock sequence of examples/portknock.fsm.
const KNOCKS: [u16; 4] = [1111, 2222, 3333, 4444];

/// Tokens and refill period of examples/tokenbucket.fsm (`const B`, `Q`).
const BUCKET_B: u64 = 5;
const BUCKET_Q: Duration = Duration::from_secs(1);

/// How long a TCP connect may take before the demo calls it dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

const SSH_PORT: u16 = 22;
const UDP_PORT: u16 = 9000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Idle timeout of OPEN in the demo's copy of portknock.fsm, in
    /// seconds (the example says 30 s; the demo waits it out once).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub idle: u64,
    /// Datagrams in the token bucket's burst.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub burst: u64,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(reason) = flowstate_netlab::skip_reason() {
        bail!("the demo builds network namespaces and loads eBPF programs: it {reason}");
    }
    let mut story = Story::new();
    let started = Instant::now();
    println!(
        "{}",
        story.bold("flowstate demo: stateful network functions on real interfaces")
    );
    // Leftovers of a demo killed with SIGKILL (no handler ran).
    flowstate_netlab::sweep_stale("demo").context("removing namespaces of an earlier demo")?;

    story.heading("The network");
    let mut lab = SwitchLab::build("demo").context("building the demo network")?;
    let temp = TempDir::create()?;
    let temp_path = temp.path.clone();
    lab.topology
        .on_cleanup("remove the demo's program copy", move || {
            let _ = std::fs::remove_dir_all(&temp_path);
        });
    println!(
        "  client {} ── [{}] switch [{}] ── server {}",
        SwitchLab::CLIENT_ADDR,
        SwitchLab::SWITCH_CLIENT_DEV,
        SwitchLab::SWITCH_SERVER_DEV,
        SwitchLab::SERVER_ADDR
    );
    println!(
        "  namespaces {}, {}, {}; veth pairs; the switch routes",
        lab.client.name(),
        lab.switch.name(),
        lab.server.name()
    );
    let ssh = SocketAddrV4::new(SwitchLab::SERVER_ADDR, SSH_PORT);
    let server = TcpServer::start(&lab.server, ssh).context("starting the TCP server")?;
    story.step(&format!(
        "server listens on {ssh}; client connects with no program on the switch"
    ));
    let outcome = connect(&lab.client, ssh)?;
    story.check(
        outcome.connected(),
        &format!("{outcome}: the path works"),
        "connected",
    );

    port_knocking(&mut story, &mut lab, &temp, &server, args.idle)?;
    token_bucket(&mut story, &mut lab, &temp, args.burst)?;

    story.heading("Cleaning up");
    drop(server);
    lab.topology.cleanup();
    story.step("programs stopped, namespaces and veth pairs deleted");
    Ok(story.finish(started.elapsed()))
}

fn port_knocking(
    story: &mut Story,
    lab: &mut SwitchLab,
    temp: &TempDir,
    server: &TcpServer,
    idle: u64,
) -> anyhow::Result<()> {
    story.heading("Part 1: port knocking (examples/portknock.fsm at XDP)");
    if !PORTKNOCK.contains(PORTKNOCK_TIMEOUT) {
        bail!("examples/portknock.fsm no longer says `{PORTKNOCK_TIMEOUT}`: update the demo");
    }
    let source = PORTKNOCK.replace(PORTKNOCK_TIMEOUT, &format!("timeout OPEN idle {idle}s"));
    let path = temp.write("portknock.fsm", &source)?;
    println!(
        "  TCP {SSH_PORT} opens for a client that knocked UDP {} in order.",
        join(&KNOCKS)
    );
    println!(
        "  The demo runs a copy with `timeout OPEN idle {idle}s` instead of 30 s: {}",
        path.display()
    );
    let name = format!("demo-portknock-{}", std::process::id());
    let instance = start(
        story,
        lab,
        &path,
        &name,
        AttachPoint::Xdp {
            mode: XdpMode::Auto,
        },
    )?;
    let handle = flowstate_control::open(&name).context("opening the program's tables")?;
    let ssh = server.addr();
    let client_key = SwitchLab::CLIENT_ADDR.to_string();

    story.step(&format!("client connects to {ssh} before knocking"));
    let outcome = connect(&lab.client, ssh)?;
    story.check(
        outcome.timed_out(),
        &format!("{outcome}: the switch drops it"),
        "timed out",
    );
    show_flows(&handle)?;

    story.step(&format!(
        "client knocks: one UDP datagram to each of ports {}",
        join(&KNOCKS)
    ));
    let socket = lab
        .client
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    let mut state = String::from("DEFAULT");
    for port in KNOCKS {
        let before = state.clone();
        send_udp(
            &socket,
            SocketAddrV4::new(SwitchLab::SERVER_ADDR, port),
            b"knock",
            1,
        );
        // The switch processes the datagram a moment after it is sent.
        state = wait_for_state(&handle, &client_key, |s| s != before)?;
        println!("    knock {port:>5}  {before} -> {state}");
    }
    story.check(
        state == "OPEN",
        &format!("client {client_key} is {state}"),
        "OPEN",
    );
    show_flows(&handle)?;

    story.step(&format!("client connects to {ssh} again"));
    let accepted_before = server.accepted();
    let outcome = connect(&lab.client, ssh)?;
    story.check(
        outcome.connected(),
        &format!("{outcome}: the door is open"),
        "connected",
    );
    wait_until(Duration::from_secs(1), || {
        server.accepted() > accepted_before
    });
    story.check(
        server.accepted() > accepted_before,
        "the server accepted the connection",
        "one more accepted connection",
    );

    story.step(&format!(
        "client stays silent for {idle} s (the idle timeout of OPEN)"
    ));
    std::thread::sleep(Duration::from_secs(idle) + Duration::from_millis(300));
    let row = handle.flow(&client_key)?;
    let expired_to = row.as_ref().and_then(|r| r.expired_to.clone());
    story.check(
        expired_to.as_deref() == Some("DEFAULT"),
        &match (&row, &expired_to) {
            (Some(r), Some(to)) => format!(
                "entry {} is past its timeout (idle {}): it reads as {to}",
                r.state,
                seconds(r.idle_ns)
            ),
            (Some(r), None) => format!("entry still {} (idle {})", r.state, seconds(r.idle_ns)),
            (None, _) => "no entry left".to_string(),
        },
        "expired to DEFAULT",
    );
    story.step(&format!("client connects to {ssh} once more"));
    let outcome = connect(&lab.client, ssh)?;
    story.check(
        outcome.timed_out(),
        &format!("{outcome}: the door closed again"),
        "timed out",
    );
    show_flows(&handle)?;

    let stats = handle.stats()?;
    show_rows(&stats);
    let knock_rows_ok = stats.rows.iter().take(KNOCKS.len()).all(|r| r.packets == 1);
    story.check(
        knock_rows_ok,
        "each knock row fired exactly once",
        "1 packet on each knock row",
    );
    stop(story, lab, &instance)?;
    Ok(())
}

fn token_bucket(
    story: &mut Story,
    lab: &mut SwitchLab,
    temp: &TempDir,
    burst: u64,
) -> anyhow::Result<()> {
    story.heading("Part 2: token bucket (examples/tokenbucket.fsm at TC ingress)");
    println!(
        "  Per source: B = {BUCKET_B} tokens, one more every Q = {} s; a new source's first \
         packet opens the window without taking a token.",
        BUCKET_Q.as_secs()
    );
    let path = temp.write("tokenbucket.fsm", TOKENBUCKET)?;
    let sink_addr = SocketAddrV4::new(SwitchLab::SERVER_ADDR, UDP_PORT);
    let sink = UdpSink::start(&lab.server, sink_addr).context("starting the UDP receiver")?;
    let name = format!("demo-tokenbucket-{}", std::process::id());
    let instance = start(story, lab, &path, &name, AttachPoint::TcIngress)?;
    let handle = flowstate_control::open(&name).context("opening the program's tables")?;
    let socket = lab
        .client
        .udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;

    story.step(&format!(
        "client sends a burst of {burst} UDP datagrams to {sink_addr} at once"
    ));
    let burst_start = Instant::now();
    let sent = send_udp(&socket, sink_addr, b"burst", burst as usize);
    let received = sink.settle(Duration::from_millis(300), Duration::from_secs(2));
    let allowed = BUCKET_B + 1;
    story.check(
        received == allowed,
        &format!(
            "sent {sent}, server received {received}; the bucket allows {allowed} (the opening \
             packet + B)"
        ),
        &format!("{allowed} received"),
    );
    show_flows(&handle)?;

    // The window moves one Q per token: after the burst the next token is
    // due at burst_start + Q, then every Q. Ending the stream half a Q
    // after a due time keeps the expectation clear of timing jitter.
    let periods = 2;
    let stream_end = burst_start + BUCKET_Q * periods + BUCKET_Q / 2;
    let rate = 50;
    story.step(&format!(
        "client keeps sending {rate} datagrams/s until {:.1} s after the burst began",
        (stream_end - burst_start).as_secs_f64()
    ));
    let before = sink.received();
    let mut streamed = 0;
    let gap = Duration::from_secs(1) / rate;
    let mut next = Instant::now();
    while next < stream_end {
        streamed += send_udp(&socket, sink_addr, b"steady", 1);
        next += gap;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let received = sink.settle(Duration::from_millis(300), Duration::from_secs(2)) - before;
    story.check(
        received == u64::from(periods),
        &format!(
            "sent {streamed}, server received {received}: one per second, as tokens come back"
        ),
        &format!("{periods} received"),
    );
    show_flows(&handle)?;
    show_rows(&handle.stats()?);
    stop(story, lab, &instance)?;
    Ok(())
}

/// `flowstate run` inside the switch's namespace; registers the stop with
/// the topology so Ctrl-C or an error removes the program too.
fn start(
    story: &mut Story,
    lab: &mut SwitchLab,
    path: &Path,
    name: &str,
    attach: AttachPoint,
) -> anyhow::Result<Instance> {
    let spec = RunSpec {
        program_path: path.to_path_buf(),
        dev: SwitchLab::SWITCH_CLIENT_DEV.to_string(),
        attach: Some(attach),
        name: Some(name.to_string()),
        tc: Default::default(),
    };
    story.step(&format!(
        "flowstate run {} --dev {} --hook {} --name {name}   (on the switch)",
        path.file_name().unwrap_or_default().to_string_lossy(),
        spec.dev,
        attach.hook_name()
    ));
    let instance = lab
        .switch
        .run_in(|| flowstate_control::run(&spec))?
        .with_context(|| format!("running {}", path.display()))?;
    let owned = name.to_string();
    lab.topology.on_cleanup(format!("stop {name}"), move || {
        let _already_stopped = flowstate_control::stop(&owned);
    });
    story.check(
        true,
        &format!(
            "attached: program id {}, {} mode, pinned under /sys/fs/bpf/flowstate/{name}",
            instance.prog_id, instance.mode
        ),
        "attached",
    );
    // What the kernel itself says is on the interface: the same query that
    // later shows the program gone, so that check cannot pass by seeing
    // nothing at all.
    let dev = SwitchLab::SWITCH_CLIENT_DEV;
    let attached = programs_on(&lab.switch, dev).unwrap_or_else(|e| e.to_string());
    let expected = match attach {
        AttachPoint::Xdp { .. } => Some(format!("xdp id {} ", instance.prog_id)),
        AttachPoint::TcIngress if instance.mode == "tcx" => Some("tcx/ingress ".to_string()),
        AttachPoint::TcEgress if instance.mode == "tcx" => Some("tcx/egress ".to_string()),
        AttachPoint::TcIngress => Some(format!("clsact/ingress id {} ", instance.prog_id)),
        AttachPoint::TcEgress => Some(format!("clsact/egress id {} ", instance.prog_id)),
    };
    if let Some(expected) = expected {
        story.check(
            attached.contains(&expected),
            &format!("the kernel reports on {dev}: {attached}"),
            &format!("{expected}on {dev}"),
        );
    }
    Ok(instance)
}

/// `flowstate stop`, then asks the kernel whether the interface has no
/// program left and the program itself is gone (no link, pin or fd of it
/// remains).
fn stop(story: &mut Story, lab: &SwitchLab, instance: &Instance) -> anyhow::Result<()> {
    story.step(&format!("flowstate stop {}", instance.name));
    flowstate_control::stop(&instance.name)?;
    let dev = SwitchLab::SWITCH_CLIENT_DEV;
    let mut attached = String::new();
    let mut loaded = Ok(true);
    // The kernel detaches a link and frees its program when the last
    // reference goes, which can come a moment after the pin is removed.
    wait_until(Duration::from_secs(3), || {
        attached = programs_on(&lab.switch, dev).unwrap_or_else(|e| e.to_string());
        loaded = flowstate_runtime::program_loaded(instance.prog_id);
        attached.is_empty() && matches!(loaded, Ok(false))
    });
    story.check(
        attached.is_empty(),
        &if attached.is_empty() {
            format!("{dev} has no program attached")
        } else {
            format!("{dev} still has: {attached}")
        },
        "no program",
    );
    story.check(
        matches!(loaded, Ok(false)),
        &match &loaded {
            Ok(false) => format!("program id {} is unloaded", instance.prog_id),
            Ok(true) => format!("program id {} is still loaded", instance.prog_id),
            Err(e) => format!("program id {}: {e}", instance.prog_id),
        },
        "unloaded",
    );
    Ok(())
}

/// The programs the kernel reports on `dev` in the switch, `; `-separated
/// (empty: none): XDP from the link's netlink attributes (any attach
/// method), TCX from the kernel's TCX query where the kernel has TCX (the
/// query fails with EINVAL before 6.6), and clsact filters from netlink.
fn programs_on(netns: &Netns, dev: &str) -> anyhow::Result<String> {
    let mut found: Vec<String> = netns
        .xdp_programs(dev)?
        .into_iter()
        .map(|xdp| format!("xdp id {} ({})", xdp.prog_id, xdp.mode))
        .collect();
    let has_tcx = flowstate_runtime::kernel_features()
        .get(flowstate_runtime::Feature::Tcx)
        .is_present();
    let ifindex = netns.ifindex(dev)?;
    for (direction, label) in [
        (TcDirection::Ingress, "ingress"),
        (TcDirection::Egress, "egress"),
    ] {
        if has_tcx {
            let names = netns.run_in(|| flowstate_runtime::tcx_programs(dev, direction))??;
            found.extend(names.into_iter().map(|n| format!("tcx/{label} {n}")));
        }
        let filters = netns.run_in(|| flowstate_runtime::clsact::filters(ifindex, direction))??;
        found.extend(
            filters
                .into_iter()
                .map(|f| format!("clsact/{label} id {} ({})", f.prog_id, f.name)),
        );
    }
    Ok(found.join("; "))
}

/// What a TCP connect did.
enum Connect {
    Connected(Duration),
    TimedOut,
    Failed(std::io::Error),
}

impl Connect {
    fn connected(&self) -> bool {
        matches!(self, Connect::Connected(_))
    }

    fn timed_out(&self) -> bool {
        matches!(self, Connect::TimedOut)
    }
}

impl std::fmt::Display for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connect::Connected(took) => {
                write!(f, "connected in {:.1} ms", took.as_secs_f64() * 1e3)
            }
            Connect::TimedOut => write!(f, "no answer within {} ms", CONNECT_TIMEOUT.as_millis()),
            Connect::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

fn connect(client: &Netns, to: SocketAddrV4) -> anyhow::Result<Connect> {
    let start = Instant::now();
    Ok(match client.tcp_connect(to, CONNECT_TIMEOUT)? {
        Ok(_stream) => Connect::Connected(start.elapsed()),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            Connect::TimedOut
        }
        Err(e) => Connect::Failed(e),
    })
}

/// Polls the state of flow `key` until `done` holds (1 s at most); a
/// missing entry reads as the initial state, as the program reads it.
fn wait_for_state(
    handle: &Handle,
    key: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let initial = handle
        .program()
        .states
        .first()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let state = handle
            .flow(key)?
            .map_or_else(|| initial.clone(), |row| row.state);
        if done(&state) || Instant::now() >= deadline {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state table, as `flowstate flows` shows it.
fn show_flows(handle: &Handle) -> anyhow::Result<()> {
    let rows = handle.flows(None, Some(10))?;
    if rows.is_empty() {
        println!("    state table: empty (every source reads as the initial state)");
        return Ok(());
    }
    let now = monotonic_ns();
    println!(
        "    {:<15} {:<9} {:>7} {:>7}  REGISTERS",
        "KEY", "STATE", "AGE", "IDLE"
    );
    for row in rows {
        let state = match &row.expired_to {
            Some(to) => format!("{}→{to}", row.state),
            None => row.state.clone(),
        };
        // Registers holding times read better relative to now.
        let registers: Vec<String> = row
            .registers
            .iter()
            .map(|(name, value)| format!("{name} = now{}", relative(*value - now)))
            .collect();
        println!(
            "    {:<15} {:<9} {:>7} {:>7}  {}",
            row.key,
            state,
            seconds(row.age_ns),
            seconds(row.idle_ns),
            registers.join(", ")
        );
    }
    Ok(())
}

/// Per-row counters, as `flowstate stats` shows them.
fn show_rows(stats: &flowstate_control::Stats) {
    println!("    {:>4} {:>8}  ROW", "LINE", "PACKETS");
    for row in &stats.rows {
        println!("    {:>4} {:>8}  {}", row.line, row.packets, row.text);
    }
    println!("    {:>4} {:>8}  (default)", "", stats.default.0);
}

fn seconds(ns: Option<u64>) -> String {
    ns.map_or("-".to_string(), |ns| format!("{:.1}s", ns as f64 / 1e9))
}

fn relative(ns: i64) -> String {
    format!("{:+.2}s", ns as f64 / 1e9)
}

fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec)
}

fn join(ports: &[u16]) -> String {
    let all: Vec<String> = ports.iter().map(u16::to_string).collect();
    all.join(", ")
}

/// A private directory for the demo's program copies (removed by the
/// topology's cleanup, and on drop).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("flowstate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The narrative: headings, steps, and checks marked ✔ or ✘.
struct Story {
    color: bool,
    checks: usize,
    failures: Vec<String>,
}

impl Story {
    fn new() -> Story {
        Story {
            color: std::io::stdout().is_terminal(),
            checks: 0,
            failures: Vec::new(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    fn heading(&self, text: &str) {
        println!("\n{}", self.bold(text));
    }

    fn step(&self, text: &str) {
        println!("{} {text}", self.paint("36", "▸"));
    }

    fn check(&mut self, ok: bool, observed: &str, expected: &str) {
        self.checks += 1;
        if ok {
            println!("  {} {observed}", self.paint("32", "✔"));
        } else {
            println!(
                "  {} {observed} {}",
                self.paint("31", "✘"),
                self.paint("31", &format!("(expected: {expected})"))
            );
            self.failures
                .push(format!("{observed} (expected: {expected})"));
        }
    }

    fn finish(self, took: Duration) -> ExitCode {
        println!();
        if self.failures.is_empty() {
            println!(
                "{} all {} observations as expected ({:.1} s)",
                self.paint("32", "✔"),
                self.checks,
                took.as_secs_f64()
            );
            ExitCode::SUCCESS
        } else {
            println!(
                "{} {} of {} observations differ from what the programs promise:",
                self.paint("31", "✘"),
                self.failures.len(),
                self.checks
            );
            for failure in &self.failures {
                println!("    {failure}");
            }
            ExitCode::from(1)
        }
    }
}
