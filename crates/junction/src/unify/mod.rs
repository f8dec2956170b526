//! Unify: the processor that turns the event log into profiles, and its shared read handle.
//!
//! Contract:
//! - [`Unify`] holds the identity graph in memory (reads never touch disk) and a durable
//!   image of it in the state store (`<data_dir>/state`, see `store.rs`) whose checkpoint
//!   (next log offset to apply) is written in the same atomic batch as the state it
//!   describes. A crash loses only uncommitted work, which is replayed from the checkpoint:
//!   nothing is applied twice.
//! - The processor (`processor.rs`) applies the log in order, one event at a time, and
//!   commits changed profiles/accounts + checkpoint every `commit_interval` (write-behind).
//! - `rebuild` recomputes everything from offset 0 and gives the identical state.

pub mod processor;
pub mod store;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use junction_core::identity::{Counters, EventRef, Graph, ProfileId, Rules, TimelineOp};

use crate::log::{EventFetcher, LogError, Record};
use crate::metrics::{self, Histogram};
use store::Store;

/// The shared handle: the graph for readers, progress for `/ready` and `/metrics`.
pub struct Unify {
    graph: RwLock<Graph>,
    store: Store,
    fetcher: EventFetcher,
    /// Next log offset to apply (everything below is in `graph`).
    applied: AtomicU64,
    /// Next log offset whose effects are durable in the store.
    committed: AtomicU64,
    /// The log's durable end as last seen by the processor.
    log_end: AtomicU64,
    log_dir: PathBuf,
    bad_events: Arc<AtomicU64>,
    commit_errors: AtomicU64,
    read_errors: AtomicU64,
    paused: std::sync::atomic::AtomicBool,
    commit_seconds: Histogram,
    /// The graph's sizes and counters as of the last applied slice, for `/metrics` (which
    /// must not wait for the graph's lock, see `http::profiles`).
    sizes: std::sync::Mutex<Sizes>,
    /// Where the processor sends the timeline operations of each applied slice: one sender
    /// per subscriber ([`Unify::subscribe_timeline`]).
    feed: std::sync::Mutex<Vec<std::sync::mpsc::Sender<FeedSlice>>>,
}

/// The timeline operations of one applied slice, and the next log offset to apply after it.
pub type FeedSlice = (Vec<TimelineOp>, u64);

/// What a timeline subscriber starts from: everything below `applied` is in `owners`, every
/// later operation arrives on `ops`.
pub struct TimelineSubscription {
    pub ops: std::sync::mpsc::Receiver<FeedSlice>,
    pub applied: u64,
    /// For each log offset below `applied`: the profile that owns the event and its
    /// timestamp (profile 0: no profile).
    pub owners: Vec<(ProfileId, i64)>,
}

/// What `/metrics` reports of the graph.
#[derive(Clone, Copy, Debug, Default)]
struct Sizes {
    counters: Counters,
    profiles: usize,
    accounts: usize,
    identifiers: usize,
}

impl Sizes {
    fn of(graph: &Graph) -> Sizes {
        Sizes {
            counters: graph.counters(),
            profiles: graph.profile_count(),
            accounts: graph.account_count(),
            identifiers: graph.identifier_count(),
        }
    }
}

impl Unify {
    /// Opens (or creates) the state under `data_dir/state` and loads it into memory.
    pub fn open(data_dir: &Path, log_dir: &Path, rules: Rules) -> anyhow::Result<Unify> {
        let store = Store::open(&data_dir.join("state"))?;
        let (graph, checkpoint) = store.load(rules)?;
        let sizes = std::sync::Mutex::new(Sizes::of(&graph));
        Ok(Unify {
            graph: RwLock::new(graph),
            store,
            fetcher: EventFetcher::new(log_dir),
            applied: AtomicU64::new(checkpoint),
            committed: AtomicU64::new(checkpoint),
            log_end: AtomicU64::new(checkpoint),
            log_dir: log_dir.to_path_buf(),
            bad_events: Arc::default(),
            commit_errors: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            paused: Default::default(),
            commit_seconds: Histogram::default(),
            sizes,
            feed: Default::default(),
        })
    }

    /// Subscribes to the timeline: who owns each applied event now, and from then on every
    /// `Add`/`Move` the processor applies, in order (taken under the graph's write lock, so
    /// nothing falls between the two). Any number of subscribers; one that drops its
    /// receiver is forgotten.
    pub fn subscribe_timeline(&self) -> TimelineSubscription {
        let mut graph = self.graph_mut();
        let applied = self.applied();
        let owners = owners(&graph, applied);
        let (tx, ops) = std::sync::mpsc::channel();
        graph.set_feed(true);
        self.feed.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        TimelineSubscription {
            ops,
            applied,
            owners,
        }
    }

    /// Who owns each applied event now, without subscribing: the next offset to apply and,
    /// for each offset below, the owner and timestamp (as [`TimelineSubscription::owners`]).
    pub fn owners(&self) -> (u64, Vec<(ProfileId, i64)>) {
        let graph = self.graph();
        let applied = self.applied();
        (applied, owners(&graph, applied))
    }

    /// Sends what `graph` recorded for the subscriber, with `next` (the processor calls it
    /// with the write lock held, after each slice). Subscribers that went away are dropped;
    /// with none left the feed is switched off.
    fn send_feed(&self, graph: &mut Graph, next: u64) {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        if feed.is_empty() {
            return;
        }
        let mut ops = Some(graph.take_feed());
        let (n, mut i) = (feed.len(), 0);
        feed.retain(|tx| {
            i += 1;
            // The last subscriber takes the operations, the others a copy.
            let slice = if i == n { ops.take() } else { ops.clone() };
            tx.send((slice.unwrap_or_default(), next)).is_ok()
        });
        if feed.is_empty() {
            graph.set_feed(false);
        }
    }

