//! The editor: a small eBPF program, generated for one program's layout,
//! through which user space changes a running program's flows and globals
//! under the same per-flow protocol as its packets (see the crate doc).
//!
//! User space cannot take a flow's lock word by itself: the map syscalls
//! only copy or replace whole values, so an edit made with them loses a
//! packet's concurrent update, or lands in an element recycled for another
//! flow. The editor runs in the kernel instead, one request per
//! `BPF_PROG_TEST_RUN` of an XDP program: the request is the packet's
//! bytes and the reply is written back into them.
//!
//! A flow edit (state, one register) takes the flow's word through the
//! lock loop (a missing flow gets a held placeholder), treats the entry as
//! a packet would read it (missing: initial state and constant initial
//! registers, created now; past its timeout: its rollback state, registers
//! reset, created now), changes the one requested field, sets `last_seen`
//! to now (an edit is a write, DESIGN.md 1.8), and releases the word; an
//! entry that ends up equal to a missing one is deleted while held, as
//! packets do. A delete takes the word and deletes while holding it. A
//! global is swapped with one atomic exchange, so packets' atomic adds to
//! it (and to the other globals) are never lost. `now` is read the way the
//! program reads it.
//!
//! Request layout (little-endian, [`Editor::request_size`] bytes):
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 4 | operation ([`Request`]) |
//! | 4 | 4 | register or global index |
//! | 8 | 8 | new value (state id, register, or global) |
//! | 16 | 4 | reply: outcome, written by the editor |
//! | 24 | 8 | reply: the value before the edit |
//! | 32 | key | the packed flow key |

use flowstate_lang::ir::{Program, StateId};

use crate::layout::{self, Layout};
use crate::{emit, lower, object, CodegenError};

/// Request field offsets (see the module doc).
pub(crate) const OP_AT: usize = 0;
pub(crate) const INDEX_AT: usize = 4;
pub(crate) const VALUE_AT: usize = 8;
pub(crate) const OUTCOME_AT: usize = 16;
pub(crate) const OLD_AT: usize = 24;
pub(crate) const KEY_AT: usize = 32;

/// Operation codes.
pub(crate) const OP_SET_STATE: u32 = 1;
pub(crate) const OP_SET_REGISTER: u32 = 2;
pub(crate) const OP_DELETE: u32 = 3;
pub(crate) const OP_SET_GLOBAL: u32 = 4;

/// Outcome codes written by the editor (0: it wrote none).
pub(crate) const WRITTEN: u32 = 1;
pub(crate) const CREATED: u32 = 2;
pub(crate) const ELIDED: u32 = 3;
pub(crate) const DELETED: u32 = 4;
pub(crate) const NO_SUCH_FLOW: u32 = 5;
pub(crate) const TABLE_FULL: u32 = 6;
pub(crate) const BUSY: u32 = 7;
pub(crate) const BAD_REQUEST: u32 = 8;

/// The editor's name in the kernel (16 bytes at most).
pub const PROGRAM_NAME: &str = "flowstate_edit";

/// One change to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'k> {
    /// Put the flow under `key` in `state` (creating its entry if needed).
    SetState { key: &'k [u8], state: StateId },
    /// Set per-flow register `index` of the flow under `key`.
    SetRegister {
        key: &'k [u8],
        index: usize,
        value: i64,
    },
    /// Remove the flow under `key`.
    Delete { key: &'k [u8] },
    /// Set global register `index`.
    SetGlobal { index: usize, value: i64 },
}

/// What the editor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The flow's entry (or the global) was changed. `old` is the state id,
    /// register or global value before, as the program would have read it
    /// (an entry past its timeout reads as its rollback state).
    Written { old: i64 },
    /// The flow had no entry: one was made; `old` is the initial value.
    Created { old: i64 },
    /// The result reads exactly like a missing entry, so no entry is kept
    /// (DESIGN.md 1.8): an existing one was deleted, none was made.
    Elided { old: i64 },
    /// The flow's entry was removed; `old_state` is the state it stored.
    Deleted { old_state: StateId },
    /// Nothing to delete: the flow has no entry.
    NoSuchFlow,
    /// The flow had no entry and the table is full (`flows N refuse`).
    TableFull,
    /// The flow's entry stayed locked through the kernel's whole loop
    /// budget (a writer left it held); nothing was changed.
    Busy,
    /// The editor refused the request: an index or state out of range.
    BadRequest,
}

