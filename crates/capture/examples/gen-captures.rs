//! Regenerate the committed example captures (`examples/*.pcap` at the
//! workspace root) from `flowstate_capture::synth::example_captures`.
//!
//! ```text
//! cargo run -p flowstate-capture --example gen-captures [OUT_DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let out_dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples"));
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("gen-captures: {}: {e}", out_dir.display());
        return ExitCode::FAILURE;
    }
    let out_dir = out_dir.canonicalize().unwrap_or(out_dir);
    for (name, frames) in flowstate_capture::synth::example_captures() {
        let path = out_dir.join(name);
        match flowstate_capture::write_capture(&path, &frames) {
            Ok(()) => println!("{}: {} frames", path.display(), frames.len()),
            Err(e) => {
                eprintln!("gen-captures: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
