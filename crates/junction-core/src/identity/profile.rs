//! The data of one profile (a person) and one account (a `group`), as the graph keeps them.
//!
//! Contract: every field is derived from the log alone (no wall clock), so replaying the same
//! log gives equal values. Trait values keep the JSON text they arrived with; the value with
//! the latest event timestamp wins, ties broken by log offset ([`TraitValue::newer_than`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::inline::InlineStr;

pub type ProfileId = u64;

/// Where one event sits: its log offset and event timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventRef {
    pub offset: u64,
    pub timestamp_ms: i64,
}

/// The log position and identity of the event being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMeta<'a> {
    pub offset: u64,
    pub received_at_ms: i64,
    pub source: &'a Arc<str>,
    pub message_id: &'a str,
}

/// One trait value with its provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraitValue {
    /// The value as JSON text.
    pub json: Box<str>,
    /// Event timestamp of the event that set it.
    pub timestamp_ms: i64,
    pub offset: u64,
    pub source: Arc<str>,
}

impl TraitValue {
    /// Latest event timestamp wins; equal timestamps: the later log offset wins.
    pub fn newer_than(&self, other: &TraitValue) -> bool {
        (self.timestamp_ms, self.offset) > (other.timestamp_ms, other.offset)
    }
}

/// An identifier owned by a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalId {
    pub kind: Arc<str>,
    /// Inline (as the message id): a profile is mostly its identifiers, and these are
    /// short, so they need no allocation of their own.
    pub value: IdValue,
    /// Event timestamp of the first event that carried it (what limit windows compare).
    pub created_ms: i64,
    pub first_message_id: MessageId,
    pub source: Arc<str>,
}

/// An identifier's value in a profile: inline up to 46 bytes (a UUID fits).
pub type IdValue = InlineStr<46>;

/// Why two profiles became one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// The surviving profile at the time of the merge.
    pub into: ProfileId,
    /// The profile merged away.
    pub from: ProfileId,
    /// The event's identifier that `into` already owned.
    pub into_identifier: (Arc<str>, Box<str>),
    /// The event's identifier that `from` owned: together they joined the two.
    pub from_identifier: (Arc<str>, Box<str>),
    pub message_id: Box<str>,
    pub source: Arc<str>,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub received_at_ms: i64,
}

/// See [`Metadata::last_event`].
pub type LastEvent = (i64, u64, MessageId, Arc<str>);

/// A message id kept in the profile: inline up to 62 bytes (UUIDs and analytics.js's
/// `ajs-next-<time>-<uuid>` fit).
pub type MessageId = InlineStr<62>;

/// First/last message and times (Profile API `metadata`).
///
/// `repr(C)`: what every event changes comes first, in the profile's first two cache lines
/// (see [`Profile`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct Metadata {
    pub last_offset: u64,
    /// `received_at` of the latest event.
    pub updated_ms: i64,
    pub last_source: Arc<str>,
    /// Inline: it changes with every event.
    pub last_message_id: MessageId,
    /// `received_at` of the first event.
    pub created_ms: i64,
    pub first_offset: u64,
    pub first_source: Arc<str>,
    pub first_message_id: MessageId,
}

impl Metadata {
    pub fn new(ev: &EventMeta<'_>) -> Metadata {
        Metadata {
            created_ms: ev.received_at_ms,
            updated_ms: ev.received_at_ms,
            first_offset: ev.offset,
            first_message_id: MessageId::new(ev.message_id),
            first_source: Arc::clone(ev.source),
            last_offset: ev.offset,
            last_message_id: MessageId::new(ev.message_id),
            last_source: Arc::clone(ev.source),
        }
    }

    pub fn touch(&mut self, ev: &EventMeta<'_>) {
        if ev.offset >= self.last_offset {
            self.updated_ms = self.updated_ms.max(ev.received_at_ms);
            self.last_offset = ev.offset;
            self.last_message_id.set(ev.message_id);
            if !Arc::ptr_eq(&self.last_source, ev.source) {
                self.last_source = Arc::clone(ev.source);
            }
        }
    }

    /// What every event changes ([`Metadata::touch`]): `(updated_ms, last_offset,
    /// last_message_id, last_source)`, persisted apart from the rest of a profile.
    pub fn last_event(&self) -> LastEvent {
        (
            self.updated_ms,
            self.last_offset,
            self.last_message_id.clone(),
            Arc::clone(&self.last_source),
        )
    }

    /// Puts back a persisted [`Metadata::last_event`] unless the metadata's is newer.
    pub fn restore_last_event(&mut self, (updated_ms, offset, message_id, source): LastEvent) {
        if offset > self.last_offset {
            self.updated_ms = self.updated_ms.max(updated_ms);
            self.last_offset = offset;
            self.last_message_id = message_id;
            self.last_source = source;
        }
    }

    /// Combines two profiles' metadata: the earliest first and the latest last.
    pub fn absorb(&mut self, other: &Metadata) {
        self.created_ms = self.created_ms.min(other.created_ms);
        self.updated_ms = self.updated_ms.max(other.updated_ms);
        if other.first_offset < self.first_offset {
            self.first_offset = other.first_offset;
            self.first_message_id = other.first_message_id.clone();
            self.first_source = Arc::clone(&other.first_source);
        }
        if other.last_offset > self.last_offset {
            self.last_offset = other.last_offset;
            self.last_message_id = other.last_message_id.clone();
            self.last_source = Arc::clone(&other.last_source);
        }
    }
}

