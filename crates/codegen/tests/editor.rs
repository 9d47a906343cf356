//! The editor (flowstate_codegen::editor) in the kernel: accepted by the
//! verifier for every example and both clocks, and making exactly the
//! documented change under the test clock: the one requested field, the
//! entry as a packet would read it (missing, expired), `last_seen` now,
//! elision, delete, a full table, globals, malformed requests. Needs root
//! and bpffs; prints SKIP otherwise.

use flowstate_codegen::editor::{self, Editor, Outcome, Request};
use flowstate_codegen::{compile, EntryView, Options, Output};
use flowstate_lang::ir::{Program, StateId};
use flowstate_runtime::{load, LoadOptions, Loaded, RawMap, RawProgram};
use flowstate_wire::build::{mac, PacketBuilder};

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_runtime::kernel_unavailable())
}

fn program(source: &str) -> Program {
    match flowstate_lang::compile(source) {
        Ok(c) => c.program,
        Err(d) => panic!("{d:?}"),
    }
}

/// A program in the kernel with its editor loaded on its maps.
struct Edited {
    output: Output,
    loaded: Loaded,
    editor: Editor,
    raw: RawProgram,
}

impl Edited {
    fn new(program: &Program, test_clock: bool) -> Edited {
        let options = Options {
            test_clock,
            ..Options::default()
        };
        let output = compile(program, &options).unwrap();
        let loaded = match load(&output.object, &LoadOptions::default()) {
            Ok(loaded) => loaded,
            Err(e) => panic!("{e}\n{}", output.listing),
        };
        let editor = editor::compile(program, test_clock).unwrap();
        let maps: Vec<(&str, RawMap)> = editor
            .maps()
            .into_iter()
            .map(|name| {
                (
                    name,
                    loaded
                        .map(flowstate_codegen::layout::loader_name(name))
                        .unwrap(),
                )
            })
            .collect();
        let relocs: Vec<(usize, &RawMap)> = editor
            .map_relocs
            .iter()
            .map(|(at, name)| (*at, &maps.iter().find(|(n, _)| n == name).unwrap().1))
            .collect();
        let raw = match RawProgram::load_xdp_with_btf(
            editor::PROGRAM_NAME,
            &editor.insns,
            &relocs,
            editor.functions.as_ref(),
        ) {
            Ok(raw) => raw,
            Err(e) => panic!("{e}\n{}", editor.listing),
        };
        Edited {
            output,
            loaded,
            editor,
            raw,
        }
    }

    fn set_clock(&self, now: i64) {
        let clock = self.loaded.map("clock").unwrap();
        clock.array_set(0, &now.to_le_bytes()).unwrap();
    }

    fn edit(&self, request: Request) -> Outcome {
        let bytes = self.editor.encode(&request).unwrap();
        let reply = self.raw.test_run(&bytes).unwrap();
        assert_eq!(reply.retval, 2, "XDP_PASS: the request was read");
        self.editor.decode(&request, &reply.data_out).unwrap()
    }

    fn entry(&self, key: &[u8]) -> Option<EntryView> {
        let flows = self.loaded.map("flows").unwrap();
        let value = flows.lookup(key).unwrap()?;
        let lock = u32::from_le_bytes(value[0..4].try_into().unwrap());
        assert_eq!(lock % 2, 0, "the editor left the entry locked");
        Some(self.output.layout.decode_entry(&value))
    }

    fn flow_count(&self) -> usize {
        self.loaded.map("flows").unwrap().keys().unwrap().len()
    }

    fn globals(&self) -> Vec<i64> {
        let map = self
            .loaded
            .map(flowstate_codegen::layout::GLOBALS_SECTION)
            .unwrap();
        self.output
            .layout
            .decode_globals(&map.array_get(0).unwrap())
    }

    fn packet(&self, src: [u8; 4], dport: u16) -> u32 {
        let frame = PacketBuilder::eth(mac(1), mac(2))
            .ipv4(src, [10, 0, 0, 2])
            .udp(40000, dport)
            .build();
        self.loaded
            .test_run(&self.output.program_name, &frame, 1)
            .unwrap()
            .retval
    }
}

