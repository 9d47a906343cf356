//! Stage 3: the lowered program as eBPF instructions.
//!
//! Register conventions, fixed for the whole program:
//!
//! | register | holds |
//! | --- | --- |
//! | R6 | the context (`xdp_md` / `__sk_buff`), set by the parser |
//! | R7 | the flow entry being worked on (or 0); in the action tails, the counter index (the row, or a default counter) |
//! | R8 | `now` |
//! | R9 | the parser's presence bitmask; in the event code, the ring buffer record |
//! | R0-R5 | scratch: helper arguments and the expression evaluator |
//!
//! Everything else lives in the stack frame planned by [`Frame`]. A row
//! that jumps to a commit block other rows share first writes its index
//! to the frame's `row_index` slot; the block reads it back for the
//! counters and events.
//!
//! Jumps: unconditional ones are `ja`, or `gotol` (32-bit offset, cpu
//! v4) past half the 16-bit range; conditional ones that a pass finds out
//! of that reach are emitted again as a short skip over a `gotol` (see
//! the function `emit`).
//!
//! Control flow: entry (parse, clock, keys) -> `again` (lookup, lock,
//! view, expiry) -> state switch -> row tests -> commit blocks -> action
//! tails (counters, event, verdict). Every way out that gives the default
//! action goes through a small block that sets the counter index first.

use std::collections::{BTreeSet, HashMap, VecDeque};

use flowstate_asm::{
    AsmError, Assembler, AtomicOp, Helper, Insn, JmpOp, Label, MapRef, Operand,
    Program as AsmProgram, Reg, Size,
};
use flowstate_lang::ir::{
    Action, BinOp, CmpOp, CondMatch, ControllerThen, Expr, GlobalId, Hook, Pattern, Program,
    RegTarget, Row, StateId,
};
use flowstate_lang::print;
use flowstate_wire::Field;

use crate::layout::{
    self, Frame, Layout, EVAL_REGISTERS, EVENT_HEAD_BYTES, EVENT_ROW_DEFAULT, LOCK_OFFSET,
    REGISTERS_OFFSET, STATE_OFFSET,
};
use crate::lower::{condition_key, row_presence, Case, Commit, Decision, Lowered, RowTest};
use crate::parse::{emit_parse, ParseRequest};
use crate::testing::StagedConflict;

pub(crate) mod chain;
pub(crate) mod migrate;

use migrate::Role;
use Reg::*;

mod division;
mod editor;
mod meta;
mod redirect;
pub(crate) mod rewrite;

pub(crate) use meta::META;
pub(crate) use redirect::PORTS;
mod wait;

pub(crate) use editor::emit_editor;

const CTX: Reg = R6;
const ENTRY: Reg = R7;
const NOW: Reg = R8;
const PRESENCE: Reg = R9;

/// The evaluator's registers, by depth. R0 comes last so that shallow
/// expressions never touch it.
const POOL: [Reg; EVAL_REGISTERS] = [R1, R2, R3, R4, R5, R0];

/// Attempts at an unlocked copy of a flow's entry before the packet
/// starts over, locking first (and then waits as long as it takes).
pub(crate) const LOCK_TRIES: usize = 8;
/// The state word of an entry its lock holder is deleting (no state has
/// this number: state ids are 16 bits). A packet waiting for the lock of
/// an entry marked so stops waiting for a lock no one will release.
pub(crate) const DEAD_STATE: i32 = 0x7fff_ffff;
/// The state word of a placeholder: an entry a packet's locked pass (or
/// the editor) inserted, held, for a flow that had none. Its holder
/// either writes the entry or deletes it; no one else ever sees it
/// unlocked.
pub(crate) const PLACEHOLDER_STATE: i32 = 0x7fff_fffe;

/// What [`Emitter::lock_loop`] does when the key has no entry.
#[derive(Clone, Copy)]
pub(crate) enum Missing {
    /// Jump there with `ENTRY` = 0.
    Goto(Label),
    /// Insert a held placeholder and jump there holding it.
    Placeholder(Label),
}

const BPF_NOEXIST: i32 = 1;
const EEXIST: i32 = 17;
/// The kernel's `EBUSY`: a map's bucket lock already taken on this CPU
/// (a program run inside another's map update there). Like `EEXIST`, it
/// means go round; any other failure of an insert means the table is full.
const EBUSY: i32 = 16;

const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
/// `pass` at TC: TCX_NEXT / TC_ACT_UNSPEC, so the next program on the
/// hook (TCX chain or clsact filter list) still sees the packet; at the
/// end of the chain the kernel treats it as TC_ACT_OK (docs/language.md).
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
/// `struct __sk_buff::ifindex`.
const SKB_IFINDEX: i16 = 40;

/// Map ids used in `ld_map_fd`; their names come from the [`Layout`].
pub(crate) struct Maps {
    pub flows: MapRef,
    pub globals: MapRef,
    pub counters: MapRef,
    pub events: MapRef,
    pub clock: MapRef,
}

pub(crate) const MAPS: Maps = Maps {
    flows: MapRef(0),
    globals: MapRef(1),
    counters: MapRef(2),
    events: MapRef(3),
    clock: MapRef(4),
};

/// How `now` is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// The program never reads the clock.
    None,
    /// `bpf_ktime_get_coarse_ns`: enough for timeouts.
    Coarse,
    /// `bpf_ktime_get_ns`: `now` appears in an expression.
    Precise,
    /// Read from the `clock` map (tests).
    TestMap,
}

pub(crate) fn clock_for(program: &Program, test_clock: bool) -> Clock {
    if test_clock {
        Clock::TestMap
    } else if layout::reads_now(program) {
        Clock::Precise
    } else if program.states.iter().any(|s| s.timeout.is_some()) {
        Clock::Coarse
    } else {
        Clock::None
    }
}

/// What the emitter needs besides the program.
pub(crate) struct Target {
    pub hook: Hook,
    pub clock: Clock,
    pub atomic: bool,
    /// A race staged by the code itself (tests only).
    pub conflict: StagedConflict,
    /// What the code may use (see [`crate::target`]).
    pub features: crate::Target,
    /// The globals are a map found by lookup, not `.data` (see
    /// [`crate::Options::globals_reused`]).
    pub globals_reused: bool,
    /// A chained function: `pass` continues in the next (see
    /// [`crate::chain`]).
    pub chain: Option<crate::chain::ChainLink>,
}

/// Where an expression's operands come from.
#[derive(Clone, Copy)]
struct EvalEnv {
    /// Register initial values: an absent field reads 0.
    absent_reads_zero: bool,
    /// A global read from a stack slot instead of the globals map (its
    /// value as the compare-and-swap expects it).
    global_override: Option<(GlobalId, i16)>,
}

const ROW_ENV: EvalEnv = EvalEnv {
    absent_reads_zero: false,
    global_override: None,
};

pub(crate) struct Emitter<'a> {
    asm: Assembler,
    program: &'a Program,
    target: &'a Target,
    layout: &'a Layout,
    frame: &'a Frame,
    lowered: &'a Lowered,
    same_keys: bool,
    controller: bool,
    again: Label,
    no_key: Label,
    no_match: Label,
    contention: Label,
    table_full: Label,
    restart: Label,
    tails: Vec<(Action, Label)>,
    commit_labels: Vec<Label>,
    /// The first problem found that is the user's (none is found while
    /// emitting today; kept so one has a way out).
    error: Option<String>,
    /// Unconditional jumps resolved after assembly (see [`Emitter::goto`]).
    gotos: Vec<(usize, Label)>,
    /// Conditional jumps, numbered in emission order; the ones in
    /// `long_sites` take the long form (see [`Emitter::jmp`]).
    site_count: usize,
    long_sites: BTreeSet<usize>,
    /// Short conditional jumps emitted: (site, slot, target).
    short_sites: Vec<(usize, usize, Label)>,
    /// What this program is in a migrating reload (see [`migrate`]).
    role: Role<'a>,
    /// Handoff programs: where a packet goes when its flow has moved.
    handoff: Label,
    /// `bpf_loop` callbacks to emit after the program, by the map whose
    /// lock words they wait on (see [`wait`]).
    callbacks: Vec<(wait::Callback, Label)>,
}

/// Longest 16-bit jump emitted, in slots. The kernel rewrites some
/// instructions into several (inlined map lookups, division checks) after
/// it reads the program, and refuses a program where that pushes a 16-bit
/// offset out of range ("cannot be patched due to 16-bit range"), so
/// jumps keep half the range in reserve.
const SHORT_REACH: i64 = i16::MAX as i64 / 2;

/// What one emission pass gives.
enum Pass {
    Done(AsmProgram),
    /// Conditional jumps (sites) whose targets are out of 16-bit reach:
    /// emit again with these in the long form.
    Relax(Vec<usize>),
}

/// Emits the program. Conditional jumps are 16-bit; the few that a large
/// table puts out of reach are found after a pass and emitted again as a
/// short skip over a `gotol` (code only grows, so passes converge; each
/// adds at least one site). Unconditional jumps need no second pass: `ja`
/// and `gotol` take one slot each, chosen once offsets are known.
/// `Err(Ok(message))` is a user error (see `Emitter::error`),
/// `Err(Err(..))` an internal one.
/// `role`: what the program is in a migrating reload ([`Role::Plain`]
/// for a program of its own).
pub(crate) fn emit(
    program: &Program,
    target: &Target,
    layout: &Layout,
    frame: &Frame,
    lowered: &Lowered,
    role: Role,
) -> Result<AsmProgram, Result<String, AsmError>> {
    let mut long_sites = BTreeSet::new();
    loop {
        let mut emitter = Emitter::new(program, target, layout, frame, lowered);
        emitter.role = role;
        emitter.long_sites = long_sites.clone();
        match emitter.run()? {
            Pass::Done(code) => return Ok(code),
            Pass::Relax(sites) => long_sites.extend(sites),
        }
    }
}

