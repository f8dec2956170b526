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
//! Cost: [`Graph::apply`] is one event of a log replay, so it allocates only what it stores
//! (scratch buffers are kept; the event's strings are borrowed from its [`Batch`]) and
//! touches few cache lines: one owners lookup per identifier, a 24-byte slot found by the
//! 128-bit fingerprint the batch computed ([`IdHash`]: the owners table holds no text, the
//! profiles do), and one profile, found by id without hashing.
//!
//! [`Batch`]: super::Batch

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::extract::{Batch, IdHash, IdKey, IdRef, ObservedRef, id_hash};
use super::inline::InlineStr;
use super::profile::{
    Account, EventMeta, EventRef, ExternalId, IdValue, MergeRecord, MessageId, Metadata, Profile,
    ProfileId, merge_events, merge_traits, set_trait_text,
};
use super::rules::{Kind, Rules, rank};

/// Events whose owners [`Graph::apply_batch`] looks up at once: enough for their cache
/// misses to overlap, few enough for what they load to stay in cache until used.
const LOOK_AHEAD: usize = 128;

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
    /// Profiles whose record changed (identifiers, traits, merges, accounts).
    pub profiles: Vec<ProfileId>,
    /// Other profiles whose only change is their last event ([`Metadata::last_event`]):
    /// most events change nothing else, so a commit need not rewrite the whole record.
    pub touched: Vec<ProfileId>,
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
    /// Who owns each identifier, known by its [`IdHash`] (the text is in the profile).
    owners: HashTable<(IdHash, ProfileId)>,
    profiles: ProfileTable,
    accounts: HashMap<Box<str>, Account>,
    next_id: ProfileId,
    /// Profiles whose record changed since the last [`Graph::take_changes`].
    dirty: HashSet<ProfileId>,
    /// Profiles that only gained events (their last event changed).
    touched: HashSet<ProfileId>,
    removed: HashSet<ProfileId>,
    dirty_accounts: HashSet<Box<str>>,
    timeline: Vec<TimelineOp>,
    /// Timeline operations for a consumer of derived state (Compute), when switched on by
    /// [`Graph::set_feed`]; independent of change tracking.
    feed: Option<Vec<TimelineOp>>,
    /// Off for a one-shot replay (`rebuild`), which writes the whole graph at the end.
    track_changes: bool,
    counters: Counters,
    /// Buffers of [`Graph::apply`], kept to save allocations (empty between events).
    scratch: Scratch,
    ahead: Ahead,
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

/// An identifier value being applied: a UUID fits inline.
type KeyStr = InlineStr<46>;

// An owners-table slot: a fingerprint and a profile id, nothing else.
const _: () = assert!(std::mem::size_of::<(IdHash, ProfileId)>() == 24);

/// One usable identifier of the event being applied.
#[derive(Clone, Debug)]
struct Candidate {
    kind: Kind,
    value: KeyStr,
    hash: IdHash,
    /// The type's priority, `u32::MAX` when it has none.
    rank: u32,
    /// The profile owning it before the event.
    owner: Option<ProfileId>,
}

impl Candidate {
    fn new(id: &IdRef<'_>, owner: Option<ProfileId>) -> Candidate {
        Candidate {
            kind: id.kind,
            value: KeyStr::new(id.value),
            hash: id.hash,
            rank: id.rank,
            owner,
        }
    }

    /// Matching order: `(rules.rank(kind), value)` (strings order as their bytes).
    fn sort_key(&self) -> ((u32, &str), &[u8]) {
        let priority = (self.rank != u32::MAX).then_some(self.rank);
        (rank(priority, self.kind.name()), self.value.as_bytes())
    }

    fn is(&self, kind: Kind, value: &str) -> bool {
        self.kind == kind && self.value.as_bytes() == value.as_bytes()
    }

    fn to_id_key(&self) -> IdKey {
        IdKey {
            kind: Arc::clone(self.kind.name()),
            value: self.value.as_str().into(),
        }
    }
}

/// Owners looked up ahead of applying a run of events ([`Graph::apply_batch`]).
#[derive(Clone, Debug, Default)]
struct Ahead {
    /// The owner of each identifier of the run's events, in order, as it was before the run.
    owners: Vec<Option<ProfileId>>,
    /// First entry of `owners` not claimed yet.
    next: usize,
    /// [`IdHash::short`] of identifiers that got their first owner during the run (their
    /// `None` is stale).
    inserted: HashSet<u64>,
    /// Inside [`Graph::apply_batch`].
    active: bool,
}

