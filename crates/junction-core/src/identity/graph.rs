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
//!   [`Graph::take_changes`] are tracked for write-behind persistence.

use std::collections::BTreeSet;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

use super::extract::{IdKey, Observed};
use super::profile::{
    Account, EventMeta, EventRef, ExternalId, MergeRecord, Metadata, Profile, ProfileId,
    TraitValue, merge_events, merge_traits, set_trait, set_trait_with,
};
use super::rules::{Rules, kinds};

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
    owners: HashMap<IdKey, ProfileId>,
    profiles: HashMap<ProfileId, Profile>,
    accounts: HashMap<Box<str>, Account>,
    next_id: ProfileId,
    dirty: HashSet<ProfileId>,
    removed: HashSet<ProfileId>,
    dirty_accounts: HashSet<Box<str>>,
    timeline: Vec<TimelineOp>,
    /// Off for a one-shot replay (`rebuild`), which writes the whole graph at the end.
    track_changes: bool,
    counters: Counters,
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
            profiles: HashMap::default(),
            accounts: HashMap::default(),
            next_id: 1,
            dirty: HashSet::default(),
            removed: HashSet::default(),
            dirty_accounts: HashSet::default(),
            timeline: Vec::new(),
            track_changes: true,
            counters: Counters::default(),
        }
    }

    /// A graph that does not record changes for persistence (see [`Graph::take_changes`]).
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
                g.owners.insert(
                    IdKey {
                        kind: Arc::clone(&id.kind),
                        value: id.value.clone(),
                    },
                    p.id,
                );
            }
            g.next_id = g.next_id.max(p.id + 1);
            g.profiles.insert(p.id, p);
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
        let id = self.owners.get(&IdKey::new(kind, value))?;
        self.profiles.get(id)
    }

    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn owners(&self) -> impl Iterator<Item = (&IdKey, ProfileId)> {
        self.owners.iter().map(|(k, v)| (k, *v))
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
    pub fn apply(&mut self, ev: &EventMeta, mut obs: Observed) -> Applied {
        let mut applied = Applied::default();
        self.counters.events += 1;
        let mut ids = self.candidates(&mut obs, &mut applied);
        ids.sort_by(|a, b| {
            (self.rules.rank(&a.kind), &a.value).cmp(&(self.rules.rank(&b.kind), &b.value))
        });
        let target = loop {
            if ids.is_empty() {
                break None;
            }
            let mut matched: Vec<(ProfileId, &IdKey)> = Vec::new();
            for k in &ids {
                if let Some(&p) = self.owners.get(k)
                    && !matched.iter().any(|(m, _)| *m == p)
                {
                    matched.push((p, k));
                }
            }
            let new_ids: Vec<&IdKey> = ids
                .iter()
                .filter(|k| !self.owners.contains_key(*k))
                .collect();
            let matched_ids: Vec<ProfileId> = matched.iter().map(|(p, _)| *p).collect();
            // Nothing new and nothing to merge cannot break a limit.
            let changes = !new_ids.is_empty() || matched.len() > 1;
            if changes && self.over_limit(&matched_ids, &new_ids, obs.timestamp_ms) {
                let dropped = ids.pop().expect("not empty");
                applied.dropped.push(dropped);
                continue;
            }
            if matched.is_empty() {
                let id = self.create(ev);
                self.add_identifiers(id, &new_ids, ev, obs.timestamp_ms, &mut applied);
                break Some(id);
            }
            let first = matched[0].0;
            if matched.len() > 1 && !self.merge_allowed(&matched_ids) {
                // Hard cap: no merge, nothing added; the event still resolves.
                applied.dropped.extend(new_ids.into_iter().cloned());
                break Some(first);
            }
            let survivor = if matched.len() > 1 {
                self.merge(&matched, ev, obs.timestamp_ms, &mut applied)
            } else {
                first
            };
            self.add_identifiers(survivor, &new_ids, ev, obs.timestamp_ms, &mut applied);
            break Some(survivor);
        };
        self.counters.dropped += applied.dropped.len() as u64;
        self.counters.blocked += applied.blocked as u64;
        match target {
            Some(id) => {
                self.record_event(id, ev, &obs, &mut applied);
                applied.profile = Some(id);
            }
            None => self.counters.unresolved += 1,
        }
        if let Some((group_id, traits)) = &obs.group {
            self.record_group(group_id, traits, target, ev, obs.timestamp_ms);
        }
        applied
    }

    /// The event's usable identifiers, deduplicated, with `alias.previousId` typed.
    fn candidates(&self, obs: &mut Observed, applied: &mut Applied) -> Vec<IdKey> {
        let mut ids: Vec<IdKey> = Vec::with_capacity(obs.identifiers.len() + 1);
        let mut push = |k: IdKey, applied: &mut Applied| {
            if self.rules.is_blocked(&k.value) {
                applied.blocked += 1;
            } else if !ids.contains(&k) {
                ids.push(k);
            }
        };
        for k in std::mem::take(&mut obs.identifiers) {
            push(k, applied);
        }
        if let Some(prev) = &obs.previous_id {
            let as_user = IdKey {
                kind: self.rules.kind(kinds::USER_ID),
                value: prev.as_str().into(),
            };
            let key = if self.owners.contains_key(&as_user) {
                as_user
            } else {
                IdKey {
                    kind: self.rules.kind(kinds::ANONYMOUS_ID),
                    value: prev.as_str().into(),
                }
            };
            push(key, applied);
        }
        ids
    }

    /// Would `matched` plus `new_ids` hold more values of some type than its limit?
    fn over_limit(&self, matched: &[ProfileId], new_ids: &[&IdKey], at_ms: i64) -> bool {
        let mut kinds: Vec<&str> = new_ids.iter().map(|k| &*k.kind).collect();
        if matched.len() > 1 {
            for p in matched {
                kinds.extend(self.profiles[p].identifiers.iter().map(|i| &*i.kind));
            }
        }
        kinds.sort_unstable();
        kinds.dedup();
        kinds.into_iter().any(|kind| {
            let rule = self.rules.rule(kind);
            let counts = |created_ms: i64| rule.window_ms.is_none_or(|w| created_ms >= at_ms - w);
            let existing = matched
                .iter()
                .flat_map(|p| self.profiles[p].identifiers.iter())
                .filter(|i| &*i.kind == kind && counts(i.created_ms))
                .count();
            let added = new_ids.iter().filter(|k| &*k.kind == kind).count();
            existing + added > rule.limit as usize
        })
    }

    fn merge_allowed(&self, matched: &[ProfileId]) -> bool {
        let merges: usize = matched.iter().map(|p| self.profiles[p].merges.len()).sum();
        let ids: usize = matched
            .iter()
            .map(|p| self.profiles[p].identifiers.len())
            .sum();
        merges + matched.len() - 1 <= self.rules.max_merges && ids <= self.rules.max_identifiers
    }

    fn create(&mut self, ev: &EventMeta) -> ProfileId {
        let id = self.next_id;
        self.next_id += 1;
        self.profiles.insert(
            id,
            Profile {
                id,
                identifiers: Vec::new(),
                traits: Default::default(),
                metadata: Metadata::new(ev),
                merges: Vec::new(),
                events: Vec::new(),
                accounts: BTreeSet::new(),
            },
        );
        self.dirty.insert(id);
        id
    }

    fn add_identifiers(
        &mut self,
        id: ProfileId,
        new_ids: &[&IdKey],
        ev: &EventMeta,
        at_ms: i64,
        applied: &mut Applied,
    ) {
        let max = self.rules.max_identifiers;
        let profile = self.profiles.get_mut(&id).expect("target exists");
        for k in new_ids {
            if profile.identifiers.len() >= max {
                applied.dropped.push((*k).clone());
                continue;
            }
            profile.identifiers.push(ExternalId {
                kind: Arc::clone(&k.kind),
                value: k.value.clone(),
                created_ms: at_ms,
                first_message_id: ev.message_id.as_str().into(),
                source: Arc::clone(&ev.source),
            });
            self.owners.insert((*k).clone(), id);
        }
        if !new_ids.is_empty() {
            self.dirty.insert(id);
        }
    }

    /// Merges every matched profile into one; returns the survivor.
    fn merge(
        &mut self,
        matched: &[(ProfileId, &IdKey)],
        ev: &EventMeta,
        at_ms: i64,
        applied: &mut Applied,
    ) -> ProfileId {
        let (survivor, survivor_key) = *matched
            .iter()
            .max_by_key(|(p, _)| (self.profiles[p].events.len(), std::cmp::Reverse(*p)))
            .expect("several matched");
        let mut profile = self.profiles.remove(&survivor).expect("exists");
        for &(loser_id, loser_key) in matched {
            if loser_id == survivor {
                continue;
            }
            let loser = self.profiles.remove(&loser_id).expect("exists");
            for i in &loser.identifiers {
                let key = IdKey {
                    kind: Arc::clone(&i.kind),
                    value: i.value.clone(),
                };
                self.owners.insert(key, survivor);
            }
            for group_id in &loser.accounts {
                if let Some(a) = self.accounts.get_mut(group_id) {
                    a.users.remove(&loser_id);
                    a.users.insert(survivor);
                    self.dirty_accounts.insert(group_id.clone());
                }
            }
            profile.identifiers.extend(loser.identifiers);
            merge_traits(&mut profile.traits, loser.traits);
            profile.metadata.absorb(&loser.metadata);
            if self.track_changes {
                self.timeline.push(TimelineOp::Move(loser_id, survivor));
            }
            merge_events(&mut profile.events, loser.events);
            profile.accounts.extend(loser.accounts);
            profile.merges.extend(loser.merges);
            profile.merges.push(MergeRecord {
                into: survivor,
                from: loser_id,
                into_identifier: (Arc::clone(&survivor_key.kind), survivor_key.value.clone()),
                from_identifier: (Arc::clone(&loser_key.kind), loser_key.value.clone()),
                message_id: ev.message_id.as_str().into(),
                source: Arc::clone(&ev.source),
                offset: ev.offset,
                timestamp_ms: at_ms,
                received_at_ms: ev.received_at_ms,
            });
            self.counters.merges += 1;
            applied.merged.push(loser_id);
            self.dirty.remove(&loser_id);
            self.removed.insert(loser_id);
        }
        profile.merges.sort_by_key(|m| (m.offset, m.from));
        self.profiles.insert(survivor, profile);
        self.dirty.insert(survivor);
        survivor
    }

    fn record_event(
        &mut self,
        id: ProfileId,
        ev: &EventMeta,
        obs: &Observed,
        applied: &mut Applied,
    ) {
        let profile = self.profiles.get_mut(&id).expect("target exists");
        profile.metadata.touch(ev);
        let event = EventRef {
            offset: ev.offset,
            timestamp_ms: obs.timestamp_ms,
        };
        profile.events.push(event);
        if self.track_changes {
            self.timeline.push(TimelineOp::Add(id, event));
        }
        if obs.traits.len() < MAX_TRAITS_PER_EVENT {
            for (key, json) in &obs.traits {
                applied.traits_changed |= set_trait_with(
                    &mut profile.traits,
                    key,
                    obs.timestamp_ms,
                    ev.offset,
                    || TraitValue {
                        json: json.as_str().into(),
                        timestamp_ms: obs.timestamp_ms,
                        offset: ev.offset,
                        source: Arc::clone(&ev.source),
                    },
                );
            }
        }
        if let Some((group_id, _)) = &obs.group
            && !self.rules.is_blocked(group_id)
        {
            profile.accounts.insert(group_id.as_str().into());
        }
        self.dirty.insert(id);
    }

    fn record_group(
        &mut self,
        group_id: &str,
        traits: &[(String, String)],
        user: Option<ProfileId>,
        ev: &EventMeta,
        at_ms: i64,
    ) {
        if self.rules.is_blocked(group_id) {
            return;
        }
        let account = self
            .accounts
            .entry(group_id.into())
            .or_insert_with(|| Account {
                group_id: group_id.into(),
                traits: Default::default(),
                metadata: Metadata::new(ev),
                events: Vec::new(),
                users: BTreeSet::new(),
            });
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
                        json: json.as_str().into(),
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
        self.dirty_accounts.insert(group_id.into());
    }

    /// Every profile and account in id order: equal for equal states.
    pub fn canonical(&self) -> (Vec<&Profile>, Vec<&Account>) {
        let mut profiles: Vec<&Profile> = self.profiles.values().collect();
        profiles.sort_unstable_by_key(|p| p.id);
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
                let key = IdKey {
                    kind: Arc::clone(&i.kind),
                    value: i.value.clone(),
                };
                match self.owners.get(&key) {
                    Some(owner) if *owner == p.id => {}
                    other => {
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
