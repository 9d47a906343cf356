//! Stage 1: everything with a size or an offset.
//!
//! - [`Layout`]: the maps a compiled program uses and the byte layout of
//!   their keys and values, public so that user space (the control plane,
//!   the differential tests) reads and writes the kernel's tables the way
//!   the program does. It derives only from the program's declarations
//!   (key fields, registers, globals, rows count, actions), never from the
//!   table's contents, so a program recompiled with new rows keeps
//!   compatible maps.
//! - [`Frame`]: the plan of the eBPF stack (512 bytes), one slot per thing
//!   the generated code keeps there.
//! - The BTF types of the maps, so `bpftool map dump` shows named members.

use flowstate_lang::ir::{Action, BinOp, Expr, FullPolicy, GlobalId, Program, StateId};
use flowstate_obj::{BtfType, MapDef, MapKind, StructType};
use flowstate_wire::Field;

/// Name of the state table (hash or LRU hash).
pub const FLOWS_MAP: &str = "flows";
/// Name of the global registers: the variable (`struct globals`, one s64
/// per global, holding its value) in the object's `.data` section, and
/// the name flowstate pins that section's map under.
pub const GLOBALS_MAP: &str = "globals";
/// The section holding [`GLOBALS_MAP`]. Loaders make it an array map of
/// one element that starts with the globals' initial values: aya names
/// the map `.data`, libbpf `<object name>.data` (cut to 15 bytes).
pub const GLOBALS_SECTION: &str = ".data";
/// Name of the per-CPU packet and byte counters (per-CPU array).
pub const COUNTERS_MAP: &str = "counters";
/// Name of the ring buffer of `controller` events.
pub const EVENTS_MAP: &str = "events";
/// Name of the test clock (array, one u64), present only with
/// [`crate::Options::test_clock`].
pub const CLOCK_MAP: &str = "clock";
/// Name of the redirect ports (array of u32 ifindexes, one slot per
/// interface name the program's `redirect` actions use), present only when
/// some action redirects to a named interface. The loader fills it in the
/// namespace the program runs in; a slot left 0 drops the packet.
pub const PORTS_MAP: &str = "ports";

/// The name a loader gives the map holding `map` (one of the layout's
/// names): [`GLOBALS_SECTION`] for the globals, which live in `.data`
/// (aya's name; libbpf prefixes the object's name), else `map` itself.
pub fn loader_name(map: &str) -> &str {
    if map == GLOBALS_MAP {
        GLOBALS_SECTION
    } else {
        map
    }
}

/// Size of the events ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Bytes of packet head an event carries at most.
pub const EVENT_HEAD_BYTES: usize = 128;
/// `row` of an event sent by the default action.
pub const EVENT_ROW_DEFAULT: u32 = u32::MAX;

/// The eBPF stack limit.
pub const STACK_LIMIT: usize = 512;

/// The stack the program's own frame may take on `target`. A target that
/// waits in `bpf_loop` calls a callback, a second frame: the verifier
/// counts each frame rounded up to 32 bytes (at least 32) against
/// [`STACK_LIMIT`], so the program's frame gets 32 bytes less.
pub fn stack_limit(target: &crate::Target) -> usize {
    if target.waits_in_bpf_loop() {
        STACK_LIMIT - 32
    } else {
        STACK_LIMIT
    }
}

/// Offsets in a flow entry (`struct flow`).
pub const LOCK_OFFSET: usize = 0;
pub const STATE_OFFSET: usize = 4;
pub const CREATED_OFFSET: usize = 8;
pub const LAST_SEEN_OFFSET: usize = 16;
pub const REGISTERS_OFFSET: usize = 24;

/// A flow entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub state: StateId,
    pub registers: Vec<i64>,
    pub created: i64,
    pub last_seen: i64,
}

/// One `controller` event as the ring buffer delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `now` when the packet was processed.
    pub time: i64,
    /// Index of the row that fired; `None` for the default action.
    pub row: Option<u32>,
    /// The flow's state after the packet (0 when the packet had no key).
    pub state: u32,
    /// The packet's length.
    pub pkt_len: u32,
    /// The packed lookup key (zeros when the packet had no key).
    pub key: Vec<u8>,
    /// The first `min(pkt_len, 128)` bytes of the packet.
    pub head: Vec<u8>,
}

