//! Compute: keeps every profile's computed traits and audience memberships current, from the
//! Unify processor's timeline and the stored events.
//!
//! Contract:
//! - On start it subscribes to the Unify timeline ([`Unify::subscribe_timeline`]), then
//!   computes every definition over the full history below the subscription's offset (status
//!   `computing` with progress, then `ready`), then applies each later `Add` (the event's
//!   aggregates) and `Move` (a merge: the two profiles' states combine) in order, and
//!   re-evaluates only the profiles they touched.
//! - Time: every [`TICK`] (or the configured time lag, if shorter) the profiles whose
//!   earliest window event has aged out are pruned and re-evaluated; when a definition reads
//!   `now()` every profile is re-evaluated every `time_lag`. `now` comes from the injected
//!   [`Clock`].
//! - Every change of a membership or a computed trait is written back into the log as a
//!   derived event of the source `junction` (see `derived.rs`), after the profile's state
//!   changed and outside every lock. What the log already holds is read back during the
//!   history pass, so a restart (even after kill -9) writes only what is missing. A derived
//!   event is never aggregated (it would feed on itself). A failed write is retried at the
//!   next tick.
//! - The state is in memory and recomputed from the log at each start (after Unify caught up
//!   with the log as it was at start, so every derived event written before is read back).
//! - Readers ([`Compute::results`], [`Compute::audiences`]) take a read lock held only while
//!   copying.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use junction_core::compute::{Catalog, DefKind, Event, ProfileState, TraitSource, Value};
use junction_core::identity::{EventRef, Profile, ProfileId, TimelineOp};

pub mod derived;

use derived::Emitted;
use rustc_hash::FxHashMap as HashMap;

use crate::clock::Clock;
use crate::ingest::{DERIVED_SOURCE, Ingestor};
use crate::log::LogReader;
use crate::metrics;
use crate::unify::{TimelineSubscription, Unify};

/// How often window expiries are checked (at most).
pub const TICK: Duration = Duration::from_secs(1);

/// Where the computation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Computing over the history: `done` of `total` events read.
    Computing {
        done: u64,
        total: u64,
    },
    Ready,
}

impl Status {
    /// `computing 43%` or `ready`.
    pub fn describe(self) -> String {
        match self {
            Status::Computing { done, total } => {
                format!(
                    "computing {}%",
                    (done * 100).checked_div(total).unwrap_or(0)
                )
            }
            Status::Ready => "ready".into(),
        }
    }
}

/// The computed values of one profile.
struct Entry {
    state: ProfileState,
    /// Per definition, as of the last evaluation.
    results: Vec<Value>,
    /// When the results last changed (clock ms).
    changed_ms: i64,
    /// What the log holds for this profile (see `derived.rs`).
    emitted: Emitted,
}

/// Derived events to write, in order: per profile, what `emitted` was before them, and the
/// events.
#[derive(Default)]
pub struct Outbox {
    profiles: Vec<(ProfileId, Emitted, Vec<serde_json::Value>)>,
    /// Events in `profiles`: the position in the log (after the round's start) of the next.
    events: u64,
}

#[derive(Default)]
struct Profiles {
    entries: HashMap<ProfileId, Entry>,
    /// Per definition: profiles for which an audience is true (0 for computed traits).
    members: Vec<u64>,
    /// (when an event leaves a window, profile); stale items are skipped.
    expiries: BinaryHeap<Reverse<(i64, ProfileId)>>,
    /// Profiles whose derived events could not be written: diffed again at the next tick.
    retry: Vec<ProfileId>,
}

