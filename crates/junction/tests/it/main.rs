//! Junction's integration tests: one binary (link time), one module per area.

mod support;

mod backpressure;
mod bad_input;
mod browser;
mod cli;
mod compute;
mod compute_cli;
mod compute_definitions;
mod corpus;
mod crash;
mod hardening;
mod ingest;
mod openapi;
mod profiles;
mod sdk;
mod sdk_profiles;
mod unify;
