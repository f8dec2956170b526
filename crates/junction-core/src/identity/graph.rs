//! The identity graph: which profile owns each identifier, and the profiles themselves.
//!
//! Contract ([`Graph::apply`], Segment's flat matching):
//! - The event's non-blocked identifiers, ordered by priority, are matched against owners.
//!   None matched → a new profile. One → the event attaches to it. Several → they merge
//!   into one (the one with the most events survives; ties: the oldest id).
//! - If the resulting profile would hold more values of a type than its limit (counting only
//!   values first seen within the type's window before the event time), the incoming
//!   event's lowest-priority identifier is dropped and matching starts again; this may
//!   create a new profile. Dropped identifiers are reported in [`Applied::dropped`].
//! - Hard caps: a merge that would take a profile past `max_merges` merges or
//!   `max_identifiers` identifiers does not happen; the event attaches to the
//!   highest-priority match and adds no identifier past the cap.
//! - Invariants: every identifier has exactly one owner and appears in that owner's list;
//!   an owned identifier stays owned (merges move it, nothing removes it).
//! - Deterministic: the state is a function of the sequence of applied events, so replaying
//!   the log gives equal state (profile ids included). Changes since the last
//!   [`Graph::take_changes`] are tracked for write-behind persistence, except by an
//!   [`Graph::untracked`] graph (its changes stay empty).
//!
//! Cost: [`Graph::apply`] is one event of a log replay, so it avoids allocating (scratch
//! buffers are kept, owned strings move into the profile) and touches few cache lines:
//! one owners lookup per identifier (short values are stored in the table, not behind a
//! pointer) and one profile, found by id without hashing.

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::extract::{IdKey, Observed};
use super::profile::{
    Account, EventMeta, EventRef, ExternalId, MergeRecord, Metadata, Profile, ProfileId,
    TraitValue, merge_events, merge_traits, set_trait, set_trait_with,
};
use super::rules::{Rules, kinds, rank};

/// Identify calls with this many traits or more are not applied to traits (Segment's limit).
pub const MAX_TRAITS_PER_EVENT: usize = 300;

/// What applying one event did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The profile the event belongs to; `None` when it had no usable identifier.
    pub profile: Option<ProfileId>,
    /// Profiles merged into `profile` by this event.
    pub merged: Vec<ProfileId>,
    /// Identifiers dropped by a limit or cap.
    pub dropped: Vec<IdKey>,
    /// Identifier values skipped as blocked.
    pub blocked: usize,
    pub traits_changed: bool,
}

/// Keys changed since the last [`Graph::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub profiles: Vec<ProfileId>,
    pub removed_profiles: Vec<ProfileId>,
    pub accounts: Vec<Box<str>>,
    /// What happened to timelines, in application order (a profile's events are persisted
    /// apart from its record, so a commit writes only what is new, in one entry).
    pub timeline: Vec<TimelineOp>,
}

/// One change to the profiles' event timelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimelineOp {
    /// The event became part of the profile.
    Add(ProfileId, EventRef),
    /// A merge: every event of the first profile now belongs to the second.
    Move(ProfileId, ProfileId),
}

/// Replays timeline operations into per-profile event lists (offset order).
pub fn replay_timeline(
    ops: impl IntoIterator<Item = TimelineOp>,
) -> HashMap<ProfileId, Vec<EventRef>> {
    let mut timelines: HashMap<ProfileId, Vec<EventRef>> = HashMap::default();
    for op in ops {
        match op {
            TimelineOp::Add(id, e) => timelines.entry(id).or_default().push(e),
            TimelineOp::Move(from, to) => {
                if let Some(moved) = timelines.remove(&from) {
                    merge_events(timelines.entry(to).or_default(), moved);
                }
            }
        }
    }
    timelines
}