fn examples() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut found: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fsm"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no examples in {}", dir.display());
    found
}

#[test]
fn every_example_has_an_editor_the_verifier_accepts() {
    if skip("every_example_has_an_editor_the_verifier_accepts") {
        return;
    }
    for (name, text) in examples() {
        let p = program(&text);
        for test_clock in [false, true] {
            let e = Edited::new(&p, test_clock);
            let processed = e.raw.verified_insns();
            eprintln!(
                "{name} (test clock {test_clock}): editor {} slots, verifier processed {processed:?}",
                e.editor.insns.len() / 8
            );
            // It runs, too: make a flow in the last state, then delete it.
            let key = [10, 0, 0, 7];
            let last = StateId((p.states.len() - 1) as u16);
            assert_eq!(
                e.edit(Request::SetState {
                    key: &key,
                    state: last
                }),
                Outcome::Created { old: 0 },
                "{name}"
            );
            assert_eq!(e.entry(&key).unwrap().state, last, "{name}");
            assert_eq!(
                e.edit(Request::Delete { key: &key }),
                Outcome::Deleted { old_state: last },
                "{name}"
            );
            assert_eq!(e.flow_count(), 0, "{name}");
        }
    }
}

const EDIT: &str = "program edit\nhook xdp\nflow ip.src\nstates A, B, C\n\
                    timeout B idle 10s rollback C\nregisters n = 0, m = 3\nglobals g = 5, h = 0\n\
                    flows 2 refuse\ndefault drop\n\ntable\n\
                    \x20 A udp.dport == 1 => pass, n = n + 1, g = g + 1\n\
                    \x20 B * => pass, m = m + 10\n\
                    \x20 C * => pass, next A\nend\n";

const KEY: [u8; 4] = [10, 0, 0, 1];
const SECOND: i64 = 1_000_000_000;

