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
//! - The state is in memory and recomputed from the log at each start; nothing here writes
//!   to disk.
//! - Readers ([`Compute::results`], [`Compute::audiences`]) take a read lock held only while
//!   copying.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use junction_core::compute::{Catalog, DefKind, Event, ProfileState, TraitSource, Value};
use junction_core::identity::{EventRef, Profile, ProfileId, TimelineOp};
use rustc_hash::FxHashMap as HashMap;

use crate::clock::Clock;
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
}

#[derive(Default)]
struct Profiles {
    entries: HashMap<ProfileId, Entry>,
    /// Per definition: profiles for which an audience is true (0 for computed traits).
    members: Vec<u64>,
    /// (when an event leaves a window, profile); stale items are skipped.
    expiries: BinaryHeap<Reverse<(i64, ProfileId)>>,
}

/// The shared handle (see the module docs).
pub struct Compute {
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    time_lag: Duration,
    profiles: RwLock<Profiles>,
    status: Mutex<Status>,
    /// Next log offset whose events are reflected in the results.
    applied: AtomicU64,
    bad_events: AtomicU64,
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
    pub fn new(catalog: Arc<Catalog>, clock: Arc<dyn Clock>, time_lag: Duration) -> Compute {
        let status = if catalog.is_empty() {
            Status::Ready
        } else {
            Status::Computing { done: 0, total: 0 }
        };
        let members = vec![0; catalog.definitions().len()];
        Compute {
            catalog,
            clock,
            time_lag,
            profiles: RwLock::new(Profiles {
                members,
                ..Default::default()
            }),
            status: Mutex::new(status),
            applied: AtomicU64::new(0),
            bad_events: AtomicU64::new(0),
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

    /// Computes over the history: `sub.owners` says who owns each event below
    /// `sub.applied`; the events are read from the log in one pass.
    fn backfill(
        &self,
        unify: &Unify,
        log_dir: &Path,
        sub: &TimelineSubscription,
    ) -> anyhow::Result<()> {
        let total = sub.applied;
        let now = self.clock.now_ms();
        let mut states: HashMap<ProfileId, ProfileState> = HashMap::default();
        let mut reader = LogReader::open(log_dir, 0)?;
        reader.set_end_offset(Some(total));
        let mut done = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let more = reader.next_frame(&mut |r| {
                done = r.offset + 1;
                let Some(&(owner, ts)) = sub.owners.get(r.offset as usize) else {
                    return;
                };
                if owner == 0 {
                    return;
                }
                self.observe(states.entry(owner).or_default(), r.offset, ts, r.json, now);
            })?;
            if last_progress.elapsed() >= Duration::from_millis(100) {
                self.set_status(Status::Computing { done, total });
                last_progress = Instant::now();
            }
            if !more {
                break;
            }
        }
        let graph = unify.graph();
        let mut profiles = self.write();
        for (id, state) in states {
            let traits = ProfileTraits(graph.profile(id));
            Self::settle(&self.catalog, &mut profiles, id, state, &traits, now);
        }
        drop(profiles);
        drop(graph);
        self.applied.store(total, Ordering::Release);
        self.set_status(Status::Ready);
        Ok(())
    }

    /// Adds one stored event to `state` (a bad one is counted and skipped).
    fn observe(&self, state: &mut ProfileState, offset: u64, ts: i64, json: &[u8], now: i64) {
        match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(v) => {
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

    /// Stores `state` for `id`, evaluates it, and updates member counts and expiries.
    fn settle(
        catalog: &Catalog,
        profiles: &mut Profiles,
        id: ProfileId,
        state: ProfileState,
        traits: &dyn TraitSource,
        now: i64,
    ) {
        let results = catalog.evaluate(&state, traits, now);
        if let Some(t) = catalog.next_expiry(&state) {
            profiles.expiries.push(Reverse((t, id)));
        }
        let old = profiles.entries.insert(
            id,
            Entry {
                state,
                results: Vec::new(),
                changed_ms: now,
            },
        );
        let (old_results, old_changed) = match old {
            Some(e) => (e.results, e.changed_ms),
            None => (Vec::new(), now),
        };
        Self::count_members(profiles, &old_results, -1);
        Self::count_members(profiles, &results, 1);
        let entry = profiles.entries.get_mut(&id).expect("just inserted");
        entry.changed_ms = if old_results == results {
            old_changed
        } else {
            now
        };
        entry.results = results;
    }

    fn count_members(profiles: &mut Profiles, results: &[Value], sign: i64) {
        for (i, v) in results.iter().enumerate() {
            if v.is_true() {
                profiles.members[i] = profiles.members[i].saturating_add_signed(sign);
            }
        }
    }

    /// Takes a profile's state out (for a change), or a fresh one.
    fn take_state(profiles: &mut Profiles, id: ProfileId) -> ProfileState {
        match profiles.entries.get_mut(&id) {
            Some(e) => std::mem::take(&mut e.state),
            None => ProfileState::default(),
        }
    }

    /// Removes a profile (merged away), with its memberships.
    fn remove(profiles: &mut Profiles, id: ProfileId) -> ProfileState {
        match profiles.entries.remove(&id) {
            Some(e) => {
                Self::count_members(profiles, &e.results, -1);
                e.state
            }
            None => ProfileState::default(),
        }
    }

    /// Applies timeline operations in order, then re-evaluates the profiles they touched;
    /// `next` is the log offset the processor reached with them.
    fn apply(&self, unify: &Unify, ops: &[TimelineOp], next: u64) -> anyhow::Result<()> {
        let refs: Vec<EventRef> = ops
            .iter()
            .filter_map(|op| match op {
                TimelineOp::Add(_, e) => Some(*e),
                TimelineOp::Move(..) => None,
            })
            .collect();
        let records = unify.events(&refs)?;
        let mut json: HashMap<u64, &[u8]> = HashMap::default();
        for r in &records {
            json.insert(r.offset, &r.json);
        }
        let now = self.clock.now_ms();
        let mut states: HashMap<ProfileId, ProfileState> = HashMap::default();
        {
            let mut profiles = self.write();
            for op in ops {
                match *op {
                    TimelineOp::Add(id, e) => {
                        let state = states
                            .entry(id)
                            .or_insert_with(|| Self::take_state(&mut profiles, id));
                        if let Some(bytes) = json.get(&e.offset) {
                            self.observe(state, e.offset, e.timestamp_ms, bytes, now);
                        }
                    }
                    TimelineOp::Move(from, to) => {
                        // Taken earlier in this batch, or still stored.
                        let stored = Self::remove(&mut profiles, from);
                        let moved = states.remove(&from).unwrap_or(stored);
                        let into = states
                            .entry(to)
                            .or_insert_with(|| Self::take_state(&mut profiles, to));
                        self.catalog.absorb(into, moved);
                    }
                }
            }
        }
        let graph = unify.graph();
        let mut profiles = self.write();
        for (id, state) in states {
            let traits = ProfileTraits(graph.profile(id));
            Self::settle(&self.catalog, &mut profiles, id, state, &traits, now);
        }
        drop(profiles);
        drop(graph);
        self.applied.fetch_max(next, Ordering::AcqRel);
        Ok(())
    }

    /// Re-evaluates profiles whose windows lost an event by now; with `all`, every profile.
    fn on_time(&self, unify: &Unify, all: bool) {
        let now = self.clock.now_ms();
        let graph = unify.graph();
        let mut profiles = self.write();
        let mut due: Vec<ProfileId> = Vec::new();
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
            due.sort_unstable();
            due.dedup();
        }
        for id in due {
            if !profiles.entries.contains_key(&id) {
                continue;
            }
            let mut state = Self::take_state(&mut profiles, id);
            self.catalog.prune(&mut state, now);
            let traits = ProfileTraits(graph.profile(id));
            Self::settle(&self.catalog, &mut profiles, id, state, &traits, now);
        }
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

/// Starts computing (nothing to do, and no thread, without definitions).
pub fn spawn(compute: Arc<Compute>, unify: Arc<Unify>, log_dir: PathBuf) -> Worker {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker_stop = Arc::clone(&stop);
    let thread = (!compute.catalog.is_empty()).then(|| {
        std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || run(&compute, &unify, &log_dir, &worker_stop))
            .expect("spawning the compute thread")
    });
    Worker {
        stop,
        thread: Mutex::new(thread),
    }
}

fn run(compute: &Compute, unify: &Unify, log_dir: &Path, stop: &std::sync::atomic::AtomicBool) {
    crate::unify::processor::yield_to_ingest();
    let sub = unify.subscribe_timeline();
    if let Err(e) = compute.backfill(unify, log_dir, &sub) {
        tracing::error!(error = %format!("{e:#}"), "compute cannot read the history");
        return;
    }
    let TimelineSubscription { ops, .. } = sub;
    let tick = TICK.min(compute.time_lag).max(Duration::from_millis(10));
    let mut last_tick = Instant::now();
    let mut last_sweep = Instant::now();
    let sweeps = compute.catalog.reads_now();
    while !stop.load(Ordering::Acquire) {
        match ops.recv_timeout(tick) {
            Ok((batch, next)) => {
                if let Err(e) = compute.apply(unify, &batch, next) {
                    tracing::error!(error = %format!("{e:#}"), "compute cannot read events; their aggregates are missed");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= tick {
            let all = sweeps && last_sweep.elapsed() >= compute.time_lag;
            compute.on_time(unify, all);
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
    let sub = unify.subscribe_timeline();
    compute.backfill(unify, log_dir, &sub)
}
