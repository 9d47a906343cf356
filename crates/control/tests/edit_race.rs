//! Live edits against two CPUs updating the same flow (issue 7, "Live
//! edits"): a running instance (attached to a veth pair of its own) whose
//! pinned program is run with BPF_PROG_TEST_RUN from threads pinned to
//! CPUs 0 and 1, while this thread edits the same flow through `Handle`.
//! Every packet adds 1 to the flow's `n` and to the global `total`; the
//! edits touch other fields (`mark`, the state, the global `other`), or
//! delete the flow. Nothing a packet wrote may be lost, and no entry may be
//! left locked, dead or half made. Needs root, `ip` and two CPUs; prints
//! SKIP otherwise.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use flowstate_control::{open, pin_root, run, stop, ControlError, Handle, RunSpec};
use flowstate_runtime::{RawMap, RawProgram};
use flowstate_wire::build::{mac, PacketBuilder};

const PROGRAM: &str = "program edits\nhook xdp\nflow ip.src\nstates A, B\n\
                       registers n = 0, mark = 0\nglobals total = 0, other = 0\n\
                       flows 16 refuse\ndefault drop\n\ntable\n\
                       \x20 * udp.dport == 53 => pass, n = n + 1, total = total + 1\n\
                       \x20 A * => pass, next B\n\
                       \x20 B * => pass, next A\nend\n";
/// The flow every test edits; its packets count in `n`.
const FLOW: &str = "10.0.0.1";
/// A flow whose packets only toggle its state (its entry comes and goes:
/// B is kept, A is the initial entry, elided). Its `n` must stay 0.
const TOGGLER: &str = "10.0.0.9";

/// Test runs per thread, and packets per test run.
const CALLS: u32 = 20;
const REPEAT: u32 = 20_000;
const THREADS: usize = 2;
const TOTAL: i64 = (THREADS as u32 * CALLS * REPEAT) as i64;

/// `enum` values the code generator never gives a real state: a
/// placeholder being made, an entry being deleted.
const PLACEHOLDER_STATE: u32 = 0x7fff_fffe;
const DEAD_STATE: u32 = 0x7fff_ffff;

