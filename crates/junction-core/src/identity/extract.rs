//! What identity resolution reads from stored events: identifiers, user traits, group
//! (account) and time, kept column-wise in a reusable [`Batch`].
//!
//! Contract:
//! - [`Batch::push`] reads one stored (normalized) event with the member splitter, or its
//!   identity projection (binary, see [`super::project`]; or JSON, from format-2 logs),
//!   without a DOM and without allocating once the batch's buffers have grown, and appends
//!   a row: the event's log position and what it contributes. Where
//!   each identifier type comes from follows Segment (`reference/segment-compat.md` §6):
//!   `userId`, `anonymousId`, `traits.email`/`context.traits.email` (also `phone`),
//!   `context.device` ids by device type, `context.externalIds` of the `users` collection,
//!   the Google Analytics client id, configured trait/property keys, and `previousId` of an
//!   `alias` (typed by the graph).
//! - Every identifier is listed with its interned [`Kind`], whether its value is blocked
//!   (the graph counts those), its rank and its hash ([`id_hash`]), sorted in matching order
//!   (`(priority, type name, value)`): the graph only looks owners up.
//! - Traits are `(key, JSON text)`, one per key: `context.traits` first, then an identify's
//!   `traits`, a later value of a key replacing an earlier one (so the identify's wins). An
//!   event with [`MAX_TRAITS_PER_EVENT`] distinct trait keys or more contributes none
//!   (Segment's limit); likewise for a group's traits.
//! - Only a missing or unknown `type` or a missing or non-ISO-8601 `timestamp` (or a value
//!   that is not a JSON object) makes an event unreadable ([`ObserveError`]); odd shapes
//!   elsewhere (a `context` that is not an object, a non-boolean `adTrackingEnabled`, ...)
//!   only lose the identifiers they would have held. A member given twice counts once: the
//!   last occurrence.
//! - [`observe`] reads one event into the owned [`Observed`] (tests, the Profile API).

use std::borrow::Cow;
use std::hash::Hasher as _;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use super::profile::EventMeta;
use super::project::{self, tag};
use super::rules::{Kind, Rules, kinds, rank};
use crate::event::EventType;
use crate::json::{for_each_member, has_backslash, split_array, unquote};
use crate::timestamp;

/// Identify calls with this many traits or more are not applied to traits (Segment's limit).
pub const MAX_TRAITS_PER_EVENT: usize = 300;

/// A 128-bit fingerprint of an identifier `kind:value`: SipHash-1-3-128 under a key drawn
/// at random for this process. The graph's owners table knows identifiers by it alone, so a
/// lookup touches one small slot and compares no text. Two different identifiers have equal
/// fingerprints with probability 2^-128 (the key is secret and fresh in every process: no
/// input can be crafted to collide, and nothing persists a fingerprint).
///
/// Two `u64`s rather than a `u128`, whose 16-byte alignment would pad a table slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdHash([u64; 2]);

impl IdHash {
    /// 64 of its bits, for a hash table.
    pub fn short(self) -> u64 {
        self.0[0]
    }
}

static ID_HASH_KEY: std::sync::LazyLock<(u64, u64)> =
    std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair());

/// The [`IdHash`] of identifier `kind:value`.
pub fn id_hash(kind: Kind, value: &str) -> IdHash {
    let (k0, k1) = *ID_HASH_KEY;
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write_u32(kind.index());
    h.write(value.as_bytes());
    let h = h.finish128();
    IdHash([h.h1, h.h2])
}

