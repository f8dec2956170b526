//! The Unify processor: one ordered pass over the event log into the identity graph.
//!
//! Contract:
//! - Records are decoded and parsed into a [`Batch`] outside the graph lock (whole log
//!   frames, no allocation per event), then applied in log order under the write lock in
//!   small slices (≤ [`SLICE`] events), so Profile API readers wait at most one slice.
//! - Changed records and the checkpoint are committed together every `commit_interval` (10×
//!   less often while far behind the log), at the end of [`catch_up`], and on shutdown. The
//!   processor encodes a commit ([`Prepared`], exactly the state at its checkpoint) and a
//!   committer thread writes it while the processor goes on applying; one commit is in
//!   flight at a time, in order. A failed commit's changes are put back and retried with the
//!   next one; nothing is marked committed until its write succeeded.
//! - Events are read through their identity projection (`LogReader::open_identities`)
//!   unless a rule reads event properties, which only the full event holds.
//! - A stored event that cannot be parsed is counted (`junction_unify_bad_events_total`)
//!   and skipped: it cannot block the log.
//! - In the server its threads run at a lower scheduling priority ([`NICE`]): when ingest
//!   and the processor compete for a core, acknowledging events goes first and derived state
//!   falls behind (`/ready`, `junction_unify_lag_events`), catching up as soon as the core has
//!   time to spare.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use junction_core::identity::{Batch, Changes, EventMeta, Graph, Rules};
use tokio::sync::watch;

use super::Unify;
use super::store::{Committed, Prepared};
use crate::log::{Log, LogError, LogReader};

/// Scheduling priority (nice) of the server's processor threads (see the module docs).
pub const NICE: i32 = 19;

/// Lowers the calling thread's scheduling priority to [`NICE`] (best effort).
pub(crate) fn yield_to_ingest() {
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::warn!(error = %e, "cannot lower the unify processor's priority");
    }
}

/// While behind the log, commits happen this many times less often.
const CATCH_UP_COMMIT_FACTOR: u32 = 10;

/// Events applied per write-lock hold.
pub const SLICE: usize = 512;

/// Reads whole frames into `batch` until it holds `min` events or more, or everything
/// written so far has been read (no lock held). On a read error the events read before it
/// stay in `batch`.
fn fill(
    reader: &mut LogReader,
    batch: &mut Batch,
    min: usize,
    rules: &Rules,
    bad: &AtomicU64,
) -> Result<(), LogError> {
    // The projection reads like the event for every rule that reads no property
    // (`junction_core::identity::project`); events stored without one are read whole.
    let whole = !rules.property_identifiers.is_empty();
    while batch.len() < min {
        let more = reader.next_frame(&mut |r| {
            let json = if r.identity.is_empty() || whole {
                r.json
            } else {
                r.identity
            };
            let meta = EventMeta {
                offset: r.offset,
                received_at_ms: r.received_at_ms,
                source: r.source,
                message_id: r.message_id,
            };
            if let Err(e) = batch.push(&meta, json, rules) {
                bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset = r.offset, error = %e, "skipping a stored event");
            }
        })?;
        if !more {
            break;
        }
    }
    Ok(())
}

/// Applies `batch` to the shared graph, [`SLICE`] events per write-lock hold, publishing
/// the progress (offset, sizes) before each release of the lock, so whoever sees the state
/// sees its progress; returns the next offset to apply.
fn apply(unify: &Unify, batch: &Batch, mut next: u64) -> u64 {
    for start in (0..batch.len()).step_by(SLICE) {
        let rows = start..batch.len().min(start + SLICE);
        let mut graph = unify.graph_mut();
        next = graph.apply_batch(batch, rows).unwrap_or(next);
        unify.send_feed(&mut graph, next);
        unify.publish_sizes(&graph);
        unify.applied.store(next, Ordering::Release);
    }
    next
}

/// Takes the pending changes and encodes them as they are at `applied` (the processor is the
/// only writer, so nothing changes in between). `None` when there is nothing to write.
fn prepare(unify: &Unify) -> anyhow::Result<Option<(Prepared, Changes)>> {
    let changes = unify.graph_mut().take_changes();
    let checkpoint = unify.applied();
    if checkpoint == unify.committed() && changes == Changes::default() {
        return Ok(None);
    }
    let prepared = Prepared::new(&unify.graph(), &changes, checkpoint);
    match prepared {
        Ok(p) => Ok(Some((p, changes))),
        Err(e) => {
            unify.graph_mut().restore_changes(changes);
            Err(e)
        }
    }
}

/// Records a written commit, or puts its changes back for the next one.
fn finish(
    unify: &Unify,
    written: anyhow::Result<Committed>,
    changes: Changes,
    checkpoint: u64,
    started: Instant,
) -> anyhow::Result<Committed> {
    match written {
        Ok(c) => {
            unify.committed.fetch_max(checkpoint, Ordering::AcqRel);
            unify.commit_seconds.observe(started.elapsed());
            Ok(c)
        }
        Err(e) => {
            unify.graph_mut().restore_changes(changes);
            Err(e)
        }
    }
}

