//! Segment files: naming, preallocation, installation, frame scanning and tail recovery.
//!
//! Contract:
//! - A segment is `<dir>/<base offset, 20 digits>.seg`; it exists under that name only after
//!   its header is durable ([`install`]), so every `.seg` file starts with a valid header.
//! - [`prepare`] preallocates a `*.tmp` file (`fallocate`, else a zero fill) and fsyncs it:
//!   writes into it later never change its size. Leftover `*.tmp` files are
//!   garbage and [`recover`] deletes them.
//! - [`SegmentCursor`] walks frames in order and never modifies the file; it reports the end
//!   of written data (`End`: zero length or end of file) separately from a frame that is not
//!   valid (`Bad`), and the caller decides whether that is a torn tail or corruption. It opens
//!   segments of format versions 1 to 3; a two-block frame in a version 1 segment is `Bad`:
//!   old binaries cannot read it, so no writer puts one there.
//! - [`recover`] trusts the last segment up to its first bad frame and zeroes everything
//!   after the last good frame, so the next append lands on zeros.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::format::{
    self, FORMAT_VERSION, FRAME_HEADER_LEN, Frame, MAX_BODY_LEN, MIN_BODY_LEN,
    OLDEST_FORMAT_VERSION, SEGMENT_HEADER_LEN, SegmentHeader,
};
use super::{FailPoints, LogError, RecoveryReport, TornTail};

const SEGMENT_EXT: &str = "seg";
const TEMP_EXT: &str = "tmp";
const CHUNK: usize = 1 << 20;
/// Dirty zero-fill bytes allowed before the preparer syncs them.
const ZERO_FILL_SYNC_BYTES: usize = 4 << 20;
/// Read-ahead of a cursor: starts small (a follower polling the tail re-reads little) and
/// doubles with every refill up to the maximum.
const MIN_READ_AHEAD: usize = 4 << 10;
const MAX_READ_AHEAD: usize = 256 << 10;

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXT}"))
}

/// `(base offset, path)` of every segment in `dir`, ordered by base offset.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(LogError::io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io(format!("listing {}", dir.display())))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == SEGMENT_EXT)
            && let Some(base) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| s.len() == 20)
                .and_then(|s| s.parse().ok())
        {
            segments.push((base, path));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as i64)
}

/// A preallocated (reads as zeros), fsynced file waiting to become a segment.
#[derive(Debug)]
pub struct Prepared {
    file: File,
    path: PathBuf,
    size: u64,
}

impl Prepared {
    /// Deletes the file (used when it is not needed any more).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Gives `file` `size` bytes of allocated space that read as zeros.
///
/// `fallocate` allocates the blocks (unwritten extents read back as zeros) without writing
/// them: writing zeros through the page cache cost up to a third of the server's CPU at
/// ingest speed. Where `fallocate` is unsupported the zeros are written, synced every few
/// MiB so a burst of dirty zeros never queues ahead of the writer's fdatasync.
fn allocate_zeroed(file: &File, size: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
        Err(e) => return Err(e.into()),
    }
    let zeros = vec![0u8; CHUNK.min(size as usize)];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], done)?;
        done += n as u64;
        if done % ZERO_FILL_SYNC_BYTES as u64 == 0 {
            file.sync_data()?;
        }
    }
    Ok(())
}

