//! Diagnostics: what the front end says about a program, where, and how
//! it is shown (rustc-style text, or a JSON-friendly record).
//!
//! Spans are byte ranges into the program text. Lines and columns are
//! 1-based; columns count characters, not bytes.
//!
//! Output stays proportional to the problems, not to their repetitions:
//! [`fold_repeats`] keeps one diagnostic of each kind (a few when their
//! messages differ) and counts the rest on it ("and 4,999 more like this").

use std::collections::HashMap;
use std::ops::Range;

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;
use unicode_width::UnicodeWidthChar;

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
    /// How many diagnostics like this one were folded into it.
    pub repeats: u32,
    /// Where the first few folded ones are (at most [`REPEAT_SPANS_KEPT`]).
    pub repeat_spans: Vec<Range<usize>>,
}

/// Distinct messages of one kind shown before the rest are folded.
pub const SHOWN_PER_KIND: usize = 8;
/// Positions of folded diagnostics kept for the "more like this" line.
pub const REPEAT_SPANS_KEPT: usize = 5;

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Range<usize>, label: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: label.into(),
            help: None,
            notes: Vec::new(),
            repeats: 0,
            repeat_spans: Vec::new(),
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

    /// How many problems this diagnostic stands for: itself and the
    /// repeats folded into it.
    pub fn count(&self) -> usize {
        1 + self.repeats as usize
    }

    /// 1-based line and column of the start of the span.
    pub fn line_col(&self, source: &str) -> (u32, u32) {
        line_col(source, self.span.start)
    }

    /// The JSON-friendly form of this diagnostic.
    pub fn to_json(&self, file_name: &str, source: &str) -> JsonDiagnostic {
        self.to_json_at(file_name, &LineIndex::new(source))
    }

    /// [`Diagnostic::to_json`] with the line starts found once for many
    /// diagnostics.
    pub fn to_json_at(&self, file_name: &str, lines: &LineIndex<'_>) -> JsonDiagnostic {
        let (line, column) = lines.line_col(self.span.start);
        let (end_line, end_column) = lines.line_col(self.span.end);
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
            more_like_this: self.repeats,
        }
    }

    /// What makes two diagnostics "alike": severity, label and message with
    /// every quoted name and number left out (`duplicate state `A`` is
    /// like `duplicate state `B``).
    fn kind(&self) -> (Severity, &str, String) {
        let mut shape = String::new();
        for (i, part) in self.message.split('`').enumerate() {
            if i % 2 == 1 {
                shape.push_str("`_`");
                continue;
            }
            // Numbers too: "the row at line 12" is like "... at line 40".
            for c in part.chars() {
                if !c.is_ascii_digit() {
                    shape.push(c);
                } else if !shape.ends_with('#') {
                    shape.push('#');
                }
            }
        }
        (self.severity, self.label.as_str(), shape)
    }

    fn absorb(&mut self, other: &Diagnostic) {
        self.repeats = self.repeats.saturating_add(1).saturating_add(other.repeats);
        for span in std::iter::once(&other.span).chain(&other.repeat_spans) {
            if self.repeat_spans.len() < REPEAT_SPANS_KEPT {
                self.repeat_spans.push(span.clone());
            }
        }
    }
}

/// Fold repeated diagnostics, keeping their order: see [`Collector`].
pub fn fold_repeats(diags: &mut Vec<Diagnostic>) {
    let mut collector = Collector::default();
    collector.extend(diags.drain(..));
    *diags = collector.into_vec();
}

type ExactKey = (Severity, String, String);

/// Diagnostics as they are found, with repeats folded on the way in, so
/// that memory follows the distinct problems and not their number. An
/// exact repeat (same severity, message and label) folds into its first
/// occurrence; beyond [`SHOWN_PER_KIND`] distinct messages of one kind,
/// the rest fold into the last one kept. Order of first occurrence is kept.
#[derive(Default)]
pub struct Collector {
    kept: Vec<Diagnostic>,
    exact: HashMap<ExactKey, usize>,
    /// Per kind: how many distinct messages are kept, and the last one.
    kinds: HashMap<ExactKey, (usize, usize)>,
}

