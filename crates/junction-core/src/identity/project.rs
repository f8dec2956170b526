//! The identity projection of a stored event: the few members identity resolution reads,
//! written at ingest next to the event, in a binary form the Unify processor reads without
//! scanning JSON.
//!
//! Contract: [`Projection`] is made with the event's type and timestamp, fed the event's
//! top-level members (key unescaped, value as written) and [`Projection::finish`] returns:
//!
//! ```text
//! u8  VERSION (= 1; JSON projections, stored by format-2 logs, start with `{`)
//! u8  event type: 0 identify, 1 track, 2 page, 3 screen, 4 group, 5 alias
//! i64 timestamp, ms since the epoch, little-endian (clamped to years 0000..=9999)
//! then, in input order, every occurrence of a member identity resolution reads, each
//! u8 tag, varint length, bytes:
//!   1 userId, 2 anonymousId, 3 previousId, 4 groupId    a string without escapes, as text
//!   0x81..=0x84 the same ids otherwise, as JSON text     (escaped strings, numbers, null, ...)
//!   5 traits, 6 context.traits, 7 context.device, 8 context.externalIds, 9 integrations
//!     (only when it may name Google Analytics)           as JSON text
//!   10 event (the track event's name)                    a string without escapes, as text
//!   0x8A event otherwise                                 as JSON text; empty when the event
//!                                                        has no `event` member
//! ```
//!
//! A reader takes the last occurrence of each tag and skips tags it does not know. Hence,
//! for every stored event `e` and every [`Rules`] without property identifiers,
//! `observe(project(e), rules) == observe(e, rules)` (an event refused through one is
//! refused through the other). [`project`] computes the projection from a stored event's
//! JSON (tests, and events stored without one).
//!
//! The event tag is not read by identity resolution: it lets Compute's history pass skip the
//! events no aggregate can match without reading their JSON ([`type_and_name`]). It is in
//! every projection written since it was added (an event without `event` gets an empty
//! `0x8A`), so a projection without it (written before) says nothing about the name.
//!
//! [`Rules`]: super::Rules

use std::borrow::Cow;

use crate::event::EventType;
use crate::json::{for_each_member, has_backslash, unquote};
use crate::timestamp;

/// First byte of a binary projection.
pub const VERSION: u8 = 1;

/// Field tags.
pub(crate) mod tag {
    pub const USER_ID: u8 = 1;
    pub const ANONYMOUS_ID: u8 = 2;
    pub const PREVIOUS_ID: u8 = 3;
    pub const GROUP_ID: u8 = 4;
    pub const TRAITS: u8 = 5;
    pub const CONTEXT_TRAITS: u8 = 6;
    pub const DEVICE: u8 = 7;
    pub const EXTERNAL_IDS: u8 = 8;
    pub const INTEGRATIONS: u8 = 9;
    pub const EVENT: u8 = 10;
    /// Set on an id tag whose bytes are JSON text rather than plain text.
    pub const JSON: u8 = 0x80;
}

/// The code of an event type in a projection.
pub(crate) fn type_code(t: EventType) -> u8 {
    match t {
        EventType::Identify => 0,
        EventType::Track => 1,
        EventType::Page => 2,
        EventType::Screen => 3,
        EventType::Group => 4,
        EventType::Alias => 5,
    }
}

/// The event type of a projection code.
pub(crate) fn type_of_code(code: u8) -> Option<EventType> {
    EventType::ALL.into_iter().find(|t| type_code(*t) == code)
}

/// Builds one projection from an event's top-level members.
#[derive(Debug)]
pub struct Projection {
    buf: Vec<u8>,
    /// Whether an `event` member was offered.
    named: bool,
}

impl Projection {
    pub fn new(kind: EventType, timestamp_ms: i64) -> Projection {
        let mut buf = Vec::with_capacity(96);
        buf.push(VERSION);
        buf.push(type_code(kind));
        let ms = timestamp_ms.clamp(timestamp::MIN_MS, timestamp::MAX_MS);
        buf.extend_from_slice(&ms.to_le_bytes());
        Projection { buf, named: false }
    }

