//! The parts of a stored event a catalog can read, taken apart for columnar storage: its
//! type, its name, and the raw JSON of the values at the paths its aggregates read.
//!
//! Contract:
//! - [`read_paths`] lists the paths below the event that a catalog's aggregates read
//!   (`properties.revenue`), sorted, without duplicates, without paths rooted at `type` or
//!   `event` (an event object always holds those as strings), and without a path that
//!   extends another listed one (the shorter one's value holds it).
//! - [`scan`] reads one stored event (valid JSON) once: its `type` and `event` strings and
//!   the raw text of the value at each path, or `Err` when it is not a JSON object. It
//!   reads exactly what [`super::slim::Reads::slim`] and [`super::program::lookup`] read:
//!   top-level keys compared as written (no unescaping), nested object keys with escapes
//!   decoded, the last of duplicate keys, array elements by numeric segment.
//! - [`event_object`] and [`set`] rebuild, from a type, a name and such values, an object
//!   that evaluates exactly like the whole event for every aggregate of the catalog: `type`,
//!   `event` and each value at its path, `null` where the event has none (the language reads
//!   a missing member as `null`; missing levels become objects: since no listed path extends
//!   another, none of them reads such a level itself). An object is made once per type and
//!   name and reused for each event, with its values set.

use std::borrow::Cow;

use super::catalog::Catalog;
use super::program::{Field, Node};

/// A path below the event: `["properties", "revenue"]`.
pub type Path = Box<[Box<str>]>;

/// What [`scan`] found in one event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned<'a> {
    /// The `type` member when it is a string (escapes decoded).
    pub kind: Option<Cow<'a, str>>,
    /// The `event` member when it is a string (escapes decoded).
    pub name: Option<Cow<'a, str>>,
    /// Per path (in the order given): the raw JSON text of its value, if it has one.
    pub values: Vec<Option<&'a str>>,
}

/// The event is not a JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a stored event is not a JSON object")]
pub struct NotAnObject;

/// Calls `f` with each path below the event that `node` reads (`Field::Path`).
pub(crate) fn for_each_path<'a>(node: &'a Node, f: &mut impl FnMut(&'a Path)) {
    match node {
        Node::Field(Field::Path(p)) => f(p),
        Node::List(items) => items.iter().for_each(|n| for_each_path(n, f)),
        Node::Exists(n) | Node::Not(n) | Node::Neg(n) => for_each_path(n, f),
        Node::Bin(_, l, r) => {
            for_each_path(l, f);
            for_each_path(r, f);
        }
        Node::Const(_)
        | Node::Field(_)
        | Node::Trait(_)
        | Node::Def(_)
        | Node::Agg(_)
        | Node::Now => {}
    }
}

/// The paths `catalog`'s aggregates read (see the module docs).
pub fn read_paths(catalog: &Catalog) -> Vec<Path> {
    let mut all = Vec::new();
    for spec in catalog.aggregates() {
        for node in spec.value.iter().chain(&spec.filter) {
            for_each_path(node, &mut |p| all.push(p.clone()));
        }
    }
    all.retain(|p| !matches!(p.first().map(|s| &**s), None | Some("type" | "event")));
    all.sort();
    all.dedup();
    // Sorted, a path comes right after the paths it extends (or after their extensions).
    let mut out: Vec<Path> = Vec::with_capacity(all.len());
    for p in all {
        if !out.iter().any(|q| p.starts_with(q)) {
            out.push(p);
        }
    }
    out
}

/// Reads `json`'s type, name and the values at `paths` (see the module docs).
pub fn scan<'a>(json: &'a str, paths: &[Path]) -> Result<Scanned<'a>, NotAnObject> {
    let mut found = Scanned {
        values: vec![None; paths.len()],
        ..Scanned::default()
    };
    let mut roots: Vec<Option<&'a str>> = vec![None; paths.len()];
    crate::json::for_each_member(json, |key, value| {
        let Some(key) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) else {
            return;
        };
        match key {
            "type" => found.kind = crate::json::unquote(value),
            "event" => found.name = crate::json::unquote(value),
            k => {
                for (root, path) in roots.iter_mut().zip(paths) {
                    if &*path[0] == k {
                        *root = Some(value);
                    }
                }
            }
        }
    })
    .map_err(|_| NotAnObject)?;
    for ((out, root), path) in found.values.iter_mut().zip(roots).zip(paths) {
        *out = root.and_then(|r| path[1..].iter().try_fold(r, |v, part| below(v, part)));
    }
    Ok(found)
}

/// The raw value of member or element `part` of the raw JSON value `raw`.
fn below<'a>(raw: &'a str, part: &str) -> Option<&'a str> {
    let mut found = None;
    match raw.trim_start().as_bytes().first()? {
        b'{' => crate::json::for_each_member(raw, |key, value| {
            if crate::json::unquote(key).is_some_and(|k| k == part) {
                found = Some(value);
            }
        })
        .ok()?,
        b'[' => {
            let index = part.parse::<usize>().ok()?;
            let mut i = 0;
            crate::json::split_array(raw, |item| {
                if i == index {
                    found = Some(item);
                }
                i += 1;
            })
            .ok()?;
        }
        _ => {}
    }
    found
}

/// An object of this type and name with `null` at every path (see the module docs); [`set`]
/// puts an event's values there.
pub fn event_object(kind: &str, name: Option<&str>, paths: &[Path]) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    root.insert("type".into(), kind.into());
    if let Some(n) = name {
        root.insert("event".into(), n.into());
    }
    let mut object = serde_json::Value::Object(root);
    for path in paths {
        let mut at = &mut object;
        for part in path.iter() {
            if !at.is_object() {
                *at = serde_json::Value::Object(Default::default());
            }
            let map = at.as_object_mut().expect("made an object above");
            at = map
                .entry(part.to_string())
                .or_insert(serde_json::Value::Null);
        }
    }
    object
}

