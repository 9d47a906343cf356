//! The per-instance lock: `flock(LOCK_EX)` on `/run/flowstate/NAME.lock`.
//!
//! Every command that changes an instance (run, stop, reload, edits,
//! repair) holds it for its whole duration; readers (list, flows, stats,
//! events) go without. A second command waits for the first, saying so on
//! stderr once ("waiting for another flowstate command on NAME (pid N)"),
//! and gives up after [`wait_limit`] (60 s, or `FLOWSTATE_LOCK_TIMEOUT`
//! seconds) with [`ControlError::Busy`].
//!
//! Invariants:
//! - The lock belongs to the open file description: the kernel releases it
//!   when the holder exits, however it exits (`kill -9` included), so a
//!   crashed command never leaves an instance locked.
//! - A holder may remove the lock file (`stop` does, so nothing stays
//!   behind in /run). A waiter that then gets the lock on the removed
//!   file notices (the path names another inode, or none) and locks the
//!   path again, so two commands never both believe they hold NAME.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{paths, ControlError};

/// Held while a command changes instance `name`; dropping it unlocks.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

/// How long a command waits for another one on the same instance.
pub fn wait_limit() -> Duration {
    std::env::var("FLOWSTATE_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(60), |s| {
            Duration::from_secs_f64(s.min(86_400.0))
        })
}

impl InstanceLock {
    /// Takes the lock of `name`, waiting up to [`wait_limit`].
    pub fn acquire(name: &str) -> Result<InstanceLock, ControlError> {
        Self::acquire_within(name, wait_limit())
    }

    /// Takes the lock only if it is free now.
    pub fn try_acquire(name: &str) -> Result<Option<InstanceLock>, ControlError> {
        match Self::acquire_within(name, Duration::ZERO) {
            Ok(lock) => Ok(Some(lock)),
            Err(ControlError::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn acquire_within(name: &str, limit: Duration) -> Result<InstanceLock, ControlError> {
        paths::check_name(name)?;
        let path = paths::lock_path(name);
        // Every command that changes an instance comes here first.
        paths::check_roots(false)?;
        crate::trust::trusted_dir(&paths::meta_dir(), true)?;
        let deadline = Instant::now() + limit;
        let mut told = false;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| ControlError::kernel(format!("opening {}", path.display()), e))?;
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                if same_file(&file, &path) {
                    let mut lock = InstanceLock { file, path };
                    lock.write_holder();
                    return Ok(lock);
                }
                // Removed by the previous holder: lock the path anew.
                continue;
            }
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            if Instant::now() >= deadline {
                return Err(ControlError::Busy {
                    name: name.to_string(),
                    holder: who,
                    waited: limit,
                });
            }
            if !told {
                eprintln!("waiting for another flowstate command on {name}{who}");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The holder's pid, for the message of a command that waits.
    fn write_holder(&mut self) {
        let _ = self.file.set_len(0);
        let _ = (&self.file).write_all(format!("{}\n", std::process::id()).as_bytes());
    }

    /// Removes the lock file while still holding the lock (see the module
    /// doc: waiters notice and lock the path again).
    pub(crate) fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        flock(&self.file, libc::LOCK_UN);
    }
}

fn flock(file: &File, op: i32) -> bool {
    // SAFETY: a valid open fd; flock has no memory effects.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

fn same_file(file: &File, path: &std::path::Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
