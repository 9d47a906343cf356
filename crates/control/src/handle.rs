//! A running instance's tables, reopened from their pins: flows, globals,
//! counters and the event ring buffer, decoded with the program the
//! metadata saved.
//!
//! Reads copy entries with the map syscalls, without the lock (a copy made
//! while a packet writes that entry may mix its old and new fields). Edits
//! never write the maps from user space: they go through the editor
//! program (`edit.rs`), which takes the flow's lock word in the kernel
//! exactly as a packet does, so an edit and a packet of the same flow at
//! the same instant are applied one after the other, and neither is lost:
//! - `set_state` / `set_register` change that one field of the entry as
//!   the program would read it now (a missing flow is made in the initial
//!   state with constant initial registers; one past its timeout is reset
//!   to its rollback state first), set `last_seen` to now, and delete the
//!   entry instead when it ends up equal to a missing one (DESIGN.md 1.8);
//! - `delete_flow` and `flush` delete each entry while holding its lock;
//! - `set_global` swaps that one global with an atomic exchange, so the
//!   packets' concurrent additions to it and to the other globals stay.
//!
//! The editor is compiled and loaded on the first edit, once per handle.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData, RingBuf};
use flowstate_codegen::editor::{Outcome, Request};
use flowstate_codegen::meta::GlobalsForm;
use flowstate_codegen::{EntryView, Layout};
use flowstate_lang::ir::{Program, StateId};
use flowstate_runtime::RawMap;

use crate::edit::Editing;
use crate::meta::Meta;
use crate::{globals, keytext, paths, ControlError};

/// One entry of the state table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    /// As the user writes it (`10.0.0.1 22`).
    pub key: String,
    /// The packed key, as stored in the map.
    pub key_bytes: Vec<u8>,
    /// The stored state.
    pub state: String,
    /// `Some(rollback state)` when the entry is past its timeout: the
    /// program reads it as that state (registers reset) on its next packet.
    pub expired_to: Option<String>,
    /// Per-flow registers by name, in declaration order.
    pub registers: Vec<(String, i64)>,
    /// Since the entry was created; `None` when the program keeps no clock.
    pub age_ns: Option<u64>,
    /// Since its last packet; `None` when the program keeps no clock.
    pub idle_ns: Option<u64>,
}

/// Packets and bytes counted for one table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowStat {
    /// Source line of the row.
    pub line: u32,
    /// The row as source text.
    pub text: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters summed over CPUs, and flows per state.
#[derive(Debug, Clone)]
pub struct Stats {
    /// When they were read (for rates between two readings).
    pub taken: Instant,
    pub rows: Vec<RowStat>,
    /// Packets and bytes that got the default action.
    pub default: (u64, u64),
    /// Packets that gave up waiting for their flow's lock (then got the
    /// default action).
    pub contention: u64,
    /// New flows refused because the table was full.
    pub table_full: u64,
    /// Every declared state with its number of entries, in declaration
    /// order (expired entries count under their stored state).
    pub flows_by_state: Vec<(String, usize)>,
}

/// One `controller` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Monotonic nanoseconds (the program's `now`) when it was sent; 0
    /// when the program reads no clock.
    pub time_ns: i64,
    /// When user space read it.
    pub received: std::time::SystemTime,
    /// The flow key as the user writes it (empty when the packet had none).
    pub key: String,
    /// The flow's state after the packet.
    pub state: String,
    /// Source line of the row that fired; `None` for the default action.
    pub row_line: Option<u32>,
    pub pkt_len: u32,
    /// The first bytes of the packet (at most 128).
    pub head: Vec<u8>,
    /// The head decoded: `10.0.0.1:40000 -> 10.0.0.100:22 TCP syn`.
    pub summary: String,
}

/// The reopened tables of a running instance.
pub struct Handle {
    meta: Meta,
    program: Program,
    layout: Layout,
    pin_dir: PathBuf,
    flows: RawMap,
    globals: Option<RawMap>,
    /// How `globals` stores them (values, or an earlier flowstate's
    /// offsets from the initial values).
    globals_form: GlobalsForm,
    counters: RawMap,
    /// The events ring buffer's kernel id, for a program found by id
    /// rather than by its pins (see [`crate::foreign`]).
    events_id: Option<u32>,
    /// Loaded on the first edit.
    editing: std::sync::OnceLock<Editing>,
}

/// Reopens the pinned maps of instance `name` and the program it saved.
/// `CHAIN/FUNC` names function FUNC of chain CHAIN (see [`crate::chain`]).
pub fn open(name: &str) -> Result<Handle, ControlError> {
    if let Some((chain, function)) = name.split_once('/') {
        return crate::chain::open_function(chain, function);
    }
    paths::check_name(name)?;
    let meta_path = paths::meta_path(name);
    if !meta_path.exists() {
        return Err(ControlError::NotRunning(name.to_string()));
    }
    let meta = Meta::load(&meta_path)?;
    open_at(meta, meta_path, paths::pin_dir(name))
}

