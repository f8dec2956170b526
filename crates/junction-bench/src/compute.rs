//! `compute-baseline`: the DuckDB baseline of the Compute benchmark (issue 4), measured on
//! the events the Unify suite's data set resolves into profiles.
//!
//! Contract:
//! - Data: the Unify suite's data set and imported data dir ([`crate::dataset`]; same default
//!   `--dir`, `--events`, `--seed`, the same config), generated and imported where missing.
//! - Export: `junction bench-export-events` writes `<dir>/compute-events-N-sS.csv` (one row
//!   per event a profile owns, with the profile's id after identity resolution), once:
//!   `<dir>/compute-events-N-sS.json`, its summary, written after it, says it is complete. It
//!   is redone when that marker is missing, with `--fresh-export`, or when the data dir was
//!   imported anew. Not timed.
//! - Baseline: `duckdb_baseline.py` (embedded in this binary, written to `<dir>`) run by
//!   `--python` (default: the venv of `scripts/bench-deps.sh`) with `--now-ms` (default: the
//!   newest `timestamp_ms` exported) and `--runs`. It times the audience and trait queries
//!   over Parquet, over the CSV and over an in-memory table, query only, medians, with the
//!   CPU time other processes used meanwhile (interference: "noisy" past 10% of one CPU).
//! - [`measure`] returns the figures ([`Baseline`]), for the Compute suite to set beside
//!   Junction's; [`run`] prints a Markdown table, or one JSON object with `--json`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::dataset;
use crate::suite::{fmt_num, group_thousands, run_json, shell_line};
use crate::sysinfo::Machine;
use crate::timefmt::Rfc3339Millis;

const SCRIPT: &str = include_str!("../python/duckdb_baseline.py");
const SCRIPT_NAME: &str = "duckdb_baseline.py";

#[derive(Args, Debug, Clone)]
pub struct ComputeBaselineArgs {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the baseline runs on and how often.
#[derive(Args, Debug, Clone)]
pub struct Inputs {
    /// Path to the `junction` binary (a release build): imports and exports the data set.
    #[arg(long)]
    pub junction: PathBuf,
    /// Work dir shared with `unify-suite`: the data set, its data dir and the export are kept
    /// here for reuse (default: <temp dir>/junction-bench-unify).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Events in the generated data set.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Seed of the generated data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Python with the `duckdb` package (`scripts/bench-deps.sh` creates the default).
    #[arg(long, default_value = "target/bench-venv/bin/python")]
    pub python: PathBuf,
    /// End of the `within = 30d` window, Unix ms (default: the newest exported timestamp_ms).
    #[arg(long)]
    pub now_ms: Option<i64>,
    /// Runs of each query per setting (medians are shown).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Export the CSV again even when a complete one is there.
    #[arg(long)]
    pub fresh_export: bool,
}

/// Where DuckDB reads the events from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Parquet,
    Csv,
    Table,
}

impl Setting {
    pub const ALL: [Setting; 3] = [Setting::Parquet, Setting::Csv, Setting::Table];

    /// The key in the script's JSON.
    fn key(self) -> &'static str {
        match self {
            Setting::Parquet => "parquet",
            Setting::Csv => "csv",
            Setting::Table => "table",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Setting::Parquet => "Parquet file (`read_parquet`)",
            Setting::Csv => "CSV file (`read_csv`, parsed by every run)",
            Setting::Table => "in-memory table (`CREATE TABLE ... AS`, not timed)",
        }
    }
}

/// The two queries of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// `count(event = "Product Viewed", within = 30d) >= 3 and
    /// count(event = "Order Completed", within = 30d) == 0`.
    Audience,
    /// `sum(properties.revenue, event = "Order Completed")`.
    Trait,
}

impl Query {
    fn key(self) -> &'static str {
        match self {
            Query::Audience => "audience",
            Query::Trait => "trait",
        }
    }
}

/// What one baseline run measured.
pub struct Baseline {
    pub csv: PathBuf,
    /// The export's summary (`junction bench-export-events --json`).
    pub export: Value,
    pub now_ms: i64,
    /// The script's JSON: DuckDB version, threads, rows, per setting and query the run
    /// seconds, their median and the result.
    pub duckdb: Value,
}

impl Baseline {
    /// Median seconds of `query` over `setting`.
    pub fn median_s(&self, setting: Setting, query: Query) -> Option<f64> {
        self.figures(setting, query)["median_s"].as_f64()
    }

