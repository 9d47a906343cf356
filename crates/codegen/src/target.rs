//! What the generated code may use: the kernel features it is built for
//! and whether the CPU orders memory accesses weakly.
//!
//! A [`Target`] is plain data; nothing here asks the running kernel
//! (codegen makes no syscalls). [`Target::newest`] is what tests and a
//! recent kernel get, [`Target::linux`] is read from [`KERNEL_HISTORY`],
//! and the host's target is built by the caller from what
//! `flowstate_runtime::kernel_features()` probed ([`Target::from_host`]).
//!
//! What changes with the target (see [`crate::emit`]):
//! - without `may_goto`, every wait (the per-flow lock loop, the locked
//!   pass's seqlock read, a migration's pull) waits in `bpf_loop` with a
//!   tiny callback and retries a bounded number of times, and the global
//!   compare-and-swap retries a bounded number of times;
//! - without signed division, `/` and `%` divide magnitudes unsigned and
//!   put the sign back;
//! - without `gotol`, a program whose jumps need it is refused;
//! - on a weakly ordered CPU, the seqlock's reads of the sequence word
//!   and the lock's release are fully ordered atomics.

use std::fmt;

/// The features generated code may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// `may_goto` (Linux 6.9): loops whose budget the kernel keeps.
    pub may_goto: bool,
    /// The `bpf_loop` helper (Linux 5.17): the fallback for `may_goto`.
    pub bpf_loop: bool,
    /// `gotol`, the 32-bit unconditional jump (cpu v4, Linux 6.6).
    pub gotol: bool,
    /// Signed division and modulo, `s/=` and `s%=` (cpu v4, Linux 6.6).
    pub signed_division: bool,
    /// The CPU may reorder plain loads and stores (arm64): ordering the
    /// seqlock needs comes from atomics, not from the CPU.
    pub weakly_ordered: bool,
}

/// A kernel version, `(major, minor)`.
pub type Version = (u32, u32);

/// Where each feature entered mainline Linux (distributions backport, so
/// the host's target comes from a probe, not from this table).
pub const KERNEL_HISTORY: [(&str, Version); 4] = [
    // bpf_loop: commit e6f2dd0f8067 "bpf: Add bpf_loop helper".
    ("bpf_loop", (5, 17)),
    // cpu v4 instructions: gotol (BPF_JMP32 | BPF_JA), sdiv/smod, movsx,
    // ldsx, bswap.
    ("gotol", (6, 6)),
    ("signed_division", (6, 6)),
    // may_goto: BPF_JMP | BPF_JCOND (opcode 0xe5).
    ("may_goto", (6, 9)),
];

/// The oldest kernel generated code runs on: the `may_goto` fallback
/// needs `bpf_loop`; everything else flowstate emits (atomics with fetch
/// and cmpxchg: 5.12, `bpf_ktime_get_coarse_ns`: 5.11, ring buffer: 5.8)
/// is older.
pub const OLDEST: Version = (5, 17);

fn since(feature: &str) -> Version {
    KERNEL_HISTORY
        .iter()
        .find(|(name, _)| *name == feature)
        .map(|(_, version)| *version)
        .unwrap_or(OLDEST)
}

/// Whether the compiling machine's CPU orders memory weakly. Objects are
/// usually run where they are compiled; `--kernel` builds say their own.
pub const HOST_WEAKLY_ORDERED: bool = !cfg!(any(target_arch = "x86_64", target_arch = "x86"));

impl Target {
    /// Everything: a recent kernel (what tests use).
    pub fn newest() -> Target {
        Target {
            may_goto: true,
            bpf_loop: true,
            gotol: true,
            signed_division: true,
            weakly_ordered: HOST_WEAKLY_ORDERED,
        }
    }