#[derive(Clone, Debug)]
pub struct Graph {
    rules: Rules,
    owners: HashMap<OwnerKey, ProfileId>,
    profiles: ProfileTable,
    accounts: HashMap<Box<str>, Account>,
    next_id: ProfileId,
    dirty: HashSet<ProfileId>,
    removed: HashSet<ProfileId>,
    dirty_accounts: HashSet<Box<str>>,
    timeline: Vec<TimelineOp>,
    /// Off for a one-shot replay (`rebuild`), which writes the whole graph at the end.
    track_changes: bool,
    counters: Counters,
    /// Buffers of [`Graph::apply`], kept to save allocations (empty between events).
    scratch: Scratch,
}

/// Profiles by id. Ids are handed out in sequence, so a slot per id (8 bytes; empty once
/// merged away) finds a profile without hashing, through an index that fits in cache.
#[derive(Clone, Debug, Default)]
struct ProfileTable {
    slots: Vec<Option<Box<Profile>>>,
    len: usize,
}

impl ProfileTable {
    fn slot(id: ProfileId) -> usize {
        usize::try_from(id).expect("profile ids fit in memory")
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, id: &ProfileId) -> Option<&Profile> {
        self.slots.get(Self::slot(*id))?.as_deref()
    }

    fn get_mut(&mut self, id: &ProfileId) -> Option<&mut Profile> {
        self.slots.get_mut(Self::slot(*id))?.as_deref_mut()
    }

    fn contains_key(&self, id: &ProfileId) -> bool {
        self.get(id).is_some()
    }

    /// Puts `profile` in the slot of its id.
    fn insert(&mut self, profile: Box<Profile>) {
        let slot = Self::slot(profile.id);
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot].replace(profile).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: &ProfileId) -> Option<Box<Profile>> {
        let removed = self.slots.get_mut(Self::slot(*id))?.take();
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// In id order.
    fn values(&self) -> impl Iterator<Item = &Profile> {
        self.slots.iter().flatten().map(|p| &**p)
    }
}

impl std::ops::Index<&ProfileId> for ProfileTable {
    type Output = Profile;

    fn index(&self, id: &ProfileId) -> &Profile {
        self.get(id).expect("profile exists")
    }
}

/// An identifier as the owners table keeps it: the value inline when short (most are), so
/// a lookup compares it without another memory access.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OwnerKey {
    kind: Arc<str>,
    value: InlineStr,
}

impl OwnerKey {
    fn new(kind: &Arc<str>, value: &str) -> OwnerKey {
        OwnerKey {
            kind: Arc::clone(kind),
            value: InlineStr::new(value),
        }
    }

    fn to_id_key(&self) -> IdKey {
        IdKey {
            kind: Arc::clone(&self.kind),
            value: self.value.as_str().into(),
        }
    }
}

impl From<IdKey> for OwnerKey {
    fn from(key: IdKey) -> OwnerKey {
        let value = if key.value.len() <= InlineStr::CAPACITY {
            InlineStr::new(&key.value)
        } else {
            InlineStr::Heap(key.value)
        };
        OwnerKey {
            kind: key.kind,
            value,
        }
    }
}

/// A string kept inline up to [`InlineStr::CAPACITY`] bytes (a UUID fits), else on the heap.
/// Each string has one representation (inline exactly when it fits; zeros past `len`), so
/// the derived comparisons are those of the strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum InlineStr {
    Inline {
        len: u8,
        bytes: [u8; InlineStr::CAPACITY],
    },
    Heap(Box<str>),
}

// `CAPACITY` is what keeps a table slot (key and owner) to one 64-byte cache line.
const _: () = assert!(std::mem::size_of::<(OwnerKey, ProfileId)>() == 64);

impl InlineStr {
    const CAPACITY: usize = 38;