/// Map names and value layouts of a compiled program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub flows_map: &'static str,
    /// `None` when the program has no global registers; else
    /// [`GLOBALS_MAP`], the variable in [`GLOBALS_SECTION`].
    pub globals_map: Option<&'static str>,
    pub counters_map: &'static str,
    /// `None` when no action is `controller`.
    pub events_map: Option<&'static str>,
    /// `None` unless compiled with the test clock.
    pub clock_map: Option<&'static str>,
    /// `None` unless some action is `redirect IFNAME`.
    pub ports_map: Option<&'static str>,
    /// The interface names of the `ports` map, by slot.
    pub ports: Vec<String>,
    /// Fields of the state table key, in packing order.
    pub key_fields: Vec<Field>,
    /// Bytes of a packed key (`flowstate_interp::Key` packs the same way).
    pub key_size: usize,
    /// Bytes of a flow entry.
    pub value_size: usize,
    pub lock_offset: usize,
    pub state_offset: usize,
    pub created_offset: usize,
    pub last_seen_offset: usize,
    /// Offset of each per-flow register (s64), in declaration order.
    pub register_offsets: Vec<usize>,
    /// Bytes of the `globals` value: one s64 per global, in order, each
    /// holding the global's value (the object's `.data` holds the initial
    /// values, which loaders copy into the new map).
    pub globals_size: usize,
    /// The globals' initial values.
    pub globals_initial: Vec<i64>,
    /// Counter index of the default action (rows use their own index).
    pub counter_default: u32,
    /// Counter index of packets that gave up waiting for a flow's lock.
    pub counter_contention: u32,
    /// Counter index of new flows refused by a full table.
    pub counter_table_full: u32,
    /// Entries in `counters`.
    pub counter_count: u32,
    /// Bytes of one event record.
    pub event_size: usize,
    /// Offset of the key in an event record (the head follows the key,
    /// padded to 8 bytes).
    pub event_key_offset: usize,
    pub event_head_offset: usize,
}

impl Layout {
    pub fn new(program: &Program, test_clock: bool) -> Layout {
        let key_size = Program::key_size(&program.lookup_key);
        let registers = program.registers.len();
        let rows = program.rows.len() as u32;
        let event_key_offset = 24;
        let event_head_offset = event_key_offset + key_size.next_multiple_of(8);
        let ports = port_names(program);
        Layout {
            flows_map: FLOWS_MAP,
            globals_map: (!program.globals.is_empty()).then_some(GLOBALS_MAP),
            counters_map: COUNTERS_MAP,
            events_map: uses_controller(program).then_some(EVENTS_MAP),
            clock_map: test_clock.then_some(CLOCK_MAP),
            ports_map: (!ports.is_empty()).then_some(PORTS_MAP),
            ports,
            key_fields: program.lookup_key.clone(),
            key_size,
            value_size: REGISTERS_OFFSET + 8 * registers,
            lock_offset: LOCK_OFFSET,
            state_offset: STATE_OFFSET,
            created_offset: CREATED_OFFSET,
            last_seen_offset: LAST_SEEN_OFFSET,
            register_offsets: (0..registers).map(|i| REGISTERS_OFFSET + 8 * i).collect(),
            globals_size: 8 * program.globals.len(),
            globals_initial: program.globals.iter().map(|g| g.init).collect(),
            counter_default: rows,
            counter_contention: rows + 1,
            counter_table_full: rows + 2,
            counter_count: rows + 3,
            event_size: event_head_offset + EVENT_HEAD_BYTES,
            event_key_offset,
            event_head_offset,
        }
    }

    /// The `ports` slot of interface `ifname`.
    pub fn port_slot(&self, ifname: &str) -> Option<u32> {
        self.ports
            .iter()
            .position(|p| p == ifname)
            .map(|slot| slot as u32)
    }

