//! `flowstate replay`: a capture through the reference interpreter.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use flowstate_capture::{CaptureReader, CaptureWriter, Frame};
use flowstate_interp::{Chain, ChainStep, Counter, Machine, StateTable, Step};
use flowstate_lang::ir::{Action, ControllerThen, Program};
use serde_json::json;

use crate::clobber::{refuse_same_files, Named};
use crate::load::load_or_report;

#[derive(clap::Args)]
pub struct Args {
    /// The program (`.fsm`), then the capture (pcap or pcapng; `now` is
    /// each packet's timestamp). Several programs make a chain, in the
    /// order given: `pass` hands the packet to the next one, any other
    /// verdict ends the chain (docs/chains.md).
    #[arg(required = true, num_args = 2.., value_name = "PROGRAM.fsm... CAPTURE")]
    files: Vec<PathBuf>,
    /// In a chain, function F reads and writes function WITH's state table
    /// (`F=WITH`, each a position from 1 or a program name). The programs
    /// must declare the same flow and update keys, states, registers and
    /// table size.
    #[arg(long, value_name = "F=WITH")]
    share_table: Vec<String>,
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
    let (capture, program_paths) = args
        .files
        .split_last()
        .expect("clap asks for a program and a capture");
    let mut loaded = Vec::with_capacity(program_paths.len());
    for path in program_paths {
        let Some(one) = load_or_report(path)? else {
            return Ok(ExitCode::from(1));
        };
        loaded.push(one);
    }
    let programs: Vec<&Program> = loaded.iter().map(|l| &l.compiled.program).collect();
    let mut chain = Chain::new(&programs);
    for spec in &args.share_table {
        let (function, with) = parse_share(spec, &programs)?;
        chain.share_table(function, with).map_err(|why| {
            anyhow::anyhow!(
                "--share-table {spec}: {} ({}) cannot use the table of {} ({}): {why}",
                programs[function].name,
                program_paths[function].display(),
                programs[with].name,
                program_paths[with].display()
            )
        })?;
    }
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
    let mut inputs = vec![Named {
        what: "capture",
        path: capture,
    }];
    inputs.extend(program_paths.iter().map(|path| Named {
        what: "program",
        path,
    }));
    refuse_same_files(&inputs, &outputs)?;
    let reader = CaptureReader::open(capture)
        .with_context(|| format!("cannot replay {}", capture.display()))?;
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
    let single = programs.len() == 1;
    let mut by_verdict = [Counter::default(); VERDICTS.len()];
    let mut ended_by = vec![0u64; programs.len()];
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
        let step = chain.process(&frame.data, frame.ifindex, frame.time_ns);
        packets += 1;
        ended_by[step.ended_by()] += 1;
        let counter = &mut by_verdict[verdict_index(step.action())];
        counter.packets += 1;
        counter.bytes += frame.data.len() as u64;
        if !args.quiet {
            match (single, args.json) {
                (true, true) => writeln!(
                    out,
                    "{}",
                    packet_json(programs[0], index, &frame, &step.steps[0])
                )?,
                (true, false) => writeln!(
                    out,
                    "{}",
                    packet_line(programs[0], index, &frame, &step.steps[0])
                )?,
                (false, true) => writeln!(
                    out,
                    "{}",
                    chain_packet_json(&programs, index, &frame, &step)
                )?,
                (false, false) => write!(
                    out,
                    "{}",
                    chain_packet_lines(&programs, index, &frame, &step)
                )?,
            }
        }
        let sink = match passes(step.action()) {
            Some(true) => pass_out.as_mut(),
            Some(false) => drop_out.as_mut(),
            None => tx_out.as_mut(),
        };
        if let Some(writer) = sink {
            if !step.writes_fields() {
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

    if single {
        let function = Function::of(&chain, 0);
        if args.json {
            writeln!(out, "{}", summary_json(&function, &by_action, packets))?;
        } else {
            write!(out, "{}", summary_text(&function, &by_action, packets))?;
        }
    } else if args.json {
        writeln!(
            out,
            "{}",
            chain_summary_json(&chain, program_paths, &ended_by, &by_action, packets)
        )?;
    } else {
        write!(
            out,
            "{}",
            chain_summary_text(&chain, program_paths, &ended_by, &by_action, packets)
        )?;
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

/// `F=WITH` of `--share-table`: two functions of the chain, each by its
/// position (from 1) or its program's name.
fn parse_share(spec: &str, programs: &[&Program]) -> anyhow::Result<(usize, usize)> {
    let Some((function, with)) = spec.split_once('=') else {
        anyhow::bail!(
            "--share-table {spec}: expected F=WITH (function F uses function WITH's table; \
             each a position from 1 or a program name)"
        );
    };
    let resolve = |token: &str| -> anyhow::Result<usize> {
        let token = token.trim();
        if let Ok(position) = token.parse::<usize>() {
            if (1..=programs.len()).contains(&position) {
                return Ok(position - 1);
            }
            anyhow::bail!(
                "--share-table {spec}: there is no function {position}; the chain has {} \
                 (positions count from 1)",
                programs.len()
            );
        }
        let named: Vec<usize> = (0..programs.len())
            .filter(|&i| programs[i].name == token)
            .collect();
        match named.as_slice() {
            [one] => Ok(*one),
            [] => anyhow::bail!(
                "--share-table {spec}: no program of the chain is named {token:?}; name one of \
                 [{}] or give its position",
                programs
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => anyhow::bail!(
                "--share-table {spec}: several functions are named {token:?}; give a position \
                 (from 1) instead"
            ),
        }
    };
    let (function, with) = (resolve(function)?, resolve(with)?);
    if function == with {
        anyhow::bail!("--share-table {spec}: a function already uses its own table");
    }
    Ok((function, with))
}

/// One function of the chain, as the summary shows it: its program,
/// counters and globals, and the table it reads (a shared one, maybe).
struct Function<'a> {
    machine: &'a Machine<'a>,
    table: &'a StateTable,
}

impl<'a> Function<'a> {
    fn of(chain: &'a Chain<'a>, index: usize) -> Function<'a> {
        Function {
            machine: chain.machine(index),
            table: chain.table(index),
        }
    }
}

fn chain_packet_lines(
    programs: &[&Program],
    index: usize,
    frame: &Frame,
    step: &ChainStep,
) -> String {
    let mut lines = String::new();
    for (function, one) in step.steps.iter().enumerate() {
        let name = &programs[function].name;
        lines.push_str(&format!(
            "{}  {name}\n",
            packet_line(programs[function], index, frame, one)
        ));
    }
    lines
}

fn chain_packet_json(
    programs: &[&Program],
    index: usize,
    frame: &Frame,
    step: &ChainStep,
) -> serde_json::Value {
    let functions: Vec<serde_json::Value> = step
        .steps
        .iter()
        .enumerate()
        .map(|(function, one)| {
            let mut value = packet_json(programs[function], index, frame, one);
            value["function"] = json!(programs[function].name);
            value
        })
        .collect();
    let last = step
        .steps
        .last()
        .expect("a chain step has a function's step");
    json!({
        "index": index,
        "time_ns": frame.time_ns,
        "len": frame.data.len(),
        "verdict": last.action.verdict_name(),
        "action": flowstate_lang::print::action(last.action),
        "ended_by": step.ended_by() + 1,
        "ended_by_name": programs[step.ended_by()].name,
        "functions": functions,
    })
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

fn final_states(program: &Program, table: &StateTable) -> BTreeMap<String, u64> {
    let mut flows: BTreeMap<String, u64> = BTreeMap::new();
    for (_, entry) in table.sorted() {
        *flows
            .entry(program.state_name(entry.state).to_string())
            .or_default() += 1;
    }
    flows
}

fn actions_text(by_action: &BTreeMap<&str, Counter>, packets: u64) -> String {
    let mut s = format!("\n{packets} packets\nby action:\n");
    for (action, c) in by_action {
        s.push_str(&format!(
            "  {action:<12} {:>10} packets {:>12} bytes\n",
            c.packets, c.bytes
        ));
    }
    s
}

/// Rows, default and final states of one function.
fn function_text(function: &Function) -> String {
    let machine = function.machine;
    let program = machine.program();
    let mut s = "by row:\n".to_string();
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
    let flows = final_states(program, function.table);
    if flows.is_empty() {
        s.push_str("  (none)\n");
    }
    for (state, n) in flows {
        s.push_str(&format!("  {state:<16} {n}\n"));
    }
    s
}

fn summary_text(function: &Function, by_action: &BTreeMap<&str, Counter>, packets: u64) -> String {
    actions_text(by_action, packets) + &function_text(function)
}

fn chain_summary_text(
    chain: &Chain,
    paths: &[PathBuf],
    ended_by: &[u64],
    by_action: &BTreeMap<&str, Counter>,
    packets: u64,
) -> String {
    let mut s = actions_text(by_action, packets);
    s.push_str("ended by function:\n");
    for (i, machine) in chain.machines().iter().enumerate() {
        s.push_str(&format!(
            "  {} {:<16} {:>10} packets\n",
            i + 1,
            machine.program().name,
            ended_by[i]
        ));
    }
    for (i, path) in paths.iter().enumerate() {
        let name = &chain.machine(i).program().name;
        s.push_str(&format!(
            "\nfunction {} {name} ({}):\n",
            i + 1,
            path.display()
        ));
        let holder = chain.table_holder(i);
        if holder != i {
            s.push_str(&format!(
                "table: shared with function {} {}\n",
                holder + 1,
                chain.machine(holder).program().name
            ));
        }
        s.push_str(&function_text(&Function::of(chain, i)));
    }
    s
}

fn function_json(function: &Function) -> serde_json::Map<String, serde_json::Value> {
    let machine = function.machine;
    let program = machine.program();
    let value = json!({
        "by_row": program.rows.iter().zip(machine.row_hits()).map(|(r, c)| json!({"row": r.pos.line, "packets": c.packets, "bytes": c.bytes})).collect::<Vec<_>>(),
        "default": {"packets": machine.default_hits().packets, "bytes": machine.default_hits().bytes},
        "flows_by_state": final_states(program, function.table),
        "globals": program.globals.iter().zip(machine.globals()).map(|(g, v)| (g.name.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("json! of an object literal"),
    }
}

fn actions_json(by_action: &BTreeMap<&str, Counter>) -> serde_json::Value {
    by_action
        .iter()
        .map(|(a, c)| {
            (
                a.to_string(),
                json!({"packets": c.packets, "bytes": c.bytes}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn summary_json(
    function: &Function,
    by_action: &BTreeMap<&str, Counter>,
    packets: u64,
) -> serde_json::Value {
    let mut summary = serde_json::Map::new();
    summary.insert("summary".into(), json!(true));
    summary.insert("packets".into(), json!(packets));
    summary.insert("by_action".into(), actions_json(by_action));
    summary.extend(function_json(function));
    summary.into()
}

fn chain_summary_json(
    chain: &Chain,
    paths: &[PathBuf],
    ended_by: &[u64],
    by_action: &BTreeMap<&str, Counter>,
    packets: u64,
) -> serde_json::Value {
    let functions: Vec<serde_json::Value> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let mut one = function_json(&Function::of(chain, i));
            one.insert("function".into(), json!(i + 1));
            one.insert("name".into(), json!(chain.machine(i).program().name));
            one.insert("path".into(), json!(path.display().to_string()));
            one.insert("ended".into(), json!(ended_by[i]));
            one.insert("table_of".into(), json!(chain.table_holder(i) + 1));
            one.into()
        })
        .collect();
    json!({
        "summary": true,
        "packets": packets,
        "by_action": actions_json(by_action),
        "functions": functions,
    })
}