    fn new(s: &str) -> InlineStr {
        if s.len() <= Self::CAPACITY {
            let mut bytes = [0; Self::CAPACITY];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            InlineStr::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            InlineStr::Heap(s.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            InlineStr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineStr::Heap(s) => s.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            InlineStr::Inline { .. } => {
                std::str::from_utf8(self.as_bytes()).expect("copied from a str")
            }
            InlineStr::Heap(s) => s,
        }
    }
}

/// One usable identifier of the event being applied.
#[derive(Clone, Debug)]
struct Candidate {
    key: OwnerKey,
    /// The type's configured priority ([`Rules::priority`]), looked up only when there are
    /// several candidates to sort.
    priority: Option<u32>,
    /// The profile owning it before the event.
    owner: Option<ProfileId>,
}

impl Candidate {
    /// Matching order: `(rules.rank(kind), value)` (strings order as their bytes).
    fn sort_key(&self) -> ((u32, &str), &[u8]) {
        (
            rank(self.priority, &self.key.kind),
            self.key.value.as_bytes(),
        )
    }
}

#[derive(Clone, Debug, Default)]
struct Scratch {
    /// The event's candidates in matching order.
    ids: Vec<Candidate>,
    /// Distinct owners of `ids`, in that order, each with the index of its first identifier.
    matched: Vec<(ProfileId, usize)>,
}

impl Scratch {
    fn clear(&mut self) {
        self.ids.clear();
        self.matched.clear();
    }
}

/// Running totals, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    pub unresolved: u64,
    pub merges: u64,
    pub dropped: u64,
    pub blocked: u64,
}

impl Graph {
    pub fn new(rules: Rules) -> Graph {
        Graph {
            rules,
            owners: HashMap::default(),
            profiles: ProfileTable::default(),
            accounts: HashMap::default(),
            next_id: 1,
            dirty: HashSet::default(),
            removed: HashSet::default(),
            dirty_accounts: HashSet::default(),
            timeline: Vec::new(),
            track_changes: true,
            counters: Counters::default(),
            scratch: Scratch::default(),
        }
    }

    /// A graph that does not record changes for persistence: [`Graph::take_changes`] returns
    /// nothing (a one-shot replay writes the whole graph instead).
    pub fn untracked(rules: Rules) -> Graph {
        Graph {
            track_changes: false,
            ..Graph::new(rules)
        }
    }

    /// Rebuilds a graph from persisted profiles and accounts (no changes pending).
    pub fn restore(
        rules: Rules,
        profiles: impl IntoIterator<Item = Profile>,
        accounts: impl IntoIterator<Item = Account>,
        next_id: ProfileId,
    ) -> Graph {
        let mut g = Graph::new(rules);
        g.next_id = next_id;
        for p in profiles {
            for id in &p.identifiers {
                g.owners.insert(OwnerKey::new(&id.kind, &id.value), p.id);
            }
            g.next_id = g.next_id.max(p.id + 1);
            g.profiles.insert(Box::new(p));
        }
        for a in accounts {
            g.accounts.insert(a.group_id.clone(), a);
        }
        g
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn next_id(&self) -> ProfileId {
        self.next_id
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn profile_count(&self) -> usize {
        self.profiles.len()
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn identifier_count(&self) -> usize {
        self.owners.len()
    }

    pub fn profile(&self, id: ProfileId) -> Option<&Profile> {
        self.profiles.get(&id)
    }

    pub fn account(&self, group_id: &str) -> Option<&Account> {
        self.accounts.get(group_id)
    }

    /// The profile owning `kind:value`.
    pub fn lookup(&self, kind: &str, value: &str) -> Option<&Profile> {
        let id = self
            .owners
            .get(&OwnerKey::new(&self.rules.kind(kind), value))?;
        self.profiles.get(id)
    }

    /// In id order.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn owners(&self) -> impl Iterator<Item = (IdKey, ProfileId)> {
        self.owners.iter().map(|(k, v)| (k.to_id_key(), *v))
    }

    /// Changed keys since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let mut c = Changes {
            profiles: self.dirty.drain().collect(),
            removed_profiles: self.removed.drain().collect(),
            accounts: self.dirty_accounts.drain().collect(),
            timeline: std::mem::take(&mut self.timeline),
        };
        c.profiles.sort_unstable();
        c.removed_profiles.sort_unstable();
        c.accounts.sort_unstable();
        c
    }

