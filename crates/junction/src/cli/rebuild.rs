//! `junction rebuild [--in-memory] [--json]`: recomputes all derived state (identity graph,
//! profiles, accounts) from the event log, with progress, and prints a summary.
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
}

pub fn run(overrides: &Overrides, in_memory: bool, json: bool) -> anyhow::Result<()> {
    let config = crate::config::load(overrides)?;
    // Holding the log's lock keeps a server from starting meanwhile.
    let (log, _) = Log::open(config.log.clone()).with_context(|| {
        format!(
            "cannot open the event log in {} (is a server running on this data dir? stop it first)",
            config.data_dir.display()
        )
    })?;
    let summary = rebuild(
        &config.data_dir,
        log.dir(),
        config.identity.clone(),
        in_memory,
    )?;
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
    }
    Ok(())
}

/// Recomputes the state from `log_dir`; writes it under `data_dir/state` unless `in_memory`.
pub fn rebuild(
    data_dir: &Path,
    log_dir: &Path,
    rules: junction_core::identity::Rules,
    in_memory: bool,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} events applied ({per_sec}) {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let (graph, next) = processor::replay(log_dir, rules, &mut |_, count| bar.set_position(count))?;
    bar.finish_and_clear();
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
    let c = graph.counters();
    Ok(Summary {
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
