//! What an object carries so that a tool can decode its maps without the
//! program file: the object's metadata, a JSON document in `.rodata`.
//!
//! `flowstate_meta` holds the document, NUL-terminated: the format name
//! ([`FORMAT`]), the program's name and hook, its text (the source it was
//! compiled from, or the IR printed back when none was given: both
//! compile to the same maps) and that text's hash, and, for tools that do
//! not compile flowstate, the layout: map names, the flow key's fields,
//! the entry's offsets, states, registers, globals and redirect ports.
//! The globals are the `globals` variable in the object's `.data`
//! (`maps.globals` names the section; libbpf calls its map
//! `<object>.data`), one s64 per global at `offset`, holding its value.
//! Format 1 (flowstate before `.data`) kept them in a map named `globals`,
//! each as its difference from its initial value; [`parse`] still reads
//! it and says so in [`ObjectMeta::globals`].
//! `bpf_metadata_flowstate` holds `NAME HASH`, which `bpftool prog show`
//! prints.
//!
//! The program loads `flowstate_meta`'s address once, at its start, so the
//! `.rodata` map is one of the program's maps (its map ids) whoever loaded
//! the object (`ip`, `tc`, `bpftool`, bpfman, aya): `flowstate flows
//! --prog-id` finds it from the program alone.

use flowstate_lang::ir::{Hook, Program};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::layout::Layout;

/// The variable holding the JSON document.
pub const META_VAR: &str = "flowstate_meta";
/// The variable `bpftool prog show` prints (`bpf_metadata_` prefix).
pub const BPFTOOL_VAR: &str = "bpf_metadata_flowstate";
/// The document's `format`; changes when a reader would misread it.
pub const FORMAT: &str = "flowstate-meta/2";
/// The format before the globals moved to `.data`.
pub const FORMAT_GLOBALS_AS_OFFSETS: &str = "flowstate-meta/1";

/// How an object's globals are stored, by its metadata's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalsForm {
    /// The `globals` variable in `.data`, each global's value (format 2).
    Values,
    /// A map named `globals`, each global as its difference from its
    /// initial value (format 1).
    Offsets,
}

/// The hash the metadata gives a program text: the first 6 bytes of its
/// SHA-256, in hex (what `flowstate list` shows).
pub fn text_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Longest program text the metadata carries. `.rodata` is one array
/// element, and the kernel refuses values past a few MiB (KMALLOC_MAX_SIZE);
/// a longer source (comments, mostly) is replaced by the program printed
/// back, and a program whose printed text is longer still goes without.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// The metadata of a program compiled for `hook`: the JSON document,
/// NUL-terminated.
pub fn document(program: &Program, layout: &Layout, hook: Hook, source: Option<&str>) -> Vec<u8> {
    let printed;
    let text = match source {
        Some(text) if text.len() <= MAX_TEXT_BYTES => text,
        _ => {
            printed = flowstate_lang::print::program(program);
            if printed.len() <= MAX_TEXT_BYTES {
                &printed
            } else {
                ""
            }
        }
    };
    let doc = json!({
        "format": FORMAT,
        "program": program.name,
        "hook": hook_name(hook),
        "text_hash": text_hash(text),
        "text": text,
        "maps": {
            "flows": layout.flows_map,
            "globals": layout.globals_map.map(|_| crate::layout::GLOBALS_SECTION),
            "counters": layout.counters_map,
            "events": layout.events_map,
            "ports": layout.ports_map,
        },
        "key": layout.key_fields.iter().map(|f| json!({
            "field": f.name(),
            "bytes": f.key_bytes(),
        })).collect::<Vec<_>>(),
        "entry": {
            "bytes": layout.value_size,
            "lock": layout.lock_offset,
            "state": layout.state_offset,
            "created": layout.created_offset,
            "last_seen": layout.last_seen_offset,
            "registers": program.registers.iter().zip(&layout.register_offsets).map(|(r, o)| json!({
                "name": r.name,
                "offset": o,
            })).collect::<Vec<_>>(),
        },
        "states": program.states.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        // The value of each (8 bytes) at `offset` in `.data`'s `globals`.
        "globals": program.globals.iter().enumerate().map(|(i, g)| json!({
            "name": g.name,
            "offset": 8 * i,
            "initial": g.init,
        })).collect::<Vec<_>>(),
        "ports": layout.ports,
    });
    let mut bytes = doc.to_string().into_bytes();
    bytes.push(0);
    bytes
}

/// `NAME HASH`, NUL-terminated, for [`BPFTOOL_VAR`].
pub fn bpftool_line(document: &[u8]) -> Vec<u8> {
    let parsed = parse(document).ok();
    let line = parsed.map_or_else(String::new, |m| format!("{} {}", m.program, m.text_hash));
    let mut bytes = line.into_bytes();
    bytes.push(0);
    bytes
}