    /// Puts back changes whose commit failed, so the next commit writes them.
    pub fn restore_changes(&mut self, changes: Changes) {
        self.dirty.extend(
            changes
                .profiles
                .into_iter()
                .filter(|p| self.profiles.contains_key(p)),
        );
        self.removed.extend(changes.removed_profiles);
        self.dirty_accounts.extend(changes.accounts);
        let mut timeline = changes.timeline;
        timeline.append(&mut self.timeline);
        self.timeline = timeline;
    }

    pub fn has_changes(&self) -> bool {
        !(self.dirty.is_empty()
            && self.removed.is_empty()
            && self.dirty_accounts.is_empty()
            && self.timeline.is_empty())
    }

    /// Applies one event (see the module contract).
    pub fn apply(&mut self, ev: &EventMeta, obs: Observed) -> Applied {
        let Observed {
            timestamp_ms: at_ms,
            identifiers,
            previous_id,
            traits,
            group,
            ..
        } = obs;
        let mut applied = Applied::default();
        self.counters.events += 1;
        let mut scratch = std::mem::take(&mut self.scratch);
        self.candidates(identifiers, previous_id, &mut scratch.ids, &mut applied);
        let target = self.resolve(&mut scratch, ev, at_ms, &mut applied);
        scratch.clear();
        self.scratch = scratch;
        self.counters.dropped += applied.dropped.len() as u64;
        self.counters.blocked += applied.blocked as u64;
        let group_id = group.as_ref().map(|(id, _)| id.as_str());
        match target {
            Some(id) => {
                self.record_event(id, ev, at_ms, traits, group_id, &mut applied);
                applied.profile = Some(id);
            }
            None => self.counters.unresolved += 1,
        }
        if let Some((group_id, traits)) = group {
            self.record_group(group_id, traits, target, ev, at_ms);
        }
        applied
    }

    /// Fills `ids` with the event's usable identifiers, deduplicated, with `alias.previousId`
    /// typed, each with its owner; sorted by priority.
    fn candidates(
        &self,
        identifiers: Vec<IdKey>,
        previous_id: Option<String>,
        ids: &mut Vec<Candidate>,
        applied: &mut Applied,
    ) {
        let mut push = |key: IdKey, owner: Option<ProfileId>| {
            if self.rules.is_blocked(&key.value) {
                applied.blocked += 1;
                return;
            }
            let key = OwnerKey::from(key);
            if !ids.iter().any(|c| c.key == key) {
                ids.push(Candidate {
                    priority: None,
                    owner: owner.or_else(|| self.owners.get(&key).copied()),
                    key,
                });
            }
        };
        for key in identifiers {
            push(key, None);
        }
        if let Some(prev) = previous_id {
            let as_user = IdKey {
                kind: self.rules.kind(kinds::USER_ID),
                value: prev.into_boxed_str(),
            };
            match self
                .owners
                .get(&OwnerKey::new(&as_user.kind, &as_user.value))
            {
                Some(&owner) => push(as_user, Some(owner)),
                None => push(
                    IdKey {
                        kind: self.rules.kind(kinds::ANONYMOUS_ID),
                        value: as_user.value,
                    },
                    None,
                ),
            }
        }
        if ids.len() > 1 {
            for c in ids.iter_mut() {
                c.priority = self.rules.priority(&c.key.kind);
            }
            // Stable: ties (equal priority and value) keep the event's order.
            ids.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        }
    }

