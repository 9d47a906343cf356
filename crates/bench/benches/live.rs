//! `cargo bench -p flowstate-bench --bench live`: real traffic through a
//! veth pair, with flowstate's port knocking attached at XDP against a bare
//! XDP_PASS program, measured in the same run.
//!
//! ```text
//!  namespace fs-bench-<pid>-...:   gen0 ──veth──▶ dut0 (program under test, XDP native)
//! ```
//!
//! Traffic: `BPF_PROG_TEST_RUN` in XDP live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel >= 5.18) runs a two-instruction
//! generator returning `XDP_TX` with `ingress_ifindex` = gen0, so each
//! repetition transmits a real frame out of gen0; the veth delivers it to
//! dut0, whose XDP program runs in the veth's NAPI poll. The frames are
//! TCP to port 22 from a source the control plane has put in OPEN: both
//! programs pass every frame, and the stack then discards it at once (the
//! destination MAC is not dut0's), so the two paths differ only by the
//! program. Rate = frames dut0 received (its rx_packets, which counts XDP
//! frames) / wall time of the generator's run. Several rounds, each
//! measuring bare then flowstate; the ratio is the median of the rounds'
//! ratios.
//!
//! Needs root and bpffs (prints SKIP otherwise). Exits with 1 when
//! flowstate's rate is below 80 % of the bare program's.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use flowstate_bench::{bare, frames, measure};
use flowstate_control::{AttachPoint, RunSpec, XdpMode};
use flowstate_netlab::{Netns, Topology};
use flowstate_obj::ProgramSection;
use flowstate_runtime::LoadOptions;

const XDP_TX: i32 = 3;
const ROUNDS: usize = 5;
/// Frames per measured run (FLOWSTATE_LIVE_FRAMES overrides).
const FRAMES: u32 = 2_000_000;
/// Frames per live-frames batch (the kernel's default is 64, max 256).
const BATCH: u32 = 64;
/// flowstate's rate must be at least this share of the bare program's.
const FLOOR: f64 = 0.80;
const GEN: &str = "gen0";
const DUT: &str = "dut0";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs
    // this binary without it, and a throughput figure is no test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("live benchmark: run it with `cargo bench -p flowstate-bench --bench live`");
        return ExitCode::SUCCESS;
    }
    if let Some(reason) = flowstate_netlab::skip_reason() {
        println!("SKIP live benchmark: {reason}");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(code) => code,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(cause) = source {
                message += &format!(": {cause}");
                source = cause.source();
            }
            eprintln!("live benchmark: {message}");
            ExitCode::from(2)
        }
    }
}

