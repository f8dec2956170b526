//! Junction's pure logic: the Segment event model and its normalization. No I/O.
//!
//! - [`compute`]: the expression language; computed traits and audiences per profile.
//! - [`event`]: tracking-API request parsing and per-event normalization.
//! - [`identity`]: identity resolution, profiles and accounts (Segment Unify).
//! - [`json`]: depth and number-range limits over raw JSON bytes.
//! - [`timestamp`]: ISO-8601 parsing and the stored `YYYY-MM-DDTHH:MM:SS.mmmZ` format.

pub mod compute;
pub mod event;
pub mod identity;
pub mod json;
pub mod timestamp;
