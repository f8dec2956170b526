//! `(source, messageId)` deduplication over a sliding window (default 24 h).
//!
//! Contract:
//! - The index is a view of the event log: every stored event's key was appended to the log,
//!   so after any crash the index is rebuilt by scanning the log from the offset of the last
//!   snapshot (written on graceful shutdown). It therefore survives restarts and kill -9.
//! - A key is *reserved* (pending) before its event is appended, *committed* once the append
//!   is durable, and *released* if the append failed. A request that meets a pending key of
//!   another request waits for that outcome: it never answers 200 for an event that was not
//!   stored.
//! - Keys are 128-bit XXH3 hashes of `source \0 messageId`; entries older than the window
//!   count as absent and are swept periodically.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::log::LogReader;

const SNAPSHOT_MAGIC: &[u8; 8] = b"JDEDUP01";
const SNAPSHOT_FILE: &str = "dedup.snapshot";

/// A stored entry's value: seconds since the epoch when its event was appended, or
/// [`PENDING`] while the append runs.
type Slot = u32;
const PENDING: Slot = u32::MAX;

/// Shards of the index: a growing map rehashes one shard at a time, under that shard's lock
/// only, so no request waits for a rehash of the whole window.
const SHARDS: usize = 64;

/// A 128-bit key stored as two words (8-byte alignment: 24-byte entries instead of 32).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The keys are XXH3 hashes already: use their bits instead of hashing them again.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Map = HashMap<Key, Slot, std::hash::BuildHasherDefault<PassThrough>>;

fn split(k: u128) -> Key {
    Key(k as u64, (k >> 64) as u64)
}

/// Outcome of reserving one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not seen: now reserved for the caller, who must `commit` or `release` it.
    Fresh,
    /// Stored within the window, or repeated earlier in the same call.
    Duplicate,
    /// Reserved by another request whose append has not finished.
    InFlight,
}

/// State of a key, as seen by a request waiting on another one's append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Absent,
    Pending,
    Stored,
}

pub struct Dedup {
    shards: Vec<Mutex<Map>>,
    window_secs: u32,
    /// Memory bound: past this many keys, [`Dedup::sweep`] evicts the oldest ones.
    max_keys: usize,
    /// Keys stored before this second count as absent: raised by eviction.
    floor_s: AtomicU32,
    dir: PathBuf,
}

pub fn key(source: &str, message_id: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(message_id.as_bytes());
    h.digest128()
}

