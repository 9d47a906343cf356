//! The code of a migrating reload's programs (see [`crate::migrate`] for
//! the protocol): the handoff block of the old program, the pull of the
//! bridge and the mover's whole program.

use flowstate_asm::{AtomicOp, Helper, Insn, JmpOp, Label, MapRef, Size};

use super::{Emitter, Missing, BPF_NOEXIST, EEXIST, ENTRY, MAPS, NOW};
use crate::layout::{self, REGISTERS_OFFSET, STATE_OFFSET};
use crate::migrate::{
    Conversion, RegisterSource, MIGRATION_CONTROL, MIGRATION_COUNTS, MIGRATION_OFFSETS,
};
use flowstate_asm::Reg::*;

/// The state word of an entry of the old table whose flow now lives in the
/// new one (moved there, or claimed there while the old program may still
/// run: a tombstone). Its lock word stays odd for good: no one writes it
/// again, and the old table is dropped whole at the end of the reload.
pub(crate) const MOVED_STATE: i32 = 0x7fff_fffd;

/// Map ids of the migration's maps in `ld_map_fd` (the program's own are
/// 0 to 4, see [`MAPS`]).
pub(crate) const OLD_FLOWS: MapRef = MapRef(5);
pub(crate) const MIGRATION: MapRef = MapRef(6);
pub(crate) const SUCCESSOR: MapRef = MapRef(7);

/// Mover results (its return value): XDP actions that drop the frame (see
/// [`crate::migrate::compile_mover`]).
pub(crate) const MOVER_DONE: i32 = 1; // XDP_DROP
pub(crate) const MOVER_FAILED: i32 = 0; // XDP_ABORTED

/// What a program is in a migrating reload.
#[derive(Clone, Copy)]
pub(crate) enum Role<'a> {
    /// A program of its own.
    Plain,
    /// The old program, made to hand a packet whose flow has moved to the
    /// program in slot 0 of its `successor` array (a tail call).
    Handoff,
    /// The new program, pulling each flow from the old table the first
    /// time it meets it.
    Bridge(&'a Conversion),
    /// The mover: pulls the flow whose key is the packet's bytes.
    Mover(&'a Conversion),
}

impl Role<'_> {
    pub(crate) fn is_mover(&self) -> bool {
        matches!(self, Role::Mover(_))
    }
}

/// How a pull treats a flow missing from both tables.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// Nothing to do (the mover: the old program has stopped).
    Nothing,
    /// Until the old program has stopped (the `drained` word), claim the
    /// key in the old table with a tombstone, so that an old packet still
    /// in flight cannot create the flow there behind the bridge's back.
    Tombstone,
}

