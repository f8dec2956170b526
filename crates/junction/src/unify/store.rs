//! The durable image of the identity graph: an embedded fjall database under
//! `<data_dir>/state`.
//!
//! Contract:
//! - Keyspaces: `profiles` (profile id, u64 big-endian → postcard [`Profile`] without its
//!   events), `last_events` (profile id → postcard [`LastEvent`]: the only part of a profile
//!   that most events change, written instead of the whole record when nothing else
//!   changed; on load the newer of the two wins), `timeline` (commit number, u64
//!   big-endian → postcard `Vec<TimelineOp>`: the events each profile gained and the merges
//!   that moved them, one entry per commit, so a commit never rewrites a profile's history;
//!   replayed in order on load), `accounts` (group id → postcard [`Account`]), `meta`
//!   (`checkpoint`, `next_id`, `timeline_seq`: u64 big-endian; `format`: [`FORMAT`]).
//! - [`Store::commit`] writes changed records, removals, the commit's timeline entry, the next
//!   profile id and the checkpoint (the next log offset to apply) in **one atomic batch**,
//!   fsynced before it returns: after a crash the store holds exactly the state of some
//!   checkpoint.
//! - [`Store::load`] returns that state and its checkpoint (0 for an empty store).
//! - fjall locks its directory: one process at a time.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use junction_core::identity::{
    Account, Changes, Graph, LastEvent, Profile, Rules, TimelineOp, replay_timeline,
};

/// Version of the record encoding; a different value needs `junction rebuild`.
pub const FORMAT: u64 = 4;
const CHECKPOINT: &[u8] = b"checkpoint";
const NEXT_ID: &[u8] = b"next_id";
const TIMELINE_SEQ: &[u8] = b"timeline_seq";
const FORMAT_KEY: &[u8] = b"format";

pub struct Store {
    db: Database,
    profiles: Keyspace,
    last_events: Keyspace,
    timeline: Keyspace,
    accounts: Keyspace,
    meta: Keyspace,
    /// Key of the next timeline entry.
    timeline_seq: AtomicU64,
}

/// One commit, encoded from the graph (under its lock) and written later ([`Store::write`]).
pub struct Prepared {
    profiles: Vec<(u64, Vec<u8>)>,
    last_events: Vec<(u64, Vec<u8>)>,
    removed: Vec<u64>,
    accounts: Vec<(Box<str>, Vec<u8>)>,
    timeline: Option<Vec<u8>>,
    pub checkpoint: u64,
    next_id: u64,
    committed: Committed,
}

impl Prepared {
    /// Encodes `changes` as they are in `graph`, whose state is that of `checkpoint`.
    pub fn new(graph: &Graph, changes: &Changes, checkpoint: u64) -> anyhow::Result<Prepared> {
        let mut bytes = 0;
        let mut encode = |v: Vec<u8>| {
            bytes += v.len();
            v
        };
        let mut profiles = Vec::with_capacity(changes.profiles.len());
        for id in &changes.profiles {
            if let Some(p) = graph.profile(*id) {
                profiles.push((*id, encode(postcard::to_allocvec(p)?)));
            }
        }
        let mut last_events = Vec::with_capacity(changes.touched.len());
        for id in &changes.touched {
            if let Some(p) = graph.profile(*id) {
                let last = p.metadata.last_event();
                last_events.push((*id, encode(postcard::to_allocvec(&last)?)));
            }
        }
        let mut accounts = Vec::with_capacity(changes.accounts.len());
        for group_id in &changes.accounts {
            if let Some(a) = graph.account(group_id) {
                accounts.push((group_id.clone(), encode(postcard::to_allocvec(a)?)));
            }
        }
        let timeline = if changes.timeline.is_empty() {
            None
        } else {
            Some(encode(postcard::to_allocvec(&changes.timeline)?))
        };
        let records = profiles.len()
            + last_events.len()
            + changes.removed_profiles.len()
            + accounts.len()
            + usize::from(timeline.is_some());
        Ok(Prepared {
            profiles,
            last_events,
            removed: changes.removed_profiles.clone(),
            accounts,
            timeline,
            checkpoint,
            next_id: graph.next_id(),
            committed: Committed { records, bytes },
        })
    }
}

/// What one commit wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Committed {
    pub records: usize,
    pub bytes: usize,
}

/// Bulk-writes `(key, record)` pairs, keys ascending, into an empty keyspace (sorted tables
/// written directly, no journal); returns the encoded bytes.
fn ingest_sorted<T: serde::Serialize + ?Sized>(
    keyspace: &Keyspace,
    name: &str,
    records: impl Iterator<Item = (Vec<u8>, impl std::ops::Deref<Target = T>)>,
) -> anyhow::Result<usize> {
    let mut bytes = 0;
    let mut ingest = keyspace.start_ingestion()?;
    for (key, record) in records {
        let v = postcard::to_allocvec(&*record)?;
        bytes += v.len();
        ingest.write(key, v)?;
    }
    ingest
        .finish()
        .with_context(|| format!("writing the state store's {name}"))?;
    Ok(bytes)
}

