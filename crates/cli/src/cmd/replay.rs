//! `flowstate replay`: a capture through the reference interpreter.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use flowstate_capture::{CaptureReader, CaptureWriter, Frame};
use flowstate_interp::{Counter, Machine, Step};
use flowstate_lang::ir::{Action, ControllerThen, Program};
use serde_json::json;

use crate::clobber::{refuse_same_files, Named};
use crate::load::load_or_report;

#[derive(clap::Args)]
pub struct Args {
    /// The program (`.fsm`).
    program: PathBuf,
    /// A pcap or pcapng capture; `now` is each packet's timestamp.
    capture: PathBuf,
    /// One JSON object per packet, then one summary object (`"summary": true`).
    #[arg(long)]
    json: bool,
    /// No per-packet lines; only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Write the packets that pass (including `controller then pass`) to a pcap file,
    /// as the program left them (rows that assign packet fields rewrite them).
    #[arg(long, value_name = "OUT.pcap")]
    write_pass: Option<PathBuf>,
    /// Write the dropped packets (including `controller then drop`) to a pcap file,
    /// as the program left them.
    #[arg(long, value_name = "OUT.pcap")]
    write_drop: Option<PathBuf>,
    /// Write the packets the program sends out of a port (`tx`, `redirect`) to a pcap
    /// file, as they are sent (rewritten): an ARP or ICMP echo responder's replies.
    #[arg(long, value_name = "OUT.pcap")]
    write_tx: Option<PathBuf>,
}

/// Verdict names, in the order of [`verdict_index`].
const VERDICTS: [&str; 5] = ["pass", "drop", "tx", "redirect", "controller"];

/// Counting by index keeps string comparisons out of the per-packet loop.
fn verdict_index(action: &Action) -> usize {
    match action {
        Action::Pass => 0,
        Action::Drop => 1,
        Action::Tx => 2,
        Action::Redirect { .. } | Action::RedirectPort { .. } => 3,
        Action::Controller { .. } => 4,
    }
}

/// Whether a packet with this action continues into the stack.
fn passes(action: &Action) -> Option<bool> {
    match action {
        Action::Pass
        | Action::Controller {
            then: ControllerThen::Pass,
        } => Some(true),
        Action::Drop
        | Action::Controller {
            then: ControllerThen::Drop,
        } => Some(false),
        Action::Tx | Action::Redirect { .. } | Action::RedirectPort { .. } => None,
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_or_report(&args.program)? else {
        return Ok(ExitCode::from(1));
    };
    let program = &loaded.compiled.program;
    let outputs: Vec<Named<'_>> = [
        ("--write-pass", &args.write_pass),
        ("--write-drop", &args.write_drop),
        ("--write-tx", &args.write_tx),
    ]
    .into_iter()
    .filter_map(|(what, path)| {
        Some(Named {
            what,
            path: path.as_deref()?,
        })
    })
    .collect();
    refuse_same_files(
        &[
            Named {
                what: "capture",
                path: &args.capture,
            },
            Named {
                what: "program",
                path: &args.program,
            },
        ],
        &outputs,
    )?;
    let reader = CaptureReader::open(&args.capture)
        .with_context(|| format!("cannot replay {}", args.capture.display()))?;
    let mut pass_out = args
        .write_pass
        .as_deref()
        .map(CaptureWriter::create)
        .transpose()?;
    let mut drop_out = args
        .write_drop
        .as_deref()
        .map(CaptureWriter::create)
        .transpose()?;
    let mut tx_out = args
        .write_tx
        .as_deref()
        .map(CaptureWriter::create)
        .transpose()?;

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut machine = Machine::new(program);
    let mut by_verdict = [Counter::default(); VERDICTS.len()];
    let mut packets = 0u64;
    let started = Instant::now();

    let mut reader = reader;
    let mut frame = Frame {
        time_ns: 0,
        data: Vec::with_capacity(2048),
        ifindex: 1,
    };
    let mut index = 0usize;
    while let Some(read) = reader.read_into(&mut frame) {
        read?;
        let step = machine.process(&frame.data, frame.ifindex, frame.time_ns);
        packets += 1;
        let counter = &mut by_verdict[verdict_index(step.action)];
        counter.packets += 1;
        counter.bytes += frame.data.len() as u64;
        if !args.quiet {
            if args.json {
                let line = packet_json(program, index, &frame, &step);
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}", packet_line(program, index, &frame, &step))?;
            }
        }
        let sink = match passes(step.action) {
            Some(true) => pass_out.as_mut(),
            Some(false) => drop_out.as_mut(),
            None => tx_out.as_mut(),
        };
        if let Some(writer) = sink {
            if step.writes.is_empty() {
                writer.write(&frame)?;
            } else {
                // What the kernel would send: the frame with the row's
                // field writes applied.
                let sent = Frame {
                    time_ns: frame.time_ns,
                    data: step.output(&frame.data),
                    ifindex: frame.ifindex,
                };
                writer.write(&sent)?;
            }
        }
        index += 1;
    }
    let elapsed = started.elapsed();
    let by_action: BTreeMap<&str, Counter> = VERDICTS
        .iter()
        .zip(by_verdict)
        .filter(|(_, c)| c.packets > 0)
        .map(|(v, c)| (*v, c))
        .collect();
    if let Some(w) = pass_out.as_mut() {
        w.flush()?;
    }
    if let Some(w) = drop_out.as_mut() {
        w.flush()?;
    }
    if let Some(w) = tx_out.as_mut() {
        w.flush()?;
    }

    if args.json {
        writeln!(out, "{}", summary_json(&machine, &by_action, packets))?;
    } else {
        write!(out, "{}", summary_text(&machine, &by_action, packets))?;
    }
    out.flush()?;
    let rate = packets as f64 / elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "replayed {packets} packets in {:.3} s ({:.2} Mpps)",
        elapsed.as_secs_f64(),
        rate / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

