//! The code generation target of this machine: what its kernel was
//! probed to have (`flowstate_runtime::kernel_features`), as the plain
//! [`Target`] codegen takes (codegen makes no syscalls).

use flowstate_codegen::Target;
use flowstate_runtime::{kernel_features, KernelFeatures};

/// The running kernel's target (probed once per process).
pub fn target() -> Target {
    target_of(kernel_features())
}

/// The target of a kernel with `features`. A feature the probe could not
/// decide (not root, say) counts as absent, so the code falls back to
/// what every supported kernel has, except `bpf_loop`, which the
/// fallback itself needs.
pub fn target_of(features: &KernelFeatures) -> Target {
    Target::from_host(
        features.may_goto.is_present(),
        true,
        features.gotol.is_present(),
        features.signed_division.is_present(),
    )
}