    /// Decodes a flow entry; bytes missing from a short value read as 0 (a
    /// value read from this layout's map always has `value_size` bytes).
    pub fn decode_entry(&self, value: &[u8]) -> EntryView {
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = value.get(at + i).copied().unwrap_or(0);
            }
            u32::from_le_bytes(b)
        };
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = value.get(at + i).copied().unwrap_or(0);
            }
            i64::from_le_bytes(b)
        };
        EntryView {
            state: StateId(u16::try_from(u32_at(self.state_offset)).unwrap_or(u16::MAX)),
            registers: self.register_offsets.iter().map(|&o| i64_at(o)).collect(),
            created: i64_at(self.created_offset),
            last_seen: i64_at(self.last_seen_offset),
        }
    }

    /// Encodes a flow entry (unlocked); registers beyond the layout's are
    /// ignored, missing ones are 0.
    pub fn encode_entry(&self, entry: &EntryView) -> Vec<u8> {
        let mut value = vec![0u8; self.value_size];
        let state = u32::from(entry.state.0).to_le_bytes();
        value[self.state_offset..self.state_offset + 4].copy_from_slice(&state);
        value[self.created_offset..self.created_offset + 8]
            .copy_from_slice(&entry.created.to_le_bytes());
        value[self.last_seen_offset..self.last_seen_offset + 8]
            .copy_from_slice(&entry.last_seen.to_le_bytes());
        for (&offset, register) in self.register_offsets.iter().zip(&entry.registers) {
            value[offset..offset + 8].copy_from_slice(&register.to_le_bytes());
        }
        value
    }

    /// Decodes the `globals` value into one number per global (bytes
    /// missing from a short value read as 0).
    pub fn decode_globals(&self, value: &[u8]) -> Vec<i64> {
        (0..self.globals_initial.len())
            .map(|i| {
                value
                    .get(8 * i..8 * i + 8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i64::from_le_bytes)
            })
            .collect()
    }

    /// Decodes a `globals` value as flowstate stored it before globals
    /// moved to `.data` (metadata format `flowstate-meta/1`, a map named
    /// `globals`): each global as its difference from its initial value,
    /// so that a zeroed map read as the initial values.
    pub fn decode_globals_as_offsets(&self, value: &[u8]) -> Vec<i64> {
        self.decode_globals(value)
            .into_iter()
            .zip(&self.globals_initial)
            .map(|(stored, init)| stored.wrapping_add(*init))
            .collect()
    }

    /// Encodes global values as the `globals` map stores them; missing
    /// ones take their initial value.
    pub fn encode_globals(&self, values: &[i64]) -> Vec<u8> {
        self.globals_initial
            .iter()
            .enumerate()
            .flat_map(|(i, init)| values.get(i).copied().unwrap_or(*init).to_le_bytes())
            .collect()
    }

    /// Decodes one ring buffer record; `None` if it is too short.
    pub fn decode_event(&self, record: &[u8]) -> Option<Event> {
        if record.len() < self.event_size {
            return None;
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().unwrap_or([0; 4]));
        let pkt_len = u32_at(16);
        let cap = (u32_at(20) as usize).min(EVENT_HEAD_BYTES);
        let row = u32_at(8);
        Some(Event {
            time: i64::from_le_bytes(record[0..8].try_into().unwrap_or([0; 8])),
            row: (row != EVENT_ROW_DEFAULT).then_some(row),
            state: u32_at(12),
            pkt_len,
            key: record[self.event_key_offset..self.event_key_offset + self.key_size].to_vec(),
            head: record[self.event_head_offset..self.event_head_offset + cap].to_vec(),
        })
    }
}

/// Whether any action (a row's or the default) sends events.
pub fn uses_controller(program: &Program) -> bool {
    program
        .rows
        .iter()
        .map(|r| &r.action)
        .chain([&program.default_action])
        .any(|a| matches!(a, Action::Controller { .. }))
}

/// The distinct interface names of `redirect IFNAME` actions, in order of
/// first use (rows, then the default action).
pub fn port_names(program: &Program) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let actions = program
        .rows
        .iter()
        .map(|r| &r.action)
        .chain([&program.default_action]);
    for action in actions {
        if let Action::Redirect { ifname } = action {
            if !names.contains(ifname) {
                names.push(ifname.clone());
            }
        }
    }
    names
}

