//! flowstate-difftest: the compiled program in the kernel against the
//! reference interpreter, packet by packet (DESIGN.md section 5).
//!
//! ```text
//!  gen (seed) ──▶ Program ──print──▶ text ──compile──▶ Program ─┬─▶ codegen ─▶ kernel (BPF_PROG_TEST_RUN, test clock)
//!                                                               └─▶ interp::Machine
//!  packets (seed) ──▶ [(now, frame)] ─────────────── both ──▶ compare after every packet ──▶ minimise on mismatch
//! ```
//!
//! After every packet the two executions must agree on the verdict, on the
//! whole state table (key bytes, state, registers, created, last seen) and
//! on the globals; after the last one, on every row's packet and byte
//! counters. A disagreement is shrunk ([`minimise`]) to a short packet
//! sequence and a small program, and reported with the program's text,
//! the packets in hex and both executions' results ([`Failure`]).
//!
//! Tables that `evict` (an LRU hash in the kernel) are compared under the
//! full-table promise (flowstate-interp's crate doc): the kernel runs each
//! packet first; flows its table lost that no packet deleted are its
//! evictions. They must be allowed (made by a packet that inserts a new
//! flow, never of that flow, the table never over capacity) and are then
//! replayed in the interpreter ([`Machine::process_evicting`]), so that
//! everything else is still compared exactly. [`Stats`] counts them.
//!
//! Frames that `BPF_PROG_TEST_RUN` refuses with EINVAL (shorter than an
//! Ethernet header; at TC, also IPv4/IPv6 frames whose IP header is cut
//! short: see [`packets::test_run_refuses`]) are run through a scratch copy
//! of the interpreter (it must not panic) and left out of the comparison
//! ([`Stats::skipped`]).

pub mod chain;
pub mod gen;
pub mod minimise;
pub mod packets;
pub mod rng;

use std::fmt::{self, Write as _};

use flowstate_codegen::{CodegenError, Options, Output, Target};
use flowstate_interp::{DefaultReason, Key, Machine, StateTable};
use flowstate_lang::ir::{Action, ControllerThen, FullPolicy, Hook, Program};
use flowstate_runtime::{LoadOptions, Loaded, RawMap, RuntimeError};

pub use minimise::minimise;
pub use packets::Packet;

/// The ingress interface a test run reports (loopback), for XDP
/// (`ingress_ifindex`) and TC (`skb->ifindex`) alike.
pub const TEST_RUN_IFINDEX: u32 = 1;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
/// `pass` at TC: TCX_NEXT / TC_ACT_UNSPEC (-1), the chain goes on.
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const TC_ACT_SHOT: u32 = 2;
/// What `bpf_redirect` returns at TC: `tx` at TC is a redirect to the
/// ingress interface.
const TC_ACT_REDIRECT: u32 = 7;

/// The return code the kernel program gives for `action` at `hook`.
pub fn expected_retval(action: &Action, hook: Hook) -> u32 {
    let xdp = hook == Hook::Xdp;
    match action {
        Action::Pass
        | Action::Controller {
            then: ControllerThen::Pass,
        } => {
            if xdp {
                XDP_PASS
            } else {
                TC_ACT_UNSPEC
            }
        }
        Action::Drop
        | Action::Controller {
            then: ControllerThen::Drop,
        } => {
            if xdp {
                XDP_DROP
            } else {
                TC_ACT_SHOT
            }
        }
        Action::Tx => {
            if xdp {
                XDP_TX
            } else {
                TC_ACT_REDIRECT
            }
        }
        // A register's port that is no ifindex reads as `drop` in the
        // interpreter's step.
        Action::Redirect { .. } | Action::RedirectPort { .. } => {
            if xdp {
                XDP_REDIRECT
            } else {
                TC_ACT_REDIRECT
            }
        }
    }
}