/// The handle of a program described by `meta` (read from `meta_path`)
/// whose maps are pinned under `pin_dir/maps`.
pub(crate) fn open_at(
    meta: Meta,
    meta_path: PathBuf,
    pin_dir: PathBuf,
) -> Result<Handle, ControlError> {
    let program = crate::compile_source(&meta.source_path, &meta.source)?;
    let layout = Layout::new(&program, false);
    let open_map = |map: &str| {
        let path = pin_dir.join("maps").join(map);
        RawMap::from_pin(&path).map_err(|e| {
            if e.to_string().contains("Operation not permitted") {
                ControlError::NeedsRoot
            } else {
                ControlError::kernel(format!("opening {}", path.display()), e)
            }
        })
    };
    let flows = open_map(layout.flows_map)?;
    if flows.key_size() != layout.key_size || flows.value_size() != layout.value_size {
        return Err(ControlError::Metadata {
            path: meta_path,
            message: format!(
                "the pinned flows map has {}/{} byte keys/values, the saved program {}/{}",
                flows.key_size(),
                flows.value_size(),
                layout.key_size,
                layout.value_size
            ),
        });
    }
    let globals = layout.globals_map.map(open_map).transpose()?;
    let counters = open_map(layout.counters_map)?;
    Ok(Handle {
        meta,
        program,
        layout,
        pin_dir,
        flows,
        globals_form: globals
            .as_ref()
            .map_or(GlobalsForm::Values, globals::form_of),
        globals,
        counters,
        events_id: None,
        editing: std::sync::OnceLock::new(),
    })
}

impl Handle {
    /// A handle on maps already open: a program's found through its info
    /// (see [`crate::foreign`]); `meta` describes it.
    pub(crate) fn from_maps(
        meta: Meta,
        program: Program,
        flows: RawMap,
        globals: Option<RawMap>,
        counters: RawMap,
        events_id: Option<u32>,
    ) -> Handle {
        let layout = Layout::new(&program, false);
        Handle {
            pin_dir: paths::pin_dir(&meta.name),
            meta,
            program,
            layout,
            flows,
            globals_form: globals
                .as_ref()
                .map_or(GlobalsForm::Values, globals::form_of),
            globals,
            counters,
            events_id,
            editing: std::sync::OnceLock::new(),
        }
    }
}

fn kernel_error(what: &str) -> impl FnOnce(flowstate_runtime::RuntimeError) -> ControlError + '_ {
    move |e| ControlError::kernel(what, e)
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> i64 {
    // SAFETY: clock_gettime writes into the timespec it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec)
}

impl Handle {
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The running program, as the metadata saved it.
    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn state_name(&self, id: StateId) -> String {
        self.program
            .states
            .get(id.0 as usize)
            .map_or_else(|| format!("#{}", id.0), |s| s.name.clone())
    }

    fn row_of(&self, key: &[u8], entry: &EntryView, now: i64) -> FlowRow {
        let has_clock = entry.created != 0 || entry.last_seen != 0;
        let since = |t: i64| has_clock.then(|| now.wrapping_sub(t).max(0) as u64);
        let expired_to = self
            .program
            .states
            .get(entry.state.0 as usize)
            .and_then(|s| s.timeout)
            .filter(|t| {
                has_clock
                    && (t
                        .idle_ns
                        .is_some_and(|i| now.wrapping_sub(entry.last_seen) > i)
                        || t.hard_ns
                            .is_some_and(|h| now.wrapping_sub(entry.created) > h))
            })
            .map(|t| self.state_name(t.rollback));
        FlowRow {
            key: keytext::format_key(&self.layout.key_fields, key),
            key_bytes: key.to_vec(),
            state: self.state_name(entry.state),
            expired_to,
            registers: self
                .program
                .registers
                .iter()
                .zip(&entry.registers)
                .map(|(r, v)| (r.name.clone(), *v))
                .collect(),
            age_ns: since(entry.created),
            idle_ns: since(entry.last_seen),
        }
    }

