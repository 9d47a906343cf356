//! The daemon's state and its operations, all synchronous (the control
//! crate is): the API calls them on blocking threads.
//!
//! One mutex over the ownership records serializes every change the
//! daemon makes (config apply, API run/stop), so an apply never races an
//! API call over the same name. Reads (list, flows, stats) take no lock;
//! edits of one instance take control's instance lock, as the CLI does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flowstate_control::{ControlError, Instance};
use serde::{Deserialize, Serialize};

use crate::apply::{self, ApplyReport};
use crate::config::{
    self, ConfigError, Declared, HookName, Placement, TcAttach, XdpMode, XdpShare,
};
use crate::metrics;
use crate::owned::{Origin, Owned, Ownership};

pub struct Daemon {
    config_dir: PathBuf,
    owned: Mutex<Ownership>,
    /// The chains it started (see [`crate::chains`]).
    owned_chains: Mutex<Ownership>,
    /// The last apply's outcome (`GET /v1/config`).
    last_apply: Mutex<Option<Result<ApplyReport, String>>>,
    /// `controller` events: their readers and subscribers.
    pub events: crate::events::Hub,
}

/// The body of `POST /v1/instances`: a configuration entry (`program`
/// absolute, or relative to the daemon's working directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub name: String,
    pub program: PathBuf,
    pub dev: String,
    // Placement's fields, written out: serde's `flatten` cannot refuse
    // unknown keys.
    #[serde(default)]
    pub hook: Option<HookName>,
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub xdp_share: XdpShare,
    #[serde(default = "config::default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub tc_attach: TcAttach,
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
}

impl RunRequest {
    fn placement(&self) -> Placement {
        Placement {
            hook: self.hook,
            netns: self.netns.clone(),
            xdp_mode: self.xdp_mode,
            xdp_share: self.xdp_share,
            priority: self.priority,
            tc_attach: self.tc_attach,
            before: self.before.clone(),
            after: self.after.clone(),
        }
    }
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub name: String,
    pub dev: String,
    pub netns: Option<String>,
    pub hook: &'static str,
    pub mode: String,
    pub prog_id: u32,
    pub ifindex: u32,
    pub started_unix_ms: u64,
    pub source_path: PathBuf,
    pub source_hash: String,
    pub flows: usize,
    pub reloads: u32,
    pub problem: Option<String>,
    pub note: Option<String>,
    /// `config`, `api`, or `null`: not started by flowstated (left alone
    /// by config applies).
    pub owner: Option<Origin>,
}

impl InstanceView {
    pub fn new(i: &Instance, owner: Option<Origin>) -> InstanceView {
        InstanceView {
            name: i.name.clone(),
            dev: i.dev.clone(),
            netns: i.netns.clone(),
            hook: i.attach.hook_name(),
            mode: i.mode.clone(),
            prog_id: i.prog_id,
            ifindex: i.ifindex,
            started_unix_ms: i
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            source_path: i.source_path.clone(),
            source_hash: i.source_hash.clone(),
            flows: i.flows,
            reloads: i.reloads,
            problem: i.problem.clone(),
            note: i.note.clone(),
            owner,
        }
    }
}

/// What failed in a daemon operation, for the API to map to a status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot record which instances flowstated owns: {0}")]
    Ownership(std::io::Error),
}

impl Daemon {
    /// Opens the ownership records under `state_dir`.
    pub fn open(config_dir: &Path, state_dir: &Path) -> std::io::Result<Daemon> {
        Ok(Daemon {
            config_dir: config_dir.to_path_buf(),
            owned: Mutex::new(Ownership::open(state_dir)?),
            owned_chains: Mutex::new(Ownership::open_file(state_dir, crate::chains::OWNED_FILE)?),
            last_apply: Mutex::new(None),
            events: crate::events::Hub::default(),
        })
    }

    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    fn ownership(&self) -> std::sync::MutexGuard<'_, Ownership> {
        // A panic while holding it leaves the records as written last.
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the configuration and applies it. A configuration with an
    /// error changes nothing.
    pub fn apply_config(&self) -> Result<ApplyReport, DaemonError> {
        let result = self.apply_config_inner();
        *self.last_apply.lock().unwrap_or_else(|e| e.into_inner()) = Some(match &result {
            Ok(report) => Ok(report.clone()),
            Err(e) => Err(e.to_string()),
        });
        result
    }