/// A return code as a word, for reports.
pub fn retval_name(retval: u32, hook: Hook) -> String {
    let name = match (hook == Hook::Xdp, retval) {
        (true, XDP_DROP) => "XDP_DROP",
        (true, XDP_PASS) => "XDP_PASS",
        (true, XDP_TX) => "XDP_TX",
        (true, XDP_REDIRECT) => "XDP_REDIRECT",
        (false, TC_ACT_UNSPEC) => "TC_ACT_UNSPEC",
        (false, TC_ACT_SHOT) => "TC_ACT_SHOT",
        (false, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
        _ => "?",
    };
    format!("{retval} ({name})")
}

/// One state table entry, as both executions are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: Vec<u8>,
    pub state: u16,
    pub registers: Vec<i64>,
    pub created: i64,
    pub last_seen: i64,
}

impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} state S{} registers {:?} created {} last_seen {}",
            hex(&self.key),
            self.state,
            self.registers,
            self.created,
            self.last_seen
        )
    }
}

/// What one execution shows after one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub retval: u32,
    /// Sorted by key.
    pub table: Vec<FlowRecord>,
    pub globals: Vec<i64>,
    /// The packet as the program left it (rows may write fields).
    pub frame: Vec<u8>,
}

impl Snapshot {
    fn describe(&self, hook: Hook) -> String {
        let mut out = format!("verdict {}\n", retval_name(self.retval, hook));
        let _ = writeln!(out, "globals {:?}", self.globals);
        let _ = writeln!(out, "frame {}", hex(&self.frame));
        let _ = writeln!(out, "table ({} entries):", self.table.len());
        for record in &self.table {
            let _ = writeln!(out, "  {record}");
        }
        out
    }
}

/// Lowercase hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The interpreter's table in comparison form.
pub fn interp_table(machine: &Machine<'_>) -> Vec<FlowRecord> {
    table_records(machine.table())
}

/// A state table in comparison form.
pub fn table_records(table: &StateTable) -> Vec<FlowRecord> {
    table
        .sorted()
        .into_iter()
        .map(|(key, entry)| FlowRecord {
            key: key.as_bytes().to_vec(),
            state: entry.state.0,
            registers: entry.registers.clone(),
            created: entry.created,
            last_seen: entry.last_seen,
        })
        .collect()
}

/// Why a run could not be compared at all.
#[derive(Debug)]
pub enum HarnessError {
    /// The code generator refused the program.
    Codegen(Box<CodegenError>),
    /// Loading failed, most often the verifier: for a generated program
    /// that is a code generator bug. `listing` is the program's listing.
    Load {
        error: Box<RuntimeError>,
        listing: String,
    },
    /// A map or test-run syscall failed.
    Runtime(Box<RuntimeError>),
    /// The compiled object lacks a map the layout promises.
    MissingMap(&'static str),
    /// Two functions of a chain case cannot share a table (a test's
    /// mistake: see [`chain::share_layout`]).
    Share(String),
}

/// Lines kept at each end of a verifier log in reports: the start shows
/// the program's entry, the end why it was refused.
const LOG_LINES_KEPT: usize = 60;

/// `text` with all but the first and last `keep` lines replaced by a note.
pub fn elide_middle(text: &str, keep: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 2 * keep {
        return text.to_string();
    }
    format!(
        "{}\n[... {} lines ...]\n{}",
        lines[..keep].join("\n"),
        lines.len() - 2 * keep,
        lines[lines.len() - keep..].join("\n")
    )
}

/// `e` with its chain of causes (`a: b: c`), which is where the errno of a
/// failed syscall is.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Codegen(e) => write!(f, "code generation failed: {}", error_chain(&**e)),
            HarnessError::Load { error, listing } => write!(
                f,
                "loading failed: {}\n--- listing ---\n{listing}",
                elide_middle(&error_chain(&**error), LOG_LINES_KEPT)
            ),
            HarnessError::Runtime(e) => write!(f, "runtime: {}", error_chain(&**e)),
            HarnessError::MissingMap(name) => write!(f, "the object has no `{name}` map"),
            HarnessError::Share(why) => write!(f, "cannot share a table: {why}"),
        }
    }
}