impl Emitter<'_> {
    /// Where a flow that has moved sends the packet: the handoff block in
    /// handoff programs, nowhere (it is waited on as held) otherwise.
    pub(super) fn moved_target(&self) -> Option<Label> {
        matches!(self.role, Role::Handoff).then_some(self.handoff)
    }

    /// After a lock word was read odd from the element the key led to
    /// (`ENTRY`): `moved` if the element is marked moved and the key still
    /// leads to it (moved entries are never freed, so it cannot be another
    /// flow's), else `busy`. Clobbers R0-R5.
    pub(super) fn held_and_moved(&mut self, map: MapRef, key: i16, moved: Label, busy: Label) {
        self.asm.annotate("held: moved to the new table?");
        self.emit(Insn::ldx(Size::W, R1, ENTRY, STATE_OFFSET as i16));
        self.jmp(JmpOp::Ne, R1, MOVED_STATE, busy);
        self.lookup(map, key);
        self.jmp(JmpOp::Ne, R0, ENTRY, busy);
        self.goto(moved);
    }

    /// Handoff programs: the packet starts over in the successor (nothing
    /// has been written for it yet). Without one, it counts as contention.
    pub(super) fn handoff_block(&mut self) {
        if !matches!(self.role, Role::Handoff) {
            return;
        }
        let handoff = self.handoff;
        self.asm.bind(handoff);
        self.asm
            .annotate("the flow has moved: the successor takes the packet");
        self.emit(Insn::mov64(R1, super::CTX));
        self.asm.ld_map_fd(R2, SUCCESSOR);
        self.emit(Insn::mov64(R3, 0));
        self.call(Helper::TAIL_CALL);
        let contention = self.contention;
        self.goto(contention);
    }

    /// Bridge programs: before the lookup, the flow of each key is pulled
    /// from the old table (once it is in the new table, or known to be
    /// in neither, the old table never gets it back).
    pub(super) fn pull_prologue(&mut self) {
        let Role::Bridge(conversion) = self.role else {
            return;
        };
        self.pull(self.frame.lookup_key, conversion, Absent::Tombstone);
        if let Some(update_key) = self.frame.update_key {
            self.pull(update_key, conversion, Absent::Tombstone);
        }
    }

    /// Moves the flow under the key at `key` from the old table to the new
    /// one unless the new one has it: takes the old entry's lock (waiting
    /// as long as it takes), converts it into the view, inserts it with
    /// `BPF_NOEXIST`, marks the old entry moved and keeps it held. An old
    /// entry already marked moved means done. Counts in the `migration`
    /// map. Keeps R6, R8 and R9.
    fn pull(&mut self, key: i16, conversion: &Conversion, absent: Absent) {
        let frame = self.frame;
        let top = self.label();
        let done = self.label();
        let missing = self.label();
        self.asm
            .annotate("migrating: pull the flow from the old table");
        // One budget for both loops: the lock loop inside and this one.
        self.start_waits(super::wait::INSERT_ROUNDS);
        self.asm.bind(top);
        self.lookup(MAPS.flows, key);
        self.jmp(JmpOp::Ne, R0, 0, done);
        self.lock_loop_in(OLD_FLOWS, key, Missing::Goto(missing), Some(done));
        self.convert(conversion);
        self.insert_new(key);
        self.store_stack(frame.fresh, R0);
        self.asm
            .annotate("mark the old entry moved; it stays held for good");
        self.emit(Insn::st(Size::W, ENTRY, STATE_OFFSET as i16, MOVED_STATE));
        self.count_move();
        self.goto(done);

        self.asm.bind(missing);
        if absent == Absent::Tombstone {
            self.asm
                .annotate("in neither table: claim the key in the old one until it is drained");
            self.lookup_index(MIGRATION, MIGRATION_CONTROL as i32);
            self.jmp(JmpOp::Eq, R0, 0, done);
            self.emit(Insn::ldx(
                Size::DW,
                R1,
                R0,
                MIGRATION_OFFSETS.drained as i16,
            ));
            self.jmp(JmpOp::Ne, R1, 0, done);
            self.held_view(MOVED_STATE);
            for i in 0..conversion.old_registers {
                self.emit(Insn::st(
                    Size::DW,
                    R10,
                    frame.view_at(REGISTERS_OFFSET + 8 * i),
                    0,
                ));
            }
            self.asm.ld_map_fd(R1, OLD_FLOWS);
            self.stack_ptr(R2, key);
            self.stack_ptr(R3, frame.view);
            self.emit(Insn::mov64(R4, BPF_NOEXIST));
            self.call(Helper::MAP_UPDATE_ELEM);
            // Someone created the flow in the old table first: move it.
            self.jmp(JmpOp::Ne, R0, -EEXIST, done);
            let contention = self.contention;
            self.wait_or_give_up(contention, None);
            self.goto(top);
        } else {
            self.goto(done);
        }
        self.asm.bind(done);
        self.forget_pull(conversion);
    }

    /// Gives every path out of a pull the same registers and scratch
    /// slots, so that the verifier walks the program after it once, not
    /// once per way the pull went (see `restart_block`).
    fn forget_pull(&mut self, conversion: &Conversion) {
        let frame = self.frame;
        let registers = self.program.registers.len().max(conversion.old_registers);
        let mut slots: Vec<i16> = (0..REGISTERS_OFFSET + 8 * registers)
            .step_by(8)
            .map(|at| frame.view_at(at))
            .collect();
        slots.extend([frame.seq, frame.fresh, frame.bias_save, frame.scratch_key]);
        for slot in slots {
            self.emit(Insn::st(Size::DW, R10, slot, 0));
        }
        for reg in [R0, R1, R2, R3, R4, R5, ENTRY] {
            self.emit(Insn::mov64(reg, 0));
        }
    }

    /// The held old entry at `ENTRY` in the new layout, in the view: the
    /// state by name (a gone state -> the initial one, flagged in
    /// `bias_save`), registers by name (new ones: their constant initial
    /// value), the times as they were. The lock word is set by the insert.
    fn convert(&mut self, conversion: &Conversion) {
        let frame = self.frame;
        self.asm.annotate("convert: states and registers by name");
        for at in [layout::CREATED_OFFSET, layout::LAST_SEEN_OFFSET] {
            self.emit(Insn::ldx(Size::DW, R1, ENTRY, at as i16));
            self.store_stack(frame.view_at(at), R1);
        }
        self.emit(Insn::st(Size::DW, R10, frame.bias_save, 0));
        let converted = self.label();
        self.emit(Insn::ldx(Size::W, R1, ENTRY, STATE_OFFSET as i16));
        for (old, new) in conversion.states.iter().enumerate() {
            let next = self.label();
            self.jmp(JmpOp::Ne, R1, old as i32, next);
            let id = new.map_or(0, |s| i32::from(s.0));
            self.emit(Insn::st(Size::W, R10, frame.view_at(STATE_OFFSET), id));
            if new.is_none() {
                self.emit(Insn::st(Size::DW, R10, frame.bias_save, 1));
            }
            self.goto(converted);
            self.asm.bind(next);
        }
        // No old program writes another number into an unlocked entry.
        self.emit(Insn::st(Size::W, R10, frame.view_at(STATE_OFFSET), 0));
        self.emit(Insn::st(Size::DW, R10, frame.bias_save, 1));
        self.asm.bind(converted);
        for (index, source) in conversion.registers.iter().enumerate() {
            match *source {
                RegisterSource::Old(i) => {
                    self.emit(Insn::ldx(
                        Size::DW,
                        R1,
                        ENTRY,
                        (REGISTERS_OFFSET + 8 * i) as i16,
                    ));
                }
                RegisterSource::Initial(value) => self.mov_const(R1, value),
            }
            self.store_stack(frame.view_register(index), R1);
        }
    }

    /// Counts the move whose insert result is in the `fresh` slot (and
    /// whose remapped flag is in `bias_save`) in the `migration` map.
    fn count_move(&mut self) {
        let frame = self.frame;
        let skip = self.label();
        let moved = self.label();
        let conflict = self.label();
        self.lookup_index(MIGRATION, MIGRATION_COUNTS as i32);
        self.jmp(JmpOp::Eq, R0, 0, skip);
        self.load_stack(R2, frame.fresh);
        self.emit(Insn::mov64(R1, 1));
        self.jmp(JmpOp::Eq, R2, 0, moved);
        self.jmp(JmpOp::Eq, R2, -EEXIST, conflict);
        self.atomic_add(MIGRATION_OFFSETS.lost);
        self.goto(skip);
        self.asm.bind(conflict);
        self.atomic_add(MIGRATION_OFFSETS.conflicts);
        self.goto(skip);
        self.asm.bind(moved);
        self.atomic_add(MIGRATION_OFFSETS.moved);
        self.load_stack(R1, frame.bias_save);
        self.atomic_add(MIGRATION_OFFSETS.remapped);
        self.asm.bind(skip);
    }

    /// `*(u64 *)(R0 + offset) += R1`, atomically.
    fn atomic_add(&mut self, offset: usize) {
        self.emit(Insn::atomic64(AtomicOp::Add, R0, R1, offset as i16));
    }

    /// The mover's program: the packet's first bytes are a key; its flow
    /// is pulled (the old program has stopped: no tombstones). Returns
    /// [`MOVER_DONE`], or [`MOVER_FAILED`] (the entry stayed held for the
    /// whole budget, or the packet is shorter than a key).
    pub(super) fn mover(&mut self, conversion: &Conversion) {
        let frame = self.frame;
        let bad = self.label();
        let key_size = self.layout.key_size;
        self.asm
            .annotate("mover: the key is the packet's first bytes");
        self.emit(Insn::mov64(super::CTX, R1));
        self.emit(Insn::ldx(Size::W, R2, super::CTX, 0));
        self.emit(Insn::ldx(Size::W, R3, super::CTX, 4));
        self.emit(Insn::mov64(R1, R2));
        self.emit(Insn::add64(R1, key_size as i32));
        self.jmp(JmpOp::Gt, R1, R3, bad);
        for at in 0..key_size {
            self.emit(Insn::ldx(Size::B, R1, R2, at as i16));
            self.emit(Insn::stx(Size::B, R10, R1, frame.lookup_key + at as i16));
        }
        self.emit(Insn::mov64(NOW, 0));
        self.pull(frame.lookup_key, conversion, Absent::Nothing);
        self.emit(Insn::mov64(R0, MOVER_DONE));
        self.emit(Insn::exit());
        let contention = self.contention;
        self.asm.bind(contention);
        self.emit(Insn::mov64(R0, MOVER_FAILED));
        self.emit(Insn::exit());
        self.asm.bind(bad);
        self.emit(Insn::mov64(R0, MOVER_FAILED));
        self.emit(Insn::exit());
    }
}
