//! `flowstate`: the command line. Glue only: every command parses its
//! arguments, calls the library crates and prints.

mod clobber;
mod cmd;
mod load;
mod output;
mod report;

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Stateful network functions, written as extended finite state machines
/// (the OpenState / Open Packet Processor model) and run in the Linux
/// kernel as eBPF.
///
/// A program names the flow key, its states and registers, and an ordered
/// table of rows `STATE MATCHES => ACTION, UPDATES, next STATE`; the first
/// matching row wins. See docs/language.md for the language.
#[derive(Parser)]
#[command(name = "flowstate", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Control commands go through flowstated's API: `--daemon` (socket
    /// /run/flowstate/flowstated.sock), `--daemon=SOCKET`, or
    /// FLOWSTATE_DAEMON=SOCKET; the daemon then owns what `run` starts.
    /// Without it they act directly, as always.
    #[arg(long, global = true, value_name = "SOCKET", num_args = 0..=1, require_equals = true,
          default_missing_value = cmd::control::daemon::DEFAULT_SOCKET)]
    daemon: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// The live demonstration: port knocking (XDP) and a token bucket (TC)
    /// on real interfaces, with real sockets.
    ///
    /// Builds client, switch and server network namespaces joined by veth
    /// pairs, runs examples/portknock.fsm and then examples/tokenbucket.fsm
    /// on the switch, and shows what a TCP or UDP client observes at each
    /// step. Removes everything it created at the end, on failure and on
    /// Ctrl-C. Needs root. Exit status 1 when an observation is not the
    /// expected one.
    Demo(cmd::demo::Args),
    /// Validate a program and summarise it (states, rows, key, registers, warnings).
    ///
    /// Errors and warnings show file, line and column with a caret under the
    /// offending text. Exit status 1 when the program has errors.
    Check {
        /// The program (`.fsm`).
        program: PathBuf,
        /// Print the summary and diagnostics as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a pcap or pcapng capture through the reference interpreter.
    ///
    /// Time comes from the capture's timestamps. One line per packet: index,
    /// time, flow key, state before -> after, the row that matched (its
    /// source line) or `default`, and the action; then a summary of packets
    /// and bytes by action, hits by row and flows by final state.
    ///
    /// Several programs before the capture replay a chain: `pass` hands the
    /// packet to the next function, any other verdict ends it; one line per
    /// function reached, and a summary per function (docs/chains.md).
    Replay(cmd::replay::Args),
    /// Draw the state machine: states as nodes, table rows as edges.
    ///
    /// `--format svg` renders without Graphviz; `--format dot` prints
    /// Graphviz source (`flowstate graph p.fsm | dot -Tpng > p.png`).
    Graph {
        program: PathBuf,
        #[arg(long, value_enum, default_value = "svg")]
        format: cmd::graph::Format,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write a synthetic pcap capture: the examples' stories, or a large
    /// mixed load for benchmarking `replay`.
    Synth {
        #[arg(value_enum)]
        kind: cmd::synth::Kind,
        /// Output pcap file.
        #[arg(short, long)]
        output: PathBuf,
        /// Packets (for `mixed`).
        #[arg(long, default_value_t = 1_000_000)]
        packets: usize,
        /// Distinct sources (for `mixed`).
        #[arg(long, default_value_t = 10_000)]
        flows: u32,
        /// Random seed (for `mixed`).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Show the running kernel's release and which eBPF features flowstate
    /// uses it has (may_goto, TCX, cpu v4 instructions, ...).
    ///
    /// Each feature is found by trying it (loading a tiny program, creating
    /// a map), not from the version number. Needs root (CAP_BPF); without
    /// it features show as unknown.
    Probe {
        /// Print the release and features as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Service chains: functions on one hook where `pass` of one continues
    /// in the next (create, add, remove, move, replace, list, show, stop).
    #[command(subcommand)]
    Chain(cmd::chain::ChainCommand),
    #[command(flatten)]
    Kernel(cmd::kernel::KernelCommand),
    #[command(flatten)]
    Control(cmd::control::ControlCommand),
}

fn main() -> ExitCode {
    output::quiet_broken_pipe_panics();
    let cli = Cli::parse();
    let touches_kernel = cli.command.touches_kernel();
    let daemon = cli.daemon.or_else(|| {
        std::env::var_os("FLOWSTATE_DAEMON")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    let run = move || match (cli.command, daemon) {
        (Command::Control(c), Some(socket)) => cmd::control::daemon::run(c, &socket),
        (command, _) => run(command),
    };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(code)) => code,
        Ok(Err(err)) if output::is_broken_pipe(&err) => ExitCode::from(output::BROKEN_PIPE_STATUS),
        Ok(Err(err)) => {
            // Not eprintln!: a closed standard error is no reason to panic.
            let text = report::describe(&err, touches_kernel);
            let _ = writeln!(std::io::stderr(), "flowstate: {text}");
            ExitCode::from(2)
        }
        Err(panic) if output::is_broken_pipe_panic(&*panic) => {
            ExitCode::from(output::BROKEN_PIPE_STATUS)
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Command {
    /// Whether the command asks the kernel for privileged things (loads
    /// programs, reads pinned maps), so that EPERM means "run as root".
    fn touches_kernel(&self) -> bool {
        match self {
            Command::Demo(_) | Command::Control(_) | Command::Chain(_) | Command::Probe { .. } => {
                true
            }
            Command::Kernel(c) => c.touches_kernel(),
            Command::Check { .. }
            | Command::Replay(_)
            | Command::Graph { .. }
            | Command::Synth { .. } => false,
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { program, json } => cmd::check::run(&program, json),
        Command::Replay(args) => cmd::replay::run(&args),
        Command::Graph {
            program,
            format,
            output,
        } => cmd::graph::run(&program, format, output.as_deref()),
        Command::Synth {
            kind,
            output,
            packets,
            flows,
            seed,
        } => cmd::synth::run(kind, packets, flows, seed, &output),
        Command::Demo(args) => cmd::demo::run(&args),
        Command::Probe { json } => cmd::probe::run(json),
        Command::Kernel(c) => cmd::kernel::run(c),
        Command::Control(c) => cmd::control::run(c),
        Command::Chain(c) => cmd::chain::run(c),
    }
}
