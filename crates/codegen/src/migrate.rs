//! The programs of a migrating reload: moving every flow from the running
//! program's table to a new program's table of another layout (states or
//! registers added, removed or reordered) while packets keep updating
//! them, without losing an update.
//!
//! A copy made by user space cannot do that: it reads an entry, and the
//! running program may update the entry before the copy lands. So flows
//! move in the kernel, under the per-flow protocol (crate doc), one at a
//! time, each exactly once:
//!
//! 1. **Handoff** ([`compile_handoff`]): the *old* program compiled again,
//!    on the same maps, plus a `successor` program array. When it finds
//!    its flow's entry held and marked moved ([`MOVED_STATE`]), it gives
//!    the packet, untouched, to the program in the array's slot 0 with a
//!    tail call (it has written nothing yet: every write comes after the
//!    lock), which handles it against the new table. It replaces the
//!    running program first: they share the table and the protocol, so
//!    that swap loses nothing. User space then waits for an RCU grace
//!    period (XDP and TC programs run inside RCU read-side sections), so
//!    that every old packet still running when moves begin is one of the
//!    handoff build's, which knows what "moved" means (the running
//!    program may come from an older flowstate, which did not).
//! 2. **Bridge** ([`compile_bridge`]): the *new* program, on a new table,
//!    reading the old table (`old_flows`) through. Before its lookup it
//!    pulls each key's flow: if the new table lacks it, it locks the old
//!    entry (waiting for any old writer), converts it (states and
//!    registers by name, a mapping fixed at compile time: [`Conversion`]),
//!    inserts it into the new table with `BPF_NOEXIST`, and marks the old
//!    entry moved, leaving it held for good. An old packet that reaches
//!    the entry afterwards fails its cmpxchg (the word moved on), starts
//!    over locking, sees the mark and is handed to the bridge: it is
//!    ordered after the move, as if it had come a moment later.
//! 3. A flow in neither table: until the old program has surely stopped
//!    (the `drained` word of the `migration` map, which user space sets
//!    after the bridge is on the link and an RCU grace period has passed),
//!    the bridge claims the key in the old table with a held tombstone
//!    (`MOVED_STATE`, `BPF_NOEXIST`) before creating the flow in the new
//!    one, so that an old packet cannot create it there meanwhile (its
//!    insert fails and it is handed over). If the old packet's insert came
//!    first, the tombstone fails and the bridge moves that entry instead.
//! 4. **Mover** ([`compile_mover`]): run by user space with
//!    `BPF_PROG_TEST_RUN` once per key left in the old table (the key is
//!    the packet), it pulls flows the same way, so that every flow is in
//!    the new table before the final program (the plain new one) replaces
//!    the bridge and the old table is dropped.
//!
//! Every move is counted in the `migration` map ([`MigrationCounts`]):
//! moved, moved with a state that no longer exists (now the initial one),
//! not moved because the new table already had the flow (a conflict: only
//! around a full or evicting old table, see the limits) or was full (lost).
//!
//! Why nothing is lost: each flow's entry in the old table is written only
//! under its lock word; the move takes that word and never gives it back,
//! so every write to the old entry is either before the move (and moved
//! with it) or never happens (the writer is handed to the bridge). Once
//! the new table has a flow, or the old table has its tombstone (or the
//! old program has stopped), the old table never gets the flow back, so
//! the bridge's pull is needed once per packet, before anything else.
//!
//! The order on the link, with the control plane's journal steps:
//! `swap` (handoff build), grace period, `bridge` (bridge), grace period
//! and `drained`, `sweep` (mover), `final-swap` (the new program).
//!
//! Limits: an LRU
//! table (`evict`) frees elements without their lock (crate doc), so an
//! eviction in the old table during the move can free an entry being
//! moved or a tombstone. A full old table refuses a tombstone: the
//! bridge creates the flow anyway, and an old packet that finds room
//! after a deletion creates it in the old table too (the mover counts a
//! conflict and keeps the new table's). A row that only refreshes `last_seen` stores it
//! without the lock (crate doc): in a packet of the old program racing
//! the move, that refresh can land in the moved entry, and the flow keeps
//! a `last_seen` a few microseconds older. Global registers are not
//! migrated here (user space copies them by name).

use std::borrow::Cow;

use flowstate_lang::ir::{Hook, Program, Register, StateId};
use flowstate_obj::{BtfType, MapDef, MapKind, StructType};

