//! The history pass: every definition computed over the log below an offset, in one read of
//! the stored events (at start, for `rebuild`, for offline reads, and for a preview whose
//! aggregates are not kept).
//!
//! Most events need not be parsed: the identity projection stored with each event holds its
//! type and name, from which [`Plan`] tells whether no aggregate can match it, whether a
//! fixed object of the type and name evaluates like it, or whether its JSON is needed (read
//! with [`LogReader::next_frame_picked`], which decompresses a frame's JSON block only when
//! one of its events needs it). Events without such a projection (older logs, derived
//! events) are read whole, as before.
//!
//! The log is read by up to [`MAX_WORKERS`] threads, one segment at a time each, into their
//! own per-profile states, combined at the end: aggregates merge like the states of merged
//! profiles ([`Catalog::absorb`]) and derived records keep the latest write
//! ([`derived::absorb`]), so the result does not depend on which worker read what (up to
//! the last bits of `f64` sums, as for any order of events).
//!
//! [`Catalog::absorb`]: junction_core::compute::Catalog::absorb

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use junction_core::compute::slim::Plan;
use junction_core::compute::{Event, ProfileState};
use junction_core::identity::ProfileId;

use super::derived::{self, Emitted};
use super::{Compute, Outbox, Plans, Status};
use crate::ingest::DERIVED_SOURCE;
use crate::log::{LogReader, Pick, RecordRef};
use crate::unify::Unify;

impl Compute {
    /// Computes over the history: `owners` says who owns each event below `applied`; the
    /// events are read from the log in one pass. Returns the derived events the log is
    /// missing (none without `emit`). The status stays `computing` until the caller has
    /// written them (`ready` means written).
    pub(super) fn backfill(
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
        owners: (u64, &[(ProfileId, i64)]),
        emit: bool,
        graph: &junction_core::identity::Graph,
    ) -> anyhow::Result<Outbox> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.history_pass(log_dir, owners, emit, graph, cores.min(MAX_WORKERS))
    }

    /// [`Compute::compute_history`] with `max_workers` threads at most.
    fn history_pass(
        &self,
        log_dir: &Path,
        (applied, owners): (u64, &[(ProfileId, i64)]),
        emit: bool,
        graph: &junction_core::identity::Graph,
        max_workers: usize,
    ) -> anyhow::Result<Outbox> {
        let total = applied;
        let now = self.clock.now_ms();
        if self.catalog.is_empty() {
            // Nothing to compute; the caller sets `ready`, as after any pass.
            self.applied.store(total, Ordering::Release);
            return Ok(Outbox::default());
        }
        // Segments are frame boundaries: workers take them in turn, each into its own
        // states, merged at the end (aggregates and derived records merge exactly).
        let starts = LogReader::segment_starts(log_dir)?;
        let ranges: Vec<(u64, u64)> = (starts.iter().enumerate())
            .map(|(i, &from)| (from, starts.get(i + 1).map_or(total, |&n| n.min(total))))
            .filter(|(from, to)| from < to)
            .collect();
        let workers = max_workers.min(ranges.len()).max(1);
        let next_range = AtomicUsize::new(0);
        let progress = Progress {
            done: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        };
        let work = || -> anyhow::Result<States> {
            let mut pass = Pass {
                compute: self,
                owners,
                now,
                states: States::new(graph.next_id()),
                plans: Plans::default(),
                seen: 0,
            };
            while let Some(&(from, to)) = ranges.get(next_range.fetch_add(1, Ordering::Relaxed)) {
                let mut read = || -> anyhow::Result<()> {
                    let mut reader = LogReader::open(log_dir, from)?;
                    reader.set_end_offset(Some(to));
                    while !self.stop.load(Ordering::Acquire)
                        && reader.next_frame_picked(&mut pass)?
                    {
                        let seen = std::mem::take(&mut pass.seen);
                        progress.add(self, seen, total);
                    }
                    Ok(())
                };
                if let Err(e) = read() {
                    // The pass fails: the other workers take no further segment.
                    next_range.store(ranges.len(), Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(pass.states)
        };
        let states = if workers == 1 {
            work()?
        } else {
            let done: Vec<anyhow::Result<States>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        std::thread::Builder::new()
                            .name("compute-history".into())
                            .spawn_scoped(s, work)
                    })
                    .collect::<Result<_, _>>()?;
                Ok::<_, std::io::Error>(
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect(),
                )
            })?;
            let mut done = done.into_iter();
            let mut states = done.next().expect("one worker at least")?;
            for more in done {
                states.absorb(more?, &self.catalog);
            }
            states
        };
        if self.stop.load(Ordering::Acquire) {
            anyhow::bail!("the history pass was stopped");
        }
        let mut outbox = Outbox::default();
        let mut profiles = self.write();
        // Grown once rather than by doubling (each doubling moved every entry).
        profiles.entries.reserve(states.count());
        let definitions = self.catalog.definitions().len();
        for (id, (state, emitted)) in states.into_iter() {
            let emitted = match emitted.is_empty() {
                true => derived::nothing(definitions),
                false => emitted,
            };
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
        Ok(outbox)
    }
}