/// The shared handle (see the module docs).
pub struct Compute {
    catalog: Arc<Catalog>,
    /// What the catalog reads of events.
    reads: junction_core::compute::slim::Reads,
    /// Audience key → display name.
    names: HashMap<String, String>,
    clock: Arc<dyn Clock>,
    time_lag: Duration,
    profiles: RwLock<Profiles>,
    status: Mutex<Status>,
    /// Next log offset whose events are reflected in the results.
    applied: AtomicU64,
    bad_events: AtomicU64,
    derived_events: AtomicU64,
    derived_errors: AtomicU64,
    /// The log's end, where derived events written next will land (orders writes, see
    /// `derived::absorb`).
    log_end: AtomicU64,
    /// Audience sizes over time: (clock ms, member count per definition), a point each time
    /// they changed (checked every tick), the last [`HISTORY_POINTS`].
    history: Mutex<std::collections::VecDeque<(i64, Vec<u64>)>>,
}

/// Points of size history kept.
pub const HISTORY_POINTS: usize = 10_000;

/// The key a previewed expression is checked under.
const PREVIEW_KEY: &str = "_preview";

/// A computed trait over all profiles: how many have a value, how many a number other than
/// 0, and the sum of the numbers (a checksum to compare with another engine).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TraitTotals {
    pub profiles: u64,
    pub nonzero: u64,
    pub sum: f64,
}

/// What [`Compute::preview`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    /// Profiles for which the expression is true.
    pub size: u64,
    /// Profiles evaluated.
    pub profiles: u64,
    /// Some members (lowest profile ids first).
    pub sample: Vec<ProfileId>,
    /// Whether the aggregates came from the live state (else from a pass over the log).
    pub from_state: bool,
}

/// A profile's traits as the language reads them.
struct ProfileTraits<'a>(Option<&'a Profile>);

impl TraitSource for ProfileTraits<'_> {
    fn trait_value(&self, path: &[Box<str>]) -> Value {
        let Some(v) = self.0.and_then(|p| p.traits.get(&path[0])) else {
            return Value::Null;
        };
        match serde_json::from_str::<serde_json::Value>(&v.json) {
            Ok(json) => junction_core::compute::program::lookup(&json, &path[1..]),
            Err(_) => Value::Null,
        }
    }
}

