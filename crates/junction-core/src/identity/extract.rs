//! What identity resolution reads from one stored event: its identifiers, user traits,
//! group (account) and time.
//!
//! Contract: [`observe`] parses a stored (normalized) event once, without building a DOM for
//! `properties`/`context`, and returns every candidate identifier with its type, whether
//! blocked or not (the graph filters blocked values so it can count them). Where each type
//! comes from follows Segment (`reference/segment-compat.md` §6): `userId`, `anonymousId`,
//! `traits.email`/`context.traits.email` (also `phone`), `context.device` ids by device
//! type, `context.externalIds` of the `users` collection, the Google Analytics client id,
//! configured trait/property keys, and `previousId` of an `alias`. The usual shape (what
//! ingest stores) is read with the member splitter, anything else with serde; both read the
//! same (tested).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::rules::{Rules, kinds};
use crate::event::EventType;
use crate::json::split_object;
use crate::timestamp;

/// An identifier candidate: `(type, value)`.
#[derive(Clone, Debug, PartialOrd, Ord)]
pub struct IdKey {
    pub kind: Arc<str>,
    pub value: Box<str>,
}

impl PartialEq for IdKey {
    fn eq(&self, other: &IdKey) -> bool {
        // Type names are interned by the rules: usually the same allocation.
        self.value == other.value
            && (Arc::ptr_eq(&self.kind, &other.kind) || self.kind == other.kind)
    }
}

impl Eq for IdKey {}

impl std::hash::Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.value.hash(state);
    }
}

