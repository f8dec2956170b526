//! Management API of computed traits and audiences (read side) and the audience preview.
//!
//! Contract (Bearer token with `profiles:read`, errors `{"error":{"code","message"}}`):
//! - `GET /api/v1/computed-traits[/{key}]` and `GET /api/v1/audiences[/{key}]`: definitions
//!   with the configuration's field names (`key`, `name`, `expr`, `description`), plus
//!   `managed_by`, `status` (`computing 43%` / `ready`) and, for audiences, `size`.
//! - `GET /api/v1/audiences/{key}/members?limit=&next=`: members in profile order, each with
//!   its external ids; `cursor.next` continues.
//! - `GET /api/v1/audiences/{key}/size-history`: `{at, size}` at each change.
//! - `POST /api/v1/audiences/preview` with `{"expr", "sample"?}`: size and sample members of
//!   the expression over current data, nothing saved; an invalid expression is a 400
//!   `invalid_expression` whose message names the column.
//! - Work that waits for locks or reads the log runs on the blocking pool.
//! - The bodies are built by the `*_body` functions from the engines alone, which
//!   `junction audiences|traits` also call on a stopped data dir: one code path, the same
//!   JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use junction_core::compute::{DefKind, Definition};
use junction_core::identity::ProfileId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{SharedState, off_the_runtime};
use crate::compute::Compute;
use crate::config::Definitions;
use crate::unify::Unify;

pub const SCOPE: &str = "profiles:read";
/// Members per page by default and at most.
const MEMBERS_LIMIT: usize = 100;
pub const MAX_MEMBERS_LIMIT: usize = 1_000;
/// Sample members a preview returns by default and at most.
const SAMPLE: usize = 10;
const MAX_SAMPLE: usize = 100;

pub fn routes() -> axum::Router<SharedState> {
    axum::Router::new()
        .route(
            "/api/v1/computed-traits",
            get(|State(s), h| list(s, h, DefKind::ComputedTrait)),
        )
        .route(
            "/api/v1/computed-traits/{key}",
            get(|State(s), h, Path(k)| get_one(s, h, k, DefKind::ComputedTrait)),
        )
        .route(
            "/api/v1/audiences",
            get(|State(s), h| list(s, h, DefKind::Audience)),
        )
        .route("/api/v1/audiences/preview", post(preview))
        .route(
            "/api/v1/audiences/{key}",
            get(|State(s), h, Path(k)| get_one(s, h, k, DefKind::Audience)),
        )
        .route("/api/v1/audiences/{key}/members", get(members))
        .route("/api/v1/audiences/{key}/size-history", get(size_history))
}

// ---- The bodies: built from `&Compute`, `&Unify` and `&Definitions` only, so that the CLI
// renders the same bodies from a stopped data dir (`cli/compute.rs`). ----

/// A definition in the API's shape.
fn describe(compute: &Compute, definitions: &Definitions, index: usize, d: &Definition) -> Value {
    let mut out = json!({
        "key": &d.key,
        "expr": &d.expr,
        "managed_by": "config",
        "status": compute.status().describe(),
    });
    match d.kind {
        DefKind::ComputedTrait => {
            let description = definitions
                .computed_traits
                .iter()
                .find(|t| t.key == d.key)
                .map(|t| t.description.as_str());
            out["description"] = description.unwrap_or_default().into();
        }
        DefKind::Audience => {
            let audience = definitions.audiences.iter().find(|a| a.key == d.key);
            out["name"] = definitions.audience_name(&d.key).unwrap_or(&d.key).into();
            out["description"] = audience.map_or("", |a| a.description.as_str()).into();
            let size = compute
                .audiences()
                .into_iter()
                .find(|(i, _)| *i == index)
                .map_or(0, |(_, n)| n);
            out["size"] = size.into();
        }
    }
    out
}

/// The definition of `kind` named `key`, with its index.
fn find<'a>(
    compute: &'a Compute,
    kind: DefKind,
    key: &str,
) -> Result<(usize, &'a Definition), ApiError> {
    compute
        .catalog()
        .definitions()
        .iter()
        .enumerate()
        .find(|(_, d)| d.kind == kind && d.key == key)
        .ok_or_else(|| ApiError::not_found(format!("no {kind} with the key `{key}`")).api())
}

/// `GET /api/v1/computed-traits` or `/api/v1/audiences`: every definition of `kind`.
pub fn list_body(compute: &Compute, definitions: &Definitions, kind: DefKind) -> Value {
    let data: Vec<Value> = compute
        .catalog()
        .definitions()
        .iter()
        .enumerate()
        .filter(|(_, d)| d.kind == kind)
        .map(|(i, d)| describe(compute, definitions, i, d))
        .collect();
    json!({ "data": data })
}

/// `GET /api/v1/computed-traits/{key}` or `/api/v1/audiences/{key}`.
pub fn definition_body(
    compute: &Compute,
    definitions: &Definitions,
    kind: DefKind,
    key: &str,
) -> Result<Value, ApiError> {
    let (i, d) = find(compute, kind, key)?;
    Ok(describe(compute, definitions, i, d))
}

