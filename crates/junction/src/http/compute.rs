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
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use junction_core::compute::{DefKind, Definition};
use junction_core::identity::ProfileId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{SharedState, off_the_runtime};
use crate::compute::Compute;
use crate::compute::registry::{ChangeError, NewDefinition, Snapshot};
use crate::config::ManagedBy;
use crate::unify::Unify;

pub const SCOPE: &str = "profiles:read";
/// What creating, replacing and deleting definitions requires.
pub const WRITE_SCOPE: &str = "compute:write";
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
            get(|State(s), h| list(s, h, DefKind::ComputedTrait))
                .post(|State(s), h, b| create(s, h, b, DefKind::ComputedTrait)),
        )
        .route(
            "/api/v1/computed-traits/{key}",
            get(|State(s), h, Path(k)| get_one(s, h, k, DefKind::ComputedTrait))
                .put(|State(s), h, Path(k), b| replace(s, h, k, b, DefKind::ComputedTrait))
                .delete(|State(s), h, Path(k)| delete(s, h, k, DefKind::ComputedTrait)),
        )
        .route(
            "/api/v1/audiences",
            get(|State(s), h| list(s, h, DefKind::Audience))
                .post(|State(s), h, b| create(s, h, b, DefKind::Audience)),
        )
        .route("/api/v1/audiences/preview", post(preview))
        .route(
            "/api/v1/audiences/{key}",
            get(|State(s), h, Path(k)| get_one(s, h, k, DefKind::Audience))
                .put(|State(s), h, Path(k), b| replace(s, h, k, b, DefKind::Audience))
                .delete(|State(s), h, Path(k)| delete(s, h, k, DefKind::Audience)),
        )
        .route("/api/v1/audiences/{key}/members", get(members))
        .route("/api/v1/audiences/{key}/size-history", get(size_history))
}

// ---- The bodies: built from `&Compute`, `&Unify` and `&Definitions` only, so that the CLI
// renders the same bodies from a stopped data dir (`cli/compute.rs`). ----

/// A definition in the API's shape.
fn describe(snap: &Snapshot, d: &Definition) -> Value {
    let definitions = &snap.definitions;
    let managed_by = definitions
        .managed_by(d.kind, &d.key)
        .unwrap_or(ManagedBy::Config);
    let mut out = json!({
        "key": &d.key,
        "expr": &d.expr,
        "managed_by": managed_by.as_str(),
        "status": snap.status(d).describe(),
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
            let size = snap.engine_for(d).and_then(|(compute, index, _)| {
                compute
                    .audiences()
                    .into_iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, n)| n)
            });
            out["size"] = size.unwrap_or(0).into();
        }
    }
    out
}

/// The definition of `kind` named `key`.
fn find<'a>(snap: &'a Snapshot, kind: DefKind, key: &str) -> Result<&'a Definition, ApiError> {
    snap.defined()
        .iter()
        .find(|d| d.kind == kind && d.key == key)
        .ok_or_else(|| ApiError::not_found(format!("no {kind} with the key `{key}`")).api())
}

/// The engine computing the definition of `kind` named `key`, and its index there.
fn engine<'a>(
    snap: &'a Snapshot,
    kind: DefKind,
    key: &str,
) -> Result<(&'a Compute, usize), ApiError> {
    let d = find(snap, kind, key)?;
    let (compute, index, _) = snap.engine_for(d).ok_or_else(|| {
        ApiError::new(
            503,
            "computing",
            format!("the {kind} `{key}` is being set up; retry shortly"),
        )
        .retry_after(1)
        .api()
    })?;
    Ok((compute, index))
}

/// `GET /api/v1/computed-traits` or `/api/v1/audiences`: every definition of `kind`.
pub fn list_body(snap: &Snapshot, kind: DefKind) -> Value {
    let data: Vec<Value> = snap
        .defined()
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| describe(snap, d))
        .collect();
    json!({ "data": data })
}

/// `GET /api/v1/computed-traits/{key}` or `/api/v1/audiences/{key}`.
pub fn definition_body(snap: &Snapshot, kind: DefKind, key: &str) -> Result<Value, ApiError> {
    Ok(describe(snap, find(snap, kind, key)?))
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
    snap: &Snapshot,
    unify: &Unify,
    key: &str,
    q: &MembersQuery,
) -> Result<Value, ApiError> {
    let (compute, i) = engine(snap, DefKind::Audience, key)?;
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
pub fn size_history_body(snap: &Snapshot, key: &str) -> Result<Value, ApiError> {
    let (compute, i) = engine(snap, DefKind::Audience, key)?;
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
    Ok(Json(list_body(&state.compute.snapshot(), kind)))
}

/// `GET` of the definition of `kind` named `key`.
async fn get_one(
    state: SharedState,
    headers: HeaderMap,
    key: String,
    kind: DefKind,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    let body = definition_body(&state.compute.snapshot(), kind, &key)?;
    Ok(Json(body))
}

async fn members(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    let (snap, unify) = (state.compute.snapshot(), Arc::clone(&state.unify));
    let body = off_the_runtime(move || members_body(&snap, &unify, &key, &q)).await?;
    Ok(Json(body))
}

async fn size_history(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, SCOPE)?;
    Ok(Json(size_history_body(&state.compute.snapshot(), &key)?))
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
    let (compute, unify) = (state.compute.serving(), Arc::clone(&state.unify));
    let log_dir = state.config.log.dir.clone();
    let body = off_the_runtime(move || preview_body(&compute, &unify, &log_dir, &req)).await?;
    Ok(Json(body))
}

