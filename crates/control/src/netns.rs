//! Network namespaces: attaching to an interface inside one while the
//! pins and metadata stay in the host's bpffs and /run, checking such an
//! instance from anywhere, and not losing pins under `ip netns exec`.
//!
//! - A namespace is named as `ip netns` names it: a handle file
//!   `/run/netns/NAME`. `run --netns NAME` looks the interface up and
//!   attaches from a thread that entered that namespace (`setns`); the
//!   process itself, its mounts and so its pins stay where they are.
//! - The metadata records the namespace's name (when it has one) and its
//!   inode, so `list` checks the interface in the right namespace, and
//!   notices one deleted or recreated under the same name.
//! - `ip netns exec` runs its command in a new mount namespace with a
//!   fresh /sys, so bpffs is not mounted at /sys/fs/bpf there: pins made
//!   there vanish with the command, and the host's pins are invisible.
//!   [`use_host_mounts`] re-enters the mount namespace of a process that
//!   sees the host's bpffs (PID 1, or the nearest ancestor: the shell that
//!   ran `ip netns exec`), keeping the network namespace; when it cannot,
//!   the command is refused with a hint to use `--netns`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::ControlError;

/// Where `ip netns add` keeps the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// The network namespace an instance is attached in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    /// The name under [`NETNS_DIR`], if it has one.
    pub name: Option<String>,
    /// The namespace's inode (`ls -l /proc/self/ns/net`); 0 when unknown
    /// (metadata written before namespaces were recorded).
    pub inode: u64,
}

impl Place {
    /// How `list` and the error messages name it.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("network namespace {name}"),
            None => format!(
                "network namespace net:[{}] (no name under /run/netns)",
                self.inode
            ),
        }
    }
}

/// A namespace to enter, opened: the target of `run --netns NAME`.
pub(crate) struct Target {
    file: File,
    pub place: Place,
}

