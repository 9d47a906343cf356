//! `flowstate synth`: write a synthetic capture (for trying programs and for
//! the replay benchmark).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use flowstate_capture::{synth, write_capture};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// The port-knocking story of examples/portknock.pcap.
    Portknock,
    /// The token-bucket burst of examples/tokenbucket.pcap.
    Tokenbucket,
    /// Many sources mixing knocks, SSH, ARP and other traffic (benchmark load).
    Mixed,
}

pub fn run(
    kind: Kind,
    packets: usize,
    flows: u32,
    seed: u64,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let frames = match kind {
        Kind::Portknock => synth::portknock_demo(),
        Kind::Tokenbucket => synth::tokenbucket_demo(),
        Kind::Mixed => synth::mixed_load(packets, flows, seed),
    };
    write_capture(out, &frames).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {} packets to {}", frames.len(), out.display());
    Ok(ExitCode::SUCCESS)
}
