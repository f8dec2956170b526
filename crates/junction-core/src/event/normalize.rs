//! Per-event validation and normalization (Segment semantics).
//!
//! Contract: [`normalize`] takes one event as raw JSON text (already validated by serde_json)
//! and either refuses it with an [`EventError`] (code + message naming the field or limit,
//! without an "event N:" prefix) or decides the stored values (type, ids, clock-skew corrected
//! `timestamp`, `sentAt`, `messageId`, context/ip handling) and hands them to `write` as a
//! [`Plan`]. Validation order: object → size → depth/numbers → type → id types → object members
//! → messageId → timestamps → identity → type-specific required fields.

use super::context::{Ctx, ip_fill};
use super::raw::{self, Kind, RawObject, present};
use super::write::{Plan, write_event};
use super::{EventType, Normalized, parse_time};
use crate::json::{JsonLimitError, SplitError};
use std::borrow::Cow;

/// Why one event is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn err(code: &'static str, message: String) -> EventError {
    EventError { code, message }
}

/// Longest client value echoed in an error message.
const MAX_ECHO: usize = 60;

/// A short rendering of a client value for error messages: strings quoted (truncated), other
/// values by kind.
pub(crate) fn echo(raw: &str) -> String {
    match Kind::of(raw) {
        Kind::String | Kind::Number => match raw.char_indices().nth(MAX_ECHO) {
            Some((at, _)) => format!("{}…", &raw[..at]),
            None => raw.to_owned(),
        },
        kind => kind.article_name().to_owned(),
    }
}

pub(crate) fn too_large_message(size: usize, limit: usize) -> String {
    format!("event is {size} bytes, over the limit of {limit} bytes (`max_event_bytes`)")
}

pub(crate) fn limit_error(e: JsonLimitError, what: &str) -> EventError {
    let at = |path: &str| {
        if path.is_empty() {
            what.to_owned()
        } else {
            format!("{what} at `{path}`")
        }
    };
    match e {
        JsonLimitError::TooDeep { limit, path } => err(
            "too_deep",
            format!(
                "{} nests deeper than the limit of {limit} levels (`max_depth`)",
                at(&path)
            ),
        ),
        JsonLimitError::NumberOutOfRange { path, token } => err(
            "number_out_of_range",
            format!(
                "{} holds the number {token}, which is out of range for a 64-bit float",
                at(&path)
            ),
        ),
    }
}

/// The members normalization reads; each the last occurrence of its key.
#[derive(Default)]
struct Fields<'a> {
    ty: Option<&'a str>,
    user_id: Option<&'a str>,
    anonymous_id: Option<&'a str>,
    group_id: Option<&'a str>,
    previous_id: Option<&'a str>,
    message_id: Option<&'a str>,
    timestamp: Option<&'a str>,
    original_timestamp: Option<&'a str>,
    sent_at: Option<&'a str>,
    event: Option<&'a str>,
    context: Option<&'a str>,
    integrations: Option<&'a str>,
    properties: Option<&'a str>,
    traits: Option<&'a str>,
    write_key: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn collect(obj: &RawObject<'a>) -> Fields<'a> {
        let mut f = Fields::default();
        for (k, v) in &obj.fields {
            let slot = match k.as_ref() {
                "type" => &mut f.ty,
                "userId" => &mut f.user_id,
                "anonymousId" => &mut f.anonymous_id,
                "groupId" => &mut f.group_id,
                "previousId" => &mut f.previous_id,
                "messageId" => &mut f.message_id,
                "timestamp" => &mut f.timestamp,
                "originalTimestamp" => &mut f.original_timestamp,
                "sentAt" => &mut f.sent_at,
                "event" => &mut f.event,
                "context" => &mut f.context,
                "integrations" => &mut f.integrations,
                "properties" => &mut f.properties,
                "traits" => &mut f.traits,
                "writeKey" => &mut f.write_key,
                _ => continue,
            };
            *slot = Some(*v);
        }
        f
    }
}

/// An identifier as text; `converted` when the client sent a number.
struct Id<'a> {
    text: Cow<'a, str>,
    converted: bool,
}

impl Id<'_> {
    fn non_empty(id: &Option<Id<'_>>) -> bool {
        id.as_ref().is_some_and(|id| !id.text.is_empty())
    }

    /// The text to store when the client sent a number.
    fn converted<'s>(id: &'s Option<Id<'_>>) -> Option<&'s str> {
        id.as_ref()
            .filter(|id| id.converted)
            .map(|id| id.text.as_ref())
    }

    fn into_owned(id: Option<Id<'_>>) -> Option<String> {
        id.filter(|id| !id.text.is_empty())
            .map(|id| id.text.into_owned())
    }
}

