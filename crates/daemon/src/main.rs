//! `flowstated`: see the library's doc and docs/daemon.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The flowstate daemon: runs the instances its configuration declares,
/// serves a REST/JSON API on a Unix socket, and Prometheus metrics.
#[derive(Parser)]
#[command(name = "flowstated", version)]
struct Args {
    /// The directory of `*.toml` files declaring instances.
    #[arg(long, default_value = "/etc/flowstate")]
    config_dir: PathBuf,
    /// The API's Unix socket (mode 0660).
    #[arg(long, default_value = "/run/flowstate/flowstated.sock")]
    socket: PathBuf,
    /// Where the daemon records which instances it started.
    #[arg(long, default_value = "/run/flowstate/daemon")]
    state_dir: PathBuf,
    /// Also serve `GET /metrics` over TCP here (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = flowstate_daemon::server::Options {
        config_dir: args.config_dir,
        socket: args.socket,
        state_dir: args.state_dir,
        metrics: args.metrics,
    };
    match flowstate_daemon::server::serve(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowstated: {e}");
            ExitCode::FAILURE
        }
    }
}
