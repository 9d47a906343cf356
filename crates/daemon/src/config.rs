//! The declarative configuration: every `*.toml` file of a directory,
//! each declaring instances.
//!
//! ```toml
//! [[instance]]
//! name = "edge-fw"            # the instance's name (unique over all files)
//! program = "fw.fsm"          # relative to the file's directory
//! dev = "eth0"
//! hook = "xdp"                # optional: xdp, tc-ingress, tc-egress
//! netns = "blue"              # optional: a name under /run/netns
//! xdp_mode = "auto"           # XDP: auto, native, generic
//! xdp_share = "auto"          # XDP: auto, shared, exclusive
//! priority = 50               # XDP shared: run priority
//! tc_attach = "auto"          # TC: auto, tcx, clsact
//! before = "other"            # TC: NAME, ID or /PIN (or `after`)
//! ```
//!
//! Chains (issue 9, docs/chains.md) are `[[chain]]` tables beside
//! `[[instance]]`:
//!
//! ```toml
//! [[chain]]
//! name = "edge"
//! dev = "eth0"
//! hook = "xdp"                # xdp, tc-ingress, tc-egress
//! netns = "blue"              # optional
//! functions = [ { name = "fw", program = "fw.fsm" }, { program = "limit.fsm" } ]
//! ```
//!
//! Unknown keys are refused so that a file written for a later
//! flowstated fails loudly here rather than being half applied.
//!
//! Loading checks everything it can without touching the kernel: the
//! TOML, names, duplicates, and that each program file compiles. A file
//! with an error fails the whole load (see [`ConfigError`]), with file,
//! line and column, so that nothing is applied from a half-valid set.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

/// One file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    instance: Vec<Spanned<InstanceText>>,
    #[serde(default)]
    chain: Vec<Spanned<ChainText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainText {
    name: Spanned<String>,
    dev: String,
    hook: HookName,
    #[serde(default)]
    netns: Option<String>,
    functions: Spanned<Vec<FunctionText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionText {
    #[serde(default)]
    name: Option<String>,
    program: PathBuf,
}

/// A chain the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredChain {
    pub name: String,
    pub dev: String,
    pub hook: HookName,
    pub netns: Option<String>,
    /// In chain order.
    pub functions: Vec<DeclaredFunction>,
    pub file: PathBuf,
}

impl DeclaredChain {
    /// Where the chain attaches: when it changes, the chain is stopped and
    /// created again.
    pub fn placement_key(&self) -> String {
        let text = serde_json::to_string(&(&self.dev, &self.hook, &self.netns)).unwrap_or_default();
        hex_prefix(text.as_bytes())
    }
}

/// One function of a declared chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredFunction {
    /// The name in the chain (the program's name when not given).
    pub name: String,
    /// Absolute (resolved against the file's directory).
    pub program: PathBuf,
    pub source_hash: String,
}

/// How an XDP program shares its hook (the CLI's `--xdp-share`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpShare {
    #[default]
    Auto,
    Shared,
    Exclusive,
}

/// The CLI's `--xdp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

/// The CLI's `--tc-attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    #[default]
    Auto,
    Tcx,
    Clsact,
}

/// The CLI's `--hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    Xdp,
    TcIngress,
    TcEgress,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceText {
    name: Spanned<String>,
    program: Spanned<PathBuf>,
    dev: String,
    // Placement's fields, written out: serde's `flatten` would lose the
    // position of an unknown key.
    #[serde(default)]
    hook: Option<HookName>,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    xdp_mode: XdpMode,
    #[serde(default)]
    xdp_share: XdpShare,
    #[serde(default = "default_priority")]
    priority: u32,
    #[serde(default)]
    tc_attach: TcAttach,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    after: Option<String>,
}

/// Where and how an instance attaches: everything `run` takes besides
/// the program.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub xdp_share: XdpShare,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub tc_attach: TcAttach,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// libxdp's default run priority.
pub fn default_priority() -> u32 {
    50
}

/// An instance the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    pub name: String,
    /// Absolute (resolved against the file's directory).
    pub program: PathBuf,
    pub dev: String,
    pub placement: Placement,
    /// The file that declares it.
    pub file: PathBuf,
    /// SHA-256 prefix of the program text, as control's metadata has it.
    pub source_hash: String,
}

impl Declared {
    /// A fingerprint of where the instance attaches: when it changes, the
    /// instance must be stopped and run again (a reload only swaps the
    /// program).
    pub fn placement_key(&self) -> String {
        let text = serde_json::to_string(&(&self.dev, &self.placement)).unwrap_or_default();
        hex_prefix(text.as_bytes())
    }
}

/// The whole configuration, by instance name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub instances: BTreeMap<String, Declared>,
    pub chains: BTreeMap<String, DeclaredChain>,
}

