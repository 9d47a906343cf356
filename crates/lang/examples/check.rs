//! Compile a program file and print its diagnostics:
//! `cargo run -p flowstate-lang --example check -- FILE [--json]`.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: check FILE [--json]");
        return ExitCode::from(2);
    };
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("check: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let (diags, ok) = match flowstate_lang::compile(&source) {
        Ok(c) => (c.warnings, true),
        Err(d) => (d, false),
    };
    if args.iter().any(|a| a == "--json") {
        let json: Vec<_> = diags.iter().map(|d| d.to_json(path, &source)).collect();
        // A closed pipe (e.g. `| head`) is not an error worth a panic.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        eprint!(
            "{}",
            flowstate_lang::diag::render(&diags, path, &source, false)
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