/// Creates `<dir>/prepare-<pid>-<n>.tmp` of exactly `size` zero bytes and fsyncs it.
pub fn prepare(dir: &Path, size: u64, fail: &FailPoints) -> io::Result<Prepared> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("prepare-{}-{n}.{TEMP_EXT}", std::process::id()));
    let result = (|| {
        fail.check_prepare()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        allocate_zeroed(&file, size)?;
        file.sync_all()?;
        Ok(file)
    })();
    match result {
        Ok(file) => Ok(Prepared { file, path, size }),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// The segment the writer appends to.
#[derive(Debug)]
pub struct ActiveSegment {
    pub file: File,
    pub path: PathBuf,
    pub base: u64,
    /// Format version of its header; frames are appended only to [`FORMAT_VERSION`] segments.
    pub version: u16,
    /// End of the last durable frame: the next frame is written here.
    pub pos: u64,
    pub capacity: u64,
    /// Newest `received_at_ms` of its frames, for age retention.
    pub newest_ms: Option<i64>,
}

/// Turns a prepared file into the segment starting at `base`: header, fdatasync, rename,
/// fsync of the directory. Renaming over an existing (empty) segment of the same base is
/// allowed: that is how an empty active segment is replaced by a larger one.
pub fn install(
    prepared: Prepared,
    dir: &Path,
    base: u64,
    fail: &FailPoints,
) -> io::Result<ActiveSegment> {
    let header = SegmentHeader::new(base, now_ms()).encode();
    let path = segment_path(dir, base);
    let durable_header = (|| {
        prepared.file.write_all_at(&header, 0)?;
        fail.check_sync()?;
        prepared.file.sync_data()
    })();
    if let Err(e) = durable_header.and_then(|()| fs::rename(&prepared.path, &path)) {
        let _ = fs::remove_file(&prepared.path);
        return Err(e);
    }
    fail.check_sync()?;
    sync_dir(dir)?;
    Ok(ActiveSegment {
        file: prepared.file,
        path,
        base,
        version: FORMAT_VERSION,
        pos: SEGMENT_HEADER_LEN,
        capacity: prepared.size,
        newest_ms: None,
    })
}

/// Overwrites `[pos, pos + len)` with zeros (no fdatasync: the caller syncs).
pub fn write_zeros(file: &File, pos: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Position just after the last non-zero byte in `[from, len)`, or `from` if all are zero.
fn end_of_nonzero(file: &File, from: u64, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut end = from;
    let mut pos = from;
    while pos < len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    Ok(end)
}

/// What [`SegmentCursor::peek`] found at the current position.
pub enum Step<'a> {
    /// A valid frame ending at byte `end`.
    Frame { frame: Frame<'a>, end: u64 },
    /// No more written data: a zero frame length or the end of the file.
    End,
    /// Bytes that are not a valid next frame.
    Bad(String),
}

/// Read-only, buffered walk over the frames of one segment.
pub struct SegmentCursor {
    file: File,
    pub path: PathBuf,
    pub base: u64,
    pub version: u16,
    pub created_at_ms: i64,
    pub len: u64,
    /// Byte position of the next frame.
    pub pos: u64,
    /// Offset the next frame must start at.
    pub next_offset: u64,
    buf: Vec<u8>,
    buf_start: u64,
    read_ahead: usize,
}

impl SegmentCursor {
    /// Opens a segment and checks its header (magic, CRC, a version this binary reads, base
    /// offset = file name).
    pub fn open(path: &Path, base: u64) -> Result<Self, LogError> {
        let corrupt = |reason: String| LogError::Corrupt {
            segment: path.to_path_buf(),
            position: 0,
            reason,
        };
        let file = File::open(path).map_err(LogError::io(format!("opening {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(LogError::io(format!(
                "reading metadata of {}",
                path.display()
            )))?
            .len();
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        let n = read_full_at(&file, &mut h, 0)
            .map_err(LogError::io(format!("reading {}", path.display())))?;
        let header = SegmentHeader::decode(&h[..n]).map_err(corrupt)?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&header.version) {
            return Err(LogError::UnsupportedVersion {
                segment: path.to_path_buf(),
                version: header.version,
            });
        }
        if header.base_offset != base {
            return Err(corrupt(format!(
                "header says base offset {}, file name says {base}",
                header.base_offset
            )));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            base,
            version: header.version,
            created_at_ms: header.created_at_ms,
            len,
            pos: SEGMENT_HEADER_LEN,
            next_offset: base,
            buf: Vec::new(),
            buf_start: 0,
            read_ahead: MIN_READ_AHEAD,
        })
    }

    /// Looks at the frame at `pos` without moving; call [`advance`](Self::advance) to move.
    pub fn peek(&mut self) -> io::Result<Step<'_>> {
        let pos = self.pos;
        let avail = self.fill(pos, FRAME_HEADER_LEN)?;
        let head = self.slice(pos, avail);
        if head[..head.len().min(4)].iter().all(|&b| b == 0) {
            return Ok(Step::End); // zero frame length, or the end of the file
        }
        if head.len() < FRAME_HEADER_LEN {
            return Ok(Step::Bad(
                "frame header cut off by the end of the file".into(),
            ));
        }
        let (len, crc) = format::frame_prefix(head);
        let len = len as usize;
        let end = pos + (FRAME_HEADER_LEN + len) as u64;
        if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&len) || end > self.len {
            return Ok(Step::Bad(format!("impossible frame length {len}")));
        }
        self.fill(pos, FRAME_HEADER_LEN + len)?;
        let (next_offset, version) = (self.next_offset, self.version);
        let body = &self.slice(pos, FRAME_HEADER_LEN + len)[FRAME_HEADER_LEN..];
        match format::check_frame(crc, body) {
            Ok(frame) if frame.first_offset != next_offset => Ok(Step::Bad(format!(
                "frame starts at offset {}, expected {next_offset}",
                frame.first_offset
            ))),
            Ok(frame) if frame.is_split() && version < 2 => {
                Ok(Step::Bad("two-block frame in a version 1 segment".into()))
            }
            Ok(frame) => Ok(Step::Frame { frame, end }),
            Err(reason) => Ok(Step::Bad(reason)),
        }
    }

    /// Moves over every valid frame; returns the newest `received_at_ms` seen and why it
    /// stopped: `None` at the end of the data, `Some(reason)` at a bad frame.
    pub fn scan(&mut self) -> io::Result<(Option<i64>, Option<String>)> {
        let mut newest = None;
        loop {
            let (end, next) = match self.peek()? {
                Step::Frame { frame, end } => {
                    newest = newest.max(Some(frame.received_at_ms));
                    (end, frame.end_offset())
                }
                Step::End => return Ok((newest, None)),
                Step::Bad(reason) => return Ok((newest, Some(reason))),
            };
            self.advance(end, next);
        }
    }

    pub fn advance(&mut self, end: u64, next_offset: u64) {
        self.pos = end;
        self.next_offset = next_offset;
    }

    /// Forgets buffered bytes so the next [`peek`](Self::peek) sees what a writer added since.
    pub fn invalidate(&mut self) {
        self.buf.clear();
        self.read_ahead = MIN_READ_AHEAD;
    }

    /// Makes `[at, at + n)` buffered as far as the file allows; returns the bytes available.
    fn fill(&mut self, at: u64, n: usize) -> io::Result<usize> {
        let want = (n as u64).min(self.len.saturating_sub(at)) as usize;
        let have_from = self.buf_start;
        let have_to = self.buf_start + self.buf.len() as u64;
        if at >= have_from && at + want as u64 <= have_to {
            return Ok(want);
        }
        let read = (want.max(self.read_ahead) as u64).min(self.len.saturating_sub(at)) as usize;
        self.read_ahead = (self.read_ahead * 2).min(MAX_READ_AHEAD);
        self.buf.resize(read, 0);
        let got = read_full_at(&self.file, &mut self.buf, at)?;
        self.buf.truncate(got);
        self.buf_start = at;
        Ok(want.min(got))
    }

    fn slice(&self, at: u64, n: usize) -> &[u8] {
        let from = (at - self.buf_start) as usize;
        &self.buf[from..(from + n).min(self.buf.len())]
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A segment before the active one.
#[derive(Debug)]
pub struct SealedSegment {
    pub base: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// Newest frame time; `None` until computed (lazily, by scanning) for retention.
    pub newest_ms: Option<i64>,
}

impl SealedSegment {
    /// Newest `received_at_ms` of its frames (the header's creation time if it has none).
    pub fn newest_ms(&mut self) -> Result<i64, LogError> {
        if let Some(ms) = self.newest_ms {
            return Ok(ms);
        }
        let mut cursor = SegmentCursor::open(&self.path, self.base)?;
        let (newest, _) = cursor
            .scan()
            .map_err(LogError::io(format!("scanning {}", self.path.display())))?;
        let newest = newest.unwrap_or(cursor.created_at_ms);
        self.newest_ms = Some(newest);
        Ok(newest)
    }
}

/// The log directory as found on open, with the torn tail (if any) already repaired.
pub struct Recovered {
    pub sealed: Vec<SealedSegment>,
    pub active: Option<ActiveSegment>,
    pub report: RecoveryReport,
}

/// Deletes temp files, checks every segment header, scans the last segment and zeroes a torn
/// tail (fdatasync'd before returning). Must run under the directory lock.
pub fn recover(dir: &Path) -> Result<Recovered, LogError> {
    let mut report = RecoveryReport::default();
    let entries = fs::read_dir(dir).map_err(LogError::io(format!("listing {}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == TEMP_EXT) {
            fs::remove_file(&path).map_err(LogError::io(format!("removing {}", path.display())))?;
            report.removed_temp_files += 1;
        }
    }
    let mut segments = list_segments(dir)?;
    let Some((last_base, last_path)) = segments.pop() else {
        return Ok(Recovered {
            sealed: Vec::new(),
            active: None,
            report,
        });
    };
    let mut sealed = Vec::with_capacity(segments.len());
    for (base, path) in segments {
        let cursor = SegmentCursor::open(&path, base)?;
        sealed.push(SealedSegment {
            base,
            path,
            bytes: cursor.len,
            newest_ms: None,
        });
    }

    let mut cursor = SegmentCursor::open(&last_path, last_base)?;
    let (newest_ms, torn) = cursor
        .scan()
        .map_err(LogError::io(format!("scanning {}", last_path.display())))?;
    let io_err = |what: &str| LogError::io(format!("{what} {}", last_path.display()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last_path)
        .map_err(io_err("opening"))?;
    // Whatever follows the last good frame is discarded: a torn frame, or bytes of an
    // unacknowledged write behind a zero length. Zero them so later appends land on zeros.
    let garbage_end = end_of_nonzero(&file, cursor.pos, cursor.len).map_err(io_err("reading"))?;
    if garbage_end > cursor.pos {
        let bytes = garbage_end - cursor.pos;
        tracing::warn!(
            segment = %last_path.display(),
            position = cursor.pos,
            bytes,
            reason = torn.as_deref().unwrap_or("non-zero bytes after the end marker"),
            "discarding torn tail of the event log"
        );
        write_zeros(&file, cursor.pos, bytes).map_err(io_err("zeroing torn tail of"))?;
        file.sync_data().map_err(io_err("syncing"))?;
        report.truncated_bytes = bytes;
        report.torn_tail = Some(TornTail {
            segment: last_path.clone(),
            position: cursor.pos,
            reason: torn.unwrap_or_else(|| "non-zero bytes after the end marker".into()),
        });
    }
    report.segments = sealed.len() + 1;
    report.first_offset = sealed.first().map_or(last_base, |s| s.base);
    report.next_offset = cursor.next_offset;
    let active = ActiveSegment {
        file,
        path: last_path,
        base: last_base,
        version: cursor.version,
        pos: cursor.pos,
        capacity: cursor.len,
        newest_ms,
    };
    Ok(Recovered {
        sealed,
        active: Some(active),
        report,
    })
}
