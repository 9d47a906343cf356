//! Service chains: functions on one attach point where `pass` of one
//! continues to the next (issue 9; docs/chains.md).
//!
//! A chain is run with tail calls through a program array, the
//! [`CHAIN_MAP`]. A function built with [`Options::chain`](crate::Options)
//! set to a [`ChainLink`] does, wherever it would return the pass verdict
//! (`pass`, `controller then pass`, a default `pass`), first
//! `bpf_tail_call(ctx, chain, link.next)`; when that slot is empty (the
//! last function) the call returns and the program gives the pass verdict
//! as a lone program does. Drop, tx and redirect end the chain. The packet
//! reaches the next function untouched: every function parses the headers
//! itself.
//!
//! Why the slot is a constant and the array belongs to one *generation*:
//! a change (add, remove, move, replace) loads every function again
//! against a fresh array (each function's own maps reused, so its flows
//! and globals are kept), fills it, and only then swaps the hook's link to
//! the new head with one `bpf_link_update`. Programs hold their array
//! from load time, so a packet that entered the old head runs the old
//! chain to its end and a packet that enters the new head runs the new
//! one: no packet sees half a change, which filling slots of one shared
//! array one by one could not promise (a reorder rewrites several).
//!
//! Limits: the kernel allows 33 tail calls per packet
//! (`MAX_TAIL_CALL_CNT`), shared with a migrating reload's handoff (which
//! is also one): [`MAX_FUNCTIONS`] keeps a chain well inside that. The
//! kernel only jumps between programs of the same type (and, at XDP, the
//! same frags support), so all functions of a chain share the hook.

/// The program array of a chain generation, in each function's object.
pub const CHAIN_MAP: &str = "chain";

/// The most functions a chain holds (the array's size, the same in every
/// object so that all functions of a generation share one array).
pub const MAX_FUNCTIONS: u32 = 32;

/// Where a chained function continues on `pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    /// The slot of [`CHAIN_MAP`] holding the next function (the
    /// function's own position plus one).
    pub next: u32,
}

impl ChainLink {
    /// The link of the function at `position` (0 is the head).
    pub fn after(position: u32) -> ChainLink {
        ChainLink { next: position + 1 }
    }
}

/// The chain's program array, as each function's object declares it.
pub(crate) fn map_def() -> flowstate_obj::MapDef {
    use flowstate_obj::{BtfType, MapDef, MapKind};
    MapDef::new(
        CHAIN_MAP,
        MapKind::ProgArray,
        BtfType::u32(),
        BtfType::u32(),
        MAX_FUNCTIONS,
    )
}
