//! Live edits against the oracle: random generated programs, each with
//! its editor (flowstate_codegen::editor) loaded on the kernel program's
//! maps, run on random packets with random edits between them (set a
//! state, set a register, delete, on flows the packets made and on new
//! ones). The same edits are applied to the reference interpreter's table
//! by the rule the editor documents, and the two state tables must be
//! equal after every packet and every edit. Needs root and bpffs; prints
//! SKIP otherwise.

use flowstate_codegen::editor::{self, Editor, Outcome, Request};
use flowstate_difftest::rng::Rng;
use flowstate_difftest::{gen, interp_table, packets, skip, test_options, Kernel};
use flowstate_interp::{Entry, Key, Machine};
use flowstate_lang::ir::{FullPolicy, Program, StateId};
use flowstate_runtime::{RawMap, RawProgram};

/// What a test run reports as the ingress interface (loopback).
const TEST_RUN_IFINDEX: u32 = 1;
const PROGRAMS: u64 = 48;
const PACKETS: usize = 60;

struct Edits {
    editor: Editor,
    raw: RawProgram,
}

impl Edits {
    fn load(program: &Program, kernel: &Kernel) -> Edits {
        let editor =
            editor::compile_for(program, true, &flowstate_difftest::test_target()).unwrap();
        let maps: Vec<(&str, RawMap)> = editor
            .maps()
            .into_iter()
            .map(|name| {
                let map = kernel
                    .loaded()
                    .map(flowstate_codegen::layout::loader_name(name));
                (name, map.unwrap())
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
        Edits { editor, raw }
    }

    fn run(&self, request: Request) -> Outcome {
        let bytes = self.editor.encode(&request).unwrap();
        let reply = self.raw.test_run(&bytes).unwrap();
        self.editor.decode(&request, &reply.data_out).unwrap()
    }
}

/// One flow edit.
#[derive(Debug, Clone, Copy)]
enum Edit {
    State(StateId),
    Register(usize, i64),
    Delete,
}

/// The editor's rule, applied to the interpreter's table: the entry as a
/// packet would read it at `now`, the one field changed, `last_seen` now,
/// elided when equal to a missing entry.
fn model(machine: &mut Machine<'_>, key: &Key, edit: Edit, now: i64) -> Outcome {
    let program = machine.program();
    let initial = program.constant_initial_registers();
    let existing = machine.table().get(key).cloned();
    if let Edit::Delete = edit {
        return match machine.table_mut().remove(key) {
            Some(entry) => Outcome::Deleted {
                old_state: entry.state,
            },
            None => Outcome::NoSuchFlow,
        };
    }
    let (mut entry, created) = match existing {
        Some(e) if !machine.expired(&e, now) => (e, false),
        Some(e) => {
            let rollback = program.states[e.state.0 as usize]
                .timeout
                .map_or(StateId(0), |t| t.rollback);
            let reset = Entry {
                state: rollback,
                registers: initial.clone(),
                created: now,
                last_seen: now,
            };
            (reset, false)
        }
        None => {
            let fresh = Entry {
                state: StateId(0),
                registers: initial.clone(),
                created: now,
                last_seen: now,
            };
            (fresh, true)
        }
    };
    let old = match edit {
        Edit::State(s) => {
            let old = i64::from(entry.state.0);
            entry.state = s;
            old
        }
        Edit::Register(i, v) => std::mem::replace(&mut entry.registers[i], v),
        Edit::Delete => unreachable!(),
    };
    entry.last_seen = now;
    if program.elides_initial_entries() && entry.state == StateId(0) && entry.registers == initial {
        machine.table_mut().remove(key);
        return Outcome::Elided { old };
    }
    match machine.table_mut().insert(*key, entry) {
        Err(_) => Outcome::TableFull,
        Ok(_) if created => Outcome::Created { old },
        Ok(_) => Outcome::Written { old },
    }
}

fn random_edit(rng: &mut Rng, program: &Program) -> Edit {
    match rng.below(5) {
        0 => Edit::Delete,
        1 | 2 if !program.registers.is_empty() => {
            let index = rng.index(program.registers.len());
            // Often the initial value, so that elision is exercised.
            let value = if rng.percent(40) {
                program.constant_initial_registers()[index]
            } else {
                rng.range(0, 2000) as i64 - 1000
            };
            Edit::Register(index, value)
        }
        _ => Edit::State(StateId(rng.index(program.states.len()) as u16)),
    }
}

#[test]
fn random_programs_edited_between_packets_agree_with_the_interpreter() {
    if skip("random_programs_edited_between_packets_agree_with_the_interpreter") {
        return;
    }
    let mut edits_made = 0;
    for seed in 0..PROGRAMS {
        let generated = gen::program(seed).unwrap();
        let program = &generated.program;
        // A small `evict` table: the kernel picks its victims by its own
        // approximation, which the full-table harness replays
        // (`full_table.rs`); this test compares tables exactly.
        if program.full_policy == FullPolicy::EvictLeastRecent && program.capacity < gen::CAPACITY {
            continue;
        }
        let kernel = Kernel::load(program, &test_options(true)).unwrap();
        let edits = Edits::load(program, &kernel);
        let hook = kernel.output().hook;
        let mut machine = Machine::new(program);
        let mut rng = Rng::new(seed ^ 0xed17);
        let mut keys: Vec<Key> = Vec::new();
        let context = |what: &str| format!("seed {seed}, {what}\n{}", generated.text);
        for packet in packets::sequence(&mut rng.fork(), PACKETS) {
            if packets::test_run_refuses(&packet.frame, hook).is_some() {
                continue;
            }
            kernel.run(&packet.frame, packet.now).unwrap();
            machine.process(&packet.frame, TEST_RUN_IFINDEX, packet.now);
            let headers = flowstate_wire::parse(&packet.frame, TEST_RUN_IFINDEX);
            if let Some(key) = Key::pack(&program.lookup_key, &headers) {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            assert_eq!(
                kernel.table().unwrap(),
                interp_table(&machine),
                "{}",
                context("after a packet")
            );
            if keys.is_empty() || !rng.percent(50) {
                continue;
            }
            let key = keys[rng.index(keys.len())];
            let edit = random_edit(&mut rng, program);
            let request = match edit {
                Edit::State(state) => Request::SetState {
                    key: key.as_bytes(),
                    state,
                },
                Edit::Register(index, value) => Request::SetRegister {
                    key: key.as_bytes(),
                    index,
                    value,
                },
                Edit::Delete => Request::Delete {
                    key: key.as_bytes(),
                },
            };
            let got = edits.run(request);
            let want = model(&mut machine, &key, edit, packet.now);
            let what = format!("edit {edit:?} at {}", packet.now);
            assert_eq!(got, want, "{}", context(&what));
            assert_eq!(
                kernel.table().unwrap(),
                interp_table(&machine),
                "{}",
                context(&format!("after {what}"))
            );
            edits_made += 1;
        }
    }
    eprintln!("{edits_made} edits on {PROGRAMS} random programs agreed");
    assert!(
        edits_made > PROGRAMS as usize,
        "too few edits: {edits_made}"
    );
}
