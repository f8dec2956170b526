//! Command-line interface (SPEC §3.1): argument parsing and dispatch to each subcommand.

pub mod backend;
pub mod compute;
pub mod export;
pub mod import;
pub mod profiles;
pub mod rebuild;
pub mod tail;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "junction",
    version,
    about = "Segment-compatible customer data platform in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration and data live; flags override `JUNCTION_*` variables, which
/// override the config file.
#[derive(Debug, Clone, Args)]
pub struct Location {
    /// Configuration file (default: ./junction.toml when present, else dev mode).
    #[arg(long, env = "JUNCTION_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (default: ./junction-data).
    #[arg(long, env = "JUNCTION_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        location: Location,
        /// Address to listen on (default: 127.0.0.1:8088).
        #[arg(long, env = "JUNCTION_LISTEN")]
        listen: Option<String>,
        /// Benchmark baseline only: parse and answer 200 without storing anything.
        #[arg(long, hide = true)]
        bench_discard: bool,
    },
    /// Load historical events (one Segment/RudderStack event JSON per line, optionally gzip).
    Import {
        /// A .jsonl or .jsonl.gz file.
        file: PathBuf,
        /// The source the events are stored under.
        #[arg(long)]
        source: String,
        #[command(flatten)]
        location: Location,
    },
    /// Read stored events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Recompute all derived state (profiles, identity graph) from the event log.
    Rebuild {
        #[command(flatten)]
        location: Location,
        /// Compute and report without writing the state store.
        #[arg(long)]
        in_memory: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Evaluate computed traits and audiences as of this time (ISO-8601; default: now),
        /// e.g. to compare with a query over the same events.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Read profiles and accounts (through the running server, or the stopped data dir).
    Profiles {
        #[command(subcommand)]
        command: profiles::ProfilesCommand,
    },
    /// Read audiences, their members, and preview expressions (server running or not).
    Audiences {
        #[command(subcommand)]
        command: compute::AudiencesCommand,
    },
    /// Read computed-trait definitions (server running or not).
    Traits {
        #[command(subcommand)]
        command: compute::TraitsCommand,
    },
    /// Benchmark baseline only: write every event a profile owns, with the profile's id, as
    /// CSV (`profile_id,timestamp_ms,type,event,revenue`).
    #[command(hide = true)]
    BenchExportEvents {
        #[command(flatten)]
        location: Location,
        /// The CSV file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print stored events, oldest first (works while the server is stopped or running).
    Tail(tail::TailArgs),
}

impl Location {
    pub fn overrides(&self, listen: Option<String>) -> Overrides {
        Overrides {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            location,
            listen,
            bench_discard,
        } => {
            let config = crate::config::load(&location.overrides(listen))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::server::run(
                config,
                crate::server::Options {
                    discard: bench_discard,
                    clock: None,
                },
            ))
        }
        Command::Import {
            file,
            source,
            location,
        } => import::run(&file, &source, &location.overrides(None)),
        Command::Events {
            command: EventsCommand::Tail(args),
        } => tail::run(&args),
        Command::Profiles { command } => profiles::run(command),
        Command::Audiences { command } => compute::run_audiences(command),
        Command::Traits { command } => compute::run_traits(command),
        Command::Rebuild {
            location,
            in_memory,
            json,
            as_of,
        } => {
            let as_of = match as_of {
                None => None,
                Some(t) => Some(junction_core::timestamp::parse(&t).ok_or_else(|| {
                    anyhow::anyhow!("--as-of: `{t}` is not an ISO-8601 date or date-time")
                })?),
            };
            rebuild::run(&location.overrides(None), in_memory, json, as_of)
        }
        Command::BenchExportEvents {
            location,
            out,
            json,
        } => export::run(&location.overrides(None), &out, json),
    }
}

/// A progress bar on stderr (drawn only on a terminal): a bar of `len` units, or a spinner
/// without one, in the indicatif `template`.
pub fn progress(len: Option<u64>, template: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
    let fallback = match len {
        Some(_) => indicatif::ProgressStyle::default_bar(),
        None => indicatif::ProgressStyle::default_spinner(),
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).unwrap_or(fallback));
    bar
}