impl Compute {
    pub fn new(
        definitions: &crate::config::Definitions,
        clock: Arc<dyn Clock>,
        time_lag: Duration,
    ) -> Compute {
        let catalog = Arc::clone(&definitions.catalog);
        let names = definitions
            .audiences
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    a.name.clone().unwrap_or_else(|| a.key.clone()),
                )
            })
            .collect();
        let status = if catalog.is_empty() {
            Status::Ready
        } else {
            Status::Computing { done: 0, total: 0 }
        };
        let members = vec![0; catalog.definitions().len()];
        Compute {
            reads: junction_core::compute::slim::Reads::of(&catalog),
            catalog,
            names,
            clock,
            time_lag,
            profiles: RwLock::new(Profiles {
                members,
                ..Default::default()
            }),
            status: Mutex::new(status),
            applied: AtomicU64::new(0),
            bad_events: AtomicU64::new(0),
            derived_events: AtomicU64::new(0),
            derived_errors: AtomicU64::new(0),
            log_end: AtomicU64::new(0),
            history: Default::default(),
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_status(&self, s: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Next log offset whose events the results reflect.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Profiles> {
        self.profiles.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Profiles> {
        self.profiles.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every definition's value for `profile` (definition order) and when they last changed;
    /// `None` before the profile has any.
    pub fn results(&self, profile: ProfileId) -> Option<(Vec<Value>, i64)> {
        self.read()
            .entries
            .get(&profile)
            .map(|e| (e.results.clone(), e.changed_ms))
    }

    /// Per audience definition: its index and member count.
    pub fn audiences(&self) -> Vec<(usize, u64)> {
        let profiles = self.read();
        self.catalog
            .definitions()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.kind == DefKind::Audience)
            .map(|(i, _)| (i, profiles.members[i]))
            .collect()
    }

    /// Computes over the history: `owners` says who owns each event below `applied`; the
    /// events are read from the log in one pass. Returns the derived events the log is
    /// missing (none without `emit`).
    fn backfill(
        &self,
        unify: &Unify,
        log_dir: &Path,
        owners: (u64, &[(ProfileId, i64)]),
        emit: bool,
    ) -> anyhow::Result<Outbox> {
        self.compute_history(log_dir, owners, emit, &unify.graph())
    }

    /// [`Compute::backfill`] with the profiles' traits read from `graph`.
    pub fn compute_history(
        &self,
        log_dir: &Path,
        (applied, owners): (u64, &[(ProfileId, i64)]),
        emit: bool,
        graph: &junction_core::identity::Graph,
    ) -> anyhow::Result<Outbox> {
        let total = applied;
        let now = self.clock.now_ms();
        let fresh = || derived::nothing(self.catalog.definitions().len());
        let mut states: HashMap<ProfileId, (ProfileState, Emitted)> = HashMap::default();
        let mut reader = LogReader::open(log_dir, 0)?;
        reader.set_end_offset(Some(total));
        let mut done = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let more = reader.next_frame(&mut |r| {
                done = r.offset + 1;
                let Some(&(owner, ts)) = owners.get(r.offset as usize) else {
                    return;
                };
                if owner == 0 {
                    return;
                }
                let (state, emitted) = states
                    .entry(owner)
                    .or_insert_with(|| (ProfileState::default(), fresh()));
                if **r.source == *DERIVED_SOURCE {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(r.json) {
                        derived::record(&self.catalog, emitted, &v, r.offset);
                    }
                } else {
                    self.observe(state, r.offset, ts, r.json, now);
                }
            })?;
            if last_progress.elapsed() >= Duration::from_millis(100) {
                self.set_status(Status::Computing { done, total });
                last_progress = Instant::now();
            }
            if !more {
                break;
            }
        }
        let mut outbox = Outbox::default();
        let mut profiles = self.write();
        for (id, (state, emitted)) in states {
            let out = emit.then_some(&mut outbox);
            self.settle(
                &mut profiles,
                id,
                state,
                Some(emitted),
                graph.profile(id),
                now,
                out,
            );
        }
        drop(profiles);
        self.applied.store(total, Ordering::Release);
        self.set_status(Status::Ready);
        Ok(outbox)
    }

    /// Adds one stored event to `state`, reading only what the catalog needs (a bad one is
    /// counted and skipped).
    fn observe(&self, state: &mut ProfileState, offset: u64, ts: i64, json: &[u8], now: i64) {
        match self.reads.slim(json) {
            Ok(None) => {}
            Ok(Some(v)) => {
                let ev = Event {
                    offset,
                    timestamp_ms: ts,
                    json: &v,
                };
                self.catalog.observe(state, &ev, now);
            }
            Err(e) => {
                self.bad_events.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset, error = %e, "compute skips a stored event it cannot parse");
            }
        }
    }

    /// Stores `state` for `id` (and `emitted`, else keeps what it had), evaluates it,
    /// updates member counts and expiries, and (with an `outbox`) adds the derived events
    /// the change calls for.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        profiles: &mut Profiles,
        id: ProfileId,
        state: ProfileState,
        emitted: Option<Emitted>,
        profile: Option<&Profile>,
        now: i64,
        outbox: Option<&mut Outbox>,
    ) {
        let catalog = &*self.catalog;
        // Events that left their windows go first: evaluation then reads running folds.
        let mut state = state;
        catalog.prune(&mut state, now);
        let results = catalog.evaluate(&state, &ProfileTraits(profile), now);
        if let Some(t) = catalog.next_expiry(&state) {
            profiles.expiries.push(Reverse((t, id)));
        }
        let (old_results, old_changed, old_emitted) = match profiles.entries.remove(&id) {
            Some(e) => (e.results, e.changed_ms, e.emitted),
            None => (
                Vec::new(),
                now,
                derived::nothing(catalog.definitions().len()),
            ),
        };
        Self::count_members(profiles, &old_results, -1);
        Self::count_members(profiles, &results, 1);
        let mut emitted = emitted.unwrap_or(old_emitted);
        if let (Some(outbox), Some(p)) = (outbox, profile) {
            let before = emitted.clone();
            let names = |key: &str| self.names.get(key).cloned().unwrap_or_else(|| key.into());
            let at = self.log_end.load(Ordering::Acquire) + outbox.events;
            let events = derived::diff(catalog, &names, p, &results, &mut emitted, now, at);
            if !events.is_empty() {
                outbox.events += events.len() as u64;
                outbox.profiles.push((id, before, events));
            }
        }
        let changed_ms = if old_results == results {
            old_changed
        } else {
            now
        };
        profiles.entries.insert(
            id,
            Entry {
                state,
                results,
                changed_ms,
                emitted,
            },
        );
    }

    fn count_members(profiles: &mut Profiles, results: &[Value], sign: i64) {
        for (i, v) in results.iter().enumerate() {
            if v.is_true() {
                profiles.members[i] = profiles.members[i].saturating_add_signed(sign);
            }
        }
    }

    /// Removes a profile (merged away) with its memberships; its state and what the log
    /// holds for it.
    fn remove(profiles: &mut Profiles, id: ProfileId) -> Option<(ProfileState, Emitted)> {
        profiles.entries.remove(&id).map(|e| {
            Self::count_members(profiles, &e.results, -1);
            (e.state, e.emitted)
        })
    }

    /// Applies timeline operations in order, then re-evaluates the profiles they touched;
    /// `next` is the log offset the processor reached with them. Returns the derived events
    /// to write.
    fn apply(&self, unify: &Unify, ops: &[TimelineOp], next: u64) -> anyhow::Result<Outbox> {
        let refs: Vec<EventRef> = ops
            .iter()
            .filter_map(|op| match op {
                TimelineOp::Add(_, e) => Some(*e),
                TimelineOp::Move(..) => None,
            })
            .collect();
        let records = unify.events(&refs)?;
        let mut json: HashMap<u64, &[u8]> = HashMap::default();
        for r in records.iter().filter(|r| *r.source != *DERIVED_SOURCE) {
            json.insert(r.offset, &r.json);
        }
        let now = self.clock.now_ms();
        // Profiles being changed: their state, and what the log holds for them when that
        // changed here (a merge).
        let mut changing: HashMap<ProfileId, (ProfileState, Option<Emitted>)> = HashMap::default();
        {
            let mut profiles = self.write();
            let take = |profiles: &mut Profiles, id: ProfileId| match profiles.entries.get_mut(&id)
            {
                Some(e) => (std::mem::take(&mut e.state), None),
                None => (ProfileState::default(), None),
            };
            for op in ops {
                match *op {
                    TimelineOp::Add(id, e) => {
                        let (state, _) = changing
                            .entry(id)
                            .or_insert_with(|| take(&mut profiles, id));
                        if let Some(bytes) = json.get(&e.offset) {
                            self.observe(state, e.offset, e.timestamp_ms, bytes, now);
                        }
                    }
                    TimelineOp::Move(from, to) => {
                        let stored = Self::remove(&mut profiles, from);
                        let (moved, moved_emitted) = match changing.remove(&from) {
                            Some((s, e)) => (s, e.or(stored.map(|(_, e)| e))),
                            None => match stored {
                                Some((s, e)) => (s, Some(e)),
                                None => (ProfileState::default(), None),
                            },
                        };
                        let (into, into_emitted) = changing
                            .entry(to)
                            .or_insert_with(|| take(&mut profiles, to));
                        self.catalog.absorb(into, moved);
                        if let Some(from_emitted) = moved_emitted {
                            let mut mine = into_emitted.take().unwrap_or_else(|| {
                                profiles.entries.get(&to).map_or_else(
                                    || derived::nothing(self.catalog.definitions().len()),
                                    |e| e.emitted.clone(),
                                )
                            });
                            derived::absorb(&mut mine, &from_emitted);
                            *into_emitted = Some(mine);
                        }
                    }
                }
            }
        }
        let mut outbox = Outbox::default();
        let graph = unify.graph();
        let mut profiles = self.write();
        for (id, (state, emitted)) in changing {
            self.settle(
                &mut profiles,
                id,
                state,
                emitted,
                graph.profile(id),
                now,
                Some(&mut outbox),
            );
        }
        drop(profiles);
        drop(graph);
        self.applied.fetch_max(next, Ordering::AcqRel);
        Ok(outbox)
    }

    /// Re-evaluates profiles whose windows lost an event by now, and those whose derived
    /// events failed to be written; with `all`, every profile. Returns the derived events.
    fn on_time(&self, unify: &Unify, all: bool) -> Outbox {
        let now = self.clock.now_ms();
        let graph = unify.graph();
        let mut profiles = self.write();
        let mut due: Vec<ProfileId> = std::mem::take(&mut profiles.retry);
        if all {
            due.extend(profiles.entries.keys().copied());
        } else {
            while let Some(Reverse((t, id))) = profiles.expiries.peek().copied() {
                if t > now {
                    break;
                }
                profiles.expiries.pop();
                due.push(id);
            }
        }
        due.sort_unstable();
        due.dedup();
        let mut outbox = Outbox::default();
        for id in due {
            let Some(entry) = profiles.entries.get_mut(&id) else {
                continue;
            };
            let mut state = std::mem::take(&mut entry.state);
            self.catalog.prune(&mut state, now);
            self.settle(
                &mut profiles,
                id,
                state,
                None,
                graph.profile(id),
                now,
                Some(&mut outbox),
            );
        }
        outbox
    }

    /// Writes derived events into the log; on failure, puts back what the log holds for
    /// their profiles and retries them at the next tick.
    fn emit(
        &self,
        ingestor: &Ingestor,
        limits: &junction_core::event::Limits,
        rt: &tokio::runtime::Runtime,
        outbox: Outbox,
    ) {
        if outbox.profiles.is_empty() {
            return;
        }
        let events: Vec<serde_json::Value> = outbox
            .profiles
            .iter()
            .flat_map(|(_, _, e)| e.iter().cloned())
            .collect();
        match rt.block_on(ingestor.store_derived(&events, limits)) {
            Ok(n) => {
                self.derived_events.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "compute cannot write derived events; retrying");
                self.derived_errors.fetch_add(1, Ordering::Relaxed);
                let mut profiles = self.write();
                for (id, before, _) in outbox.profiles {
                    if let Some(entry) = profiles.entries.get_mut(&id) {
                        entry.emitted = before;
                    }
                    profiles.retry.push(id);
                }
            }
        }
    }

    /// Sizes of every audience, and [`TraitTotals`] of every computed trait, by key.
    pub fn totals(
        &self,
        audiences: &mut std::collections::BTreeMap<String, u64>,
        traits: &mut std::collections::BTreeMap<String, TraitTotals>,
    ) {
        let profiles = self.read();
        for (i, d) in self.catalog.definitions().iter().enumerate() {
            match d.kind {
                DefKind::Audience => {
                    audiences.insert(d.key.clone(), profiles.members[i]);
                }
                DefKind::ComputedTrait => {
                    let mut t = TraitTotals::default();
                    for e in profiles.entries.values() {
                        let v = &e.results[i];
                        t.profiles += u64::from(!v.is_null());
                        if let Some(n) = v.as_num() {
                            t.nonzero += u64::from(n != 0.0);
                            t.sum += n;
                        }
                    }
                    traits.insert(d.key.clone(), t);
                }
            }
        }
    }

    /// Records the audience sizes as a point of history when they changed.
    fn sample_sizes(&self) {
        let sizes = self.read().members.clone();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.back().is_none_or(|(_, last)| *last != sizes) {
            if history.len() == HISTORY_POINTS {
                history.pop_front();
            }
            history.push_back((self.clock.now_ms(), sizes));
        }
    }

    /// Definition `def`'s size over time: (clock ms, members) at each change.
    pub fn size_history(&self, def: usize) -> Vec<(i64, u64)> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().map(|(t, sizes)| (*t, sizes[def])).collect()
    }

    /// Members of audience `def` after profile `after`, in profile id order: at most `limit`,
    /// and whether there are more.
    pub fn members(&self, def: usize, after: ProfileId, limit: usize) -> (Vec<ProfileId>, bool) {
        let profiles = self.read();
        let mut ids: Vec<ProfileId> = profiles
            .entries
            .iter()
            .filter(|(id, e)| **id > after && e.results[def].is_true())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let more = ids.len() > limit;
        ids.truncate(limit);
        (ids, more)
    }

    /// Evaluates `expr` as an audience over every profile now, without saving it: from the
    /// live state when every aggregate it uses is already kept, else from a pass over the log.
    /// Blocking: run it on the blocking pool.
    pub fn preview(
        &self,
        unify: &Unify,
        log_dir: &Path,
        expr: &str,
        sample: usize,
    ) -> Result<anyhow::Result<Preview>, junction_core::compute::DefinitionError> {
        use junction_core::compute::DefinitionSpec;
        let mut specs: Vec<DefinitionSpec> = self
            .catalog
            .definitions()
            .iter()
            .map(|d| DefinitionSpec {
                kind: d.kind,
                key: d.key.clone(),
                expr: d.expr.clone(),
            })
            .collect();
        specs.push(DefinitionSpec {
            kind: DefKind::Audience,
            key: PREVIEW_KEY.into(),
            expr: expr.into(),
        });
        let catalog = Catalog::compile(&specs)?;
        let target = specs.len() - 1;
        let now = self.clock.now_ms();
        let mut found = Preview {
            size: 0,
            profiles: 0,
            sample: Vec::new(),
            from_state: catalog.aggregates().len() == self.catalog.aggregates().len(),
        };
        let mut count = |id: ProfileId, member: bool| {
            found.profiles += 1;
            if member {
                found.size += 1;
                found.sample.push(id);
            }
        };
        if found.from_state {
            // The current aggregates keep their indexes in `catalog` (compiled in the same
            // order, the preview's last), so the live states read as they are.
            let graph = unify.graph();
            let profiles = self.read();
            for (id, e) in &profiles.entries {
                let traits = ProfileTraits(graph.profile(*id));
                count(
                    *id,
                    catalog
                        .evaluate_one(&e.state, &traits, now, target)
                        .is_true(),
                );
            }
        } else {
            let definitions = crate::config::Definitions::from_catalog(Arc::new(catalog));
            let pass = Compute::new(&definitions, Arc::clone(&self.clock), self.time_lag);
            if let Err(e) = compute_offline(&pass, unify, log_dir) {
                return Ok(Err(e));
            }
            for (id, e) in &pass.read().entries {
                count(*id, e.results[target].is_true());
            }
        }
        found.sample.sort_unstable();
        found.sample.truncate(sample);
        Ok(Ok(found))
    }

    /// Why `/ready` should fail, if it should: still computing the history, or more than
    /// `max_lag` events behind the log.
    pub fn not_ready(&self, log_end: u64, max_lag: u64) -> Option<String> {
        if self.catalog.is_empty() {
            return None;
        }
        match self.status() {
            Status::Ready if log_end.saturating_sub(self.applied()) > max_lag => Some(format!(
                "computed traits and audiences are {} events behind the log (bound: {max_lag})",
                log_end.saturating_sub(self.applied())
            )),
            Status::Ready => None,
            s => Some(format!("computed traits and audiences: {}", s.describe())),
        }
    }

    /// Prometheus text.
    pub fn render_metrics(&self, out: &mut String, log_end: u64) {
        metrics::single(
            out,
            "junction_compute_applied_offset",
            "gauge",
            "Next log offset reflected in computed traits and audiences.",
            self.applied(),
        );
        metrics::single(
            out,
            "junction_compute_lag_events",
            "gauge",
            "Events stored but not reflected in computed traits and audiences yet.",
            log_end.saturating_sub(self.applied()),
        );
        metrics::single(
            out,
            "junction_compute_bad_events_total",
            "counter",
            "Stored events Compute could not parse.",
            self.bad_events.load(Ordering::Relaxed),
        );
        metrics::single(
            out,
            "junction_compute_derived_events_total",
            "counter",
            "Audience Entered/Exited and computed-trait identify events written into the log.",
            self.derived_events.load(Ordering::Relaxed),
        );
        metrics::single(
            out,
            "junction_compute_derived_errors_total",
            "counter",
            "Failed writes of derived events (retried).",
            self.derived_errors.load(Ordering::Relaxed),
        );
        metrics::single(
            out,
            "junction_compute_ready",
            "gauge",
            "1 once every definition has been computed over the history.",
            u64::from(self.status() == Status::Ready),
        );
        metrics::header(
            out,
            "junction_audience_members",
            "gauge",
            "Profiles in each audience.",
        );
        for (i, n) in self.audiences() {
            let key = &self.catalog.definitions()[i].key;
            out.push_str(&format!(
                "junction_audience_members{{audience=\"{key}\"}} {n}\n"
            ));
        }
    }
}

