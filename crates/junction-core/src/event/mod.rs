//! Tracking-API request parsing and Segment event normalization.
//!
//! Contract: [`parse_request`] turns a decompressed request body into events ready to store,
//! or a request-level [`RequestError`] (status 400/413, snake_case `code`, a message naming
//! the field or limit). In a batch, an event that can never be valid becomes a [`Rejected`]
//! entry (by index) and the others are kept. [`normalize_one`] does the same for one
//! standalone event (JSONL import). Pure: the server clock and peer address come in through
//! [`RequestMeta`], randomness is used only for a missing `messageId`.
//!
//! Parsing never builds a `serde_json::Value`. serde_json validates the body once, keeping
//! each batch item as a `&RawValue`; each item is then split into `(key, raw value)` members by
//! one pass of `json::split_object` that also enforces the depth/number limits (`raw`).
//! Untouched members are copied byte for byte; batch-level `context`/`integrations` are merged
//! without a DOM (`merge`). The per-event rules live in `normalize`.

mod context;
mod merge;
mod normalize;
mod raw;
#[cfg(test)]
mod tests;
mod write;

use crate::timestamp;
use context::{BatchContext, Ctx};
use normalize::EventError;
use raw::{BatchBody, BatchItems, Kind};
use serde_json::value::RawValue;

/// The six Segment event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Identify,
        EventType::Track,
        EventType::Page,
        EventType::Screen,
        EventType::Group,
        EventType::Alias,
    ];

    /// `"identify"`, `"track"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Identify => "identify",
            EventType::Track => "track",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    /// The type named exactly (lowercase) as on the wire.
    pub fn parse(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// analytics-next's short routes `/v1/{i,t,p,s,g,a}`.
    pub fn from_letter(l: &str) -> Option<Self> {
        Some(match l {
            "i" => EventType::Identify,
            "t" => EventType::Track,
            "p" => EventType::Page,
            "s" => EventType::Screen,
            "g" => EventType::Group,
            "a" => EventType::Alias,
            _ => return None,
        })
    }
}

/// Size and shape limits; the field names are the configuration keys named in errors.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_batch_events: 2500,
            max_depth: 64,
        }
    }
}

/// What the route says the body is.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// `/v1/{type}` or a short route: the body is one event; the route's type wins.
    Single(EventType),
    /// `/v1/batch`, `/v1/b`, `/v1/import`, `/beacon/v1/batch`: `{batch: [...], ...}`.
    Batch,
}

/// Facts about the request that the body does not carry.
pub struct RequestMeta<'a> {
    /// Server clock, ms since the epoch (injected; core never reads the clock).
    pub received_at_ms: i64,
    /// Peer IP; copied into `context.ip` when that is absent and the request came from a
    /// browser route or the event says `context.direct == true`.
    pub client_ip: Option<&'a str>,
    /// The request came on a browser route (`/v1/{t,i,p,s,g,a,b}`, `/beacon/v1/batch`).
    pub browser: bool,
}

/// One event ready to store.
#[derive(Clone, Debug)]
pub struct Normalized {
    pub message_id: String,
    pub event_type: EventType,
    /// `userId` as a string (numbers converted); `None` when absent, null or empty.
    pub user_id: Option<String>,
    /// `anonymousId` as a string (numbers converted); `None` when absent, null or empty.
    pub anonymous_id: Option<String>,
    /// The normalized Segment event: one JSON object, compact at the top level, nested
    /// values copied as the client sent them.
    pub json: Vec<u8>,
    /// What identity resolution reads of `json` ([`crate::identity::Projection`]), stored
    /// next to it so the Unify processor need not parse whole events.
    pub identity: Vec<u8>,
}

/// A batch item that was refused; the rest of the batch is kept.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// A parsed request: the body's `writeKey`, the kept events and the refused ones.
#[derive(Debug, Default)]
pub struct Parsed {
    pub write_key: Option<String>,
    pub events: Vec<Normalized>,
    pub rejected: Vec<Rejected>,
}

/// The whole request is refused: answer `status` with `{"code", "message"}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl RequestError {
    fn bad(code: &'static str, message: String) -> Self {
        RequestError {
            status: 400,
            code,
            message,
        }
    }
}

impl From<EventError> for RequestError {
    fn from(e: EventError) -> Self {
        let status = if e.code == "event_too_large" {
            413
        } else {
            400
        };
        RequestError {
            status,
            code: e.code,
            message: e.message,
        }
    }
}

