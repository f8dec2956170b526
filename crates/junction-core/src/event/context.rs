//! Per-request state: the server clock and peer address, and the batch-level members that
//! apply to every event of a batch (`sentAt`, `context`, `integrations`).
//!
//! Contract: [`BatchContext::new`] validates the batch-level members once per request (400/413
//! request errors naming the member). [`ip_fill`] decides whether an event's `context.ip` gets
//! the peer address (absent or null, and a browser route or `context.direct == true`, the
//! event's own context winning over the batch's) and [`write_context`] writes the stored
//! `context`.

use super::merge::{write_merged, write_str};
use super::normalize::limit_error;
use super::raw::{Kind, RawObject, present};
use super::{Limits, RequestError, RequestMeta, parse_time};
use crate::json::{SplitError, validate_json_limits};
use crate::timestamp;

/// Per-request state shared by every event of the request.
pub(crate) struct Ctx<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) received_at_ms: i64,
    /// `receivedAt`, formatted.
    pub(crate) received_at: Vec<u8>,
    /// The peer IP as a JSON string, ready to write.
    pub(crate) client_ip_json: Option<Vec<u8>>,
    pub(crate) browser: bool,
    pub(crate) batch: BatchContext<'a>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(meta: &RequestMeta, limits: &'a Limits) -> Ctx<'a> {
        let mut received_at = Vec::with_capacity(24);
        timestamp::write(meta.received_at_ms, &mut received_at);
        Ctx {
            limits,
            received_at_ms: meta.received_at_ms,
            received_at,
            client_ip_json: meta.client_ip.map(|ip| {
                let mut json = Vec::with_capacity(ip.len() + 2);
                write_str(&mut json, ip);
                json
            }),
            browser: meta.browser,
            batch: BatchContext::default(),
        }
    }
}

/// Batch-level members that apply to every item.
#[derive(Debug, Default)]
pub(crate) struct BatchContext<'a> {
    /// `sentAt` (or, failing that, the batch `timestamp` that rudder-sdk-node sends alongside
    /// it): the raw client string and its instant.
    pub(crate) sent_at: Option<(&'a str, i64)>,
    /// Non-null objects.
    pub(crate) context: Option<&'a str>,
    pub(crate) integrations: Option<&'a str>,
    /// `context.ip` / `context.direct` of the batch-level context, when present.
    context_ip: Option<&'a str>,
    context_direct: Option<&'a str>,
}

impl<'a> BatchContext<'a> {
    pub(crate) fn new(
        body: &super::raw::BatchBody<'a>,
        limits: &Limits,
    ) -> Result<BatchContext<'a>, RequestError> {
        let mut sent_at = None;
        for (raw, what) in [
            (body.timestamp, "batch-level `timestamp`"),
            (body.sent_at, "batch-level `sentAt`"),
        ] {
            if let Some(raw) = present(raw) {
                sent_at = Some((raw, parse_time(raw, what)?));
            }
        }
        let context = batch_object(body.context, "context", limits)?;
        let integrations = batch_object(body.integrations, "integrations", limits)?;
        let (context_ip, context_direct) = match context {
            Some(c) => {
                let obj = RawObject::parse(c).map_err(|e| {
                    RequestError::bad("invalid_field", format!("batch-level `context`: {e}"))
                })?;
                (obj.get("ip"), obj.get("direct"))
            }
            None => (None, None),
        };
        Ok(BatchContext {
            sent_at,
            context,
            integrations,
            context_ip,
            context_direct,
        })
    }
}

/// A batch-level `context`/`integrations`: an object (or null), small enough to copy into every
/// event, within the JSON limits once nested one level into an event.
fn batch_object<'a>(
    raw: Option<&'a str>,
    name: &str,
    limits: &Limits,
) -> Result<Option<&'a str>, RequestError> {
    let Some(raw) = present(raw) else {
        return Ok(None);
    };
    let kind = Kind::of(raw);
    if kind != Kind::Object {
        return Err(RequestError::bad(
            "invalid_field",
            format!(
                "batch-level `{name}` must be an object, got {}",
                kind.article_name()
            ),
        ));
    }
    let size = raw.len();
    if size > limits.max_event_bytes {
        return Err(RequestError {
            status: 413,
            code: "request_too_large",
            message: format!(
                "batch-level `{name}` is {size} bytes, over the limit of {} bytes (`max_event_bytes`): it is copied into every event",
                limits.max_event_bytes
            ),
        });
    }
    validate_json_limits(raw.as_bytes(), limits.max_depth.saturating_sub(1))
        .map_err(|e| RequestError::from(limit_error(e, &format!("batch-level `{name}`"))))?;
    Ok(Some(raw))
}

/// Whether `raw` (an object) might hold `key`: a cheap substring pre-filter before parsing.
fn might_have_key(raw: &str, key: &str) -> bool {
    raw.contains(key) || raw.as_bytes().contains(&b'\\')
}

/// How `context.ip` gets the peer address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpFill {
    /// Not at all: no peer address, not asked for, or an ip is already there.
    No,
    /// The event's context has no `ip` member: append one.
    Append,
    /// The event's context has `"ip": null`: replace it.
    Replace,
}

/// Whether `context.ip` must be filled from the peer: the effective (event over batch) `ip`
/// is absent or null, and the route is a browser one or the effective `direct` is `true`.
pub(crate) fn ip_fill(ev_ctx: Option<&str>, ctx: &Ctx) -> Result<IpFill, SplitError> {
    if ctx.client_ip_json.is_none() {
        return Ok(IpFill::No);
    }
    let mut ev_obj = None;
    if !ctx.browser {
        if let Some(c) = ev_ctx.filter(|c| might_have_key(c, "direct")) {
            ev_obj = Some(RawObject::parse(c)?);
        }
        let direct = ev_obj
            .as_ref()
            .and_then(|o| o.get("direct"))
            .or(ctx.batch.context_direct);
        if direct != Some("true") {
            return Ok(IpFill::No);
        }
    }
    if ev_obj.is_none()
        && let Some(c) = ev_ctx.filter(|c| might_have_key(c, "ip"))
    {
        ev_obj = Some(RawObject::parse(c)?);
    }
    Ok(match ev_obj.as_ref().and_then(|o| o.get("ip")) {
        Some(ip) if Kind::of(ip) == Kind::Null => IpFill::Replace,
        Some(_) => IpFill::No,
        None if present(ctx.batch.context_ip).is_some() => IpFill::No,
        None => IpFill::Append,
    })
}

/// Writes the stored `context`: the event's merged over the batch's, with the peer ip.
pub(crate) fn write_context(
    out: &mut Vec<u8>,
    ev_context: Option<&str>,
    ctx: &Ctx,
    fill: IpFill,
) -> Result<(), SplitError> {
    let ip = ctx.client_ip_json.as_deref().filter(|_| fill != IpFill::No);
    match (ev_context, ctx.batch.context, fill, ip) {
        // Common browser case: no batch context, no ip member: append without re-splitting.
        (Some(c), None, IpFill::Append, Some(ip)) if c.ends_with('}') => {
            let inner = &c[..c.len() - 1];
            out.extend_from_slice(inner.as_bytes());
            if !inner[1..].trim_ascii().is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"ip\":");
            out.extend_from_slice(ip);
            out.push(b'}');
            Ok(())
        }
        (ev, batch, _, ip) => write_merged(out, ev, batch, ip.map(|ip| ("ip", ip))),
    }
}
