//! Profile API bodies (Segment's shape, `reference/segment-compat.md` §5) rendered from the
//! identity graph's profiles and accounts, plus the merge history of a profile.
//!
//! Contract:
//! - Pure: no I/O, no clock. Query parameters are parsed and validated here ([`Query::parse`])
//!   into typed queries; a bad one is a [`ParamError`] naming the parameter. Events are the
//!   one resource that needs stored records: [`events`] asks a caller-supplied `fetch` for
//!   them in chunks, so the caller decides where the blocking I/O runs.
//! - Times are ISO 8601 (`YYYY-MM-DDTHH:MM:SS.mmmZ`); `source_id` is the source's name.
//! - Pagination: a page holds at most `limit` items; `cursor.next` is the key of the first
//!   item of the following page (`""` when there is none) and is sent back as `?next=`.
//!   Traits page by trait key, linked accounts by `group_id`, linked users by profile id,
//!   events by `<timestamp ms>_<log offset>`, external ids by an opaque token. Resuming
//!   starts at the first item at or after the cursor, so pages stay consistent while the
//!   profile grows.
//! - Order: traits by key; external ids by first-seen time (then type, value); events by
//!   event timestamp then log offset (`sort=desc` by default); merges oldest first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use base64::Engine as _;
use junction_core::identity::profile::{Metadata, Traits};
use junction_core::identity::{
    Account, EventRef, ExternalId, Graph, MergeRecord, Profile, Rules, observe,
};
use junction_core::timestamp;
use serde_json::{Map, Value, json};

use crate::log::Record;

pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_TRAITS_LIMIT: usize = 200;
pub const MAX_LIMIT: usize = 100;
pub const MAX_LINKS_LIMIT: usize = 20;
/// The id type accounts are looked up by.
pub const ACCOUNT_ID_TYPE: &str = "group_id";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    Users,
    Accounts,
}

impl Collection {
    pub fn parse(s: &str) -> Option<Collection> {
        match s {
            "users" => Some(Collection::Users),
            "accounts" => Some(Collection::Accounts),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Users => "users",
            Collection::Accounts => "accounts",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Traits,
    ExternalIds,
    Events,
    Metadata,
    Links,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::Traits,
        Resource::ExternalIds,
        Resource::Events,
        Resource::Metadata,
        Resource::Links,
    ];

    pub fn parse(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Traits => "traits",
            Resource::ExternalIds => "external_ids",
            Resource::Events => "events",
            Resource::Metadata => "metadata",
            Resource::Links => "links",
        }
    }

    /// The query parameters the resource accepts.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Resource::Traits => &["class", "include", "limit", "verbose", "next"],
            Resource::ExternalIds => &["include", "limit", "verbose", "next"],
            Resource::Events => &[
                "start", "end", "include", "exclude", "limit", "sort", "next",
            ],
            Resource::Metadata => &["verbose"],
            Resource::Links => &["limit", "next"],
        }
    }
}

/// A rejected path or query parameter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub param: String,
    /// `validation_error` (a bad value) or `invalid_request_error` (an unknown or repeated
    /// parameter, a request that cannot apply).
    pub code: &'static str,
    pub message: String,
}

impl ParamError {
    fn invalid(param: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            param: param.into(),
            code: "validation_error",
            message: message.into(),
        }
    }

    fn request(param: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            param: param.into(),
            code: "invalid_request_error",
            message: message.into(),
        }
    }
}

/// Splits `{id_type}:{value}` on the first `:`. Accounts are looked up by `group_id`.
pub fn parse_id(id: &str, collection: Collection) -> Result<(String, String), ParamError> {
    let Some((kind, value)) = id.split_once(':') else {
        return Err(ParamError::invalid(
            "id",
            format!("`id` must be `<id_type>:<value>`, e.g. `user_id:u1` (found {id:?})"),
        ));
    };
    if kind.is_empty() || value.is_empty() {
        return Err(ParamError::invalid(
            "id",
            format!("`id` must be `<id_type>:<value>` with neither part empty (found {id:?})"),
        ));
    }
    if collection == Collection::Accounts && kind != ACCOUNT_ID_TYPE {
        return Err(ParamError::request(
            "id",
            format!("accounts are looked up by `group_id:<value>` (found id type `{kind}`)"),
        ));
    }
    Ok((kind.to_string(), value.to_string()))
}

