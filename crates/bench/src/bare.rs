//! The bare program: returns its verdict and nothing else. Every figure
//! is divided by its cost in the same run.

use flowstate_asm::{AsmError, Assembler, Helper, Insn, Reg::R0};
use flowstate_obj::{ObjError, ObjectBuilder, ProgramDef, ProgramSection};

/// `XDP_PASS`.
pub const XDP_PASS: i32 = 2;
/// `TC_ACT_OK`.
pub const TC_ACT_OK: i32 = 0;

/// Name of the bare program in the objects [`object`] writes.
pub const PROGRAM_NAME: &str = "bare";

#[derive(Debug)]
pub enum BareError {
    Asm(AsmError),
    Obj(ObjError),
}

impl std::fmt::Display for BareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BareError::Asm(e) => write!(f, "assembling the bare program: {e}"),
            BareError::Obj(e) => write!(f, "writing the bare program's object: {e}"),
        }
    }
}

impl std::error::Error for BareError {}

/// An ELF object with one program, [`PROGRAM_NAME`], in `section`, that
/// returns `verdict`: `r0 = verdict; exit`.
pub fn object(section: ProgramSection, verdict: i32) -> Result<Vec<u8>, BareError> {
    object_calling(section, None, verdict)
}

/// As [`object`], calling `helper` first (a helper without arguments, such
/// as a clock): the difference to the bare program is the helper's cost.
pub fn object_calling(
    section: ProgramSection,
    helper: Option<Helper>,
    verdict: i32,
) -> Result<Vec<u8>, BareError> {
    let mut asm = Assembler::new();
    if let Some(helper) = helper {
        asm.emit(Insn::call(helper));
    }
    asm.emit(Insn::mov64(R0, verdict));
    asm.emit(Insn::exit());
    let code = asm.finish().map_err(BareError::Asm)?;
    let mut builder = ObjectBuilder::new();
    builder.add_program(ProgramDef {
        name: PROGRAM_NAME.to_string(),
        section,
        insns: code.bytes(),
        map_relocs: Vec::new(),
    });
    builder.build().map_err(BareError::Obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_object_is_an_elf_with_two_instructions() {
        let object = object(ProgramSection::Xdp, XDP_PASS).unwrap();
        assert_eq!(&object[..4], b"\x7fELF");
        // r0 = 2 (0xb7, dst r0, imm 2), then exit (0x95): the encoded text
        // appears verbatim in the object.
        let text = [
            0xb7, 0, 0, 0, 2, 0, 0, 0, //
            0x95, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(object.windows(text.len()).any(|w| w == text));
    }

    #[test]
    fn clock_program_calls_the_helper_before_the_verdict() {
        let object =
            object_calling(ProgramSection::Xdp, Some(Helper::KTIME_GET_NS), XDP_PASS).unwrap();
        let text = [
            0x85, 0, 0, 0, 5, 0, 0, 0, // call 5 (bpf_ktime_get_ns)
            0xb7, 0, 0, 0, 2, 0, 0, 0, // r0 = 2
            0x95, 0, 0, 0, 0, 0, 0, 0, // exit
        ];
        assert!(object.windows(text.len()).any(|w| w == text));
    }

    #[test]
    fn tc_bare_object_names_the_classifier_section() {
        let object = object(ProgramSection::Classifier, TC_ACT_OK).unwrap();
        assert!(object
            .windows(b"classifier".len())
            .any(|w| w == b"classifier"));
    }
}
