//! Read-only iteration over the log for consumers that persist their own cursor.
//!
//! Contract:
//! - Works on a directory whether or not a writer runs (no lock, never writes). Yields every
//!   non-erased record with offset >= `from_offset`, in offset order; offsets below the
//!   oldest retained segment are simply absent.
//! - At the tail it returns `Ok(None)` on the first zero, incomplete or not-yet-valid frame
//!   of the newest segment and picks up new data when called again (poll to follow).
//! - A frame that is not valid in a segment followed by a newer one is corruption:
//!   `LogError::Corrupt` names the segment and byte position; nothing is skipped silently.
//! - Without an end bound a reader may see a frame whose fdatasync has not returned yet. In-
//!   process consumers bound it with [`LogReader::set_end_offset`]`(log.next_offset())`.
//! - [`LogReader::open_identities`] reads the same records, but an event stored with an
//!   identity projection comes back with that projection and an empty `json`, and only the
//!   frame's identity block is decompressed; an event without one (format version 1 frames,
//!   events stored without a projection) comes back with its full `json`, as from
//!   [`LogReader::open`]. The frame's JSON block is decompressed only for such events, or
//!   to find out that an event is erased.
//! - [`LogReader::next_frame`] hands out the records of one frame at a time, borrowed from
//!   the reader's buffers (no allocation per record: the processor's replay);
//!   [`LogReader::next_record`] returns owned records one at a time.
//! - [`LogReader::next_frame_picked`] reads a frame in two passes for consumers that need the
//!   JSON of few events ([`Pick`]): first every record with its identity projection (only
//!   the frame's identity block decompressed), then, in order, the records whose JSON was
//!   asked for and those stored without a projection, with their JSON; the JSON block is
//!   decompressed only when some record needs it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LogError;
use super::format::{EntryRef, SEGMENT_HEADER_LEN, Scratch};
use super::segment::{SegmentCursor, Step, list_segments};

/// One event read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub received_at_ms: i64,
    pub source: Arc<str>,
    pub message_id: String,
    /// The event as stored; empty in a record of an identity-only reader that has an
    /// `identity`.
    pub json: Vec<u8>,
    /// The event's projection for identity resolution; empty when it was stored without one
    /// (always for events of format version 1 frames).
    pub identity: Vec<u8>,
}

/// A [`Record`] borrowed from the reader's buffers ([`LogReader::next_frame`]).
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub offset: u64,
    pub received_at_ms: i64,
    pub source: &'a Arc<str>,
    pub message_id: &'a str,
    /// As [`Record::json`].
    pub json: &'a [u8],
    /// As [`Record::identity`].
    pub identity: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// The record of a decoded entry, `None` for an erased one. With `identity_only`, an
    /// entry that has an identity comes without its JSON.
    pub(super) fn from_entry(
        offset: u64,
        received_at_ms: i64,
        source: &'a Arc<str>,
        entry: EntryRef<'a>,
        identity_only: bool,
    ) -> Option<Self> {
        // `json` is `None` only for an entry with an identity in an identity-only decode,
        // and such an entry is never erased.
        if entry.json.is_some_and(<[u8]>::is_empty) {
            return None;
        }
        let json = match identity_only && !entry.identity.is_empty() {
            true => &[][..],
            false => entry.json.unwrap_or_default(),
        };
        Some(Self {
            offset,
            received_at_ms,
            source,
            message_id: entry.message_id,
            json,
            identity: entry.identity,
        })
    }

    pub fn to_record(&self) -> Record {
        Record {
            offset: self.offset,
            received_at_ms: self.received_at_ms,
            source: Arc::clone(self.source),
            message_id: self.message_id.to_owned(),
            json: self.json.to_vec(),
            identity: self.identity.to_vec(),
        }
    }
}

/// A consumer of [`LogReader::next_frame_picked`].
pub trait Pick {
    /// A record stored with an identity projection, with an empty `json`: whether
    /// [`Pick::visit`] needs it with its JSON.
    fn pick(&mut self, record: RecordRef<'_>) -> bool;
    /// A record with its JSON: one [`Pick::pick`] asked for, or one stored without an
    /// identity projection (its `identity` is empty).
    fn visit(&mut self, record: RecordRef<'_>);
}

/// How [`LogReader::step`] hands out records.
enum Visit<'v> {
    Each(&'v mut dyn FnMut(RecordRef<'_>)),
    Picked(&'v mut dyn Pick),
}

pub struct LogReader {
    dir: PathBuf,
    /// Records below this offset are skipped; advances past every consumed frame.
    from: u64,
    end: Option<u64>,
    cursor: Option<SegmentCursor>,
    /// A newer segment exists, so the current one is complete.
    complete: bool,
    pending: VecDeque<Record>,
    /// Records carry the identity instead of the JSON where there is one.
    identity_only: bool,
    /// Decompression buffers, reused for every frame.
    scratch: Scratch,
    /// The source of the last frame read (frames of one source share it).
    source: Arc<str>,
    /// Per entry of the frame being read by [`LogReader::next_frame_picked`]: whether its
    /// JSON is needed.
    wanted: Vec<bool>,
}

enum Action {
    Read,
    Wait,
    NextSegment,
}

impl LogReader {
    /// Reads every non-erased event from `from_offset` on, with its JSON and its identity.
    pub fn open(dir: &Path, from_offset: u64) -> Result<Self, LogError> {
        Self::open_with(dir, from_offset, false)
    }

