//! Chains in the daemon (docs/chains.md, docs/daemon.md): applying the
//! configuration's `[[chain]]` tables and the `/v1/chains` operations.
//!
//! Apply, per declared chain: create it when missing; when it runs and
//! the daemon owns it, bring its functions to the declared list, each
//! step one atomic generation swap keeping every function's flows (add
//! the missing ones, remove the extra ones, replace those whose program
//! text changed, then reorder); stop and create it again when its
//! interface, hook or namespace changed. A chain the configuration no
//! longer names is stopped if the configuration started it. Ownership is
//! recorded apart from the instances' (`owned-chains.json`), with the
//! same rule: a chain the daemon did not start is never touched.

use std::path::PathBuf;

use flowstate_control::chain::{self, ChainMeta, ChainSpec, FunctionSpec};
use flowstate_control::{AttachPoint, ControlError, XdpMode};
use serde::Deserialize;

use crate::apply::{ApplyReport, Outcome};
use crate::config::{Config, DeclaredChain, HookName};
use crate::owned::{Origin, Owned, Ownership};

/// The records file of owned chains, beside `owned.json`.
pub const OWNED_FILE: &str = "owned-chains.json";

fn attach(hook: HookName) -> AttachPoint {
    match hook {
        HookName::Xdp => AttachPoint::Xdp {
            mode: XdpMode::Auto,
        },
        HookName::TcIngress => AttachPoint::TcIngress,
        HookName::TcEgress => AttachPoint::TcEgress,
    }
}

fn spec_of(declared: &DeclaredChain) -> ChainSpec {
    ChainSpec {
        name: declared.name.clone(),
        dev: declared.dev.clone(),
        attach: attach(declared.hook),
        netns: declared.netns.clone(),
        functions: declared
            .functions
            .iter()
            .map(|f| FunctionSpec {
                name: Some(f.name.clone()),
                program_path: f.program.clone(),
            })
            .collect(),
    }
}

fn head_id(meta: &ChainMeta) -> u32 {
    meta.functions.first().map_or(0, |f| f.prog_id)
}

/// The report's name for a chain.
fn label(name: &str) -> String {
    format!("chain {name}")
}

/// Applies the configuration's chains, recording ownership in `owned`.
pub fn apply(config: &Config, owned: &mut Ownership, report: &mut ApplyReport) {
    for (name, declared) in &config.chains {
        let outcome = apply_one(declared, owned).unwrap_or_else(|e| Outcome::Failed {
            error: e.to_string(),
        });
        report.push(&label(name), outcome);
    }
    let records: Vec<(String, Owned)> = owned
        .all()
        .iter()
        .map(|(n, o)| (n.clone(), o.clone()))
        .collect();
    for (name, record) in records {
        let running = chain::show(&name).is_ok();
        let outcome = match record.origin {
            Origin::Api if !running => None,
            Origin::Config if !config.chains.contains_key(&name) => Some(if running {
                match chain::stop(&name) {
                    Ok(()) => Outcome::Stopped,
                    Err(e) => Outcome::Failed {
                        error: e.to_string(),
                    },
                }
            } else {
                Outcome::Stopped
            }),
            _ => continue,
        };
        if let Err(e) = owned.remove(&name) {
            report.push(
                &label(&name),
                Outcome::Failed {
                    error: format!("cannot record the chains flowstated owns: {e}"),
                },
            );
        } else if let Some(outcome) = outcome {
            report.push(&label(&name), outcome);
        }
    }
}