impl Ahead {
    /// The next `n` entries of `owners`, those of the event being applied (`None` outside
    /// a run).
    fn claim(&mut self, n: usize) -> Option<Range<usize>> {
        if !self.active {
            return None;
        }
        let range = self.next..self.next + n;
        self.next += n;
        Some(range)
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
            owners: HashTable::new(),
            profiles: ProfileTable::default(),
            accounts: HashMap::default(),
            next_id: 1,
            dirty: HashSet::default(),
            touched: HashSet::default(),
            removed: HashSet::default(),
            dirty_accounts: HashSet::default(),
            timeline: Vec::new(),
            feed: None,
            track_changes: true,
            counters: Counters::default(),
            scratch: Scratch::default(),
            ahead: Ahead::default(),
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

    /// Starts (or stops) recording timeline operations for [`Graph::take_feed`].
    pub fn set_feed(&mut self, on: bool) {
        self.feed = on.then(Vec::new);
    }

    /// The timeline operations applied since the last call, in application order (empty
    /// unless [`Graph::set_feed`] switched the feed on).
    pub fn take_feed(&mut self) -> Vec<TimelineOp> {
        self.feed.as_mut().map(std::mem::take).unwrap_or_default()
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
                let hash = id_hash(Kind::of(&id.kind), &id.value);
                g.owners
                    .insert_unique(hash.short(), (hash, p.id), |(h, _)| h.short());
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
        let id = self.owner(id_hash(Kind::find(kind)?, value))?;
        self.profiles.get(&id)
    }

    /// The owner of the identifier whose [`id_hash`] is `hash`.
    fn owner(&self, hash: IdHash) -> Option<ProfileId> {
        self.owners
            .find(hash.short(), |(h, _)| *h == hash)
            .map(|(_, p)| *p)
    }

    /// Makes `id` the owner of the identifier whose [`id_hash`] is `hash`.
    fn set_owner(&mut self, hash: IdHash, id: ProfileId) {
        match self
            .owners
            .entry(hash.short(), |(h, _)| *h == hash, |(h, _)| h.short())
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = id,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((hash, id));
            }
        }
    }

    /// In id order.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Every identifier and its owner.
    pub fn owners(&self) -> impl Iterator<Item = (IdKey, ProfileId)> {
        self.profiles.values().flat_map(|p| {
            p.identifiers.iter().map(|i| {
                let key = IdKey {
                    kind: Arc::clone(&i.kind),
                    value: i.value.as_str().into(),
                };
                (key, p.id)
            })
        })
    }

    /// Changed keys since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let dirty = &self.dirty;
        let mut c = Changes {
            touched: self
                .touched
                .drain()
                .filter(|p| !dirty.contains(p))
                .collect(),
            profiles: self.dirty.drain().collect(),
            removed_profiles: self.removed.drain().collect(),
            accounts: self.dirty_accounts.drain().collect(),
            timeline: std::mem::take(&mut self.timeline),
        };
        c.profiles.sort_unstable();
        c.touched.sort_unstable();
        c.removed_profiles.sort_unstable();
        c.accounts.sort_unstable();
        c
    }

    /// Puts back changes whose commit failed, so the next commit writes them.
    pub fn restore_changes(&mut self, changes: Changes) {
        let exists = |p: &ProfileId| self.profiles.contains_key(p);
        self.dirty
            .extend(changes.profiles.into_iter().filter(exists));
        self.touched
            .extend(changes.touched.into_iter().filter(exists));
        self.removed.extend(changes.removed_profiles);
        self.dirty_accounts.extend(changes.accounts);
        let mut timeline = changes.timeline;
        timeline.append(&mut self.timeline);
        self.timeline = timeline;
    }

    pub fn has_changes(&self) -> bool {
        !(self.dirty.is_empty()
            && self.touched.is_empty()
            && self.removed.is_empty()
            && self.dirty_accounts.is_empty()
            && self.timeline.is_empty())
    }

    /// Applies rows `rows` of `batch` in order (unreadable events are skipped, see
    /// [`Batch::push`]); returns the offset after the last row, `None` for no rows. Equal
    /// to [`Graph::apply`] of each event in turn.
    ///
    /// Cost: applying events one by one waits for each owners-table slot and profile in
    /// turn (cache misses). So it first looks up the owner of every identifier of the rows
    /// (and reads each owner's profile) in one tight loop of independent loads, whose misses
    /// overlap, then applies the events with those owners. An owner looked up ahead is
    /// stale only when an earlier event of the rows merged it away, or gave the identifier
    /// its first owner; both are checked, and such identifiers looked up again.
    ///
    /// [`Batch::push`]: super::Batch::push
    pub fn apply_batch(&mut self, batch: &Batch, rows: Range<usize>) -> Option<u64> {
        let mut next = None;
        for start in rows.clone().step_by(LOOK_AHEAD) {
            let run = start..rows.end.min(start + LOOK_AHEAD);
            self.look_up_ahead(batch, run.clone());
            for row in run {
                let (meta, observed) = batch.get(row);
                if let Some(o) = observed {
                    self.apply(&meta, &o);
                }
                next = Some(meta.offset + 1);
            }
            self.ahead.active = false;
        }
        next
    }

    /// Fills [`Ahead`] with the owners of the identifiers of `rows` (see
    /// [`Graph::apply_batch`]).
    fn look_up_ahead(&mut self, batch: &Batch, rows: Range<usize>) {
        let mut ahead = std::mem::take(&mut self.ahead);
        ahead.owners.clear();
        ahead.inserted.clear();
        ahead.next = 0;
        let mut read = 0u64;
        for row in rows {
            let (_, Some(o)) = batch.get(row) else {
                continue;
            };
            for id in o.identifiers() {
                let owner = match id.blocked {
                    true => None,
                    false => self.owner(id.hash),
                };
                if let Some(p) = owner.and_then(|p| self.profiles.get(&p)) {
                    // The profile's first cache line (see `Profile`).
                    read = read.wrapping_add(p.metadata.last_offset);
                }
                ahead.owners.push(owner);
            }
        }
        // Then the ends of their event lists, now that the profiles are in cache.
        for p in ahead.owners.iter().flatten() {
            if let Some(p) = self.profiles.get(p) {
                read = read.wrapping_add(p.events.last().map_or(0, |e| e.offset));
            }
        }
        std::hint::black_box(read);
        ahead.active = true;
        self.ahead = ahead;
    }

    /// Applies one event (see the module contract).
    pub fn apply(&mut self, ev: &EventMeta<'_>, obs: &ObservedRef<'_>) -> Applied {
        let at_ms = obs.timestamp_ms;
        let mut applied = Applied::default();
        self.counters.events += 1;
        let mut scratch = std::mem::take(&mut self.scratch);
        let looked_up = self.ahead.claim(obs.identifiers().len());
        self.candidates(obs, looked_up, &mut scratch.ids, &mut applied);
        let target = self.resolve(&mut scratch, ev, at_ms, &mut applied);
        scratch.clear();
        self.scratch = scratch;
        self.counters.dropped += applied.dropped.len() as u64;
        self.counters.blocked += applied.blocked as u64;
        let group = obs.group();
        match target {
            Some(id) => {
                let group_id = group.as_ref().map(|(id, _)| *id);
                self.record_event(id, ev, obs, group_id, &mut applied);
                applied.profile = Some(id);
            }
            None => self.counters.unresolved += 1,
        }
        if let Some((group_id, traits)) = group {
            self.record_group(group_id, traits, target, ev, at_ms);
        }
        applied
    }

    /// Fills `ids` with the event's usable identifiers (the batch lists them in matching
    /// order), deduplicated, each with its owner (from `looked_up`, the range of
    /// [`Ahead::owners`] holding theirs, where still valid), and `alias.previousId` typed and
    /// put in its place.
    fn candidates(
        &self,
        obs: &ObservedRef<'_>,
        looked_up: Option<Range<usize>>,
        ids: &mut Vec<Candidate>,
        applied: &mut Applied,
    ) {
        for (i, id) in obs.identifiers().enumerate() {
            if id.blocked {
                applied.blocked += 1;
                continue;
            }
            if ids.iter().any(|c| c.is(id.kind, id.value)) {
                continue;
            }
            let owner = match looked_up.as_ref().map(|r| self.ahead.owners[r.start + i]) {
                Some(Some(p)) if self.profiles.contains_key(&p) => Some(p),
                Some(None) if !self.ahead.inserted.contains(&id.hash.short()) => None,
                _ => self.owner(id.hash),
            };
            ids.push(Candidate::new(&id, owner));
        }
        let Some(prev) = obs.previous_id() else {
            return;
        };
        if self.rules.is_blocked(prev) {
            applied.blocked += 1;
            return;
        }
        let as_user = id_hash(Kind::USER_ID, prev);
        let (kind, hash, owner) = match self.owner(as_user) {
            Some(owner) => (Kind::USER_ID, as_user, Some(owner)),
            None => (Kind::ANONYMOUS_ID, id_hash(Kind::ANONYMOUS_ID, prev), None),
        };
        if ids.iter().any(|c| c.is(kind, prev)) {
            return;
        }
        let id = IdRef {
            kind,
            name: kind.name(),
            value: prev,
            rank: self.rules.priority(kind).unwrap_or(u32::MAX),
            hash,
            blocked: false,
        };
        let owner = owner.or_else(|| self.owner(hash));
        let candidate = Candidate::new(&id, owner);
        // After every identifier that sorts before it or equal (stable).
        let at = ids.partition_point(|c| c.sort_key() <= candidate.sort_key());
        ids.insert(at, candidate);
    }

    /// Matching with limits and caps (see the module contract): the profile the event
    /// belongs to, after any creation or merge. New identifiers move out of `scratch.ids`.
    fn resolve(
        &mut self,
        scratch: &mut Scratch,
        ev: &EventMeta<'_>,
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
                applied.dropped.push(dropped.to_id_key());
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
                applied.dropped.extend(new.map(|c| c.to_id_key()));
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
        let exceeds = |kind: Kind| {
            let rule = self.rules.rule(kind);
            let name: &str = kind.name();
            let counts = |created_ms: i64| rule.window_ms.is_none_or(|w| created_ms >= at_ms - w);
            let existing = matched
                .iter()
                .flat_map(|(p, _)| self.profiles[p].identifiers.iter())
                .filter(|i| &*i.kind == name && counts(i.created_ms))
                .count();
            let added = ids
                .iter()
                .filter(|c| c.owner.is_none() && c.kind == kind)
                .count();
            existing + added > rule.limit as usize
        };
        let mut new_kinds = ids.iter().filter(|c| c.owner.is_none()).map(|c| c.kind);
        if matched.len() <= 1 {
            // Only the new identifiers' types can grow (checking a type twice is harmless).
            return new_kinds.any(exceeds);
        }
        // A merge: every type any of the profiles holds, each checked once.
        let mut kinds: Vec<Kind> = new_kinds.collect();
        for (p, _) in matched {
            kinds.extend(
                self.profiles[p]
                    .identifiers
                    .iter()
                    .map(|i| Kind::of(&i.kind)),
            );
        }
        kinds.sort_unstable_by_key(|k| k.index());
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

    fn create(&mut self, ev: &EventMeta<'_>) -> ProfileId {
        let id = self.next_id;
        self.next_id += 1;
        self.mark_dirty(id);
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
        ev: &EventMeta<'_>,
        at_ms: i64,
        applied: &mut Applied,
    ) {
        let max = self.rules.max_identifiers;
        let new = ids.iter().filter(|c| c.owner.is_none()).count();
        if new == 0 {
            ids.clear();
            return;
        }
        self.mark_dirty(id);
        let profile = self.profiles.get_mut(&id).expect("target exists");
        if profile.identifiers.capacity() == 0 {
            // Exactly: most profiles keep the one or two identifiers they start with.
            profile.identifiers.reserve_exact(new);
        }
        for c in ids.drain(..).filter(|c| c.owner.is_none()) {
            if profile.identifiers.len() >= max {
                applied.dropped.push(c.to_id_key());
                continue;
            }
            profile.identifiers.push(ExternalId {
                kind: Arc::clone(c.kind.name()),
                value: IdValue::new(c.value.as_str()),
                created_ms: at_ms,
                first_message_id: MessageId::new(ev.message_id),
                source: Arc::clone(ev.source),
            });
            if self.ahead.active {
                self.ahead.inserted.insert(c.hash.short());
            }
            self.owners
                .insert_unique(c.hash.short(), (c.hash, id), |(h, _)| h.short());
        }
    }

    /// Merges every matched profile into one; returns the survivor.
    fn merge(
        &mut self,
        matched: &[(ProfileId, usize)],
        ids: &[Candidate],
        ev: &EventMeta<'_>,
        at_ms: i64,
        applied: &mut Applied,
    ) -> ProfileId {
        let (survivor, survivor_at) = *matched
            .iter()
            .max_by_key(|(p, _)| (self.profiles[p].events.len(), std::cmp::Reverse(*p)))
            .expect("several matched");
        let survivor_key = &ids[survivor_at];
        let mut profile = self.profiles.remove(&survivor).expect("exists");
        for &(loser_id, loser_at) in matched {
            if loser_id == survivor {
                continue;
            }
            let loser_key = &ids[loser_at];
            let loser = *self.profiles.remove(&loser_id).expect("exists");
            for i in &loser.identifiers {
                self.set_owner(id_hash(Kind::of(&i.kind), &i.value), survivor);
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
            if let Some(feed) = &mut self.feed {
                feed.push(TimelineOp::Move(loser_id, survivor));
            }
            if self.track_changes {
                self.timeline.push(TimelineOp::Move(loser_id, survivor));
                self.dirty.remove(&loser_id);
                self.touched.remove(&loser_id);
                self.removed.insert(loser_id);
            }
            merge_events(&mut profile.events, loser.events);
            profile.accounts.extend(loser.accounts);
            profile.merges.extend(loser.merges);
            profile.merges.push(MergeRecord {
                into: survivor,
                from: loser_id,
                into_identifier: (
                    Arc::clone(survivor_key.kind.name()),
                    survivor_key.value.as_str().into(),
                ),
                from_identifier: (
                    Arc::clone(loser_key.kind.name()),
                    loser_key.value.as_str().into(),
                ),
                message_id: ev.message_id.into(),
                source: Arc::clone(ev.source),
                offset: ev.offset,
                timestamp_ms: at_ms,
                received_at_ms: ev.received_at_ms,
            });
            self.counters.merges += 1;
            applied.merged.push(loser_id);
        }
        profile.merges.sort_by_key(|m| (m.offset, m.from));
        self.profiles.insert(profile);
        self.mark_dirty(survivor);
        survivor
    }

    /// Adds the event to profile `id`: timeline, metadata, traits and account membership.
    fn record_event(
        &mut self,
        id: ProfileId,
        ev: &EventMeta<'_>,
        obs: &ObservedRef<'_>,
        group_id: Option<&str>,
        applied: &mut Applied,
    ) {
        let profile = self.profiles.get_mut(&id).expect("target exists");
        profile.metadata.touch(ev);
        let event = EventRef {
            offset: ev.offset,
            timestamp_ms: obs.timestamp_ms,
        };
        profile.events.push(event);
        let mut changed = false;
        for (key, json) in obs.traits() {
            changed |= set_trait_text(
                &mut profile.traits,
                key,
                json,
                (obs.timestamp_ms, ev.offset),
                ev.source,
            );
        }
        applied.traits_changed |= changed;
        if let Some(group_id) = group_id
            && !self.rules.is_blocked(group_id)
            && !profile.accounts.contains(group_id)
        {
            profile.accounts.insert(group_id.into());
            changed = true;
        }
        if let Some(feed) = &mut self.feed {
            feed.push(TimelineOp::Add(id, event));
        }
        if self.track_changes {
            self.timeline.push(TimelineOp::Add(id, event));
            if changed {
                self.dirty.insert(id);
            } else if !self.dirty.contains(&id) {
                self.touched.insert(id);
            }
        }
    }

    /// Records that profile `id`'s record changed (for the next [`Graph::take_changes`]).
    fn mark_dirty(&mut self, id: ProfileId) {
        if self.track_changes {
            self.dirty.insert(id);
        }
    }

    fn record_group<'a>(
        &mut self,
        group_id: &str,
        traits: impl Iterator<Item = (&'a str, &'a str)>,
        user: Option<ProfileId>,
        ev: &EventMeta<'_>,
        at_ms: i64,
    ) {
        if self.rules.is_blocked(group_id) {
            return;
        }
        if self.track_changes && !self.dirty_accounts.contains(group_id) {
            self.dirty_accounts.insert(group_id.into());
        }
        if !self.accounts.contains_key(group_id) {
            let account = Account {
                group_id: group_id.into(),
                traits: Default::default(),
                metadata: Metadata::new(ev),
                events: Vec::new(),
                users: BTreeSet::new(),
            };
            self.accounts.insert(group_id.into(), account);
        }
        let account = self.accounts.get_mut(group_id).expect("inserted above");
        account.metadata.touch(ev);
        account.events.push(EventRef {
            offset: ev.offset,
            timestamp_ms: at_ms,
        });
        for (key, json) in traits {
            set_trait_text(
                &mut account.traits,
                key,
                json,
                (at_ms, ev.offset),
                ev.source,
            );
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
                let kind = Kind::of(&i.kind);
                match self.owner(id_hash(kind, &i.value)) {
                    Some(owner) if owner == p.id => {}
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
