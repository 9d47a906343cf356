//! `flowstate chain`: service chains, glue over `flowstate_control::chain`
//! (docs/chains.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use flowstate_control::chain::{self, ChainMeta, ChainSpec, FunctionSpec};
use flowstate_control::{AttachPoint, XdpMode};

use super::control::show;

#[derive(Subcommand)]
pub enum ChainCommand {
    /// Start a chain: functions on one hook where `pass` of one continues
    /// in the next; drop, tx and redirect end it. The last function's
    /// `pass` is the hook's.
    ///
    /// Each function is FILE.fsm or NAME=FILE.fsm (default name: the
    /// program's); it is visible to `flows`, `flow`, `stats`, `globals` and
    /// `events` as CHAIN/NAME. Example: flowstate chain create edge --dev
    /// eth0 --hook xdp ddos.fsm firewall.fsm limit=ratelimit.fsm
    Create {
        name: String,
        #[arg(long)]
        dev: String,
        #[arg(long, value_enum)]
        hook: HookArg,
        /// A network namespace under /run/netns holding the interface.
        #[arg(long)]
        netns: Option<String>,
        /// Functions in chain order: FILE.fsm or NAME=FILE.fsm.
        #[arg(required = true)]
        functions: Vec<String>,
    },
    /// Add a function (FILE.fsm or NAME=FILE.fsm) at position POS (0 is
    /// the head; default: the end), live.
    Add {
        name: String,
        function: String,
        #[arg(long = "at")]
        at: Option<usize>,
    },
    /// Take a function out of the chain, live (its table goes with it).
    Remove { name: String, function: String },
    /// Move a function to position POS (0 is the head), live.
    Move {
        name: String,
        function: String,
        #[arg(long = "to")]
        to: usize,
    },
    /// Replace a function's program, live, keeping its table (same flow
    /// key, states and registers).
    Replace {
        name: String,
        function: String,
        program: PathBuf,
    },
    /// The running chains.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One chain: its hook and its functions in order.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Detach a chain and remove its pins and metadata.
    Stop { name: String },
    /// Finish or undo a chain change a killed command left half done.
    Repair { name: Option<String> },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum HookArg {
    Xdp,
    TcIngress,
    TcEgress,
}

impl HookArg {
    fn attach(self) -> AttachPoint {
        match self {
            HookArg::Xdp => AttachPoint::Xdp {
                mode: XdpMode::Auto,
            },
            HookArg::TcIngress => AttachPoint::TcIngress,
            HookArg::TcEgress => AttachPoint::TcEgress,
        }
    }
}

/// `NAME=FILE` or `FILE`.
fn function_spec(text: &str) -> FunctionSpec {
    match text.split_once('=') {
        Some((name, path)) if !name.contains('/') => FunctionSpec {
            name: Some(name.to_string()),
            program_path: PathBuf::from(path),
        },
        _ => FunctionSpec {
            name: None,
            program_path: PathBuf::from(text),
        },
    }
}

pub fn run(command: ChainCommand) -> anyhow::Result<ExitCode> {
    flowstate_control::netns::use_host_mounts()?;
    match command {
        ChainCommand::Create {
            name,
            dev,
            hook,
            netns,
            functions,
        } => {
            let spec = ChainSpec {
                name,
                dev,
                attach: hook.attach(),
                netns,
                functions: functions.iter().map(|f| function_spec(f)).collect(),
            };
            let meta = chain::create(&spec)?;
            println!("started chain {}", summary(&meta));
        }
        ChainCommand::Add { name, function, at } => {
            let meta = chain::add(&name, &function_spec(&function), at)?;
            println!("chain {}", summary(&meta));
        }
        ChainCommand::Remove { name, function } => {
            let meta = chain::remove(&name, &function)?;
            println!("chain {}", summary(&meta));
        }
        ChainCommand::Move { name, function, to } => {
            let meta = chain::move_function(&name, &function, to)?;
            println!("chain {}", summary(&meta));
        }
        ChainCommand::Replace {
            name,
            function,
            program,
        } => {
            let meta = chain::replace(&name, &function, &program)?;
            println!("chain {}", summary(&meta));
        }
        ChainCommand::List { json } => list(json)?,
        ChainCommand::Show { name, json } => {
            let meta = chain::show(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&chain_json(&meta))?);
            } else {
                print!("{}", details(&meta));
            }
        }
        ChainCommand::Stop { name } => {
            chain::stop(&name)?;
            println!("stopped chain {name}");
        }
        ChainCommand::Repair { name } => {
            let repaired: Vec<_> = match name {
                Some(name) => chain::repair(&name)?.into_iter().collect(),
                None => chain::repair_all()?,
            };
            if repaired.is_empty() {
                println!("nothing to repair");
            }
            for r in repaired {
                println!("{r}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `edge on veth0 xdp (native): ddos -> firewall -> limit`
pub fn summary(meta: &ChainMeta) -> String {
    let names: Vec<&str> = meta.functions.iter().map(|f| f.name.as_str()).collect();
    format!(
        "{} on {}{} {} ({}): {}",
        meta.name,
        meta.dev,
        meta.netns
            .as_deref()
            .map_or_else(String::new, |n| format!(" (netns {n})")),
        meta.attach.hook_name(),
        meta.mode,
        names.join(" -> ")
    )
}

fn details(meta: &ChainMeta) -> String {
    let mut out = format!("{}\n", summary(meta));
    let mut table = vec![vec![
        "POS".to_string(),
        "FUNCTION".to_string(),
        "PROG".to_string(),
        "REPLACED".to_string(),
        "HASH".to_string(),
        "SOURCE".to_string(),
    ]];
    for (i, f) in meta.functions.iter().enumerate() {
        table.push(vec![
            i.to_string(),
            format!("{}/{}", meta.name, f.name),
            f.prog_id.to_string(),
            f.replaced.to_string(),
            f.source_hash.clone(),
            f.source_path.display().to_string(),
        ]);
    }
    out.push_str(&show::columns(&table));
    if let Some(problem) = chain::check(meta) {
        out.push_str(&format!("PROBLEM {}: {problem}\n", meta.name));
    }
    out
}

fn chain_json(meta: &ChainMeta) -> serde_json::Value {
    serde_json::json!({
        "name": meta.name,
        "dev": meta.dev,
        "netns": meta.netns,
        "hook": meta.attach.hook_name(),
        "mode": meta.mode,
        "generation": meta.generation,
        "problem": chain::check(meta),
        "functions": meta.functions.iter().enumerate().map(|(i, f)| serde_json::json!({
            "position": i,
            "name": f.name,
            "handle": format!("{}/{}", meta.name, f.name),
            "prog_id": f.prog_id,
            "replaced": f.replaced,
            "source_hash": f.source_hash,
            "source_path": f.source_path,
        })).collect::<Vec<_>>(),
    })
}

/// `flowstate chain list`, and the CHAIN lines of `flowstate list`.
pub fn list(json: bool) -> anyhow::Result<()> {
    let chains = chain::list()?;
    if json {
        let all: Vec<_> = chains.iter().map(chain_json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(());
    }
    for meta in &chains {
        println!("CHAIN {}", summary(meta));
        if let Some(problem) = chain::check(meta) {
            println!("PROBLEM {}: {problem}", meta.name);
        }
    }
    Ok(())
}
