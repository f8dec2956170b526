//! The HTTP surface: tracking API (SPEC §3.3), operations routes and the management API.
//!
//! Contract: `router(state)` builds every route; `serve::run` serves it with the hardened
//! accept loop. Handlers never block: durable writes go through the log's writer thread.

pub mod body;
pub mod compute;
pub mod cors;
pub mod error;
pub mod ops;
pub mod profiles;
pub mod ratelimit;
pub mod serve;
pub mod tracking;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::config::{Config, Token};
use crate::ingest::Ingestor;
use crate::metrics::{self, Histogram};
use error::ApiError;

pub struct AppState {
    pub config: Config,
    /// Write key → source name.
    pub sources: HashMap<String, String>,
    pub ingestor: Arc<Ingestor>,
    /// Benchmark baseline only: parse and normalize, answer 200, store nothing.
    pub discard: bool,
    pub clock: Arc<dyn crate::clock::Clock>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub latency: RouteLatency,
    /// Profiles: the identity graph and its processor.
    pub unify: Arc<crate::unify::Unify>,
    pub processor: crate::unify::processor::Processor,
    /// Computed traits and audiences: their definitions and the engines that keep them
    /// current.
    pub compute: Arc<crate::compute::registry::Registry>,
    /// Profile API requests per token (`[profiles] rate_limit_per_sec`).
    pub profile_limiter: ratelimit::RateLimiter,
}

/// Request latency by route family.
#[derive(Default)]
pub struct RouteLatency {
    pub tracking: Histogram,
    pub api: Histogram,
    pub other: Histogram,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// The token with `scope` (or `admin`) from `Authorization: Bearer`, else 401/403.
    pub fn require_scope(&self, headers: &HeaderMap, scope: &str) -> Result<&Token, ApiError> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::authentication)?;
        let token = self
            .config
            .tokens
            .iter()
            .find(|t| constant_time_eq(t.secret.as_bytes(), presented.as_bytes()))
            .ok_or_else(ApiError::authentication)?;
        if token.allows(scope) {
            Ok(token)
        } else {
            Err(ApiError::forbidden(scope))
        }
    }
}

/// Runs `f` on the blocking pool. Everything that reads the graph goes there, not only what
/// reads the log: the processor holds the graph's write lock while it applies, at a lower
/// priority than ingest, so an async worker waiting for that lock would hold up the ingest
/// requests queued on it.
pub(crate) async fn off_the_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, "internal_error", e.to_string()).api())?
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router(state: SharedState) -> Router {
    let tracking = Router::new()
        .route("/v1/{kind}", post(tracking::v1).options(cors::preflight))
        .route(
            "/beacon/v1/batch",
            post(tracking::beacon).options(cors::preflight),
        )
        .route(
            "/v1/projects/{write_key}/settings",
            get(tracking::settings).options(cors::preflight),
        )
        .route(
            "/sourceConfig",
            get(tracking::source_config).options(cors::preflight),
        )
        .route(
            "/sourceConfig/",
            get(tracking::source_config).options(cors::preflight),
        )
        .layer(middleware::from_fn(cors::layer));
    let api = Router::new()
        .route("/api/v1/debugger/events", get(ops::debugger))
        .route("/api/v1/openapi.json", get(openapi));
    Router::new()
        .merge(tracking)
        .merge(api)
        .merge(profiles::routes())
        .merge(compute::routes())
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            deadline_and_latency,
        ))
        .with_state(state)
}

/// The OpenAPI document of the management API (`openapi.json`, kept in sync with the routes
/// by the `openapi` integration test).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Applies the request deadline and records latency by route family.
async fn deadline_and_latency(
    State(state): State<SharedState>,
    req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let path = req.uri().path();
    let family = if path.starts_with("/api/") {
        &state.latency.api
    } else if path.starts_with("/v1/")
        || path.starts_with("/beacon/")
        || path.starts_with("/sourceConfig")
    {
        &state.latency.tracking
    } else {
        &state.latency.other
    };
    let streaming = path == "/api/v1/debugger/events";
    let resp = if streaming {
        next.run(req).await
    } else {
        match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => ApiError::timeout().into_response(),
        }
    };
    family.observe(started.elapsed());
    resp
}

impl RouteLatency {
    pub fn render(&self, out: &mut String) {
        metrics::header(
            out,
            "junction_http_request_seconds",
            "histogram",
            "HTTP request latency by route family.",
        );
        self.tracking
            .render(out, "junction_http_request_seconds", "route=\"tracking\"");
        self.api
            .render(out, "junction_http_request_seconds", "route=\"api\"");
        self.other
            .render(out, "junction_http_request_seconds", "route=\"other\"");
    }
}