    /// CPU seconds other processes used during the runs of `query` over `setting`.
    pub fn other_cpu_s(&self, setting: Setting, query: Query) -> Option<f64> {
        self.figures(setting, query)["other_cpu_s"].as_f64()
    }

    /// Other processes used more than 10% of one CPU during the runs of `query` over
    /// `setting` (the ingest suite's criterion): its figures are suspect.
    pub fn noisy(&self, setting: Setting, query: Query) -> bool {
        let total: f64 = self.figures(setting, query)["runs_s"]
            .as_array()
            .map_or(0.0, |r| r.iter().filter_map(Value::as_f64).sum());
        self.other_cpu_s(setting, query)
            .is_some_and(|o| o > 0.1 * total)
    }

    /// The audience's members and the profiles it was evaluated for.
    pub fn members(&self) -> (Option<u64>, Option<u64>) {
        let r = &self.figures(Setting::Table, Query::Audience)["result"];
        (r["members"].as_u64(), r["profiles"].as_u64())
    }

    /// Profiles with a revenue sum, and the total of those sums.
    pub fn revenue(&self) -> (Option<u64>, Option<f64>) {
        let r = &self.figures(Setting::Table, Query::Trait)["result"];
        (r["profiles_with_sum"].as_u64(), r["checksum"].as_f64())
    }

    fn figures(&self, setting: Setting, query: Query) -> &Value {
        &self.duckdb["settings"][setting.key()][query.key()]
    }
}

pub fn run(args: &ComputeBaselineArgs) -> Result<()> {
    let machine = Machine::read();
    let command_line = shell_line(std::env::args());
    // `pin: true` only silences RunStart's warning about unpinned processes: nothing is
    // pinned here by design, DuckDB uses every core it sees (the script reports how many).
    let start = crate::suite::RunStart::read(
        &args.inputs.junction,
        &machine,
        &command_line,
        true,
        args.json,
    );
    let progress = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let b = measure(&args.inputs, &progress)?;
    if args.json {
        let v = json!({
            "machine": machine.to_json(),
            "command": command_line,
            "junction_version": start.version,
            "loadavg": start.loadavg.trim(),
            "started_at": start.started_at,
            "csv": b.csv,
            "export": b.export,
            "now_ms": b.now_ms,
            "duckdb": b.duckdb,
        });
        println!("{v}");
    } else {
        print!("{}", markdown(&b, &machine, &command_line, &start));
    }
    Ok(())
}

