//! What readers ask of Compute: sizes, members, size history, totals, previews, readiness and
//! metrics.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use junction_core::compute::{Catalog, DefKind};
use junction_core::identity::ProfileId;

use super::{Compute, ProfileTraits, Status, compute_offline};
use crate::metrics;
use crate::unify::Unify;

/// Points of size history kept.
pub const HISTORY_POINTS: usize = 10_000;

/// The key a previewed expression is checked under.
const PREVIEW_KEY: &str = "_preview";

/// A computed trait over all profiles: how many have a value, how many a number other than
/// 0, and the sum of the numbers (a checksum to compare with another engine).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TraitTotals {
    pub profiles: u64,
    pub nonzero: u64,
    pub sum: f64,
}

/// What [`Compute::preview`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    /// Profiles for which the expression is true.
    pub size: u64,
    /// Profiles evaluated.
    pub profiles: u64,
    /// Some members (lowest profile ids first).
    pub sample: Vec<ProfileId>,
    /// Whether the aggregates came from the live state (else from a pass over the log).
    pub from_state: bool,
}

impl Compute {
    /// Sizes of every audience, and [`TraitTotals`] of every computed trait, by key.
    pub fn totals(
        &self,
        audiences: &mut std::collections::BTreeMap<String, u64>,
        traits: &mut std::collections::BTreeMap<String, TraitTotals>,
    ) {
        let profiles = self.read();
        for (i, d) in self.catalog.definitions().iter().enumerate() {
            match d.kind {
                DefKind::Audience => {
                    audiences.insert(d.key.clone(), profiles.members[i]);
                }
                DefKind::ComputedTrait => {
                    let mut t = TraitTotals::default();
                    for e in profiles.entries.values() {
                        let v = &e.results[i];
                        t.profiles += u64::from(!v.is_null());
                        if let Some(n) = v.as_num() {
                            t.nonzero += u64::from(n != 0.0);
                            t.sum += n;
                        }
                    }
                    traits.insert(d.key.clone(), t);
                }
            }
        }
    }

    /// Records the audience sizes as a point of history when they changed.
    pub(super) fn sample_sizes(&self) {
        let sizes = self.read().members.clone();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.back().is_none_or(|(_, last)| *last != sizes) {
            if history.len() == HISTORY_POINTS {
                history.pop_front();
            }
            history.push_back((self.clock.now_ms(), sizes));
        }
    }

