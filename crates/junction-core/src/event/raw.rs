//! Borrowed, DOM-free views of JSON: an object as an ordered list of `(key, raw value)` and the
//! batch body's top level.
//!
//! Contract: the batch body is parsed (and so validated) by serde_json with its values as
//! `&RawValue`. Objects that serde_json has already validated are then split into members by
//! `json::split_object` (one pass that also enforces the depth/number limits), never re-parsed
//! by serde. Values are `&str` slices of the input (no surrounding whitespace); keys without
//! escapes are borrowed. Duplicate keys are all kept in input order; lookups take the last one
//! ("last one wins") and [`RawObject::last_occurrences`] tells writers which occurrence to keep.

use crate::json::{SplitError, split_object};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// What kind of JSON value a raw slice holds, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    pub(crate) fn of(raw: &str) -> Kind {
        match raw.as_bytes().first() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            _ => Kind::Number,
        }
    }

    /// "an object", "a string", ... for error messages.
    pub(crate) fn article_name(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
        }
    }
}

/// Null counts as absent.
pub(crate) fn present(raw: Option<&str>) -> Option<&str> {
    raw.filter(|r| Kind::of(r) != Kind::Null)
}

/// The text of a raw JSON string (`None` when `raw` is not a string). Borrowed unless it holds
/// escapes.
pub(crate) fn as_str(s: &str) -> Option<Cow<'_, str>> {
    if !s.starts_with('"') {
        return None;
    }
    let body = s.get(1..s.len().checked_sub(1)?)?;
    if body.as_bytes().contains(&b'\\') {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(body))
    }
}

/// A JSON object key (serde side): borrowed from the input when it has no escapes.
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object as its fields in input order, values unparsed.
#[derive(Debug, Default)]
pub(crate) struct RawObject<'a> {
    pub(crate) fields: Vec<(Cow<'a, str>, &'a str)>,
}

impl<'a> RawObject<'a> {
    /// Splits an already-validated JSON object, enforcing the depth/number limits.
    pub(crate) fn parse_checked(raw: &'a str, max_depth: usize) -> Result<Self, SplitError> {
        let mut fields = Vec::with_capacity(16);
        let mut bad_key = false;
        split_object(raw, max_depth, |key, value| match unquote(key) {
            Some(k) => fields.push((k, value)),
            None => bad_key = true,
        })?;
        if bad_key {
            return Err(SplitError::Malformed);
        }
        Ok(RawObject { fields })
    }

    /// Splits an already-validated (and limit-checked) JSON object.
    pub(crate) fn parse(raw: &'a str) -> Result<Self, SplitError> {
        Self::parse_checked(raw, usize::MAX)
    }

    /// The value of the last field named `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// For each field, whether it is the last occurrence of its key (the one that counts).
    pub(crate) fn last_occurrences(&self) -> LastOccurrences {
        let n = self.fields.len();
        if n <= 64 {
            let mut bits = 0u64;
            for (i, (k, _)) in self.fields.iter().enumerate() {
                if !self.fields[i + 1..].iter().any(|(later, _)| later == k) {
                    bits |= 1 << i;
                }
            }
            LastOccurrences::Bits(bits)
        } else {
            let mut keep = vec![true; n];
            let mut seen: HashSet<&str> = HashSet::with_capacity(n);
            for i in (0..n).rev() {
                keep[i] = seen.insert(self.fields[i].0.as_ref());
            }
            LastOccurrences::Flags(keep)
        }
    }
}

/// Which fields of a [`RawObject`] are the last occurrence of their key.
pub(crate) enum LastOccurrences {
    Bits(u64),
    Flags(Vec<bool>),
}

impl LastOccurrences {
    pub(crate) fn is_last(&self, i: usize) -> bool {
        match self {
            LastOccurrences::Bits(bits) => i < 64 && bits & (1 << i) != 0,
            LastOccurrences::Flags(flags) => flags.get(i).copied().unwrap_or(false),
        }
    }
}

/// The text of a raw quoted key: borrowed unless it holds escapes.
fn unquote(key: &str) -> Option<Cow<'_, str>> {
    let body = key.get(1..key.len().checked_sub(1)?)?;
    if body.as_bytes().contains(&b'\\') {
        serde_json::from_str::<String>(key).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(body))
    }
}

/// The `batch` member of a batch body: its items as raw values, or the kind it wrongly is.
#[derive(Debug)]
pub(crate) enum BatchItems<'a> {
    Items(Vec<&'a RawValue>),
    NotArray(Kind),
}