    /// Matching with limits and caps (see the module contract): the profile the event
    /// belongs to, after any creation or merge. New identifiers move out of `scratch.ids`.
    fn resolve(
        &mut self,
        scratch: &mut Scratch,
        ev: &EventMeta,
        at_ms: i64,
        applied: &mut Applied,
    ) -> Option<ProfileId> {
        let Scratch { ids, matched } = scratch;
        // Owners do not change until a profile is chosen, so `Candidate::owner` stays valid
        // when an identifier is dropped and matching starts again.
        loop {
            if ids.is_empty() {
                return None;
            }
            matched.clear();
            for (i, c) in ids.iter().enumerate() {
                if let Some(p) = c.owner
                    && !matched.iter().any(|&(m, _)| m == p)
                {
                    matched.push((p, i));
                }
            }
            let any_new = ids.iter().any(|c| c.owner.is_none());
            // Nothing new and nothing to merge cannot break a limit.
            if (any_new || matched.len() > 1) && self.over_limit(matched, ids, at_ms) {
                let dropped = ids.pop().expect("not empty");
                applied.dropped.push(dropped.key.to_id_key());
                continue;
            }
            let Some(&(first, _)) = matched.first() else {
                let id = self.create(ev);
                self.add_identifiers(id, ids, ev, at_ms, applied);
                return Some(id);
            };
            if matched.len() > 1 && !self.merge_allowed(matched) {
                // Hard cap: no merge, nothing added; the event still resolves.
                let new = ids.drain(..).filter(|c| c.owner.is_none());
                applied.dropped.extend(new.map(|c| c.key.to_id_key()));
                return Some(first);
            }
            let survivor = if matched.len() > 1 {
                self.merge(matched, ids, ev, at_ms, applied)
            } else {
                first
            };
            self.add_identifiers(survivor, ids, ev, at_ms, applied);
            return Some(survivor);
        }
    }

    /// Would the `matched` profiles plus the new `ids` hold more values of some type than
    /// its limit?
    fn over_limit(&self, matched: &[(ProfileId, usize)], ids: &[Candidate], at_ms: i64) -> bool {
        let mut new_kinds = ids
            .iter()
            .filter(|c| c.owner.is_none())
            .map(|c| &*c.key.kind);
        let exceeds = |kind: &str| {
            let rule = self.rules.rule(kind);
            let counts = |created_ms: i64| rule.window_ms.is_none_or(|w| created_ms >= at_ms - w);
            let existing = matched
                .iter()
                .flat_map(|(p, _)| self.profiles[p].identifiers.iter())
                .filter(|i| &*i.kind == kind && counts(i.created_ms))
                .count();
            let added = ids
                .iter()
                .filter(|c| c.owner.is_none() && &*c.key.kind == kind)
                .count();
            existing + added > rule.limit as usize
        };
        if matched.len() <= 1 {
            // Only the new identifiers' types can grow (checking a type twice is harmless).
            return new_kinds.any(exceeds);
        }
        // A merge: every type any of the profiles holds, each checked once.
        let mut kinds: Vec<&str> = new_kinds.collect();
        for (p, _) in matched {
            kinds.extend(self.profiles[p].identifiers.iter().map(|i| &*i.kind));
        }
        kinds.sort_unstable();
        kinds.dedup();
        kinds.into_iter().any(exceeds)
    }

    fn merge_allowed(&self, matched: &[(ProfileId, usize)]) -> bool {
        let merges: usize = matched
            .iter()
            .map(|(p, _)| self.profiles[p].merges.len())
            .sum();
        let ids: usize = matched
            .iter()
            .map(|(p, _)| self.profiles[p].identifiers.len())
            .sum();
        merges + matched.len() - 1 <= self.rules.max_merges && ids <= self.rules.max_identifiers
    }

    fn create(&mut self, ev: &EventMeta) -> ProfileId {
        let id = self.next_id;
        self.next_id += 1;
        self.profiles.insert(Box::new(Profile {
            id,
            identifiers: Vec::new(),
            traits: Default::default(),
            metadata: Metadata::new(ev),
            merges: Vec::new(),
            events: Vec::new(),
            accounts: BTreeSet::new(),
        }));
        id
    }