    /// The graph, for reading (held briefly: the processor waits for readers).
    pub fn graph(&self) -> RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }

    fn graph_mut(&self) -> RwLockWriteGuard<'_, Graph> {
        self.graph.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `graph`'s sizes for `/metrics` (the processor calls it after each slice).
    fn publish_sizes(&self, graph: &Graph) {
        *self.sizes.lock().unwrap_or_else(|e| e.into_inner()) = Sizes::of(graph);
    }

    /// The stored events behind `refs` (erased or expired ones are skipped), in that order.
    /// Blocking I/O: call from `spawn_blocking` in async code.
    pub fn events(&self, refs: &[EventRef]) -> Result<Vec<Record>, LogError> {
        let offsets: Vec<u64> = refs.iter().map(|r| r.offset).collect();
        self.fetcher.read(&offsets)
    }

    /// Next log offset to apply.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Next log offset whose effects are durable.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Fail point for tests: while on, the processor applies nothing (lag builds up).
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::Release);
    }

    /// Events acknowledged by the log but not applied yet.
    pub fn lag(&self) -> u64 {
        self.log_end
            .load(Ordering::Acquire)
            .saturating_sub(self.applied())
    }
}

impl Unify {
    /// Bytes of the state store on disk.
    pub fn store_bytes(&self) -> u64 {
        self.store.disk_bytes()
    }

    /// A hash of the whole state (see [`digest`]).
    pub fn digest(&self) -> u64 {
        digest(&self.graph())
    }

    /// Prometheus text for the processor.
    pub fn render_metrics(&self, out: &mut String) {
        let Sizes {
            counters: c,
            profiles,
            accounts,
            identifiers,
        } = *self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let rows: [(&str, &str, &str, u64); 13] = [
            (
                "junction_unify_read_errors_total",
                "counter",
                "Failed reads of the log by the processor (retried).",
                self.read_errors.load(Ordering::Relaxed),
            ),
            (
                "junction_unify_applied_offset",
                "gauge",
                "Next log offset the processor applies.",
                self.applied(),
            ),
            (
                "junction_unify_committed_offset",
                "gauge",
                "Next log offset whose effects are durable in the state store.",
                self.committed(),
            ),
            (
                "junction_unify_lag_events",
                "gauge",
                "Events acknowledged by the log but not applied to profiles yet.",
                self.lag(),
            ),
            (
                "junction_unify_events_total",
                "counter",
                "Events applied to the identity graph since start.",
                c.events,
            ),
            (
                "junction_unify_unresolved_events_total",
                "counter",
                "Events with no usable identifier since start.",
                c.unresolved,
            ),
            (
                "junction_unify_merges_total",
                "counter",
                "Profile merges since start.",
                c.merges,
            ),
            (
                "junction_unify_dropped_identifiers_total",
                "counter",
                "Identifiers dropped by a limit or cap since start.",
                c.dropped,
            ),
            (
                "junction_unify_blocked_identifiers_total",
                "counter",
                "Blocked identifier values seen since start.",
                c.blocked,
            ),
            (
                "junction_unify_bad_events_total",
                "counter",
                "Stored events the processor could not parse.",
                self.bad_events.load(Ordering::Relaxed),
            ),
            (
                "junction_unify_commit_errors_total",
                "counter",
                "Failed state commits (retried).",
                self.commit_errors.load(Ordering::Relaxed),
            ),
            (
                "junction_unify_profiles",
                "gauge",
                "Profiles.",
                profiles as u64,
            ),
            (
                "junction_unify_identifiers",
                "gauge",
                "Identifiers owned by profiles.",
                identifiers as u64,
            ),
        ];
        for (name, kind, help, value) in rows {
            metrics::single(out, name, kind, help, value);
        }
        metrics::single(
            out,
            "junction_unify_accounts",
            "gauge",
            "Accounts.",
            accounts as u64,
        );
        metrics::header(
            out,
            "junction_unify_commit_seconds",
            "histogram",
            "Duration of state commits.",
        );
        self.commit_seconds
            .render(out, "junction_unify_commit_seconds", "");
    }
}

/// For each log offset below `applied`: the profile of `graph` that owns the event and its
/// timestamp (profile 0: none).
pub fn owners(graph: &Graph, applied: u64) -> Vec<(ProfileId, i64)> {
    let mut owners = vec![(0, 0); applied as usize];
    for p in graph.profiles() {
        for e in &p.events {
            if let Some(slot) = owners.get_mut(e.offset as usize) {
                *slot = (p.id, e.timestamp_ms);
            }
        }
    }
    owners
}

/// A hash of a whole graph: equal for equal states (rebuild and crash tests compare it).
pub fn digest(graph: &Graph) -> u64 {
    let (profiles, accounts) = graph.canonical();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in profiles {
        h.update(&postcard::to_allocvec(p).expect("profiles serialize"));
        // Events are not part of the serialized record (see `store`).
        for e in &p.events {
            h.update(&e.offset.to_le_bytes());
            h.update(&e.timestamp_ms.to_le_bytes());
        }
    }
    for a in accounts {
        h.update(&postcard::to_allocvec(a).expect("accounts serialize"));
    }
    h.update(&graph.next_id().to_le_bytes());
    h.digest()
}