fn bad_param(name: &str, message: String) -> ApiError {
    ApiError::new(400, "invalid_request", format!("`{name}`: {message}")).api()
}

/// Profiles with their external ids, in the given order.
fn with_ids(unify: &Unify, ids: &[ProfileId]) -> Vec<Value> {
    let graph = unify.graph();
    ids.iter()
        .map(|&id| {
            let external: Vec<Value> = graph
                .profile(id)
                .map(|p| {
                    p.identifiers
                        .iter()
                        .map(|e| json!({"type": &*e.kind, "id": &*e.value}))
                        .collect()
                })
                .unwrap_or_default();
            json!({"profile_id": id.to_string(), "external_ids": external})
        })
        .collect()
}

/// The `limit` and `next` query parameters of the members route, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct MembersQuery {
    pub limit: Option<String>,
    pub next: Option<String>,
}

/// `GET /api/v1/audiences/{key}/members`: one page. Blocking (it waits for the graph's lock).
pub fn members_body(
    compute: &Compute,
    unify: &Unify,
    key: &str,
    q: &MembersQuery,
) -> Result<Value, ApiError> {
    let (i, _) = find(compute, DefKind::Audience, key)?;
    let limit = match q.limit.as_deref() {
        None => MEMBERS_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_MEMBERS_LIMIT).contains(n))
            .ok_or_else(|| {
                bad_param(
                    "limit",
                    format!("must be a number from 1 to {MAX_MEMBERS_LIMIT}"),
                )
            })?,
    };
    let after: ProfileId = match q.next.as_deref() {
        None | Some("") => 0,
        Some(n) => n.parse().map_err(|_| {
            bad_param(
                "next",
                "send `cursor.next` of the previous page as is".into(),
            )
        })?,
    };
    let (ids, more) = compute.members(i, after, limit);
    let next = if more {
        ids.last().map(ToString::to_string)
    } else {
        None
    };
    Ok(json!({
        "data": with_ids(unify, &ids),
        "cursor": {"has_more": more, "next": next.unwrap_or_default(), "limit": limit},
    }))
}

/// `GET /api/v1/audiences/{key}/size-history` (empty where no server ran the computation:
/// the history is kept in the running server's memory).
pub fn size_history_body(compute: &Compute, key: &str) -> Result<Value, ApiError> {
    let (i, _) = find(compute, DefKind::Audience, key)?;
    let data: Vec<Value> = compute
        .size_history(i)
        .into_iter()
        .map(|(at, size)| json!({"at": junction_core::timestamp::format(at), "size": size}))
        .collect();
    Ok(json!({ "data": data }))
}

/// The body of `POST /api/v1/audiences/preview`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    pub expr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
}

/// `POST /api/v1/audiences/preview`, `took_ms` included. Blocking (it may read the whole
/// log).
pub fn preview_body(
    compute: &Compute,
    unify: &Unify,
    log_dir: &std::path::Path,
    req: &PreviewRequest,
) -> Result<Value, ApiError> {
    let started = std::time::Instant::now();
    let sample = req.sample.unwrap_or(SAMPLE).min(MAX_SAMPLE);
    let found = match compute.preview(unify, log_dir, &req.expr, sample) {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            return Err(
                ApiError::new(500, "internal_error", format!("the preview failed: {e:#}")).api(),
            );
        }
        Err(e) => {
            return Err(ApiError::new(400, "invalid_expression", e.error.to_string()).api());
        }
    };
    Ok(json!({
        "size": found.size,
        "profiles": found.profiles,
        "sample": with_ids(unify, &found.sample),
        "computed_from": if found.from_state { "state" } else { "log" },
        "took_ms": started.elapsed().as_millis() as u64,
    }))
}

// ---- The handlers ----

/// `GET` of every definition of `kind`.
async fn list(
    state: SharedState,
    headers: HeaderMap,
    kind: DefKind,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    Ok(Json(list_body(
        &state.compute,
        &state.config.definitions,
        kind,
    )))
}

/// `GET` of the definition of `kind` named `key`.
async fn get_one(
    state: SharedState,
    headers: HeaderMap,
    key: String,
    kind: DefKind,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    let body = definition_body(&state.compute, &state.config.definitions, kind, &key)?;
    Ok(Json(body))
}

async fn members(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    let (compute, unify) = (Arc::clone(&state.compute), Arc::clone(&state.unify));
    let body = off_the_runtime(move || members_body(&compute, &unify, &key, &q)).await?;
    Ok(Json(body))
}

async fn size_history(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    Ok(Json(size_history_body(&state.compute, &key)?))
}

async fn preview(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    let req: PreviewRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request",
            format!("the body must be {{\"expr\": \"...\", \"sample\": n}}: {e}"),
        )
        .api()
    })?;
    let (compute, unify): (Arc<Compute>, Arc<Unify>) =
        (Arc::clone(&state.compute), Arc::clone(&state.unify));
    let log_dir = state.config.log.dir.clone();
    let body = off_the_runtime(move || preview_body(&compute, &unify, &log_dir, &req)).await?;
    Ok(Json(body))
}