fn id_field<'a>(name: &str, raw: Option<&'a str>) -> Result<Option<Id<'a>>, EventError> {
    let Some(raw) = present(raw) else {
        return Ok(None);
    };
    match Kind::of(raw) {
        Kind::String => Ok(raw::as_str(raw).map(|text| Id {
            text,
            converted: false,
        })),
        Kind::Number => Ok(Some(Id {
            text: Cow::Owned(number_to_string(raw)),
            converted: true,
        })),
        kind => Err(err(
            "invalid_field",
            format!(
                "`{name}` must be a string or a number, got {}",
                kind.article_name()
            ),
        )),
    }
}

/// A JSON number as an identifier string: integers keep their digits exactly; other numbers
/// take their shortest decimal form (`1.0` → `"1"`, `1e3` → `"1000"`, like JavaScript).
fn number_to_string(token: &str) -> String {
    let integer = token
        .strip_prefix('-')
        .unwrap_or(token)
        .bytes()
        .all(|b| b.is_ascii_digit());
    if integer {
        return token.to_owned();
    }
    match token.parse::<f64>() {
        Ok(f) => f.to_string(),
        Err(_) => token.to_owned(),
    }
}

fn object_or_null(name: &str, raw: Option<&str>) -> Result<(), EventError> {
    match present(raw).map(Kind::of) {
        None | Some(Kind::Object) => Ok(()),
        Some(kind) => Err(err(
            "invalid_field",
            format!("`{name}` must be an object, got {}", kind.article_name()),
        )),
    }
}

fn time_field(name: &str, raw: Option<&str>) -> Result<Option<i64>, EventError> {
    present(raw)
        .map(|raw| parse_time(raw, &format!("`{name}`")))
        .transpose()
}

fn event_type(raw: Option<&str>) -> Result<EventType, EventError> {
    let expected = "identify, track, page, screen, group, alias";
    let Some(raw) = present(raw) else {
        return Err(err(
            "invalid_type",
            format!("`type` is missing: it must be one of {expected}"),
        ));
    };
    raw::as_str(raw)
        .and_then(|s| EventType::parse(&s))
        .ok_or_else(|| {
            err(
                "invalid_type",
                format!("`type` must be one of {expected}, got {}", echo(raw)),
            )
        })
}

const MAX_MESSAGE_ID_CHARS: usize = 100;

/// The client's `messageId` when it gave a non-empty one.
fn message_id(raw: Option<&str>) -> Result<Option<Cow<'_, str>>, EventError> {
    let Some(raw) = present(raw) else {
        return Ok(None);
    };
    let Some(id) = raw::as_str(raw) else {
        return Err(err(
            "invalid_field",
            format!(
                "`messageId` must be a string, got {}",
                Kind::of(raw).article_name()
            ),
        ));
    };
    if id.len() > MAX_MESSAGE_ID_CHARS {
        let chars = id.chars().count();
        if chars > MAX_MESSAGE_ID_CHARS {
            return Err(err(
                "message_id_too_long",
                format!(
                    "`messageId` is {chars} characters, over the limit of {MAX_MESSAGE_ID_CHARS}"
                ),
            ));
        }
    }
    Ok((!id.is_empty()).then_some(id))
}

fn require(present: bool, field: &str, ty: EventType) -> Result<(), EventError> {
    if present {
        Ok(())
    } else {
        Err(err(
            "missing_field",
            format!("`{field}` is required for {} events", ty.as_str()),
        ))
    }
}

