//! [`Fold`]: the running state of one aggregate function over a set of events, independent of
//! the order the events are added or folds are merged in.
//!
//! Contract:
//! - `count` counts matching events. `sum`, `avg`, `min`, `max` read numbers only (other
//!   values are skipped); `sum` of nothing is 0, `avg`/`min`/`max` of nothing are `null`.
//! - `first`/`last` give the value of the earliest/latest matching event (by timestamp, then
//!   log offset) among events where the value is not null.
//! - `most_frequent` gives the value seen most often, ties going to the value seen most
//!   recently (by timestamp, then offset); `unique` the distinct values in ascending
//!   [`Value::total_cmp`] order, at most [`UNIQUE_LIST_CAP`]; `unique_count` their number, up to
//!   [`UNIQUE_STATE_CAP`] (a fold keeps the smallest values, so the result does not depend on
//!   the order). Null values are skipped by all three.
//! - `first_seen`/`last_seen` give the earliest/latest matching timestamp.
//! - Sums are `f64`: adding in another order can change the last bits of a sum of fractions
//!   (integers and binary fractions such as 0.25 stay exact up to 2^53).

use std::collections::{BTreeMap, BTreeSet};

use super::program::AggFunc;
use super::value::{Key, Value};

/// Values `unique` returns at most.
pub const UNIQUE_LIST_CAP: usize = 100;
/// Distinct values a `unique`/`unique_count` state keeps at most.
pub const UNIQUE_STATE_CAP: usize = 1_000;

/// Orders events with equal timestamps: (timestamp ms, log offset).
pub type Stamp = (i64, u64);

#[derive(Clone, Debug, PartialEq)]
pub enum Fold {
    Count(u64),
    /// `sum` and `avg`.
    Sum {
        sum: f64,
        n: u64,
    },
    Min(Option<f64>),
    Max(Option<f64>),
    First(Option<(Stamp, Value)>),
    Last(Option<(Stamp, Value)>),
    /// Per value: how often, and when last.
    Frequent(BTreeMap<Key, (u64, Stamp)>),
    Unique(BTreeSet<Key>),
    FirstSeen(Option<i64>),
    LastSeen(Option<i64>),
}

impl Fold {
    pub fn new(func: AggFunc) -> Fold {
        match func {
            AggFunc::Count => Fold::Count(0),
            AggFunc::Sum | AggFunc::Avg => Fold::Sum { sum: 0.0, n: 0 },
            AggFunc::Min => Fold::Min(None),
            AggFunc::Max => Fold::Max(None),
            AggFunc::First => Fold::First(None),
            AggFunc::Last => Fold::Last(None),
            AggFunc::MostFrequent => Fold::Frequent(BTreeMap::new()),
            AggFunc::Unique | AggFunc::UniqueCount => Fold::Unique(BTreeSet::new()),
            AggFunc::FirstSeen => Fold::FirstSeen(None),
            AggFunc::LastSeen => Fold::LastSeen(None),
        }
    }

    /// Adds one matching event with its value.
    pub fn add(&mut self, at: Stamp, value: &Value) {
        let num = value.as_num();
        match self {
            Fold::Count(c) => *c += 1,
            Fold::Sum { sum, n } => {
                if let Some(x) = num {
                    *sum += x;
                    *n += 1;
                }
            }
            Fold::Min(m) => *m = pick(*m, num, f64::min),
            Fold::Max(m) => *m = pick(*m, num, f64::max),
            Fold::First(best) if !value.is_null() => {
                if best.as_ref().is_none_or(|(s, _)| at < *s) {
                    *best = Some((at, value.clone()));
                }
            }
            Fold::Last(best) if !value.is_null() => {
                if best.as_ref().is_none_or(|(s, _)| at > *s) {
                    *best = Some((at, value.clone()));
                }
            }
            Fold::Frequent(counts) if !value.is_null() => {
                let e = counts.entry(Key(value.clone())).or_insert((0, at));
                e.0 += 1;
                e.1 = e.1.max(at);
            }
            Fold::Unique(set) if !value.is_null() => {
                set.insert(Key(value.clone()));
                cap(set);
            }
            Fold::FirstSeen(t) => *t = Some(t.map_or(at.0, |t| t.min(at.0))),
            Fold::LastSeen(t) => *t = Some(t.map_or(at.0, |t| t.max(at.0))),
            Fold::First(_) | Fold::Last(_) | Fold::Frequent(_) | Fold::Unique(_) => {}
        }
    }

