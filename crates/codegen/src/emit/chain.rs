//! The pass verdict of a chained function: a tail call to the next one
//! first (see [`crate::chain`]).

use flowstate_asm::Reg::*;
use flowstate_asm::{Helper, Insn, MapRef};

use super::{Emitter, CTX};

/// Id of the chain's program array in `ld_map_fd` (the program's own maps
/// are 0 to 4, a migration's 5 to 7, `ports` 8, the metadata 9).
pub(crate) const CHAIN: MapRef = MapRef(10);

impl Emitter<'_> {
    /// In a chained function, before the pass verdict: continue in the
    /// next function. The tail call does not return when the slot holds a
    /// program; when it is empty it does, and the caller's pass verdict
    /// follows. Clobbers R0-R5.
    pub(super) fn continue_chain(&mut self) {
        let Some(link) = self.target.chain else {
            return;
        };
        self.asm
            .annotate(format!("pass: continue in the chain's slot {}", link.next));
        self.emit(Insn::mov64(R1, CTX));
        self.asm.ld_map_fd(R2, CHAIN);
        self.emit(Insn::mov64(R3, link.next as i32));
        self.call(Helper::TAIL_CALL);
    }
}