/// The state of the history pass.
struct Pass<'a> {
    compute: &'a Compute,
    owners: &'a [(ProfileId, i64)],
    now: i64,
    states: States,
    plans: Plans,
    /// Records seen since the last progress report.
    seen: u64,
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

impl Pick for Pass<'_> {
    fn pick(&mut self, r: RecordRef<'_>) -> bool {
        self.seen += 1;
        let Some(&(owner, ts)) = self.owners.get(r.offset as usize) else {
            return false;
        };
        if owner == 0 {
            return false;
        }
        if **r.source == *DERIVED_SOURCE {
            return true;
        }
        let Some(plan) = self.plans.of(&self.compute.reads, r.identity) else {
            return true;
        };
        let (state, _) = self.states.entry(owner);
        match plan {
            Plan::Skip => false,
            Plan::Fixed(json) => {
                let ev = Event {
                    offset: r.offset,
                    timestamp_ms: ts,
                    json,
                };
                self.compute.catalog.observe(state, &ev, self.now);
                false
            }
            Plan::Slim => true,
        }
    }

    fn visit(&mut self, r: RecordRef<'_>) {
        if r.identity.is_empty() {
            self.seen += 1; // not seen by `pick`
        }
        let Some(&(owner, ts)) = self.owners.get(r.offset as usize) else {
            return;
        };
        if owner == 0 {
            return;
        }
        let (state, emitted) = self.states.entry(owner);
        if **r.source == *DERIVED_SOURCE {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(r.json) {
                let catalog = &self.compute.catalog;
                if emitted.is_empty() {
                    *emitted = derived::nothing(catalog.definitions().len());
                }
                derived::record(catalog, emitted, &v, r.offset);
            }
        } else {
            self.compute.observe(state, r.offset, ts, r.json, self.now);
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
    fn entry(&mut self, id: ProfileId) -> &mut (ProfileState, Emitted) {
        let i = usize::try_from(id).expect("a profile id fits in memory");
        if i >= self.0.len() {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i].get_or_insert_with(Default::default)
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

/// Computes everything for a stopped data dir (offline reads): the history, no thread.
pub fn compute_offline(compute: &Compute, unify: &Unify, log_dir: &Path) -> anyhow::Result<()> {
    if compute.catalog.is_empty() {
        return Ok(());
    }
    let (applied, owners) = unify.owners();
    compute.backfill(unify, log_dir, (applied, &owners), false)?;
    compute.set_status(Status::Ready);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use junction_core::event::{Limits, Normalized, RequestMeta, normalize_one};
    use junction_core::identity::Rules;

    use super::*;
    use crate::clock::FixedClock;
    use crate::config::{AudienceConfig, ComputedTraitConfig, Definitions};
    use crate::log::{Codec, Entry, Log, LogConfig, PendingFrame};

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
    fn events(n: usize) -> Vec<Normalized> {
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
    fn write_log(dir: &Path, events: &[Normalized], identity: fn(&Normalized) -> Vec<u8>) {
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
    /// event matches some aggregate, most only by type and name.
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
            ],
            vec![viewers()],
        )
        .unwrap();
        [bench, wide]
    }

    fn compute(
        definitions: &Definitions,
        dir: &Path,
        graph: &junction_core::identity::Graph,
        next: u64,
        workers: usize,
    ) -> Compute {
        let clock = Arc::new(FixedClock::new(NOW));
        let compute = Compute::new(definitions, clock, Duration::from_secs(1));
        let owners = crate::unify::owners(graph, next);
        compute
            .history_pass(dir, (next, &owners), false, graph, workers)
            .unwrap();
        compute
    }

    /// Regression pin of the fast path: computing from the type and name in the identity
    /// projection, by one worker or several, gives exactly what one pass reading every
    /// event's JSON gives.
    #[test]
    fn the_history_pass_from_projections_equals_the_pass_over_the_json() {
        let events = events(3000);
        let tmp = tempfile::tempdir().unwrap();
        let (fast, slow) = (tmp.path().join("fast"), tmp.path().join("slow"));
        write_log(&fast, &events, |e| e.identity.clone());
        assert!(
            events
                .iter()
                .all(|e| type_and_name_of(&e.identity).is_some())
        );
        // No projection: every event is read whole, as before projections held the name.
        write_log(&slow, &events, |_| Vec::new());
        let (graph, next) =
            crate::unify::processor::replay(&fast, Rules::default(), &mut |_, _| ()).unwrap();
        assert_eq!(next, 3000);
        assert!(LogReader::segment_starts(&fast).unwrap().len() > 5);
        for definitions in catalogs() {
            let slow = compute(&definitions, &slow, &graph, next, 1);
            for workers in [1, 3] {
                let fast = compute(&definitions, &fast, &graph, next, workers);
                let mut seen = 0;
                for p in graph.profiles() {
                    let results = fast.results(p.id);
                    assert_eq!(results, slow.results(p.id), "profile {}", p.id);
                    let emitted =
                        |c: &Compute| c.read().entries.get(&p.id).unwrap().emitted.clone();
                    assert_eq!(emitted(&fast), emitted(&slow), "emitted of {}", p.id);
                    seen += usize::from(results.is_some());
                }
                assert_eq!(seen, 200, "one profile per user");
                assert_eq!(fast.audiences(), slow.audiences());
                let members: u64 = fast.audiences().iter().map(|(_, n)| n).sum();
                assert!(members > 5 && members < 195, "{members} members");
                let recorded = |c: &Compute| {
                    let profiles = c.read();
                    let writes = profiles.entries.values().flat_map(|e| &e.emitted);
                    writes.filter(|(_, offset)| *offset > 0).count()
                };
                assert!(recorded(&fast) > 10, "derived events read back");
            }
        }
    }

    /// A log of `n` events with name projections, and the identity graph replayed from it.
    fn replayed_log(n: usize) -> (tempfile::TempDir, junction_core::identity::Graph, u64) {
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
        (graph, next): (&junction_core::identity::Graph, u64),
        workers: usize,
        prepare: impl Fn(&Compute),
    ) -> (Compute, anyhow::Error) {
        let [definitions, _] = catalogs();
        let clock = Arc::new(FixedClock::new(NOW));
        let compute = Compute::new(&definitions, clock, Duration::from_secs(1));
        prepare(&compute);
        let owners = crate::unify::owners(graph, next);
        let err = compute
            .history_pass(dir, (next, &owners), false, graph, workers)
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
