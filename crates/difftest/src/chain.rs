//! Chains in both executions: the functions compiled with
//! `flowstate_codegen::Options::chain` and linked through one program
//! array (each `pass` tail-calls the next function; the packet is run on
//! the head with `BPF_PROG_TEST_RUN`), against [`flowstate_interp::Chain`].
//!
//! After every packet the two must agree on the chain's verdict, on which
//! function ended the chain (in the kernel: the functions whose counters
//! grew by one packet are those the packet reached, a prefix of the chain),
//! and on every function's flow table and globals; after the last packet,
//! on every function's row counters. Tables that `evict` are compared as
//! [`crate::compare_loaded`] does, function by function.
//!
//! Functions may share one flows map ([`ChainCase::shares`]): the kernel
//! loads the second against the first's map, the interpreter lends it the
//! first's table. The evictions of a shared table cannot be told apart by
//! function, so the cases that share one keep it from filling
//! ([`share_layout`]): an eviction in the kernel then shows as a
//! difference in the tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use flowstate_codegen::chain::{ChainLink, CHAIN_MAP};
use flowstate_codegen::Options;
use flowstate_interp::{Chain, DefaultReason, Key};
use flowstate_lang::ir::{FullPolicy, Program};
use flowstate_runtime::{RawMap, UpdateMode};

use crate::{
    compare_counters, eviction_problem, expected_retval, kernel_victims, packets, retval_name,
    table_records, Divergence, FlowRecord, HarnessError, Kernel, Packet, Stats, TEST_RUN_IFINDEX,
};

/// A chain to compare: its functions in order, and which share a table.
#[derive(Debug, Clone)]
pub struct ChainCase {
    /// All with the same hook.
    pub programs: Vec<Program>,
    /// `(function, with)`: function `function` reads and writes the flows
    /// map of function `with` (an earlier one, which owns it).
    pub shares: Vec<(usize, usize)>,
}

/// What a chain run that agreed went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainStats {
    /// Summed over the functions (`packets`: packets the chain took;
    /// `row_hits`, `expirations`: over every function a packet reached).
    pub stats: Stats,
    /// Packets the chain ended at each function.
    pub ended_by: Vec<usize>,
}

impl ChainStats {
    pub fn add(&mut self, other: &ChainStats) {
        self.stats.add(&other.stats);
        if self.ended_by.len() < other.ended_by.len() {
            self.ended_by.resize(other.ended_by.len(), 0);
        }
        for (mine, theirs) in self.ended_by.iter_mut().zip(&other.ended_by) {
            *mine += theirs;
        }
    }
}

/// `program` made fit to share `owner`'s table: the same keys, states,
/// registers and full policy, and a capacity no test sequence fills
/// (`refuse` tables keep theirs: refusing is deterministic in both).
pub fn share_layout(owner: &mut Program, program: &mut Program) {
    if owner.full_policy == FullPolicy::EvictLeastRecent {
        owner.capacity = owner.capacity.max(SHARED_CAPACITY);
    }
    program.lookup_key = owner.lookup_key.clone();
    program.update_key = owner.update_key.clone();
    program.states = owner.states.clone();
    program.registers = owner.registers.clone();
    program.capacity = owner.capacity;
    program.full_policy = owner.full_policy;
}

/// More flows than any packet sequence of the suites makes.
const SHARED_CAPACITY: u32 = 4096;

/// The chain in the kernel: one loaded program per function, linked
/// through their shared program array.
pub struct KernelChain {
    functions: Vec<Kernel>,
}

impl KernelChain {
    /// Compile every function of `case` with [`crate::test_options`]
    /// (`atomic` as asked) and its link, load them sharing the program
    /// array (and the flows maps `case.shares` names), and fill the array.
    pub fn load(case: &ChainCase, atomic: bool) -> Result<KernelChain, HarnessError> {
        let pins = PinDir::new()?;
        let array_pin = pins.0.join(CHAIN_MAP);
        let mut functions: Vec<Kernel> = Vec::with_capacity(case.programs.len());
        for (position, program) in case.programs.iter().enumerate() {
            let options = Options {
                chain: Some(ChainLink::after(position as u32)),
                ..crate::test_options(atomic)
            };
            let flows_pin = |owner: usize| pins.0.join(format!("flows-{owner}"));
            let owner = case
                .shares
                .iter()
                .find(|(f, _)| *f == position)
                .map(|(_, with)| *with);
            let is_owner = case.shares.iter().any(|(_, with)| *with == position);
            let flows_map =
                flowstate_codegen::layout::Layout::new(program, options.test_clock).flows_map;
            let flows: Option<PathBuf> = match owner {
                Some(owner) => Some(flows_pin(owner)),
                None if is_owner => Some(flows_pin(position)),
                None => None,
            };
            let mut shared: Vec<(&str, &Path)> = vec![(CHAIN_MAP, &array_pin)];
            if let Some(path) = &flows {
                shared.push((flows_map, path));
            }
            functions.push(Kernel::load_sharing(program, &options, &shared)?);
        }
        let array = RawMap::from_pin(&array_pin)?;
        // The head is run directly; every later function waits in its slot.
        for (slot, kernel) in functions.iter().enumerate().skip(1) {
            use std::os::fd::AsRawFd;
            let fd = kernel
                .loaded()
                .program_fd(&kernel.output().program_name)?
                .as_raw_fd() as u32;
            array.update(
                &(slot as u32).to_le_bytes(),
                &fd.to_le_bytes(),
                UpdateMode::Any,
            )?;
        }
        Ok(KernelChain { functions })
    }