use crate::emit::migrate::Role;
use crate::{layout, CodegenError, Layout, Options, Output};

/// The state word of an old entry whose flow is in the new table (moved,
/// or claimed by a tombstone); its lock word stays odd.
pub const MOVED_STATE: u32 = crate::emit::migrate::MOVED_STATE as u32;

/// The old program's table, as the bridge and the mover see it.
pub const OLD_FLOWS_MAP: &str = "old_flows";
/// The migration's counters and control word (array: slot
/// [`MIGRATION_COUNTS`], slot [`MIGRATION_CONTROL`]).
pub const MIGRATION_MAP: &str = "migration";
/// The handoff program's successor (program array, one slot).
pub const SUCCESSOR_MAP: &str = "successor";
/// The mover's symbol in its object.
pub const MOVER_SYMBOL: &str = "mover";

/// What a mover run returns when the flow is moved (or nothing was left
/// to move): `XDP_DROP`.
pub const MOVER_DONE: u32 = crate::emit::migrate::MOVER_DONE as u32;
/// What it returns when the old entry stayed held for the whole
/// `may_goto` budget, or the packet was shorter than a key:
/// `XDP_ABORTED`.
pub const MOVER_FAILED: u32 = crate::emit::migrate::MOVER_FAILED as u32;

/// Byte offsets in the `migration` value.
pub(crate) struct MigrationOffsets {
    pub drained: usize,
    pub moved: usize,
    pub remapped: usize,
    pub conflicts: usize,
    pub lost: usize,
}

pub(crate) const MIGRATION_OFFSETS: MigrationOffsets = MigrationOffsets {
    drained: 0,
    moved: 8,
    remapped: 16,
    conflicts: 24,
    lost: 32,
};

/// Bytes of the `migration` value.
pub const MIGRATION_SIZE: usize = 40;

/// The `migration` value, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationCounts {
    /// Flows moved into the new table.
    pub moved: u64,
    /// Of those, flows whose state no longer exists (now the initial one).
    pub remapped: u64,
    /// Flows not moved because the new table already had them.
    pub conflicts: u64,
    /// Flows not moved because the new table was full.
    pub lost: u64,
}

impl MigrationCounts {
    pub fn decode(value: &[u8]) -> MigrationCounts {
        let at = |offset: usize| {
            value
                .get(offset..offset + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        MigrationCounts {
            moved: at(MIGRATION_OFFSETS.moved),
            remapped: at(MIGRATION_OFFSETS.remapped),
            conflicts: at(MIGRATION_OFFSETS.conflicts),
            lost: at(MIGRATION_OFFSETS.lost),
        }
    }
}

/// Index in the `migration` map of the counters ([`MigrationCounts`]).
pub const MIGRATION_COUNTS: u32 = 0;
/// Index in the `migration` map of the control word: its first u64 is
/// `drained`, written by user space as [`drained_value`] (a slot of its
/// own, so that writing it never overwrites a count).
pub const MIGRATION_CONTROL: u32 = 1;

/// The control value that says the old program has stopped.
pub fn drained_value() -> Vec<u8> {
    let mut value = vec![0u8; MIGRATION_SIZE];
    value[..8].copy_from_slice(&1u64.to_le_bytes());
    value
}

/// Where each register of the new program comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterSource {
    /// The old program's register of the same name, by index.
    Old(usize),
    /// A new register: its constant initial value (0 when not constant).
    Initial(i64),
}

/// An old entry in the new layout: states and registers by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// For each old state, by id: the new state of that name, if any
    /// (`None`: the flow goes to the initial state).
    pub states: Vec<Option<StateId>>,
    /// For each new register: where its value comes from.
    pub registers: Vec<RegisterSource>,
    /// Registers of the old program.
    pub old_registers: usize,
}

impl Conversion {
    pub fn new(old: &Program, new: &Program) -> Conversion {
        let initial = new.constant_initial_registers();
        Conversion {
            states: old
                .states
                .iter()
                .map(|s| new.state_by_name(&s.name))
                .collect(),
            registers: new
                .registers
                .iter()
                .zip(initial)
                .map(|(r, init)| {
                    old.registers
                        .iter()
                        .position(|o| o.name == r.name)
                        .map_or(RegisterSource::Initial(init), RegisterSource::Old)
                })
                .collect(),
            old_registers: old.registers.len(),
        }
    }
}

