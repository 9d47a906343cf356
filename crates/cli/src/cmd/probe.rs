//! `flowstate probe`: the running kernel's release and which of the eBPF
//! features flowstate cares about it has (flowstate_runtime::probe).

use std::process::ExitCode;

use flowstate_runtime::{kernel_features, KernelFeatures, Presence};
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
