//! flowstate's own build of the libxdp dispatcher (protocol version 2):
//! the same interface as `xdp-dispatcher.o`, written with flowstate-obj.
//!
//! - `xdp_dispatcher(struct xdp_md *ctx)`: for slot i below
//!   `num_progs_enabled`, calls `prog<i>(ctx)` and goes on to the next
//!   slot only if bit `ret` is set in `chain_call_actions[i]`; after the
//!   last slot, `XDP_PASS`.
//! - `prog0` ... `prog9`: global functions returning
//!   `XDP_DISPATCHER_RETVAL` (31), which every slot's actions include, so
//!   a slot whose extension went away is passed over. Extensions replace
//!   them (`BPF_PROG_TYPE_EXT`); they are global so the kernel allows it.
//!   Each makes a no-op `bpf_xdp_adjust_tail(ctx, 0)` call first, as
//!   libxdp's do: the kernel refuses an extension that may change packet
//!   data (a helper that moves it, or a tail call: a migrating reload's
//!   handoff build tail-calls) in place of a function that does not.
//! - one map, the configuration (`struct xdp_dispatcher_config`, key
//!   `u32`, one entry, `BPF_F_RDONLY_PROG`): libxdp reads the slots' run
//!   priorities and chain-call actions from it, and recognises a
//!   dispatcher by the program name, this single map and its magic.
//!
//! libxdp keeps the configuration in a frozen `.rodata` so that the
//! verifier prunes unused slots; a lookup in a read-only map does the same
//! job at a cost of a few instructions per packet, and keeps this object
//! within what flowstate-obj writes.

use flowstate_obj::{BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection};

pub const MAX_SLOTS: usize = 10;
pub const DISPATCHER_NAME: &str = "xdp_dispatcher";
pub const CONFIG_MAP: &str = "disp_config";
pub const DISPATCHER_MAGIC: u8 = 236;
pub const DISPATCHER_VERSION: u8 = 2;
/// What an empty slot returns; always a chain-call action.
pub const DISPATCHER_RETVAL: u32 = 31;
const XDP_PASS: i32 = 2;
/// `BPF_F_RDONLY_PROG`: programs may only read the map.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;
/// `struct xdp_dispatcher_config` (version 2): 4 bytes, then three arrays
/// of ten `u32`.
pub const CONFIG_SIZE: usize = 4 + 3 * 4 * MAX_SLOTS;

/// Name of slot `i`'s function.
pub fn slot_function(i: usize) -> String {
    format!("prog{i}")
}

/// The configuration's bytes.
pub fn config_bytes(slots: &[(u32, u32, u32)], is_xdp_frags: bool) -> Vec<u8> {
    let mut out = vec![
        DISPATCHER_MAGIC,
        DISPATCHER_VERSION,
        slots.len() as u8,
        u8::from(is_xdp_frags),
    ];
    let column = |out: &mut Vec<u8>, pick: &dyn Fn(&(u32, u32, u32)) -> u32| {
        for i in 0..MAX_SLOTS {
            let value = slots.get(i).map_or(0, pick);
            out.extend_from_slice(&value.to_le_bytes());
        }
    };
    // (chain_call_actions, run_prio, program_flags) per slot.
    column(&mut out, &|s| s.0 | (1 << DISPATCHER_RETVAL));
    column(&mut out, &|s| s.1);
    column(&mut out, &|s| s.2);
    out
}

/// One instruction, encoded.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut out = [code, (src << 4) | dst, 0, 0, 0, 0, 0, 0];
    out[2..4].copy_from_slice(&off.to_le_bytes());
    out[4..].copy_from_slice(&imm.to_le_bytes());
    out
}

// Opcodes used (include/uapi/linux/bpf.h classes | ops | sources).
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const MOV32_IMM: u8 = 0xb4;
const ADD64_IMM: u8 = 0x07;
const LSH32_REG: u8 = 0x6c;
const AND32_REG: u8 = 0x5c;
const ST_W_IMM: u8 = 0x62;
const LDX_B: u8 = 0x71;
const LDX_W: u8 = 0x61;
const LD_IMM64: u8 = 0x18;
const JEQ_IMM: u8 = 0x15;
const JLE_IMM: u8 = 0xb5;
const JEQ32_IMM: u8 = 0x16;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_CALL: u8 = 1;
const MAP_LOOKUP_ELEM: i32 = 1;
const XDP_ADJUST_TAIL: i32 = 65;
/// Instructions of the main function before the first slot, per slot,
/// and after the last.
const PROLOGUE: usize = 9;
const PER_SLOT: usize = 9;
const EPILOGUE: usize = 3;
const MAIN_LEN: usize = PROLOGUE + PER_SLOT * MAX_SLOTS + EPILOGUE;
/// Each stub: `r2 = 0; call bpf_xdp_adjust_tail; r0 = 31; exit`.
const STUB_LEN: usize = 4;

