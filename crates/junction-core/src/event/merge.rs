//! Deep merge of two JSON objects written straight to bytes, without a `serde_json::Value` DOM.
//!
//! Contract: [`write_merged`] writes `primary` merged over `secondary` (batch-level
//! `context`/`integrations` under the event's own): keys of `primary` first in their order, then
//! keys only in `secondary`; where both hold an object under the same key they are merged
//! recursively, otherwise `primary` wins. Values that are not merged are copied byte for byte
//! (so big integers and number spellings survive). Duplicate keys: the last one counts. An
//! optional `set` member replaces any same-named member at the top level. Recursion depth is
//! bounded by the callers' depth limit.

use super::raw::{Kind, RawObject};
use crate::json::SplitError;
use std::borrow::Cow;
use std::collections::HashSet;

/// Writes a JSON key followed by `:`. Keys borrowed from valid JSON input had no escapes, so
/// they are copied; others are escaped by serde_json. (The `Cow` variant is the information
/// used here, hence the reference to a `Cow`.)
#[allow(clippy::ptr_arg)]
pub(crate) fn write_key(out: &mut Vec<u8>, key: &Cow<'_, str>) {
    match key {
        Cow::Borrowed(k) => {
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(k) => write_str(out, k),
    }
    out.push(b':');
}

/// Writes `s` as an escaped JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a str to a Vec cannot fail");
}

/// Key membership that stays linear-time for objects with many keys.
struct KeySet<'o, 'a> {
    obj: &'o RawObject<'a>,
    hashed: Option<HashSet<&'o str>>,
}

impl<'o, 'a> KeySet<'o, 'a> {
    fn new(obj: &'o RawObject<'a>) -> Self {
        let hashed =
            (obj.fields.len() > 32).then(|| obj.fields.iter().map(|(k, _)| k.as_ref()).collect());
        KeySet { obj, hashed }
    }

    fn contains(&self, key: &str) -> bool {
        match &self.hashed {
            Some(set) => set.contains(key),
            None => self.obj.fields.iter().any(|(k, _)| k == key),
        }
    }
}

/// Writes `primary` deep-merged over `secondary`; either may be absent (then it counts as `{}`).
/// Both must be valid JSON objects when present. `set` = (key, raw JSON value) replacing that member.
pub(crate) fn write_merged(
    out: &mut Vec<u8>,
    primary: Option<&str>,
    secondary: Option<&str>,
    set: Option<(&str, &[u8])>,
) -> Result<(), SplitError> {
    let p = primary
        .map(RawObject::parse)
        .transpose()?
        .unwrap_or_default();
    let s = secondary
        .map(RawObject::parse)
        .transpose()?
        .unwrap_or_default();
    let set_key = set.map(|(k, _)| k);
    let s_keys = KeySet::new(&s);
    let p_keys = KeySet::new(&p);

    out.push(b'{');
    let mut first = true;
    let p_last = p.last_occurrences();
    for (i, (k, v)) in p.fields.iter().enumerate() {
        if !p_last.is_last(i) || set_key == Some(k.as_ref()) {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_key(out, k);
        let nested = (Kind::of(v) == Kind::Object && s_keys.contains(k))
            .then(|| s.get(k))
            .flatten()
            .filter(|sv| Kind::of(sv) == Kind::Object);
        match nested {
            Some(sv) => write_merged(out, Some(v), Some(sv), None)?,
            None => out.extend_from_slice(v.as_bytes()),
        }
    }
    let s_last = s.last_occurrences();
    for (i, (k, v)) in s.fields.iter().enumerate() {
        if !s_last.is_last(i) || set_key == Some(k.as_ref()) || p_keys.contains(k) {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_key(out, k);
        out.extend_from_slice(v.as_bytes());
    }
    if let Some((k, v)) = set {
        if !first {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(p: Option<&str>, s: Option<&str>, set: Option<(&str, &str)>) -> String {
        let mut out = Vec::new();
        write_merged(&mut out, p, s, set.map(|(k, v)| (k, v.as_bytes()))).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn deep_merge_event_wins() {
        assert_eq!(
            merged(
                Some(r#"{"library":{"name":"ev"},"app":{"v":1,"x":{"y":1}},"locale":"fr"}"#),
                Some(r#"{"library":{"name":"batch","version":"2"},"app":{"x":{"z":2}},"ip":"9"}"#),
                None
            ),
            r#"{"library":{"name":"ev","version":"2"},"app":{"v":1,"x":{"y":1,"z":2}},"locale":"fr","ip":"9"}"#
        );
    }

    #[test]
    fn non_objects_are_not_merged() {
        assert_eq!(
            merged(
                Some(r#"{"a":[1],"b":{"c":1},"n":null}"#),
                Some(r#"{"a":[2],"b":5,"n":{"x":1}}"#),
                None
            ),
            r#"{"a":[1],"b":{"c":1},"n":null}"#
        );
    }

    #[test]
    fn bytes_are_preserved() {
        assert_eq!(
            merged(
                Some(r#"{"big": 123456789012345678901234567890, "f":1.50}"#),
                Some(r#"{"e":1E2 }"#),
                None
            ),
            r#"{"big":123456789012345678901234567890,"f":1.50,"e":1E2}"#
        );
    }

    #[test]
    fn absent_sides_and_set() {
        assert_eq!(merged(None, None, None), "{}");
        assert_eq!(
            merged(None, None, Some(("ip", "\"1.2.3.4\""))),
            r#"{"ip":"1.2.3.4"}"#
        );
        assert_eq!(
            merged(
                Some(r#"{"ip":null,"a":1}"#),
                None,
                Some(("ip", "\"1.2.3.4\""))
            ),
            r#"{"a":1,"ip":"1.2.3.4"}"#
        );
        assert_eq!(merged(None, Some(r#"{"a":1}"#), None), r#"{"a":1}"#);
    }

    #[test]
    fn duplicates_last_wins_and_escaped_keys() {
        assert_eq!(
            merged(
                Some(r#"{"a":1,"a":2,"q\"k":3}"#),
                Some(r#"{"a":{"x":1},"b":1,"b":2}"#),
                None
            ),
            r#"{"a":2,"q\"k":3,"b":2}"#
        );
    }

    #[test]
    fn many_keys_use_the_hash_path() {
        let p: String = format!(
            "{{{}}}",
            (0..50)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let s: String = format!(
            "{{{}}}",
            (25..75)
                .map(|i| format!("\"k{i}\":0"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let out: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&merged(Some(&p), Some(&s), None)).unwrap();
        assert_eq!(out.len(), 75);
        assert_eq!(out["k30"], 30);
        assert_eq!(out["k70"], 0);
    }
}