    fn apply_config_inner(&self) -> Result<ApplyReport, DaemonError> {
        let config = config::load_dir(&self.config_dir)?;
        let mut owned = self.ownership();
        // Changes a killed command (or a killed daemon) left half done
        // are finished or undone first, so `list` below is the truth.
        flowstate_control::repair_all()?;
        let running = running()?;
        let mut report = apply::apply(&config, &mut owned, &running);
        drop(owned);
        flowstate_control::chain::repair_all()?;
        let mut owned_chains = self.chain_ownership();
        crate::chains::apply(&config, &mut owned_chains, &mut report);
        Ok(report)
    }

    fn chain_ownership(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.owned_chains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every chain, with who owns it.
    pub fn chains(&self) -> Result<Vec<serde_json::Value>, DaemonError> {
        let owned = self.chain_ownership();
        Ok(flowstate_control::chain::list()?
            .iter()
            .map(|meta| chain_view(meta, owned.get(&meta.name).map(|o| o.origin)))
            .collect())
    }

    pub fn chain(&self, name: &str) -> Result<serde_json::Value, DaemonError> {
        let meta = flowstate_control::chain::show(name)?;
        let owner = self.chain_ownership().get(name).map(|o| o.origin);
        Ok(chain_view(&meta, owner))
    }

    /// Creates a chain the API owns (config applies leave it alone).
    pub fn create_chain(
        &self,
        request: &crate::chains::CreateRequest,
    ) -> Result<serde_json::Value, DaemonError> {
        let mut owned = self.chain_ownership();
        let meta = flowstate_control::chain::create(&request.spec())?;
        owned
            .insert(&meta.name, crate::chains::api_record(&meta))
            .map_err(DaemonError::Ownership)?;
        Ok(chain_view(&meta, Some(Origin::Api)))
    }

    /// A change of a chain's functions, under the ownership lock (so that
    /// a config apply does not run at the same time).
    pub fn change_chain(
        &self,
        change: impl FnOnce() -> Result<flowstate_control::chain::ChainMeta, ControlError>,
    ) -> Result<serde_json::Value, DaemonError> {
        let owned = self.chain_ownership();
        let meta = change()?;
        Ok(chain_view(&meta, owned.get(&meta.name).map(|o| o.origin)))
    }

    pub fn stop_chain(&self, name: &str) -> Result<(), DaemonError> {
        let mut owned = self.chain_ownership();
        flowstate_control::chain::stop(name)?;
        owned.remove(name).map_err(DaemonError::Ownership)
    }

    pub fn last_apply(&self) -> Option<Result<ApplyReport, String>> {
        self.last_apply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn instances(&self) -> Result<Vec<InstanceView>, DaemonError> {
        let owned = self.ownership().all().clone();
        Ok(flowstate_control::list()?
            .iter()
            .map(|i| InstanceView::new(i, owned.get(&i.name).map(|o| o.origin)))
            .collect())
    }

    pub fn instance(&self, name: &str) -> Result<InstanceView, DaemonError> {
        self.instances()?
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| ControlError::NotRunning(name.to_string()).into())
    }

    /// Runs an instance that the API owns (a config apply leaves it alone
    /// unless the configuration declares its name).
    pub fn run(&self, request: RunRequest) -> Result<InstanceView, DaemonError> {
        let placement = request.placement();
        if placement.before.is_some() && placement.after.is_some() {
            return Err(DaemonError::BadRequest(
                "give `before` or `after`, not both".into(),
            ));
        }
        let declared = Declared {
            name: request.name.clone(),
            program: request.program.clone(),
            dev: request.dev.clone(),
            placement: placement.clone(),
            file: PathBuf::new(),
            source_hash: String::new(),
        };
        let mut owned = self.ownership();
        // A record without a running instance is stale (stopped outside
        // the daemon): the name is free.
        if running()?.contains_key(&request.name) {
            return Err(ControlError::NameTaken(request.name).into());
        }
        let record = Owned {
            origin: Origin::Api,
            placement_key: declared.placement_key(),
            started_unix_ms: None,
        };
        owned
            .insert(&request.name, record.clone())
            .map_err(DaemonError::Ownership)?;
        match crate::launch::run(&request.name, &request.program, &request.dev, &placement) {
            Ok(instance) => {
                let record = Owned {
                    started_unix_ms: Some(crate::owned::started_ms(&instance)),
                    ..record
                };
                owned
                    .insert(&request.name, record)
                    .map_err(DaemonError::Ownership)?;
                Ok(InstanceView::new(&instance, Some(Origin::Api)))
            }
            Err(e) => {
                let _ = owned.remove(&request.name);
                Err(e.into())
            }
        }
    }

    /// Stops any instance (as `flowstate stop` does) and forgets owning
    /// it. One the configuration declares comes back at the next apply.
    pub fn stop(&self, name: &str) -> Result<(), DaemonError> {
        let mut owned = self.ownership();
        flowstate_control::stop(name)?;
        owned.remove(name).map_err(DaemonError::Ownership)
    }

    /// Whether the daemon started `name` (its events are read all the time).
    pub fn owns(&self, name: &str) -> bool {
        self.ownership().get(name).is_some()
    }

    /// Makes the events readers follow the running instances (see
    /// [`crate::events::Hub::sync`]).
    pub fn sync_events(&self) {
        let owned = self.ownership().all().clone();
        let Ok(instances) = flowstate_control::list() else {
            return;
        };
        let running: Vec<crate::events::Running> = instances
            .iter()
            .map(|i| crate::events::Running {
                name: i.name.clone(),
                prog_id: i.prog_id,
                owned: owned.contains_key(&i.name),
            })
            .collect();
        self.events.sync(&running);
    }

    /// The exposition text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        let owned = self.ownership().all().clone();
        let instances = flowstate_control::list().unwrap_or_default();
        let mut samples = Vec::new();
        for instance in &instances {
            let (capacity, controller_rows, stats) = match flowstate_control::open(&instance.name) {
                Ok(handle) => {
                    let program = handle.program();
                    let controller_rows = program
                        .rows
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.action.verdict_name() == "controller")
                        .map(|(i, _)| i)
                        .collect();
                    (
                        program.capacity,
                        controller_rows,
                        handle.stats().map_err(|e| e.to_string()),
                    )
                }
                Err(e) => (0, Vec::new(), Err(e.to_string())),
            };
            samples.push((instance, capacity, controller_rows, stats));
        }
        let samples: Vec<metrics::Sample> = samples
            .into_iter()
            .map(
                |(instance, capacity, controller_rows, stats)| metrics::Sample {
                    instance,
                    owner: match owned.get(&instance.name).map(|o| o.origin) {
                        Some(Origin::Config) => "config",
                        Some(Origin::Api) => "api",
                        None => "none",
                    },
                    capacity,
                    controller_rows,
                    stats,
                },
            )
            .collect();
        let mut text = metrics::render(&samples);
        text.push_str(&metrics::render_events(&self.events, &instances));
        text
    }
}

/// Running instances by name.
/// A chain as the API shows it.
fn chain_view(
    meta: &flowstate_control::chain::ChainMeta,
    owner: Option<Origin>,
) -> serde_json::Value {
    serde_json::json!({
        "name": meta.name,
        "dev": meta.dev,
        "netns": meta.netns,
        "hook": meta.attach.hook_name(),
        "mode": meta.mode,
        "generation": meta.generation,
        "started_unix_ms": meta.started_unix_ms,
        "problem": flowstate_control::chain::check(meta),
        "owner": owner,
        "functions": meta.functions.iter().enumerate().map(|(i, f)| serde_json::json!({
            "position": i,
            "name": f.name,
            "handle": format!("{}/{}", meta.name, f.name),
            "prog_id": f.prog_id,
            "replaced": f.replaced,
            "source_path": f.source_path,
            "source_hash": f.source_hash,
        })).collect::<Vec<_>>(),
    })
}

fn running() -> Result<BTreeMap<String, Instance>, ControlError> {
    Ok(flowstate_control::list()?
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect())
}