/// Validates and normalizes one event. `route`: the single-event route's type, which wins over
/// the body's `type`; `None` for batch items and imports (then `type` is required). Also
/// returns the event's raw `writeKey` member (dropped from the stored event).
pub(crate) fn normalize<'a>(
    raw: &'a str,
    route: Option<EventType>,
    ctx: &Ctx,
) -> Result<(Normalized, Option<&'a str>), EventError> {
    let kind = Kind::of(raw);
    if kind != Kind::Object {
        return Err(err(
            "invalid_event",
            format!("event must be a JSON object, got {}", kind.article_name()),
        ));
    }
    let size = raw.len();
    if size > ctx.limits.max_event_bytes {
        return Err(err(
            "event_too_large",
            too_large_message(size, ctx.limits.max_event_bytes),
        ));
    }
    let obj = RawObject::parse_checked(raw, ctx.limits.max_depth).map_err(|e| match e {
        SplitError::Limit(e) => limit_error(e, "event"),
        SplitError::Malformed => err("invalid_event", "event is not a valid JSON object".into()),
    })?;
    let f = Fields::collect(&obj);

    // Validation, in the order errors are reported.
    let ty = match route {
        Some(t) => t,
        None => event_type(f.ty)?,
    };
    let user_id = id_field("userId", f.user_id)?;
    let anonymous_id = id_field("anonymousId", f.anonymous_id)?;
    let group_id = id_field("groupId", f.group_id)?;
    let previous_id = id_field("previousId", f.previous_id)?;
    object_or_null("properties", f.properties)?;
    object_or_null("traits", f.traits)?;
    object_or_null("context", f.context)?;
    object_or_null("integrations", f.integrations)?;
    let client_message_id = message_id(f.message_id)?;
    let timestamp_ms = time_field("timestamp", f.timestamp)?;
    let original_ms = time_field("originalTimestamp", f.original_timestamp)?;
    let event_sent_ms = time_field("sentAt", f.sent_at)?;

    let has_id = Id::non_empty(&user_id)
        || Id::non_empty(&anonymous_id)
        || (ty == EventType::Alias && Id::non_empty(&previous_id))
        || (ty == EventType::Group && Id::non_empty(&group_id));
    if !has_id {
        return Err(err(
            "missing_id",
            "event has neither `userId` nor `anonymousId`".into(),
        ));
    }
    match ty {
        EventType::Track => match present(f.event) {
            None => require(false, "event", ty)?,
            Some(e) => match raw::as_str(e) {
                Some(name) => require(!name.is_empty(), "event", ty)?,
                None => {
                    return Err(err(
                        "invalid_field",
                        format!(
                            "`event` must be a string, got {}",
                            Kind::of(e).article_name()
                        ),
                    ));
                }
            },
        },
        EventType::Alias => {
            require(Id::non_empty(&previous_id), "previousId", ty)?;
            require(Id::non_empty(&user_id), "userId", ty)?;
        }
        EventType::Group => require(Id::non_empty(&group_id), "groupId", ty)?,
        EventType::Identify | EventType::Page | EventType::Screen => {}
    }

    // Times: originalTimestamp ?? timestamp is the client's clock; sentAt corrects its skew.
    let (original_raw, original_ms) = match (present(f.original_timestamp), original_ms) {
        (Some(raw), Some(ms)) => (Some(raw), Some(ms)),
        _ => (present(f.timestamp), timestamp_ms),
    };
    let (sent_raw, sent_ms) = match (present(f.sent_at), event_sent_ms) {
        (Some(raw), Some(ms)) => (Some(raw), Some(ms)),
        _ => match ctx.batch.sent_at {
            Some((raw, ms)) => (Some(raw), Some(ms)),
            None => (None, None),
        },
    };
    // An explicit `timestamp` next to an `originalTimestamp` was set by the caller (e.g.
    // rudder-sdk-node backfills): keep it, as RudderStack does. Otherwise correct the skew.
    let explicit_timestamp = present(f.original_timestamp).and(timestamp_ms);
    let timestamp_ms = match (explicit_timestamp, original_ms, sent_ms) {
        (Some(t), _, _) => t,
        (None, Some(o), Some(s)) => ctx.received_at_ms.saturating_sub(s.saturating_sub(o)),
        (None, Some(o), None) => o,
        (None, None, _) => ctx.received_at_ms,
    };

    let context = present(f.context);
    let ip_fill =
        ip_fill(context, ctx).map_err(|e| err("invalid_field", format!("`context`: {e}")))?;

    let generated_id;
    let (message_id, client_message_id): (Cow<'_, str>, _) = match client_message_id {
        Some(id) => (id, f.message_id),
        None => {
            generated_id = uuid::Uuid::new_v4().to_string();
            (Cow::Borrowed(generated_id.as_str()), None)
        }
    };
    let plan = Plan {
        ty,
        message_id: &message_id,
        client_message_id,
        converted_ids: [
            Id::converted(&user_id),
            Id::converted(&anonymous_id),
            Id::converted(&group_id),
            Id::converted(&previous_id),
        ],
        timestamp_ms,
        original_timestamp: original_raw,
        sent_at: sent_raw,
        context,
        integrations: present(f.integrations),
        ip_fill,
    };
    let (json, identity) = write_event(&obj, &plan, ctx, size)
        .map_err(|e| err("invalid_field", format!("cannot merge: {e}")))?;

    let normalized = Normalized {
        message_id: message_id.into_owned(),
        event_type: ty,
        user_id: Id::into_owned(user_id),
        anonymous_id: Id::into_owned(anonymous_id),
        json,
        identity,
    };
    Ok((normalized, f.write_key))
}