/// `class` of the traits resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraitClass {
    Audience,
    ComputedTrait,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraitsQuery {
    pub class: Option<TraitClass>,
    pub include: Option<BTreeSet<String>>,
    pub limit: usize,
    pub verbose: bool,
    pub next: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalIdsQuery {
    pub include: Option<BTreeSet<String>>,
    pub limit: usize,
    pub verbose: bool,
    pub next: Option<IdCursor>,
}

/// Where a page of external ids starts: `(created ms, type, value)`.
pub type IdCursor = (i64, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Asc,
    Desc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsQuery {
    /// Inclusive lower bound on the event timestamp (ms).
    pub start: Option<i64>,
    /// Exclusive upper bound on the event timestamp (ms).
    pub end: Option<i64>,
    /// Event names (`track` events' `event`) to keep; other types never match.
    pub include: Option<BTreeSet<String>>,
    /// Event names to leave out.
    pub exclude: Option<BTreeSet<String>>,
    pub limit: usize,
    pub sort: Sort,
    /// `(timestamp ms, offset)` of the first event of the page.
    pub next: Option<(i64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataQuery {
    pub verbose: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinksQuery {
    pub limit: usize,
    pub next: Option<String>,
}

/// The validated query of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Traits(TraitsQuery),
    ExternalIds(ExternalIdsQuery),
    Events(EventsQuery),
    Metadata(MetadataQuery),
    Links(LinksQuery),
}

/// The query string's parameters, checked against what a resource accepts.
struct Params<'a> {
    values: HashMap<&'a str, &'a str>,
}

impl<'a> Params<'a> {
    fn new(pairs: &'a [(String, String)], known: &[&str]) -> Result<Params<'a>, ParamError> {
        let mut values = HashMap::new();
        for (k, v) in pairs {
            if !known.contains(&k.as_str()) {
                return Err(ParamError::request(
                    k,
                    format!(
                        "unknown query parameter `{k}` (accepted here: {})",
                        known.join(", ")
                    ),
                ));
            }
            if values.insert(k.as_str(), v.as_str()).is_some() {
                return Err(ParamError::request(
                    k,
                    format!("query parameter `{k}` is given more than once"),
                ));
            }
        }
        Ok(Params { values })
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.values.get(name).copied()
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, ParamError> {
        let Some(v) = self.get("limit") else {
            return Ok(default);
        };
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ParamError::invalid(
                    "limit",
                    format!("`limit` must be an integer from 1 to {max} (found {v:?})"),
                )
            })
    }

    fn flag(&self, name: &str) -> Result<bool, ParamError> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ParamError::invalid(
                name,
                format!("`{name}` must be true or false (found {v:?})"),
            )),
        }
    }

    /// A comma-separated list (empty items ignored); `None` when absent.
    fn list(&self, name: &str) -> Result<Option<BTreeSet<String>>, ParamError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let items: BTreeSet<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if items.is_empty() {
            return Err(ParamError::invalid(
                name,
                format!("`{name}` must be a comma-separated list of names"),
            ));
        }
        Ok(Some(items))
    }

    fn time(&self, name: &str) -> Result<Option<i64>, ParamError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        timestamp::parse(v).map(Some).ok_or_else(|| {
            ParamError::invalid(
                name,
                format!(
                    "`{name}` must be an ISO 8601 time such as 2024-05-01T00:00:00Z (found {v:?})"
                ),
            )
        })
    }

    fn next(&self) -> Result<Option<&'a str>, ParamError> {
        match self.get("next") {
            None => Ok(None),
            Some("") => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    }
}

impl Query {
    /// Parses the query string's `(name, value)` pairs for `resource`.
    pub fn parse(resource: Resource, pairs: &[(String, String)]) -> Result<Query, ParamError> {
        let p = Params::new(pairs, resource.params())?;
        Ok(match resource {
            Resource::Traits => Query::Traits(TraitsQuery {
                class: match p.get("class") {
                    None => None,
                    Some("audience") => Some(TraitClass::Audience),
                    Some("computed_trait") => Some(TraitClass::ComputedTrait),
                    Some(v) => {
                        return Err(ParamError::invalid(
                            "class",
                            format!("`class` must be audience or computed_trait (found {v:?})"),
                        ));
                    }
                },
                include: p.list("include")?,
                limit: p.limit(DEFAULT_LIMIT, MAX_TRAITS_LIMIT)?,
                verbose: p.flag("verbose")?,
                next: p.next()?.map(str::to_string),
            }),
            Resource::ExternalIds => Query::ExternalIds(ExternalIdsQuery {
                include: p.list("include")?,
                limit: p.limit(DEFAULT_LIMIT, MAX_LIMIT)?,
                verbose: p.flag("verbose")?,
                next: p.next()?.map(decode_id_cursor).transpose()?,
            }),
            Resource::Events => {
                let q = EventsQuery {
                    start: p.time("start")?,
                    end: p.time("end")?,
                    include: p.list("include")?,
                    exclude: p.list("exclude")?,
                    limit: p.limit(DEFAULT_LIMIT, MAX_LIMIT)?,
                    sort: match p.get("sort") {
                        None | Some("desc") => Sort::Desc,
                        Some("asc") => Sort::Asc,
                        Some(v) => {
                            return Err(ParamError::invalid(
                                "sort",
                                format!("`sort` must be asc or desc (found {v:?})"),
                            ));
                        }
                    },
                    next: p.next()?.map(decode_event_cursor).transpose()?,
                };
                if let (Some(s), Some(e)) = (q.start, q.end)
                    && s > e
                {
                    return Err(ParamError::invalid(
                        "end",
                        "`end` must not be before `start`",
                    ));
                }
                Query::Events(q)
            }
            Resource::Metadata => Query::Metadata(MetadataQuery {
                verbose: p.flag("verbose")?,
            }),
            Resource::Links => Query::Links(LinksQuery {
                limit: p.limit(MAX_LINKS_LIMIT, MAX_LINKS_LIMIT)?,
                next: p.next()?.map(str::to_string),
            }),
        })
    }
}

/// `{url, has_more, next, limit}`.
fn cursor(url: &str, next: Option<String>, limit: usize) -> Value {
    json!({
        "url": url,
        "has_more": next.is_some(),
        "next": next.unwrap_or_default(),
        "limit": limit,
    })
}

/// A stored JSON text as a value (`null` if it is not JSON, which the graph never stores).
fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub fn iso(ms: i64) -> String {
    timestamp::format(ms)
}

/// A computed trait's or audience's value for the traits resource.
pub struct ComputedTrait<'a> {
    pub key: &'a str,
    pub class: TraitClass,
    pub value: Value,
    /// When the value last changed.
    pub updated_ms: i64,
}

/// The source id of computed values (the derived-events source).
pub const COMPUTED_SOURCE: &str = "junction";