/// An identifier candidate: `(type, value)`.
#[derive(Clone, Debug, PartialOrd, Ord, PartialEq, Eq, Hash)]
pub struct IdKey {
    pub kind: Arc<str>,
    pub value: Box<str>,
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

/// What the identity graph reads from one event, owned (see [`ObservedRef::to_observed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub kind: EventType,
    pub timestamp_ms: i64,
    /// In matching order, blocked values included.
    pub identifiers: Vec<IdKey>,
    /// `alias.previousId`: its type is decided by the graph (an existing `user_id`, else
    /// `anonymous_id`).
    pub previous_id: Option<String>,
    /// User traits as `(key, JSON text)`, one per key.
    pub traits: Vec<(String, String)>,
    /// `group`: the account's `groupId` and its traits.
    pub group: Option<(String, Vec<(String, String)>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stored event is not valid: {0}")]
pub struct ObserveError(pub String);

/// Reads one stored event (or its projection).
pub fn observe(json: &[u8], rules: &Rules) -> Result<Observed, ObserveError> {
    let mut batch = Batch::default();
    let source: Arc<str> = Arc::from("");
    let meta = EventMeta {
        offset: 0,
        received_at_ms: 0,
        source: &source,
        message_id: "",
    };
    batch.push(&meta, json, rules)?;
    let (_, observed) = batch.get(0);
    Ok(observed.expect("pushed without error").to_observed())
}

/// A range of [`Batch`]'s text.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    end: u32,
}

/// One identifier of a row.
#[derive(Clone, Copy, Debug)]
struct Id {
    kind: Kind,
    rank: u32,
    value: Span,
    hash: IdHash,
    blocked: bool,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    offset: u64,
    received_at_ms: i64,
    /// Index into [`Batch::sources`].
    source: u32,
    message_id: Span,
    observed: Option<Obs>,
}

#[derive(Clone, Copy, Debug)]
struct Obs {
    kind: EventType,
    timestamp_ms: i64,
    ids: (u32, u32),
    previous_id: Option<Span>,
    traits: (u32, u32),
    group: Option<(Span, (u32, u32))>,
}

/// Observations of a run of events, column-wise: the form in which the processor's reader
/// hands parsed events to the graph. Clearing keeps the buffers.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    text: String,
    rows: Vec<Row>,
    ids: Vec<Id>,
    /// `(key, JSON text)` of traits.
    pairs: Vec<(Span, Span)>,
    sources: Vec<Arc<str>>,
    /// The kinds of `<platform>.id`, `.idfa` and `.push_token` by platform (kept across
    /// [`Batch::clear`]: a few platforms recur).
    device_kinds: FxHashMap<Box<str>, [Kind; 3]>,
    /// A reused buffer for a lowercased platform name.
    platform: String,
}

/// One identifier of an [`ObservedRef`].
#[derive(Clone, Copy, Debug)]
pub struct IdRef<'a> {
    pub kind: Kind,
    /// The type's name.
    pub name: &'static str,
    pub value: &'a str,
    /// The type's priority, `u32::MAX` when it has none (see [`Rules::rank`]).
    pub rank: u32,
    /// [`id_hash`] of the identifier.
    pub hash: IdHash,
    pub blocked: bool,
}

impl IdRef<'_> {
    pub fn to_key(&self) -> IdKey {
        IdKey {
            kind: Arc::clone(self.kind.name()),
            value: self.value.into(),
        }
    }
}

/// What the graph reads from one event of a [`Batch`].
#[derive(Clone, Copy, Debug)]
pub struct ObservedRef<'a> {
    pub kind: EventType,
    pub timestamp_ms: i64,
    batch: &'a Batch,
    obs: &'a Obs,
}

impl<'a> ObservedRef<'a> {
    /// In matching order, blocked values included.
    pub fn identifiers(&self) -> impl ExactSizeIterator<Item = IdRef<'a>> + 'a {
        let batch = self.batch;
        let (from, to) = self.obs.ids;
        batch.ids[from as usize..to as usize]
            .iter()
            .map(move |id| IdRef {
                kind: id.kind,
                name: id.kind.name(),
                value: batch.text(id.value),
                rank: id.rank,
                hash: id.hash,
                blocked: id.blocked,
            })
    }