/// A configuration that cannot be applied. `rendered` points at the
/// place (file, line, column) with the source line and a caret.
#[derive(Debug, thiserror::Error)]
#[error("{rendered}")]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file.
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub rendered: String,
}

/// Reads every `*.toml` file of `dir` (sorted by name). A missing
/// directory is an empty configuration.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(plain_error(dir, format!("cannot read the directory: {e}"))),
    };
    files.sort();
    let mut config = Config::default();
    // Where each name was declared, for the duplicate message.
    let mut declared_at: BTreeMap<String, (PathBuf, Range<usize>)> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| plain_error(&file, format!("cannot read: {e}")))?;
        let (instances, chains) = parse_file(&file, &text, &mut declared_at)?;
        for declared in instances {
            config.instances.insert(declared.name.clone(), declared);
        }
        for chain in chains {
            config.chains.insert(chain.name.clone(), chain);
        }
    }
    Ok(config)
}

type Parsed = (Vec<Declared>, Vec<DeclaredChain>);

fn parse_file(
    file: &Path,
    text: &str,
    declared_at: &mut BTreeMap<String, (PathBuf, Range<usize>)>,
) -> Result<Parsed, ConfigError> {
    let parsed: FileText = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        positioned(file, text, span, e.message().to_string(), None)
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for entry in parsed.instance {
        let instance = entry.into_inner();
        let name = instance.name.get_ref().clone();
        if let Err(why) = check_name(&name) {
            return Err(positioned(file, text, instance.name.span(), why, None));
        }
        if let Some((first_file, first_span)) = declared_at.get(&name) {
            let note = if first_file == file {
                Some((first_span.clone(), "first declared here".to_string()))
            } else {
                None
            };
            let message = format!(
                "instance {name:?} is declared twice (first in {}): instance names are \
                 unique over all files",
                first_file.display()
            );
            return Err(positioned(file, text, instance.name.span(), message, note));
        }
        declared_at.insert(name.clone(), (file.to_path_buf(), instance.name.span()));
        let placement = Placement {
            hook: instance.hook,
            netns: instance.netns,
            xdp_mode: instance.xdp_mode,
            xdp_share: instance.xdp_share,
            priority: instance.priority,
            tc_attach: instance.tc_attach,
            before: instance.before,
            after: instance.after,
        };
        if placement.before.is_some() && placement.after.is_some() {
            return Err(positioned(
                file,
                text,
                instance.name.span(),
                "give `before` or `after`, not both".to_string(),
                None,
            ));
        }
        let program = base.join(instance.program.get_ref());
        let source = std::fs::read_to_string(&program).map_err(|e| {
            positioned(
                file,
                text,
                instance.program.span(),
                format!("cannot read program {}: {e}", program.display()),
                None,
            )
        })?;
        if let Err(diags) = flowstate_lang::compile(&source) {
            let shown = program.display().to_string();
            let rendered = flowstate_lang::diag::render(&diags, &shown, &source, false);
            let message = format!("program {shown} has errors; nothing was applied");
            let mut error = positioned(file, text, instance.program.span(), message, None);
            error.rendered.push_str(&rendered);
            return Err(error);
        }
        out.push(Declared {
            name,
            program,
            dev: instance.dev,
            placement,
            file: file.to_path_buf(),
            source_hash: flowstate_control::meta::source_hash(&source),
        });
    }
    let mut chains = Vec::new();
    for entry in parsed.chain {
        let chain = entry.into_inner();
        let name = chain.name.get_ref().clone();
        if let Err(why) = check_name(&name) {
            return Err(positioned(file, text, chain.name.span(), why, None));
        }
        if let Some((first_file, _)) = declared_at.get(&name) {
            let message = format!(
                "{name:?} is declared twice (first in {}): instance and chain names are \
                 unique over all files",
                first_file.display()
            );
            return Err(positioned(file, text, chain.name.span(), message, None));
        }
        declared_at.insert(name.clone(), (file.to_path_buf(), chain.name.span()));
        let span = chain.functions.span();
        let mut functions: Vec<DeclaredFunction> = Vec::new();
        for function in chain.functions.into_inner() {
            let program = base.join(&function.program);
            let at = |message: String| positioned(file, text, span.clone(), message, None);
            let source = std::fs::read_to_string(&program)
                .map_err(|e| at(format!("cannot read program {}: {e}", program.display())))?;
            let compiled = flowstate_lang::compile(&source).map_err(|diags| {
                let shown = program.display().to_string();
                let mut error = at(format!("program {shown} has errors; nothing was applied"));
                error.rendered.push_str(&flowstate_lang::diag::render(
                    &diags, &shown, &source, false,
                ));
                error
            })?;
            let function_name = function
                .name
                .clone()
                .unwrap_or_else(|| compiled.program.name.clone());
            if let Err(why) = check_name(&function_name) {
                return Err(at(why));
            }
            if functions.iter().any(|f| f.name == function_name) {
                return Err(at(format!(
                    "two functions of chain {name:?} are named {function_name:?}: give one a \
                     `name`"
                )));
            }
            functions.push(DeclaredFunction {
                name: function_name,
                program,
                source_hash: flowstate_control::meta::source_hash(&source),
            });
        }
        if functions.is_empty() {
            return Err(positioned(
                file,
                text,
                span,
                format!("chain {name:?} has no function"),
                None,
            ));
        }
        chains.push(DeclaredChain {
            name,
            dev: chain.dev,
            hook: chain.hook,
            netns: chain.netns,
            functions,
            file: file.to_path_buf(),
        });
    }
    Ok((out, chains))
}

