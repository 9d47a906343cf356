//! The reference interpreter: the executable meaning of a checked program.
//!
//! Every other execution (the compiled eBPF program above all) is checked
//! against this one, so it follows DESIGN.md section 1 step by step and
//! stays plain: a packet is parsed, its key packed, its entry read (missing
//! and expired entries read as fresh ones), the rows tried in order, and the
//! first match written back under the update key. The clock is the caller's.
//!
//! Rules the language leaves to the executions, fixed here:
//! - A row that reads a field the packet lacks (in a pattern, a condition or
//!   an update) does not match. A register initial value that reads an
//!   absent field reads 0.
//! - An entry expires when `now - last_seen > idle` or `now - created >
//!   hard` (signed, wrapping); it then reads as its rollback state with
//!   registers at their initial values, and `created` restarts at the next
//!   write.
//! - A row's updates are evaluated in parallel from the values before it.
//! - Under `flows N refuse`, a new flow that finds the table full gets the
//!   default action and nothing (not even a global) is written.
//! - A row that writes a field the packet lacks does not match. A row's
//!   field writes are evaluated with its updates, from the values before
//!   the row; the step lists them ([`Step::writes`]) and
//!   [`Step::rewrite`] applies them to the frame by the rules of
//!   `flowstate_wire::rewrite` (checksums updated). Any verdict carries the
//!   rewritten frame: what `pass` hands the stack, `tx` and `redirect`
//!   send, and `controller` reports.
//! - `redirect REGISTER` sends to the register's value before the row; a
//!   value that is no ifindex (`flowstate_lang::ir::port_ifindex`) makes
//!   the step's verdict `drop` (the row still fires and writes).
//!
//! Full tables under `flows N evict`: the promise every execution keeps
//! (docs/language.md, "Capacity and full policy"; the differential tests
//! check it packet by packet):
//! - A new flow is always admitted: its packet gets its row's verdict and
//!   its entry is written, never the default because the table is full.
//! - The table never holds more than N flows.
//! - Flows are evicted only when a new flow's entry is inserted, never when
//!   a packet reads, rewrites or deletes an entry.
//! - The victims are other flows than the one inserted; the inserting
//!   packet's verdict and the entry it writes are as if no eviction
//!   happened (its own flow was read before). An evicted flow reads as new.
//! - Which flows: this interpreter evicts exactly one, the least recently
//!   seen (a flow is seen when a row writes it: the order of `last_seen`
//!   writes), and only when the table is full. The kernel (an LRU hash)
//!   approximates that: it may evict several flows at once, start before
//!   the table is exactly full, and prefer flows no packet looked up
//!   lately over exact recency; any flow but the one inserted may go. The
//!   interpreter's choice is one of those the promise allows; to follow
//!   another execution's choice, see [`Machine::process_evicting`].
//!
//! Service chains ([`Chain`]): machines run in order on each packet, `pass`
//! hands it on, any other verdict ends the chain; two functions may share
//! one table when their layouts agree ([`check_shareable`]). The rules are
//! in the [`chain`] module doc and docs/chains.md.

pub mod chain;
pub mod key;
pub mod share;
pub mod table;

use flowstate_lang::ir::{
    port_ifindex, Action, Condition, Expr, FieldWrite, Program, RegTarget, Row, StateId,
    StatePattern,
};
use flowstate_wire::{Field, Headers};

pub use chain::{Chain, ChainStep};
pub use key::Key;
pub use share::{check_shareable, LayoutMismatch};
pub use table::{Entry, StateTable};

/// Packets and bytes that took a row (or the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

/// The verdict of a `redirect REGISTER` whose value is no ifindex.
static DROP: Action = Action::Drop;

/// Why a packet got the default action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultReason {
    /// A lookup or update key field is absent: the packet never entered the
    /// machine.
    NoKey,
    /// No table row matched.
    NoRowMatched,
    /// A row matched, but its new flow found the table full (`refuse`).
    TableFull,
}