/// A request the editor cannot carry, or a reply it did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("the key has {got} bytes, the program's keys {expected}")]
    KeySize { expected: usize, got: usize },
    #[error("the program has no {kind} number {index} (it has {count})")]
    OutOfRange {
        kind: &'static str,
        index: usize,
        count: usize,
    },
    #[error("the editor's reply is {got} bytes, expected {expected}")]
    ShortReply { expected: usize, got: usize },
    #[error("the editor answered with unknown outcome {0}")]
    UnknownOutcome(u32),
}

/// The editor compiled for one program.
#[derive(Debug, Clone)]
pub struct Editor {
    /// The instructions as the kernel loads them (`struct bpf_insn`
    /// array). It is an XDP program.
    pub insns: Vec<u8>,
    /// `(instruction index, map name)` of each map load: the map's fd goes
    /// into that instruction's `imm` (`BPF_PSEUDO_MAP_FD`).
    pub map_relocs: Vec<(usize, &'static str)>,
    /// The BTF of its functions when it has `bpf_loop` callbacks (built
    /// for a kernel without `may_goto`), which the kernel needs to load
    /// it: pass it to `RawProgram::load_xdp_with_btf`.
    pub functions: Option<flowstate_obj::FunctionBtf>,
    /// Disassembly with annotations.
    pub listing: String,
    /// The layout it edits.
    pub layout: Layout,
    states: usize,
}

/// Compiles the editor of `program`. With `test_clock`, `now` comes from
/// the `clock` map, as in a program compiled with
/// [`crate::Options::test_clock`].
pub fn compile(program: &Program, test_clock: bool) -> Result<Editor, CodegenError> {
    compile_for(program, test_clock, &crate::Target::newest())
}

/// [`compile`] for a kernel other than the newest (the control plane
/// passes the host's target).
pub fn compile_for(
    program: &Program,
    test_clock: bool,
    features: &crate::Target,
) -> Result<Editor, CodegenError> {
    let problems = crate::static_limits(program, features);
    if !problems.is_empty() {
        return Err(CodegenError::Limits(problems));
    }
    let layout = Layout::new(program, test_clock);
    let frame = layout::Frame::plan(program, features);
    let lowered = lower::lower(program);
    let target = emit::Target {
        hook: flowstate_lang::ir::Hook::Xdp,
        clock: emit::clock_for(program, test_clock),
        atomic: true,
        conflict: crate::testing::StagedConflict::None,
        features: *features,
        // The editor is loaded from its instructions (no object), so the
        // `.data` address load works on any existing map.
        globals_reused: false,
        chain: None,
    };
    let code = match emit::emit_editor(program, &target, &layout, &frame, &lowered) {
        Ok(code) => code,
        Err(Ok(message)) => return Err(CodegenError::Program(message)),
        Err(Err(asm)) => return Err(CodegenError::Assembly(asm)),
    };
    let listing = flowstate_asm::listing(&code, &|map| object::map_name(&layout, map).to_string());
    let insns = code.bytes();
    Ok(Editor {
        functions: flowstate_obj::xdp_function_btf(PROGRAM_NAME, &insns),
        insns,
        map_relocs: code
            .relocs
            .iter()
            .map(|r| (r.insn_index, object::map_name(&layout, r.map)))
            .collect(),
        listing,
        layout,
        states: program.states.len(),
    })
}

impl Editor {
    /// Bytes of a request (and of its reply).
    pub fn request_size(&self) -> usize {
        request_size(&self.layout)
    }

    /// Maps the editor uses, by name: the flows map, the globals map if
    /// the program has globals, the clock map under the test clock.
    pub fn maps(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for (_, name) in &self.map_relocs {
            if !names.contains(name) {
                names.push(name);
            }
        }
        names
    }

