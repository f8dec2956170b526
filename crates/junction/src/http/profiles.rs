//! The Profile API (SPEC §3.4, `reference/segment-compat.md` §5) and the merge history route.
//!
//! Routes:
//! - `GET /v1/spaces/{workspace}/collections/{users|accounts}/profiles/{id_type}:{value}/{traits|external_ids|events|metadata|links}`:
//!   HTTP Basic with the token secret as username and an empty password (or
//!   `Authorization: Bearer`), scope `profiles:read` (or `admin`). `{id_type}:{value}` is
//!   split on the first `:` after percent-decoding (`%2B` is `+`; a literal `+` stays `+`)
//!   and resolved through the identity graph, so every identifier of a merged profile
//!   gives the same profile. Accounts are looked up by `group_id`.
//! - `GET /api/v1/profiles/{id_type}:{value}/merges` (Bearer, `profiles:read`): the merges
//!   that formed the profile, oldest first ([`view::merges`]).
//!
//! Contract: errors are `{"error":{"code","message"}}` (401 `authentication_error`, 403
//! `forbidden`, 404 `not_found` — an unknown profile is "Profile was not found." —, 400
//! `validation_error`/`invalid_request_error` naming the parameter, 429
//! `rate_limit_error` with `Retry-After`). Every response of these routes carries a
//! `Request-Id` header; there is no CORS. Each token may make `[profiles]
//! rate_limit_per_sec` (default 100) requests per second (a token bucket with one second of burst). Reads take the graph's
//! read lock only to copy what they render; stored events are read on the blocking pool.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query as QueryString, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use junction_core::identity::EventRef;
use serde_json::Value;

use super::error::ApiError;
use super::off_the_runtime;
use super::{AppState, SharedState, constant_time_eq};
use crate::compute::registry::Snapshot;
use crate::config::Token;
use crate::unify::Unify;
use crate::unify::view::{self, Collection, Owner, ParamError, Query, Resource};
use junction_core::compute::DefKind;

/// Requests per second per token (Segment's Profile API allows 100 per space).
/// The scope the Profile API requires (`admin` implies it).
pub const SCOPE: &str = "profiles:read";

const SPACES: &str = "/v1/spaces";

pub static REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// The Profile API routes with their `Request-Id` layer (the rate limiter is in the state).
pub fn routes() -> Router<SharedState> {
    let spaces = Router::new()
        .route(
            "/{workspace}/collections/{collection}/profiles/{id}/{resource}",
            get(resource).fallback(method_not_allowed),
        )
        .fallback(no_such_resource);
    Router::new()
        .nest(SPACES, spaces)
        .route(
            "/api/v1/profiles/{id}/merges",
            get(merges).fallback(method_not_allowed),
        )
        .layer(middleware::from_fn(request_id))
}

async fn request_id(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    resp
}

/// Inside the `Request-Id` layer (the router-wide 405 fallback would answer outside it).
async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed().api()
}

async fn no_such_resource() -> ApiError {
    ApiError::not_found(
        "no such route: use /v1/spaces/{space}/collections/{users|accounts}/profiles/{id_type}:{value}/{traits|external_ids|events|metadata|links}",
    )
    .api()
}

pub fn profile_not_found() -> ApiError {
    ApiError::not_found("Profile was not found.").api()
}

fn param_error(e: ParamError) -> ApiError {
    ApiError::new(400, e.code, e.message).api()
}

fn authentication_error() -> ApiError {
    ApiError::new(
        401,
        "authentication_error",
        "missing or unknown token: send it as the Basic auth username with an empty password, or as `Authorization: Bearer <token>`",
    )
    .api()
}

fn rate_limited(token: &Token, per_sec: u32, retry_after: u64) -> ApiError {
    ApiError::new(
        429,
        "rate_limit_error",
        format!(
            "token `{}` exceeded {per_sec} requests per second; retry after {retry_after} s",
            token.name
        ),
    )
    .api()
    .retry_after(retry_after)
}

