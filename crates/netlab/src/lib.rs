//! flowstate-netlab: small private networks for the live demo and the
//! live-traffic tests, built from network namespaces and veth pairs.
//!
//! * [`Netns`] names one namespace (made and deleted as `ip netns` does,
//!   so both see the same namespaces): configure its links, addresses,
//!   routes and sysctls (rtnetlink and `/proc/sys`, no external command),
//!   ask which XDP programs a link has, run commands in it (keeping bpffs
//!   visible), and run Rust code in it on a thread that entered it with
//!   `setns` ([`Netns::run_in`]). A socket created
//!   there stays in that namespace wherever it is used afterwards, which is
//!   how the demo talks from "client" to "server" with real sockets.
//! * [`Topology`] is the guard that owns what it created: namespaces (and
//!   so their interfaces) and any extra cleanup action registered with it
//!   (e.g. stopping a pinned program). Everything is removed on drop, on
//!   panic (drop during unwinding), and on SIGINT/SIGTERM/SIGHUP: a signal
//!   handler runs every live topology's cleanup, then exits with 130.
//! * [`SwitchLab`] is the demo's network: client, switch and server.
//!
//! Names carry the process id and a counter, so tests in parallel (and
//! several processes) never collide. Traffic never leaves these
//! namespaces: no interface is created in, or moved to, the caller's
//! namespace.
//!
//! Needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN) and nothing
//! else: no iproute2, procps or bpftool. [`skip_reason`] says why it cannot
//! run, for tests that must skip; [`missing_tool`] for tests that check
//! interoperability with such tools.

mod cleanup;
mod lab;
mod netns;
mod rtnl;
mod traffic;

pub use cleanup::Topology;
pub use lab::SwitchLab;
pub use netns::{sweep_stale, Netns};
pub use rtnl::{XdpAttachMode, XdpAttachment};
pub use traffic::{send_udp, TcpServer, UdpSink};

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum NetlabError {
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A command or file could not be used at all.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A name that `ip` would refuse or misread.
    #[error("invalid {what} name {name:?}: use 1 to {max} characters from [A-Za-z0-9_.-]")]
    InvalidName {
        what: &'static str,
        name: String,
        max: usize,
    },
}

impl NetlabError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> NetlabError {
        NetlabError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = NetlabError> = std::result::Result<T, E>;

/// Why live networking cannot run here, if it cannot: not root, or no
/// network namespaces.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)".into());
    }
    if !std::path::Path::new("/proc/thread-self/ns/net").exists() {
        return Some("no network namespaces (/proc/thread-self/ns/net)".into());
    }
    None
}

/// Why `program` cannot be run, if it cannot (not on `PATH`, or it does
/// not start): for tests that check interoperability with it.
pub fn missing_tool(program: &str) -> Option<String> {
    match std::process::Command::new(program)
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(_) => None,
        Err(e) => Some(format!("no `{program}` command: {e}")),
    }
}
