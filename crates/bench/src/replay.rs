//! The `flowstate replay --quiet` path: a capture streamed through the
//! reference interpreter, with the same library calls the CLI makes
//! (`CaptureReader`, `Machine::process`, counting verdicts), timed from
//! opening the file to the last packet.

use std::path::Path;
use std::time::Instant;

use flowstate_capture::{CaptureError, CaptureReader};
use flowstate_interp::Machine;
use flowstate_lang::ir::{Action, ControllerThen, Program};

/// What a replay did and how long it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayStats {
    pub packets: u64,
    /// Packets that continue into the stack (`pass`, `controller then pass`).
    pub passed: u64,
    /// Wall-clock time.
    pub seconds: f64,
    /// CPU time of the replaying thread: what the replay costs, without the
    /// time other processes on a shared machine took the core away.
    pub cpu_seconds: f64,
}

impl ReplayStats {
    /// Millions of packets per second of CPU time.
    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.cpu_seconds.max(1e-9) / 1e6
    }

    /// Millions of packets per second of wall-clock time.
    pub fn wall_mpps(&self) -> f64 {
        self.packets as f64 / self.seconds.max(1e-9) / 1e6
    }

    /// CPU nanoseconds per packet.
    pub fn ns_per_packet(&self) -> f64 {
        self.cpu_seconds * 1e9 / (self.packets.max(1) as f64)
    }
}

/// CPU time this thread has used, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant
    // every Linux has. On failure `ts` stays zero, which only makes the
    // figure wrong, not unsound.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn passes(action: &Action) -> bool {
    matches!(
        action,
        Action::Pass
            | Action::Controller {
                then: ControllerThen::Pass
            }
    )
}

/// Replays the capture at `path` through `program`, starting from an empty
/// state table.
pub fn replay_file(program: &Program, path: &Path) -> Result<ReplayStats, CaptureError> {
    let started = Instant::now();
    let cpu_started = thread_cpu_seconds();
    let reader = CaptureReader::open(path)?;
    let mut machine = Machine::new(program);
    let mut packets = 0u64;
    let mut passed = 0u64;
    for frame in reader {
        let frame = frame?;
        let step = machine.process(&frame.data, frame.ifindex, frame.time_ns);
        packets += 1;
        passed += u64::from(passes(step.action));
    }
    Ok(ReplayStats {
        packets,
        passed,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: thread_cpu_seconds() - cpu_started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_capture::synth;

    #[test]
    fn replay_counts_the_portknock_story_as_scripted() {
        let source = include_str!("../../../examples/portknock.fsm");
        let program = flowstate_lang::compile(source).unwrap().program;
        let script = synth::portknock_script();
        let frames: Vec<_> = script.iter().map(|s| s.frame.clone()).collect();
        let path = std::env::temp_dir().join(format!(
            "flowstate-bench-replay-{}.pcap",
            std::process::id()
        ));
        flowstate_capture::write_capture(&path, &frames).unwrap();
        let stats = replay_file(&program, &path);
        let _ = std::fs::remove_file(&path);
        let stats = stats.unwrap();

        assert_eq!(stats.packets, script.len() as u64);
        let scripted_passes = script.iter().filter(|s| s.passes).count() as u64;
        assert_eq!(stats.passed, scripted_passes);
        assert!(stats.seconds > 0.0);
        assert!(stats.cpu_seconds > 0.0);
        assert!(stats.mpps() > 0.0);
    }

    #[test]
    fn rates_from_counts_and_time() {
        let stats = ReplayStats {
            packets: 2_000_000,
            passed: 0,
            seconds: 1.0,
            cpu_seconds: 0.5,
        };
        assert_eq!(stats.mpps(), 4.0);
        assert_eq!(stats.wall_mpps(), 2.0);
        assert_eq!(stats.ns_per_packet(), 250.0);
    }

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let before = thread_cpu_seconds();
        let mut x = 0u64;
        while thread_cpu_seconds() - before < 0.01 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(thread_cpu_seconds() > before);
    }

    #[test]
    fn a_missing_capture_is_an_error() {
        let program = flowstate_lang::compile(include_str!("../../../examples/portknock.fsm"))
            .unwrap()
            .program;
        assert!(replay_file(&program, Path::new("/nonexistent/x.pcap")).is_err());
    }
}