/// How [`crate::compile`] is changed for one program of a migration.
pub(crate) struct Variant<'a> {
    pub role: Role<'a>,
    /// The program whose stack plan is used (the new program with room
    /// for an old entry in its view, for the bridge and the mover).
    pub frame_program: Cow<'a, Program>,
    /// Overrides the hook (the mover is an XDP program, run by tests).
    pub hook: Option<Hook>,
    /// Overrides the program's symbol.
    pub symbol: Option<String>,
    pub extra_maps: Vec<MapDef>,
}

impl<'a> Variant<'a> {
    pub fn plain(program: &'a Program) -> Variant<'a> {
        Variant {
            role: Role::Plain,
            frame_program: Cow::Borrowed(program),
            hook: None,
            symbol: None,
            extra_maps: Vec::new(),
        }
    }
}

/// The old program, handing packets of moved flows to its successor (see
/// the module doc). Its maps are the old program's plus
/// [`SUCCESSOR_MAP`].
pub fn compile_handoff(old: &Program, options: &Options) -> Result<Output, CodegenError> {
    let successor = MapDef::new(
        SUCCESSOR_MAP,
        MapKind::ProgArray,
        BtfType::u32(),
        BtfType::u32(),
        1,
    );
    let variant = Variant {
        role: Role::Handoff,
        extra_maps: vec![successor],
        ..Variant::plain(old)
    };
    crate::compile_parts(old, options, Default::default(), variant)
}

/// The new program, pulling flows from the old table (see the module
/// doc). Its maps are the new program's plus [`OLD_FLOWS_MAP`] (the old
/// program's `flows`) and [`MIGRATION_MAP`].
pub fn compile_bridge(
    new: &Program,
    old: &Program,
    options: &Options,
) -> Result<Output, CodegenError> {
    let conversion = Conversion::new(old, new);
    let variant = Variant {
        role: Role::Bridge(&conversion),
        frame_program: Cow::Owned(with_room_for(new, old)),
        extra_maps: migration_maps(old, options),
        ..Variant::plain(new)
    };
    crate::compile_parts(new, options, Default::default(), variant)
}

/// The mover: an XDP program for `BPF_PROG_TEST_RUN` whose packet is a
/// key (at least 14 bytes, as the kernel asks: pad with zeros); it pulls
/// that key's flow and returns [`MOVER_DONE`] or [`MOVER_FAILED`] (both
/// actions drop the frame, so live-frames mode would do too; this kernel
/// refuses it with EPERM). A plain test run may be interrupted by a
/// softirq, or preempted, while it holds a flow's lock word: a packet of
/// that flow on the same CPU then waits out its budget (crate doc). Its
/// maps
/// are the new program's (only `flows` is used) plus [`OLD_FLOWS_MAP`]
/// and [`MIGRATION_MAP`]; its symbol is [`MOVER_SYMBOL`].
pub fn compile_mover(
    new: &Program,
    old: &Program,
    options: &Options,
) -> Result<Output, CodegenError> {
    let conversion = Conversion::new(old, new);
    let variant = Variant {
        role: Role::Mover(&conversion),
        frame_program: Cow::Owned(with_room_for(new, old)),
        hook: Some(Hook::Xdp),
        symbol: Some(MOVER_SYMBOL.to_string()),
        extra_maps: migration_maps(old, options),
    };
    crate::compile_parts(new, options, Default::default(), variant)
}

/// `new` with registers added, unused, until its entry view can hold an
/// old entry (a tombstone is built there).
fn with_room_for(new: &Program, old: &Program) -> Program {
    let mut padded = new.clone();
    while padded.registers.len() < old.registers.len() {
        let index = padded.registers.len();
        padded.registers.push(Register {
            name: format!("__room{index}"),
            init: flowstate_lang::ir::Expr::Const(0),
        });
    }
    padded
}

fn migration_maps(old: &Program, options: &Options) -> Vec<MapDef> {
    let old_layout = Layout::new(old, options.test_clock);
    let mut old_flows = layout::map_defs(old, &old_layout).swap_remove(0);
    old_flows.name = OLD_FLOWS_MAP.to_string();
    let mut value = StructType::new("migration");
    // In the control slot, the first member is the `drained` word.
    for member in ["drained", "moved", "remapped", "conflicts", "lost"] {
        value = value.field(member, BtfType::u64());
    }
    let migration = MapDef::new(
        MIGRATION_MAP,
        MapKind::Array,
        BtfType::u32(),
        value.into(),
        2,
    );
    vec![old_flows, migration]
}
