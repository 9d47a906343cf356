//! Rough timings of the trace generator, the pcap round trip and the
//! parser, for the figures quoted in reports:
//! `cargo run --release -p flowstate-capture --example measure [N]`.

use std::time::Instant;

use flowstate_capture::{pcap_bytes, synth, CaptureReader};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let frames = synth::mixed_load(n, 10_000, 1);
    let generate = t.elapsed();

    let t = Instant::now();
    let bytes = match pcap_bytes(&frames) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("measure: {e}");
            return;
        }
    };
    let write = t.elapsed();

    let t = Instant::now();
    let read = match CaptureReader::new(std::io::Cursor::new(&bytes), "<memory>") {
        Ok(r) => r.filter_map(Result::ok).count(),
        Err(e) => {
            eprintln!("measure: {e}");
            return;
        }
    };
    let read_time = t.elapsed();

    let t = Instant::now();
    let mut present = 0usize;
    for f in &frames {
        present += flowstate_wire::parse(&f.data, f.ifindex).present().count();
    }
    let parse = t.elapsed();

    let per = |d: std::time::Duration| d.as_nanos() as f64 / n as f64;
    println!("{n} frames, {} pcap bytes", bytes.len());
    println!("mixed_load: {generate:?} ({:.0} ns/frame)", per(generate));
    println!("pcap write: {write:?} ({:.0} ns/frame)", per(write));
    println!(
        "pcap read:  {read_time:?} ({:.0} ns/frame, {read} frames)",
        per(read_time)
    );
    println!(
        "parse:      {parse:?} ({:.0} ns/frame, {present} fields)",
        per(parse)
    );
}