fn u64_value(v: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(
        v.try_into().context("a meta value is not 8 bytes")?,
    ))
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let db = Database::builder(dir)
            .open()
            .with_context(|| format!("opening the state store {}", dir.display()))?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .with_context(|| format!("opening keyspace {name}"))
        };
        let store = Store {
            profiles: open("profiles")?,
            last_events: open("last_events")?,
            timeline: open("timeline")?,
            accounts: open("accounts")?,
            meta: open("meta")?,
            db,
            timeline_seq: AtomicU64::new(0),
        };
        if let Some(format) = store.meta_u64(FORMAT_KEY)?
            && format != FORMAT
        {
            anyhow::bail!(
                "the state store {} has format {format} but this build reads format {FORMAT}: run `junction rebuild`",
                dir.display(),
            );
        }
        let seq = store.meta_u64(TIMELINE_SEQ)?.unwrap_or(0);
        store.timeline_seq.store(seq, Ordering::Relaxed);
        Ok(store)
    }

    /// The persisted graph and its checkpoint.
    pub fn load(&self, rules: Rules) -> anyhow::Result<(Graph, u64)> {
        let checkpoint = self.meta_u64(CHECKPOINT)?.unwrap_or(0);
        let next_id = self.meta_u64(NEXT_ID)?.unwrap_or(1);
        let mut profiles = rustc_hash::FxHashMap::default();
        for item in self.profiles.iter() {
            let v = item.value()?;
            let p = postcard::from_bytes::<Profile>(&v).context("decoding a profile")?;
            profiles.insert(p.id, p);
        }
        for item in self.last_events.iter() {
            let (key, v) = item.into_inner()?;
            let id = u64_value(&key)?;
            let last = postcard::from_bytes::<LastEvent>(&v).context("decoding a last event")?;
            if let Some(p) = profiles.get_mut(&id) {
                p.metadata.restore_last_event(last);
            }
        }
        let mut ops = Vec::new();
        for item in self.timeline.iter() {
            let v = item.value()?;
            ops.extend(
                postcard::from_bytes::<Vec<TimelineOp>>(&v).context("decoding a timeline entry")?,
            );
        }
        for (id, events) in replay_timeline(ops) {
            if let Some(p) = profiles.get_mut(&id) {
                p.events = events;
            }
        }
        let mut accounts = Vec::new();
        for item in self.accounts.iter() {
            let v = item.value()?;
            accounts.push(postcard::from_bytes::<Account>(&v).context("decoding an account")?);
        }
        Ok((
            Graph::restore(rules, profiles.into_values(), accounts, next_id),
            checkpoint,
        ))
    }

    fn meta_u64(&self, key: &[u8]) -> anyhow::Result<Option<u64>> {
        self.meta.get(key)?.map(|v| u64_value(&v)).transpose()
    }

    /// Writes `changes` (read from `graph`) and `checkpoint` atomically and durably.
    pub fn commit(
        &self,
        graph: &Graph,
        changes: &Changes,
        checkpoint: u64,
    ) -> anyhow::Result<Committed> {
        self.write(&Prepared::new(graph, changes, checkpoint)?)
    }

    /// Writes a prepared commit atomically and durably (its timeline entry gets the next
    /// number here, so prepared commits must be written in the order they were prepared).
    pub fn write(&self, p: &Prepared) -> anyhow::Result<Committed> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for (id, v) in &p.profiles {
            batch.insert(&self.profiles, id.to_be_bytes(), v.as_slice());
        }
        for (id, v) in &p.last_events {
            batch.insert(&self.last_events, id.to_be_bytes(), v.as_slice());
        }
        for id in &p.removed {
            batch.remove(&self.profiles, id.to_be_bytes());
            batch.remove(&self.last_events, id.to_be_bytes());
        }
        for (group_id, v) in &p.accounts {
            batch.insert(&self.accounts, group_id.as_bytes(), v.as_slice());
        }
        let seq = self.timeline_seq.load(Ordering::Relaxed);
        if let Some(v) = &p.timeline {
            batch.insert(&self.timeline, seq.to_be_bytes(), v.as_slice());
            batch.insert(&self.meta, TIMELINE_SEQ, (seq + 1).to_be_bytes());
        }
        batch.insert(&self.meta, CHECKPOINT, p.checkpoint.to_be_bytes());
        batch.insert(&self.meta, NEXT_ID, p.next_id.to_be_bytes());
        batch.insert(&self.meta, FORMAT_KEY, FORMAT.to_be_bytes());
        batch.commit().context("committing the state store")?;
        if p.timeline.is_some() {
            self.timeline_seq.store(seq + 1, Ordering::Relaxed);
        }
        Ok(p.committed)
    }

    /// Writes the whole graph into an empty store by bulk ingestion (sorted tables written
    /// directly, no journal); the checkpoint goes in last, so an interrupted write leaves a
    /// store without checkpoint (replayed from 0).
    pub fn write_all(&self, graph: &Graph, checkpoint: u64) -> anyhow::Result<Committed> {
        /// Profiles per timeline entry.
        const CHUNK: usize = 20_000;
        let (profiles, accounts) = graph.canonical();
        let mut out = Committed::default();
        out.bytes += ingest_sorted(
            &self.profiles,
            "profiles",
            profiles.iter().map(|p| (p.id.to_be_bytes().to_vec(), *p)),
        )?;
        let timeline: Vec<Vec<TimelineOp>> = profiles
            .chunks(CHUNK)
            .map(|chunk| {
                chunk
                    .iter()
                    .flat_map(|p| p.events.iter().map(|e| TimelineOp::Add(p.id, *e)))
                    .collect()
            })
            .collect();
        let seq = timeline.len() as u64;
        out.bytes += ingest_sorted(
            &self.timeline,
            "timeline",
            (0u64..)
                .zip(&timeline)
                .map(|(i, ops)| (i.to_be_bytes().to_vec(), ops)),
        )?;
        out.bytes += ingest_sorted(
            &self.accounts,
            "accounts",
            accounts
                .iter()
                .map(|a| (a.group_id.as_bytes().to_vec(), *a)),
        )?;
        out.records = profiles.len() + accounts.len();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.meta, CHECKPOINT, checkpoint.to_be_bytes());
        batch.insert(&self.meta, NEXT_ID, graph.next_id().to_be_bytes());
        batch.insert(&self.meta, TIMELINE_SEQ, seq.to_be_bytes());
        batch.insert(&self.meta, FORMAT_KEY, FORMAT.to_be_bytes());
        batch.commit().context("committing the state store")?;
        self.db.persist(PersistMode::SyncAll)?;
        self.timeline_seq.store(seq, Ordering::Relaxed);
        Ok(out)
    }

    /// Bytes on disk (for metrics and the benchmark).
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use junction_core::identity::{Batch, EventMeta};

    use super::*;

    /// Applies `events` (JSON) at offsets `from..` and returns the next offset.
    fn apply(graph: &mut Graph, from: u64, events: &[&str]) -> u64 {
        let source: Arc<str> = Arc::from("web");
        let mut batch = Batch::default();
        for (i, json) in events.iter().enumerate() {
            let offset = from + i as u64;
            let message_id = format!("m{offset}");
            let meta = EventMeta {
                offset,
                received_at_ms: 1_000 + offset as i64,
                source: &source,
                message_id: &message_id,
            };
            batch.push(&meta, json.as_bytes(), graph.rules()).unwrap();
        }
        graph.apply_batch(&batch, 0..batch.len()).unwrap()
    }

    #[test]
    fn a_commit_of_touched_profiles_writes_their_last_event_and_loads_back_equal() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut graph = Graph::new(Rules::default());
        let ev = |anon: &str, second: u32| {
            format!(
                r#"{{"type":"track","event":"E","anonymousId":"{anon}","timestamp":"2024-05-01T00:00:{second:02}.000Z"}}"#
            )
        };
        let first: Vec<String> = (0..4).map(|i| ev(&format!("a{i}"), i)).collect();
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        let next = apply(&mut graph, 0, &first);
        let changes = graph.take_changes();
        assert_eq!((changes.profiles.len(), changes.touched.len()), (4, 0));
        store.commit(&graph, &changes, next).unwrap();

        // Only last events change: the commit writes no profile record.
        let more = [ev("a1", 10), ev("a2", 11), ev("a1", 12)];
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        let next = apply(&mut graph, next, &more);
        let changes = graph.take_changes();
        assert_eq!((changes.profiles.len(), changes.touched.len()), (0, 2));
        let written = store.commit(&graph, &changes, next).unwrap();
        assert_eq!(written.records, 3, "two last events and the timeline entry");
        drop(store);

        let (loaded, checkpoint) = Store::open(tmp.path())
            .unwrap()
            .load(Rules::default())
            .unwrap();
        assert_eq!(checkpoint, next);
        assert_eq!(loaded.canonical(), graph.canonical());
        let p = loaded.lookup("anonymous_id", "a1").unwrap();
        assert_eq!((&*p.metadata.last_message_id, p.events.len()), ("m6", 3));
    }
}
