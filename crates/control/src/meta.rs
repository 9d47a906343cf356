//! The metadata file of a running instance, `/run/flowstate/NAME.json`.
//!
//! It keeps what the pins cannot: the program text (so the maps can be
//! decoded after the source file changed), where it came from, and how it
//! was attached. Written atomically (temporary file, then rename), so a
//! reader never sees half a file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AttachPoint, ControlError};

/// Bumped when the format changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    pub name: String,
    pub dev: String,
    pub ifindex: u32,
    pub attach: AttachPoint,
    /// `native`, `generic`, `tcx` or `clsact`.
    pub mode: String,
    pub prog_id: u32,
    /// Milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    pub source_path: PathBuf,
    /// See [`source_hash`].
    pub source_hash: String,
    /// The program text as it was loaded.
    pub source: String,
    /// The program's symbol in the object (and its kernel name).
    pub program_symbol: String,
    /// Hot replacements so far.
    pub reloads: u32,
    /// The network namespace of the interface: its name under /run/netns,
    /// if it has one (see [`crate::netns`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// That namespace's inode; 0 in metadata written before namespaces
    /// were recorded (read as "wherever the reader is").
    #[serde(default)]
    pub netns_inode: u64,
    /// Run priority in the interface's libxdp dispatcher, when the
    /// program runs in one (`run --xdp-share`); `None`: attached alone
    /// through its own link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_priority: Option<u32>,
    /// TC through a clsact filter (no TCX link): the filter's name on the
    /// interface (see [`crate::tc`]). `None`: a pinned link (XDP, TCX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tc_filter: Option<crate::tc::TcFilter>,
    /// `run --share-table INSTANCE`: the instance whose flows map this one
    /// reads and writes (see [`crate::share_table`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_table: Option<String>,
}

impl Meta {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        dev: &str,
        ifindex: u32,
        attach: AttachPoint,
        mode: &str,
        prog_id: u32,
        started: SystemTime,
        source_path: &Path,
        source: &str,
        program_symbol: &str,
    ) -> Meta {
        let started_unix_ms = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Meta {
            version: FORMAT_VERSION,
            name: name.to_string(),
            dev: dev.to_string(),
            ifindex,
            attach,
            mode: mode.to_string(),
            prog_id,
            started_unix_ms,
            source_path: std::fs::canonicalize(source_path)
                .unwrap_or_else(|_| source_path.to_path_buf()),
            source_hash: source_hash(source),
            source: source.to_string(),
            program_symbol: program_symbol.to_string(),
            reloads: 0,
            netns: None,
            netns_inode: 0,
            xdp_priority: None,
            tc_filter: None,
            shared_table: None,
        }
    }

    /// Where the interface is.
    pub(crate) fn place(&self) -> crate::netns::Place {
        crate::netns::Place {
            name: self.netns.clone(),
            inode: self.netns_inode,
        }
    }

    pub fn started(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.started_unix_ms)
    }

    pub fn load(path: &Path) -> Result<Meta, ControlError> {
        let error = |message: String| ControlError::Metadata {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        if meta.version != FORMAT_VERSION {
            return Err(error(format!(
                "format version {} (this flowstate reads {FORMAT_VERSION})",
                meta.version
            )));
        }
        Ok(meta)
    }

    pub fn save(&self, path: &Path) -> Result<(), ControlError> {
        let error = |message: String| ControlError::Metadata {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            crate::trust::trusted_dir(dir, true)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| error(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        crate::trust::create_private_file(&tmp)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
            .map_err(|e| error(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            error(e.to_string())
        })
    }
}

/// First 12 hex digits of the SHA-256 of the program text: enough to tell
/// versions apart in `flowstate list`.
pub fn source_hash(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::XdpMode;

    #[test]
    fn hash_is_short_hex_and_tells_texts_apart() {
        // SHA-256("") starts e3b0c44298fc.
        assert_eq!(source_hash(""), "e3b0c44298fc");
        assert_ne!(source_hash("a"), source_hash("b"));
    }

    #[test]
    fn saves_and_loads_the_same_metadata() {
        let dir = std::env::temp_dir().join(format!("fs-ctl-meta-{}", std::process::id()));
        let path = dir.join("x.json");
        let meta = Meta::new(
            "x",
            "veth0",
            7,
            AttachPoint::Xdp {
                mode: XdpMode::Native,
            },
            "native",
            42,
            SystemTime::now(),
            Path::new("p.fsm"),
            "program p\n",
            "p",
        );
        meta.save(&path).unwrap();
        assert_eq!(Meta::load(&path).unwrap(), meta);
        std::fs::write(&path, "{not json").unwrap();
        assert!(Meta::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