/// control's rule for instance names: 1 to 64 of letters, digits, `_`, `-`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid instance name {name:?}: use 1 to 64 letters, digits, '_' or '-'"
        ))
    }
}

/// The first 12 hex digits of the SHA-256 of `bytes`.
pub fn hex_prefix(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn plain_error(file: &Path, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        rendered: format!("error: {}: {message}\n", file.display()),
        message,
    }
}

/// An error at `span` of `text`, rendered the way flowstate renders
/// program errors (codespan-reporting, no colour).
fn positioned(
    file: &Path,
    text: &str,
    span: Range<usize>,
    message: String,
    note: Option<(Range<usize>, String)>,
) -> ConfigError {
    let start = span.start.min(text.len());
    let end = span.end.clamp(start, text.len());
    let line = text[..start].matches('\n').count() + 1;
    let column = text[..start].rfind('\n').map_or(start, |nl| start - nl - 1) + 1;
    let mut files = SimpleFiles::new();
    let id = files.add(file.display().to_string(), text);
    let mut labels = vec![Label::primary(id, start..end)];
    if let Some((range, label)) = note {
        labels.push(Label::secondary(id, range).with_message(label));
    }
    let diagnostic = Diagnostic::error()
        .with_message(format!("{message}; nothing was applied"))
        .with_labels(labels);
    let mut out = term::termcolor::NoColor::new(Vec::new());
    let rendered = match term::emit(&mut out, &term::Config::default(), &files, &diagnostic) {
        Ok(()) => String::from_utf8_lossy(&out.into_inner()).into_owned(),
        Err(_) => format!("error: {}:{line}:{column}: {message}\n", file.display()),
    };
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        message,
        rendered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "flowstated-config-{}-{}",
            std::process::id(),
            files.len() * 1000 + files.iter().map(|f| f.1.len()).sum::<usize>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const PROGRAM: &str =
        "program p\nhook xdp\nflow ip.src\nstates S\ndefault pass\ntable\n  S * => pass\nend\n";

    #[test]
    fn reads_instances_with_defaults_and_relative_programs() {
        let dir = dir_with(&[
            ("p.fsm", PROGRAM),
            (
                "a.toml",
                "[[instance]]\nname = \"one\"\nprogram = \"p.fsm\"\ndev = \"eth0\"\n",
            ),
        ]);
        let config = load_dir(&dir).unwrap();
        let one = &config.instances["one"];
        assert_eq!(one.program, dir.join("p.fsm"));
        assert_eq!(one.placement.priority, 50);
        assert_eq!(one.source_hash, hex_prefix(PROGRAM.as_bytes()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line_and_column() {
        let dir = dir_with(&[
            ("p.fsm", PROGRAM),
            (
                "b.toml",
                "[[instance]]\nname = \"one\"\nprogram = \"p.fsm\"\ndev = \"eth0\"\n  colour = 1\n",
            ),
        ]);
        let error = load_dir(&dir).unwrap_err();
        assert_eq!((error.line, error.column), (5, 3), "{error}");
        assert!(error.rendered.contains("b.toml:5:3"), "{}", error.rendered);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_name_declared_in_two_files_is_refused_at_the_second() {
        let text = "[[instance]]\nname = \"one\"\nprogram = \"p.fsm\"\ndev = \"eth0\"\n";
        let dir = dir_with(&[("p.fsm", PROGRAM), ("c1.toml", text), ("c2.toml", text)]);
        let error = load_dir(&dir).unwrap_err();
        assert!(error.file.ends_with("c2.toml"), "{error}");
        assert_eq!((error.line, error.column), (2, 8));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_program_with_errors_is_refused_naming_both_files() {
        let dir = dir_with(&[
            ("bad.fsm", "program p\nhook xdp\nnonsense\n"),
            (
                "d.toml",
                "[[instance]]\nname = \"one\"\nprogram = \"bad.fsm\"\ndev = \"eth0\"\n",
            ),
        ]);
        let error = load_dir(&dir).unwrap_err();
        assert_eq!(error.line, 3, "{error}");
        assert!(error.rendered.contains("bad.fsm"), "{}", error.rendered);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
