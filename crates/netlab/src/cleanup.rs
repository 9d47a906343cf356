//! The [`Topology`] guard and the process-wide cleanup registry that the
//! signal handler drains.
//!
//! Every action a topology will need to undo is registered in one global
//! list, tagged with the topology's id. Dropping the topology takes its own
//! actions out and runs them, newest first; SIGINT, SIGTERM or SIGHUP takes
//! all of them out, runs them and exits. Taking an action out of the list
//! before running it means it runs once, whichever comes first.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::netns::{check_name, MAX_IFNAME};
use crate::rtnl::Rtnl;
use crate::{NetlabError, Netns, Result};
use std::os::fd::AsRawFd;

type Action = Box<dyn FnOnce() + Send>;

struct Registered {
    topology: u64,
    what: String,
    action: Action,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static NEXT_TOPOLOGY: AtomicU64 = AtomicU64::new(0);
static HANDLER: OnceLock<Result<(), String>> = OnceLock::new();

/// Exit status after a signal-triggered cleanup (128 + SIGINT, as shells do).
const INTERRUPTED: i32 = 130;

fn registry() -> MutexGuard<'static, Vec<Registered>> {
    // An action that panicked must not stop the others from running.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs actions newest first; one that panics does not stop the rest.
fn run_actions(mut actions: Vec<Registered>) {
    while let Some(item) = actions.pop() {
        let what = item.what;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(item.action)).is_err() {
            eprintln!("netlab: cleanup step failed: {what}");
        }
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler once per process. A process
/// that set its own `ctrlc` handler already keeps it; this one then says
/// so, and cleanup still happens on drop.
fn install_handler() -> Result<(), String> {
    HANDLER
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                let actions = std::mem::take(&mut *registry());
                if !actions.is_empty() {
                    eprintln!("\ninterrupted: removing the namespaces and programs created");
                }
                run_actions(actions);
                std::process::exit(INTERRUPTED);
            })
            .map_err(|e| e.to_string())
        })
        .clone()
}

/// Owns the namespaces it creates and any cleanup action registered with
/// it; removes all of them, newest first, on drop, on panic, and on
/// SIGINT/SIGTERM/SIGHUP.
///
/// Namespace names are `fs-<tag>-<pid>-<n>-<role>`: unique per process
/// and per topology, and recognisable by [`crate::sweep_stale`].
pub struct Topology {
    id: u64,
    prefix: String,
    namespaces: Vec<Netns>,
    handler_warning: Option<String>,
}

impl Topology {
    /// An empty topology. `tag` (letters, digits, `_`, `-`) names the
    /// user, e.g. `demo` or the test's name.
    pub fn new(tag: &str) -> Result<Topology> {
        check_name("tag", tag, 24)?;
        let id = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let handler_warning = install_handler().err();
        Ok(Topology {
            id,
            prefix: format!("fs-{tag}-{}-{id}-", std::process::id()),
            namespaces: Vec::new(),
            handler_warning,
        })
    }

    /// Why Ctrl-C will not clean up, if it will not (another handler was
    /// installed first).
    pub fn handler_warning(&self) -> Option<&str> {
        self.handler_warning.as_deref()
    }

    /// The namespaces created so far, oldest first.
    pub fn namespaces(&self) -> &[Netns] {
        &self.namespaces
    }

    /// Creates namespace `fs-<tag>-<pid>-<n>-<role>` with its loopback up and IPv6
    /// off (so no router solicitations or MLD reports cross the programs
    /// under test), and registers its deletion.
    pub fn add_netns(&mut self, role: &str) -> Result<Netns> {
        check_name("role", role, 16)?;
        let netns = Netns::create(&format!("{}{role}", self.prefix))?;
        let handle = netns.clone();
        self.on_cleanup(format!("delete namespace {}", netns.name()), move || {
            if let Err(e) = handle.delete() {
                eprintln!("netlab: {e}");
            }
        });
        self.namespaces.push(netns.clone());
        netns.set_up("lo")?;
        netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(netns)
    }

