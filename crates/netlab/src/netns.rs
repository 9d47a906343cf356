//! One network namespace: created and deleted as iproute2 does (a bind
//! mount on `/run/netns/NAME`), configured through rtnetlink and
//! `/proc/sys` from a thread inside it, commands and Rust code run inside
//! it. Nothing here runs an external program except [`Netns::ip`],
//! [`Netns::exec`] and [`Netns::command`], which run what the caller asks.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

use crate::rtnl::{Rtnl, XdpAttachment};
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

    /// Runs `ip -n NAME ARGS...` (iproute2 must be installed), returning
    /// its standard output: for tests of interoperability with iproute2.
    /// netlab itself never needs `ip`.
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

    /// Creates a namespace named `name` as `ip netns add` does (a new
    /// network namespace bind-mounted on `/run/netns/NAME`), so `ip netns`,
    /// `flowstate run --netns` and this crate all see it. No guard: the
    /// caller deletes it with [`Netns::delete`]; [`crate::Topology`] is
    /// the guard that does so on drop, panic and signals.
    pub fn create(name: &str) -> Result<Netns> {
        let netns = Netns::from_name(name)?;
        create_namespace(&netns.path())?;
        Ok(netns)
    }

    /// Deletes the namespace as `ip netns del` does: unmounts and removes
    /// its handle file. Its interfaces go when nothing else holds the
    /// namespace (a thread or process still inside it keeps it alive).
    pub fn delete(&self) -> Result<()> {
        delete_namespace(&self.path())
    }

    /// Brings `dev` up.
    pub fn set_up(&self, dev: &str) -> Result<()> {
        check_name("interface", dev, MAX_IFNAME)?;
        self.rtnl(&format!("setting {dev} up"), |rtnl| {
            rtnl.set_up(index_of(dev)?)
        })
    }

    /// Whether `dev` is administratively up.
    pub fn is_up(&self, dev: &str) -> Result<bool> {
        check_name("interface", dev, MAX_IFNAME)?;
        self.rtnl(&format!("reading the flags of {dev}"), |rtnl| {
            rtnl.is_up(index_of(dev)?)
        })
    }

    /// Adds `address/prefix_len` to `dev`.
    pub fn add_address(&self, dev: &str, address: Ipv4Addr, prefix_len: u8) -> Result<()> {
        check_name("interface", dev, MAX_IFNAME)?;
        if prefix_len > 32 {
            return Err(NetlabError::io(
                format!("adding {address}/{prefix_len} to {dev}"),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        self.rtnl(&format!("adding {address}/{prefix_len} to {dev}"), |rtnl| {
            rtnl.add_address(index_of(dev)?, address, prefix_len)
        })
    }

    /// Adds a default route through `gateway`.
    pub fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.rtnl(&format!("adding a default route via {gateway}"), |rtnl| {
            rtnl.add_default_route(gateway)
        })
    }

    /// Moves `dev` from this namespace into `to`, keeping its name.
    pub fn move_link(&self, dev: &str, to: &Netns) -> Result<()> {
        check_name("interface", dev, MAX_IFNAME)?;
        let target = to.open()?;
        let fd = target.as_raw_fd();
        self.rtnl(&format!("moving {dev} to namespace {}", to.name), |rtnl| {
            rtnl.move_link(index_of(dev)?, fd)
        })
    }

    /// The XDP programs attached to `dev` (kernel ids and modes), as the
    /// kernel reports them in the link's IFLA_XDP attribute; empty when
    /// none is attached.
    pub fn xdp_programs(&self, dev: &str) -> Result<Vec<XdpAttachment>> {
        check_name("interface", dev, MAX_IFNAME)?;
        self.rtnl(&format!("querying XDP on {dev}"), |rtnl| {
            rtnl.xdp_programs(index_of(dev)?)
        })
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace)
    /// by writing `/proc/sys/KEY` from a thread inside it, as `sysctl -w`
    /// does. `KEY` uses dots (or slashes) between its parts.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        let context = format!("setting {key}={value} in namespace {}", self.name);
        self.run_in(|| std::fs::write(&path, format!("{value}\n")))?
            .map_err(|e| NetlabError::io(context, e))
    }

    /// Runs `f` with a route-netlink socket of this namespace (on a thread
    /// inside it, where interface names resolve too).
    fn rtnl<T: Send>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Rtnl) -> std::io::Result<T> + Send,
    ) -> Result<T> {
        self.run_in(|| Rtnl::open().and_then(|mut rtnl| f(&mut rtnl)))?
            .map_err(|e| NetlabError::io(format!("{what} in namespace {}", self.name), e))
    }

    /// The interface index of `dev` inside the namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        check_name("interface", dev, MAX_IFNAME)?;
        // Asked from inside: the index depends on the namespace.
        self.run_in(|| index_of(dev))?
            .map_err(|e| NetlabError::io(format!("in namespace {}", self.name), e))
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
        Netns::from_name(&name)?.delete()?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// Creates the namespace handle `path` the way iproute2 does, so that
