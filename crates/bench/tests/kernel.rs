//! The benchmark's kernel pieces on a real kernel: the bare programs load
//! and give their verdicts, and measurements check verdicts. Needs root;
//! prints SKIP otherwise. No clang needed.

use std::net::Ipv4Addr;

use flowstate_asm::Helper;
use flowstate_bench::measure::{self, MeasureError};
use flowstate_bench::{bare, frames};
use flowstate_obj::ProgramSection;
use flowstate_runtime::{load, LoadOptions, Loaded};

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, flowstate_testkit::not_root())
}

fn loaded(section: ProgramSection, helper: Option<Helper>, verdict: i32) -> Loaded {
    let object = bare::object_calling(section, helper, verdict).unwrap();
    load(&object, &LoadOptions::default()).unwrap()
}

fn packet() -> Vec<u8> {
    frames::udp(Ipv4Addr::new(10, 0, 0, 1), 53)
}

#[test]
fn bare_programs_give_their_verdicts() {
    if skip("bare_programs_give_their_verdicts") {
        return;
    }
    let cases = [
        (ProgramSection::Xdp, None, bare::XDP_PASS),
        (ProgramSection::Classifier, None, bare::TC_ACT_OK),
        (
            ProgramSection::Xdp,
            Some(Helper::KTIME_GET_NS),
            bare::XDP_PASS,
        ),
        (
            ProgramSection::Xdp,
            Some(Helper::KTIME_GET_COARSE_NS),
            bare::XDP_PASS,
        ),
    ];
    for (section, helper, verdict) in cases {
        let program = loaded(section, helper, verdict);
        let result = program.test_run(bare::PROGRAM_NAME, &packet(), 1).unwrap();
        assert_eq!(result.retval as i32, verdict, "{section:?} {helper:?}");
    }
}

#[test]
fn repeated_runs_give_one_duration_per_run() {
    if skip("repeated_runs_give_one_duration_per_run") {
        return;
    }
    let program = loaded(ProgramSection::Xdp, None, bare::XDP_PASS);
    let sample = measure::repeated(&program, bare::PROGRAM_NAME, &packet(), 1000, 3, 2).unwrap();
    assert_eq!(sample.runs_ns.len(), 3);
    assert!(sample.median_ns().is_finite());
}

#[test]
fn a_measurement_of_the_wrong_path_is_refused() {
    if skip("a_measurement_of_the_wrong_path_is_refused") {
        return;
    }
    let program = loaded(ProgramSection::Xdp, None, bare::XDP_PASS);
    // XDP_DROP (1) expected, the program passes (2).
    let err = measure::repeated(&program, bare::PROGRAM_NAME, &packet(), 10, 1, 1).unwrap_err();
    assert!(
        matches!(
            err,
            MeasureError::Verdict {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = measure::single_runs(&program, bare::PROGRAM_NAME, [packet()], 1).unwrap_err();
    assert!(matches!(err, MeasureError::Verdict { .. }), "{err}");
}

#[test]
fn single_runs_average_the_kernel_durations() {
    if skip("single_runs_average_the_kernel_durations") {
        return;
    }
    let program = loaded(ProgramSection::Xdp, None, bare::XDP_PASS);
    let mean =
        measure::single_runs(&program, bare::PROGRAM_NAME, (0..100).map(|_| packet()), 2).unwrap();
    // One repetition still includes the kernel's own timer reads.
    assert!(mean > 0.0, "{mean}");
}