/// Commits whatever changed, with `checkpoint` = the next offset to apply (synchronously).
pub fn commit(unify: &Unify) -> anyhow::Result<Committed> {
    let started = Instant::now();
    let Some((prepared, changes)) = prepare(unify)? else {
        return Ok(Committed::default());
    };
    let written = unify.store.write(&prepared);
    finish(unify, written, changes, prepared.checkpoint, started)
}

/// A commit handed to the committer thread, and what came of it.
type Job = (Prepared, Changes, Instant);
type Done = (anyhow::Result<Committed>, Changes, u64, Instant);

/// Writes prepared commits in order on its own thread, so the processor keeps applying
/// while the store syncs.
fn spawn_committer(
    unify: Arc<Unify>,
) -> (
    std::sync::mpsc::SyncSender<Job>,
    std::sync::mpsc::Receiver<Done>,
    std::thread::JoinHandle<()>,
) {
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(1);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Done>(1);
    let thread = std::thread::Builder::new()
        .name("unify-commit".into())
        .spawn(move || {
            yield_to_ingest();
            for (prepared, changes, started) in job_rx {
                let written = unify.store.write(&prepared);
                if done_tx
                    .send((written, changes, prepared.checkpoint, started))
                    .is_err()
                {
                    break;
                }
            }
        })
        .expect("spawning the unify commit thread");
    (job_tx, done_rx, thread)
}

