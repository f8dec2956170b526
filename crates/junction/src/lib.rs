//! Junction's I/O half: configuration, the event log, the ingest pipeline, the HTTP server
//! and the command-line tools. Pure logic lives in `junction-core`.

pub mod cli;
pub mod clock;
pub mod compute;
pub mod config;
pub mod dedup;
pub mod fsutil;
pub mod http;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod server;
pub mod unify;