    pub fn previous_id(&self) -> Option<&'a str> {
        self.obs.previous_id.map(|s| self.batch.text(s))
    }

    /// User traits, one per key.
    pub fn traits(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a {
        self.batch.pairs(self.obs.traits)
    }

    /// A group's `groupId` and traits.
    pub fn group(
        &self,
    ) -> Option<(
        &'a str,
        impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a,
    )> {
        let (id, traits) = self.obs.group?;
        Some((self.batch.text(id), self.batch.pairs(traits)))
    }

    pub fn to_observed(&self) -> Observed {
        let owned = |it: &mut dyn Iterator<Item = (&str, &str)>| {
            it.map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
        };
        Observed {
            kind: self.kind,
            timestamp_ms: self.timestamp_ms,
            identifiers: self.identifiers().map(|i| i.to_key()).collect(),
            previous_id: self.previous_id().map(str::to_owned),
            traits: owned(&mut self.traits()),
            group: self
                .group()
                .map(|(id, mut traits)| (id.to_owned(), owned(&mut traits))),
        }
    }
}

/// An id member: plain text (a binary projection's), or JSON text to interpret.
#[derive(Clone, Copy, Debug)]
enum IdField<'a> {
    Text(&'a str),
    Json(&'a str),
}

impl<'a> IdField<'a> {
    /// See [`id_text`].
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            IdField::Text(t) => (!t.is_empty()).then_some(Cow::Borrowed(t)),
            IdField::Json(j) => id_text(j),
        }
    }
}

/// What identity resolution reads of one event, from its JSON or its binary projection:
/// the last occurrence of each member; nested values as JSON text.
#[derive(Debug)]
struct Fields<'a> {
    kind: EventType,
    timestamp_ms: i64,
    user_id: Option<IdField<'a>>,
    anonymous_id: Option<IdField<'a>>,
    previous_id: Option<IdField<'a>>,
    group_id: Option<IdField<'a>>,
    traits: Option<&'a str>,
    properties: Option<&'a str>,
    context_traits: Option<&'a str>,
    device: Option<&'a str>,
    external_ids: Option<&'a str>,
    integrations: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn read(bytes: &'a [u8]) -> Result<Fields<'a>, ObserveError> {
        match bytes.first() {
            Some(&project::VERSION) => Fields::from_projection(bytes),
            _ => Fields::from_json(
                std::str::from_utf8(bytes).map_err(|_| ObserveError("not UTF-8".into()))?,
            ),
        }
    }

    /// A binary projection (see [`super::project`]).
    fn from_projection(bytes: &'a [u8]) -> Result<Fields<'a>, ObserveError> {
        let cut = || ObserveError("identity projection cut short".into());
        let (kind, mut rest) = match bytes {
            [_, kind, rest @ ..] => (*kind, rest),
            _ => return Err(cut()),
        };
        let kind = project::type_of_code(kind)
            .ok_or_else(|| ObserveError(format!("unknown event type code {kind}")))?;
        let (ms, tail) = rest.split_first_chunk::<8>().ok_or_else(cut)?;
        rest = tail;
        let mut f = Fields::new(kind, i64::from_le_bytes(*ms));
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            let len = project::take_varint(&mut rest).ok_or_else(cut)?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= rest.len())
                .ok_or_else(cut)?;
            let (value, tail) = rest.split_at(len);
            rest = tail;
            let text = || {
                std::str::from_utf8(value)
                    .map_err(|_| ObserveError("identity projection is not UTF-8".into()))
            };
            let id = |text: &'a str| match tag & tag::JSON {
                0 => IdField::Text(text),
                _ => IdField::Json(text),
            };
            match tag & !tag::JSON {
                tag::USER_ID => f.user_id = Some(id(text()?)),
                tag::ANONYMOUS_ID => f.anonymous_id = Some(id(text()?)),
                tag::PREVIOUS_ID => f.previous_id = Some(id(text()?)),
                tag::GROUP_ID => f.group_id = Some(id(text()?)),
                _ if tag & tag::JSON != 0 => {}
                tag::TRAITS => f.traits = Some(text()?),
                tag::CONTEXT_TRAITS => f.context_traits = Some(text()?),
                tag::DEVICE => f.device = Some(text()?),
                tag::EXTERNAL_IDS => f.external_ids = Some(text()?),
                tag::INTEGRATIONS => f.integrations = Some(text()?),
                _ => {} // a field of a later version
            }
        }
        Ok(f)
    }

    /// A stored event (or a JSON projection of a format-2 log).
    fn from_json(raw: &'a str) -> Result<Fields<'a>, ObserveError> {
        let mut m: [Option<&'a str>; 10] = [None; 10];
        const NAMES: [&str; 10] = [
            "type",
            "timestamp",
            "userId",
            "anonymousId",
            "previousId",
            "groupId",
            "traits",
            "properties",
            "context",
            "integrations",
        ];
        for_each_member(raw, |key, value| {
            if let Some(i) = NAMES.iter().position(|n| *n == key_text(key)) {
                m[i] = Some(value).filter(|v| *v != "null");
            }
        })
        .map_err(|e| ObserveError(e.to_string()))?;
        let [
            kind,
            timestamp,
            user_id,
            anonymous_id,
            previous_id,
            group_id,
            traits,
            properties,
            context,
            integrations,
        ] = m;
        let timestamp_ms = timestamp
            .and_then(unquote)
            .as_deref()
            .and_then(timestamp::parse)
            .ok_or_else(|| ObserveError("timestamp is missing or not ISO 8601".into()))?;
        let kind = kind
            .and_then(unquote)
            .as_deref()
            .and_then(EventType::parse)
            .ok_or_else(|| {
                ObserveError(format!("unknown event type {}", kind.unwrap_or("null")))
            })?;
        let mut f = Fields::new(kind, timestamp_ms);
        [f.user_id, f.anonymous_id, f.previous_id, f.group_id] =
            [user_id, anonymous_id, previous_id, group_id].map(|v| v.map(IdField::Json));
        (f.traits, f.properties, f.integrations) = (traits, properties, integrations);
        for_members(context, |key, value| {
            let slot = match key {
                "traits" => &mut f.context_traits,
                "device" => &mut f.device,
                "externalIds" => &mut f.external_ids,
                _ => return,
            };
            *slot = Some(value);
        });
        Ok(f)
    }

    fn new(kind: EventType, timestamp_ms: i64) -> Fields<'a> {
        Fields {
            kind,
            timestamp_ms,
            user_id: None,
            anonymous_id: None,
            previous_id: None,
            group_id: None,
            traits: None,
            properties: None,
            context_traits: None,
            device: None,
            external_ids: None,
            integrations: None,
        }
    }
}