impl Collector {
    pub fn push(&mut self, d: Diagnostic) {
        let exact_key = (d.severity, d.message.clone(), d.label.clone());
        if let Some(&i) = self.exact.get(&exact_key) {
            self.kept[i].absorb(&d);
            return;
        }
        let (severity, label, shape) = d.kind();
        let kind_key = (severity, label.to_string(), shape);
        let next = self.kept.len();
        match self.kinds.get_mut(&kind_key) {
            Some((shown, last)) if *shown >= SHOWN_PER_KIND => {
                self.kept[*last].absorb(&d);
                return;
            }
            Some((shown, last)) => {
                *shown += 1;
                *last = next;
            }
            None => {
                self.kinds.insert(kind_key, (1, next));
            }
        }
        self.exact.insert(exact_key, next);
        self.kept.push(d);
    }

    /// Whether a diagnostic with this severity, message and label would be
    /// folded into one already kept (so its help would never be shown, and
    /// need not be worked out).
    pub fn would_fold(&self, severity: Severity, message: &str, label: &str) -> bool {
        let probe = Diagnostic {
            severity,
            ..Diagnostic::error(message, 0..0, label)
        };
        let exact_key = (severity, message.to_string(), label.to_string());
        let (_, _, shape) = probe.kind();
        self.exact.contains_key(&exact_key)
            || self
                .kinds
                .get(&(severity, label.to_string(), shape))
                .is_some_and(|(shown, _)| *shown >= SHOWN_PER_KIND)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.kept.iter()
    }

    pub fn has_errors(&self) -> bool {
        self.kept.iter().any(Diagnostic::is_error)
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.kept
    }
}

impl Extend<Diagnostic> for Collector {
    fn extend<I: IntoIterator<Item = Diagnostic>>(&mut self, iter: I) {
        for d in iter {
            self.push(d);
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
    /// How many more diagnostics like this one were folded into it.
    pub more_like_this: u32,
}

/// 1-based line and column (in characters) of a byte offset. Offsets past
/// the end, or inside a character, are clamped to a valid place.
///
/// Scans the text up to `offset`: for many positions in one text, use a
/// [`LineIndex`].
pub fn line_col(source: &str, offset: usize) -> (u32, u32) {
    LineIndex::new(&source[..clamp_offset(source, offset)]).line_col(offset)
}

/// The line starts of a text, found once, so that each position costs a
/// binary search and a walk along its own line, not a scan from the start.
pub struct LineIndex<'a> {
    source: &'a str,
    /// Byte offset of the start of each line; the first is 0.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { source, starts }
    }

    /// The byte range of the line holding `offset`, without its line end.
    pub fn line_containing(&self, offset: usize) -> Range<usize> {
        let offset = clamp_offset(self.source, offset);
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let end = self
            .starts
            .get(line)
            .map_or(self.source.len(), |next| next - 1);
        let end = if self.source[start..end].ends_with('\r') {
            end - 1
        } else {
            end
        };
        start..end
    }

    /// 1-based line and column (in characters); see [`line_col`].
    pub fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = clamp_offset(self.source, offset);
        // The last line starting at or before `offset`.
        let line = self.starts.partition_point(|&s| s <= offset);
        let line_start = self.starts[line - 1];
        let column = self.source[line_start..offset].chars().count() + 1;
        (to_u32(line), to_u32(column))
    }
}

