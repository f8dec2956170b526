//! On-disk encoding of segment headers and frames; pure functions, no I/O.
//!
//! Contract: everything is little-endian. [`SegmentHeader::encode`]/[`SegmentHeader::decode`]
//! and [`PendingFrame::encode`]/[`parse_body`] are exact inverses; a frame's CRC (crc32c)
//! covers its whole body, so a body that passes [`check_frame`] was written by a writer of
//! this format and never has to be trusted byte by byte. The layout is documented in
//! `log/mod.rs` and pinned by the `tests/fixtures/log-v1`, `log-v2` and `log-v3` fixtures:
//! change it only together with [`FORMAT_VERSION`].
//!
//! [`PendingFrame::encode`] writes two-block frames only (versions 2 and 3): the entries' message ids and
//! identity projections in one block, their JSON in another, each compressed on its own.
//! [`Frame::decode`] reads both layouts; asked for identities only, it leaves the JSON block
//! of a version 2 frame compressed unless an entry has no projection to return.

use super::Codec;

/// Version written in every new segment header. Versions 2 and 3 have the same frames;
/// in version 3 the identity projections are binary (`junction_core::identity::project`),
/// in version 2 they are JSON.
pub const FORMAT_VERSION: u16 = 3;
/// Oldest segment version readers accept; version 1 segments hold only version 1 frames.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"JNCTNLOG";
/// Size of the segment header; the first frame starts at this byte.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// `[u32 frame_len][u32 crc32c]` before every body.
pub const FRAME_HEADER_LEN: usize = 8;
/// Body bytes before the source name: offset, count, time, codec byte, source_len.
const BODY_PREFIX_LEN: usize = 8 + 4 + 8 + 1 + 1;
/// `[u8 codec][u32 raw_len][u32 stored_len]` before each block of a version 2 frame.
const BLOCK_HEADER_LEN: usize = 1 + 4 + 4;
/// Smallest possible body: the fixed fields of a version 1 frame (a version 2 frame's are
/// larger), i.e. offset, count, time, codec, source_len, raw len.
pub const MIN_BODY_LEN: usize = BODY_PREFIX_LEN + 4;
/// Largest body accepted on write and on read (also bounds decompression).
pub const MAX_BODY_LEN: usize = 1 << 30;
/// Longest source name stored (its length is a u8); longer names are cut at a char boundary.
pub const MAX_SOURCE_LEN: usize = 255;

const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;
/// The frame's codec byte in format version 2: the body holds two blocks, each with its
/// own codec byte. Version 1 frames have 0 or 1 there, so the high bit tells the layouts
/// apart frame by frame; other values with the high bit set are reserved (refused).
const SPLIT_BLOCKS: u8 = 0x80;
/// A reader's decompression buffer above this size is shrunk back for smaller blocks.
const KEEP_SCRATCH: usize = 4 << 20;

/// The fixed header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u16,
    pub base_offset: u64,
    pub created_at_ms: i64,
}