impl<'a> Emitter<'a> {
    pub fn new(
        program: &'a Program,
        target: &'a Target,
        layout: &'a Layout,
        frame: &'a Frame,
        lowered: &'a Lowered,
    ) -> Emitter<'a> {
        let mut asm = Assembler::new();
        let commit_labels = lowered.commits.iter().map(|_| asm.new_label()).collect();
        Emitter {
            again: asm.new_label(),
            no_key: asm.new_label(),
            no_match: asm.new_label(),
            contention: asm.new_label(),
            table_full: asm.new_label(),
            restart: asm.new_label(),
            handoff: asm.new_label(),
            asm,
            program,
            target,
            layout,
            frame,
            lowered,
            same_keys: program.lookup_key == program.update_key,
            controller: layout.events_map.is_some(),
            tails: Vec::new(),
            commit_labels,
            error: None,
            gotos: Vec::new(),
            site_count: 0,
            long_sites: BTreeSet::new(),
            short_sites: Vec::new(),
            role: Role::Plain,
            callbacks: Vec::new(),
        }
    }

    /// One emission pass (see [`emit`]).
    fn run(mut self) -> Result<Pass, Result<String, AsmError>> {
        if let Role::Mover(conversion) = self.role {
            self.mover(conversion);
            return self.finish();
        }
        self.reference_metadata();
        self.entry();
        self.pull_prologue();
        self.lookup_and_view();
        self.state_switch();
        for index in 0..self.lowered.commits.len() {
            self.commit(index);
        }
        self.restart_block();
        self.default_blocks();
        self.action_tails();
        self.handoff_block();
        self.finish()
    }

    /// The end of a pass: jump reaches checked (sites out of 16-bit reach
    /// send the emission round again, see [`emit`]), then the code
    /// assembled and the far `goto`s made `gotol`.
    fn finish(mut self) -> Result<Pass, Result<String, AsmError>> {
        self.wait_callbacks();
        if let Some(message) = self.error {
            return Err(Ok(message));
        }
        let offset = |asm: &Assembler, slot: usize, label: Label| {
            asm.label_slot(label)
                .map(|target| target as i64 - slot as i64 - 1)
        };
        let far: Vec<usize> = self
            .short_sites
            .iter()
            .filter(|(_, slot, label)| {
                offset(&self.asm, *slot, *label).is_some_and(|o| o.abs() > SHORT_REACH)
            })
            .map(|(site, _, _)| *site)
            .collect();
        if !far.is_empty() {
            return Ok(Pass::Relax(far));
        }
        let gotos: Vec<(usize, Option<i64>)> = self
            .gotos
            .iter()
            .map(|&(slot, label)| (slot, offset(&self.asm, slot, label)))
            .collect();
        let mut code = self.asm.finish().map_err(Err)?;
        for (slot, offset) in gotos {
            // An unbound label was reported by `finish` already.
            let Some(offset) = offset else { continue };
            let insn = &mut code.insns[slot];
            match i16::try_from(offset) {
                Ok(off) if i64::from(off).abs() <= SHORT_REACH => insn.off = off,
                _ => {
                    *insn = Insn::gotol(i32::try_from(offset).map_err(|_| {
                        Err(AsmError::OffsetOutOfRange {
                            slot,
                            target: (slot as i64 + 1 + offset) as usize,
                            offset,
                            bits: 32,
                        })
                    })?);
                }
            }
        }
        Ok(Pass::Done(prune_unreachable(code)))
    }

    /// `goto label`, at any distance: `ja` when the offset fits 16 bits,
    /// else `gotol` (same size, so the choice waits for the offsets).
    fn goto(&mut self, label: Label) {
        let slot = self.asm.slot();
        self.emit(Insn::ja(0));
        self.gotos.push((slot, label));
    }

    /// `if dst op src goto label`. Short (one slot) unless an earlier pass
    /// found this site out of reach; then `if !(dst op src) goto +1;
    /// gotol label` (`jset` has no negation: it hops over a `ja` instead).
    fn jmp(&mut self, op: JmpOp, dst: Reg, src: impl Into<Operand>, label: Label) {
        let src = src.into();
        let site = self.site_count;
        self.site_count += 1;
        if self.long_sites.contains(&site) {
            match op.negate() {
                Some(negated) => self.emit(Insn::jmp(negated, dst, src, 1)),
                None => {
                    self.emit(Insn::jmp(op, dst, src, 1));
                    self.emit(Insn::ja(1));
                }
            }
            self.goto(label);
        } else {
            self.short_sites.push((site, self.asm.slot(), label));
            self.asm.jmp(op, dst, src, label);
        }
    }

    // ---- small helpers ----

    fn emit(&mut self, insn: Insn) {
        self.asm.emit(insn);
    }

    fn label(&mut self) -> Label {
        self.asm.new_label()
    }

    /// `reg = value` for any 64-bit constant.
    fn mov_const(&mut self, reg: Reg, value: i64) {
        match i32::try_from(value) {
            Ok(imm) => self.emit(Insn::mov64(reg, imm)),
            Err(_) => self.asm.ld_imm64(reg, value as u64),
        }
    }

    /// `if reg op value goto target`, `value` as a 64-bit pattern;
    /// `scratch` holds constants that do not fit an immediate.
    fn jmp_const(&mut self, op: JmpOp, reg: Reg, value: u64, target: Label, scratch: Reg) {
        // Immediates are sign-extended: a value fits if it reads back the same.
        match i32::try_from(value as i64) {
            Ok(imm) => self.jmp(op, reg, imm, target),
            Err(_) => {
                self.asm.ld_imm64(scratch, value);
                self.jmp(op, reg, scratch, target);
            }
        }
    }

    /// `reg += value`, any 64-bit constant.
    fn add_const(&mut self, reg: Reg, value: i64, scratch: Reg) {
        if value == 0 {
            return;
        }
        match i32::try_from(value) {
            Ok(imm) => self.emit(Insn::add64(reg, imm)),
            Err(_) => {
                self.asm.ld_imm64(scratch, value as u64);
                self.emit(Insn::add64(reg, scratch));
            }
        }
    }

    /// `reg &= value`, any 64-bit mask.
    fn and_const(&mut self, reg: Reg, value: u64, scratch: Reg) {
        match i32::try_from(value as i64) {
            Ok(imm) => self.emit(Insn::and64(reg, imm)),
            Err(_) => {
                self.asm.ld_imm64(scratch, value);
                self.emit(Insn::and64(reg, scratch));
            }
        }
    }

    fn load_stack(&mut self, reg: Reg, offset: i16) {
        self.emit(Insn::ldx(Size::DW, reg, R10, offset));
    }

    /// Loads a slot (a field, a register of the view) for a test or an
    /// expression that must not teach the verifier the slot's value. A
    /// register loaded from the stack shares its identity with the slot,
    /// so a comparison (a row's test, or the branch inside `min`/`max`)
    /// would narrow both; then paths that took different branches reach
    /// the next row with different ranges for the slot, never look
    /// alike, and the verifier's walk grows with the square of the rows
    /// (65 range rows passed its million-instruction limit; an 11-row
    /// program with `max(r3, r1)` in conditions walked 650k). An ALU op
    /// gives the register a new identity and leaves the value as it is.
    /// `now` is copied the same way (`eval`), as `NOW` lives in its
    /// register for the whole program.
    fn load_untracked(&mut self, reg: Reg, offset: i16) {
        self.load_stack(reg, offset);
        self.emit(Insn::or64(reg, 0));
    }

    fn store_stack(&mut self, offset: i16, reg: Reg) {
        self.emit(Insn::stx(Size::DW, R10, reg, offset));
    }

    /// `reg = r10 + offset`: a pointer to a stack area for a helper.
    fn stack_ptr(&mut self, reg: Reg, offset: i16) {
        self.emit(Insn::mov64(reg, R10));
        self.emit(Insn::add64(reg, i32::from(offset)));
    }

    fn call(&mut self, helper: Helper) {
        self.emit(Insn::call(helper));
        if helper == Helper::MAP_UPDATE_ELEM || helper == Helper::MAP_DELETE_ELEM {
            // Before 6.4 the verifier turns these calls into direct calls
            // of the map's own function, which returned an `int`: only the
            // low 32 bits of R0 were set, so -EEXIST read as 4294967279
            // and compared unequal to -17 (an insert that lost a race
            // counted as a full table on Debian's 6.1). Sign-extend the low
            // half: a no-op where R0 was whole.
            self.emit(Insn::alu64(flowstate_asm::AluOp::Lsh, R0, 32));
            self.emit(Insn::alu64(flowstate_asm::AluOp::Arsh, R0, 32));
        }
    }

    /// `R0 = map_lookup_elem(map, r10 + key)`.
    fn lookup(&mut self, map: MapRef, key: i16) {
        self.asm.ld_map_fd(R1, map);
        self.stack_ptr(R2, key);
        self.call(Helper::MAP_LOOKUP_ELEM);
    }

    /// `R0 = map_lookup_elem(map, &index)` for an array.
    fn lookup_index(&mut self, map: MapRef, index: i32) {
        self.emit(Insn::st(Size::W, R10, self.frame.scratch_key, index));
        self.lookup(map, self.frame.scratch_key);
    }

    /// `R7 = counter index; goto tail of action`.
    fn goto_tail(&mut self, counter: u32, action: &Action) {
        self.emit(Insn::mov64(ENTRY, counter as i32));
        let tail = self.tail(action);
        self.goto(tail);
    }

    fn tail(&mut self, action: &Action) -> Label {
        if let Some((_, label)) = self.tails.iter().find(|(a, _)| a == action) {
            return *label;
        }
        let label = self.label();
        self.tails.push((action.clone(), label));
        label
    }

    /// Finds the flow under the key at `key` and takes its lock, as one
    /// `may_goto` loop that starts from the lookup each time round: an
    /// entry deleted or replaced while the packet waits is looked up
    /// again, never waited on. The lock word is a sequence number, odd
    /// while a writer holds it; it is taken from even to odd by cmpxchg,
    /// and then verified: the key must still lead to this element (map
    /// elements are recycled at once, so a pointer from an earlier lookup
    /// may now be another flow's or free) and the word must still be the
    /// one taken; if not, the word is given back by cmpxchg and the loop
    /// goes round. Falls through holding the lock (`ENTRY` the element,
    /// the `seq` slot the even number taken) when the entry exists. A
    /// missing entry, per `missing`: jump away with `ENTRY` = 0, or
    /// insert a held placeholder (state [`PLACEHOLDER_STATE`]) with
    /// `BPF_NOEXIST`, which a concurrent insert makes fail (then round
    /// again), and jump to the label holding it. The default action,
    /// counted as contention, only once the run's `may_goto` budget is
    /// spent (a holder keeps a lock for a few dozen instructions).
    fn lock_loop(&mut self, key: i16, missing: Missing) {
        self.start_waits(wait::LOCK_ROUNDS);
        self.lock_loop_sharing_budget(key, missing);
    }

    /// [`Emitter::lock_loop`] inside another waiting loop: the two share
    /// one budget, started before the outer loop (a loop nested in a
    /// loop with a budget of its own has none the verifier can see).
    fn lock_loop_sharing_budget(&mut self, key: i16, missing: Missing) {
        let moved = self.moved_target();
        self.lock_loop_in(MAPS.flows, key, missing, moved);
    }

    /// [`Emitter::lock_loop`] in `map`; with `moved`, an entry held and
    /// marked [`migrate::MOVED_STATE`] (see [`migrate`]) jumps there
    /// instead of being waited on. The caller starts the waits' budget
    /// ([`Emitter::start_waits`]).
    fn lock_loop_in(&mut self, map: MapRef, key: i16, missing: Missing, moved: Option<Label>) {
        let frame = self.frame;
        let spin = self.label();
        let busy = self.label();
        let release = self.label();
        let absent = self.label();
        let locked = self.label();
        self.asm
            .annotate("find and lock the entry (spin: lookup, even -> odd by cmpxchg, verify)");
        // A loop through `may_goto`: the verifier checks one iteration and
        // finds the next at the same state (the word is read from the map
        // again, an unknown number, and nothing counts). Success falls
        // through, so the verifier walks the rest of the program from the
        // first iteration, before the loop, and prunes the later ones.
        self.asm.bind(spin);
        self.lookup(map, key);
        self.jmp(JmpOp::Eq, R0, 0, absent);
        self.emit(Insn::mov64(ENTRY, R0));
        self.emit(Insn::ldx(Size::W, R0, ENTRY, LOCK_OFFSET as i16));
        let odd = self.label();
        self.jmp(JmpOp::Set, R0, 1, if moved.is_some() { odd } else { busy });
        self.emit(Insn::mov64(R3, R0));
        self.emit(Insn::mov64(R1, R0));
        self.emit(Insn::add64(R1, 1));
        self.emit(Insn::atomic32(
            AtomicOp::CmpXchg,
            ENTRY,
            R1,
            LOCK_OFFSET as i16,
        ));
        self.jmp(JmpOp::Ne, R0, R3, busy);
        self.store_stack(frame.seq, R3);
        self.asm
            .annotate("still this flow's element, and still our word?");
        self.lookup(map, key);
        self.jmp(JmpOp::Eq, R0, 0, release);
        self.jmp(JmpOp::Ne, R0, ENTRY, release);
        self.emit(Insn::ldx(Size::W, R1, ENTRY, LOCK_OFFSET as i16));
        self.load_stack(R2, frame.seq);
        self.emit(Insn::add64(R2, 1));
        // Not our word: an insert overwrote it; the element is not ours.
        self.jmp(JmpOp::Ne, R1, R2, busy);
        self.goto(locked);
        // A wait's callback took the word (see `lock_round`): the element
        // is the one the key leads to now, if it still holds our number
        // (else it was evicted and taken by an insert, which overwrote
        // the word: nothing to give back).
        let taken = self.label();
        self.asm.bind(taken);
        self.lookup(map, key);
        self.jmp(JmpOp::Eq, R0, 0, busy);
        self.emit(Insn::mov64(ENTRY, R0));
        self.emit(Insn::ldx(Size::W, R1, ENTRY, LOCK_OFFSET as i16));
        self.load_stack(R2, frame.seq);
        self.emit(Insn::add64(R2, 1));
        self.jmp(JmpOp::Ne, R1, R2, busy);
        self.goto(locked);
        self.asm.bind(release);
        self.asm
            .annotate("another flow's (or a free) element: give the word back");
        self.give_back_lock();
        self.goto(busy);

        self.asm.bind(absent);
        // Where a placeholder inserted (here or by a wait's callback) is
        // checked and held.
        let placed = self.label();
        match missing {
            Missing::Goto(label) => {
                self.forget_seq();
                self.emit(Insn::mov64(ENTRY, 0));
                self.goto(label);
            }
            Missing::Placeholder(held) => {
                self.asm
                    .annotate("missing: insert a held placeholder, then hold it");
                self.held_view(PLACEHOLDER_STATE);
                self.asm.ld_map_fd(R1, map);
                self.stack_ptr(R2, key);
                self.stack_ptr(R3, frame.view);
                self.emit(Insn::mov64(R4, BPF_NOEXIST));
                self.call(Helper::MAP_UPDATE_ELEM);
                let table_full = self.table_full;
                self.jump_if_table_full(R0, table_full);
                self.jmp(JmpOp::Ne, R0, 0, busy);
                self.asm.bind(placed);
                self.lookup(map, key);
                self.jmp(JmpOp::Eq, R0, 0, busy);
                self.emit(Insn::mov64(ENTRY, R0));
                self.emit(Insn::ldx(Size::W, R1, ENTRY, LOCK_OFFSET as i16));
                self.emit(Insn::ldx(Size::W, R2, R10, frame.view_at(LOCK_OFFSET)));
                self.jmp(JmpOp::Ne, R1, R2, busy);
                self.emit(Insn::add64(R2, -1));
                self.store_stack(frame.seq, R2);
                self.goto(held);
            }
        }

        if let Some(moved) = moved {
            self.asm.bind(odd);
            self.held_and_moved(map, key, moved, busy);
        }
        self.asm.bind(busy);
        self.lock_round(map, key, moved.is_some(), missing, taken, placed);
        self.goto(spin);
        self.asm.bind(locked);
        self.forget_rounds();
    }

    /// Builds in the view an entry no one else may take: a random odd
    /// lock word (held, and unlike any earlier life of the element), the
    /// state word `state`, created and last seen now.
    pub(crate) fn held_view(&mut self, state: i32) {
        let frame = self.frame;
        self.call(Helper::GET_PRANDOM_U32);
        self.emit(Insn::or64(R0, 1));
        self.emit(Insn::stx(Size::W, R10, R0, frame.view_at(LOCK_OFFSET)));
        self.emit(Insn::st(Size::W, R10, frame.view_at(STATE_OFFSET), state));
        self.store_stack(frame.view_at(layout::CREATED_OFFSET), NOW);
        self.store_stack(frame.view_at(layout::LAST_SEEN_OFFSET), NOW);
    }

    /// Gives back a lock word taken from the `seq` slot's number (odd
    /// `seq + 1` back to `seq`, by cmpxchg: if something else wrote the
    /// word since, it stays as written). Clobbers R0-R1.
    fn give_back_lock(&mut self) {
        self.load_stack(R0, self.frame.seq);
        self.emit(Insn::add64(R0, 1));
        self.load_stack(R1, self.frame.seq);
        self.emit(Insn::atomic32(
            AtomicOp::CmpXchg,
            ENTRY,
            R1,
            LOCK_OFFSET as i16,
        ));
    }

    /// Inserts the entry built in the view under the key at `key` with
    /// `BPF_NOEXIST`, held: its lock word a random odd number while the
    /// kernel copies the value into the element and links it, then the
    /// next even number, stored by this packet once the key leads to the
    /// element. Elements are recycled at once, so another packet may hold
    /// a pointer to this one from its earlier life: while it is being
    /// filled, that packet can neither take it (the word is odd) nor copy
    /// half of it as a consistent entry, and a random number makes its
    /// stale cmpxchg fail afterwards. (A word left even during the copy
    /// let a `bpf_loop` round take an element not yet linked, which its
    /// caller then could not find to give back: the entry stayed held for
    /// good, in the two-CPU toggle test on 6.1.) Leaves the insert's
    /// result in R0.
    fn insert_new(&mut self, key: i16) {
        let frame = self.frame;
        let done = self.label();
        let gone = self.label();
        self.call(Helper::GET_PRANDOM_U32);
        self.emit(Insn::or64(R0, 1));
        self.emit(Insn::stx(Size::W, R10, R0, frame.view_at(LOCK_OFFSET)));
        self.asm.ld_map_fd(R1, MAPS.flows);
        self.stack_ptr(R2, key);
        self.stack_ptr(R3, frame.view);
        self.emit(Insn::mov64(R4, BPF_NOEXIST));
        self.call(Helper::MAP_UPDATE_ELEM);
        self.jmp(JmpOp::Ne, R0, 0, done);
        self.asm
            .annotate("inserted held: release it, linked and whole now");
        self.lookup(MAPS.flows, key);
        self.jmp(JmpOp::Eq, R0, 0, gone);
        self.emit(Insn::ldx(Size::W, R1, R0, LOCK_OFFSET as i16));
        self.emit(Insn::ldx(Size::W, R2, R10, frame.view_at(LOCK_OFFSET)));
        // Not our word: an LRU eviction took the element already.
        self.jmp(JmpOp::Ne, R1, R2, gone);
        self.emit(Insn::add64(R2, 1));
        self.release_word(R0, R2);
        self.asm.bind(gone);
        self.emit(Insn::mov64(R0, 0));
        self.asm.bind(done);
    }

    /// `goto target` when `result`, an insert's, says the table is full:
    /// any failure but `EEXIST` and `EBUSY`.
    fn jump_if_table_full(&mut self, result: Reg, target: Label) {
        let round = self.label();
        self.jmp(JmpOp::Eq, result, 0, round);
        self.jmp(JmpOp::Eq, result, -EEXIST, round);
        self.jmp(JmpOp::Ne, result, -EBUSY, target);
        self.asm.bind(round);
    }

    /// `if the run's loop budget is spent goto target`, at any distance:
    /// `may_goto` over a `ja` that skips the far jump (`may_goto` has only
    /// the 16-bit form).
    fn budget_spent(&mut self, target: Label) {
        self.emit(Insn::may_goto(1));
        self.emit(Insn::ja(1));
        self.goto(target);
    }

    /// Takes the lock only if the entry is still as it was when the view
    /// was copied (same even sequence number); `on_changed` otherwise.
    fn lock_if_unchanged(&mut self, on_changed: Label) {
        if !self.target.atomic {
            return;
        }
        self.asm
            .annotate("lock, if unchanged since the view was copied");
        let held = self.label();
        self.load_stack(R1, self.frame.retried);
        self.jmp(JmpOp::Ne, R1, 0, held);
        self.stage_conflict();
        self.load_stack(R0, self.frame.seq);
        self.emit(Insn::mov64(R1, R0));
        self.emit(Insn::add64(R1, 1));
        self.emit(Insn::atomic32(
            AtomicOp::CmpXchg,
            ENTRY,
            R1,
            LOCK_OFFSET as i16,
        ));
        self.load_stack(R1, self.frame.seq);
        self.jmp(JmpOp::Ne, R0, R1, on_changed);
        if self.program.elides_initial_entries() {
            // Packets delete entries: the element may have been freed and
            // taken by another flow, with its word by chance still even
            // and the same, since the lookup. The key must still lead to it.
            let ours = self.label();
            self.asm.annotate("still this flow's element?");
            self.lookup(MAPS.flows, self.frame.lookup_key);
            self.jmp(JmpOp::Eq, R0, ENTRY, ours);
            self.give_back_lock();
            self.goto(on_changed);
            self.asm.bind(ours);
        }
        self.asm.bind(held);
    }

    /// Test builds: another CPU finishes a write to the entry (sequence
    /// word plus 2) or takes its lock and keeps it (plus 1), between this
    /// packet's read and its cmpxchg.
    fn stage_conflict(&mut self) {
        let step = match self.target.conflict {
            StagedConflict::None => return,
            StagedConflict::Writer => 2,
            StagedConflict::Holder => 1,
        };
        self.asm
            .annotate("test build: another CPU writes or holds the entry now");
        self.emit(Insn::mov64(R1, step));
        self.emit(Insn::atomic32(AtomicOp::Add, ENTRY, R1, LOCK_OFFSET as i16));
    }

    /// Test builds: another CPU inserts the flow (in the state this packet
    /// read, unlocked for a writer, locked for a holder) just before this
    /// packet does, on its first pass.
    fn stage_insert_conflict(&mut self, key: i16) {
        let lock = match self.target.conflict {
            StagedConflict::None => return,
            StagedConflict::Writer => 0,
            StagedConflict::Holder => 1,
        };
        let frame = self.frame;
        let skip = self.label();
        self.asm
            .annotate("test build: another CPU inserts this flow now");
        self.load_stack(R1, frame.retried);
        self.jmp(JmpOp::Ne, R1, 0, skip);
        self.emit(Insn::st(Size::W, R10, frame.view_at(LOCK_OFFSET), lock));
        self.asm.ld_map_fd(R1, MAPS.flows);
        self.stack_ptr(R2, key);
        self.stack_ptr(R3, frame.view);
        self.emit(Insn::mov64(R4, BPF_NOEXIST));
        self.call(Helper::MAP_UPDATE_ELEM);
        self.emit(Insn::st(Size::W, R10, frame.view_at(LOCK_OFFSET), 0));
        self.asm.bind(skip);
    }

    /// Releases the lock of a restarted packet (which locked the entry
    /// before reading it), if it holds one.
    fn unlock_if_held(&mut self, entry_known: bool) {
        if !(self.target.atomic && self.same_keys) {
            return;
        }
        let skip = self.label();
        if !entry_known {
            self.jmp(JmpOp::Eq, ENTRY, 0, skip);
        }
        self.load_stack(R1, self.frame.retried);
        self.jmp(JmpOp::Eq, R1, 0, skip);
        if !entry_known {
            // A placeholder this packet inserted and writes nothing to:
            // the flow stays missing.
            let unlock = self.label();
            self.emit(Insn::ldx(Size::W, R1, ENTRY, STATE_OFFSET as i16));
            self.jmp(JmpOp::Ne, R1, PLACEHOLDER_STATE, unlock);
            self.delete_held(self.frame.lookup_key);
            self.goto(skip);
            self.asm.bind(unlock);
        }
        self.unlock_entry();
        self.asm.bind(skip);
    }

    /// Deletes the entry at `ENTRY`, whose lock this packet holds and
    /// which the key at `key` leads to: its state word marked dead first
    /// (packets of programs compiled before the lock loop wait on the
    /// lock of an entry unless it is so marked), then deleted by key; the
    /// element is freed with its word odd, so no stale cmpxchg takes it.
    fn delete_held(&mut self, key: i16) {
        if self.target.atomic {
            self.emit(Insn::st(Size::W, ENTRY, STATE_OFFSET as i16, DEAD_STATE));
        }
        self.asm.ld_map_fd(R1, MAPS.flows);
        self.stack_ptr(R2, key);
        self.call(Helper::MAP_DELETE_ELEM);
    }

    /// Releases the lock: the next even sequence number. A plain store
    /// where the CPU is strongly ordered (x86 is TSO: a store is a
    /// release); an atomic exchange where it is not (fully ordered on
    /// arm64, so the entry's writes are seen before the even word).
    fn unlock_entry(&mut self) {
        if self.target.atomic {
            self.load_stack(R1, self.frame.seq);
            self.emit(Insn::add64(R1, 2));
            self.release_word(ENTRY, R1);
        }
    }

    /// Stores `word` (even) as the lock word of the element at `base`,
    /// ordered after this packet's writes to it (see [`Emitter::unlock_entry`]).
    fn release_word(&mut self, base: Reg, word: Reg) {
        if self.target.features.weakly_ordered {
            self.emit(Insn::atomic32(
                AtomicOp::Xchg,
                base,
                word,
                LOCK_OFFSET as i16,
            ));
        } else {
            self.emit(Insn::stx(Size::W, base, word, LOCK_OFFSET as i16));
        }
    }

    /// `reg = the lock word of ENTRY`, for a seqlock read: a plain load
    /// where the CPU keeps loads in order (x86), else an atomic fetch-add
    /// of 0 (fully ordered on arm64: the copy's loads can move neither
    /// before the first read nor after the second).
    fn read_sequence(&mut self, reg: Reg) {
        self.sequence_of(reg, ENTRY);
    }

    /// [`Emitter::read_sequence`] of the element at `base`.
    fn sequence_of(&mut self, reg: Reg, base: Reg) {
        if self.target.features.weakly_ordered {
            self.emit(Insn::mov64(reg, 0));
            self.emit(Insn::atomic32(
                AtomicOp::FetchAdd,
                base,
                reg,
                LOCK_OFFSET as i16,
            ));
        } else {
            self.emit(Insn::ldx(Size::W, reg, base, LOCK_OFFSET as i16));
        }
    }

    /// Starts the packet over from the lookup, locking first (once; then
    /// contention).
    fn restart(&mut self) {
        let restart = self.restart;
        self.goto(restart);
    }

    /// The one block every restart goes through. It resets the scratch
    /// slots to constants, so that the verifier sees the same state at
    /// `again` from every restart site and walks the program once more,
    /// not once per site. A packet starts over once: the second pass
    /// locks first, and waits for the lock as long as it takes (see
    /// [`Emitter::lock_entry`]), so nothing overtakes it again.
    fn restart_block(&mut self) {
        let frame = self.frame;
        let restart = self.restart;
        self.asm.bind(restart);
        self.asm
            .annotate("start over, locking first (once; then contention)");
        self.load_stack(R1, frame.retried);
        let contention = self.contention;
        self.jmp(JmpOp::Ne, R1, 0, contention);
        self.emit(Insn::st(Size::DW, R10, frame.retried, 1));
        let mut slots: Vec<i16> = Vec::new();
        slots.extend(
            (0..self.layout.value_size)
                .step_by(8)
                .map(|at| frame.view_at(at)),
        );
        slots.extend((0..self.program.registers.len()).map(|i| frame.new_register(i)));
        for i in 0..self.program.globals.len() {
            slots.push(frame.new_global(i));
            slots.push(frame.old_global(i));
        }
        slots.extend((0..frame.spill_count).map(|i| frame.spill(i)));
        slots.extend([frame.seq, frame.fresh, frame.bias_save, frame.scratch_key]);
        for slot in slots {
            self.emit(Insn::st(Size::DW, R10, slot, 0));
        }
        // Row 0 leaves zero in the row index, other rows a number the
        // verifier keeps no track of: one value for all restart sites.
        self.emit(Insn::st(Size::W, R10, frame.row_index + 4, -1));
        // The row tests of this pass narrowed the field slots to the
        // values one row matched. An atomic add of zero keeps each value
        // and makes the verifier forget it (it tracks no value through an
        // atomic on the stack; 6.18 tracks 4-byte stores, so storing the
        // halves back no longer does), so every restart site reaches
        // `again` in one state, and the second pass's decisions do not
        // make the verifier track those values back into the shared
        // commits.
        self.emit(Insn::mov64(R1, 0));
        for &field in &frame.fields {
            let words = if field.bits() > 64 { 2 } else { 1 };
            for word in 0..words {
                let slot = frame.field(field) + 8 * word;
                self.emit(Insn::atomic64(AtomicOp::Add, R10, R1, slot));
            }
        }
        for reg in [R0, R1, R2, R3, R4, R5, ENTRY] {
            self.emit(Insn::mov64(reg, 0));
        }
        let again = self.again;
        self.goto(again);
    }

    fn row_text(&self, row: &Row) -> String {
        print::row(self.program, row)
    }

    // ---- entry: parse, clock, globals, keys ----

    fn entry(&mut self) {
        let frame = self.frame;
        self.asm
            .annotate("zero the field slots (absent fields read 0 in initial values)");
        for &field in &frame.fields {
            let slot = frame.field(field);
            self.emit(Insn::st(Size::DW, R10, slot, 0));
            if field.bits() > 64 {
                self.emit(Insn::st(Size::DW, R10, slot + 8, 0));
            }
        }
        self.emit(Insn::st(Size::DW, R10, frame.retried, 0));
        if self.controller {
            for i in (0..frame.key_area).step_by(8) {
                self.emit(Insn::st(Size::DW, R10, frame.lookup_key + i as i16, 0));
            }
            self.emit(Insn::st(Size::DW, R10, frame.event_state, 0));
        }

        self.asm.annotate("parse the headers");
        let slot = |f: Field| frame.field(f);
        emit_parse(
            &mut self.asm,
            &ParseRequest {
                hook: self.target.hook,
                fields: &frame.fields,
                slot: &slot,
                headers: (frame.headers != 0).then_some(frame.headers),
            },
        );
        self.launder_presence();

        self.load_now();

        if self.layout.globals_map.is_some() {
            self.asm.annotate("the globals");
            if self.target.globals_reused {
                self.lookup_index(MAPS.globals, 0);
                let no_key = self.no_key;
                self.jmp(JmpOp::Eq, R0, 0, no_key);
            } else {
                // The `globals` variable in `.data`: its address, never null.
                self.asm.ld_map_value(R0, MAPS.globals, 0);
            }
            self.store_stack(frame.globals_ptr, R0);
        }

        let mut key_mask = 0u32;
        for &f in self
            .program
            .lookup_key
            .iter()
            .chain(&self.program.update_key)
        {
            if !matches!(f, Field::PktLen | Field::PktIfindex) {
                key_mask |= 1 << (f as u32);
            }
        }
        if key_mask != 0 {
            self.asm.annotate("a key field absent: default");
            self.emit(Insn::mov64(R1, PRESENCE));
            self.emit(Insn::and64(R1, key_mask as i32));
            let no_key = self.no_key;
            self.jmp(JmpOp::Ne, R1, key_mask as i32, no_key);
        }
        self.asm
            .annotate("pack the lookup key (big-endian, no padding)");
        self.pack_key(&self.program.lookup_key, frame.lookup_key);
        if let Some(area) = frame.update_key {
            self.asm.annotate("pack the update key");
            self.pack_key(&self.program.update_key, area);
        }
    }

    /// `NOW` = the program's clock (see [`Clock`]). Clobbers R0-R5.
    fn load_now(&mut self) {
        match self.target.clock {
            Clock::None => {
                self.asm.annotate("now: unused");
                self.emit(Insn::mov64(NOW, 0));
            }
            Clock::Coarse => {
                self.asm.annotate("now: coarse clock (timeouts only)");
                self.call(Helper::KTIME_GET_COARSE_NS);
                self.emit(Insn::mov64(NOW, R0));
            }
            Clock::Precise => {
                self.asm.annotate("now");
                self.call(Helper::KTIME_GET_NS);
                self.emit(Insn::mov64(NOW, R0));
            }
            Clock::TestMap => {
                self.asm.annotate("now: from the clock map (test clock)");
                self.lookup_index(MAPS.clock, 0);
                self.emit(Insn::mov64(NOW, 0));
                self.emit(Insn::jeq(R0, 0, 1));
                self.emit(Insn::ldx(Size::DW, NOW, R0, 0));
            }
        }
    }

    /// Hides the presence mask's exact value from the verifier. After the
    /// parser it is a different constant on each parse path, and the
    /// verifier, tracking each one, would walk the rest of the program once
    /// per packet shape. Bytes stored one by one read back as an unknown
    /// number, so the paths merge; the value itself is unchanged.
    fn launder_presence(&mut self) {
        let slot = self.frame.scratch_key;
        self.emit(Insn::mov64(R1, PRESENCE));
        for byte in 0..4 {
            self.emit(Insn::stx(Size::B, R10, R1, slot + byte));
            self.emit(Insn::rsh64(R1, 8));
        }
        self.emit(Insn::ldx(Size::W, PRESENCE, R10, slot));
    }

    fn pack_key(&mut self, fields: &[Field], area: i16) {
        let mut at = area;
        for &field in fields {
            let slot = self.frame.field(field);
            if field.bits() > 64 {
                self.pack_part(slot, 8, at);
                self.pack_part(slot + 8, 8, at + 8);
            } else {
                self.pack_part(slot, field.key_bytes(), at);
            }
            at += field.key_bytes() as i16;
        }
    }

    /// Stores the low `n` bytes of the u64 at `slot` big-endian at `dest`,
    /// in the widest aligned stores that fit.
    fn pack_part(&mut self, slot: i16, n: usize, dest: i16) {
        let mut i = 0usize;
        while i < n {
            let pos = dest + i as i16;
            let size = [8usize, 4, 2, 1]
                .into_iter()
                .find(|&s| s <= n - i && i32::from(pos).rem_euclid(s as i32) == 0)
                .unwrap_or(1);
            self.load_stack(R1, slot);
            let shift = 8 * (n - i - size);
            if shift > 0 {
                self.emit(Insn::rsh64(R1, shift as i32));
            }
            let store = match size {
                8 => {
                    self.emit(Insn::be64(R1));
                    Size::DW
                }
                4 => {
                    self.emit(Insn::be32(R1));
                    Size::W
                }
                2 => {
                    self.emit(Insn::be16(R1));
                    Size::H
                }
                _ => Size::B,
            };
            self.emit(Insn::stx(store, R10, R1, pos));
            i += size;
        }
    }

    // ---- lookup, lock, view, expiry ----

    fn lookup_and_view(&mut self) {
        let frame = self.frame;
        let missing = self.label();
        let decide = self.label();
        let reset = self.label();
        let copied = self.label();
        let locked_pass = self.label();
        let again = self.again;
        self.asm.bind(again);
        if self.target.atomic {
            // After a restart the packet locks first: it cannot be
            // overtaken again, so busy flows still make progress.
            self.load_stack(R1, frame.retried);
            self.jmp(JmpOp::Ne, R1, 0, locked_pass);
        }
        self.asm.annotate("look the flow up");
        self.lookup(MAPS.flows, frame.lookup_key);
        self.emit(Insn::mov64(ENTRY, R0));
        self.jmp(JmpOp::Eq, ENTRY, 0, missing);
        self.snapshot();
        self.asm.bind(copied);
        self.emit(Insn::st(Size::DW, R10, frame.fresh, 0));
        // Expired entries read as their rollback state, registers reset.
        let mut expired = Vec::new();
        self.expiry_check(R10, frame.view, &mut |e: &mut Emitter, s| {
            let label = e.label();
            expired.push((s, label));
            label
        });
        self.goto(decide);
        for (state, label) in expired {
            self.asm.bind(label);
            let rollback = self.program.states[state.0 as usize]
                .timeout
                .map_or(StateId(0), |t| t.rollback);
            self.asm.annotate(format!(
                "expired: reads as {}",
                self.program.state_name(rollback)
            ));
            self.emit(Insn::st(
                Size::W,
                R10,
                frame.view_at(STATE_OFFSET),
                i32::from(rollback.0),
            ));
            self.emit(Insn::st(Size::DW, R10, frame.fresh, 1));
            self.goto(reset);
        }

        if self.target.atomic {
            self.asm.bind(locked_pass);
            self.asm.annotate("second pass: lock first, then copy");
            if self.same_keys {
                self.lock_loop(frame.lookup_key, Missing::Placeholder(missing));
                self.copy_entry();
            } else {
                self.read_loop(frame.lookup_key, missing);
            }
            self.goto(copied);
        }

        self.asm.bind(missing);
        self.asm.annotate("no entry: the initial state");
        self.emit(Insn::st(Size::W, R10, frame.view_at(LOCK_OFFSET), 0));
        self.emit(Insn::st(Size::W, R10, frame.view_at(STATE_OFFSET), 0));
        self.emit(Insn::st(Size::DW, R10, frame.fresh, 1));
        self.store_stack(frame.view_at(layout::LAST_SEEN_OFFSET), NOW);
        self.asm.bind(reset);
        self.store_stack(frame.view_at(layout::CREATED_OFFSET), NOW);
        for (index, register) in self.program.registers.iter().enumerate() {
            self.asm
                .annotate(format!("initial value of {}", register.name));
            let env = EvalEnv {
                absent_reads_zero: true,
                global_override: None,
            };
            self.eval(&register.init, 0, 0, env);
            self.store_stack(frame.view_register(index), R1);
        }
        self.asm.bind(decide);
    }

    /// `view = *ENTRY`, the whole entry.
    fn copy_entry(&mut self) {
        for at in (0..self.layout.value_size).step_by(8) {
            self.emit(Insn::ldx(Size::DW, R3, ENTRY, at as i16));
            self.store_stack(self.frame.view_at(at), R3);
        }
    }

    /// A seqlock read of the flow under the key at `key` that waits as
    /// long as it takes, as one `may_goto` loop starting from the lookup
    /// (an entry deleted meanwhile is looked up again), and checks after
    /// the copy that the key still leads to the element. `missing` with
    /// `ENTRY` = 0 when there is none; falls through with the view copied
    /// and its even sequence number in `seq`.
    fn read_loop(&mut self, key: i16, missing: Label) {
        let frame = self.frame;
        let spin = self.label();
        let busy = self.label();
        let done = self.label();
        let absent = self.label();
        self.asm
            .annotate("copy the entry (seqlock read, waiting as long as it takes)");
        self.start_waits(wait::LOCK_ROUNDS);
        self.asm.bind(spin);
        self.lookup(MAPS.flows, key);
        self.jmp(JmpOp::Eq, R0, 0, absent);
        self.emit(Insn::mov64(ENTRY, R0));
        self.read_sequence(R1);
        let moved = self.moved_target();
        let odd = self.label();
        self.jmp(JmpOp::Set, R1, 1, if moved.is_some() { odd } else { busy });
        self.store_stack(frame.seq, R1);
        self.copy_entry();
        self.read_sequence(R3);
        self.load_stack(R1, frame.seq);
        self.jmp(JmpOp::Ne, R1, R3, busy);
        self.lookup(MAPS.flows, key);
        self.jmp(JmpOp::Ne, R0, ENTRY, busy);
        self.goto(done);
        self.asm.bind(absent);
        self.emit(Insn::mov64(ENTRY, 0));
        self.goto(missing);
        if let Some(moved) = moved {
            self.asm.bind(odd);
            self.held_and_moved(MAPS.flows, key, moved, busy);
        }
        self.asm.bind(busy);
        let contention = self.contention;
        self.read_round(contention, key, missing, done);
        self.goto(spin);
        self.asm.bind(done);
        self.forget_rounds();
    }

    /// Copies the entry at R7 to the view without locking it: a seqlock
    /// read (the lock word before and after must be the same even
    /// number), retried while a writer holds it. The second read of the
    /// lock word follows the copy: x86 keeps loads in order, and on a
    /// weakly ordered CPU both reads are fully ordered atomics
    /// ([`Emitter::read_sequence`]).
    fn snapshot(&mut self) {
        let frame = self.frame;
        let value_size = self.layout.value_size;
        let copy = |e: &mut Emitter| {
            for at in (0..value_size).step_by(8) {
                e.emit(Insn::ldx(Size::DW, R3, ENTRY, at as i16));
                e.store_stack(frame.view_at(at), R3);
            }
        };
        if !self.target.atomic {
            self.asm.annotate("copy the entry to the stack view");
            copy(self);
            return;
        }
        let done = self.label();
        self.asm
            .annotate("copy the entry to the stack view (seqlock read, no lock taken)");
        // Unrolled; then start over, locking first (`lock_loop`).
        for _ in 0..LOCK_TRIES {
            let busy = self.label();
            self.read_sequence(R1);
            self.jmp(JmpOp::Set, R1, 1, busy);
            copy(self);
            self.read_sequence(R3);
            self.jmp(JmpOp::Ne, R1, R3, busy);
            self.store_stack(frame.seq, R1);
            self.goto(done);
            self.asm.bind(busy);
        }
        self.restart();
        self.asm.bind(done);
    }

    /// Emits the timeout test of the `struct flow` at `base + offset`:
    /// jumps to `on_expired(state)` when the entry, in that state, is past
    /// a timeout at `now`; falls through otherwise. Clobbers R1-R4.
    fn expiry_check(
        &mut self,
        base: Reg,
        offset: i16,
        on_expired: &mut dyn FnMut(&mut Emitter<'a>, StateId) -> Label,
    ) {
        let timed: Vec<(StateId, flowstate_lang::ir::Timeout)> = self
            .program
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((StateId(i as u16), s.timeout?)))
            .collect();
        if timed.is_empty() {
            return;
        }
        let fresh = self.label();
        self.asm.annotate("timeouts (signed: now - then > limit)");
        self.emit(Insn::ldx(Size::W, R1, base, offset + STATE_OFFSET as i16));
        for (state, timeout) in timed {
            let next = self.label();
            self.jmp(JmpOp::Ne, R1, i32::from(state.0), next);
            let expired = on_expired(self, state);
            for (limit, at) in [
                (timeout.idle_ns, layout::LAST_SEEN_OFFSET),
                (timeout.hard_ns, layout::CREATED_OFFSET),
            ] {
                let Some(limit) = limit else { continue };
                self.emit(Insn::ldx(Size::DW, R2, base, offset + at as i16));
                self.emit(Insn::mov64(R3, NOW));
                self.emit(Insn::sub64(R3, R2));
                self.jmp_const(JmpOp::Sgt, R3, limit as u64, expired, R4);
            }
            self.goto(fresh);
            self.asm.bind(next);
        }
        self.asm.bind(fresh);
    }

    // ---- the decision structure ----

    fn state_switch(&mut self) {
        let frame = self.frame;
        self.asm.annotate("switch on the flow's state");
        self.emit(Insn::ldx(Size::W, R1, R10, frame.view_at(STATE_OFFSET)));
        let labels: Vec<(u64, u64, Label)> = self
            .lowered
            .branches
            .iter()
            .map(|b| {
                (
                    u64::from(b.state.0),
                    u64::from(b.state.0),
                    self.asm.new_label(),
                )
            })
            .collect();
        let no_match = self.no_match;
        self.interval_search(R1, &labels, no_match, (0, u64::from(u32::MAX)));
        for (branch, (_, _, label)) in self.lowered.branches.iter().zip(labels) {
            self.asm.bind(label);
            self.asm
                .annotate(format!("state {}", self.program.state_name(branch.state)));
            let mut run: Vec<RowTest> = Vec::new();
            for decision in &branch.decisions {
                match decision {
                    Decision::Row(test) => run.push(test.clone()),
                    Decision::Search { field, cases } => {
                        self.row_run(&std::mem::take(&mut run));
                        self.row_search(*field, cases);
                    }
                }
            }
            self.row_run(&run);
            self.goto(no_match);
        }
    }

    /// Binary search of `reg` (unsigned) over sorted, disjoint `cases`
    /// (`lo..=hi`, label); `miss` when no case holds it. `known` is what
    /// the enclosing splits proved: `reg >= known.0` and `reg <= known.1`.
    /// Clobbers R5 for wide constants.
    fn interval_search(
        &mut self,
        reg: Reg,
        cases: &[(u64, u64, Label)],
        miss: Label,
        known: (u64, u64),
    ) {
        if cases.len() <= 3 {
            // Ascending: a value below a case's start lies between it and
            // the case before, so it is a miss.
            // `floor`: what falling through proved, `reg >= floor` (a
            // failed equality proves nothing of the kind).
            let mut floor = known.0;
            for &(lo, hi, label) in cases {
                if lo == hi {
                    self.jmp_const(JmpOp::Eq, reg, lo, label, R5);
                    continue;
                }
                if lo > floor {
                    self.jmp_const(JmpOp::Lt, reg, lo, miss, R5);
                }
                if hi >= known.1 {
                    self.goto(label);
                    return;
                }
                self.jmp_const(JmpOp::Le, reg, hi, label, R5);
                floor = hi + 1;
            }
            self.goto(miss);
            return;
        }
        let mid = cases.len() / 2;
        let split = cases[mid].0;
        let upper = self.label();
        self.jmp_const(JmpOp::Ge, reg, split, upper, R5);
        self.interval_search(reg, &cases[..mid], miss, (known.0, split - 1));
        self.asm.bind(upper);
        self.interval_search(reg, &cases[mid..], miss, (split, known.1));
    }

    fn row_search(&mut self, field: Field, cases: &[Case]) {
        let end = self.label();
        self.asm.annotate(format!(
            "binary search over {} {} intervals",
            cases.len(),
            field
        ));
        self.emit(Insn::mov64(R1, PRESENCE));
        self.emit(Insn::and64(R1, 1 << (field as u32)));
        self.jmp(JmpOp::Eq, R1, 0, end);
        // A new identity for R1: the search must not narrow the field's
        // slot (see `load_untracked`).
        self.load_untracked(R1, self.frame.field(field));
        let labels: Vec<(u64, u64, Label)> = cases
            .iter()
            .map(|c| (c.lo, c.hi, self.asm.new_label()))
            .collect();
        let width = if field.bits() >= 64 {
            u64::MAX
        } else {
            (1u64 << field.bits()) - 1
        };
        self.interval_search(R1, &labels, end, (0, width));
        for (case, (_, _, label)) in cases.iter().zip(labels) {
            self.asm.bind(label);
            for test in &case.tests {
                self.row_test(test);
            }
            self.goto(end);
        }
        self.asm.bind(end);
    }

    /// Tests one row; jumps to its commit block if it matches, falls
    /// through otherwise.
    fn row_test(&mut self, test: &RowTest) {
        let row = &self.program.rows[test.row];
        let fail = self.label();
        self.asm.source_line(row.pos.line);
        self.asm
            .annotate(format!("row {}: {}", test.row, self.row_text(row)));
        // A field an enclosing search decided is known present.
        let decided = test.decided.map_or(0, |f| 1u32 << (f as u32));
        let mask = row_presence(row) & !decided;
        if mask != 0 {
            self.emit(Insn::mov64(R1, PRESENCE));
            self.emit(Insn::and64(R1, mask as i32));
            self.jmp(JmpOp::Ne, R1, mask as i32, fail);
        }
        for m in &row.fields {
            if Some(m.field) == test.decided {
                continue;
            }
            self.pattern(m.field, &m.pattern, fail);
        }
        for c in &row.conditions {
            self.condition(c, fail);
        }
        self.enter_commit(test);
        self.asm.bind(fail);
    }

    /// Jumps to `fail` unless `c` holds (or, negated, does not).
    fn condition(&mut self, c: &CondMatch, fail: Label) {
        let op = cmp_jump(c.cond.op);
        // Jump to `fail` when the condition's truth equals `negated`.
        let fail_op = if c.negated {
            op
        } else {
            op.negate().unwrap_or(op)
        };
        // `eval` reads slots and `now` through copies the verifier does
        // not link back to them (see `load_untracked`), so a comparison
        // narrows neither a slot nor `NOW` for the rest of the program.
        self.eval(&c.cond.lhs, 0, 0, ROW_ENV);
        match &c.cond.rhs {
            Expr::Const(v) if i32::try_from(*v).is_ok() => self.jmp(fail_op, R1, *v as i32, fail),
            rhs => {
                self.eval(rhs, 1, 0, ROW_ENV);
                self.jmp(fail_op, R1, R2, fail);
            }
        }
    }

    /// The jump from a matched row to its commit block (through the row
    /// index slot when rows share it).
    fn enter_commit(&mut self, test: &RowTest) {
        if self.lowered.commits[test.commit].shared() {
            let slot = self.frame.row_index + 4;
            self.emit(Insn::st(Size::W, R10, slot, test.row as i32));
        }
        let commit = self.commit_labels[test.commit];
        self.goto(commit);
    }

    /// Tests a run of rows in priority order, carrying what each failed
    /// test taught about conditions to the rows after it: where a row
    /// fails on `now >= tmin`, a later row that needs it is skipped, and
    /// one that needs `now < tmin` does not test it again. Each way a row
    /// can fail continues with its own knowledge, kept only for conditions
    /// later rows test; continuations with the same row and knowledge are
    /// one block, and past a budget knowledge is dropped, so code stays
    /// linear in rows. Falls through when no row of the run matches.
    fn row_run(&mut self, tests: &[RowTest]) {
        if tests.is_empty() {
            return;
        }
        let mut ids: HashMap<String, usize> = HashMap::new();
        // Per row, its conditions as (id, truth of the shared form needed).
        let needs: Vec<Vec<(usize, bool)>> = tests
            .iter()
            .map(|t| {
                self.program.rows[t.row]
                    .conditions
                    .iter()
                    .map(|c| {
                        let (key, holds) = condition_key(&c.cond);
                        let next = ids.len();
                        let id = *ids.entry(key).or_insert(next);
                        (id, holds != c.negated)
                    })
                    .collect()
            })
            .collect();
        let mut last_use = vec![0usize; ids.len()];
        for (i, need) in needs.iter().enumerate() {
            for &(id, _) in need {
                last_use[id] = i;
            }
        }
        let mut run = RowRun {
            tests,
            needs,
            last_use,
            done: self.label(),
            memo: HashMap::new(),
            queue: VecDeque::new(),
            budget: 2 * tests.len() + 16,
        };
        let first = self.continuation(&mut run, 0, Vec::new());
        if run.queue.front().map(|(_, _, label)| *label) != Some(first) {
            self.goto(first);
        }
        while let Some((i, facts, label)) = run.queue.pop_front() {
            self.asm.bind(label);
            self.run_row(&mut run, i, facts);
        }
        self.asm.bind(run.done);
    }

    /// Emits row `i` of a run under `facts` (sorted (id, truth) pairs).
    fn run_row(&mut self, run: &mut RowRun, i: usize, facts: Facts) {
        let test = run.tests[i].clone();
        let row = &self.program.rows[test.row];
        self.asm.source_line(row.pos.line);
        self.asm
            .annotate(format!("row {}: {}", test.row, self.row_text(row)));
        let mask = row_presence(row);
        if mask != 0 || !row.fields.is_empty() {
            let fail = self.continuation(run, i + 1, facts.clone());
            if mask != 0 {
                self.emit(Insn::mov64(R1, PRESENCE));
                self.emit(Insn::and64(R1, mask as i32));
                self.jmp(JmpOp::Ne, R1, mask as i32, fail);
            }
            for m in &row.fields {
                self.pattern(m.field, &m.pattern, fail);
            }
        }
        let mut known = facts;
        for (c, &(id, truth)) in row.conditions.iter().zip(&run.needs[i].clone()) {
            match known.iter().find(|&&(k, _)| k == id) {
                Some(&(_, t)) if t == truth => continue,
                Some(_) => {
                    // The row tests a condition both ways: it never matches.
                    let next = self.continuation(run, i + 1, known);
                    self.goto(next);
                    return;
                }
                None => {}
            }
            let mut failed = known.clone();
            failed.push((id, !truth));
            let fail = self.continuation(run, i + 1, failed);
            self.condition(c, fail);
            known.push((id, truth));
        }
        self.enter_commit(&test);
    }

    /// The label where rows `i..` of a run are tried knowing `facts`:
    /// rows the facts rule out are skipped, a row left with nothing to
    /// test is its commit block, the end is the run's fall-through.
    fn continuation(&mut self, run: &mut RowRun, mut i: usize, facts: Facts) -> Label {
        let mut facts = if run.budget == 0 { Vec::new() } else { facts };
        loop {
            facts.retain(|&(id, _)| run.last_use[id] >= i);
            facts.sort_unstable();
            facts.dedup();
            let Some(test) = run.tests.get(i) else {
                return run.done;
            };
            let ruled_out = run.needs[i]
                .iter()
                .any(|need| facts.iter().any(|f| f.0 == need.0 && f.1 != need.1));
            if ruled_out {
                i += 1;
                continue;
            }
            let row = &self.program.rows[test.row];
            let settled = run.needs[i].iter().all(|need| facts.contains(need));
            if settled
                && row_presence(row) == 0
                && row.fields.is_empty()
                && !self.lowered.commits[test.commit].shared()
            {
                return self.commit_labels[test.commit];
            }
            break;
        }
        if let Some(&label) = run.memo.get(&(i, facts.clone())) {
            return label;
        }
        let label = self.label();
        run.budget = run.budget.saturating_sub(1);
        run.memo.insert((i, facts.clone()), label);
        run.queue.push_back((i, facts, label));
        label
    }

    /// Jumps to `fail` unless the (present) field matches. Uses R1-R5.
    fn pattern(&mut self, field: Field, pattern: &Pattern, fail: Label) {
        let slot = self.frame.field(field);
        let wide = field.bits() > 64;
        self.load_untracked(R1, slot);
        if wide {
            self.load_untracked(R2, slot + 8);
        }
        let hi = |v: u128| (v >> 64) as u64;
        let lo = |v: u128| v as u64;
        match pattern {
            Pattern::Exact(v) => {
                if wide {
                    self.jmp_const(JmpOp::Ne, R1, hi(*v), fail, R4);
                    self.jmp_const(JmpOp::Ne, R2, lo(*v), fail, R4);
                } else {
                    self.jmp_const(JmpOp::Ne, R1, lo(*v), fail, R4);
                }
            }
            Pattern::Masked { value, mask } => {
                self.and_const(R1, if wide { hi(*mask) } else { lo(*mask) }, R4);
                self.jmp_const(
                    JmpOp::Ne,
                    R1,
                    if wide { hi(*value) } else { lo(*value) },
                    fail,
                    R4,
                );
                if wide {
                    self.and_const(R2, lo(*mask), R4);
                    self.jmp_const(JmpOp::Ne, R2, lo(*value), fail, R4);
                }
            }
            Pattern::Range { lo: low, hi: high } => {
                if wide {
                    // Lexicographic on (high word, low word).
                    let above_low = self.label();
                    let ok = self.label();
                    self.jmp_const(JmpOp::Lt, R1, hi(*low), fail, R4);
                    self.jmp_const(JmpOp::Ne, R1, hi(*low), above_low, R4);
                    self.jmp_const(JmpOp::Lt, R2, lo(*low), fail, R4);
                    self.asm.bind(above_low);
                    self.jmp_const(JmpOp::Gt, R1, hi(*high), fail, R4);
                    self.jmp_const(JmpOp::Ne, R1, hi(*high), ok, R4);
                    self.jmp_const(JmpOp::Gt, R2, lo(*high), fail, R4);
                    self.asm.bind(ok);
                } else {
                    // One unsigned test, `field - low > high - low`: every
                    // branch of a row test stays pending on the verifier's
                    // path while the rows after it are walked.
                    self.add_const(R1, (lo(*low) as i64).wrapping_neg(), R4);
                    self.jmp_const(JmpOp::Gt, R1, lo(*high) - lo(*low), fail, R4);
                }
            }
            Pattern::Set(values) => {
                let ok = self.label();
                if wide {
                    for v in values {
                        let next = self.label();
                        self.jmp_const(JmpOp::Ne, R1, hi(*v), next, R4);
                        self.jmp_const(JmpOp::Eq, R2, lo(*v), ok, R4);
                        self.asm.bind(next);
                    }
                    self.goto(fail);
                } else {
                    // Sorted members; consecutive ones make one interval.
                    let mut cases: Vec<(u64, u64, Label)> = Vec::new();
                    for v in values.iter().map(|v| lo(*v)) {
                        match cases.last_mut() {
                            Some((_, hi, _)) if hi.checked_add(1) == Some(v) => *hi = v,
                            _ => cases.push((v, v, ok)),
                        }
                    }
                    self.interval_search(R1, &cases, fail, (0, u64::MAX));
                }
                self.asm.bind(ok);
            }
        }
    }

    // ---- expressions ----

    /// Evaluates `expr` into `POOL[depth]`, using only deeper pool
    /// registers and spill slots from `spill` on. No helper calls.
    fn eval(&mut self, expr: &Expr, depth: usize, spill: usize, env: EvalEnv) {
        let dst = POOL[depth];
        match expr {
            Expr::Const(v) => self.mov_const(dst, *v),
            Expr::Field(f) => {
                let slot = self.frame.field(*f);
                if env.absent_reads_zero && !matches!(f, Field::PktLen | Field::PktIfindex) {
                    // Read the slot only when the parser wrote it.
                    self.emit(Insn::mov64(dst, 0));
                    self.emit(Insn::jset(PRESENCE, 1 << (*f as u32), 1));
                    self.emit(Insn::ja(2));
                    self.load_untracked(dst, slot);
                } else {
                    self.load_untracked(dst, slot);
                }
            }
            Expr::Reg(r) => self.load_untracked(dst, self.frame.view_register(r.0 as usize)),
            Expr::Global(g) => match env.global_override {
                Some((id, slot)) if id == *g => self.load_untracked(dst, slot),
                _ => {
                    self.load_stack(dst, self.frame.globals_ptr);
                    self.emit(Insn::ldx(Size::DW, dst, dst, 8 * g.0 as i16));
                }
            },
            Expr::Now => {
                self.emit(Insn::mov64(dst, NOW));
                self.emit(Insn::or64(dst, 0));
            }
            Expr::Binary(op, a, b) => {
                self.eval(a, depth, spill, env);
                if let Some(imm) = layout::immediate(*op, b) {
                    self.apply_imm(*op, dst, imm);
                } else if depth + 1 < EVAL_REGISTERS {
                    self.eval(b, depth + 1, spill, env);
                    self.apply_reg(*op, dst, POOL[depth + 1]);
                } else {
                    // Out of registers: `a` waits in a spill slot while `b`
                    // takes this register, then POOL[0] is borrowed (and
                    // restored) to combine them.
                    let a_slot = self.frame.spill(spill);
                    let save = self.frame.spill(spill + 1);
                    self.store_stack(a_slot, dst);
                    self.eval(b, depth, spill + 1, env);
                    let borrowed = POOL[0];
                    self.store_stack(save, borrowed);
                    self.load_stack(borrowed, a_slot);
                    self.apply_reg(*op, borrowed, dst);
                    self.emit(Insn::mov64(dst, borrowed));
                    self.load_stack(borrowed, save);
                }
            }
        }
    }

    fn apply_imm(&mut self, op: BinOp, dst: Reg, imm: i32) {
        match op {
            BinOp::Add => self.emit(Insn::add64(dst, imm)),
            BinOp::Sub => self.emit(Insn::sub64(dst, imm)),
            BinOp::Mul => self.emit(Insn::mul64(dst, imm)),
            BinOp::And => self.emit(Insn::and64(dst, imm)),
            BinOp::Or => self.emit(Insn::or64(dst, imm)),
            BinOp::Xor => self.emit(Insn::xor64(dst, imm)),
            BinOp::Div | BinOp::Mod => self.divide(op, dst, Operand::Imm(imm)),
            BinOp::Shl => {
                if imm & 63 != 0 {
                    self.emit(Insn::lsh64(dst, imm & 63))
                }
            }
            BinOp::Shr => {
                if imm & 63 != 0 {
                    self.emit(Insn::arsh64(dst, imm & 63))
                }
            }
            BinOp::Min => {
                self.emit(Insn::jsle(dst, imm, 1));
                self.emit(Insn::mov64(dst, imm));
            }
            BinOp::Max => {
                self.emit(Insn::jsge(dst, imm, 1));
                self.emit(Insn::mov64(dst, imm));
            }
        }
    }

    /// `dst = dst op src`; may clobber `src`, never another register.
    fn apply_reg(&mut self, op: BinOp, dst: Reg, src: Reg) {
        match op {
            BinOp::Add => self.emit(Insn::add64(dst, src)),
            BinOp::Sub => self.emit(Insn::sub64(dst, src)),
            BinOp::Mul => self.emit(Insn::mul64(dst, src)),
            BinOp::And => self.emit(Insn::and64(dst, src)),
            BinOp::Or => self.emit(Insn::or64(dst, src)),
            BinOp::Xor => self.emit(Insn::xor64(dst, src)),
            BinOp::Div | BinOp::Mod => self.divide(op, dst, Operand::Reg(src)),
            BinOp::Shl => {
                self.emit(Insn::and64(src, 63));
                self.emit(Insn::lsh64(dst, src));
            }
            BinOp::Shr => {
                self.emit(Insn::and64(src, 63));
                self.emit(Insn::arsh64(dst, src));
            }
            BinOp::Min => {
                self.emit(Insn::jsle(dst, src, 1));
                self.emit(Insn::mov64(dst, src));
            }
            BinOp::Max => {
                self.emit(Insn::jsge(dst, src, 1));
                self.emit(Insn::mov64(dst, src));
            }
        }
    }

    // ---- commit blocks ----

    fn commit(&mut self, index: usize) {
        let commit = &self.lowered.commits[index];
        let row = &self.program.rows[commit.row];
        let frame = self.frame;
        let label = self.commit_labels[index];
        self.asm.bind(label);
        self.asm.source_line(row.pos.line);
        let rows = if commit.shared() {
            format!(
                "rows {} ({} rows)",
                list_rows(&commit.rows),
                commit.rows.len()
            )
        } else {
            format!("row {}", commit.row)
        };
        self.asm.annotate(format!(
            "{rows} matched, next {}: {}",
            self.program.state_name(commit.next),
            self.row_text(row)
        ));
        self.keep_port(&row.action);
        self.eval_field_writes(row);

        // 0. A row that writes nothing but `last_seen` to an entry read
        // unchanged: one plain store, no lock (the view was a consistent
        // snapshot, so this packet is ordered before any concurrent write).
        let after_write = self.label();
        let lite = self.same_keys
            && row.updates.is_empty()
            && self.elided_initial(commit.next, row).is_none();
        if lite {
            let full = self.label();
            self.jmp(JmpOp::Eq, ENTRY, 0, full);
            self.load_stack(R1, frame.fresh);
            self.jmp(JmpOp::Ne, R1, 0, full);
            if row.next.is_some() {
                // `next S` from S changes nothing either.
                self.emit(Insn::ldx(Size::W, R1, R10, frame.view_at(STATE_OFFSET)));
                self.jmp(JmpOp::Ne, R1, i32::from(commit.next.0), full);
            }
            self.asm.annotate("only last_seen changes: store it");
            self.emit(Insn::stx(
                Size::DW,
                ENTRY,
                NOW,
                layout::LAST_SEEN_OFFSET as i16,
            ));
            self.unlock_if_held(true);
            // Nothing else to do after the write: straight to the tail.
            self.leave_commit(commit, row);
            self.asm.bind(full);
        }

        // 1. Every right-hand side, from the values before the row.
        let mut updated = vec![false; self.program.registers.len()];
        let mut global_writes: Vec<(usize, Option<&Expr>)> = Vec::new();
        for update in &row.updates {
            match update.target {
                RegTarget::Flow(r) => {
                    self.eval(&update.value, 0, 0, ROW_ENV);
                    self.store_stack(frame.new_register(r.0 as usize), R1);
                    updated[r.0 as usize] = true;
                }
                RegTarget::Global(g) => {
                    let gi = g.0 as usize;
                    if let Some(addend) = atomic_addend(&update.value, g) {
                        self.eval(addend, 0, 0, ROW_ENV);
                        self.store_stack(frame.new_global(gi), R1);
                        global_writes.push((gi, None));
                    } else {
                        self.load_stack(R1, frame.globals_ptr);
                        self.emit(Insn::ldx(Size::DW, R1, R1, 8 * gi as i16));
                        self.store_stack(frame.old_global(gi), R1);
                        let env = EvalEnv {
                            absent_reads_zero: false,
                            global_override: Some((g, frame.old_global(gi))),
                        };
                        self.eval(&update.value, 0, 0, env);
                        self.store_stack(frame.new_global(gi), R1);
                        global_writes.push((gi, Some(&update.value)));
                    }
                }
            }
        }
        let source = |i: usize| {
            if updated[i] {
                frame.new_register(i)
            } else {
                frame.view_register(i)
            }
        };

        // 2. Elision: an entry equal to a missing one is not kept.
        let changed = self.label();
        if let Some(initial) = self.elided_initial(commit.next, row) {
            let write = self.label();
            self.asm
                .annotate("equal to a missing entry? then delete it");
            for (i, value) in initial.into_iter().enumerate() {
                self.load_stack(R1, source(i));
                self.jmp_const(JmpOp::Ne, R1, value as u64, write, R2);
            }
            if self.same_keys {
                self.jmp(JmpOp::Eq, ENTRY, 0, after_write);
                // Delete only what the view saw (the lock stays taken: the
                // element is freed with it).
                self.lock_if_unchanged(changed);
                self.delete_held(frame.lookup_key);
            } else {
                let update_key = frame.update_key.unwrap_or(frame.lookup_key);
                if self.target.atomic {
                    self.lock_loop(update_key, Missing::Goto(after_write));
                    self.delete_held(update_key);
                } else {
                    self.asm.ld_map_fd(R1, MAPS.flows);
                    self.stack_ptr(R2, update_key);
                    self.call(Helper::MAP_DELETE_ELEM);
                }
            }
            self.goto(after_write);
            self.asm.bind(write);
        }

        // 3. The write.
        let next = i32::from(commit.next.0);
        let registers = self.program.registers.len();
        let write_in_place = |e: &mut Emitter| {
            e.emit(Insn::st(Size::W, ENTRY, STATE_OFFSET as i16, next));
            for i in 0..registers {
                e.load_stack(R1, source(i));
                e.emit(Insn::stx(
                    Size::DW,
                    ENTRY,
                    R1,
                    (REGISTERS_OFFSET + 8 * i) as i16,
                ));
            }
            e.emit(Insn::stx(
                Size::DW,
                ENTRY,
                NOW,
                layout::LAST_SEEN_OFFSET as i16,
            ));
        };
        // Builds a new entry in the view (lock, created already set).
        let build_in_view = |e: &mut Emitter| {
            e.emit(Insn::st(Size::W, R10, frame.view_at(STATE_OFFSET), next));
            e.store_stack(frame.view_at(layout::LAST_SEEN_OFFSET), NOW);
            for (i, _) in updated.iter().enumerate().filter(|(_, u)| **u) {
                e.load_stack(R1, frame.new_register(i));
                e.store_stack(frame.view_register(i), R1);
            }
        };
        // `retry`: where a packet goes when another CPU inserted the flow
        // meanwhile (`None`: start over).
        let insert = |e: &mut Emitter, key: i16, retry: Option<Label>| {
            if e.target.atomic {
                e.insert_new(key);
            } else {
                e.asm.ld_map_fd(R1, MAPS.flows);
                e.stack_ptr(R2, key);
                e.stack_ptr(R3, frame.view);
                e.emit(Insn::mov64(R4, BPF_NOEXIST));
                e.call(Helper::MAP_UPDATE_ELEM);
            }
            e.jmp(JmpOp::Eq, R0, 0, after_write);
            let table_full = e.table_full;
            e.jump_if_table_full(R0, table_full);
            match retry {
                Some(label) => {
                    let contention = e.contention;
                    e.wait_or_give_up(contention, None);
                    e.goto(label);
                }
                None => e.restart(),
            }
        };
        if self.same_keys {
            let new_entry = self.label();
            self.jmp(JmpOp::Eq, ENTRY, 0, new_entry);
            self.lock_if_unchanged(changed);
            self.asm.annotate("write in place");
            write_in_place(self);
            self.load_stack(R1, frame.view_at(layout::CREATED_OFFSET));
            self.emit(Insn::stx(
                Size::DW,
                ENTRY,
                R1,
                layout::CREATED_OFFSET as i16,
            ));
            self.unlock_entry();
            self.goto(after_write);
            self.asm.bind(new_entry);
            self.asm.annotate("insert a new entry");
            self.stage_insert_conflict(frame.lookup_key);
            build_in_view(self);
            insert(self, frame.lookup_key, None);
        } else {
            let update_key = frame.update_key.unwrap_or(frame.lookup_key);
            self.asm.annotate("write under the update key");
            let again2 = self.label();
            let new_entry = self.label();
            let expired = self.label();
            let fresh_enough = self.label();
            self.start_waits(wait::INSERT_ROUNDS);
            self.asm.bind(again2);
            if self.target.atomic {
                self.lock_loop_sharing_budget(update_key, Missing::Goto(new_entry));
            } else {
                self.lookup(MAPS.flows, update_key);
                self.emit(Insn::mov64(ENTRY, R0));
                self.jmp(JmpOp::Eq, ENTRY, 0, new_entry);
            }
            self.expiry_check(ENTRY, 0, &mut |_, _| expired);
            self.goto(fresh_enough);
            self.asm.bind(expired);
            self.emit(Insn::stx(
                Size::DW,
                ENTRY,
                NOW,
                layout::CREATED_OFFSET as i16,
            ));
            self.asm.bind(fresh_enough);
            write_in_place(self);
            self.unlock_entry();
            self.goto(after_write);
            self.asm.bind(new_entry);
            self.asm.annotate("insert a new entry under the update key");
            self.emit(Insn::st(Size::W, R10, frame.view_at(LOCK_OFFSET), 0));
            self.store_stack(frame.view_at(layout::CREATED_OFFSET), NOW);
            build_in_view(self);
            insert(self, update_key, Some(again2));
        }
        if self.same_keys && self.target.atomic {
            // The entry changed after the view was copied: decide again.
            self.asm.bind(changed);
            self.restart();
        }
        self.asm.bind(after_write);

        // 4. Globals, atomically.
        for (gi, general) in global_writes {
            self.global_write(gi, general);
        }

        // 5. Counters, event, verdict.
        self.leave_commit(commit, row);
    }

    /// The end of a commit block: the state for events, the counter index
    /// (the row, from the row index slot when rows share the block), the
    /// action's tail.
    fn leave_commit(&mut self, commit: &Commit, row: &Row) {
        let frame = self.frame;
        if self.controller {
            self.emit(Insn::st(
                Size::W,
                R10,
                frame.event_state,
                i32::from(commit.next.0),
            ));
        }
        self.store_field_writes(row);
        if commit.shared() {
            self.emit(Insn::ldx(Size::W, ENTRY, R10, frame.row_index + 4));
            let tail = self.tail(&row.action);
            self.goto(tail);
        } else {
            self.goto_tail(commit.row as u32, &row.action);
        }
    }

    /// The initial register constants when a commit to `next` may leave an
    /// entry equal to a missing one (DESIGN.md 1.8), else `None`.
    fn elided_initial(&self, next: StateId, row: &Row) -> Option<Vec<i64>> {
        if next != StateId(0) || !self.program.elides_initial_entries() {
            return None;
        }
        let initial: Vec<i64> = self
            .program
            .registers
            .iter()
            .map(|r| match r.init {
                Expr::Const(c) => c,
                _ => 0,
            })
            .collect();
        // A constant update to another value can never give the initial entry.
        let impossible = row.updates.iter().any(|u| match (u.target, &u.value) {
            (RegTarget::Flow(r), Expr::Const(c)) => initial[r.0 as usize] != *c,
            _ => false,
        });
        (!impossible).then_some(initial)
    }

    /// Applies one global write: an atomic add for `g = g + e`, else a
    /// compare-and-swap loop that re-evaluates with the fresh value, until
    /// it succeeds or the run's `may_goto` budget is spent (then the write
    /// is dropped: the flow's commit is done and its action stands).
    fn global_write(&mut self, gi: usize, general: Option<&Expr>) {
        let frame = self.frame;
        let offset = 8 * gi as i16;
        let name = self.program.globals[gi].name.clone();
        let Some(value) = general else {
            self.asm.annotate(format!("{name} += (atomic add)"));
            self.load_stack(R1, frame.globals_ptr);
            self.load_stack(R2, frame.new_global(gi));
            self.emit(Insn::atomic64(AtomicOp::Add, R1, R2, offset));
            return;
        };
        self.asm
            .annotate(format!("{name} = ... (compare-and-swap)"));
        let done = self.label();
        let retry = self.label();
        self.start_waits(wait::CAS_TRIES);
        self.asm.bind(retry);
        self.load_stack(R1, frame.globals_ptr);
        self.load_stack(R0, frame.old_global(gi));
        self.load_stack(R2, frame.new_global(gi));
        self.emit(Insn::atomic64(AtomicOp::CmpXchg, R1, R2, offset));
        self.load_stack(R1, frame.old_global(gi));
        // Success falls through (see `lock_entry`).
        let conflict = self.label();
        self.jmp(JmpOp::Ne, R0, R1, conflict);
        self.goto(done);
        self.asm.bind(conflict);
        self.wait_or_give_up(done, None);
        // Someone else wrote it: recompute from the value they left.
        self.store_stack(frame.old_global(gi), R0);
        let env = EvalEnv {
            absent_reads_zero: false,
            global_override: Some((GlobalId(gi as u16), frame.old_global(gi))),
        };
        self.eval(value, 0, 0, env);
        self.store_stack(frame.new_global(gi), R1);
        self.goto(retry);
        self.asm.bind(done);
        self.forget_rounds();
    }

    // ---- default paths and action tails ----

    fn default_blocks(&mut self) {
        let rows = self.program.rows.len() as u32;
        let default = self.program.default_action.clone();
        let frame = self.frame;

        let no_key = self.no_key;
        self.asm.bind(no_key);
        self.asm.annotate("default: no key");
        self.goto_tail(rows, &default);

        let no_match = self.no_match;
        self.asm.bind(no_match);
        self.asm
            .annotate("default: no row matched (nothing written)");
        self.unlock_if_held(false);
        if self.controller {
            self.emit(Insn::ldx(Size::W, R1, R10, frame.view_at(STATE_OFFSET)));
            self.emit(Insn::stx(Size::W, R10, R1, frame.event_state));
        }
        self.goto_tail(rows, &default);

        for (label, counter, what) in [
            (
                self.contention,
                self.layout.counter_contention,
                "lock contention",
            ),
            (
                self.table_full,
                self.layout.counter_table_full,
                "table full",
            ),
        ] {
            self.asm.bind(label);
            self.asm.annotate(format!("default: {what} (counted)"));
            self.emit(Insn::mov64(ENTRY, counter as i32));
            self.bump_counter();
            self.goto_tail(rows, &default);
        }
    }

    /// `counters[R7] += (1 packet, pkt.len bytes)`, per CPU.
    fn bump_counter(&mut self) {
        let skip = self.label();
        self.emit(Insn::stx(Size::W, R10, ENTRY, self.frame.scratch_key));
        self.lookup(MAPS.counters, self.frame.scratch_key);
        self.jmp(JmpOp::Eq, R0, 0, skip);
        self.emit(Insn::ldx(Size::DW, R1, R0, 0));
        self.emit(Insn::add64(R1, 1));
        self.emit(Insn::stx(Size::DW, R0, R1, 0));
        self.load_stack(R2, self.frame.field(Field::PktLen));
        self.emit(Insn::ldx(Size::DW, R1, R0, 8));
        self.emit(Insn::add64(R1, R2));
        self.emit(Insn::stx(Size::DW, R0, R1, 8));
        self.asm.bind(skip);
    }

    fn action_tails(&mut self) {
        let mut done = 0;
        // Tails are created on demand while emitting; none are added here.
        while done < self.tails.len() {
            let (action, label) = self.tails[done].clone();
            done += 1;
            self.asm.bind(label);
            self.asm.annotate(format!(
                "action {}: count, then verdict",
                print::action(&action)
            ));
            self.bump_counter();
            let verdict = match &action {
                Action::Controller { then } => {
                    self.event();
                    match then {
                        ControllerThen::Pass => Action::Pass,
                        ControllerThen::Drop => Action::Drop,
                    }
                }
                other => other.clone(),
            };
            self.verdict(&verdict);
        }
    }

    fn verdict(&mut self, action: &Action) {
        let xdp = self.target.hook == Hook::Xdp;
        if matches!(action, Action::Pass | Action::Controller { .. }) {
            self.continue_chain();
        }
        let code = match action {
            Action::Pass => Some(if xdp { XDP_PASS } else { TC_ACT_UNSPEC }),
            Action::Drop => Some(if xdp { XDP_DROP } else { TC_ACT_SHOT }),
            Action::Tx if xdp => Some(XDP_TX),
            Action::Tx => {
                self.emit(Insn::ldx(Size::W, R1, CTX, SKB_IFINDEX));
                None
            }
            Action::Redirect { ifname } => {
                // Every name has a slot (Layout::new lists them all).
                let slot = self.layout.port_slot(ifname).unwrap_or(u32::MAX);
                return self.redirect_to_port(ifname, slot);
            }
            Action::RedirectPort { name, .. } => return self.redirect_to_kept_port(name),
            // Controller tails hand their `then` verdict here.
            Action::Controller { .. } => Some(if xdp { XDP_PASS } else { TC_ACT_UNSPEC }),
        };
        match code {
            Some(code) => self.emit(Insn::mov64(R0, code)),
            None => {
                self.emit(Insn::mov64(R2, 0));
                self.call(Helper::REDIRECT);
            }
        }
        self.emit(Insn::exit());
    }

    /// Sends a `controller` event: reserve, fill, copy the head, submit.
    fn event(&mut self) {
        let frame = self.frame;
        let layout = self.layout;
        let skip = self.label();
        let submit = self.label();
        self.asm.annotate("controller event");
        self.asm.ld_map_fd(R1, MAPS.events);
        self.emit(Insn::mov64(R2, layout.event_size as i32));
        self.emit(Insn::mov64(R3, 0));
        self.call(Helper::RINGBUF_RESERVE);
        self.jmp(JmpOp::Eq, R0, 0, skip);
        self.emit(Insn::mov64(PRESENCE, R0));
        self.emit(Insn::stx(Size::DW, PRESENCE, NOW, 0));
        self.emit(Insn::mov64(R1, ENTRY));
        self.emit(Insn::jne(R1, layout.counter_default as i32, 1));
        self.emit(Insn::mov32(R1, EVENT_ROW_DEFAULT as i32));
        self.emit(Insn::stx(Size::W, PRESENCE, R1, 8));
        self.emit(Insn::ldx(Size::W, R1, R10, frame.event_state));
        self.emit(Insn::stx(Size::W, PRESENCE, R1, 12));
        self.load_stack(R4, frame.field(Field::PktLen));
        self.emit(Insn::stx(Size::W, PRESENCE, R4, 16));
        self.emit(Insn::jle(R4, EVENT_HEAD_BYTES as i32, 1));
        self.emit(Insn::mov64(R4, EVENT_HEAD_BYTES as i32));
        self.emit(Insn::stx(Size::W, PRESENCE, R4, 20));
        for i in (0..frame.key_area).step_by(8) {
            self.load_stack(R1, frame.lookup_key + i as i16);
            self.emit(Insn::stx(
                Size::DW,
                PRESENCE,
                R1,
                (layout.event_key_offset + i) as i16,
            ));
        }
        // `< 1` rather than `== 0`: 6.1's verifier learns nothing from a
        // failed `==` test, so the load's length would stay 0..=128 and
        // the helper refuses a length that may be 0; a failed `<` test
        // raises the minimum to 1 on every kernel.
        self.jmp(JmpOp::Lt, R4, 1, submit);
        self.emit(Insn::mov64(R1, CTX));
        self.emit(Insn::mov64(R2, 0));
        self.emit(Insn::mov64(R3, PRESENCE));
        self.emit(Insn::add64(R3, layout.event_head_offset as i32));
        self.call(if self.target.hook == Hook::Xdp {
            Helper::XDP_LOAD_BYTES
        } else {
            Helper::SKB_LOAD_BYTES
        });
        self.asm.bind(submit);
        self.emit(Insn::mov64(R1, PRESENCE));
        self.emit(Insn::mov64(R2, 0));
        self.call(Helper::RINGBUF_SUBMIT);
        self.asm.bind(skip);
    }
}

