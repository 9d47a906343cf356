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
//!   waits in `bpf_loop` (Linux 5.17; inlined by the verifier since 6.0)
//!   with a callback that looks the flow up again and stops once its
//!   word is even or the flow is gone ([`WAIT_ITERATIONS`] at most). The
//!   callback gets the key through `bpf_loop`'s context argument, a
//!   pointer into the caller's frame, so it needs no stack of its own and
//!   keeps no pointer across iterations (an element may be recycled while
//!   we wait; the lookup each time round sees that).
//!
//! The uncontended path is the same for both: the first cmpxchg succeeds
//! and falls through. Callbacks are bpf2bpf subprograms placed after the
//! program's last instruction, reached only through a `ld_imm64` with
//! `src = BPF_PSEUDO_FUNC` (what a `.BTF.ext` writer finds them by).

use super::*;

/// Rounds of a wait (lock loop, locked seqlock read, a migration's pull)
/// or of a global's compare-and-swap before the packet gives up, on a
/// target without `may_goto`. Each lock round first waits in `bpf_loop`
/// until the word is even, so a round is lost only to a writer that took
/// the word in the few instructions between that and our cmpxchg.
pub(crate) const LOCK_WAITS: i32 = 8;

/// `bpf_loop` iterations per round: all rounds together, as many as the
/// helper allows in one call (`BPF_MAX_LOOPS`, 1 << 23), about the budget
/// of a `may_goto` loop (8M rounds).
pub(crate) const WAIT_ITERATIONS: i32 = (1 << 23) / LOCK_WAITS;

impl Emitter<'_> {
    /// Before a waiting loop: a full budget of rounds.
    pub(super) fn start_waits(&mut self) {
        if self.target.features.waits_in_bpf_loop() {
            self.emit(Insn::st(Size::DW, R10, self.frame.tries, LOCK_WAITS));
        }
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
        let tries = self.frame.tries;
        self.load_stack(R1, tries);
        self.jmp(JmpOp::Eq, R1, 0, give_up);
        self.emit(Insn::add64(R1, -1));
        self.store_stack(tries, R1);
        let Some((map, key)) = wait_on else { return };
        self.asm
            .annotate("wait in bpf_loop until the word is even (no may_goto here)");
        let callback = self.wait_callback(map);
        self.emit(Insn::mov64(R1, WAIT_ITERATIONS));
        self.asm.ld_func(R2, callback);
        self.stack_ptr(R3, key);
        self.emit(Insn::mov64(R4, 0));
        self.call(Helper::LOOP);
    }

    /// The label of the callback that waits on `map`'s lock words.
    fn wait_callback(&mut self, map: MapRef) -> Label {
        if let Some((_, label)) = self.callbacks.iter().find(|(m, _)| *m == map) {
            return *label;
        }
        let label = self.label();
        self.callbacks.push((map, label));
        label
    }

    /// The callbacks asked for, after the program's last instruction.
    /// `long bpf_loop callback(u32 index, void *key)`: 0 goes on, 1 stops.
    pub(super) fn wait_callbacks(&mut self) {
        for (map, label) in std::mem::take(&mut self.callbacks) {
            self.asm.bind(label);
            self.asm
                .annotate("bpf_loop callback: stop once the flow's word is even, or it is gone");
            // R2 is the key (a pointer into the caller's frame).
            self.asm.ld_map_fd(R1, map);
            self.call(Helper::MAP_LOOKUP_ELEM);
            self.emit(Insn::jmp(JmpOp::Eq, R0, 0, 4));
            self.emit(Insn::ldx(Size::W, R0, R0, LOCK_OFFSET as i16));
            self.emit(Insn::and64(R0, 1));
            self.emit(Insn::xor64(R0, 1));
            self.emit(Insn::exit());
            self.emit(Insn::mov64(R0, 1));
            self.emit(Insn::exit());
        }
    }
}
