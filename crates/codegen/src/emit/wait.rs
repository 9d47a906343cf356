//! Waiting: how a loop that waits for a lock word (or retries a
//! compare-and-swap) is bounded, per target.
//!
//! With `may_goto` (Linux 6.9) a wait is one loop whose budget the kernel
//! keeps: the verifier checks one iteration ([`Emitter::budget_spent`]).
//! Without it, a loop the verifier can see the end of:
//! - a counter in the frame's `tries` slot, set by [`Emitter::start_waits`]
//!   and counted down at each round; the verifier walks each round (the
//!   counter is a known constant) and stops at the last, so the rounds
//!   are few ([`LOCK_ROUNDS`], [`INSERT_ROUNDS`], [`CAS_TRIES`]);
//! - the first attempt is inline (the uncontended path, unchanged); each
//!   later round of a lock loop or of a seqlock read runs whole inside a
//!   `bpf_loop` callback (Linux 5.17; [`WAIT_ITERATIONS`] at most), which
//!   the verifier checks once per call site: it looks the flow up each
//!   time round and, for a lock loop, takes the word the moment it is
//!   even, or inserts the caller's held placeholder for a missing flow
//!   (a concurrent insert: round again, inside the callback); for a read,
//!   copies the entry into the caller's view between two equal even
//!   words. So a holder's next packet or another packet's insert does not
//!   cost a round, as it did when the callback only waited (32 rounds
//!   then gave up for 2 to 207 packets in 400,000 of the two-CPU toggle
//!   test, and cost the verifier 13 times the `may_goto` build).
//! - The callback gets the key through `bpf_loop`'s context argument, a
//!   pointer into the caller's frame, reaches the caller's `seq` slot and
//!   view at fixed distances from it, needs no stack of its own, and
//!   keeps no pointer across iterations (an element may be recycled while
//!   we wait; the lookup each time round sees that). It writes only
//!   scalars there (the number taken, the copy, or a mark: [`ABSENT`],
//!   [`INSERTED`], [`TABLE_FULL`]): a callback that left the element
//!   pointer in the caller's frame was tried, and 6.18's verifier, which
//!   walks a `bpf_loop` callback until its states converge, gave up on it
//!   (E2BIG). So the caller looks the flow up once more and checks the
//!   word is still the number taken plus one (a held element stays the
//!   key's; only an LRU eviction takes it, and then the word is not ours:
//!   another round).
//! - A global's compare-and-swap has no word to wait for: its tries
//!   follow each other at once.
//!
//! The uncontended path is the same for both: the first cmpxchg succeeds
//! and falls through. Callbacks are bpf2bpf subprograms placed after the
//! program's last instruction, reached only through a `ld_imm64` with
//! `src = BPF_PSEUDO_FUNC` (what a `.BTF.ext` writer finds them by).

use super::*;
use migrate::MOVED_STATE;

/// Rounds in `bpf_loop` after a lock loop's or a seqlock read's first
/// (inline) attempt, on a target without `may_goto`. The verifier walks
/// every round (the counter is a known constant, see `start_waits`), so
/// they are as few as the loop allows. A round runs whole inside the
/// callback (lookup, placeholder insert, take; or the seqlock
/// copy), so an insert race or a holder's next packet does not end it:
/// it ends with the lock taken (the copy made) or the flow found
/// missing, unless the [`WAIT_ITERATIONS`] run out (a holder that keeps
/// a word that long) or, between the callback and the caller's lookup,
/// an eviction takes the element (a lock loop) or a writer changes it (a
/// read).
pub(crate) const LOCK_ROUNDS: i32 = 2;

/// Rounds of a loop that, after finding the flow missing, inserts it
/// itself (a write under the update key, a migration's pull), the insert
/// that another packet's insert beats included. Known limit: each round
/// costs the verifier a walk of the write and what follows (a 5-row
/// table writing under an update key: 3.2 times the `may_goto` build's
/// cost with 2 rounds, about 6 with 3; `tests/verifier_cost.rs`), so an
/// insert race followed by a holder of the flow gives up (contention).
pub(crate) const INSERT_ROUNDS: i32 = LOCK_ROUNDS;

/// Tries of a global's compare-and-swap (no `bpf_loop` wait: another
/// try follows at once, with the value the winner left) before the write
/// is dropped.
pub(crate) const CAS_TRIES: i32 = 4;

