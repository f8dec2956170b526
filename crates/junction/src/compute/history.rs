//! The history pass: every definition computed over the log below an offset (at start, for
//! `rebuild`, for offline reads, and for a preview whose aggregates are not kept).
//!
//! The events are read through their columns ([`columns`]): per offset, the event's type
//! and name, from which [`Plan`] tells whether no aggregate can match it, whether a fixed
//! object of the type and name evaluates like it, or whether it needs the values at the
//! paths the catalog reads (kept in the columns too); derived events and events that are
//! not JSON objects are kept whole and read as before.
//!
//! Two ways to find each event's profile:
//! - from the graph, when it is the graph of the pass's end (`rebuild`, offline reads,
//!   previews): each profile's own list of events is walked, by several threads taking
//!   ranges of profile ids, each settling its profiles into its own table, joined at the end
//!   (nothing to merge: a profile is computed by one thread);
//! - from an owners table taken with a timeline subscription (the engine's start: the graph
//!   may have moved on since): the offsets are split between threads, each into its own
//!   per-profile states, combined at the end: aggregates merge like the states of merged
//!   profiles ([`Catalog::absorb`]) and derived records keep the latest write
//!   ([`derived::absorb`]).
//!
//! Either way the result does not depend on which thread read what (up to the last bits of
//! `f64` sums, as for any order of events). A profile gets results when the log holds one
//! of its events below the end (whether or not an aggregate matches it).
//!
//! [`Catalog::absorb`]: junction_core::compute::Catalog::absorb

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use junction_core::compute::slim::Plan;
use junction_core::compute::{Event, ProfileState};
use junction_core::identity::{Graph, ProfileId};

use super::columns::{self, Columns, Kind};
use super::derived::{self, Emitted};
use super::{Compute, Outbox, Profiles, Status};
use crate::unify::Unify;

/// Where the pass finds the profile of each event.
#[derive(Clone, Copy)]
enum Owners<'a> {
    /// The profiles' own event lists (the graph is the graph of the pass's end).
    Graph,
    /// Per offset below the end: its profile (0: none) and timestamp.
    Table(&'a [(ProfileId, i64)]),
}

impl Compute {
    /// Computes over the history: `owners` says who owns each event below `applied`; the
    /// events are read from the log in one pass. Returns the derived events the log is
    /// missing (none without `emit`). The status stays `computing` until the caller has
    /// written them (`ready` means written).
    pub(super) fn backfill(
        &self,
        unify: &Unify,
        log_dir: &Path,
        (applied, owners): (u64, &[(ProfileId, i64)]),
        emit: bool,
    ) -> anyhow::Result<Outbox> {
        let graph = unify.graph();
        self.history_pass(
            log_dir,
            applied,
            Owners::Table(owners),
            emit,
            &graph,
            workers(),
        )
    }

    /// Computes over the history below `applied`, with `graph` the graph of that offset
    /// (it owns every event below, and the profiles' traits are read from it).
    pub fn compute_history(
        &self,
        log_dir: &Path,
        applied: u64,
        emit: bool,
        graph: &Graph,
    ) -> anyhow::Result<Outbox> {
        self.history_pass(log_dir, applied, Owners::Graph, emit, graph, workers())
    }

    /// [`Compute::compute_history`] with `max_workers` threads at most.
    fn history_pass(
        &self,
        log_dir: &Path,
        applied: u64,
        owners: Owners<'_>,
        emit: bool,
        graph: &Graph,
        max_workers: usize,
    ) -> anyhow::Result<Outbox> {
        if self.catalog.is_empty() {
            // Nothing to compute; the caller sets `ready`, as after any pass.
            self.applied.store(applied, Ordering::Release);
            return Ok(Outbox::default());
        }
        let progress = Progress {
            done: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        };
        let paths = junction_core::compute::paths::read_paths(&self.catalog);
        let done = |n| progress.add(self, n, applied);
        // Only events some aggregate reads besides their type and name need values.
        let values = |kind: &str, name: Option<&str>| self.reads.plan(kind, name) == Plan::Slim;
        // Derived events matter only to an engine that goes on (see `Pass::derived`).
        let derived = matches!(owners, Owners::Table(_));
        let wanted = columns::Wanted {
            values: Some(&values),
            derived,
        };
        let threads = (max_workers, &*self.stop);
        let columns = columns::load(log_dir, applied, &paths, threads, wanted, &done)?;
        let pass = Pass {
            plans: (columns.names().iter())
                .map(|(kind, name)| self.reads.plan(kind, name.as_deref()))
                .collect(),
            columns,
            now: self.clock.now_ms(),
            applied,
            derived,
        };
        let outbox = match owners {
            Owners::Graph => self.by_profile(&pass, graph, emit, max_workers)?,
            Owners::Table(owners) => self.by_offset(&pass, owners, emit, graph, max_workers)?,
        };
        self.applied.store(applied, Ordering::Release);
        Ok(outbox)
    }