/// either side sees the other's namespaces: `/run/netns` made a shared
/// mount point (a bind mount onto itself the first time), so handles
/// mounted there propagate to other mount namespaces; then an empty file,
/// a new network namespace (unshared by a short-lived thread) and a bind
/// mount of that thread's namespace onto the file.
fn create_namespace(path: &Path) -> Result<()> {
    prepare_netns_dir()?;
    let context = || format!("creating namespace {}", path.display());
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(|e| NetlabError::io(context(), e))?;
    let target = c_path(path)?;
    // The namespace lives as long as the mount: the thread that made it
    // ends right after, taking no other reference with it.
    let mounted = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare affects the calling thread only for
        // CLONE_NEWNET; mount gets valid NUL-terminated strings. The
        // thread's own namespace is named through /proc/thread-self:
        // /proc/self would name the main thread's.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let source = c"/proc/thread-self/ns/net";
            if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")));
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(path);
        return Err(NetlabError::io(context(), e));
    }
    Ok(())
}

/// Makes `/run/netns` exist and be a shared mount point, as `ip netns
/// add` does. Serialised between processes of this crate with a lock on
/// the directory, so two first runs never stack two bind mounts.
fn prepare_netns_dir() -> Result<()> {
    let dir = Path::new(NETNS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| NetlabError::io(format!("creating {NETNS_DIR}"), e))?;
    let lock = File::open(dir).map_err(|e| NetlabError::io(format!("opening {NETNS_DIR}"), e))?;
    // SAFETY: a valid fd; the lock goes with the file at the end of scope.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(NetlabError::io(
            format!("locking {NETNS_DIR}"),
            std::io::Error::last_os_error(),
        ));
    }
    let target = c_path(dir)?;
    let make_shared = || {
        // SAFETY: valid NUL-terminated strings; a propagation change only.
        unsafe {
            libc::mount(
                c"".as_ptr(),
                target.as_ptr(),
                c"none".as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        }
    };
    if make_shared() == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EINVAL) {
        return Err(NetlabError::io(format!("making {NETNS_DIR} shared"), error));
    }
    // EINVAL: not a mount point yet. Bind it onto itself, then share it.
    // SAFETY: valid NUL-terminated strings.
    let bound = unsafe {
        libc::mount(
            target.as_ptr(),
            target.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if bound != 0 || make_shared() != 0 {
        return Err(NetlabError::io(
            format!("making {NETNS_DIR} a shared mount point"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Removes the namespace handle `path` as `ip netns del` does: a lazy
/// unmount (the namespace ends once nothing is inside it), then the file.
fn delete_namespace(path: &Path) -> Result<()> {
    let target = c_path(path)?;
    // SAFETY: a valid NUL-terminated string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let error = std::io::Error::last_os_error();
        // EINVAL: not mounted (a half-made handle); ENOENT: gone already.
        if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(NetlabError::io(
                format!("unmounting namespace {}", path.display()),
                error,
            ));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetlabError::io(
            format!("removing namespace {}", path.display()),
            e,
        )),
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        NetlabError::io(
            format!("path {}", path.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })
}

/// The index of interface `dev` in the calling thread's namespace.
fn index_of(dev: &str) -> std::io::Result<u32> {
    let name =
        CString::new(dev).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no interface {dev}"),
        )),
        index => Ok(index),
    }
}

/// `/proc/sys/...` for a sysctl key (`net.ipv4.ip_forward` or
/// `net/ipv4/ip_forward`), refusing keys that would leave `/proc/sys`.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    let valid = parts.iter().all(|part| {
        !part.is_empty()
            && *part != "."
            && *part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    });
    if !valid {
        return Err(NetlabError::InvalidName {
            what: "sysctl",
            name: key.to_string(),
            max: 255,
        });
    }
    Ok(parts
        .iter()
        .fold(PathBuf::from("/proc/sys"), |path, part| path.join(part)))
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
    fn sysctl_keys_map_into_proc_sys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        // Slashes let a part hold a dot (a VLAN interface's name).
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in [
            "",
            "net..ipv4",
            "../etc/passwd",
            "net/../../etc",
            "net.ipv4 x",
            "/net",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad:?} accepted");
        }
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