/// `bpf_loop` iterations per round (`BPF_MAX_LOOPS` is 1 << 23): with
/// [`LOCK_ROUNDS`] rounds, about the budget of a `may_goto` loop (8M
/// rounds).
pub(crate) const WAIT_ITERATIONS: i32 = (1 << 23) / LOCK_ROUNDS;

/// A `bpf_loop` callback (one per kind, map and key slot).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Callback {
    map: MapRef,
    /// The key's slot in the caller's frame (the callback's context).
    key: i16,
    /// Stop at an entry held and marked moved (handoff programs).
    moved: bool,
    kind: Kind,
}

/// What a callback does with the flow's word.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only wait for it to be even (or the flow gone).
    Wait,
    /// A lock loop's whole round: take the word the moment it is even,
    /// leaving the number taken in the caller's `seq` slot. A missing flow: with `insert`, insert
    /// the held placeholder the caller built in its view (`BPF_NOEXIST`;
    /// a concurrent insert means go on) and leave [`INSERTED`]; else
    /// leave [`ABSENT`].
    Lock { insert: bool },
    /// A seqlock read's whole round: copy the entry into the caller's
    /// view, the word the same even number before and after, leaving that
    /// number in the caller's
    /// `seq` slot; [`ABSENT`] for a missing flow.
    Read,
}

/// The `seq` slot's value while a locking callback has taken nothing: not
/// a 32-bit number, so no number taken reads as it.
const NOTHING_TAKEN: i32 = -1;
/// The `seq` slot's value when a locking callback found the flow missing
/// (and was not asked to insert).
const ABSENT: i32 = -2;
/// The `seq` slot's value when a locking callback's placeholder insert
/// failed for another reason than a concurrent insert (a full table).
const TABLE_FULL: i32 = -3;
/// The `seq` slot's value when a locking callback inserted the caller's
/// held placeholder.
const INSERTED: i32 = -4;