/// The secret from `Authorization: Basic` (the username) or `Authorization: Bearer`.
fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        Some(user.to_string())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_string())
    } else {
        None
    }
}

/// The token presented with Basic or Bearer auth, if it carries the Profile API scope.
fn authenticate<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a Token, ApiError> {
    let secret = presented_secret(headers).ok_or_else(authentication_error)?;
    let token = state
        .config
        .tokens
        .iter()
        .find(|t| constant_time_eq(t.secret.as_bytes(), secret.as_bytes()))
        .ok_or_else(authentication_error)?;
    if token.allows(SCOPE) {
        Ok(token)
    } else {
        Err(ApiError::forbidden(SCOPE))
    }
}

fn limit(state: &AppState, token: &Token) -> Result<(), ApiError> {
    state
        .profile_limiter
        .check(&token.name)
        .map_err(|secs| rate_limited(token, state.config.profile_rate_limit, secs))
}

/// One Profile API read, validated.
#[derive(Clone, Debug)]
pub struct ProfileRequest {
    pub collection: Collection,
    pub id_type: String,
    pub id_value: String,
    pub query: Query,
    /// The request's path and query, echoed in `cursor.url`.
    pub url: String,
}

impl ProfileRequest {
    /// Validates the path's `{id}` and the query string of `resource`.
    pub fn parse(
        collection: Collection,
        id: &str,
        resource: Resource,
        pairs: &[(String, String)],
        url: String,
    ) -> Result<ProfileRequest, ApiError> {
        let (id_type, id_value) = view::parse_id(id, collection).map_err(param_error)?;
        let query = Query::parse(resource, pairs).map_err(param_error)?;
        Ok(ProfileRequest {
            collection,
            id_type,
            id_value,
            query,
            url,
        })
    }
}

/// Events to read once the graph's lock is released.
struct EventsWork {
    candidates: Vec<EventRef>,
    query: view::EventsQuery,
    group_id: Option<String>,
    rules: junction_core::identity::Rules,
}

/// What is left to do once the graph's lock is released.
enum Rendered {
    Done(Value),
    Events(Box<EventsWork>),
}

/// A profile's computed traits and audiences (`results` from the serving engine's
/// [`Compute::results`]), those still defined only (a deleted one is gone at once, before a
/// new engine takes over).
fn computed_traits<'a>(
    compute: &'a Snapshot,
    results: Option<&(Vec<junction_core::compute::Value>, i64)>,
) -> Vec<view::ComputedTrait<'a>> {
    let Some((values, updated_ms)) = results else {
        return Vec::new();
    };
    let defined = &compute.definitions;
    compute
        .serving
        .catalog()
        .definitions()
        .iter()
        .zip(values)
        .filter(|(d, _)| defined.managed_by(d.kind, &d.key).is_some())
        .map(|(d, v)| view::ComputedTrait {
            key: &d.key,
            class: match d.kind {
                DefKind::Audience => view::TraitClass::Audience,
                DefKind::ComputedTrait => view::TraitClass::ComputedTrait,
            },
            value: v.to_json(),
            updated_ms: *updated_ms,
        })
        .collect()
}

