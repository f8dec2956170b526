//! Random access to the log by offset, for readers that hold lists of offsets (the Profile
//! API) rather than a cursor.
//!
//! Contract:
//! - [`EventFetcher::read`] returns the non-erased records at the asked offsets in the order
//!   asked (a duplicate is returned again); offsets that are erased, not yet written or below
//!   the oldest retained segment are skipped. Like [`LogReader`](super::LogReader) it needs
//!   no lock, never writes, works with or without a running writer, stops at the first zero
//!   or invalid frame of the newest segment, and may return a frame whose fdatasync has not
//!   returned yet (ask only for offsets below `Log::next_offset` if that matters). A frame
//!   that is not valid in an older segment is [`LogError::Corrupt`].
//! - Each segment gets a sparse index, `(first offset, byte position)` of its first frame and
//!   then of the first frame at least [`CHECKPOINT_BYTES`] past the previous entry: at most
//!   16 bytes per 16 KiB of segment, 64 KiB for a full 64 MiB segment whatever its frame
//!   count (up to twice that in spare capacity while the newest segment's index grows; a
//!   sealed segment's is trimmed). It is built lazily by walking frames (CRC checked, never decompressed) only as
//!   far as the highest offset asked, and extended from where it stopped when a later call
//!   asks for more (the newest segment grows). A read walks from the nearest entry to the
//!   frames it needs and decodes each of them once per call.
//! - A stale index is never trusted: a segment whose file identity (device, inode, size)
//!   changed (rewritten by person deletion, or an empty segment replaced by a larger one)
//!   is re-indexed; an entry whose position does not hold a valid frame starting at its
//!   offset, or an end that no longer follows its last frame (a writer rewound a failed
//!   write), makes the read rebuild that segment's index and retry once.
//! - [`EventFetcher`] is a cheap handle (`Clone`, `Send + Sync`). The directory-wide map is
//!   locked only to look up segments; a segment's index is locked while it is built or
//!   extended (I/O on that segment only), never while records are read and decoded.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::LogError;
use super::format::{SEGMENT_HEADER_LEN, Scratch};
use super::reader::{Record, RecordRef};
use super::segment::{SegmentCursor, Step, list_segments};
use super::writer::lock;

/// Least distance in bytes between two index entries (a frame is never split, so the
/// entries of a segment of frames larger than this are one per frame).
pub const CHECKPOINT_BYTES: u64 = 16 << 10;

/// Reads events by offset from a log directory; see the module docs.
#[derive(Clone)]
pub struct EventFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// By base offset; segments gone from the directory are forgotten on the next read.
    segments: Mutex<BTreeMap<u64, Arc<Mutex<SegmentIndex>>>>,
}

impl EventFetcher {
    pub fn new(dir: &Path) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                segments: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The records at `offsets` (any order, duplicates allowed), returned in the order asked,
    /// skipping offsets that are erased, not yet written, or removed by retention.
    pub fn read(&self, offsets: &[u64]) -> Result<Vec<Record>, LogError> {
        if offsets.is_empty() {
            return Ok(Vec::new());
        }
        let mut order: Vec<(u64, usize)> = offsets.iter().copied().zip(0..).collect();
        order.sort_unstable();
        let mut wanted: Vec<u64> = order.iter().map(|&(offset, _)| offset).collect();
        wanted.dedup();
        let mut found = self.read_sorted(&wanted)?.into_iter().peekable();
        let mut slots: Vec<Option<Record>> = vec![None; offsets.len()];
        for (i, &(offset, at)) in order.iter().enumerate() {
            while found.next_if(|r| r.offset < offset).is_some() {}
            let Some(record) = found.peek() else { break };
            if record.offset != offset {
                continue;
            }
            let last_ask = order.get(i + 1).is_none_or(|&(next, _)| next != offset);
            slots[at] = match last_ask {
                true => found.next(),
                false => Some(record.clone()),
            };
        }
        Ok(slots.into_iter().flatten().collect())
    }

