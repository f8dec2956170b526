//! The event log: Junction's durable, ordered, segmented append-only store of accepted events.
//!
//! # Contract
//! - Every event gets a `u64` **offset**, dense and increasing in append order. Offsets never
//!   change: a later rewrite (person deletion) may erase entries but keeps their offsets, so
//!   consumer cursors stay valid.
//! - [`Log::append`] resolves `Ok` only after the frame's bytes were written **and
//!   `fdatasync` returned Ok**. A failed append was never acknowledged; its offsets are
//!   reused by later appends.
//! - One process writes a log directory at a time (`<dir>/LOCK`, `flock`). Any number of
//!   [`LogReader`]s may read it, in any process, without a lock.
//!
//! # On-disk format, version 3 (all integers little-endian)
//! A log is a directory of segments `<base offset as 20 digits>.seg`, e.g.
//! `00000000000000000000.seg`, plus `LOCK`; `*.tmp` files are preallocated spares or
//! leftovers and are deleted on open. A segment is a 32-byte header followed by frames:
//! ```text
//! segment header (32 bytes)
//!   0  [u8; 8]  magic "JNCTNLOG"
//!   8  u16      format version = 3 (1 or 2 in segments written before, see below)
//!  10  u16      flags = 0
//!  12  u64      base offset (= first offset of the segment's first frame = file name)
//!  20  i64      creation time, ms since the Unix epoch
//!  28  u32      crc32c of bytes 0..28
//! frame (one per append: one request's events, all from one source)
//!   u32 frame_len   length of body; 0 = end of written data (unwritten space reads as zeros)
//!   u32 crc32c      of body
//!   body:
//!     u64 first_offset      offset of the first entry; equal to the previous frame's
//!                           first_offset + count (the segment's base for the first frame)
//!     u32 count             entries in the frame, >= 1
//!     i64 received_at_ms    server receive time, ms since the Unix epoch
//!     u8  codec             the version 1 codec byte, flag bit 0x80 set: exactly 0x80 =
//!                           two blocks (this layout); 0 or 1 = a version 1 frame (below);
//!                           any other value is refused
//!     u8  source_len        then source_len bytes of UTF-8 source name
//!     block A               `count` entries of: varint msgid_len, msgid (UTF-8),
//!                           varint identity_len, identity
//!     block B               `count` entries of: varint json_len, json
//!   each block:
//!     u8  codec             0 = none, 1 = LZ4 block (lz4_flex::block, no size prefix)
//!     u32 raw_len           block length before compression
//!     u32 stored_len        then stored_len bytes (compressed with `codec`)
//!   The body ends with block B. json_len = 0 marks an ERASED entry (offset kept, no
//!   event); an erased entry has identity_len = 0 (the projection holds personal data too).
//!   identity_len = 0 otherwise means the event has no identity projection.
//! ```
//! The identity projection is computed at ingest (the few fields identity resolution needs,
//! in the binary form of `junction_core::identity::project`, plus the event's name for
//! Compute's history pass); block A lets a reader get it without decompressing the events
//! ([`LogReader::open_identities`], [`LogReader::next_frame_picked`]). The log treats it as
//! opaque bytes.
//!
//! **Version 2** segments have the same frames, with projections that are small JSON
//! documents (they start with `{`; readers of projections accept both). Version 3 exists
//! so that a version 2 binary refuses a log it would misread.
//!
//! **Version 1** segments (header version 1) hold only version 1 frames, whose body after
//! `received_at_ms` is:
//! ```text
//!     u8  codec             0 = none, 1 = LZ4 block
//!     u8  source_len        then source_len bytes of UTF-8 source name
//!     u32 raw_payload_len   payload length before compression
//!     payload               (compressed with `codec`) `count` entries of:
//!                           varint msgid_len, msgid (UTF-8), varint json_len, json;
//!                           json_len = 0 marks an ERASED entry
//! ```
//! The byte after `received_at_ms` tells the layouts apart frame by frame (high bit set =
//! two blocks). Readers accept segments of versions 1 to 3; a two-block frame in a version
//! 1 segment is invalid (a version 1 binary reading that segment could not decode it). New
//! segments are version 3, and the writer never appends to an older segment: when the last
//! segment found on open is of an older version, the first append rolls to a new segment.
//!
//! Varints are LEB128 (7 bits per byte, low first). Frames are not aligned. A segment file
//! is preallocated to its full size (default 64 MiB; a frame larger than that gets a
//! segment sized to fit), so its length says nothing about how much is written: the first
//! zero `frame_len` or the end of the file ends the data. Each block is compressed on its
//! own, with LZ4 only when the configured codec is LZ4, the raw block is at least
//! `LZ4_MIN_PAYLOAD` (2048) bytes and LZ4 shrinks it; otherwise it is stored with codec 0.
//!
//! # Writing (see `writer.rs`)
//! Appenders encode a [`PendingFrame`] on their own thread (compression included) and queue
//! it. One writer thread owns the active segment: it drains the queue, assigns offsets,
//! writes all frames with one `pwrite`, calls `fdatasync` once (latency in
//! `junction_log_fsync_seconds`), publishes the durable end ([`Log::subscribe`]) and then
//! completes every appender. A preparer thread keeps the next segment preallocated and
//! fsynced ahead of time: `fallocate` (blocks allocated, reading as zeros; not a sparse
//! `set_len`), so an append never changes the file size; a zero fill where `fallocate` is
//! unsupported. Writing the zeros instead measured up to a third of the server's CPU.
//! Rolling = header into the spare + `fdatasync`,
//! rename to `<base>.seg`, fsync of the directory; it happens only after the previous
//! segment's frames are durable.
//!
//! **Backpressure**: bytes queued or being written count against `max_inflight_bytes`
//! (default 64 MiB); past it `append` fails at once with [`AppendError::Overloaded`] (HTTP
//! 503 + Retry-After), so memory stays bounded. One frame is always admitted when nothing
//! else is in flight, however large.
//!
//! **Failure**: if a write, `fdatasync` or segment preparation fails (ENOSPC, EIO), the
//! affected appends fail with [`AppendError::Storage`], [`Log::health`] turns
//! `Degraded(reason)`, the writer rewinds to the last durable frame end and must zero the
//! failed range before writing again. Appends fail fast while degraded. Every ~1 s the
//! writer retries the repair and the preparer retries preparation; when both succeed (disk
//! space is back) the log is `Ok` again by itself, with no lost or duplicated offsets.
//! If the process dies before the failed range is zeroed, those frames (reported as
//! failed) may reappear after recovery: at-least-once, clients retry with the same
//! messageId.
//!
//! # Recovery on open (see `segment.rs`)
//! Lock `<dir>/LOCK`, delete `*.tmp`, check every segment header, then scan the **last**
//! segment frame by frame. The first zero `frame_len` ends the data; the first frame with
//! an impossible length, a CRC mismatch, an impossible header or a non-contiguous offset
//! is a **torn tail**: it and everything after it in that segment is zeroed and synced,
//! everything before is kept, and [`RecoveryReport`] says how many bytes were discarded.
//! Non-zero bytes after the end marker (an unacknowledged write) are zeroed the same way.
//! Earlier segments are not scanned on open; a bad frame there is **corruption**, reported
//! by readers as [`LogError::Corrupt`] with segment and byte position.
//!
//! # Retention
//! `max_bytes` / `max_age`: on open, after each roll and (with `max_age`) every ~1 s, the
//! writer deletes whole oldest segments, never the active one, while the total size of all
//! segment files (preallocated sizes: bytes on disk, the spare `*.tmp` not counted) exceeds
//! `max_bytes` or the oldest segment's newest `received_at_ms` is older than `max_age`
//! (segments found on open are scanned once for that). Readers behind retention continue
//! at the oldest kept offset.
//!
//! # Reading (see `reader.rs`)
//! [`LogReader::open`]`(dir, from)` picks the segment by base offset from the file names,
//! skips frames that end before `from` and yields non-erased [`Record`]s in offset order.
//! [`LogReader::open_identities`] yields the same records with the identity projection
//! instead of the JSON (decompressing only block A) where an event has one, and with the
//! full JSON where it has none (version 1 frames). [`LogReader::next_frame_picked`] shows a
//! consumer each record's projection first and decompresses block B only for the records
//! it then asks for (Compute's history pass). [`LogReader::segment_starts`] lists frame
//! boundaries at which several readers can share a log.
//! At the tail it returns `None` without modifying anything and sees new data on the next
//! call (poll to follow; in-process consumers wait on [`Log::subscribe`]).
//!
//! # Random access (see `fetch.rs`)
//! [`EventFetcher::read`]`(offsets)` returns the records at a list of offsets (the Profile
//! API's scattered events) without scanning whole segments: a sparse per-segment index
//! (frame first offset → byte position, one entry per >= 16 KiB), built lazily by walking
//! frames without decompressing them, extended as the newest segment grows and rebuilt when
//! a segment was rewritten.
//! Same guarantees as a reader: no lock, never writes, erased/unwritten/retained-away
//! offsets are skipped.
//!
//! # Person deletion (not implemented yet)
//! Offsets stay: a segment is rewritten to a temp file with the person's entries erased
//! (json_len 0 and identity_len 0, same offsets and frame boundaries, fresh CRCs), fsynced,
//! and renamed over the original. LZ4 frames are re-encoded; sealed segments only, the
//! active one is rolled first.

