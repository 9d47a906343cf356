//! flowstate-codegen: a checked program, compiled straight to eBPF.
//!
//! ```text
//!  ir::Program ──layout──▶ Layout + Frame ──lower──▶ Lowered ──emit──▶ asm::Program ──object──▶ ELF
//!   (checked)      maps, value struct,     state switch,     instructions      maps + BTF,
//!                  stack plan, BTF types   row runs, commits  (parse.rs inside)  relocations
//! ```
//!
//! - [`layout`]: map names and the byte layout of keys, flow entries,
//!   counters and events ([`Layout`], public for user space), and the plan
//!   of the 512-byte stack ([`layout::Frame`]). Holds after it: every slot
//!   the code uses has an aligned offset, and the frame fits (or
//!   [`check_limits`] says why not).
//! - [`lower`]: the table as a decision structure: one branch per state,
//!   rows in priority order, runs of exact tests on one field as binary
//!   searches, one commit block per distinct effect (action, updates, next
//!   state), shared by every row that has it. Holds after it: the next
//!   state of every commit is a constant.
//! - [`emit`]: instructions through flowstate-asm; the header parser is
//!   [`parse`]. Rows between searches are tested as runs that remember
//!   what a failed condition taught (a later row never tests it again);
//!   far jumps become `gotol`. Holds after it: labels resolve, every jump
//!   reaches, and a program the verifier rejects is a bug here (an
//!   internal error), never the user's.
//!
//! Verification cost: what keeps the verifier's walk linear in rows is
//! that paths of different rows look alike where they meet, so it prunes
//! them there: the row index of a shared commit is written where the
//! verifier tracks no constant, the binary search does not narrow the
//! field's slot, the restart path (the second, locked pass) makes the
//! verifier forget the field slots' values, and the `may_goto` spins fall
//! through on success, so the program after them is walked from their
//! first iteration, and tests read field and register slots through a
//! copy the verifier does not link back to the slot (so a range test does
//! not narrow the slot for the rows after it). 5,000 exact rows: 19k
//! slots, 89k instructions processed (the limit is a million); 5,000
//! range rows: 140k.
//!
//! The verifier also gives up on a path with more than 8,192 branches
//! pending, whatever its instruction budget: runs of rows testing one
//! field for values, ranges or sets are binary searches, and [`walk`]
//! estimates the pending branches of what is left so that `check_limits`
//! refuses a chain the kernel would.
//! - [`object`]: the ELF object through flowstate-obj.
//! - [`editor`]: not a stage but a second program for the same layout:
//!   the editor the control plane edits flows and globals through (see
//!   "Anyone else who writes" below).
//!
//! Per packet, the program follows DESIGN.md section 1 and the reference
//! interpreter (`flowstate-interp`) exactly; see [`emit`] for the register
//! conventions and the control flow.
//!
//! Concurrency (DESIGN.md 1.9): the first word of a flow entry is a
//! sequence number, odd while a writer holds it. Hash and LRU map
//! elements are recycled at once (preallocated free lists), so a pointer
//! from a lookup may, a moment later, be a free element or another
//! flow's; the protocol makes such a pointer harmless:
//! - Insert: with `BPF_NOEXIST`, held (a random odd word) while the kernel
//!   copies the value into the element and links it; then the inserter
//!   finds it by key and stores the next even number. A packet holding a
//!   pointer to the element's earlier life can neither take it nor copy a
//!   half-written entry meanwhile, and fails its cmpxchg afterwards (the
//!   number is random). `EEXIST` (a concurrent insert) and `EBUSY` (a
//!   bucket lock busy on this CPU) go round; any other failure means the
//!   table is full. (Before 6.4 an update's or delete's result has only
//!   its low 32 bits set: the code sign-extends them.)
//! - Read (first pass): a seqlock copy without locking (same even number
//!   before and after, 8 tries, then start over); a row that changes
//!   nothing but `last_seen` stores it directly (an aligned 8-byte store:
//!   at worst, into an element just recycled, it writes a `now` a few
//!   nanoseconds old), and packets that match no row write nothing.
//! - Write (first pass): one cmpxchg from the number read to the next odd
//!   one, so it fails if anyone wrote in between; programs that delete
//!   entries (elision) then check that the key still leads to the element
//!   (else the word is given back by cmpxchg). A failure starts over, once.
//! - Locked pass (after a restart, and every update-key write): one
//!   `may_goto` loop from the lookup (without `may_goto`: the first round
//!   inline, then up to 2 rounds each run whole, lookup, placeholder
//!   insert and take, inside a `bpf_loop` callback, see
//!   `emit/wait.rs`): take the word even -> odd by
//!   cmpxchg, then verify that the key still leads to the element and the
//!   word is still ours (else give it back and go round; a `bpf_loop`
//!   round verifies inside the callback, which holds the element pointer
//!   the caller does not get). A missing flow
//!   gets a held placeholder (state word `PLACEHOLDER_STATE`, random odd
//!   lock word, `BPF_NOEXIST`; a concurrent insert makes it fail and the
//!   loop goes round); the holder writes it, or deletes it when its row
//!   writes nothing or leaves an entry equal to a missing one. The wait
//!   lasts as long as it takes: the loop's budget is the kernel's (x86-64
//!   since 6.15: a quarter second per run); only a packet that spends it
//!   (an entry left held, which no writer does) gets the default action,
//!   counted in the `contention` counter.
//! - Delete (elision): only under the lock, the state word marked
//!   `DEAD_STATE` first (programs compiled before the locked-pass loop
//!   waited on a lock unless the entry was so marked), then deleted by
//!   key; the element is freed with its word odd, so no stale cmpxchg
//!   takes it.
//!
//! - Moved (a migrating reload, [`migrate`]): a flow moved to a new
//!   program's table leaves its old entry held for good, its state word
//!   [`migrate::MOVED_STATE`] (a tombstone is such an entry inserted held).
//!   A packet of the old program still running then fails its cmpxchg or
//!   its insert, starts over locking, and finds the entry held: programs
//!   built as a handoff ([`migrate::compile_handoff`]) see the mark there
//!   (after a fresh lookup: moved entries are never freed, so the element
//!   is the key's) and give the packet, untouched, to their successor
//!   with a tail call; it is then ordered after the move. Nothing is lost
//!   silently: without a successor the packet counts as contention, and
//!   programs not built as a handoff (plain ones, older builds) only wait
//!   on a held entry, which is why a migration runs the old program's
//!   handoff build first and waits for the older one's packets to end.
//!
//! Anyone else who writes a flows map (the control plane, a migration)
//! must follow the same rules: take the word even -> odd by cmpxchg (or
//! insert with `BPF_NOEXIST`), never replace an element with
//! `BPF_ANY`, delete only while holding the word. User space cannot do
//! that with the map syscalls (they copy or replace whole values), so the
//! control plane's edits run in the kernel: [`editor`] generates, for a
//! program's layout, an XDP program run with `BPF_PROG_TEST_RUN` (request
//! in, reply out through the packet's bytes) that goes through the same
//! [`emit`] pieces (`lock_loop` with a held placeholder for a missing
//! flow, `delete_held`, `unlock_entry`, `expiry_check`); built for a
//! kernel without `may_goto`, it waits in the same `bpf_loop` callbacks,
//! and comes with the BTF of its functions
//! ([`editor::Editor::functions`]), which the kernel needs to load them.
//! Global registers live in the object's `.data` (the `globals` variable,
//! one s64 value per global, starting at the declared values whoever loads
//! the object; an object built to reuse a pinned map declares a `globals`
//! map instead, see [`Options::globals_reused`]) and
//! use an atomic add (`g = g + e`) or a cmpxchg loop through `may_goto` (a
//! write that spends the budget is dropped); the editor sets one with an
//! atomic exchange. `bpf_spin_lock` is not
//! used: it is refused in LRU maps.
//!
//! Memory order, per access (`Target::weakly_ordered`; x86 code is
//! unchanged, arm64 gets the atomic forms):
//! - taking a word (cmpxchg), giving it back (cmpxchg), a global's
//!   cmpxchg or atomic add with fetch: fully ordered on both (arm64's JIT
//!   emits `casal`/`ldaddal` or an exclusive loop with `dmb ish`), so the
//!   holder's reads and writes stay after the take;
//! - releasing (the next even number): a plain store on x86 (TSO: stores
//!   are not reordered with earlier loads or stores); an atomic exchange
//!   on arm64 (a plain store, or a non-fetch atomic add, `stadd`, is not
//!   ordered there), so the entry's writes are seen before the even word;
//! - the seqlock read's two reads of the word: plain loads on x86 (loads
//!   are not reordered with loads); atomic fetch-adds of 0 on arm64, so
//!   the copy's plain loads can move neither before the first read nor
//!   after the second (each is acquire and release);
//! - the copy itself and a direct `last_seen` store: plain; the reads are
//!   validated by the second read, the store is the documented benign
//!   race below.
//!
//! Known limits: an LRU eviction
//! (`evict` tables) unlinks an element and hands it to the inserting flow,
//! which overwrites it, without taking its lock word, so a packet of the
//! evicted flow working on that element at the moment can read the new
//! flow's entry as its own or write into it. Measured in the worst case
//! (difftest `evict_race`: two CPUs, one flow each, a one-slot table, so
//! every insert evicts the flow the other CPU is working on): 29 to 873
//! packets in a million see another flow's entry (1-3% of evictions); no
//! entry is ever left held. With 4 to 64 slots and each CPU cycling
//! through flows of its own (4.9M packets, 23k evictions) none was seen:
//! the LRU passes over flows looked up lately unless it finds nothing
//! else. Checking that the key still leads to the
//! element after the first pass's copy and before a held write (commit
//! 3434e48, reverted) cut that to 4-49 in the same runs, at +25 ns a packet
//! (80 -> 105 ns), but cannot close it; closing it needs evictions under
//! the lock (a plain hash with our own eviction). Also: a stale pointer
//! whose element was recycled with, by chance, the same random word (1 in
//! 2^31) is taken for the old entry; a lock holder run by a plain
//! `BPF_PROG_TEST_RUN` runs with softirqs allowed (and may be preempted),
//! so a packet of the same flow processed by a softirq on the holder's
//! CPU while it keeps the word waits out its budget (contention); the
//! migration's mover keeps it for a few hundred nanoseconds per flow.
//!
//! Panic rule: [`compile`] and [`check_limits`] never panic on a program
//! produced by `flowstate_lang::compile`.

