//! Identity resolution and profiles (Segment Unify), as pure logic.
//!
//! - [`rules`]: identifier types, limits, windows, priorities, blocked values, caps.
//! - [`extract`]: what one stored event contributes ([`observe`]).
//! - [`project`]: the projection of an event stored next to it at ingest ([`Projection`]).
//! - [`graph`]: the identity graph and profiles ([`Graph::apply`]).
//! - [`profile`]: the data of a profile and an account.

pub mod extract;
pub mod graph;
pub mod profile;
pub mod project;
pub mod rules;
#[cfg(test)]
mod tests;

pub use extract::{IdKey, Observed, observe};
pub use graph::{Applied, Changes, Counters, Graph, TimelineOp, replay_timeline};
pub use profile::{
    Account, EventMeta, EventRef, ExternalId, MergeRecord, Profile, ProfileId, TraitValue,
};
pub use project::{Projection, project};
pub use rules::{Rules, RulesSpec, TypeSpec};