impl SegmentHeader {
    pub fn new(base_offset: u64, created_at_ms: i64) -> Self {
        Self {
            version: FORMAT_VERSION,
            base_offset,
            created_at_ms,
        }
    }

    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        h[0..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..10].copy_from_slice(&self.version.to_le_bytes());
        // 10..12: flags, zero in versions 1 and 2.
        h[12..20].copy_from_slice(&self.base_offset.to_le_bytes());
        h[20..28].copy_from_slice(&self.created_at_ms.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks magic and CRC. The version is returned as found: the caller
    /// decides what to do with a version it does not know.
    pub fn decode(h: &[u8]) -> Result<Self, String> {
        if h.len() < SEGMENT_HEADER_LEN as usize {
            return Err(format!("segment header cut off after {} bytes", h.len()));
        }
        if h[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        if crc32c::crc32c(&h[0..28]) != u32_at(h, 28) {
            return Err("segment header CRC mismatch".into());
        }
        Ok(Self {
            version: u16::from_le_bytes([h[8], h[9]]),
            base_offset: u64_at(h, 12),
            created_at_ms: u64_at(h, 20) as i64,
        })
    }
}

/// One event handed to [`PendingFrame::encode`]. An empty `json` is stored as an erased
/// entry, and an erased entry's `identity` is not stored (the projection holds personal
/// data too).
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub message_id: &'a str,
    pub json: &'a [u8],
    /// The event's projection for identity resolution; empty = none.
    pub identity: &'a [u8],
}

/// An encoded, not yet offset-assigned frame; built on the caller's thread (compression
/// happens here). The writer only patches the first offset and the CRC.
#[derive(Debug)]
pub struct PendingFrame {
    /// The whole frame as it goes to disk, first_offset and CRC still zero.
    bytes: Vec<u8>,
    count: u32,
    received_at_ms: i64,
    /// Set when the frame cannot be stored (too large); `append` fails with this message.
    invalid: Option<String>,
}

/// Blocks smaller than this are stored uncompressed even with [`Codec::Lz4`].
pub const LZ4_MIN_PAYLOAD: usize = 2048;

/// A block as it will be written: `[u8 codec][u32 raw_len][u32 stored_len][stored]`.
struct EncodedBlock {
    codec: u8,
    raw_len: usize,
    stored: Vec<u8>,
}

impl EncodedBlock {
    fn new(raw: Vec<u8>, codec: Codec) -> Self {
        let raw_len = raw.len();
        let (codec, stored) = match codec {
            // A lone event gains almost nothing from LZ4 (measured ~3%) and costs time on
            // the single-event routes: only blocks of several events are compressed.
            Codec::Lz4 if raw_len >= LZ4_MIN_PAYLOAD => {
                let compressed = lz4_flex::block::compress(&raw);
                if compressed.len() < raw_len {
                    (CODEC_LZ4, compressed)
                } else {
                    (CODEC_NONE, raw)
                }
            }
            Codec::Lz4 | Codec::None => (CODEC_NONE, raw),
        };
        Self {
            codec,
            raw_len,
            stored,
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.push(self.codec);
        out.extend_from_slice(&(self.raw_len as u32).to_le_bytes());
        out.extend_from_slice(&(self.stored.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.stored);
    }
}

impl PendingFrame {
    /// Encodes a version 2 frame: message ids and identities in block A, JSON in block B.
    pub fn encode<'a>(
        source: &str,
        received_at_ms: i64,
        entries: impl IntoIterator<Item = Entry<'a>>,
        codec: Codec,
    ) -> Self {
        let mut ids = Vec::new();
        let mut events = Vec::new();
        let mut count: u64 = 0;
        for e in entries {
            put_chunk(&mut ids, e.message_id.as_bytes());
            // Erasing an event erases its projection too.
            put_chunk(&mut ids, if e.json.is_empty() { &[] } else { e.identity });
            put_chunk(&mut events, e.json);
            count += 1;
        }
        let ids = EncodedBlock::new(ids, codec);
        let events = EncodedBlock::new(events, codec);
        let source = truncate_at_char_boundary(source, MAX_SOURCE_LEN);
        let body_len = BODY_PREFIX_LEN
            + source.len()
            + 2 * BLOCK_HEADER_LEN
            + ids.stored.len()
            + events.stored.len();
        let raw_len = ids.raw_len.max(events.raw_len);
        let invalid = if body_len > MAX_BODY_LEN || raw_len > MAX_BODY_LEN {
            Some(format!(
                "frame of {body_len} bytes exceeds the {MAX_BODY_LEN}-byte limit"
            ))
        } else if count > u64::from(u32::MAX) {
            Some(format!("frame of {count} events exceeds the u32 limit"))
        } else {
            None
        };
        let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + body_len);
        bytes.extend_from_slice(&(body_len as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]); // crc, set by `finalize`
        bytes.extend_from_slice(&[0; 8]); // first_offset, set by `finalize`
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&received_at_ms.to_le_bytes());
        bytes.push(SPLIT_BLOCKS);
        bytes.push(source.len() as u8);
        bytes.extend_from_slice(source.as_bytes());
        ids.put(&mut bytes);
        events.put(&mut bytes);
        Self {
            bytes,
            count: count as u32,
            received_at_ms,
            invalid,
        }
    }

    /// Bytes this frame occupies on disk (header included); what counts against the
    /// in-flight budget.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }

    pub(crate) fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    /// Assigns the first offset and seals the CRC; returns the bytes to write.
    ///
    /// The CRC is computed here, over the whole body: crc32c runs on the CPU's CRC
    /// instruction at many GB/s, while combining a precomputed tail CRC with the offset's
    /// (`crc32c_combine`) is done in software and measured ~20× slower per frame.
    pub(crate) fn finalize(&mut self, first_offset: u64) -> &[u8] {
        let off = first_offset.to_le_bytes();
        self.bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 8].copy_from_slice(&off);
        let crc = crc32c::crc32c(&self.bytes[FRAME_HEADER_LEN..]);
        self.bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        &self.bytes
    }
}

