//! The data of one profile (a person) and one account (a `group`), as the graph keeps them.
//!
//! Contract: every field is derived from the log alone (no wall clock), so replaying the same
//! log gives equal values. Trait values keep the JSON text they arrived with; the value with
//! the latest event timestamp wins, ties broken by log offset ([`TraitValue::newer_than`]).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub type ProfileId = u64;

/// Where one event sits: its log offset and event timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventRef {
    pub offset: u64,
    pub timestamp_ms: i64,
}

/// The log position and identity of the event being applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    pub offset: u64,
    pub received_at_ms: i64,
    pub source: Arc<str>,
    pub message_id: String,
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
    pub value: Box<str>,
    /// Event timestamp of the first event that carried it (what limit windows compare).
    pub created_ms: i64,
    pub first_message_id: Box<str>,
    pub source: Arc<str>,
}

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

/// First/last message and times (Profile API `metadata`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// `received_at` of the first event.
    pub created_ms: i64,
    /// `received_at` of the latest event.
    pub updated_ms: i64,
    pub first_offset: u64,
    pub first_message_id: Box<str>,
    pub first_source: Arc<str>,
    pub last_offset: u64,
    pub last_message_id: Box<str>,
    pub last_source: Arc<str>,
}

impl Metadata {
    pub fn new(ev: &EventMeta) -> Metadata {
        Metadata {
            created_ms: ev.received_at_ms,
            updated_ms: ev.received_at_ms,
            first_offset: ev.offset,
            first_message_id: ev.message_id.as_str().into(),
            first_source: Arc::clone(&ev.source),
            last_offset: ev.offset,
            last_message_id: ev.message_id.as_str().into(),
            last_source: Arc::clone(&ev.source),
        }
    }

    pub fn touch(&mut self, ev: &EventMeta) {
        if ev.offset >= self.last_offset {
            self.updated_ms = self.updated_ms.max(ev.received_at_ms);
            self.last_offset = ev.offset;
            assign_str(&mut self.last_message_id, &ev.message_id);
            if !Arc::ptr_eq(&self.last_source, &ev.source) {
                self.last_source = Arc::clone(&ev.source);
            }
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

pub type Traits = BTreeMap<Box<str>, TraitValue>;

/// Sets `key` unless the stored value is newer.
pub fn set_trait(traits: &mut Traits, key: impl Into<Box<str>>, value: TraitValue) -> bool {
    set_trait_with(traits, key, value.timestamp_ms, value.offset, || value)
}

/// Like [`set_trait`], building the value only when it is stored.
pub fn set_trait_with(
    traits: &mut Traits,
    key: impl Into<Box<str>>,
    timestamp_ms: i64,
    offset: u64,
    value: impl FnOnce() -> TraitValue,
) -> bool {
    match traits.entry(key.into()) {
        Entry::Occupied(old)
            if (timestamp_ms, offset) <= (old.get().timestamp_ms, old.get().offset) =>
        {
            false
        }
        Entry::Occupied(mut old) => {
            old.insert(value());
            true
        }
        Entry::Vacant(slot) => {
            slot.insert(value());
            true
        }
    }
}

/// Merges `from` into `into`, per key keeping the newer value.
pub fn merge_traits(into: &mut Traits, from: Traits) {
    for (k, v) in from {
        set_trait(into, k, v);
    }
}

/// One person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: ProfileId,
    pub identifiers: Vec<ExternalId>,
    pub traits: Traits,
    pub metadata: Metadata,
    /// Every merge that formed this profile, in log order.
    pub merges: Vec<MergeRecord>,
    /// The profile's events in log order. Not part of the serialized record: the store keeps
    /// them as separate timeline entries (see [`super::Changes`]).
    #[serde(skip)]
    pub events: Vec<EventRef>,
    /// `group_id`s of the accounts this person belongs to.
    pub accounts: BTreeSet<Box<str>>,
}

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