// ---- Changing definitions ----

/// The body of a create (`POST`) or a replace (`PUT`), in the configuration's field names.
/// The read-only fields of a `GET` body are accepted and ignored, so that a fetched
/// definition can be sent back changed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionRequest {
    pub key: Option<String>,
    pub name: Option<String>,
    pub expr: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "managed_by")]
    _managed_by: Option<Value>,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
    #[serde(default, rename = "size")]
    _size: Option<Value>,
}

impl DefinitionRequest {
    fn parse(body: &[u8], kind: DefKind) -> Result<DefinitionRequest, ApiError> {
        let req: DefinitionRequest = serde_json::from_slice(body).map_err(|e| {
            let fields = match kind {
                DefKind::ComputedTrait => "{\"key\", \"expr\", \"description\"}",
                DefKind::Audience => "{\"key\", \"name\", \"expr\", \"description\"}",
            };
            ApiError::new(
                400,
                "invalid_request",
                format!("the body must be {fields}: {e}"),
            )
            .api()
        })?;
        if kind == DefKind::ComputedTrait && req.name.is_some() {
            return Err(bad_param(
                "name",
                "a computed trait has no name (its key is its name)".into(),
            ));
        }
        Ok(req)
    }

    fn into_new(self, key: String) -> NewDefinition {
        NewDefinition {
            key,
            name: self.name,
            expr: self.expr,
            description: self.description,
        }
    }
}

fn change_error(e: ChangeError) -> ApiError {
    let (status, code) = match &e {
        ChangeError::NotFound(..) => (404, "not_found"),
        ChangeError::Exists(..) => (409, "conflict"),
        ChangeError::ManagedByConfig(..) => (409, "managed_by_config"),
        ChangeError::Invalid(d) => match d.error {
            junction_core::compute::DefinitionProblem::Expr(_) => (400, "invalid_expression"),
            junction_core::compute::DefinitionProblem::Key(_) => (400, "invalid_request"),
        },
        ChangeError::Storage(_) => (503, "storage_unavailable"),
    };
    ApiError::new(status, code, e.to_string()).api()
}

/// `POST /api/v1/computed-traits` or `/api/v1/audiences`: 201 with the new definition, which
/// computes over the history in the background.
async fn create(
    state: SharedState,
    headers: HeaderMap,
    body: axum::body::Bytes,
    kind: DefKind,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.require_scope(&headers, WRITE_SCOPE)?;
    let req = DefinitionRequest::parse(&body, kind)?;
    let key = req
        .key
        .clone()
        .ok_or_else(|| bad_param("key", "required when creating".into()))?;
    let registry = Arc::clone(&state.compute);
    let def = req.into_new(key.clone());
    let snap = off_the_runtime(move || registry.create(kind, def).map_err(change_error)).await?;
    Ok((
        StatusCode::CREATED,
        Json(definition_body(&snap, kind, &key)?),
    ))
}

/// `PUT /api/v1/computed-traits/{key}` or `/api/v1/audiences/{key}`: replaces an API
/// definition (a `key` in the body must be the path's).
async fn replace(
    state: SharedState,
    headers: HeaderMap,
    key: String,
    body: axum::body::Bytes,
    kind: DefKind,
) -> Result<Json<Value>, ApiError> {
    state.require_scope(&headers, WRITE_SCOPE)?;
    let req = DefinitionRequest::parse(&body, kind)?;
    if req.key.as_ref().is_some_and(|k| *k != key) {
        return Err(bad_param(
            "key",
            format!(
                "must be the path's key `{key}` (a key cannot change: create a new definition)"
            ),
        ));
    }
    let registry = Arc::clone(&state.compute);
    let def = req.into_new(key.clone());
    let snap = off_the_runtime(move || registry.replace(kind, def).map_err(change_error)).await?;
    Ok(Json(definition_body(&snap, kind, &key)?))
}

/// `DELETE /api/v1/computed-traits/{key}` or `/api/v1/audiences/{key}`: 204.
async fn delete(
    state: SharedState,
    headers: HeaderMap,
    key: String,
    kind: DefKind,
) -> Result<StatusCode, ApiError> {
    state.require_scope(&headers, WRITE_SCOPE)?;
    let registry = Arc::clone(&state.compute);
    off_the_runtime(move || registry.delete(kind, &key).map_err(change_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}
