//! Writes the stored form of one event.
//!
//! Contract: [`write_event`] emits one compact JSON object: the client's members in input order
//! (only the last occurrence of a duplicated key; `writeKey` dropped; numeric ids as strings;
//! everything else byte for byte), with the server-decided members (`type`, `messageId`,
//! `timestamp`, `originalTimestamp`, `sentAt`, `receivedAt`, merged `context`/`integrations`)
//! written in place of the client's, or appended after them when the client had none.
//! Alongside, it builds the event's identity [`Projection`] from the members it writes.

use super::EventType;
use super::context::{Ctx, IpFill, write_context};
use super::merge::{write_key, write_merged, write_str};
use super::raw::RawObject;
use crate::identity::Projection;
use crate::json::SplitError;
use crate::timestamp;
use std::borrow::Cow;

/// Everything decided about an event, ready to write.
pub(crate) struct Plan<'a> {
    pub(crate) ty: EventType,
    /// The stored id; `client_message_id` is the client's raw string when it is the one kept.
    pub(crate) message_id: &'a str,
    pub(crate) client_message_id: Option<&'a str>,
    /// Ids the client sent as numbers, as text: userId, anonymousId, groupId, previousId.
    pub(crate) converted_ids: [Option<&'a str>; 4],
    pub(crate) timestamp_ms: i64,
    /// The client's raw strings to store.
    pub(crate) original_timestamp: Option<&'a str>,
    pub(crate) sent_at: Option<&'a str>,
    /// The event's own (non-null) `context` / `integrations`.
    pub(crate) context: Option<&'a str>,
    pub(crate) integrations: Option<&'a str>,
    pub(crate) ip_fill: IpFill,
}

/// Server-decided members, in the order they are appended when the client had none.
#[derive(Clone, Copy)]
enum Member {
    Type,
    MessageId,
    Timestamp,
    OriginalTimestamp,
    SentAt,
    ReceivedAt,
    Context,
    Integrations,
}

const MEMBERS: [Member; 8] = [
    Member::Type,
    Member::MessageId,
    Member::Timestamp,
    Member::OriginalTimestamp,
    Member::SentAt,
    Member::ReceivedAt,
    Member::Context,
    Member::Integrations,
];

impl Member {
    fn key(self) -> &'static str {
        match self {
            Member::Type => "type",
            Member::MessageId => "messageId",
            Member::Timestamp => "timestamp",
            Member::OriginalTimestamp => "originalTimestamp",
            Member::SentAt => "sentAt",
            Member::ReceivedAt => "receivedAt",
            Member::Context => "context",
            Member::Integrations => "integrations",
        }
    }

    fn of(key: &str) -> Option<Member> {
        Some(match key {
            "type" => Member::Type,
            "messageId" => Member::MessageId,
            "timestamp" => Member::Timestamp,
            "originalTimestamp" => Member::OriginalTimestamp,
            "sentAt" => Member::SentAt,
            "receivedAt" => Member::ReceivedAt,
            "context" => Member::Context,
            "integrations" => Member::Integrations,
            _ => return None,
        })
    }
}

struct Writer<'p, 'c> {
    buf: Vec<u8>,
    first: bool,
    /// Where the value of the member being written starts in `buf`.
    value_start: usize,
    plan: &'p Plan<'p>,
    ctx: &'c Ctx<'c>,
}

