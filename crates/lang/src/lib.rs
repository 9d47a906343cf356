//! The flowstate language: text in, a checked [`ir::Program`] (or
//! diagnostics) out.
//!
//! Pipeline: `syntax` (lexer, parser, syntax tree) -> `check` (names, types,
//! constant folding, table analysis) -> `ir`. `print` turns a program back
//! into source text. The crate knows nothing about eBPF.

pub mod ir;
pub mod print;