impl IdKey {
    pub fn new(kind: &str, value: &str) -> IdKey {
        IdKey {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Display for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// What the identity graph needs from one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub kind: EventType,
    pub timestamp_ms: i64,
    pub identifiers: Vec<IdKey>,
    /// `alias.previousId`: its type is decided by the graph (an existing `user_id`, else
    /// `anonymous_id`).
    pub previous_id: Option<String>,
    /// User traits as `(key, JSON text)`: `context.traits` first, then `traits` of an
    /// identify, so a key in both takes the identify's value.
    pub traits: Vec<(String, String)>,
    /// `group`: the account's `groupId` and its traits.
    pub group: Option<(String, Vec<(String, String)>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stored event is not valid: {0}")]
pub struct ObserveError(pub String);

/// A JSON string or number used as an id (numbers are kept as their JSON text).
#[derive(Debug)]
struct IdValue(String);

impl<'de> Deserialize<'de> for IdValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IdValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id")
            }
            fn visit_str<E>(self, v: &str) -> Result<IdValue, E> {
                Ok(IdValue(v.to_owned()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<IdValue, E> {
                Ok(IdValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<IdValue, E> {
                Ok(IdValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<IdValue, E> {
                Ok(IdValue(
                    serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string()),
                ))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IdValue, E> {
                Ok(IdValue(String::new()))
            }
            fn visit_unit<E>(self) -> Result<IdValue, E> {
                Ok(IdValue(String::new()))
            }
            fn visit_none<E>(self) -> Result<IdValue, E> {
                Ok(IdValue(String::new()))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<IdValue, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<IdValue, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(IdValue(String::new()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<IdValue, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(IdValue(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

type Members<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

/// The members of one event that [`observe`] reads, borrowed from its JSON text.
struct Event<'a> {
    kind: Cow<'a, str>,
    user_id: Option<IdValue>,
    anonymous_id: Option<IdValue>,
    previous_id: Option<IdValue>,
    group_id: Option<IdValue>,
    timestamp: Option<Cow<'a, str>>,
    traits: Option<&'a str>,
    properties: Option<&'a str>,
    context: Option<&'a str>,
    integrations: Option<&'a str>,
}

/// [`Event`] as serde reads it from any valid JSON.
#[derive(Deserialize)]
struct SerdeEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "userId")]
    user_id: Option<IdValue>,
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<IdValue>,
    #[serde(rename = "previousId")]
    previous_id: Option<IdValue>,
    #[serde(rename = "groupId")]
    group_id: Option<IdValue>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    integrations: Option<&'a RawValue>,
}

impl<'a> Event<'a> {
    fn read(json: &'a [u8]) -> Result<Event<'a>, ObserveError> {
        match Event::split(json) {
            Some(ev) => Ok(ev),
            None => Event::parse(json),
        }
    }

    /// Reads any valid JSON event (serde).
    fn parse(json: &'a [u8]) -> Result<Event<'a>, ObserveError> {
        let ev: SerdeEvent<'a> =
            serde_json::from_slice(json).map_err(|e| ObserveError(e.to_string()))?;
        Ok(Event {
            kind: ev.kind,
            user_id: ev.user_id,
            anonymous_id: ev.anonymous_id,
            previous_id: ev.previous_id,
            group_id: ev.group_id,
            timestamp: ev.timestamp,
            traits: ev.traits.map(RawValue::get),
            properties: ev.properties.map(RawValue::get),
            context: ev.context.map(RawValue::get),
            integrations: ev.integrations.map(RawValue::get),
        })
    }

    /// Reads the common shape (what ingest stores: plain keys, each read member once, string
    /// type and timestamp) with the member splitter, several times faster than serde; `None`
    /// for anything else, which [`Event::parse`] then reads (or refuses) exactly as before.
    fn split(json: &'a [u8]) -> Option<Event<'a>> {
        let raw = std::str::from_utf8(json).ok()?;
        let mut ev = Event {
            kind: Cow::Borrowed(""),
            user_id: None,
            anonymous_id: None,
            previous_id: None,
            group_id: None,
            timestamp: None,
            traits: None,
            properties: None,
            context: None,
            integrations: None,
        };
        let (mut seen, mut usual) = (0u16, true);
        split_object(raw, usize::MAX, |key, value| {
            let Some(key) = plain_str(key) else {
                usual = false;
                return;
            };
            let member = match key {
                "type" => 0,
                "userId" => 1,
                "anonymousId" => 2,
                "previousId" => 3,
                "groupId" => 4,
                "timestamp" => 5,
                "traits" => 6,
                "properties" => 7,
                "context" => 8,
                "integrations" => 9,
                _ => return,
            };
            if seen & (1 << member) != 0 {
                usual = false; // serde refuses a duplicate member
                return;
            }
            seen |= 1 << member;
            let raw_member = (value != "null").then_some(value);
            let ok = match member {
                0 => plain_str(value)
                    .map(|k| ev.kind = Cow::Borrowed(k))
                    .is_some(),
                1 => id_value(value).map(|v| ev.user_id = v).is_some(),
                2 => id_value(value).map(|v| ev.anonymous_id = v).is_some(),
                3 => id_value(value).map(|v| ev.previous_id = v).is_some(),
                4 => id_value(value).map(|v| ev.group_id = v).is_some(),
                5 if value == "null" => true,
                5 => plain_str(value)
                    .map(|t| ev.timestamp = Some(Cow::Borrowed(t)))
                    .is_some(),
                6 => (ev.traits = raw_member, true).1,
                7 => (ev.properties = raw_member, true).1,
                8 => (ev.context = raw_member, true).1,
                _ => (ev.integrations = raw_member, true).1,
            };
            usual &= ok;
        })
        .ok()?;
        (usual && seen & 1 != 0).then_some(ev)
    }
}

/// The text of a JSON string without escapes; `None` for anything else.
fn plain_str(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// An id member as serde reads `Option<IdValue>`; `None` when serde would refuse it.
fn id_value(raw: &str) -> Option<Option<IdValue>> {
    match plain_str(raw) {
        Some(s) => Some(Some(IdValue(s.to_owned()))),
        None => serde_json::from_str::<Option<IdValue>>(raw).ok(),
    }
}

#[derive(Deserialize, Default)]
struct Context<'a> {
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
    #[serde(borrow)]
    device: Option<Device<'a>>,
    #[serde(rename = "externalIds")]
    external_ids: Option<Vec<ExternalId>>,
}

#[derive(Deserialize)]
struct Device<'a> {
    id: Option<IdValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "advertisingId")]
    advertising_id: Option<IdValue>,
    #[serde(rename = "adTrackingEnabled")]
    ad_tracking_enabled: Option<bool>,
    token: Option<IdValue>,
}

#[derive(Deserialize)]
struct ExternalId {
    id: Option<IdValue>,
    #[serde(rename = "type")]
    kind: Option<String>,
    collection: Option<String>,
    encoding: Option<String>,
}

fn members(raw: Option<&str>) -> Members<'_> {
    raw.and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default()
}

/// The string (or number) at `key` of an object's members.
fn str_member(m: &Members<'_>, key: &str) -> Option<String> {
    let raw = m.get(key)?;
    serde_json::from_str::<IdValue>(raw.get())
        .ok()
        .map(|v| v.0)
        .filter(|v| !v.is_empty())
}

/// Reads identity-relevant fields of one stored event.
pub fn observe(json: &[u8], rules: &Rules) -> Result<Observed, ObserveError> {
    observe_event(Event::read(json)?, rules)
}

fn observe_event(ev: Event<'_>, rules: &Rules) -> Result<Observed, ObserveError> {
    let timestamp_ms = ev
        .timestamp
        .as_deref()
        .and_then(timestamp::parse)
        .ok_or_else(|| ObserveError("timestamp is missing or not ISO 8601".into()))?;
    let kind = EventType::parse(&ev.kind)
        .ok_or_else(|| ObserveError(format!("unknown event type {:?}", ev.kind)))?;
    let mut out = Observed {
        kind,
        timestamp_ms,
        identifiers: Vec::with_capacity(2),
        previous_id: None,
        traits: Vec::new(),
        group: None,
    };
    let mut push = |kind: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.identifiers.push(IdKey {
                kind: rules.kind(kind),
                value: v.into_boxed_str(),
            });
        }
    };
    push(kinds::USER_ID, ev.user_id.map(|v| v.0));
    push(kinds::ANONYMOUS_ID, ev.anonymous_id.map(|v| v.0));

    let context: Context<'_> = match ev.context {
        Some(raw) => {
            serde_json::from_str(raw).map_err(|e| ObserveError(format!("context: {e}")))?
        }
        None => Context::default(),
    };
    let context_traits = members(context.traits.map(RawValue::get));
    // A group's `traits` describe the account, not the user.
    let is_group = out.kind == EventType::Group;
    let user_traits = if is_group {
        Members::new()
    } else {
        members(ev.traits)
    };
    for key in [kinds::EMAIL, kinds::PHONE] {
        push(
            key,
            str_member(&user_traits, key).or_else(|| str_member(&context_traits, key)),
        );
    }
    for (key, kind) in &rules.trait_identifiers {
        push(
            kind,
            str_member(&user_traits, key).or_else(|| str_member(&context_traits, key)),
        );
    }
    if !rules.property_identifiers.is_empty() {
        let props = members(ev.properties);
        for (key, kind) in &rules.property_identifiers {
            push(kind, str_member(&props, key));
        }
    }
    if let Some(device) = context.device {
        let platform = device
            .kind
            .as_deref()
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t.len() <= 40)
            .unwrap_or_else(|| "device".into());
        push(&format!("{platform}.id"), device.id.map(|v| v.0));
        if device.ad_tracking_enabled == Some(true) {
            push(
                &format!("{platform}.idfa"),
                device.advertising_id.map(|v| v.0),
            );
        }
        push(&format!("{platform}.push_token"), device.token.map(|v| v.0));
    }
    for ext in context.external_ids.unwrap_or_default() {
        // Segment requires all four fields; only the users collection identifies a person.
        if let (Some(id), Some(kind), Some(collection), Some(_)) =
            (ext.id, ext.kind, ext.collection, ext.encoding)
            && collection == "users"
        {
            let kind = kind.trim().to_ascii_lowercase();
            if !kind.is_empty() && kind.len() <= 100 {
                push(&kind, Some(id.0));
            }
        }
    }
    // Parsed only when it can hold the Google Analytics client id (most events name other
    // destinations, or none).
    let integrations = ev
        .integrations
        .filter(|raw| raw.contains("Google Analytics"))
        .map(|raw| members(Some(raw)))
        .unwrap_or_default();
    if let Some(ga) = integrations.get("Google Analytics") {
        push(
            kinds::GA_CLIENT_ID,
            str_member(&members(Some(ga.get())), "clientId"),
        );
    }
    if out.kind == EventType::Alias {
        out.previous_id = ev.previous_id.map(|v| v.0).filter(|v| !v.is_empty());
    }

    let mut traits: Vec<(String, String)> = Vec::new();
    for (k, v) in context_traits.iter().chain(user_traits.iter()) {
        traits.push((k.to_string(), v.get().to_string()));
    }
    out.traits = traits;
    if is_group && let Some(group_id) = ev.group_id.map(|v| v.0).filter(|v| !v.is_empty()) {
        let group_traits = members(ev.traits)
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.get().to_string()))
            .collect();
        out.group = Some((group_id, group_traits));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(o: &Observed) -> Vec<String> {
        o.identifiers.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn reads_every_identifier_source() {
        let rules = Rules::new(&super::super::rules::RulesSpec {
            trait_identifiers: vec![("account_number".into(), "account_number".into())],
            property_identifiers: vec![("order_ref".into(), "order_ref".into())],
            ..Default::default()
        })
        .unwrap();
        let json = br#"{"type":"track","event":"X","userId":"u1","anonymousId":"a1",
            "timestamp":"2024-05-01T00:00:00.000Z","properties":{"order_ref":"o-9"},
            "context":{"traits":{"email":"e@x.io","phone":"+15550001","account_number":42},
              "device":{"id":"dev1","type":"ios","advertisingId":"idfa1","adTrackingEnabled":true,"token":"pt1"},
              "externalIds":[{"id":"ext1","type":"Shopify_Id","collection":"users","encoding":"none"},
                             {"id":"acc1","type":"crm","collection":"accounts","encoding":"none"},
                             {"id":"bad","type":"x"}]},
            "integrations":{"Google Analytics":{"clientId":"ga.1"}}}"#;
        let o = observe(json, &rules).unwrap();
        assert_eq!(
            ids(&o),
            [
                "user_id:u1",
                "anonymous_id:a1",
                "email:e@x.io",
                "phone:+15550001",
                "account_number:42",
                "order_ref:o-9",
                "ios.id:dev1",
                "ios.idfa:idfa1",
                "ios.push_token:pt1",
                "shopify_id:ext1",
                "ga_client_id:ga.1"
            ]
        );
        assert_eq!(o.timestamp_ms, 1714521600000);
        assert!(o.traits.contains(&("email".into(), "\"e@x.io\"".into())));
    }

    #[test]
    fn identify_traits_win_over_context_traits_and_group_traits_go_to_the_account() {
        let rules = Rules::default();
        let json = br#"{"type":"identify","userId":"u1","timestamp":"2024-05-01T00:00:00.000Z",
            "traits":{"plan":"pro","email":"new@x.io"},"context":{"traits":{"plan":"free","email":"old@x.io"}}}"#;
        let o = observe(json, &rules).unwrap();
        assert!(ids(&o).contains(&"email:new@x.io".to_string()));
        let plans: Vec<_> = o.traits.iter().filter(|(k, _)| k == "plan").collect();
        assert_eq!(plans.last().unwrap().1, "\"pro\"");
        let json = br#"{"type":"group","userId":"u1","groupId":"g1","timestamp":"2024-05-01T00:00:00.000Z",
            "traits":{"name":"Acme","email":"billing@acme.io"}}"#;
        let o = observe(json, &rules).unwrap();
        assert_eq!(ids(&o), ["user_id:u1"]);
        assert!(o.traits.is_empty());
        let (g, t) = o.group.unwrap();
        assert_eq!(g, "g1");
        assert_eq!(t.len(), 2);
        let json = br#"{"type":"alias","userId":"u2","previousId":"a9","timestamp":"2024-05-01T00:00:00.000Z"}"#;
        assert_eq!(
            observe(json, &rules).unwrap().previous_id.as_deref(),
            Some("a9")
        );
        assert!(observe(b"{}", &rules).is_err());
    }

    #[test]
    fn the_member_splitter_reads_like_serde() {
        let rules = Rules::default();
        for json in [
            r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"identify","userId":12,"anonymousId":null,"traits":{"email":"e@x.io"},"timestamp":"2024-05-01T00:00:00.000Z","context":{"traits":{"phone":"1"}}}"#,
            r#"{"type":"group","userId":"u","groupId":7.5,"traits":{"name":"A"},"timestamp":"2024-05-01T00:00:00.000Z","properties":null}"#,
            r#"{"type":"alias","userId":"u","previousId":"p","timestamp":"2024-05-01T00:00:00.000Z","integrations":{"Google Analytics":{"clientId":"g"}}}"#,
            r#"{"type":"track","userId":"a\u0062","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","userId":"a","userId":"b","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","user\u0049d":"b","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","userId":true,"anonymousId":{"x":1},"timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","userId":"a","timestamp":null}"#,
            r#"{"type":"track","userId":"a","timestamp":5}"#,
            r#"{"type":null,"userId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"userId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"track","userId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":"x"}"#,
        ] {
            let via_serde = Event::parse(json.as_bytes()).and_then(|e| observe_event(e, &rules));
            let via_split = observe(json.as_bytes(), &rules);
            assert_eq!(via_split.is_ok(), via_serde.is_ok(), "{json}");
            assert_eq!(via_split.ok(), via_serde.ok(), "{json}");
        }
        let usual = br#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#;
        assert!(
            Event::split(usual).is_some(),
            "the usual shape takes the fast path"
        );
    }
}
