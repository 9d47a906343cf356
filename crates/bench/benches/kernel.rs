//! `cargo bench -p flowstate-bench`: flowstate's compiled programs in the
//! kernel against a bare program and hand-written C, and the reference
//! interpreter's replay rate.
//!
//! Every kernel figure is the kernel's own ns per repetition from
//! `BPF_PROG_TEST_RUN` on 60-byte frames, real clock, repeat = 1,000,000,
//! median of 5 runs, and is divided by the bare program of the same run
//! (XDP or TC, as the figure's hook). Each measured path's verdict is
//! checked, so a figure always measures the path it names.
//!
//! Prints a table, writes `bench-results.json` and the listings of the
//! compiled programs (`bench-listings/`) into the target directory
//! (`$CARGO_TARGET_DIR`, else `target/` at the workspace root). Needs root;
//! the C baselines need clang (they are skipped, with a message, without
//! it). Exits with 1 when a figure misses its floor.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use flowstate_asm::Helper;
use flowstate_bench::measure::{self, MeasureError};
use flowstate_bench::report::{Figure, Floor, Report};
use flowstate_bench::{bare, clang, frames, generate, replay};
use flowstate_capture::synth;
use flowstate_codegen::{Options, Output};
use flowstate_lang::ir::{Hook, Program};
use flowstate_obj::ProgramSection;
use flowstate_runtime::{LoadOptions, Loaded, UpdateMode};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;
/// Test runs with repeat = 1 for the new-flow figures.
const SINGLE_RUNS: u32 = 20_000;
/// Flowstate figures must stay within this many times the bare program.
const MAX_RATIO: f64 = 4.0;
const MIN_REPLAY_MPPS: f64 = 5.0;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// flowstate's `pass` at TC (TCX_NEXT: the chain goes on).
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const TC_ACT_SHOT: u32 = 2;

const PORTKNOCK: &str = include_str!("../../../examples/portknock.fsm");
const TOKENBUCKET: &str = include_str!("../../../examples/tokenbucket.fsm");

/// The source each steady-state figure uses.
const KNOCKER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BURSTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SCANNER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "flowstate-bench: SKIPPED: BPF_PROG_TEST_RUN needs root (CAP_BPF, CAP_NET_ADMIN)"
        );
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let target = target_dir();
    let mut bench = Bench {
        report: Report::default(),
        listings: target.join("bench-listings"),
        bare_xdp: None,
        bare_tc: None,
        bare_xdp_single: None,
    };

    bench.section("bare programs", Bench::bare);
    bench.section("flowstate portknock", Bench::portknock);
    bench.section("flowstate tokenbucket", Bench::tokenbucket);
    bench.section("C baselines", Bench::c_baselines);
    bench.section("table scaling", Bench::scaling);
    bench.section("interpreter replay", Bench::replay);

    println!();
    print!("{}", bench.report.table());
    println!(
        "\nkernel figures: ns per packet as BPF_PROG_TEST_RUN reports it, {}-byte frames, \
         repeat {REPEAT}, median of {RUNS}; \"new flow\" figures: mean of {SINGLE_RUNS} \
         runs with repeat 1. Total time {:.1} s.",
        frames::FRAME_LEN,
        started.elapsed().as_secs_f64()
    );

    let json_path = target.join("bench-results.json");
    let written = std::fs::create_dir_all(&target).and_then(|()| {
        let text = serde_json::to_string_pretty(&bench.report.to_json()).unwrap_or_default();
        std::fs::write(&json_path, text + "\n")
    });
    match written {
        Ok(()) => println!("results: {}", json_path.display()),
        Err(e) => eprintln!("flowstate-bench: cannot write {}: {e}", json_path.display()),
    }
    println!("listings: {}", bench.listings.display());

    if bench.report.all_ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("flowstate-bench: some figures are OVER their floors");
        ExitCode::from(1)
    }
}

/// `$CARGO_TARGET_DIR`, else `target` at the workspace root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

fn program(source: &str) -> Result<Program> {
    flowstate_lang::compile(source)
        .map(|c| c.program)
        .map_err(|d| format!("the program does not check: {d:?}"))
}

fn load(object: &[u8], what: &str) -> Result<Loaded> {
    flowstate_runtime::load(object, &LoadOptions::default()).map_err(|e| format!("{what}: {e}"))
}

fn run_err(e: MeasureError) -> String {
    e.to_string()
}