impl Dedup {
    /// Loads the snapshot in `data_dir` (if any) and replays the log from its offset.
    /// Returns the index and the number of log records scanned.
    pub fn open(
        data_dir: &Path,
        log_dir: &Path,
        window: Duration,
        max_keys: usize,
        now_s: u32,
    ) -> anyhow::Result<(Self, u64)> {
        let window_secs = window.as_secs().min(u32::MAX as u64 - 1) as u32;
        let dedup = Dedup {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            window_secs,
            max_keys: max_keys.max(1),
            floor_s: AtomicU32::new(0),
            dir: data_dir.to_path_buf(),
        };
        let from = dedup.load_snapshot(now_s).unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "dedup snapshot unusable, rebuilding from the log");
            for shard in &dedup.shards {
                shard.lock().unwrap().clear();
            }
            0
        });
        let mut scanned = 0u64;
        let cutoff = dedup.cutoff(now_s);
        if log_dir.exists() {
            // Only ids and times are read: the identity-only reader skips most event bodies.
            let mut reader =
                LogReader::open_identities(log_dir, from).context("cannot read the event log")?;
            while let Some(rec) = reader.next_record().context("cannot read the event log")? {
                scanned += 1;
                let at = (rec.received_at_ms / 1000).clamp(0, PENDING as i64 - 1) as u32;
                if at >= cutoff {
                    dedup.insert(key(&rec.source, &rec.message_id), at);
                }
            }
        }
        dedup.sweep(now_s);
        Ok((dedup, scanned))
    }

    fn shard(&self, k: u128) -> &Mutex<Map> {
        &self.shards[(k >> 122) as usize % SHARDS]
    }

    fn insert(&self, k: u128, slot: Slot) {
        self.shard(k).lock().unwrap().insert(split(k), slot);
    }

    fn cutoff(&self, now_s: u32) -> u32 {
        now_s
            .saturating_sub(self.window_secs)
            .max(self.floor_s.load(Ordering::Relaxed))
    }

    /// Seconds of history the index currently covers: the configured window, or less while
    /// the key cap forces older keys out.
    pub fn effective_window_secs(&self, now_s: u32) -> u32 {
        now_s.saturating_sub(self.cutoff(now_s))
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Reads the snapshot into the index; returns the log offset it covers (0 when absent).
    fn load_snapshot(&self, now_s: u32) -> anyhow::Result<u64> {
        let path = self.snapshot_path();
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        if bytes.len() < 28 || &bytes[..8] != SNAPSHOT_MAGIC {
            bail!("{} is not a dedup snapshot", path.display());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
            bail!("{} fails its checksum", path.display());
        }
        let offset = u64::from_le_bytes(body[8..16].try_into().unwrap());
        let count = u64::from_le_bytes(body[16..24].try_into().unwrap()) as usize;
        let entries = &body[24..];
        if entries.len() != count * 20 {
            bail!("{} has a wrong length", path.display());
        }
        let cutoff = self.cutoff(now_s);
        for e in entries.chunks_exact(20) {
            let k = u128::from_le_bytes(e[..16].try_into().unwrap());
            let at = u32::from_le_bytes(e[16..].try_into().unwrap());
            if at >= cutoff && at != PENDING {
                self.insert(k, at);
            }
        }
        Ok(offset)
    }

    /// Writes the committed entries and the log offset they cover. Call only when no append
    /// is in flight (graceful shutdown), so that every record below `next_offset` is committed.
    pub fn write_snapshot(&self, next_offset: u64) -> anyhow::Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&next_offset.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        let mut count = 0u64;
        for shard in &self.shards {
            for (k, at) in shard.lock().unwrap().iter() {
                if *at != PENDING {
                    let k = u128::from(k.0) | (u128::from(k.1) << 64);
                    out.extend_from_slice(&k.to_le_bytes());
                    out.extend_from_slice(&at.to_le_bytes());
                    count += 1;
                }
            }
        }
        out[16..24].copy_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.write_all(&crc.to_le_bytes())?;
        crate::fsutil::write_atomic(&self.snapshot_path(), &out)
    }

    fn live(slot: Option<&Slot>, cutoff: u32) -> KeyState {
        match slot {
            None => KeyState::Absent,
            Some(&PENDING) => KeyState::Pending,
            Some(at) if *at >= cutoff => KeyState::Stored,
            Some(_) => KeyState::Absent,
        }
    }

    /// Reserves every fresh key (in order; a key repeated within `keys` is a Duplicate).
    pub fn reserve(&self, keys: &[u128], now_s: u32) -> Vec<Check> {
        let cutoff = self.cutoff(now_s);
        let mut out = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let mut map = self.shard(*k).lock().unwrap();
            let check = match Self::live(map.get(&split(*k)), cutoff) {
                KeyState::Absent => {
                    map.insert(split(*k), PENDING);
                    Check::Fresh
                }
                KeyState::Stored => Check::Duplicate,
                KeyState::Pending if keys[..i].contains(k) => Check::Duplicate,
                KeyState::Pending => Check::InFlight,
            };
            out.push(check);
        }
        out
    }

    /// Marks reserved keys as stored at `now_s`.
    pub fn commit(&self, keys: impl IntoIterator<Item = u128>, now_s: u32) {
        let at = now_s.min(PENDING - 1);
        for k in keys {
            self.insert(k, at);
        }
    }

    /// Forgets reserved keys whose append failed.
    pub fn release(&self, keys: impl IntoIterator<Item = u128>) {
        for k in keys {
            let mut map = self.shard(k).lock().unwrap();
            if map.get(&split(k)) == Some(&PENDING) {
                map.remove(&split(k));
            }
        }
    }

    pub fn state(&self, k: u128, now_s: u32) -> KeyState {
        Self::live(
            self.shard(k).lock().unwrap().get(&split(k)),
            self.cutoff(now_s),
        )
    }

    /// Drops entries older than the window; past `max_keys`, also the oldest ones, down to
    /// 90% of the cap (raising the floor below which keys count as absent). Returns how
    /// many remain.
    pub fn sweep(&self, now_s: u32) -> usize {
        let mut remaining = self.retain_from(self.cutoff(now_s));
        if remaining > self.max_keys {
            // Count keys per second of age, newest first, to find the new floor.
            let mut per_second: std::collections::BTreeMap<u32, usize> = Default::default();
            for shard in &self.shards {
                for at in shard.lock().unwrap().values() {
                    if *at != PENDING {
                        *per_second.entry(*at).or_default() += 1;
                    }
                }
            }
            let keep = self.max_keys / 10 * 9;
            let mut kept = 0;
            let mut floor = now_s;
            for (at, n) in per_second.iter().rev() {
                if kept + n > keep {
                    break;
                }
                kept += n;
                floor = *at;
            }
            self.floor_s.fetch_max(floor, Ordering::Relaxed);
            tracing::warn!(
                keys = remaining,
                max_keys = self.max_keys,
                window_secs = self.effective_window_secs(now_s),
                "dedup index over its key cap: oldest keys evicted, the dedup window is shorter"
            );
            remaining = self.retain_from(self.cutoff(now_s));
        }
        remaining
    }

    fn retain_from(&self, cutoff: u32) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut map = shard.lock().unwrap();
                map.retain(|_, at| *at == PENDING || *at >= cutoff);
                map.len()
            })
            .sum()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_in(dir: &Path, window: u64, max_keys: usize) -> Dedup {
        Dedup::open(
            dir,
            &dir.join("log"),
            Duration::from_secs(window),
            max_keys,
            1000,
        )
        .unwrap()
        .0
    }

    fn empty(window: u64) -> (tempfile::TempDir, Dedup) {
        let dir = tempfile::tempdir().unwrap();
        let d = open_in(dir.path(), window, 1_000_000);
        (dir, d)
    }

    #[test]
    fn reserve_commit_release() {
        let (_dir, d) = empty(100);
        let (a, b) = (key("s", "a"), key("s", "b"));
        assert_eq!(
            d.reserve(&[a, b, a], 1000),
            vec![Check::Fresh, Check::Fresh, Check::Duplicate]
        );
        assert_eq!(d.reserve(&[a], 1000), vec![Check::InFlight]);
        d.commit([a], 1000);
        d.release([b]);
        assert_eq!(d.state(a, 1000), KeyState::Stored);
        assert_eq!(d.state(b, 1000), KeyState::Absent);
        assert_eq!(
            d.reserve(&[a, b], 1001),
            vec![Check::Duplicate, Check::Fresh]
        );
    }

    #[test]
    fn entries_expire_after_the_window() {
        let (_dir, d) = empty(100);
        let a = key("s", "a");
        d.reserve(&[a], 1000);
        d.commit([a], 1000);
        assert_eq!(d.reserve(&[a], 1100), vec![Check::Duplicate]);
        assert_eq!(d.reserve(&[a], 1101), vec![Check::Fresh]);
        d.commit([a], 1101);
        assert_eq!(d.sweep(1300), 0);
    }

    #[test]
    fn the_key_cap_evicts_the_oldest_keys_and_shortens_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let d = open_in(dir.path(), 10_000, 10);
        let keys: Vec<u128> = (0..30).map(|i| key("s", &i.to_string())).collect();
        for (i, k) in keys.iter().enumerate() {
            d.reserve(&[*k], 1000 + i as u32);
            d.commit([*k], 1000 + i as u32);
        }
        let remaining = d.sweep(1030);
        assert!(remaining <= 10, "{remaining} keys kept over a cap of 10");
        assert_eq!(
            d.state(keys[29], 1030),
            KeyState::Stored,
            "the newest keys are kept"
        );
        assert_eq!(
            d.state(keys[0], 1030),
            KeyState::Absent,
            "the oldest keys are evicted"
        );
        assert!(d.effective_window_secs(1030) < 10_000);
        // An evicted key can be stored again (at-most-once is best effort past the cap).
        assert_eq!(d.reserve(&[keys[0]], 1030), vec![Check::Fresh]);
    }

    #[test]
    fn scoped_per_source() {
        assert_ne!(key("web", "m1"), key("ios", "m1"));
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }

    #[test]
    fn snapshot_round_trip_and_corruption_falls_back() {
        let (dir, d) = empty(100);
        let a = key("s", "a");
        d.reserve(&[a, key("s", "pending")], 1000);
        d.commit([a], 1000);
        d.write_snapshot(0).unwrap();
        let d2 = open_in(dir.path(), 100, 1_000_000);
        assert_eq!(d2.state(a, 1000), KeyState::Stored);
        assert_eq!(d2.state(key("s", "pending"), 1000), KeyState::Absent);
        // A corrupted snapshot is ignored (the log is the source of truth).
        let p = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
        let d3 = open_in(dir.path(), 100, 1_000_000);
        assert_eq!(d3.state(a, 1000), KeyState::Absent);
    }
}
