//! The identity projection of a stored event: the few members identity resolution reads,
//! written at ingest next to the event so the Unify processor never parses whole events.
//!
//! Contract: [`Projection`] is fed an event's top-level members (as [`write_event`] stores
//! them) and [`Projection::finish`] returns a compact JSON object holding, in input order,
//! every occurrence of `type`, `userId`, `anonymousId`, `previousId`, `groupId`,
//! `timestamp` and `traits`; `integrations` only when it names Google Analytics; and
//! `context` reduced to its `traits`, `device` and `externalIds` members (left out when it
//! has none; copied whole when it is not an object). Hence, for every stored event `e` and
//! every [`Rules`] without property identifiers (`rules.property_identifiers` empty):
//! `observe(project(e), rules) == observe(e, rules)` when either is `Ok` (an event refused
//! through one is refused through the other; error texts may differ). [`project`] computes
//! the same from a stored event's JSON (tests, and events stored without a projection).
//!
//! [`write_event`]: crate::event
//! [`Rules`]: super::Rules

use std::borrow::Cow;

use crate::json::split_object;

/// Top-level members copied as they are.
const COPIED: [&str; 7] = [
    "type",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "timestamp",
    "traits",
];
/// `context` members identity resolution reads.
const CONTEXT_KEPT: [&str; 3] = ["traits", "device", "externalIds"];
/// The only `integrations` entry identity resolution reads.
const GOOGLE_ANALYTICS: &str = "Google Analytics";

/// Builds one projection from an event's top-level members.
#[derive(Debug, Default)]
pub struct Projection {
    buf: Vec<u8>,
}

impl Projection {
    pub fn new() -> Projection {
        let mut buf = Vec::with_capacity(128);
        buf.push(b'{');
        Projection { buf }
    }

    /// Offers one top-level member: `key` unquoted, `raw` its JSON text.
    pub fn member(&mut self, key: &str, raw: &str) {
        match key {
            "context" => self.context(raw),
            "integrations" if raw.contains(GOOGLE_ANALYTICS) || raw.contains('\\') => {
                self.push(key, raw)
            }
            _ if COPIED.contains(&key) => self.push(key, raw),
            _ => {}
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }

    fn push(&mut self, key: &str, raw: &str) {
        self.comma();
        self.key(key);
        self.buf.extend_from_slice(raw.as_bytes());
    }

    fn comma(&mut self) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
    }

    /// `key` is one of ours (no escaping needed) or a client key re-quoted with serde.
    fn key(&mut self, key: &str) {
        if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.buf.push(b'"');
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.push(b'"');
        } else {
            let quoted = serde_json::to_string(key).expect("a string serializes");
            self.buf.extend_from_slice(quoted.as_bytes());
        }
        self.buf.push(b':');
    }

    fn context(&mut self, raw: &str) {
        let could_hold = raw.contains('\\') || CONTEXT_KEPT.iter().any(|k| raw.contains(k));
        if !could_hold {
            return;
        }
        let mut kept: Vec<(Cow<'_, str>, &str)> = Vec::new();
        let split = split_object(raw, usize::MAX, |key, value| {
            if let Some(key) = unquote(key)
                && CONTEXT_KEPT.contains(&&*key)
            {
                kept.push((key, value));
            }
        });
        if split.is_err() {
            // Not an object (`null`, or a value the full parse refuses): keep it as it is.
            self.push("context", raw);
            return;
        }
        if kept.is_empty() {
            return;
        }
        self.comma();
        self.key("context");
        self.buf.push(b'{');
        for (i, (key, value)) in kept.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.key(key);
            self.buf.extend_from_slice(value.as_bytes());
        }
        self.buf.push(b'}');
    }
}

/// The text of a raw quoted key (escapes decoded).
fn unquote(key: &str) -> Option<Cow<'_, str>> {
    let body = key.get(1..key.len().checked_sub(1)?)?;
    if body.contains('\\') {
        serde_json::from_str::<String>(key).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(body))
    }
}

/// The projection of a stored event's JSON; `None` when it is not a JSON object.
pub fn project(stored: &[u8]) -> Option<Vec<u8>> {
    let raw = std::str::from_utf8(stored).ok()?;
    let mut members: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(16);
    let mut bad_key = false;
    split_object(raw, usize::MAX, |key, value| match unquote(key) {
        Some(k) => members.push((k, value)),
        None => bad_key = true,
    })
    .ok()?;
    if bad_key {
        return None;
    }
    let mut p = Projection::new();
    for (key, value) in &members {
        p.member(key, value);
    }
    Some(p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Rules, RulesSpec, observe};

    fn same(json: &str, rules: &Rules) -> String {
        let projected = project(json.as_bytes()).expect("an object");
        let (from_projection, from_event) =
            (observe(&projected, rules), observe(json.as_bytes(), rules));
        assert_eq!(from_projection.is_ok(), from_event.is_ok(), "for {json}");
        assert_eq!(
            from_projection.ok(),
            from_event.ok(),
            "for {json}\nprojected {}",
            String::from_utf8_lossy(&projected)
        );
        String::from_utf8(projected).unwrap()
    }

    #[test]
    fn keeps_what_identity_reads_and_drops_the_rest() {
        let rules = Rules::default();
        let p = same(
            r#"{"type":"track","event":"X","properties":{"a":1},"messageId":"m","anonymousId":"a1","timestamp":"2024-05-01T00:00:00.000Z","context":{"library":{"name":"x"},"ip":"1.2.3.4"},"integrations":{"All":true}}"#,
            &rules,
        );
        assert_eq!(
            p,
            r#"{"type":"track","anonymousId":"a1","timestamp":"2024-05-01T00:00:00.000Z"}"#
        );
        let p = same(
            r#"{"type":"identify","userId":"u1","traits":{"email":"e@x.io","plan":"pro"},"timestamp":"2024-05-01T00:00:00.000Z","context":{"ip":"1.2.3.4","traits":{"phone":"+1555"},"device":{"id":"d1","type":"ios","advertisingId":"ad","adTrackingEnabled":true,"token":"t"},"externalIds":[{"id":"x","type":"crm","collection":"users","encoding":"none"}],"page":{"url":"u"}},"integrations":{"Google Analytics":{"clientId":"ga.1"}}}"#,
            &rules,
        );
        assert!(p.contains(r#""context":{"traits""#), "{p}");
        assert!(!p.contains("page") && !p.contains("1.2.3.4"), "{p}");
        assert!(p.contains("ga.1"), "{p}");
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
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":null}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"traits":1,"traits":{"email":"x@y.z"}}}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"tr\u0061its":{"email":"x@y.z"}}}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"device":{"type":"android","id":"d"}},"integrations":{"Google Analytics":false}}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"not a time"}"#,
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","integrations":{"Google\u0020Analytics":{"clientId":"g"}}}"#,
        ] {
            same(json, &rules);
        }
        assert_eq!(project(b"[1]"), None);
    }
}
