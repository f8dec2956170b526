//! `unify-suite`: the one command behind the Unify (identity resolution) table of
//! BENCHMARKS.md (issue 3), and its two helpers `unify-baseline` and `unify-freshness`.
//!
//! Contract:
//! - Data set: `<dir>/events-N-sS.jsonl` and its imported data dir `<dir>/data-N-sS/`
//!   ([`crate::dataset`], shared with `compute-baseline`); the identifiers of every event
//!   (`userId`, `anonymousId`, `traits.email` else `context.traits.email`, an alias's
//!   `previousId`) are extracted once into `<dir>/pairs-N-sS.bin`. All three are kept and
//!   reused by later invocations with the same `--events`/`--seed` (a `.json` marker next to
//!   each says it is complete); `--fresh` redoes them. None of this is timed.
//! - Baseline (ceiling): `unify-baseline` (a child process pinned to `--server-cpu`) loads the
//!   pairs file and times one pass of a plain union-find over it (path compression, union by
//!   rank, a hash map from identifier bytes to index with an FxHash-style hasher; then the same
//!   with std's SipHash). Per event: the roots of its known identifiers are united (each union
//!   of two distinct sets is a "merge", as in Junction's graph) and its new identifiers join
//!   the result (or form a new set).
//! - Rebuilds: `junction rebuild --in-memory --json` and `junction rebuild --json` (durable,
//!   writes the fjall state store) on the imported data dir, `--runs` times per CPU set of
//!   `--rebuild-cpus` (taskset); medians. While a rebuild runs its threads' CPU times are
//!   sampled from `/proc` every 10 ms, and a durable rebuild's replay phase is taken to end when
//!   `<data_dir>/state.rebuild` appears (the store is opened after the replay).
//! - Streaming: `junction serve` (pinned to `--server-cpu`) on a copy of the data dir without
//!   `state`; `/metrics` is polled every `--metrics-poll-ms` until `junction_unify_applied_offset`
//!   reaches the log's end. Sustained rate = events applied between the first answered poll and
//!   the end ÷ that time. Then, on the same caught-up server: merge freshness (`unify-freshness`
//!   pinned to `--client-cpu`), and for each `--live-rates` an open-loop `load` of `/v1/batch`
//!   while `junction_unify_lag_events` is sampled.
//! - Prints a Markdown report (also to `--markdown FILE`), or one JSON object with `--json`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::dataset::{self, DataSet, SOURCE};
use crate::load::client::{self, Target};
use crate::stats::{Samples, median, round3};
use crate::suite::{
    Server, WRITE_KEY, fmt_num, free_port, group_thousands, pinned, prometheus_quantile,
    prometheus_sum, run_json, shell_line, tail,
};
use crate::sysinfo::{self, Machine};

const WORKSPACE: &str = "bench";
const ADMIN_TOKEN: &str = "tok_admin_bench";
/// Profile API tokens, used in turn, so that the per-token rate limit does not throttle the
/// freshness probes' polling.
const PROFILE_TOKENS: usize = 32;
const PAIRS_MAGIC: &[u8; 8] = b"JBUPAIR1";

/// Targets of issue 3 for 10M events, scaled linearly for other sizes.
const TARGET_MEMORY_S_PER_10M: f64 = 5.0;
const TARGET_DURABLE_S_PER_10M: f64 = 15.0;
const TARGET_STREAM_EVENTS_PER_S: f64 = 500_000.0;
const TARGET_FRESHNESS_P99_MS: f64 = 50.0;

fn profile_token(i: usize) -> String {
    format!("tok_profiles_bench_{i:02}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// The union-find ceiling.
    Baseline,
    /// `junction rebuild --in-memory`.
    Memory,
    /// `junction rebuild` (durable state).
    Durable,
    /// The live processor catching up from an empty state.
    Stream,
    /// Merge visible in the Profile API after the identify's 200 (needs the server).
    Freshness,
    /// Processor lag under a fixed ingest rate (needs the server).
    Live,
}

#[derive(Args, Debug, Clone)]
pub struct UnifySuiteArgs {
    /// Path to the `junction` binary under test (a release build).
    #[arg(long)]
    pub junction: PathBuf,
    /// Events in the generated data set.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Seed of the generated data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Work dir; the data set, its data dir and its identifier pairs are kept here for reuse
    /// (default: <temp dir>/junction-bench-unify).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Runs of each rebuild variant (medians are shown).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// CPU list (taskset -c) of a rebuild variant; repeat for several.
    #[arg(long = "rebuild-cpus", default_values_t = ["0,1".to_string(), "0".to_string()])]
    pub rebuild_cpus: Vec<String>,
    /// CPU list for the server and the union-find baseline.
    #[arg(long, default_value = "0")]
    pub server_cpu: String,
    /// CPU list for the clients (freshness probes, load generator).
    #[arg(long, default_value = "1")]
    pub client_cpu: String,
    /// Don't pin processes with taskset.
    #[arg(long)]
    pub no_pin: bool,
    /// Parts to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "baseline,memory,durable,stream,freshness,live"
    )]
    pub parts: Vec<Part>,
    /// Freshness probes (track + track + identify, then poll the Profile API).
    #[arg(long, default_value_t = 2000)]
    pub freshness: usize,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 4)]
    pub freshness_concurrency: usize,
    /// Pause between two Profile API polls of one probe, ms.
    #[arg(long, default_value_t = 1.0)]
    pub poll_ms: f64,
    /// Interval of the `/metrics` polls, ms.
    #[arg(long, default_value_t = 50.0)]
    pub metrics_poll_ms: f64,
    /// Offered /v1/batch rates (events/s) of the live variant, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50000")]
    pub live_rates: Vec<f64>,
    /// Freshness probes sent during each live run (0: none).
    #[arg(long, default_value_t = 500)]
    pub live_freshness: usize,
    /// Measured seconds of each live run (after 2 s of warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub live_seconds: f64,
    /// Seconds allowed for the streaming catch-up.
    #[arg(long, default_value_t = 900.0)]
    pub catch_up_timeout: f64,
    /// Regenerate, re-import and re-extract the data set.
    #[arg(long)]
    pub fresh: bool,
    /// Keep the streaming copy of the data dir and the server log.
    #[arg(long)]
    pub keep_data: bool,
    /// Also write the Markdown report to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// Pairs file written by `unify-suite`.
    #[arg(long)]
    pub pairs: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct FreshnessArgs {
    /// Base URL of the server.
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub write_key: String,
    #[arg(long)]
    pub workspace: String,
    /// Profile API token secrets (`profiles:read`), comma-separated, used in turn.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Vec<String>,
    /// Probes.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Pause between polls, ms.
    #[arg(long, default_value_t = 1.0)]
    pub poll_ms: f64,
    /// A probe not visible after this many seconds fails.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    #[arg(long)]
    pub json: bool,
}

/// Numbers of one run, keyed for medians.
type Figures = Vec<(&'static str, f64)>;

/// A measured run (figures and details) or why it failed.
type Outcome = Result<(Figures, Value), String>;

fn get(f: &Figures, key: &str) -> Option<f64> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn medians(runs: &[Outcome]) -> Figures {
    let ok: Vec<&Figures> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| &r.0)
        .collect();
    crate::suite::median_figures(&ok)
}

fn figures_json(f: &Figures) -> Value {
    Value::Object(
        f.iter()
            .map(|(k, v)| (k.to_string(), json!(round3(*v))))
            .collect(),
    )
}

struct Variant {
    durable: bool,
    cpus: String,
    runs: Vec<Outcome>,
}

impl Variant {
    fn label(&self) -> String {
        format!(
            "`junction rebuild {}--json` ({})",
            if self.durable { "" } else { "--in-memory " },
            cpus_label(&self.cpus)
        )
    }
}

fn cpus_label(cpus: &str) -> String {
    let n = cpus.split(',').count();
    if n == 1 && !cpus.contains('-') {
        format!("1 CPU: `taskset -c {cpus}`")
    } else {
        format!("CPUs `{cpus}`")
    }
}

/// What the server phase measured.
#[derive(Default)]
struct ServerPhase {
    stream: Option<Outcome>,
    freshness: Option<Outcome>,
    live: Vec<(f64, Outcome)>,
    error: Option<String>,
}

pub fn run(args: &UnifySuiteArgs) -> Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(args.events >= 1, "--events must be at least 1");
    let original = fs::canonicalize(&args.junction)
        .with_context(|| format!("junction binary {} not found", args.junction.display()))?;
    let machine = Machine::read();
    let command_line = shell_line(std::env::args());
    let pin =
        !args.no_pin && machine.nproc >= 2 && Command::new("taskset").arg("-V").output().is_ok();
    let dir = args.dir.clone().unwrap_or_else(dataset::default_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = fs::canonicalize(&dir)?;
    // Every step uses this copy, so a rebuild of the original during the suite changes nothing.
    let junction = dir.join(format!("junction-{}", std::process::id()));
    fs::copy(&original, &junction)
        .with_context(|| format!("copying {} to {}", original.display(), junction.display()))?;
    let result = run_in(args, &machine, &command_line, pin, &dir, &junction);
    let _ = fs::remove_file(&junction);
    result
}