    /// Entries of the state table, sorted by key; only those in
    /// `filter_state` (stored state) when given, at most `limit`.
    pub fn flows(
        &self,
        filter_state: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<FlowRow>, ControlError> {
        let wanted = filter_state.map(|s| self.state_id(s)).transpose()?;
        let now = monotonic_ns();
        let mut entries = self
            .flows
            .entries()
            .map_err(kernel_error("reading the flows map"))?;
        entries.sort();
        let mut rows = Vec::new();
        for (key, value) in entries {
            let entry = self.layout.decode_entry(&value);
            if wanted.is_some_and(|w| w != entry.state) {
                continue;
            }
            if limit.is_some_and(|l| rows.len() >= l) {
                break;
            }
            rows.push(self.row_of(&key, &entry, now));
        }
        Ok(rows)
    }

    /// The entry under `key_text`, if any.
    pub fn flow(&self, key_text: &str) -> Result<Option<FlowRow>, ControlError> {
        let key = self.parse_key(key_text)?;
        let value = self
            .flows
            .lookup(&key)
            .map_err(kernel_error("reading the flows map"))?;
        Ok(value.map(|v| self.row_of(&key, &self.layout.decode_entry(&v), monotonic_ns())))
    }

    fn parse_key(&self, key_text: &str) -> Result<Vec<u8>, ControlError> {
        keytext::parse_key(&self.layout.key_fields, key_text).map_err(ControlError::Key)
    }

    fn state_id(&self, name: &str) -> Result<StateId, ControlError> {
        self.program
            .state_by_name(name)
            .ok_or_else(|| ControlError::NoSuchName {
                kind: "state",
                name: name.to_string(),
                known: names(self.program.states.iter().map(|s| s.name.as_str())),
            })
    }

    /// The editor, loaded on first use.
    fn editing(&self) -> Result<&Editing, ControlError> {
        if let Some(editing) = self.editing.get() {
            return Ok(editing);
        }
        let editing = Editing::load(&self.program, |name| {
            if name == self.layout.flows_map {
                Some(&self.flows)
            } else if Some(name) == self.layout.globals_map {
                self.globals.as_ref()
            } else {
                None
            }
        })?;
        Ok(self.editing.get_or_init(|| editing))
    }

    /// Puts flow `key_text` in `state` (creating the entry if needed; see
    /// the module doc for expiry, `last_seen` and elision).
    pub fn set_state(&self, key_text: &str, state: &str) -> Result<(), ControlError> {
        let key = self.parse_key(key_text)?;
        let state = self.state_id(state)?;
        self.editing()?.run(
            &format!("setting the state of flow {key_text}"),
            Request::SetState { key: &key, state },
        )?;
        Ok(())
    }

    /// Sets per-flow register `register` of flow `key_text` (creating the
    /// entry if needed).
    pub fn set_register(
        &self,
        key_text: &str,
        register: &str,
        value: i64,
    ) -> Result<(), ControlError> {
        let key = self.parse_key(key_text)?;
        let index = self
            .program
            .registers
            .iter()
            .position(|r| r.name == register)
            .ok_or_else(|| ControlError::NoSuchName {
                kind: "register",
                name: register.to_string(),
                known: names(self.program.registers.iter().map(|r| r.name.as_str())),
            })?;
        self.editing()?.run(
            &format!("setting {register} of flow {key_text}"),
            Request::SetRegister {
                key: &key,
                index,
                value,
            },
        )?;
        Ok(())
    }

    /// Removes flow `key_text`: its next packet starts it afresh.
    pub fn delete_flow(&self, key_text: &str) -> Result<(), ControlError> {
        let key = self.parse_key(key_text)?;
        let outcome = self.editing()?.run(
            &format!("deleting flow {key_text}"),
            Request::Delete { key: &key },
        )?;
        match outcome {
            Outcome::NoSuchFlow => Err(ControlError::NoSuchFlow(key_text.to_string())),
            _ => Ok(()),
        }
    }

    /// Removes every flow, each under its lock; returns how many were
    /// removed. Flows that packets create meanwhile may stay.
    pub fn flush(&self) -> Result<usize, ControlError> {
        let keys = self
            .flows
            .keys()
            .map_err(kernel_error("reading the flows map"))?;
        let editing = self.editing()?;
        let mut removed = 0;
        for key in keys {
            let outcome = editing.run("flushing the flows", Request::Delete { key: &key })?;
            if matches!(outcome, Outcome::Deleted { .. }) {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Global registers by name, in declaration order.
    pub fn globals(&self) -> Result<Vec<(String, i64)>, ControlError> {
        let Some(map) = &self.globals else {
            return Ok(Vec::new());
        };
        let value = map
            .array_get(0)
            .map_err(kernel_error("reading the globals map"))?;
        Ok(self
            .program
            .globals
            .iter()
            .zip(globals::decode(&self.layout, self.globals_form, &value))
            .map(|(g, v)| (g.name.clone(), v))
            .collect())
    }

    /// Sets global register `name` (one atomic exchange: packets'
    /// additions to it before the exchange are replaced, later ones kept,
    /// and the other globals are not touched).
    pub fn set_global(&self, name: &str, value: i64) -> Result<(), ControlError> {
        let index = self
            .program
            .globals
            .iter()
            .position(|g| g.name == name)
            .filter(|_| self.globals.is_some())
            .ok_or_else(|| ControlError::NoSuchName {
                kind: "global",
                name: name.to_string(),
                known: names(self.program.globals.iter().map(|g| g.name.as_str())),
            })?;
        if self.globals_form == GlobalsForm::Offsets {
            return Err(ControlError::kernel(
                format!("setting global {name}"),
                globals::offsets_refusal(&self.meta.name),
            ));
        }
        self.editing()?.run(
            &format!("setting global {name}"),
            Request::SetGlobal { index, value },
        )?;
        Ok(())
    }

    fn counter(&self, index: u32) -> Result<(u64, u64), ControlError> {
        let sums = self
            .counters
            .sum_u64_per_cpu(&index.to_le_bytes())
            .map_err(kernel_error("reading the counters map"))?
            .unwrap_or_default();
        Ok((
            sums.first().copied().unwrap_or(0),
            sums.get(1).copied().unwrap_or(0),
        ))
    }

    pub fn stats(&self) -> Result<Stats, ControlError> {
        let taken = Instant::now();
        let mut rows = Vec::new();
        for (i, row) in self.program.rows.iter().enumerate() {
            let (packets, bytes) = self.counter(i as u32)?;
            rows.push(RowStat {
                line: row.pos.line,
                text: row_text(&self.program, row),
                packets,
                bytes,
            });
        }
        let default = self.counter(self.layout.counter_default)?;
        let (contention, _) = self.counter(self.layout.counter_contention)?;
        let (table_full, _) = self.counter(self.layout.counter_table_full)?;
        let mut by_state = vec![0usize; self.program.states.len()];
        for (_, value) in self
            .flows
            .entries()
            .map_err(kernel_error("reading the flows map"))?
        {
            let state = self.layout.decode_entry(&value).state.0 as usize;
            if let Some(n) = by_state.get_mut(state) {
                *n += 1;
            }
        }
        Ok(Stats {
            taken,
            rows,
            default,
            contention,
            table_full,
            flows_by_state: self
                .program
                .states
                .iter()
                .zip(by_state)
                .map(|(s, n)| (s.name.clone(), n))
                .collect(),
        })
    }

    /// The `controller` events, from the pinned ring buffer. Fails when the
    /// program has no `controller` action. Events are consumed: two
    /// readers share them.
    pub fn events(&self) -> Result<Events, ControlError> {
        let Some(map) = self.layout.events_map else {
            return Err(ControlError::NoSuchName {
                kind: "controller action (so no events)",
                name: self.meta.name.clone(),
                known: "rows with `controller` send events".to_string(),
            });
        };
        let path = self.pin_dir.join("maps").join(map);
        let data = match self.events_id {
            Some(id) => MapData::from_id(id)
                .map_err(|e| ControlError::kernel(format!("opening events map id {id}"), e))?,
            None => MapData::from_pin(&path)
                .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))?,
        };
        let ring = RingBuf::try_from(Map::RingBuf(data))
            .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))?;
        Ok(Events {
            ring,
            layout: self.layout.clone(),
            program: self.program.clone(),
        })
    }
}

