//! The durable image of the identity graph: an embedded fjall database under
//! `<data_dir>/state`.
//!
//! Contract:
//! - Keyspaces: `profiles` (profile id, u64 big-endian → postcard [`Profile`] without its
//!   events), `events` (profile id ++ log offset, both u64 big-endian → event timestamp, i64
//!   big-endian: the timeline, so a commit adds only new entries instead of rewriting a
//!   profile's history), `accounts` (group id → postcard [`Account`]), `meta` (`checkpoint`,
//!   `next_id`: u64 big-endian; `format`: [`FORMAT`]).
//! - [`Store::commit`] writes changed records, removals, the next profile id and the
//!   checkpoint (the next log offset to apply) in **one atomic batch**, fsynced before it
//!   returns: after a crash the store holds exactly the state of some checkpoint.
//! - [`Store::load`] returns that state and its checkpoint (0 for an empty store).
//! - fjall locks its directory: one process at a time.

use std::path::Path;

use anyhow::Context as _;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use junction_core::identity::{Account, Changes, EventRef, Graph, Profile, ProfileId, Rules};

/// Version of the record encoding; a different value needs `junction rebuild`.
pub const FORMAT: u64 = 2;
const CHECKPOINT: &[u8] = b"checkpoint";
const NEXT_ID: &[u8] = b"next_id";
const FORMAT_KEY: &[u8] = b"format";

pub struct Store {
    db: Database,
    profiles: Keyspace,
    events: Keyspace,
    accounts: Keyspace,
    meta: Keyspace,
}

/// What one commit wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Committed {
    pub records: usize,
    pub bytes: usize,
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
            events: open("events")?,
            accounts: open("accounts")?,
            meta: open("meta")?,
            db,
        };
        match store.meta.get(FORMAT_KEY)? {
            Some(v) if u64_value(&v)? != FORMAT => anyhow::bail!(
                "the state store {} has format {} but this build reads format {FORMAT}: run `junction rebuild`",
                dir.display(),
                u64_value(&v)?
            ),
            _ => {}
        }
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
        // Keys are ordered by (profile, offset): each timeline is read in log order.
        for item in self.events.iter() {
            let (k, v) = item.into_inner()?;
            let (id, offset) = timeline_key_parts(&k)?;
            let timestamp_ms = i64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .context("a timeline value is not 8 bytes")?,
            );
            if let Some(p) = profiles.get_mut(&id) {
                p.events.push(EventRef {
                    offset,
                    timestamp_ms,
                });
            }
        }
        let profiles = profiles.into_values();
        let mut accounts = Vec::new();
        for item in self.accounts.iter() {
            let v = item.value()?;
            accounts.push(postcard::from_bytes::<Account>(&v).context("decoding an account")?);
        }
        Ok((
            Graph::restore(rules, profiles, accounts, next_id),
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
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut out = Committed::default();
        for id in &changes.profiles {
            if let Some(p) = graph.profile(*id) {
                let v = postcard::to_allocvec(p)?;
                out.bytes += v.len();
                batch.insert(&self.profiles, id.to_be_bytes(), v);
            }
        }
        for id in &changes.removed_profiles {
            batch.remove(&self.profiles, id.to_be_bytes());
        }
        for (id, offset) in &changes.events_removed {
            batch.remove(&self.events, timeline_key(*id, *offset));
        }
        for (id, e) in &changes.events_added {
            batch.insert(
                &self.events,
                timeline_key(*id, e.offset),
                e.timestamp_ms.to_be_bytes(),
            );
        }
        out.bytes += changes.events_added.len() * 24;
        for group_id in &changes.accounts {
            if let Some(a) = graph.account(group_id) {
                let v = postcard::to_allocvec(a)?;
                out.bytes += v.len();
                batch.insert(&self.accounts, group_id.as_bytes(), v);
            }
        }
        out.records =
            changes.profiles.len() + changes.removed_profiles.len() + changes.accounts.len();
        batch.insert(&self.meta, CHECKPOINT, checkpoint.to_be_bytes());
        batch.insert(&self.meta, NEXT_ID, graph.next_id().to_be_bytes());
        batch.insert(&self.meta, FORMAT_KEY, FORMAT.to_be_bytes());
        batch.commit().context("committing the state store")?;
        Ok(out)
    }

    /// Writes the whole graph into an empty store in chunks; the checkpoint goes in the last
    /// batch, so an interrupted write leaves a store without checkpoint (replayed from 0).
    pub fn write_all(&self, graph: &Graph, checkpoint: u64) -> anyhow::Result<Committed> {
        const CHUNK: usize = 20_000;
        let (profiles, accounts) = graph.canonical();
        let mut out = Committed::default();
        for chunk in profiles.chunks(CHUNK) {
            let mut batch = self.db.batch();
            for p in chunk {
                let v = postcard::to_allocvec(*p)?;
                out.bytes += v.len() + 24 * p.events.len();
                batch.insert(&self.profiles, p.id.to_be_bytes(), v);
                for e in &p.events {
                    batch.insert(
                        &self.events,
                        timeline_key(p.id, e.offset),
                        e.timestamp_ms.to_be_bytes(),
                    );
                }
            }
            batch.commit().context("writing the state store")?;
        }
        for chunk in accounts.chunks(CHUNK) {
            let mut batch = self.db.batch();
            for a in chunk {
                let v = postcard::to_allocvec(*a)?;
                out.bytes += v.len();
                batch.insert(&self.accounts, a.group_id.as_bytes(), v);
            }
            batch.commit().context("writing the state store")?;
        }
        out.records = profiles.len() + accounts.len();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.meta, CHECKPOINT, checkpoint.to_be_bytes());
        batch.insert(&self.meta, NEXT_ID, graph.next_id().to_be_bytes());
        batch.insert(&self.meta, FORMAT_KEY, FORMAT.to_be_bytes());
        batch.commit().context("committing the state store")?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(out)
    }

    /// Bytes on disk (for metrics and the benchmark).
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

fn timeline_key(id: ProfileId, offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn timeline_key_parts(k: &[u8]) -> anyhow::Result<(ProfileId, u64)> {
    anyhow::ensure!(k.len() == 16, "a timeline key is not 16 bytes");
    let (id, offset) = k.split_at(8);
    Ok((
        u64::from_be_bytes(id.try_into()?),
        u64::from_be_bytes(offset.try_into()?),
    ))
}