fn run_in(
    args: &UnifySuiteArgs,
    machine: &Machine,
    command_line: &str,
    pin: bool,
    dir: &Path,
    junction: &Path,
) -> Result<()> {
    let config = write_config(dir)?;
    let crate::suite::RunStart {
        loadavg,
        version,
        started_at,
    } = crate::suite::RunStart::read(junction, machine, command_line, pin, args.json);
    let progress = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let self_exe = std::env::current_exe().context("locating junction-bench itself")?;
    let ticks = sysinfo::clock_ticks();

    let data = prepare(args, dir, junction, &config, &self_exe, &progress)?;

    let baseline = if args.parts.contains(&Part::Baseline) {
        progress("baseline: union-find over the extracted identifiers ...");
        let mut cmd = pinned(pin, &args.server_cpu, &self_exe);
        cmd.arg("unify-baseline")
            .arg("--pairs")
            .arg(&data.pairs)
            .arg("--json");
        let r = run_json(cmd).map_err(|e| format!("{e:#}"));
        match &r {
            Ok(v) => progress(&format!(
                "  {} s, {} events/s (FxHash); {} s (SipHash)",
                v["fx"]["seconds"], v["fx"]["events_per_s"], v["sip"]["seconds"]
            )),
            Err(e) => progress(&format!("  FAILED: {e}")),
        }
        Some(r)
    } else {
        None
    };

    let mut variants: Vec<Variant> = Vec::new();
    for durable in [false, true] {
        if !args.parts.contains(if durable {
            &Part::Durable
        } else {
            &Part::Memory
        }) {
            continue;
        }
        for cpus in &args.rebuild_cpus {
            let mut v = Variant {
                durable,
                cpus: cpus.clone(),
                runs: Vec::new(),
            };
            for run in 1..=args.runs {
                progress(&format!("{} — run {run}/{} ...", v.label(), args.runs));
                let r = rebuild_run(
                    junction,
                    &config,
                    &data.set.data_dir,
                    cpus,
                    durable,
                    pin,
                    ticks,
                )
                .map_err(|e| format!("{e:#}"));
                match &r {
                    Ok((f, _)) => progress(&format!(
                        "  {} s, {} events/s, {} merges, {} profiles, peak RSS {} MiB",
                        fmt_num(get(f, "seconds"), 2),
                        fmt_num(get(f, "events_per_s"), 0),
                        fmt_num(get(f, "merges"), 0),
                        fmt_num(get(f, "profiles"), 0),
                        fmt_num(get(f, "peak_rss_mib"), 0)
                    )),
                    Err(e) => progress(&format!("  FAILED: {e}")),
                }
                v.runs.push(r);
            }
            variants.push(v);
        }
    }
    // The log's end: from a rebuild when there was one, else the imported count.
    let log_end = variants
        .iter()
        .flat_map(|v| v.runs.iter())
        .find_map(|r| r.as_ref().ok().and_then(|(f, _)| get(f, "next_offset")))
        .map_or(data.set.imported, |n| n as u64);

    let server = if args
        .parts
        .iter()
        .any(|p| matches!(p, Part::Stream | Part::Freshness | Part::Live))
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ctx = ServerCtx {
            args,
            dir,
            junction,
            config: &config,
            self_exe: &self_exe,
            data_dir: &data.set.data_dir,
            log_end,
            pin,
            ticks,
            rt: &rt,
            progress: &progress,
        };
        ctx.execute()
    } else {
        ServerPhase::default()
    };

    let report = Report {
        args,
        machine,
        command_line,
        version: version.as_deref(),
        loadavg: loadavg.trim(),
        started_at: &started_at,
        pin,
        data: &data,
        baseline: baseline.as_ref(),
        variants: &variants,
        server: &server,
    };
    let markdown = report.markdown();
    if let Some(path) = &args.markdown {
        fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{markdown}");
    }
    Ok(())
}