impl Target {
    /// Opens `/run/netns/NAME`.
    pub fn open(name: &str) -> Result<Target, ControlError> {
        check_name(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        let file = File::open(&path).map_err(|e| ControlError::NoSuchNetns {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        let inode = file
            .metadata()
            .map_err(|e| ControlError::kernel(format!("inspecting {}", path.display()), e))?
            .ino();
        Ok(Target {
            file,
            place: Place {
                name: Some(name.to_string()),
                inode,
            },
        })
    }

    /// Runs `f` on a thread inside the namespace (interface names and
    /// indexes resolve there; attaching happens there), returning its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, ControlError> {
        let fd = self.file.as_raw_fd();
        let name = self.place.describe();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: fd is an open namespace handle for the whole
                // scope; setns changes only this thread's namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(ControlError::kernel(
                        format!("entering {name}"),
                        io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// Names as `ip netns` takes them (a file name under /run/netns).
fn check_name(name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ControlError::NoSuchNetns {
            name: name.to_string(),
            message: "not a namespace name (letters, digits, '_', '-', '.')".into(),
        })
    }
}

/// The inode of the calling thread's network namespace.
fn current_inode() -> io::Result<u64> {
    std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino())
}

/// The calling thread's network namespace, named if a handle under
/// /run/netns leads to it.
pub(crate) fn current_place() -> Result<Place, ControlError> {
    let inode =
        current_inode().map_err(|e| ControlError::kernel("reading /proc/thread-self/ns/net", e))?;
    Ok(Place {
        name: name_of(inode),
        inode,
    })
}

fn name_of(inode: u64) -> Option<String> {
    let dir = std::fs::read_dir(NETNS_DIR).ok()?;
    let mut names: Vec<String> = dir
        .flatten()
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Runs `f` in the namespace of `place`: here when it is the caller's
/// own, else on a thread that entered it by name. `Err` says why it
/// cannot be reached from here.
pub(crate) fn run_at<T: Send>(place: &Place, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let here = current_inode().map_err(|e| format!("cannot read our own namespace: {e}"))?;
    if place.inode == 0 || place.inode == here {
        return Ok(f());
    }
    // By name first; else through any process living in it (the host's
    // namespace has no name, and a name can be deleted while processes
    // keep the namespace alive).
    let by_name = match &place.name {
        Some(name) => match Target::open(name) {
            Ok(target) if target.place.inode == place.inode => Ok(target),
            Ok(_) => Err(format!(
                "network namespace {name} was deleted and made again since the program \
                 started; the program is in the old one"
            )),
            Err(_) => Err(format!(
                "it is attached in network namespace {name}, which is no longer under \
                 /run/netns (deleted?)"
            )),
        },
        None => Err(format!(
            "it is attached in {}, which this command cannot enter",
            place.describe()
        )),
    };
    let target = match by_name {
        Ok(target) => target,
        Err(why) => Target::of_process_in(place).ok_or(why)?,
    };
    target.run(f).map_err(|e| e.to_string())
}

impl Target {
    /// A process's handle on the namespace of `place`, if any process
    /// that this one may inspect lives in it.
    fn of_process_in(place: &Place) -> Option<Target> {
        let proc = std::fs::read_dir("/proc").ok()?;
        for entry in proc.flatten() {
            let pid = entry.file_name();
            if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let handle = entry.path().join("ns/net");
            let Ok(file) = File::open(&handle) else {
                continue;
            };
            if file.metadata().is_ok_and(|m| m.ino() == place.inode) {
                return Some(Target {
                    file,
                    place: place.clone(),
                });
            }
        }
        None
    }
}

/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct of the right type; c_path
    // is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

/// What [`use_host_mounts`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounts {
    /// bpffs is mounted here (the usual case), or nowhere (it will be
    /// mounted on the host).
    Here,
    /// This process was in a private mount namespace without bpffs (as
    /// under `ip netns exec`) and moved into the one of process `pid`,
    /// which sees it; the network namespace is unchanged.
    Joined { pid: u32 },
}

/// Makes sure pins go to the host's bpffs (see the module doc). Call it
/// before the process starts any thread: a process can change its mount
/// namespace only while single-threaded.
pub fn use_host_mounts() -> Result<Mounts, ControlError> {
    let bpffs = Path::new(flowstate_runtime::BPFFS_ROOT);
    if is_bpffs(bpffs) {
        return Ok(Mounts::Here);
    }
    let Ok(ours) = std::fs::read_link("/proc/self/ns/mnt") else {
        return Ok(Mounts::Here);
    };
    let mut private = false;
    for pid in candidates() {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let Ok(theirs) = std::fs::read_link(proc.join("ns/mnt")) else {
            continue;
        };
        if theirs == ours {
            continue;
        }
        private = true;
        if !is_bpffs(
            &proc
                .join("root")
                .join(bpffs.strip_prefix("/").unwrap_or(bpffs)),
        ) {
            continue;
        }
        join_mount_namespace(&proc.join("ns/mnt"))?;
        return Ok(Mounts::Joined { pid });
    }
    // No process with other mounts to compare with (e.g. in a PID
    // namespace of our own): a named network namespace without bpffs is
    // what `ip netns exec` leaves.
    let in_named_netns = current_place().is_ok_and(|p| p.name.is_some());
    if private || in_named_netns {
        Err(ControlError::PrivateMounts)
    } else {
        // The host's mounts, with no bpffs yet: `run` mounts it.
        Ok(Mounts::Here)
    }
}

/// PID 1, then our ancestors, nearest first.
fn candidates() -> Vec<u32> {
    let mut out = vec![1];
    let mut pid = std::process::id();
    for _ in 0..32 {
        let Some(parent) = parent_of(pid) else { break };
        if parent <= 1 || out.contains(&parent) {
            break;
        }
        out.push(parent);
        pid = parent;
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Enters the mount namespace at `handle`, keeping the working directory
/// (by path: setns resets it to the new namespace's root).
fn join_mount_namespace(handle: &Path) -> Result<(), ControlError> {
    let error = |e: io::Error| ControlError::kernel(format!("entering {}", handle.display()), e);
    let cwd = std::env::current_dir().ok();
    let file = File::open(handle).map_err(error)?;
    // SAFETY: a valid namespace fd; the caller is single-threaded (see
    // use_host_mounts), which the kernel also checks (EINVAL otherwise).
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EINVAL) {
            ControlError::PrivateMounts
        } else {
            error(e)
        });
    }
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_namespace_is_reachable_here() {
        let place = current_place().unwrap();
        assert_ne!(place.inode, 0);
        assert_eq!(run_at(&place, || 7), Ok(7));
    }

    #[test]
    fn names_are_checked_before_any_path_is_built() {
        for bad in ["", "../x", "a/b", ".hidden", &"n".repeat(65)] {
            assert!(Target::open(bad).is_err(), "{bad:?}");
        }
        let err = Target::open("fs-no-such-netns-here")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ip netns"), "{err}");
    }

    #[test]
    fn an_unnamed_foreign_namespace_is_reported_not_entered() {
        let place = Place {
            name: None,
            inode: 1,
        };
        let err = run_at(&place, || ()).unwrap_err();
        assert!(err.contains("cannot enter"), "{err}");
    }
}
