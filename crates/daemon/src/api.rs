//! The local API: REST/JSON, versioned under `/v1`, plus `/metrics`.
//! docs/daemon.md lists the endpoints, bodies and status codes.
//!
//! Every handler runs its control-crate call on a blocking thread (the
//! control crate is synchronous and may wait on an instance lock).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowstate_control::{ControlError, FlowRow, Stats};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::daemon::{Daemon, DaemonError, RunRequest};

/// The API's routes over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/instances", get(list).post(run))
        .route("/v1/instances/{name}", get(show).delete(stop))
        .route("/v1/instances/{name}/reload", post(reload))
        .route("/v1/instances/{name}/flows", get(flows).delete(flush))
        .route(
            "/v1/instances/{name}/flows/{key}",
            get(flow).patch(edit_flow).delete(delete_flow),
        )
        .route(
            "/v1/instances/{name}/globals",
            get(globals).patch(set_globals),
        )
        .route("/v1/instances/{name}/stats", get(stats))
        .route("/v1/instances/{name}/events", get(crate::slow_api::events))
        .route("/v1/packet-out", post(crate::slow_api::packet_out))
        .route("/v1/repair", post(crate::slow_api::repair))
        .route("/v1/chains", get(chains).post(create_chain))
        .route("/v1/chains/{name}", get(chain).delete(stop_chain))
        .route("/v1/chains/{name}/functions", post(add_function))
        .route(
            "/v1/chains/{name}/functions/{function}",
            axum::routing::delete(remove_function),
        )
        .route(
            "/v1/chains/{name}/functions/{function}/move",
            post(move_function),
        )
        .route(
            "/v1/chains/{name}/functions/{function}/replace",
            post(replace_function),
        )
        .route("/v1/chains/{name}/order", post(reorder))
        .route("/v1/config", get(config_status))
        .route("/v1/config/reload", post(config_reload))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(daemon)
}

/// Only `/metrics`, for the optional TCP listener.
pub fn metrics_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(daemon)
}

/// An error answer: `{"error": "...", "status": N}` (and, for a bad
/// configuration, `file`, `line`, `column`).
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": message.into(), "status": status.as_u16() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> ApiError {
        match e {
            DaemonError::Control(c) => ApiError::from(c),
            DaemonError::Config(c) => {
                let mut error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, c.rendered.clone());
                error.body["file"] = json!(c.file);
                error.body["line"] = json!(c.line);
                error.body["column"] = json!(c.column);
                error.body["message"] = json!(c.message);
                error
            }
            DaemonError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            e @ DaemonError::Ownership(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        use ControlError as E;
        let status = match &e {
            E::NotRunning(_) | E::NoSuchFlow(_) | E::NoSuchName { .. } => StatusCode::NOT_FOUND,
            E::NameTaken(_) => StatusCode::CONFLICT,
            E::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::InvalidName(_)
            | E::ReadSource { .. }
            | E::Program { .. }
            | E::Key(_)
            | E::NoSuchInterface(_)
            | E::NoSuchInterfaceIn { .. }
            | E::NoSuchNetns { .. }
            | E::NoSuchPort { .. }
            | E::NotFlowstate { .. }
            | E::Chain(_) => StatusCode::BAD_REQUEST,
            E::KeyLayoutChanged { .. } | E::Attach { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's worker failed: {e}"),
        )
    })?
}

/// A JSON body, or a 400 saying what is wrong with it.
pub(crate) fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(t)| t).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {}", rejection.body_text()),
        )
    })
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint: see docs/daemon.md (the API is under /v1)",
    )
}

async fn version() -> Json<Value> {
    Json(json!({ "api": "v1", "version": env!("CARGO_PKG_VERSION") }))
}

async fn list(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    let all = blocking(move || Ok(d.instances()?)).await?;
    Ok(Json(all).into_response())
}

