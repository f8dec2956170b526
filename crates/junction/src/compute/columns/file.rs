//! The column file of one sealed segment: `<columns dir>/<base offset as 20 digits>.cols`.
//!
//! Contract:
//! - [`write`] replaces the file atomically (temporary file, fsync, rename, fsync of the
//!   directory): a reader sees the old file, the new one or none, never part of one.
//! - [`read`] returns the columns only when the file is whole and was made from the segment
//!   file as it is now: magic, format version, base offset, the segment's identity (inode,
//!   length, modification time: a rewrite renames a new file over the segment) and a
//!   checksum of everything must match; anything else (missing, truncated, corrupt, stale,
//!   another version) is `None`, and the caller builds the columns again.
//!
//! Layout (integers little-endian):
//! ```text
//!  0 [u8; 8] magic "JNCTCOLS"
//!  8 u32     format version (1)
//! 12 u32     0
//! 16 u64     segment base offset
//! 24 u64     segment inode
//! 32 u64     segment length
//! 40 i64     segment modification time, ns since the epoch
//! 48 u64     records: n
//! 56 u64     xxh3-64 of the whole file with these 8 bytes zeroed
//! 64 u32 * n kinds, one per offset from the base (see `Part::kinds`)
//!    ...     the rest of the part (`Part`), postcard
//! ```

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Part;

const MAGIC: &[u8; 8] = b"JNCTCOLS";
const VERSION: u32 = 1;
const HEADER: usize = 64;
const CHECKSUM_AT: usize = 56;

/// What tells a segment file from a rewritten one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

impl Identity {
    pub fn of(segment: &Path) -> io::Result<Identity> {
        let m = std::fs::metadata(segment)?;
        Ok(Identity {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// The file holding the columns of the segment starting at `base`.
pub fn path_of(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.cols"))
}

/// The base offset a column file is named after (`None`: not a column file).
pub fn base_of(file: &Path) -> Option<u64> {
    let stem = file.file_stem()?.to_str()?;
    let named = file.extension().is_some_and(|e| e == "cols") && stem.len() == 20;
    named.then(|| stem.parse().ok()).flatten()
}

pub fn encode(base: u64, id: Identity, part: &Part) -> Vec<u8> {
    let meta = postcard::to_allocvec(part).expect("columns serialize");
    let mut out = Vec::with_capacity(HEADER + 4 * part.kinds.len() + meta.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [base, id.ino, id.len, id.mtime_ns as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(part.kinds.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    for k in &part.kinds {
        out.extend_from_slice(&k.to_le_bytes());
    }
    out.extend_from_slice(&meta);
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out[CHECKSUM_AT..HEADER].copy_from_slice(&sum.to_le_bytes());
    out
}

/// The part in `bytes` if they are a whole file made from this segment (see the module docs).
pub fn decode(mut bytes: Vec<u8>, base: u64, id: Identity) -> Result<Part, String> {
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a column file".into());
    }
    if bytes[8..12] != VERSION.to_le_bytes() {
        return Err("another format version".into());
    }
    let sum = u64_at(&bytes, CHECKSUM_AT);
    bytes[CHECKSUM_AT..HEADER].fill(0);
    if xxhash_rust::xxh3::xxh3_64(&bytes) != sum {
        return Err("checksum mismatch".into());
    }
    let made_from = (
        u64_at(&bytes, 16),
        Identity {
            ino: u64_at(&bytes, 24),
            len: u64_at(&bytes, 32),
            mtime_ns: u64_at(&bytes, 40) as i64,
        },
    );
    if made_from != (base, id) {
        return Err("made from another segment file".into());
    }
    let n = usize::try_from(u64_at(&bytes, 48)).map_err(|_| "too many records")?;
    let kinds_end = n
        .checked_mul(4)
        .and_then(|k| k.checked_add(HEADER))
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated")?;
    let mut part: Part =
        postcard::from_bytes(&bytes[kinds_end..]).map_err(|e| format!("bad columns: {e}"))?;
    part.kinds = (bytes[HEADER..kinds_end].chunks_exact(4))
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    part.check().map(|()| part)
}

/// The columns kept for the segment at `base` whose file is now `id` (see the module docs).
pub fn read(dir: &Path, base: u64, id: Identity) -> Option<Part> {
    let path = path_of(dir, base);
    let bytes = std::fs::read(&path).ok()?;
    match decode(bytes, base, id) {
        Ok(part) => Some(part),
        Err(why) => {
            tracing::info!(file = %path.display(), why, "compute rebuilds stale column file");
            None
        }
    }
}

/// Keeps `part` as the columns of the segment at `base` whose file is `id`.
pub fn write(dir: &Path, base: u64, id: Identity, part: &Part) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&path_of(dir, base), &encode(base, id, part))
}
