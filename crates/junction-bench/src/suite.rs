//! `ingest-suite`: the one command behind the ingest table of BENCHMARKS.md.
//!
//! Contract: prints the machine and the exact command line; measures the disk's fsync ceiling
//! (baseline); then, for every scenario and every run, starts a fresh `junction serve` (a private
//! copy of the binary taken at start, fresh data dir, generated config, pinned with `taskset` to
//! `--server-cpu`), waits for `GET /ready` = 200, runs `junction-bench load` as a child process pinned to `--load-cpu`, and collects from the
//! server: CPU seconds (`/proc/PID/stat` delta over the load ÷ acknowledged events), peak RSS
//! (`VmHWM`), frame bytes written and fdatasync count from `/metrics` when present, and, after a
//! SIGTERM shutdown, the used and apparent bytes of the data dir's `log/` per acknowledged
//! event. Scenarios: (a) `/v1/batch` on a server started with `--bench-discard` (parses and
//! answers, stores nothing): the HTTP baseline; (b) durable `/v1/batch`, closed loop; (c) durable
//! `/v1/batch`, open loop at `--rate`; (d) durable single-event `/v1/track`, closed loop. A run
//! that fails is reported with its reason and the suite goes on. Prints medians and every run as
//! a Markdown table (also written to `--markdown FILE`), or one JSON object with `--json`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::load::client::{self, Target};
use crate::stats::{median, round3};
use crate::sysinfo::{self, Machine};

pub const WRITE_KEY: &str = "wk_bench";
/// The server's counter of event-frame bytes written to the log.
const WRITTEN_METRIC: &str = "junction_ingest_bytes_total";
const ADMIN_TOKEN: &str = "tok_admin_bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioId {
    /// (a) /v1/batch answered without storing (`--bench-discard`).
    Discard,
    /// (b) durable /v1/batch, closed loop.
    Durable,
    /// (c) durable /v1/batch, open loop at --rate.
    Open,
    /// (d) durable single-event /v1/track, closed loop.
    Track,
}

#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Path to the `junction` binary under test.
    #[arg(long)]
    pub junction: PathBuf,
    /// Runs per scenario, each with a fresh server and data dir.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 15.0)]
    pub seconds: f64,
    /// Warm-up seconds per run (load sent, not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds per group size of the fsync baseline (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    pub fsync_seconds: f64,
    /// Where data dirs are created (default: the system temp dir). Use the disk under test.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Offered load of the open-loop scenario, events/s.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// Connections of the closed-loop /v1/batch scenarios.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Connections of the single-event /v1/track scenario. Each durable request waits for
    /// the commit in progress plus its own fdatasync (~1 ms), so by Little's law 40k req/s
    /// needs ≥ 40 requests in flight: 32 connections cap it near 32k whatever the server.
    #[arg(long, default_value_t = 64)]
    pub track_connections: usize,
    /// Events per /v1/batch request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "discard,durable,open,track"
    )]
    pub scenarios: Vec<ScenarioId>,
    /// CPU list for the server (taskset -c).
    #[arg(long, default_value = "0")]
    pub server_cpu: String,
    /// CPU list for the load generator (taskset -c).
    #[arg(long, default_value = "1")]
    pub load_cpu: String,
    /// Don't pin processes with taskset.
    #[arg(long)]
    pub no_pin: bool,
    /// Seconds to wait for GET /ready = 200.
    #[arg(long, default_value_t = 30.0)]
    pub ready_timeout: f64,
    /// Keep data dirs and server logs.
    #[arg(long)]
    pub keep_data: bool,
    /// Also write the Markdown report to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

struct Scenario {
    id: ScenarioId,
    label: &'static str,
    discard: bool,
    route: &'static str,
    rate: Option<f64>,
    target: &'static str,
}

