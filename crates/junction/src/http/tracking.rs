//! Tracking API handlers (SPEC §3.3): the Segment/RudderStack ingest routes and the settings
//! routes browser SDKs fetch at load.
//!
//! Contract: write key from Basic auth username, else the body's `writeKey`, else
//! `?writeKey=`; unknown → 401. The answer is `200 {"success":true}` (plus `rejected` for
//! per-event rejections) only once every accepted event is durable or a known duplicate.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use junction_core::event::{EventType, Rejected, RequestMeta, Shape, parse_request};
use serde_json::json;

use super::SharedState;
use super::body;
use super::error::ApiError;

type WriteKeyQuery = Query<HashMap<String, String>>;

/// `POST /v1/{kind}`: the Segment routes, browser short routes, batch, import and `/v1/m`.
pub async fn v1(
    State(state): State<SharedState>,
    Path(kind): Path<String>,
    Query(query): WriteKeyQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let (shape, browser) = match kind.as_str() {
        "batch" | "import" => (Shape::Batch, false),
        "b" => (Shape::Batch, true),
        "m" => return Ok(success()),
        k => match (EventType::parse(k), EventType::from_letter(k)) {
            (Some(t), _) => (Shape::Single(t), false),
            (None, Some(t)) => (Shape::Single(t), true),
            (None, None) => return Err(ApiError::not_found(format!("no tracking route /v1/{k}"))),
        },
    };
    ingest(&state, shape, browser, query.get("writeKey"), req).await
}

/// `POST /beacon/v1/batch?writeKey=…` (RudderStack JS beacon: no auth header).
pub async fn beacon(
    State(state): State<SharedState>,
    Query(query): WriteKeyQuery,
    req: Request,
) -> Result<Response, ApiError> {
    ingest(&state, Shape::Batch, true, query.get("writeKey"), req).await
}

/// `200 {"success":true}`, the answer every SDK expects.
fn success() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"success":true}"#,
    )
        .into_response()
}

/// The write key of `Authorization: Basic base64(key:)` (the colon is optional).
pub fn basic_username(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_string())
}

async fn ingest(
    state: &SharedState,
    shape: Shape,
    browser: bool,
    query_key: Option<&String>,
    req: Request,
) -> Result<Response, ApiError> {
    let received_at = state.clock.now_ms();
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied();
    let known = |k: &str| state.sources.get(k).cloned();
    let early_source = basic_username(headers)
        .and_then(|k| known(&k))
        .or_else(|| query_key.and_then(|k| known(k)));
    let limits = &state.config.limits;
    let (limit, limit_key) = match shape {
        Shape::Batch => (limits.max_batch_bytes, "max_batch_bytes"),
        Shape::Single(_) => (limits.max_event_bytes, "max_event_bytes"),
    };
    let bytes = match body::read(body, headers, limit, limit_key).await {
        Ok(b) => b,
        Err(e) if early_source.is_none() && e.status.as_u16() != 413 => {
            return Err(ApiError::unauthorized_write_key());
        }
        Err(e) => return Err(e),
    };
    let ip = peer.map(|ConnectInfo(a)| a.ip().to_string());
    let meta = RequestMeta {
        received_at_ms: received_at,
        client_ip: ip.as_deref(),
        browser,
    };
    let parsed = parse_request(&bytes, shape, &meta, limits);
    let source = match early_source {
        Some(s) => s,
        None => parsed
            .as_ref()
            .ok()
            .and_then(|p| p.write_key.as_deref())
            .and_then(known)
            .ok_or_else(ApiError::unauthorized_write_key)?,
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            let rejected = Rejected {
                index: 0,
                code: e.code,
                message: e.message.clone(),
            };
            state
                .ingestor
                .record_rejections(&source, std::slice::from_ref(&rejected), received_at);
            return Err(e.into());
        }
    };
    state
        .ingestor
        .record_rejections(&source, &parsed.rejected, received_at);
    if !state.discard && !parsed.events.is_empty() {
        state
            .ingestor
            .store(&source, parsed.events, received_at)
            .await?;
    }
    if parsed.rejected.is_empty() {
        return Ok(success());
    }
    Ok(Json(json!({"success": true, "rejected": parsed.rejected})).into_response())
}

/// `GET /v1/projects/{writeKey}/settings`: what analytics.js (analytics-next) loads from its
/// CDN. Points the SDK's Segment.io integration back at this server.
pub async fn settings(
    State(state): State<SharedState>,
    Path(write_key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.sources.contains_key(&write_key) {
        return Err(ApiError::not_found("unknown write key"));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8088");
    let protocol = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    Ok(Json(json!({
        "integrations": {"Segment.io": {"apiKey": write_key, "apiHost": format!("{host}/v1"), "protocol": protocol}},
        "plan": {"track": {"__default": {"enabled": true, "integrations": {}}}, "identify": {"__default": {"enabled": true}}, "group": {"__default": {"enabled": true}}},
        "metrics": {"sampleRate": 0},
    }))
    .into_response())
}

/// `GET /sourceConfig/?writeKey=…`: what the RudderStack JS SDK loads at start.
pub async fn source_config(
    State(state): State<SharedState>,
    Query(query): WriteKeyQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let source = basic_username(&headers)
        .and_then(|k| state.sources.get(&k).cloned())
        .or_else(|| {
            query
                .get("writeKey")
                .and_then(|k| state.sources.get(k).cloned())
        })
        .ok_or_else(ApiError::unauthorized_write_key)?;
    Ok(Json(json!({
        "isHosted": false,
        "source": {
            "id": source, "name": source, "workspaceId": state.config.workspace,
            "enabled": true, "config": {}, "destinations": []
        }
    }))
    .into_response())
}
