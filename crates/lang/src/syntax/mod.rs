//! Lexer, parser and syntax tree. Parsing never fails: it returns the tree
//! and the diagnostics found on the way.

pub mod ast;
pub mod lexer;
pub mod parser;

pub use lexer::Span;

use crate::diag::Diagnostic;

/// Lex and parse `source`. Diagnostics are in source order within each
/// stage (lexer errors first, then parser errors).
pub fn parse(source: &str) -> (ast::File, Vec<Diagnostic>) {
    let (tokens, mut diags) = lexer::lex(source);
    let (file, parse_diags) = parser::parse_tokens(tokens);
    diags.extend(parse_diags);
    (file, diags)
}