fn scenario(id: ScenarioId, rate: f64) -> Scenario {
    match id {
        ScenarioId::Discard => Scenario {
            id,
            label: "(a) /v1/batch, --bench-discard (HTTP + parse baseline, no storage), closed loop",
            discard: true,
            route: "batch",
            rate: None,
            target: "baseline",
        },
        ScenarioId::Durable => Scenario {
            id,
            label: "(b) /v1/batch durable, closed loop",
            discard: false,
            route: "batch",
            rate: None,
            target: ">= 250k events/s",
        },
        ScenarioId::Open => Scenario {
            id,
            label: "(c) /v1/batch durable, open loop",
            discard: false,
            route: "batch",
            rate: Some(rate),
            target: "p50 <= 1 ms, p99 <= 3 ms, p99.9 <= 10 ms",
        },
        ScenarioId::Track => Scenario {
            id,
            label: "(d) /v1/track durable (1 event/request), closed loop",
            discard: false,
            route: "track",
            rate: None,
            target: ">= 40k requests/s, p99 <= 5 ms",
        },
    }
}

/// Numbers of one run, keyed for medians; absent keys were not measurable.
type Figures = Vec<(&'static str, f64)>;

struct RunOutcome {
    figures: Figures,
    detail: Value,
}

pub fn run(args: &SuiteArgs) -> Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let original = fs::canonicalize(&args.junction)
        .with_context(|| format!("junction binary {} not found", args.junction.display()))?;
    let machine = Machine::read();
    let command_line = shell_line(std::env::args());
    let pin =
        !args.no_pin && machine.nproc >= 2 && Command::new("taskset").arg("-V").output().is_ok();
    let root = args
        .data_root
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("junction-bench-suite-{}", std::process::id()));
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Every run uses this copy, so a rebuild of the original during the suite changes nothing.
    let junction = root.join("junction");
    fs::copy(&original, &junction)
        .with_context(|| format!("copying {} to {}", original.display(), junction.display()))?;
    let config = root.join("junction.toml");
    fs::write(
        &config,
        format!(
            "version = 1\n\n[[sources]]\nname = \"bench\"\nwrite_key = \"{WRITE_KEY}\"\n\n[[tokens]]\nname = \"admin\"\nsecret = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]\n"
        ),
    )?;
    let RunStart {
        loadavg,
        version,
        started_at,
    } = RunStart::read(&junction, &machine, &command_line, pin, args.json);
    let progress = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };

    let self_exe = std::env::current_exe().context("locating junction-bench itself")?;
    let fsync = if args.fsync_seconds > 0.0 {
        progress("fsync ceiling ...");
        let mut cmd = pinned(pin, &args.server_cpu, &self_exe);
        cmd.args(["fsync-ceiling", "--dir"]).arg(&root);
        cmd.args([
            "--seconds",
            &args.fsync_seconds.to_string(),
            "--batch",
            &args.batch.to_string(),
            "--json",
        ]);
        match run_json(cmd) {
            Ok(v) => Some(v),
            Err(e) => {
                progress(&format!("  fsync ceiling failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let ticks = sysinfo::clock_ticks();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<(Scenario, Vec<Result<RunOutcome, String>>)> = Vec::new();
    for &id in &args.scenarios {
        let sc = scenario(id, args.rate);
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            progress(&format!("{} — run {run}/{} ...", sc.label, args.runs));
            let dir = root.join(format!("{}-{run}", name(id)));
            let ctx = RunCtx {
                args,
                sc: &sc,
                run,
                dir: &dir,
                config: &config,
                junction: &junction,
                self_exe: &self_exe,
                pin,
                ticks,
                rt: &rt,
            };
            let outcome = ctx.execute().map_err(|e| format!("{e:#}"));
            match &outcome {
                Ok(o) => progress(&format!("  {}", short(&o.figures))),
                Err(e) => progress(&format!("  FAILED: {e}")),
            }
            if !args.keep_data {
                let _ = fs::remove_dir_all(&dir);
            }
            runs.push(outcome);
        }
        results.push((sc, runs));
    }
    if !args.keep_data {
        let _ = fs::remove_dir_all(&root);
    }

    let header = Header {
        machine: &machine,
        command_line: &command_line,
        version: version.as_deref(),
        loadavg: loadavg.trim(),
        started_at: &started_at,
        pin,
        args,
    };
    let markdown = render_markdown(&header, fsync.as_ref(), &results);
    if let Some(path) = &args.markdown {
        fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let scenarios: Vec<Value> = results
            .iter()
            .map(|(sc, runs)| {
                json!({
                    "scenario": name(sc.id),
                    "label": sc.label,
                    "target": sc.target,
                    "median": medians(runs).into_iter().map(|(k, v)| (k.to_string(), json!(round3(v)))).collect::<serde_json::Map<_, _>>(),
                    "runs": runs.iter().map(|r| match r {
                        Ok(o) => o.detail.clone(),
                        Err(e) => json!({ "error": e }),
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "command": "ingest-suite",
                "command_line": command_line,
                "machine": machine.to_json(),
                "junction_version": version,
                "started_at": started_at,
                "loadavg_at_start": loadavg.trim(),
                "pinned": pin,
                "fsync_ceiling": fsync,
                "scenarios": scenarios,
            })
        );
    } else {
        print!("{markdown}");
    }
    Ok(())
}

struct RunCtx<'a> {
    args: &'a SuiteArgs,
    sc: &'a Scenario,
    run: usize,
    dir: &'a Path,
    config: &'a Path,
    junction: &'a Path,
    self_exe: &'a Path,
    pin: bool,
    ticks: f64,
    rt: &'a tokio::runtime::Runtime,
}

impl RunCtx<'_> {
    fn execute(&self) -> Result<RunOutcome> {
        let _ = fs::remove_dir_all(self.dir);
        let data = self.dir.join("data");
        fs::create_dir_all(self.dir)?;
        let log_path = self.dir.join("server.log");
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = pinned(self.pin, &self.args.server_cpu, self.junction);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &listen])
            .arg("--config")
            .arg(self.config);
        if self.sc.discard {
            cmd.arg("--bench-discard");
        }
        let log = fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut server = Server {
            child: cmd.spawn().context("starting junction")?,
            log: log_path.clone(),
        };
        let pid = server.child.id();
        let target = Target::parse(&format!("http://{listen}"), WRITE_KEY)?;
        server.wait_ready(
            self.rt,
            &target,
            Duration::from_secs_f64(self.args.ready_timeout),
        )?;

        let cpu_before = sysinfo::cpu_seconds(pid, self.ticks);
        let busy_before = sysinfo::machine_busy_seconds(self.ticks);
        let mut load = pinned(self.pin, &self.args.load_cpu, self.self_exe);
        load.args([
            "load",
            "--url",
            &format!("http://{listen}"),
            "--write-key",
            WRITE_KEY,
            "--route",
            self.sc.route,
        ]);
        let connections = if self.sc.route == "track" {
            self.args.track_connections
        } else {
            self.args.connections
        };
        load.args([
            "--batch",
            &self.args.batch.to_string(),
            "--connections",
            &connections.to_string(),
        ]);
        load.args([
            "--seconds",
            &self.args.seconds.to_string(),
            "--warmup",
            &self.args.warmup.to_string(),
        ]);
        load.args(["--seed", &self.run.to_string(), "--json"]);
        if let Some(rate) = self.sc.rate {
            load.args(["--rate", &rate.to_string()]);
        }
        let load_result = run_json(load);
        let cpu_after = sysinfo::cpu_seconds(pid, self.ticks);
        let busy_after = sysinfo::machine_busy_seconds(self.ticks);
        let hwm_kib = sysinfo::vm_kib(pid, "VmHWM");
        let rss_kib = sysinfo::vm_kib(pid, "VmRSS");
        let metrics = self
            .rt
            .block_on(client::get(&target, "/metrics"))
            .ok()
            .filter(|(s, _)| *s == 200);
        let metrics_text = metrics
            .as_ref()
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned());
        let metric = |name: &str| {
            metrics_text
                .as_deref()
                .and_then(|t| prometheus_sum(t, name))
        };
        let written = metric(WRITTEN_METRIC).map(|v| (WRITTEN_METRIC, v));
        let fsyncs = metric("junction_log_fsync_seconds_count");
        let stored = metric("junction_log_appended_events_total");
        let quantile = |name: &str, q: f64| {
            metrics_text
                .as_deref()
                .and_then(|t| prometheus_quantile(t, name, q))
        };
        if let Some(t) = &metrics_text {
            let _ = fs::write(self.dir.join("metrics.txt"), t);
        }
        let (exit, shutdown_secs) = server.stop();
        let load = load_result.with_context(|| {
            format!(
                "load generator failed; server log tail:\n{}",
                tail(&server.log)
            )
        })?;

        let acked = load["total_ok_events"].as_f64().unwrap_or(0.0);
        let lat = &load["latency"];
        let mut figures: Figures = vec![
            ("events_per_s", load["events_per_s"].as_f64().unwrap_or(0.0)),
            (
                "requests_per_s",
                load["requests_per_s"].as_f64().unwrap_or(0.0),
            ),
            ("p50_ms", lat["p50_ms"].as_f64().unwrap_or(0.0)),
            ("p99_ms", lat["p99_ms"].as_f64().unwrap_or(0.0)),
            ("p999_ms", lat["p999_ms"].as_f64().unwrap_or(0.0)),
            ("max_ms", lat["max_ms"].as_f64().unwrap_or(0.0)),
            ("errors", load["errors"].as_f64().unwrap_or(0.0)),
        ];
        if let Some(u) = load["unfinished"].as_f64() {
            // Open loop: requests still unanswered 10 s after the end (their latency is unknown).
            figures.push(("unfinished", u));
        }
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            figures.push(("server_cpu_s", b - a));
            if acked > 0.0 {
                figures.push(("cpu_s_per_m_events", (b - a) / acked * 1e6));
            }
        }
        if let Some(client) = load["client_cpu_s"].as_f64() {
            figures.push(("client_cpu_s", client));
            // Noise: CPU time used by anything but the server and the load generator.
            if let (Some(a), Some(b), Some(c), Some(d)) =
                (cpu_before, cpu_after, busy_before, busy_after)
            {
                figures.push(("other_cpu_s", ((d - c) - (b - a) - client).max(0.0)));
            }
        }
        if let Some(h) = hwm_kib {
            figures.push(("peak_rss_mib", h as f64 / 1024.0));
        }
        let log_dir = data.join("log");
        let usage = log_dir.exists().then(|| sysinfo::disk_usage(&log_dir));
        if !self.sc.discard && acked > 0.0 {
            if let Some(u) = usage {
                figures.push(("disk_used_b_per_event", u.used_bytes as f64 / acked));
                figures.push(("disk_apparent_b_per_event", u.apparent_bytes as f64 / acked));
            }
            if let Some((_, w)) = written {
                figures.push(("written_b_per_event", w / acked));
            }
            if let Some(n) = fsyncs.filter(|&n| n > 0.0) {
                figures.push(("events_per_fsync", acked / n));
            }
        }
        for (key, name, q) in [
            ("server_fsync_p50_le_ms", "junction_log_fsync_seconds", 0.5),
            ("server_fsync_p99_le_ms", "junction_log_fsync_seconds", 0.99),
            ("server_store_p99_le_ms", "junction_store_seconds", 0.99),
        ] {
            if let Some(v) = quantile(name, q).filter(|v| v.is_finite()) {
                figures.push((key, v * 1e3));
            }
        }
        if let Some(s) = shutdown_secs {
            figures.push(("shutdown_s", s));
        }
        let detail = json!({
            "run": self.run,
            "figures": figures.iter().map(|(k, v)| (k.to_string(), json!(round3(*v)))).collect::<serde_json::Map<_, _>>(),
            "load": load,
            "acked_events": acked,
            "server": {
                "pid": pid,
                "vm_hwm_kib": hwm_kib,
                "vm_rss_kib_after_load": rss_kib,
                "written_bytes_metric": written.map(|w| w.0),
                "written_bytes": written.map(|w| w.1),
                "log_fsyncs": fsyncs,
                "log_appended_events": stored,
                "dedup_entries": metric("junction_dedup_entries"),
                "log_dir_used_bytes": usage.map(|u| u.used_bytes),
                "log_dir_apparent_bytes": usage.map(|u| u.apparent_bytes),
                "log_dir_files": usage.map(|u| u.files),
                "exit_code": exit,
                "shutdown_seconds": shutdown_secs.map(round3),
            },
        });
        if exit != Some(0) {
            // Not fatal for the figures, but worth seeing.
            eprintln!(
                "  note: server exit status {exit:?} after SIGTERM; log tail:\n{}",
                tail(&server.log)
            );
        }
        Ok(RunOutcome { figures, detail })
    }
}

