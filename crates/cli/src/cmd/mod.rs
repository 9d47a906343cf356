pub mod check;
pub mod graph;
pub mod replay;
pub mod synth;
