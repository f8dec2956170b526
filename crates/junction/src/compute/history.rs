//! The history pass: every definition computed over the log below an offset, in one read of
//! the stored events (at start, for `rebuild`, for offline reads, and for a preview whose
//! aggregates are not kept).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use junction_core::compute::ProfileState;
use junction_core::identity::ProfileId;
use rustc_hash::FxHashMap as HashMap;

use super::derived::{self, Emitted};
use super::{Compute, Outbox, Status};
use crate::ingest::DERIVED_SOURCE;
use crate::log::LogReader;
use crate::unify::Unify;

impl Compute {
    /// Computes over the history: `owners` says who owns each event below `applied`; the
    /// events are read from the log in one pass. Returns the derived events the log is
    /// missing (none without `emit`). The status stays `computing` until the caller has
    /// written them (`ready` means written).
    pub(super) fn backfill(
        &self,
        unify: &Unify,
        log_dir: &Path,
        owners: (u64, &[(ProfileId, i64)]),
        emit: bool,
    ) -> anyhow::Result<Outbox> {
        self.compute_history(log_dir, owners, emit, &unify.graph())
    }

    /// [`Compute::backfill`] with the profiles' traits read from `graph`.
    pub fn compute_history(
        &self,
        log_dir: &Path,
        (applied, owners): (u64, &[(ProfileId, i64)]),
        emit: bool,
        graph: &junction_core::identity::Graph,
    ) -> anyhow::Result<Outbox> {
        let total = applied;
        let now = self.clock.now_ms();
        if self.catalog.is_empty() {
            self.applied.store(total, Ordering::Release);
            self.set_status(Status::Ready);
            return Ok(Outbox::default());
        }
        let fresh = || derived::nothing(self.catalog.definitions().len());
        let mut states: HashMap<ProfileId, (ProfileState, Emitted)> = HashMap::default();
        let mut reader = LogReader::open(log_dir, 0)?;
        reader.set_end_offset(Some(total));
        let mut done = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let more = reader.next_frame(&mut |r| {
                done = r.offset + 1;
                let Some(&(owner, ts)) = owners.get(r.offset as usize) else {
                    return;
                };
                if owner == 0 {
                    return;
                }
                let (state, emitted) = states
                    .entry(owner)
                    .or_insert_with(|| (ProfileState::default(), fresh()));
                if **r.source == *DERIVED_SOURCE {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(r.json) {
                        derived::record(&self.catalog, emitted, &v, r.offset);
                    }
                } else {
                    self.observe(state, r.offset, ts, r.json, now);
                }
            })?;
            if last_progress.elapsed() >= Duration::from_millis(100) {
                self.set_status(Status::Computing { done, total });
                last_progress = Instant::now();
            }
            if !more {
                break;
            }
        }
        let mut outbox = Outbox::default();
        let mut profiles = self.write();
        for (id, (state, emitted)) in states {
            let out = emit.then_some(&mut outbox);
            self.settle(
                &mut profiles,
                id,
                state,
                Some(emitted),
                graph.profile(id),
                now,
                out,
            );
        }
        drop(profiles);
        self.applied.store(total, Ordering::Release);
        Ok(outbox)
    }
}

/// Computes everything for a stopped data dir (offline reads): the history, no thread.
pub fn compute_offline(compute: &Compute, unify: &Unify, log_dir: &Path) -> anyhow::Result<()> {
    if compute.catalog.is_empty() {
        return Ok(());
    }
    let (applied, owners) = unify.owners();
    compute.backfill(unify, log_dir, (applied, &owners), false)?;
    compute.set_status(Status::Ready);
    Ok(())
}