mod fetch;
mod format;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

pub use fetch::EventFetcher;
pub use format::{Entry, FORMAT_VERSION, MAX_SOURCE_LEN, OLDEST_FORMAT_VERSION, PendingFrame};
pub use reader::{LogReader, Pick, Record, RecordRef};

use crate::metrics::{self, Histogram};
use writer::{Shared, Submission, Writer, lock};

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Size of each preallocated segment file, header included.
    pub segment_bytes: u64,
    /// The codec callers should pass to [`PendingFrame::encode`] (see [`Log::codec`]).
    pub codec: Codec,
    /// Budget for bytes accepted but not yet durable; beyond it appends are `Overloaded`.
    pub max_inflight_bytes: u64,
    pub retention: Retention,
}

/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

impl LogConfig {
    /// 64 MiB segments, LZ4, a 64 MiB in-flight budget, no retention limits.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            codec: Codec::Lz4,
            max_inflight_bytes: 64 << 20,
            retention: Retention::default(),
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(LogError::Config(format!(
                "segment_bytes = {} is below the minimum of {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.max_inflight_bytes == 0 {
            return Err(LogError::Config(
                "max_inflight_bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Lz4,
}

#[derive(Clone, Debug, Default)]
pub struct Retention {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub first_offset: u64,
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("event log overloaded: too much data waiting for fdatasync")]
    Overloaded,
    #[error("event log storage failure: {0}")]
    Storage(String),
    #[error("event log is shut down")]
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    Degraded(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("log directory {} is in use by another junction process", dir.display())]
    Locked { dir: PathBuf },
    #[error("corrupt log segment {} at byte {position}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "log segment {} has format version {version}; this junction reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
        segment.display()
    )]
    UnsupportedVersion { segment: PathBuf, version: u16 },
    #[error("invalid log config: {0}")]
    Config(String),
}

impl LogError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LogError {
        let context = context.into();
        move |source| LogError::Io { context, source }
    }
}

/// What [`Log::open`] found and repaired.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Offset of the oldest retained segment's first frame.
    pub first_offset: u64,
    /// Where appends continue.
    pub next_offset: u64,
    /// Bytes discarded from the tail of the last segment (0 after a clean shutdown).
    pub truncated_bytes: u64,
    pub torn_tail: Option<TornTail>,
    pub removed_temp_files: usize,
    /// The directory held no segment: a new log was started.
    pub created: bool,
}