    /// Bytes held by the indexes of all segments (their checkpoint vectors' capacity).
    #[cfg(test)]
    pub(crate) fn index_bytes(&self) -> usize {
        lock(&self.inner.segments)
            .values()
            .map(|index| lock(index).checkpoints.capacity() * size_of::<(u64, u64)>())
            .sum()
    }

    /// The non-erased records at `wanted` (sorted, distinct), in offset order.
    fn read_sorted(&self, wanted: &[u64]) -> Result<Vec<Record>, LogError> {
        let listed = list_segments(&self.inner.dir)?;
        let mut parts = Vec::new();
        for (i, (base, path)) in listed.iter().enumerate() {
            let next = listed.get(i + 1).map_or(u64::MAX, |(next, _)| *next);
            let range =
                wanted.partition_point(|&o| o < *base)..wanted.partition_point(|&o| o < next);
            if !range.is_empty() {
                parts.push((*base, path, i + 1 < listed.len(), range));
            }
        }
        let indexes: Vec<_> = {
            let mut map = lock(&self.inner.segments);
            map.retain(|base, _| listed.binary_search_by_key(base, |(b, _)| *b).is_ok());
            parts
                .iter()
                .map(|&(base, ..)| Arc::clone(map.entry(base).or_default()))
                .collect()
        };
        let mut found = Vec::new();
        for ((base, path, sealed, range), index) in parts.into_iter().zip(&indexes) {
            let segment = Segment {
                base,
                path,
                sealed,
                index,
            };
            segment.read(&wanted[range], &mut found)?;
        }
        Ok(found)
    }
}

/// What is known about the frames of one segment file.
#[derive(Debug, Default)]
struct SegmentIndex {
    /// The file the index describes; `None` until the first scan.
    file: Option<FileId>,
    /// `(first_offset, byte position)` of indexed frames, both increasing; the first entry
    /// is the segment's first frame.
    checkpoints: Vec<(u64, u64)>,
    /// Scanning stopped here: position and first offset of the next frame; `None` before
    /// the first scan.
    end: Option<(u64, u64)>,
    /// Position and first offset of the last frame scanned.
    last_frame: Option<(u64, u64)>,
    /// The end is final: it was reached while a newer segment existed.
    complete: bool,
    /// Bumped on every reset, so readers that found the same stale entry reset it once.
    generation: u64,
}

/// `(device, inode, size)`: a rewritten segment is a new file renamed over the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId(u64, u64, u64);

impl FileId {
    /// `None` when the file is gone (deleted by retention).
    fn of(path: &Path) -> Result<Option<Self>, LogError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Self(m.dev(), m.ino(), m.len()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io(format!(
                "reading metadata of {}",
                path.display()
            ))(e)),
        }
    }
}

/// Where a walk from an index entry stopped.
enum Stop {
    End,
    Bad(String),
}

/// One read's plan for a segment: where to start walking for each group of offsets.
struct Plan {
    generation: u64,
    groups: Vec<Group>,
}

/// Wanted offsets (indexes into the segment's slice of them) reached from one entry.
struct Group {
    offset: u64,
    pos: u64,
    wanted: Range<usize>,
}

enum Attempt {
    Done(Vec<Record>),
    /// The index pointed at something that is not the expected frame; holds the records
    /// read before that point.
    Stale {
        generation: u64,
        position: u64,
        reason: String,
        records: Vec<Record>,
    },
}

impl SegmentIndex {
    fn reset(&mut self, file: Option<FileId>) {
        *self = Self {
            file,
            generation: self.generation + 1,
            ..Self::default()
        };
    }

    /// Position and first offset of the next frame to scan.
    fn next_frame(&self, base: u64) -> (u64, u64) {
        self.end.unwrap_or((SEGMENT_HEADER_LEN, base))
    }

    /// Offset after the last indexed frame.
    fn end_offset(&self) -> u64 {
        self.end.map_or(0, |(_, offset)| offset)
    }

