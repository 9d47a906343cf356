//! The slow path's routes: the events stream, packet-out, and repair.
//! docs/daemon.md describes them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::api::{blocking, body, ApiError, ApiResult};
use crate::events::{Next, Subscription, DEFAULT_BUFFER, MAX_BUFFER};
use crate::packet_out::{self, PacketOut};
use crate::Daemon;

/// A line with no event, sent when the stream was quiet this long: it
/// lets a client tell a live daemon from a dead one, and lets the daemon
/// notice a client that went away (the write fails).
const KEEPALIVE: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
pub struct EventsQuery {
    /// The subscriber's queue, in events (default 1024).
    buffer: Option<usize>,
}

/// `GET /v1/instances/{name}/events`: newline-delimited JSON, one event
/// per line, until the client goes away or the instance stops.
pub async fn events(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let buffer = q.buffer.unwrap_or(DEFAULT_BUFFER);
    if buffer == 0 || buffer > MAX_BUFFER {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("buffer must be between 1 and {MAX_BUFFER} events"),
        ));
    }
    let subscription = blocking(move || {
        let owned = d.owns(&name);
        Ok(d.events.subscribe(&name, buffer, owned)?)
    })
    .await?;
    let stream = futures_util::stream::unfold(Some(subscription), next_line);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The stream's next chunk; `None` ends it (after the closing line).
async fn next_line(
    state: Option<Subscription>,
) -> Option<(
    Result<Bytes, std::convert::Infallible>,
    Option<Subscription>,
)> {
    let subscription = state?;
    loop {
        match subscription.subscriber.next() {
            Next::Line(line) => return Some((Ok(line), Some(subscription))),
            Next::Closed(line) => return Some((Ok(line), None)),
            Next::Empty => {}
        }
        tokio::select! {
            _ = subscription.subscriber.wait() => {}
            _ = tokio::time::sleep(KEEPALIVE) => {
                return Some((Ok(Bytes::from_static(b"\n")), Some(subscription)));
            }
        }
    }
}

/// `POST /v1/packet-out`.
pub async fn packet_out(request: Result<Json<PacketOut>, JsonRejection>) -> ApiResult<Response> {
    let request = body(request)?;
    let sent = blocking(move || {
        packet_out::send(&request).map_err(|e| ApiError::new(e.status(), e.to_string()))
    })
    .await?;
    Ok(Json(sent).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    /// One instance; every instance when absent.
    name: Option<String>,
}

/// `POST /v1/repair`: finishes or undoes what killed commands left half
/// done, as `flowstate repair` does.
pub async fn repair(request: Result<Json<RepairRequest>, JsonRejection>) -> ApiResult<Response> {
    // An empty body means every instance.
    let request = request.map(|Json(r)| r).unwrap_or_default();
    let repaired = blocking(move || {
        Ok(match &request.name {
            Some(name) => flowstate_control::repair(name)?.into_iter().collect(),
            None => flowstate_control::repair_all()?,
        })
    })
    .await?;
    let repaired: Vec<_> = repaired
        .iter()
        .map(|r| {
            json!({
                "instance": r.name,
                "op": r.op,
                "step": r.step,
                "pid": r.pid,
                "outcome": match r.outcome {
                    flowstate_control::Outcome::Finished => "finished",
                    flowstate_control::Outcome::Undone => "undone",
                },
                "message": r.to_string(),
            })
        })
        .collect();
    Ok(Json(json!({ "repaired": repaired })).into_response())
}
