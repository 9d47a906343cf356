//! The control commands: run programs on interfaces and steer them
//! (`run`, `list`, `stop`, `repair`, `reload`, `flows`, `flow`, `flush`,
//! `globals`, `stats`, `events`). Glue over `flowstate-control`.
//!
//! Locking: `run`, `stop`, `reload`, `repair` and the edits (`flow`,
//! `flush`, `globals set`) hold the instance lock; a second one waits
//! ("waiting for another flowstate command on NAME" on stderr) up to
//! FLOWSTATE_LOCK_TIMEOUT seconds (60). Readers take no lock.

pub mod daemon;
mod daemon_slow;
pub(crate) mod show;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use flowstate_control::{
    AttachPoint, FlowsMigration, Order, Relative, RunSpec, TcPlacement, TcVia, XdpMode,
};
use serde_json::json;

use show::{duration, duration_opt, row_json};

#[derive(Subcommand)]
pub enum ControlCommand {
    /// Compile a program, load it into the kernel and attach it to an interface.
    ///
    /// The program keeps running after this command exits: its link, program
    /// and maps are pinned under /sys/fs/bpf/flowstate/NAME/, and its metadata
    /// (with a copy of the program text) is kept in /run/flowstate/NAME.json.
    /// Stop it with `flowstate stop NAME`. On any failure nothing is left
    /// behind. Needs root (CAP_BPF, CAP_NET_ADMIN).
    ///
    /// With --netns NAME the interface is one inside that network namespace;
    /// pins and metadata stay on the host, so every command works from the
    /// host. Under `ip netns exec NAME` flowstate returns to the host's mounts
    /// (where bpffs is) and records the namespace, or refuses if it cannot.
    ///
    /// Both directories must be root's and writable by root only (flowstate
    /// creates them mode 0700, files 0600); one made by another user first is
    /// refused, with how to fix it.
    ///
    /// Example: flowstate run examples/portknock.fsm --dev eth0
    Run(RunArgs),
    /// List the running programs: name, interface, hook, mode, program id,
    /// uptime, source and hash of the program text, flows in the table.
    ///
    /// First repairs changes that killed commands left half done (see
    /// `flowstate repair`), saying so on stderr.
    ///
    /// A PROBLEM column flags stale entries (pins without metadata, an
    /// interface that disappeared, a link running another program); `flowstate
    /// stop NAME` cleans them up.
    ///
    /// NETNS is the network namespace of the interface (`-`: the one `run` was
    /// called in). Instances in other namespaces are checked there; a NOTE says
    /// what could not be checked from here and what the kernel says instead
    /// (a link attached is running, wherever its interface is).
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Detach a running program and remove its pins and metadata; the
    /// interface is left as it was before `run`.
    ///
    /// Detachment is confirmed through the kernel: a link that still runs
    /// the program (its pin moved or copied elsewhere) is forced off, or the
    /// command fails and says so. Works from any namespace.
    Stop {
        /// The running instance (see `flowstate list`).
        name: String,
    },
    /// Finish or undo a change that a killed `run`, `reload` or `stop` left
    /// half done (all instances, or NAME).
    ///
    /// Every command that changes an instance journals its steps in
    /// /run/flowstate/NAME.journal; the next command on that instance
    /// (and `list`) repairs it by itself, so this is rarely needed. An
    /// interrupted `run` is undone unless its link was already pinned; an
    /// interrupted `reload` is finished if the new program was swapped in,
    /// undone otherwise; an interrupted `stop` is finished.
    Repair {
        /// One instance; default: every instance with a journal.
        name: Option<String>,
    },
    /// Replace a running program by a new version, atomically, keeping its state.
    ///
    /// The new program is swapped in on the same link (bpf_link_update): no
    /// packet ever meets no program. Flows are carried over: with the same
    /// states and registers the running table is reused as is; otherwise
    /// entries are copied with states mapped by name (a state that no longer
    /// exists becomes the initial state, and is counted) and registers by
    /// name (new ones take their initial value). A changed flow key is
    /// refused unless --reset-state.
    Reload {
        /// The running instance (see `flowstate list`).
        name: String,
        /// The new version (`.fsm`).
        program: PathBuf,
        /// Start from an empty state table (and initial globals); needed
        /// when the flow key changed.
        #[arg(long)]
        reset_state: bool,
    },
    /// Show the state table: key (as written in programs), state, registers,
    /// age and idle time.
    ///
    /// An entry past its timeout shows `STATE -> ROLLBACK (expired)`: the
    /// program reads it as the rollback state on its next packet.
    Flows {
        #[command(flatten)]
        target: Target,
        /// One JSON array.
        #[arg(long)]
        json: bool,
        /// Only flows in this state.
        #[arg(long)]
        state: Option<String>,
        /// At most this many flows (sorted by key).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Edit one flow: set its state, set a register, or delete it.
    ///
    /// KEY is written as `flowstate flows` prints it: `10.0.0.1`,
    /// `02:00:00:00:00:01`, or several values in quotes for a multi-field key
    /// (`"10.0.0.1 22"`). Setting a state or register of a flow that has no
    /// entry creates one.
    ///
    /// Examples: flowstate flow portknock 10.0.0.1 set-state OPEN;
    /// flowstate flow tb 10.0.0.1 set tmin=0; flowstate flow portknock 10.0.0.1 delete
    Flow {
        /// The running instance (see `flowstate list`).
        name: String,
        /// The flow key, as `flowstate flows` prints it.
        key: String,
        #[command(subcommand)]
        action: FlowAction,
    },
    /// Delete every flow: each starts afresh on its next packet.
    Flush {
        /// The running instance (see `flowstate list`).
        name: String,
    },
    /// Show the global registers, or set one (`globals NAME set G=VALUE`).
    Globals {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: Option<GlobalsAction>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Per-row packet and byte counters with rates, and flows per state.
    ///
    /// Rates are measured over --interval (one second by default). With
    /// --watch the screen is redrawn every interval, like `top`, until Ctrl-C.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Redraw every interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// One JSON object (not with --watch).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Seconds between the two readings that give rates.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Stream the events of `controller` actions: time, flow key, state,
    /// the row that fired, and the packet head decoded.
    ///
    /// One line per event: wall-clock time it was read (UTC), flow key,
    /// state after the packet, source line of the row (or `default`), packet
    /// length, and the packet head (`10.0.0.1:40000 -> 10.0.0.100:22 TCP
    /// syn`). Runs until Ctrl-C (or --count events, or --timeout seconds
    /// without one). Run one reader per program: where flowstated runs,
    /// `flowstate --daemon events NAME` shares the daemon's reader.
    Events {
        #[command(flatten)]
        target: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds without an event.
        #[arg(long)]
        timeout: Option<f64>,
    },
}

/// Which program a reading command looks at: an instance by name, or any
/// program compiled by flowstate, however it was loaded (`ip`, `tc`,
/// `bpftool`, bpfman), by id or pin: its object carries what is needed to
/// decode its maps.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The running instance (see `flowstate list`).
    name: Option<String>,
    /// A program loaded by another tool, by kernel id (`bpftool prog show`).
    #[arg(long, value_name = "ID")]
    prog_id: Option<u32>,
    /// A program loaded by another tool, by its pin on bpffs.
    #[arg(long, value_name = "PATH")]
    pin: Option<PathBuf>,
}

impl Target {
    /// The handle, after repairing an instance's interrupted change.
    fn open(&self) -> anyhow::Result<flowstate_control::Handle> {
        let which = match (&self.name, self.prog_id, &self.pin) {
            (Some(name), _, _) => {
                repaired_for_reading(name)?;
                return Ok(flowstate_control::open(name)?);
            }
            (None, Some(id), _) => flowstate_control::ProgramRef::Id(id),
            (None, None, Some(pin)) => flowstate_control::ProgramRef::Pin(pin.clone()),
            // clap requires one of them.
            (None, None, None) => bail!("name a running instance, --prog-id or --pin"),
        };
        Ok(flowstate_control::open_program(&which)?)
    }