impl Writer<'_, '_> {
    /// `,"key":` (no comma before the first member).
    fn key(&mut self, key: &[u8]) {
        if !std::mem::take(&mut self.first) {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(b"\":");
        self.value_start = self.buf.len();
    }

    #[allow(clippy::ptr_arg)] // the `Cow` variant says whether the key needs escaping
    fn client_key(&mut self, key: &Cow<'_, str>) {
        if !std::mem::take(&mut self.first) {
            self.buf.push(b',');
        }
        write_key(&mut self.buf, key);
        self.value_start = self.buf.len();
    }

    /// The value written since the last key.
    fn value(&self) -> &str {
        std::str::from_utf8(&self.buf[self.value_start..]).unwrap_or("null")
    }

    fn quoted(&mut self, ascii: &[u8]) {
        self.buf.push(b'"');
        self.buf.extend_from_slice(ascii);
        self.buf.push(b'"');
    }

    /// Writes a server-decided member; `false` when it has no value (then nothing is written).
    fn member(&mut self, m: Member) -> Result<bool, SplitError> {
        let (plan, ctx) = (self.plan, self.ctx);
        match m {
            Member::Type => {
                self.key(b"type");
                self.quoted(plan.ty.as_str().as_bytes());
            }
            Member::MessageId => {
                self.key(b"messageId");
                match plan.client_message_id {
                    Some(raw) => self.buf.extend_from_slice(raw.as_bytes()),
                    None => write_str(&mut self.buf, plan.message_id),
                }
            }
            Member::Timestamp => {
                self.key(b"timestamp");
                self.buf.push(b'"');
                timestamp::write(plan.timestamp_ms, &mut self.buf);
                self.buf.push(b'"');
            }
            Member::OriginalTimestamp | Member::SentAt => {
                let (key, raw): (&[u8], _) = match m {
                    Member::SentAt => (b"sentAt", plan.sent_at),
                    _ => (b"originalTimestamp", plan.original_timestamp),
                };
                let Some(raw) = raw else { return Ok(false) };
                self.key(key);
                self.buf.extend_from_slice(raw.as_bytes());
            }
            Member::ReceivedAt => {
                self.key(b"receivedAt");
                self.quoted(&ctx.received_at);
            }
            Member::Context => {
                if plan.ip_fill == IpFill::No && ctx.batch.context.is_none() {
                    return Ok(false);
                }
                self.key(b"context");
                write_context(&mut self.buf, plan.context, ctx, plan.ip_fill)?;
            }
            Member::Integrations => {
                if ctx.batch.integrations.is_none() {
                    return Ok(false);
                }
                self.key(b"integrations");
                write_merged(
                    &mut self.buf,
                    plan.integrations,
                    ctx.batch.integrations,
                    None,
                )?;
            }
        }
        Ok(true)
    }
}

/// Writes the stored event and its identity projection. See the module docs.
pub(crate) fn write_event(
    obj: &RawObject<'_>,
    plan: &Plan<'_>,
    ctx: &Ctx<'_>,
    size_hint: usize,
) -> Result<(Vec<u8>, Vec<u8>), SplitError> {
    let mut w = Writer {
        buf: Vec::with_capacity(size_hint + 192),
        first: true,
        value_start: 0,
        plan,
        ctx,
    };
    let mut projection = Projection::new(plan.ty, plan.timestamp_ms);
    w.buf.push(b'{');
    let mut written = [false; MEMBERS.len()];
    let last = obj.last_occurrences();
    for (i, (k, v)) in obj.fields.iter().enumerate() {
        if !last.is_last(i) {
            continue;
        }
        if let Some(m) = Member::of(k) {
            // A member the server decides is written in place, or dropped (e.g. a null
            // `originalTimestamp`) when the server has no value for it. A context or
            // integrations with nothing to merge falls through to the byte copy below.
            let wrote = w.member(m)?;
            written[m as usize] = wrote;
            if wrote && Projection::reads(m.key()) {
                projection.member(m.key(), w.value());
            }
            if wrote || !matches!(m, Member::Context | Member::Integrations) {
                continue;
            }
        }
        match converted_id(k, plan) {
            Some(text) => {
                w.client_key(k);
                write_str(&mut w.buf, text);
            }
            None if k == "writeKey" => continue,
            None => {
                w.client_key(k);
                w.buf.extend_from_slice(v.as_bytes());
            }
        }
        if Projection::reads(k) {
            projection.member(k, w.value());
        }
    }
    for m in MEMBERS {
        if !written[m as usize] && w.member(m)? && Projection::reads(m.key()) {
            projection.member(m.key(), w.value());
        }
    }
    w.buf.push(b'}');
    Ok((w.buf, projection.finish()))
}

/// The text to store for an id the client sent as a number.
fn converted_id<'p>(key: &str, plan: &Plan<'p>) -> Option<&'p str> {
    let slot = match key {
        "userId" => 0,
        "anonymousId" => 1,
        "groupId" => 2,
        "previousId" => 3,
        _ => return None,
    };
    plan.converted_ids[slot]
}