impl Emitter<'_> {
    /// Before a waiting loop: a budget of `rounds` (see [`LOCK_ROUNDS`]).
    pub(super) fn start_waits(&mut self, rounds: i32) {
        if self.target.features.waits_in_bpf_loop() {
            self.emit(Insn::st(Size::DW, R10, self.frame.tries, rounds));
        }
    }

    /// After a loop succeeded: the rounds left are set to one number, so
    /// the verifier finds the program after the loop in the same state
    /// from every round and walks it once. Nothing counts on from there
    /// (a loop that shares the budget leaves once locked).
    pub(super) fn forget_rounds(&mut self) {
        if self.target.features.waits_in_bpf_loop() {
            self.emit(Insn::st(Size::DW, R10, self.frame.tries, 0));
        }
    }

    /// The `seq` slot is left holding a number the verifier does not
    /// know (an atomic add of 0: it tracks no value through one), so that
    /// a flow found missing leaves one state whichever round found it,
    /// and the verifier walks what follows once, not once per round.
    pub(super) fn forget_seq(&mut self) {
        if self.target.features.waits_in_bpf_loop() {
            self.emit(Insn::mov64(R1, 0));
            self.emit(Insn::atomic64(AtomicOp::Add, R10, R1, self.frame.seq));
        }
    }

    /// `goto give_up` when the rounds are spent, else count one.
    fn count_round(&mut self, give_up: Label) {
        let tries = self.frame.tries;
        self.load_stack(R1, tries);
        self.jmp(JmpOp::Eq, R1, 0, give_up);
        self.emit(Insn::add64(R1, -1));
        self.store_stack(tries, R1);
    }

    /// `bpf_loop(WAIT_ITERATIONS, callback, r10 + callback.key, 0)`.
    fn wait_in(&mut self, callback: Callback) {
        let label = match self.callbacks.iter().find(|(c, _)| *c == callback) {
            Some((_, label)) => *label,
            None => {
                let label = self.label();
                self.callbacks.push((callback, label));
                label
            }
        };
        self.emit(Insn::mov64(R1, WAIT_ITERATIONS));
        self.asm.ld_func(R2, label);
        self.stack_ptr(R3, callback.key);
        self.emit(Insn::mov64(R4, 0));
        self.call(Helper::LOOP);
    }

    /// One round of a waiting loop is over: `goto give_up` once the
    /// budget is spent, else wait (for the lock word of the flow under
    /// the key at `wait_on.1` in map `wait_on.0` to be even, on a target
    /// without `may_goto`) and fall through to the next round. Clobbers
    /// R0-R5.
    pub(super) fn wait_or_give_up(&mut self, give_up: Label, wait_on: Option<(MapRef, i16)>) {
        if !self.target.features.waits_in_bpf_loop() {
            self.budget_spent(give_up);
            return;
        }
        self.count_round(give_up);
        // Without a word to wait for, the next round follows at once.
        let Some((map, key)) = wait_on else {
            return;
        };
        self.asm
            .annotate("wait in bpf_loop until the word is even (no may_goto here)");
        let moved = self.moved_target().is_some();
        self.wait_in(Callback {
            map,
            key,
            moved,
            kind: Kind::Wait,
        });
    }

    /// The end of a lock loop's round (see [`Emitter::lock_loop_in`]):
    /// contention once the budget is spent; on a target without
    /// `may_goto`, run the next round whole in `bpf_loop`'s callback
    /// ([`Kind::Lock`]), which goes round until it takes the word of the
    /// flow under the key at `key` in `map` (then `goto taken` with the
    /// number in the `seq` slot: the caller looks the flow up and checks
    /// the word is that number plus one, as after its own cmpxchg) or
    /// finds the flow missing (per `missing`: jump away with `ENTRY` = 0,
    /// or it inserted the held placeholder built here in the view: then
    /// `goto placed`, where the caller checks and holds it). Else (out of
    /// iterations, or held and moved) fall through to the next round.
    /// Clobbers R0-R5.
    pub(super) fn lock_round(
        &mut self,
        map: MapRef,
        key: i16,
        moved: bool,
        missing: Missing,
        taken: Label,
        placed: Label,
    ) {
        let give_up = self.contention;
        if !self.target.features.waits_in_bpf_loop() {
            self.wait_or_give_up(give_up, Some((map, key)));
            return;
        }
        self.count_round(give_up);
        self.asm.annotate(
            "a whole round in bpf_loop: take the word once it is even (no may_goto here)",
        );
        let insert = matches!(missing, Missing::Placeholder(_));
        if insert {
            self.held_view(PLACEHOLDER_STATE);
        }
        let seq = self.frame.seq;
        self.emit(Insn::st(Size::DW, R10, seq, NOTHING_TAKEN));
        self.wait_in(Callback {
            map,
            key,
            moved,
            kind: Kind::Lock { insert },
        });
        self.load_stack(R1, seq);
        match missing {
            Missing::Goto(absent) => {
                let present = self.label();
                self.jmp(JmpOp::Ne, R1, ABSENT, present);
                self.forget_seq();
                self.emit(Insn::mov64(ENTRY, 0));
                self.goto(absent);
                self.asm.bind(present);
            }
            Missing::Placeholder(_) => {
                let table_full = self.table_full;
                self.jmp(JmpOp::Eq, R1, TABLE_FULL, table_full);
                self.jmp(JmpOp::Eq, R1, INSERTED, placed);
            }
        }
        self.jmp(JmpOp::Ne, R1, NOTHING_TAKEN, taken);
    }

    /// The end of a seqlock read's round (see [`Emitter::read_loop`]):
    /// `goto give_up` once the budget is spent; on a target without
    /// `may_goto`, run the next round whole in `bpf_loop`'s callback
    /// ([`Kind::Read`]) and `goto copied` with `ENTRY` the element (the
    /// view and `seq` as the inline round leaves them), or `goto missing`
    /// with `ENTRY` = 0; else (out of iterations, held and moved, or
    /// written again since the copy) fall through to the next round.
    /// Clobbers R0-R5.
    pub(super) fn read_round(&mut self, give_up: Label, key: i16, missing: Label, copied: Label) {
        if !self.target.features.waits_in_bpf_loop() {
            self.wait_or_give_up(give_up, Some((MAPS.flows, key)));
            return;
        }
        self.count_round(give_up);
        self.asm
            .annotate("a whole seqlock read in bpf_loop (no may_goto here)");
        let seq = self.frame.seq;
        self.emit(Insn::st(Size::DW, R10, seq, NOTHING_TAKEN));
        let moved = self.moved_target().is_some();
        self.wait_in(Callback {
            map: MAPS.flows,
            key,
            moved,
            kind: Kind::Read,
        });
        let next_round = self.label();
        let present = self.label();
        self.load_stack(R1, seq);
        self.jmp(JmpOp::Eq, R1, NOTHING_TAKEN, next_round);
        self.jmp(JmpOp::Ne, R1, ABSENT, present);
        self.emit(Insn::mov64(ENTRY, 0));
        self.goto(missing);
        self.asm.bind(present);
        // The element, if still the copy's (the word unchanged).
        self.lookup(MAPS.flows, key);
        self.jmp(JmpOp::Eq, R0, 0, next_round);
        self.emit(Insn::mov64(ENTRY, R0));
        self.read_sequence(R1);
        self.load_stack(R2, seq);
        self.jmp(JmpOp::Eq, R1, R2, copied);
        self.asm.bind(next_round);
    }

    /// The callbacks asked for, after the program's last instruction.
    /// `long callback(u32 index, void *key)`: 0 goes on, 1 stops.
    pub(super) fn wait_callbacks(&mut self) {
        for (callback, label) in std::mem::take(&mut self.callbacks) {
            self.asm.bind(label);
            self.callback_body(callback);
        }
    }

    fn callback_body(&mut self, callback: Callback) {
        match callback.kind {
            Kind::Wait => self.wait_body(callback),
            Kind::Lock { insert } => self.lock_body(callback, insert),
            Kind::Read => self.read_body(callback),
        }
    }

    /// Stops once the flow's word is even, or it is gone (or held and
    /// moved). Writes nothing.
    fn wait_body(&mut self, callback: Callback) {
        let stop = self.label();
        let held = self.label();
        self.asm
            .annotate("bpf_loop callback: stop once the flow's word is even, or it is gone");
        self.asm.ld_map_fd(R1, callback.map);
        self.call(Helper::MAP_LOOKUP_ELEM);
        self.asm.jmp(JmpOp::Eq, R0, 0, stop);
        self.emit(Insn::ldx(Size::W, R1, R0, LOCK_OFFSET as i16));
        self.asm.jmp(JmpOp::Set, R1, 1, held);
        self.asm.bind(stop);
        self.emit(Insn::mov64(R0, 1));
        self.emit(Insn::exit());
        self.asm.bind(held);
        self.stop_if_moved(callback, R0, stop);
        self.emit(Insn::mov64(R0, 0));
        self.emit(Insn::exit());
    }

    /// One round of a lock loop, as [`Emitter::lock_loop_in`] runs it
    /// inline, with the caller's frame reached through the key pointer.
    /// It writes only scalars there (the number taken, or a mark): a
    /// callback that left a map pointer in the caller's frame was tried,
    /// and 6.18's verifier, which walks a callback until its states
    /// converge, gave up on it (E2BIG). So the caller looks the flow up
    /// again; the word it holds keeps the element the key's (only an LRU
    /// eviction takes a held element, and then the word is not ours).
    fn lock_body(&mut self, callback: Callback, insert: bool) {
        let frame = self.frame;
        // Caller slots, relative to the key pointer in R6.
        let seq = frame.seq - callback.key;
        let view = frame.view - callback.key;
        let (element, number) = (R7, R8);
        let stop = self.label();
        let held = self.label();
        let go_on = self.label();
        let absent = self.label();
        self.asm.annotate(
            "bpf_loop callback, a whole lock round: lookup, take even -> odd (stop), or the \
             flow is missing",
        );
        self.emit(Insn::mov64(R6, R2));
        self.asm.ld_map_fd(R1, callback.map);
        self.call(Helper::MAP_LOOKUP_ELEM);
        self.asm.jmp(JmpOp::Eq, R0, 0, absent);
        self.emit(Insn::mov64(element, R0));
        self.emit(Insn::ldx(Size::W, number, element, LOCK_OFFSET as i16));
        self.asm.jmp(JmpOp::Set, number, 1, held);
        self.emit(Insn::mov64(R3, number));
        self.emit(Insn::add64(R3, 1));
        self.emit(Insn::mov64(R0, number));
        self.emit(Insn::atomic32(
            AtomicOp::CmpXchg,
            element,
            R3,
            LOCK_OFFSET as i16,
        ));
        self.asm.jmp(JmpOp::Ne, R0, number, go_on);
        // Taken; but the element may be one the lookup found in an earlier
        // life, since recycled for another flow: the key must still lead to
        // it, else the word goes back (the caller, which only gets numbers,
        // could not give it back: that left an entry held for good).
        let ours = self.label();
        self.asm.ld_map_fd(R1, callback.map);
        self.emit(Insn::mov64(R2, R6));
        self.call(Helper::MAP_LOOKUP_ELEM);
        self.asm.jmp(JmpOp::Eq, R0, element, ours);
        self.emit(Insn::mov64(R0, number));
        self.emit(Insn::add64(R0, 1));
        self.emit(Insn::atomic32(
            AtomicOp::CmpXchg,
            element,
            number,
            LOCK_OFFSET as i16,
        ));
        self.asm.ja(go_on);
        self.asm.bind(ours);
        // Ours. The caller looks the flow up once more and checks the word
        // is this number plus one, as the inline round does after its
        // cmpxchg (an LRU eviction may take a held element meanwhile).
        self.emit(Insn::stx(Size::DW, R6, number, seq));
        self.asm.ja(stop);

        self.asm.bind(absent);
        if insert {
            let inserted = self.label();
            self.asm
                .annotate("missing: insert the caller's held placeholder");
            self.asm.ld_map_fd(R1, callback.map);
            self.emit(Insn::mov64(R2, R6));
            self.emit(Insn::mov64(R3, R6));
            self.emit(Insn::add64(R3, i32::from(view)));
            self.emit(Insn::mov64(R4, BPF_NOEXIST));
            self.call(Helper::MAP_UPDATE_ELEM);
            self.asm.jmp(JmpOp::Eq, R0, 0, inserted);
            // A concurrent insert (or a bucket lock busy): go round.
            self.asm.jmp(JmpOp::Eq, R0, -EEXIST, go_on);
            self.asm.jmp(JmpOp::Eq, R0, -EBUSY, go_on);
            self.emit(Insn::mov64(R1, TABLE_FULL));
            self.emit(Insn::stx(Size::DW, R6, R1, seq));
            self.asm.ja(stop);
            self.asm.bind(inserted);
            self.emit(Insn::mov64(R1, INSERTED));
            self.emit(Insn::stx(Size::DW, R6, R1, seq));
        } else {
            self.emit(Insn::mov64(R1, ABSENT));
            self.emit(Insn::stx(Size::DW, R6, R1, seq));
        }
        self.asm.bind(stop);
        self.emit(Insn::mov64(R0, 1));
        self.emit(Insn::exit());
        self.asm.bind(held);
        self.stop_if_moved(callback, element, stop);
        self.asm.bind(go_on);
        self.emit(Insn::mov64(R0, 0));
        self.emit(Insn::exit());
    }

    /// One round of a seqlock read, as [`Emitter::read_loop`] runs it
    /// inline, with the caller's frame reached through the key pointer
    /// (scalars only are written there: the copy, the number).
    fn read_body(&mut self, callback: Callback) {
        let frame = self.frame;
        let seq = frame.seq - callback.key;
        let view = frame.view - callback.key;
        let (element, number) = (R7, R8);
        let stop = self.label();
        let held = self.label();
        let go_on = self.label();
        self.asm.annotate(
            "bpf_loop callback, a whole seqlock read: lookup, copy, same even word, same element",
        );
        self.emit(Insn::mov64(R6, R2));
        self.asm.ld_map_fd(R1, callback.map);
        self.call(Helper::MAP_LOOKUP_ELEM);
        let present = self.label();
        self.asm.jmp(JmpOp::Ne, R0, 0, present);
        self.emit(Insn::mov64(R1, ABSENT));
        self.emit(Insn::stx(Size::DW, R6, R1, seq));
        self.asm.ja(stop);
        self.asm.bind(present);
        self.emit(Insn::mov64(element, R0));
        self.sequence_of(number, element);
        self.asm.jmp(JmpOp::Set, number, 1, held);
        for at in (0..self.layout.value_size).step_by(8) {
            self.emit(Insn::ldx(Size::DW, R3, element, at as i16));
            self.emit(Insn::stx(Size::DW, R6, R3, view + at as i16));
        }
        self.sequence_of(R3, element);
        self.asm.jmp(JmpOp::Ne, R3, number, go_on);
        // The caller checks the key still leads to an element with this
        // word (see `lock_body` on comparing element pointers here).
        self.emit(Insn::stx(Size::DW, R6, number, seq));
        self.asm.bind(stop);
        self.emit(Insn::mov64(R0, 1));
        self.emit(Insn::exit());
        self.asm.bind(held);
        self.stop_if_moved(callback, element, stop);
        self.asm.bind(go_on);
        self.emit(Insn::mov64(R0, 0));
        self.emit(Insn::exit());
    }

    /// Handoff programs: `goto stop` at an entry (at `entry`) held and
    /// marked moved; the caller finds it so and hands the packet on.
    fn stop_if_moved(&mut self, callback: Callback, entry: Reg, stop: Label) {
        if callback.moved {
            self.emit(Insn::ldx(Size::W, R1, entry, STATE_OFFSET as i16));
            self.asm.jmp(JmpOp::Eq, R1, MOVED_STATE, stop);
        }
    }
}