/// Writes the suites' config (source, tokens, default identity rules) to `<dir>/junction.toml`
/// and returns its path: `compute-baseline` exports with the config the data was imported with.
pub(crate) fn write_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("junction.toml");
    fs::write(&path, config_text()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn config_text() -> String {
    let mut s = format!(
        "version = 1\nworkspace = \"{WORKSPACE}\"\n\n[[sources]]\nname = \"{SOURCE}\"\nwrite_key = \"{WRITE_KEY}\"\n\n[[tokens]]\nname = \"admin\"\nsecret = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]\n"
    );
    for i in 0..PROFILE_TOKENS {
        let _ = write!(
            s,
            "\n[[tokens]]\nname = \"profiles-{i:02}\"\nsecret = \"{}\"\nscopes = [\"profiles:read\"]\n",
            profile_token(i)
        );
    }
    s.push_str("\n[profiles]\nrate_limit_per_sec = 1000000\n");
    s
}

/// The data set and its data dir ([`dataset::prepare`]), and its pairs file, ready.
struct Data {
    set: DataSet,
    pairs: PathBuf,
    extract: Value,
}

fn prepare(
    args: &UnifySuiteArgs,
    dir: &Path,
    junction: &Path,
    config: &Path,
    self_exe: &Path,
    progress: &dyn Fn(&str),
) -> Result<Data> {
    let spec = dataset::Spec {
        dir,
        events: args.events,
        seed: args.seed,
        fresh: args.fresh,
    };
    let set = dataset::prepare(&spec, junction, config, self_exe, progress)?;
    let tag = format!("{}-s{}", args.events, args.seed);
    let pairs = dir.join(format!("pairs-{tag}.bin"));
    let pairs_marker = dir.join(format!("pairs-{tag}.json"));
    // A regenerated data set invalidates the pairs, which also redo themselves when their
    // marker is missing.
    let extract = match dataset::read_marker(&pairs_marker).filter(|_| !set.regenerated) {
        Some(v) => v,
        None => {
            let _ = fs::remove_file(&pairs_marker);
            progress("pairs: extracting identifiers from the data set ...");
            let v = extract_pairs(&set.events_file, &pairs)?;
            fs::write(&pairs_marker, v.to_string())?;
            v
        }
    };
    Ok(Data {
        set,
        pairs,
        extract,
    })
}

// ---------------------------------------------------------------------------------------------
// Identifier extraction and the union-find baseline.

/// Counts of extracted identifiers.
#[derive(Default, Clone, Copy)]
struct ExtractCounts {
    events: u64,
    bad: u64,
    no_id: u64,
    user: u64,
    anon: u64,
    email: u64,
    previous: u64,
}

impl ExtractCounts {
    fn add(&mut self, o: &ExtractCounts) {
        self.events += o.events;
        self.bad += o.bad;
        self.no_id += o.no_id;
        self.user += o.user;
        self.anon += o.anon;
        self.email += o.email;
        self.previous += o.previous;
    }
}

/// The text of an id: a string, or a number's JSON text; `None` when empty or another type.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Encodes the identifiers of every line of `chunk`: per event `u8 count`, then per id
/// `u16 length` and `kind byte + value` (`u` user_id, `a` anonymous_id, `e` email).
fn encode_chunk(chunk: &[u8]) -> (Vec<u8>, ExtractCounts) {
    let mut out = Vec::with_capacity(chunk.len() / 8);
    let mut c = ExtractCounts::default();
    let mut ids: Vec<(u8, String)> = Vec::with_capacity(4);
    for line in chunk.split(|b| *b == b'\n') {
        if line.trim_ascii().is_empty() {
            continue;
        }
        c.events += 1;
        ids.clear();
        match serde_json::from_slice::<Value>(line) {
            Err(_) => c.bad += 1,
            Ok(ev) => {
                let kind = ev["type"].as_str().unwrap_or("");
                if let Some(u) = id_text(&ev["userId"]) {
                    c.user += 1;
                    ids.push((b'u', u));
                }
                if let Some(a) = id_text(&ev["anonymousId"]) {
                    c.anon += 1;
                    ids.push((b'a', a));
                }
                let from_traits = if kind == "group" {
                    None
                } else {
                    id_text(&ev["traits"]["email"])
                };
                if let Some(e) = from_traits.or_else(|| id_text(&ev["context"]["traits"]["email"]))
                {
                    c.email += 1;
                    ids.push((b'e', e));
                }
                if kind == "alias"
                    && let Some(p) = id_text(&ev["previousId"])
                {
                    c.previous += 1;
                    // Junction types it `user_id` when that user exists, else `anonymous_id`;
                    // the generator's previousIds are anonymousIds.
                    ids.push((b'a', p));
                }
            }
        }
        if ids.is_empty() {
            c.no_id += 1;
        }
        let n = ids.len().min(255);
        out.push(n as u8);
        for (k, v) in &ids[..n] {
            let len = (v.len() + 1).min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.push(*k);
            out.extend_from_slice(&v.as_bytes()[..len - 1]);
        }
    }
    (out, c)
}

/// Reads the JSONL data set in chunks, encodes them on every CPU, writes the pairs file.
fn extract_pairs(events_file: &Path, out: &Path) -> Result<Value> {
    const CHUNK: usize = 8 << 20;
    let started = Instant::now();
    let mut file = fs::File::open(events_file)
        .with_context(|| format!("opening {}", events_file.display()))?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(workers * 2);
    let chunk_rx = std::sync::Mutex::new(chunk_rx);
    let (res_tx, res_rx) = std::sync::mpsc::channel::<(usize, Vec<u8>, ExtractCounts)>();
    let read_result: Result<usize> = std::thread::scope(|s| {
        for _ in 0..workers {
            let res_tx = res_tx.clone();
            let chunk_rx = &chunk_rx;
            s.spawn(move || {
                loop {
                    let next = chunk_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((i, buf))) = next else { break };
                    let (enc, c) = encode_chunk(&buf);
                    if res_tx.send((i, enc, c)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut carry: Vec<u8> = Vec::new();
        let mut index = 0usize;
        loop {
            let mut buf = std::mem::take(&mut carry);
            let start = buf.len();
            buf.resize(start + CHUNK, 0);
            let mut filled = start;
            let mut eof = false;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..])?;
                if n == 0 {
                    eof = true;
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let cut = if eof {
                buf.len()
            } else {
                buf.iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(buf.len(), |p| p + 1)
            };
            carry = buf[cut..].to_vec();
            buf.truncate(cut);
            if !buf.is_empty() {
                chunk_tx
                    .send((index, buf))
                    .map_err(|_| anyhow::anyhow!("extract workers stopped"))?;
                index += 1;
            }
            if eof {
                break;
            }
        }
        drop(chunk_tx);
        Ok(index)
    });
    drop(res_tx);
    let chunks = read_result?;
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; chunks];
    let mut counts = ExtractCounts::default();
    for (i, enc, c) in res_rx {
        counts.add(&c);
        parts[i] = Some(enc);
    }
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    f.write_all(PAIRS_MAGIC)?;
    f.write_all(&counts.events.to_le_bytes())?;
    for (i, p) in parts.into_iter().enumerate() {
        f.write_all(&p.with_context(|| format!("chunk {i} was not encoded"))?)?;
    }
    f.flush()?;
    drop(f);
    Ok(json!({
        "events": counts.events,
        "bad_lines": counts.bad,
        "events_without_id": counts.no_id,
        "user_id": counts.user,
        "anonymous_id": counts.anon,
        "email": counts.email,
        "previous_id": counts.previous,
        "identifiers": counts.user + counts.anon + counts.email + counts.previous,
        "bytes": fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        "seconds": round3(started.elapsed().as_secs_f64()),
    }))
}

/// The identifiers of every event, borrowed from the pairs file.
struct Pairs<'a> {
    ids: Vec<&'a [u8]>,
    /// End (exclusive) in `ids` of each event.
    ends: Vec<u32>,
}

fn decode_pairs(data: &[u8]) -> Result<Pairs<'_>> {
    anyhow::ensure!(
        data.len() >= 16 && &data[..8] == PAIRS_MAGIC,
        "not a pairs file"
    );
    let events = u64::from_le_bytes(data[8..16].try_into()?) as usize;
    let mut ids = Vec::with_capacity(events * 2);
    let mut ends = Vec::with_capacity(events);
    let mut at = 16usize;
    for _ in 0..events {
        let n = *data.get(at).context("truncated pairs file")? as usize;
        at += 1;
        for _ in 0..n {
            let len = u16::from_le_bytes(
                data.get(at..at + 2)
                    .context("truncated pairs file")?
                    .try_into()?,
            ) as usize;
            at += 2;
            ids.push(data.get(at..at + len).context("truncated pairs file")?);
            at += len;
        }
        ends.push(u32::try_from(ids.len()).context("too many identifiers")?);
    }
    anyhow::ensure!(at == data.len(), "trailing bytes in the pairs file");
    Ok(Pairs { ids, ends })
}

/// FxHash (rustc's hasher): one multiply and rotate per 8 bytes.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u32::from_le_bytes(bytes[..4].try_into().unwrap_or([0; 4])) as u64);
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

struct UnionFind {
    parent: Vec<u32>,
    rank: Vec<u8>,
}

impl UnionFind {
    #[inline]
    fn find(&mut self, mut x: u32) -> u32 {
        let mut root = x;
        while self.parent[root as usize] != root {
            root = self.parent[root as usize];
        }
        // Path compression: every node on the path now points at the root.
        while self.parent[x as usize] != root {
            let next = self.parent[x as usize];
            self.parent[x as usize] = root;
            x = next;
        }
        root
    }

    /// Unites two distinct roots by rank; returns the new root.
    #[inline]
    fn union(&mut self, a: u32, b: u32) -> u32 {
        let (ra, rb) = (self.rank[a as usize], self.rank[b as usize]);
        if ra < rb {
            self.parent[a as usize] = b;
            b
        } else {
            self.parent[b as usize] = a;
            if ra == rb {
                self.rank[a as usize] += 1;
            }
            a
        }
    }
}

struct UfResult {
    seconds: f64,
    events: u64,
    identifiers: u64,
    sets_created: u64,
    merges: u64,
    unresolved: u64,
    rss_delta_bytes: Option<u64>,
}

/// One union-find pass over `pairs` (the timed part), with hasher `S`.
fn union_find<S: BuildHasher + Default>(pairs: &Pairs<'_>) -> UfResult {
    let rss_before = sysinfo::vm_kib(std::process::id(), "VmRSS");
    let started = Instant::now();
    let mut map: HashMap<&[u8], u32, S> = HashMap::default();
    let mut uf = UnionFind {
        parent: Vec::new(),
        rank: Vec::new(),
    };
    let (mut merges, mut unresolved, mut sets) = (0u64, 0u64, 0u64);
    let mut fresh: Vec<&[u8]> = Vec::with_capacity(8);
    let mut begin = 0usize;
    for &end in &pairs.ends {
        let event = &pairs.ids[begin..end as usize];
        begin = end as usize;
        if event.is_empty() {
            unresolved += 1;
            continue;
        }
        let mut root: Option<u32> = None;
        fresh.clear();
        for &id in event {
            match map.get(id) {
                Some(&i) => {
                    let r = uf.find(i);
                    root = Some(match root {
                        None => r,
                        Some(q) if q == r => q,
                        Some(q) => {
                            merges += 1;
                            uf.union(q, r)
                        }
                    });
                }
                None => fresh.push(id),
            }
        }
        for &id in &fresh {
            let idx = uf.parent.len() as u32;
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(id) {
                v.insert(idx);
                match root {
                    Some(r) => {
                        uf.parent.push(r);
                        uf.rank.push(0);
                        if uf.rank[r as usize] == 0 {
                            uf.rank[r as usize] = 1;
                        }
                    }
                    None => {
                        uf.parent.push(idx);
                        uf.rank.push(0);
                        root = Some(idx);
                        sets += 1;
                    }
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = sysinfo::vm_kib(std::process::id(), "VmRSS");
    let identifiers = map.len() as u64;
    let out = UfResult {
        seconds,
        events: pairs.ends.len() as u64,
        identifiers,
        sets_created: sets,
        merges,
        unresolved,
        rss_delta_bytes: rss_before
            .zip(rss_after)
            .map(|(a, b)| b.saturating_sub(a) * 1024),
    };
    drop(map);
    drop(uf);
    out
}

fn uf_json(r: &UfResult) -> Value {
    json!({
        "seconds": round3(r.seconds),
        "events": r.events,
        "events_per_s": (r.events as f64 / r.seconds.max(1e-9)).round(),
        "identifiers": r.identifiers,
        "components": r.sets_created - r.merges,
        "merges": r.merges,
        "unresolved": r.unresolved,
        "rss_delta_bytes": r.rss_delta_bytes,
    })
}

pub fn baseline(args: &BaselineArgs) -> Result<()> {
    let data =
        fs::read(&args.pairs).with_context(|| format!("reading {}", args.pairs.display()))?;
    let pairs = decode_pairs(&data)?;
    let fx = union_find::<BuildHasherDefault<FxHasher>>(&pairs);
    let sip = union_find::<RandomState>(&pairs);
    let v = json!({
        "command": "unify-baseline",
        "hasher_note": "keys are the identifier bytes borrowed from the loaded pairs file (no allocation per identifier)",
        "fx": uf_json(&fx),
        "sip": uf_json(&sip),
    });
    if args.json {
        println!("{v}");
    } else {
        for (name, r) in [("FxHash", &fx), ("SipHash", &sip)] {
            println!(
                "union-find ({name}): {} events in {:.3} s = {:.0} events/s; {} identifiers, {} components, {} merges",
                r.events,
                r.seconds,
                r.events as f64 / r.seconds.max(1e-9),
                r.identifiers,
                r.sets_created - r.merges,
                r.merges
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rebuilds.

fn rebuild_run(
    junction: &Path,
    config: &Path,
    data_dir: &Path,
    cpus: &str,
    durable: bool,
    pin: bool,
    ticks: f64,
) -> Result<(Figures, Value)> {
    let out_path = data_dir.with_extension("rebuild.out");
    let err_path = data_dir.with_extension("rebuild.err");
    let mut cmd = pinned(pin, cpus, junction);
    cmd.arg("rebuild");
    if !durable {
        cmd.arg("--in-memory");
    }
    cmd.arg("--json")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path)?)
        .stderr(fs::File::create(&err_path)?);
    let fresh_state = data_dir.join("state.rebuild");
    let busy_before = sysinfo::machine_busy_seconds(ticks);
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting junction rebuild")?;
    let pid = child.id();
    // Per thread id: name and CPU seconds at its last sample (exited threads keep theirs).
    let mut threads: std::collections::BTreeMap<u32, (String, f64)> = Default::default();
    let mut process_cpu: Option<f64> = None;
    let mut replay_end: Option<f64> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        for (tid, name, cpu) in sysinfo::thread_cpu_seconds(pid, ticks) {
            threads.insert(tid, (name, cpu));
        }
        if let Some(c) = sysinfo::cpu_seconds(pid, ticks) {
            process_cpu = Some(c);
        }
        if durable && replay_end.is_none() && fresh_state.exists() {
            replay_end = Some(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed().as_secs_f64();
    let busy_after = sysinfo::machine_busy_seconds(ticks);
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    if !status.success() {
        bail!("junction rebuild exited with {status}: {}", stderr.trim());
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("junction rebuild printed nothing")?;
    let s: Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
    let n = |k: &str| s[k].as_f64();
    let mut f: Figures = Vec::new();
    for (key, name) in [
        ("seconds", "seconds"),
        ("events", "events"),
        ("events_per_s", "events_per_sec"),
        ("merges", "merges"),
        ("profiles", "profiles"),
        ("identifiers", "identifiers"),
        ("accounts", "accounts"),
        ("next_offset", "next_offset"),
    ] {
        if let Some(v) = n(name) {
            f.push((key, v));
        }
    }
    f.push(("wall_s", wall));
    if let Some(rss) = n("peak_rss_bytes") {
        f.push(("peak_rss_mib", rss / (1024.0 * 1024.0)));
        if let Some(p) = n("profiles").filter(|p| *p > 0.0) {
            f.push(("rss_b_per_profile", rss / p));
        }
    }
    let profiles = n("profiles").unwrap_or(0.0);
    let mut state_usage = None;
    if durable {
        if let Some(b) = n("state_bytes") {
            f.push(("state_bytes", b));
            if profiles > 0.0 {
                f.push(("state_b_per_profile", b / profiles));
            }
        }
        let u = sysinfo::disk_usage(&data_dir.join("state"));
        if profiles > 0.0 {
            f.push(("state_du_b_per_profile", u.used_bytes as f64 / profiles));
        }
        state_usage = Some(u);
        if let Some(r) = replay_end {
            f.push(("replay_s", r));
            f.push(("store_write_s", (wall - r).max(0.0)));
        }
    }
    // Threads: the first is the main thread (the applier), `unify-reader` decodes and parses.
    let main = threads.values().next().map_or(0.0, |t| t.1);
    let reader: f64 = threads
        .values()
        .filter(|t| t.0 == "unify-reader")
        .map(|t| t.1)
        .sum();
    let total = process_cpu
        .unwrap_or(0.0)
        .max(threads.values().map(|t| t.1).sum());
    if total > 0.0 {
        f.push(("cpu_s", total));
        f.push(("main_cpu_s", main));
        f.push(("reader_cpu_s", reader));
        f.push(("other_cpu_s", (total - main - reader).max(0.0)));
        // Noise: CPU time the rest of the machine used meanwhile.
        if let (Some(a), Some(b)) = (busy_before, busy_after) {
            f.push(("others_cpu_s", (b - a - total).max(0.0)));
        }
    }
    let detail = json!({
        "figures": figures_json(&f),
        "summary": s,
        "threads": threads.values().map(|(n, c)| json!({"name": n, "cpu_s": round3(*c)})).collect::<Vec<_>>(),
        "state_dir": state_usage.map(|u| json!({"used_bytes": u.used_bytes, "apparent_bytes": u.apparent_bytes, "files": u.files})),
    });
    Ok((f, detail))
}

// ---------------------------------------------------------------------------------------------
// The server: streaming catch-up, freshness, live lag.

struct ServerCtx<'a> {
    args: &'a UnifySuiteArgs,
    dir: &'a Path,
    junction: &'a Path,
    config: &'a Path,
    self_exe: &'a Path,
    data_dir: &'a Path,
    log_end: u64,
    pin: bool,
    ticks: f64,
    rt: &'a tokio::runtime::Runtime,
    progress: &'a dyn Fn(&str),
}

/// One `/metrics` sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    applied: f64,
    lag: f64,
    unify_cpu: f64,
    /// Busy CPU seconds of the whole machine, the server and this process.
    machine_busy: f64,
    server_cpu: f64,
    self_cpu: f64,
}

impl Sample {
    /// CPU seconds used by other processes between `self` and `later`.
    fn others_cpu(&self, later: &Sample) -> f64 {
        ((later.machine_busy - self.machine_busy)
            - (later.server_cpu - self.server_cpu)
            - (later.self_cpu - self.self_cpu))
            .max(0.0)
    }
}

impl ServerCtx<'_> {
    fn execute(&self) -> ServerPhase {
        let mut phase = ServerPhase::default();
        let work = self.dir.join(format!("stream-{}", std::process::id()));
        let result = self.execute_in(&work, &mut phase);
        if let Err(e) = result {
            (self.progress)(&format!("  server phase FAILED: {e:#}"));
            phase.error = Some(format!("{e:#}"));
        }
        if !self.args.keep_data {
            let _ = fs::remove_dir_all(&work);
        }
        phase
    }

    fn execute_in(&self, work: &Path, phase: &mut ServerPhase) -> Result<()> {
        let _ = fs::remove_dir_all(work);
        let data = work.join("data");
        fs::create_dir_all(&data)?;
        (self.progress)("streaming: copying the log (state left empty) ...");
        for name in ["log", "dedup.snapshot"] {
            let from = self.data_dir.join(name);
            if from.exists() {
                let status = Command::new("cp")
                    .arg("-a")
                    .arg(&from)
                    .arg(data.join(name))
                    .status()
                    .context("running cp")?;
                anyhow::ensure!(status.success(), "cp -a {} failed", from.display());
            }
        }
        anyhow::ensure!(!data.join("state").exists(), "the copy has a state dir");
        let log_path = work.join("server.log");
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let target = Target::parse(&url, "")?;
        let mut cmd = pinned(self.pin, &self.args.server_cpu, self.junction);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &listen])
            .arg("--config")
            .arg(self.config);
        let log = fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        (self.progress)(&format!(
            "streaming: junction serve on an empty state, {} events in the log ...",
            self.log_end
        ));
        let started = Instant::now();
        let mut server = Server {
            child: cmd.spawn().context("starting junction serve")?,
            log: log_path.clone(),
        };
        let pid = server.child.id();
        let stream = self.catch_up(&mut server, &target, started);
        let caught_up = stream.is_ok();
        match &stream {
            Ok((f, _)) => (self.progress)(&format!(
                "  caught up in {} s after start ({} s of start-up): {} events/s sustained",
                fmt_num(get(f, "total_s"), 2),
                fmt_num(get(f, "startup_s"), 2),
                fmt_num(get(f, "events_per_s"), 0)
            )),
            Err(e) => (self.progress)(&format!("  FAILED: {e}")),
        }
        phase.stream = Some(stream);
        if caught_up && self.args.parts.contains(&Part::Freshness) && self.args.freshness > 0 {
            (self.progress)(&format!(
                "freshness: {} probes, {} at once ...",
                self.args.freshness, self.args.freshness_concurrency
            ));
            let r = self.freshness(&target, &url).map_err(|e| format!("{e:#}"));
            match &r {
                Ok((f, _)) => (self.progress)(&format!(
                    "  p50 {} ms, p99 {} ms, max {} ms, failures {}",
                    fmt_num(get(f, "p50_ms"), 2),
                    fmt_num(get(f, "p99_ms"), 2),
                    fmt_num(get(f, "max_ms"), 2),
                    fmt_num(get(f, "failures"), 0)
                )),
                Err(e) => (self.progress)(&format!("  FAILED: {e}")),
            }
            phase.freshness = Some(r);
        }
        if caught_up && self.args.parts.contains(&Part::Live) {
            for &rate in &self.args.live_rates {
                (self.progress)(&format!(
                    "live: /v1/batch at {} events/s for {} s ...",
                    group_thousands(rate as i64),
                    self.args.live_seconds
                ));
                let r = self
                    .live(&target, &url, rate, pid)
                    .map_err(|e| format!("{e:#}"));
                match &r {
                    Ok((f, _)) => (self.progress)(&format!(
                        "  acked {} events/s; lag p50 {} / p99 {} / max {} events",
                        fmt_num(get(f, "acked_events_per_s"), 0),
                        fmt_num(get(f, "lag_p50"), 0),
                        fmt_num(get(f, "lag_p99"), 0),
                        fmt_num(get(f, "lag_max"), 0)
                    )),
                    Err(e) => (self.progress)(&format!("  FAILED: {e}")),
                }
                phase.live.push((rate, r));
            }
        }
        let hwm = sysinfo::vm_kib(pid, "VmHWM");
        let (exit, shutdown) = server.stop();
        if let Some(Ok((f, detail))) = &mut phase.stream {
            if let Some(h) = hwm {
                f.push(("server_peak_rss_mib_end", h as f64 / 1024.0));
            }
            if let Some(s) = shutdown {
                f.push(("shutdown_s", s));
            }
            detail["exit_code"] = json!(exit);
        }
        if exit != Some(0) {
            (self.progress)(&format!(
                "  note: server exit status {exit:?}; log tail:\n{}",
                tail(&log_path)
            ));
        }
        Ok(())
    }

    fn metrics(&self, target: &Target) -> Option<String> {
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client::get(target, "/metrics")).await
            })
            .ok()
            .and_then(|r| r.ok())
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
    }

    fn sample(&self, target: &Target, t0: Instant, pid: u32) -> Option<(Sample, String)> {
        let text = self.metrics(target)?;
        let applied = prometheus_sum(&text, "junction_unify_applied_offset")?;
        let lag = prometheus_sum(&text, "junction_unify_lag_events").unwrap_or(0.0);
        let unify_cpu = sysinfo::thread_cpu_seconds(pid, self.ticks)
            .iter()
            .filter(|t| t.1 == "unify")
            .map(|t| t.2)
            .sum();
        Some((
            Sample {
                t: t0.elapsed().as_secs_f64(),
                applied,
                lag,
                unify_cpu,
                machine_busy: sysinfo::machine_busy_seconds(self.ticks).unwrap_or(0.0),
                server_cpu: sysinfo::cpu_seconds(pid, self.ticks).unwrap_or(0.0),
                self_cpu: sysinfo::cpu_seconds(std::process::id(), self.ticks).unwrap_or(0.0),
            },
            text,
        ))
    }

    fn catch_up(&self, server: &mut Server, target: &Target, started: Instant) -> Outcome {
        let pid = server.child.id();
        let every = Duration::from_secs_f64(self.args.metrics_poll_ms / 1e3);
        let deadline = started + Duration::from_secs_f64(self.args.catch_up_timeout);
        let end = self.log_end as f64;
        let mut samples: Vec<Sample> = Vec::new();
        let mut next_poll = Instant::now();
        let last_text = loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "junction exited during the catch-up ({status}); log tail:\n{}",
                    tail(&server.log)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not caught up after {} s (applied {})",
                    self.args.catch_up_timeout,
                    samples.last().map_or(0.0, |s| s.applied)
                ));
            }
            if let Some((s, text)) = self.sample(target, started, pid) {
                samples.push(s);
                if s.applied >= end {
                    break text;
                }
            }
            next_poll += every;
            let now = Instant::now();
            if next_poll > now {
                std::thread::sleep(next_poll - now);
            } else {
                next_poll = now;
            }
        };
        let first = samples[0];
        let last = *samples.last().expect("at least one sample");
        let catch_up_s = (last.t - first.t).max(1e-9);
        let applied_during = last.applied - first.applied;
        // Rates over ~1 s windows, for the slowest stretch.
        let mut window_rates: Vec<f64> = Vec::new();
        let mut i = 0;
        for j in 1..samples.len() {
            if samples[j].t - samples[i].t >= 1.0 {
                window_rates.push(
                    (samples[j].applied - samples[i].applied) / (samples[j].t - samples[i].t),
                );
                i = j;
            }
        }
        let mut f: Figures = vec![
            ("total_s", last.t),
            ("startup_s", first.t),
            ("applied_at_first_poll", first.applied),
            ("catch_up_s", catch_up_s),
            ("events", end),
        ];
        if applied_during > 0.0 {
            f.push(("events_per_s", applied_during / catch_up_s));
        }
        f.push(("events_per_s_from_start", end / last.t.max(1e-9)));
        if let Some(min) = window_rates.iter().copied().reduce(f64::min) {
            f.push(("slowest_1s_events_per_s", min));
        }
        if let Some(m) = median(&window_rates) {
            f.push(("median_1s_events_per_s", m));
        }
        f.push((
            "unify_thread_cpu_share",
            (last.unify_cpu - first.unify_cpu) / catch_up_s,
        ));
        f.push(("server_cpu_s", last.server_cpu - first.server_cpu));
        f.push(("others_cpu_s", first.others_cpu(&last)));
        let metric = |name: &str| prometheus_sum(&last_text, name);
        for (key, name) in [
            ("merges", "junction_unify_merges_total"),
            ("profiles", "junction_unify_profiles"),
            ("identifiers", "junction_unify_identifiers"),
            ("commits", "junction_unify_commit_seconds_count"),
            ("commit_seconds_total", "junction_unify_commit_seconds_sum"),
        ] {
            if let Some(v) = metric(name) {
                f.push((key, v));
            }
        }
        for (key, q) in [("commit_p50_le_ms", 0.5), ("commit_p99_le_ms", 0.99)] {
            if let Some(v) = prometheus_quantile(&last_text, "junction_unify_commit_seconds", q)
                .filter(|v| v.is_finite())
            {
                f.push((key, v * 1e3));
            }
        }
        if let Some(h) = sysinfo::vm_kib(pid, "VmHWM") {
            f.push(("peak_rss_mib", h as f64 / 1024.0));
        }
        let per_second: Vec<Value> = {
            let mut out = Vec::new();
            let mut k = 0;
            for j in 1..samples.len() {
                if samples[j].t - samples[k].t >= 1.0 || j == samples.len() - 1 {
                    out.push(json!([round3(samples[j].t), samples[j].applied]));
                    k = j;
                }
            }
            out
        };
        let detail = json!({
            "figures": figures_json(&f),
            "samples": samples.len(),
            "applied_by_time": per_second,
        });
        Ok((f, detail))
    }

    fn freshness(&self, target: &Target, url: &str) -> Result<(Figures, Value)> {
        let merges_before = self
            .metrics(target)
            .and_then(|t| prometheus_sum(&t, "junction_unify_merges_total"));
        let v = run_json(self.freshness_cmd(url, self.args.freshness))?;
        let merges_after = self
            .metrics(target)
            .and_then(|t| prometheus_sum(&t, "junction_unify_merges_total"));
        let lat = &v["visible"];
        let mut f: Figures = Vec::new();
        for (key, val) in [
            ("probes", v["ok"].as_f64()),
            ("failures", v["failures"].as_f64()),
            ("p50_ms", lat["p50_ms"].as_f64()),
            ("p99_ms", lat["p99_ms"].as_f64()),
            ("p999_ms", lat["p999_ms"].as_f64()),
            ("max_ms", lat["max_ms"].as_f64()),
            ("mean_ms", lat["mean_ms"].as_f64()),
            ("identify_p99_ms", v["identify"]["p99_ms"].as_f64()),
            ("visible_at_first_poll", v["visible_at_first_poll"].as_f64()),
            ("polls_per_probe", v["polls_per_probe"].as_f64()),
            ("rate_limited", v["rate_limited"].as_f64()),
            ("slow_probes", v["slow_probes"]["count"].as_f64()),
        ] {
            if let Some(x) = val {
                f.push((key, x));
            }
        }
        if let (Some(a), Some(b)) = (merges_before, merges_after) {
            f.push(("merges", b - a));
        }
        let detail = json!({"figures": figures_json(&f), "client": v});
        Ok((f, detail))
    }

    fn freshness_cmd(&self, url: &str, count: usize) -> Command {
        let tokens: Vec<String> = (0..PROFILE_TOKENS).map(profile_token).collect();
        let mut cmd = pinned(self.pin, &self.args.client_cpu, self.self_exe);
        cmd.args(["unify-freshness", "--url", url, "--write-key", WRITE_KEY])
            .args(["--workspace", WORKSPACE, "--tokens", &tokens.join(",")])
            .args(["--count", &count.to_string()])
            .args([
                "--concurrency",
                &self.args.freshness_concurrency.to_string(),
            ])
            .args(["--poll-ms", &self.args.poll_ms.to_string(), "--json"]);
        cmd
    }

    fn live(
        &self,
        target: &Target,
        url: &str,
        rate: f64,
        server_pid: u32,
    ) -> Result<(Figures, Value)> {
        const WARMUP: f64 = 2.0;
        let out_path = self.dir.join(format!("live-{}.out", std::process::id()));
        let err_path = self.dir.join(format!("live-{}.err", std::process::id()));
        let mut cmd = pinned(self.pin, &self.args.client_cpu, self.self_exe);
        cmd.args(["load", "--url", url, "--write-key", WRITE_KEY])
            .args(["--route", "batch", "--rate", &rate.to_string()])
            .args(["--seconds", &self.args.live_seconds.to_string()])
            .args(["--warmup", &WARMUP.to_string(), "--seed", "77", "--json"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?);
        let merges_before = self
            .metrics(target)
            .and_then(|t| prometheus_sum(&t, "junction_unify_merges_total"));
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("starting the load generator")?;
        // Freshness probes while the load runs, in a thread (the probes' client is pinned too).
        let probes = if self.args.parts.contains(&Part::Freshness) {
            self.args.live_freshness
        } else {
            0
        };
        let fresh_thread = (probes > 0).then(|| {
            let cmd = self.freshness_cmd(url, probes);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(WARMUP));
                run_json(cmd)
            })
        });
        let every = Duration::from_secs_f64(self.args.metrics_poll_ms / 1e3);
        let mut samples: Vec<Sample> = Vec::new();
        let mut next_poll = Instant::now();
        while child.try_wait()?.is_none() {
            if let Some((s, _)) = self.sample(target, t0, server_pid) {
                samples.push(s);
            }
            next_poll += every;
            let now = Instant::now();
            if next_poll > now {
                std::thread::sleep(next_poll - now);
            } else {
                next_poll = now;
            }
        }
        let load_end = t0.elapsed().as_secs_f64();
        // Drain: until the processor has applied everything acknowledged.
        let drain_deadline = Instant::now() + Duration::from_secs(30);
        let mut drained_at = None;
        while Instant::now() < drain_deadline {
            if let Some((s, _)) = self.sample(target, t0, server_pid) {
                samples.push(s);
                if s.lag == 0.0 {
                    drained_at = Some(s.t - load_end);
                    break;
                }
            }
            std::thread::sleep(every);
        }
        let status = child.wait()?;
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        anyhow::ensure!(
            status.success(),
            "load generator failed ({status}): {}",
            stderr.trim()
        );
        let load: Value = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("no output from the load generator")
            .and_then(|l| serde_json::from_str(l).context("parsing the load generator's JSON"))?;
        let fresh: Option<Result<Value, String>> = fresh_thread.map(|t| {
            t.join()
                .map_err(|_| "the freshness thread panicked".to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")))
        });
        let merges_after = self
            .metrics(target)
            .and_then(|t| prometheus_sum(&t, "junction_unify_merges_total"));
        let measured: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.t >= WARMUP && s.t <= load_end)
            .collect();
        let mut lags: Vec<f64> = measured.iter().map(|s| s.lag).collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| -> Option<f64> {
            if lags.is_empty() {
                return None;
            }
            let rank = ((p * lags.len() as f64).ceil() as usize).clamp(1, lags.len());
            Some(lags[rank - 1])
        };
        let mut f: Figures = vec![
            ("offered_events_per_s", rate),
            (
                "acked_events_per_s",
                load["events_per_s"].as_f64().unwrap_or(0.0),
            ),
            ("p99_ms", load["latency"]["p99_ms"].as_f64().unwrap_or(0.0)),
            ("errors", load["errors"].as_f64().unwrap_or(0.0)),
        ];
        for (k, v) in [
            ("lag_p50", q(0.5)),
            ("lag_p99", q(0.99)),
            ("lag_max", q(1.0)),
        ] {
            if let Some(v) = v {
                f.push((k, v));
            }
        }
        if let (Some(a), Some(b)) = (measured.first(), measured.last())
            && b.t > a.t
        {
            f.push((
                "applied_events_per_s",
                (b.applied - a.applied) / (b.t - a.t),
            ));
            f.push((
                "unify_thread_cpu_share",
                (b.unify_cpu - a.unify_cpu) / (b.t - a.t),
            ));
        }
        if let Some(d) = drained_at {
            f.push(("drain_s", d.max(0.0)));
        }
        if let Some(Ok(v)) = &fresh {
            for (key, val) in [
                ("fresh_probes", v["ok"].as_f64()),
                ("fresh_failures", v["failures"].as_f64()),
                ("fresh_p50_ms", v["visible"]["p50_ms"].as_f64()),
                ("fresh_p99_ms", v["visible"]["p99_ms"].as_f64()),
                ("fresh_max_ms", v["visible"]["max_ms"].as_f64()),
            ] {
                if let Some(x) = val {
                    f.push((key, x));
                }
            }
        }
        if let (Some(a), Some(b)) = (merges_before, merges_after) {
            f.push(("merges", b - a));
        }
        let by_second: Vec<Value> = {
            let mut out = Vec::new();
            let mut second = 0usize;
            let mut max = 0.0f64;
            for s in &samples {
                let sec = s.t as usize;
                if sec != second {
                    out.push(json!(max));
                    max = 0.0;
                    second = sec;
                }
                max = max.max(s.lag);
            }
            out.push(json!(max));
            out
        };
        let fresh = match fresh {
            Some(Ok(v)) => v,
            Some(Err(e)) => json!({"error": e}),
            None => Value::Null,
        };
        let detail = json!({"figures": figures_json(&f), "max_lag_by_second": by_second, "load": load, "freshness": fresh});
        Ok((f, detail))
    }
}

