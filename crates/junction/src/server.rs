//! `junction serve`: opens storage, builds the application state and runs the HTTP server
//! until SIGTERM/SIGINT, then shuts down in order: stop accepting, finish in-flight requests,
//! flush the log, let the Unify processor apply what the log holds and commit, snapshot the
//! dedup index.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::compute::registry::Registry;
use crate::config::Config;
use crate::http::{self, AppState, SharedState};
use crate::ingest::{Ingestor, secs};
use crate::unify::{Unify, processor};

/// Prints a line on stdout for the operator; a closed stdout (e.g. a pipe whose reader went
/// away) must not take the server down, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Clone, Default)]
pub struct Options {
    /// Benchmark baseline: answer without storing.
    pub discard: bool,
    /// The clock requests are timed with (default: the system clock).
    pub clock: Option<Arc<dyn Clock>>,
}

/// Opens the log and the dedup index and builds the state the router serves.
pub fn open_state(
    config: Config,
    options: Options,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SharedState> {
    let clock = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let ingestor = Arc::new(Ingestor::open(&config, clock.clone())?);
    let unify = Arc::new(Unify::open(
        &config.data_dir,
        ingestor.log().dir(),
        config.identity.clone(),
    )?);
    let processor = processor::spawn(
        Arc::clone(&unify),
        ingestor.log().clone(),
        config.commit_interval,
    );
    let compute = Registry::start(
        &config,
        clock.clone(),
        Arc::clone(&unify),
        Arc::clone(&ingestor),
    );
    let sources: HashMap<String, String> = config
        .sources
        .iter()
        .map(|s| (s.write_key.clone(), s.name.clone()))
        .collect();
    Ok(Arc::new(AppState {
        sources,
        ingestor,
        discard: options.discard,
        clock,
        shutdown,
        latency: Default::default(),
        profile_limiter: http::ratelimit::RateLimiter::new(config.profile_rate_limit),
        unify,
        processor,
        compute,
        config,
    }))
}

pub async fn run(config: Config, options: Options) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives right after "listening" is printed must already
    // mean a graceful shutdown, not the default (kill).
    let signals = Signals::install()?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let discard = options.discard;
    let state = tokio::task::block_in_place(|| open_state(config, options, shutdown_rx.clone()))?;
    let cfg = &state.config;
    if cfg.dev_mode {
        say!(
            "junction dev mode: no config file (workspace `default`); credentials kept in {}",
            cfg.data_dir.join("dev-credentials.json").display()
        );
        say!("  source `default` write key: {}", cfg.sources[0].write_key);
        say!("  admin token: {}", cfg.tokens[0].secret);
    }
    if discard {
        say!(
            "WARNING: --bench-discard: events are parsed and answered 200 but NOT stored (benchmark baseline only)"
        );
    }
    say!("junction listening on http://{}", listener.local_addr()?);
    let limits = http::serve::Limits {
        header_read_timeout: cfg.header_read_timeout,
        max_connections: cfg.max_connections,
        shutdown_timeout: cfg.shutdown_timeout,
    };
    let sweeper = spawn_dedup_sweeper(state.clone());
    let signal = tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutdown requested");
        let _ = shutdown_tx.send(true);
    });
    http::serve::run(listener, http::router(state.clone()), limits, shutdown_rx).await;
    signal.abort();
    sweeper.abort();
    let log = state.ingestor.log().clone();
    tokio::task::block_in_place(|| {
        // Compute first: what it is writing goes into the log before the log closes.
        state.compute.stop();
        log.shutdown();
        state.processor.stop();
    });
    state
        .ingestor
        .dedup()
        .write_snapshot(log.next_offset())
        .context("cannot write the dedup snapshot")?;
    say!("junction stopped");
    Ok(())
}

/// Expires dedup keys once a minute, and enforces the key cap every 10 s (a sweep walks
/// every key, so it runs only when due). Off the async workers: a sweep can take a while.
fn spawn_dedup_sweeper(state: SharedState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        let mut last_full = tokio::time::Instant::now();
        loop {
            every.tick().await;
            let dedup_state = state.clone();
            let over_cap = state.ingestor.dedup().len() > state.config.dedup_max_keys;
            if over_cap || last_full.elapsed() >= std::time::Duration::from_secs(60) {
                last_full = tokio::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || {
                    let now = secs(dedup_state.clock.now_ms());
                    dedup_state.ingestor.dedup().sweep(now)
                })
                .await;
            }
        }
    })
}

/// SIGTERM and SIGINT, both meaning "shut down gracefully".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
