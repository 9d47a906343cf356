//! Rows that write packet fields (`ip.ttl = ip.ttl - 1`).
//!
//! The interpreter applies them by `flowstate_wire::rewrite`; the kernel
//! code for them is not emitted yet, so a program with such rows is refused
//! with a message naming them, rather than compiled into one that would
//! send the packet unchanged.

use flowstate_lang::ir::Program;

/// Why `program` cannot be compiled for the kernel because of its field
/// writes (empty when it has none).
pub(crate) fn unsupported(program: &Program) -> Vec<String> {
    let lines: Vec<String> = program
        .rows
        .iter()
        .filter(|r| !r.writes.is_empty())
        .map(|r| r.pos.line.to_string())
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "rows that write packet fields (line {}) are not compiled for the kernel yet: run \
         the program with `flowstate replay` (the interpreter applies them), or remove the \
         field assignments",
        lines.join(", ")
    )]
}
