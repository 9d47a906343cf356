//! BTF for a program loaded from bare instructions (not from an object):
//! the kernel verifies a `bpf_loop` callback only in a program whose
//! functions BTF describes (`ld_imm64` of a function's address needs
//! func_info), so a program with callbacks loaded by `BPF_PROG_LOAD`
//! itself (the control plane's editor) brings this blob and these
//! records, described as an object's are (`int NAME(struct xdp_md *)`,
//! each callback a static function).

use crate::{btf, btf_ext, xdp_md, SLOT_SIZE};

/// `struct bpf_func_info`: where a function starts, in instructions (not
/// bytes, as in `.BTF.ext`), and its `FUNC` type in [`FunctionBtf::btf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncInfo {
    pub insn: u32,
    pub type_id: u32,
}

/// What `BPF_BTF_LOAD` and `BPF_PROG_LOAD` (`prog_btf_fd`, `func_info`)
/// take for one XDP program and its subprograms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionBtf {
    /// The `.BTF` blob.
    pub btf: Vec<u8>,
    /// One record per function, the program (at 0) first.
    pub func_info: Vec<FuncInfo>,
}

/// The BTF of the XDP program `name` (`insns`: its `struct bpf_insn`
/// array, subprograms after its last instruction, found as the kernel
/// finds them), or `None` when it has no subprograms (the kernel needs
/// none then).
pub fn xdp_function_btf(name: &str, insns: &[u8]) -> Option<FunctionBtf> {
    let starts = btf_ext::subprogram_starts(insns);
    if starts.is_empty() {
        return None;
    }
    let mut writer = btf::BtfWriter::new();
    let int = writer.add_type(&btf::BtfType::int("int", 4, true));
    let context = writer.add_type(&xdp_md());
    let context_ptr = writer.ptr(context);
    let proto = writer.func_proto(int, &[("ctx", context_ptr)]);
    let sub_proto = writer.func_proto(int, &[]);
    let mut func_info = vec![FuncInfo {
        insn: 0,
        type_id: writer.func_global(name, proto),
    }];
    for start in starts {
        func_info.push(FuncInfo {
            insn: start as u32,
            type_id: writer.func_static(&format!("{name}_sub{start}"), sub_proto),
        });
    }
    debug_assert!(insns.len().is_multiple_of(SLOT_SIZE));
    Some(FunctionBtf {
        btf: writer.finish(),
        func_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, src: u8, imm: i32) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0] = code;
        bytes[1] = src << 4;
        bytes[4..].copy_from_slice(&imm.to_le_bytes());
        bytes
    }

    #[test]
    fn a_program_without_subprograms_needs_no_btf() {
        let exit = insn(0x95, 0, 0);
        assert_eq!(xdp_function_btf("p", &exit), None);
    }

    #[test]
    fn each_callback_gets_a_record_at_its_first_instruction() {
        // ld_imm64 r2 = the function at slot 3 (1 + 2); exit; exit (the
        // callback); exit.
        let mut insns = Vec::new();
        insns.extend(insn(0x18, 4, 2));
        insns.extend([0u8; 8]);
        insns.extend(insn(0x95, 0, 0));
        insns.extend(insn(0x95, 0, 0));
        insns.extend(insn(0x95, 0, 0));
        let found = xdp_function_btf("editor", &insns).unwrap();
        let at: Vec<u32> = found.func_info.iter().map(|f| f.insn).collect();
        assert_eq!(at, [0, 3]);
        assert!(found.btf.starts_with(&0xeb9f_u16.to_le_bytes()));
    }
}
