//! The writer thread (group commit, rolling, retention, self-healing) and the segment
//! preparer thread.
//!
//! Contract:
//! - Only the writer thread touches the active segment. It drains the whole queue, assigns
//!   offsets densely from the durable end, writes the batch with one positioned write and
//!   calls `fdatasync` once; only then are the durable offset published and the appenders
//!   completed. A batch that spans a segment boundary is flushed (write + fdatasync) before
//!   the roll, so a segment exists only after everything before it is durable.
//! - On a failed write/fdatasync or roll, the affected appends fail with `Storage`, the log
//!   turns `Degraded`, offsets rewind to the durable end, and the failed byte range must be
//!   zeroed (and synced) before anything is written again. While degraded, new appends fail
//!   fast; every ~1 s the writer retries the repair (zeroing, then a roll if one was due)
//!   and turns healthy again by itself.
//! - The preparer keeps one preallocated spare file ready; after a failure it retries every
//!   ~1 s. A frame larger than a spare gets a segment sized to fit, prepared by the writer.
//! - Retention deletes whole sealed segments (never the active one), oldest first.
//! - Frames go only into segments of the current [`FORMAT_VERSION`]: when the active segment
//!   found on open is older, the first append rolls to a new segment (an empty one is
//!   replaced under its name).

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::format::{FORMAT_VERSION, PendingFrame, SEGMENT_HEADER_LEN};
use super::segment::{self, ActiveSegment, Prepared, SealedSegment};
use super::{AppendError, Appended, FailPoints, LogConfig, Retention};
use crate::metrics::{Counter, Gauge, Histogram};

/// How often a degraded writer or a failed preparer retries, and the retention tick.
const RETRY: Duration = Duration::from_secs(1);
/// The writer's batch buffer shrinks back to this after a large batch.
const KEEP_BUF: usize = 4 << 20;

pub type Completion = oneshot::Sender<Result<Appended, AppendError>>;

pub struct Submission {
    pub frame: PendingFrame,
    pub done: Completion,
}

#[derive(Default)]
pub struct Queue {
    pub items: Vec<Submission>,
    pub closed: bool,
}

enum Spare {
    Preparing,
    Ready(Prepared),
    Failed(String),
}

struct SpareSlot {
    spare: Spare,
    closed: bool,
}

#[derive(Default)]
pub struct Metrics {
    pub size_bytes: Gauge,
    pub segments: Gauge,
    pub oldest_offset: Gauge,
    pub fsync: Arc<Histogram>,
    pub appended_frames: Counter,
    pub appended_events: Counter,
    pub errors_overloaded: Counter,
    pub errors_storage: Counter,
}

