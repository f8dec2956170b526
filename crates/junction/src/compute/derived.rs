//! Derived events: what Compute writes back into the log when a membership or a computed
//! trait changes, and how it reads them back to know what it already wrote.
//!
//! Contract:
//! - A profile entering (leaving) an audience gives one `track` event `Audience Entered`
//!   (`Audience Exited`) with `properties.audience_key` and `audience_name`; changed computed
//!   traits give one `identify` carrying them. Both carry the profile's `user_id` and its
//!   latest `anonymous_id` (whichever it has), `timestamp` = now, and
//!   `context.personas.computation_class` (`audience` / `computed_trait`), and are stored
//!   under the source `junction`. A profile with neither identifier gets no derived events.
//! - [`Emitted`] is what the log says was written for a profile, per definition: the last
//!   membership (`true`/`false`) or trait value (`null` if nothing) and where in the log it
//!   was written. [`record`] reads a stored derived event into it, so after a restart the log
//!   itself tells what not to write again (no `Audience Entered` twice for one entry).
//! - When profiles merge, the later write (log order) of each definition wins: the same rule
//!   whether the merge happens live ([`absorb`]) or the history is read back after a restart
//!   (where every derived event already belongs to the merged profile).
//! - [`diff`] gives the events that bring the log from `emitted` to `results`.

use junction_core::compute::{Catalog, DefKind, Value};
use junction_core::identity::Profile;

/// Per definition, the value last written to the log for one profile, and the log offset it
/// was written at (or the log's end when it was written: the order is what counts).
pub type Emitted = Vec<(Value, u64)>;

/// Nothing written yet, for `n` definitions.
pub fn nothing(n: usize) -> Emitted {
    vec![(Value::Null, 0); n]
}

/// Reads one stored derived event (of source `junction`, at `offset`) into `emitted`.
pub fn record(catalog: &Catalog, emitted: &mut Emitted, event: &serde_json::Value, offset: u64) {
    let defs = catalog.definitions();
    let find = |kind: DefKind, key: &str| defs.iter().position(|d| d.kind == kind && d.key == key);
    match (event["type"].as_str(), event["event"].as_str()) {
        (Some("track"), Some(name @ ("Audience Entered" | "Audience Exited"))) => {
            if let Some(key) = event["properties"]["audience_key"].as_str()
                && let Some(i) = find(DefKind::Audience, key)
            {
                emitted[i] = (Value::Bool(name == "Audience Entered"), offset);
            }
        }
        (Some("identify"), _) => {
            let Some(traits) = event["traits"].as_object() else {
                return;
            };
            for (k, v) in traits {
                if let Some(i) = find(DefKind::ComputedTrait, k) {
                    emitted[i] = (Value::from_json(v), offset);
                }
            }
        }
        _ => {}
    }
}

/// What was written for a merged profile: per definition, the later write of the two (a
/// write beats nothing).
pub fn absorb(into: &mut Emitted, from: &Emitted) {
    for (a, b) in into.iter_mut().zip(from) {
        if b.1 > a.1 || (b.1 == a.1 && a.0.is_null()) {
            *a = b.clone();
        }
    }
}

/// The end of every derived event of a profile at `now_ms`: its identifiers (the latest
/// `user_id` and `anonymous_id` it has) and `timestamp`, closing the object; `None` when it
/// has neither identifier.
fn closing(profile: &Profile, now_ms: i64) -> Option<Vec<u8>> {
    let latest = |kind: &str| {
        (profile.identifiers.iter())
            .filter(|e| &*e.kind == kind)
            .max_by_key(|e| e.created_ms)
            .map(|e| &*e.value)
    };
    let (user_id, anonymous_id) = (latest("user_id"), latest("anonymous_id"));
    if user_id.is_none() && anonymous_id.is_none() {
        return None;
    }
    let mut out = Vec::with_capacity(96);
    let ids: [(&[u8], _); 2] = [
        (br#","userId":"#, user_id),
        (br#","anonymousId":"#, anonymous_id),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            out.extend_from_slice(key);
            write_json(&mut out, id);
        }
    }
    out.extend_from_slice(br#","timestamp":""#);
    junction_core::timestamp::write(now_ms, &mut out);
    out.extend_from_slice(br#""}"#);
    Some(out)
}

/// Appends `value` as JSON.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("serializing into memory does not fail");
}

/// The events that bring the log from `emitted` to `results` for `profile` (each one JSON
/// object), with how to undo the change, and updates `emitted` to match what they say (the
/// first of them to be written at log position `at`, the others after it in order).
/// Audiences are written as they change; computed traits are written once they have a
/// value.
pub fn diff(
    catalog: &Catalog,
    names: &dyn Fn(&str) -> String,
    profile: &Profile,
    results: &[Value],
    emitted: &mut Emitted,
    now_ms: i64,
    at: u64,
) -> (Vec<Vec<u8>>, Undo) {
    let mut events: Vec<Vec<u8>> = Vec::new();
    // The changed computed traits, as the members of an object.
    let mut traits: Vec<u8> = Vec::new();
    // (definition, new value, index of the event that writes it).
    let mut changed: Vec<(usize, Value, u64)> = Vec::new();
    for (i, (def, value)) in catalog.definitions().iter().zip(results).enumerate() {
        let before = &emitted[i].0;
        match def.kind {
            DefKind::Audience => {
                let member = value.is_true();
                let was = before.is_true();
                if member != was && (member || !before.is_null()) {
                    let name = if member {
                        "Audience Entered"
                    } else {
                        "Audience Exited"
                    };
                    changed.push((i, Value::Bool(member), events.len() as u64));
                    let mut e = Vec::with_capacity(256);
                    e.extend_from_slice(br#"{"type":"track","event":"#);
                    write_json(&mut e, name);
                    e.extend_from_slice(br#","properties":{"audience_key":"#);
                    write_json(&mut e, &def.key);
                    e.extend_from_slice(br#","audience_name":"#);
                    write_json(&mut e, &names(&def.key));
                    e.extend_from_slice(br#"},"context":{"personas":{"computation_class":"audience","computation_key":"#);
                    write_json(&mut e, &def.key);
                    e.extend_from_slice(b"}}");
                    events.push(e);
                }
            }
            DefKind::ComputedTrait => {
                if value != before && !(value.is_null() && before.is_null()) {
                    traits.push(if traits.is_empty() { b'{' } else { b',' });
                    write_json(&mut traits, &def.key);
                    traits.push(b':');
                    write_json(&mut traits, &value.to_json());
                    changed.push((i, value.clone(), u64::MAX));
                }
            }
        }
    }
    let identify_at = events.len() as u64;
    if !traits.is_empty() {
        let mut e = Vec::with_capacity(traits.len() + 160);
        e.extend_from_slice(br#"{"type":"identify","traits":"#);
        e.extend_from_slice(&traits);
        e.extend_from_slice(br#"},"context":{"personas":{"computation_class":"computed_trait"}}"#);
        events.push(e);
    }
    if events.is_empty() {
        return (events, Undo::new());
    }
    let Some(closing) = closing(profile, now_ms) else {
        return (Vec::new(), Undo::new());
    };
    for e in &mut events {
        e.extend_from_slice(&closing);
    }
    let mut undo = Undo::new();
    for (i, v, index) in changed {
        let old = std::mem::replace(&mut emitted[i], (v, at + index.min(identify_at)));
        undo.push((i, old));
    }
    (events, undo)
}

/// What [`diff`] changed in `emitted`: (definition, previous entry), to put back when the
/// events could not be written.
pub type Undo = Vec<(usize, (Value, u64))>;