impl std::error::Error for HarnessError {}

impl From<RuntimeError> for HarnessError {
    fn from(e: RuntimeError) -> Self {
        HarnessError::Runtime(Box::new(e))
    }
}

/// Options for differential runs: the test clock, per-flow atomicity as
/// asked (every `redirect` port is filled with the loopback at load),
/// code for [`test_target`].
pub fn test_options(atomic: bool) -> Options {
    Options {
        test_clock: true,
        atomic,
        target: test_target(),
        ..Options::default()
    }
}

/// The environment variable that chooses the kernel the differential
/// suites generate code for: `6.1` (say) builds the fallbacks a kernel
/// without `may_goto` gets, and runs them in the running kernel.
pub const TARGET_VAR: &str = "FLOWSTATE_TARGET";

/// The target of [`TARGET_VAR`]; when unset, the running kernel's (what
/// `flowstate run` would build for it: on a kernel without `may_goto`,
/// the fallbacks). Panics on a value that is not a kernel version: a test
/// must not run for another target than it says.
pub fn test_target() -> Target {
    match std::env::var(TARGET_VAR) {
        Ok(text) if !text.is_empty() => {
            Target::parse(&text).unwrap_or_else(|why| panic!("{TARGET_VAR}={text}: {why}"))
        }
        _ => host_target(),
    }
}

/// The running kernel's target, from its probed features (as the control
/// plane builds it; without permission to probe, the newest, since such
/// a run loads nothing).
fn host_target() -> Target {
    let features = flowstate_runtime::kernel_features();
    if !features.may_goto.is_present() && !features.bpf_loop.is_present() {
        return Target::newest();
    }
    Target::from_host(
        features.may_goto.is_present(),
        features.bpf_loop.is_present(),
        features.gotol.is_present(),
        features.signed_division.is_present(),
    )
}

/// Packet and byte counts of one counter, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// A compiled program loaded in the kernel, with its maps open.
pub struct Kernel {
    output: Output,
    loaded: Loaded,
    flows: RawMap,
    globals: Option<RawMap>,
    counters: RawMap,
    clock: RawMap,
}

impl Kernel {
    /// Compile `program` with `options` (which must ask for the test clock)
    /// and load it.
    pub fn load(program: &Program, options: &Options) -> Result<Kernel, HarnessError> {
        Kernel::load_sharing(program, options, &[])
    }

