//! The control commands through flowstated's API (`--daemon [SOCKET]`
//! or `FLOWSTATE_DAEMON=SOCKET`) instead of the control crate directly:
//! the daemon then knows (and owns) what the CLI runs. Without either,
//! the CLI works on its own as before. docs/daemon.md has the API.
//!
//! A tiny HTTP/1.1 client over the Unix socket: one request per
//! connection, `Connection: close`, so the answer ends at end of stream.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::show::columns;
use super::{
    ControlCommand, FlowAction, GlobalsAction, HookArg, RunArgs, Target, TcAttachArg, XdpModeArg,
    XdpShareArg,
};

/// The daemon's default socket.
pub const DEFAULT_SOCKET: &str = "/run/flowstate/flowstated.sock";

pub fn run(command: ControlCommand, socket: &Path) -> anyhow::Result<ExitCode> {
    let api = Api { socket };
    match command {
        ControlCommand::Run(args) => {
            let instance = api.call("POST", "/v1/instances", Some(run_body(&args)?))?;
            if args.json {
                println!("{instance:#}");
            } else {
                println!(
                    "running {} on {} ({}), program id {}, through flowstated",
                    text(&instance["name"]),
                    text(&instance["dev"]),
                    text(&instance["hook"]),
                    instance["prog_id"]
                );
            }
        }
        ControlCommand::List { json } => {
            let all = api.call("GET", "/v1/instances", None)?;
            if json {
                println!("{all:#}");
            } else {
                let mut rows = vec![[
                    "NAME", "DEV", "NETNS", "HOOK", "MODE", "PROG", "FLOWS", "OWNER",
                ]
                .map(String::from)
                .to_vec()];
                for i in all.as_array().into_iter().flatten() {
                    rows.push(vec![
                        text(&i["name"]),
                        text(&i["dev"]),
                        text(&i["netns"]),
                        text(&i["hook"]),
                        text(&i["mode"]),
                        text(&i["prog_id"]),
                        text(&i["flows"]),
                        text(&i["owner"]),
                    ]);
                }
                print!("{}", columns(&rows));
            }
        }
        ControlCommand::Stop { name } => {
            api.call("DELETE", &format!("/v1/instances/{}", segment(&name)), None)?;
            println!("stopped {name}");
        }
        ControlCommand::Reload {
            name,
            program,
            reset_state,
        } => {
            let program = absolute(&program)?;
            let report = api.call(
                "POST",
                &format!("/v1/instances/{}/reload", segment(&name)),
                Some(json!({ "program": program, "reset_state": reset_state })),
            )?;
            println!(
                "reloaded {name}: program {} -> {}, flows {} ({} carried, {} lost)",
                report["old_prog_id"],
                report["new_prog_id"],
                text(&report["flows"]),
                report["flows_carried"],
                report["flows_lost"]
            );
        }
        ControlCommand::Flows {
            target,
            json,
            state,
            limit,
        } => {
            let name = instance_name(&target)?;
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(format!("state={}", segment(&state)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = format!("/v1/instances/{}/flows?{}", segment(name), query.join("&"));
            let flows = api.call("GET", &path, None)?;
            if json {
                println!("{flows:#}");
            } else {
                for flow in flows.as_array().into_iter().flatten() {
                    println!("{}", flow_line(flow));
                }
            }
        }
        ControlCommand::Flow { name, key, action } => {
            let path = format!("/v1/instances/{}/flows/{}", segment(&name), segment(&key));
            let body = match &action {
                FlowAction::SetState { state } => json!({ "state": state }),
                FlowAction::Set { assignment: a } => {
                    let (register, value) = super::assignment(a)?;
                    json!({ "registers": { register: value } })
                }
                FlowAction::Delete => {
                    api.call("DELETE", &path, None)?;
                    println!("{name}: deleted flow {key}");
                    return Ok(ExitCode::SUCCESS);
                }
            };
            let flow = api.call("PATCH", &path, Some(body))?;
            println!("{name}: {}", flow_line(&flow));
        }
        ControlCommand::Flush { name } => {
            let answer = api.call(
                "DELETE",
                &format!("/v1/instances/{}/flows", segment(&name)),
                None,
            )?;
            println!("{name}: removed {} flow(s)", answer["removed"]);
        }
        ControlCommand::Globals {
            target,
            action,
            json,
        } => {
            let name = instance_name(&target)?;
            let path = format!("/v1/instances/{}/globals", segment(name));
            let values = match &action {
                Some(GlobalsAction::Set { assignment: a }) => {
                    let (global, value) = super::assignment(a)?;
                    api.call("PATCH", &path, Some(json!({ global: value })))?
                }
                None => api.call("GET", &path, None)?,
            };
            if json {
                println!("{values:#}");
            } else {
                for (global, value) in values.as_object().into_iter().flatten() {
                    println!("{global} = {value}");
                }
            }
        }
        ControlCommand::Stats {
            target,
            watch,
            json,
            interval,
        } => {
            let name = instance_name(&target)?;
            if watch {
                if !(interval.is_finite() && interval > 0.0 && interval <= 3600.0) {
                    bail!("--interval must be between 0 and 3600 seconds");
                }
                let path = format!("/v1/instances/{}/stats", segment(name));
                return super::daemon_slow::stats_watch(
                    name,
                    Duration::from_secs_f64(interval),
                    || api.call("GET", &path, None),
                );
            }
            let stats = api.call(
                "GET",
                &format!("/v1/instances/{}/stats", segment(name)),
                None,
            )?;
            if json {
                println!("{stats:#}");
            } else {
                let mut rows = vec![["LINE", "PACKETS", "BYTES", "ROW"]
                    .map(String::from)
                    .to_vec()];
                for row in stats["rows"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        text(&row["line"]),
                        text(&row["packets"]),
                        text(&row["bytes"]),
                        text(&row["text"]),
                    ]);
                }
                rows.push(vec![
                    "-".into(),
                    text(&stats["default"]["packets"]),
                    text(&stats["default"]["bytes"]),
                    "default".into(),
                ]);
                print!("{}", columns(&rows));
                println!(
                    "contention {}, table full {}",
                    stats["contention"], stats["table_full"]
                );
            }
        }
        ControlCommand::Repair { name } => {
            let body = match &name {
                Some(name) => json!({ "name": name }),
                None => json!({}),
            };
            let answer = api.call("POST", "/v1/repair", Some(body))?;
            super::daemon_slow::print_repaired(&answer);
        }
        ControlCommand::Events {
            target,
            json,
            count,
            timeout,
        } => {
            let name = instance_name(&target)?;
            return super::daemon_slow::events(socket, name, json, count, timeout, segment);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `POST /v1/instances` from `flowstate run`'s arguments.
fn run_body(args: &RunArgs) -> anyhow::Result<Value> {
    let program = absolute(&args.program)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        // The daemon needs the name up front: the program's, as `run` does.
        None => {
            let source = crate::load::read_program(&args.program)?;
            match flowstate_lang::compile(&source) {
                Ok(compiled) => compiled.program.name,
                Err(_) => bail!(
                    "{}: the program has errors (see `flowstate check {0}`); nothing was run",
                    args.program.display()
                ),
            }
        }
    };
    let mut body = json!({
        "name": name,
        "program": program,
        "dev": args.dev,
        "xdp_mode": match args.xdp_mode {
            XdpModeArg::Auto => "auto",
            XdpModeArg::Native => "native",
            XdpModeArg::Generic => "generic",
        },
        "xdp_share": match args.xdp_share {
            XdpShareArg::Auto => "auto",
            XdpShareArg::Shared => "shared",
            XdpShareArg::Exclusive => "exclusive",
        },
        "priority": args.priority,
        "tc_attach": match args.tc_attach {
            TcAttachArg::Auto => "auto",
            TcAttachArg::Tcx => "tcx",
            TcAttachArg::Clsact => "clsact",
        },
    });
    if let Some(hook) = args.hook {
        body["hook"] = json!(match hook {
            HookArg::Xdp => "xdp",
            HookArg::TcIngress => "tc-ingress",
            HookArg::TcEgress => "tc-egress",
        });
    }
    for (key, value) in [
        ("netns", &args.netns),
        ("before", &args.before),
        ("after", &args.after),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    Ok(body)
}

/// The daemon resolves paths from its own directory: send absolute ones.
fn absolute(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))
}

fn instance_name(target: &Target) -> anyhow::Result<&str> {
    match &target.name {
        Some(name) => Ok(name),
        None => bail!(
            "--prog-id and --pin are not available through the daemon (it knows instances by \
             name): drop --daemon (and FLOWSTATE_DAEMON) to read that program directly"
        ),
    }
}

fn flow_line(flow: &Value) -> String {
    let registers: Vec<String> = flow["registers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, v)| format!("{r}={v}"))
        .collect();
    format!(
        "{} {} {}",
        text(&flow["key"]),
        text(&flow["state"]),
        registers.join(" ")
    )
    .trim_end()
    .to_string()
}

/// A JSON value as plain text (`-` for null).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment or query value (flow keys have spaces).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Api<'a> {
    socket: &'a Path,
}

impl Api<'_> {
    /// One request; the JSON answer, or the daemon's error message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut stream = UnixStream::connect(self.socket).with_context(|| {
            format!(
                "cannot reach flowstated at {} (is it running? `systemctl status flowstated`); \
                 without --daemon and FLOWSTATE_DAEMON the command runs on its own",
                self.socket.display()
            )
        })?;
        // A reload or run may wait on an instance lock (60 s by default).
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: flowstated\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .context("reading flowstated's answer")?;
        let answer = String::from_utf8_lossy(&answer);
        let Some((head, rest)) = answer.split_once("\r\n\r\n") else {
            bail!("flowstated's answer is not HTTP: {answer:?}");
        };
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let text = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if !(200..300).contains(&status) {
            let message = value["error"].as_str().unwrap_or(&text);
            bail!("{message}");
        }
        Ok(value)
    }
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}