    /// The pass with the profiles' own event lists (see the module docs).
    fn by_profile(
        &self,
        pass: &Pass,
        graph: &Graph,
        emit: bool,
        workers: usize,
    ) -> anyhow::Result<Outbox> {
        const CHUNK: ProfileId = 4096;
        let next_chunk = AtomicU64::new(0);
        let definitions = self.catalog.definitions().len();
        let work = || -> anyhow::Result<(Profiles, Vec<Computed>)> {
            let mut table = Profiles {
                members: vec![0; definitions],
                ..Profiles::default()
            };
            let share = graph.next_id() as usize / workers.max(1);
            table.entries.reserve(share + share / 8);
            let mut kept = Vec::new();
            let mut objects = pass.objects();
            let mut kinds = Vec::new();
            loop {
                let from = next_chunk.fetch_add(1, Ordering::Relaxed) * CHUNK;
                if from >= graph.next_id() {
                    return Ok((table, kept));
                }
                if self.stop.load(Ordering::Acquire) {
                    anyhow::bail!("the history pass was stopped");
                }
                for id in from..(from + CHUNK).min(graph.next_id()) {
                    let Some(profile) = graph.profile(id) else {
                        continue;
                    };
                    let (mut state, mut emitted, mut seen) = Default::default();
                    let end = profile.events.partition_point(|e| e.offset < pass.applied);
                    let events = &profile.events[..end];
                    // The kinds first, in a loop of independent loads: the events of a
                    // profile are scattered over the log, and their loads then overlap.
                    kinds.extend(events.iter().map(|e| pass.columns.kind(e.offset)));
                    for (e, kind) in events.iter().zip(kinds.drain(..)) {
                        let at = (e.offset, e.timestamp_ms);
                        let profile = (&mut state, &mut emitted);
                        seen |= self.observe_at(pass, &mut objects, kind, at, profile);
                    }
                    match (seen, emit) {
                        (false, _) => {}
                        (true, true) => kept.push((id, state, emitted)),
                        (true, false) => {
                            self.settle_new(&mut table, id, state, emitted, graph, pass.now, None)
                        }
                    }
                }
            }
        };
        let done = columns::run(workers, work)?;
        let mut outbox = Outbox::default();
        let mut profiles = self.write();
        let mut kept = Vec::new();
        for (table, more) in done {
            profiles.absorb(table);
            kept.extend(more);
        }
        // With derived events to write, in profile order (as the live engine does).
        kept.sort_unstable_by_key(|(id, _, _)| *id);
        for (id, state, emitted) in kept {
            self.settle_new(
                &mut profiles,
                id,
                state,
                emitted,
                graph,
                pass.now,
                Some(&mut outbox),
            );
        }
        Ok(outbox)
    }

