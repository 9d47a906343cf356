//! The state machine of a flowstate program as a picture.
//!
//! [`to_dot`] writes Graphviz DOT for users who have Graphviz; [`to_svg`]
//! lays the graph out itself and writes an SVG that needs nothing else to be
//! viewed. Both draw the same [`graph::Graph`]:
//!
//! - one node per state; the initial state has a double border, and a
//!   state's timeout is written inside its node;
//! - one edge per (source, target) pair, labelled with every table row that
//!   makes that transition (`L12: items => action`, updates below it). A row
//!   without `next` is a self-loop;
//! - rows whose state pattern is `*` leave from a single "any state" node
//!   instead of from every state;
//! - a dashed edge from a state with a timeout to the state it rolls back to;
//! - the `default` action as a note.
//!
//! Neither function panics, even on a program that was never checked: an
//! out-of-range state index is skipped.

mod dot;
pub mod graph;
mod svg;

use flowstate_lang::ir::Program;

/// Graphviz DOT text of the program's state machine.
pub fn to_dot(program: &Program) -> String {
    dot::render(&graph::Graph::build(program))
}

/// A self-contained SVG picture of the program's state machine.
pub fn to_svg(program: &Program) -> String {
    svg::render(&graph::Graph::build(program))
}