    /// Mainline Linux `major.minor`, from [`KERNEL_HISTORY`]; `None` when
    /// it is older than [`OLDEST`].
    pub fn linux(major: u32, minor: u32) -> Option<Target> {
        let version = (major, minor);
        if version < OLDEST {
            return None;
        }
        let has = |feature: &str| version >= since(feature);
        Some(Target {
            may_goto: has("may_goto"),
            bpf_loop: has("bpf_loop"),
            gotol: has("gotol"),
            signed_division: has("signed_division"),
            weakly_ordered: HOST_WEAKLY_ORDERED,
        })
    }

    /// The host's target, from what a probe found (the caller converts
    /// `flowstate_runtime::KernelFeatures`).
    pub fn from_host(may_goto: bool, bpf_loop: bool, gotol: bool, signed_division: bool) -> Target {
        Target {
            may_goto,
            bpf_loop,
            gotol,
            signed_division,
            weakly_ordered: HOST_WEAKLY_ORDERED,
        }
    }

    /// Parses `6.1`, `6.12`, `newest` (for `--kernel`).
    pub fn parse(text: &str) -> Result<Target, String> {
        if text == "newest" {
            return Ok(Target::newest());
        }
        let parsed = text.split_once('.').and_then(|(major, minor)| {
            let minor = minor.split(|c: char| !c.is_ascii_digit()).next()?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        });
        let Some((major, minor)) = parsed else {
            return Err(format!(
                "`{text}` is not a kernel version: give MAJOR.MINOR, e.g. 6.1, or `newest`"
            ));
        };
        Target::linux(major, minor).ok_or_else(|| {
            format!(
                "Linux {major}.{minor} is too old: flowstate needs {}.{} or newer (bpf_loop)",
                OLDEST.0, OLDEST.1
            )
        })
    }

    /// Waits go through `bpf_loop` instead of `may_goto`.
    pub fn waits_in_bpf_loop(&self) -> bool {
        !self.may_goto
    }

    /// The oldest mainline kernel with every feature a program built for
    /// this target may use (`uses`: the features its code does use, see
    /// [`Output::needs`](crate::Output::needs)).
    pub fn minimum_kernel(uses: &[&str]) -> Version {
        uses.iter().map(|f| since(f)).fold(OLDEST, Version::max)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (present, name) in [
            (self.may_goto, "may_goto"),
            (self.bpf_loop, "bpf_loop"),
            (self.gotol, "gotol"),
            (self.signed_division, "signed_division"),
        ] {
            if present {
                parts.push(name);
            }
        }
        if self.weakly_ordered {
            parts.push("weakly ordered");
        }
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_6_1_has_bpf_loop_but_not_may_goto_or_cpu_v4() {
        let t = Target::linux(6, 1).unwrap();
        assert!(t.bpf_loop && !t.may_goto && !t.gotol && !t.signed_division);
        assert!(t.waits_in_bpf_loop());
    }

    #[test]
    fn linux_6_9_has_may_goto() {
        let t = Target::linux(6, 9).unwrap();
        assert!(t.may_goto && t.gotol && t.signed_division);
        assert!(Target::linux(6, 8).is_some_and(|t| !t.may_goto && t.gotol));
    }

    #[test]
    fn kernels_before_bpf_loop_are_refused() {
        assert!(Target::linux(5, 16).is_none());
        assert!(Target::parse("5.15").unwrap_err().contains("too old"));
        assert!(Target::parse("six").unwrap_err().contains("MAJOR.MINOR"));
        assert_eq!(
            Target::parse("6.1.0-57-cloud-amd64"),
            Ok(Target::linux(6, 1).unwrap())
        );
    }

    #[test]
    fn minimum_kernel_is_the_newest_feature_used() {
        assert_eq!(Target::minimum_kernel(&[]), OLDEST);
        assert_eq!(Target::minimum_kernel(&["bpf_loop", "gotol"]), (6, 6));
        assert_eq!(Target::minimum_kernel(&["may_goto"]), (6, 9));
    }
}
