//! The one table of public error codes and their HTTP rendering.
//!
//! Tracking-API errors are `{"code","message"}` at the top level (what the Python SDKs parse);
//! management and Profile API errors are `{"error":{"code","message"}}`. Overload and storage
//! errors carry `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which body shape an error is rendered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Tracking,
    Api,
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    pub shape: Shape,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message: message.into(),
            retry_after_secs: None,
            shape: Shape::Tracking,
        }
    }
    pub fn api(mut self) -> Self {
        self.shape = Shape::Api;
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn unauthorized_write_key() -> Self {
        Self::new(
            401,
            "invalid_write_key",
            "missing or unknown write key: send it as the Basic auth username, the body's `writeKey` or `?writeKey=`",
        )
    }
    pub fn authentication() -> Self {
        Self::new(
            401,
            "authentication_error",
            "missing or unknown token: send `Authorization: Bearer <token>`",
        )
        .api()
    }
    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            403,
            "forbidden",
            format!("this token lacks the `{scope}` scope"),
        )
        .api()
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", what)
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }
    pub fn overloaded() -> Self {
        Self::new(
            503,
            "overloaded",
            "the server is overloaded and did not store the events; retry later",
        )
        .retry_after(1)
    }
    pub fn storage(reason: &str) -> Self {
        Self::new(
            503,
            "storage_unavailable",
            format!("the events were not stored: {reason}; retry later"),
        )
        .retry_after(5)
    }
    pub fn shutting_down() -> Self {
        Self::new(
            503,
            "shutting_down",
            "the server is shutting down; retry later",
        )
        .retry_after(1)
    }
    pub fn timeout() -> Self {
        Self::new(
            408,
            "request_timeout",
            "the request took longer than the server's request deadline",
        )
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError::*;
        match e {
            Overloaded => ApiError::overloaded(),
            Storage(m) => ApiError::storage(&m),
            Closed => ApiError::shutting_down(),
        }
    }
}

impl From<junction_core::event::RequestError> for ApiError {
    fn from(e: junction_core::event::RequestError) -> Self {
        ApiError::new(e.status, e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.shape {
            Shape::Tracking => serde_json::json!({"code": self.code, "message": self.message}),
            Shape::Api => {
                serde_json::json!({"error": {"code": self.code, "message": self.message}})
            }
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
