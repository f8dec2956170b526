//! Identity resolution and profiles (Segment Unify), as pure logic.
//!
//! - [`rules`]: identifier types, limits, windows, priorities, blocked values, caps.
//! - [`extract`]: what stored events contribute ([`Batch`], [`observe`]).
//! - [`project`]: the projection of an event stored next to it at ingest ([`Projection`]).
//! - [`graph`]: the identity graph and profiles ([`Graph::apply`]).
//! - [`profile`]: the data of a profile and an account.

pub mod extract;
pub mod graph;
pub mod inline;
pub mod profile;
pub mod project;
pub mod rules;
#[cfg(test)]
mod tests;

pub use extract::{
    Batch, IdKey, IdRef, MAX_TRAITS_PER_EVENT, ObserveError, Observed, ObservedRef, id_hash,
    observe,
};
pub use graph::{Applied, Changes, Counters, Graph, TimelineOp, replay_timeline};
pub use profile::{
    Account, EventMeta, EventRef, ExternalId, LastEvent, MergeRecord, Profile, ProfileId,
    TraitValue,
};
pub use project::{Projection, project, type_and_name};
pub use rules::{CustomId, Kind, Rules, RulesSpec, TypeSpec};