/// Sets `slot` to `value`, reusing its allocation when the length is the same (a profile's
/// last message id changes with every event, its length rarely).
fn assign_str(slot: &mut Box<str>, value: &str) {
    if slot.len() == value.len() {
        let mut reused = std::mem::take(slot).into_string();
        reused.clear();
        reused.push_str(value);
        *slot = reused.into_boxed_str();
    } else {
        *slot = value.into();
    }
}

/// A profile's (or account's) traits by key, in key order.
///
/// A sorted vector rather than a `BTreeMap`: profiles hold a handful of traits each, for
/// which a tree's nodes take several times the memory (replays hold every profile in
/// memory). Serializes as a map, the same bytes as a `BTreeMap`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traits {
    entries: Vec<(Box<str>, TraitValue)>,
}

impl Traits {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&TraitValue> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TraitValue)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }

    /// In key order, from the first key at or after `from`.
    pub fn iter_from(&self, from: &str) -> impl Iterator<Item = (&str, &TraitValue)> {
        let start = self.find(from).unwrap_or_else(|i| i);
        self.entries[start..].iter().map(|(k, v)| (&**k, v))
    }

    /// Sets `key` to `value` unless the stored value is newer ([`TraitValue::newer_than`]);
    /// `value` is built only when it is stored.
    fn set_with(
        &mut self,
        key: impl AsRef<str> + Into<Box<str>>,
        (timestamp_ms, offset): (i64, u64),
        store: impl FnOnce(Option<&mut TraitValue>) -> Option<TraitValue>,
    ) -> bool {
        match self.find(key.as_ref()) {
            Ok(i) => {
                let old = &mut self.entries[i].1;
                if (timestamp_ms, offset) <= (old.timestamp_ms, old.offset) {
                    return false;
                }
                store(Some(old));
            }
            Err(i) => {
                let value = store(None).expect("a new key is stored");
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(1);
                }
                self.entries.insert(i, (key.into(), value));
            }
        }
        true
    }
}

impl FromIterator<(Box<str>, TraitValue)> for Traits {
    fn from_iter<I: IntoIterator<Item = (Box<str>, TraitValue)>>(iter: I) -> Traits {
        let mut traits = Traits::default();
        for (k, v) in iter {
            set_trait(&mut traits, k, v);
        }
        traits
    }
}

impl IntoIterator for Traits {
    type Item = (Box<str>, TraitValue);
    type IntoIter = std::vec::IntoIter<(Box<str>, TraitValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl Serialize for Traits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for Traits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<Box<str>, TraitValue>::deserialize(d)?;
        Ok(Traits {
            entries: map.into_iter().collect(),
        })
    }
}

/// Sets `key` unless the stored value is newer.
pub fn set_trait(traits: &mut Traits, key: Box<str>, value: TraitValue) -> bool {
    let at = (value.timestamp_ms, value.offset);
    traits.set_with(key, at, |old| match old {
        Some(old) => {
            *old = value;
            None
        }
        None => Some(value),
    })
}

/// Sets `key` to the JSON text `json` of the event at `(timestamp_ms, offset)` from
/// `source`, unless the stored value is newer; allocates only what it stores.
pub fn set_trait_text(
    traits: &mut Traits,
    key: &str,
    json: &str,
    at: (i64, u64),
    source: &Arc<str>,
) -> bool {
    traits.set_with(key, at, |old| match old {
        Some(old) => {
            assign_str(&mut old.json, json);
            (old.timestamp_ms, old.offset) = at;
            if !Arc::ptr_eq(&old.source, source) {
                old.source = Arc::clone(source);
            }
            None
        }
        None => Some(TraitValue {
            json: json.into(),
            timestamp_ms: at.0,
            offset: at.1,
            source: Arc::clone(source),
        }),
    })
}

/// Merges `from` into `into`, per key keeping the newer value.
pub fn merge_traits(into: &mut Traits, from: Traits) {
    for (k, v) in from {
        set_trait(into, k, v);
    }
}

/// One person.
///
/// `repr(C, align(64))`: applying an event touches the id, the event list and the start of
/// the metadata, laid out first so that they fill the first two cache lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C, align(64))]
pub struct Profile {
    pub id: ProfileId,
    /// The profile's events in log order. Not part of the serialized record: the store keeps
    /// them as separate timeline entries (see [`super::Changes`]).
    #[serde(skip)]
    pub events: Vec<EventRef>,
    pub metadata: Metadata,
    pub identifiers: Vec<ExternalId>,
    pub traits: Traits,
    /// Every merge that formed this profile, in log order.
    pub merges: Vec<MergeRecord>,
    /// `group_id`s of the accounts this person belongs to.
    pub accounts: BTreeSet<Box<str>>,
}

// The first cache line holds id, events and the metadata's first fields.
const _: () = assert!(std::mem::offset_of!(Profile, metadata) + 32 <= 64);

/// One account (`collections/accounts`), keyed by `group_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub group_id: Box<str>,
    pub traits: Traits,
    pub metadata: Metadata,
    pub events: Vec<EventRef>,
    pub users: BTreeSet<ProfileId>,
}

/// Merges two offset-ordered event lists.
pub fn merge_events(a: &mut Vec<EventRef>, b: Vec<EventRef>) {
    if b.is_empty() {
        return;
    }
    if a.last().is_none_or(|last| last.offset < b[0].offset) {
        a.extend(b);
        return;
    }
    a.extend(b);
    a.sort_unstable_by_key(|e| e.offset);
    a.dedup_by_key(|e| e.offset);
}
