//! On-disk encoding of segment headers and frames; pure functions, no I/O.
//!
//! Contract: everything is little-endian. [`SegmentHeader::encode`]/[`SegmentHeader::decode`]
//! and [`PendingFrame::encode`]/[`parse_body`] are exact inverses; a frame's CRC (crc32c)
//! covers its whole body, so a body that passes [`check_frame`] was written by a writer of
//! this format and never has to be trusted byte by byte. The layout is documented in
//! `log/mod.rs` and pinned by the `tests/fixtures/log-v1` fixture: change it only together
//! with [`FORMAT_VERSION`].

use super::Codec;

/// Version written in every segment header; readers refuse other versions.
pub const FORMAT_VERSION: u16 = 1;
/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"JNCTNLOG";
/// Size of the segment header; the first frame starts at this byte.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// `[u32 frame_len][u32 crc32c]` before every body.
pub const FRAME_HEADER_LEN: usize = 8;
/// Body bytes before the source and payload: offset, count, time, codec, source_len, raw len.
pub const MIN_BODY_LEN: usize = 8 + 4 + 8 + 1 + 1 + 4;
/// Largest body accepted on write and on read (also bounds decompression).
pub const MAX_BODY_LEN: usize = 1 << 30;
/// Longest source name stored (its length is a u8); longer names are cut at a char boundary.
pub const MAX_SOURCE_LEN: usize = 255;

const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;

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
        // 10..12: flags, zero in version 1.
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

/// One event handed to [`PendingFrame::encode`]. An empty `json` is stored as an erased entry.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub message_id: &'a str,
    pub json: &'a [u8],
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

/// Payloads smaller than this are stored uncompressed even with [`Codec::Lz4`].
pub const LZ4_MIN_PAYLOAD: usize = 2048;

impl PendingFrame {
    pub fn encode<'a>(
        source: &str,
        received_at_ms: i64,
        entries: impl IntoIterator<Item = Entry<'a>>,
        codec: Codec,
    ) -> Self {
        let mut payload = Vec::new();
        let mut count: u64 = 0;
        for e in entries {
            put_varint(&mut payload, e.message_id.len() as u64);
            payload.extend_from_slice(e.message_id.as_bytes());
            put_varint(&mut payload, e.json.len() as u64);
            payload.extend_from_slice(e.json);
            count += 1;
        }
        let raw_len = payload.len();
        let (codec_byte, stored) = match codec {
            // A lone event gains almost nothing from LZ4 (measured ~3%) and costs time on
            // the single-event routes: only payloads of several events are compressed.
            Codec::Lz4 if payload.len() >= LZ4_MIN_PAYLOAD => {
                let compressed = lz4_flex::block::compress(&payload);
                if compressed.len() < payload.len() {
                    (CODEC_LZ4, compressed)
                } else {
                    (CODEC_NONE, payload)
                }
            }
            Codec::Lz4 | Codec::None => (CODEC_NONE, payload),
        };
        let source = truncate_at_char_boundary(source, MAX_SOURCE_LEN);
        let body_len = MIN_BODY_LEN + source.len() + stored.len();
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
        bytes.push(codec_byte);
        bytes.push(source.len() as u8);
        bytes.extend_from_slice(source.as_bytes());
        bytes.extend_from_slice(&(raw_len as u32).to_le_bytes());
        bytes.extend_from_slice(&stored);
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

/// A checked frame body, borrowing the segment bytes.
#[derive(Debug)]
pub struct Frame<'a> {
    pub first_offset: u64,
    pub count: u32,
    pub received_at_ms: i64,
    pub codec: Codec,
    pub source: &'a str,
    pub raw_len: u32,
    pub payload: &'a [u8],
}

/// One decoded payload entry; `json == None` for an erased entry.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedEntry {
    pub message_id: String,
    pub json: Option<Vec<u8>>,
}

