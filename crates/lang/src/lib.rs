//! The flowstate language: text in, a checked [`ir::Program`] (or
//! diagnostics) out.
//!
//! Pipeline: `syntax` (lexer, parser, syntax tree) -> `check` (names, types,
//! constant folding, table analysis) -> `ir`. `print` turns a program back
//! into source text. The crate knows nothing about eBPF.
//!
//! Panic rule: [`compile`] never panics, for any input text; nesting is
//! capped ([`syntax::parser::MAX_NESTING`]) so no input exhausts the stack.

pub mod check;
pub mod diag;
pub mod ir;
pub mod print;
pub mod syntax;

/// The longest program text [`compile`] accepts, in bytes (4 MiB). The
/// largest table the kernel can take is a small fraction of this; the bound
/// keeps time and memory in proportion on any input.
pub const MAX_SOURCE_BYTES: usize = 4 << 20;

fn too_large() -> diag::Diagnostic {
    diag::Diagnostic::error(
        format!("program text is longer than {MAX_SOURCE_BYTES} bytes (4 MiB), the limit"),
        0..0,
        "program too large",
    )
    .with_help("is this the right file? A program's table fits in far fewer bytes")
}

/// A program that passed every check, with the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub program: ir::Program,
    pub warnings: Vec<diag::Diagnostic>,
}

/// Parse and check. `Ok` if there is no error (warnings allowed); `Err`
/// holds every error and warning found, in source order, with repeats
/// folded ([`diag::fold_repeats`]). A text over [`MAX_SOURCE_BYTES`] is
/// refused unread.
///
/// When parsing finds errors, the checker does not run: its messages about
/// a half-read program would mostly be echoes of the syntax errors.
pub fn compile(source: &str) -> Result<Compiled, Vec<diag::Diagnostic>> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(vec![too_large()]);
    }
    let (file, mut diags) = syntax::parse(source);
    let program = if diags.iter().any(diag::Diagnostic::is_error) {
        None
    } else {
        let (program, check_diags) = check::check(&file, source);
        diags.extend(check_diags);
        program
    };
    diags.sort_by_key(|d| d.span.start);
    diag::fold_repeats(&mut diags);
    match program {
        Some(program) if !diags.iter().any(diag::Diagnostic::is_error) => Ok(Compiled {
            program,
            warnings: diags,
        }),
        _ => Err(diags),
    }
}