/// Whether some row's verdict is `redirect REGISTER`.
pub(crate) fn redirects_to_register(program: &Program) -> bool {
    program
        .rows
        .iter()
        .any(|r| matches!(r.action, Action::RedirectPort { .. }))
}

/// A C identifier made from a name (`ip.src` -> `ip_src`).
pub(crate) fn c_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The maps of a program, with BTF types naming every member.
pub(crate) fn map_defs(program: &Program, layout: &Layout) -> Vec<MapDef> {
    let mut key = StructType::new("flow_key");
    for &field in &program.lookup_key {
        key = key.field(
            c_name(field.name()),
            BtfType::array(BtfType::u8(), field.key_bytes() as u32),
        );
    }
    let mut value = StructType::new("flow")
        .field("lock", BtfType::u32())
        .field("state", BtfType::u32())
        .field("created", BtfType::i64())
        .field("last_seen", BtfType::i64());
    for register in &program.registers {
        value = value.field(format!("reg_{}", c_name(&register.name)), BtfType::i64());
    }
    let kind = match program.full_policy {
        FullPolicy::EvictLeastRecent => MapKind::LruHash,
        FullPolicy::RefuseNew => MapKind::Hash,
    };
    let mut maps = vec![MapDef::new(
        layout.flows_map,
        kind,
        key.into(),
        value.into(),
        program.capacity.max(1),
    )];
    let counter = StructType::new("counter")
        .field("packets", BtfType::u64())
        .field("bytes", BtfType::u64());
    maps.push(MapDef::new(
        layout.counters_map,
        MapKind::PerCpuArray,
        BtfType::u32(),
        counter.into(),
        layout.counter_count,
    ));
    if let Some(name) = layout.events_map {
        maps.push(MapDef::ring_buf(name, EVENTS_BYTES));
    }
    if let Some(name) = layout.clock_map {
        maps.push(MapDef::new(
            name,
            MapKind::Array,
            BtfType::u32(),
            BtfType::i64(),
            1,
        ));
    }
    if let Some(name) = layout.ports_map {
        maps.push(MapDef::new(
            name,
            MapKind::Array,
            BtfType::u32(),
            BtfType::u32(),
            layout.ports.len() as u32,
        ));
    }
    maps
}

/// The BTF type of the globals variable: `struct globals`, one named s64
/// per global, so `bpftool map dump` of the `.data` map shows each by
/// name. `None` without globals.
pub fn globals_type(program: &Program) -> Option<BtfType> {
    if program.globals.is_empty() {
        return None;
    }
    let mut globals = StructType::new("globals");
    for global in &program.globals {
        globals = globals.field(c_name(&global.name), BtfType::i64());
    }
    Some(globals.into())
}

/// Where the generated code keeps things on the stack. Offsets are from
/// R10 (negative) and 8-byte aligned: the verifier wants aligned stack
/// access.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// Slot of each field the parser stores (indexed by `Field as usize`).
    pub field_slots: Vec<Option<i16>>,
    /// The fields the parser must produce.
    pub fields: Vec<Field>,
    pub lookup_key: i16,
    /// `None` when the update key is the lookup key.
    pub update_key: Option<i16>,
    /// Padded size of a key area.
    pub key_area: usize,
    /// A copy of the flow entry (`struct flow`), also the buffer a new
    /// entry is built in.
    pub view: i16,
    /// New value of each per-flow register (parallel assignment).
    pub new_registers: i16,
    /// New value of each global.
    pub new_globals: i16,
    /// Value of each global before the row (for compare-and-swap).
    pub old_globals: i16,
    /// Saves a register borrowed to add a wide constant.
    pub bias_save: i16,
    /// Spill slots of the expression evaluator.
    pub spills: i16,
    pub spill_count: usize,
    /// u32 map key scratch (counter index, array index 0).
    pub scratch_key: i16,
    /// Times the packet started over.
    pub retried: i16,
    /// The lock word's sequence number the view was copied at (or the
    /// lock was taken at).
    pub seq: i16,
    /// 1 when the view is not a copy of a live entry (missing, expired).
    pub fresh: i16,
    /// Pointer to the globals value.
    pub globals_ptr: i16,
    /// State reported in events.
    pub event_state: i16,
    /// The row that fired, for a commit block several rows share. Written
    /// 4 bytes at `row_index + 4`: off the 8-byte grid the verifier keeps
    /// no constant there, so rows reaching one commit look alike to it
    /// (their paths merge instead of being walked once per row).
    pub row_index: i16,
    /// The port of a `redirect REGISTER` row, read when the row fires
    /// (its value before the row); 0 (never used) when no row has one.
    pub port: i16,
    /// Waits left before giving up, for targets that wait in `bpf_loop`
    /// (without `may_goto`; see [`crate::target`]); 0 when unused.
    pub tries: i16,
    /// Values of a row's field writes, 8 bytes each in the row's order
    /// (computed before the row's commit, written to the packet after it).
    pub writes: i16,
    /// Header offsets from the packet start the parser leaves for field
    /// writes (see `parse::ParseRequest::headers`); 0 when no row writes.
    pub headers: i16,
    /// Bytes used.
    pub size: usize,
}

