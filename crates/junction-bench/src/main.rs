//! `junction-bench`: seeded data sets, load generation and baselines for Junction's benchmarks.
//!
//! Every subcommand prints human-readable figures, or one JSON object with `--json`.

mod compute;
mod dataset;
mod detmath;
mod events;
mod fsync;
mod generate;
mod json;
mod load;
mod rng;
mod stats;
mod suite;
mod sysinfo;
mod timefmt;
mod unify;
mod vocab;
mod zipf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "junction-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a seeded, deterministic data set of Segment events.
    Generate(generate::GenerateArgs),
    /// Measure appends of event batches with fdatasync on one thread (the disk's ceiling).
    FsyncCeiling(fsync::FsyncArgs),
    /// Send tracking-API traffic (closed loop, or open loop with --rate) and report latency.
    Load(load::LoadArgs),
    /// Run the ingest benchmarks against a `junction` binary and print the BENCHMARKS.md table.
    IngestSuite(suite::SuiteArgs),
    /// Run the Unify (identity resolution) benchmarks and print the BENCHMARKS.md table.
    UnifySuite(unify::UnifySuiteArgs),
    /// Time the DuckDB baseline of the Compute benchmark (audience and trait queries).
    ComputeBaseline(compute::ComputeBaselineArgs),
    /// Time a plain union-find over a pairs file written by `unify-suite` (its baseline).
    #[command(hide = true)]
    UnifyBaseline(unify::BaselineArgs),
    /// Measure how soon a merge is visible in the Profile API after the identify's 200.
    #[command(hide = true)]
    UnifyFreshness(unify::FreshnessArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(a) => generate::run(a),
        Command::FsyncCeiling(a) => fsync::run(a),
        Command::Load(a) => load::run(a),
        Command::IngestSuite(a) => suite::run(a),
        Command::UnifySuite(a) => unify::run(a),
        Command::UnifyBaseline(a) => unify::baseline(a),
        Command::UnifyFreshness(a) => unify::freshness(a),
        Command::ComputeBaseline(a) => compute::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
