//! Reading and checking a program file, shared by every command.

use std::path::Path;

use anyhow::Context;
use flowstate_lang::diag::{render, Diagnostic, Severity};
use flowstate_lang::Compiled;

/// A program that passed the checks, with its text and warnings.
pub struct Loaded {
    pub source: String,
    pub name: String,
    pub compiled: Compiled,
}

/// The outcome of checking a file: a program, or the diagnostics that stop it.
pub enum Checked {
    Ok(Loaded),
    Failed {
        source: String,
        name: String,
        diagnostics: Vec<Diagnostic>,
    },
}

pub fn check_file(path: &Path) -> anyhow::Result<Checked> {
    let source =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    Ok(match flowstate_lang::compile(&source) {
        Ok(compiled) => Checked::Ok(Loaded {
            source,
            name,
            compiled,
        }),
        Err(diagnostics) => Checked::Failed {
            source,
            name,
            diagnostics,
        },
    })
}

/// Load a program for a command that needs a valid one: diagnostics go to
/// standard error, warnings included; errors end the command.
pub fn load_or_report(path: &Path) -> anyhow::Result<Option<Loaded>> {
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match check_file(path)? {
        Checked::Ok(loaded) => {
            if !loaded.compiled.warnings.is_empty() {
                eprint!(
                    "{}",
                    render(
                        &loaded.compiled.warnings,
                        &loaded.name,
                        &loaded.source,
                        color
                    )
                );
            }
            Ok(Some(loaded))
        }
        Checked::Failed {
            source,
            name,
            diagnostics,
        } => {
            eprint!("{}", render(&diagnostics, &name, &source, color));
            let errors = diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("flowstate: {name}: {errors} error(s); nothing was run");
            Ok(None)
        }
    }
}