    /// [`Kernel::load`], opening each map named in `shared` from its pin at
    /// the path (pinning it there first when nothing is pinned yet): how
    /// the functions of a chain share its program array, and two programs
    /// one flows map (see [`flowstate_runtime::load_sharing`]).
    pub fn load_sharing(
        program: &Program,
        options: &Options,
        shared: &[(&str, &std::path::Path)],
    ) -> Result<Kernel, HarnessError> {
        let output = flowstate_codegen::compile(program, options)
            .map_err(|e| HarnessError::Codegen(Box::new(e)))?;
        let loaded = match flowstate_runtime::load_sharing(
            &output.object,
            shared,
            &LoadOptions::default(),
        ) {
            Ok(loaded) => loaded,
            Err(error) => {
                return Err(HarnessError::Load {
                    error: Box::new(error),
                    listing: output.listing.clone(),
                })
            }
        };
        let layout = &output.layout;
        let flows = loaded.map(layout.flows_map)?;
        let globals = match layout.globals_map {
            Some(name) => Some(loaded.map(flowstate_codegen::layout::loader_name(name))?),
            None => None,
        };
        let counters = loaded.map(layout.counters_map)?;
        let clock = loaded.map(layout.clock_map.ok_or(HarnessError::MissingMap(
            flowstate_codegen::layout::CLOCK_MAP,
        ))?)?;
        // As `flowstate run` fills it: every port is the test run's.
        if let Some(name) = layout.ports_map {
            let ports = loaded.map(name)?;
            for slot in 0..layout.ports.len() as u32 {
                ports.array_set(slot, &TEST_RUN_IFINDEX.to_le_bytes())?;
            }
        }
        Ok(Kernel {
            output,
            loaded,
            flows,
            globals,
            counters,
            clock,
        })
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    pub fn flows_map(&self) -> &RawMap {
        &self.flows
    }

    pub fn set_clock(&self, now: i64) -> Result<(), HarnessError> {
        Ok(self.clock.array_set(0, &now.to_le_bytes())?)
    }

    /// Set the clock to `now` and run `frame` once; the return code.
    pub fn run(&self, frame: &[u8], now: i64) -> Result<u32, HarnessError> {
        Ok(self.run_out(frame, now)?.0)
    }

    /// [`Kernel::run`], with the packet as the program left it.
    pub fn run_out(&self, frame: &[u8], now: i64) -> Result<(u32, Vec<u8>), HarnessError> {
        self.set_clock(now)?;
        let result = self.loaded.test_run(&self.output.program_name, frame, 1)?;
        Ok((result.retval, result.data_out))
    }

    /// The state table, decoded and sorted by key.
    pub fn table(&self) -> Result<Vec<FlowRecord>, HarnessError> {
        let layout = &self.output.layout;
        let mut table: Vec<FlowRecord> = self
            .flows
            .entries()?
            .into_iter()
            .map(|(key, value)| {
                let entry = layout.decode_entry(&value);
                FlowRecord {
                    key,
                    state: entry.state.0,
                    registers: entry.registers,
                    created: entry.created,
                    last_seen: entry.last_seen,
                }
            })
            .collect();
        table.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(table)
    }

    pub fn globals(&self) -> Result<Vec<i64>, HarnessError> {
        match &self.globals {
            None => Ok(Vec::new()),
            Some(map) => Ok(self.output.layout.decode_globals(&map.array_get(0)?)),
        }
    }

    /// Counter `index` (a row's index, or one of the layout's extra
    /// counters), summed over CPUs.
    pub fn counter(&self, index: u32) -> Result<CounterValue, HarnessError> {
        let sums = self
            .counters
            .sum_u64_per_cpu(&index.to_le_bytes())?
            .unwrap_or_default();
        Ok(CounterValue {
            packets: sums.first().copied().unwrap_or(0),
            bytes: sums.get(1).copied().unwrap_or(0),
        })
    }

    pub(crate) fn snapshot(&self, retval: u32, frame: Vec<u8>) -> Result<Snapshot, HarnessError> {
        Ok(Snapshot {
            frame,
            retval,
            table: self.table()?,
            globals: self.globals()?,
        })
    }
}

/// Where the two executions first disagreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the packet after which they disagree; `None` for the final
    /// counters.
    pub packet: Option<usize>,
    /// What differs (verdict, table, globals, counters).
    pub what: String,
    pub interp: String,
    pub kernel: String,
}

/// What a run that agreed went through, to judge how much it tested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: usize,
    /// Frames the kernel's test run refuses
    /// ([`packets::test_run_refuses`]): interpreter only.
    pub skipped: usize,
    /// Packets a row took (not the default).
    pub row_hits: usize,
    /// Packets whose flow read as expired (timeout fired).
    pub expirations: usize,
    /// Largest table seen.
    pub max_flows: usize,
    /// Flows the kernel evicted (`evict` tables), each replayed in the
    /// interpreter.
    pub evictions: usize,
    /// Of those, flows evicted while the table still had a free slot.
    pub early_evictions: usize,
    /// Packets whose evictions were not the interpreter's own choice (the
    /// least recently seen flow, one).
    pub other_victims: usize,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.packets += other.packets;
        self.skipped += other.skipped;
        self.row_hits += other.row_hits;
        self.expirations += other.expirations;
        self.max_flows = self.max_flows.max(other.max_flows);
        self.evictions += other.evictions;
        self.early_evictions += other.early_evictions;
        self.other_victims += other.other_victims;
    }
}