/// Puts `value` at `path` (one of the paths it was made with) in an [`event_object`]; a
/// `null` there reads like no value.
pub fn set(object: &mut serde_json::Value, path: &[Box<str>], value: serde_json::Value) {
    let at = path.iter().try_fold(object, |at, part| at.get_mut(&**part));
    *at.expect("a path the object was made with") = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::program::{Event, lookup};
    use crate::compute::slim::Reads;
    use crate::compute::{DefKind, DefinitionSpec};

    fn catalog(exprs: &[&str]) -> Catalog {
        let specs: Vec<DefinitionSpec> = (exprs.iter().enumerate())
            .map(|(i, e)| DefinitionSpec {
                kind: DefKind::ComputedTrait,
                key: format!("t{i}"),
                expr: (*e).into(),
            })
            .collect();
        Catalog::compile(&specs).unwrap()
    }

    fn path(s: &str) -> Path {
        s.split('.').map(Into::into).collect()
    }

    #[test]
    fn read_paths_drop_duplicates_extensions_and_type_and_event_roots() {
        let c = catalog(&[
            "sum(properties.revenue)",
            "count(where = properties.revenue > 1 and context.page.path == \"/\")",
            "last(context.page)",
            "max(properties.items.0.price, type = \"track\")",
        ]);
        let got = read_paths(&c);
        let want = [
            "context.page",
            "properties.items.0.price",
            "properties.revenue",
        ];
        assert_eq!(got, want.map(path).to_vec());
    }

    /// Events whose members the paths below reach in every way: escaped keys at the top and
    /// below, duplicates, arrays, nulls, nested objects, non-string names and types.
    const EVENTS: &[&str] = &[
        r#"{"type":"track","event":"Order Completed","properties":{"revenue":12.5}}"#,
        r#"{"type":"track","event":"Order Completed","properties":{"items":[{"price":1}]}}"#,
        r#"{"type":"track","event":"A","properties":{"revenue":1,"revenue":2e3}}"#,
        r#"{"type":"page","properties":{"rev\u0065nue":"x","items":[{"price":3},{"price":4}]}}"#,
        r#"{"type":"track","event":"B","prop\u0065rties":{"revenue":7}}"#,
        r#"{"type":"track","event":"B","properties":{"revenue":7},"properties":{"other":1}}"#,
        r#"{"type":"identify","traits":{"a":1},"properties":null}"#,
        r#"{"type":"track","event":5,"properties":{"revenue":{"b":[1,2],"a":true}}}"#,
        r#"{"type":"tr\u0061ck","event":"N\u0061me","properties":{"items":{"0":{"price":9}}}}"#,
        r#"{"type":"track","event":"C","properties":[1,2],"context":{"page":{"path":"/x"}}}"#,
        r#"{"event":"D","properties":{"items":[{"price":null}]},"context":{"page":7}}"#,
        r#"{"type":"track","properties":{"items":[{"price":1},"x"]},"context":{"page":[1]}}"#,
    ];

    /// For every event and path, the rebuilt object reads like the slimmed whole event.
    #[test]
    fn a_rebuilt_event_reads_like_the_whole_event() {
        let exprs = [
            "sum(properties.revenue)",
            "last(properties.items.0.price)",
            "last(properties.items.1.price)",
            "last(context.page)",
            "unique(properties.revenue)",
            "count(where = exists(properties.revenue))",
        ];
        let c = catalog(&exprs);
        let paths = read_paths(&c);
        let reads = Reads::of(&c);
        // One object per type and name, reused by the events that have them.
        let mut objects = std::collections::HashMap::new();
        for json in EVENTS {
            let whole = reads.slim(json.as_bytes()).unwrap().unwrap();
            let s = scan(json, &paths).unwrap();
            let kind = s.kind.as_deref().unwrap_or_default();
            let key = (kind.to_owned(), s.name.as_deref().map(str::to_owned));
            let rebuilt = (objects.entry(key))
                .or_insert_with(|| event_object(kind, s.name.as_deref(), &paths));
            for (p, v) in paths.iter().zip(&s.values) {
                let v = v.map_or(serde_json::Value::Null, |v| {
                    serde_json::from_str(v).unwrap()
                });
                set(rebuilt, p, v);
            }
            let rebuilt = &*rebuilt;
            let ev = |json| Event {
                offset: 1,
                timestamp_ms: 1,
                json,
            };
            for p in [
                "properties.revenue",
                "properties.items.0.price",
                "properties.items.1.price",
                "context.page",
                "context.page.path",
            ] {
                let p = path(p);
                assert_eq!(lookup(rebuilt, &p), lookup(&whole, &p), "{json} at {p:?}");
            }
            for f in [Field::Name, Field::Type] {
                assert_eq!(ev(rebuilt).field(&f), ev(&whole).field(&f), "{json}");
            }
            for spec in c.aggregates() {
                assert_eq!(
                    spec.matches(&ev(rebuilt), 0),
                    spec.matches(&ev(&whole), 0),
                    "{json}"
                );
                let value = |e| spec.value_of(&e, 0);
                assert_eq!(value(ev(rebuilt)), value(ev(&whole)), "{json}");
            }
        }
    }

    #[test]
    fn scanning_what_is_not_an_object_fails() {
        for json in ["[1]", "\"x\"", "3", ""] {
            assert_eq!(scan(json, &[path("a.b")]), Err(NotAnObject));
        }
    }
}