#[derive(Clone, Debug)]
pub struct TornTail {
    pub segment: PathBuf,
    pub position: u64,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct LogStats {
    /// Bytes of all segment files (preallocated, so: bytes on disk).
    pub size_bytes: u64,
    pub segments: u64,
    pub first_offset: u64,
    pub next_offset: u64,
    pub inflight_bytes: u64,
    pub appended_frames: u64,
    pub appended_events: u64,
    pub append_errors: u64,
    pub fsync_seconds: Arc<Histogram>,
}

/// Test-only failure injection (deterministic ENOSPC and a stalled writer).
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct FailPoints(Arc<FailFlags>);

#[derive(Debug, Default)]
struct FailFlags {
    prepare: AtomicBool,
    sync: AtomicBool,
    pause: AtomicBool,
}

impl FailPoints {
    /// Segment preparation fails with ENOSPC.
    pub fn fail_prepare(&self, on: bool) {
        self.0.prepare.store(on, Ordering::SeqCst);
    }
    /// The writer's fdatasync calls (after the write went through) fail with ENOSPC.
    pub fn fail_sync(&self, on: bool) {
        self.0.sync.store(on, Ordering::SeqCst);
    }
    /// The writer takes nothing from the queue.
    pub fn pause_writer(&self, on: bool) {
        self.0.pause.store(on, Ordering::SeqCst);
    }
    fn check_prepare(&self) -> io::Result<()> {
        Self::check(&self.0.prepare)
    }
    fn check_sync(&self) -> io::Result<()> {
        Self::check(&self.0.sync)
    }
    fn paused(&self) -> bool {
        self.0.pause.load(Ordering::SeqCst)
    }
    fn check(flag: &AtomicBool) -> io::Result<()> {
        match flag.load(Ordering::SeqCst) {
            true => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            false => Ok(()),
        }
    }
}

/// Handle to an open log; cheap to clone. The last handle dropped shuts the log down.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    codec: Codec,
    threads: Mutex<Option<[JoinHandle<()>; 2]>>,
    /// Holds the directory lock until the threads are joined.
    _lock: File,
}