    /// The pass with an owners table (see the module docs).
    fn by_offset(
        &self,
        pass: &Pass,
        owners: &[(ProfileId, i64)],
        emit: bool,
        graph: &Graph,
        workers: usize,
    ) -> anyhow::Result<Outbox> {
        let end = owners.len().min(usize::try_from(pass.applied)?);
        let step = end.div_ceil(workers.max(1)).max(1);
        let next_range = AtomicU64::new(0);
        let work = || -> anyhow::Result<States> {
            let mut states = States::new(graph.next_id());
            let mut objects = pass.objects();
            loop {
                let from = next_range.fetch_add(step as u64, Ordering::Relaxed) as usize;
                if from >= end {
                    return Ok(states);
                }
                for (offset, &(owner, ts)) in (from..).zip(&owners[from..(from + step).min(end)]) {
                    if offset % 4096 == 0 && self.stop.load(Ordering::Acquire) {
                        anyhow::bail!("the history pass was stopped");
                    }
                    let kind = pass.columns.kind(offset as u64);
                    // A profile gets a state only when the log holds one of its events.
                    if owner == 0 || matches!(kind, Kind::Absent) {
                        continue;
                    }
                    let (state, emitted) = states.entry(owner);
                    let at = (offset as u64, ts);
                    self.observe_at(pass, &mut objects, kind, at, (state, emitted));
                }
            }
        };
        let mut done = columns::run(workers, work)?.into_iter();
        let mut states = done.next().expect("one worker at least");
        for more in done {
            states.absorb(more, &self.catalog);
        }
        let mut outbox = Outbox::default();
        let mut profiles = self.write();
        // Grown once rather than by doubling (each doubling moved every entry).
        profiles.entries.reserve(states.count());
        for (id, (state, emitted)) in states.into_iter() {
            let out = emit.then_some(&mut outbox);
            self.settle_new(&mut profiles, id, state, emitted, graph, pass.now, out);
        }
        Ok(outbox)
    }

    /// Adds the event at `offset` (of time `ts`), of kind `kind`, to a profile's state, or
    /// the derived event there to what the log holds for it; whether the log holds an event
    /// there. `objects` holds the thread's event objects (see [`Columns::fill`]), by type and
    /// name.
    fn observe_at(
        &self,
        pass: &Pass,
        objects: &mut Objects,
        kind: Kind<'_>,
        (offset, ts): (u64, i64),
        (state, emitted): (&mut ProfileState, &mut Emitted),
    ) -> bool {
        let observe = |state: &mut ProfileState, json: &serde_json::Value| {
            let ev = Event {
                offset,
                timestamp_ms: ts,
                json,
            };
            self.catalog.observe(state, &ev, pass.now);
        };
        match kind {
            Kind::Absent => return false,
            Kind::Present => {}
            Kind::Raw(raw) if raw.derived && !pass.derived => {}
            Kind::Raw(raw) if raw.derived => {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&raw.json) {
                    if emitted.is_empty() {
                        *emitted = derived::nothing(self.catalog.definitions().len());
                    }
                    derived::record(&self.catalog, emitted, &v, offset);
                }
            }
            Kind::Raw(raw) => self.observe(state, offset, ts, &raw.json, pass.now),
            Kind::Typed(id, row) => match &pass.plans[id as usize] {
                Plan::Skip => {}
                Plan::Fixed(json) => observe(state, json),
                Plan::Slim => {
                    let object = (objects.get_mut(id as usize).expect("one per name"))
                        .get_or_insert_with(|| pass.columns.object(id));
                    pass.columns.fill(object, row);
                    observe(state, object);
                }
            },
        }
        true
    }

    /// Settles a profile computed by the pass (its `emitted` empty when the log holds no
    /// derived event of it).
    #[allow(clippy::too_many_arguments)]
    fn settle_new(
        &self,
        profiles: &mut Profiles,
        id: ProfileId,
        state: ProfileState,
        emitted: Emitted,
        graph: &Graph,
        now: i64,
        outbox: Option<&mut Outbox>,
    ) {
        let emitted = match emitted.is_empty() {
            true => derived::nothing(self.catalog.definitions().len()),
            false => emitted,
        };
        self.settle(
            profiles,
            id,
            state,
            Some(emitted),
            graph.profile(id),
            now,
            outbox,
        );
    }
}

/// Threads of the history pass at most.
fn workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(MAX_WORKERS)
}

/// A thread's event objects, by type and name (made on first use).
type Objects = Vec<Option<serde_json::Value>>;

impl Pass {
    fn objects(&self) -> Objects {
        vec![None; self.plans.len()]
    }
}

/// A profile computed by the pass, to settle later.
type Computed = (ProfileId, ProfileState, Emitted);

