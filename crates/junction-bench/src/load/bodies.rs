//! Pre-generated request bodies with unique messageIds stamped in at send time.
//!
//! Contract: the expensive part (generating event JSON) happens once, before timing, into a
//! pool of templates; [`BodyPool::next`] copies a template and overwrites the 36-character UUID
//! at the end of every messageId in place with one derived from `(run nonce, event sequence)`,
//! so every event of a run has a distinct messageId (no dedup hits) unless `dup_fraction > 0`,
//! in which case that fraction of events reuses the id of the event sent `DUP_DISTANCE` earlier.
//! Batch bodies are `{"batch":[...],"sentAt":"..."}`; track bodies are one event object.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::events::{GenConfig, Generator, format_uuid};
use crate::rng::mix;
use crate::timefmt::{Rfc3339Millis, now_millis};

/// How many events back a duplicate points.
pub const DUP_DISTANCE: u64 = 1_000;

struct Template {
    bytes: Vec<u8>,
    /// Offsets of the messageId UUIDs.
    ids: Vec<usize>,
}

pub struct BodyPool {
    templates: Vec<Template>,
    nonce: u64,
    dup_fraction: f64,
    requests: AtomicU64,
    events: AtomicU64,
}

impl BodyPool {
    /// `batch = None` builds single-event track bodies; `Some(n)` builds `/v1/batch` bodies of
    /// `n` mixed events. About `pool_events` events are generated in total.
    pub fn build(seed: u64, batch: Option<usize>, pool_events: usize, dup_fraction: f64) -> Self {
        let per_body = batch.unwrap_or(1).max(1);
        let bodies = pool_events.div_ceil(per_body).max(1);
        let now = now_millis();
        let mut generator = Generator::new(GenConfig {
            seed,
            users: 1_000_000,
            zipf_s: 1.1,
            events: (bodies * per_body) as u64,
            end_ms: now,
            span_ms: 60_000,
            only_track: batch.is_none(),
        });
        let templates = (0..bodies)
            .map(|_| {
                let mut bytes = Vec::with_capacity(per_body * 800 + 64);
                let mut ids = Vec::with_capacity(per_body);
                if batch.is_some() {
                    bytes.extend_from_slice(b"{\"batch\":[");
                }
                for i in 0..per_body {
                    if i > 0 {
                        bytes.push(b',');
                    }
                    ids.push(generator.write_event(&mut bytes).message_id_uuid);
                }
                if batch.is_some() {
                    bytes.extend_from_slice(
                        format!("],\"sentAt\":\"{}\"}}", Rfc3339Millis(now)).as_bytes(),
                    );
                }
                Template { bytes, ids }
            })
            .collect();
        let nonce = mix(seed
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64));
        Self {
            templates,
            nonce,
            dup_fraction,
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn avg_body_bytes(&self) -> usize {
        self.templates.iter().map(|t| t.bytes.len()).sum::<usize>() / self.templates.len().max(1)
    }

    /// The next body to send and the number of events in it.
    pub fn next(&self) -> (Bytes, u64) {
        let req = self.requests.fetch_add(1, Ordering::Relaxed);
        let t = &self.templates[(req % self.templates.len() as u64) as usize];
        let n = t.ids.len() as u64;
        let base = self.events.fetch_add(n, Ordering::Relaxed);
        let mut bytes = t.bytes.clone();
        for (j, &off) in t.ids.iter().enumerate() {
            let seq = self.id_seq(base + j as u64);
            let slot: &mut [u8; 36] = (&mut bytes[off..off + 36])
                .try_into()
                .expect("36-byte slot");
            format_uuid(slot, (self.nonce << 32) | (mix(seq) & 0xffff_ffff), seq);
        }
        (Bytes::from(bytes), n)
    }

    fn id_seq(&self, seq: u64) -> u64 {
        if self.dup_fraction > 0.0 && seq >= DUP_DISTANCE {
            let u = (mix(seq ^ self.nonce) >> 11) as f64 / (1u64 << 53) as f64;
            if u < self.dup_fraction {
                return seq - DUP_DISTANCE;
            }
        }
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ids(body: &[u8]) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        match v.get("batch") {
            Some(b) => b
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["messageId"].as_str().unwrap().to_string())
                .collect(),
            None => vec![v["messageId"].as_str().unwrap().to_string()],
        }
    }

    #[test]
    fn batch_bodies_have_unique_ids_across_pool_reuse() {
        let pool = BodyPool::build(1, Some(10), 50, 0.0);
        assert_eq!(pool.len(), 5);
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let (b, n) = pool.next();
            assert_eq!(n, 10);
            for id in ids(&b) {
                assert!(seen.insert(id));
            }
        }
        assert_eq!(seen.len(), 200);
    }

    #[test]
    fn track_bodies_are_single_track_events() {
        let pool = BodyPool::build(2, None, 20, 0.0);
        let (b, n) = pool.next();
        assert_eq!(n, 1);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "track");
    }

    #[test]
    fn dup_fraction_repeats_ids() {
        // Only events at least DUP_DISTANCE into the run can repeat one: over 20,000 events
        // the expected share is 0.1 × 19/20 = 0.095, with a standard deviation near 0.002
        // (the nonce, and so the draw, changes with the clock).
        let pool = BodyPool::build(3, Some(100), 1000, 0.1);
        let mut all = Vec::new();
        for _ in 0..200 {
            all.extend(ids(&pool.next().0));
        }
        let distinct: HashSet<_> = all.iter().collect();
        let dup = 1.0 - distinct.len() as f64 / all.len() as f64;
        let expected = 0.1 * (all.len() as f64 - DUP_DISTANCE as f64) / all.len() as f64;
        assert!(
            (dup - expected).abs() < 0.015,
            "duplicate share {dup}, expected {expected}"
        );
    }
}
