//! flowstate-netlab: small private networks for the live demo and the
//! live-traffic tests, built from network namespaces and veth pairs.
//!
//! * [`Netns`] names one namespace: configure it with `ip -n`, run
//!   commands in it (keeping bpffs visible), and run Rust code in it on a thread
//!   that entered it with `setns` ([`Netns::run_in`]). A socket created
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
//! Needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN) and `ip` from
//! iproute2; [`skip_reason`] says why not, for tests that must skip.

mod cleanup;
mod lab;
mod netns;
mod traffic;

pub use cleanup::Topology;
pub use lab::SwitchLab;
pub use netns::{sweep_stale, Netns};
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

/// Why live networking cannot run here, if it cannot: not root, or no `ip`.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)".into());
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        Ok(_) => Some("`ip -V` failed: iproute2 is not usable".into()),
        Err(e) => Some(format!("no `ip` command (iproute2): {e}")),
    }
}