/// The running Compute thread; stops when dropped or [`Worker::stop`]ped.
pub struct Worker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Worker {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts computing (nothing to do, and no thread, without definitions); derived events go
/// through `ingestor`.
pub fn spawn(
    compute: Arc<Compute>,
    unify: Arc<Unify>,
    ingestor: Arc<Ingestor>,
    limits: junction_core::event::Limits,
) -> Worker {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker_stop = Arc::clone(&stop);
    let thread = (!compute.catalog.is_empty()).then(|| {
        std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || run(&compute, &unify, &ingestor, &limits, &worker_stop))
            .expect("spawning the compute thread")
    });
    Worker {
        stop,
        thread: Mutex::new(thread),
    }
}

fn run(
    compute: &Compute,
    unify: &Unify,
    ingestor: &Ingestor,
    limits: &junction_core::event::Limits,
    stop: &std::sync::atomic::AtomicBool,
) {
    crate::unify::processor::yield_to_ingest();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "compute cannot start its runtime");
            return;
        }
    };
    // Every derived event written before this start must be read back by the history pass.
    let start_end = ingestor.log().next_offset();
    while unify.applied() < start_end && !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sub = unify.subscribe_timeline();
    compute
        .log_end
        .store(ingestor.log().next_offset(), Ordering::Release);
    match compute.backfill(
        unify,
        ingestor.log().dir(),
        (sub.applied, &sub.owners),
        true,
    ) {
        Ok(outbox) => {
            compute.emit(ingestor, limits, &rt, outbox);
            compute.sample_sizes();
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "compute cannot read the history");
            return;
        }
    }
    let TimelineSubscription { ops, .. } = sub;
    let tick = TICK.min(compute.time_lag).max(Duration::from_millis(10));
    let mut last_tick = Instant::now();
    let mut last_sweep = Instant::now();
    let sweeps = compute.catalog.reads_now();
    while !stop.load(Ordering::Acquire) {
        let received = ops.recv_timeout(tick);
        // Where what this round writes will land: after everything written so far.
        compute
            .log_end
            .store(ingestor.log().next_offset(), Ordering::Release);
        match received {
            Ok((batch, next)) => match compute.apply(unify, &batch, next) {
                Ok(outbox) => compute.emit(ingestor, limits, &rt, outbox),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "compute cannot read events; their aggregates are missed");
                }
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= tick {
            let all = sweeps && last_sweep.elapsed() >= compute.time_lag;
            let outbox = compute.on_time(unify, all);
            compute.emit(ingestor, limits, &rt, outbox);
            compute.sample_sizes();
            last_tick = Instant::now();
            if all {
                last_sweep = last_tick;
            }
        }
    }
}

/// Computes everything for a stopped data dir (offline reads): the history, no thread.
pub fn compute_offline(compute: &Compute, unify: &Unify, log_dir: &Path) -> anyhow::Result<()> {
    if compute.catalog.is_empty() {
        return Ok(());
    }
    let (applied, owners) = unify.owners();
    compute
        .backfill(unify, log_dir, (applied, &owners), false)
        .map(drop)
}