// ---------------------------------------------------------------------------------------------
// Freshness client.

/// A keep-alive HTTP/1.1 connection that returns status and body.
struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Http {
    async fn connect(target: &Target) -> Result<Http> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http {
            sender,
            host: HeaderValue::from_str(&target.addr.to_string())?,
        })
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        auth: &HeaderValue,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, auth.clone());
        if body.is_some() {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

fn basic(user: &str) -> Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!(
        "Basic {}",
        client::base64(format!("{user}:").as_bytes())
    ))?)
}

#[derive(Default)]
struct ProbeStats {
    visible: Samples,
    identify: Samples,
    failures: u64,
    first_poll: u64,
    polls: u64,
    rate_limited: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: Vec<String>,
    /// Probes over the target: (probe, seconds since the client started, ms).
    slow: Vec<(usize, f64, f64)>,
}

pub fn freshness(args: &FreshnessArgs) -> Result<()> {
    anyhow::ensure!(!args.tokens.is_empty(), "--tokens is empty");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let target = Target::parse(&args.url, "")?;
    let write_auth = basic(&args.write_key)?;
    let tokens: Vec<HeaderValue> = args
        .tokens
        .iter()
        .map(|t| basic(t))
        .collect::<Result<_>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let nonce = crate::timefmt::now_millis();
    let next = Arc::new(AtomicUsize::new(0));
    let turn = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stats = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (target, write_auth, tokens, next, turn) = (
                target.clone(),
                write_auth.clone(),
                tokens.clone(),
                next.clone(),
                turn.clone(),
            );
            let args = args.clone();
            tasks.push(tokio::spawn(async move {
                let mut st = ProbeStats::default();
                let mut conn: Option<Http> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.count {
                        break;
                    }
                    if conn.is_none() {
                        match Http::connect(&target).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                st.failures += 1;
                                st.errors.push(format!("connect: {e:#}"));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected");
                    let r = probe(
                        c,
                        &args,
                        (nonce, started),
                        i,
                        &write_auth,
                        &tokens,
                        &turn,
                        &mut st,
                    )
                    .await;
                    if let Err(e) = r {
                        st.failures += 1;
                        if st.errors.len() < 10 {
                            st.errors.push(format!("probe {i}: {e:#}"));
                        }
                        conn = None;
                    }
                }
                st
            }));
        }
        let mut all = ProbeStats::default();
        for t in tasks {
            if let Ok(st) = t.await {
                all.visible.merge(st.visible);
                all.identify.merge(st.identify);
                all.failures += st.failures;
                all.first_poll += st.first_poll;
                all.polls += st.polls;
                all.rate_limited += st.rate_limited;
                for (k, v) in st.statuses {
                    *all.statuses.entry(k).or_default() += v;
                }
                all.errors.extend(st.errors);
                all.slow.extend(st.slow);
            }
        }
        all
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut stats = stats;
    stats.slow.sort_by(|a, b| a.1.total_cmp(&b.1));
    let visible = stats.visible.summary();
    let identify = stats.identify.summary();
    let ok = visible.count;
    let v = json!({
        "command": "unify-freshness",
        "ok": ok,
        "failures": stats.failures,
        "seconds": round3(seconds),
        "visible": visible.to_json(),
        "identify": identify.to_json(),
        "visible_at_first_poll": stats.first_poll,
        "polls_per_probe": round3(stats.polls as f64 / (ok.max(1)) as f64),
        "rate_limited": stats.rate_limited,
        "poll_statuses": stats.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": stats.errors,
        "slow_probes": {
            "over_ms": TARGET_FRESHNESS_P99_MS,
            "count": stats.slow.len(),
            "first": stats.slow.iter().take(20).map(|(i, t, ms)| json!({"probe": i, "at_s": round3(*t), "ms": round3(*ms)})).collect::<Vec<_>>(),
        },
    });
    if args.json {
        println!("{v}");
    } else {
        println!("merge visible after the identify's 200: {}", visible.line());
        println!("identify latency: {}", identify.line());
        println!(
            "failures {}, polls per probe {:.2}, rate limited {}",
            stats.failures,
            stats.polls as f64 / (ok.max(1)) as f64,
            stats.rate_limited
        );
    }
    Ok(())
}

