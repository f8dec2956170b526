//! Live operation: the thread that applies the Unify timeline, slides windows on a timer, and
//! writes derived events.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use junction_core::compute::ProfileState;
use junction_core::identity::{EventRef, ProfileId, TimelineOp};
use rustc_hash::FxHashMap as HashMap;

use super::derived::{self, Emitted};
use super::{Compute, Outbox, Plans, Profiles, Status, TICK};
use crate::ingest::{DERIVED_SOURCE, Ingestor};
use crate::unify::{TimelineSubscription, Unify};

impl Compute {
    /// Applies timeline operations in order, then re-evaluates the profiles they touched;
    /// `next` is the log offset the processor reached with them. Returns the derived events
    /// to write.
    fn apply(&self, unify: &Unify, ops: &[TimelineOp], next: u64) -> anyhow::Result<Outbox> {
        let own = std::mem::take(&mut *self.own.lock().unwrap_or_else(|e| e.into_inner()));
        // In log order (written in turn), so searched.
        let mine = |offset: u64| {
            let i = own.partition_point(|r| r.end <= offset);
            own.get(i).is_some_and(|r| r.contains(&offset))
        };
        let refs: Vec<EventRef> = ops
            .iter()
            .filter_map(|op| match op {
                TimelineOp::Add(_, e) if !mine(e.offset) => Some(*e),
                TimelineOp::Add(..) | TimelineOp::Move(..) => None,
            })
            .collect();
        let records = unify.events(&refs)?;
        // Stored events to aggregate, and (while another engine writes, see `registry`) the
        // derived events it wrote.
        let writes = self.writes.load(Ordering::Acquire);
        let mut json: HashMap<u64, (&[u8], &[u8])> = HashMap::default();
        let mut written: HashMap<u64, serde_json::Value> = HashMap::default();
        for r in &records {
            if *r.source != *DERIVED_SOURCE {
                json.insert(r.offset, (&r.identity, &r.json));
            } else if !writes && let Ok(v) = serde_json::from_slice(&r.json) {
                written.insert(r.offset, v);
            }
        }
        let now = self.clock.now_ms();
        // Profiles being changed: their state, and what the log holds for them when that
        // changed here (a merge).
        let mut changing: HashMap<ProfileId, (ProfileState, Option<Emitted>)> = HashMap::default();
        let mut plans = Plans::default();
        {
            let mut profiles = self.write();
            let take = |profiles: &mut Profiles, id: ProfileId| match profiles.entries.get_mut(&id)
            {
                Some(e) => (std::mem::take(&mut e.state), None),
                None => (ProfileState::default(), None),
            };
            for op in ops {
                match *op {
                    TimelineOp::Add(_, e) if mine(e.offset) => {}
                    TimelineOp::Add(id, e) => {
                        let (state, emitted) = changing
                            .entry(id)
                            .or_insert_with(|| take(&mut profiles, id));
                        if let Some(&stored) = json.get(&e.offset) {
                            let ts = e.timestamp_ms;
                            self.observe_planned(&mut plans, state, e.offset, ts, stored, now);
                        } else if let Some(v) = written.get(&e.offset) {
                            let emitted =
                                emitted.get_or_insert_with(|| self.emitted_of(&profiles, id));
                            derived::record(&self.catalog, emitted, v, e.offset);
                        }
                    }
                    TimelineOp::Move(from, to) => {
                        let stored = self.remove(&mut profiles, from);
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
                        // The merged state's events were pruned at other times.
                        self.catalog.prune(into, now);
                        if let Some(from_emitted) = moved_emitted {
                            let mut mine = into_emitted
                                .take()
                                .unwrap_or_else(|| self.emitted_of(&profiles, to));
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
        let mut pending = self.own.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(own.into_iter().filter(|r| r.end > next));
        drop(pending);
        self.applied.fetch_max(next, Ordering::AcqRel);
        Ok(outbox)
    }

    /// What the log holds for `id` (nothing for a profile not seen yet).
    fn emitted_of(&self, profiles: &Profiles, id: ProfileId) -> Emitted {
        profiles.entries.get(&id).map_or_else(
            || derived::nothing(self.catalog.definitions().len()),
            |e| e.emitted.clone(),
        )
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
                if let Some(entry) = profiles.entries.get_mut(&id)
                    && entry.due_ms == Some(t)
                {
                    entry.due_ms = None;
                    due.push(id);
                }
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
        let events: Vec<&[u8]> = (outbox.profiles.iter())
            .flat_map(|(_, _, e)| e.iter().map(|e| &e[..]))
            .collect();
        match rt.block_on(ingestor.store_derived(&events, limits)) {
            Ok(stored) => {
                self.derived_events
                    .fetch_add(stored.stored as u64, Ordering::Relaxed);
                let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
                own.extend(stored.offsets);
            }
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "compute cannot write derived events; retrying");
                self.derived_errors.fetch_add(1, Ordering::Relaxed);
                let mut profiles = self.write();
                for (id, undo, _) in outbox.profiles {
                    if let Some(entry) = profiles.entries.get_mut(&id) {
                        for (i, old) in undo {
                            entry.emitted[i] = old;
                        }
                    }
                    profiles.retry.push(id);
                }
            }
        }
    }
}

impl Compute {
    /// The next step of taking over from the serving engine, from `phase`.
    fn take_over(
        &self,
        takeover: &dyn Takeover,
        phase: Phase,
        unify: &Unify,
        ingestor: &Ingestor,
        limits: &junction_core::event::Limits,
        rt: &tokio::runtime::Runtime,
    ) -> Phase {
        match phase {
            Phase::Shadow if unify.applied() <= self.applied() + TAKEOVER_LAG => {
                takeover.retire_serving();
                Phase::Draining(ingestor.log().next_offset())
            }
            Phase::Draining(end) if self.applied() >= end => {
                // What the log misses is written before serving: `ready` means written. (An
                // engine replaced meanwhile writes it too; its successor reads it back.)
                self.writes.store(true, Ordering::Release);
                self.log_end
                    .store(ingestor.log().next_offset(), Ordering::Release);
                let outbox = self.on_time(unify, true);
                self.emit(ingestor, limits, rt, outbox);
                self.sample_sizes();
                if !takeover.serve() {
                    self.writes.store(false, Ordering::Release);
                }
                Phase::Done
            }
            phase => phase,
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

/// How an engine computing in the background takes the place of the serving one (see
/// `registry`).
pub trait Takeover: Send {
    /// Stops the serving engine: when this returns, it writes nothing more.
    fn retire_serving(&self);
    /// Makes this engine the serving one; false if a later change replaced it meanwhile.
    fn serve(&self) -> bool;
}

/// Starts computing; derived events go through `ingestor`. Without `takeover` the engine
/// serves from the start (and needs no thread without definitions); with it, it writes
/// nothing until it took over.
pub fn spawn(
    compute: Arc<Compute>,
    unify: Arc<Unify>,
    ingestor: Arc<Ingestor>,
    limits: junction_core::event::Limits,
    takeover: Option<Box<dyn Takeover>>,
) -> Worker {
    let stop = Arc::clone(&compute.stop);
    let worker_stop = Arc::clone(&stop);
    compute.writes.store(takeover.is_none(), Ordering::Release);
    let thread = (!compute.catalog.is_empty() || takeover.is_some()).then(|| {
        std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || {
                run(
                    &compute,
                    &unify,
                    &ingestor,
                    &limits,
                    &worker_stop,
                    takeover.as_deref(),
                )
            })
            .expect("spawning the compute thread")
    });
    Worker {
        stop,
        thread: Mutex::new(thread),
    }
}

/// Where a background engine is in taking over (see [`Takeover`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Following the timeline without writing.
    Shadow,
    /// The serving engine stopped when the log ended here: reading what it wrote.
    Draining(u64),
    /// Serving (or replaced by a later change: following until stopped).
    Done,
}

/// Timeline operations applied together at most: slices that queued up while the previous
/// round was applied or written are applied as one (a profile touched by several of them is
/// settled, and writes its derived events, once).
const MAX_ROUND_OPS: usize = 4_096;

/// `first` and the slices queued behind it, up to [`MAX_ROUND_OPS`] operations, in order.
fn coalesce(
    first: crate::unify::FeedSlice,
    ops: &std::sync::mpsc::Receiver<crate::unify::FeedSlice>,
) -> crate::unify::FeedSlice {
    let (mut batch, mut next) = first;
    while batch.len() < MAX_ROUND_OPS {
        let Ok((more, more_next)) = ops.try_recv() else {
            break;
        };
        batch.extend(more);
        next = more_next;
    }
    (batch, next)
}

/// How far behind the processor a background engine may be when it stops the serving one
/// (what it still has to apply before writing: the time nothing is written).
const TAKEOVER_LAG: u64 = 10_000;

fn run(
    compute: &Compute,
    unify: &Unify,
    ingestor: &Ingestor,
    limits: &junction_core::event::Limits,
    stop: &std::sync::atomic::AtomicBool,
    takeover: Option<&dyn Takeover>,
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
        takeover.is_none(),
    ) {
        Ok(outbox) => {
            compute.emit(ingestor, limits, &rt, outbox);
            compute.set_status(Status::Ready);
            compute.sample_sizes();
        }
        Err(_) if stop.load(Ordering::Acquire) => return,
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
    let mut phase = if takeover.is_some() {
        Phase::Shadow
    } else {
        Phase::Done
    };
    while !stop.load(Ordering::Acquire) {
        if let Some(takeover) = takeover {
            phase = compute.take_over(takeover, phase, unify, ingestor, limits, &rt);
            if phase == Phase::Done && compute.catalog.is_empty() {
                // Serving nothing: no thread needed.
                return;
            }
        }
        let received = ops.recv_timeout(tick).map(|slice| coalesce(slice, &ops));
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