/// Registers the expression evaluator uses before spilling.
pub(crate) const EVAL_REGISTERS: usize = 6;

impl Frame {
    pub fn plan(program: &Program, target: &crate::Target) -> Frame {
        let mut size = 0usize;
        let mut take = |bytes: usize| -> i16 {
            size += bytes.next_multiple_of(8);
            -(size as i16)
        };
        let fields = used_fields(program);
        let mut field_slots = vec![None; Field::ALL.len()];
        for &field in &fields {
            let bytes = if field.bits() > 64 { 16 } else { 8 };
            field_slots[field as usize] = Some(take(bytes));
        }
        let key_area = Program::key_size(&program.lookup_key)
            .max(1)
            .next_multiple_of(8);
        let lookup_key = take(key_area);
        let update_key = (program.update_key != program.lookup_key).then(|| take(key_area));
        let view = take(REGISTERS_OFFSET + 8 * program.registers.len());
        let new_registers = take(8 * program.registers.len());
        let new_globals = take(8 * program.globals.len());
        let old_globals = take(8 * program.globals.len());
        let spill_count = max_spills(program);
        let spills = take(8 * spill_count);
        let scratch_key = take(8);
        let bias_save = take(8);
        let retried = take(8);
        let seq = take(8);
        let fresh = take(8);
        let globals_ptr = take(8);
        let event_state = take(8);
        let row_index = take(8);
        let port = if redirects_to_register(program) {
            take(8)
        } else {
            0
        };
        let tries = if target.waits_in_bpf_loop() {
            take(8)
        } else {
            0
        };
        let max_writes = program
            .rows
            .iter()
            .map(|r| r.writes.len())
            .max()
            .unwrap_or(0);
        let (writes, headers) = if max_writes > 0 {
            (take(8 * max_writes), take(crate::parse::HEADER_SLOTS_LEN))
        } else {
            (0, 0)
        };
        Frame {
            field_slots,
            fields,
            lookup_key,
            update_key,
            key_area,
            view,
            new_registers,
            new_globals,
            old_globals,
            spills,
            spill_count,
            scratch_key,
            bias_save,
            retried,
            seq,
            fresh,
            globals_ptr,
            event_state,
            row_index,
            port,
            tries,
            writes,
            headers,
            size,
        }
    }

    pub fn field(&self, field: Field) -> i16 {
        // Every field a program reads is planned; 0 would be caught by the
        // verifier as an out-of-frame access rather than go unnoticed.
        self.field_slots[field as usize].unwrap_or(0)
    }

    pub fn view_at(&self, offset: usize) -> i16 {
        self.view + offset as i16
    }

    pub fn view_register(&self, index: usize) -> i16 {
        self.view_at(REGISTERS_OFFSET + 8 * index)
    }

    pub fn new_register(&self, index: usize) -> i16 {
        self.new_registers + 8 * index as i16
    }

    pub fn new_global(&self, index: usize) -> i16 {
        self.new_globals + 8 * index as i16
    }

    pub fn old_global(&self, index: usize) -> i16 {
        self.old_globals + 8 * index as i16
    }

    pub fn spill(&self, index: usize) -> i16 {
        self.spills + 8 * index as i16
    }

    pub fn write_value(&self, index: usize) -> i16 {
        self.writes + 8 * index as i16
    }
}