/// Prepares the data set and its export where needed, then runs the DuckDB baseline.
pub fn measure(inputs: &Inputs, progress: &dyn Fn(&str)) -> Result<Baseline> {
    anyhow::ensure!(inputs.runs >= 1, "--runs must be at least 1");
    let python = python(&inputs.python)?;
    let junction = fs::canonicalize(&inputs.junction)
        .with_context(|| format!("junction binary {} not found", inputs.junction.display()))?;
    let dir = inputs.dir.clone().unwrap_or_else(dataset::default_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = fs::canonicalize(&dir)?;
    let config = crate::unify::write_config(&dir)?;
    let self_exe = std::env::current_exe().context("locating junction-bench itself")?;
    let spec = dataset::Spec {
        dir: &dir,
        events: inputs.events,
        seed: inputs.seed,
        fresh: false,
    };
    let set = dataset::prepare(&spec, &junction, &config, &self_exe, progress)?;

    let tag = format!("{}-s{}", inputs.events, inputs.seed);
    let csv = dir.join(format!("compute-events-{tag}.csv"));
    let marker = dir.join(format!("compute-events-{tag}.json"));
    let redo = inputs.fresh_export || set.reimported;
    let export = match dataset::read_marker(&marker).filter(|_| !redo && csv.exists()) {
        Some(v) => {
            progress(&format!("export: reusing {}", csv.display()));
            v
        }
        None => {
            let _ = fs::remove_file(&marker);
            progress(&format!(
                "export: junction bench-export-events into {} ...",
                csv.display()
            ));
            let mut cmd = Command::new(&junction);
            cmd.args(["bench-export-events", "--json", "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(&set.data_dir)
                .arg("--out")
                .arg(&csv);
            let v = run_json(cmd).context("exporting the events")?;
            fs::write(&marker, v.to_string())?;
            v
        }
    };
    progress(&format!(
        "  {} rows ({} events owned by no profile), {} profiles",
        export["rows"], export["unowned"], export["profiles"]
    ));
    let now_ms = match inputs.now_ms {
        Some(t) => t,
        None => export["max_timestamp_ms"]
            .as_i64()
            .context("the export has no rows, so no newest timestamp: pass --now-ms")?,
    };

    let script = dir.join(SCRIPT_NAME);
    fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    progress(&format!(
        "duckdb: {} runs of each query over Parquet, CSV and a table (now_ms {now_ms}) ...",
        inputs.runs
    ));
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--csv")
        .arg(&csv)
        .args(["--now-ms", &now_ms.to_string()])
        .args(["--runs", &inputs.runs.to_string()]);
    let duckdb = run_json(cmd)
        .context("running the DuckDB baseline (scripts/bench-deps.sh installs its dependencies)")?;
    Ok(Baseline {
        csv,
        export,
        now_ms,
        duckdb,
    })
}

/// `path` when it exists, else an error saying how to create it.
fn python(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!(
            "no Python at {}: run scripts/bench-deps.sh (it creates target/bench-venv with duckdb), or pass --python",
            path.display()
        );
    }
    Ok(path.to_path_buf())
}

fn markdown(
    b: &Baseline,
    machine: &Machine,
    command_line: &str,
    start: &crate::suite::RunStart,
) -> String {
    let d = &b.duckdb;
    let mut md = String::new();
    let _ = writeln!(md, "### Compute: DuckDB baseline\n");
    let _ = writeln!(md, "- machine: {}", machine.line());
    let _ = writeln!(md, "- command: `{command_line}`");
    let _ = writeln!(
        md,
        "- junction: {}; started {}, load average {}",
        start.version.as_deref().unwrap_or("?"),
        start.started_at,
        start.loadavg.trim()
    );
    let _ = writeln!(
        md,
        "- DuckDB {} ({} threads), {} rows ({} profiles), CSV {} MB, Parquet {} MB",
        d["duckdb_version"].as_str().unwrap_or("?"),
        d["threads"],
        fmt_num(d["rows"].as_f64(), 0),
        fmt_num(b.export["profiles"].as_f64(), 0),
        fmt_num(d["csv_bytes"].as_f64().map(|x| x / 1e6), 0),
        fmt_num(d["parquet_bytes"].as_f64().map(|x| x / 1e6), 0)
    );
    let _ = writeln!(
        md,
        "- window: now_ms {} ({}), within 30d = `timestamp_ms > {}`\n",
        b.now_ms,
        Rfc3339Millis(b.now_ms),
        d["since_ms"]
    );
    let _ = writeln!(
        md,
        "| Setting | audience: median s | trait: median s | audience runs s | trait runs s | other processes CPU-s (audience / trait) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---|---|");
    for s in Setting::ALL {
        let runs = |q: Query| -> String {
            d["settings"][s.key()][q.key()]["runs_s"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|x| fmt_num(x.as_f64(), 3))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default()
        };
        let other = |q: Query| -> String {
            let mark = if b.noisy(s, q) { " noisy" } else { "" };
            format!("{}{mark}", fmt_num(b.other_cpu_s(s, q), 2))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} / {} |",
            s.label(),
            fmt_num(b.median_s(s, Query::Audience), 3),
            fmt_num(b.median_s(s, Query::Trait), 3),
            runs(Query::Audience),
            runs(Query::Trait),
            other(Query::Audience),
            other(Query::Trait)
        );
    }
    let (members, profiles) = b.members();
    let (with_sum, checksum) = b.revenue();
    let count = |v: Option<u64>| v.map_or_else(|| "—".into(), |n| group_thousands(n as i64));
    let _ = writeln!(
        md,
        "\nResults (equal in every setting): audience members {} of {} profiles; trait: {} profiles with a revenue sum, checksum (total of the sums) {}",
        count(members),
        count(profiles),
        count(with_sum),
        checksum.map_or_else(|| "—".into(), |c| format!("{c:.2}"))
    );
    let _ = writeln!(
        md,
        "\nTimes are the query only (execute and fetch of its one-row result). \"other processes\" is the machine's busy CPU time during a query's runs minus DuckDB's: interference; past 10% of one CPU the figures are marked noisy."
    );
    md
}