    /// Whether [`Projection::member`] reads top-level member `key` (the others need not be
    /// offered).
    pub fn reads(key: &str) -> bool {
        matches!(
            key,
            "userId"
                | "anonymousId"
                | "previousId"
                | "groupId"
                | "traits"
                | "context"
                | "integrations"
                | "event"
        )
    }

    /// Offers one top-level member: `key` unescaped, `raw` its JSON text.
    pub fn member(&mut self, key: &str, raw: &str) {
        let id = match key {
            "userId" => tag::USER_ID,
            "anonymousId" => tag::ANONYMOUS_ID,
            "previousId" => tag::PREVIOUS_ID,
            "groupId" => tag::GROUP_ID,
            "event" => {
                self.named = true;
                tag::EVENT
            }
            "traits" => return self.field(tag::TRAITS, raw),
            "context" => return self.context(raw),
            "integrations" if raw.contains("Analytics") || has_backslash(raw.as_bytes()) => {
                return self.field(tag::INTEGRATIONS, raw);
            }
            _ => return,
        };
        match raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .filter(|text| !has_backslash(text.as_bytes()))
        {
            Some(text) => self.field(id, text),
            None => self.field(id | tag::JSON, raw),
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        if !self.named {
            self.field(tag::EVENT | tag::JSON, "");
        }
        self.buf
    }

    fn field(&mut self, tag: u8, bytes: &str) {
        self.buf.push(tag);
        put_varint(&mut self.buf, bytes.len() as u64);
        self.buf.extend_from_slice(bytes.as_bytes());
    }

    /// The `traits`, `device` and `externalIds` of a `context` object (anything else in
    /// it, or a `context` that is not an object, identity resolution does not read).
    fn context(&mut self, raw: &str) {
        let could_hold = raw.contains("traits")
            || raw.contains("device")
            || raw.contains("externalIds")
            || has_backslash(raw.as_bytes());
        if !could_hold {
            return;
        }
        let _ = for_each_member(raw, |key, value| {
            let tag = match unquote(key).as_deref() {
                Some("traits") => tag::CONTEXT_TRAITS,
                Some("device") => tag::DEVICE,
                Some("externalIds") => tag::EXTERNAL_IDS,
                _ => return,
            };
            self.field(tag, value);
        });
    }
}

/// The projection of a stored event's JSON; `None` when it is not a JSON object with a
/// known `type` and an ISO-8601 `timestamp`.
pub fn project(stored: &[u8]) -> Option<Vec<u8>> {
    let raw = std::str::from_utf8(stored).ok()?;
    let mut members: Vec<(std::borrow::Cow<'_, str>, &str)> = Vec::with_capacity(16);
    for_each_member(raw, |key, value| {
        if let Some(k) = unquote(key) {
            members.push((k, value));
        }
    })
    .ok()?;
    // The last occurrence, as every reader takes.
    let last = |name: &str| {
        members
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| unquote(v))
    };
    let kind = EventType::parse(&last("type")?)?;
    let timestamp_ms = timestamp::parse(&last("timestamp")?)?;
    let mut p = Projection::new(kind, timestamp_ms);
    for (key, value) in &members {
        p.member(key, value);
    }
    Some(p.finish())
}

/// The type and name (the `event` member when it is a string) of the event a binary
/// projection was made of; `None` when the projection does not tell the name (a JSON
/// projection of a format-2 log, a binary one written before the event tag, or a damaged
/// one): the caller then reads the event itself.
pub fn type_and_name(projection: &[u8]) -> Option<(EventType, Option<Cow<'_, str>>)> {
    let (&version, rest) = projection.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&kind, rest) = rest.split_first()?;
    let kind = type_of_code(kind)?;
    let mut rest = rest.get(8..)?;
    let mut name = None;
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        let len = usize::try_from(take_varint(&mut rest)?).ok()?;
        if len > rest.len() {
            return None;
        }
        let (value, tail) = rest.split_at(len);
        rest = tail;
        if tag & !tag::JSON == tag::EVENT {
            name = Some((tag, value));
        }
    }
    let (tag, value) = name?;
    let text = std::str::from_utf8(value).ok()?;
    let name = match tag & tag::JSON {
        0 => Some(Cow::Borrowed(text)),
        _ => unquote(text),
    };
    Some((kind, name))
}

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Takes a LEB128 varint off the front of `b`.
pub(crate) fn take_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Rules, RulesSpec, observe};

    /// Projects `json` and checks it reads like the event; returns the projection.
    fn same(json: &str, rules: &Rules) -> Vec<u8> {
        let projected = project(json.as_bytes()).expect("an object with type and timestamp");
        let (from_projection, from_event) =
            (observe(&projected, rules), observe(json.as_bytes(), rules));
        assert_eq!(from_projection.is_ok(), from_event.is_ok(), "for {json}");
        assert_eq!(
            from_projection.ok(),
            from_event.ok(),
            "for {json}\nprojected {projected:?}"
        );
        projected
    }

    #[test]
    fn keeps_what_identity_reads_and_drops_the_rest() {
        let rules = Rules::default();
        let p = same(
            r#"{"type":"track","event":"X","properties":{"a":1},"messageId":"m","anonymousId":"a1","timestamp":"2024-05-01T00:00:00.000Z","context":{"library":{"name":"x"},"ip":"1.2.3.4"},"integrations":{"All":true}}"#,
            &rules,
        );
        let mut expected = vec![VERSION, 1];
        expected.extend_from_slice(&1_714_521_600_000i64.to_le_bytes());
        expected.extend_from_slice(&[tag::EVENT, 1, b'X']);
        expected.extend_from_slice(&[tag::ANONYMOUS_ID, 2, b'a', b'1']);
        assert_eq!(p, expected);
        let p = same(
            r#"{"type":"identify","userId":"u1","traits":{"email":"e@x.io","plan":"pro"},"timestamp":"2024-05-01T00:00:00.000Z","context":{"ip":"1.2.3.4","traits":{"phone":"+1555"},"device":{"id":"d1","type":"ios","advertisingId":"ad","adTrackingEnabled":true,"token":"t"},"externalIds":[{"id":"x","type":"crm","collection":"users","encoding":"none"}],"page":{"url":"u"}},"integrations":{"Google Analytics":{"clientId":"ga.1"}}}"#,
            &rules,
        );
        let text = String::from_utf8_lossy(&p);
        assert!(text.contains(r#"{"phone":"+1555"}"#), "{text}");
        assert!(
            !text.contains("page") && !text.contains("1.2.3.4"),
            "{text}"
        );
        assert!(text.contains("ga.1"), "{text}");
    }

    #[test]
    fn equal_observations_for_every_identifier_source_and_odd_shapes() {
        let rules = Rules::new(&RulesSpec {
            trait_identifiers: vec![("account_number".into(), "account_number".into())],
            ..Default::default()
        })
        .unwrap();
        for json in [
            r#"{"type":"group","userId":"u1","groupId":"g1","traits":{"name":"Acme","email":"b@acme.io"},"timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"alias","userId":"u2","previousId":"a9","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","userId":"42","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"traits":{"account_number":7}}}"#,
            r#"{"type":"track","userId":12,"anonymousId":null,"groupId":7.5,"timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","userId":"a\u0062","anonymousId":"","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":null}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":"x"}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"traits":1,"traits":{"email":"x@y.z"}}}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"tr\u0061its":{"email":"x@y.z"}}}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"device":{"type":"android","id":"d"}},"integrations":{"Google Analytics":false}}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","integrations":{"Google\u0020Analytics":{"clientId":"g"}}}"#,
            r#"{"type":"identify","userId":"u","traits":{"email":"t@x.io","plan":"pro"},"timestamp":"2024-05-01T00:00:00.000Z","context":{"traits":{"email":"c@x.io","plan":"free","phone":"1"}}}"#,
        ] {
            same(json, &rules);
        }
        assert_eq!(project(b"[1]"), None);
        assert_eq!(project(br#"{"type":"track","timestamp":"soon"}"#), None);
    }

    #[test]
    fn type_and_name_read_like_the_event() {
        let at = r#""timestamp":"2024-05-01T00:00:00.000Z""#;
        let name = |json: &str| {
            let p = project(json.as_bytes()).unwrap();
            type_and_name(&p).map(|(t, n)| (t.as_str(), n.map(|n| n.into_owned())))
        };
        let cases: [(&str, Option<&str>); 7] = [
            (
                r#""type":"track","event":"Order Completed""#,
                Some("Order Completed"),
            ),
            (r#""type":"track","event":"""#, Some("")),
            (r#""type":"track","event":"a\"b\u0063""#, Some("a\"bc")),
            (r#""type":"track","event":7"#, None),
            (r#""type":"track","event":null"#, None),
            (r#""type":"page""#, None),
            (
                r#""type":"track","event":"first","event":"last""#,
                Some("last"),
            ),
        ];
        for (members, want) in cases {
            let json = format!("{{{members},{at}}}");
            let kind = if members.contains("page") {
                "page"
            } else {
                "track"
            };
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["event"].as_str(), want, "{json}");
            assert_eq!(name(&json), Some((kind, want.map(String::from))), "{json}");
        }
        // Projections that do not tell: JSON ones (format 2), and binary ones written
        // before the event tag.
        assert_eq!(type_and_name(br#"{"type":"track","event":"X"}"#), None);
        let mut old = vec![VERSION, 1];
        old.extend_from_slice(&0i64.to_le_bytes());
        old.extend_from_slice(&[tag::ANONYMOUS_ID, 1, b'a']);
        assert_eq!(type_and_name(&old), None);
        old.extend_from_slice(&[tag::EVENT, 1, b'X']);
        assert_eq!(
            type_and_name(&old),
            Some((EventType::Track, Some(Cow::Borrowed("X"))))
        );
        old.extend_from_slice(&[tag::EVENT, 3, b'Y']);
        assert_eq!(type_and_name(&old), None, "cut off");
    }

    /// Projections written today must read the same forever: this pins the encoding.
    #[test]
    fn a_committed_projection_reads_back() {
        let mut bytes = vec![VERSION, 0];
        bytes.extend_from_slice(&1_714_521_600_123i64.to_le_bytes());
        let mut boundaries = vec![bytes.len()];
        bytes.extend_from_slice(&[tag::USER_ID, 2, b'u', b'1']);
        boundaries.push(bytes.len());
        bytes.extend_from_slice(&[tag::ANONYMOUS_ID | tag::JSON, 2, b'4', b'2']);
        boundaries.push(bytes.len());
        let traits = br#"{"email":"e@x.io","plan":"pro"}"#;
        bytes.extend_from_slice(&[tag::TRAITS, traits.len() as u8]);
        bytes.extend_from_slice(traits);
        boundaries.push(bytes.len());
        bytes.extend_from_slice(&[42, 1, b'?']); // a tag from the future: skipped
        let o = observe(&bytes, &Rules::default()).unwrap();
        assert_eq!(o.kind, EventType::Identify);
        assert_eq!(o.timestamp_ms, 1_714_521_600_123);
        let ids: Vec<String> = o.identifiers.iter().map(|k| k.to_string()).collect();
        assert_eq!(ids, ["user_id:u1", "email:e@x.io", "anonymous_id:42"]);
        assert_eq!(o.traits.len(), 2);
        for cut in 1..bytes.len() {
            // A projection cut inside a field is refused, never misread.
            let read = observe(&bytes[..cut], &Rules::default());
            assert_eq!(read.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }
}