impl Frame<'_> {
    /// Offset after the last entry of this frame.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + u64::from(self.count)
    }

    /// Decompresses and splits the payload into exactly `count` entries.
    pub fn entries(&self) -> Result<Vec<DecodedEntry>, String> {
        let raw;
        let payload = match self.codec {
            Codec::None => self.payload,
            Codec::Lz4 => {
                let mut out = vec![0u8; self.raw_len as usize];
                let n = lz4_flex::block::decompress_into(self.payload, &mut out)
                    .map_err(|e| format!("lz4 payload: {e}"))?;
                if n != out.len() {
                    return Err(format!("lz4 payload: {n} bytes, header says {}", out.len()));
                }
                raw = out;
                &raw[..]
            }
        };
        let mut rest = payload;
        let mut entries = Vec::with_capacity(self.count as usize);
        for _ in 0..self.count {
            let id = take_chunk(&mut rest).ok_or("entry message id cut off")?;
            let message_id = std::str::from_utf8(id)
                .map_err(|_| "entry message id is not UTF-8")?
                .to_owned();
            let json = take_chunk(&mut rest).ok_or("entry json cut off")?;
            let json = (!json.is_empty()).then(|| json.to_vec());
            entries.push(DecodedEntry { message_id, json });
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the last entry", rest.len()));
        }
        Ok(entries)
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

/// Parses a body and rejects impossible field values.
pub fn parse_body(b: &[u8]) -> Result<Frame<'_>, String> {
    if b.len() < MIN_BODY_LEN {
        return Err(format!("frame body of {} bytes is too short", b.len()));
    }
    let count = u32_at(b, 8);
    if count == 0 {
        return Err("frame with zero events".into());
    }
    let codec = match b[20] {
        CODEC_NONE => Codec::None,
        CODEC_LZ4 => Codec::Lz4,
        other => return Err(format!("unknown codec {other}")),
    };
    let source_len = b[21] as usize;
    let raw_at = 22 + source_len;
    if b.len() < raw_at + 4 {
        return Err("frame source cut off".into());
    }
    let source = std::str::from_utf8(&b[22..raw_at]).map_err(|_| "frame source is not UTF-8")?;
    let raw_len = u32_at(b, raw_at);
    let payload = &b[raw_at + 4..];
    if raw_len as usize > MAX_BODY_LEN
        || (codec == Codec::None && raw_len as usize != payload.len())
    {
        return Err(format!("impossible payload length {raw_len}"));
    }
    Ok(Frame {
        first_offset: u64_at(b, 0),
        count,
        received_at_ms: u64_at(b, 12) as i64,
        codec,
        source,
        raw_len,
        payload,
    })
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

    #[test]
    fn small_payloads_are_not_compressed() {
        let json = br#"{"type":"track","event":"Signed Up","properties":{"plan":"pro"}}"#.repeat(4);
        let entries = [Entry {
            message_id: "m-1",
            json: &json,
        }];
        let mut frame = PendingFrame::encode("web", 0, entries, Codec::Lz4);
        let (crc, b) = body(&mut frame, 0);
        assert_eq!(check_frame(crc, &b).unwrap().codec, Codec::None);
    }

    #[test]
    fn frame_round_trips_with_both_codecs_and_erased_entries() {
        let json =
            br#"{"type":"track","event":"Signed Up","properties":{"plan":"pro"}}"#.repeat(40);
        for codec in [Codec::None, Codec::Lz4] {
            let entries = [
                Entry {
                    message_id: "m-1",
                    json: &json,
                },
                Entry {
                    message_id: "m-2",
                    json: b"",
                },
                Entry {
                    message_id: "",
                    json: b"{}",
                },
            ];
            let mut frame = PendingFrame::encode("web", -5, entries, codec);
            assert_eq!(frame.count(), 3);
            let (crc, b) = body(&mut frame, 1 << 40);
            let f = check_frame(crc, &b).unwrap();
            assert_eq!(
                f.codec, codec,
                "lz4 is kept because it shrinks this payload"
            );
            assert_eq!(
                (f.first_offset, f.count, f.received_at_ms),
                (1 << 40, 3, -5)
            );
            assert_eq!(f.source, "web");
            let got = f.entries().unwrap();
            assert_eq!(got[0].json.as_deref(), Some(&json[..]));
            assert_eq!(
                got[1],
                DecodedEntry {
                    message_id: "m-2".into(),
                    json: None
                }
            );
            assert_eq!(got[2].json.as_deref(), Some(&b"{}"[..]));
        }
    }

    #[test]
    fn incompressible_payload_falls_back_to_no_codec() {
        let entries = [Entry {
            message_id: "x",
            json: b"{}",
        }];
        let mut frame = PendingFrame::encode("s", 0, entries, Codec::Lz4);
        let (crc, b) = body(&mut frame, 0);
        assert_eq!(check_frame(crc, &b).unwrap().codec, Codec::None);
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