/// Calls `f(key, raw value)` for each member of `raw` if it is an object (keys unescaped).
fn for_members<'a>(raw: Option<&'a str>, mut f: impl FnMut(&str, &'a str)) {
    let Some(raw) = raw.filter(|r| r.starts_with('{')) else {
        return;
    };
    let _ = for_each_member(raw, |key, value| f(&key_text(key), value));
}

/// The text of a raw (quoted) member key: the key as written unless it holds an escape.
#[inline]
fn key_text(raw: &str) -> Cow<'_, str> {
    let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
    if has_backslash(inner.as_bytes()) {
        unquote(raw).unwrap_or_default()
    } else {
        Cow::Borrowed(inner)
    }
}

/// The raw value of the last member `key` of object `raw`.
fn member<'a>(raw: Option<&'a str>, key: &str) -> Option<&'a str> {
    let mut found = None;
    for_members(raw, |k, v| {
        if k == key {
            found = Some(v);
        }
    });
    found
}

/// The text of an id value: a string (unescaped) or a number (as serde prints it); `None`
/// for anything else and for the empty string.
fn id_text(raw: &str) -> Option<Cow<'_, str>> {
    let text = match raw.as_bytes().first()? {
        b'"' => unquote(raw)?,
        b'-' | b'0'..=b'9' => Cow::Owned(number_text(raw)?),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// A JSON number as an id: integers as written, other numbers as serde prints the `f64`.
fn number_text(raw: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Number>(raw).ok()? {
        n if n.is_u64() || n.is_i64() => Some(n.to_string()),
        n => serde_json::Number::from_f64(n.as_f64()?).map(|n| n.to_string()),
    }
}

impl Batch {
    pub fn clear(&mut self) {
        self.text.clear();
        self.rows.clear();
        self.ids.clear();
        self.pairs.clear();
        self.sources.clear();
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`: the event's position, and what it contributes (`None`: unreadable).
    pub fn get(&self, i: usize) -> (EventMeta<'_>, Option<ObservedRef<'_>>) {
        let row = &self.rows[i];
        let meta = EventMeta {
            offset: row.offset,
            received_at_ms: row.received_at_ms,
            source: &self.sources[row.source as usize],
            message_id: self.text(row.message_id),
        };
        let observed = row.observed.as_ref().map(|obs| ObservedRef {
            kind: obs.kind,
            timestamp_ms: obs.timestamp_ms,
            batch: self,
            obs,
        });
        (meta, observed)
    }

    fn text(&self, s: Span) -> &str {
        &self.text[s.start as usize..s.end as usize]
    }

    fn pairs(&self, (from, to): (u32, u32)) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.pairs[from as usize..to as usize]
            .iter()
            .map(|(k, v)| (self.text(*k), self.text(*v)))
    }

    fn put(&mut self, s: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        Span {
            start,
            end: self.text.len() as u32,
        }
    }

    /// Appends a row for the event at `meta` whose stored JSON (or projection) is `json`.
    /// An unreadable event still gets a row (without observation), so offsets stay
    /// contiguous, and its error is returned.
    pub fn push(
        &mut self,
        meta: &EventMeta<'_>,
        json: &[u8],
        rules: &Rules,
    ) -> Result<(), ObserveError> {
        let source = match self.sources.last() {
            Some(last) if Arc::ptr_eq(last, meta.source) => self.sources.len() - 1,
            _ => {
                self.sources.push(Arc::clone(meta.source));
                self.sources.len() - 1
            }
        };
        let message_id = self.put(meta.message_id);
        let marks = (self.text.len(), self.ids.len(), self.pairs.len());
        let observed = self.observe(json, rules);
        if observed.is_err() {
            self.text.truncate(marks.0);
            self.ids.truncate(marks.1);
            self.pairs.truncate(marks.2);
        }
        self.rows.push(Row {
            offset: meta.offset,
            received_at_ms: meta.received_at_ms,
            source: source as u32,
            message_id,
            observed: observed.as_ref().ok().copied(),
        });
        observed.map(|_| ())
    }

    fn observe(&mut self, bytes: &[u8], rules: &Rules) -> Result<Obs, ObserveError> {
        let f = Fields::read(bytes)?;
        let ids_start = self.ids.len();
        let id = |batch: &mut Batch, kind: Kind, value: Option<Cow<'_, str>>| {
            if let Some(value) = value {
                batch.push_id(kind, &value, rules);
            }
        };
        id(self, Kind::USER_ID, f.user_id.and_then(IdField::text));
        id(
            self,
            Kind::ANONYMOUS_ID,
            f.anonymous_id.and_then(IdField::text),
        );

        // A group's `traits` describe the account, not the user.
        let is_group = f.kind == EventType::Group;
        let user_traits = if is_group { None } else { f.traits };
        // Email and phone of `context.traits` and of the identify's traits, read with them.
        let mut held = [[None; 2]; 2];
        let traits = self.traits(&[f.context_traits, user_traits], |object, key, value| {
            let slot = match key {
                kinds::EMAIL => 0,
                kinds::PHONE => 1,
                _ => return,
            };
            held[slot][object] = Some(value);
        });
        // A trait-held id: the identify's value, else the one in `context.traits`.
        fn pick([context, user]: [Option<&str>; 2]) -> Option<Cow<'_, str>> {
            user.and_then(id_text).or_else(|| context.and_then(id_text))
        }
        for (kind, found) in [Kind::EMAIL, Kind::PHONE].into_iter().zip(held) {
            id(self, kind, pick(found));
        }
        for custom in &rules.trait_identifiers {
            let found = [f.context_traits, user_traits].map(|t| member(t, &custom.key));
            id(self, custom.kind, pick(found));
        }
        for custom in &rules.property_identifiers {
            let value = member(f.properties, &custom.key).and_then(id_text);
            id(self, custom.kind, value);
        }
        if f.device.is_some() {
            self.device_ids(f.device, rules);
        }
        if let Some(list) = f.external_ids.filter(|l| l.starts_with('[')) {
            let _ = split_array(list, |item| self.external_id(item, rules));
        }
        // Parsed only when it can hold the Google Analytics client id.
        if let Some(integrations) = f
            .integrations
            .filter(|r| r.contains("Analytics") || has_backslash(r.as_bytes()))
        {
            let ga = member(Some(integrations), "Google Analytics");
            id(
                self,
                Kind::GA_CLIENT_ID,
                member(ga, "clientId").and_then(id_text),
            );
        }
        let ids_end = self.ids.len();
        self.sort_ids(ids_start);

        let previous_id = match (f.kind, f.previous_id.and_then(IdField::text)) {
            (EventType::Alias, Some(p)) => Some(self.put(&p)),
            _ => None,
        };
        let group = match (is_group, f.group_id.and_then(IdField::text)) {
            (true, Some(group_id)) => {
                let id = self.put(&group_id);
                Some((id, self.traits(&[f.traits], |_, _, _| {})))
            }
            _ => None,
        };
        Ok(Obs {
            kind: f.kind,
            timestamp_ms: f.timestamp_ms,
            ids: (ids_start as u32, ids_end as u32),
            previous_id,
            traits,
            group,
        })
    }

    fn push_id(&mut self, kind: Kind, value: &str, rules: &Rules) {
        let value_span = self.put(value);
        self.ids.push(Id {
            kind,
            rank: rules.priority(kind).unwrap_or(u32::MAX),
            value: value_span,
            hash: id_hash(kind, value),
            blocked: rules.is_blocked(value),
        });
    }

    /// `<type>.id`, `<type>.idfa` (when ad tracking is enabled) and `<type>.push_token` of
    /// `context.device`.
    fn device_ids(&mut self, device: Option<&str>, rules: &Rules) {
        let (mut id, mut platform, mut idfa, mut tracking, mut token) =
            (None, None, None, false, None);
        for_members(device, |key, value| match key {
            "id" => id = Some(value),
            "type" => platform = Some(value),
            "advertisingId" => idfa = Some(value),
            "adTrackingEnabled" => tracking = value == "true",
            "token" => token = Some(value),
            _ => {}
        });
        let mut name = std::mem::take(&mut self.platform);
        name.clear();
        if let Some(t) = platform.and_then(unquote) {
            name.extend(t.trim().chars().map(|c| c.to_ascii_lowercase()));
        }
        if name.is_empty() || name.len() > 40 {
            name.replace_range(.., "device");
        }
        let kinds = match self.device_kinds.get(name.as_str()) {
            Some(kinds) => *kinds,
            None => {
                let kinds = ["id", "idfa", "push_token"].map(|s| Kind::of(&format!("{name}.{s}")));
                if self.device_kinds.len() >= 1024 {
                    self.device_kinds.clear(); // many platforms: a bounded cache
                }
                self.device_kinds.insert(name.as_str().into(), kinds);
                kinds
            }
        };
        self.platform = name;
        for (kind, raw) in kinds
            .into_iter()
            .zip([id, idfa.filter(|_| tracking), token])
        {
            if let Some(value) = raw.and_then(id_text) {
                self.push_id(kind, &value, rules);
            }
        }
    }

    /// One `context.externalIds` entry: Segment requires all four fields; only the users
    /// collection identifies a person.
    fn external_id(&mut self, item: &str, rules: &Rules) {
        let (mut id, mut kind, mut collection, mut encoding) = (None, None, None, None);
        for_members(Some(item), |key, value| {
            let slot = match key {
                "id" => &mut id,
                "type" => &mut kind,
                "collection" => &mut collection,
                "encoding" => &mut encoding,
                _ => return,
            };
            *slot = Some(value);
        });
        let (Some(value), Some(kind), Some(collection), Some(_)) = (
            id.and_then(id_text),
            kind.and_then(unquote),
            collection.and_then(unquote),
            encoding.and_then(unquote),
        ) else {
            return;
        };
        let kind = kind.trim().to_ascii_lowercase();
        if collection == "users" && !kind.is_empty() && kind.len() <= 100 {
            self.push_id(Kind::of(&kind), &value, rules);
        }
    }

    /// Sorts the identifiers from `start` on into matching order (stable).
    fn sort_ids(&mut self, start: usize) {
        if self.ids.len() - start < 2 {
            return;
        }
        let text = &self.text;
        let at = |s: Span| &text[s.start as usize..s.end as usize];
        self.ids[start..].sort_by(|a, b| {
            let key = |i: &Id| {
                let priority = (i.rank != u32::MAX).then_some(i.rank);
                (rank(priority, i.kind.name()), at(i.value))
            };
            key(a).cmp(&key(b))
        });
    }

    /// The members of the `objects` in order as traits, one per key (a later value
    /// replaces an earlier one); none at all from [`MAX_TRAITS_PER_EVENT`] keys on.
    /// `seen(object index, key, value)` is called for every member.
    fn traits<'a>(
        &mut self,
        objects: &[Option<&'a str>],
        mut seen: impl FnMut(usize, &str, &'a str),
    ) -> (u32, u32) {
        let start = self.pairs.len();
        let mut too_many = false;
        for (i, object) in objects.iter().enumerate() {
            for_members(*object, |key, value| {
                seen(i, key, value);
                if too_many {
                    return;
                }
                let text = &self.text;
                let existing = self.pairs[start..]
                    .iter()
                    .position(|(k, _)| &text[k.start as usize..k.end as usize] == key);
                let value = self.put(value);
                match existing {
                    Some(i) => self.pairs[start + i].1 = value,
                    None if self.pairs.len() - start + 1 >= MAX_TRAITS_PER_EVENT => too_many = true,
                    None => {
                        let key = self.put(key);
                        self.pairs.push((key, value));
                    }
                }
            });
        }
        if too_many {
            self.pairs.truncate(start);
        }
        (start as u32, self.pairs.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::RulesSpec;

    fn ids(o: &Observed) -> Vec<String> {
        o.identifiers.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn reads_every_identifier_source_in_matching_order() {
        let rules = Rules::new(&RulesSpec {
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
                "email:e@x.io",
                "account_number:42",
                "anonymous_id:a1",
                "ga_client_id:ga.1",
                "ios.id:dev1",
                "ios.idfa:idfa1",
                "ios.push_token:pt1",
                "order_ref:o-9",
                "phone:+15550001",
                "shopify_id:ext1",
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
        assert_eq!(plans, [&("plan".to_string(), "\"pro\"".to_string())]);
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
    }

    #[test]
    fn only_type_and_timestamp_make_an_event_unreadable() {
        let rules = Rules::default();
        for bad in [
            "{}",
            "[1]",
            r#"{"type":"track","userId":"a","timestamp":null}"#,
            r#"{"type":"track","userId":"a","timestamp":5}"#,
            r#"{"type":"track","userId":"a","timestamp":"yesterday"}"#,
            r#"{"type":null,"userId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"type":"click","userId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#,
            r#"{"userId":"a","timestamp":"2024-05-01T00:00:00.000Z"}"#,
        ] {
            assert!(observe(bad.as_bytes(), &rules).is_err(), "{bad}");
        }
        let read = |json: &str| ids(&observe(json.as_bytes(), &rules).unwrap());
        assert_eq!(
            read(
                r#"{"type":"track","userId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":"x"}"#
            ),
            ["user_id:a"]
        );
        assert_eq!(
            read(
                r#"{"type":"track","userId":true,"anonymousId":{"x":1},"timestamp":"2024-05-01T00:00:00.000Z"}"#
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            read(
                r#"{"type":"track","user\u0049d":"a\u0062","timestamp":"2024-05-01T00:00:00.000Z"}"#
            ),
            ["user_id:ab"]
        );
        assert_eq!(
            read(
                r#"{"type":"track","userId":"a","userId":"b","timestamp":"2024-05-01T00:00:00.000Z"}"#
            ),
            ["user_id:b"]
        );
        assert_eq!(
            read(
                r#"{"type":"group","userId":12,"groupId":7.5,"timestamp":"2024-05-01T00:00:00.000Z"}"#
            ),
            ["user_id:12"]
        );
        assert_eq!(
            read(
                r#"{"type":"track","anonymousId":"a","timestamp":"2024-05-01T00:00:00.000Z","context":{"device":{"type":7,"id":"d","adTrackingEnabled":"yes","advertisingId":"ad"}}}"#
            ),
            ["anonymous_id:a", "device.id:d"]
        );
        let o = observe(
            br#"{"type":"group","userId":"u","groupId":7.5,"timestamp":"2024-05-01T00:00:00Z"}"#,
            &rules,
        )
        .unwrap();
        assert_eq!(o.group.unwrap().0, "7.5");
    }

    #[test]
    fn too_many_traits_contribute_none() {
        let rules = Rules::default();
        let traits = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!(
                r#"{{"type":"identify","userId":"u","timestamp":"2024-05-01T00:00:00Z","traits":{{{}}}}}"#,
                members.join(",")
            )
        };
        let read = |n| observe(traits(n).as_bytes(), &rules).unwrap().traits.len();
        assert_eq!(read(MAX_TRAITS_PER_EVENT - 1), MAX_TRAITS_PER_EVENT - 1);
        assert_eq!(read(MAX_TRAITS_PER_EVENT), 0);
    }

    #[test]
    fn a_batch_keeps_rows_of_unreadable_events_and_reuses_its_buffers() {
        let rules = Rules::default();
        let source: Arc<str> = Arc::from("web");
        let mut batch = Batch::default();
        for round in 0..2 {
            batch.clear();
            for (offset, json) in [
                r#"{"type":"track","anonymousId":"a1","timestamp":"2024-05-01T00:00:00Z"}"#,
                r#"{"type":"track"}"#,
                r#"{"type":"identify","userId":"u1","anonymousId":"a1","timestamp":"2024-05-01T00:00:01Z","traits":{"plan":"pro"}}"#,
            ]
            .into_iter()
            .enumerate()
            {
                let meta = EventMeta {
                    offset: offset as u64 + 10,
                    received_at_ms: 5,
                    source: &source,
                    message_id: &format!("m{round}-{offset}"),
                };
                assert_eq!(batch.push(&meta, json.as_bytes(), &rules).is_ok(), offset != 1);
            }
            assert_eq!(batch.len(), 3);
            let (meta, observed) = batch.get(1);
            assert_eq!(
                (meta.offset, meta.message_id),
                (11, &*format!("m{round}-1"))
            );
            assert!(observed.is_none());
            let (meta, observed) = batch.get(2);
            assert_eq!(meta.offset, 12);
            let observed = observed.unwrap();
            let ids: Vec<_> = observed
                .identifiers()
                .map(|i| i.to_key().to_string())
                .collect();
            assert_eq!(ids, ["user_id:u1", "anonymous_id:a1"]);
            assert_eq!(observed.traits().collect::<Vec<_>>(), [("plan", "\"pro\"")]);
            let first = observed.identifiers().next().unwrap();
            assert_eq!(first.hash, id_hash(Kind::USER_ID, "u1"));
        }
    }
}