/// A flowstate program compiled for `hook` (its own when `None`), with the
/// real clock, loaded.
struct Compiled {
    output: Output,
    loaded: Loaded,
}

impl Compiled {
    /// Compiles, saves the listing as `listings/<file>.txt` (before loading,
    /// so a program the verifier rejects can be read), and loads.
    fn new(program: &Program, hook: Option<Hook>, listings: &Path, file: &str) -> Result<Compiled> {
        let options = Options {
            test_clock: false,
            hook,
            ..Options::default()
        };
        let output = flowstate_codegen::compile(program, &options)
            .map_err(|e| format!("compiling {}: {e}", program.name))?;
        let path = listings.join(format!("{file}.txt"));
        std::fs::create_dir_all(listings)
            .and_then(|()| std::fs::write(&path, &output.listing))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let loaded = load(&output.object, &output.program_name)
            .map_err(|e| format!("{e}\n(listing: {})", path.display()))?;
        Ok(Compiled { output, loaded })
    }

    fn name(&self) -> &str {
        &self.output.program_name
    }

    fn median(&self, packet: &[u8], expected: u32) -> Result<f64> {
        median(&self.loaded, self.name(), packet, expected)
    }
}

fn send(loaded: &Loaded, program: &str, packet: &[u8], expected: u32) -> Result<()> {
    let result = loaded
        .test_run(program, packet, 1)
        .map_err(|e| e.to_string())?;
    measure::expect_verdict(program, expected, result.retval).map_err(run_err)
}

fn median(loaded: &Loaded, program: &str, packet: &[u8], expected: u32) -> Result<f64> {
    measure::repeated(loaded, program, packet, REPEAT, RUNS, expected)
        .map(|s| s.median_ns())
        .map_err(run_err)
}

/// The four knocks that open `src` in examples/portknock.fsm (each dropped).
fn knock(loaded: &Loaded, program: &str, src: Ipv4Addr) -> Result<()> {
    for port in synth::KNOCKS {
        send(loaded, program, &frames::udp(src, port), XDP_DROP)?;
    }
    Ok(())
}

/// Ten packets at once from `src`: the first six pass (B = 5, and the
/// opening packet takes no token), then the bucket is empty.
fn burst(loaded: &Loaded, program: &str, src: Ipv4Addr, pass: u32, drop: u32) -> Result<()> {
    for i in 0..10 {
        send(
            loaded,
            program,
            &frames::udp(src, 53),
            if i < 6 { pass } else { drop },
        )?;
    }
    Ok(())
}

struct Bench {
    report: Report,
    listings: PathBuf,
    bare_xdp: Option<Figure>,
    bare_tc: Option<Figure>,
    /// The bare XDP program with repeat = 1, for the new-flow figures.
    bare_xdp_single: Option<Figure>,
}

impl Bench {
    fn section(&mut self, name: &str, body: fn(&mut Bench) -> Result<()>) {
        eprintln!("flowstate-bench: {name} ...");
        if let Err(why) = body(self) {
            eprintln!("flowstate-bench: {name}: {why}");
            self.report
                .skip(name, why.lines().next().unwrap_or_default());
        }
    }

    fn bare_xdp(&self) -> Result<Figure> {
        self.bare_xdp
            .clone()
            .ok_or_else(|| "no bare XDP figure".to_string())
    }

    fn bare_tc(&self) -> Result<Figure> {
        self.bare_tc
            .clone()
            .ok_or_else(|| "no bare TC figure".to_string())
    }

