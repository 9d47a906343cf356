//! Prints what large generated tables cost: instruction slots, and the
//! instructions the kernel's verifier processed to accept them (needs
//! root). `cargo run --release -p flowstate-codegen --example
//! verifier_cost -- 400 1000 5000`
//!
//! Shapes: `exact` (one `=> drop` per port, like the benchmark's tables),
//! `counting` (each row adds its own constant to a register: no commit is
//! shared), `conditions` (each row also tests a register), `ranges` (each
//! row a range of ports and a next state: issue 7's refused shape).

use flowstate_codegen::{compile, Options, Target};
use flowstate_runtime::{load, LoadOptions};

fn table(shape: &str, rows: usize) -> String {
    let mut text = format!(
        "program {shape}{rows}\nhook xdp\nflow ip.src\nstates S, T\nregisters n = 0\n\
         default pass\ntable\n"
    );
    for i in 0..rows {
        let port = 1000 + i;
        text.push_str(&match shape {
            "counting" => format!("  S udp.dport == {port} => drop, n = n + {i}\n"),
            "ranges" => format!(
                "  S tcp.dport in {}..{} => drop, next T\n",
                1000 + 10 * i,
                1005 + 10 * i
            ),
            "conditions" => {
                format!("  * udp.dport == {port}, n < {i} => drop, n = n + 1, next T\n")
            }
            _ => format!("  S udp.dport == {port} => drop\n"),
        });
    }
    text.push_str("end\n");
    text
}

/// `FLOWSTATE_TARGET=6.1` builds for that kernel (the `may_goto`
/// fallback), run in this one.
fn target() -> Target {
    match std::env::var("FLOWSTATE_TARGET") {
        Ok(text) if !text.is_empty() => Target::parse(&text).expect("FLOWSTATE_TARGET"),
        _ => Target::newest(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shapes = ["exact", "counting", "conditions", "ranges"];
    for arg in &args {
        let Ok(rows) = arg.parse::<usize>() else {
            eprintln!("not a row count: {arg}");
            continue;
        };
        for shape in shapes {
            let program = match flowstate_lang::compile(&table(shape, rows)) {
                Ok(c) => c.program,
                Err(d) => {
                    eprintln!("{shape} {rows}: {d:?}");
                    continue;
                }
            };
            let options = Options {
                target: target(),
                ..Options::default()
            };
            let output = match compile(&program, &options) {
                Ok(output) => output,
                Err(e) => {
                    println!("{shape:>10} {rows:>6} rows: {e}");
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let verified = load(&output.object, &LoadOptions::default())
                .map_err(|e| {
                    let t = e.to_string();
                    let l: Vec<&str> = t.lines().collect();
                    l[l.len().saturating_sub(4)..].join(" | ")
                })
                .and_then(|loaded| {
                    loaded
                        .stats(&output.program_name)
                        .map(|s| format!("{:?}", s.verified_insns))
                        .map_err(|e| e.to_string())
                });
            println!(
                "{shape:>10} {rows:>6} rows: {:>7} slots, verifier: {} ({:.1} s)",
                output.insn_count,
                verified.unwrap_or_else(|e| format!("refused: {e}")),
                started.elapsed().as_secs_f64()
            );
        }
    }
}