/// What every thread of the pass reads.
struct Pass {
    columns: Columns,
    /// By type and name id of the columns.
    plans: Vec<Plan>,
    now: i64,
    /// The pass's end (exclusive).
    applied: u64,
    /// Whether derived events are read back (what the log holds, for the derived events an
    /// engine writes next): not by a pass over the graph (`rebuild`, offline reads,
    /// previews), which no engine continues.
    derived: bool,
}

impl Profiles {
    /// Adds the profiles of `other` (none of them is in `self`).
    fn absorb(&mut self, other: Profiles) {
        if self.entries.is_empty() {
            self.entries = other.entries;
        } else {
            self.entries.extend(other.entries);
        }
        for (mine, theirs) in self.members.iter_mut().zip(other.members) {
            *mine += theirs;
        }
        self.expiries.extend(other.expiries);
        self.retry.extend(other.retry);
    }
}

/// Workers of the history pass at most (each keeps a state per profile until the merge).
const MAX_WORKERS: usize = 4;

/// The pass's progress, shared by its workers.
struct Progress {
    /// Records read.
    done: AtomicU64,
    /// When the status was last set.
    last: Mutex<Instant>,
}

impl Progress {
    /// Counts `seen` more records; sets the status at most every 100 ms.
    fn add(&self, compute: &Compute, seen: u64, total: u64) {
        let done = self.done.fetch_add(seen, Ordering::Relaxed) + seen;
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.elapsed() >= Duration::from_millis(100) {
            compute.set_status(Status::Computing { done, total });
            *last = Instant::now();
        }
    }
}

/// Every profile's state during the pass, by profile id (ids are dense: the graph hands
/// them out from 1 up).
struct States(Vec<Option<(ProfileState, Emitted)>>);

impl States {
    fn new(next_id: ProfileId) -> States {
        States(Vec::with_capacity(usize::try_from(next_id).unwrap_or(0)))
    }

    /// The state of profile `id`; its `Emitted` stays empty (no allocation) until a derived
    /// event of the profile is read.
    fn entry(&mut self, id: ProfileId) -> (&mut ProfileState, &mut Emitted) {
        let i = usize::try_from(id).expect("a profile id fits in memory");
        if i >= self.0.len() {
            self.0.resize_with(i + 1, || None);
        }
        let (state, emitted) = self.0[i].get_or_insert_with(Default::default);
        (state, emitted)
    }

    /// The number of profiles with a state.
    fn count(&self) -> usize {
        self.0.iter().filter(|s| s.is_some()).count()
    }

    /// Adds the states of `other` (another part of the log) to these.
    fn absorb(&mut self, other: States, catalog: &junction_core::compute::Catalog) {
        if other.0.len() > self.0.len() {
            self.0.resize_with(other.0.len(), || None);
        }
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            match (mine, theirs) {
                (_, None) => {}
                (mine @ None, theirs) => *mine = theirs,
                (Some((state, emitted)), Some((their_state, their_emitted))) => {
                    catalog.absorb(state, their_state);
                    if emitted.is_empty() {
                        *emitted = their_emitted;
                    } else if !their_emitted.is_empty() {
                        derived::absorb(emitted, &their_emitted);
                    }
                }
            }
        }
    }

    fn into_iter(self) -> impl Iterator<Item = (ProfileId, (ProfileState, Emitted))> {
        (self.0.into_iter().enumerate()).filter_map(|(id, s)| Some((id as ProfileId, s?)))
    }
}

