//! `.BTF.ext` as aya-obj (aya's parser) reads it: every program has its
//! func_info, and line_info points at the source lines given.

use aya_obj::Object as AyaObject;
use flowstate_obj::{ObjError, ObjectBuilder, ProgramDef, ProgramSection, SourceLine};

fn encode(opcode: u8, src: u8, imm: i32) -> [u8; 8] {
    let mut slot = [opcode, src << 4, 0, 0, 0, 0, 0, 0];
    slot[4..].copy_from_slice(&imm.to_le_bytes());
    slot
}

/// `r0 = action; r0 = action; exit`: three slots.
fn returns(action: i32) -> Vec<u8> {
    [
        encode(0xb7, 0, action),
        encode(0xb7, 0, action),
        encode(0x95, 0, 0),
    ]
    .concat()
}

fn program(name: &str, section: ProgramSection, insns: Vec<u8>) -> ProgramDef {
    ProgramDef {
        name: name.into(),
        section,
        insns,
        map_relocs: Vec::new(),
    }
}

fn line(slot: usize, line: u32, text: &str) -> SourceLine {
    SourceLine {
        slot,
        line,
        text: text.into(),
    }
}

fn sample() -> ObjectBuilder {
    let mut builder = ObjectBuilder::new();
    builder
        .add_program(program("first", ProgramSection::Xdp, returns(2)))
        .add_program(program("second", ProgramSection::Xdp, returns(1)))
        .add_program(program("classify", ProgramSection::Classifier, returns(0)))
        .add_source_lines(
            "second",
            "knock.fsm",
            vec![
                line(2, 7, "  OPEN * => pass"),
                line(0, 3, "program knock xdp"),
            ],
        );
    builder
}

fn function<'a>(object: &'a AyaObject, name: &str) -> &'a aya_obj::Function {
    object
        .functions
        .values()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("aya-obj has no function {name}"))
}

#[test]
fn every_program_has_func_info_at_its_start() {
    let object = AyaObject::parse(&sample().build().unwrap()).unwrap();
    for name in ["first", "second", "classify"] {
        let f = function(&object, name);
        assert_eq!(f.func_info.func_info.len(), 1, "{name}");
        assert_eq!(f.func_info.func_info[0].insn_off, 0, "{name}");
        assert_ne!(f.func_info.func_info[0].type_id, 0, "{name}");
    }
}

#[test]
fn line_info_follows_the_given_lines() {
    let object = AyaObject::parse(&sample().build().unwrap()).unwrap();
    let second = function(&object, "second");
    let lines: Vec<(u32, u32)> = second
        .line_info
        .line_info
        .iter()
        .map(|l| (l.insn_off, l.line_col >> 10))
        .collect();
    // aya-obj rebases offsets to slots of the function.
    assert_eq!(lines, [(0, 3), (2, 7)]);
    assert!(function(&object, "first").line_info.line_info.is_empty());
}

#[test]
fn source_lines_must_fit_the_program() {
    let mut builder = sample();
    builder.add_source_lines("first", "a.fsm", vec![line(3, 1, "past the end")]);
    assert!(matches!(
        builder.build(),
        Err(ObjError::InvalidProgram { program, .. }) if program == "first"
    ));
    let mut builder = sample();
    builder.add_source_lines("absent", "a.fsm", vec![line(0, 1, "x")]);
    assert!(builder.build().is_err());
}

#[test]
fn the_first_line_covers_the_program_start() {
    let mut builder = ObjectBuilder::new();
    builder
        .add_program(program("only", ProgramSection::Xdp, returns(2)))
        .add_source_lines("only", "x.fsm", vec![line(1, 9, "row")]);
    let object = AyaObject::parse(&builder.build().unwrap()).unwrap();
    let lines: Vec<(u32, u32)> = function(&object, "only")
        .line_info
        .line_info
        .iter()
        .map(|l| (l.insn_off, l.line_col >> 10))
        .collect();
    assert_eq!(lines, [(0, 9), (1, 9)]);
}