fn apply_one(declared: &DeclaredChain, owned: &mut Ownership) -> Result<Outcome, ControlError> {
    let name = &declared.name;
    let record = |meta: &ChainMeta| Owned {
        origin: Origin::Config,
        placement_key: declared.placement_key(),
        started_unix_ms: Some(meta.started_unix_ms),
    };
    let running = match chain::show(name) {
        Ok(meta) => Some(meta),
        Err(ControlError::NotRunning(_)) => None,
        Err(e) => return Err(e),
    };
    let mine = owned.get(name).cloned();
    let Some(meta) = running else {
        if flowstate_control::open(name).is_ok() {
            return Ok(Outcome::LeftAlone {
                why: "an instance of that name is running".to_string(),
            });
        }
        let meta = chain::create(&spec_of(declared))?;
        owned.insert(name, record(&meta)).map_err(ownership)?;
        return Ok(Outcome::Started {
            prog_id: head_id(&meta),
        });
    };
    let ours = mine
        .as_ref()
        .is_some_and(|o| o.started_unix_ms == Some(meta.started_unix_ms));
    if !ours {
        return Ok(Outcome::LeftAlone {
            why: "running, but not started by flowstated".to_string(),
        });
    }
    if mine.map(|o| o.placement_key) != Some(declared.placement_key()) {
        chain::stop(name)?;
        let meta = chain::create(&spec_of(declared))?;
        owned.insert(name, record(&meta)).map_err(ownership)?;
        return Ok(Outcome::Restarted {
            why: "its interface, hook or namespace changed".to_string(),
            prog_id: head_id(&meta),
        });
    }
    let done = sync(name, &meta, declared)?;
    if done.is_empty() {
        Ok(Outcome::Unchanged)
    } else {
        let meta = chain::show(name)?;
        Ok(Outcome::Changed {
            what: done.join("; "),
            prog_id: head_id(&meta),
        })
    }
}

/// Brings the running chain's functions to the declared list; says what
/// it did.
fn sync(
    name: &str,
    meta: &ChainMeta,
    declared: &DeclaredChain,
) -> Result<Vec<String>, ControlError> {
    let mut done = Vec::new();
    let running: Vec<&str> = meta.functions.iter().map(|f| f.name.as_str()).collect();
    for function in &declared.functions {
        if !running.contains(&function.name.as_str()) {
            let spec = FunctionSpec {
                name: Some(function.name.clone()),
                program_path: function.program.clone(),
            };
            chain::add(name, &spec, None)?;
            done.push(format!("added {}", function.name));
        }
    }
    for function in &meta.functions {
        if !declared.functions.iter().any(|f| f.name == function.name) {
            chain::remove(name, &function.name)?;
            done.push(format!("removed {}", function.name));
        }
    }
    for function in &declared.functions {
        let changed = meta
            .function(&function.name)
            .is_some_and(|(_, running)| running.source_hash != function.source_hash);
        if changed {
            chain::replace(name, &function.name, &function.program)?;
            done.push(format!("replaced {}", function.name));
        }
    }
    let order: Vec<String> = declared.functions.iter().map(|f| f.name.clone()).collect();
    let now: Vec<String> = chain::show(name)?
        .functions
        .into_iter()
        .map(|f| f.name)
        .collect();
    if now != order {
        chain::reorder(name, &order)?;
        done.push(format!("reordered {}", order.join(" -> ")));
    }
    Ok(done)
}

fn ownership(e: std::io::Error) -> ControlError {
    ControlError::Chain(format!("cannot record the chains flowstated owns: {e}"))
}

/// The body of `POST /v1/chains`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    pub dev: String,
    pub hook: HookName,
    #[serde(default)]
    pub netns: Option<String>,
    pub functions: Vec<FunctionRequest>,
}

/// A function in an API body (`program` absolute, or relative to the
/// daemon's working directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub program: PathBuf,
    /// `POST /v1/chains/{name}/functions`: the position (default: the end).
    #[serde(default)]
    pub at: Option<usize>,
}

impl FunctionRequest {
    pub fn spec(&self) -> FunctionSpec {
        FunctionSpec {
            name: self.name.clone(),
            program_path: self.program.clone(),
        }
    }
}

impl CreateRequest {
    pub fn spec(&self) -> ChainSpec {
        ChainSpec {
            name: self.name.clone(),
            dev: self.dev.clone(),
            attach: attach(self.hook),
            netns: self.netns.clone(),
            functions: self.functions.iter().map(FunctionRequest::spec).collect(),
        }
    }
}

/// A chain created through the API: owned, left alone by config applies.
pub fn api_record(meta: &ChainMeta) -> Owned {
    Owned {
        origin: Origin::Api,
        placement_key: String::new(),
        started_unix_ms: Some(meta.started_unix_ms),
    }
}