    /// Extends the index until it holds the frame of `target`, or to the end of the valid
    /// frames. A bad frame ends the data of the newest segment and is corruption in a
    /// sealed one.
    fn cover(
        &mut self,
        cursor: &mut SegmentCursor,
        path: &Path,
        target: u64,
        sealed: bool,
    ) -> Result<(), LogError> {
        let mut rebuilt = false;
        while (self.end.is_none() || target >= self.end_offset()) && !self.complete {
            let (pos, offset) = self.next_frame(cursor.base);
            cursor.advance(pos, offset);
            let (scanned, stop) = self.scan(cursor, path, target)?;
            let Some(stop) = stop else { return Ok(()) };
            if scanned == 0 && !rebuilt && !self.end_follows_last_frame(cursor, path)? {
                // A writer rewound a failed write and wrote other frames since.
                self.reset(self.file);
                rebuilt = true;
                continue;
            }
            if self.end.is_none() {
                self.end = Some((pos, offset)); // a segment without frames (yet)
            }
            match stop {
                Stop::End if sealed => {
                    self.complete = true;
                    self.checkpoints.shrink_to_fit();
                }
                Stop::Bad(reason) if sealed => {
                    return Err(LogError::Corrupt {
                        segment: path.to_path_buf(),
                        position: self.next_frame(cursor.base).0,
                        reason,
                    });
                }
                Stop::End | Stop::Bad(_) => {}
            }
            return Ok(());
        }
        Ok(())
    }

    /// Walks frames from the cursor, indexing them, until one ends past `target`; returns
    /// how many frames it indexed and why it stopped early.
    fn scan(
        &mut self,
        cursor: &mut SegmentCursor,
        path: &Path,
        target: u64,
    ) -> Result<(usize, Option<Stop>), LogError> {
        let mut scanned = 0;
        loop {
            let pos = cursor.pos;
            let (first, next, end) = match peek(cursor, path)? {
                Step::Frame { frame, end } => (frame.first_offset, frame.end_offset(), end),
                Step::End => return Ok((scanned, Some(Stop::End))),
                Step::Bad(reason) => return Ok((scanned, Some(Stop::Bad(reason)))),
            };
            if self
                .checkpoints
                .last()
                .is_none_or(|&(_, at)| pos >= at + CHECKPOINT_BYTES)
            {
                self.checkpoints.push((first, pos));
            }
            cursor.advance(end, next);
            self.end = Some((end, next));
            self.last_frame = Some((pos, first));
            scanned += 1;
            if next > target {
                return Ok((scanned, None));
            }
        }
    }

    /// Whether the last frame indexed is still there and still ends where scanning stopped.
    fn end_follows_last_frame(
        &self,
        cursor: &mut SegmentCursor,
        path: &Path,
    ) -> Result<bool, LogError> {
        let (Some((pos, offset)), Some((end_pos, _))) = (self.last_frame, self.end) else {
            return Ok(true);
        };
        cursor.advance(pos, offset);
        Ok(matches!(peek(cursor, path)?, Step::Frame { end, .. } if end == end_pos))
    }

    /// Groups `wanted` (sorted, all >= the segment's base) by the entry to walk from; offsets
    /// past the indexed end are left out (not written yet).
    fn plan(&self, wanted: &[u64]) -> Plan {
        let present = wanted.partition_point(|&o| o < self.end_offset());
        let mut groups: Vec<Group> = Vec::new();
        for (i, &o) in wanted[..present].iter().enumerate() {
            let Some(c) = self
                .checkpoints
                .partition_point(|&(first, _)| first <= o)
                .checked_sub(1)
            else {
                continue;
            };
            let (offset, pos) = self.checkpoints[c];
            match groups.last_mut() {
                Some(group) if group.offset == offset => group.wanted.end = i + 1,
                _ => groups.push(Group {
                    offset,
                    pos,
                    wanted: i..i + 1,
                }),
            }
        }
        Plan {
            generation: self.generation,
            groups,
        }
    }
}

/// One segment of one read.
struct Segment<'a> {
    base: u64,
    path: &'a Path,
    /// A newer segment existed when the read started, so this one is complete.
    sealed: bool,
    index: &'a Mutex<SegmentIndex>,
}