#[cfg(test)]
impl PendingFrame {
    /// A version 1 frame (one payload of message ids and JSON, no identities), as junction
    /// wrote before format version 2; for tests of old logs. Identities are ignored.
    pub(crate) fn encode_v1<'a>(
        source: &str,
        received_at_ms: i64,
        entries: impl IntoIterator<Item = Entry<'a>>,
        codec: Codec,
    ) -> Self {
        let mut payload = Vec::new();
        let mut count = 0u32;
        for e in entries {
            put_chunk(&mut payload, e.message_id.as_bytes());
            put_chunk(&mut payload, e.json);
            count += 1;
        }
        let block = EncodedBlock::new(payload, codec);
        let source = truncate_at_char_boundary(source, MAX_SOURCE_LEN);
        let mut bytes = vec![0; FRAME_HEADER_LEN + 8];
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&received_at_ms.to_le_bytes());
        bytes.push(block.codec);
        bytes.push(source.len() as u8);
        bytes.extend_from_slice(source.as_bytes());
        bytes.extend_from_slice(&(block.raw_len as u32).to_le_bytes());
        bytes.extend_from_slice(&block.stored);
        let body_len = (bytes.len() - FRAME_HEADER_LEN) as u32;
        bytes[0..4].copy_from_slice(&body_len.to_le_bytes());
        Self {
            bytes,
            count,
            received_at_ms,
            invalid: None,
        }
    }
}

/// A checked frame body, borrowing the segment bytes.
#[derive(Debug)]
pub struct Frame<'a> {
    pub first_offset: u64,
    pub count: u32,
    pub received_at_ms: i64,
    pub source: &'a str,
    pub payload: Payload<'a>,
}

/// How a frame stores its entries.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Format version 1: one block of `count` × (message id, json).
    Single(Block<'a>),
    /// Format version 2: block A of `count` × (message id, identity), block B of
    /// `count` × json.
    Split { ids: Block<'a>, events: Block<'a> },
}

/// A block of a frame as stored.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    pub codec: Codec,
    /// Length before compression.
    pub raw_len: u32,
    pub stored: &'a [u8],
}

impl<'a> Block<'a> {
    /// The raw bytes: `stored` itself, or decompressed into `buf`, which is reused: it
    /// only grows (zero-filled) past the largest block seen, and shrinks back when it
    /// exceeds [`KEEP_SCRATCH`] and this block is smaller.
    fn open<'b>(&self, buf: &'b mut Vec<u8>) -> Result<&'b [u8], String>
    where
        'a: 'b,
    {
        let n = self.raw_len as usize;
        match self.codec {
            Codec::None => Ok(self.stored),
            Codec::Lz4 => {
                if buf.len() > KEEP_SCRATCH && n <= KEEP_SCRATCH {
                    buf.truncate(KEEP_SCRATCH);
                    buf.shrink_to_fit();
                }
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                let got = lz4_flex::block::decompress_into(self.stored, &mut buf[..n])
                    .map_err(|e| format!("lz4 block: {e}"))?;
                if got != n {
                    return Err(format!("lz4 block: {got} bytes, header says {n}"));
                }
                Ok(&buf[..n])
            }
        }
    }
}

/// Decompression buffers reused across [`Frame::decode`] calls (one per reader).
#[derive(Debug, Default)]
pub struct Scratch {
    ids: Vec<u8>,
    events: Vec<u8>,
}

/// A frame's entries, decompressed and checked by [`Frame::decode`].
#[derive(Clone, Copy, Debug)]
pub struct Decoded<'b> {
    count: u32,
    /// Version 1: the whole payload (message id, json); version 2: block A (message id,
    /// identity).
    ids: &'b [u8],
    /// Version 2 block B (json), when it was decoded.
    events: Option<&'b [u8]>,
    single: bool,
}

/// One entry of a [`Decoded`] frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'b> {
    pub message_id: &'b str,
    /// Empty when the entry has no projection: always in version 1 frames and for erased
    /// entries.
    pub identity: &'b [u8],
    /// `Some(b"")` for an erased entry; `None` when block B was not decoded (an
    /// identity-only decode, for an entry that has an identity).
    pub json: Option<&'b [u8]>,
}