    /// The instance's name, for the lock edits take; `None` for a program
    /// flowstate did not start (edited without a lock).
    fn instance(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// The program (`.fsm`).
    program: PathBuf,
    /// The interface to attach to.
    #[arg(long)]
    dev: String,
    /// The network namespace of --dev, by its `ip netns` name: the program
    /// is attached inside it while its pins and metadata stay on the host,
    /// and `list`, `stop` and the other commands find it from there.
    /// Without it, the namespace flowstate runs in (also under `ip netns
    /// exec NAME`, which is recorded by name).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Where to attach; default: the program's `hook` line.
    #[arg(long, value_enum)]
    hook: Option<HookArg>,
    /// XDP attach mode: native (in the driver) if the driver supports it,
    /// else generic.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// Sharing the XDP hook with other programs through libxdp's
    /// multi-program dispatcher (as xdp-loader and bpfman do): `shared`
    /// joins the interface's dispatcher, or makes one; `exclusive`
    /// attaches alone and refuses a hook in use; `auto` joins a dispatcher
    /// already there, else attaches alone. In a dispatcher `pass` goes on
    /// to the next program.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_share: XdpShareArg,
    /// Run priority in the dispatcher: lower runs first (libxdp's default
    /// is 50).
    #[arg(long, default_value_t = 50, value_name = "N")]
    priority: u32,
    /// Name of the running instance (letters, digits, `_`, `-`); default:
    /// the program's name.
    #[arg(long)]
    name: Option<String>,
    /// TC: run before this program on the hook (a flowstate instance name,
    /// a program id, or the path of a pinned program or link). Default:
    /// after every program already there.
    #[arg(long, value_name = "NAME|ID|PATH", conflicts_with = "after")]
    before: Option<String>,
    /// TC: run after this program on the hook (as --before).
    #[arg(long, value_name = "NAME|ID|PATH")]
    after: Option<String>,
    /// TC: attach through TCX (a bpf_link, kernel 6.6+) or a clsact qdisc
    /// filter (any kernel); auto: TCX where the kernel has it.
    #[arg(long, value_enum, default_value = "auto")]
    tc_attach: TcAttachArg,
    /// Read and write the flow table of this running instance instead of
    /// a table of its own (one state seen from two interfaces, or from
    /// ingress and egress). The programs must declare the same flow and
    /// update keys, states (and timeouts), registers (and initial values)
    /// and table size; refused otherwise.
    #[arg(long, value_name = "INSTANCE")]
    share_table: Option<String>,
    /// Print the instance as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum HookArg {
    Xdp,
    TcIngress,
    TcEgress,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpShareArg {
    Auto,
    Shared,
    Exclusive,
}

#[derive(Clone, Copy, ValueEnum)]
enum TcAttachArg {
    Auto,
    Tcx,
    Clsact,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Subcommand)]
pub enum FlowAction {
    /// Put the flow in STATE.
    SetState { state: String },
    /// Set a per-flow register: REG=VALUE.
    Set { assignment: String },
    /// Remove the flow's entry.
    Delete,
}

#[derive(Subcommand)]
pub enum GlobalsAction {
    /// Set a global register: G=VALUE.
    Set { assignment: String },
}

pub fn run(command: ControlCommand) -> anyhow::Result<ExitCode> {
    // Under `ip netns exec`, pins must still go to the host's bpffs. This
    // has to come first: a process changes mount namespace only while it
    // has a single thread.
    flowstate_control::netns::use_host_mounts()?;
    match command {
        ControlCommand::Run(args) => run_program(&args),
        ControlCommand::List { json } => list(json),
        ControlCommand::Stop { name } => {
            flowstate_control::stop(&name)?;
            println!("stopped {name}");
            Ok(ExitCode::SUCCESS)
        }
        ControlCommand::Repair { name } => repair(name.as_deref()),
        ControlCommand::Reload {
            name,
            program,
            reset_state,
        } => reload(&name, &program, reset_state),
        ControlCommand::Flows {
            target,
            json,
            state,
            limit,
        } => flows(&target, json, state.as_deref(), limit),
        ControlCommand::Flow { name, key, action } => flow(&name, &key, &action),
        ControlCommand::Flush { name } => {
            let _lock = flowstate_control::lock(&name)?;
            let removed = flowstate_control::open(&name)?.flush()?;
            println!("{name}: removed {removed} flow(s)");
            Ok(ExitCode::SUCCESS)
        }
        ControlCommand::Globals {
            target,
            action,
            json,
        } => globals(&target, action.as_ref(), json),
        ControlCommand::Stats {
            target,
            watch,
            json,
            interval,
        } => stats(&target, watch, json, interval),
        ControlCommand::Events {
            target,
            json,
            count,
            timeout,
        } => events(&target, json, count, timeout),
    }
}

fn run_program(args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Read once, within the size limit, for the checks below (the control
    // crate reads it again, bounded too, to compile and keep a copy).
    let source = crate::load::read_program(&args.program)?;
    let attach = args.hook.map(|hook| match hook {
        HookArg::Xdp => AttachPoint::Xdp {
            mode: xdp_mode(args.xdp_mode),
        },
        HookArg::TcIngress => AttachPoint::TcIngress,
        HookArg::TcEgress => AttachPoint::TcEgress,
    });
    // `--xdp-mode` alone applies to a program whose own hook is XDP.
    let attach = match attach {
        None if !matches!(args.xdp_mode, XdpModeArg::Auto) => {
            match flowstate_lang::compile(&source).map(|c| c.program.hook) {
                Ok(flowstate_lang::ir::Hook::Xdp) => Some(AttachPoint::Xdp {
                    mode: xdp_mode(args.xdp_mode),
                }),
                _ => None,
            }
        }
        other => other,
    };
    // A kernel too old for the program is said plainly, not as a dump.
    if let Some(why) = crate::cmd::probe::missing_features_for_source(&source) {
        anyhow::bail!("{}: {why}; nothing was attached", args.program.display());
    }
    let spec = RunSpec {
        program_path: args.program.clone(),
        dev: args.dev.clone(),
        attach,
        name: args.name.clone(),
        tc: TcPlacement {
            via: match args.tc_attach {
                TcAttachArg::Auto => TcVia::Auto,
                TcAttachArg::Tcx => TcVia::Tcx,
                TcAttachArg::Clsact => TcVia::Clsact,
            },
            order: match (&args.before, &args.after) {
                (Some(r), _) => Order::Before(Relative::parse(r)),
                (None, Some(r)) => Order::After(Relative::parse(r)),
                (None, None) => Order::Last,
            },
        },
    };
    let share = match args.xdp_share {
        XdpShareArg::Shared => flowstate_control::XdpShare::Shared,
        XdpShareArg::Exclusive => flowstate_control::XdpShare::Exclusive,
        XdpShareArg::Auto => flowstate_control::XdpShare::Auto,
    };
    let instance = flowstate_control::run_placed_with(
        &spec,
        args.netns.as_deref(),
        share,
        args.priority,
        args.share_table.as_deref(),
    )?;
    if args.json {
        println!("{}", show::instance_json(&instance));
    } else {
        println!(
            "running {} on {}{} ({} {}), program id {}; it keeps running after this command. \
             See `flowstate flows {0}`, `flowstate stats {0}`; stop with `flowstate stop {0}`",
            instance.name,
            instance.dev,
            instance
                .netns
                .as_ref()
                .map_or(String::new(), |n| format!(" in network namespace {n}")),
            instance.attach.hook_name(),
            instance.mode,
            instance.prog_id,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn xdp_mode(arg: XdpModeArg) -> XdpMode {
    match arg {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
    }
}

fn repair(name: Option<&str>) -> anyhow::Result<ExitCode> {
    let repaired = match name {
        Some(name) => flowstate_control::repair(name)?.into_iter().collect(),
        None => flowstate_control::repair_all()?,
    };
    let chains = match name {
        Some(_) => Vec::new(),
        None => flowstate_control::chain::repair_all()?,
    };
    for r in &chains {
        println!("{r}");
    }
    if repaired.is_empty() && !chains.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if repaired.is_empty() {
        println!("nothing to repair");
    }
    for r in repaired {
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Readers go without the lock, but first let an interrupted change be
/// repaired, so they read a consistent instance.
fn repaired_for_reading(name: &str) -> anyhow::Result<()> {
    if let Some(r) = flowstate_control::repair(name)? {
        eprintln!("{r}");
    }
    Ok(())
}

fn list(json: bool) -> anyhow::Result<ExitCode> {
    // Metadata is root's alone (0600): another user would see pins
    // without metadata and be told to stop healthy instances.
    if !crate::report::is_root() {
        anyhow::bail!("cannot list instances: their metadata is readable by root only");
    }
    if let Ok(repaired) = flowstate_control::repair_all() {
        for r in repaired {
            eprintln!("{r}");
        }
    }
    let instances = flowstate_control::list()?;
    if json {
        let all: Vec<_> = instances.iter().map(show::instance_json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(repaired) = flowstate_control::chain::repair_all() {
        for r in repaired {
            eprintln!("{r}");
        }
    }
    let chains = flowstate_control::chain::list().unwrap_or_default();
    if instances.is_empty() && chains.is_empty() {
        println!("no program running (start one with `flowstate run PROGRAM.fsm --dev IFACE`)");
        return Ok(ExitCode::SUCCESS);
    }
    if instances.is_empty() {
        crate::cmd::chain::list(false)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![vec![
        "NAME".to_string(),
        "DEV".to_string(),
        "NETNS".to_string(),
        "HOOK".to_string(),
        "MODE".to_string(),
        "POS".to_string(),
        "PROG".to_string(),
        "UPTIME".to_string(),
        "FLOWS".to_string(),
        "HASH".to_string(),
        "SOURCE".to_string(),
    ]];
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut hooks = Vec::new();
    for i in &instances {
        let uptime = i.started.elapsed().map_or("?".to_string(), duration);
        table.push(vec![
            i.name.clone(),
            i.dev.clone(),
            i.netns.clone().unwrap_or_else(|| "-".to_string()),
            i.attach.hook_name().to_string(),
            i.mode.clone(),
            show::hook_position(i),
            i.prog_id.to_string(),
            uptime,
            i.flows.to_string(),
            i.source_hash.clone(),
            i.source_path.display().to_string(),
        ]);
        if let Some(n) = &i.note {
            notes.push(format!("{}: {n}", i.name));
        }
        if !i.hook_programs.is_empty() {
            hooks.push(format!(
                "{} ({} {}): {}",
                i.name,
                i.dev,
                i.attach.hook_name(),
                show::hook_chain(i)
            ));
        }
        if let Some(p) = &i.problem {
            problems.push(format!(
                "{}: {p} (clean up with `flowstate stop {0}`)",
                i.name
            ));
        }
    }
    print!("{}", show::columns(&table));
    for p in problems {
        println!("PROBLEM {p}");
    }
    for h in hooks {
        println!("HOOK {h}");
    }
    for n in notes {
        println!("NOTE {n}");
    }
    if !chains.is_empty() {
        crate::cmd::chain::list(false)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn reload(name: &str, program: &std::path::Path, reset: bool) -> anyhow::Result<ExitCode> {
    let report = flowstate_control::reload(name, program, reset)?;
    let how = match report.flows {
        FlowsMigration::Reused => "state table kept as is",
        FlowsMigration::Migrated => "state table migrated by name",
        FlowsMigration::Reset => "state table reset",
    };
    println!(
        "reloaded {name}: program {} -> {} (hash {}), {how}: {} flow(s) carried, {} remapped to \
         the initial state{}{}",
        report.old_prog_id,
        report.new_prog_id,
        report.source_hash,
        report.flows_carried,
        report.flows_remapped,
        if report.flows_lost > 0 {
            format!(", {} lost (the new table is smaller)", report.flows_lost)
        } else {
            String::new()
        },
        if report.counters_reset {
            "; rows changed, counters restarted"
        } else {
            ""
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn flows(
    target: &Target,
    json: bool,
    state: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let handle = target.open()?;
    let rows = handle.flows(state, limit)?;
    if json {
        let all: Vec<_> = rows.iter().map(row_json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![vec![
        "KEY".to_string(),
        "STATE".to_string(),
        "REGISTERS".to_string(),
        "AGE".to_string(),
        "IDLE".to_string(),
    ]];
    for r in &rows {
        let state = match &r.expired_to {
            Some(to) => format!("{} -> {to} (expired)", r.state),
            None => r.state.clone(),
        };
        let registers: Vec<String> = r
            .registers
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        table.push(vec![
            r.key.clone(),
            state,
            registers.join(" "),
            duration_opt(r.age_ns),
            duration_opt(r.idle_ns),
        ]);
    }
    print!("{}", show::columns(&table));
    println!("{} flow(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}

fn assignment(text: &str) -> anyhow::Result<(&str, i64)> {
    let Some((name, value)) = text.split_once('=') else {
        bail!("expected NAME=VALUE, got {text:?}");
    };
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    };
    let Some(parsed) = parsed else {
        bail!("{value:?} is not a signed 64-bit integer");
    };
    Ok((name.trim(), parsed))
}

fn flow(name: &str, key: &str, action: &FlowAction) -> anyhow::Result<ExitCode> {
    let _lock = flowstate_control::lock(name)?;
    let handle = flowstate_control::open(name)?;
    match action {
        FlowAction::SetState { state } => handle.set_state(key, state)?,
        FlowAction::Set { assignment: a } => {
            let (register, value) = assignment(a)?;
            handle.set_register(key, register, value)?;
        }
        FlowAction::Delete => {
            handle.delete_flow(key)?;
            println!("{name}: deleted flow {key}");
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Some(row) = handle.flow(key)? {
        let registers: Vec<String> = row
            .registers
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!("{name}: {} {} {}", row.key, row.state, registers.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn globals(
    target: &Target,
    action: Option<&GlobalsAction>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let _lock = match (action, target.instance()) {
        (Some(_), Some(name)) => Some(flowstate_control::lock(name)?),
        _ => None,
    };
    let handle = target.open()?;
    let name = handle.name().to_string();
    if let Some(GlobalsAction::Set { assignment: a }) = action {
        let (global, value) = assignment(a)?;
        handle.set_global(global, value)?;
    }
    let values = handle.globals()?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> =
            values.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
        println!("{}", serde_json::Value::Object(map));
    } else if values.is_empty() {
        println!("{name}: the program declares no globals");
    } else {
        for (n, v) in values {
            println!("{n} = {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(target: &Target, watch: bool, json: bool, interval: f64) -> anyhow::Result<ExitCode> {
    if !(interval.is_finite() && interval > 0.0 && interval <= 3600.0) {
        bail!("--interval must be between 0 and 3600 seconds");
    }
    let interval = Duration::from_secs_f64(interval);
    let handle = target.open()?;
    let name = handle.name().to_string();
    let mut before = handle.stats()?;
    loop {
        std::thread::sleep(interval);
        let now = handle.stats()?;
        if json {
            println!("{}", show::stats_json(&before, &now));
            return Ok(ExitCode::SUCCESS);
        }
        let text = show::stats_text(&name, &before, &now);
        if watch {
            // Clear the screen and go home, then draw: a `top`-like redraw.
            print!("\x1b[2J\x1b[H{text}");
            let _ = std::io::stdout().flush();
            before = now;
        } else {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn events(
    target: &Target,
    json: bool,
    count: Option<u64>,
    timeout: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let handle = target.open()?;
    if target.name.as_deref().is_some_and(daemon_slow::daemon_owns) {
        eprintln!(
            "flowstate: flowstated owns {} and reads its events for its subscribers: this \
             command bypasses the daemon, and two readers of one ring buffer may each miss or \
             repeat events (use `flowstate --daemon events {0}` to share the daemon's)",
            handle.name()
        );
    }
    let mut events = handle.events()?;
    let wait = match timeout {
        Some(t) if t.is_finite() && t > 0.0 => Duration::from_secs_f64(t.min(1e6)),
        Some(_) => bail!("--timeout must be a positive number of seconds"),
        None => Duration::from_secs(3600),
    };
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    while count.is_none_or(|c| seen < c) {
        let Some(e) = events.next_timeout(wait)? else {
            if timeout.is_some() {
                break;
            }
            continue;
        };
        seen += 1;
        let line = if json {
            show::event_json(&e).to_string()
        } else {
            let row = e
                .row_line
                .map_or("default".to_string(), |l| format!("line {l}"));
            format!(
                "{}  {:<20} {:<10} {:<9} {:>5}B  {}",
                show::clock_time(e.received),
                if e.key.is_empty() { "-" } else { &e.key },
                e.state,
                row,
                e.pkt_len,
                e.summary
            )
        };
        // A closed pipe (`| head`) ends the stream quietly.
        if writeln!(stdout, "{line}").is_err() || stdout.flush().is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
