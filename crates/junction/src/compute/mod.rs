//! Compute: keeps every profile's computed traits and audience memberships current, from the
//! Unify processor's timeline and the stored events.
//!
//! Contract:
//! - On start it subscribes to the Unify timeline ([`Unify::subscribe_timeline`]), then
//!   computes every definition over the full history below the subscription's offset (status
//!   `computing` with progress, then `ready`), then applies each later `Add` (the event's
//!   aggregates) and `Move` (a merge: the two profiles' states combine) in order, and
//!   re-evaluates only the profiles they touched.
//! - Time: every [`TICK`] (or the configured time lag, if shorter) the profiles whose
//!   earliest window event has aged out are pruned and re-evaluated; when a definition reads
//!   `now()` every profile is re-evaluated every `time_lag`. `now` comes from the injected
//!   [`Clock`].
//! - Every change of a membership or a computed trait is written back into the log as a
//!   derived event of the source `junction` (see `derived.rs`), after the profile's state
//!   changed and outside every lock. What the log already holds is read back during the
//!   history pass, so a restart (even after kill -9) writes only what is missing. A derived
//!   event is never aggregated (it would feed on itself). A failed write is retried at the
//!   next tick.
//! - The state is in memory and recomputed from the log at each start (after Unify caught up
//!   with the log as it was at start, so every derived event written before is read back).
//! - Readers ([`Compute::results`], [`Compute::audiences`]) take a read lock held only while
//!   copying.

//!
//! - One `Compute` computes one fixed set of definitions (an engine); `registry` keeps the
//!   definitions and replaces the engine when they change.
//!
//! Submodules: `history` (the pass over the log), `live` (the thread: timeline, timer,
//! derived writes, taking over), `queries` (what readers ask: members, previews, metrics),
//! `derived`, `registry` (definitions and engines).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use junction_core::compute::slim::Plan;
use junction_core::compute::{Catalog, Changes, DefKind, Event, ProfileState, TraitSource, Value};
use junction_core::event::EventType;
use junction_core::identity::{Profile, ProfileId, TraitValue};
use rustc_hash::FxHashMap as HashMap;

use crate::clock::Clock;

mod columns;
pub mod derived;
mod history;
mod live;
mod queries;
pub mod registry;

use derived::Emitted;
pub use history::compute_offline;
pub use live::{Worker, spawn};
pub use queries::{HISTORY_POINTS, Preview, TraitTotals};

/// How often window expiries are checked (at most).
pub const TICK: Duration = Duration::from_secs(1);

/// Where the computation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Computing over the history: `done` of `total` events read.
    Computing {
        done: u64,
        total: u64,
    },
    Ready,
}

impl Status {
    /// `computing 43%` or `ready`.
    pub fn describe(self) -> String {
        match self {
            Status::Computing { done, total } => {
                format!(
                    "computing {}%",
                    (done * 100).checked_div(total).unwrap_or(0)
                )
            }
            Status::Ready => "ready".into(),
        }
    }
}

/// The computed values of one profile.
struct Entry {
    state: ProfileState,
    /// Per definition, as of the last evaluation.
    results: Vec<Value>,
    /// When the results last changed (clock ms).
    changed_ms: i64,
    /// What the log holds for this profile (see `derived.rs`).
    emitted: Emitted,
    /// When the profile is due in `expiries` (its earliest item there that is not stale).
    due_ms: Option<i64>,
}

/// Derived events to write, in order: per profile, how to put `emitted` back if they cannot
/// be written, and the events.
#[derive(Default)]
pub struct Outbox {
    profiles: Vec<(ProfileId, derived::Undo, Vec<Vec<u8>>)>,
    /// Events in `profiles`: the position in the log (after the round's start) of the next.
    events: u64,
}