impl<'b> Decoded<'b> {
    /// The `count` entries in order.
    pub fn entries(self) -> impl Iterator<Item = EntryRef<'b>> {
        let (mut ids, mut events) = (self.ids, self.events);
        let single = self.single;
        // `decode` checked every chunk, so nothing below is ever cut off.
        (0..self.count).map(move |_| {
            let id = take_chunk(&mut ids).unwrap_or_default();
            let message_id = std::str::from_utf8(id).unwrap_or_default();
            if single {
                let json = take_chunk(&mut ids).unwrap_or_default();
                return EntryRef {
                    message_id,
                    identity: &[],
                    json: Some(json),
                };
            }
            let identity = take_chunk(&mut ids).unwrap_or_default();
            let json = events
                .as_mut()
                .map(|events| take_chunk(events).unwrap_or_default());
            EntryRef {
                message_id,
                identity,
                json,
            }
        })
    }
}

/// Block B of a version 2 frame whose block A was decoded ([`Frame::decode_lazily`]).
#[derive(Debug)]
pub struct LazyJson<'b> {
    ids: &'b [u8],
    count: u32,
    block: Block<'b>,
    buf: &'b mut Vec<u8>,
    /// Every entry has an identity (so none is erased).
    all_identified: bool,
}

impl<'b> LazyJson<'b> {
    /// Decompresses and checks block B: the frame's entries with their JSON.
    pub fn open(self) -> Result<Decoded<'b>, String> {
        let LazyJson {
            ids,
            count,
            block,
            buf,
            ..
        } = self;
        let events = block.open(buf)?;
        let (mut a, mut b) = (ids, events);
        for _ in 0..count {
            take_chunk(&mut a); // the message id, checked by `decode_lazily`
            let identity = take_chunk(&mut a).unwrap_or_default();
            let json = take_chunk(&mut b).ok_or("entry json cut off")?;
            if json.is_empty() && !identity.is_empty() {
                return Err("erased entry keeps an identity".into());
            }
        }
        check_consumed(b, "the last json")?;
        Ok(Decoded {
            count,
            ids,
            events: Some(events),
            single: false,
        })
    }
}

/// One decoded entry, owned; `json == None` for an erased entry.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedEntry {
    pub message_id: String,
    pub identity: Vec<u8>,
    pub json: Option<Vec<u8>>,
}

impl Frame<'_> {
    /// Offset after the last entry of this frame.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + u64::from(self.count)
    }

    /// Whether this is a version 2 frame (two blocks).
    pub fn is_split(&self) -> bool {
        matches!(self.payload, Payload::Split { .. })
    }

    /// Decompresses what is needed into `scratch` and checks that every decoded block holds
    /// exactly `count` entries (message ids UTF-8, no erased entry with an identity).
    ///
    /// With `identity_only`, block B of a version 2 frame is neither decompressed nor
    /// checked when every entry has an identity; it is when some entry has none (no
    /// projection, or erased), whose JSON the caller then needs. Version 1 frames always
    /// decode their JSON.
    pub fn decode<'b>(
        &'b self,
        scratch: &'b mut Scratch,
        identity_only: bool,
    ) -> Result<Decoded<'b>, String> {
        let (decoded, json) = self.decode_lazily(scratch)?;
        match json {
            Some(json) if !(identity_only && json.all_identified) => json.open(),
            _ => Ok(decoded),
        }
    }

    /// Decompresses and checks block A only (a version 1 frame: its whole payload), and
    /// returns the entries without their JSON (with it for a version 1 frame) and, for a
    /// version 2 frame, block B to open later ([`LazyJson::open`]) if the caller needs it.
    pub fn decode_lazily<'b>(
        &'b self,
        scratch: &'b mut Scratch,
    ) -> Result<(Decoded<'b>, Option<LazyJson<'b>>), String> {
        let count = self.count;
        let Scratch {
            ids: ids_buf,
            events: events_buf,
        } = scratch;
        let (ids, events) = match self.payload {
            Payload::Single(block) => {
                let raw = block.open(ids_buf)?;
                let mut rest = raw;
                for _ in 0..count {
                    take_message_id(&mut rest)?;
                    take_chunk(&mut rest).ok_or("entry json cut off")?;
                }
                check_consumed(rest, "the last entry")?;
                let decoded = Decoded {
                    count,
                    ids: raw,
                    events: None,
                    single: true,
                };
                return Ok((decoded, None));
            }
            Payload::Split { ids, events } => (ids, events),
        };
        let ids = ids.open(ids_buf)?;
        let mut rest = ids;
        let mut all_identified = true;
        for _ in 0..count {
            take_message_id(&mut rest)?;
            let identity = take_chunk(&mut rest).ok_or("entry identity cut off")?;
            all_identified &= !identity.is_empty();
        }
        check_consumed(rest, "the last identity")?;
        let decoded = Decoded {
            count,
            ids,
            events: None,
            single: false,
        };
        let json = LazyJson {
            ids,
            count,
            block: events,
            buf: events_buf,
            all_identified,
        };
        Ok((decoded, Some(json)))
    }

    /// Decodes every entry into owned values.
    #[cfg(test)]
    pub fn entries(&self) -> Result<Vec<DecodedEntry>, String> {
        let mut scratch = Scratch::default();
        let decoded = self.decode(&mut scratch, false)?;
        Ok(decoded
            .entries()
            .map(|e| DecodedEntry {
                message_id: e.message_id.to_owned(),
                identity: e.identity.to_vec(),
                json: e.json.filter(|j| !j.is_empty()).map(<[u8]>::to_vec),
            })
            .collect())
    }
}