#[test]
fn flow_edits_change_one_field_as_a_packet_would_read_the_entry() {
    if skip("flow_edits_change_one_field_as_a_packet_would_read_the_entry") {
        return;
    }
    let p = program(EDIT);
    let e = Edited::new(&p, true);
    e.set_clock(100 * SECOND);

    // Missing: made as the initial entry, then the one register set.
    assert_eq!(
        e.edit(Request::SetRegister {
            key: &KEY,
            index: 0,
            value: 4
        }),
        Outcome::Created { old: 0 }
    );
    assert_eq!(
        e.entry(&KEY),
        Some(EntryView {
            state: StateId(0),
            registers: vec![4, 3],
            created: 100 * SECOND,
            last_seen: 100 * SECOND,
        })
    );

    // Back to the initial values: equal to a missing entry, so deleted.
    assert_eq!(
        e.edit(Request::SetRegister {
            key: &KEY,
            index: 0,
            value: 0
        }),
        Outcome::Elided { old: 4 }
    );
    assert_eq!(e.entry(&KEY), None);
    assert_eq!(
        e.edit(Request::SetState {
            key: &KEY,
            state: StateId(0)
        }),
        Outcome::Elided { old: 0 },
        "nothing made for an edit that leaves the initial entry"
    );
    assert_eq!(e.flow_count(), 0);

    // A live entry keeps `created`; `last_seen` moves to now.
    e.set_clock(200 * SECOND);
    assert_eq!(
        e.edit(Request::SetState {
            key: &KEY,
            state: StateId(1)
        }),
        Outcome::Created { old: 0 }
    );
    e.set_clock(205 * SECOND);
    assert_eq!(
        e.edit(Request::SetRegister {
            key: &KEY,
            index: 1,
            value: 30
        }),
        Outcome::Written { old: 3 }
    );
    assert_eq!(
        e.entry(&KEY),
        Some(EntryView {
            state: StateId(1),
            registers: vec![0, 30],
            created: 200 * SECOND,
            last_seen: 205 * SECOND,
        })
    );
    // The program goes on from the edited entry.
    assert_eq!(e.packet(KEY, 9), 2);
    assert_eq!(e.entry(&KEY).unwrap().registers, vec![0, 40]);

    // Past B's idle timeout: read as C with registers reset, created now.
    e.set_clock(300 * SECOND);
    assert_eq!(
        e.edit(Request::SetRegister {
            key: &KEY,
            index: 0,
            value: 7
        }),
        Outcome::Written { old: 0 }
    );
    assert_eq!(
        e.entry(&KEY),
        Some(EntryView {
            state: StateId(2),
            registers: vec![7, 3],
            created: 300 * SECOND,
            last_seen: 300 * SECOND,
        })
    );

    // Delete, then nothing to delete.
    assert_eq!(
        e.edit(Request::Delete { key: &KEY }),
        Outcome::Deleted {
            old_state: StateId(2)
        }
    );
    assert_eq!(e.edit(Request::Delete { key: &KEY }), Outcome::NoSuchFlow);
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn a_full_table_refuses_a_new_flow_and_keeps_the_others() {
    if skip("a_full_table_refuses_a_new_flow_and_keeps_the_others") {
        return;
    }
    let e = Edited::new(&program(EDIT), true);
    e.set_clock(SECOND);
    for last in [1u8, 2] {
        let key = [10, 0, 0, last];
        let made = e.edit(Request::SetState {
            key: &key,
            state: StateId(2),
        });
        assert_eq!(made, Outcome::Created { old: 0 });
    }
    let third = [10, 0, 0, 3];
    assert_eq!(
        e.edit(Request::SetState {
            key: &third,
            state: StateId(2)
        }),
        Outcome::TableFull
    );
    assert_eq!(e.flow_count(), 2);
    // Existing flows can still be edited.
    assert_eq!(
        e.edit(Request::SetState {
            key: &[10, 0, 0, 1],
            state: StateId(1)
        }),
        Outcome::Written { old: 2 }
    );
}

#[test]
fn globals_are_swapped_and_report_the_old_value() {
    if skip("globals_are_swapped_and_report_the_old_value") {
        return;
    }
    let e = Edited::new(&program(EDIT), true);
    e.set_clock(SECOND);
    assert_eq!(e.globals(), [5, 0]);
    assert_eq!(
        e.edit(Request::SetGlobal { index: 0, value: 9 }),
        Outcome::Written { old: 5 }
    );
    assert_eq!(e.globals(), [9, 0]);
    assert_eq!(e.packet(KEY, 1), 2, "row 0 adds 1 to g");
    assert_eq!(e.globals(), [10, 0]);
    assert_eq!(
        e.edit(Request::SetGlobal {
            index: 1,
            value: -1
        }),
        Outcome::Written { old: 0 }
    );
    assert_eq!(e.globals(), [10, -1]);
}

#[test]
fn malformed_requests_change_nothing() {
    if skip("malformed_requests_change_nothing") {
        return;
    }
    let e = Edited::new(&program(EDIT), true);
    let good = e.editor.encode(&Request::Delete { key: &KEY }).unwrap();
    // Too short to hold a request: dropped, not read.
    assert_eq!(e.raw.test_run(&good[..20]).unwrap().retval, 1);
    let check = |patch: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = e
            .editor
            .encode(&Request::SetRegister {
                key: &KEY,
                index: 0,
                value: 1,
            })
            .unwrap();
        patch(&mut bytes);
        let reply = e.raw.test_run(&bytes).unwrap();
        let request = Request::Delete { key: &KEY };
        assert_eq!(
            e.editor.decode(&request, &reply.data_out).unwrap(),
            Outcome::BadRequest
        );
    };
    check(&|b| b[0] = 99); // unknown operation
    check(&|b| b[4] = 2); // register index out of range
    check(&|b| {
        b[0] = 1; // set-state to a state that does not exist
        b[8] = 3;
    });
    check(&|b| {
        b[0] = 4; // a global that does not exist
        b[4] = 2;
    });
    assert_eq!(e.flow_count(), 0);
    assert_eq!(e.globals(), [5, 0]);
}
