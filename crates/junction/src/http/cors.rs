//! CORS for the browser-facing routes, as RudderStack's gateway answers it.
//!
//! Contract: every response to a request with an `Origin` gets `Access-Control-Allow-Origin`
//! echoing it, with credentials allowed (errors included: a CORS failure looks like a network
//! error to the SDK, which then retries). `OPTIONS` preflights are answered 200 with the
//! requested headers echoed (a `*` would not cover `Authorization` with credentials).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Adds the allow-origin headers to every response of the routes it wraps.
pub async fn layer(req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = next.run(req).await;
    allow_origin(resp.headers_mut(), origin);
    resp
}

/// The `OPTIONS` handler of every browser-facing route.
pub async fn preflight(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("900"),
    );
    resp
}

fn allow_origin(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
