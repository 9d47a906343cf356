//! `flowstate graph`: the state machine as a picture.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::load::load_or_report;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A standalone SVG image (no Graphviz needed).
    Svg,
    /// Graphviz DOT source.
    Dot,
}

pub fn run(path: &Path, format: Format, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_or_report(path)? else {
        return Ok(ExitCode::from(1));
    };
    let program = &loaded.compiled.program;
    let text = match format {
        Format::Svg => flowstate_viz::to_svg(program),
        Format::Dot => flowstate_viz::to_dot(program),
    };
    match output {
        Some(out) => {
            std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