/// Run `packets` through `program` in both executions, comparing after
/// every packet. `Ok(Err(_))` is a disagreement; `Err(_)` a run that could
/// not be made.
pub fn compare(
    program: &Program,
    packets: &[Packet],
    options: &Options,
) -> Result<Result<Stats, Divergence>, HarnessError> {
    let kernel = Kernel::load(program, options)?;
    compare_loaded(program, &kernel, packets)
}

/// [`compare`] with a kernel program already loaded (fresh maps).
pub fn compare_loaded(
    program: &Program,
    kernel: &Kernel,
    packets: &[Packet],
) -> Result<Result<Stats, Divergence>, HarnessError> {
    compare_loaded_with(program, kernel, packets, &mut |_| Ok(()))
}

/// [`compare_loaded`], calling `before_packet(index)` before the kernel
/// runs each compared packet: to move the thread to another CPU (the
/// kernel's LRU keeps per-CPU lists), or to stage what another CPU would do.
pub fn compare_loaded_with(
    program: &Program,
    kernel: &Kernel,
    packets: &[Packet],
    before_packet: &mut dyn FnMut(usize) -> Result<(), HarnessError>,
) -> Result<Result<Stats, Divergence>, HarnessError> {
    let hook = kernel.output().hook;
    let mut machine = Machine::new(program);
    let mut stats = Stats::default();
    let mut table_full = 0u64;
    for (index, packet) in packets.iter().enumerate() {
        if packets::test_run_refuses(&packet.frame, hook).is_some() {
            // The interpreter must take it without panicking.
            machine
                .clone()
                .process(&packet.frame, TEST_RUN_IFINDEX, packet.now);
            stats.skipped += 1;
            continue;
        }
        let before = machine.clone();
        // The kernel first: its evictions are replayed in the interpreter.
        before_packet(index)?;
        let (retval, data_out) = kernel.run_out(&packet.frame, packet.now)?;
        let got = kernel.snapshot(retval, data_out)?;
        let victims = kernel_victims(program, machine.table(), &got.table, &packet.frame);
        let step = machine.process_evicting(&packet.frame, TEST_RUN_IFINDEX, packet.now, &victims);
        if let Some(problem) = eviction_problem(program, &victims, &step.evicted, &got) {
            return Ok(Err(Divergence {
                packet: Some(index),
                what: "eviction".to_string(),
                interp: format!(
                    "row {:?} ({:?}), {} flows before the packet",
                    step.row,
                    step.default_reason,
                    before.table().len()
                ),
                kernel: format!("{problem}\n{}", got.describe(hook)),
            }));
        }
        if !victims.is_empty() {
            stats.evictions += victims.len();
            if before.table().len() < program.capacity as usize {
                stats.early_evictions += victims.len();
            }
            let own = before
                .clone()
                .process(&packet.frame, TEST_RUN_IFINDEX, packet.now);
            if own.evicted != victims {
                stats.other_victims += 1;
            }
        }
        stats.packets += 1;
        if step.row.is_some() {
            stats.row_hits += 1;
        }
        if step.default_reason == Some(DefaultReason::TableFull) {
            table_full += 1;
        }
        if let Some(key) = &step.key {
            if before
                .table()
                .get(key)
                .is_some_and(|e| before.expired(e, packet.now))
            {
                stats.expirations += 1;
            }
        }
        let expected = Snapshot {
            retval: expected_retval(step.action, hook),
            table: interp_table(&machine),
            globals: machine.globals().to_vec(),
            frame: step.output(&packet.frame),
        };
        stats.max_flows = stats.max_flows.max(got.table.len());
        if got != expected {
            let what = [
                (got.retval != expected.retval, "verdict"),
                (got.table != expected.table, "state table"),
                (got.globals != expected.globals, "globals"),
                (got.frame != expected.frame, "output bytes"),
            ]
            .iter()
            .filter(|(differs, _)| *differs)
            .map(|(_, what)| *what)
            .collect::<Vec<_>>()
            .join(", ");
            return Ok(Err(Divergence {
                packet: Some(index),
                what,
                interp: format!(
                    "row {:?} ({:?}), {}",
                    step.row,
                    step.default_reason,
                    expected.describe(hook)
                ),
                kernel: got.describe(hook),
            }));
        }
    }
    if let Some(divergence) = compare_counters(&machine, kernel, table_full)? {
        return Ok(Err(divergence));
    }
    Ok(Ok(stats))
}