    /// Creates a veth pair from `a_dev` in `a` to `b_dev` in `b` (created
    /// there directly: the names never appear in the caller's namespace)
    /// and brings both ends up. Deleting either namespace deletes the pair.
    pub fn add_veth(&mut self, a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
        check_name("interface", a_dev, MAX_IFNAME)?;
        check_name("interface", b_dev, MAX_IFNAME)?;
        let peer_netns = std::fs::File::open(b.path())
            .map_err(|e| NetlabError::io(format!("opening namespace {}", b.name()), e))?;
        let peer_fd = peer_netns.as_raw_fd();
        a.run_in(|| Rtnl::open().and_then(|mut rtnl| rtnl.add_veth(a_dev, b_dev, peer_fd)))?
            .map_err(|e| {
                NetlabError::io(
                    format!(
                        "creating veth {a_dev} in {} with peer {b_dev} in {}",
                        a.name(),
                        b.name()
                    ),
                    e,
                )
            })?;
        a.set_up(a_dev)?;
        b.set_up(b_dev)?;
        Ok(())
    }

    /// Shorthand: addresses `a_addr` and `b_addr` (same `prefix_len`) on a
    /// new veth pair between `a` and `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn link(
        &mut self,
        a: &Netns,
        a_dev: &str,
        a_addr: Ipv4Addr,
        b: &Netns,
        b_dev: &str,
        b_addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        self.add_veth(a, a_dev, b, b_dev)?;
        a.add_address(a_dev, a_addr, prefix_len)?;
        b.add_address(b_dev, b_addr, prefix_len)?;
        Ok(())
    }

    /// Registers `action` to run when the topology is torn down (before
    /// everything registered earlier, e.g. stop a program before its
    /// interface disappears). `what` is shown if the action panics.
    pub fn on_cleanup(&mut self, what: impl Into<String>, action: impl FnOnce() + Send + 'static) {
        registry().push(Registered {
            topology: self.id,
            what: what.into(),
            action: Box::new(action),
        });
    }

    /// Tears everything down now (what drop does).
    pub fn cleanup(&mut self) {
        let mine = {
            let mut all = registry();
            let (mine, others) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|r| r.topology == self.id);
            *all = others;
            mine
        };
        run_actions(mine);
        self.namespaces.clear();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("prefix", &self.prefix)
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn actions_run_once_newest_first_and_only_their_topologys() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut first = Topology::new("unit").unwrap();
        let mut second = Topology::new("unit").unwrap();
        let logger = |tag: &'static str| {
            let log = log.clone();
            move || log.lock().unwrap().push(tag)
        };
        first.on_cleanup("a1", logger("a1"));
        second.on_cleanup("b1", logger("b1"));
        first.on_cleanup("a2", logger("a2"));
        drop(first);
        assert_eq!(*log.lock().unwrap(), ["a2", "a1"]);
        second.cleanup();
        drop(second);
        assert_eq!(*log.lock().unwrap(), ["a2", "a1", "b1"]);
    }

    #[test]
    fn a_panicking_action_does_not_stop_the_others() {
        let ran = Arc::new(Mutex::new(false));
        let mut topology = Topology::new("unit").unwrap();
        let flag = ran.clone();
        topology.on_cleanup("set flag", move || *flag.lock().unwrap() = true);
        topology.on_cleanup("boom", || panic!("cleanup panics"));
        drop(topology);
        assert!(*ran.lock().unwrap());
    }

    #[test]
    fn topologies_get_distinct_prefixes_with_the_pid() {
        let a = Topology::new("unit").unwrap();
        let b = Topology::new("unit").unwrap();
        assert_ne!(a.prefix, b.prefix);
        assert!(a
            .prefix
            .starts_with(&format!("fs-unit-{}-", std::process::id())));
        assert!(Topology::new("bad tag").is_err());
    }
}