/// `traits`: `{traits:{k:v}, cursor}`; verbose values are `{value, source_id, updated_at}`.
/// The profile's own traits and its computed traits and audiences, by key; with `class`
/// only computed traits or audiences. A computed key hides an own trait of the same key.
pub fn traits(
    traits: &Traits,
    computed: &[ComputedTrait<'_>],
    q: &TraitsQuery,
    url: &str,
) -> Value {
    let from = q.next.as_deref().unwrap_or_default();
    let mut all: BTreeMap<&str, (Value, &str, i64)> = BTreeMap::new();
    if q.class.is_none() {
        for (k, v) in traits.iter_from(from) {
            all.insert(k, (parse_json(&v.json), &v.source, v.timestamp_ms));
        }
    }
    for c in computed {
        if q.class.is_none_or(|class| class == c.class) && c.key >= from {
            all.insert(c.key, (c.value.clone(), COMPUTED_SOURCE, c.updated_ms));
        }
    }
    let mut page = all
        .into_iter()
        .filter(|(k, _)| q.include.as_ref().is_none_or(|inc| inc.contains(*k)))
        .take(q.limit + 1);
    let mut out = Map::new();
    for (k, (value, source, at)) in page.by_ref().take(q.limit) {
        let value = if q.verbose {
            json!({"value": value, "source_id": source, "updated_at": iso(at)})
        } else {
            value
        };
        out.insert(k.to_string(), value);
    }
    let next = page.next().map(|(k, _)| k.to_string());
    json!({"traits": out, "cursor": cursor(url, next, q.limit)})
}

/// One external id in the API's shape.
pub fn external_id(e: &ExternalId, collection: Collection) -> Value {
    json!({
        "source_id": &*e.source,
        "collection": collection.as_str(),
        "id": &*e.value,
        "type": &*e.kind,
        "created_at": iso(e.created_ms),
        "encoding": "none",
        "first_message_id": &*e.first_message_id,
    })
}

fn id_key(e: &ExternalId) -> (i64, &str, &str) {
    (e.created_ms, &e.kind, &e.value)
}

/// A profile's identifiers in API order: first seen first, then type and value.
pub fn sorted_ids(p: &Profile) -> Vec<&ExternalId> {
    let mut ids: Vec<&ExternalId> = p.identifiers.iter().collect();
    ids.sort_by(|a, b| id_key(a).cmp(&id_key(b)));
    ids
}

fn encode_id_cursor(e: &ExternalId) -> String {
    let text = json!([e.created_ms, &*e.kind, &*e.value]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_id_cursor(s: &str) -> Result<IdCursor, ParamError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<IdCursor>(&bytes).ok())
        .ok_or_else(|| {
            ParamError::invalid(
                "next",
                "`next` is not a cursor returned by this resource (send `cursor.next` as is)",
            )
        })
}

/// `external_ids` of a person: `{data:[...], cursor}`.
pub fn profile_external_ids(p: &Profile, q: &ExternalIdsQuery, url: &str) -> Value {
    let mut page = sorted_ids(p)
        .into_iter()
        .filter(|e| q.include.as_ref().is_none_or(|inc| inc.contains(&*e.kind)))
        .filter(|e| {
            q.next
                .as_ref()
                .is_none_or(|(ms, kind, value)| id_key(e) >= (*ms, kind.as_str(), value.as_str()))
        })
        .take(q.limit + 1);
    let data: Vec<Value> = page
        .by_ref()
        .take(q.limit)
        .map(|e| external_id(e, Collection::Users))
        .collect();
    let next = page.next().map(encode_id_cursor);
    json!({"data": data, "cursor": cursor(url, next, q.limit)})
}

/// An account's one external id, its `group_id`, first seen with its first event (at that
/// event's timestamp, like a person's identifiers).
pub fn account_id(a: &Account) -> ExternalId {
    ExternalId {
        kind: ACCOUNT_ID_TYPE.into(),
        value: (&*a.group_id).into(),
        created_ms: a
            .events
            .first()
            .map_or(a.metadata.created_ms, |e| e.timestamp_ms),
        first_message_id: a.metadata.first_message_id.clone(),
        source: a.metadata.first_source.clone(),
    }
}

/// `external_ids` of an account.
pub fn account_external_ids(a: &Account, q: &ExternalIdsQuery, url: &str) -> Value {
    let id = account_id(a);
    let keep = q
        .include
        .as_ref()
        .is_none_or(|inc| inc.contains(ACCOUNT_ID_TYPE))
        && q.next
            .as_ref()
            .is_none_or(|(ms, kind, value)| id_key(&id) >= (*ms, kind.as_str(), value.as_str()));
    let data: Vec<Value> = keep
        .then(|| external_id(&id, Collection::Accounts))
        .into_iter()
        .collect();
    json!({"data": data, "cursor": cursor(url, None, q.limit)})
}

/// `metadata`: `{metadata:{created_at, updated_at, expires_at, first/last message and source}}`.
pub fn metadata(m: &Metadata) -> Value {
    json!({"metadata": {
        "created_at": iso(m.created_ms),
        "updated_at": iso(m.updated_ms),
        "expires_at": null,
        "first_message_id": &*m.first_message_id,
        "first_source_id": &*m.first_source,
        "last_message_id": &*m.last_message_id,
        "last_source_id": &*m.last_source,
    }})
}

/// `links` of a person: the accounts it belongs to, `{data:[{to_collection, external_ids}], cursor}`.
pub fn user_links(graph: &Graph, p: &Profile, q: &LinksQuery, url: &str) -> Value {
    let from = match &q.next {
        Some(next) => Bound::Included(next.as_str()),
        None => Bound::Unbounded,
    };
    let mut page = p
        .accounts
        .range::<str, _>((from, Bound::Unbounded))
        .take(q.limit + 1);
    let data: Vec<Value> = page
        .by_ref()
        .take(q.limit)
        .map(|group_id| {
            let id = match graph.account(group_id) {
                Some(a) => external_id(&account_id(a), Collection::Accounts),
                None => json!({
                    "id": &**group_id, "type": ACCOUNT_ID_TYPE, "collection": "accounts", "encoding": "none",
                }),
            };
            json!({"to_collection": "accounts", "external_ids": [id]})
        })
        .collect();
    let next = page.next().map(|g| g.to_string());
    json!({"data": data, "cursor": cursor(url, next, q.limit)})
}

/// `links` of an account: its users with all their external ids.
pub fn account_links(
    graph: &Graph,
    a: &Account,
    q: &LinksQuery,
    url: &str,
) -> Result<Value, ParamError> {
    let from = match &q.next {
        Some(next) => next.parse::<u64>().map_err(|_| {
            ParamError::invalid(
                "next",
                "`next` is not a cursor returned by this resource (send `cursor.next` as is)",
            )
        })?,
        None => 0,
    };
    let mut page = a.users.range(from..).take(q.limit + 1);
    let data: Vec<Value> = page
        .by_ref()
        .take(q.limit)
        .map(|id| {
            let ids: Vec<Value> = graph
                .profile(*id)
                .map(|p| {
                    sorted_ids(p)
                        .into_iter()
                        .map(|e| external_id(e, Collection::Users))
                        .collect()
                })
                .unwrap_or_default();
            json!({"to_collection": "users", "external_ids": ids})
        })
        .collect();
    let next = page.next().map(u64::to_string);
    Ok(json!({"data": data, "cursor": cursor(url, next, q.limit)}))
}

fn decode_event_cursor(s: &str) -> Result<(i64, u64), ParamError> {
    s.rsplit_once('_')
        .and_then(|(ts, off)| Some((ts.parse().ok()?, off.parse().ok()?)))
        .ok_or_else(|| {
            ParamError::invalid(
                "next",
                "`next` is not a cursor returned by this resource (send `cursor.next` as is)",
            )
        })
}

fn encode_event_cursor(r: &EventRef) -> String {
    format!("{}_{}", r.timestamp_ms, r.offset)
}

/// The events to consider for a page, in response order, from the cursor on: filtered by
/// `start`/`end` (the names need the stored events, see [`events`]).
pub fn event_candidates(refs: &[EventRef], q: &EventsQuery) -> Vec<EventRef> {
    let mut out: Vec<EventRef> = refs
        .iter()
        .filter(|r| q.start.is_none_or(|s| r.timestamp_ms >= s))
        .filter(|r| q.end.is_none_or(|e| r.timestamp_ms < e))
        .filter(|r| {
            q.next.is_none_or(|at| match q.sort {
                Sort::Asc => (r.timestamp_ms, r.offset) >= at,
                Sort::Desc => (r.timestamp_ms, r.offset) <= at,
            })
        })
        .copied()
        .collect();
    out.sort_unstable_by_key(|r| (r.timestamp_ms, r.offset));
    if q.sort == Sort::Desc {
        out.reverse();
    }
    out
}

/// Whose events are rendered: a person's, or an account's (`group_id`).
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    User,
    Account(&'a str),
}

/// One stored event in the API's shape, and its name (a `track` event's `event`).
pub fn event(
    rec: &Record,
    at: &EventRef,
    owner: Owner<'_>,
    rules: &Rules,
) -> (Value, Option<String>) {
    let mut m = match serde_json::from_slice::<Value>(&rec.json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let kind = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let users: Vec<Value> = observe(&rec.json, rules)
        .map(|o| o.identifiers)
        .unwrap_or_default()
        .into_iter()
        .filter(|k| !rules.is_blocked(&k.value))
        .map(|k| json!({"collection": "users", "type": &*k.kind, "id": &*k.value, "encoding": "none"}))
        .collect();
    let name = match kind.as_str() {
        "track" => m.get("event").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let (external_ids, related) = match owner {
        Owner::User => (Value::from(users), json!({"users": null})),
        Owner::Account(group_id) => (
            json!([{"collection": "accounts", "type": ACCOUNT_ID_TYPE, "id": group_id, "encoding": "none"}]),
            json!({"users": users}),
        ),
    };
    let mut out = Map::new();
    out.insert("external_ids".into(), external_ids);
    out.insert(
        "context".into(),
        m.remove("context").unwrap_or_else(|| json!({})),
    );
    out.insert("type".into(), kind.clone().into());
    out.insert("message_id".into(), rec.message_id.clone().into());
    out.insert("source_id".into(), (*rec.source).into());
    out.insert("timestamp".into(), iso(at.timestamp_ms).into());
    out.insert(
        "properties".into(),
        m.remove("properties").unwrap_or_else(|| json!({})),
    );
    out.insert(
        "event".into(),
        name.clone().map_or(Value::Null, Value::from),
    );
    match kind.as_str() {
        "identify" | "group" => {
            out.insert(
                "traits".into(),
                m.remove("traits").unwrap_or_else(|| json!({})),
            );
        }
        "page" | "screen" => {
            out.insert("name".into(), m.remove("name").unwrap_or(Value::Null));
        }
        _ => {}
    }
    out.insert("related".into(), related);
    (Value::Object(out), name)
}

/// `events`: one page from `candidates` ([`event_candidates`]), reading the stored events
/// through `fetch` (which returns the records it found, in the order asked, skipping erased
/// ones) in chunks until the page and one more match are found or the candidates run out.
pub fn events<E, F>(
    candidates: &[EventRef],
    q: &EventsQuery,
    owner: Owner<'_>,
    rules: &Rules,
    url: &str,
    mut fetch: F,
) -> Result<Value, E>
where
    F: FnMut(&[EventRef]) -> Result<Vec<Record>, E>,
{
    let filtered = q.include.is_some() || q.exclude.is_some();
    let mut found: Vec<(Value, EventRef)> = Vec::new();
    let mut pos = 0;
    while found.len() <= q.limit && pos < candidates.len() {
        let wanted = q.limit + 1 - found.len();
        let n = if filtered { wanted.max(64) } else { wanted };
        let chunk = &candidates[pos..(pos + n).min(candidates.len())];
        pos += chunk.len();
        let by_offset: HashMap<u64, &EventRef> = chunk.iter().map(|r| (r.offset, r)).collect();
        for rec in fetch(chunk)? {
            let Some(at) = by_offset.get(&rec.offset) else {
                continue;
            };
            let (value, name) = event(&rec, at, owner, rules);
            let name = name.as_deref();
            let included = q
                .include
                .as_ref()
                .is_none_or(|inc| name.is_some_and(|n| inc.contains(n)));
            let excluded = q
                .exclude
                .as_ref()
                .is_some_and(|exc| name.is_some_and(|n| exc.contains(n)));
            if included && !excluded {
                found.push((value, **at));
                if found.len() > q.limit {
                    break;
                }
            }
        }
    }
    let next = found.get(q.limit).map(|(_, at)| encode_event_cursor(at));
    found.truncate(q.limit);
    let data: Vec<Value> = found.into_iter().map(|(v, _)| v).collect();
    Ok(json!({"data": data, "cursor": cursor(url, next, q.limit)}))
}

fn identifier((kind, value): &(std::sync::Arc<str>, Box<str>)) -> String {
    format!("{kind}:{value}")
}

/// One merge: `into` absorbed `from` because the event `message_id` carried both
/// `into_identifier` (owned by `into`) and `from_identifier` (owned by `from`).
pub fn merge(m: &MergeRecord) -> Value {
    json!({
        "into": m.into,
        "from": m.from,
        "into_identifier": identifier(&m.into_identifier),
        "from_identifier": identifier(&m.from_identifier),
        "message_id": &*m.message_id,
        "source_id": &*m.source,
        "timestamp": iso(m.timestamp_ms),
        "received_at": iso(m.received_at_ms),
    })
}

/// `GET /api/v1/profiles/{id}/merges`: `{profile:{id, external_ids}, merges:[...]}`, oldest
/// merge first. Profile ids are the graph's (deterministic: a replay gives the same ones).
pub fn merges(p: &Profile) -> Value {
    let ids: Vec<Value> = sorted_ids(p)
        .into_iter()
        .map(|e| external_id(e, Collection::Users))
        .collect();
    let merges: Vec<Value> = p.merges.iter().map(merge).collect();
    json!({"profile": {"id": p.id, "external_ids": ids}, "merges": merges})
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use junction_core::identity::{Batch, EventMeta, TraitValue};

    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect()
    }

    fn query(resource: Resource, q: &str) -> Query {
        Query::parse(resource, &pairs(q)).unwrap()
    }

    fn err(resource: Resource, q: &str) -> ParamError {
        Query::parse(resource, &pairs(q)).unwrap_err()
    }

    fn tv(json: &str, ts: i64) -> TraitValue {
        TraitValue {
            json: json.into(),
            timestamp_ms: ts,
            offset: 0,
            source: "web".into(),
        }
    }

    fn ext(kind: &str, value: &str, ms: i64) -> ExternalId {
        ExternalId {
            kind: kind.into(),
            value: value.into(),
            created_ms: ms,
            first_message_id: format!("m-{value}").as_str().into(),
            source: "web".into(),
        }
    }

    static WEB: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("web"));

    fn meta(offset: u64, ms: i64, msg: &str) -> EventMeta<'_> {
        EventMeta {
            offset,
            received_at_ms: ms,
            source: &WEB,
            message_id: msg,
        }
    }

    fn profile() -> Profile {
        let traits = [
            ("a", "1"),
            ("b", "\"two\""),
            ("c", "{\"x\":[1]}"),
            ("d", "null"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), tv(v, 1_000)))
        .collect();
        Profile {
            id: 3,
            identifiers: vec![
                ext("user_id", "u1", 2_000),
                ext("anonymous_id", "a1", 1_000),
                ext("email", "a+b@x.io", 2_000),
            ],
            traits,
            metadata: Metadata::new(&meta(0, 1_000, "m-first")),
            merges: vec![MergeRecord {
                into: 3,
                from: 7,
                into_identifier: ("user_id".into(), "u1".into()),
                from_identifier: ("anonymous_id".into(), "a1".into()),
                message_id: "m-1".into(),
                source: "web".into(),
                offset: 4,
                timestamp_ms: 5_000,
                received_at_ms: 5_001,
            }],
            events: vec![
                EventRef {
                    offset: 0,
                    timestamp_ms: 1_000,
                },
                EventRef {
                    offset: 1,
                    timestamp_ms: 3_000,
                },
                EventRef {
                    offset: 2,
                    timestamp_ms: 2_000,
                },
                EventRef {
                    offset: 3,
                    timestamp_ms: 3_000,
                },
            ],
            accounts: ["g1".into(), "g2".into()].into_iter().collect(),
        }
    }

    #[test]
    fn ids_split_on_the_first_colon_and_accounts_need_group_id() {
        assert_eq!(
            parse_id("email:a:b+c@x.io", Collection::Users).unwrap(),
            ("email".into(), "a:b+c@x.io".into())
        );
        assert_eq!(
            parse_id("nocolon", Collection::Users).unwrap_err().param,
            "id"
        );
        assert_eq!(
            parse_id(":x", Collection::Users).unwrap_err().code,
            "validation_error"
        );
        assert_eq!(
            parse_id("user_id:", Collection::Users).unwrap_err().param,
            "id"
        );
        let e = parse_id("user_id:u1", Collection::Accounts).unwrap_err();
        assert_eq!(e.code, "invalid_request_error");
        assert!(parse_id("group_id:g1", Collection::Accounts).is_ok());
    }

    #[test]
    fn params_are_validated_by_name() {
        let e = err(Resource::Traits, "limit=0");
        assert_eq!((e.param.as_str(), e.code), ("limit", "validation_error"));
        assert!(e.message.contains("1 to 200"), "{}", e.message);
        assert_eq!(err(Resource::Traits, "limit=201").param, "limit");
        assert_eq!(err(Resource::Events, "limit=101").param, "limit");
        assert_eq!(err(Resource::Links, "limit=21").param, "limit");
        assert_eq!(err(Resource::ExternalIds, "limit=x").param, "limit");
        assert_eq!(err(Resource::Traits, "verbose=maybe").param, "verbose");
        assert_eq!(err(Resource::Traits, "class=segment").param, "class");
        assert_eq!(err(Resource::Events, "sort=up").param, "sort");
        assert_eq!(err(Resource::Events, "start=yesterday").param, "start");
        assert_eq!(
            err(
                Resource::Events,
                "start=2024-01-02T00:00:00Z&end=2024-01-01T00:00:00Z"
            )
            .param,
            "end"
        );
        assert_eq!(err(Resource::Events, "next=abc").param, "next");
        assert_eq!(err(Resource::ExternalIds, "next=!!").param, "next");
        assert_eq!(err(Resource::Traits, "include=,").param, "include");
        let e = err(Resource::Metadata, "limit=3");
        assert_eq!(
            (e.param.as_str(), e.code),
            ("limit", "invalid_request_error")
        );
        assert_eq!(
            err(Resource::Traits, "limit=1&limit=2").code,
            "invalid_request_error"
        );
        assert_eq!(
            query(Resource::Traits, "verbose"),
            Query::Traits(TraitsQuery {
                class: None,
                include: None,
                limit: 10,
                verbose: true,
                next: None
            })
        );
        let Query::Events(q) = query(Resource::Events, "") else {
            panic!()
        };
        assert_eq!((q.limit, q.sort), (10, Sort::Desc));
        let Query::Links(q) = query(Resource::Links, "") else {
            panic!()
        };
        assert_eq!(q.limit, 20);
    }

    #[test]
    fn traits_page_by_key_with_include_and_verbose() {
        let p = profile();
        let Query::Traits(q) = query(Resource::Traits, "limit=2") else {
            panic!()
        };
        let body = traits(&p.traits, &[], &q, "/u?limit=2");
        assert_eq!(
            body,
            json!({"traits": {"a": 1, "b": "two"},
                   "cursor": {"url": "/u?limit=2", "has_more": true, "next": "c", "limit": 2}})
        );
        let Query::Traits(q) = query(Resource::Traits, "limit=2&next=c") else {
            panic!()
        };
        let body = traits(&p.traits, &[], &q, "u");
        assert_eq!(body["traits"], json!({"c": {"x": [1]}, "d": null}));
        assert_eq!(body["cursor"]["has_more"], false);
        assert_eq!(body["cursor"]["next"], "");
        let Query::Traits(q) = query(Resource::Traits, "include=b,d,zz&verbose=true") else {
            panic!()
        };
        let body = traits(&p.traits, &[], &q, "u");
        assert_eq!(
            body["traits"],
            json!({"b": {"value": "two", "source_id": "web", "updated_at": "1970-01-01T00:00:01.000Z"},
                   "d": {"value": null, "source_id": "web", "updated_at": "1970-01-01T00:00:01.000Z"}})
        );
        let Query::Traits(q) = query(Resource::Traits, "class=audience") else {
            panic!()
        };
        assert_eq!(traits(&p.traits, &[], &q, "u")["traits"], json!({}));
        // Computed values join the own traits by key; a computed key hides an own one.
        let computed = [
            ComputedTrait {
                key: "aud",
                class: TraitClass::Audience,
                value: json!(true),
                updated_ms: 5_000,
            },
            ComputedTrait {
                key: "b",
                class: TraitClass::ComputedTrait,
                value: json!(3),
                updated_ms: 5_000,
            },
        ];
        assert_eq!(
            traits(&p.traits, &computed, &q, "u")["traits"],
            json!({"aud": true})
        );
        let Query::Traits(q) = query(Resource::Traits, "class=computed_trait&verbose=true") else {
            panic!()
        };
        assert_eq!(
            traits(&p.traits, &computed, &q, "u")["traits"],
            json!({"b": {"value": 3, "source_id": "junction", "updated_at": "1970-01-01T00:00:05.000Z"}})
        );
        let Query::Traits(q) = query(Resource::Traits, "limit=2") else {
            panic!()
        };
        let body = traits(&p.traits, &computed, &q, "u");
        assert_eq!(body["traits"], json!({"a": 1, "aud": true}));
        assert_eq!(body["cursor"]["next"], "b");
        let Query::Traits(q) = query(Resource::Traits, "limit=2&next=b") else {
            panic!()
        };
        let body = traits(&p.traits, &computed, &q, "u");
        assert_eq!(body["traits"], json!({"b": 3, "c": {"x": [1]}}));
    }

    #[test]
    fn external_ids_in_first_seen_order_with_cursor_and_include() {
        let p = profile();
        let Query::ExternalIds(q) = query(Resource::ExternalIds, "limit=2") else {
            panic!()
        };
        let body = profile_external_ids(&p, &q, "u");
        assert_eq!(
            body["data"][0],
            json!({"source_id": "web", "collection": "users", "id": "a1", "type": "anonymous_id",
                   "created_at": "1970-01-01T00:00:01.000Z", "encoding": "none", "first_message_id": "m-a1"})
        );
        assert_eq!(body["data"][1]["type"], "email");
        assert_eq!(body["cursor"]["has_more"], true);
        let next = body["cursor"]["next"].as_str().unwrap();
        let Query::ExternalIds(q) = query(Resource::ExternalIds, &format!("limit=2&next={next}"))
        else {
            panic!()
        };
        let body = profile_external_ids(&p, &q, "u");
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
        assert_eq!(body["data"][0]["id"], "u1");
        assert_eq!(body["cursor"]["has_more"], false);
        let Query::ExternalIds(q) = query(Resource::ExternalIds, "include=user_id,email") else {
            panic!()
        };
        let types: Vec<_> = profile_external_ids(&p, &q, "u")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["type"].clone())
            .collect();
        assert_eq!(types, [json!("email"), json!("user_id")]);
    }

    fn account() -> Account {
        Account {
            group_id: "g1".into(),
            traits: [("name".into(), tv("\"Acme\"", 1_000))]
                .into_iter()
                .collect(),
            metadata: Metadata::new(&meta(5, 9_000, "m-g")),
            events: vec![EventRef {
                offset: 5,
                timestamp_ms: 8_000,
            }],
            users: [3].into_iter().collect(),
        }
    }

    #[test]
    fn account_external_ids_and_metadata() {
        let a = account();
        let Query::ExternalIds(q) = query(Resource::ExternalIds, "") else {
            panic!()
        };
        assert_eq!(
            account_external_ids(&a, &q, "u")["data"],
            json!([{"source_id": "web", "collection": "accounts", "id": "g1", "type": "group_id",
                    "created_at": "1970-01-01T00:00:08.000Z", "encoding": "none", "first_message_id": "m-g"}])
        );
        let Query::ExternalIds(q) = query(Resource::ExternalIds, "include=user_id") else {
            panic!()
        };
        assert_eq!(account_external_ids(&a, &q, "u")["data"], json!([]));
        let mut m = a.metadata.clone();
        m.touch(&meta(9, 12_000, "m-last"));
        assert_eq!(
            metadata(&m),
            json!({"metadata": {"created_at": "1970-01-01T00:00:09.000Z", "updated_at": "1970-01-01T00:00:12.000Z",
                   "expires_at": null, "first_message_id": "m-g", "first_source_id": "web",
                   "last_message_id": "m-last", "last_source_id": "web"}})
        );
    }

    #[test]
    fn links_both_ways_with_cursor() {
        let rules = Rules::default();
        let mut graph = Graph::new(rules.clone());
        let mut batch = Batch::default();
        for (i, json) in [
            r#"{"type":"identify","userId":"u1","anonymousId":"a1","timestamp":"2024-01-01T00:00:00Z"}"#,
            r#"{"type":"group","userId":"u1","groupId":"g1","timestamp":"2024-01-01T00:00:01Z","traits":{"name":"Acme"}}"#,
            r#"{"type":"group","userId":"u1","groupId":"g2","timestamp":"2024-01-01T00:00:02Z"}"#,
            r#"{"type":"group","userId":"u2","groupId":"g1","timestamp":"2024-01-01T00:00:03Z"}"#,
        ]
        .into_iter()
        .enumerate()
        {
            let offset = i as u64;
            let message_id = format!("m{offset}");
            let m = meta(offset, 1_000 + offset as i64, &message_id);
            batch.push(&m, json.as_bytes(), &rules).unwrap();
        }
        for row in 0..batch.len() {
            let (m, o) = batch.get(row);
            graph.apply(&m, &o.unwrap());
        }
        let p = graph.lookup("user_id", "u1").unwrap();
        let Query::Links(q) = query(Resource::Links, "limit=1") else {
            panic!()
        };
        let body = user_links(&graph, p, &q, "u");
        assert_eq!(body["data"][0]["to_collection"], "accounts");
        assert_eq!(body["data"][0]["external_ids"][0]["id"], "g1");
        assert_eq!(body["data"][0]["external_ids"][0]["type"], "group_id");
        assert_eq!(body["data"][0]["external_ids"][0]["first_message_id"], "m1");
        assert_eq!(body["cursor"]["next"], "g2");
        let Query::Links(q) = query(Resource::Links, "limit=1&next=g2") else {
            panic!()
        };
        let body = user_links(&graph, p, &q, "u");
        assert_eq!(body["data"][0]["external_ids"][0]["id"], "g2");
        assert_eq!(body["cursor"]["has_more"], false);

        let a = graph.account("g1").unwrap();
        let Query::Links(q) = query(Resource::Links, "") else {
            panic!()
        };
        let body = account_links(&graph, a, &q, "u").unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        assert_eq!(body["data"][0]["to_collection"], "users");
        let ids: Vec<_> = body["data"][0]["external_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["type"].as_str().unwrap(),
                    e["id"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(ids, ["anonymous_id:a1", "user_id:u1"]);
        assert_eq!(body["data"][1]["external_ids"][0]["id"], "u2");
        let Query::Links(q) = query(Resource::Links, "next=x") else {
            panic!()
        };
        assert_eq!(account_links(&graph, a, &q, "u").unwrap_err().param, "next");
    }

    fn record(offset: u64, json: serde_json::Value) -> Record {
        Record {
            offset,
            received_at_ms: 0,
            source: "web".into(),
            message_id: format!("m{offset}"),
            json: json.to_string().into_bytes(),
            identity: Vec::new(),
        }
    }

    fn store() -> HashMap<u64, Record> {
        let ts = |s: u64| format!("1970-01-01T00:00:0{s}.000Z");
        [
            record(0, json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "pro"}, "timestamp": ts(1), "context": {"ip": "1.2.3.4"}})),
            record(1, json!({"type": "track", "userId": "u1", "event": "Bought", "properties": {"n": 1}, "timestamp": ts(3)})),
            record(2, json!({"type": "page", "userId": "u1", "name": "Home", "timestamp": ts(2)})),
            record(3, json!({"type": "track", "userId": "u1", "event": "Viewed", "timestamp": ts(3)})),
        ]
        .into_iter()
        .map(|r| (r.offset, r))
        .collect()
    }

    /// Renders a page; returns the body and the number of records fetched.
    fn page(q: &str, erased: &[u64]) -> (Value, usize) {
        let p = profile();
        let Query::Events(q) = query(Resource::Events, q) else {
            panic!()
        };
        let candidates = event_candidates(&p.events, &q);
        let store = store();
        let mut fetched = 0;
        let fetch = |refs: &[EventRef]| -> Result<Vec<Record>, ()> {
            fetched += refs.len();
            Ok(refs
                .iter()
                .filter(|r| !erased.contains(&r.offset))
                .map(|r| store[&r.offset].clone())
                .collect())
        };
        let body = events(&candidates, &q, Owner::User, &Rules::default(), "u", fetch).unwrap();
        (body, fetched)
    }

    fn ids(body: &Value) -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn events_sort_filter_and_page() {
        let (body, fetched) = page("", &[]);
        assert_eq!(
            ids(&body),
            ["m3", "m1", "m2", "m0"],
            "newest first, ties by offset"
        );
        assert_eq!(fetched, 4);
        assert_eq!(body["cursor"]["has_more"], false);
        let (body, _) = page("sort=asc&limit=2", &[]);
        assert_eq!(ids(&body), ["m0", "m2"]);
        assert_eq!(body["cursor"]["next"], "3000_1");
        let (body, _) = page("sort=asc&limit=2&next=3000_1", &[]);
        assert_eq!(ids(&body), ["m1", "m3"]);
        assert_eq!(body["cursor"]["has_more"], false);
        let (body, fetched) = page("limit=1", &[]);
        assert_eq!(ids(&body), ["m3"]);
        assert_eq!(fetched, 2, "the page and one more");
        assert_eq!(body["cursor"]["next"], "3000_1");
        let (body, _) = page("limit=1&next=3000_1", &[]);
        assert_eq!(ids(&body), ["m1"]);
        let (body, _) = page("start=1970-01-01T00:00:02Z&end=1970-01-01T00:00:03Z", &[]);
        assert_eq!(ids(&body), ["m2"], "start inclusive, end exclusive");
        let (body, _) = page("include=Bought,Nope", &[]);
        assert_eq!(ids(&body), ["m1"]);
        let (body, _) = page("exclude=Bought", &[]);
        assert_eq!(ids(&body), ["m3", "m2", "m0"]);
        let (body, _) = page("", &[1, 2]);
        assert_eq!(ids(&body), ["m3", "m0"], "erased events are skipped");
    }

    #[test]
    fn event_shape() {
        let (body, _) = page("sort=asc", &[]);
        assert_eq!(
            body["data"][0],
            json!({
                "external_ids": [
                    {"collection": "users", "type": "user_id", "id": "u1", "encoding": "none"},
                    {"collection": "users", "type": "anonymous_id", "id": "a1", "encoding": "none"},
                ],
                "context": {"ip": "1.2.3.4"},
                "type": "identify",
                "message_id": "m0",
                "source_id": "web",
                "timestamp": "1970-01-01T00:00:01.000Z",
                "properties": {},
                "event": null,
                "traits": {"plan": "pro"},
                "related": {"users": null},
            })
        );
        assert_eq!(body["data"][2]["event"], "Bought");
        assert_eq!(body["data"][2]["properties"], json!({"n": 1}));
        assert_eq!(body["data"][1]["name"], "Home");
        let rec = record(
            5,
            json!({"type": "group", "userId": "u1", "groupId": "g1", "timestamp": "1970-01-01T00:00:08.000Z"}),
        );
        let at = EventRef {
            offset: 5,
            timestamp_ms: 8_000,
        };
        let (v, name) = event(&rec, &at, Owner::Account("g1"), &Rules::default());
        assert_eq!(name, None);
        assert_eq!(
            v["external_ids"],
            json!([{"collection": "accounts", "type": "group_id", "id": "g1", "encoding": "none"}])
        );
        assert_eq!(
            v["related"],
            json!({"users": [{"collection": "users", "type": "user_id", "id": "u1", "encoding": "none"}]})
        );
    }

    #[test]
    fn merges_oldest_first_with_joining_identifiers() {
        let mut p = profile();
        p.merges.push(MergeRecord {
            into: 3,
            from: 9,
            into_identifier: (Arc::from("user_id"), "u1".into()),
            from_identifier: (Arc::from("email"), "a+b@x.io".into()),
            message_id: "m-2".into(),
            source: "ios".into(),
            offset: 8,
            timestamp_ms: 6_000,
            received_at_ms: 6_500,
        });
        let body = merges(&p);
        assert_eq!(body["profile"]["id"], 3);
        assert_eq!(body["profile"]["external_ids"].as_array().unwrap().len(), 3);
        assert_eq!(
            body["merges"][0],
            json!({"into": 3, "from": 7, "into_identifier": "user_id:u1", "from_identifier": "anonymous_id:a1",
                   "message_id": "m-1", "source_id": "web", "timestamp": "1970-01-01T00:00:05.000Z",
                   "received_at": "1970-01-01T00:00:05.001Z"})
        );
        assert_eq!(body["merges"][1]["from"], 9);
    }
}
