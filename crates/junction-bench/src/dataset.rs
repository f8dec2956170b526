//! The seeded data set of the Unify and Compute benchmarks, generated and imported once and
//! shared by `unify-suite` and `compute-baseline` through their common work dir.
//!
//! Contract: `junction-bench generate --events N --seed S` (the Collect generator, unchanged)
//! writes `<dir>/events-N-sS.jsonl`, which `junction import --source bench` loads into
//! `<dir>/data-N-sS/`. Each is kept and reused by later invocations with the same `N`/`S`
//! (a `.json` marker next to it, written last, says it is complete and holds its summary);
//! `fresh` redoes both, and a regenerated data set is always imported anew. Nothing here is
//! timed as a benchmark figure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::stats::round3;
use crate::sysinfo;

/// The source the data set is imported under (the suites' config defines it).
pub const SOURCE: &str = "bench";

/// The work dir shared by the suites when none is given.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("junction-bench-unify")
}

/// Which data set, and where.
pub struct Spec<'a> {
    pub dir: &'a Path,
    pub events: u64,
    pub seed: u64,
    /// Regenerate and re-import even when complete.
    pub fresh: bool,
}

/// The data set and its data dir, ready.
pub struct DataSet {
    pub events_file: PathBuf,
    pub data_dir: PathBuf,
    /// Summaries of the generation and the import (from their markers).
    pub generate: Value,
    pub import: Value,
    /// Events stored in the data dir's log.
    pub imported: u64,
    /// The events file was written by this call (derived files must be redone).
    pub regenerated: bool,
    /// The data dir was written by this call.
    pub reimported: bool,
}

/// Generates and imports the data set of `spec` where needed; `junction` with `config`
/// imports it, `self_exe` (this binary) generates it; `progress` reports each step.
pub fn prepare(
    spec: &Spec<'_>,
    junction: &Path,
    config: &Path,
    self_exe: &Path,
    progress: &dyn Fn(&str),
) -> Result<DataSet> {
    let dir = spec.dir;
    let tag = format!("{}-s{}", spec.events, spec.seed);
    let events_file = dir.join(format!("events-{tag}.jsonl"));
    let data_dir = dir.join(format!("data-{tag}"));
    let gen_marker = dir.join(format!("events-{tag}.json"));
    let import_marker = dir.join(format!("data-{tag}.json"));

    let mut regenerated = false;
    let generate = match read_marker(&gen_marker).filter(|_| !spec.fresh) {
        Some(v) => {
            progress(&format!("data set: reusing {}", events_file.display()));
            v
        }
        None => {
            regenerated = true;
            let _ = fs::remove_file(&gen_marker);
            progress(&format!(
                "data set: generating {} events into {} ...",
                spec.events,
                events_file.display()
            ));
            let mut cmd = Command::new(self_exe);
            cmd.args(["generate", "--events", &spec.events.to_string()])
                .args(["--seed", &spec.seed.to_string(), "--out"])
                .arg(&events_file)
                .arg("--json");
            let v = crate::suite::run_json(cmd)?;
            fs::write(&gen_marker, v.to_string())?;
            v
        }
    };
    let identify = generate["types_pct"]["identify"].as_f64().unwrap_or(0.0);
    let alias = generate["types_pct"]["alias"].as_f64().unwrap_or(0.0);
    progress(&format!(
        "  identify {identify}%, alias {alias}%, identified {}%, with email {}%",
        generate["identified_pct"], generate["email_pct"]
    ));
    if identify + alias <= 0.0 {
        progress("  warning: the data set has no identify or alias events: expect no merges");
    }

    let mut reimported = false;
    let import = match read_marker(&import_marker).filter(|_| !regenerated) {
        Some(v) => {
            progress(&format!("data dir: reusing {}", data_dir.display()));
            v
        }
        None => {
            reimported = true;
            let _ = fs::remove_file(&import_marker);
            let v = import(junction, config, &events_file, &data_dir, progress)?;
            fs::write(&import_marker, v.to_string())?;
            v
        }
    };
    let imported = import["imported"].as_u64().unwrap_or(spec.events);
    progress(&format!(
        "  {imported} events in the log ({} rejected, {} duplicates)",
        import["rejected"], import["duplicates"]
    ));
    Ok(DataSet {
        events_file,
        data_dir,
        generate,
        import,
        imported,
        regenerated,
        reimported,
    })
}

/// The JSON of a marker file, `None` when it is missing or unreadable.
pub fn read_marker(path: &Path) -> Option<Value> {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// `junction import` of `events_file` into a new `data_dir`; returns its summary.
fn import(
    junction: &Path,
    config: &Path,
    events_file: &Path,
    data_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Value> {
    if data_dir.exists() {
        fs::remove_dir_all(data_dir)?;
    }
    progress(&format!(
        "data dir: importing into {} ...",
        data_dir.display()
    ));
    let t = Instant::now();
    let out = Command::new(junction)
        .arg("import")
        .arg(events_file)
        .args(["--source", SOURCE, "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .context("running junction import")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "junction import failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let count = |key: &str| {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(key)
                .and_then(|r| r.trim().parse::<u64>().ok())
        })
    };
    Ok(json!({
        "seconds": round3(t.elapsed().as_secs_f64()),
        "imported": count("imported:"),
        "duplicates": count("duplicates:"),
        "rejected": count("rejected:"),
        "log_dir": sysinfo::disk_usage(&data_dir.join("log")).apparent_bytes,
    }))
}