/// The flows the kernel evicted on this packet, sorted by key: those the
/// interpreter holds before it (the tables agree before every packet) and
/// the kernel's table lacks after it, except the packet's update key, whose
/// absence a deletion (elision) explains, and which no eviction may remove.
/// None unless the table evicts.
pub(crate) fn kernel_victims(
    program: &Program,
    table: &StateTable,
    after: &[FlowRecord],
    frame: &[u8],
) -> Vec<Key> {
    if program.full_policy != FullPolicy::EvictLeastRecent {
        return Vec::new();
    }
    let headers = flowstate_wire::parse(frame, TEST_RUN_IFINDEX);
    let written = Key::pack(&program.update_key, &headers);
    table
        .sorted()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| Some(*key) != written)
        .filter(|key| {
            after
                .binary_search_by(|r| r.key.as_slice().cmp(key.as_bytes()))
                .is_err()
        })
        .collect()
}

/// What breaks the full-table promise in the kernel's evictions on one
/// packet, if anything: the interpreter replays them only where the
/// promise allows one (when the packet inserts a new flow), so any
/// difference between the two lists is one the promise forbids.
pub(crate) fn eviction_problem(
    program: &Program,
    victims: &[Key],
    replayed: &[Key],
    got: &Snapshot,
) -> Option<String> {
    let capacity = program.capacity as usize;
    if got.table.len() > capacity {
        return Some(format!(
            "the kernel's table holds {} flows, more than its capacity {capacity}",
            got.table.len()
        ));
    }
    if victims == replayed {
        return None;
    }
    let keys = |keys: &[Key]| {
        keys.iter()
            .map(|k| hex(k.as_bytes()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(if replayed.is_empty() {
        format!(
            "the kernel evicted [{}] on a packet that inserted no new flow",
            keys(victims)
        )
    } else {
        format!(
            "the kernel evicted [{}], the interpreter had to evict [{}] to make room",
            keys(victims),
            keys(replayed)
        )
    })
}

pub(crate) fn compare_counters(
    machine: &Machine<'_>,
    kernel: &Kernel,
    table_full: u64,
) -> Result<Option<Divergence>, HarnessError> {
    let layout = &kernel.output().layout;
    let mut expected: Vec<(String, CounterValue)> = machine
        .row_hits()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                format!("row {i}"),
                CounterValue {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            )
        })
        .collect();
    let default = machine.default_hits();
    expected.push((
        "default".to_string(),
        CounterValue {
            packets: default.packets,
            bytes: default.bytes,
        },
    ));
    let mut got = Vec::with_capacity(expected.len());
    for i in 0..machine.row_hits().len() as u32 {
        got.push(kernel.counter(i)?);
    }
    got.push(kernel.counter(layout.counter_default)?);
    let contention = kernel.counter(layout.counter_contention)?;
    let full = kernel.counter(layout.counter_table_full)?;

    let mut problems = String::new();
    for ((name, want), have) in expected.iter().zip(&got) {
        if want != have {
            let _ = writeln!(problems, "{name}: interpreter {want:?}, kernel {have:?}");
        }
    }
    if contention.packets != 0 {
        let _ = writeln!(
            problems,
            "lock contention in a single-threaded run: {contention:?}"
        );
    }
    if full.packets != table_full {
        let _ = writeln!(
            problems,
            "table-full counter: interpreter refused {table_full}, kernel counted {}",
            full.packets
        );
    }
    Ok((!problems.is_empty()).then(|| Divergence {
        packet: None,
        what: "counters".to_string(),
        interp: format!("{expected:?}"),
        kernel: problems,
    }))
}

/// A disagreement (or a program the kernel refused), minimised, with
/// everything needed to reproduce it by hand.
#[derive(Debug)]
pub struct Failure {
    /// The (minimised) program's text.
    pub text: String,
    pub packets: Vec<Packet>,
    /// The disagreement on the minimised case, or the harness error.
    pub problem: String,
    /// Context: the seed, sizes before minimising.
    pub origin: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.origin)?;
        writeln!(f, "--- program ---\n{}", self.text)?;
        writeln!(f, "--- packets (now ns, frame hex) ---")?;
        for (i, p) in self.packets.iter().enumerate() {
            writeln!(f, "{i:4} {} {}", p.now, hex(&p.frame))?;
        }
        writeln!(f, "--- problem ---\n{}", self.problem)
    }
}

