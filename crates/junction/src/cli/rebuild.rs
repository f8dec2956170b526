//! `junction rebuild [--in-memory] [--json] [--as-of TIME]`: recomputes all derived state
//! (identity graph, profiles, accounts; computed traits and audiences, which are kept in
//! memory only) from the event log, with progress, and prints a summary.
//!
//! Contract: refuses to run while a server holds the data dir (the log's lock). The new
//! state is written to `<data_dir>/state.rebuild` and then swapped in for `state`, so the
//! old state stays usable until the new one is complete; an interrupted rebuild leaves at
//! worst no `state`, which the next start replays from offset 0. `--in-memory` computes
//! and reports without writing anything (the benchmark's in-memory figure). The summary's
//! `digest` equals the running processor's for the same log (`Unify::digest`).

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::Overrides;
use crate::log::Log;
use crate::unify::{self, processor, store::Store};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub events: u64,
    pub next_offset: u64,
    pub profiles: usize,
    pub accounts: usize,
    pub identifiers: usize,
    pub merges: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub durable: bool,
    pub state_bytes: u64,
    pub peak_rss_bytes: u64,
    pub digest: String,
    /// Computed traits and audiences, when any are defined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeSummary>,
}

/// What the pass over the history computed.
#[derive(Debug, Serialize)]
pub struct ComputeSummary {
    pub seconds: f64,
    pub events_per_sec: f64,
    pub as_of: String,
    pub aggregates: usize,
    /// Per definition key: audience members, or for a computed trait the profiles with a
    /// value, those whose value is a number other than 0, and the sum of the numbers.
    pub audiences: std::collections::BTreeMap<String, u64>,
    pub computed_traits: std::collections::BTreeMap<String, crate::compute::TraitTotals>,
}

pub fn run(
    overrides: &Overrides,
    in_memory: bool,
    json: bool,
    as_of: Option<i64>,
) -> anyhow::Result<()> {
    let config = crate::config::load(overrides)?;
    let log = lock_log(&config)?;
    let summary = rebuild(&config, log.dir(), in_memory, as_of)?;
    log.shutdown();
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "rebuilt {} events into {} profiles ({} merges, {} identifiers, {} accounts) in {:.2} s ({:.0} events/s){}; digest {}",
            summary.events,
            summary.profiles,
            summary.merges,
            summary.identifiers,
            summary.accounts,
            summary.seconds,
            summary.events_per_sec,
            if summary.durable {
                ""
            } else {
                ", in memory only"
            },
            summary.digest
        );
        if let Some(c) = &summary.compute {
            println!(
                "computed {} audiences and {} computed traits as of {} in {:.2} s ({:.0} events/s): {}",
                c.audiences.len(),
                c.computed_traits.len(),
                c.as_of,
                c.seconds,
                c.events_per_sec,
                c.audiences
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// Opens the data dir's log for a one-shot pass over it: holding the log's lock keeps a
/// server from starting meanwhile, and fails while one runs.
pub fn lock_log(config: &crate::config::Config) -> anyhow::Result<Log> {
    let (log, _) = Log::open(config.log.clone()).with_context(|| {
        format!(
            "cannot open the event log in {} (is a server running on this data dir? stop it first)",
            config.data_dir.display()
        )
    })?;
    Ok(log)
}

/// Recomputes the state from `log_dir`; writes it under `data_dir/state` unless `in_memory`.
/// Computed traits and audiences are evaluated as of `as_of` (default: now).
pub fn rebuild(
    config: &crate::config::Config,
    log_dir: &Path,
    in_memory: bool,
    as_of: Option<i64>,
) -> anyhow::Result<Summary> {
    let data_dir = &config.data_dir;
    let rules = config.identity.clone();
    let started = Instant::now();
    let (graph, next) = replay(log_dir, rules)?;
    let mut state_bytes = 0;
    if !in_memory {
        let target = data_dir.join("state");
        let fresh = data_dir.join("state.rebuild");
        let old = data_dir.join("state.old");
        for dir in [&fresh, &old] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        {
            let store = Store::open(&fresh)?;
            store.write_all(&graph, next)?;
            state_bytes = store.disk_bytes();
        }
        if target.exists() {
            std::fs::rename(&target, &old)
                .with_context(|| format!("moving {} aside", target.display()))?;
        }
        std::fs::rename(&fresh, &target)
            .with_context(|| format!("installing {}", target.display()))?;
        crate::fsutil::sync_dir(data_dir)?;
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let compute = compute_history(config, log_dir, &graph, next, as_of)?;
    let c = graph.counters();
    Ok(Summary {
        compute,
        events: c.events,
        next_offset: next,
        profiles: graph.profile_count(),
        accounts: graph.account_count(),
        identifiers: graph.identifier_count(),
        merges: c.merges,
        seconds,
        events_per_sec: c.events as f64 / seconds.max(1e-9),
        durable: !in_memory,
        state_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        digest: format!("{:016x}", unify::digest(&graph)),
    })
}

/// Computes the configured traits and audiences over the whole log (`None` without any).
fn compute_history(
    config: &crate::config::Config,
    log_dir: &Path,
    graph: &junction_core::identity::Graph,
    next: u64,
    as_of: Option<i64>,
) -> anyhow::Result<Option<ComputeSummary>> {
    use crate::clock::{Clock, FixedClock, SystemClock};
    let definitions = &config.definitions;
    if definitions.catalog.is_empty() {
        return Ok(None);
    }
    let clock: std::sync::Arc<dyn Clock> = match as_of {
        Some(ms) => std::sync::Arc::new(FixedClock::new(ms)),
        None => std::sync::Arc::new(SystemClock),
    };
    let as_of = junction_core::timestamp::format(clock.now_ms());
    let compute = crate::compute::Compute::new(definitions, clock, config.compute_time_lag);
    let started = Instant::now();
    compute.compute_history(log_dir, next, false, graph)?;
    let seconds = started.elapsed().as_secs_f64();
    let (mut audiences, mut computed_traits) = (Default::default(), Default::default());
    compute.totals(&mut audiences, &mut computed_traits);
    Ok(Some(ComputeSummary {
        seconds,
        events_per_sec: next as f64 / seconds.max(1e-9),
        as_of,
        aggregates: definitions.catalog.aggregates().len(),
        audiences,
        computed_traits,
    }))
}

/// Replays `log_dir` into an untracked in-memory graph ([`processor::replay`]), showing
/// progress on a terminal; returns the graph and the next offset to apply.
pub fn replay(
    log_dir: &Path,
    rules: junction_core::identity::Rules,
) -> anyhow::Result<(junction_core::identity::Graph, u64)> {
    let bar = super::progress(None, "{spinner} {pos} events applied ({per_sec}) {elapsed}");
    let replayed = processor::replay(log_dir, rules, &mut |_, count| bar.set_position(count));
    bar.finish_and_clear();
    replayed
}

/// The process's peak resident set (VmHWM), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
