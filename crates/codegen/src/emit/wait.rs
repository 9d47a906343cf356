//! Waiting: how a loop that waits for a lock word (or retries a
//! compare-and-swap) is bounded, per target.
//!
//! With `may_goto` (Linux 6.9) a wait is one loop whose budget the kernel
//! keeps: the verifier checks one iteration ([`Emitter::budget_spent`]).
//! Without it, a loop the verifier can see the end of:
//! - a counter in the frame's `tries` slot, set by [`Emitter::start_waits`]
//!   and counted down at each round; the verifier walks each round (the
//!   counter is a known constant) and stops at the last, so the rounds
//!   are few ([`LOCK_WAITS`]);
//! - between rounds, when there is a lock word to wait for, the packet
//!   waits in `bpf_loop` (Linux 5.17; inlined by the verifier since 6.0,
//!   [`WAIT_ITERATIONS`] at most) with a callback that looks the flow up
//!   again each time and stops once its word is even, or the flow is
//!   gone (the caller looks it up and inserts), or, in a handoff program,
//!   it is marked moved. The callback gets the key through `bpf_loop`'s
//!   context argument, a pointer into the caller's frame, needs no stack
//!   of its own, and keeps no pointer across iterations (an element may
//!   be recycled while we wait; the lookup each time round sees that).
//!   It writes nothing: a callback that took the lock itself and left the
//!   element in the caller's frame was tried, and 6.18's verifier, which
//!   walks a `bpf_loop` callback until its states converge, gave up on
//!   it (E2BIG).
//!
//! The uncontended path is the same for both: the first cmpxchg succeeds
//! and falls through. Callbacks are bpf2bpf subprograms placed after the
//! program's last instruction, reached only through a `ld_imm64` with
//! `src = BPF_PSEUDO_FUNC` (what a `.BTF.ext` writer finds them by).

use super::*;
use migrate::MOVED_STATE;

/// Rounds of a wait (lock loop, locked seqlock read, a migration's pull)
/// or of a global's compare-and-swap before the packet gives up, on a
/// target without `may_goto`. A lock round ends with the lock taken by
/// the callback, or with the flow gone, or after [`WAIT_ITERATIONS`]; a
/// round is lost when another packet inserts the flow between our lookup
/// and our insert. With two CPUs toggling one flow (insert, delete, ...:
/// difftest `two_cpus_toggle_through_elision`) about 4 rounds in 5 are
/// lost that way: 32 rounds gave up for about 1 packet in 2,500 (and
/// 128 rounds still for 1 in 100,000, at 4 times the verifier's walk:
/// the losses are not independent). The verifier walks every round,
/// about 500 instructions each (see `examples/verifier_cost.rs`).
/// Known limit: that toggle test is not at 0 contention on this target.
pub(crate) const LOCK_WAITS: i32 = 32;

/// `bpf_loop` iterations per round: all rounds together, as many as the
/// helper allows in one call (`BPF_MAX_LOOPS`, 1 << 23), about the budget
/// of a `may_goto` loop (8M rounds).
pub(crate) const WAIT_ITERATIONS: i32 = (1 << 23) / LOCK_WAITS;

/// A `bpf_loop` callback (one per kind, map and key slot).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Callback {
    map: MapRef,
    /// The key's slot in the caller's frame (the callback's context).
    key: i16,
    /// Stop at an entry held and marked moved (handoff programs).
    moved: bool,
    /// Take the word the moment it is even, and leave the number taken
    /// in the caller's `seq` slot (the lock loop), or only wait.
    lock: bool,
}

/// The `seq` slot's value while a locking callback has taken nothing: not
/// a 32-bit number, so no number taken reads as it.
const NOTHING_TAKEN: i32 = -1;