#[derive(Default)]
struct Profiles {
    entries: HashMap<ProfileId, Entry>,
    /// Per definition: profiles for which an audience is true (0 for computed traits).
    members: Vec<u64>,
    /// (when an event leaves a window, profile); an item is stale unless it is the profile's
    /// `due_ms`, and a profile is pushed again only when due earlier, so the heap holds about
    /// one item per profile with windows.
    expiries: BinaryHeap<Reverse<(i64, ProfileId)>>,
    /// Profiles whose derived events could not be written: diffed again at the next tick.
    retry: Vec<ProfileId>,
    /// Which results the last evaluation changed (and its working space).
    changes: Changes,
}

/// The shared handle (see the module docs).
pub struct Compute {
    catalog: Arc<Catalog>,
    /// What the catalog reads of events.
    reads: junction_core::compute::slim::Reads,
    /// Audience key → display name.
    names: HashMap<String, String>,
    clock: Arc<dyn Clock>,
    time_lag: Duration,
    profiles: RwLock<Profiles>,
    status: Mutex<Status>,
    /// Next log offset whose events are reflected in the results.
    applied: AtomicU64,
    bad_events: AtomicU64,
    derived_events: AtomicU64,
    derived_errors: AtomicU64,
    /// Set when this engine's thread is asked to stop; the history pass checks it between
    /// frames, so stopping an engine that is computing does not wait for the whole pass.
    stop: Arc<AtomicBool>,
    /// Whether this engine writes derived events (false while it computes in the background
    /// for a change, see `registry`; it then reads those the serving engine writes).
    writes: AtomicBool,
    /// Where the derived events this engine wrote are, until the timeline passed them: their
    /// `Add`s are skipped without reading them (they change no aggregate).
    own: Mutex<Vec<std::ops::Range<u64>>>,
    /// The log's end, where derived events written next will land (orders writes, see
    /// `derived::absorb`).
    log_end: AtomicU64,
    /// Audience sizes over time: (clock ms, member count per definition), a point each time
    /// they changed (checked every tick), the last [`HISTORY_POINTS`].
    history: Mutex<std::collections::VecDeque<(i64, Vec<u64>)>>,
}

/// A profile's traits as the language reads them, each parsed once (several definitions
/// often read the same trait).
struct ProfileTraits<'a> {
    profile: Option<&'a Profile>,
    /// The traits read so far (by address) and their JSON.
    parsed: std::cell::RefCell<Vec<(&'a TraitValue, Option<serde_json::Value>)>>,
}

impl<'a> ProfileTraits<'a> {
    fn new(profile: Option<&'a Profile>) -> ProfileTraits<'a> {
        ProfileTraits {
            profile,
            parsed: Default::default(),
        }
    }
}

impl TraitSource for ProfileTraits<'_> {
    fn trait_value(&self, path: &[Box<str>]) -> Value {
        let Some(v) = self.profile.and_then(|p| p.traits.get(&path[0])) else {
            return Value::Null;
        };
        let mut parsed = self.parsed.borrow_mut();
        let i = match parsed.iter().position(|(seen, _)| std::ptr::eq(*seen, v)) {
            Some(i) => i,
            None => {
                parsed.push((v, serde_json::from_str(&v.json).ok()));
                parsed.len() - 1
            }
        };
        match &parsed[i].1 {
            Some(json) => junction_core::compute::program::lookup(json, &path[1..]),
            None => Value::Null,
        }
    }
}

