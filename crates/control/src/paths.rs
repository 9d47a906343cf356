//! Where pins and metadata live, and instance names.
//!
//! Both roots can be moved with environment variables, so that tests (and
//! unusual setups) get directories of their own: `FLOWSTATE_PIN_ROOT`
//! (must be on bpffs) and `FLOWSTATE_RUN_DIR`. Wherever they are, they are
//! used only when [`crate::trust`] accepts them.

use std::path::{Path, PathBuf};

use crate::ControlError;

/// Environment variable that moves [`pin_root`].
pub const PIN_ROOT_VAR: &str = "FLOWSTATE_PIN_ROOT";

/// Environment variable that moves [`meta_dir`].
pub const RUN_DIR_VAR: &str = "FLOWSTATE_RUN_DIR";

/// Root of the pins: `/sys/fs/bpf/flowstate` (or `$FLOWSTATE_PIN_ROOT`).
pub fn pin_root() -> PathBuf {
    from_env(PIN_ROOT_VAR)
        .unwrap_or_else(|| Path::new(flowstate_runtime::BPFFS_ROOT).join("flowstate"))
}

/// Directory of the metadata files: `/run/flowstate` (or
/// `$FLOWSTATE_RUN_DIR`).
pub fn meta_dir() -> PathBuf {
    from_env(RUN_DIR_VAR).unwrap_or_else(|| PathBuf::from("/run/flowstate"))
}

/// An absolute path from `var`; relative or empty values are ignored (a
/// relative root would move with the working directory).
fn from_env(var: &str) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os(var)?);
    value.is_absolute().then_some(value)
}

/// Checks the pin root and the run directory (see [`crate::trust`]),
/// creating them mode 0700 when `create` is set.
pub(crate) fn check_roots(create: bool) -> Result<(), ControlError> {
    crate::trust::trusted_dir(&pin_root(), create)?;
    crate::trust::trusted_dir(&meta_dir(), create)
}

pub(crate) fn pin_dir(name: &str) -> PathBuf {
    pin_root().join(name)
}

pub(crate) fn meta_path(name: &str) -> PathBuf {
    meta_dir().join(format!("{name}.json"))
}

/// The instance lock file, `/run/flowstate/NAME.lock` (see [`crate::lock`]).
pub(crate) fn lock_path(name: &str) -> PathBuf {
    meta_dir().join(format!("{name}.lock"))
}

/// The journal of an interrupted change, `/run/flowstate/NAME.journal`
/// (see [`crate::journal`]).
pub(crate) fn journal_path(name: &str) -> PathBuf {
    meta_dir().join(format!("{name}.journal"))
}

/// Names that have a journal: changes interrupted (or in progress).
pub(crate) fn journal_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(meta_dir()) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".journal")?;
            check_name(name).is_ok().then(|| name.to_string())
        })
        .collect()
}

/// A pin name unique to one reload attempt: `next_<attempt>_<what>`.
pub(crate) fn staged_name(attempt: &str, what: &str) -> String {
    format!("next_{attempt}_{what}")
}

/// Names become file names on bpffs, which refuses dots: letters, digits,
/// `_` and `-` only.
pub(crate) fn check_name(name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ControlError::InvalidName(name.to_string()))
    }
}

/// Names that have a metadata file.
pub(crate) fn meta_names() -> Result<Vec<String>, ControlError> {
    let mut names = Vec::new();
    let dir = match std::fs::read_dir(meta_dir()) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ControlError::NeedsRoot)
        }
        Err(e) => {
            return Err(ControlError::kernel(
                format!("reading {}", meta_dir().display()),
                e,
            ))
        }
    };
    for entry in dir.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".json") {
            if check_name(name).is_ok() {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// Names that have a pin directory.
pub(crate) fn pin_names() -> Result<Vec<String>, ControlError> {
    let mut names = Vec::new();
    let dir = match std::fs::read_dir(pin_root()) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ControlError::NeedsRoot)
        }
        Err(e) => {
            return Err(ControlError::kernel(
                format!("reading {}", pin_root().display()),
                e,
            ))
        }
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_ok() && entry.path().is_dir() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes a directory tree when dropped, unless disarmed: how a failed
/// `run` takes back the pins it made.
pub(crate) struct RemoveOnDrop {
    path: PathBuf,
    armed: bool,
}

impl RemoveOnDrop {
    pub fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop { path, armed: true }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_file_names() {
        for good in ["portknock", "pk-1", "a_b-c", "X9"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a.b", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remove_on_drop_removes_unless_disarmed() {
        let base = std::env::temp_dir().join(format!("fs-ctl-guard-{}", std::process::id()));
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        drop(RemoveOnDrop::new(base.join("a")));
        assert!(!base.join("a").exists());
        std::fs::create_dir_all(base.join("c")).unwrap();
        let mut guard = RemoveOnDrop::new(base.join("c"));
        guard.disarm();
        drop(guard);
        assert!(base.join("c").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
