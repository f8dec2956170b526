//! The reference evaluator: each definition computed by brute force over all of a profile's
//! raw events, with no state kept between calls. Tests hold the incremental
//! [`Catalog`](super::Catalog) to it.
//!
//! Contract: for every aggregate, scans all `events` (any order), keeps those that match its
//! filters and are inside its window at `now_ms`, sorts them by (timestamp, offset) and folds
//! them; then evaluates the definitions exactly as [`Catalog::evaluate`] does.

use super::catalog::{Catalog, TraitSource};
use super::fold::Fold;
use super::program::Event;
use super::value::Value;

/// The value of every definition for a profile with these `events` and `traits` at `now_ms`.
pub fn evaluate(
    catalog: &Catalog,
    events: &[Event<'_>],
    traits: &dyn TraitSource,
    now_ms: i64,
) -> Vec<Value> {
    let values: Vec<Value> = catalog
        .aggregates()
        .iter()
        .map(|spec| {
            let mut matching: Vec<&Event<'_>> = events
                .iter()
                .filter(|e| spec.in_window(e.timestamp_ms, now_ms) && spec.matches(e, now_ms))
                .collect();
            matching.sort_by_key(|e| (e.timestamp_ms, e.offset));
            let mut fold = Fold::new(spec.func);
            for e in matching {
                fold.add((e.timestamp_ms, e.offset), &spec.value_of(e, now_ms));
            }
            fold.finish(spec.func)
        })
        .collect();
    catalog.evaluate_with(&|i| values[i].clone(), traits, now_ms)
}
