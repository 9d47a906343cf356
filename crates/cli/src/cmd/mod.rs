pub mod check;
pub mod control;
pub mod demo;
pub mod graph;
pub mod kernel;
pub mod probe;
pub mod replay;
pub mod synth;