pub mod chain;
pub mod editor;
pub mod emit;
pub mod layout;
pub mod lower;
pub mod meta;
pub mod migrate;
pub mod object;
pub mod parse;
pub mod target;
pub mod walk;

use flowstate_lang::ir::{Hook, Program};

pub use layout::{EntryView, Event, Layout};
pub use target::Target;

/// Longest program accepted, in instruction slots. The verifier stops
/// after processing a million instructions; on large tables it processes
/// 4 to 6 per slot (measured on 6.18: 2,000 rows with a commit each,
/// 121k slots, 496k processed; 20,000 exact rows sharing one commit,
/// 96k slots, 580k; 5,000 rows testing a register, 76k slots, 513k; see
/// `examples/verifier_cost.rs`). This limit keeps room for shapes that
/// cost more per slot; a program past it is refused before the kernel
/// sees it.
pub const MAX_INSNS: usize = 100_000;

/// How to compile.
pub struct Options {
    /// Read `now` from the `clock` map instead of the kernel clock (tests
    /// write it before each packet).
    pub test_clock: bool,
    /// Per-flow locking. `false` only for the test that proves the
    /// concurrency test can fail.
    pub atomic: bool,
    /// Attach somewhere else than the program's `hook`.
    pub hook: Option<Hook>,
    /// The program's file: its text goes into the object's metadata (see
    /// [`meta`]), its name and lines into line_info (`bpftool prog dump
    /// xlated linum` then shows the `.fsm` lines). Without it, the
    /// metadata carries the program printed back to text, and the lines
    /// are named after the program and show the rows as printed.
    pub source: Option<SourceText>,
    /// The kernel (and CPU) to generate code for; the default is the
    /// newest. Commands that load pass the host's.
    pub target: Target,
    /// The globals' map already exists (pinned) and the loader reuses it.
    /// The object then declares it as a BTF array map named `globals` in
    /// `.maps`, whose value the code finds with a lookup, instead of the
    /// portable `.data` (the default): a loader initialises a `.data` map
    /// from the object's bytes even when it reuses one (aya 0.14 does),
    /// which would put the running values back to the initial ones.
    pub globals_reused: bool,
    /// A function of a service chain: wherever it gives the pass verdict
    /// it first tail-calls the next function through the chain's program
    /// array (see [`chain`]). `None`: a program of its own.
    pub chain: Option<chain::ChainLink>,
}

