//! Program -> source text (owned by the printer work; placeholder).
