//! Junction's I/O half: server, event log, CLI.
pub mod metrics;
