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
use super::{Compute, Outbox, Profiles, TICK};
use crate::ingest::{DERIVED_SOURCE, Ingestor};
use crate::unify::{TimelineSubscription, Unify};

impl Compute {
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
