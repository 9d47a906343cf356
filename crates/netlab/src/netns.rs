//! One network namespace: `ip` commands against it, commands and Rust code
//! run inside it.

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

use crate::{NetlabError, Result};

/// Where `ip netns add` keeps the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Longest namespace name accepted here (a file name, kept readable).
pub const MAX_NETNS_NAME: usize = 64;

/// A named network namespace (as `ip netns` knows it). This is a handle
/// only: it does not delete the namespace on drop; [`crate::Topology`]
/// does that for the namespaces it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A handle on an existing namespace (e.g. one a [`crate::Topology`]
    /// created). Checks the name only.
    pub fn from_name(name: &str) -> Result<Netns> {
        check_name("namespace", name, MAX_NETNS_NAME)?;
        Ok(Netns {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle file, as `setns` and `ip netns exec` use it.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Whether the namespace exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Runs `ip -n NAME ARGS...`, returning its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A [`Command`] that runs `program` inside the namespace, for the
    /// caller to add arguments and spawn. The child enters the namespace
    /// itself (`setns` between fork and exec) and keeps the caller's
    /// mounts: unlike `ip netns exec`, which remounts `/sys` and so hides
    /// the bpffs at `/sys/fs/bpf` where flowstate keeps its pins.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let file = self.open()?;
        let mut command = Command::new(program);
        // SAFETY: the hook only makes the setns system call, which is
        // async-signal-safe; `file` lives in the closure, so the fd stays
        // open until the command is dropped (O_CLOEXEC closes it in the
        // child at exec).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `program ARGS...` inside the namespace (as [`Netns::command`]),
    /// returning its standard output; a non-zero exit is an error carrying
    /// its standard error.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut command = self.command(program)?;
        command.args(args);
        output_of(
            command,
            &format!("{program} {} (in {})", args.join(" "), self.name),
        )
    }

    /// Brings `dev` up.
    pub fn set_up(&self, dev: &str) -> Result<()> {
        check_name("interface", dev, MAX_IFNAME)?;
        self.ip(&["link", "set", "dev", dev, "up"]).map(drop)
    }

    /// Adds `address/prefix_len` to `dev`.
    pub fn add_address(&self, dev: &str, address: Ipv4Addr, prefix_len: u8) -> Result<()> {
        check_name("interface", dev, MAX_IFNAME)?;
        let cidr = format!("{address}/{prefix_len}");
        self.ip(&["addr", "add", &cidr, "dev", dev]).map(drop)
    }

    /// Adds a default route through `gateway`.
    pub fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.ip(&["route", "add", "default", "via", &gateway.to_string()])
            .map(drop)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// The interface index of `dev` inside the namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        check_name("interface", dev, MAX_IFNAME)?;
        // check_name ruled out NUL bytes.
        let name = std::ffi::CString::new(dev).expect("no NUL in a checked name");
        // Asked from inside: the index depends on the namespace.
        let index = self.run_in(|| {
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })?;
        if index == 0 {
            return Err(NetlabError::io(
                format!("no interface {dev} in namespace {}", self.name),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(index)
    }

    /// Runs `f` on a new thread that entered the namespace, and returns
    /// its result. Sockets `f` creates belong to the namespace for good, so
    /// `f` can return them for use from any thread. A panic in `f` is
    /// passed on to the caller.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                enter(&file, name)?;
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a background thread inside the namespace (a server,
    /// a traffic source). Entering the namespace is checked before this
    /// returns; `f`'s result or panic comes from joining the handle.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>> {
        let file = self.open()?;
        let name = self.name.clone();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                let entered = enter(&file, &name);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    // Never run `f` in the wrong namespace; the caller
                    // got the error and drops this handle.
                    std::process::abort();
                }
                f()
            })
            .map_err(|e| NetlabError::io("spawning a thread", e))?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetlabError::io(
                format!("entering namespace {}", self.name),
                std::io::Error::other("the thread ended before entering"),
            )),
        }
    }

    fn open(&self) -> Result<File> {
        File::open(self.path())
            .map_err(|e| NetlabError::io(format!("opening namespace {}", self.path().display()), e))
    }
}

/// Moves the calling thread into the namespace `file` refers to.
fn enter(file: &File, name: &str) -> Result<()> {
    // SAFETY: a valid namespace fd; only the calling thread changes
    // namespace (CLONE_NEWNET is allowed in a multithreaded process).
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret != 0 {
        return Err(NetlabError::io(
            format!("setns into namespace {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Deletes namespaces named `fs-<tag>-<pid>-...` whose process is gone: the
/// leftovers of a run that was killed with SIGKILL, when no handler could
/// clean up. Returns the names it deleted.
pub fn sweep_stale(tag: &str) -> Result<Vec<String>> {
    let prefix = format!("fs-{tag}-");
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetlabError::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut deleted = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, &prefix) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        run("ip", &["netns", "del", &name])?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// The pid in `PREFIX<pid>-...`, if `name` has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

pub(crate) fn check_name(what: &'static str, name: &str, max: usize) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= max
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(NetlabError::InvalidName {
            what,
            name: name.to_string(),
            max,
        })
    }
}

/// Runs a command to completion: its standard output, or an error with
/// its standard error.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    output_of(command, &format!("{program} {}", args.join(" ")))
}

fn output_of(mut command: Command, command_line: &str) -> Result<String> {
    let output = command
        .output()
        .map_err(|e| NetlabError::io(format!("running `{command_line}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetlabError::Command {
            command: command_line.to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_ip_would_misread_are_refused() {
        assert!(check_name("interface", "eth0", MAX_IFNAME).is_ok());
        assert!(check_name("interface", "to-client", MAX_IFNAME).is_ok());
        for bad in ["", "-n", "a b", "x/y", "sixteen-chars-xx", "é"] {
            assert!(
                check_name("interface", bad, MAX_IFNAME).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(Netns::from_name("../etc").is_err());
    }

    #[test]
    fn stale_names_give_their_owner_pid() {
        assert_eq!(owner_pid("fs-demo-123-client", "fs-demo-"), Some(123));
        assert_eq!(owner_pid("fs-demo-123", "fs-demo-"), None);
        assert_eq!(owner_pid("fs-other-123-x", "fs-demo-"), None);
        assert_eq!(owner_pid("fs-demo-abc-x", "fs-demo-"), None);
    }

    #[test]
    fn failing_commands_carry_their_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("oops"), "{text}");
        assert!(text.contains("sh -c"), "{text}");
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
    }
}
