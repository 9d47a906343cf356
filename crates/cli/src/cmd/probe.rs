//! `flowstate probe`: the running kernel's release and which of the eBPF
//! features flowstate cares about it has (flowstate_runtime::probe).

use std::process::ExitCode;

use flowstate_runtime::{kernel_features, Feature, KernelFeatures, Presence};
use serde_json::{json, Value};

pub fn run(as_json: bool) -> anyhow::Result<ExitCode> {
    let features = kernel_features();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(features))?);
    } else {
        print!("{}", table(features));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(presence: &Presence) -> (&'static str, Option<&str>) {
    match presence {
        Presence::Present => ("yes", None),
        Presence::Absent { reason } => ("no", Some(reason)),
        Presence::Unknown { error } => ("unknown", Some(error)),
    }
}

fn table(features: &KernelFeatures) -> String {
    let mut out = format!("kernel {}\n", features.release);
    let width = features
        .iter()
        .map(|(f, _)| f.name().len())
        .max()
        .unwrap_or(0);
    out += &format!(
        "{:width$}  {:7}  {:5}  what\n",
        "feature", "present", "since"
    );
    for (feature, presence) in features.iter() {
        let (word, why) = status(presence);
        out += &format!(
            "{:width$}  {word:7}  {:5}  {}",
            feature.name(),
            feature.since(),
            feature.description()
        );
        if let Some(why) = why {
            out += &format!(" [{why}]");
        }
        out.push('\n');
    }
    out
}

fn to_json(features: &KernelFeatures) -> Value {
    let list: Vec<Value> = features
        .iter()
        .map(|(feature, presence)| {
            let (word, why) = status(presence);
            json!({
                "name": feature.name(),
                "present": word,
                "since": feature.since(),
                "description": feature.description(),
                "reason": why,
            })
        })
        .collect();
    json!({
        "release": features.release,
        "version": features.version.map(|(major, minor)| format!("{major}.{minor}")),
        "features": list,
    })
}

/// The kernel features a compiled program's instructions need, read from
/// its listing (the disassembler's mnemonics): `may_goto`, `gotol`, and
/// the signed `s/=` / `s%=`.
pub fn needed_features(listing: &str) -> Vec<Feature> {
    // Annotation lines (`; ...`) are prose, not instructions.
    let uses = |mnemonic: &str| {
        listing
            .lines()
            .filter(|line| !line.trim_start().starts_with(';'))
            .any(|line| line.split_whitespace().any(|word| word == mnemonic))
    };
    let mut needed = Vec::new();
    if uses("may_goto") {
        needed.push(Feature::MayGoto);
    }
    if uses("gotol") {
        needed.push(Feature::Gotol);
    }
    if uses("s/=") || uses("s%=") {
        needed.push(Feature::SignedDivision);
    }
    if uses("bpf_loop") {
        needed.push(Feature::BpfLoop);
    }
    needed
}

/// What a compiled program needs of a kernel: the features its
/// instructions use, and the oldest mainline Linux that has them all.
pub struct Needs {
    pub features: Vec<Feature>,
    pub minimum: (u32, u32),
}

impl Needs {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "features": self.features.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "minimum_kernel": format!("{}.{}", self.minimum.0, self.minimum.1),
        })
    }
}

impl std::fmt::Display for Needs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let features: Vec<String> = self
            .features
            .iter()
            .map(|x| format!("{} (Linux {})", x.name(), x.since()))
            .collect();
        write!(
            f,
            "uses {}; needs Linux {}.{} or newer",
            if features.is_empty() {
                "no optional feature".to_string()
            } else {
                features.join(", ")
            },
            self.minimum.0,
            self.minimum.1
        )
    }
}

/// [`Needs`] of the program whose listing is `listing`.
pub fn needs(listing: &str) -> Needs {
    let features = needed_features(listing);
    let names: Vec<&str> = features
        .iter()
        .map(|f| match f {
            Feature::MayGoto => "may_goto",
            Feature::Gotol => "gotol",
            Feature::SignedDivision => "signed_division",
            _ => "bpf_loop",
        })
        .collect();
    Needs {
        minimum: flowstate_codegen::Target::minimum_kernel(&names),
        features,
    }
}

/// Why this kernel cannot take a program with `listing`, said before
/// loading it (a verifier dump about an unknown opcode says none of it);
/// `None` when the kernel has, or may have, all it needs.
pub fn missing_features(listing: &str) -> Option<String> {
    missing_features_in(kernel_features(), listing)
}

fn missing_features_in(features: &KernelFeatures, listing: &str) -> Option<String> {
    let missing: Vec<String> = needed_features(listing)
        .into_iter()
        .filter(|f| matches!(features.get(*f), Presence::Absent { .. }))
        .map(|f| format!("{} (Linux {})", f.name(), f.since()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "this program needs {} and this kernel ({}) does not have {}; \
         run it on a newer kernel (`flowstate probe` lists what this one has; docs/kernels.md)",
        missing.join(", "),
        features.release,
        if missing.len() == 1 { "it" } else { "them" }
    ))
}

/// [`missing_features`] for a program's text, before `run` loads it.
/// `None` also when the program does not compile here: `run` then reports
/// that itself, with the diagnostics.
pub fn missing_features_for_source(source: &str) -> Option<String> {
    let program = flowstate_lang::compile(source).ok()?.program;
    let options = flowstate_codegen::Options {
        target: flowstate_control::host::target(),
        ..flowstate_codegen::Options::default()
    };
    let output = flowstate_codegen::compile(&program, &options).ok()?;
    missing_features(&output.listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_are_read_from_the_mnemonics() {
        let listing = "  0: b7 00 00 00 02 00 00 00  r0 = 0x2\n  \
                       1: e5 00 01 00 00 00 00 00  may_goto +0x1\n  \
                       2: 3f 10 01 00 00 00 00 00  r0 s/= r1\n";
        assert_eq!(
            needed_features(listing),
            vec![Feature::MayGoto, Feature::SignedDivision]
        );
        assert!(needed_features("  0: 95 00 00 00 00 00 00 00  exit\n").is_empty());
    }

    fn kernel(may_goto: Presence) -> KernelFeatures {
        let yes = || Presence::Present;
        KernelFeatures {
            release: "6.1.0-57-cloud-amd64".into(),
            version: Some((6, 1)),
            may_goto,
            timed_may_goto: yes(),
            gotol: yes(),
            signed_division: yes(),
            cmpxchg_stack: yes(),
            cmpxchg_map_value: yes(),
            bpf_loop: yes(),
            ktime_get_coarse_ns: yes(),
            ring_buffer: yes(),
            lru_hash: yes(),
            kernel_btf: yes(),
            xdp_link: yes(),
            tcx: yes(),
            test_run_live_frames: yes(),
        }
    }

    #[test]
    fn a_kernel_without_may_goto_is_named_with_the_version_needed() {
        let listing = " 242: may_goto +0x1 <244>\n";
        let absent = Presence::Absent {
            reason: "unknown opcode e5".into(),
        };
        let why = missing_features_in(&kernel(absent), listing).unwrap();
        assert!(why.contains("may_goto (Linux 6.9)"), "{why}");
        assert!(why.contains("6.1.0-57-cloud-amd64"), "{why}");
        // Present, or unknown (no root): no claim, the loader decides.
        assert_eq!(
            missing_features_in(&kernel(Presence::Present), listing),
            None
        );
        let unknown = Presence::Unknown {
            error: "EPERM".into(),
        };
        assert_eq!(missing_features_in(&kernel(unknown), listing), None);
    }
}
