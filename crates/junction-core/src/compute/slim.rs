//! Reading only what a catalog needs of a stored event.
//!
//! Contract: [`Reads::of`] lists, for a [`Catalog`], the top-level members its aggregates read
//! and which (type, name) pairs any aggregate can match. [`Reads::slim`] scans one stored
//! event once: it returns `None` when no aggregate can match the event's type and name
//! (without building anything), else an object holding `type`, `event` and the members read,
//! which evaluates exactly like the whole event for that catalog. [`Reads::plan`] says, from
//! an event's type and name alone (the identity projection holds both), whether no
//! aggregate can match it, whether a fixed object of its type and name evaluates exactly
//! like it (the aggregates that can match read nothing else), or whether it must be slimmed.

use super::catalog::Catalog;
use super::program::Node;

/// What a catalog reads of events.
#[derive(Clone, Debug, Default)]
pub struct Reads {
    /// Top-level members read besides `type` and `event`, and what of each.
    roots: Vec<(Box<str>, Need)>,
    /// Per aggregate: the names and types it accepts, and whether it reads members besides
    /// `type` and `event`.
    filters: Vec<(Allowed, Allowed, bool)>,
}

/// What events of one type and name need ([`Reads::plan`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// No aggregate can match them.
    Skip,
    /// The aggregates that can match them read only their type and name (and timestamp):
    /// this object of the type and name evaluates exactly like each of them.
    Fixed(serde_json::Value),
    /// Some aggregate that can match them reads other members: [`Reads::slim`] each one.
    Slim,
}

/// The values a filter accepts (`None`: any).
type Allowed = Option<Vec<Box<str>>>;

/// What is read of a member's value: all of it, or (when it is an object) some of its
/// members. A value that is not an object is read whole (paths also index arrays).
#[derive(Clone, Debug, PartialEq)]
enum Need {
    Whole,
    Members(Vec<(Box<str>, Need)>),
}

impl Need {
    /// Adds `path` (below this value) to what is read.
    fn add(&mut self, path: &[Box<str>]) {
        let Need::Members(members) = self else {
            return;
        };
        let Some((first, rest)) = path.split_first() else {
            *self = Need::Whole;
            return;
        };
        match members.iter_mut().find(|(k, _)| k == first) {
            Some((_, need)) => need.add(rest),
            None => {
                let mut need = Need::Members(Vec::new());
                need.add(rest);
                members.push((first.clone(), need));
            }
        }
    }

    /// What is read of `raw` (valid JSON).
    fn read(&self, raw: &str) -> Result<serde_json::Value, serde_json::Error> {
        let Need::Members(members) = self else {
            return serde_json::from_str(raw);
        };
        if !raw.starts_with('{') {
            return serde_json::from_str(raw);
        }
        let mut out = serde_json::Map::new();
        let mut failed = None;
        crate::json::for_each_member(raw, |key, value| {
            let Some(key) = crate::json::unquote(key) else {
                return;
            };
            if let Some((k, need)) = members.iter().find(|(k, _)| **k == *key) {
                match need.read(value) {
                    Ok(v) => {
                        out.insert(k.to_string(), v);
                    }
                    Err(e) => failed = Some(e),
                }
            }
        })
        .map_err(|_| bad("not a JSON object"))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(serde_json::Value::Object(out)),
        }
    }
}

impl Reads {
    pub fn of(catalog: &Catalog) -> Reads {
        let mut paths: Vec<&[Box<str>]> = Vec::new();
        let mut filters = Vec::new();
        for spec in catalog.aggregates() {
            let mut own = Vec::new();
            for node in spec.value.iter().chain(&spec.filter) {
                collect_paths(node, &mut own);
            }
            let reads_members = own.iter().any(|p| !matches!(&*p[0], "type" | "event"));
            paths.extend(own);
            let names = |l: &Option<Box<[std::sync::Arc<str>]>>| {
                l.as_ref().map(|l| l.iter().map(|s| (**s).into()).collect())
            };
            filters.push((names(&spec.events), names(&spec.types), reads_members));
        }
        let mut read = Need::Members(Vec::new());
        for path in paths
            .into_iter()
            .filter(|p| !matches!(&*p[0], "type" | "event"))
        {
            read.add(path);
        }
        let roots = match read {
            Need::Members(roots) => roots,
            Need::Whole => unreachable!("every path has a first member"),
        };
        Reads { roots, filters }
    }

    /// The aggregates that accept events of this type and name: whether each reads
    /// members besides `type` and `event`.
    fn accepting<'r>(
        &'r self,
        kind: &'r str,
        name: Option<&'r str>,
    ) -> impl Iterator<Item = bool> + 'r {
        self.filters
            .iter()
            .filter(move |(names, types, _)| {
                types
                    .as_ref()
                    .is_none_or(|t| t.iter().any(|x| &**x == kind))
                    && names
                        .as_ref()
                        .is_none_or(|n| name.is_some_and(|name| n.iter().any(|x| &**x == name)))
            })
            .map(|(_, _, reads_members)| *reads_members)
    }

    /// Whether some aggregate accepts events of this type and name.
    pub fn may_match(&self, kind: &str, name: Option<&str>) -> bool {
        self.accepting(kind, name).next().is_some()
    }

    /// What events of this type and name (`None`: no `event` string) need (see [`Plan`]).
    pub fn plan(&self, kind: &str, name: Option<&str>) -> Plan {
        let mut accepting = self.accepting(kind, name).peekable();
        if accepting.peek().is_none() {
            return Plan::Skip;
        }
        if accepting.any(|reads_members| reads_members) {
            return Plan::Slim;
        }
        let mut out = serde_json::Map::new();
        out.insert("type".into(), kind.into());
        if let Some(e) = name {
            out.insert("event".into(), e.into());
        }
        Plan::Fixed(serde_json::Value::Object(out))
    }

    /// The parts of `json` (a stored event: valid JSON) the catalog reads, or `None` when no
    /// aggregate can match it.
    pub fn slim(&self, json: &[u8]) -> Result<Option<serde_json::Value>, serde_json::Error> {
        let text = std::str::from_utf8(json).map_err(|_| bad("not UTF-8"))?;
        let (mut kind, mut name) = (None, None);
        let mut raws: Vec<(usize, &str)> = Vec::new();
        crate::json::for_each_member(text, |key, value| {
            let Some(key) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) else {
                return;
            };
            match key {
                "type" => kind = crate::json::unquote(value),
                "event" => name = crate::json::unquote(value),
                k => {
                    if let Some(i) = self.roots.iter().position(|(r, _)| &**r == k) {
                        raws.push((i, value));
                    }
                }
            }
        })
        .map_err(|_| bad("not a JSON object"))?;
        let kind = kind.unwrap_or_default();
        if !self.may_match(&kind, name.as_deref()) {
            return Ok(None);
        }
        let mut out = serde_json::Map::new();
        out.insert("type".into(), (*kind).into());
        if let Some(e) = name {
            out.insert("event".into(), (*e).into());
        }
        for (i, raw) in raws {
            let (key, need) = &self.roots[i];
            out.insert(key.to_string(), need.read(raw)?);
        }
        Ok(Some(serde_json::Value::Object(out)))
    }
}

fn bad(what: &str) -> serde_json::Error {
    serde::de::Error::custom(format!("a stored event is {what}"))
}

fn collect_paths<'a>(node: &'a Node, out: &mut Vec<&'a [Box<str>]>) {
    super::paths::for_each_path(node, &mut |p| out.push(p));
}