/// A program's file name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    pub file: String,
    pub text: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            test_clock: false,
            atomic: true,
            hook: None,
            source: None,
            target: Target::newest(),
            globals_reused: false,
            chain: None,
        }
    }
}

/// A compiled program.
#[derive(Debug, Clone)]
pub struct Output {
    /// The ELF object.
    pub object: Vec<u8>,
    /// The program's symbol in the object.
    pub program_name: String,
    /// Its section: `xdp` or `classifier`.
    pub section: String,
    pub hook: Hook,
    /// Disassembly annotated with source lines.
    pub listing: String,
    /// Instruction slots.
    pub insn_count: usize,
    pub layout: Layout,
}

#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The program is valid but does not fit the kernel's limits.
    #[error("{}", .0.join("\n"))]
    Limits(Vec<String>),
    /// The program cannot be emitted as written: a problem that is the
    /// user's, found only while emitting. (Unknown `redirect` interfaces
    /// are no longer one: names resolve when the program is loaded.)
    #[error("{0}")]
    Program(String),
    /// A bug in the code generator: emitted code does not assemble.
    #[error("internal error (a code generator bug): {0}")]
    Assembly(#[from] flowstate_asm::AsmError),
    /// A bug in the code generator: the object writer refused its input.
    #[error("internal error (a code generator bug): {0}")]
    Object(#[from] flowstate_obj::ObjError),
}

/// Compiles `program` to an ELF object that aya, `ip` and `tc` load.
pub fn compile(program: &Program, options: &Options) -> Result<Output, CodegenError> {
    compile_staging(program, options, testing::StagedConflict::None)
}

/// Builds that stage a race in the generated code, so that tests reach the
/// paths only real contention reaches otherwise. Never for real use: a
/// staged conflict changes what the program does.
#[doc(hidden)]
pub mod testing {
    /// What the generated code does to a flow entry between reading it
    /// and locking it (and before inserting a new one), on a packet's
    /// first pass only.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum StagedConflict {
        #[default]
        None,
        /// Another CPU completes a write: the sequence word moves on by
        /// 2 (or the flow appears, unlocked). The packet must start over
        /// and then apply its row exactly once.
        Writer,
        /// Another CPU takes the lock and keeps it: the word moves on by 1
        /// (or the flow appears, locked). The packet must start over, give
        /// up waiting, take the default action and write nothing.
        Holder,
    }

    /// The state word a lock holder writes into an entry it is about to
    /// delete; packets waiting for that entry's lock stop waiting.
    pub const DEAD_STATE: u32 = crate::emit::DEAD_STATE as u32;

    /// [`crate::compile`] with a staged conflict.
    pub fn compile_with_conflict(
        program: &flowstate_lang::ir::Program,
        options: &crate::Options,
        conflict: StagedConflict,
    ) -> Result<crate::Output, crate::CodegenError> {
        crate::compile_staging(program, options, conflict)
    }
}

