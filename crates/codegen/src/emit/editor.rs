//! The editor's instructions (the request format and the meaning are in
//! [`crate::editor`]). It reuses the packet program's pieces of the
//! per-flow protocol: [`Emitter::lock_loop`], [`Emitter::delete_held`],
//! [`Emitter::unlock_entry`], [`Emitter::expiry_check`], so the two can
//! never follow different rules.
//!
//! Registers: R6 the request (packet data, bounds checked once), R7 the
//! flow entry, R8 `now`, R9 the checked state id or register index.

use super::*;
use crate::editor::{
    request_size, BAD_REQUEST, BUSY, CREATED, DELETED, ELIDED, INDEX_AT, KEY_AT, NO_SUCH_FLOW,
    OLD_AT, OP_AT, OP_DELETE, OP_SET_GLOBAL, OP_SET_REGISTER, OP_SET_STATE, OUTCOME_AT, TABLE_FULL,
    VALUE_AT, WRITTEN,
};

const REQUEST: Reg = R6;
const CHECKED: Reg = R9;

/// `struct xdp_md`: `data`, `data_end`.
const XDP_DATA: i16 = 0;
const XDP_DATA_END: i16 = 4;

/// Emits the editor of `program` (see [`emit`] for the passes).
pub(crate) fn emit_editor(
    program: &Program,
    target: &Target,
    layout: &Layout,
    frame: &Frame,
    lowered: &Lowered,
) -> Result<AsmProgram, Result<String, AsmError>> {
    let mut long_sites = BTreeSet::new();
    loop {
        let mut emitter = Emitter::new(program, target, layout, frame, lowered);
        emitter.long_sites = long_sites.clone();
        emitter.editor();
        match emitter.finish()? {
            Pass::Done(code) => return Ok(code),
            Pass::Relax(sites) => long_sites.extend(sites),
        }
    }
}

/// Which flow edit a block of code makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FlowEdit {
    State,
    Register,
}