/// What a path knows about a run's conditions: (condition id, truth of
/// its shared form), sorted by id.
type Facts = Vec<(usize, bool)>;

/// A run of row tests being emitted (see [`Emitter::row_run`]).
struct RowRun<'t> {
    tests: &'t [RowTest],
    /// Per row: (condition id, truth of its shared form the row needs).
    needs: Vec<Vec<(usize, bool)>>,
    /// Per condition id: the last row that tests it.
    last_use: Vec<usize>,
    /// Where the run falls through when no row matches.
    done: Label,
    memo: HashMap<(usize, Facts), Label>,
    queue: VecDeque<(usize, Facts, Label)>,
    /// Continuations that may still carry knowledge.
    budget: usize,
}

/// `0, 1, 2, ...` cut short after a few.
fn list_rows(rows: &[usize]) -> String {
    const SHOWN: usize = 6;
    let mut text: Vec<String> = rows.iter().take(SHOWN).map(|r| r.to_string()).collect();
    if rows.len() > SHOWN {
        text.push("...".to_string());
    }
    text.join(", ")
}

/// The signed form (cpu v4, kernel >= 6.6) of a DIV/MOD instruction:
/// `off = 1`.
fn signed(mut insn: Insn) -> Insn {
    insn.off = 1;
    insn
}