/// What happened to one packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<'p> {
    /// The verdict: the row's (or the default's) action, except that a
    /// `redirect REGISTER` whose value is no ifindex reads as `drop`.
    pub action: &'p Action,
    /// Where `redirect REGISTER` sends the packet: the register's value
    /// before the row (see [`flowstate_lang::ir::port_ifindex`]).
    pub port: Option<u32>,
    /// Index into `Program::rows` of the row that fired; `None` = default.
    pub row: Option<usize>,
    pub default_reason: Option<DefaultReason>,
    /// The lookup key, when the packet has one.
    pub key: Option<Key>,
    /// The state the flow read as (after timeouts), when it has a key.
    pub state_before: Option<StateId>,
    /// The state written (or kept) for the flow.
    pub state_after: Option<StateId>,
    /// Flows evicted to make room for this one (at most one, unless the
    /// victims were chosen: [`Machine::process_evicting`]).
    pub evicted: Vec<Key>,
    /// The packet fields the row wrote, with their values (cut to each
    /// field's width), in the row's order. Empty for the default action.
    pub writes: Vec<(Field, u128)>,
}

impl Step<'_> {
    /// Apply the step's field writes to `frame` (the frame the step was
    /// made from), checksums kept right.
    pub fn rewrite(&self, frame: &mut [u8]) {
        if !self.writes.is_empty() {
            flowstate_wire::rewrite::apply(frame, &self.writes);
        }
    }

    /// The frame as it leaves the program: `frame` with the writes applied.
    pub fn output(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        self.rewrite(&mut out);
        out
    }
}

/// A program's run-time state, stepped one packet at a time.
#[derive(Debug, Clone)]
pub struct Machine<'p> {
    program: &'p Program,
    table: StateTable,
    globals: Vec<i64>,
    row_hits: Vec<Counter>,
    default_hits: Counter,
    same_keys: bool,
    /// The initial registers when initial entries are elided (DESIGN.md 1.8):
    /// then they are constants, known once.
    elided_initial: Option<Vec<i64>>,
}

/// What a matching row writes: the flow's new registers and the globals it
/// assigns.
struct RowEffects {
    registers: Vec<i64>,
    globals: Vec<(usize, i64)>,
    writes: Vec<(Field, u128)>,
}

/// A flow's entry as the table read it for this packet.
struct FlowView {
    state: StateId,
    registers: Vec<i64>,
}

impl<'p> Machine<'p> {
    pub fn new(program: &'p Program) -> Machine<'p> {
        Machine {
            program,
            table: StateTable::new(program.capacity, program.full_policy),
            globals: program.globals.iter().map(|g| g.init).collect(),
            row_hits: vec![Counter::default(); program.rows.len()],
            default_hits: Counter::default(),
            same_keys: program.lookup_key == program.update_key,
            elided_initial: program
                .elides_initial_entries()
                .then(|| program.constant_initial_registers()),
        }
    }

    pub fn program(&self) -> &'p Program {
        self.program
    }

    pub fn table(&self) -> &StateTable {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut StateTable {
        &mut self.table
    }

    pub fn globals(&self) -> &[i64] {
        &self.globals
    }

    pub fn row_hits(&self) -> &[Counter] {
        &self.row_hits
    }

    pub fn default_hits(&self) -> Counter {
        self.default_hits
    }

    /// Parse `frame` and run it through the machine at time `now`.
    pub fn process(&mut self, frame: &[u8], ifindex: u32, now: i64) -> Step<'p> {
        let headers = flowstate_wire::parse(frame, ifindex);
        self.process_headers(&headers, now)
    }