impl Emitter<'_> {
    fn editor(&mut self) {
        let frame = self.frame;
        let short = self.label();
        let out = self.label();
        let bad = self.label();
        let size = request_size(self.layout) as i32;

        self.asm
            .annotate("the request is the packet: check its size");
        self.emit(Insn::ldx(Size::W, R2, R1, XDP_DATA));
        self.emit(Insn::ldx(Size::W, R3, R1, XDP_DATA_END));
        self.emit(Insn::mov64(REQUEST, R2));
        self.emit(Insn::add64(R2, size));
        self.jmp(JmpOp::Gt, R2, R3, short);

        self.asm
            .annotate("clear the view (a placeholder is inserted from it) and the key");
        for at in (0..self.layout.value_size).step_by(8) {
            self.emit(Insn::st(Size::DW, R10, frame.view_at(at), 0));
        }
        for at in (0..frame.key_area).step_by(8) {
            self.emit(Insn::st(Size::DW, R10, frame.lookup_key + at as i16, 0));
        }
        self.emit(Insn::st(Size::DW, R10, frame.seq, 0));
        self.emit(Insn::st(Size::DW, R10, frame.fresh, 0));
        self.emit(Insn::mov64(CHECKED, 0));
        self.load_now();
        self.asm.annotate("copy the key");
        for i in 0..self.layout.key_size {
            self.emit(Insn::ldx(Size::B, R1, REQUEST, (KEY_AT + i) as i16));
            self.emit(Insn::stx(Size::B, R10, R1, frame.lookup_key + i as i16));
        }

        let set_state = self.label();
        let set_register = self.label();
        let delete = self.label();
        let global = self.label();
        self.asm.annotate("dispatch on the operation");
        self.emit(Insn::ldx(Size::W, R1, REQUEST, OP_AT as i16));
        self.jmp(JmpOp::Eq, R1, OP_SET_STATE as i32, set_state);
        self.jmp(JmpOp::Eq, R1, OP_SET_REGISTER as i32, set_register);
        self.jmp(JmpOp::Eq, R1, OP_DELETE as i32, delete);
        self.jmp(JmpOp::Eq, R1, OP_SET_GLOBAL as i32, global);
        self.goto(bad);

        self.asm.bind(set_state);
        self.asm.annotate("set-state: the state id must exist");
        self.emit(Insn::ldx(Size::DW, CHECKED, REQUEST, VALUE_AT as i16));
        self.jmp(JmpOp::Ge, CHECKED, self.program.states.len() as i32, bad);
        self.flow_edit(FlowEdit::State, out);

        self.asm.bind(set_register);
        self.asm.annotate("set a register: the index must exist");
        self.emit(Insn::ldx(Size::W, CHECKED, REQUEST, INDEX_AT as i16));
        self.jmp(JmpOp::Ge, CHECKED, self.program.registers.len() as i32, bad);
        if self.program.registers.is_empty() {
            self.goto(bad);
        } else {
            self.flow_edit(FlowEdit::Register, out);
        }

        self.asm.bind(delete);
        self.delete_flow(out);

        self.asm.bind(global);
        self.set_global(bad, out);

        let contention = self.contention;
        self.asm.bind(contention);
        self.asm
            .annotate("the entry stayed locked through the loop budget: nothing changed");
        self.reply(BUSY, out);
        let table_full = self.table_full;
        self.asm.bind(table_full);
        self.elided_without_room(out);
        self.asm.annotate("no entry, and no room for one");
        self.reply(TABLE_FULL, out);
        self.asm.bind(bad);
        self.reply(BAD_REQUEST, out);

        self.asm.bind(out);
        self.asm.annotate("write the outcome into the reply");
        self.emit(Insn::stx(Size::W, REQUEST, R1, OUTCOME_AT as i16));
        self.emit(Insn::mov64(R0, XDP_PASS));
        self.emit(Insn::exit());
        self.asm.bind(short);
        self.asm.annotate("too short to be a request");
        self.emit(Insn::mov64(R0, XDP_DROP));
        self.emit(Insn::exit());
    }

    /// A flow missing from a full table: an edit that would leave it
    /// equal to a missing entry (the initial state, or a register set to
    /// its initial value) needs no room, and is elided as it would be with
    /// room (its moment is the failed insert, when the flow was missing).
    /// Falls through otherwise.
    fn elided_without_room(&mut self, out: Label) {
        if !self.program.elides_initial_entries() {
            return;
        }
        let full = self.label();
        let not_state = self.label();
        self.asm
            .annotate("no room, but an edit that changes nothing needs none");
        self.emit(Insn::ldx(Size::W, R1, REQUEST, OP_AT as i16));
        self.jmp(JmpOp::Ne, R1, OP_SET_STATE as i32, not_state);
        self.jmp(JmpOp::Ne, CHECKED, 0, full);
        self.emit(Insn::mov64(R1, 0));
        self.reply_old(R1);
        self.reply(ELIDED, out);
        self.asm.bind(not_state);
        self.jmp(JmpOp::Ne, R1, OP_SET_REGISTER as i32, full);
        let initial = self.program.constant_initial_registers();
        for (i, value) in initial.into_iter().enumerate() {
            let other = self.label();
            self.jmp(JmpOp::Ne, CHECKED, i as i32, other);
            self.emit(Insn::ldx(Size::DW, R1, REQUEST, VALUE_AT as i16));
            self.jmp_const(JmpOp::Ne, R1, value as u64, full, R2);
            self.mov_const(R1, value);
            self.reply_old(R1);
            self.reply(ELIDED, out);
            self.asm.bind(other);
        }
        self.asm.bind(full);
    }

    /// `R1 = code; goto out`.
    fn reply(&mut self, code: u32, out: Label) {
        self.emit(Insn::mov64(R1, code as i32));
        self.goto(out);
    }

    /// `reply.old = reg`.
    fn reply_old(&mut self, reg: Reg) {
        self.emit(Insn::stx(Size::DW, REQUEST, reg, OLD_AT as i16));
    }

    /// Writes the program's initial registers into the held entry.
    fn initial_registers_in_place(&mut self) {
        let initial = self.program.constant_initial_registers();
        for (i, value) in initial.into_iter().enumerate() {
            self.mov_const(R1, value);
            self.emit(Insn::stx(
                Size::DW,
                ENTRY,
                R1,
                (REGISTERS_OFFSET + 8 * i) as i16,
            ));
        }
    }

    /// One flow edit, start to end: lock (a placeholder when missing),
    /// the entry as a packet reads it, the change, `last_seen`, elision,
    /// release.
    fn flow_edit(&mut self, edit: FlowEdit, out: Label) {
        let frame = self.frame;
        let created = self.label();
        let apply = self.label();
        self.lock_loop(frame.lookup_key, Missing::Placeholder(created));

        // Held, existing: past a timeout it reads as the rollback state.
        let mut expired = Vec::new();
        self.expiry_check(ENTRY, 0, &mut |e: &mut Emitter, s| {
            let label = e.label();
            expired.push((s, label));
            label
        });
        self.goto(apply);
        for (state, label) in expired {
            self.asm.bind(label);
            let rollback = self.program.states[state.0 as usize]
                .timeout
                .map_or(StateId(0), |t| t.rollback);
            self.asm.annotate(format!(
                "expired: reads as {}, registers reset",
                self.program.state_name(rollback)
            ));
            self.emit(Insn::st(
                Size::W,
                ENTRY,
                STATE_OFFSET as i16,
                i32::from(rollback.0),
            ));
            self.initial_registers_in_place();
            self.emit(Insn::stx(
                Size::DW,
                ENTRY,
                NOW,
                layout::CREATED_OFFSET as i16,
            ));
            self.goto(apply);
        }

        self.asm.bind(created);
        self.asm
            .annotate("a held placeholder: make it the initial entry");
        self.emit(Insn::st(Size::W, ENTRY, STATE_OFFSET as i16, 0));
        self.initial_registers_in_place();
        self.emit(Insn::st(Size::DW, R10, frame.fresh, 1));

        self.asm.bind(apply);
        match edit {
            FlowEdit::State => {
                self.asm.annotate("the state");
                self.emit(Insn::ldx(Size::W, R1, ENTRY, STATE_OFFSET as i16));
                self.reply_old(R1);
                self.emit(Insn::stx(Size::W, ENTRY, CHECKED, STATE_OFFSET as i16));
            }
            FlowEdit::Register => {
                self.asm.annotate("the register (index checked)");
                self.emit(Insn::mov64(R2, CHECKED));
                self.emit(Insn::lsh64(R2, 3));
                self.emit(Insn::add64(R2, ENTRY));
                self.emit(Insn::ldx(Size::DW, R1, R2, REGISTERS_OFFSET as i16));
                self.reply_old(R1);
                self.emit(Insn::ldx(Size::DW, R1, REQUEST, VALUE_AT as i16));
                self.emit(Insn::stx(Size::DW, R2, R1, REGISTERS_OFFSET as i16));
            }
        }
        self.emit(Insn::stx(
            Size::DW,
            ENTRY,
            NOW,
            layout::LAST_SEEN_OFFSET as i16,
        ));

        if self.program.elides_initial_entries() {
            let keep = self.label();
            self.asm
                .annotate("equal to a missing entry? then delete it, still held");
            let initial = self.program.constant_initial_registers();
            for (i, value) in initial.into_iter().enumerate() {
                self.emit(Insn::ldx(
                    Size::DW,
                    R1,
                    ENTRY,
                    (REGISTERS_OFFSET + 8 * i) as i16,
                ));
                self.jmp_const(JmpOp::Ne, R1, value as u64, keep, R2);
            }
            self.emit(Insn::ldx(Size::W, R1, ENTRY, STATE_OFFSET as i16));
            self.jmp(JmpOp::Ne, R1, 0, keep);
            self.delete_held(frame.lookup_key);
            self.reply(ELIDED, out);
            self.asm.bind(keep);
        }
        self.asm.annotate("release");
        self.unlock_entry();
        let made = self.label();
        self.load_stack(R1, frame.fresh);
        self.jmp(JmpOp::Ne, R1, 0, made);
        self.reply(WRITTEN, out);
        self.asm.bind(made);
        self.reply(CREATED, out);
    }

    /// Delete: lock, delete while holding (the element is freed locked).
    fn delete_flow(&mut self, out: Label) {
        let frame = self.frame;
        let absent = self.label();
        self.asm.annotate("delete");
        self.lock_loop(frame.lookup_key, Missing::Goto(absent));
        self.emit(Insn::ldx(Size::W, R1, ENTRY, STATE_OFFSET as i16));
        self.reply_old(R1);
        self.delete_held(frame.lookup_key);
        // A failed delete means LRU eviction took the element meanwhile:
        // it is gone either way.
        self.reply(DELETED, out);
        self.asm.bind(absent);
        self.reply(NO_SUCH_FLOW, out);
    }

    /// A global: one atomic exchange of its slot (packets add to globals
    /// atomically, so no addition is lost).
    fn set_global(&mut self, bad: Label, out: Label) {
        let count = self.program.globals.len();
        if count == 0 || self.layout.globals_map.is_none() {
            self.goto(bad);
            return;
        }
        self.asm.annotate("set a global: atomic exchange");
        self.emit(Insn::ldx(Size::W, CHECKED, REQUEST, INDEX_AT as i16));
        self.jmp(JmpOp::Ge, CHECKED, count as i32, bad);
        // The `globals` variable in `.data`: its address, never null.
        self.asm.ld_map_value(R0, MAPS.globals, 0);
        self.emit(Insn::lsh64(CHECKED, 3));
        self.emit(Insn::add64(R0, CHECKED));
        self.emit(Insn::ldx(Size::DW, R1, REQUEST, VALUE_AT as i16));
        self.emit(Insn::atomic64(AtomicOp::Xchg, R0, R1, 0));
        self.reply_old(R1);
        self.reply(WRITTEN, out);
    }
}
