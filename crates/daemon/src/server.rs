//! The process: initial apply, the Unix socket, the optional metrics TCP
//! listener, SIGHUP (apply the configuration again) and SIGTERM/SIGINT
//! (stop serving; the instances keep running).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::apply::{ApplyReport, Outcome};
use crate::Daemon;

/// Mode of the API socket: root and the socket's group.
pub const SOCKET_MODE: u32 = 0o660;

pub struct Options {
    pub config_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
}

/// Runs the daemon until SIGTERM or SIGINT. Must be called while the
/// process has one thread (see `use_host_mounts`).
pub fn serve(options: Options) -> Result<(), String> {
    flowstate_control::netns::use_host_mounts().map_err(|e| e.to_string())?;
    let daemon = Arc::new(
        Daemon::open(&options.config_dir, &options.state_dir).map_err(|e| {
            format!(
                "cannot open the ownership records in {}: {e}",
                options.state_dir.display()
            )
        })?,
    );
    // A bad configuration at start is reported and the daemon serves
    // anyway: what it owns keeps running, and a fixed file applies on
    // SIGHUP or `POST /v1/config/reload`.
    log_apply("start", &daemon.apply_config());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve_async(daemon, options))
}

async fn serve_async(daemon: Arc<Daemon>, options: Options) -> Result<(), String> {
    let listener = bind_socket(&options.socket)?;
    eprintln!(
        "flowstated: serving the API on {} (config {})",
        options.socket.display(),
        options.config_dir.display()
    );
    if let Some(addr) = options.metrics {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
        eprintln!("flowstated: serving /metrics on http://{addr}");
        let router = crate::api::metrics_router(daemon.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, router).await {
                eprintln!("flowstated: the metrics listener failed: {e}");
            }
        });
    }
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot catch SIGHUP: {e}"))?;
    let on_hangup = daemon.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let d = on_hangup.clone();
            let result = tokio::task::spawn_blocking(move || d.apply_config()).await;
            match result {
                Ok(result) => log_apply("SIGHUP", &result),
                Err(e) => eprintln!("flowstated: SIGHUP: the apply failed: {e}"),
            }
        }
    });
    // The events readers follow the instances: started, stopped, reloaded
    // (by the daemon or anyone else).
    let on_tick = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let d = on_tick.clone();
            let _ = tokio::task::spawn_blocking(move || d.sync_events()).await;
        }
    });
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let served = axum::serve(listener, crate::api::router(daemon))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&options.socket);
    eprintln!("flowstated: stopped serving; the instances keep running");
    served.map_err(|e| format!("serving the API: {e}"))
}

/// Binds the socket at `path` (mode 0660), replacing a stale one left by
/// a killed daemon, but never one another daemon still answers on.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another flowstated is serving on {}: stop it first, or give --socket",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// One line per instance the apply changed (or could not), on stderr
/// (the journal, under systemd).
pub fn log_apply(when: &str, result: &Result<ApplyReport, crate::daemon::DaemonError>) {
    match result {
        Err(e) => eprintln!("flowstated: {when}: the configuration was not applied:\n{e}"),
        Ok(report) => {
            for change in &report.changes {
                if change.outcome == Outcome::Unchanged && when != "start" {
                    continue;
                }
                let what = match &change.outcome {
                    Outcome::Unchanged => "unchanged".to_string(),
                    Outcome::Started { prog_id } => format!("started (program {prog_id})"),
                    Outcome::Reloaded { prog_id, flows, .. } => {
                        format!("reloaded (program {prog_id}, flows {flows})")
                    }
                    Outcome::Restarted { why, prog_id } => {
                        format!("restarted (program {prog_id}): {why}")
                    }
                    Outcome::Changed { what, prog_id } => {
                        format!("changed (head program {prog_id}): {what}")
                    }
                    Outcome::Stopped => "stopped".to_string(),
                    Outcome::LeftAlone { why } => format!("left alone: {why}"),
                    Outcome::Failed { error } => format!("FAILED: {error}"),
                };
                eprintln!("flowstated: {when}: {}: {what}", change.instance);
            }
        }
    }
}