    /// Gives profile `id` the new (unowned) identifiers of `ids`, up to the hard cap; empties
    /// `ids`.
    fn add_identifiers(
        &mut self,
        id: ProfileId,
        ids: &mut Vec<Candidate>,
        ev: &EventMeta,
        at_ms: i64,
        applied: &mut Applied,
    ) {
        let max = self.rules.max_identifiers;
        let profile = self.profiles.get_mut(&id).expect("target exists");
        for c in ids.drain(..).filter(|c| c.owner.is_none()) {
            if profile.identifiers.len() >= max {
                applied.dropped.push(c.key.to_id_key());
                continue;
            }
            profile.identifiers.push(ExternalId {
                kind: Arc::clone(&c.key.kind),
                value: c.key.value.as_str().into(),
                created_ms: at_ms,
                first_message_id: ev.message_id.as_str().into(),
                source: Arc::clone(&ev.source),
            });
            self.owners.insert(c.key, id);
        }
    }

    /// Merges every matched profile into one; returns the survivor.
    fn merge(
        &mut self,
        matched: &[(ProfileId, usize)],
        ids: &[Candidate],
        ev: &EventMeta,
        at_ms: i64,
        applied: &mut Applied,
    ) -> ProfileId {
        let (survivor, survivor_at) = *matched
            .iter()
            .max_by_key(|(p, _)| (self.profiles[p].events.len(), std::cmp::Reverse(*p)))
            .expect("several matched");
        let survivor_key = &ids[survivor_at].key;
        let mut profile = self.profiles.remove(&survivor).expect("exists");
        for &(loser_id, loser_at) in matched {
            if loser_id == survivor {
                continue;
            }
            let loser_key = &ids[loser_at].key;
            let loser = *self.profiles.remove(&loser_id).expect("exists");
            for i in &loser.identifiers {
                self.owners
                    .insert(OwnerKey::new(&i.kind, &i.value), survivor);
            }
            for group_id in &loser.accounts {
                if let Some(a) = self.accounts.get_mut(group_id) {
                    a.users.remove(&loser_id);
                    a.users.insert(survivor);
                    if self.track_changes {
                        self.dirty_accounts.insert(group_id.clone());
                    }
                }
            }
            profile.identifiers.extend(loser.identifiers);
            merge_traits(&mut profile.traits, loser.traits);
            profile.metadata.absorb(&loser.metadata);
            if self.track_changes {
                self.timeline.push(TimelineOp::Move(loser_id, survivor));
                self.dirty.remove(&loser_id);
                self.removed.insert(loser_id);
            }
            merge_events(&mut profile.events, loser.events);
            profile.accounts.extend(loser.accounts);
            profile.merges.extend(loser.merges);
            profile.merges.push(MergeRecord {
                into: survivor,
                from: loser_id,
                into_identifier: (
                    Arc::clone(&survivor_key.kind),
                    survivor_key.value.as_str().into(),
                ),
                from_identifier: (Arc::clone(&loser_key.kind), loser_key.value.as_str().into()),
                message_id: ev.message_id.as_str().into(),
                source: Arc::clone(&ev.source),
                offset: ev.offset,
                timestamp_ms: at_ms,
                received_at_ms: ev.received_at_ms,
            });
            self.counters.merges += 1;
            applied.merged.push(loser_id);
        }
        profile.merges.sort_by_key(|m| (m.offset, m.from));
        self.profiles.insert(profile);
        survivor
    }

