//! Diagnostics: what the front end says about a program, where, and how
//! it is shown (rustc-style text, or a JSON-friendly record).
//!
//! Spans are byte ranges into the program text. Lines and columns are
//! 1-based; columns count characters, not bytes.

use std::ops::Range;

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A secondary place that explains the main one (e.g. the first
/// declaration of a duplicated name). Shown underlined with `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub span: Range<usize>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Range<usize>,
    /// Text shown under the caret.
    pub label: String,
    /// What would be valid instead.
    pub help: Option<String>,
    /// Other places worth showing.
    pub notes: Vec<Note>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Range<usize>, label: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: label.into(),
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message, span, label)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, span: Range<usize>, message: impl Into<String>) -> Self {
        self.notes.push(Note {
            span,
            message: message.into(),
        });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// 1-based line and column of the start of the span.
    pub fn line_col(&self, source: &str) -> (u32, u32) {
        line_col(source, self.span.start)
    }

    /// The JSON-friendly form of this diagnostic.
    pub fn to_json(&self, file_name: &str, source: &str) -> JsonDiagnostic {
        let (line, column) = line_col(source, self.span.start);
        let (end_line, end_column) = line_col(source, self.span.end);
        JsonDiagnostic {
            severity: self.severity,
            message: self.message.clone(),
            file: file_name.to_string(),
            line,
            column,
            end_line,
            end_column,
            label: self.label.clone(),
            help: self.help.clone(),
        }
    }
}

/// A diagnostic with resolved positions, ready for `serde_json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JsonDiagnostic {
    pub severity: Severity,
    pub message: String,
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Position just past the end of the span.
    pub end_line: u32,
    pub end_column: u32,
    pub label: String,
    pub help: Option<String>,
}

/// 1-based line and column (in characters) of a byte offset. Offsets past
/// the end, or inside a character, are clamped to a valid place.
pub fn line_col(source: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (to_u32(line), to_u32(column))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// rustc-style text for all `diags`, in order:
///
/// ```text
/// error: unknown state `OPNE`
///  --> knock.fsm:12:3
///   |
/// 12 |   OPNE tcp.dport == 22 => pass
///   |   ^^^^ not a declared state
///   |
///   = help: did you mean `OPEN`? ...
/// ```
pub fn render(diags: &[Diagnostic], file_name: &str, source: &str, color: bool) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = term::Config {
        chars: term::Chars::ascii(),
        ..term::Config::default()
    };
    let mut out: Vec<u8> = Vec::new();
    for d in diags {
        let cs_diag = to_codespan(d, source);
        let result = if color {
            let mut writer = termcolor::Ansi::new(&mut out);
            term::emit(&mut writer, &config, &file, &cs_diag)
        } else {
            let mut writer = termcolor::NoColor::new(&mut out);
            term::emit(&mut writer, &config, &file, &cs_diag)
        };
        if result.is_err() {
            // Only a span outside the file could fail here, and spans are
            // clamped in `to_codespan`; keep the message rather than lose it.
            let (line, column) = d.line_col(source);
            out.extend_from_slice(
                format!(
                    "{:?}: {}\n --> {file_name}:{line}:{column}\n",
                    d.severity, d.message
                )
                .as_bytes(),
            );
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn clamp(source: &str, span: &Range<usize>) -> Range<usize> {
    let fix = |mut i: usize| {
        i = i.min(source.len());
        while !source.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = fix(span.start);
    let end = fix(span.end).max(start);
    start..end
}

fn to_codespan(d: &Diagnostic, source: &str) -> cs::Diagnostic<()> {
    let base = match d.severity {
        Severity::Error => cs::Diagnostic::error(),
        Severity::Warning => cs::Diagnostic::warning(),
    };
    let mut labels = vec![cs::Label::primary((), clamp(source, &d.span)).with_message(&d.label)];
    for note in &d.notes {
        labels
            .push(cs::Label::secondary((), clamp(source, &note.span)).with_message(&note.message));
    }
    let mut diag = base.with_message(&d.message).with_labels(labels);
    if let Some(help) = &d.help {
        diag = diag.with_notes(vec![format!("help: {help}")]);
    }
    diag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let src = "ab\ncdé f\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        // `é` is two bytes but one column.
        assert_eq!(line_col(src, 8), (2, 5));
        assert_eq!(line_col(src, 1000), (3, 1));
        // Inside a multi-byte character: clamped back to its start.
        assert_eq!(line_col(src, 6), (2, 3));
    }

    #[test]
    fn render_shows_file_line_column_source_and_caret() {
        let src = "program p\nhook xdpp\n";
        let d = Diagnostic::error("unknown hook `xdpp`", 15..19, "not a hook")
            .with_help("write `xdp`, `tc ingress` or `tc egress`");
        let text = render(&[d], "p.fsm", src, false);
        assert!(text.contains("error: unknown hook `xdpp`"), "{text}");
        assert!(text.contains("--> p.fsm:2:6"), "{text}");
        assert!(text.contains("2 | hook xdpp"), "{text}");
        assert!(text.contains("|      ^^^^ not a hook"), "{text}");
        assert!(text.contains("= help: write `xdp`"), "{text}");
    }

    #[test]
    fn render_survives_out_of_range_spans() {
        let d = Diagnostic::warning("w", 50..60, "here");
        let text = render(&[d], "f", "abc", false);
        assert!(text.contains("warning: w"), "{text}");
    }

    #[test]
    fn color_output_has_escape_codes() {
        let d = Diagnostic::error("e", 0..1, "here");
        assert!(render(&[d], "f", "abc", true).contains('\u{1b}'));
    }

    #[test]
    fn json_form_has_positions() {
        let src = "a\nbcd\n";
        let d = Diagnostic::error("m", 3..5, "l").with_help("h");
        let j = d.to_json("f.fsm", src);
        assert_eq!((j.line, j.column, j.end_line, j.end_column), (2, 2, 2, 4));
        assert_eq!(j.severity, Severity::Error);
        assert_eq!(j.help.as_deref(), Some("h"));
    }
}