impl std::error::Error for Failure {}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.packet {
            Some(i) => writeln!(f, "after packet {i}: {} differ", self.what)?,
            None => writeln!(f, "after the last packet: {} differ", self.what)?,
        }
        writeln!(f, "interpreter:\n{}", self.interp)?;
        write!(f, "kernel:\n{}", self.kernel)
    }
}

/// Check `program` on `packets` in both executions; on a disagreement or a
/// load failure, minimise and report. `origin` says where the case came
/// from (e.g. the seed).
pub fn check(program: &Program, packets: &[Packet], origin: &str) -> Result<Stats, Failure> {
    let options = test_options(true);
    let outcome = compare(program, packets, &options);
    let kind = match &outcome {
        Ok(Ok(stats)) => return Ok(*stats),
        Ok(Err(_)) => FailureKind::Divergence,
        Err(HarnessError::Codegen(_)) => FailureKind::Codegen,
        Err(HarnessError::Load { .. }) => FailureKind::Load,
        Err(_) => FailureKind::Other,
    };
    // A program that does not compile or load fails without packets:
    // only the load is retried (verification can take seconds).
    let still_fails = |p: &Program, pk: &[Packet]| match kind {
        FailureKind::Divergence => kind.matches(&compare(p, pk, &test_options(true))),
        _ => match Kernel::load(p, &test_options(true)) {
            Ok(_) => false,
            Err(e) => kind.matches(&Err(e)),
        },
    };
    let (small, small_packets) = if kind == FailureKind::Other {
        (program.clone(), packets.to_vec())
    } else {
        minimise(program, packets, &still_fails)
    };
    let problem = match compare(&small, &small_packets, &options) {
        Ok(Ok(_)) => "(the minimised case passed on a re-run: flaky?)".to_string(),
        Ok(Err(d)) => d.to_string(),
        Err(e) => e.to_string(),
    };
    let original_problem = match outcome {
        Ok(Err(d)) => d.to_string(),
        Err(e) => e.to_string(),
        Ok(Ok(_)) => String::new(),
    };
    let origin = format!(
        "{origin}: {} rows / {} packets minimised to {} rows / {} packets\n--- original \
         problem ---\n{original_problem}\n--- original program ---\n{}",
        program.rows.len(),
        packets.len(),
        small.rows.len(),
        small_packets.len(),
        flowstate_lang::print::program(program)
    );
    Err(Failure {
        text: flowstate_lang::print::program(&small),
        packets: small_packets,
        problem,
        origin,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Divergence,
    Codegen,
    Load,
    Other,
}

impl FailureKind {
    fn matches(self, outcome: &Result<Result<Stats, Divergence>, HarnessError>) -> bool {
        matches!(
            (self, outcome),
            (FailureKind::Divergence, Ok(Err(_)))
                | (FailureKind::Codegen, Err(HarnessError::Codegen(_)))
                | (FailureKind::Load, Err(HarnessError::Load { .. }))
        )
    }
}

pub use flowstate_runtime::kernel_unavailable;

/// `true` (after printing `SKIP <test>: <reason>`) when kernel tests cannot
/// run here.
pub fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, kernel_unavailable())
}

/// Pin the calling thread to `cpu` (`sched_setaffinity`).
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it (it ignores CPUs past the set's size); pid 0 is the
    // calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
