//! The one reference to the object's metadata (see [`crate::meta`]).

use flowstate_asm::MapRef;
use flowstate_asm::Reg::*;

use super::Emitter;

/// Id of `flowstate_meta` (in `.rodata`) in `ld_imm64` (the program's own
/// maps are 0 to 4, a migration's 5 to 7, `ports` 8).
pub(crate) const META: MapRef = MapRef(9);

impl Emitter<'_> {
    /// Loads the metadata's address into R0, which the entry code then
    /// overwrites: the kernel lists the `.rodata` map among the program's
    /// maps, so tools find the metadata from the program id alone.
    pub(super) fn reference_metadata(&mut self) {
        self.asm
            .annotate("the object's metadata: listed among the program's maps");
        self.asm.ld_map_fd(R0, META);
    }
}