/// State shared by the `Log` handles, the writer and the preparer.
pub struct Shared {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_inflight_bytes: u64,
    pub retention: Retention,
    pub queue: Mutex<Queue>,
    pub queue_cv: Condvar,
    /// Bytes submitted and not yet completed (the backpressure budget).
    pub inflight_bytes: AtomicU64,
    degraded: AtomicBool,
    fault: Mutex<Option<String>>,
    pub durable: watch::Sender<u64>,
    pub metrics: Metrics,
    pub fail: FailPoints,
    spare: Mutex<SpareSlot>,
    spare_cv: Condvar,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: &LogConfig, next_offset: u64, fail: FailPoints) -> Self {
        Self {
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            max_inflight_bytes: config.max_inflight_bytes,
            retention: config.retention.clone(),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            inflight_bytes: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            fault: Mutex::new(None),
            durable: watch::Sender::new(next_offset),
            metrics: Metrics::default(),
            fail,
            spare: Mutex::new(SpareSlot {
                spare: Spare::Preparing,
                closed: false,
            }),
            spare_cv: Condvar::new(),
        }
    }

    /// The reason the log is degraded, if it is.
    pub fn fault(&self) -> Option<String> {
        if !self.degraded.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.fault).clone()
    }

    fn set_fault(&self, reason: String) {
        tracing::error!(dir = %self.dir.display(), %reason, "event log degraded");
        *lock(&self.fault) = Some(reason);
        self.degraded.store(true, Ordering::Release);
    }

    fn clear_fault(&self) {
        tracing::info!(dir = %self.dir.display(), "event log recovered");
        self.degraded.store(false, Ordering::Release);
        *lock(&self.fault) = None;
    }

    pub fn release(&self, bytes: u64) {
        self.inflight_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn close_queue(&self) {
        lock(&self.queue).closed = true;
        self.queue_cv.notify_all();
    }

    pub fn close_spare(&self) {
        lock(&self.spare).closed = true;
        self.spare_cv.notify_all();
    }

    /// Takes the prepared spare, waiting while the preparer works on it.
    fn take_spare(&self) -> Result<Prepared, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut slot = lock(&self.spare);
        loop {
            match std::mem::replace(&mut slot.spare, Spare::Preparing) {
                Spare::Ready(prepared) => {
                    self.spare_cv.notify_all();
                    return Ok(prepared);
                }
                Spare::Failed(reason) => {
                    slot.spare = Spare::Failed(reason.clone());
                    return Err(reason);
                }
                Spare::Preparing => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err("timed out waiting for the segment preparer".into());
            }
            slot = self
                .spare_cv
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The preparer thread: keeps one preallocated spare segment ready.
pub fn run_preparer(shared: Arc<Shared>) {
    let mut last_failure: Option<Instant> = None;
    let mut slot = lock(&shared.spare);
    loop {
        if slot.closed {
            if let Spare::Ready(prepared) = std::mem::replace(&mut slot.spare, Spare::Preparing) {
                prepared.discard();
            }
            return;
        }
        if matches!(slot.spare, Spare::Ready(_)) {
            slot = shared
                .spare_cv
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let backoff = last_failure.map_or(Duration::ZERO, |t| RETRY.saturating_sub(t.elapsed()));
        if !backoff.is_zero() {
            slot = shared
                .spare_cv
                .wait_timeout(slot, backoff)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        drop(slot);
        let result = segment::prepare(&shared.dir, shared.segment_bytes, &shared.fail);
        slot = lock(&shared.spare);
        slot.spare = match result {
            Ok(prepared) => {
                if last_failure.take().is_some() {
                    tracing::info!(dir = %shared.dir.display(), "segment preparation recovered");
                }
                Spare::Ready(prepared)
            }
            Err(e) => {
                tracing::warn!(dir = %shared.dir.display(), error = %e, "cannot prepare the next log segment");
                last_failure = Some(Instant::now());
                Spare::Failed(format!(
                    "preparing a segment in {}: {e}",
                    shared.dir.display()
                ))
            }
        };
        shared.spare_cv.notify_all();
    }
}

/// A frame written but not yet durable.
struct Waiter {
    done: Completion,
    first_offset: u64,
    count: u32,
    len: u64,
    received_at_ms: i64,
}

pub struct Writer {
    shared: Arc<Shared>,
    active: ActiveSegment,
    sealed: VecDeque<SealedSegment>,
    /// Durable end: the offset after the last fdatasync'd frame.
    next_offset: u64,
    /// Next offset to assign; ahead of `next_offset` by the frames in `group`.
    assigned: u64,
    buf: Vec<u8>,
    group: Vec<Waiter>,
    /// A byte range of the active segment holding a failed write, to zero before writing again.
    dirty: Option<(u64, u64)>,
    /// A roll failed; heal by rolling.
    roll_needed: bool,
    last_heal: Instant,
    last_retention: Instant,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        active: ActiveSegment,
        sealed: Vec<SealedSegment>,
        next_offset: u64,
    ) -> Self {
        let writer = Self {
            shared,
            active,
            sealed: sealed.into(),
            next_offset,
            assigned: next_offset,
            buf: Vec::new(),
            group: Vec::new(),
            dirty: None,
            roll_needed: false,
            last_heal: Instant::now(),
            last_retention: Instant::now(),
        };
        writer.publish_sizes();
        writer
    }

    pub fn run(mut self) {
        self.enforce_retention();
        loop {
            let (batch, closed) = self.next_batch();
            self.heal();
            if !batch.is_empty() {
                self.commit(batch);
            }
            if self.shared.retention.max_age.is_some() && self.last_retention.elapsed() >= RETRY {
                self.enforce_retention();
            }
            if closed {
                return;
            }
        }
    }

    /// Waits for submissions (at most [`RETRY`]) and takes all of them. `closed` means the
    /// queue is closed and this is the last batch.
    fn next_batch(&self) -> (Vec<Submission>, bool) {
        let mut queue = lock(&self.shared.queue);
        loop {
            if queue.closed {
                return (std::mem::take(&mut queue.items), true);
            }
            let paused = self.shared.fail.paused();
            if !queue.items.is_empty() && !paused {
                // Let appenders that are runnable right now (a saturated server) queue their
                // frames first, so one fdatasync covers them all. When no other thread is
                // runnable this returns at once and adds no latency.
                drop(queue);
                std::thread::yield_now();
                queue = lock(&self.shared.queue);
                return (std::mem::take(&mut queue.items), queue.closed);
            }
            let wait = if paused {
                Duration::from_millis(5)
            } else {
                RETRY
            };
            let (guard, timeout) = self
                .shared
                .queue_cv
                .wait_timeout(queue, wait)
                .unwrap_or_else(PoisonError::into_inner);
            queue = guard;
            if timeout.timed_out() && !paused && queue.items.is_empty() {
                return (Vec::new(), false);
            }
        }
    }

    fn commit(&mut self, batch: Vec<Submission>) {
        for Submission { mut frame, done } in batch {
            let len = frame.len_bytes() as u64;
            if let Some(reason) = self.shared.fault().or(frame.invalid().map(str::to_owned)) {
                self.fail(done, len, reason);
                continue;
            }
            // A segment of an older format version (found on open) gets no new frames: a
            // binary of that version must be able to read every frame of it.
            let outdated = self.active.version != FORMAT_VERSION;
            if outdated || self.active.pos + self.buf.len() as u64 + len > self.active.capacity {
                if outdated {
                    tracing::info!(segment = %self.active.path.display(), version = self.active.version, "continuing a log of an older format version in a new segment");
                }
                self.flush();
                if self.shared.fault().is_none()
                    && let Err(reason) = self.roll(len)
                {
                    self.roll_needed = true;
                    self.set_fault(reason);
                }
                if let Some(reason) = self.shared.fault() {
                    self.fail(done, len, reason);
                    continue;
                }
            }
            self.buf.extend_from_slice(frame.finalize(self.assigned));
            self.group.push(Waiter {
                done,
                first_offset: self.assigned,
                count: frame.count(),
                len,
                received_at_ms: frame.received_at_ms(),
            });
            self.assigned += u64::from(frame.count());
        }
        self.flush();
    }

    /// Writes and fdatasyncs the buffered frames, then completes their appenders.
    fn flush(&mut self) {
        if self.group.is_empty() {
            return;
        }
        let pos = self.active.pos;
        let len = self.buf.len() as u64;
        let result = (|| {
            self.active.file.write_all_at(&self.buf, pos)?;
            let started = Instant::now();
            self.shared.fail.check_sync()?;
            self.active.file.sync_data()?;
            self.shared.metrics.fsync.observe(started.elapsed());
            Ok::<_, std::io::Error>(())
        })();
        self.buf.clear();
        self.buf.shrink_to(KEEP_BUF);
        let group = std::mem::take(&mut self.group);
        match result {
            Ok(()) => {
                self.active.pos += len;
                self.next_offset = self.assigned;
                let newest = group.iter().map(|w| w.received_at_ms).max();
                self.active.newest_ms = self.active.newest_ms.max(newest);
                self.shared.durable.send_replace(self.next_offset);
                let metrics = &self.shared.metrics;
                metrics.appended_frames.add(group.len() as u64);
                for w in group {
                    metrics.appended_events.add(u64::from(w.count));
                    self.shared.release(w.len);
                    let _ = w.done.send(Ok(Appended {
                        first_offset: w.first_offset,
                        count: w.count,
                    }));
                }
            }
            Err(e) => {
                self.assigned = self.next_offset;
                self.dirty = Some((pos, len));
                let reason = format!("writing {}: {e}", self.active.path.display());
                self.set_fault(reason.clone());
                for w in group {
                    self.fail(w.done, w.len, reason.clone());
                }
            }
        }
    }

    fn fail(&self, done: Completion, len: u64, reason: String) {
        self.shared.metrics.errors_storage.inc();
        self.shared.release(len);
        let _ = done.send(Err(AppendError::Storage(reason)));
    }

    fn set_fault(&mut self, reason: String) {
        self.last_heal = Instant::now();
        self.shared.set_fault(reason);
    }

    /// Starts a new active segment at the durable end, big enough for a frame of `frame_len`.
    fn roll(&mut self, frame_len: u64) -> Result<(), String> {
        let dir = &self.shared.dir;
        let need = SEGMENT_HEADER_LEN + frame_len;
        let prepared = if need <= self.shared.segment_bytes {
            self.shared.take_spare()?
        } else {
            let size = need.next_multiple_of(4096);
            segment::prepare(dir, size, &self.shared.fail)
                .map_err(|e| format!("preparing a {size}-byte segment in {}: {e}", dir.display()))?
        };
        let base = self.next_offset;
        let new = segment::install(prepared, dir, base, &self.shared.fail).map_err(|e| {
            format!(
                "installing segment {}: {e}",
                segment::segment_path(dir, base).display()
            )
        })?;
        let old = std::mem::replace(&mut self.active, new);
        // An empty active segment has the new one's name and was replaced by the rename.
        if old.base != base {
            self.sealed.push_back(SealedSegment {
                base: old.base,
                path: old.path,
                bytes: old.capacity,
                newest_ms: Some(old.newest_ms.unwrap_or_else(segment::now_ms)),
            });
        }
        tracing::debug!(base, segment = %self.active.path.display(), "rolled event log segment");
        self.publish_sizes();
        self.enforce_retention();
        Ok(())
    }

    /// While degraded, at most every [`RETRY`]: zero the failed range, roll if a roll failed,
    /// then report healthy again.
    fn heal(&mut self) {
        if self.shared.fault().is_none() || self.last_heal.elapsed() < RETRY {
            return;
        }
        self.last_heal = Instant::now();
        if let Some((pos, len)) = self.dirty {
            let zeroed = segment::write_zeros(&self.active.file, pos, len).and_then(|()| {
                self.shared.fail.check_sync()?;
                self.active.file.sync_data()
            });
            if let Err(e) = zeroed {
                let path = self.active.path.display();
                self.set_fault(format!("discarding a failed write in {path}: {e}"));
                return;
            }
            self.dirty = None;
        }
        if self.roll_needed {
            if let Err(reason) = self.roll(0) {
                self.set_fault(reason);
                return;
            }
            self.roll_needed = false;
        }
        self.shared.clear_fault();
    }

    /// Deletes the oldest sealed segments while the log is over `max_bytes` or their newest
    /// frame is older than `max_age`.
    fn enforce_retention(&mut self) {
        self.last_retention = Instant::now();
        let Retention { max_bytes, max_age } = self.shared.retention;
        if max_bytes.is_none() && max_age.is_none() {
            return;
        }
        let now = segment::now_ms();
        let mut total = self.total_bytes();
        let mut removed = 0;
        while let Some(oldest) = self.sealed.front_mut() {
            let too_big = max_bytes.is_some_and(|max| total > max);
            let mut too_old = || {
                let age = max_age?;
                match oldest.newest_ms() {
                    Ok(newest) => Some(now.saturating_sub(newest) > age.as_millis() as i64),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read segment age for retention");
                        None
                    }
                }
            };
            if !too_big && too_old() != Some(true) {
                break;
            }
            if let Err(e) = fs::remove_file(&oldest.path) {
                tracing::warn!(segment = %oldest.path.display(), error = %e, "cannot delete log segment");
                break;
            }
            tracing::info!(segment = %oldest.path.display(), too_big, "retention deleted log segment");
            total -= oldest.bytes;
            self.sealed.pop_front();
            removed += 1;
        }
        if removed > 0 {
            if let Err(e) = segment::sync_dir(&self.shared.dir) {
                tracing::warn!(error = %e, "cannot sync the log directory after retention");
            }
            self.publish_sizes();
        }
    }

    fn total_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.active.capacity
    }

    fn publish_sizes(&self) {
        let m = &self.shared.metrics;
        m.size_bytes.set(self.total_bytes());
        m.segments.set(self.sealed.len() as u64 + 1);
        m.oldest_offset
            .set(self.sealed.front().map_or(self.active.base, |s| s.base));
    }
}
