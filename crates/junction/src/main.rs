//! The `junction` binary: parse arguments, run, print the whole error chain on failure.

use clap::Parser;

/// mimalloc: the ingest path allocates per request and per event; measured faster than the
/// system allocator on the single-event route (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = junction::cli::Cli::parse();
    // The server logs its lifecycle; one-shot tools (import, tail) only warnings.
    let default_filter = match cli.command {
        junction::cli::Command::Serve { .. } => "junction=info,warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JUNCTION_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match junction::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