impl<'de> de::Deserialize<'de> for BatchItems<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchItems<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(64));
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(BatchItems::Items(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(BatchItems::NotArray(Kind::Object))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray(Kind::Bool))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray(Kind::Number))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray(Kind::Number))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray(Kind::Number))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray(Kind::String))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray(Kind::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// The top level of a batch body. Members other than the known ones are skipped unparsed.
#[derive(Debug, Default)]
pub(crate) struct BatchBody<'a> {
    pub(crate) batch: Option<BatchItems<'a>>,
    pub(crate) write_key: Option<&'a str>,
    pub(crate) sent_at: Option<&'a str>,
    pub(crate) timestamp: Option<&'a str>,
    pub(crate) context: Option<&'a str>,
    pub(crate) integrations: Option<&'a str>,
}

impl<'de> de::Deserialize<'de> for BatchBody<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchBody<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BatchBody<'de>, A::Error> {
                let mut body = BatchBody::default();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let slot = match k.as_ref() {
                        "batch" => {
                            body.batch = Some(map.next_value()?);
                            continue;
                        }
                        "writeKey" => &mut body.write_key,
                        "sentAt" => &mut body.sent_at,
                        "timestamp" => &mut body.timestamp,
                        "context" => &mut body.context,
                        "integrations" => &mut body.integrations,
                        // `metadata` and anything else: not used for normalization.
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?.get());
                }
                Ok(body)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keeps_order_duplicates_and_raw_bytes() {
        let src = r#"{"a": 1 ,"b\n":{"x" : [1, 2]},"a":"z"}"#;
        let obj = RawObject::parse(src).unwrap();
        let keys: Vec<&str> = obj.fields.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b\n", "a"]);
        assert!(matches!(obj.fields[0].0, Cow::Borrowed(_)));
        assert!(matches!(obj.fields[1].0, Cow::Owned(_)));
        assert_eq!(obj.fields[1].1, r#"{"x" : [1, 2]}"#);
        assert_eq!(obj.get("a").unwrap(), r#""z""#);
        let last = obj.last_occurrences();
        assert_eq!(
            [0, 1, 2, 3].map(|i| last.is_last(i)),
            [false, true, true, false]
        );
        assert!(matches!(
            RawObject::parse("[1]"),
            Err(SplitError::Malformed)
        ));
        assert!(matches!(
            RawObject::parse_checked(r#"{"a":[[1]]}"#, 2),
            Err(SplitError::Limit(_))
        ));
    }

    #[test]
    fn dedup_with_few_fields_uses_bits() {
        let mut src = String::from("{");
        for i in 0..64 {
            src.push_str(&format!("\"k{}\":{i},", i % 32));
        }
        src.pop();
        src.push('}');
        let obj = RawObject::parse(&src).unwrap();
        let keep = obj.last_occurrences();
        assert!(matches!(keep, LastOccurrences::Bits(_)));
        assert_eq!((0..64).filter(|&i| keep.is_last(i)).count(), 32);
        assert!(!keep.is_last(31) && keep.is_last(32) && keep.is_last(63));
    }

    #[test]
    fn dedup_with_many_fields() {
        let mut src = String::from("{");
        for i in 0..100 {
            src.push_str(&format!("\"k{}\":{i},", i % 50));
        }
        src.push_str("\"end\":0}");
        let obj = RawObject::parse(&src).unwrap();
        let keep = obj.last_occurrences();
        assert!(matches!(keep, LastOccurrences::Flags(_)));
        assert_eq!((0..101).filter(|&i| keep.is_last(i)).count(), 51);
        assert!(!keep.is_last(0) && keep.is_last(50) && keep.is_last(100));
    }

    #[test]
    fn strings() {
        assert_eq!(as_str(r#""a\"b""#).unwrap(), "a\"b");
        assert_eq!(as_str("12"), None);
        assert_eq!(as_str("\""), None);
        assert_eq!(Kind::of("12"), Kind::Number);
        assert_eq!(Kind::of("{}"), Kind::Object);
    }

    #[test]
    fn batch_items_kinds() {
        let b: BatchBody = serde_json::from_str(r#"{"batch":{"a":[1]},"x":{"y":2}}"#).unwrap();
        assert!(matches!(b.batch, Some(BatchItems::NotArray(Kind::Object))));
        let b: BatchBody = serde_json::from_str(r#"{"batch":null}"#).unwrap();
        assert!(matches!(b.batch, Some(BatchItems::NotArray(Kind::Null))));
        let b: BatchBody = serde_json::from_str(r#"{"batch":[1,{"a":2}],"sentAt":"s"}"#).unwrap();
        let Some(BatchItems::Items(items)) = b.batch else {
            panic!()
        };
        assert_eq!(items[1].get(), r#"{"a":2}"#);
        assert_eq!(b.sent_at.unwrap(), r#""s""#);
    }
}