enum Ticket {
    Done(Appended),
    Wait(oneshot::Receiver<Result<Appended, AppendError>>),
}

impl Log {
    /// Locks the directory, recovers it and starts the writer and preparer threads.
    pub fn open(config: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
        config.validate()?;
        let dir = &config.dir;
        std::fs::create_dir_all(dir)
            .map_err(LogError::io(format!("creating {}", dir.display())))?;
        let lock_file = lock_dir(dir)?;
        let fail = FailPoints::default();
        let recovered = segment::recover(dir)?;
        let mut report = recovered.report;
        let active = match recovered.active {
            Some(active) => active,
            None => {
                let io =
                    || LogError::io(format!("creating the first segment in {}", dir.display()));
                let prepared = segment::prepare(dir, config.segment_bytes, &fail).map_err(io())?;
                report.created = true;
                report.segments = 1;
                segment::install(prepared, dir, 0, &fail).map_err(io())?
            }
        };
        let shared = Arc::new(Shared::new(&config, report.next_offset, fail));
        let writer = Writer::new(
            Arc::clone(&shared),
            active,
            recovered.sealed,
            report.next_offset,
        );
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(LogError::io(format!("spawning {name}")))
        };
        let preparer_shared = Arc::clone(&shared);
        let preparer = spawn(
            "log-preparer",
            Box::new(move || writer::run_preparer(preparer_shared)),
        )?;
        let writer = match spawn("log-writer", Box::new(move || writer.run())) {
            Ok(handle) => handle,
            Err(e) => {
                shared.close_spare();
                let _ = preparer.join();
                return Err(e);
            }
        };
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            next_offset = report.next_offset,
            truncated_bytes = report.truncated_bytes,
            "event log opened"
        );
        let inner = Inner {
            shared,
            codec: config.codec,
            threads: Mutex::new(Some([writer, preparer])),
            _lock: lock_file,
        };
        Ok((
            Log {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// Appends one frame; resolves after it is durable. Dropping the future does not cancel
    /// the write.
    ///
    /// The frame is submitted when `append` is called, not when the future is first polled;
    /// dropping the future does not cancel the write.
    pub fn append(
        &self,
        frame: PendingFrame,
    ) -> impl Future<Output = Result<Appended, AppendError>> + Send + 'static {
        let ticket = self.submit(frame);
        async move {
            match ticket? {
                Ticket::Done(appended) => Ok(appended),
                Ticket::Wait(rx) => rx.await.unwrap_or(Err(AppendError::Closed)),
            }
        }
    }

    /// [`append`](Self::append) for threads outside an async runtime (CLI import); panics if
    /// called from async code.
    pub fn append_blocking(&self, frame: PendingFrame) -> Result<Appended, AppendError> {
        match self.submit(frame)? {
            Ticket::Done(appended) => Ok(appended),
            Ticket::Wait(rx) => rx.blocking_recv().unwrap_or(Err(AppendError::Closed)),
        }
    }

    fn submit(&self, frame: PendingFrame) -> Result<Ticket, AppendError> {
        let shared = &self.inner.shared;
        if frame.count() == 0 {
            return Ok(Ticket::Done(Appended {
                first_offset: self.next_offset(),
                count: 0,
            }));
        }
        if let Some(reason) = shared.fault() {
            shared.metrics.errors_storage.inc();
            return Err(AppendError::Storage(reason));
        }
        let len = frame.len_bytes() as u64;
        let max = shared.max_inflight_bytes;
        let reserved =
            shared
                .inflight_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    (cur == 0 || cur + len <= max).then_some(cur + len)
                });
        if reserved.is_err() {
            shared.metrics.errors_overloaded.inc();
            return Err(AppendError::Overloaded);
        }
        let (done, rx) = oneshot::channel();
        let mut queue = lock(&shared.queue);
        if queue.closed {
            drop(queue);
            shared.release(len);
            return Err(AppendError::Closed);
        }
        queue.items.push(Submission { frame, done });
        drop(queue);
        shared.queue_cv.notify_one();
        Ok(Ticket::Wait(rx))
    }

    /// The durable end: every offset below it is fdatasync'd.
    pub fn next_offset(&self) -> u64 {
        *self.inner.shared.durable.borrow()
    }

    /// Watches the durable end, for in-process consumers waiting for new events.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.durable.subscribe()
    }

    pub fn health(&self) -> Health {
        match self.inner.shared.fault() {
            None => Health::Ok,
            Some(reason) => Health::Degraded(reason),
        }
    }

    /// The codec configured for this log; pass it to [`PendingFrame::encode`].
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    pub fn stats(&self) -> LogStats {
        let shared = &self.inner.shared;
        let m = &shared.metrics;
        LogStats {
            size_bytes: m.size_bytes.get(),
            segments: m.segments.get(),
            first_offset: m.oldest_offset.get(),
            next_offset: self.next_offset(),
            inflight_bytes: shared.inflight_bytes.load(Ordering::Acquire),
            appended_frames: m.appended_frames.get(),
            appended_events: m.appended_events.get(),
            append_errors: m.errors_overloaded.get() + m.errors_storage.get(),
            fsync_seconds: Arc::clone(&m.fsync),
        }
    }

    /// Appends the log's metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let shared = &self.inner.shared;
        let m = &shared.metrics;
        let gauges = [
            (
                "junction_log_size_bytes",
                "Bytes of all event log segment files.",
                m.size_bytes.get(),
            ),
            (
                "junction_log_segments",
                "Event log segment files.",
                m.segments.get(),
            ),
            (
                "junction_log_next_offset",
                "Durable end offset of the event log.",
                self.next_offset(),
            ),
            (
                "junction_log_inflight_bytes",
                "Bytes accepted by the event log and not yet durable.",
                shared.inflight_bytes.load(Ordering::Acquire),
            ),
            (
                "junction_log_healthy",
                "1 if the event log accepts appends, 0 if degraded.",
                u64::from(shared.fault().is_none()),
            ),
        ];
        for (name, help, value) in gauges {
            metrics::single(out, name, "gauge", help, value);
        }
        let name = "junction_log_fsync_seconds";
        metrics::header(
            out,
            name,
            "histogram",
            "Latency of event log fdatasync calls.",
        );
        m.fsync.render(out, name, "");
        let name = "junction_log_appended_frames_total";
        metrics::single(
            out,
            name,
            "counter",
            "Frames made durable in the event log.",
            m.appended_frames.get(),
        );
        let name = "junction_log_appended_events_total";
        metrics::single(
            out,
            name,
            "counter",
            "Events made durable in the event log.",
            m.appended_events.get(),
        );
        let name = "junction_log_append_errors_total";
        metrics::header(out, name, "counter", "Failed event log appends by reason.");
        metrics::sample(
            out,
            name,
            "reason=\"overloaded\"",
            m.errors_overloaded.get(),
        );
        metrics::sample(out, name, "reason=\"storage\"", m.errors_storage.get());
    }

    /// Writes everything queued, joins the threads; later appends fail with `Closed`.
    /// Idempotent; also runs when the last handle is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    #[doc(hidden)]
    pub fn fail_points(&self) -> &FailPoints {
        &self.inner.shared.fail
    }
}

impl Inner {
    fn shutdown(&self) {
        let Some([writer, preparer]) = lock(&self.threads).take() else {
            return;
        };
        self.shared.close_queue();
        if writer.join().is_err() {
            tracing::error!("event log writer thread panicked");
        }
        self.shared.close_spare();
        let _ = preparer.join();
        tracing::info!(dir = %self.shared.dir.display(), next_offset = *self.shared.durable.borrow(), "event log closed");
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LogError::io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LogError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(LogError::Io {
            context: format!("locking {}", path.display()),
            source: e,
        }),
    }
}
