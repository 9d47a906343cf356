//! The kernel feature probe on the running kernel. The real test of the
//! "absent" answers is the VM harness (.ci/vm/run-kernel 6.1 -- flowstate
//! probe: no may_goto, no TCX); here, every feature that mainline had by
//! the running kernel's version must be found present.

mod common;

use flowstate_runtime::{kernel_features, Feature, Presence};

/// `"6.9"` -> `(6, 9)`.
fn since(feature: Feature) -> (u32, u32) {
    let (major, minor) = feature.since().split_once('.').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

#[test]
fn features_older_than_the_kernel_are_found() {
    if flowstate_testkit::skip_if(
        "features_older_than_the_kernel_are_found",
        common::skip_reason(),
    ) {
        return;
    }
    let features = kernel_features();
    let version = features
        .version
        .unwrap_or_else(|| panic!("no version in release {:?}", features.release));
    let mut missing = Vec::new();
    for (feature, presence) in features.iter() {
        // The development host's kernel (6.18, built for Firecracker)
        // refuses live-frame test runs with EPERM even to root; Debian's
        // 6.1 and 6.12 have them (docs/kernels.md).
        if feature == Feature::TestRunLiveFrames {
            continue;
        }
        if since(feature) <= version && !presence.is_present() {
            missing.push(format!(
                "{} (since {}): {presence:?}",
                feature.name(),
                feature.since()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "kernel {} lacks features it should have:\n{}",
        features.release,
        missing.join("\n")
    );
}

#[test]
fn probing_twice_gives_the_same_answers() {
    if flowstate_testkit::skip_if(
        "probing_twice_gives_the_same_answers",
        common::skip_reason(),
    ) {
        return;
    }
    // The probe leaves nothing behind that changes a second run (links in
    // its own namespace, programs and maps closed).
    let again = flowstate_runtime::KernelFeatures::probe();
    assert_eq!(&again, kernel_features());
    assert!(
        again
            .iter()
            .all(|(_, p)| !matches!(p, Presence::Unknown { .. })),
        "{again:#?}"
    );
}
