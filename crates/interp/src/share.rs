//! When two programs may share one state table.
//!
//! A shared table is one set of entries read and written by two programs
//! (two functions of a chain, or one program on ingress and another on
//! egress). Each program reads an entry with its own rows but with the
//! same meaning of its bytes, so everything that gives an entry its
//! meaning must be the same in both: the lookup and update keys (the key
//! bytes), the states (names in order, their timeouts and rollbacks: how
//! an entry expires), the registers (names in order and initial values:
//! what a missing entry reads as, and so which entries may be elided),
//! and the capacity and full policy (the table itself). Rows, globals,
//! the default action and the hook may differ.

use std::fmt;

use flowstate_lang::ir::{FullPolicy, Program, State};
use flowstate_lang::print;

/// The first thing that makes two programs' tables differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutMismatch {
    /// What differs, e.g. "the lookup key".
    pub what: &'static str,
    /// The first program's side, as text.
    pub first: String,
    /// The second program's side.
    pub second: String,
}

impl fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} differs ({} against {}); a shared table needs the same flow and update keys, \
             states (with their timeouts), registers (with their initial values), capacity and \
             full policy in both programs",
            self.what, self.first, self.second
        )
    }
}

impl std::error::Error for LayoutMismatch {}

/// `Ok` when `first` and `second` may share one state table; otherwise
/// the first difference, for the operator.
pub fn check_shareable(first: &Program, second: &Program) -> Result<(), LayoutMismatch> {
    let mismatch = |what, a: String, b: String| {
        Err(LayoutMismatch {
            what,
            first: a,
            second: b,
        })
    };
    let fields = |p: &Program, update: bool| {
        let key = if update { &p.update_key } else { &p.lookup_key };
        let names: Vec<&str> = key.iter().map(|f| f.name()).collect();
        format!("`{}`", names.join(", "))
    };
    if first.lookup_key != second.lookup_key {
        return mismatch("the flow key", fields(first, false), fields(second, false));
    }
    if first.update_key != second.update_key {
        return mismatch("the update key", fields(first, true), fields(second, true));
    }
    let states = |p: &Program| {
        let names: Vec<&str> = p.states.iter().map(|s| s.name.as_str()).collect();
        format!("states {}", names.join(" "))
    };
    if first.states.len() != second.states.len()
        || first
            .states
            .iter()
            .zip(&second.states)
            .any(|(a, b)| a.name != b.name)
    {
        return mismatch("the list of states", states(first), states(second));
    }
    if let Some((a, b)) = first
        .states
        .iter()
        .zip(&second.states)
        .find(|(a, b)| a.timeout != b.timeout)
    {
        return mismatch("a state's timeout", timeout(first, a), timeout(second, b));
    }
    let registers = |p: &Program| {
        let names: Vec<&str> = p.registers.iter().map(|r| r.name.as_str()).collect();
        format!("registers [{}]", names.join(", "))
    };
    if first.registers.len() != second.registers.len()
        || first
            .registers
            .iter()
            .zip(&second.registers)
            .any(|(a, b)| a.name != b.name)
    {
        return mismatch("the list of registers", registers(first), registers(second));
    }
    if let Some((a, b)) = first
        .registers
        .iter()
        .zip(&second.registers)
        .find(|(a, b)| a.init != b.init)
    {
        return mismatch(
            "a register's initial value",
            format!("{} = {}", a.name, print::expr(first, &a.init)),
            format!("{} = {}", b.name, print::expr(second, &b.init)),
        );
    }
    let table = |p: &Program| {
        let policy = match p.full_policy {
            FullPolicy::EvictLeastRecent => "evict",
            FullPolicy::RefuseNew => "refuse",
        };
        format!("flows {} {policy}", p.capacity)
    };
    if first.capacity != second.capacity || first.full_policy != second.full_policy {
        return mismatch(
            "the table's capacity or full policy",
            table(first),
            table(second),
        );
    }
    Ok(())
}

/// A state's timeout as the program would declare it.
fn timeout(program: &Program, state: &State) -> String {
    let Some(t) = state.timeout else {
        return format!("{}: no timeout", state.name);
    };
    let mut text = state.name.clone();
    if let Some(idle) = t.idle_ns {
        text += &format!(" idle {}", print::duration(idle));
    }
    if let Some(hard) = t.hard_ns {
        text += &format!(" hard {}", print::duration(hard));
    }
    text + &format!(" rollback {}", program.state_name(t.rollback))
}