fn cmp_jump(op: CmpOp) -> JmpOp {
    match op {
        CmpOp::Eq => JmpOp::Eq,
        CmpOp::Ne => JmpOp::Ne,
        CmpOp::Lt => JmpOp::Slt,
        CmpOp::Le => JmpOp::Sle,
        CmpOp::Gt => JmpOp::Sgt,
        CmpOp::Ge => JmpOp::Sge,
    }
}

/// `e` when `value` is `g + e` or `e + g` and `e` does not read `g`: the
/// write is then one atomic add.
fn atomic_addend(value: &Expr, g: GlobalId) -> Option<&Expr> {
    let Expr::Binary(BinOp::Add, a, b) = value else {
        return None;
    };
    let reads_g = |e: &Expr| layout::reads_global(e, g);
    match (a.as_ref(), b.as_ref()) {
        (Expr::Global(x), e) | (e, Expr::Global(x)) if *x == g && !reads_g(e) => Some(e),
        _ => None,
    }
}

/// Removes instructions no path reaches (the kernel refuses programs that
/// have any), such as the fall-through after a row that always matches.
/// Jump offsets are recomputed; every kept jump's target is kept, and
/// offsets only shrink, so they still fit.
pub(crate) fn prune_unreachable(program: AsmProgram) -> AsmProgram {
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_FUNC: u8 = 4;
    const JA: u8 = 0x05;
    const EXIT: u8 = 0x95;
    let insns = &program.insns;
    let mut reachable = vec![false; insns.len()];
    let mut work = vec![0usize];
    while let Some(slot) = work.pop() {
        if slot >= insns.len() || reachable[slot] {
            continue;
        }
        reachable[slot] = true;
        let insn = insns[slot];
        let target = |off: i16| (slot as i64 + 1 + i64::from(off)) as usize;
        match insn.code {
            LD_IMM64 => {
                if let Some(r) = reachable.get_mut(slot + 1) {
                    *r = true;
                }
                work.push(slot + 2);
                if insn.src == PSEUDO_FUNC {
                    // A callback's address: the callback is reached too.
                    work.push((slot as i64 + 1 + i64::from(insn.imm)) as usize);
                }
            }
            EXIT => {}
            JA => work.push(target(insn.off)),
            _ if insn.is_gotol() => work.push((slot as i64 + 1 + i64::from(insn.imm)) as usize),
            _ if insn.is_jump() => {
                work.push(slot + 1);
                work.push(target(insn.off));
            }
            _ => work.push(slot + 1),
        }
    }
    // new_index[i]: the slot of the first kept instruction at or after i.
    let mut new_index = vec![0usize; insns.len() + 1];
    let mut kept = 0;
    for i in 0..insns.len() {
        new_index[i] = kept;
        if reachable[i] {
            kept += 1;
        }
    }
    new_index[insns.len()] = kept;
    let mut out = Vec::with_capacity(kept);
    for (slot, insn) in insns.iter().enumerate() {
        if !reachable[slot] {
            continue;
        }
        let mut insn = *insn;
        let new_target = |target: i64| new_index[(target.max(0) as usize).min(insns.len())] as i64;
        if insn.is_gotol() || (insn.code == LD_IMM64 && insn.src == PSEUDO_FUNC) {
            let target = slot as i64 + 1 + i64::from(insn.imm);
            insn.imm = (new_target(target) - new_index[slot] as i64 - 1) as i32;
            out.push(insn);
            continue;
        }
        // The second half of an ld_imm64 has code 0 and is never a jump.
        if insn.is_jump() && !(slot > 0 && insns[slot - 1].code == LD_IMM64 && insn.code == 0) {
            let target = (slot as i64 + 1 + i64::from(insn.off)) as usize;
            let new_target = new_index[target.min(insns.len())] as i64;
            insn.off = (new_target - new_index[slot] as i64 - 1) as i16;
        }
        out.push(insn);
    }
    let relocs = program
        .relocs
        .iter()
        .filter(|r| reachable.get(r.insn_index).copied().unwrap_or(false))
        .map(|r| flowstate_asm::MapReloc {
            insn_index: new_index[r.insn_index],
            ..*r
        })
        .collect();
    let annotations = program
        .annotations
        .iter()
        .map(|a| flowstate_asm::Annotation {
            slot: new_index[a.slot.min(insns.len())],
            ..a.clone()
        })
        .collect();
    AsmProgram {
        insns: out,
        relocs,
        annotations,
    }
}