/// A stream of `controller` events.
pub struct Events {
    ring: RingBuf<MapData>,
    layout: Layout,
    program: Program,
}

impl Events {
    /// The next event, waiting up to `timeout` for one; `Ok(None)` if none
    /// came.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, ControlError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.try_next() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.ring.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ret < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(ControlError::kernel("poll on the events ring buffer", err));
                }
            }
        }
    }

    /// The next event already in the ring buffer, without waiting.
    /// Records too short to decode are skipped.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            let record = self.ring.next()?;
            let decoded = self.layout.decode_event(&record);
            drop(record);
            if let Some(e) = decoded {
                return Some(self.event_of(e));
            }
        }
    }

    fn event_of(&self, e: flowstate_codegen::Event) -> Event {
        let keyless = e.key.iter().all(|&b| b == 0);
        Event {
            time_ns: e.time,
            received: std::time::SystemTime::now(),
            key: if keyless {
                String::new()
            } else {
                keytext::format_key(&self.layout.key_fields, &e.key)
            },
            state: self
                .program
                .states
                .get(e.state as usize)
                .map_or_else(|| format!("#{}", e.state), |s| s.name.clone()),
            row_line: e
                .row
                .and_then(|r| self.program.rows.get(r as usize))
                .map(|r| r.pos.line),
            pkt_len: e.pkt_len,
            summary: crate::summary::packet_head(&e.head),
            head: e.head,
        }
    }
}

impl Iterator for Events {
    type Item = Event;

    /// Blocks until the next event; ends only if polling fails.
    fn next(&mut self) -> Option<Event> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(event)) => return Some(event),
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// `STATE ITEMS => EFFECTS`, as in the source.
pub(crate) fn row_text(program: &Program, row: &flowstate_lang::ir::Row) -> String {
    flowstate_lang::print::row(program, row)
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.collect();
    if all.is_empty() {
        "none".to_string()
    } else {
        all.join(", ")
    }
}