    /// Adds everything `other` holds (a fold of the same function).
    pub fn merge(&mut self, other: Fold) {
        match (self, other) {
            (Fold::Count(a), Fold::Count(b)) => *a += b,
            (Fold::Sum { sum, n }, Fold::Sum { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Fold::Min(a), Fold::Min(b)) => *a = pick(*a, b, f64::min),
            (Fold::Max(a), Fold::Max(b)) => *a = pick(*a, b, f64::max),
            (Fold::First(a), Fold::First(Some((at, v)))) => {
                if a.as_ref().is_none_or(|(s, _)| at < *s) {
                    *a = Some((at, v));
                }
            }
            (Fold::Last(a), Fold::Last(Some((at, v)))) => {
                if a.as_ref().is_none_or(|(s, _)| at > *s) {
                    *a = Some((at, v));
                }
            }
            (Fold::Frequent(a), Fold::Frequent(b)) => {
                for (k, (n, at)) in b {
                    let e = a.entry(k).or_insert((0, at));
                    e.0 += n;
                    e.1 = e.1.max(at);
                }
            }
            (Fold::Unique(a), Fold::Unique(b)) => {
                a.extend(b);
                cap(a);
            }
            (Fold::FirstSeen(a), Fold::FirstSeen(b)) => *a = pick(*a, b, i64::min),
            (Fold::LastSeen(a), Fold::LastSeen(b)) => *a = pick(*a, b, i64::max),
            (Fold::First(_), Fold::First(None)) | (Fold::Last(_), Fold::Last(None)) => {}
            (a, b) => unreachable!("merging folds of different functions: {a:?} and {b:?}"),
        }
    }

    /// The aggregate's value.
    pub fn finish(&self, func: AggFunc) -> Value {
        match (func, self) {
            (_, Fold::Count(c)) => Value::Num(*c as f64),
            (AggFunc::Avg, Fold::Sum { n: 0, .. }) => Value::Null,
            (AggFunc::Avg, Fold::Sum { sum, n }) => Value::Num(sum / *n as f64),
            (_, Fold::Sum { sum, .. }) => Value::Num(*sum),
            (_, Fold::Min(m) | Fold::Max(m)) => m.map_or(Value::Null, Value::Num),
            (_, Fold::First(v) | Fold::Last(v)) => {
                v.as_ref().map_or(Value::Null, |(_, v)| v.clone())
            }
            (_, Fold::Frequent(counts)) => counts
                .iter()
                .max_by_key(|(_, (n, at))| (*n, *at))
                .map_or(Value::Null, |(k, _)| k.0.clone()),
            (AggFunc::UniqueCount, Fold::Unique(set)) => Value::Num(set.len() as f64),
            (_, Fold::Unique(set)) => Value::List(
                set.iter()
                    .take(UNIQUE_LIST_CAP)
                    .map(|k| k.0.clone())
                    .collect(),
            ),
            (_, Fold::FirstSeen(t) | Fold::LastSeen(t)) => t.map_or(Value::Null, Value::Time),
        }
    }
}

fn pick<T: Copy>(a: Option<T>, b: Option<T>, f: fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

fn cap(set: &mut BTreeSet<Key>) {
    while set.len() > UNIQUE_STATE_CAP {
        set.pop_last();
    }
}