/// Every field the program reads (keys, patterns, expressions), plus
/// `pkt.len` for the byte counters, in catalogue order.
pub(crate) fn used_fields(program: &Program) -> Vec<Field> {
    let mut used = [false; Field::ALL.len()];
    used[Field::PktLen as usize] = true;
    for &f in program.lookup_key.iter().chain(&program.update_key) {
        used[f as usize] = true;
    }
    let mut exprs: Vec<&Expr> = program.registers.iter().map(|r| &r.init).collect();
    for row in &program.rows {
        for m in &row.fields {
            used[m.field as usize] = true;
        }
        for c in &row.conditions {
            exprs.push(&c.cond.lhs);
            exprs.push(&c.cond.rhs);
        }
        exprs.extend(row.updates.iter().map(|u| &u.value));
        for w in &row.writes {
            used[w.field as usize] = true;
            exprs.push(&w.value);
        }
    }
    for e in exprs {
        visit_fields(e, &mut |f| used[f as usize] = true);
    }
    Field::ALL
        .iter()
        .copied()
        .filter(|&f| used[f as usize])
        .collect()
}

pub(crate) fn visit_fields(expr: &Expr, f: &mut impl FnMut(Field)) {
    match expr {
        Expr::Field(field) => f(*field),
        Expr::Binary(_, a, b) => {
            visit_fields(a, f);
            visit_fields(b, f);
        }
        Expr::Const(_) | Expr::Reg(_) | Expr::Global(_) | Expr::Now => {}
    }
}

/// Spill slots an expression needs when evaluated at register `depth`
/// (see `emit::Evaluator`).
pub(crate) fn spills_needed(expr: &Expr, depth: usize) -> usize {
    match expr {
        Expr::Binary(op, a, b) => {
            let left = spills_needed(a, depth);
            if immediate(*op, b).is_some() {
                left
            } else if depth + 1 < EVAL_REGISTERS {
                left.max(spills_needed(b, depth + 1))
            } else {
                // `a` waits in a spill slot while `b` takes the last
                // register; then one more slot saves a borrowed register.
                left.max(1 + spills_needed(b, depth).max(1))
            }
        }
        _ => 0,
    }
}

/// The right operand of `op` as an instruction immediate, when it is a
/// constant that fits one (shift amounts are taken modulo 64 first).
pub(crate) fn immediate(op: BinOp, b: &Expr) -> Option<i32> {
    let Expr::Const(c) = b else { return None };
    match op {
        BinOp::Shl | BinOp::Shr => Some((c & 63) as i32),
        _ => i32::try_from(*c).ok(),
    }
}

/// Whether `expr` reads global `g`.
pub(crate) fn reads_global(expr: &Expr, g: GlobalId) -> bool {
    match expr {
        Expr::Global(x) => *x == g,
        Expr::Binary(_, a, b) => reads_global(a, g) || reads_global(b, g),
        _ => false,
    }
}

fn max_spills(program: &Program) -> usize {
    let mut exprs: Vec<&Expr> = program.registers.iter().map(|r| &r.init).collect();
    for row in &program.rows {
        for c in &row.conditions {
            exprs.push(&c.cond.lhs);
            exprs.push(&c.cond.rhs);
        }
        exprs.extend(row.updates.iter().map(|u| &u.value));
        exprs.extend(row.writes.iter().map(|w| &w.value));
    }
    // Conditions evaluate their right side one register up.
    exprs.iter().map(|e| spills_needed(e, 1)).max().unwrap_or(0)
}

/// Whether the program reads `now` in an expression.
pub(crate) fn reads_now(program: &Program) -> bool {
    fn has_now(e: &Expr) -> bool {
        match e {
            Expr::Now => true,
            Expr::Binary(_, a, b) => has_now(a) || has_now(b),
            _ => false,
        }
    }
    program.registers.iter().any(|r| has_now(&r.init))
        || program.rows.iter().any(|row| {
            row.conditions
                .iter()
                .any(|c| has_now(&c.cond.lhs) || has_now(&c.cond.rhs))
                || row.updates.iter().any(|u| has_now(&u.value))
                || row.writes.iter().any(|w| has_now(&w.value))
        })
}