/// What a reader needs from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub program: String,
    pub hook: Hook,
    /// A program text that compiles to the object's maps.
    pub text: String,
    pub text_hash: String,
    pub globals: GlobalsForm,
}

/// Reads a document (up to its NUL, if any); `Err` says why it is not one.
pub fn parse(bytes: &[u8]) -> Result<ObjectMeta, String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let value: serde_json::Value = serde_json::from_slice(&bytes[..end])
        .map_err(|e| format!("not flowstate metadata: {e}"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("flowstate metadata without `{name}`"))
    };
    let format = field("format")?;
    let globals = match format.as_str() {
        FORMAT => GlobalsForm::Values,
        FORMAT_GLOBALS_AS_OFFSETS => GlobalsForm::Offsets,
        _ => {
            return Err(format!(
                "flowstate metadata of format {format:?}; this flowstate reads {FORMAT:?} and \
                 {FORMAT_GLOBALS_AS_OFFSETS:?} (use the flowstate that compiled the program)"
            ))
        }
    };
    let hook = match field("hook")?.as_str() {
        "xdp" => Hook::Xdp,
        "tc ingress" => Hook::TcIngress,
        "tc egress" => Hook::TcEgress,
        other => return Err(format!("flowstate metadata with unknown hook {other:?}")),
    };
    let text = field("text")?;
    if text.is_empty() {
        return Err(format!(
            "the object's metadata carries no program text: the program is longer than {} KiB \
             printed; open it through `flowstate run` instead",
            MAX_TEXT_BYTES / 1024
        ));
    }
    Ok(ObjectMeta {
        program: field("program")?,
        hook,
        text,
        text_hash: field("text_hash")?,
        globals,
    })
}

fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::TcIngress => "tc ingress",
        Hook::TcEgress => "tc egress",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back() {
        let source = "program p\nhook tc egress\nflow ip.src\nstates A\nregisters r = 0\n\
                      globals g = 7\ndefault pass\ntable\n  * * => redirect eth1, r = 1\nend\n";
        let program = flowstate_lang::compile(source).unwrap().program;
        let layout = Layout::new(&program, false);
        let doc = document(&program, &layout, Hook::TcEgress, Some(source));
        assert_eq!(doc.last(), Some(&0));
        let meta = parse(&doc).unwrap();
        assert_eq!(
            meta,
            ObjectMeta {
                program: "p".into(),
                hook: Hook::TcEgress,
                text: source.into(),
                text_hash: text_hash(source),
                globals: GlobalsForm::Values,
            }
        );
        // A document of the format before `.data` reads, its globals as
        // offsets.
        let old = String::from_utf8(doc.clone())
            .unwrap()
            .replace(FORMAT, FORMAT_GLOBALS_AS_OFFSETS);
        assert_eq!(parse(old.as_bytes()).unwrap().globals, GlobalsForm::Offsets);
        let value: serde_json::Value = serde_json::from_slice(&doc[..doc.len() - 1]).unwrap();
        assert_eq!(value["entry"]["registers"][0]["offset"], 24);
        assert_eq!(value["globals"][0]["initial"], 7);
        assert_eq!(value["maps"]["globals"], ".data");
        assert_eq!(value["ports"][0], "eth1");
        assert_eq!(
            bpftool_line(&doc),
            format!("p {}\0", text_hash(source)).into_bytes()
        );
        // Without a source, the printed program stands in and compiles to
        // the same program.
        let printed = parse(&document(&program, &layout, Hook::Xdp, None)).unwrap();
        let again = flowstate_lang::compile(&printed.text).unwrap().program;
        assert_eq!(Layout::new(&again, false), layout);
    }

    #[test]
    fn a_source_past_the_limit_is_replaced_by_the_printed_program() {
        let comment = format!("# {}\n", "x".repeat(MAX_TEXT_BYTES));
        let source = format!(
            "{comment}program p\nhook xdp\nflow ip.src\nstates A\ndefault pass\ntable\n  * * => drop\nend\n"
        );
        let program = flowstate_lang::compile(&source).unwrap().program;
        let layout = Layout::new(&program, false);
        let meta = parse(&document(&program, &layout, Hook::Xdp, Some(&source))).unwrap();
        assert_eq!(meta.text, flowstate_lang::print::program(&program));
    }

    #[test]
    fn other_documents_are_refused() {
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"format\":\"flowstate-meta/9\"}")
            .unwrap_err()
            .contains("format"));
    }
}