    fn bare(&mut self) -> Result<()> {
        let packet = frames::udp(KNOCKER, 53);
        let xdp = bare::object(ProgramSection::Xdp, bare::XDP_PASS).map_err(|e| e.to_string())?;
        let xdp = load(&xdp, "bare xdp")?;
        let ns = median(&xdp, bare::PROGRAM_NAME, &packet, XDP_PASS)?;
        let figure = Figure::bare("bare xdp (flowstate-asm)", ns);
        self.bare_xdp = Some(figure.clone());
        self.report.push(figure.clone());

        // What the clocks cost here: `now` in an expression takes
        // bpf_ktime_get_ns, timeouts alone the coarse clock.
        for (helper, name) in [
            (Helper::KTIME_GET_NS, "bare xdp + bpf_ktime_get_ns"),
            (
                Helper::KTIME_GET_COARSE_NS,
                "bare xdp + bpf_ktime_get_coarse_ns",
            ),
        ] {
            let object = bare::object_calling(ProgramSection::Xdp, Some(helper), bare::XDP_PASS)
                .map_err(|e| e.to_string())?;
            let loaded = load(&object, name)?;
            let ns = median(&loaded, bare::PROGRAM_NAME, &packet, XDP_PASS)?;
            self.report.push(Figure::new(name, ns, &figure));
        }

        let tc =
            bare::object(ProgramSection::Classifier, bare::TC_ACT_OK).map_err(|e| e.to_string())?;
        let tc = load(&tc, "bare tc")?;
        let ns = median(&tc, bare::PROGRAM_NAME, &packet, bare::TC_ACT_OK as u32)?;
        let figure = Figure::bare("bare tc (flowstate-asm)", ns);
        self.bare_tc = Some(figure.clone());
        self.report.push(figure);

        // repeat = 1 includes the kernel's timing overhead; the new-flow
        // figures are compared with this, not with the repeated bare run.
        let ns = measure::single_runs(
            &xdp,
            bare::PROGRAM_NAME,
            (0..SINGLE_RUNS).map(|_| packet.clone()),
            XDP_PASS,
        )
        .map_err(run_err)?;
        let figure = Figure::bare("bare xdp, repeat 1", ns);
        self.bare_xdp_single = Some(figure.clone());
        self.report.push(figure);
        Ok(())
    }

    fn portknock(&mut self) -> Result<()> {
        let bare = self.bare_xdp()?;
        let program = program(PORTKNOCK)?;
        let pk = Compiled::new(&program, None, &self.listings, "portknock-xdp")?;
        let insns = pk.output.insn_count;

        knock(&pk.loaded, pk.name(), KNOCKER)?;
        let open = frames::tcp(KNOCKER, synth::SSH);
        let ns = pk.median(&open, XDP_PASS)?;
        self.report.push(
            Figure::new("flowstate portknock: open flow, tcp 22", ns, &bare)
                .with_floor(Floor::MaxRatio(MAX_RATIO))
                .with_insns(insns),
        );

        // A source with no entry sending a non-knock: lookup miss, DEFAULT
        // row `* *`, nothing written (the entry would be initial).
        let stray = frames::udp(SCANNER, 53);
        let ns = pk.median(&stray, XDP_DROP)?;
        self.report.push(
            Figure::new("flowstate portknock: unknown source, no knock", ns, &bare)
                .with_insns(insns),
        );

        // New flows: a first knock from a never-seen source creates an entry.
        let single = self
            .bare_xdp_single
            .clone()
            .ok_or_else(|| "no repeat-1 bare figure".to_string())?;
        let ns = measure::single_runs(
            &pk.loaded,
            pk.name(),
            (0..SINGLE_RUNS).map(|i| frames::udp(frames::fresh_source(i), synth::KNOCKS[0])),
            XDP_DROP,
        )
        .map_err(run_err)?;
        self.report.push(
            Figure::new(
                "flowstate portknock: new flow (first knock), repeat 1",
                ns,
                &single,
            )
            .with_insns(insns),
        );
        let ns = measure::single_runs(
            &pk.loaded,
            pk.name(),
            (0..SINGLE_RUNS).map(|_| open.clone()),
            XDP_PASS,
        )
        .map_err(run_err)?;
        self.report.push(
            Figure::new(
                "flowstate portknock: existing open flow, repeat 1",
                ns,
                &single,
            )
            .with_insns(insns),
        );
        Ok(())
    }

    fn tokenbucket(&mut self) -> Result<()> {
        let program = program(TOKENBUCKET)?;
        let packet = frames::udp(BURSTER, 53);

        let bare = self.bare_xdp()?;
        let tb = Compiled::new(&program, Some(Hook::Xdp), &self.listings, "tokenbucket-xdp")?;
        burst(&tb.loaded, tb.name(), BURSTER, XDP_PASS, XDP_DROP)?;
        let ns = tb.median(&packet, XDP_DROP)?;
        self.report.push(
            Figure::new("flowstate tokenbucket xdp: empty bucket, drop", ns, &bare)
                .with_floor(Floor::MaxRatio(MAX_RATIO))
                .with_insns(tb.output.insn_count),
        );

        let bare = self.bare_tc()?;
        let tb = Compiled::new(&program, None, &self.listings, "tokenbucket-tc")?;
        burst(&tb.loaded, tb.name(), BURSTER, TC_ACT_UNSPEC, TC_ACT_SHOT)?;
        let ns = tb.median(&packet, TC_ACT_SHOT)?;
        self.report.push(
            Figure::new("flowstate tokenbucket tc: empty bucket, drop", ns, &bare)
                .with_floor(Floor::MaxRatio(MAX_RATIO))
                .with_insns(tb.output.insn_count),
        );
        Ok(())
    }