fn take_message_id<'a>(b: &mut &'a [u8]) -> Result<&'a str, String> {
    let id = take_chunk(b).ok_or("entry message id cut off")?;
    std::str::from_utf8(id).map_err(|_| "entry message id is not UTF-8".into())
}

fn check_consumed(rest: &[u8], after: &str) -> Result<(), String> {
    match rest.len() {
        0 => Ok(()),
        n => Err(format!("{n} bytes after {after}")),
    }
}

/// Splits the 8-byte frame header into `(frame_len, crc)`.
pub fn frame_prefix(h: &[u8]) -> (u32, u32) {
    (u32_at(h, 0), u32_at(h, 4))
}

/// Verifies the CRC and parses the body of a frame.
pub fn check_frame(crc: u32, body: &[u8]) -> Result<Frame<'_>, String> {
    if crc32c::crc32c(body) != crc {
        return Err("frame CRC mismatch".into());
    }
    parse_body(body)
}

/// Parses a body (either layout) and rejects impossible field values.
pub fn parse_body(b: &[u8]) -> Result<Frame<'_>, String> {
    if b.len() < MIN_BODY_LEN {
        return Err(format!("frame body of {} bytes is too short", b.len()));
    }
    let count = u32_at(b, 8);
    if count == 0 {
        return Err("frame with zero events".into());
    }
    let codec_byte = b[20];
    let source_end = BODY_PREFIX_LEN + b[21] as usize;
    if b.len() < source_end {
        return Err("frame source cut off".into());
    }
    let source = std::str::from_utf8(&b[BODY_PREFIX_LEN..source_end])
        .map_err(|_| "frame source is not UTF-8")?;
    let mut rest = &b[source_end..];
    let payload = if codec_byte == SPLIT_BLOCKS {
        let ids = take_block(&mut rest, "identity block")?;
        let events = take_block(&mut rest, "json block")?;
        check_consumed(rest, "the json block")?;
        Payload::Split { ids, events }
    } else {
        if rest.len() < 4 {
            return Err("frame source cut off".into());
        }
        let block = Block {
            codec: codec(codec_byte)?,
            raw_len: u32_at(rest, 0),
            stored: &rest[4..],
        };
        Payload::Single(check_block(block, "payload")?)
    };
    Ok(Frame {
        first_offset: u64_at(b, 0),
        count,
        received_at_ms: u64_at(b, 12) as i64,
        source,
        payload,
    })
}

fn codec(byte: u8) -> Result<Codec, String> {
    match byte {
        CODEC_NONE => Ok(Codec::None),
        CODEC_LZ4 => Ok(Codec::Lz4),
        other => Err(format!("unknown codec {other:#04x}")),
    }
}

/// `[u8 codec][u32 raw_len][u32 stored_len][stored]`.
fn take_block<'a>(b: &mut &'a [u8], what: &str) -> Result<Block<'a>, String> {
    if b.len() < BLOCK_HEADER_LEN {
        return Err(format!("{what} header cut off"));
    }
    let codec = codec(b[0])?;
    let raw_len = u32_at(b, 1);
    let stored_len = u32_at(b, 5) as usize;
    let rest = &b[BLOCK_HEADER_LEN..];
    if rest.len() < stored_len {
        return Err(format!("{what} cut off"));
    }
    let (stored, rest) = rest.split_at(stored_len);
    *b = rest;
    check_block(
        Block {
            codec,
            raw_len,
            stored,
        },
        what,
    )
}