fn compile_staging(
    program: &Program,
    options: &Options,
    conflict: testing::StagedConflict,
) -> Result<Output, CodegenError> {
    compile_parts(program, options, conflict, migrate::Variant::plain(program))
}

/// [`compile`] as one of the programs of a migrating reload (see
/// [`migrate`]).
fn compile_parts(
    program: &Program,
    options: &Options,
    conflict: testing::StagedConflict,
    variant: migrate::Variant,
) -> Result<Output, CodegenError> {
    let mut problems = static_limits(program, &options.target);
    let frame = layout::Frame::plan(&variant.frame_program, &options.target);
    let stack_limit = layout::stack_limit(&options.target);
    if frame.size > stack_limit && problems.is_empty() {
        problems.push(format!(
            "a migrating reload needs {} bytes of eBPF stack here (limit {}): reload in two \
             steps, or with fewer registers",
            frame.size, stack_limit
        ));
    }
    if !problems.is_empty() {
        return Err(CodegenError::Limits(problems));
    }
    let hook = variant.hook.or(options.hook).unwrap_or(program.hook);
    if let Some(message) = emit::rewrite::unsupported(program, hook) {
        return Err(CodegenError::Program(message));
    }
    let layout = Layout::new(program, options.test_clock);
    let lowered = lower::lower(program);
    let target = emit::Target {
        hook,
        clock: emit::clock_for(program, options.test_clock),
        atomic: options.atomic,
        conflict,
        features: options.target,
        globals_reused: options.globals_reused,
        chain: options.chain.filter(|_| !variant.role.is_mover()),
    };
    let code = match emit::emit(program, &target, &layout, &frame, &lowered, variant.role) {
        Ok(code) => code,
        Err(Ok(message)) => return Err(CodegenError::Program(message)),
        Err(Err(asm)) => return Err(CodegenError::Assembly(asm)),
    };
    if code.insns.len() > MAX_INSNS {
        return Err(CodegenError::Limits(vec![too_many_insns(code.insns.len())]));
    }
    let pending = walk::pending_branches(&code.insns);
    if std::env::var_os("FLOWSTATE_DEBUG_WALK").is_some() {
        eprintln!("pending branches (estimate): {pending}");
    }
    if pending > walk::PENDING_LIMIT {
        return Err(CodegenError::Limits(vec![too_many_pending(pending)]));
    }
    let name = layout::c_name(&program.name);
    let name = variant.symbol.unwrap_or(name);
    let mut extra_maps = variant.extra_maps;
    if target.chain.is_some() {
        extra_maps.push(chain::map_def());
    }
    let object = object::build(program, &layout, hook, &name, &code, extra_maps, options)?;
    let listing = flowstate_asm::listing(&code, &|map| object::map_name(&layout, map).to_string());
    Ok(Output {
        object,
        program_name: name,
        section: object::section_of(hook).section_name().to_string(),
        hook,
        listing,
        insn_count: code.insns.len(),
        layout,
    })
}