async fn show(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Response> {
    let one = blocking(move || Ok(d.instance(&name)?)).await?;
    Ok(Json(one).into_response())
}

async fn run(
    State(d): State<Arc<Daemon>>,
    request: Result<Json<RunRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let instance = blocking(move || Ok(d.run(request)?)).await?;
    Ok((StatusCode::CREATED, Json(instance)).into_response())
}

async fn stop(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Response> {
    let shown = name.clone();
    blocking(move || Ok(d.stop(&name)?)).await?;
    Ok(Json(json!({ "stopped": shown })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    /// Default: the file the instance was run from.
    program: Option<PathBuf>,
    #[serde(default)]
    reset_state: bool,
}

async fn reload(
    State(_): State<Arc<Daemon>>,
    Path(name): Path<String>,
    request: Result<Json<ReloadRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let report = blocking(move || {
        let program = match request.program {
            Some(p) => p,
            None => flowstate_control::open(&name)?.meta().source_path.clone(),
        };
        Ok(flowstate_control::reload(
            &name,
            &program,
            request.reset_state,
        )?)
    })
    .await?;
    Ok(Json(json!({
        "old_prog_id": report.old_prog_id,
        "new_prog_id": report.new_prog_id,
        "flows": format!("{:?}", report.flows).to_lowercase(),
        "flows_carried": report.flows_carried,
        "flows_remapped": report.flows_remapped,
        "flows_lost": report.flows_lost,
        "counters_reset": report.counters_reset,
        "source_hash": report.source_hash,
    }))
    .into_response())
}

/// A flow as the API shows it.
#[derive(Serialize)]
struct FlowView {
    key: String,
    state: String,
    expired_to: Option<String>,
    registers: BTreeMap<String, i64>,
    age_ns: Option<u64>,
    idle_ns: Option<u64>,
}

impl From<FlowRow> for FlowView {
    fn from(r: FlowRow) -> FlowView {
        FlowView {
            key: r.key,
            state: r.state,
            expired_to: r.expired_to,
            registers: r.registers.into_iter().collect(),
            age_ns: r.age_ns,
            idle_ns: r.idle_ns,
        }
    }
}

#[derive(Deserialize)]
struct FlowsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn flows(Path(name): Path<String>, Query(q): Query<FlowsQuery>) -> ApiResult<Response> {
    let rows = blocking(move || {
        let handle = flowstate_control::open(&name)?;
        Ok(handle.flows(q.state.as_deref(), q.limit)?)
    })
    .await?;
    let rows: Vec<FlowView> = rows.into_iter().map(FlowView::from).collect();
    Ok(Json(rows).into_response())
}

async fn flush(Path(name): Path<String>) -> ApiResult<Response> {
    let removed = blocking(move || {
        let _lock = flowstate_control::lock(&name)?;
        Ok(flowstate_control::open(&name)?.flush()?)
    })
    .await?;
    Ok(Json(json!({ "removed": removed })).into_response())
}

async fn flow(Path((name, key)): Path<(String, String)>) -> ApiResult<Response> {
    let row = blocking(move || {
        let handle = flowstate_control::open(&name)?;
        handle
            .flow(&key)?
            .ok_or_else(|| ControlError::NoSuchFlow(key).into())
    })
    .await?;
    Ok(Json(FlowView::from(row)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowEdit {
    state: Option<String>,
    #[serde(default)]
    registers: BTreeMap<String, i64>,
}

async fn edit_flow(
    Path((name, key)): Path<(String, String)>,
    request: Result<Json<FlowEdit>, JsonRejection>,
) -> ApiResult<Response> {
    let edit = body(request)?;
    let row = blocking(move || {
        let _lock = flowstate_control::lock(&name)?;
        let handle = flowstate_control::open(&name)?;
        if let Some(state) = &edit.state {
            handle.set_state(&key, state)?;
        }
        for (register, value) in &edit.registers {
            handle.set_register(&key, register, *value)?;
        }
        handle
            .flow(&key)?
            .ok_or_else(|| ControlError::NoSuchFlow(key).into())
    })
    .await?;
    Ok(Json(FlowView::from(row)).into_response())
}

async fn delete_flow(Path((name, key)): Path<(String, String)>) -> ApiResult<Response> {
    let shown = key.clone();
    blocking(move || {
        let _lock = flowstate_control::lock(&name)?;
        Ok(flowstate_control::open(&name)?.delete_flow(&key)?)
    })
    .await?;
    Ok(Json(json!({ "deleted": shown })).into_response())
}

async fn globals(Path(name): Path<String>) -> ApiResult<Response> {
    let values = blocking(move || Ok(flowstate_control::open(&name)?.globals()?)).await?;
    Ok(Json(values.into_iter().collect::<BTreeMap<_, _>>()).into_response())
}

async fn set_globals(
    Path(name): Path<String>,
    request: Result<Json<BTreeMap<String, i64>>, JsonRejection>,
) -> ApiResult<Response> {
    let values = body(request)?;
    let now = blocking(move || {
        let _lock = flowstate_control::lock(&name)?;
        let handle = flowstate_control::open(&name)?;
        for (global, value) in &values {
            handle.set_global(global, *value)?;
        }
        Ok(handle.globals()?)
    })
    .await?;
    Ok(Json(now.into_iter().collect::<BTreeMap<_, _>>()).into_response())
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "rows": s.rows.iter().map(|r| json!({
            "line": r.line, "text": r.text, "packets": r.packets, "bytes": r.bytes,
        })).collect::<Vec<_>>(),
        "default": { "packets": s.default.0, "bytes": s.default.1 },
        "contention": s.contention,
        "table_full": s.table_full,
        "flows_by_state": s.flows_by_state.iter().map(|(state, n)| json!({
            "state": state, "flows": n,
        })).collect::<Vec<_>>(),
    })
}

async fn stats(Path(name): Path<String>) -> ApiResult<Response> {
    let s = blocking(move || Ok(flowstate_control::open(&name)?.stats()?)).await?;
    Ok(Json(stats_json(&s)).into_response())
}

async fn config_status(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    let dir = d.config_dir().to_path_buf();
    let last = match d.last_apply() {
        None => Value::Null,
        Some(Ok(report)) => json!(report),
        Some(Err(error)) => json!({ "error": error }),
    };
    Ok(Json(json!({ "config_dir": dir, "last_apply": last })).into_response())
}

async fn config_reload(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    let report = blocking(move || {
        let result = d.apply_config();
        crate::server::log_apply("API", &result);
        Ok(result?)
    })
    .await?;
    Ok(Json(report).into_response())
}

async fn metrics(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    let text = blocking(move || Ok(d.metrics())).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ---- chains (docs/chains.md) ----

async fn chains(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    let all = blocking(move || Ok(d.chains()?)).await?;
    Ok(Json(all).into_response())
}

async fn chain(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Response> {
    let one = blocking(move || Ok(d.chain(&name)?)).await?;
    Ok(Json(one).into_response())
}

async fn create_chain(
    State(d): State<Arc<Daemon>>,
    request: Result<Json<crate::chains::CreateRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let view = blocking(move || Ok(d.create_chain(&request)?)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn stop_chain(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> ApiResult<Response> {
    let shown = name.clone();
    blocking(move || Ok(d.stop_chain(&name)?)).await?;
    Ok(Json(json!({ "stopped": shown })).into_response())
}

async fn add_function(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    request: Result<Json<crate::chains::FunctionRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let view = blocking(move || {
        Ok(d.change_chain(|| flowstate_control::chain::add(&name, &request.spec(), request.at))?)
    })
    .await?;
    Ok(Json(view).into_response())
}

async fn remove_function(
    State(d): State<Arc<Daemon>>,
    Path((name, function)): Path<(String, String)>,
) -> ApiResult<Response> {
    let view =
        blocking(
            move || Ok(d.change_chain(|| flowstate_control::chain::remove(&name, &function))?),
        )
        .await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    to: usize,
}

async fn move_function(
    State(d): State<Arc<Daemon>>,
    Path((name, function)): Path<(String, String)>,
    request: Result<Json<MoveRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let view = blocking(move || {
        Ok(d.change_chain(|| {
            flowstate_control::chain::move_function(&name, &function, request.to)
        })?)
    })
    .await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceRequest {
    program: PathBuf,
}

async fn replace_function(
    State(d): State<Arc<Daemon>>,
    Path((name, function)): Path<(String, String)>,
    request: Result<Json<ReplaceRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let view = blocking(move || {
        Ok(d.change_chain(|| {
            flowstate_control::chain::replace(&name, &function, &request.program)
        })?)
    })
    .await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    functions: Vec<String>,
}

async fn reorder(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    request: Result<Json<OrderRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let view = blocking(move || {
        Ok(d.change_chain(|| flowstate_control::chain::reorder(&name, &request.functions))?)
    })
    .await?;
    Ok(Json(view).into_response())
}