/// One probe: an anonymous track, a known-user track (two profiles), an identify joining
/// them (a merge), then polls of the anonymous id's external ids until the user id shows.
#[allow(clippy::too_many_arguments)]
async fn probe(
    c: &mut Http,
    args: &FreshnessArgs,
    (nonce, started): (i64, Instant),
    i: usize,
    write_auth: &HeaderValue,
    tokens: &[HeaderValue],
    turn: &AtomicUsize,
    st: &mut ProbeStats,
) -> Result<()> {
    let anon = format!("fresh-anon-{nonce}-{i}");
    let user = format!("fresh-user-{nonce}-{i}");
    let ts = crate::timefmt::Rfc3339Millis(crate::timefmt::now_millis()).to_string();
    let bodies = [
        (
            "/v1/track",
            json!({"event": "Freshness Probe", "anonymousId": anon, "messageId": format!("{anon}-t"), "timestamp": ts, "properties": {"probe": i}}),
        ),
        (
            "/v1/track",
            json!({"event": "Freshness Probe", "userId": user, "messageId": format!("{user}-t"), "timestamp": ts, "properties": {"probe": i}}),
        ),
    ];
    for (path, body) in bodies {
        let (status, resp) = c
            .call(
                Method::POST,
                path,
                write_auth,
                Some(body.to_string().into_bytes()),
            )
            .await?;
        if status != 200 {
            bail!("{path}: {status} {}", String::from_utf8_lossy(&resp));
        }
    }
    let identify = json!({"userId": user, "anonymousId": anon, "messageId": format!("{anon}-i"), "timestamp": ts, "traits": {"plan": "pro"}});
    let sent = Instant::now();
    let (status, resp) = c
        .call(
            Method::POST,
            "/v1/identify",
            write_auth,
            Some(identify.to_string().into_bytes()),
        )
        .await?;
    let acked = Instant::now();
    if status != 200 {
        bail!("/v1/identify: {status} {}", String::from_utf8_lossy(&resp));
    }
    st.identify.record((acked - sent).as_nanos() as u64);
    let path = format!(
        "/v1/spaces/{}/collections/users/profiles/anonymous_id:{anon}/external_ids",
        args.workspace
    );
    let deadline = acked + Duration::from_secs_f64(args.timeout);
    let pause = Duration::from_secs_f64(args.poll_ms / 1e3);
    let needle = format!("\"{user}\"");
    let mut polls = 0u64;
    loop {
        let token = &tokens[turn.fetch_add(1, Ordering::Relaxed) % tokens.len()];
        let (status, body) = c.call(Method::GET, &path, token, None).await?;
        polls += 1;
        *st.statuses.entry(status).or_default() += 1;
        if status == 429 {
            st.rate_limited += 1;
        }
        if status == 200 && body.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            let visible = acked.elapsed();
            st.visible.record(visible.as_nanos() as u64);
            let ms = visible.as_secs_f64() * 1e3;
            if ms > TARGET_FRESHNESS_P99_MS {
                st.slow.push((i, (acked - started).as_secs_f64(), ms));
            }
            st.polls += polls;
            if polls == 1 {
                st.first_poll += 1;
            }
            return Ok(());
        }
        if !matches!(status, 200 | 404 | 429) {
            bail!("profile API: {status} {}", String::from_utf8_lossy(&body));
        }
        if Instant::now() > deadline {
            bail!(
                "merge not visible {} s after the identify's 200 (last status {status})",
                args.timeout
            );
        }
        tokio::time::sleep(pause).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

struct Report<'a> {
    args: &'a UnifySuiteArgs,
    machine: &'a Machine,
    command_line: &'a str,
    version: Option<&'a str>,
    loadavg: &'a str,
    started_at: &'a str,
    pin: bool,
    data: &'a Data,
    baseline: Option<&'a Result<Value, String>>,
    variants: &'a [Variant],
    server: &'a ServerPhase,
}