/// The main function; the stubs follow it in the section, stub i at slot
/// `MAIN_LEN + STUB_LEN * i`.
fn main_function() -> Vec<u8> {
    let pass = (MAIN_LEN - EPILOGUE) as i64;
    let give_back = (MAIN_LEN - 1) as i64;
    let jump = |from: usize, to: i64| (to - from as i64 - 1) as i16;
    let mut code: Vec<[u8; 8]> = vec![
        insn(MOV64_REG, 6, 1, 0, 0),  // r6 = ctx
        insn(ST_W_IMM, 10, 0, -4, 0), // key 0 on the stack
        insn(LD_IMM64, 1, 0, 0, 0),   // r1 = &config (relocated)
        insn(0, 0, 0, 0, 0),          //
        insn(MOV64_REG, 2, 10, 0, 0), // r2 = &key
        insn(ADD64_IMM, 2, 0, 0, -4), //
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, jump(7, pass), 0), // no config: pass
        insn(MOV64_REG, 7, 0, 0, 0),           // r7 = config
    ];
    for slot in 0..MAX_SLOTS {
        let at = code.len();
        let stub = (MAIN_LEN + STUB_LEN * slot) as i64;
        code.extend([
            insn(LDX_B, 1, 7, 2, 0),                              // num_progs_enabled
            insn(JLE_IMM, 1, 0, jump(at + 1, pass), slot as i32), // slot unused: done
            insn(MOV64_REG, 1, 6, 0, 0),                          // r1 = ctx
            insn(CALL, 0, PSEUDO_CALL, 0, (stub - (at + 3) as i64 - 1) as i32),
            insn(LDX_W, 1, 7, (4 + 4 * slot) as i16, 0), // chain_call_actions[slot]
            insn(MOV32_IMM, 2, 0, 0, 1),
            insn(LSH32_REG, 2, 0, 0, 0), // w2 = 1 << ret
            insn(AND32_REG, 2, 1, 0, 0),
            insn(JEQ32_IMM, 2, 0, jump(at + 8, give_back), 0), // not chained: return ret
        ]);
    }
    code.extend([
        insn(MOV64_IMM, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0), // give_back: r0 is the slot's verdict
    ]);
    debug_assert_eq!(code.len(), MAIN_LEN);
    code.concat()
}

/// The dispatcher's ELF object.
pub fn dispatcher_object() -> Vec<u8> {
    let mut builder = ObjectBuilder::new();
    let config = BtfType::array(BtfType::u8(), CONFIG_SIZE as u32);
    builder.add_map(
        MapDef::new(CONFIG_MAP, MapKind::Array, BtfType::u32(), config, 1)
            .with_flags(BPF_F_RDONLY_PROG),
    );
    builder.add_program(ProgramDef {
        name: DISPATCHER_NAME.into(),
        section: ProgramSection::Xdp,
        insns: main_function(),
        map_relocs: vec![(2, CONFIG_MAP.into())],
    });
    for slot in 0..MAX_SLOTS {
        builder.add_program(ProgramDef {
            name: slot_function(slot),
            section: ProgramSection::Xdp,
            insns: [
                // r1 is the context on entry.
                insn(MOV64_IMM, 2, 0, 0, 0),
                insn(CALL, 0, 0, 0, XDP_ADJUST_TAIL),
                insn(MOV64_IMM, 0, 0, 0, DISPATCHER_RETVAL as i32),
                insn(EXIT, 0, 0, 0, 0),
            ]
            .concat(),
            map_relocs: Vec::new(),
        });
    }
    builder
        .build()
        .expect("the dispatcher's fixed definition is a valid object")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_is_libxdps_version_2() {
        let bytes = config_bytes(&[(1 << 2, 50, 0), (1 << 2 | 1 << 1, 10, 0)], false);
        assert_eq!(bytes.len(), 124);
        assert_eq!(&bytes[..4], &[236, 2, 2, 0]);
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!(word(4), 1 << 2 | 1 << 31);
        assert_eq!(word(8), 1 << 2 | 1 << 1 | 1 << 31);
        assert_eq!(
            word(12),
            0,
            "unused slots are never called: 0, as libxdp leaves them"
        );
        assert_eq!(word(44), 50);
        assert_eq!(word(48), 10);
    }

    #[test]
    fn every_slot_calls_its_own_stub() {
        let code = main_function();
        let calls: Vec<usize> = (0..MAIN_LEN)
            .filter(|&i| code[i * 8] == CALL && code[i * 8 + 1] >> 4 == PSEUDO_CALL)
            .map(|i| {
                let imm = i32::from_le_bytes(code[i * 8 + 4..i * 8 + 8].try_into().unwrap());
                (i as i64 + 1 + i64::from(imm)) as usize
            })
            .collect();
        let stubs: Vec<usize> = (0..MAX_SLOTS).map(|s| MAIN_LEN + STUB_LEN * s).collect();
        assert_eq!(calls, stubs);
    }
}