    /// Adds the event to profile `id`: timeline, metadata, traits and account membership.
    fn record_event(
        &mut self,
        id: ProfileId,
        ev: &EventMeta,
        at_ms: i64,
        traits: Vec<(String, String)>,
        group_id: Option<&str>,
        applied: &mut Applied,
    ) {
        let profile = self.profiles.get_mut(&id).expect("target exists");
        profile.metadata.touch(ev);
        let event = EventRef {
            offset: ev.offset,
            timestamp_ms: at_ms,
        };
        profile.events.push(event);
        if traits.len() < MAX_TRAITS_PER_EVENT {
            for (key, json) in traits {
                applied.traits_changed |=
                    set_trait_with(&mut profile.traits, key, at_ms, ev.offset, || TraitValue {
                        json: json.into_boxed_str(),
                        timestamp_ms: at_ms,
                        offset: ev.offset,
                        source: Arc::clone(&ev.source),
                    });
            }
        }
        if let Some(group_id) = group_id
            && !self.rules.is_blocked(group_id)
            && !profile.accounts.contains(group_id)
        {
            profile.accounts.insert(group_id.into());
        }
        if self.track_changes {
            self.timeline.push(TimelineOp::Add(id, event));
            self.dirty.insert(id);
        }
    }

    fn record_group(
        &mut self,
        group_id: String,
        traits: Vec<(String, String)>,
        user: Option<ProfileId>,
        ev: &EventMeta,
        at_ms: i64,
    ) {
        if self.rules.is_blocked(&group_id) {
            return;
        }
        if self.track_changes && !self.dirty_accounts.contains(group_id.as_str()) {
            self.dirty_accounts.insert(group_id.as_str().into());
        }
        let account = match self.accounts.entry(group_id.into_boxed_str()) {
            Entry::Occupied(account) => account.into_mut(),
            Entry::Vacant(slot) => {
                let group_id = slot.key().clone();
                slot.insert(Account {
                    group_id,
                    traits: Default::default(),
                    metadata: Metadata::new(ev),
                    events: Vec::new(),
                    users: BTreeSet::new(),
                })
            }
        };
        account.metadata.touch(ev);
        account.events.push(EventRef {
            offset: ev.offset,
            timestamp_ms: at_ms,
        });
        if traits.len() < MAX_TRAITS_PER_EVENT {
            for (key, json) in traits {
                set_trait(
                    &mut account.traits,
                    key,
                    TraitValue {
                        json: json.into_boxed_str(),
                        timestamp_ms: at_ms,
                        offset: ev.offset,
                        source: Arc::clone(&ev.source),
                    },
                );
            }
        }
        if let Some(user) = user {
            account.users.insert(user);
        }
    }

    /// Every profile and account in id order: equal for equal states.
    pub fn canonical(&self) -> (Vec<&Profile>, Vec<&Account>) {
        let profiles: Vec<&Profile> = self.profiles.values().collect();
        let mut accounts: Vec<&Account> = self.accounts.values().collect();
        accounts.sort_unstable_by(|a, b| a.group_id.cmp(&b.group_id));
        (profiles, accounts)
    }

    /// Checks the invariants of the module contract; `Err` names the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = 0usize;
        for p in self.profiles.values() {
            for i in &p.identifiers {
                seen += 1;
                match self.owners.get(&OwnerKey::new(&i.kind, &i.value)) {
                    Some(owner) if *owner == p.id => {}
                    other => {
                        let key = format!("{}:{}", i.kind, i.value);
                        return Err(format!("{key} listed by {} but owned by {other:?}", p.id));
                    }
                }
            }
            if p.merges.len() > self.rules.max_merges {
                return Err(format!("profile {} has {} merges", p.id, p.merges.len()));
            }
            if p.identifiers.len() > self.rules.max_identifiers {
                return Err(format!(
                    "profile {} has {} identifiers",
                    p.id,
                    p.identifiers.len()
                ));
            }
        }
        if seen != self.owners.len() {
            return Err(format!(
                "{} owned identifiers but {seen} listed",
                self.owners.len()
            ));
        }
        Ok(())
    }
}
