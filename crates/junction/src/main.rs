//! The `junction` binary: parse arguments, run, print the whole error chain on failure.

use clap::Parser;

/// mimalloc: the ingest path allocates per request and per event; measured faster than the
/// system allocator on the single-event route (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JUNCTION_LOG")
                .unwrap_or_else(|_| "junction=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match junction::cli::run(junction::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