impl Compute {
    pub fn new(
        definitions: &crate::config::Definitions,
        clock: Arc<dyn Clock>,
        time_lag: Duration,
    ) -> Compute {
        let catalog = Arc::clone(&definitions.catalog);
        let names = definitions
            .audiences
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    a.name.clone().unwrap_or_else(|| a.key.clone()),
                )
            })
            .collect();
        let status = if catalog.is_empty() {
            Status::Ready
        } else {
            Status::Computing { done: 0, total: 0 }
        };
        let members = vec![0; catalog.definitions().len()];
        Compute {
            reads: junction_core::compute::slim::Reads::of(&catalog),
            catalog,
            names,
            clock,
            time_lag,
            profiles: RwLock::new(Profiles {
                members,
                ..Default::default()
            }),
            status: Mutex::new(status),
            applied: AtomicU64::new(0),
            bad_events: AtomicU64::new(0),
            derived_events: AtomicU64::new(0),
            derived_errors: AtomicU64::new(0),
            stop: Arc::default(),
            writes: AtomicBool::new(true),
            own: Mutex::default(),
            log_end: AtomicU64::new(0),
            history: Default::default(),
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_status(&self, s: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Next log offset whose events the results reflect.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Profiles> {
        self.profiles.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Profiles> {
        self.profiles.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every definition's value for `profile` (definition order) and when they last changed;
    /// `None` before the profile has any.
    pub fn results(&self, profile: ProfileId) -> Option<(Vec<Value>, i64)> {
        self.read()
            .entries
            .get(&profile)
            .map(|e| (e.results.clone(), e.changed_ms))
    }

    /// Per audience definition: its index and member count.
    pub fn audiences(&self) -> Vec<(usize, u64)> {
        let profiles = self.read();
        self.catalog
            .definitions()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.kind == DefKind::Audience)
            .map(|(i, _)| (i, profiles.members[i]))
            .collect()
    }

    /// [`Compute::observe`] for an event stored with the projection `identity`: from its
    /// type and name alone when they tell (see [`Plan`]).
    fn observe_planned(
        &self,
        plans: &mut Plans,
        state: &mut ProfileState,
        offset: u64,
        ts: i64,
        (identity, json): (&[u8], &[u8]),
        now: i64,
    ) {
        match plans.of(&self.reads, identity) {
            Some(Plan::Skip) => {}
            Some(Plan::Fixed(json)) => {
                let ev = Event {
                    offset,
                    timestamp_ms: ts,
                    json,
                };
                self.catalog.observe(state, &ev, now);
            }
            Some(Plan::Slim) | None => self.observe(state, offset, ts, json, now),
        }
    }

    /// Adds one stored event to `state`, reading only what the catalog needs (a bad one is
    /// counted and skipped).
    fn observe(&self, state: &mut ProfileState, offset: u64, ts: i64, json: &[u8], now: i64) {
        match self.reads.slim(json) {
            Ok(None) => {}
            Ok(Some(v)) => {
                let ev = Event {
                    offset,
                    timestamp_ms: ts,
                    json: &v,
                };
                self.catalog.observe(state, &ev, now);
            }
            Err(e) => {
                self.bad_events.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(offset, error = %e, "compute skips a stored event it cannot parse");
            }
        }
    }

    /// Stores `state` for `id` (and `emitted`, else keeps what it had), evaluates it,
    /// updates member counts and expiries, and (with an `outbox`) adds the derived events
    /// the change calls for. `state` holds no event that left its window before the
    /// profile's due time (events are observed inside their windows; callers prune merged
    /// and timed-out states).
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        profiles: &mut Profiles,
        id: ProfileId,
        state: ProfileState,
        emitted: Option<Emitted>,
        profile: Option<&Profile>,
        now: i64,
        outbox: Option<&mut Outbox>,
    ) {
        let catalog = &*self.catalog;
        let Profiles {
            entries,
            members,
            expiries,
            changes,
            ..
        } = profiles;
        let entry = entries.entry(id).or_insert_with(|| Entry {
            state: ProfileState::default(),
            results: Vec::new(),
            changed_ms: now,
            emitted: derived::nothing(catalog.definitions().len()),
            due_ms: None,
        });
        entry.state = state;
        if let Some(emitted) = emitted {
            entry.emitted = emitted;
        }
        // Events that left their windows go first (evaluation then reads running folds). An
        // event is observed only inside its window, so unless the profile was due (or merged:
        // the caller prunes), none has left.
        if entry.due_ms.is_some_and(|t| t <= now) {
            catalog.prune(&mut entry.state, now);
        }
        let old_due = entry.due_ms.filter(|&t| t > now);
        let fresh = entry.results.is_empty();
        let traits = ProfileTraits::new(profile);
        catalog.evaluate_changed(&mut entry.state, &traits, now, &mut entry.results, changes);
        // An item due earlier than needed re-evaluates the profile once, then reschedules.
        entry.due_ms = match (catalog.next_expiry(&entry.state), old_due) {
            (Some(t), Some(due)) if due <= t => Some(due),
            (Some(t), _) => {
                expiries.push(Reverse((t, id)));
                Some(t)
            }
            (None, due) => due,
        };
        if changes.any() {
            entry.changed_ms = now;
        }
        for i in changes.changed() {
            // An audience's value is a boolean: a change flips it (or sets it, when fresh).
            if catalog.definitions()[i].kind == DefKind::Audience {
                match entry.results[i].is_true() {
                    true => members[i] += 1,
                    false if !fresh => members[i] = members[i].saturating_sub(1),
                    false => {}
                }
            }
        }
        // Also without a change: what the log holds may lag the results (a failed write, a
        // takeover).
        if let (Some(outbox), Some(p)) = (outbox, profile)
            && self.writes.load(Ordering::Acquire)
        {
            let names = |key: &str| self.names.get(key).cloned().unwrap_or_else(|| key.into());
            let at = self.log_end.load(Ordering::Acquire) + outbox.events;
            let (events, undo) = derived::diff(
                catalog,
                &names,
                p,
                &entry.results,
                &mut entry.emitted,
                now,
                at,
            );
            if !events.is_empty() {
                outbox.events += events.len() as u64;
                outbox.profiles.push((id, undo, events));
            }
        }
    }

    /// Per audience: one fewer member for each audience `results` is a member of.
    fn count_out(&self, members: &mut [u64], results: &[Value]) {
        for (i, (v, d)) in results.iter().zip(self.catalog.definitions()).enumerate() {
            if d.kind == DefKind::Audience && v.is_true() {
                members[i] = members[i].saturating_sub(1);
            }
        }
    }

    /// Removes a profile (merged away) with its memberships; its state and what the log
    /// holds for it.
    fn remove(&self, profiles: &mut Profiles, id: ProfileId) -> Option<(ProfileState, Emitted)> {
        profiles.entries.remove(&id).map(|e| {
            self.count_out(&mut profiles.members, &e.results);
            (e.state, e.emitted)
        })
    }
}

/// [`Plan`]s by event type and name, made on first use.
#[derive(Default)]
pub(super) struct Plans {
    by_type: HashMap<EventType, TypePlans>,
}

/// The plans of one event type: of events without a name, and by name.
#[derive(Default)]
struct TypePlans {
    unnamed: Option<Plan>,
    named: HashMap<Box<str>, Plan>,
}

impl Plans {
    /// The plan of events with this identity projection; `None` when it does not say the
    /// type and name (an older projection).
    fn of(
        &mut self,
        reads: &junction_core::compute::slim::Reads,
        identity: &[u8],
    ) -> Option<&Plan> {
        let (kind, name) = junction_core::identity::type_and_name(identity)?;
        Some(self.get(reads, kind, name.as_deref()))
    }

    fn get(
        &mut self,
        reads: &junction_core::compute::slim::Reads,
        kind: EventType,
        name: Option<&str>,
    ) -> &Plan {
        let TypePlans { unnamed, named } = self.by_type.entry(kind).or_default();
        let make = || reads.plan(kind.as_str(), name);
        match name {
            None => unnamed.get_or_insert_with(make),
            Some(n) => {
                if !named.contains_key(n) {
                    named.insert(n.into(), make());
                }
                &named[n]
            }
        }
    }
}