    /// Like [`open`](Self::open), for consumers that need only identity projections:
    /// records of events that have one carry it and an empty `json`; the others (format
    /// version 1 frames, events stored without a projection) carry their full `json` and an
    /// empty `identity`. Cheaper: the JSON block of a frame is decompressed only when one of
    /// its events needs it.
    pub fn open_identities(dir: &Path, from_offset: u64) -> Result<Self, LogError> {
        Self::open_with(dir, from_offset, true)
    }

    fn open_with(dir: &Path, from_offset: u64, identity_only: bool) -> Result<Self, LogError> {
        std::fs::read_dir(dir).map_err(LogError::io(format!(
            "opening log directory {}",
            dir.display()
        )))?;
        let mut reader = Self {
            dir: dir.to_path_buf(),
            from: from_offset,
            end: None,
            cursor: None,
            complete: false,
            pending: VecDeque::new(),
            identity_only,
            scratch: Scratch::default(),
            source: Arc::from(""),
            wanted: Vec::new(),
        };
        reader.cursor = reader.start_segment()?;
        Ok(reader)
    }

    /// The first offsets of the log's segments, ascending: frame boundaries at which the
    /// log can be split for readers working side by side (each from one boundary, with the
    /// next as its end offset).
    pub fn segment_starts(dir: &Path) -> Result<Vec<u64>, LogError> {
        Ok(list_segments(dir)?
            .into_iter()
            .map(|(base, _)| base)
            .collect())
    }

    /// The log's segment files, `(base offset, path)`, ascending: all but the last are
    /// sealed (never written again, though a rewrite may replace the file).
    pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
        list_segments(dir)
    }

    /// Stops before offset `end` (exclusive) until raised again; `None` reads to the tail.
    pub fn set_end_offset(&mut self, end: Option<u64>) {
        self.end = end;
    }