    /// [`Machine::process`], with the eviction chosen by the caller: if the
    /// packet writes a new flow, `victims` are evicted when it is inserted
    /// (after the packet read its own flow), instead of the least recently
    /// seen flow (see [`StateTable::insert_evicting`]). This is how the
    /// differential tests replay an eviction the kernel chose, one the
    /// full-table promise allows. A packet that writes no new flow evicts
    /// nothing: the step's `evicted` says what was.
    pub fn process_evicting(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        now: i64,
        victims: &[Key],
    ) -> Step<'p> {
        let headers = flowstate_wire::parse(frame, ifindex);
        self.step(&headers, now, victims)
    }

    /// Run already parsed headers through the machine at time `now`.
    pub fn process_headers(&mut self, headers: &Headers, now: i64) -> Step<'p> {
        self.step(headers, now, &[])
    }

    /// [`Machine::process_evicting`] on already parsed headers.
    pub fn process_headers_evicting(
        &mut self,
        headers: &Headers,
        now: i64,
        victims: &[Key],
    ) -> Step<'p> {
        self.step(headers, now, victims)
    }

    fn step(&mut self, headers: &Headers, now: i64, victims: &[Key]) -> Step<'p> {
        let bytes = headers.get(Field::PktLen).unwrap_or(0) as u64;
        let (Some(lookup), Some(update)) = (
            Key::pack(&self.program.lookup_key, headers),
            Key::pack(&self.program.update_key, headers),
        ) else {
            return self.default_step(bytes, DefaultReason::NoKey, None, None);
        };

        let flow = self.read(&lookup, headers, now);
        let Some((index, row, effects)) = self.first_match(&flow, headers, now) else {
            return self.default_step(
                bytes,
                DefaultReason::NoRowMatched,
                Some(lookup),
                Some(flow.state),
            );
        };
        let next = row.next.unwrap_or(flow.state);
        // The port a `redirect REGISTER` reads: its value before the row.
        let port = match &row.action {
            Action::RedirectPort { port, .. } => Some(match port {
                RegTarget::Flow(r) => flow.registers[r.0 as usize],
                RegTarget::Global(g) => self.globals[g.0 as usize],
            }),
            _ => None,
        };

        let mut evicted = Vec::new();
        if self.is_elided(next, &effects.registers) {
            self.table.remove(&update);
        } else {
            let created = match self.table.get(&update) {
                Some(e) if !self.expired(e, now) => e.created,
                _ => now,
            };
            let entry = Entry {
                state: next,
                registers: effects.registers,
                created,
                last_seen: now,
            };
            match self.table.insert_evicting(update, entry, victims) {
                Ok(victims) => evicted = victims,
                Err(table::TableFull) => {
                    return self.default_step(
                        bytes,
                        DefaultReason::TableFull,
                        Some(lookup),
                        Some(flow.state),
                    );
                }
            }
        }
        for (target, value) in effects.globals {
            self.globals[target] = value;
        }
        self.row_hits[index].add(bytes);
        let (action, port) = match port.map(port_ifindex) {
            Some(None) => (&DROP, None),
            Some(ifindex) => (&row.action, ifindex),
            None => (&row.action, None),
        };
        Step {
            action,
            port,
            row: Some(index),
            default_reason: None,
            key: Some(lookup),
            state_before: Some(flow.state),
            state_after: Some(next),
            evicted,
            writes: effects.writes,
        }
    }

    fn default_step(
        &mut self,
        bytes: u64,
        reason: DefaultReason,
        key: Option<Key>,
        state: Option<StateId>,
    ) -> Step<'p> {
        self.default_hits.add(bytes);
        Step {
            action: &self.program.default_action,
            port: None,
            row: None,
            default_reason: Some(reason),
            key,
            state_before: state,
            state_after: state,
            evicted: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// Whether `entry` has outlived a timeout of its state at `now`.
    pub fn expired(&self, entry: &Entry, now: i64) -> bool {
        let Some(timeout) = self.program.states[entry.state.0 as usize].timeout else {
            return false;
        };
        let idle = timeout
            .idle_ns
            .is_some_and(|d| now.wrapping_sub(entry.last_seen) > d);
        let hard = timeout
            .hard_ns
            .is_some_and(|d| now.wrapping_sub(entry.created) > d);
        idle || hard
    }

    /// The entry under `key` as this packet sees it: missing entries read as
    /// the initial state, expired ones as their rollback state, both with
    /// fresh registers.
    fn read(&self, key: &Key, headers: &Headers, now: i64) -> FlowView {
        match self.table.get(key) {
            Some(entry) if !self.expired(entry, now) => FlowView {
                state: entry.state,
                registers: entry.registers.clone(),
            },
            Some(entry) => {
                let rollback = self.program.states[entry.state.0 as usize]
                    .timeout
                    .map_or(StateId(0), |t| t.rollback);
                FlowView {
                    state: rollback,
                    registers: self.initial_registers(headers, now),
                }
            }
            None => FlowView {
                state: StateId(0),
                registers: self.initial_registers(headers, now),
            },
        }
    }

    fn initial_registers(&self, headers: &Headers, now: i64) -> Vec<i64> {
        let no_registers = Vec::new();
        self.program
            .registers
            .iter()
            .map(|r| {
                let env = Env {
                    headers,
                    registers: &no_registers,
                    globals: &self.globals,
                    now,
                    absent_reads_zero: true,
                };
                env.eval(&r.init).unwrap_or(0)
            })
            .collect()
    }

    /// An entry in the initial state with its initial registers reads like a
    /// missing one; it is not stored when the program allows (DESIGN.md 1.8).
    fn is_elided(&self, next: StateId, registers: &[i64]) -> bool {
        next == StateId(0)
            && self
                .elided_initial
                .as_ref()
                .is_some_and(|initial| initial.iter().eq(registers))
    }

    /// The first row that matches, with what it writes.
    fn first_match(
        &self,
        flow: &FlowView,
        headers: &Headers,
        now: i64,
    ) -> Option<(usize, &'p Row, RowEffects)> {
        let env = Env {
            headers,
            registers: &flow.registers,
            globals: &self.globals,
            now,
            absent_reads_zero: false,
        };
        let program: &'p Program = self.program;
        program
            .rows
            .iter()
            .enumerate()
            .find_map(|(index, row)| Some((index, row, env.try_row(row, flow.state)?)))
    }

    /// Whether the lookup key and update key are the same fields.
    pub fn keys_are_same(&self) -> bool {
        self.same_keys
    }
}