    pub fn functions(&self) -> &[Kernel] {
        &self.functions
    }

    /// Set every function's clock to `now` and run `frame` on the head;
    /// the chain's return code.
    pub fn run(&self, frame: &[u8], now: i64) -> Result<u32, HarnessError> {
        for function in &self.functions[1..] {
            function.set_clock(now)?;
        }
        self.functions[0].run(frame, now)
    }

    /// Packets function `index` took: its row and default counters summed.
    fn reached(&self, index: usize) -> Result<u64, HarnessError> {
        let kernel = &self.functions[index];
        let layout = &kernel.output().layout;
        let mut total = kernel.counter(layout.counter_default)?.packets;
        for row in 0..layout.counter_default {
            total += kernel.counter(row)?.packets;
        }
        Ok(total)
    }
}

/// A directory of this process's own on bpffs (unique per process and
/// call), removed on drop: where maps are pinned while the programs that
/// share them load (the programs hold their maps from then on).
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new() -> Result<PinDir, HarnessError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(flowstate_runtime::BPFFS_ROOT).join(format!(
            "flowstate-difftest-chain-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        flowstate_runtime::ensure_bpffs(flowstate_runtime::BPFFS_ROOT)?;
        std::fs::create_dir_all(&dir).map_err(|io| {
            HarnessError::Runtime(Box::new(flowstate_runtime::RuntimeError::Syscall {
                call: "mkdir",
                io,
            }))
        })?;
        Ok(PinDir(dir))
    }
}

impl PinDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One execution's view of the chain after a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainSnapshot {
    retval: u32,
    /// The function that ended the chain.
    ended_by: usize,
    /// Per function: its table (sorted by key) and globals.
    functions: Vec<(Vec<FlowRecord>, Vec<i64>)>,
}

impl ChainSnapshot {
    fn describe(&self, case: &ChainCase) -> String {
        let hook = case.programs[0].hook;
        let mut out = format!(
            "verdict {}, ended by function {}\n",
            retval_name(self.retval, hook),
            self.ended_by
        );
        for (i, (table, globals)) in self.functions.iter().enumerate() {
            let _ = writeln!(
                out,
                "function {i}: globals {globals:?}, table ({} entries):",
                table.len()
            );
            for record in table {
                let _ = writeln!(out, "  {record}");
            }
        }
        out
    }
}