/// The server process; killed on drop if still running.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Server {
    fn wait_ready(
        &mut self,
        rt: &tokio::runtime::Runtime,
        target: &Target,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "junction exited during start-up ({status}); log tail:\n{}",
                    tail(&self.log)
                );
            }
            match rt.block_on(client::get(target, "/ready")) {
                Ok((200, _)) => return Ok(()),
                Ok((s, body)) => last = format!("status {s}: {}", String::from_utf8_lossy(&body)),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "GET /ready did not answer 200 within {timeout:?} (last: {last}); log tail:\n{}",
            tail(&self.log)
        )
    }

    /// SIGTERM, then wait up to 30 s. Returns the exit code and the shutdown time.
    pub(crate) fn stop(&mut self) -> (Option<i32>, Option<f64>) {
        let t = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return (status.code(), Some(t.elapsed().as_secs_f64()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        eprintln!("  note: junction did not exit within 30 s of SIGTERM; killed");
        (status.and_then(|s| s.code()), None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn pinned(pin: bool, cpus: &str, program: &Path) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", cpus]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs a `--json` subcommand and parses the last line of its stdout.
pub(crate) fn run_json(mut cmd: Command) -> Result<Value> {
    let out = cmd.stdin(Stdio::null()).output().context("spawning")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            cmd.get_program().to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("no output")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sum of every sample of metric `name` in Prometheus text format.
pub(crate) fn prometheus_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next();
        if let Some(v) = value.and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Upper bound (`le`) of the bucket holding quantile `q` of Prometheus histogram `name`
/// (all label sets summed); `None` when absent or empty.
pub(crate) fn prometheus_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le_start) = line.find("le=\"") else {
            continue;
        };
        let rest = &line[le_start + 4..];
        let Some(le_end) = rest.find('"') else {
            continue;
        };
        let le = match &rest[..le_end] {
            "+Inf" => f64::INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let Some(count) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(slot) => slot.1 += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

pub(crate) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub(crate) fn shell_line(args: impl Iterator<Item = String>) -> String {
    args.map(|a| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}

fn name(id: ScenarioId) -> &'static str {
    match id {
        ScenarioId::Discard => "discard",
        ScenarioId::Durable => "durable",
        ScenarioId::Open => "open",
        ScenarioId::Track => "track",
    }
}

fn get(f: &Figures, key: &str) -> Option<f64> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn medians(runs: &[Result<RunOutcome, String>]) -> Figures {
    let ok: Vec<&Figures> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|o| &o.figures)
        .collect();
    median_figures(&ok)
}

/// Per figure of the first run, the median over every run that has it.
pub(crate) fn median_figures(ok: &[&Figures]) -> Figures {
    let Some(first) = ok.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter_map(|(k, _)| {
            let values: Vec<f64> = ok.iter().filter_map(|f| get(f, k)).collect();
            median(&values).map(|m| (*k, m))
        })
        .collect()
}

fn short(f: &Figures) -> String {
    let g = |k| get(f, k).unwrap_or(f64::NAN);
    format!(
        "{:.0} events/s, {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, errors {:.0}",
        g("events_per_s"),
        g("requests_per_s"),
        g("p50_ms"),
        g("p99_ms"),
        g("p999_ms"),
        g("errors")
    )
}

struct Header<'a> {
    machine: &'a Machine,
    command_line: &'a str,
    version: Option<&'a str>,
    loadavg: &'a str,
    started_at: &'a str,
    pin: bool,
    args: &'a SuiteArgs,
}

fn verdict(id: ScenarioId, m: &Figures) -> &'static str {
    let g = |k| get(m, k);
    let pass = match id {
        ScenarioId::Discard => return "—",
        ScenarioId::Durable => g("events_per_s").map(|v| v >= 250_000.0),
        ScenarioId::Open => match (g("p50_ms"), g("p99_ms"), g("p999_ms"), g("errors")) {
            (Some(a), Some(b), Some(c), Some(e)) => Some(
                a <= 1.0
                    && b <= 3.0
                    && c <= 10.0
                    && e == 0.0
                    && g("unfinished").unwrap_or(0.0) == 0.0,
            ),
            _ => None,
        },
        ScenarioId::Track => match (g("requests_per_s"), g("p99_ms")) {
            (Some(r), Some(p)) => Some(r >= 40_000.0 && p <= 5.0),
            _ => None,
        },
    };
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

/// Whether other processes took more than 10% of one CPU during the run.
fn noisy(f: &Figures, a: &SuiteArgs) -> bool {
    get(f, "other_cpu_s").is_some_and(|o| o > 0.1 * (a.seconds + a.warmup))
}

pub(crate) fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => "—".into(),
        Some(v) if decimals == 0 => group_thousands(v.round() as i64),
        Some(v) => format!("{v:.decimals$}"),
    }
}

pub(crate) fn group_thousands(v: i64) -> String {
    let s = v.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

fn render_markdown(
    h: &Header<'_>,
    fsync: Option<&Value>,
    results: &[(Scenario, Vec<Result<RunOutcome, String>>)],
) -> String {
    let a = h.args;
    let mut md = String::new();
    let _ = writeln!(md, "## Ingest ({})\n", h.started_at);
    let _ = writeln!(md, "- Machine: {}", h.machine.line());
    let _ = writeln!(md, "- Load average at start: {}", h.loadavg);
    let _ = writeln!(
        md,
        "- junction: {}",
        h.version
            .filter(|v| !v.is_empty())
            .unwrap_or("(no --version output)")
    );
    let _ = writeln!(
        md,
        "- Pinning: {}",
        if h.pin {
            format!(
                "server `taskset -c {}`, load generator `taskset -c {}`",
                a.server_cpu, a.load_cpu
            )
        } else {
            "none".into()
        }
    );
    let _ = writeln!(
        md,
        "- Each scenario: {} run(s), fresh server and data dir, {} s measured after {} s warm-up; {} connections ({} for /v1/track), {} events per batch; medians shown",
        a.runs, a.seconds, a.warmup, a.connections, a.track_connections, a.batch
    );
    let _ = writeln!(md, "- Command: `{}`\n", h.command_line);

    let _ = writeln!(
        md,
        "| Scenario | events/s | requests/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU-s / M events | peak RSS MiB | log B/event (used / apparent / written) | target | verdict |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
    );
    if let Some(f) = fsync {
        for r in f["results"].as_array().into_iter().flatten() {
            let fd = &r["fdatasync"];
            let _ = writeln!(
                md,
                "| fsync ceiling: append {} batch(es) of {} events, then fdatasync (1 thread) | {} | {} fdatasync/s | {} | {} | {} | — | — | — | — | ceiling | — |",
                r["batches_per_fdatasync"],
                f["batch"],
                fmt_num(r["events_per_s"].as_f64(), 0),
                fmt_num(r["fdatasync_per_s"].as_f64(), 0),
                fmt_num(fd["p50_ms"].as_f64(), 3),
                fmt_num(fd["p99_ms"].as_f64(), 3),
                fmt_num(fd["p999_ms"].as_f64(), 3),
            );
        }
    }
    for (sc, runs) in results {
        let m = medians(runs);
        let failed = runs.iter().filter(|r| r.is_err()).count();
        let g = |k| get(&m, k);
        let label = match sc.rate {
            Some(rate) => format!(
                "{} at {} events/s offered",
                sc.label,
                group_thousands(rate as i64)
            ),
            None => sc.label.to_string(),
        };
        let label = if failed > 0 {
            format!("{label} ({failed} of {} runs failed)", runs.len())
        } else {
            label
        };
        let noisy_runs = runs
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|o| noisy(&o.figures, a)))
            .count();
        let label = if noisy_runs > 0 {
            format!("{label} ({noisy_runs} noisy)")
        } else {
            label
        };
        let disk = if sc.discard {
            "—".to_string()
        } else {
            format!(
                "{} / {} / {}",
                fmt_num(g("disk_used_b_per_event"), 0),
                fmt_num(g("disk_apparent_b_per_event"), 0),
                fmt_num(g("written_b_per_event"), 0)
            )
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {disk} | {} | {} |",
            fmt_num(g("events_per_s"), 0),
            fmt_num(g("requests_per_s"), 0),
            fmt_num(g("p50_ms"), 3),
            fmt_num(g("p99_ms"), 3),
            fmt_num(g("p999_ms"), 3),
            fmt_num(g("errors"), 0),
            fmt_num(g("cpu_s_per_m_events"), 2),
            fmt_num(g("peak_rss_mib"), 1),
            sc.target,
            if m.is_empty() {
                "n/a"
            } else {
                verdict(sc.id, &m)
            },
        );
    }
    let _ = writeln!(md, "\nAll runs:\n");
    for (sc, runs) in results {
        let _ = writeln!(md, "- {}", sc.label);
        for (i, r) in runs.iter().enumerate() {
            match r {
                Ok(o) => {
                    let f = &o.figures;
                    let g = |k| get(f, k);
                    let _ = writeln!(
                        md,
                        "  - run {}: {} events/s, {} req/s, p50 {} / p99 {} / p99.9 {} / max {} ms, errors {}, CPU-s/M events {}, peak RSS {} MiB, log B/event {} used / {} apparent / {} written, {} events/fdatasync, shutdown {} s; CPU-s server {} / load generator {} / other processes {}",
                        i + 1,
                        fmt_num(g("events_per_s"), 0),
                        fmt_num(g("requests_per_s"), 0),
                        fmt_num(g("p50_ms"), 3),
                        fmt_num(g("p99_ms"), 3),
                        fmt_num(g("p999_ms"), 3),
                        fmt_num(g("max_ms"), 3),
                        fmt_num(g("errors"), 0),
                        fmt_num(g("cpu_s_per_m_events"), 2),
                        fmt_num(g("peak_rss_mib"), 1),
                        fmt_num(g("disk_used_b_per_event"), 0),
                        fmt_num(g("disk_apparent_b_per_event"), 0),
                        fmt_num(g("written_b_per_event"), 0),
                        fmt_num(g("events_per_fsync"), 1),
                        fmt_num(g("shutdown_s"), 2),
                        fmt_num(g("server_cpu_s"), 2),
                        fmt_num(g("client_cpu_s"), 2),
                        fmt_num(g("other_cpu_s"), 2),
                    );
                    if noisy(f, a) {
                        let _ =
                            writeln!(md, "    - NOISY: other processes were busy during this run");
                    }
                    if let (Some(u), Some(offered)) = (
                        g("unfinished"),
                        o.detail["load"]["offered_events_per_s"].as_f64(),
                    ) {
                        let _ = writeln!(
                            md,
                            "    - offered {} events/s; {} request(s) unfinished; load generator's dispatch lag p99 {} ms",
                            fmt_num(Some(offered), 0),
                            fmt_num(Some(u), 0),
                            fmt_num(o.detail["load"]["dispatch_lag"]["p99_ms"].as_f64(), 3)
                        );
                    }
                    if g("server_fsync_p99_le_ms").is_some() {
                        let _ = writeln!(
                            md,
                            "    - server histograms: fdatasync p50 <= {} ms, p99 <= {} ms; store (dedup + durable append) p99 <= {} ms",
                            fmt_num(g("server_fsync_p50_le_ms"), 3),
                            fmt_num(g("server_fsync_p99_le_ms"), 3),
                            fmt_num(g("server_store_p99_le_ms"), 3)
                        );
                    }
                    if let Some(by_second) = o.detail["load"]["max_ms_by_second"].as_array() {
                        let list: Vec<String> =
                            by_second.iter().map(|x| fmt_num(x.as_f64(), 1)).collect();
                        let _ =
                            writeln!(md, "    - max latency per second (ms): {}", list.join(" "));
                    }
                    let status = &o.detail["load"]["status"];
                    if o.detail["load"]["errors"].as_f64().unwrap_or(0.0) > 0.0 {
                        let _ = writeln!(
                            md,
                            "    - statuses {status}, transport errors {}, timeouts {}",
                            o.detail["load"]["transport_errors"], o.detail["load"]["timeouts"]
                        );
                    }
                }
                Err(e) => {
                    let first = e.lines().next().unwrap_or("");
                    let _ = writeln!(md, "  - run {}: FAILED: {first}", i + 1);
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\nLatency is measured by the client from the request's send time (closed loop) or intended send time (open loop) to the end of the response. \"used\" is the log directory's allocated blocks (preallocated segments count in full), \"apparent\" its file sizes, \"written\" the frame bytes counted by `junction_ingest_bytes_total` from /metrics; events/fdatasync divides acknowledged events by `junction_log_fsync_seconds_count`; all are divided by the events acknowledged with 200 over the whole run, warm-up included, as is server CPU time. \"other processes\" is the machine's busy CPU time during the load minus the server's and the load generator's: interference from the rest of the machine; a run where it exceeds 10% of one CPU is marked noisy."
    );
    md
}

/// What a suite records when it starts, after printing the machine, the command and the load.
pub(crate) struct RunStart {
    pub loadavg: String,
    pub version: Option<String>,
    pub started_at: String,
}

impl RunStart {
    pub(crate) fn read(
        junction: &std::path::Path,
        machine: &Machine,
        command_line: &str,
        pin: bool,
        quiet: bool,
    ) -> RunStart {
        let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let version = Command::new(junction)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if !quiet {
            eprintln!("machine: {}", machine.line());
            eprintln!("command: {command_line}");
            eprintln!("load average at start: {}", loadavg.trim());
            if !pin {
                eprintln!(
                    "warning: not pinning processes (taskset missing, --no-pin, or a single CPU)"
                );
            }
        }
        RunStart {
            loadavg,
            version,
            started_at: crate::timefmt::Rfc3339Millis(crate::timefmt::now_millis()).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_prometheus_samples() {
        let text = "# HELP x\n# TYPE junction_log_written_bytes_total counter\njunction_log_written_bytes_total 1200\njunction_log_written_bytes_total{segment=\"2\"} 34\njunction_log_written_bytes_totalx 9\n";
        assert_eq!(
            prometheus_sum(text, "junction_log_written_bytes_total"),
            Some(1234.0)
        );
        assert_eq!(prometheus_sum(text, "missing"), None);
    }

    #[test]
    fn histogram_quantiles() {
        let text = "h_bucket{le=\"0.001\"} 50\nh_bucket{le=\"0.01\"} 98\nh_bucket{le=\"0.1\"} 100\nh_bucket{le=\"+Inf\"} 100\nh_sum 1\nh_count 100\n";
        assert_eq!(prometheus_quantile(text, "h", 0.5), Some(0.001));
        assert_eq!(prometheus_quantile(text, "h", 0.99), Some(0.1));
        assert_eq!(prometheus_quantile(text, "missing", 0.5), None);
    }

    #[test]
    fn quotes_command_lines() {
        assert_eq!(
            shell_line(["a".to_string(), "b c".into(), "it's".into()].into_iter()),
            "a 'b c' 'it'\\''s'"
        );
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(999), "999");
    }
}
