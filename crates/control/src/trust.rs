//! Whether a directory may hold flowstate's pins or metadata.
//!
//! bpffs is mounted mode 1777, so any user can create
//! `/sys/fs/bpf/flowstate` before root does; whoever owns that directory
//! can then rename root's instance directories, and root's commands would
//! act on whatever the paths lead to. So a root directory is used only
//! when:
//! - it is a real directory (not a symbolic link), owned by root (or by
//!   the user running flowstate), with no write permission for group or
//!   others;
//! - its parent cannot be used to rename it away: owned by root or by us,
//!   and either not writable by group and others or sticky (like
//!   `/sys/fs/bpf` and `/tmp`).
//!
//! flowstate creates its directories mode 0700 and its files 0600. Inside
//! a trusted root, nobody else can create, rename or replace anything.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use crate::ControlError;

/// Mode of the directories flowstate creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Mode of the files flowstate creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Checks `dir` (see the module doc), creating it mode 0700 first when it
/// does not exist and `create` is set. Without `create`, a missing
/// directory is fine (there is nothing in it to trust).
pub(crate) fn trusted_dir(dir: &Path, create: bool) -> Result<(), ControlError> {
    if let Some(parent) = dir.parent() {
        check_parent(dir, parent)?;
    }
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !create {
                return Ok(());
            }
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => {}
                // Someone made it meanwhile: judged below like any other.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ControlError::kernel(
                        format!("creating {}", dir.display()),
                        e,
                    ))
                }
            }
            check_own(dir)
        }
        Err(e) => Err(ControlError::kernel(
            format!("inspecting {}", dir.display()),
            e,
        )),
        Ok(_) => check_own(dir),
    }
}

/// Creates `dir` (inside a trusted root) mode 0700; an existing one must
/// pass the same checks.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ControlError> {
    trusted_dir(dir, true)
}

/// Creates (or truncates) `path` mode 0600 for writing; an old file of
/// another mode is replaced, so the result is always 0600.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

fn check_own(dir: &Path) -> Result<(), ControlError> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| ControlError::kernel(format!("inspecting {}", dir.display()), e))?;
    let untrusted = |why: String, fix: String| ControlError::Untrusted {
        path: dir.to_path_buf(),
        why,
        fix,
    };
    let remove = format!(
        "check what is in it, remove it (`rm -r {}`) and run the command again: flowstate \
         recreates it, owned by root with mode 0700",
        dir.display()
    );
    if meta.file_type().is_symlink() {
        return Err(untrusted("it is a symbolic link".into(), remove));
    }
    if !meta.is_dir() {
        return Err(untrusted("it is not a directory".into(), remove));
    }
    // Root's directories are safe for everyone; a non-root user's own are
    // safe for that user only.
    if meta.uid() != 0 && meta.uid() != effective_uid() {
        return Err(untrusted(
            format!(
                "it is owned by uid {}, not {}: another user created it and could rename or \
                 replace what flowstate puts in it",
                meta.uid(),
                user_text()
            ),
            remove,
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(
            format!(
                "its mode {:04o} lets other users write in it",
                meta.mode() & 0o7777
            ),
            format!(
                "check what is in it, then `chmod 0700 {}` (or remove it and let flowstate \
                 recreate it)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

fn check_parent(dir: &Path, parent: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::metadata(parent) {
        Ok(meta) => meta,
        // Reported by whatever tries to create or read `dir`.
        Err(_) => return Ok(()),
    };
    let owner_ok = meta.uid() == 0 || meta.uid() == effective_uid();
    let sticky = meta.mode() & 0o1000 != 0;
    let writable_by_others = meta.mode() & 0o022 != 0;
    if owner_ok && (sticky || !writable_by_others) {
        return Ok(());
    }
    Err(ControlError::Untrusted {
        path: dir.to_path_buf(),
        why: format!(
            "its parent {} (owner uid {}, mode {:04o}) lets other users rename it",
            parent.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ),
        fix: "use a root directory whose parent only root can write to (or is sticky, like \
              /sys/fs/bpf)"
            .into(),
    })
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn user_text() -> String {
    match effective_uid() {
        0 => "root".to_string(),
        uid => format!("uid {uid} (the user running flowstate)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fs-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn creates_a_private_directory_and_accepts_it_again() {
        let base = scratch("create");
        let dir = base.join("root");
        trusted_dir(&dir, true).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        trusted_dir(&dir, true).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn refuses_writable_directories_links_and_files() {
        let base = scratch("refuse");
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = trusted_dir(&open, true).unwrap_err().to_string();
        assert!(
            err.contains("lets other users write") && err.contains("chmod 0700"),
            "{err}"
        );

        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = trusted_dir(&link, true).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let file = base.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(trusted_dir(&file, true).is_err());

        // A missing directory is fine when not asked to create it.
        trusted_dir(&base.join("none"), false).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn refuses_a_directory_in_a_parent_others_can_write() {
        let base = scratch("parent");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = trusted_dir(&base.join("root"), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lets other users rename it"), "{err}");
        // Sticky, like /sys/fs/bpf: fine.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        trusted_dir(&base.join("root"), true).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