fn report(unify: &Unify, done: Done) {
    let (written, changes, checkpoint, started) = done;
    if let Err(e) = finish(unify, written, changes, checkpoint, started) {
        tracing::error!(error = %format!("{e:#}"), "the unify state could not be committed; retrying");
        unify.commit_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Applies the whole log (as far as it is written) and commits. Returns events applied.
/// `progress(next offset, events applied so far)` is called after every slice.
pub fn catch_up(unify: &Unify, progress: &mut dyn FnMut(u64, u64)) -> anyhow::Result<u64> {
    let rules = unify.graph().rules().clone();
    let pipeline = Pipeline::start(
        &unify.log_dir,
        unify.applied(),
        rules,
        Arc::clone(&unify.bad_events),
    )?;
    let mut next = unify.applied();
    let mut count = 0u64;
    for batch in pipeline.batches.iter() {
        let batch = batch?;
        count += batch.len() as u64;
        next = apply(unify, &batch, next);
        pipeline.recycle(batch);
        unify.log_end.fetch_max(next, Ordering::AcqRel);
        progress(next, count);
    }
    pipeline.join()?;
    commit(unify)?;
    Ok(count)
}

/// Replays the whole log into a fresh in-memory graph (no store): `rebuild` and the
/// benchmark. Returns the graph and the next offset.
pub fn replay(
    log_dir: &Path,
    rules: junction_core::identity::Rules,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<(Graph, u64)> {
    let mut graph = Graph::untracked(rules.clone());
    let pipeline = Pipeline::start(log_dir, 0, rules, Arc::default())?;
    let (mut next, mut count) = (0u64, 0u64);
    for batch in pipeline.batches.iter() {
        let batch = batch?;
        count += batch.len() as u64;
        next = graph.apply_batch(&batch, 0..batch.len()).unwrap_or(next);
        pipeline.recycle(batch);
        progress(next, count);
    }
    pipeline.join()?;
    Ok((graph, next))
}

/// A reader thread that decodes and parses batches ahead of the applier (replay uses both
/// cores: one parses, one applies). Applied batches come back through [`Pipeline::recycle`]
/// so their buffers are reused rather than allocated (and page-faulted) again.
struct Pipeline {
    batches: Receiver<anyhow::Result<Batch>>,
    spare: SyncSender<Batch>,
    thread: std::thread::JoinHandle<()>,
}

/// Events per batch of the pipeline (at least: whole frames).
const PIPELINE_BATCH: usize = 4096;
/// Batches parsed ahead of the applier.
const PIPELINE_DEPTH: usize = 16;

impl Pipeline {
    fn start(
        log_dir: &Path,
        from: u64,
        rules: junction_core::identity::Rules,
        bad: Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Pipeline> {
        let mut reader = open_reader(log_dir, from, &rules)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
        let (spare, spares) = std::sync::mpsc::sync_channel::<Batch>(PIPELINE_DEPTH + 2);
        let thread = std::thread::Builder::new()
            .name("unify-reader".into())
            .spawn(move || {
                loop {
                    let mut batch = spares.try_recv().unwrap_or_default();
                    batch.clear();
                    let result = fill(&mut reader, &mut batch, PIPELINE_BATCH, &rules, &bad);
                    let done = batch.len() < PIPELINE_BATCH;
                    let send = match result {
                        Ok(()) if batch.is_empty() => break,
                        Ok(()) => tx.send(Ok(batch)),
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            break;
                        }
                    };
                    if send.is_err() || done {
                        break;
                    }
                }
            })
            .expect("spawning the unify reader thread");
        Ok(Pipeline {
            batches: rx,
            spare,
            thread,
        })
    }

    /// Hands an applied batch back to the reader for reuse.
    fn recycle(&self, batch: Batch) {
        let _ = self.spare.try_send(batch);
    }

    fn join(self) -> anyhow::Result<()> {
        drop(self.batches);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the unify reader thread panicked"))
    }
}

/// A reader of what [`fill`] needs: identity projections where they suffice.
fn open_reader(dir: &Path, from: u64, rules: &Rules) -> Result<LogReader, LogError> {
    if rules.property_identifiers.is_empty() {
        LogReader::open_identities(dir, from)
    } else {
        LogReader::open(dir, from)
    }
}

/// The running processor thread; [`Processor::stop`] (or dropping it) ends it once it has
/// applied everything durable in the log, with a final commit. Stop the log's writers first
/// (`Log::shutdown`) for the state to cover every acknowledged event.
pub struct Processor {
    stop: watch::Sender<bool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Processor {
    /// Applies what the log holds, commits, and waits for the thread to end.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the processor on its own thread until stopped.
pub fn spawn(unify: Arc<Unify>, log: Log, commit_interval: Duration) -> Processor {
    let (stop, mut stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("unify".into())
        .spawn(move || {
            yield_to_ingest();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a timer runtime for the unify thread");
            let mut appended = log.subscribe();
            let rules = unify.graph().rules().clone();
            let mut reader = match open_reader(log.dir(), unify.applied(), &rules) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the unify processor cannot read the log");
                    return;
                }
            };
            let mut next = unify.applied();
            let mut batch = Batch::default();
            let mut last_commit = Instant::now();
            let (job_tx, done_rx, committer) = spawn_committer(Arc::clone(&unify));
            let mut in_flight = false;
            loop {
                let end = log.next_offset();
                unify.log_end.fetch_max(end, Ordering::AcqRel);
                reader.set_end_offset(Some(end));
                if unify.paused.load(Ordering::Acquire) && !*stopped.borrow() {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                batch.clear();
                let error = fill(&mut reader, &mut batch, SLICE, &rules, &unify.bad_events).err();
                let read = batch.len();
                if read > 0 {
                    next = apply(&unify, &batch, next);
                }
                if let Some(e) = error {
                    tracing::error!(error = %e, "the unify processor cannot read the log; retrying");
                    unify.read_errors.fetch_add(1, Ordering::Relaxed);
                    if *stopped.borrow() || stopped.has_changed().is_err() {
                        break;
                    }
                    runtime.block_on(async {
                        let _ = tokio::time::timeout(Duration::from_secs(1), stopped.changed()).await;
                    });
                    // Start over from the last applied event.
                    match open_reader(log.dir(), next, &rules) {
                        Ok(r) => reader = r,
                        Err(e) => tracing::error!(error = %e, "the unify processor cannot reopen the log"),
                    }
                    continue;
                }
                let stopping = *stopped.borrow() || stopped.has_changed().is_err();
                // Caught up with what is durable now (appends may have landed meanwhile).
                let caught_up = read < SLICE && unify.applied() >= log.next_offset();
                // While catching up (far behind the log), commits are spaced out so each
                // one coalesces more changes per profile; durability of derived state only
                // bounds the replay after a crash.
                let due = if caught_up {
                    commit_interval
                } else {
                    commit_interval * CATCH_UP_COMMIT_FACTOR
                };
                if in_flight && let Ok(done) = done_rx.try_recv() {
                    report(&unify, done);
                    in_flight = false;
                }
                if stopping && caught_up {
                    if in_flight && let Ok(done) = done_rx.recv() {
                        report(&unify, done);
                        in_flight = false;
                    }
                    if let Err(e) = commit(&unify) {
                        tracing::error!(error = %format!("{e:#}"), "the final unify commit failed; the next start replays from the last checkpoint");
                        unify.commit_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                if !in_flight && last_commit.elapsed() >= due {
                    match prepare(&unify) {
                        Ok(Some((prepared, changes))) => {
                            in_flight = job_tx.send((prepared, changes, Instant::now())).is_ok();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "the unify state could not be encoded; retrying");
                            unify.commit_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    last_commit = Instant::now();
                }
                if caught_up {
                    let wait = if in_flight {
                        Duration::from_millis(2)
                    } else {
                        commit_interval.saturating_sub(last_commit.elapsed())
                    };
                    runtime.block_on(async {
                        tokio::select! {
                            _ = appended.changed() => {}
                            _ = stopped.changed() => {}
                            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
                        }
                    });
                }
            }
            // Nothing may write the store after the processor has stopped.
            drop(job_tx);
            if in_flight && let Ok(done) = done_rx.recv() {
                report(&unify, done);
            }
            let _ = committer.join();
        })
        .expect("spawning the unify thread");
    Processor {
        stop,
        thread: std::sync::Mutex::new(Some(thread)),
    }
}

/// Opens the state and applies the rest of the log (offline reads of a stopped data dir).
pub fn open_and_catch_up(
    data_dir: &Path,
    rules: junction_core::identity::Rules,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Unify> {
    let unify = Unify::open(data_dir, &data_dir.join("log"), rules)?;
    catch_up(&unify, progress)?;
    Ok(unify)
}