/// Whether other processes took more than 10% of one CPU during a rebuild.
fn noisy(f: &Figures) -> bool {
    get(f, "others_cpu_s")
        .zip(get(f, "wall_s"))
        .is_some_and(|(o, w)| o > 0.1 * w)
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

impl Report<'_> {
    fn scale(&self) -> f64 {
        self.data.set.imported as f64 / 10_000_000.0
    }

    fn target_seconds(&self, durable: bool) -> f64 {
        self.scale()
            * if durable {
                TARGET_DURABLE_S_PER_10M
            } else {
                TARGET_MEMORY_S_PER_10M
            }
    }

    fn best_memory_eps(&self) -> Option<f64> {
        self.variants
            .iter()
            .filter(|v| !v.durable)
            .filter_map(|v| get(&medians(&v.runs), "events_per_s"))
            .reduce(f64::max)
    }

    fn markdown(&self) -> String {
        let a = self.args;
        let mut md = String::new();
        let _ = writeln!(md, "## Unify ({})\n", self.started_at);
        let _ = writeln!(md, "- Machine: {}", self.machine.line());
        let _ = writeln!(md, "- Load average at start: {}", self.loadavg);
        let _ = writeln!(
            md,
            "- junction: {}",
            self.version
                .filter(|v| !v.is_empty())
                .unwrap_or("(no --version output)")
        );
        let g = &self.data.set.generate;
        let _ = writeln!(
            md,
            "- Data set: `junction-bench generate --events {} --seed {}` ({} users, Zipf s = {}, avg {} B/event; identify {}%, alias {}%, identified {}%, with email {}%), imported with `junction import` into a data dir ({} events in the log, {} MB of log)",
            a.events,
            a.seed,
            g["users"],
            g["zipf_s"],
            g["avg_event_bytes"],
            g["types_pct"]["identify"],
            g["types_pct"]["alias"],
            g["identified_pct"],
            g["email_pct"],
            group_thousands(self.data.set.imported as i64),
            fmt_num(self.data.set.import["log_dir"].as_f64().map(|b| b / 1e6), 0),
        );
        let e = &self.data.extract;
        let _ = writeln!(
            md,
            "- Identifiers extracted for the baseline: {} (user_id {}, anonymous_id {}, email {}, alias previousId {}); {} events without any",
            fmt_num(e["identifiers"].as_f64(), 0),
            fmt_num(e["user_id"].as_f64(), 0),
            fmt_num(e["anonymous_id"].as_f64(), 0),
            fmt_num(e["email"].as_f64(), 0),
            fmt_num(e["previous_id"].as_f64(), 0),
            fmt_num(e["events_without_id"].as_f64(), 0),
        );
        let _ = writeln!(
            md,
            "- Pinning: {}",
            if self.pin {
                format!(
                    "baseline and server `taskset -c {}`, clients `taskset -c {}`, rebuilds as listed",
                    a.server_cpu, a.client_cpu
                )
            } else {
                "none".into()
            }
        );
        let _ = writeln!(
            md,
            "- Rebuilds: {} run(s) per variant, medians shown",
            a.runs
        );
        let _ = writeln!(md, "- Command: `{}`\n", self.command_line);

        let _ = writeln!(
            md,
            "| Scenario | seconds | events/s | merges | profiles | identifiers | peak RSS MiB | RSS B/profile | state B/profile (fjall / du) | CPU-s main / reader / other | target | verdict |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|"
        );
        match self.baseline {
            Some(Ok(v)) => {
                for (key, label) in [
                    ("fx", "**Baseline**: union-find, FxHash map (1 CPU)"),
                    ("sip", "Baseline: union-find, std SipHash map (1 CPU)"),
                ] {
                    let r = &v[key];
                    let rss = r["rss_delta_bytes"].as_f64();
                    let comps = r["components"].as_f64();
                    let _ = writeln!(
                        md,
                        "| {label} | {} | {} | {} | {} (sets) | {} | {} (structures) | {} | — | — | ceiling | — |",
                        fmt_num(r["seconds"].as_f64(), 3),
                        fmt_num(r["events_per_s"].as_f64(), 0),
                        fmt_num(r["merges"].as_f64(), 0),
                        fmt_num(comps, 0),
                        fmt_num(r["identifiers"].as_f64(), 0),
                        fmt_num(rss.map(|b| b / (1024.0 * 1024.0)), 0),
                        fmt_num(rss.zip(comps).map(|(b, c)| b / c.max(1.0)), 0),
                    );
                }
            }
            Some(Err(e)) => {
                let _ = writeln!(
                    md,
                    "| Baseline: union-find (FAILED: {}) | — | — | — | — | — | — | — | — | — | ceiling | — |",
                    e.lines().next().unwrap_or("")
                );
            }
            None => {}
        }
        for v in self.variants {
            let m = medians(&v.runs);
            let failed = v.runs.iter().filter(|r| r.is_err()).count();
            let gm = |k| get(&m, k);
            let target_s = self.target_seconds(v.durable);
            let pass = gm("seconds").map(|s| s <= target_s);
            let mut label = v.label();
            if v.durable
                && let (Some(r), Some(w)) = (gm("replay_s"), gm("store_write_s"))
            {
                let _ = write!(label, " (replay {r:.2} s + store write {w:.2} s)");
            }
            if failed > 0 {
                let _ = write!(label, " ({failed} of {} runs failed)", v.runs.len());
            }
            let noisy_runs = v
                .runs
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|(f, _)| noisy(f)))
                .count();
            if noisy_runs > 0 {
                let _ = write!(label, " ({noisy_runs} noisy)");
            }
            let state = if v.durable {
                format!(
                    "{} / {}",
                    fmt_num(gm("state_b_per_profile"), 0),
                    fmt_num(gm("state_du_b_per_profile"), 0)
                )
            } else {
                "—".into()
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {state} | {} / {} / {} | ≤ {} s ({} events/s) | {} |",
                fmt_num(gm("seconds"), 2),
                fmt_num(gm("events_per_s"), 0),
                fmt_num(gm("merges"), 0),
                fmt_num(gm("profiles"), 0),
                fmt_num(gm("identifiers"), 0),
                fmt_num(gm("peak_rss_mib"), 0),
                fmt_num(gm("rss_b_per_profile"), 0),
                fmt_num(gm("main_cpu_s"), 2),
                fmt_num(gm("reader_cpu_s"), 2),
                fmt_num(gm("other_cpu_s"), 2),
                fmt_num(Some(target_s), 1),
                fmt_num(Some(self.data.set.imported as f64 / target_s), 0),
                if m.is_empty() { "n/a" } else { verdict(pass) },
            );
        }
        if let Some(s) = &self.server.stream {
            match s {
                Ok((f, _)) => {
                    let gs = |k| get(f, k);
                    let _ = writeln!(
                        md,
                        "| Live processor catching up from an empty state (`junction serve`, `taskset -c {}`; {} s of start-up before the first answer) | {} | **{}** (slowest 1 s: {}) | {} | {} | {} | {} | — | — | unify thread busy {}% | ≥ {} events/s | {} |",
                        a.server_cpu,
                        fmt_num(gs("startup_s"), 2),
                        fmt_num(gs("catch_up_s"), 2),
                        fmt_num(gs("events_per_s"), 0),
                        fmt_num(gs("slowest_1s_events_per_s"), 0),
                        fmt_num(gs("merges"), 0),
                        fmt_num(gs("profiles"), 0),
                        fmt_num(gs("identifiers"), 0),
                        fmt_num(gs("peak_rss_mib"), 0),
                        fmt_num(gs("unify_thread_cpu_share").map(|x| x * 100.0), 0),
                        group_thousands(TARGET_STREAM_EVENTS_PER_S as i64),
                        verdict(gs("events_per_s").map(|x| x >= TARGET_STREAM_EVENTS_PER_S)),
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        md,
                        "| Live processor catch-up (FAILED: {}) | — | — | — | — | — | — | — | — | — | ≥ 500k events/s | n/a |",
                        e.lines().next().unwrap_or("")
                    );
                }
            }
        }
        if let Some(e) = &self.server.error {
            let _ = writeln!(
                md,
                "\nServer phase FAILED: {}",
                e.lines().next().unwrap_or("")
            );
        }

        if let Some(fr) = &self.server.freshness {
            let _ = writeln!(md, "\nMerge freshness (Profile API):\n");
            let _ = writeln!(
                md,
                "| Probes | concurrency | p50 ms | p99 ms | p99.9 ms | max ms | failures | visible at 1st poll | polls/probe | merges counted | identify p99 ms | target | verdict |"
            );
            let _ = writeln!(
                md,
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
            );
            match fr {
                Ok((f, d)) => {
                    let gf = |k| get(f, k);
                    let pass = gf("p99_ms")
                        .map(|p| p <= TARGET_FRESHNESS_P99_MS && gf("failures") == Some(0.0));
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | p99 ≤ {} ms | {} |",
                        fmt_num(gf("probes"), 0),
                        a.freshness_concurrency,
                        fmt_num(gf("p50_ms"), 2),
                        fmt_num(gf("p99_ms"), 2),
                        fmt_num(gf("p999_ms"), 2),
                        fmt_num(gf("max_ms"), 2),
                        fmt_num(gf("failures"), 0),
                        fmt_num(gf("visible_at_first_poll"), 0),
                        fmt_num(gf("polls_per_probe"), 2),
                        fmt_num(gf("merges"), 0),
                        fmt_num(gf("identify_p99_ms"), 2),
                        TARGET_FRESHNESS_P99_MS,
                        verdict(pass),
                    );
                    if let Some(slow) = d["client"]["slow_probes"]["first"].as_array()
                        && !slow.is_empty()
                    {
                        let list: Vec<String> = slow
                            .iter()
                            .map(|p| {
                                format!(
                                    "{} ms at {} s",
                                    fmt_num(p["ms"].as_f64(), 0),
                                    fmt_num(p["at_s"].as_f64(), 2)
                                )
                            })
                            .collect();
                        let _ = writeln!(
                            md,
                            "\nProbes over {TARGET_FRESHNESS_P99_MS} ms: {} ({}; times from the first probe).",
                            fmt_num(gf("slow_probes"), 0),
                            list.join(", ")
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        md,
                        "| FAILED: {} | | | | | | | | | | | p99 ≤ 50 ms | n/a |",
                        e.lines().next().unwrap_or("")
                    );
                }
            }
        }
        if !self.server.live.is_empty() {
            let _ = writeln!(
                md,
                "\nLive ingest while the processor keeps up (`load --route batch --rate R`, {} s measured):\n",
                a.live_seconds
            );
            let _ = writeln!(
                md,
                "| Offered events/s | acked events/s | applied events/s | lag p50 / p99 / max (events) | drain after load s | unify thread busy | ingest p99 ms | errors | merge visible p50 / p99 / max ms (probes) |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---|---:|---:|---:|---:|---|");
            for (rate, r) in &self.server.live {
                match r {
                    Ok((f, _)) => {
                        let gl = |k| get(f, k);
                        let _ = writeln!(
                            md,
                            "| {} | {} | {} | {} / {} / {} | {} | {}% | {} | {} | {} |",
                            group_thousands(*rate as i64),
                            fmt_num(gl("acked_events_per_s"), 0),
                            fmt_num(gl("applied_events_per_s"), 0),
                            fmt_num(gl("lag_p50"), 0),
                            fmt_num(gl("lag_p99"), 0),
                            fmt_num(gl("lag_max"), 0),
                            fmt_num(gl("drain_s"), 2),
                            fmt_num(gl("unify_thread_cpu_share").map(|x| x * 100.0), 0),
                            fmt_num(gl("p99_ms"), 2),
                            fmt_num(gl("errors"), 0),
                            match gl("fresh_probes") {
                                Some(n) => format!(
                                    "{} / {} / {} ({}, {} failed)",
                                    fmt_num(gl("fresh_p50_ms"), 2),
                                    fmt_num(gl("fresh_p99_ms"), 2),
                                    fmt_num(gl("fresh_max_ms"), 2),
                                    fmt_num(Some(n), 0),
                                    fmt_num(gl("fresh_failures"), 0)
                                ),
                                None => "—".into(),
                            },
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(
                            md,
                            "| {} | FAILED: {} | | | | | | | |",
                            group_thousands(*rate as i64),
                            e.lines().next().unwrap_or("")
                        );
                    }
                }
            }
        }

        // Ratio to the ceiling.
        if let (Some(Ok(b)), Some(best)) = (self.baseline, self.best_memory_eps())
            && let Some(ceiling) = b["fx"]["events_per_s"].as_f64()
        {
            let _ = writeln!(
                md,
                "\nBest in-memory rebuild: {} events/s = {:.1}% of the union-find ceiling ({} events/s), {:.1}× slower.",
                group_thousands(best as i64),
                best / ceiling * 100.0,
                group_thousands(ceiling as i64),
                ceiling / best.max(1e-9)
            );
        }

        let _ = writeln!(md, "\nAll runs:\n");
        let digests: Vec<&str> = self
            .variants
            .iter()
            .flat_map(|v| v.runs.iter())
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|(_, d)| d["summary"]["digest"].as_str())
            .collect();
        if !digests.is_empty() {
            let same = digests.iter().all(|d| *d == digests[0]);
            let _ = writeln!(
                md,
                "- State digest: {} ({})",
                digests[0],
                if same {
                    "identical in every rebuild"
                } else {
                    "DIFFERS between rebuilds"
                }
            );
        }
        for v in self.variants {
            let _ = writeln!(md, "- {}", v.label());
            for (i, r) in v.runs.iter().enumerate() {
                match r {
                    Ok((f, _)) => {
                        let gf = |k| get(f, k);
                        let _ = writeln!(
                            md,
                            "  - run {}: {} s (wall {} s{}), {} events/s, peak RSS {} MiB, CPU-s main {} / reader {} / other {}{}; other processes {} CPU-s{}",
                            i + 1,
                            fmt_num(gf("seconds"), 2),
                            fmt_num(gf("wall_s"), 2),
                            match (gf("replay_s"), gf("store_write_s")) {
                                (Some(r), Some(w)) =>
                                    format!("; replay {r:.2} s, store write {w:.2} s"),
                                _ => String::new(),
                            },
                            fmt_num(gf("events_per_s"), 0),
                            fmt_num(gf("peak_rss_mib"), 0),
                            fmt_num(gf("main_cpu_s"), 2),
                            fmt_num(gf("reader_cpu_s"), 2),
                            fmt_num(gf("other_cpu_s"), 2),
                            match gf("state_bytes") {
                                Some(b) => format!(", state {} MB", fmt_num(Some(b / 1e6), 0)),
                                None => String::new(),
                            },
                            fmt_num(gf("others_cpu_s"), 2),
                            if noisy(f) { " (NOISY)" } else { "" },
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(
                            md,
                            "  - run {}: FAILED: {}",
                            i + 1,
                            e.lines().next().unwrap_or("")
                        );
                    }
                }
            }
        }
        if let Some(Ok((f, _))) = &self.server.stream {
            let gs = |k| get(f, k);
            let _ = writeln!(
                md,
                "- Streaming catch-up: first /metrics answer {} s after the start (applied {} by then), caught up {} s after the start ({} events/s from the start); median 1 s rate {} events/s; {} commits, {} s in commits (p50 ≤ {} ms, p99 ≤ {} ms); server CPU {} s, other processes {} CPU-s meanwhile{}; server peak RSS {} MiB; shutdown {} s",
                fmt_num(gs("startup_s"), 2),
                fmt_num(gs("applied_at_first_poll"), 0),
                fmt_num(gs("total_s"), 2),
                fmt_num(gs("events_per_s_from_start"), 0),
                fmt_num(gs("median_1s_events_per_s"), 0),
                fmt_num(gs("commits"), 0),
                fmt_num(gs("commit_seconds_total"), 2),
                fmt_num(gs("commit_p50_le_ms"), 1),
                fmt_num(gs("commit_p99_le_ms"), 1),
                fmt_num(gs("server_cpu_s"), 2),
                fmt_num(gs("others_cpu_s"), 2),
                if gs("others_cpu_s")
                    .zip(gs("catch_up_s"))
                    .is_some_and(|(o, t)| o > 0.1 * t)
                {
                    " (NOISY)"
                } else {
                    ""
                },
                fmt_num(gs("server_peak_rss_mib_end"), 0),
                fmt_num(gs("shutdown_s"), 2),
            );
        }
        for (rate, r) in &self.server.live {
            if let Ok((_, d)) = r
                && let Some(by_s) = d["max_lag_by_second"].as_array()
            {
                let list: Vec<String> = by_s.iter().map(|x| fmt_num(x.as_f64(), 0)).collect();
                let _ = writeln!(
                    md,
                    "- Live at {} events/s: max lag per second (events): {}",
                    group_thousands(*rate as i64),
                    list.join(" ")
                );
            }
        }
        let _ = writeln!(
            md,
            "\n\"seconds\" and events/s are `junction rebuild`'s own figures (replay, plus writing the store when durable); peak RSS is its VmHWM. \"state B/profile\" divides the store's size (fjall's `disk_space`, and `du` of `state/`) by the profiles. CPU-s are per thread, sampled from /proc every 10 ms: main = the applier, reader = `unify-reader` (log decode + JSON parse), other = the store's background threads. The baseline's figures are one union-find pass over identifiers extracted beforehand (keys borrowed from memory: no parsing, no allocation per identifier), its RSS the growth of the process during the pass. The catch-up rate counts events applied between the first answered `/metrics` poll and the one that saw `junction_unify_applied_offset` reach the log's end (polled every {} ms). Freshness is timed from the end of the identify's 200 to the end of the first Profile API response listing the user id (polls {} ms apart).",
            a.metrics_poll_ms, a.poll_ms
        );
        md
    }

    fn json(&self) -> Value {
        let runs = |runs: &[Outcome]| -> Vec<Value> {
            runs.iter()
                .map(|r| match r {
                    Ok((_, d)) => d.clone(),
                    Err(e) => json!({"error": e}),
                })
                .collect()
        };
        let one = |r: &Option<Outcome>| match r {
            Some(Ok((_, d))) => d.clone(),
            Some(Err(e)) => json!({"error": e}),
            None => Value::Null,
        };
        json!({
            "command": "unify-suite",
            "command_line": self.command_line,
            "machine": self.machine.to_json(),
            "junction_version": self.version,
            "started_at": self.started_at,
            "loadavg_at_start": self.loadavg,
            "pinned": self.pin,
            "data": {
                "events_file": self.data.set.events_file,
                "data_dir": self.data.set.data_dir,
                "generate": self.data.set.generate,
                "import": self.data.set.import,
                "extract": self.data.extract,
            },
            "baseline": match self.baseline {
                Some(Ok(v)) => v.clone(),
                Some(Err(e)) => json!({"error": e}),
                None => Value::Null,
            },
            "rebuilds": self.variants.iter().map(|v| json!({
                "durable": v.durable,
                "cpus": v.cpus,
                "median": figures_json(&medians(&v.runs)),
                "target_seconds": self.target_seconds(v.durable),
                "runs": runs(&v.runs),
            })).collect::<Vec<_>>(),
            "streaming": one(&self.server.stream),
            "freshness": one(&self.server.freshness),
            "live": self.server.live.iter().map(|(rate, r)| json!({
                "rate": rate,
                "result": match r { Ok((_, d)) => d.clone(), Err(e) => json!({"error": e}) },
            })).collect::<Vec<_>>(),
            "server_error": self.server.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_and_decodes_identifiers() {
        let chunk =
            br#"{"type":"identify","userId":"u1","anonymousId":"a1","traits":{"email":"e@x"}}
{"type":"track","anonymousId":"a2","context":{"traits":{"email":"e2@x"}}}
{"type":"alias","userId":"u1","previousId":"a3"}
{"type":"group","userId":7,"groupId":"g","traits":{"email":"billing@x"}}
not json
"#;
        let (enc, c) = encode_chunk(chunk);
        assert_eq!(c.events, 5);
        assert_eq!(c.bad, 1);
        assert_eq!(c.no_id, 1);
        let mut data = PAIRS_MAGIC.to_vec();
        data.extend_from_slice(&c.events.to_le_bytes());
        data.extend_from_slice(&enc);
        let p = decode_pairs(&data).unwrap();
        let ev = |i: usize| -> Vec<&[u8]> {
            let start = if i == 0 { 0 } else { p.ends[i - 1] as usize };
            p.ids[start..p.ends[i] as usize].to_vec()
        };
        assert_eq!(ev(0), [&b"uu1"[..], b"aa1", b"ee@x"]);
        assert_eq!(ev(1), [&b"aa2"[..], b"ee2@x"]);
        assert_eq!(ev(2), [&b"uu1"[..], b"aa3"]);
        assert_eq!(ev(3), [&b"u7"[..]]);
        assert!(ev(4).is_empty());
    }

    #[test]
    fn union_find_counts_merges_like_the_graph() {
        // a1 alone; u1 alone; identify(u1, a1) merges them; a2 joins u1 without a merge.
        let ids: Vec<&[u8]> = vec![b"aa1", b"uu1", b"uu1", b"aa1", b"uu1", b"aa2", b"aa9"];
        let pairs = Pairs {
            ids,
            ends: vec![1, 2, 4, 6, 6, 7],
        };
        for r in [
            union_find::<BuildHasherDefault<FxHasher>>(&pairs),
            union_find::<RandomState>(&pairs),
        ] {
            assert_eq!(r.events, 6);
            assert_eq!(r.merges, 1);
            assert_eq!(r.unresolved, 1);
            assert_eq!(r.identifiers, 4);
            assert_eq!(r.sets_created - r.merges, 2);
        }
    }

    #[test]
    fn fx_hash_differs_by_content() {
        let h = |b: &[u8]| {
            let mut x = FxHasher::default();
            x.write(b);
            x.finish()
        };
        assert_ne!(h(b"anonymous_id-1"), h(b"anonymous_id-2"));
        assert_eq!(h(b"abc"), h(b"abc"));
    }

    #[test]
    fn config_parses_as_toml_shape() {
        let c = config_text();
        assert!(c.contains("workspace = \"bench\""));
        assert_eq!(c.matches("profiles:read").count(), PROFILE_TOKENS);
    }
}