    /// Definition `def`'s size over time: (clock ms, members) at each change.
    pub fn size_history(&self, def: usize) -> Vec<(i64, u64)> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().map(|(t, sizes)| (*t, sizes[def])).collect()
    }

    /// Members of audience `def` after profile `after`, in profile id order: at most `limit`,
    /// and whether there are more.
    pub fn members(&self, def: usize, after: ProfileId, limit: usize) -> (Vec<ProfileId>, bool) {
        let profiles = self.read();
        let mut ids: Vec<ProfileId> = profiles
            .entries
            .iter()
            .filter(|(id, e)| **id > after && e.results[def].is_true())
            .map(|(id, _)| *id)
            .collect();
        let more = ids.len() > limit;
        if more {
            // The page only: the `limit` smallest, not a sort of every member.
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        (ids, more)
    }

    /// Evaluates `expr` as an audience over every profile now, without saving it: from the
    /// live state when every aggregate it uses is already kept, else from a pass over the log.
    /// Blocking: run it on the blocking pool.
    pub fn preview(
        &self,
        unify: &Unify,
        log_dir: &Path,
        expr: &str,
        sample: usize,
    ) -> Result<anyhow::Result<Preview>, junction_core::compute::DefinitionError> {
        use junction_core::compute::DefinitionSpec;
        let mut specs: Vec<DefinitionSpec> = self
            .catalog
            .definitions()
            .iter()
            .map(|d| DefinitionSpec {
                kind: d.kind,
                key: d.key.clone(),
                expr: d.expr.clone(),
            })
            .collect();
        specs.push(DefinitionSpec {
            kind: DefKind::Audience,
            key: PREVIEW_KEY.into(),
            expr: expr.into(),
        });
        let catalog = Catalog::compile(&specs)?;
        let target = specs.len() - 1;
        let now = self.clock.now_ms();
        let mut found = Preview {
            size: 0,
            profiles: 0,
            sample: Vec::new(),
            from_state: catalog.aggregates().len() == self.catalog.aggregates().len(),
        };
        let mut count = |id: ProfileId, member: bool| {
            found.profiles += 1;
            if member {
                found.size += 1;
                found.sample.push(id);
            }
        };
        if found.from_state {
            // The current aggregates keep their indexes in `catalog` (compiled in the same
            // order, the preview's last), so the live states read as they are.
            let graph = unify.graph();
            let profiles = self.read();
            for (id, e) in &profiles.entries {
                let traits = ProfileTraits::new(graph.profile(*id));
                count(
                    *id,
                    catalog
                        .evaluate_one(&e.state, &traits, now, target)
                        .is_true(),
                );
            }
        } else {
            let definitions = crate::config::Definitions::from_catalog(Arc::new(catalog));
            let pass = Compute::new(&definitions, Arc::clone(&self.clock), self.time_lag);
            if let Err(e) = compute_offline(&pass, unify, log_dir) {
                return Ok(Err(e));
            }
            for (id, e) in &pass.read().entries {
                count(*id, e.results[target].is_true());
            }
        }
        found.sample.sort_unstable();
        found.sample.truncate(sample);
        Ok(Ok(found))
    }

    /// Why `/ready` should fail, if it should: still computing the history, or more than
    /// `max_lag` events behind the log.
    pub fn not_ready(&self, log_end: u64, max_lag: u64) -> Option<String> {
        if self.catalog.is_empty() {
            return None;
        }
        match self.status() {
            Status::Ready if log_end.saturating_sub(self.applied()) > max_lag => Some(format!(
                "computed traits and audiences are {} events behind the log (bound: {max_lag})",
                log_end.saturating_sub(self.applied())
            )),
            Status::Ready => None,
            s => Some(format!("computed traits and audiences: {}", s.describe())),
        }
    }

    /// Prometheus text.
    pub fn render_metrics(&self, out: &mut String, log_end: u64) {
        metrics::single(
            out,
            "junction_compute_applied_offset",
            "gauge",
            "Next log offset reflected in computed traits and audiences.",
            self.applied(),
        );
        metrics::single(
            out,
            "junction_compute_lag_events",
            "gauge",
            "Events stored but not reflected in computed traits and audiences yet.",
            log_end.saturating_sub(self.applied()),
        );
        metrics::single(
            out,
            "junction_compute_bad_events_total",
            "counter",
            "Stored events Compute could not parse.",
            self.bad_events.load(Ordering::Relaxed),
        );
        metrics::single(
            out,
            "junction_compute_derived_events_total",
            "counter",
            "Audience Entered/Exited and computed-trait identify events written into the log.",
            self.derived_events.load(Ordering::Relaxed),
        );
        metrics::single(
            out,
            "junction_compute_derived_errors_total",
            "counter",
            "Failed writes of derived events (retried).",
            self.derived_errors.load(Ordering::Relaxed),
        );
        metrics::single(
            out,
            "junction_compute_ready",
            "gauge",
            "1 once every definition has been computed over the history.",
            u64::from(self.status() == Status::Ready),
        );
        metrics::header(
            out,
            "junction_audience_members",
            "gauge",
            "Profiles in each audience.",
        );
        for (i, n) in self.audiences() {
            let key = &self.catalog.definitions()[i].key;
            out.push_str(&format!(
                "junction_audience_members{{audience=\"{key}\"}} {n}\n"
            ));
        }
    }
}
