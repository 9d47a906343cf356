//! flowstate-daemon: `flowstated`, the single point of control of a
//! host's flowstate instances (issue 9).
//!
//! ```text
//!  config dir (*.toml) ─config─▶ Config ─apply─▶ control::run / reload / stop
//!                                                    │ owned.json: what the daemon started
//!  Unix socket ─api (axum)─▶ Daemon ─blocking threads─▶ flowstate_control
//!  GET /metrics (socket, optional TCP) ─metrics─▶ control::open(..).stats()
//! ```
//!
//! The daemon holds no state the kernel does not: instances stay pinned
//! (control's rule) and keep running when the daemon stops or is killed;
//! a restarted daemon reads its ownership records ([`owned`]) and adopts
//! what it started, without re-attaching anything. See docs/daemon.md.

pub mod api;
pub mod apply;
pub mod chains;
pub mod config;
pub mod daemon;
pub mod events;
pub mod launch;
pub mod metrics;
pub mod owned;
pub mod packet_out;
pub mod server;
pub mod slow_api;

pub use daemon::Daemon;