/// `offset` moved into the text and back to the start of its character.
fn clamp_offset(source: &str, offset: usize) -> usize {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
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
    let shown = visible(source);
    let file = SimpleFile::new(file_name, shown.as_ref());
    let config = term::Config {
        chars: term::Chars::ascii(),
        ..term::Config::default()
    };
    let lines = LineIndex::new(source);
    let mut out: Vec<u8> = Vec::new();
    for d in diags {
        if touches_long_line(d, &lines) {
            out.extend_from_slice(excerpt(d, file_name, &shown, &lines).as_bytes());
            continue;
        }
        let cs_diag = to_codespan(d, &shown, &lines);
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

/// Lines longer than this (in bytes) are shown as an excerpt around the
/// caret, so that output stays in proportion to the problems even when the
/// whole text is one line.
pub const LONG_LINE: usize = 240;
/// Characters shown on each side of the caret in an excerpt.
const EXCERPT_CONTEXT: usize = 40;
/// Longest caret in an excerpt.
const EXCERPT_CARET: usize = 80;

fn touches_long_line(d: &Diagnostic, lines: &LineIndex<'_>) -> bool {
    std::iter::once(&d.span)
        .chain(d.notes.iter().map(|n| &n.span))
        .any(|span| lines.line_containing(span.start).len() > LONG_LINE)
}

/// A diagnostic on a long line, in the layout codespan-reporting uses but
/// with only a window of the line around the caret; notes become lines
/// with their positions. `shown` is the text from [`visible`].
fn excerpt(d: &Diagnostic, file_name: &str, shown: &str, lines: &LineIndex<'_>) -> String {
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let start = clamp_offset(shown, d.span.start);
    let (line, column) = lines.line_col(start);
    let line_range = lines.line_containing(start);
    let line_text = &shown[line_range.clone()];
    // Window in characters around the caret.
    let caret_at = column as usize - 1;
    let span_end = clamp_offset(shown, d.span.end.min(line_range.end)).max(start);
    let caret_len = shown[start..span_end]
        .chars()
        .count()
        .clamp(1, EXCERPT_CARET);
    let from = caret_at.saturating_sub(EXCERPT_CONTEXT);
    let to = caret_at + caret_len + EXCERPT_CONTEXT;
    let total = line_text.chars().count();
    let window: String = line_text.chars().skip(from).take(to - from).collect();
    let before = if from > 0 { "..." } else { "" };
    let after = if to < total { "..." } else { "" };

    let gutter = " ".repeat(line.to_string().len());
    let mut out = format!(
        "{severity}: {}\n{gutter} --> {file_name}:{line}:{column}\n",
        d.message
    );
    out.push_str(&format!("{gutter} |\n{line} | {before}{window}{after}\n"));
    out.push_str(&format!(
        "{gutter} | {}{} {}\n",
        " ".repeat(before.len() + caret_at - from),
        "^".repeat(caret_len),
        d.label
    ));
    for note in &d.notes {
        let (l, c) = lines.line_col(note.span.start);
        out.push_str(&format!("{gutter} = note: {} ({l}:{c})\n", note.message));
    }
    if let Some(help) = &d.help {
        out.push_str(&format!("{gutter} = help: {help}\n"));
    }
    if d.repeats > 0 {
        out.push_str(&format!("{gutter} = {}\n", repeats_note(d, lines)));
    }
    out.push('\n');
    out
}

/// The text with every character that takes no column on a terminal
/// (control characters, zero-width and combining marks) replaced by a
/// visible one of the same length in bytes, so that spans, lines and
/// columns stay the same and a caret can point at it.
fn visible(source: &str) -> std::borrow::Cow<'_, str> {
    // Control characters have no width (`None`), combining marks width 0.
    let invisible =
        |c: char| !matches!(c, '\n' | '\r' | '\t') && UnicodeWidthChar::width(c).unwrap_or(0) == 0;
    // A carriage return ends a line only before a line feed.
    let lone_cr = |i: usize, c: char| c == '\r' && source.as_bytes().get(i + 1) != Some(&b'\n');
    if !source
        .char_indices()
        .any(|(i, c)| invisible(c) || lone_cr(i, c))
    {
        return std::borrow::Cow::Borrowed(source);
    }
    let shown = source
        .char_indices()
        .map(
            |(i, c)| match (invisible(c) || lone_cr(i, c), c.len_utf8()) {
                (false, _) => c,
                (true, 1) => '?',
                // Same length in bytes, one column wide each.
                (true, 2) => '\u{bf}',
                (true, 3) => '\u{fffd}',
                (true, _) => '\u{1d54f}',
            },
        )
        .collect();
    std::borrow::Cow::Owned(shown)
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

/// "and 4,999 more like this, at 4:13, 4:16, ...".
fn repeats_note(d: &Diagnostic, lines: &LineIndex<'_>) -> String {
    let mut note = format!("and {} more like this", thousands(d.repeats as usize),);
    let places: Vec<String> = d
        .repeat_spans
        .iter()
        .map(|span| {
            let (line, column) = lines.line_col(span.start);
            format!("{line}:{column}")
        })
        .collect();
    if !places.is_empty() {
        note.push_str(", at ");
        note.push_str(&places.join(", "));
        if d.repeats as usize > places.len() {
            note.push_str(", ...");
        }
    }
    note
}

/// 4999 -> "4,999".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn to_codespan(d: &Diagnostic, source: &str, lines: &LineIndex<'_>) -> cs::Diagnostic<()> {
    let base = match d.severity {
        Severity::Error => cs::Diagnostic::error(),
        Severity::Warning => cs::Diagnostic::warning(),
    };
    let mut labels = vec![cs::Label::primary((), clamp(source, &d.span)).with_message(&d.label)];
    for note in &d.notes {
        labels
            .push(cs::Label::secondary((), clamp(source, &note.span)).with_message(&note.message));
    }
    let mut notes = Vec::new();
    if let Some(help) = &d.help {
        notes.push(format!("help: {help}"));
    }
    if d.repeats > 0 {
        notes.push(repeats_note(d, lines));
    }
    base.with_message(&d.message)
        .with_labels(labels)
        .with_notes(notes)
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
    fn line_index_agrees_with_a_scan_from_the_start() {
        let src = "ab\ncdé f\n\n\nxyz";
        let lines = LineIndex::new(src);
        for offset in 0..src.len() + 3 {
            let scan = {
                let o = clamp_offset(src, offset);
                let before = &src[..o];
                let line = before.matches('\n').count() + 1;
                let start = before.rfind('\n').map_or(0, |i| i + 1);
                (to_u32(line), to_u32(before[start..].chars().count() + 1))
            };
            assert_eq!(lines.line_col(offset), scan, "offset {offset}");
            assert_eq!(line_col(src, offset), scan, "offset {offset}");
        }
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(4999), "4,999");
        assert_eq!(thousands(1234567), "1,234,567");
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
    fn invisible_characters_get_a_caret_and_keep_their_columns() {
        let src = "ab\u{0}\u{200b}\u{301}\u{e0001}\rx\n";
        for (span, column) in [(2..3, 3), (3..6, 4), (6..8, 5), (8..12, 6), (12..12, 7)] {
            let d = Diagnostic::error("unexpected character", span, "here");
            let text = render(&[d], "f", src, false);
            assert!(text.contains(&format!("--> f:1:{column}")), "{text}");
            assert!(text.contains("^ here"), "{text}");
        }
    }

    #[test]
    fn a_long_line_is_shown_as_a_window_around_the_caret() {
        let src = format!("states {}BAD{}\nnext\n", "x".repeat(5000), "y".repeat(5000));
        let d = Diagnostic::error("bad", 5007..5010, "here")
            .with_note(0..6, "declared here")
            .with_help("fix it");
        let text = render(&[d], "f", &src, false);
        assert!(text.len() < 600, "{text}");
        assert!(text.contains("  --> f:1:5008\n"), "{text}");
        let shown = text.lines().find(|l| l.starts_with("1 | ")).unwrap();
        let caret = text.lines().find(|l| l.contains("^^^ here")).unwrap();
        // The caret is under `BAD`.
        let at = caret.find('^').unwrap();
        assert_eq!(&shown[at..at + 3], "BAD", "{text}");
        assert!(
            shown.starts_with("1 | ...x") && shown.ends_with("y..."),
            "{text}"
        );
        assert!(text.contains("= note: declared here (1:1)"), "{text}");
        assert!(text.contains("= help: fix it"), "{text}");
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