    fn c_baselines(&mut self) -> Result<()> {
        let bare = self.bare_xdp()?;
        let Some(clang) = clang::find() else {
            return Err(clang::INSTALL_HINT.to_string());
        };
        let out_dir = std::env::temp_dir().join(format!("flowstate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
        let mut objects = std::collections::HashMap::new();
        for (stem, program) in clang::BASELINES {
            let source = clang::source_dir().join(format!("{stem}.c"));
            let output = out_dir.join(format!("{stem}.o"));
            clang::compile(&clang, &source, &output)?;
            let bytes = std::fs::read(&output).map_err(|e| format!("{}: {e}", output.display()))?;
            let loaded = load(&bytes, stem)?;
            objects.insert(stem, (program, loaded));
        }
        let _ = std::fs::remove_dir_all(&out_dir);
        let get = |stem: &str| {
            objects
                .get(stem)
                .ok_or_else(|| format!("{stem} was not built"))
        };

        let (name, loaded) = get("bare")?;
        let ns = median(loaded, name, &frames::udp(KNOCKER, 53), XDP_PASS)?;
        self.report
            .push(Figure::new("C bare xdp (clang)", ns, &bare));

        let open = frames::tcp(KNOCKER, synth::SSH);
        let (name, loaded) = get("pk_seed")?;
        fill_portknock_xfsm(loaded)?;
        knock(loaded, name, KNOCKER)?;
        let ns = median(loaded, name, &open, XDP_PASS)?;
        self.report.push(Figure::new(
            "C portknock seed-style (3 hash ops): open flow",
            ns,
            &bare,
        ));

        let (name, loaded) = get("pk_careful")?;
        knock(loaded, name, KNOCKER)?;
        let ns = median(loaded, name, &open, XDP_PASS)?;
        self.report
            .push(Figure::new("C portknock careful: open flow", ns, &bare));
        if let Some(single) = self.bare_xdp_single.clone() {
            let ns = measure::single_runs(
                loaded,
                name,
                (0..SINGLE_RUNS).map(|i| frames::udp(frames::fresh_source(i), synth::KNOCKS[0])),
                XDP_DROP,
            )
            .map_err(run_err)?;
            self.report.push(Figure::new(
                "C portknock careful: new flow (first knock), repeat 1",
                ns,
                &single,
            ));
        }

        let packet = frames::udp(BURSTER, 53);
        let (name, loaded) = get("tb_seed")?;
        fill_tokenbucket_xfsm(loaded)?;
        burst(loaded, name, BURSTER, XDP_PASS, XDP_DROP)?;
        let ns = median(loaded, name, &packet, XDP_DROP)?;
        self.report.push(Figure::new(
            "C tokenbucket seed-style (3 hash ops): empty, drop",
            ns,
            &bare,
        ));

        let (name, loaded) = get("tb_careful")?;
        burst(loaded, name, BURSTER, XDP_PASS, XDP_DROP)?;
        let ns = median(loaded, name, &packet, XDP_DROP)?;
        self.report.push(Figure::new(
            "C tokenbucket careful (spin lock): empty, drop",
            ns,
            &bare,
        ));
        Ok(())
    }

    fn scaling(&mut self) -> Result<()> {
        // 400 is a point between the brief's 100 and 1000 that compiles.
        for rows in [10, 100, 400, 1000] {
            // Each size on its own: a table too big to compile or verify is
            // reported, and the other sizes are still measured.
            if let Err(why) = self.scaling_one(rows) {
                eprintln!("flowstate-bench: {rows} exact rows: {why}");
                let first = why.lines().next().unwrap_or_default().to_string();
                self.report
                    .skip(format!("table scaling, {rows} rows"), first);
            }
        }
        Ok(())
    }

    fn scaling_one(&mut self, rows: usize) -> Result<()> {
        let bare = self.bare_xdp()?;
        let program = program(&generate::exact_match_program(rows))?;
        let compiled = Compiled::new(&program, None, &self.listings, &format!("exact{rows}"))?;
        let last = generate::row_port(rows - 1).ok_or("row port out of range")?;
        let ns = compiled.median(&frames::udp(SCANNER, last), XDP_DROP)?;
        self.report.push(
            Figure::new(format!("flowstate {rows} exact rows: last row"), ns, &bare)
                .with_insns(compiled.output.insn_count),
        );
        Ok(())
    }

    fn replay(&mut self) -> Result<()> {
        let bare = self.bare_xdp()?;
        let program = program(PORTKNOCK)?;
        let trace = synth::mixed_load(1_000_000, 10_000, 1);
        let path =
            std::env::temp_dir().join(format!("flowstate-bench-mixed-{}.pcap", std::process::id()));
        flowstate_capture::write_capture(&path, &trace).map_err(|e| e.to_string())?;
        drop(trace);
        let mut runs = Vec::new();
        for _ in 0..3 {
            match replay::replay_file(&program, &path) {
                Ok(stats) => runs.push(stats),
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e.to_string());
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        // The run of median CPU time; its wall-clock figure beside it shows
        // how much a busy machine took away.
        runs.sort_by(|a, b| a.cpu_seconds.total_cmp(&b.cpu_seconds));
        let stats = runs[runs.len() / 2];
        self.report.push(
            Figure::new(
                "interpreter replay --quiet, CPU time: mixed_load(1M, 10k flows), portknock",
                stats.ns_per_packet(),
                &bare,
            )
            .with_mpps(stats.mpps())
            .with_floor(Floor::MinMpps(MIN_REPLAY_MPPS)),
        );
        self.report.push(
            Figure::new(
                "interpreter replay --quiet, wall clock (same run)",
                stats.seconds * 1e9 / stats.packets.max(1) as f64,
                &bare,
            )
            .with_mpps(stats.wall_mpps()),
        );
        Ok(())
    }
}

/// The seed's XFSM table for examples/portknock.fsm: key (state i32,
/// l4 proto u8, pad, src_port u16 = 0, dst_port u16, pad), value
/// (action i32, next state i32); action 1 = pass, 0 = drop.
fn fill_portknock_xfsm(loaded: &Loaded) -> Result<()> {
    const UDP: u8 = 17;
    const TCP: u8 = 6;
    let rows: [(i32, u8, u16, i32, i32); 5] = [
        (0, UDP, 1111, 0, 1),
        (1, UDP, 2222, 0, 2),
        (2, UDP, 3333, 0, 3),
        (3, UDP, 4444, 0, 4),
        (4, TCP, 22, 1, 4),
    ];
    let map = loaded.map("xfsm_table").map_err(|e| e.to_string())?;
    for (state, proto, dport, action, next) in rows {
        let mut key = [0u8; 12];
        key[0..4].copy_from_slice(&state.to_le_bytes());
        key[4] = proto;
        key[8..10].copy_from_slice(&dport.to_le_bytes());
        let mut value = [0u8; 8];
        value[0..4].copy_from_slice(&action.to_le_bytes());
        value[4..8].copy_from_slice(&next.to_le_bytes());
        map.update(&key, &value, UpdateMode::Any)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The seed's XFSM table for the token bucket: key (state, cond1 = now >=
/// tmin, cond2 = now <= tmax), value (action, next state, update: 0 none,
/// 1 open a window, 2 shift it). No wildcards, so NEW takes all four
/// condition outcomes.
fn fill_tokenbucket_xfsm(loaded: &Loaded) -> Result<()> {
    let (new, active) = (0, 1);
    let (drop, pass) = (0, 1);
    let (none, open, shift) = (0, 1, 2);
    let rows: [(i32, i32, i32, i32, i32, i32); 8] = [
        (new, 0, 0, pass, active, open),
        (new, 0, 1, pass, active, open),
        (new, 1, 0, pass, active, open),
        (new, 1, 1, pass, active, open),
        (active, 1, 1, pass, active, shift),
        (active, 1, 0, pass, active, open),
        (active, 0, 1, drop, active, none),
        (active, 0, 0, drop, active, none),
    ];
    let map = loaded.map("xfsm_table").map_err(|e| e.to_string())?;
    for (state, cond1, cond2, action, next, update) in rows {
        let key: Vec<u8> = [state, cond1, cond2]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let value: Vec<u8> = [action, next, update]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        map.update(&key, &value, UpdateMode::Any)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