/// Parses and normalizes a tracking-API request body (already decompressed).
pub fn parse_request(
    body: &[u8],
    shape: Shape,
    meta: &RequestMeta,
    limits: &Limits,
) -> Result<Parsed, RequestError> {
    let (limit, key) = match shape {
        Shape::Single(_) => (limits.max_event_bytes, "max_event_bytes"),
        Shape::Batch => (limits.max_batch_bytes, "max_batch_bytes"),
    };
    if body.len() > limit {
        return Err(RequestError {
            status: 413,
            code: "request_too_large",
            message: format!(
                "request body is {} bytes, over the limit of {limit} bytes (`{key}`)",
                body.len()
            ),
        });
    }
    let text = utf8(body).map_err(|m| RequestError::bad("invalid_json", m))?;
    let mut ctx = Ctx::new(meta, limits);
    match shape {
        Shape::Single(event_type) => {
            let raw = parse_json::<&RawValue>(text)?;
            if Kind::of(raw.get()) != Kind::Object {
                return Err(not_an_object(raw));
            }
            let (event, raw_write_key) = normalize::normalize(raw.get(), Some(event_type), &ctx)?;
            Ok(Parsed {
                write_key: write_key(raw_write_key)?,
                events: vec![event],
                rejected: Vec::new(),
            })
        }
        Shape::Batch => {
            if !text.trim_start().starts_with('{') {
                let raw = parse_json::<&RawValue>(text)?;
                return Err(not_an_object(raw));
            }
            let mut body = parse_json::<BatchBody>(text)?;
            let items = batch_items(body.batch.take(), limits)?;
            ctx.batch = BatchContext::new(&body, limits)?;
            let mut parsed = Parsed {
                write_key: write_key(body.write_key)?,
                events: Vec::with_capacity(items.len()),
                rejected: Vec::new(),
            };
            for (index, item) in items.into_iter().enumerate() {
                match normalize::normalize(item.get(), None, &ctx) {
                    Ok((event, _)) => parsed.events.push(event),
                    Err(e) => parsed.rejected.push(Rejected {
                        index,
                        code: e.code,
                        message: format!("event {index}: {}", e.message),
                    }),
                }
            }
            Ok(parsed)
        }
    }
}

/// One event as a standalone JSON object with its own `type` (for `junction import` of JSONL
/// history). Batch-level rules do not apply. Errors as [`Rejected`] with index 0.
pub fn normalize_one(
    raw: &[u8],
    meta: &RequestMeta,
    limits: &Limits,
) -> Result<Normalized, Rejected> {
    let reject = |code: &'static str, message: String| Rejected {
        index: 0,
        code,
        message,
    };
    let size = raw.trim_ascii().len();
    if size > limits.max_event_bytes {
        return Err(reject(
            "event_too_large",
            normalize::too_large_message(size, limits.max_event_bytes),
        ));
    }
    let text = utf8(raw).map_err(|m| reject("invalid_json", m.replace("request body", "event")))?;
    let value: &RawValue = serde_json::from_str(text)
        .map_err(|e| reject("invalid_json", format!("event is not valid JSON: {e}")))?;
    let ctx = Ctx::new(meta, limits);
    normalize::normalize(value.get(), None, &ctx)
        .map(|(event, _)| event)
        .map_err(|e| reject(e.code, e.message))
}

fn utf8(body: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(body).map_err(|e| {
        let valid = &body[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let column = valid.len() - line_start + 1;
        format!("request body is not valid JSON: invalid UTF-8 at line {line} column {column}")
    })
}

fn json_error(e: serde_json::Error) -> RequestError {
    RequestError::bad(
        "invalid_json",
        format!("request body is not valid JSON: {e}"),
    )
}

fn parse_json<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, RequestError> {
    serde_json::from_str(text).map_err(json_error)
}

fn not_an_object(raw: &RawValue) -> RequestError {
    RequestError::bad(
        "invalid_body",
        format!(
            "request body must be a JSON object, got {}",
            Kind::of(raw.get()).article_name()
        ),
    )
}

fn batch_items<'a>(
    batch: Option<BatchItems<'a>>,
    limits: &Limits,
) -> Result<Vec<&'a RawValue>, RequestError> {
    let items = match batch {
        None => {
            return Err(RequestError::bad(
                "invalid_batch",
                "`batch` is missing: a batch request needs a `batch` array of events".into(),
            ));
        }
        Some(BatchItems::NotArray(kind)) => {
            return Err(RequestError::bad(
                "invalid_batch",
                format!(
                    "`batch` must be an array of events, got {}",
                    kind.article_name()
                ),
            ));
        }
        Some(BatchItems::Items(items)) => items,
    };
    if items.is_empty() {
        return Err(RequestError::bad(
            "empty_batch",
            "`batch` is empty: send at least one event".into(),
        ));
    }
    if items.len() > limits.max_batch_events {
        return Err(RequestError::bad(
            "too_many_events",
            format!(
                "`batch` holds {} events, over the limit of {} events per request (`max_batch_events`)",
                items.len(),
                limits.max_batch_events
            ),
        ));
    }
    Ok(items)
}

fn write_key(raw: Option<&str>) -> Result<Option<String>, RequestError> {
    let Some(raw) = raw else { return Ok(None) };
    match Kind::of(raw) {
        Kind::Null => Ok(None),
        Kind::String => Ok(raw::as_str(raw).map(|s| s.into_owned())),
        kind => Err(RequestError::bad(
            "invalid_field",
            format!("`writeKey` must be a string, got {}", kind.article_name()),
        )),
    }
}

/// Parses a batch-level or event-level time string; `what` names it in the error.
fn parse_time(raw: &str, what: &str) -> Result<i64, EventError> {
    raw::as_str(raw)
        .and_then(|s| timestamp::parse(&s))
        .ok_or_else(|| EventError {
            code: "invalid_timestamp",
            message: format!(
                "{what} must be an ISO-8601 date-time string (e.g. \"2024-05-01T12:00:00.000Z\"), got {}",
                normalize::echo(raw)
            ),
        })
}