impl Emitter<'_> {
    /// Before a waiting loop: a full budget of rounds.
    pub(super) fn start_waits(&mut self) {
        if self.target.features.waits_in_bpf_loop() {
            self.emit(Insn::st(Size::DW, R10, self.frame.tries, LOCK_WAITS));
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
        // Without callbacks (the editor), the rounds follow each other at
        // once and the caller retries a refusal (`BUSY`) from user space.
        let Some((map, key)) = wait_on.filter(|_| self.callbacks_allowed) else {
            return;
        };
        self.asm
            .annotate("wait in bpf_loop until the word is even (no may_goto here)");
        let moved = self.moved_target().is_some();
        self.wait_in(Callback {
            map,
            key,
            moved,
            lock: false,
        });
    }

    /// The end of a lock loop's round (see [`Emitter::lock_loop_in`]):
    /// `goto give_up` once the budget is spent; on a target without
    /// `may_goto`, wait in `bpf_loop` with a callback that takes the word
    /// of the flow under the key at `key` in `map` the moment it is even
    /// (so that a packet that waited is not overtaken, round after round,
    /// by the holder's next packets), and `goto taken` with the number it
    /// took in the `seq` slot when it did (the caller then looks the flow
    /// up and checks the word is that number plus one, as after its own
    /// cmpxchg); else fall through to the next round. Clobbers R0-R5.
    pub(super) fn lock_round(
        &mut self,
        give_up: Label,
        map: MapRef,
        key: i16,
        moved: bool,
        taken: Label,
    ) {
        if !self.target.features.waits_in_bpf_loop() || !self.callbacks_allowed {
            self.wait_or_give_up(give_up, Some((map, key)));
            return;
        }
        self.count_round(give_up);
        self.asm
            .annotate("wait in bpf_loop, taking the word the moment it is even (no may_goto here)");
        let seq = self.frame.seq;
        self.emit(Insn::st(Size::DW, R10, seq, NOTHING_TAKEN));
        self.wait_in(Callback {
            map,
            key,
            moved,
            lock: true,
        });
        self.load_stack(R1, seq);
        self.jmp(JmpOp::Ne, R1, NOTHING_TAKEN, taken);
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
        let stop = self.label();
        let held = self.label();
        let go_on = self.label();
        self.asm.annotate(if callback.lock {
            "bpf_loop callback: take the flow's word once it is even (stop), or stop if it is gone"
        } else {
            "bpf_loop callback: stop once the flow's word is even, or it is gone"
        });
        // R2 is the key, a pointer into the caller's frame; R6 keeps it.
        self.emit(Insn::mov64(R6, R2));
        self.asm.ld_map_fd(R1, callback.map);
        self.call(Helper::MAP_LOOKUP_ELEM);
        self.asm.jmp(JmpOp::Eq, R0, 0, stop);
        self.emit(Insn::ldx(Size::W, R1, R0, LOCK_OFFSET as i16));
        self.asm.jmp(JmpOp::Set, R1, 1, held);
        if callback.lock {
            self.emit(Insn::mov64(R2, R0));
            self.emit(Insn::mov64(R3, R1));
            self.emit(Insn::add64(R3, 1));
            self.emit(Insn::mov64(R0, R1));
            self.emit(Insn::atomic32(
                AtomicOp::CmpXchg,
                R2,
                R3,
                LOCK_OFFSET as i16,
            ));
            self.asm.jmp(JmpOp::Ne, R0, R1, go_on);
            // Ours: the number taken, for the caller (a scalar: nothing
            // else is written into its frame).
            self.emit(Insn::stx(Size::DW, R6, R1, self.frame.seq - callback.key));
        }
        self.asm.bind(stop);
        self.emit(Insn::mov64(R0, 1));
        self.emit(Insn::exit());
        self.asm.bind(held);
        if callback.moved {
            self.emit(Insn::ldx(Size::W, R1, R0, STATE_OFFSET as i16));
            self.asm.jmp(JmpOp::Eq, R1, MOVED_STATE, stop);
        }
        self.asm.bind(go_on);
        self.emit(Insn::mov64(R0, 0));
        self.emit(Insn::exit());
    }
}
