//! Operations routes: `/health`, `/ready`, `/metrics`, and the live debugger stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::SharedState;
use super::error::ApiError;
use crate::ingest::DebugEvent;
use crate::log::Health;

/// Liveness: the process answers.
pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: storage open and healthy, not shedding load.
pub async fn ready(State(state): State<SharedState>) -> Response {
    let reason = match state.ingestor.log().health() {
        Health::Degraded(reason) => Some(reason),
        Health::Ok if state.ingestor.recently_overloaded() => {
            Some("overloaded: the event log writer is behind".to_string())
        }
        Health::Ok if *state.shutdown.borrow() => Some("shutting down".to_string()),
        Health::Ok if state.unify.lag() > state.config.ready_max_lag_events => Some(format!(
            "profiles are {} events behind the log (bound: {})",
            state.unify.lag(),
            state.config.ready_max_lag_events
        )),
        Health::Ok => state.compute.serving().not_ready(
            state.ingestor.log().next_offset(),
            state.config.ready_max_lag_events,
        ),
    };
    match reason {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(json!({"status": "degraded", "reason": reason})),
        )
            .into_response(),
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<SharedState>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    state.ingestor.render_metrics(&mut out);
    state.ingestor.log().render_metrics(&mut out);
    state.latency.render(&mut out);
    state.unify.render_metrics(&mut out);
    state
        .compute
        .serving()
        .render_metrics(&mut out, state.ingestor.log().next_offset());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
pub struct DebuggerQuery {
    source: Option<String>,
}

/// `GET /api/v1/debugger/events[?source=NAME]`: ingested and rejected events as server-sent
/// events (`event: ingested|rejected`, JSON data), for tokens with `events:read`.
pub async fn debugger(
    State(state): State<SharedState>,
    Query(q): Query<DebuggerQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.require_scope(&headers, "events:read")?;
    let rx = state.ingestor.subscribe_debugger();
    let shutdown = state.shutdown.clone();
    let stream = stream::unfold(
        (rx, shutdown, q.source),
        |(mut rx, mut shutdown, filter)| async move {
            loop {
                let next: Result<Arc<DebugEvent>, RecvError> = tokio::select! {
                    r = rx.recv() => r,
                    _ = shutdown.wait_for(|s| *s) => return None,
                };
                match next {
                    Ok(ev) => {
                        if filter.as_ref().is_some_and(|f| *f != ev.source) {
                            continue;
                        }
                        let data = serde_json::to_string(&*ev).unwrap_or_default();
                        let event = Event::default().event(ev.kind).data(data);
                        return Some((Ok(event), (rx, shutdown, filter)));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let event = Event::default()
                            .event("lagged")
                            .data(json!({"skipped": n}).to_string());
                        return Some((Ok(event), (rx, shutdown, filter)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
