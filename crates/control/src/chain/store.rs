//! Where a chain lives and what it records: its pins, its metadata and
//! its journal.
//!
//! Pins (under `{pin root}-chains/NAME/`, a sibling of the instances'
//! root, so that `list` and `repair` of instances never mistake a chain
//! for an instance):
//! - `link`: the hook's link, running the current generation's head;
//! - `fn/FUNC/maps/MAP`: each function's maps, kept across generations
//!   (its flows, globals, counters and events);
//! - `gen/G/array`: generation G's program array (pinned: the kernel
//!   empties a program array when its last user reference goes);
//!   `gen/G/FUNC`: each function's program of that generation.
//!
//! Metadata `/run/flowstate/chains/NAME.json` ([`ChainMeta`]) and the
//! journal `/run/flowstate/chains/NAME.journal` ([`ChainJournal`]), both
//! written atomically (temporary file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{paths, AttachPoint, ControlError};

const FORMAT_VERSION: u32 = 1;

/// Root of every chain's pins.
pub(crate) fn chains_root() -> PathBuf {
    let root = paths::pin_root();
    let name = root
        .file_name()
        .map_or_else(|| "flowstate".into(), |n| n.to_string_lossy().into_owned());
    root.with_file_name(format!("{name}-chains"))
}

pub(crate) fn chain_dir(name: &str) -> PathBuf {
    chains_root().join(name)
}

pub(crate) fn link_pin(name: &str) -> PathBuf {
    chain_dir(name).join("link")
}

pub(crate) fn function_maps(chain: &str, function: &str) -> PathBuf {
    chain_dir(chain).join("fn").join(function).join("maps")
}

pub(crate) fn generation_dir(chain: &str, generation: u64) -> PathBuf {
    chain_dir(chain).join("gen").join(generation.to_string())
}

pub(crate) fn meta_dir() -> PathBuf {
    paths::meta_dir().join("chains")
}

pub(crate) fn meta_path(name: &str) -> PathBuf {
    meta_dir().join(format!("{name}.json"))
}

fn journal_path(name: &str) -> PathBuf {
    meta_dir().join(format!("{name}.journal"))
}

/// One function of a chain, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionMeta {
    /// Its name in the chain (`NAME/FUNC` elsewhere).
    pub name: String,
    pub source_path: PathBuf,
    /// The program text as loaded.
    pub source: String,
    pub source_hash: String,
    /// The program's symbol in its object.
    pub program_symbol: String,
    /// Its program in the current generation.
    pub prog_id: u32,
    /// Times it was replaced.
    pub replaced: u32,
}

/// A chain, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainMeta {
    pub version: u32,
    pub name: String,
    pub dev: String,
    pub ifindex: u32,
    pub attach: AttachPoint,
    /// `native`, `generic` or `tcx`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default)]
    pub netns_inode: u64,
    pub started_unix_ms: u64,
    /// The generation running (its programs and array under `gen/G`).
    pub generation: u64,
    /// In chain order: `pass` of one continues in the next.
    pub functions: Vec<FunctionMeta>,
}

impl ChainMeta {
    pub(crate) fn place(&self) -> crate::netns::Place {
        crate::netns::Place {
            name: self.netns.clone(),
            inode: self.netns_inode,
        }
    }

    /// Function `name` and its position.
    pub fn function(&self, name: &str) -> Option<(usize, &FunctionMeta)> {
        self.functions
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
    }

    pub fn load(name: &str) -> Result<ChainMeta, ControlError> {
        let path = meta_path(name);
        if !path.exists() {
            return Err(ControlError::NotRunning(name.to_string()));
        }
        let meta: ChainMeta = read_json(&path)?;
        if meta.version != FORMAT_VERSION {
            return Err(ControlError::Metadata {
                path,
                message: format!(
                    "chain format version {} (this flowstate reads {FORMAT_VERSION})",
                    meta.version
                ),
            });
        }
        Ok(meta)
    }

    pub(crate) fn save(&self) -> Result<(), ControlError> {
        write_json(&meta_path(&self.name), self)
    }

    pub(crate) fn new_version() -> u32 {
        FORMAT_VERSION
    }
}

/// Names of the chains with metadata.
pub(crate) fn chain_names() -> Vec<String> {
    names_with_suffix(".json")
}

/// Names of the chains with a journal (a change interrupted or running).
pub(crate) fn journal_names() -> Vec<String> {
    names_with_suffix(".journal")
}

fn names_with_suffix(suffix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(meta_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(suffix)?;
            paths::check_name(name).is_ok().then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
}

/// What a chain change was about to do (see the `chain` module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChainJournal {
    pub version: u32,
    pub name: String,
    pub pid: u32,
    /// `create`, `change` or `stop`.
    pub op: String,
    pub step: String,
    /// The chain before the change (`None` for `create`).
    pub old: Option<ChainMeta>,
    /// The chain after it (`None` for `stop`).
    pub new: Option<ChainMeta>,
}

impl ChainJournal {
    pub fn new(op: &str, old: Option<ChainMeta>, new: Option<ChainMeta>) -> ChainJournal {
        let name = old
            .as_ref()
            .or(new.as_ref())
            .map_or_else(String::new, |m| m.name.clone());
        ChainJournal {
            version: FORMAT_VERSION,
            name,
            pid: std::process::id(),
            op: op.to_string(),
            step: String::new(),
            old,
            new,
        }
    }

    /// Records that `step` is about to run, durably, then runs the test
    /// fault injection for `chain-OP:STEP` (see [`crate::journal`]).
    pub fn step(&mut self, step: &str) -> Result<(), ControlError> {
        self.step = step.to_string();
        write_json(&journal_path(&self.name), self)?;
        let point = format!("chain-{}:{step}", self.op);
        crate::journal::crash_point(&point);
        crate::journal::fail_point(&point)
    }

    pub fn load(name: &str) -> Result<Option<ChainJournal>, ControlError> {
        let path = journal_path(name);
        if !path.exists() {
            return Ok(None);
        }
        let journal: ChainJournal = read_json(&path)?;
        Ok(Some(journal))
    }

    pub fn finish(&self) -> Result<(), ControlError> {
        remove_file(&journal_path(&self.name))
    }
}

pub(crate) fn remove_file(path: &Path) -> Result<(), ControlError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ControlError::kernel(
            format!("removing {}", path.display()),
            e,
        )),
    }
}

pub(crate) fn remove_tree(path: &Path) -> Result<(), ControlError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ControlError::kernel(
            format!("removing {}", path.display()),
            e,
        )),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ControlError> {
    let error = |message: String| ControlError::Metadata {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(format!("unreadable ({e}); inspect it")))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ControlError> {
    let error = |e: String| ControlError::Metadata {
        path: path.to_path_buf(),
        message: e,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    crate::trust::trusted_dir(&paths::meta_dir(), true)?;
    crate::trust::trusted_dir(dir, true)?;
    let text = serde_json::to_vec_pretty(value).map_err(|e| error(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = crate::trust::create_private_file(&tmp).map_err(|e| error(e.to_string()))?;
        file.write_all(&text).map_err(|e| error(e.to_string()))?;
        file.sync_all().map_err(|e| error(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| error(e.to_string()))?;
    sync_parent(path);
    Ok(())
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl ChainJournal {
    /// Removes chain `name`'s journal (a failed step undone).
    pub fn finish_named(mut self, name: &str) -> Result<(), ControlError> {
        self.name = name.to_string();
        self.finish()
    }
}
