//! Making the running instances match the configuration.
//!
//! For each declared instance: run it when missing; reload it when its
//! program text changed (flows kept, or migrated when the layout changed,
//! as `flowstate reload` does); stop and run it again when where it
//! attaches changed (a reload cannot move a program); leave it when
//! nothing changed, which is also how a restarted daemon adopts what it
//! started before. Instances the configuration no longer names are
//! stopped if the configuration started them. An instance the daemon does
//! not own is never touched, even when the configuration names it.
//!
//! Each instance's change stands alone: one that fails is reported and
//! the others still apply.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Config, Declared};
use crate::launch;
use crate::owned::{started_ms, Origin, Owned, Ownership};

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Outcome {
    /// Running and matching the configuration: nothing done.
    Unchanged,
    Started {
        prog_id: u32,
    },
    /// The program was hot-replaced.
    Reloaded {
        prog_id: u32,
        /// `reused`, `migrated` or `reset`.
        flows: String,
        flows_carried: usize,
        flows_remapped: usize,
        flows_lost: usize,
    },
    /// Stopped and run again: its flows start afresh.
    Restarted {
        why: String,
        prog_id: u32,
    },
    /// A chain's functions brought to the declared list (each step one
    /// atomic swap keeping every function's flows).
    Changed {
        what: String,
        prog_id: u32,
    },
    /// No longer in the configuration.
    Stopped,
    /// Declared, but running without the daemon having started it.
    LeftAlone {
        why: String,
    },
    Failed {
        error: String,
    },
}

/// One entry of [`ApplyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub instance: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Everything one apply did, by instance name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub changes: Vec<Change>,
}

impl ApplyReport {
    pub fn failed(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed { .. }))
            .count()
    }

    pub(crate) fn push(&mut self, instance: &str, outcome: Outcome) {
        self.changes.push(Change {
            instance: instance.to_string(),
            outcome,
        });
    }
}

/// Applies `config`, recording ownership in `owned`. `running`: what
/// `flowstate_control::list` says now, by name.
pub fn apply(
    config: &Config,
    owned: &mut Ownership,
    running: &BTreeMap<String, flowstate_control::Instance>,
) -> ApplyReport {
    let mut report = ApplyReport::default();
    for (name, declared) in &config.instances {
        let outcome = apply_one(declared, owned, running.get(name));
        report.push(name, outcome);
    }
    // Instances started through the API and stopped outside the daemon
    // since: forget them.
    let vanished: Vec<String> = owned
        .all()
        .iter()
        .filter(|(name, o)| o.origin == Origin::Api && !running.contains_key(*name))
        .map(|(name, _)| name.clone())
        .collect();
    for name in vanished {
        if let Err(e) = owned.remove(&name) {
            report.push(&name, ownership_failed(e));
        }
    }
    let gone: Vec<String> = owned
        .all()
        .iter()
        .filter(|(name, o)| o.origin == Origin::Config && !config.instances.contains_key(*name))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        let outcome = if running.contains_key(&name) {
            match flowstate_control::stop(&name) {
                Ok(()) => Outcome::Stopped,
                Err(e) => Outcome::Failed {
                    error: e.to_string(),
                },
            }
        } else {
            Outcome::Stopped
        };
        if outcome == Outcome::Stopped {
            if let Err(e) = owned.remove(&name) {
                report.push(&name, ownership_failed(e));
                continue;
            }
        }
        report.push(&name, outcome);
    }
    report
}

fn ownership_failed(e: std::io::Error) -> Outcome {
    Outcome::Failed {
        error: format!("cannot record which instances flowstated owns: {e}"),
    }
}

fn apply_one(
    declared: &Declared,
    owned: &mut Ownership,
    running: Option<&flowstate_control::Instance>,
) -> Outcome {
    let name = declared.name.as_str();
    let record = Owned {
        origin: Origin::Config,
        placement_key: declared.placement_key(),
        started_unix_ms: None,
    };
    let Some(instance) = running else {
        return start(declared, owned, record);
    };
    let Some(mine) = owned.get(name).cloned() else {
        return Outcome::LeftAlone {
            why: format!(
                "an instance named {name} is running that flowstated did not start (a \
                 `flowstate run`?): it is left alone. Stop it (`flowstate stop {name}`) for \
                 flowstated to run the declared one, or rename either"
            ),
        };
    };
    if mine
        .started_unix_ms
        .is_some_and(|t| t != started_ms(instance))
    {
        // Ours was stopped outside the daemon and this one run since.
        if let Err(e) = owned.remove(name) {
            return ownership_failed(e);
        }
        return Outcome::LeftAlone {
            why: format!(
                "the {name} that flowstated started was stopped outside it, and the {name} \
                 running now was started by someone else: it is left alone. Stop it \
                 (`flowstate stop {name}`) for flowstated to run the declared one"
            ),
        };
    }
    // Declared now, whoever started it: the configuration owns it.
    if mine.origin != Origin::Config || mine.started_unix_ms.is_none() {
        let adopted = Owned {
            started_unix_ms: Some(started_ms(instance)),
            ..record.clone()
        };
        if let Err(e) = owned.insert(name, adopted) {
            return ownership_failed(e);
        }
    }
    let why_restart = if mine.placement_key != record.placement_key {
        Some("where it attaches changed (interface, hook, namespace or options)".to_string())
    } else {
        instance
            .problem
            .as_ref()
            .map(|p| format!("it was not running properly: {p}"))
    };
    if let Some(why) = why_restart {
        if let Err(e) = flowstate_control::stop(name) {
            return Outcome::Failed {
                error: format!("{why}, but stopping it failed: {e}"),
            };
        }
        return match start(declared, owned, record) {
            Outcome::Started { prog_id } => Outcome::Restarted { why, prog_id },
            other => other,
        };
    }
    if instance.source_hash == declared.source_hash {
        return Outcome::Unchanged;
    }
    match flowstate_control::reload(name, &declared.program, false) {
        Ok(report) => Outcome::Reloaded {
            prog_id: report.new_prog_id,
            flows: format!("{:?}", report.flows).to_lowercase(),
            flows_carried: report.flows_carried,
            flows_remapped: report.flows_remapped,
            flows_lost: report.flows_lost,
        },
        Err(e @ flowstate_control::ControlError::KeyLayoutChanged { .. }) => Outcome::Failed {
            error: format!(
                "reloading {}: {e}. flowstated never drops flows on its own: to start {name} \
                 from an empty table, `POST /v1/instances/{name}/reload` with \
                 {{\"reset_state\": true}}; the configuration then applies unchanged",
                declared.program.display()
            ),
        },
        Err(e) => Outcome::Failed {
            error: format!("reloading {}: {e}", declared.program.display()),
        },
    }
}

/// Claims the name, then runs; a failed run gives the claim back.
fn start(declared: &Declared, owned: &mut Ownership, record: Owned) -> Outcome {
    if let Err(e) = owned.insert(&declared.name, record.clone()) {
        return ownership_failed(e);
    }
    match launch::run(
        &declared.name,
        &declared.program,
        &declared.dev,
        &declared.placement,
    ) {
        Ok(instance) => {
            let record = Owned {
                started_unix_ms: Some(started_ms(&instance)),
                ..record
            };
            match owned.insert(&declared.name, record) {
                Ok(()) => Outcome::Started {
                    prog_id: instance.prog_id,
                },
                Err(e) => ownership_failed(e),
            }
        }
        Err(e) => {
            // A failed run leaves nothing running (control's rule).
            let _ = owned.remove(&declared.name);
            Outcome::Failed {
                error: e.to_string(),
            }
        }
    }
}