    /// The next record, or `None` when everything written so far has been read.
    pub fn next_record(&mut self) -> Result<Option<Record>, LogError> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                return Ok(Some(record));
            }
            let mut pending = std::mem::take(&mut self.pending);
            let more = self.next_frame(&mut |r| pending.push_back(r.to_record()));
            self.pending = pending;
            if !more? {
                return Ok(None);
            }
        }
    }

    /// Reads the next frame, calling `visit` for each of its records at or above the
    /// reader's position, in order (possibly none: erased or skipped entries); `false` when
    /// everything written so far has been read. Records returned by
    /// [`next_record`](Self::next_record) and not yet taken are not visited again.
    pub fn next_frame(&mut self, visit: &mut dyn FnMut(RecordRef<'_>)) -> Result<bool, LogError> {
        self.next_frame_with(&mut Visit::Each(visit))
    }

    /// Reads the next frame like [`next_frame`](Self::next_frame), in two passes (see the
    /// module docs): `pick.pick` sees each record that has an identity projection, with
    /// it and without the JSON; `pick.visit` then sees, in offset order, the records it
    /// asked for and those without a projection, with their JSON.
    pub fn next_frame_picked(&mut self, pick: &mut dyn Pick) -> Result<bool, LogError> {
        self.next_frame_with(&mut Visit::Picked(pick))
    }

    fn next_frame_with(&mut self, visit: &mut Visit<'_>) -> Result<bool, LogError> {
        loop {
            match self.step(visit)? {
                Action::Read => return Ok(true),
                Action::Wait => return Ok(false),
                Action::NextSegment => self.next_segment()?,
            }
        }
    }

    /// The segment holding `from`: the last one with base <= from, or the oldest one.
    fn start_segment(&self) -> Result<Option<SegmentCursor>, LogError> {
        let segments = list_segments(&self.dir)?;
        let start = segments
            .iter()
            .rev()
            .find(|(base, _)| *base <= self.from)
            .or(segments.first());
        start
            .map(|(base, path)| SegmentCursor::open(path, *base))
            .transpose()
    }

    /// Consumes one frame, visiting its records, or says what to do at the end of the
    /// segment.
    fn step(&mut self, visit: &mut Visit<'_>) -> Result<Action, LogError> {
        if self.cursor.is_none() {
            self.cursor = self.start_segment()?;
            self.complete = false;
        }
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(Action::Wait);
        };
        let (pos, path) = (cursor.pos, cursor.path.clone());
        match cursor
            .peek()
            .map_err(LogError::io(format!("reading {}", path.display())))?
        {
            Step::Frame { frame, end } => {
                let frame_end = frame.end_offset();
                if self.end.is_some_and(|limit| frame_end > limit) {
                    cursor.invalidate();
                    return Ok(Action::Wait);
                }
                if frame_end > self.from {
                    let corrupt = |reason| LogError::Corrupt {
                        segment: path.clone(),
                        position: pos,
                        reason,
                    };
                    if *self.source != *frame.source {
                        self.source = frame.source.into();
                    }
                    let (first, from, at) = (frame.first_offset, self.from, frame.received_at_ms);
                    match visit {
                        Visit::Each(visit) => {
                            let identity_only = self.identity_only;
                            let decoded = frame
                                .decode(&mut self.scratch, identity_only)
                                .map_err(corrupt)?;
                            for (offset, entry) in (first..).zip(decoded.entries()) {
                                if offset < from {
                                    continue;
                                }
                                if let Some(record) = RecordRef::from_entry(
                                    offset,
                                    at,
                                    &self.source,
                                    entry,
                                    identity_only,
                                ) {
                                    visit(record);
                                }
                            }
                        }
                        Visit::Picked(pick) => {
                            let (decoded, json) =
                                frame.decode_lazily(&mut self.scratch).map_err(corrupt)?;
                            self.wanted.clear();
                            for (offset, entry) in (first..).zip(decoded.entries()) {
                                let wanted = offset >= from
                                    && (entry.identity.is_empty()
                                        || pick.pick(RecordRef {
                                            offset,
                                            received_at_ms: at,
                                            source: &self.source,
                                            message_id: entry.message_id,
                                            json: &[],
                                            identity: entry.identity,
                                        }));
                                self.wanted.push(wanted);
                            }
                            if self.wanted.contains(&true) {
                                let decoded = match json {
                                    Some(json) => json.open().map_err(corrupt)?,
                                    None => decoded,
                                };
                                let entries = (first..).zip(decoded.entries()).zip(&self.wanted);
                                for ((offset, entry), _) in entries.filter(|(_, w)| **w) {
                                    if let Some(record) = RecordRef::from_entry(
                                        offset,
                                        at,
                                        &self.source,
                                        entry,
                                        false,
                                    ) {
                                        pick.visit(record);
                                    }
                                }
                            }
                        }
                    }
                }
                cursor.advance(end, frame_end);
                // Everything below has been returned: reopening starts from here.
                self.from = self.from.max(frame_end);
                Ok(Action::Read)
            }
            Step::End | Step::Bad(_) if !self.complete => {
                // The tail of the newest segment, unless a writer has rolled since: then this
                // segment is complete and is looked at once more.
                cursor.invalidate();
                let base = cursor.base;
                let empty = cursor.pos == SEGMENT_HEADER_LEN;
                if list_segments(&self.dir)?.iter().any(|(b, _)| *b > base) {
                    self.complete = true;
                    Ok(Action::Read)
                } else {
                    if empty {
                        // An empty segment may be replaced under its name by a larger one.
                        self.cursor = None;
                    }
                    Ok(Action::Wait)
                }
            }
            Step::End => Ok(Action::NextSegment),
            Step::Bad(reason) => Err(LogError::Corrupt {
                segment: path,
                position: pos,
                reason,
            }),
        }
    }

    fn next_segment(&mut self) -> Result<(), LogError> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(());
        };
        let next = list_segments(&self.dir)?
            .into_iter()
            .find(|(base, _)| *base > cursor.base);
        let Some((base, path)) = next else {
            // Deleted meanwhile (retention): look at the tail again.
            self.cursor = Some(cursor);
            self.complete = false;
            return Ok(());
        };
        if base != cursor.next_offset {
            return Err(LogError::Corrupt {
                segment: cursor.path,
                position: cursor.pos,
                reason: format!(
                    "data ends at offset {} but the next segment {} starts at offset {base}",
                    cursor.next_offset,
                    path.display()
                ),
            });
        }
        self.cursor = Some(SegmentCursor::open(&path, base)?);
        self.complete = false;
        Ok(())
    }
}