/// Run `packets` through `case` in both executions, comparing after every
/// packet. `Ok(Err(_))` is a disagreement; `Err(_)` a run that could not
/// be made.
pub fn compare_chain(
    case: &ChainCase,
    packets: &[Packet],
    atomic: bool,
) -> Result<Result<ChainStats, Divergence>, HarnessError> {
    let kernel = KernelChain::load(case, atomic)?;
    let hook = case.programs[0].hook;
    let programs: Vec<&Program> = case.programs.iter().collect();
    let mut chain = Chain::new(&programs);
    for &(function, with) in &case.shares {
        chain
            .share_table(function, with)
            .map_err(|why| HarnessError::Share(format!("function {function}, {with}: {why}")))?;
    }
    let n = programs.len();
    let mut stats = ChainStats {
        stats: Stats::default(),
        ended_by: vec![0; n],
    };
    let mut table_full = vec![0u64; n];
    let mut reached: Vec<u64> = (0..n)
        .map(|i| kernel.reached(i))
        .collect::<Result<_, _>>()?;
    for (index, packet) in packets.iter().enumerate() {
        if packets::test_run_refuses(&packet.frame, hook).is_some() {
            chain
                .clone()
                .process(&packet.frame, TEST_RUN_IFINDEX, packet.now);
            stats.stats.skipped += 1;
            continue;
        }
        let before = chain.clone();
        let retval = kernel.run(&packet.frame, packet.now)?;
        let mut got = ChainSnapshot {
            retval,
            ended_by: 0,
            functions: Vec::with_capacity(n),
        };
        let mut kernel_ended = None;
        for (i, function) in kernel.functions().iter().enumerate() {
            got.functions.push((function.table()?, function.globals()?));
            let now_reached = kernel.reached(i)?;
            let grew = now_reached - reached[i];
            reached[i] = now_reached;
            // The functions reached must be a prefix, each taking the packet once.
            match (grew, kernel_ended) {
                (1, None) => got.ended_by = i,
                (0, None) => kernel_ended = Some(i),
                (0, Some(_)) => {}
                _ => {
                    return Ok(Err(Divergence {
                        packet: Some(index),
                        what: "functions reached".to_string(),
                        interp: "each function takes a packet at most once, the reached ones \
                                 a prefix of the chain"
                            .to_string(),
                        kernel: format!(
                            "function {i}'s counters grew by {grew} (functions before it \
                             stopped at {kernel_ended:?})"
                        ),
                    }))
                }
            }
        }
        // Evictions, function by function (shared tables do not fill).
        let victims: Vec<Vec<Key>> = (0..n)
            .map(|i| {
                if case.shares.iter().any(|(f, w)| *f == i || *w == i) {
                    return Vec::new();
                }
                kernel_victims(
                    programs[i],
                    before.table(i),
                    &got.functions[i].0,
                    &packet.frame,
                )
            })
            .collect();
        let step = chain.process_evicting(&packet.frame, TEST_RUN_IFINDEX, packet.now, &victims);
        for i in 0..n {
            let replayed = step.steps.get(i).map_or(&[][..], |s| s.evicted.as_slice());
            let capacity_check = crate::Snapshot {
                retval,
                table: got.functions[i].0.clone(),
                globals: Vec::new(),
                frame: Vec::new(),
            };
            if let Some(problem) =
                eviction_problem(programs[i], &victims[i], replayed, &capacity_check)
            {
                return Ok(Err(Divergence {
                    packet: Some(index),
                    what: format!("eviction in function {i}"),
                    interp: format!("{} flows before the packet", before.table(i).len()),
                    kernel: format!("{problem}\n{}", got.describe(case)),
                }));
            }
            stats.stats.evictions += victims[i].len();
        }
        stats.stats.packets += 1;
        stats.ended_by[step.ended_by()] += 1;
        for (i, one) in step.steps.iter().enumerate() {
            if one.row.is_some() {
                stats.stats.row_hits += 1;
            }
            if one.default_reason == Some(DefaultReason::TableFull) {
                table_full[i] += 1;
            }
            if let Some(key) = &one.key {
                if before
                    .table(i)
                    .get(key)
                    .is_some_and(|e| before.machine(i).expired(e, packet.now))
                {
                    stats.stats.expirations += 1;
                }
            }
        }
        let expected = ChainSnapshot {
            retval: expected_retval(step.action(), hook),
            ended_by: step.ended_by(),
            functions: (0..n)
                .map(|i| {
                    (
                        table_records(chain.table(i)),
                        chain.machine(i).globals().to_vec(),
                    )
                })
                .collect(),
        };
        for (table, _) in &got.functions {
            stats.stats.max_flows = stats.stats.max_flows.max(table.len());
        }
        if got != expected {
            let mut what = Vec::new();
            if got.retval != expected.retval {
                what.push("verdict".to_string());
            }
            if got.ended_by != expected.ended_by {
                what.push("the function that ended the chain".to_string());
            }
            for (i, (g, e)) in got.functions.iter().zip(&expected.functions).enumerate() {
                if g.0 != e.0 {
                    what.push(format!("function {i}'s state table"));
                }
                if g.1 != e.1 {
                    what.push(format!("function {i}'s globals"));
                }
            }
            let rows: Vec<String> = step
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| format!("function {i}: row {:?} ({:?})", s.row, s.default_reason))
                .collect();
            return Ok(Err(Divergence {
                packet: Some(index),
                what: what.join(", "),
                interp: format!("{}\n{}", rows.join("\n"), expected.describe(case)),
                kernel: got.describe(case),
            }));
        }
    }
    for (i, refused) in table_full.iter().enumerate() {
        if let Some(mut divergence) =
            compare_counters(chain.machine(i), &kernel.functions()[i], *refused)?
        {
            divergence.what = format!("function {i}'s counters");
            return Ok(Err(divergence));
        }
    }
    Ok(Ok(stats))
}

/// A disagreement in a chain (or a load failure), with everything needed to
/// reproduce it: every function's text and the packets. Not minimised.
pub fn check_chain(
    case: &ChainCase,
    packets: &[Packet],
    origin: &str,
) -> Result<ChainStats, crate::Failure> {
    let problem = match compare_chain(case, packets, true) {
        Ok(Ok(stats)) => return Ok(stats),
        Ok(Err(d)) => d.to_string(),
        Err(e) => e.to_string(),
    };
    let text = case
        .programs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("# function {i}\n{}", flowstate_lang::print::program(p)))
        .collect::<Vec<_>>()
        .join("\n");
    Err(crate::Failure {
        text,
        packets: packets.to_vec(),
        problem,
        origin: format!(
            "{origin}: chain of {}, shares {:?}",
            case.programs.len(),
            case.shares
        ),
    })
}
