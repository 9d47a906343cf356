//! `redirect IFNAME` and `redirect REGISTER`.
//!
//! `redirect IFNAME`: the interface is found at run time, not compile time.
//!
//! Each distinct name has a slot in the `ports` array (see
//! [`crate::layout::PORTS_MAP`]) that the loader fills with the interface's
//! ifindex in the namespace the program runs in, so one object runs on any
//! host. Both hooks then call `bpf_redirect(ifindex, 0)`: one mechanism for
//! XDP and TC (since Linux 5.11 `bpf_redirect` at XDP takes the same bulked
//! path as `bpf_redirect_map`).
//!
//! A slot left 0 (an object loaded by a tool that does not fill `ports`,
//! such as `ip` or `bpftool`) drops the packet: XDP_DROP, TC_ACT_SHOT. The
//! row has already been counted and its writes done, as for any verdict.
//!
//! `redirect REGISTER` (a learning switch forwarding to a port it learned)
//! sends to the register's value before the row, read when the row's
//! commit starts and kept in a frame slot for the action's tail (which
//! rows share). A value that is no ifindex (0, negative, above 2^32-1)
//! drops, as in the interpreter; an ifindex no interface has is the
//! kernel's to drop after the redirect verdict.

use flowstate_asm::Reg::*;
use flowstate_asm::{AluOp, Helper, Insn, JmpOp, MapRef, Size};
use flowstate_lang::ir::{Action, Expr, Hook, RegTarget};

use super::{Emitter, ROW_ENV, TC_ACT_SHOT, XDP_DROP};

/// Map id of `ports` in `ld_map_fd` (the program's own maps are 0 to 4,
/// a migration's 5 to 7).
pub(crate) const PORTS: MapRef = MapRef(8);

impl Emitter<'_> {
    /// Redirects to the ifindex in `ports[slot]`, or drops when it is 0;
    /// ends the program.
    pub(super) fn redirect_to_port(&mut self, ifname: &str, slot: u32) {
        let drop = self.label();
        self.asm
            .annotate(format!("redirect {ifname}: its ifindex is ports[{slot}]"));
        self.emit(Insn::st(Size::W, R10, self.frame.scratch_key, slot as i32));
        self.lookup(PORTS, self.frame.scratch_key);
        self.jmp(JmpOp::Eq, R0, 0, drop);
        self.emit(Insn::ldx(Size::W, R1, R0, 0));
        self.jmp(JmpOp::Eq, R1, 0, drop);
        self.emit(Insn::mov64(R2, 0));
        self.call(Helper::REDIRECT);
        self.emit(Insn::exit());
        self.asm.bind(drop);
        self.drop_verdict();
    }

    /// `return XDP_DROP` (or TC_ACT_SHOT).
    fn drop_verdict(&mut self) {
        let code = if self.target.hook == Hook::Xdp {
            XDP_DROP
        } else {
            TC_ACT_SHOT
        };
        self.emit(Insn::mov64(R0, code));
        self.emit(Insn::exit());
    }
}

impl Emitter<'_> {
    /// At a row's commit, before anything is written: keeps the value a
    /// `redirect REGISTER` sends to (the register before the row) in the
    /// frame's port slot, for the action's tail.
    pub(super) fn keep_port(&mut self, action: &Action) {
        let Action::RedirectPort { port, name } = action else {
            return;
        };
        let value = match port {
            RegTarget::Flow(r) => Expr::Reg(*r),
            RegTarget::Global(g) => Expr::Global(*g),
        };
        self.asm
            .annotate(format!("keep the port of `redirect {name}`"));
        self.eval(&value, 0, 0, ROW_ENV);
        self.store_stack(self.frame.port, R1);
    }

    /// `redirect REGISTER`: the kept port if it is an ifindex (1 to
    /// 2^32-1, as `flowstate_lang::ir::port_ifindex` says), else drop;
    /// ends the program.
    pub(super) fn redirect_to_kept_port(&mut self, name: &str) {
        let drop = self.label();
        self.asm
            .annotate(format!("redirect {name}: the port kept at the commit"));
        self.load_stack(R1, self.frame.port);
        self.jmp(JmpOp::Eq, R1, 0, drop);
        self.emit(Insn::mov64(R2, R1));
        self.emit(Insn::alu64(AluOp::Rsh, R2, 32));
        self.jmp(JmpOp::Ne, R2, 0, drop);
        self.emit(Insn::mov64(R2, 0));
        self.call(Helper::REDIRECT);
        self.emit(Insn::exit());
        self.asm.bind(drop);
        self.drop_verdict();
    }
}