    /// The request's bytes.
    pub fn encode(&self, request: &Request) -> Result<Vec<u8>, EditError> {
        let layout = &self.layout;
        let registers = layout.register_offsets.len();
        let globals = layout.globals_initial.len();
        let check_key = |key: &[u8]| {
            if key.len() == layout.key_size {
                Ok(())
            } else {
                Err(EditError::KeySize {
                    expected: layout.key_size,
                    got: key.len(),
                })
            }
        };
        let in_range = |kind, index: usize, count: usize| {
            if index < count {
                Ok(index as u32)
            } else {
                Err(EditError::OutOfRange { kind, index, count })
            }
        };
        let (op, index, value, key): (u32, u32, i64, &[u8]) = match *request {
            Request::SetState { key, state } => {
                check_key(key)?;
                in_range("state", usize::from(state.0), self.states)?;
                (OP_SET_STATE, 0, i64::from(state.0), key)
            }
            Request::SetRegister { key, index, value } => {
                check_key(key)?;
                let index = in_range("register", index, registers)?;
                (OP_SET_REGISTER, index, value, key)
            }
            Request::Delete { key } => {
                check_key(key)?;
                (OP_DELETE, 0, 0, key)
            }
            Request::SetGlobal { index, value } => {
                let at = in_range("global", index, globals)?;
                (OP_SET_GLOBAL, at, value, &[])
            }
        };
        let mut bytes = vec![0u8; self.request_size()];
        bytes[OP_AT..OP_AT + 4].copy_from_slice(&op.to_le_bytes());
        bytes[INDEX_AT..INDEX_AT + 4].copy_from_slice(&index.to_le_bytes());
        bytes[VALUE_AT..VALUE_AT + 8].copy_from_slice(&value.to_le_bytes());
        bytes[KEY_AT..KEY_AT + key.len()].copy_from_slice(key);
        Ok(bytes)
    }

    /// The outcome the editor wrote into `reply` (the packet after the run)
    /// for `request`.
    pub fn decode(&self, _request: &Request, reply: &[u8]) -> Result<Outcome, EditError> {
        if reply.len() < self.request_size() {
            return Err(EditError::ShortReply {
                expected: self.request_size(),
                got: reply.len(),
            });
        }
        let code = u32::from_le_bytes(word(reply, OUTCOME_AT));
        let old = i64::from_le_bytes(word(reply, OLD_AT));
        Ok(match code {
            WRITTEN => Outcome::Written { old },
            CREATED => Outcome::Created { old },
            ELIDED => Outcome::Elided { old },
            DELETED => Outcome::Deleted {
                old_state: StateId(u16::try_from(old).unwrap_or(u16::MAX)),
            },
            NO_SUCH_FLOW => Outcome::NoSuchFlow,
            TABLE_FULL => Outcome::TableFull,
            BUSY => Outcome::Busy,
            BAD_REQUEST => Outcome::BadRequest,
            other => return Err(EditError::UnknownOutcome(other)),
        })
    }
}

/// Bytes of a request for `layout`: the header, then the key padded to 8.
pub(crate) fn request_size(layout: &Layout) -> usize {
    KEY_AT + layout.key_size.max(1).next_multiple_of(8)
}

fn word<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(source: &str) -> Program {
        flowstate_lang::compile(source).unwrap().program
    }

    const COUNT: &str = "program count\nhook xdp\nflow ip.src, udp.dport\nstates S, T\n\
                         registers n = 0, m = 7\nglobals total = 5, other = 0\ndefault drop\n\n\
                         table\n  * * => pass, n = n + 1, total = total + 1\nend\n";

    fn editor() -> Editor {
        compile(&program(COUNT), false).unwrap()
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(word(bytes, at))
    }

    fn i64_at(bytes: &[u8], at: usize) -> i64 {
        i64::from_le_bytes(word(bytes, at))
    }

    #[test]
    fn requests_carry_operation_index_value_and_key() {
        let e = editor();
        // ip.src (4) + udp.dport (2) = 6 key bytes, padded to 8.
        assert_eq!(e.request_size(), 40);
        let key = [10, 0, 0, 1, 0, 53];
        let set = e
            .encode(&Request::SetRegister {
                key: &key,
                index: 1,
                value: -3,
            })
            .unwrap();
        assert_eq!(set.len(), 40);
        assert_eq!(u32_at(&set, OP_AT), OP_SET_REGISTER);
        assert_eq!(u32_at(&set, INDEX_AT), 1);
        assert_eq!(i64_at(&set, VALUE_AT), -3);
        assert_eq!(u32_at(&set, OUTCOME_AT), 0, "no outcome before the run");
        assert_eq!(&set[KEY_AT..KEY_AT + 6], &key);
        assert_eq!(&set[KEY_AT + 6..], &[0, 0], "padding");

        let state = e
            .encode(&Request::SetState {
                key: &key,
                state: StateId(1),
            })
            .unwrap();
        assert_eq!(u32_at(&state, OP_AT), OP_SET_STATE);
        assert_eq!(i64_at(&state, VALUE_AT), 1);

        let delete = e.encode(&Request::Delete { key: &key }).unwrap();
        assert_eq!(u32_at(&delete, OP_AT), OP_DELETE);
        assert_eq!(&delete[KEY_AT..KEY_AT + 6], &key);
    }

