//! Which instances this daemon started: `STATE_DIR/owned.json` (default
//! `/run/flowstate/daemon/owned.json`).
//!
//! Instances outlive the daemon (their pins keep them attached), so a
//! restarted daemon needs to know which running instances are its own:
//! those it may reload or stop when the configuration changes. Anything
//! else (the CLI's one-shot instances) is never touched by a config apply.
//!
//! The file sits on /run like control's metadata: both are cleared at
//! boot, when the pins are gone too, and the configuration alone restores
//! everything. An entry is written *before* `run` and removed after
//! `stop` (or a failed `run`), so a daemon killed in between still claims
//! what it may have started. Writes are atomic (temporary file, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the daemon owns an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Declared in the configuration: stopped when no longer declared.
    Config,
    /// Started through the API (`POST /v1/instances`): stopped only
    /// through the API.
    Api,
}

/// One owned instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    pub origin: Origin,
    /// [`crate::config::Declared::placement_key`] when it was run.
    pub placement_key: String,
    /// When the instance it ran started (milliseconds since the epoch, as
    /// control's metadata has it; a reload keeps it). `None` between the
    /// claim and the end of `run`. An instance of the same name with
    /// another start time was run by someone else after ours was stopped
    /// outside the daemon: not ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
}

/// An instance's start time as [`Owned::started_unix_ms`] records it.
pub fn started_ms(instance: &flowstate_control::Instance) -> u64 {
    instance
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    instances: BTreeMap<String, Owned>,
}

const VERSION: u32 = 1;

/// The ownership records, kept in memory and on disk.
#[derive(Debug)]
pub struct Ownership {
    path: PathBuf,
    instances: BTreeMap<String, Owned>,
}

impl Ownership {
    /// Reads `dir/owned.json`, creating `dir` (0700); none yet: owns nothing.
    pub fn open(dir: &Path) -> std::io::Result<Ownership> {
        Ownership::open_file(dir, "owned.json")
    }

    /// [`Ownership::open`] of another records file in `dir` (the chains'
    /// are `owned-chains.json`).
    pub fn open_file(dir: &Path, file: &str) -> std::io::Result<Ownership> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join(file);
        let instances = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: FileFormat = serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::other(format!(
                        "{}: {e}; move it away to start owning nothing",
                        path.display()
                    ))
                })?;
                if file.version != VERSION {
                    return Err(std::io::Error::other(format!(
                        "{}: format version {} (this flowstated reads {VERSION})",
                        path.display(),
                        file.version
                    )));
                }
                file.instances
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Ownership { path, instances })
    }

    pub fn get(&self, name: &str) -> Option<&Owned> {
        self.instances.get(name)
    }

    pub fn all(&self) -> &BTreeMap<String, Owned> {
        &self.instances
    }

    pub fn insert(&mut self, name: &str, owned: Owned) -> std::io::Result<()> {
        self.instances.insert(name.to_string(), owned);
        self.save()
    }

    pub fn remove(&mut self, name: &str) -> std::io::Result<()> {
        if self.instances.remove(name).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(&FileFormat {
            version: VERSION,
            instances: self.instances.clone(),
        })
        .map_err(std::io::Error::other)?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("flowstated-owned-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut owned = Ownership::open(&dir).unwrap();
        let record = Owned {
            origin: Origin::Config,
            placement_key: "k".into(),
            started_unix_ms: Some(1),
        };
        owned.insert("a", record.clone()).unwrap();
        owned
            .insert(
                "b",
                Owned {
                    origin: Origin::Api,
                    placement_key: "k".into(),
                    started_unix_ms: None,
                },
            )
            .unwrap();
        owned.remove("b").unwrap();
        let again = Ownership::open(&dir).unwrap();
        assert_eq!(again.all().len(), 1);
        assert_eq!(again.get("a"), Some(&record));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