fn check_block<'a>(block: Block<'a>, what: &str) -> Result<Block<'a>, String> {
    let raw_len = block.raw_len as usize;
    if raw_len > MAX_BODY_LEN || (block.codec == Codec::None && raw_len != block.stored.len()) {
        return Err(format!("impossible {what} length {raw_len}"));
    }
    Ok(block)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// LEB128: 7 bits per byte, low bits first, high bit set on all but the last byte.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn take_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *b = &b[i + 1..];
            return Some(v);
        }
    }
    None
}

/// Writes a varint length followed by the bytes.
fn put_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    put_varint(out, chunk.len() as u64);
    out.extend_from_slice(chunk);
}

/// A varint length followed by that many bytes.
fn take_chunk<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(b)?).ok()?;
    if b.len() < len {
        return None;
    }
    let (chunk, rest) = b.split_at(len);
    *b = rest;
    Some(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &mut PendingFrame, first: u64) -> (u32, Vec<u8>) {
        let bytes = frame.finalize(first).to_vec();
        let (len, crc) = frame_prefix(&bytes);
        assert_eq!(len as usize, bytes.len() - FRAME_HEADER_LEN);
        (crc, bytes[FRAME_HEADER_LEN..].to_vec())
    }

    #[test]
    fn varint_round_trips() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut slice = &out[..];
            assert_eq!(take_varint(&mut slice), Some(v));
            assert!(slice.is_empty());
        }
        assert_eq!(take_varint(&mut &[0x80u8, 0x80][..]), None);
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = SegmentHeader::new(42, 1_700_000_000_000);
        let mut bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        bytes[13] ^= 1;
        assert!(SegmentHeader::decode(&bytes).unwrap_err().contains("CRC"));
        assert!(
            SegmentHeader::decode(&[0u8; 32])
                .unwrap_err()
                .contains("magic")
        );
    }

    fn codecs(f: &Frame) -> Vec<Codec> {
        match f.payload {
            Payload::Single(b) => vec![b.codec],
            Payload::Split { ids, events } => vec![ids.codec, events.codec],
        }
    }

    /// A version 2 body of `count` entries from raw (uncompressed) blocks.
    fn split_body(count: u32, ids: &[u8], events: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&0i64.to_le_bytes());
        b.push(SPLIT_BLOCKS);
        b.push(0);
        for block in [ids, events] {
            EncodedBlock::new(block.to_vec(), Codec::None).put(&mut b);
        }
        b
    }

    fn chunks(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            put_chunk(&mut out, part);
        }
        out
    }

    #[test]
    fn small_payloads_are_not_compressed() {
        let json = br#"{"type":"track","event":"Signed Up","properties":{"plan":"pro"}}"#.repeat(4);
        let entries = [Entry {
            message_id: "m-1",
            json: &json,
            identity: br#"{"userId":"u1"}"#,
        }];
        let mut frame = PendingFrame::encode("web", 0, entries, Codec::Lz4);
        let (crc, b) = body(&mut frame, 0);
        let f = check_frame(crc, &b).unwrap();
        assert!(f.is_split());
        assert_eq!(codecs(&f), [Codec::None, Codec::None]);
    }

    #[test]
    fn frame_round_trips_with_both_codecs_and_erased_entries() {
        let json =
            br#"{"type":"track","event":"Signed Up","properties":{"plan":"pro"}}"#.repeat(40);
        let identity = br#"{"userId":"u1","anonymousId":"a1"}"#;
        for codec in [Codec::None, Codec::Lz4] {
            let entries = [
                Entry {
                    message_id: "m-1",
                    json: &json,
                    identity,
                },
                Entry {
                    message_id: "m-2",
                    json: b"",
                    identity, // dropped: erasing an event erases its projection
                },
                Entry {
                    message_id: "",
                    json: b"{}",
                    identity: b"",
                },
            ];
            let mut frame = PendingFrame::encode("web", -5, entries, codec);
            assert_eq!(frame.count(), 3);
            let (crc, b) = body(&mut frame, 1 << 40);
            let f = check_frame(crc, &b).unwrap();
            assert_eq!(
                codecs(&f),
                [Codec::None, codec],
                "lz4 is kept for the json block because it shrinks it; the id block is small"
            );
            assert_eq!(
                (f.first_offset, f.count, f.received_at_ms),
                (1 << 40, 3, -5)
            );
            assert_eq!(f.source, "web");
            let got = f.entries().unwrap();
            assert_eq!(got[0].json.as_deref(), Some(&json[..]));
            assert_eq!(got[0].identity, identity);
            assert_eq!(
                got[1],
                DecodedEntry {
                    message_id: "m-2".into(),
                    identity: Vec::new(),
                    json: None
                }
            );
            assert_eq!(got[2].json.as_deref(), Some(&b"{}"[..]));
            assert_eq!(got[2].identity, b"");
        }
    }

    #[test]
    fn both_blocks_are_compressed_when_both_are_large() {
        let ids: Vec<String> = (0..60).map(|i| format!("message-{i:04}")).collect();
        let identities: Vec<String> = (0..60)
            .map(|i| format!(r#"{{"userId":"user-{i}","anonymousId":"anon-{i}"}}"#))
            .collect();
        let json = br#"{"type":"identify","traits":{"plan":"pro"}}"#.repeat(3);
        let entries = (0..60).map(|i| Entry {
            message_id: &ids[i],
            json: &json,
            identity: identities[i].as_bytes(),
        });
        let mut frame = PendingFrame::encode("web", 0, entries, Codec::Lz4);
        let (crc, b) = body(&mut frame, 0);
        let f = check_frame(crc, &b).unwrap();
        assert_eq!(codecs(&f), [Codec::Lz4, Codec::Lz4]);
        let got = f.entries().unwrap();
        assert_eq!(got.len(), 60);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.message_id, ids[i]);
            assert_eq!(e.identity, identities[i].as_bytes());
            assert_eq!(e.json.as_deref(), Some(&json[..]));
        }
    }

    #[test]
    fn identity_only_decode_leaves_the_json_block_compressed() {
        let identities: Vec<String> = (0..60)
            .map(|i| format!(r#"{{"userId":"user-{i:04}","anonymousId":"anonymous-{i:04}"}}"#))
            .collect();
        let json = br#"{"type":"track","event":"Viewed","properties":{"page":"home"}}"#.repeat(2);
        let make = |without_identity: Option<usize>, erased: Option<usize>| {
            let entries = (0..60).map(|i| Entry {
                message_id: "m",
                json: if erased == Some(i) { b"" } else { &json },
                identity: match without_identity == Some(i) {
                    true => b"",
                    false => identities[i].as_bytes(),
                },
            });
            let mut frame = PendingFrame::encode("s", 0, entries, Codec::Lz4);
            body(&mut frame, 0)
        };

        let (crc, b) = make(None, None);
        let f = check_frame(crc, &b).unwrap();
        assert_eq!(codecs(&f), [Codec::Lz4, Codec::Lz4]);
        let mut scratch = Scratch::default();
        let got: Vec<_> = f.decode(&mut scratch, true).unwrap().entries().collect();
        assert!(got.iter().all(|e| e.json.is_none()));
        let identities_got: Vec<_> = got.iter().map(|e| e.identity).collect();
        let identities_want: Vec<_> = identities.iter().map(|i| i.as_bytes()).collect();
        assert_eq!(identities_got, identities_want);
        assert!(scratch.events.is_empty(), "block B was not decompressed");

        // The same buffers serve the next frames; an entry without identity, or an erased
        // one, needs block B.
        for (without, erased) in [(Some(7), None), (None, Some(9))] {
            let (crc, b) = make(without, erased);
            let f = check_frame(crc, &b).unwrap();
            let capacity = scratch.ids.capacity();
            let got: Vec<_> = f.decode(&mut scratch, true).unwrap().entries().collect();
            assert!(got.iter().all(|e| e.json.is_some()));
            let i = without.or(erased).unwrap();
            assert_eq!(got[i].identity, b"");
            let want_json: &[u8] = if erased.is_some() { b"" } else { &json };
            assert_eq!(got[i].json, Some(want_json));
            assert_eq!(got[i + 1].identity, identities[i + 1].as_bytes());
            assert_eq!(scratch.ids.capacity(), capacity, "buffer reused");
        }
    }

    #[test]
    fn v1_frames_decode_with_json_and_no_identity() {
        let json = br#"{"type":"track","event":"Signed Up"}"#.repeat(80);
        for codec in [Codec::None, Codec::Lz4] {
            let entries = [
                Entry {
                    message_id: "m-1",
                    json: &json,
                    identity: b"ignored",
                },
                Entry {
                    message_id: "m-2",
                    json: b"",
                    identity: b"",
                },
            ];
            let mut frame = PendingFrame::encode_v1("web", 3, entries, codec);
            let (crc, b) = body(&mut frame, 11);
            let f = check_frame(crc, &b).unwrap();
            assert!(!f.is_split());
            assert_eq!(codecs(&f), [codec]);
            for identity_only in [false, true] {
                let mut scratch = Scratch::default();
                let got: Vec<_> = f
                    .decode(&mut scratch, identity_only)
                    .unwrap()
                    .entries()
                    .collect();
                let want = [
                    EntryRef {
                        message_id: "m-1",
                        identity: b"",
                        json: Some(&json[..]),
                    },
                    EntryRef {
                        message_id: "m-2",
                        identity: b"",
                        json: Some(b""),
                    },
                ];
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn malformed_split_frames_are_refused() {
        let ok_ids = chunks(&[b"m", b"{}"]);
        let ok_events = chunks(&[b"{}"]);
        let decode = |body: &[u8], identity_only: bool| {
            let f = parse_body(body)?;
            let mut scratch = Scratch::default();
            f.decode(&mut scratch, identity_only).map(|_| ())
        };
        assert_eq!(decode(&split_body(1, &ok_ids, &ok_events), false), Ok(()));
        let err = |body: Vec<u8>, identity_only| decode(&body, identity_only).unwrap_err();
        assert!(
            err(
                split_body(1, &chunks(&[b"m", b"{}"]), &chunks(&[b""])),
                false
            )
            .contains("erased entry keeps an identity")
        );
        assert!(err(split_body(2, &ok_ids, &ok_events), true).contains("cut off"));
        assert!(
            err(split_body(1, &chunks(&[b"m", b""]), &chunks(&[])), true).contains("json cut off")
        );
        assert!(
            err(
                split_body(1, &chunks(&[b"m", b"{}", b"x"]), &ok_events),
                true
            )
            .contains("after the last identity")
        );
        assert!(
            err(
                split_body(1, &chunks(&[b"m", b""]), &chunks(&[b"{}", b"{}"])),
                true
            )
            .contains("after the last json")
        );
        assert!(err(split_body(1, &chunks(&[b"\xff", b"{}"]), &ok_events), true).contains("UTF-8"));
        let mut trailing = split_body(1, &ok_ids, &ok_events);
        trailing.push(0);
        assert!(err(trailing, false).contains("after the json block"));
        let mut reserved = split_body(1, &ok_ids, &ok_events);
        reserved[20] = SPLIT_BLOCKS | 1;
        assert!(err(reserved, false).contains("unknown codec"));
        let mut block_cut = split_body(1, &ok_ids, &ok_events);
        block_cut.pop();
        assert!(err(block_cut, false).contains("cut off"));
    }

    #[test]
    fn incompressible_payload_falls_back_to_no_codec() {
        let entries = [Entry {
            message_id: "x",
            json: b"{}",
            identity: b"{}",
        }];
        let mut frame = PendingFrame::encode("s", 0, entries, Codec::Lz4);
        let (crc, b) = body(&mut frame, 0);
        assert_eq!(codecs(&check_frame(crc, &b).unwrap()), [Codec::None; 2]);
    }

    #[test]
    fn long_source_is_cut_at_a_char_boundary() {
        let source = "é".repeat(200); // 400 bytes
        let mut frame = PendingFrame::encode(
            &source,
            0,
            [Entry {
                message_id: "a",
                json: b"1",
                identity: b"2",
            }],
            Codec::None,
        );
        let (crc, b) = body(&mut frame, 0);
        assert_eq!(check_frame(crc, &b).unwrap().source, "é".repeat(127));
    }

    #[test]
    fn damaged_frames_are_rejected() {
        let mut frame = PendingFrame::encode(
            "s",
            0,
            [Entry {
                message_id: "a",
                json: b"1",
                identity: b"2",
            }],
            Codec::None,
        );
        let (crc, b) = body(&mut frame, 7);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(check_frame(crc, &bad).is_err(), "flip at {i}");
        }
        assert!(check_frame(crc ^ 1, &b).is_err());
        let mut zero_count = b.clone();
        zero_count[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_body(&zero_count).unwrap_err().contains("zero events"));
    }
}