impl Segment<'_> {
    /// Appends the records at `wanted` (sorted, distinct, all in this segment) to `found`.
    fn read(&self, wanted: &[u64], found: &mut Vec<Record>) -> Result<(), LogError> {
        let mut last_stale = None;
        for _ in 0..2 {
            match self.try_read(wanted)? {
                Attempt::Done(records) => {
                    found.extend(records);
                    return Ok(());
                }
                Attempt::Stale {
                    generation,
                    position,
                    reason,
                    records,
                } => {
                    tracing::debug!(segment = %self.path.display(), position, reason, "rebuilding stale log index");
                    let mut index = lock(self.index);
                    if index.generation == generation {
                        index.reset(None);
                    }
                    last_stale = Some((position, reason, records));
                }
            }
        }
        let (position, reason, records) = last_stale.expect("two stale attempts");
        if self.sealed {
            return Err(LogError::Corrupt {
                segment: self.path.to_path_buf(),
                position,
                reason,
            });
        }
        // The newest segment changed under the read twice: return what was there.
        found.extend(records);
        Ok(())
    }

    fn try_read(&self, wanted: &[u64]) -> Result<Attempt, LogError> {
        let Some(file) = FileId::of(self.path)? else {
            return Ok(Attempt::Done(Vec::new()));
        };
        let mut cursor = match SegmentCursor::open(self.path, self.base) {
            Ok(cursor) => cursor,
            Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Attempt::Done(Vec::new()));
            }
            Err(e) => return Err(e),
        };
        let plan = {
            let mut index = lock(self.index);
            if index.file != Some(file) {
                index.reset(Some(file));
            }
            let target = *wanted.last().expect("offsets of this segment");
            index.cover(&mut cursor, self.path, target, self.sealed)?;
            index.plan(wanted)
        };
        self.walk(&mut cursor, &plan, wanted)
    }

    /// Reads the frames holding `wanted`, walking from each group's index entry.
    fn walk(
        &self,
        cursor: &mut SegmentCursor,
        plan: &Plan,
        wanted: &[u64],
    ) -> Result<Attempt, LogError> {
        let mut records = Vec::new();
        let mut scratch = Scratch::default();
        let mut walking = false;
        for group in &plan.groups {
            if !walking || cursor.next_offset < group.offset {
                // A jump: drop the read-ahead so scattered reads stay small.
                cursor.invalidate();
                cursor.advance(group.pos, group.offset);
                walking = true;
            }
            let mut k = group.wanted.start;
            while k < group.wanted.end {
                let pos = cursor.pos;
                let (frame_end, end) = match peek(cursor, self.path)? {
                    Step::Frame { frame, end } => {
                        let frame_end = frame.end_offset();
                        if wanted[k] < frame_end {
                            let decoded = frame.decode(&mut scratch, false).map_err(|reason| {
                                LogError::Corrupt {
                                    segment: self.path.to_path_buf(),
                                    position: pos,
                                    reason,
                                }
                            })?;
                            let source: Arc<str> = frame.source.into();
                            // `wanted[k]` is in this frame: the walk skipped the ones before.
                            for (offset, entry) in (frame.first_offset..).zip(decoded.entries()) {
                                if k == group.wanted.end || wanted[k] >= frame_end {
                                    break;
                                }
                                if offset != wanted[k] {
                                    continue;
                                }
                                let at = frame.received_at_ms;
                                records.extend(
                                    RecordRef::from_entry(offset, at, &source, entry, false)
                                        .map(|r| r.to_record()),
                                );
                                k += 1;
                            }
                        }
                        (frame_end, end)
                    }
                    Step::End => {
                        return Ok(self.stale(
                            plan,
                            pos,
                            "no frame where the index points".into(),
                            records,
                        ));
                    }
                    Step::Bad(reason) => return Ok(self.stale(plan, pos, reason, records)),
                };
                cursor.advance(end, frame_end);
            }
        }
        Ok(Attempt::Done(records))
    }

    fn stale(&self, plan: &Plan, position: u64, reason: String, records: Vec<Record>) -> Attempt {
        Attempt::Stale {
            generation: plan.generation,
            position,
            reason,
            records,
        }
    }
}

fn peek<'c>(cursor: &'c mut SegmentCursor, path: &Path) -> Result<Step<'c>, LogError> {
    cursor
        .peek()
        .map_err(LogError::io(format!("reading {}", path.display())))
}