/// Computes everything for a stopped data dir (offline reads, previews): the history, with
/// the graph as it is.
pub fn compute_offline(compute: &Compute, unify: &Unify, log_dir: &Path) -> anyhow::Result<()> {
    if compute.catalog.is_empty() {
        return Ok(());
    }
    let graph = unify.graph();
    compute.compute_history(log_dir, unify.applied(), false, &graph)?;
    compute.set_status(Status::Ready);
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use junction_core::event::{Limits, Normalized, RequestMeta, normalize_one};
    use junction_core::identity::Rules;

    use super::*;
    use crate::clock::FixedClock;
    use crate::config::{AudienceConfig, ComputedTraitConfig, Definitions};
    use crate::ingest::DERIVED_SOURCE;
    use crate::log::{Codec, Entry, Log, LogConfig, LogReader, PendingFrame};

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_796_000_000_000;

    /// Deterministic pseudo-random numbers (an LCG).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (self.0 >> 33) % n
        }
    }

    /// Stored events of a few users: several types, names that a filter lists or not, an
    /// escaped name, revenues in quarters (exact sums).
    pub(in crate::compute) fn events(n: usize) -> Vec<Normalized> {
        let mut rng = Rng(7);
        let meta = RequestMeta {
            received_at_ms: NOW,
            client_ip: None,
            browser: false,
        };
        (0..n)
            .map(|i| {
                let user = rng.below(200);
                let ts = junction_core::timestamp::format(NOW - rng.below(60) as i64 * DAY / 2);
                let ids = format!(r#""userId":"u{user}","anonymousId":"a{i}","timestamp":"{ts}""#);
                let revenue = rng.below(40) as f64 * 0.25;
                let name = [
                    r#""Order Completed""#,
                    r#""Product Viewed""#,
                    r#""Product\u0020Viewed""#,
                    r#""Signed Up""#,
                    r#""Other""#,
                ][rng.below(5) as usize];
                let json = match rng.below(6) {
                    0 => format!(
                        r#"{{"type":"identify",{ids},"traits":{{"plan":"pro","revenue":{revenue}}}}}"#
                    ),
                    1 => format!(r#"{{"type":"page",{ids},"properties":{{"revenue":{revenue}}}}}"#),
                    2 => format!(r#"{{"type":"screen","name":"S",{ids}}}"#),
                    _ => format!(
                        r#"{{"type":"track","event":{name},{ids},"properties":{{"revenue":{revenue}}}}}"#
                    ),
                };
                normalize_one(json.as_bytes(), &meta, &Limits::default()).expect("valid")
            })
            .collect()
    }

    /// Writes `events` in frames of 1 to 30, with `identity` deciding each stored projection.
    pub(in crate::compute) fn write_log(
        dir: &Path,
        events: &[Normalized],
        identity: fn(&Normalized) -> Vec<u8>,
    ) {
        let config = LogConfig {
            segment_bytes: 64 << 10,
            ..LogConfig::new(dir)
        };
        let (log, _) = Log::open(config).unwrap();
        let mut rng = Rng(3);
        let mut rest = events;
        while !rest.is_empty() {
            let (frame, tail) = rest.split_at((1 + rng.below(30) as usize).min(rest.len()));
            rest = tail;
            let identities: Vec<Vec<u8>> = frame.iter().map(identity).collect();
            let entries = frame.iter().zip(&identities).map(|(e, id)| Entry {
                message_id: &e.message_id,
                json: &e.json,
                identity: id,
            });
            let codec = [Codec::None, Codec::Lz4][rng.below(2) as usize];
            // Some frames are derived events, read back as what the log holds.
            let source = match rng.below(8) {
                0 => DERIVED_SOURCE,
                _ => "web",
            };
            log.append_blocking(PendingFrame::encode(source, NOW, entries, codec))
                .unwrap();
        }
    }

    /// Two catalogs: the benchmark's (most events match no aggregate), and one where every
    /// event matches some aggregate, most only by type and name, reading more paths (whole
    /// objects, strings) than the first.
    fn catalogs() -> [Definitions; 2] {
        let t = |key: &str, expr: &str| ComputedTraitConfig {
            key: key.into(),
            expr: expr.into(),
            description: String::new(),
            managed_by: Default::default(),
        };
        let a = |key: &str, expr: &str| AudienceConfig {
            key: key.into(),
            name: None,
            expr: expr.into(),
            description: String::new(),
            managed_by: Default::default(),
        };
        let revenue = || {
            t(
                "revenue",
                r#"sum(properties.revenue, event = "Order Completed")"#,
            )
        };
        let viewers = || {
            a(
                "viewers",
                r#"count(event = "Product Viewed", within = 10d) >= 2 and count(event in ["Order Completed", "Signed Up"], within = 10d) == 0"#,
            )
        };
        let bench = Definitions::new(vec![revenue()], vec![viewers()]).unwrap();
        let wide = Definitions::new(
            vec![
                revenue(),
                t("pages", r#"count(type = "page", within = 7d)"#),
                t(
                    "big",
                    r#"count(type = "page", where = properties.revenue > 5)"#,
                ),
                t("seen", "last_seen()"),
                t("names", "unique(event)"),
                t("plan", r#"last(traits.plan, type = "identify")"#),
                t("props", r#"last(properties, type = "page")"#),
            ],
            vec![viewers()],
        )
        .unwrap();
        [bench, wide]
    }

    /// A history pass over `dir` by `workers` threads, finding owners in the graph or in a
    /// table.
    fn compute(
        definitions: &Definitions,
        dir: &Path,
        (graph, next): (&Graph, u64),
        workers: usize,
        by_graph: bool,
    ) -> Compute {
        let clock = Arc::new(FixedClock::new(NOW));
        let compute = Compute::new(definitions, clock, Duration::from_secs(1));
        let table = crate::unify::owners(graph, next);
        let owners = match by_graph {
            true => Owners::Graph,
            false => Owners::Table(&table),
        };
        (compute.history_pass(dir, next, owners, false, graph, workers)).unwrap();
        compute
    }

    /// What the pass computed before columns: every event's JSON read in log order, into
    /// one state per profile.
    fn json_pass(definitions: &Definitions, dir: &Path, (graph, next): (&Graph, u64)) -> Compute {
        let clock = Arc::new(FixedClock::new(NOW));
        let compute = Compute::new(definitions, clock, Duration::from_secs(1));
        let owners = crate::unify::owners(graph, next);
        let mut states = States::new(graph.next_id());
        let mut reader = LogReader::open(dir, 0).unwrap();
        reader.set_end_offset(Some(next));
        while let Some(r) = reader.next_record().unwrap() {
            let (state, emitted) = states.entry(owners[r.offset as usize].0);
            let ts = owners[r.offset as usize].1;
            match *r.source == *DERIVED_SOURCE {
                true => {
                    let v: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
                    if emitted.is_empty() {
                        *emitted = derived::nothing(definitions.catalog.definitions().len());
                    }
                    derived::record(&definitions.catalog, emitted, &v, r.offset);
                }
                false => compute.observe(state, r.offset, ts, &r.json, NOW),
            }
        }
        let mut profiles = compute.write();
        for (id, (state, emitted)) in states.into_iter() {
            compute.settle_new(&mut profiles, id, state, emitted, graph, NOW, None);
        }
        drop(profiles);
        compute
    }

    /// Asserts that `fast` computed exactly what `slow` did for every profile of `graph`.
    fn assert_same(fast: &Compute, slow: &Compute, (graph, by_graph): (&Graph, bool), what: &str) {
        let mut seen = 0;
        for p in graph.profiles() {
            let results = fast.results(p.id);
            assert_eq!(results, slow.results(p.id), "{what}: profile {}", p.id);
            let emitted = |c: &Compute| c.read().entries.get(&p.id).unwrap().emitted.clone();
            match by_graph {
                false => assert_eq!(emitted(fast), emitted(slow), "{what}: emitted of {}", p.id),
                // No engine goes on from such a pass: it reads no derived event back.
                true => assert_eq!(
                    emitted(fast),
                    derived::nothing(slow.catalog.definitions().len())
                ),
            }
            seen += usize::from(results.is_some());
        }
        assert_eq!(seen, 200, "{what}: one profile per user");
        assert_eq!(fast.audiences(), slow.audiences(), "{what}");
        let members: u64 = fast.audiences().iter().map(|(_, n)| n).sum();
        assert!(members > 5 && members < 195, "{what}: {members} members");
        let recorded = |c: &Compute| {
            let profiles = c.read();
            let writes = profiles.entries.values().flat_map(|e| &e.emitted);
            writes.filter(|(_, offset)| *offset > 0).count()
        };
        assert!(recorded(slow) > 10, "{what}: derived events read back");
        assert_eq!(
            recorded(fast) > 0,
            !by_graph,
            "{what}: derived events read back"
        );
    }

    /// Regression pin of the columns: a pass building them, then passes reading the kept
    /// column files (with more paths for the second catalog), by one thread or several,
    /// with owners from the graph or from a table, over a log with identity projections
    /// or without, give exactly what a pass reading every event's JSON gives.
    #[test]
    fn the_history_pass_from_columns_equals_the_pass_over_the_json() {
        let events = events(3000);
        let tmp = tempfile::tempdir().unwrap();
        let (fast, bare) = (tmp.path().join("a/log"), tmp.path().join("b/log"));
        write_log(&fast, &events, |e| e.identity.clone());
        assert!(
            events
                .iter()
                .all(|e| type_and_name_of(&e.identity).is_some())
        );
        // No projection: type and name come from the JSON, as in logs older than them.
        write_log(&bare, &events, |_| Vec::new());
        let (graph, next) =
            crate::unify::processor::replay(&fast, Rules::default(), &mut |_, _| ()).unwrap();
        assert_eq!(next, 3000);
        assert!(LogReader::segment_starts(&fast).unwrap().len() > 5);
        for definitions in catalogs() {
            let slow = json_pass(&definitions, &fast, (&graph, next));
            for dir in [&fast, &bare] {
                for (run, workers, by_graph) in
                    [(1, 1, true), (2, 3, true), (3, 1, false), (4, 3, false)]
                {
                    let fast = compute(&definitions, dir, (&graph, next), workers, by_graph);
                    let what = format!("{} run {run}", dir.display());
                    assert_same(&fast, &slow, (&graph, by_graph), &what);
                }
                let kept = columns::dir_for(dir).unwrap();
                let sealed = LogReader::segment_starts(dir).unwrap().len() - 1;
                assert_eq!(std::fs::read_dir(kept).unwrap().count(), sealed);
            }
        }
    }
    /// A log of `n` events with name projections, and the identity graph replayed from it.
    fn replayed_log(n: usize) -> (tempfile::TempDir, Graph, u64) {
        let events = events(n);
        let tmp = tempfile::tempdir().unwrap();
        write_log(tmp.path(), &events, |e| e.identity.clone());
        let (graph, next) =
            crate::unify::processor::replay(tmp.path(), Rules::default(), &mut |_, _| ()).unwrap();
        (tmp, graph, next)
    }

    /// The error of a history pass over `dir` by `workers` threads that is expected to fail,
    /// with the engine it ran in (`prepare` runs on the engine first).
    fn failed_pass(
        dir: &std::path::Path,
        (graph, next): (&Graph, u64),
        workers: usize,
        prepare: impl Fn(&Compute),
    ) -> (Compute, anyhow::Error) {
        let [definitions, _] = catalogs();
        let clock = Arc::new(FixedClock::new(NOW));
        let compute = Compute::new(&definitions, clock, Duration::from_secs(1));
        prepare(&compute);
        let owners = crate::unify::owners(graph, next);
        let err = compute
            .history_pass(dir, next, Owners::Table(&owners), false, graph, workers)
            .err()
            .expect("the pass fails");
        (compute, err)
    }

    #[test]
    fn a_corrupt_segment_fails_the_pass_with_any_number_of_workers() {
        let (tmp, graph, next) = replayed_log(1500);
        let dir = tmp.path();
        let starts = LogReader::segment_starts(dir).unwrap();
        assert!(starts.len() > 3);
        // A byte inside the first frame of the second segment: its CRC no longer matches.
        let second = dir.join(format!("{:020}.seg", starts[1]));
        let mut bytes = std::fs::read(&second).unwrap();
        bytes[32 + 8 + 30] ^= 0x55;
        std::fs::write(&second, bytes).unwrap();
        for workers in [1, 3] {
            let (_, err) = failed_pass(dir, (&graph, next), workers, |_| ());
            assert!(err.to_string().contains("corrupt log segment"), "{err:#}");
        }
    }

    /// An engine asked to stop leaves its history pass at the next frame, with nothing kept.
    #[test]
    fn a_stopped_engine_leaves_the_history_pass() {
        let (tmp, graph, next) = replayed_log(1500);
        for workers in [1, 3] {
            let stop = |c: &Compute| c.stop.store(true, Ordering::Release);
            let (compute, err) = failed_pass(tmp.path(), (&graph, next), workers, stop);
            assert!(err.to_string().contains("stopped"), "{err:#}");
            assert!(compute.read().entries.is_empty());
            assert_eq!(compute.applied(), 0);
        }
    }

    fn type_and_name_of(identity: &[u8]) -> Option<()> {
        junction_core::identity::type_and_name(identity).map(drop)
    }
}
