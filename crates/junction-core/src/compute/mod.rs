//! Compute: the expression language of computed traits and audiences (SPEC §5), and their
//! incremental evaluation per profile. Pure logic: the caller feeds events and a clock.
//!
//! - [`parser`] (with [`lexer`], [`ast`]): text → syntax tree, errors at a line and column.
//! - [`check`]: the type checker, syntax tree → [`program::Node`] and shared aggregates.
//! - [`program`]: evaluation of nodes against a profile or an event; aggregate filters.
//! - [`fold`]: order-independent running states of the aggregate functions.
//! - [`catalog`]: a checked set of definitions ([`Catalog`]) and a profile's incremental
//!   state ([`ProfileState`]): observe events, merge profiles, slide windows, evaluate.
//! - [`reference`]: a brute-force evaluator over a profile's raw events, for tests.
//! - [`slim`]: reading only what a catalog needs of a stored event ([`slim::Reads`]).
//!
//! The language is documented for users in `docs/expressions.md`.

pub mod ast;
pub mod catalog;
pub mod check;
pub mod error;
pub mod fold;
pub mod lexer;
pub mod parser;
pub mod paths;
pub mod program;
pub mod reference;
pub mod slim;
#[cfg(test)]
mod tests;
pub mod value;

pub use catalog::{
    Catalog, Changes, DefKind, Definition, DefinitionError, DefinitionProblem, DefinitionSpec,
    ProfileState, TraitSource,
};
pub use error::ExprError;
pub use parser::parse;
pub use program::Event;
pub use value::Value;