/// The tests each take both CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn sh(cmd: &str) -> Result<(), String> {
    match Command::new("sh").arg("-c").arg(cmd).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{cmd}`: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("`{cmd}`: {e}")),
    }
}

fn skip(test: &str) -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reason = flowstate_testkit::not_root()
        .or_else(|| sh("ip -V").err().map(|e| format!("needs `ip`: {e}")))
        .or_else(|| (cpus < THREADS).then(|| format!("needs {THREADS} CPUs, have {cpus}")));
    flowstate_testkit::skip_if(test, reason)
}

/// A veth pair in this namespace, an instance of `PROGRAM` on one end,
/// and the program's text in a file; all removed on drop, also when the
/// test fails.
struct Instance {
    name: String,
    dev: String,
    source: PathBuf,
}

impl Instance {
    fn start(tag: char) -> Instance {
        let pid = std::process::id();
        let dev = format!("fe{}{tag}a", pid % 100_000);
        let instance = Instance {
            name: format!("edit-race-{pid}-{tag}"),
            dev: dev.clone(),
            source: std::env::temp_dir().join(format!("fs-edit-race-{pid}-{tag}.fsm")),
        };
        sh(&format!(
            "ip link add {dev} type veth peer name fe{}{tag}b && ip link set {dev} up && \
             ip link set fe{}{tag}b up",
            pid % 100_000,
            pid % 100_000
        ))
        .unwrap();
        std::fs::write(&instance.source, PROGRAM).unwrap();
        run(&RunSpec {
            program_path: instance.source.clone(),
            dev,
            attach: None,
            name: Some(instance.name.clone()),
            tc: Default::default(),
        })
        .unwrap();
        instance
    }

    fn handle(&self) -> Handle {
        open(&self.name).unwrap()
    }

    /// The running program, for test runs.
    fn program(&self) -> RawProgram {
        RawProgram::from_pin(pin_root().join(&self.name).join("prog")).unwrap()
    }

    fn flows_map(&self) -> RawMap {
        RawMap::from_pin(pin_root().join(&self.name).join("maps").join("flows")).unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = stop(&self.name);
        let _ = sh(&format!("ip link del {}", self.dev));
        let _ = std::fs::remove_file(&self.source);
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

fn frame(src: [u8; 4], dport: u16) -> Vec<u8> {
    PacketBuilder::eth(mac(1), mac(2))
        .ipv4(src, [10, 0, 0, 2])
        .udp(40000, dport)
        .build()
}

/// Runs `FLOW`'s packet `TOTAL` times from two pinned CPUs (with
/// `togglers` packets of `TOGGLER` after each test run) while `edit` is
/// called over and over (with the round number) on this thread; returns
/// the rounds made while packets were running.
fn hammer_while(instance: &Instance, togglers: u32, mut edit: impl FnMut(u64)) -> u64 {
    let program = instance.program();
    let frame_of_flow = frame([10, 0, 0, 1], 53);
    let toggler = frame([10, 0, 0, 9], 7);
    let running = AtomicUsize::new(THREADS);
    let mut rounds = 0;
    std::thread::scope(|s| {
        for cpu in 0..THREADS {
            let (program, running) = (&program, &running);
            let (frame, toggler) = (&frame_of_flow, &toggler);
            s.spawn(move || {
                pin_to_cpu(cpu);
                for _ in 0..CALLS {
                    let result = program.test_run_repeat(frame, REPEAT);
                    assert_eq!(result.unwrap().retval, 2, "XDP_PASS from the row");
                    if togglers > 0 {
                        program.test_run_repeat(toggler, togglers).unwrap();
                    }
                }
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while running.load(Ordering::SeqCst) > 0 {
            edit(rounds);
            rounds += 1;
        }
    });
    rounds
}

/// Every entry unlocked and in a declared state.
fn assert_no_entry_held(instance: &Instance) {
    for (key, value) in instance.flows_map().entries().unwrap() {
        let lock = u32::from_le_bytes(value[0..4].try_into().unwrap());
        let state = u32::from_le_bytes(value[4..8].try_into().unwrap());
        assert_eq!(lock % 2, 0, "entry {key:?} left locked: {value:?}");
        assert_ne!(state, PLACEHOLDER_STATE, "entry {key:?} left a placeholder");
        assert_ne!(state, DEAD_STATE, "entry {key:?} left dead");
        assert!(state < 2, "entry {key:?} in state {state}");
    }
}

fn register(handle: &Handle, name: &str) -> i64 {
    let flow = handle.flow(FLOW).unwrap().expect("the flow exists");
    flow.registers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap()
}

fn global(handle: &Handle, name: &str) -> i64 {
    let globals = handle.globals().unwrap();
    globals.iter().find(|(n, _)| n == name).unwrap().1
}

/// The packets' own updates were all applied, none gave up on the lock.
fn assert_every_packet_counted(handle: &Handle) {
    let stats = handle.stats().unwrap();
    // Where every packet went, for a failure's message.
    let counts = format!(
        "rows {:?}, default {:?}, contention {}, table full {}",
        stats.rows.iter().map(|r| r.packets).collect::<Vec<_>>(),
        stats.default,
        stats.contention,
        stats.table_full
    );
    assert_eq!(
        stats.contention, 0,
        "packets gave up on the flow's lock: {counts}"
    );
    assert_eq!(
        stats.rows[0].packets as i64, TOTAL,
        "packets took the row: {counts}"
    );
    assert_eq!(global(handle, "total"), TOTAL, "additions to `total` lost");
}

#[test]
fn register_and_state_edits_lose_no_packet_update() {
    if skip("register_and_state_edits_lose_no_packet_update") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let instance = Instance::start('r');
    let handle = instance.handle();
    let mut last = (0, "A");
    let rounds = hammer_while(&instance, 0, |round| {
        let state = if round % 2 == 0 { "B" } else { "A" };
        handle.set_register(FLOW, "mark", round as i64 + 1).unwrap();
        handle.set_state(FLOW, state).unwrap();
        last = (round as i64 + 1, state);
    });
    eprintln!("{rounds} rounds of edits while {TOTAL} packets ran");
    assert!(rounds >= 10, "only {rounds} edits overlapped the packets");
    assert_eq!(register(&handle, "n"), TOTAL, "packet updates lost");
    assert_eq!(register(&handle, "mark"), last.0, "the last edit holds");
    assert_eq!(handle.flow(FLOW).unwrap().unwrap().state, last.1);
    assert_no_entry_held(&instance);
    assert_every_packet_counted(&handle);
}

#[test]
fn global_edits_lose_no_packet_addition() {
    if skip("global_edits_lose_no_packet_addition") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let instance = Instance::start('g');
    let handle = instance.handle();
    let mut last = 0;
    let rounds = hammer_while(&instance, 0, |round| {
        last = -(round as i64);
        handle.set_global("other", last).unwrap();
    });
    eprintln!("{rounds} global edits while {TOTAL} packets ran");
    assert!(rounds >= 10, "only {rounds} edits overlapped the packets");
    assert_eq!(global(&handle, "other"), last, "the last edit holds");
    assert_eq!(register(&handle, "n"), TOTAL);
    assert_every_packet_counted(&handle);
}

#[test]
fn deletes_and_flushes_leave_no_entry_held() {
    if skip("deletes_and_flushes_leave_no_entry_held") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let instance = Instance::start('d');
    let handle = instance.handle();
    let deleted = AtomicUsize::new(0);
    let rounds = hammer_while(&instance, 1001, |round| {
        let removed = if round % 2 == 0 {
            match handle.delete_flow(FLOW) {
                Ok(()) => 1,
                Err(ControlError::NoSuchFlow(_)) => 0,
                Err(e) => panic!("{e}"),
            }
        } else {
            handle.flush().unwrap()
        };
        deleted.fetch_add(removed, Ordering::Relaxed);
    });
    let deleted = deleted.into_inner();
    eprintln!("{rounds} deletes and flushes ({deleted} removed) while {TOTAL} packets ran");
    assert!(
        deleted >= 5,
        "only {deleted} entries removed while packets ran"
    );
    assert_no_entry_held(&instance);
    assert_every_packet_counted(&handle);
    // A packet of `FLOW` holding its entry while the entry was deleted
    // would write `n` into the element's next life: often the toggler's.
    if let Some(toggler) = handle.flow(TOGGLER).unwrap() {
        assert_eq!(
            toggler.registers[0].1, 0,
            "a write to a deleted flow landed in the toggler's entry: {toggler:?}"
        );
        assert_eq!(toggler.state, "B", "only B is kept");
    }
    // The flow still counts from where the last delete left it, and one
    // more packet is one more.
    let before = handle.flow(FLOW).unwrap().map_or(0, |f| f.registers[0].1);
    assert!(before <= TOTAL, "n = {before}");
    let packet = frame([10, 0, 0, 1], 53);
    assert_eq!(instance.program().test_run(&packet).unwrap().retval, 2);
    assert_eq!(register(&handle, "n"), before + 1);
}
