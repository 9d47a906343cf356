//! A service chain: functions (programs) run one after another on each
//! packet.
//!
//! The chain's meaning, which the kernel's chains (tail calls from one
//! function to the next) follow and the differential suite checks packet
//! by packet:
//! - A packet enters the first function. A function whose verdict is
//!   `pass` (`controller then pass` included) hands the packet on to the
//!   next one; any other verdict (`drop`, `tx`, `redirect`, `controller
//!   then drop`, and a `redirect REGISTER` that reads as `drop`) ends the
//!   chain with that verdict. The last function's verdict is the chain's.
//! - Each function a packet reaches runs exactly as it would alone: its
//!   own table, globals, counters, clock reading (one `now` per packet),
//!   and its `controller` events. Functions after the one that ended the
//!   chain see nothing of the packet.
//! - Every function sees the same ingress interface, and the frame as the
//!   functions before it left it: a function that writes fields and
//!   passes hands the rewritten packet on (the kernel stores the writes
//!   before its tail call), and [`ChainStep::output`] is the frame the
//!   chain sends.
//! - Two functions may share one state table ([`Chain::share_table`]):
//!   then both read and write the same entries, each with its own rows
//!   (in chain order within a packet: the second sees what the first
//!   wrote). The programs must agree on the table's layout
//!   ([`crate::share::check_shareable`]).

use flowstate_lang::ir::{Action, ControllerThen, Program};
use flowstate_wire::Headers;

use crate::share::{check_shareable, LayoutMismatch};
use crate::{Key, Machine, StateTable, Step};

/// The functions of a chain and their state.
#[derive(Debug, Clone)]
pub struct Chain<'p> {
    machines: Vec<Machine<'p>>,
    /// For each function, the function whose machine holds the table it
    /// reads and writes: itself, unless it shares another's.
    table_holder: Vec<usize>,
}

/// What happened to one packet in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainStep<'p> {
    /// One step per function the packet reached, in chain order; the last
    /// one ended the chain.
    pub steps: Vec<Step<'p>>,
}

impl<'p> ChainStep<'p> {
    /// The chain's verdict: that of the function that ended it.
    pub fn action(&self) -> &'p Action {
        self.last().action
    }

    /// Where a `redirect REGISTER` sends the packet (see [`Step::port`]).
    pub fn port(&self) -> Option<u32> {
        self.last().port
    }

    /// The index of the function that ended the chain (the last one when
    /// every function passed).
    pub fn ended_by(&self) -> usize {
        self.steps.len() - 1
    }

    /// The frame as it leaves the chain: `frame` with every reached
    /// function's field writes applied, in chain order.
    pub fn output(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        for step in &self.steps {
            step.rewrite(&mut out);
        }
        out
    }

    /// Whether any function reached wrote a field.
    pub fn writes_fields(&self) -> bool {
        self.steps.iter().any(|s| !s.writes.is_empty())
    }

    fn last(&self) -> &Step<'p> {
        self.steps
            .last()
            .expect("a chain step has at least one function's step")
    }
}

/// Whether a function with this verdict hands the packet to the next one.
pub fn continues(action: &Action) -> bool {
    matches!(
        action,
        Action::Pass
            | Action::Controller {
                then: ControllerThen::Pass
            }
    )
}

impl<'p> Chain<'p> {
    /// A chain of `programs` in order, each with a fresh table. Panics on
    /// an empty list: a chain has at least one function.
    pub fn new(programs: &[&'p Program]) -> Chain<'p> {
        assert!(!programs.is_empty(), "a chain needs at least one function");
        Chain {
            machines: programs.iter().map(|p| Machine::new(p)).collect(),
            table_holder: (0..programs.len()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Make function `function` read and write the table of function
    /// `with` (and of every function that already shares it) from now on;
    /// the entries of its own table are dropped. Refused when the two
    /// programs' tables differ in layout.
    pub fn share_table(&mut self, function: usize, with: usize) -> Result<(), LayoutMismatch> {
        check_shareable(
            self.machines[with].program(),
            self.machines[function].program(),
        )?;
        let holder = self.table_holder[with];
        if holder == function {
            return Ok(());
        }
        // Functions that shared `function`'s own table follow it.
        let old = self.table_holder[function];
        for h in self.table_holder.iter_mut() {
            if *h == old {
                *h = holder;
            }
        }
        let program = self.machines[old].program();
        *self.machines[old].table_mut() = StateTable::new(program.capacity, program.full_policy);
        Ok(())
    }

    /// The machine of function `function`. Its own `table()` is empty when
    /// it shares another's: read tables with [`Chain::table`].
    pub fn machine(&self, function: usize) -> &Machine<'p> {
        &self.machines[function]
    }

    pub fn machines(&self) -> &[Machine<'p>] {
        &self.machines
    }

    /// The table function `function` reads and writes.
    pub fn table(&self, function: usize) -> &StateTable {
        self.machines[self.table_holder[function]].table()
    }

    /// The function whose table `function` uses (itself unless shared).
    pub fn table_holder(&self, function: usize) -> usize {
        self.table_holder[function]
    }

    /// Parse `frame` once and run it through the chain at time `now`.
    pub fn process(&mut self, frame: &[u8], ifindex: u32, now: i64) -> ChainStep<'p> {
        self.process_frame_evicting(frame, ifindex, now, &[])
    }

    /// [`Chain::process`] with the evictions another execution chose:
    /// `victims[i]` for function `i` (missing: none chosen), as
    /// [`Machine::process_evicting`].
    pub fn process_evicting(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        now: i64,
        victims: &[Vec<Key>],
    ) -> ChainStep<'p> {
        self.process_frame_evicting(frame, ifindex, now, victims)
    }

    fn process_frame_evicting(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        now: i64,
        victims: &[Vec<Key>],
    ) -> ChainStep<'p> {
        let mut steps = Vec::new();
        let mut headers: Headers = flowstate_wire::parse(frame, ifindex);
        // The frame as rewritten so far (none until a function writes).
        let mut rewritten: Option<Vec<u8>> = None;
        for function in 0..self.machines.len() {
            let chosen = victims.get(function).map_or(&[][..], Vec::as_slice);
            let step = self.with_table(function, |machine| {
                machine.process_headers_evicting(&headers, now, chosen)
            });
            let goes_on = continues(step.action);
            if goes_on && !step.writes.is_empty() {
                let bytes = rewritten.get_or_insert_with(|| frame.to_vec());
                step.rewrite(bytes);
                headers = flowstate_wire::parse(bytes, ifindex);
            }
            steps.push(step);
            if !goes_on {
                break;
            }
        }
        ChainStep { steps }
    }

    /// Runs `f` on function `function`'s machine holding the table it
    /// uses: a shared table is lent to it for the call.
    fn with_table<T>(&mut self, function: usize, f: impl FnOnce(&mut Machine<'p>) -> T) -> T {
        let holder = self.table_holder[function];
        if holder == function {
            return f(&mut self.machines[function]);
        }
        self.swap_tables(function, holder);
        let out = f(&mut self.machines[function]);
        self.swap_tables(function, holder);
        out
    }

    fn swap_tables(&mut self, a: usize, b: usize) {
        let (low, high) = (a.min(b), a.max(b));
        let (left, right) = self.machines.split_at_mut(high);
        std::mem::swap(left[low].table_mut(), right[0].table_mut());
    }
}