/// What expressions read: the packet, the flow's registers, the globals and
/// the clock.
struct Env<'a> {
    headers: &'a Headers,
    registers: &'a [i64],
    globals: &'a [i64],
    now: i64,
    absent_reads_zero: bool,
}

impl Env<'_> {
    fn eval(&self, expr: &Expr) -> Option<i64> {
        Some(match expr {
            Expr::Const(c) => *c,
            Expr::Field(f) => match self.headers.get(*f) {
                Some(v) => v as i64,
                None if self.absent_reads_zero => 0,
                None => return None,
            },
            Expr::Reg(r) => self.registers[r.0 as usize],
            Expr::Global(g) => self.globals[g.0 as usize],
            Expr::Now => self.now,
            Expr::Binary(op, a, b) => op.eval(self.eval(a)?, self.eval(b)?),
        })
    }

    fn holds(&self, cond: &Condition) -> Option<bool> {
        Some(cond.op.eval(self.eval(&cond.lhs)?, self.eval(&cond.rhs)?))
    }

    /// What `row` writes, if it matches in `state`.
    fn try_row(&self, row: &Row, state: StateId) -> Option<RowEffects> {
        let state_ok = match &row.state {
            StatePattern::Any => true,
            StatePattern::Set(states) => states.contains(&state),
        };
        if !state_ok {
            return None;
        }
        for m in &row.fields {
            if !m.pattern.matches(self.headers.get(m.field)?) {
                return None;
            }
        }
        for c in &row.conditions {
            if self.holds(&c.cond)? == c.negated {
                return None;
            }
        }
        let mut registers = self.registers.to_vec();
        let mut globals = Vec::new();
        for update in &row.updates {
            let value = self.eval(&update.value)?;
            match update.target {
                RegTarget::Flow(r) => registers[r.0 as usize] = value,
                RegTarget::Global(g) => globals.push((g.0 as usize, value)),
            }
        }
        let mut writes = Vec::with_capacity(row.writes.len());
        for w in &row.writes {
            // A packet without the field does not match (as for a read).
            self.headers.get(w.field)?;
            writes.push((w.field, FieldWrite::cut(w.field, self.eval(&w.value)?)));
        }
        Some(RowEffects {
            registers,
            globals,
            writes,
        })
    }
}