/// Whether `program`'s stack frame fits the eBPF stack on `target` (the
/// first limit a program with many registers, keys or field writes meets).
pub fn stack_fits(program: &Program, target: &Target) -> bool {
    layout::Frame::plan(program, target).size <= layout::stack_limit(target)
}

/// The limits check `flowstate check` runs without writing an object:
/// stack budget, key sizes, instruction budget.
pub fn check_limits(program: &Program) -> Result<(), Vec<String>> {
    check_limits_for(program, &Target::newest())
}

/// [`check_limits`] for code built for `target`.
pub fn check_limits_for(program: &Program, target: &Target) -> Result<(), Vec<String>> {
    let mut problems = static_limits(program, target);
    if problems.is_empty() {
        let options = Options {
            target: *target,
            ..Options::default()
        };
        match compile(program, &options) {
            Ok(_) => {}
            Err(CodegenError::Limits(more)) => problems.extend(more),
            Err(other) => problems.push(other.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn too_many_insns(count: usize) -> String {
    format!(
        "compiles to {count} eBPF instructions (limit {MAX_INSNS}): split the table or use \
         fewer states with wildcard rows"
    )
}

fn too_many_pending(pending: usize) -> String {
    format!(
        "one path through its table tests too many rows one after the other: the kernel's \
         verifier would keep about {pending} branches pending (it gives up past {}); rows that \
         each test one field for a value, a range or a set are searched, not chained, so group \
         rows by field, or split the table",
        walk::VERIFIER_PENDING_LIMIT
    )
}

/// Limits known before emitting code.
fn static_limits(program: &Program, target: &Target) -> Vec<String> {
    let mut problems = Vec::new();
    let lookup = Program::key_size(&program.lookup_key);
    let update = Program::key_size(&program.update_key);
    if lookup != update {
        problems.push(format!(
            "the update key takes {update} bytes and the lookup key {lookup}: both index one \
             table, so they must be the same size"
        ));
    }
    if program.states.is_empty() {
        problems.push("the program declares no state".to_string());
    }
    let frame = layout::Frame::plan(program, target);
    let stack_limit = layout::stack_limit(target);
    if frame.size > stack_limit {
        problems.push(format!(
            "needs {} bytes of eBPF stack (limit {}{}): {} registers take {} bytes (entry copy \
             and new values), {} globals {} bytes, keys {} bytes, expression temporaries {} \
             bytes; use fewer registers or simpler expressions",
            frame.size,
            stack_limit,
            if stack_limit < layout::STACK_LIMIT {
                " on this kernel: its lock loop waits in a bpf_loop callback, which takes a \
                 frame of its own"
            } else {
                ""
            },
            program.registers.len(),
            16 * program.registers.len(),
            program.globals.len(),
            16 * program.globals.len(),
            frame.key_area * if frame.update_key.is_some() { 2 } else { 1 },
            8 * frame.spill_count,
        ));
    }
    problems
}
