//! Reading and checking a program file, shared by every command.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use flowstate_lang::diag::{render, Diagnostic, Severity};
use flowstate_lang::{Compiled, MAX_SOURCE_BYTES};

/// A program that passed the checks, with its text and warnings.
pub struct Loaded {
    pub source: String,
    pub name: String,
    pub compiled: Compiled,
}

/// The outcome of checking a file: a program, or the diagnostics that stop it.
pub enum Checked {
    /// Boxed: a checked program is much larger than the failure.
    Ok(Box<Loaded>),
    Failed {
        source: String,
        name: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// A program's text, read no further than [`MAX_SOURCE_BYTES`]: a device
/// like /dev/zero or a wrong, huge file ends with an error, not with all
/// the memory.
pub fn read_program(path: &Path) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > MAX_SOURCE_BYTES {
        bail!(
            "{} is larger than {MAX_SOURCE_BYTES} bytes (4 MiB), the limit for a program text: \
             is it the right file?",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {}): a program is a text file",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

pub fn check_file(path: &Path) -> anyhow::Result<Checked> {
    let source = read_program(path)?;
    let name = path.display().to_string();
    Ok(match flowstate_lang::compile(&source) {
        Ok(compiled) => Checked::Ok(Box::new(Loaded {
            source,
            name,
            compiled,
        })),
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
            Ok(Some(*loaded))
        }
        Checked::Failed {
            source,
            name,
            diagnostics,
        } => {
            eprint!("{}", render(&diagnostics, &name, &source, color));
            let errors: usize = diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(Diagnostic::count)
                .sum();
            eprintln!("flowstate: {name}: {errors} error(s); nothing was run");
            Ok(None)
        }
    }
}