fn bench() -> Result<ExitCode, Error> {
    let frames_per_run = std::env::var("FLOWSTATE_LIVE_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FRAMES);
    let mut topology = Topology::new("bench")?;
    let netns = topology.add_netns("veth")?;
    topology.add_veth(&netns, GEN, &netns, DUT)?;
    let gen_ifindex = netns.ifindex(GEN)?;

    // The generator: returns XDP_TX, so every repetition leaves gen0.
    let mut generator = aya::Ebpf::load(&bare::object(ProgramSection::Xdp, XDP_TX)?)?;
    let gen_program: &mut Xdp = generator
        .program_mut(bare::PROGRAM_NAME)
        .ok_or("no generator program")?
        .try_into()?;
    gen_program.load()?;

    let bare_object = bare::object(ProgramSection::Xdp, bare::XDP_PASS)?;
    let source = write_portknock()?;
    let name = format!("bench-live-{}", std::process::id());
    let owned = name.clone();
    topology.on_cleanup(format!("stop {name}"), move || {
        let _ = flowstate_control::stop(&owned);
    });
    let frame = frames::tcp(CLIENT, 22);

    let mut bare_rates = Vec::new();
    let mut flowstate_rates = Vec::new();
    println!(
        "live XDP throughput: {frames_per_run} frames per run, {ROUNDS} rounds, \
         veth {GEN} -> {DUT}, {}-byte TCP frames to port 22",
        frame.len()
    );
    for round in 0..ROUNDS {
        // Bare XDP_PASS, attached through the runtime, detached on drop.
        let rate = netns.run_in(|| -> Result<f64, Error> {
            let mut loaded = flowstate_runtime::load(&bare_object, &LoadOptions::default())?;
            let link = loaded.attach_xdp(
                bare::PROGRAM_NAME,
                DUT,
                flowstate_runtime::XdpMode::default(),
            )?;
            let rate = measure_rate(&netns, gen_program, gen_ifindex, &frame, frames_per_run);
            link.detach()?;
            rate
        })??;
        bare_rates.push(rate);

        // flowstate's port knocking, with the client's flow OPEN.
        let spec = RunSpec {
            program_path: source.clone(),
            dev: DUT.to_string(),
            attach: Some(AttachPoint::Xdp {
                mode: XdpMode::Native,
            }),
            name: Some(name.clone()),
            tc: Default::default(),
        };
        netns.run_in(|| flowstate_control::run(&spec))??;
        let handle = flowstate_control::open(&name)?;
        handle.set_state(&CLIENT.to_string(), "OPEN")?;
        let rate = netns
            .run_in(|| measure_rate(&netns, gen_program, gen_ifindex, &frame, frames_per_run))??;
        let stats = handle.stats()?;
        let passed = stats
            .rows
            .iter()
            .find(|r| r.text.starts_with("OPEN tcp.dport"));
        let state = handle.flow(&CLIENT.to_string())?.map(|r| r.state);
        flowstate_control::stop(&name)?;
        // Every frame must have taken the OPEN-pass row, or the figure
        // measures some other path.
        if state.as_deref() != Some("OPEN") || passed.is_none_or(|r| r.packets == 0) {
            return Err(
                format!("flowstate did not pass the frames as OPEN (state {state:?})").into(),
            );
        }
        flowstate_rates.push(rate);
        println!(
            "  round {}: bare {:.3} Mpps, flowstate {:.3} Mpps ({:.1} %)",
            round + 1,
            bare_rates[round] / 1e6,
            rate / 1e6,
            rate / bare_rates[round] * 100.0
        );
    }
    let bare_rate = measure::median(&bare_rates).ok_or("no runs")?;
    let flowstate_rate = measure::median(&flowstate_rates).ok_or("no runs")?;
    // Each round pairs the two programs a second apart, so a round's ratio
    // cancels drift of the machine's load; the floor uses their median.
    let round_ratios: Vec<f64> = flowstate_rates
        .iter()
        .zip(&bare_rates)
        .map(|(f, b)| f / b)
        .collect();
    let ratio = measure::median(&round_ratios).ok_or("no runs")?;
    println!(
        "bare XDP_PASS        {:>8.3} Mpps (median)",
        bare_rate / 1e6
    );
    println!(
        "flowstate portknock  {:>8.3} Mpps (median)",
        flowstate_rate / 1e6
    );
    println!(
        "ratio                {:>8.1} %   (median of the rounds' ratios; floor {:.0} %): {}",
        ratio * 100.0,
        FLOOR * 100.0,
        if ratio >= FLOOR { "ok" } else { "BELOW FLOOR" }
    );
    let _ = std::fs::remove_file(&source);
    Ok(if ratio >= FLOOR {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Sends `count` frames out of gen0 with the live-frames generator and
/// returns the rate at which dut0 received them (frames per second).
/// Must run inside the namespace (the kernel looks the ifindex up there).
fn measure_rate(
    netns: &Netns,
    generator: &Xdp,
    gen_ifindex: u32,
    frame: &[u8],
    count: u32,
) -> Result<f64, Error> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex (offset
    // 12), rx_queue_index, egress_ifindex. The kernel wants data_end to
    // be the frame's length.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&gen_ifindex.to_ne_bytes());
    let before = rx_packets(netns, DUT)?;
    let start = Instant::now();
    generator.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: count,
        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
        ..TestRunOptions::default()
    })?;
    let elapsed = start.elapsed();
    // Frames still in the veth's ring are processed within microseconds.
    std::thread::sleep(Duration::from_millis(20));
    let received = rx_packets(netns, DUT)? - before;
    if received < u64::from(count) / 2 {
        return Err(format!("{DUT} received only {received} of {count} frames").into());
    }
    Ok(received as f64 / elapsed.as_secs_f64())
}

/// The interface's received-packets counter (`ip -s`), read from inside.
fn rx_packets(netns: &Netns, dev: &str) -> Result<u64, Error> {
    let out = netns.ip(&["-s", "-o", "link", "show", "dev", dev])?;
    // One line: "... RX: bytes packets errors ... \    <bytes> <packets> ..."
    let fields: Vec<&str> = out.split_whitespace().collect();
    let rx = fields
        .iter()
        .position(|f| *f == "RX:")
        .ok_or("no RX counters in `ip -s link`")?;
    // After "RX:" come the column names up to a "\" then the values.
    let values = fields[rx..]
        .iter()
        .skip_while(|f| **f != "\\")
        .skip(1)
        .collect::<Vec<_>>();
    Ok(values.get(1).ok_or("no packets counter")?.parse()?)
}

/// A copy of examples/portknock.fsm on disk for the control plane.
fn write_portknock() -> Result<PathBuf, Error> {
    let path =
        std::env::temp_dir().join(format!("flowstate-bench-live-{}.fsm", std::process::id()));
    std::fs::write(&path, include_str!("../../../examples/portknock.fsm"))?;
    Ok(path)
}