fn row_line(program: &Program, step: &Step) -> Option<u32> {
    step.row.map(|r| program.rows[r].pos.line)
}

fn packet_line(program: &Program, index: usize, frame: &Frame, step: &Step) -> String {
    let key = step
        .key
        .map(|k| k.display(&program.lookup_key))
        .unwrap_or_else(|| "-".to_string());
    let states = match (step.state_before, step.state_after) {
        (Some(a), Some(b)) => format!("{} -> {}", program.state_name(a), program.state_name(b)),
        _ => "-".to_string(),
    };
    let row = match row_line(program, step) {
        Some(line) => format!("L{line}"),
        None => "default".to_string(),
    };
    format!(
        "{index:>7}  {:>14.6}  {key:<18} {states:<24} {row:<8} {}",
        frame.time_ns as f64 / 1e9,
        flowstate_lang::print::action(step.action)
    )
}

fn packet_json(program: &Program, index: usize, frame: &Frame, step: &Step) -> serde_json::Value {
    json!({
        "index": index,
        "time_ns": frame.time_ns,
        "len": frame.data.len(),
        "key": step.key.map(|k| k.display(&program.lookup_key)),
        "state_before": step.state_before.map(|s| program.state_name(s)),
        "state_after": step.state_after.map(|s| program.state_name(s)),
        "row": row_line(program, step),
        "verdict": step.action.verdict_name(),
        "action": flowstate_lang::print::action(step.action),
    })
}

fn final_states(machine: &Machine) -> BTreeMap<String, u64> {
    let program = machine.program();
    let mut flows: BTreeMap<String, u64> = BTreeMap::new();
    for (_, entry) in machine.table().sorted() {
        *flows
            .entry(program.state_name(entry.state).to_string())
            .or_default() += 1;
    }
    flows
}

fn summary_text(machine: &Machine, by_action: &BTreeMap<&str, Counter>, packets: u64) -> String {
    let program = machine.program();
    let mut s = format!("\n{packets} packets\nby action:\n");
    for (action, c) in by_action {
        s.push_str(&format!(
            "  {action:<12} {:>10} packets {:>12} bytes\n",
            c.packets, c.bytes
        ));
    }
    s.push_str("by row:\n");
    for (row, hits) in program.rows.iter().zip(machine.row_hits()) {
        s.push_str(&format!(
            "  L{:<5} {:>10} packets {:>12} bytes   {}\n",
            row.pos.line,
            hits.packets,
            hits.bytes,
            flowstate_lang::print::row(program, row),
        ));
    }
    let d = machine.default_hits();
    s.push_str(&format!(
        "  default {:>9} packets {:>12} bytes   {}\n",
        d.packets,
        d.bytes,
        flowstate_lang::print::action(&program.default_action)
    ));
    s.push_str("flows by final state (entries in the table):\n");
    let flows = final_states(machine);
    if flows.is_empty() {
        s.push_str("  (none)\n");
    }
    for (state, n) in flows {
        s.push_str(&format!("  {state:<16} {n}\n"));
    }
    s
}

fn summary_json(
    machine: &Machine,
    by_action: &BTreeMap<&str, Counter>,
    packets: u64,
) -> serde_json::Value {
    let program = machine.program();
    json!({
        "summary": true,
        "packets": packets,
        "by_action": by_action.iter().map(|(a, c)| (a.to_string(), json!({"packets": c.packets, "bytes": c.bytes}))).collect::<serde_json::Map<_, _>>(),
        "by_row": program.rows.iter().zip(machine.row_hits()).map(|(r, c)| json!({"row": r.pos.line, "packets": c.packets, "bytes": c.bytes})).collect::<Vec<_>>(),
        "default": {"packets": machine.default_hits().packets, "bytes": machine.default_hits().bytes},
        "flows_by_state": final_states(machine),
        "globals": program.globals.iter().zip(machine.globals()).map(|(g, v)| (g.name.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}