/// Renders one Profile API body. Blocking (it waits for the graph's lock, and reads stored
/// events for `events`): call it from the blocking pool in async code.
pub fn render(unify: &Unify, compute: &Snapshot, req: &ProfileRequest) -> Result<Value, ApiError> {
    let rendered = {
        let graph = unify.graph();
        let url = req.url.as_str();
        match req.collection {
            Collection::Users => {
                let p = graph
                    .lookup(&req.id_type, &req.id_value)
                    .ok_or_else(profile_not_found)?;
                match &req.query {
                    Query::Traits(q) => {
                        let results = compute.serving.results(p.id);
                        let computed = computed_traits(compute, results.as_ref());
                        Rendered::Done(view::traits(&p.traits, &computed, q, url))
                    }
                    Query::ExternalIds(q) => Rendered::Done(view::profile_external_ids(p, q, url)),
                    Query::Metadata(_) => Rendered::Done(view::metadata(&p.metadata)),
                    Query::Links(q) => Rendered::Done(view::user_links(&graph, p, q, url)),
                    Query::Events(q) => Rendered::Events(Box::new(EventsWork {
                        candidates: view::event_candidates(&p.events, q),
                        query: q.clone(),
                        group_id: None,
                        rules: graph.rules().clone(),
                    })),
                }
            }
            Collection::Accounts => {
                let a = graph.account(&req.id_value).ok_or_else(profile_not_found)?;
                match &req.query {
                    Query::Traits(q) => Rendered::Done(view::traits(&a.traits, &[], q, url)),
                    Query::ExternalIds(q) => Rendered::Done(view::account_external_ids(a, q, url)),
                    Query::Metadata(_) => Rendered::Done(view::metadata(&a.metadata)),
                    Query::Links(q) => {
                        Rendered::Done(view::account_links(&graph, a, q, url).map_err(param_error)?)
                    }
                    Query::Events(q) => Rendered::Events(Box::new(EventsWork {
                        candidates: view::event_candidates(&a.events, q),
                        query: q.clone(),
                        group_id: Some(a.group_id.to_string()),
                        rules: graph.rules().clone(),
                    })),
                }
            }
        }
    };
    match rendered {
        Rendered::Done(v) => Ok(v),
        Rendered::Events(work) => {
            let EventsWork {
                candidates,
                query,
                group_id,
                rules,
            } = *work;
            let owner = match &group_id {
                Some(g) => Owner::Account(g),
                None => Owner::User,
            };
            view::events(
                &candidates,
                &query,
                owner,
                &rules,
                &req.url,
                |refs: &[EventRef]| unify.events(refs),
            )
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read stored events for the profile api");
                ApiError::new(
                    500,
                    "internal_error",
                    format!("cannot read stored events: {e}"),
                )
                .api()
            })
        }
    }
}

/// The merge history of the profile owning `id` (`{id_type}:{value}`).
pub fn render_merges(unify: &Unify, id: &str) -> Result<Value, ApiError> {
    let (kind, value) = view::parse_id(id, Collection::Users).map_err(param_error)?;
    let graph = unify.graph();
    let p = graph.lookup(&kind, &value).ok_or_else(profile_not_found)?;
    Ok(view::merges(p))
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::new(400, "validation_error", format!("invalid path: {e}")).api()
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(
        400,
        "validation_error",
        format!("invalid query string: {e}"),
    )
    .api()
}

/// The request's path and query as sent (the handler sees the path below the nest prefix).
fn url(uri: &Uri) -> String {
    let rest = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |pq| pq.as_str());
    format!("{SPACES}{rest}")
}

async fn resource(
    State(state): State<SharedState>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    query: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let token = authenticate(&state, &headers)?;
    limit(&state, token)?;
    let Path((workspace, collection, id, resource)) = path.map_err(path_error)?;
    if workspace != state.config.workspace {
        return Err(ApiError::not_found(format!("Space `{workspace}` was not found.")).api());
    }
    let collection = Collection::parse(&collection).ok_or_else(|| {
        ApiError::not_found(format!(
            "Collection `{collection}` was not found: use `users` or `accounts`."
        ))
        .api()
    })?;
    let resource = Resource::parse(&resource).ok_or_else(|| {
        ApiError::not_found(format!(
            "Resource `{resource}` was not found: use traits, external_ids, events, metadata or links."
        ))
        .api()
    })?;
    let QueryString(pairs) = query.map_err(query_error)?;
    let req = ProfileRequest::parse(collection, &id, resource, &pairs, url(&uri))?;
    let unify = Arc::clone(&state.unify);
    let compute = state.compute.snapshot();
    Ok(Json(
        off_the_runtime(move || render(&unify, &compute, &req)).await?,
    ))
}

async fn merges(
    State(state): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = state.require_scope(&headers, SCOPE)?;
    limit(&state, token)?;
    let Path(id) = path.map_err(path_error)?;
    let unify = Arc::clone(&state.unify);
    Ok(Json(
        off_the_runtime(move || render_merges(&unify, &id)).await?,
    ))
}
