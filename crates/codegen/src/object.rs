//! Stage 4: the ELF object (flowstate-obj): maps with BTF, one program.

use flowstate_asm::{MapRef, Program as AsmProgram};
use flowstate_lang::ir::{Hook, Program};
use flowstate_obj::{MapDef, ObjError, ObjectBuilder, ProgramDef, ProgramSection, SourceLine};

use crate::emit::{migrate, MAPS};
use crate::layout::{self, Layout};
use crate::SourceText;

/// The map a `MapRef` of the emitted code names.
pub(crate) fn map_name(layout: &Layout, map: MapRef) -> &'static str {
    let names = [
        (MAPS.flows, Some(layout.flows_map)),
        (MAPS.globals, layout.globals_map),
        (MAPS.counters, Some(layout.counters_map)),
        (MAPS.events, layout.events_map),
        (MAPS.clock, layout.clock_map),
        (crate::emit::PORTS, layout.ports_map),
        (crate::emit::META, Some(crate::meta::META_VAR)),
        (migrate::OLD_FLOWS, Some(crate::migrate::OLD_FLOWS_MAP)),
        (migrate::MIGRATION, Some(crate::migrate::MIGRATION_MAP)),
        (migrate::SUCCESSOR, Some(crate::migrate::SUCCESSOR_MAP)),
        (crate::emit::chain::CHAIN, Some(crate::chain::CHAIN_MAP)),
    ];
    names
        .into_iter()
        .find(|(id, _)| *id == map)
        .and_then(|(_, name)| name)
        .unwrap_or("unknown_map")
}

pub(crate) fn section_of(hook: Hook) -> ProgramSection {
    match hook {
        Hook::Xdp => ProgramSection::Xdp,
        Hook::TcIngress | Hook::TcEgress => ProgramSection::Classifier,
    }
}

/// The object, with the [`crate::meta`] document in `.rodata`; `extra`:
/// maps besides the program's own (a migration's).
pub(crate) fn build(
    program: &Program,
    layout: &Layout,
    hook: Hook,
    name: &str,
    code: &AsmProgram,
    extra: Vec<MapDef>,
    options: &crate::Options,
) -> Result<Vec<u8>, ObjError> {
    let source = options.source.as_ref();
    let metadata = crate::meta::document(program, layout, hook, source.map(|s| s.text.as_str()));
    let mut builder = ObjectBuilder::new();
    // The document first: readers find it at offset 0 of `.rodata`.
    let line = crate::meta::bpftool_line(&metadata);
    builder.add_rodata(crate::meta::META_VAR, metadata);
    builder.add_rodata(crate::meta::BPFTOOL_VAR, line);
    for map in layout::map_defs(program, layout).into_iter().chain(extra) {
        builder.add_map(map);
    }
    if let (Some(name), Some(ty)) = (layout.globals_map, layout::globals_type(program)) {
        if options.globals_reused {
            // A map reused from its pin (see `Options::globals_reused`).
            builder.add_map(MapDef::new(
                name,
                flowstate_obj::MapKind::Array,
                flowstate_obj::BtfType::u32(),
                ty,
                1,
            ));
        } else {
            // The globals start at their initial values whoever loads the
            // object.
            builder.add_data(name, ty, layout.encode_globals(&layout.globals_initial));
        }
    }
    builder.add_program(ProgramDef {
        name: name.to_string(),
        section: section_of(hook),
        insns: code.bytes(),
        map_relocs: code
            .relocs
            .iter()
            .map(|r| (r.insn_index, map_name(layout, r.map).to_string()))
            .collect(),
    });
    let file = source.map_or_else(|| format!("{}.fsm", program.name), |s| s.file.clone());
    builder.add_source_lines(name, file, source_lines(code, source));
    builder.build()
}

/// A line_info entry wherever the emitter said which source line the code
/// is for: that line's text from the source, or else the annotation (the
/// row as printed).
fn source_lines(code: &AsmProgram, source: Option<&SourceText>) -> Vec<SourceLine> {
    let texts: Vec<&str> = source.map_or_else(Vec::new, |s| s.text.lines().collect());
    code.annotations
        .iter()
        .filter(|a| a.slot < code.insns.len())
        .filter_map(|a| {
            let line = a.line.filter(|&l| l > 0)?;
            let text = match texts.get(line as usize - 1) {
                Some(text) => text.trim_end().to_string(),
                None => a.notes.first().cloned().unwrap_or_default(),
            };
            Some(SourceLine {
                slot: a.slot,
                line,
                text,
            })
        })
        .collect()
}