    #[test]
    fn globals_travel_as_their_values() {
        let e = editor();
        let request = Request::SetGlobal {
            index: 0,
            value: 12,
        };
        let mut bytes = e.encode(&request).unwrap();
        assert_eq!(u32_at(&bytes, OP_AT), OP_SET_GLOBAL);
        assert_eq!(i64_at(&bytes, VALUE_AT), 12, "the value, not 12 - 5");
        // The editor swaps in the value and reports the old one.
        bytes[OUTCOME_AT..OUTCOME_AT + 4].copy_from_slice(&WRITTEN.to_le_bytes());
        bytes[OLD_AT..OLD_AT + 8].copy_from_slice(&5i64.to_le_bytes());
        assert_eq!(
            e.decode(&request, &bytes).unwrap(),
            Outcome::Written { old: 5 }
        );
    }

    #[test]
    fn bad_requests_are_refused_before_the_kernel() {
        let e = editor();
        let key = [0u8; 6];
        assert_eq!(
            e.encode(&Request::Delete { key: &[1, 2, 3] }),
            Err(EditError::KeySize {
                expected: 6,
                got: 3
            })
        );
        assert!(matches!(
            e.encode(&Request::SetRegister {
                key: &key,
                index: 2,
                value: 0
            }),
            Err(EditError::OutOfRange {
                kind: "register",
                ..
            })
        ));
        assert!(matches!(
            e.encode(&Request::SetState {
                key: &key,
                state: StateId(2)
            }),
            Err(EditError::OutOfRange { kind: "state", .. })
        ));
        assert!(matches!(
            e.encode(&Request::SetGlobal { index: 2, value: 0 }),
            Err(EditError::OutOfRange { kind: "global", .. })
        ));
    }

    #[test]
    fn replies_decode_every_outcome() {
        let e = editor();
        let key = [0u8; 6];
        let request = Request::SetRegister {
            key: &key,
            index: 0,
            value: 1,
        };
        let reply = |code: u32, old: i64| {
            let mut bytes = e.encode(&request).unwrap();
            bytes[OUTCOME_AT..OUTCOME_AT + 4].copy_from_slice(&code.to_le_bytes());
            bytes[OLD_AT..OLD_AT + 8].copy_from_slice(&old.to_le_bytes());
            e.decode(&request, &bytes)
        };
        assert_eq!(reply(WRITTEN, 4), Ok(Outcome::Written { old: 4 }));
        assert_eq!(reply(CREATED, 0), Ok(Outcome::Created { old: 0 }));
        assert_eq!(reply(ELIDED, 1), Ok(Outcome::Elided { old: 1 }));
        assert_eq!(
            reply(DELETED, 1),
            Ok(Outcome::Deleted {
                old_state: StateId(1)
            })
        );
        assert_eq!(reply(NO_SUCH_FLOW, 0), Ok(Outcome::NoSuchFlow));
        assert_eq!(reply(TABLE_FULL, 0), Ok(Outcome::TableFull));
        assert_eq!(reply(BUSY, 0), Ok(Outcome::Busy));
        assert_eq!(reply(BAD_REQUEST, 0), Ok(Outcome::BadRequest));
        assert_eq!(reply(0, 0), Err(EditError::UnknownOutcome(0)));
        assert!(matches!(
            e.decode(&request, &[0u8; 8]),
            Err(EditError::ShortReply { .. })
        ));
    }

    #[test]
    fn the_editor_uses_only_the_maps_it_edits() {
        let e = editor();
        assert_eq!(e.maps(), ["flows", "globals"]);
        let clocked = compile(&program(COUNT), true).unwrap();
        assert!(clocked.maps().contains(&"clock"));
        let no_globals = compile(
            &program(
                "program p\nhook xdp\nflow ip.src\nstates S\ndefault drop\n\ntable\n  \
                 * * => pass\nend\n",
            ),
            false,
        )
        .unwrap();
        assert_eq!(no_globals.maps(), ["flows"]);
    }
}
