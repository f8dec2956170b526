//! `load`: an HTTP load generator for the tracking API, closed or open loop.
//!
//! Contract: request bodies are generated before timing ([`bodies`]); each worker owns one
//! HTTP/1.1 keep-alive connection ([`client`]). Closed loop (no `--rate`): `--connections`
//! workers send back-to-back. Open loop (`--rate` events/s): requests are scheduled at fixed
//! intervals by a dedicated thread whatever the responses, handed to idle workers, and a new
//! connection is opened whenever none is idle (so the schedule never waits on the server);
//! latency is measured from the *intended* send time (no coordinated omission). Only requests
//! completed (closed) or scheduled (open) after `--warmup` and before its end are measured;
//! status counts cover the whole run. A 200 counts as success; any other status or a transport
//! error is an error. Prints text, or one JSON object with `--json`.

mod bodies;
pub mod client;
mod closed;
mod open;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::stats::{Samples, round3};
use bodies::BodyPool;
use client::{Outcome, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Route {
    /// `POST /v1/batch` with `--batch` events per request.
    Batch,
    /// `POST /v1/track` with one event per request.
    Track,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8088
    #[arg(long)]
    pub url: String,
    /// Source write key (sent as Basic auth username).
    #[arg(long)]
    pub write_key: String,
    #[arg(long, value_enum, default_value_t = Route::Batch)]
    pub route: Route,
    /// Events per `/v1/batch` request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Connections (closed loop: concurrent senders; open loop: pre-opened pool).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Open loop only: upper bound on connections opened to keep up with the schedule.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Warm-up seconds, sent but not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Open loop: offered load in events per second. Without it the loop is closed.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of the generated events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of events that repeat an earlier messageId (exercises dedup).
    #[arg(long, default_value_t = 0.0)]
    pub dup_fraction: f64,
    /// Events generated up front (bodies are reused with fresh messageIds).
    #[arg(long, default_value_t = 50_000)]
    pub pool_events: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Shared, read-only state of a run.
pub(crate) struct Ctx {
    pub target: Target,
    pub path: String,
    pub pool: BodyPool,
    pub timeout: Duration,
}

/// The measurement window.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub start: Instant,
    pub end: Instant,
}

/// What one worker saw.
#[derive(Default)]
pub(crate) struct WorkerStats {
    pub latency: Samples,
    pub window_requests: u64,
    pub window_events: u64,
    pub total_ok_events: u64,
    pub total_requests: u64,
    pub status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub timeouts: u64,
    pub rejected: u64,
    pub connects: u64,
    /// The slowest measured requests: (latency ns, start in seconds after the window opened).
    pub slowest: Vec<(u64, f64)>,
    /// Highest latency (ns) of the requests started in each second of the window.
    pub max_by_second: Vec<u64>,
}

const SLOWEST: usize = 10;

fn keep_slowest(list: &mut Vec<(u64, f64)>, item: (u64, f64)) {
    if list.len() < SLOWEST || item.0 > list[list.len() - 1].0 {
        let pos = list.partition_point(|x| x.0 >= item.0);
        list.insert(pos, item);
        list.truncate(SLOWEST);
    }
}

impl WorkerStats {
    /// Sends `body` on `*conn` within the request timeout. A transport error or a timeout is
    /// counted and drops the connection; a response comes back with its completion time.
    /// Without a connection nothing is sent.
    pub(crate) async fn send(
        &mut self,
        ctx: &Ctx,
        conn: &mut Option<client::Conn>,
        body: bytes::Bytes,
    ) -> Option<(Outcome, Instant)> {
        let c = conn.as_mut()?;
        match tokio::time::timeout(ctx.timeout, c.send(&ctx.target, &ctx.path, body)).await {
            Ok(Ok(outcome)) => Some((outcome, Instant::now())),
            Ok(Err(_)) => {
                self.transport_errors += 1;
                *conn = None;
                None
            }
            Err(_) => {
                self.timeouts += 1;
                *conn = None;
                None
            }
        }
    }

    /// Records a finished request. `measured` says whether its latency belongs to the window;
    /// `done` is when it completed (for throughput).
    pub fn finish(
        &mut self,
        outcome: Outcome,
        events: u64,
        latency: Duration,
        measured: bool,
        done: Instant,
        w: Window,
    ) {
        self.total_requests += 1;
        *self.status.entry(outcome.status).or_default() += 1;
        self.rejected += outcome.rejected as u64;
        if outcome.status == 200 {
            self.total_ok_events += events;
            if done >= w.start && done <= w.end {
                self.window_requests += 1;
                self.window_events += events;
            }
        }
        if measured {
            let nanos = latency.as_nanos() as u64;
            self.latency.record(nanos);
            let at = (done - latency)
                .saturating_duration_since(w.start)
                .as_secs_f64();
            keep_slowest(&mut self.slowest, (nanos, at));
            let second = at as usize;
            if self.max_by_second.len() <= second {
                self.max_by_second.resize(second + 1, 0);
            }
            self.max_by_second[second] = self.max_by_second[second].max(nanos);
        }
    }

    pub fn merge(&mut self, o: WorkerStats) {
        self.latency.merge(o.latency);
        self.window_requests += o.window_requests;
        self.window_events += o.window_events;
        self.total_ok_events += o.total_ok_events;
        self.total_requests += o.total_requests;
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        self.transport_errors += o.transport_errors;
        self.timeouts += o.timeouts;
        self.rejected += o.rejected;
        self.connects += o.connects;
        if self.max_by_second.len() < o.max_by_second.len() {
            self.max_by_second.resize(o.max_by_second.len(), 0);
        }
        for (mine, theirs) in self.max_by_second.iter_mut().zip(&o.max_by_second) {
            *mine = (*mine).max(*theirs);
        }
        for item in o.slowest {
            keep_slowest(&mut self.slowest, item);
        }
    }
}

/// Extra figures of an open-loop run.
pub(crate) struct OpenExtra {
    pub scheduled: u64,
    pub unfinished: u64,
    pub dispatch_lag: crate::stats::Summary,
}

pub fn run(args: &LoadArgs) -> Result<()> {
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(
        (0.0..1.0).contains(&args.dup_fraction),
        "--dup-fraction must be in [0, 1)"
    );
    if let Some(r) = args.rate {
        anyhow::ensure!(r > 0.0, "--rate must be positive");
    }
    let target = Target::parse(&args.url, &args.write_key)?;
    let (path, batch) = match args.route {
        Route::Batch => (target.path("/v1/batch"), Some(args.batch)),
        Route::Track => (target.path("/v1/track"), None),
    };
    let prep = Instant::now();
    let pool = BodyPool::build(args.seed, batch, args.pool_events, args.dup_fraction);
    let prep_secs = prep.elapsed().as_secs_f64();
    let ctx = Arc::new(Ctx {
        target,
        path,
        pool,
        timeout: Duration::from_secs_f64(args.timeout),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let (stats, extra) = match args.rate {
        None => (closed::run(&rt, &ctx, args)?, None),
        Some(rate) => {
            let (s, e) = open::run(&rt, &ctx, args, rate)?;
            (s, Some(e))
        }
    };
    let report = report_json(args, &ctx, stats, extra, prep_secs);
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(())
}

fn report_json(
    args: &LoadArgs,
    ctx: &Ctx,
    mut s: WorkerStats,
    extra: Option<OpenExtra>,
    prep_secs: f64,
) -> Value {
    let secs = args.seconds;
    let latency = s.latency.summary();
    let events_per_request = match args.route {
        Route::Batch => args.batch,
        Route::Track => 1,
    };
    let status: serde_json::Map<String, Value> = s
        .status
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let errors = s
        .status
        .iter()
        .filter(|(k, _)| **k != 200)
        .map(|(_, v)| v)
        .sum::<u64>()
        + s.transport_errors
        + s.timeouts;
    let mut v = json!({
        "command": "load",
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "route": match args.route { Route::Batch => "batch", Route::Track => "track" },
        "url": args.url,
        "events_per_request": events_per_request,
        "connections": args.connections,
        "connections_opened": s.connects,
        "threads": args.threads,
        "seconds": secs,
        "warmup": args.warmup,
        "requests": s.window_requests,
        "events": s.window_events,
        "requests_per_s": (s.window_requests as f64 / secs).round(),
        "events_per_s": (s.window_events as f64 / secs).round(),
        "latency": latency.to_json(),
        "status": status,
        "errors": errors,
        "transport_errors": s.transport_errors,
        "timeouts": s.timeouts,
        "rejected_responses": s.rejected,
        "total_requests": s.total_requests,
        "total_ok_events": s.total_ok_events,
        "pool_bodies": ctx.pool.len(),
        "avg_body_bytes": ctx.pool.avg_body_bytes(),
        "prepare_seconds": round3(prep_secs),
        "dup_fraction": args.dup_fraction,
        "slowest": s.slowest.iter().map(|(ns, at)| json!({ "ms": round3(*ns as f64 / 1e6), "at_s": round3(*at) })).collect::<Vec<_>>(),
        "max_ms_by_second": s.max_by_second.iter().map(|ns| round3(*ns as f64 / 1e6)).collect::<Vec<_>>(),
        "client_cpu_s": crate::sysinfo::cpu_seconds(std::process::id(), crate::sysinfo::clock_ticks()).map(round3),
    });
    if let (Some(e), Some(rate)) = (extra, args.rate) {
        v["offered_events_per_s"] = json!(rate);
        v["scheduled_requests"] = json!(e.scheduled);
        v["unfinished"] = json!(e.unfinished);
        v["dispatch_lag"] = e.dispatch_lag.to_json();
    }
    v
}

fn print_text(v: &Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let lat = &v["latency"];
    let l = |k: &str| lat[k].as_f64().unwrap_or(0.0);
    println!(
        "{} loop, /v1/{}, {} event(s)/request, {} connection(s) ({} opened), {} s measured after {} s warm-up",
        v["mode"].as_str().unwrap_or(""),
        v["route"].as_str().unwrap_or(""),
        v["events_per_request"],
        v["connections"],
        v["connections_opened"],
        v["seconds"],
        v["warmup"]
    );
    if let Some(rate) = v["offered_events_per_s"].as_f64() {
        println!(
            "offered {rate:.0} events/s; achieved {:.0} events/s",
            f("events_per_s")
        );
    }
    println!(
        "{:.0} requests/s, {:.0} events/s",
        f("requests_per_s"),
        f("events_per_s")
    );
    println!(
        "latency: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n = {})",
        l("p50_ms"),
        l("p90_ms"),
        l("p99_ms"),
        l("p999_ms"),
        l("max_ms"),
        lat["count"]
    );
    println!(
        "status: {}  transport errors {}  timeouts {}  200-with-rejections {}",
        v["status"], v["transport_errors"], v["timeouts"], v["rejected_responses"]
    );
    if let Some(slow) = v["slowest"].as_array().filter(|s| !s.is_empty()) {
        let list: Vec<String> = slow
            .iter()
            .take(5)
            .map(|x| {
                format!(
                    "{:.1} ms at {:.2} s",
                    x["ms"].as_f64().unwrap_or(0.0),
                    x["at_s"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        println!(
            "slowest (start time from the end of warm-up): {}",
            list.join(", ")
        );
    }
    if let Some(by_second) = v["max_ms_by_second"].as_array().filter(|s| !s.is_empty()) {
        let list: Vec<String> = by_second
            .iter()
            .map(|x| format!("{:.1}", x.as_f64().unwrap_or(0.0)))
            .collect();
        println!(
            "max latency per second of the window (ms): {}",
            list.join(" ")
        );
    }
    if v.get("dispatch_lag").is_some() {
        println!(
            "schedule: {} requests, {} unfinished; dispatcher lag p99 {:.3} ms, max {:.3} ms",
            v["scheduled_requests"],
            v["unfinished"],
            v["dispatch_lag"]["p99_ms"].as_f64().unwrap_or(0.0),
            v["dispatch_lag"]["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
}

#[cfg(test)]
mod tests {
    //! Runs both loops against a throwaway in-process HTTP server that checks what it receives.

    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Seen {
        ids: Mutex<HashSet<String>>,
        duplicates: AtomicU64,
        events: AtomicU64,
    }

    /// Answers 200 to authorized, well-formed bodies and records their messageIds.
    fn stub_server(seen: Arc<Seen>) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let authorized = req
                                    .headers()
                                    .get("authorization")
                                    .is_some_and(|v| v == "Basic d2s6");
                                let body = req.into_body().collect().await?.to_bytes();
                                let v: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let events = match v.get("batch") {
                                    Some(b) => b.as_array().cloned().unwrap_or_default(),
                                    None => vec![v],
                                };
                                let status = if !authorized {
                                    401
                                } else if events.iter().any(|e| e["messageId"].is_null()) {
                                    400
                                } else {
                                    200
                                };
                                if status == 200 {
                                    let mut ids = seen.ids.lock().unwrap();
                                    for e in &events {
                                        if !ids.insert(e["messageId"].as_str().unwrap().to_string())
                                        {
                                            seen.duplicates.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                    seen.events
                                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                                }
                                let resp = Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"{\"success\":true}")))
                                    .unwrap();
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        addr
    }

    fn args(addr: std::net::SocketAddr, route: Route, rate: Option<f64>) -> LoadArgs {
        LoadArgs {
            url: format!("http://{addr}"),
            write_key: "wk".into(),
            route,
            batch: 20,
            connections: 4,
            max_connections: 64,
            seconds: 0.5,
            warmup: 0.1,
            rate,
            seed: 5,
            dup_fraction: 0.0,
            pool_events: 500,
            threads: 1,
            timeout: 5.0,
            json: true,
        }
    }

    fn ctx(a: &LoadArgs) -> Arc<Ctx> {
        let target = Target::parse(&a.url, &a.write_key).unwrap();
        let (path, batch) = match a.route {
            Route::Batch => (target.path("/v1/batch"), Some(a.batch)),
            Route::Track => (target.path("/v1/track"), None),
        };
        let pool = BodyPool::build(a.seed, batch, a.pool_events, a.dup_fraction);
        Arc::new(Ctx {
            target,
            path,
            pool,
            timeout: Duration::from_secs(5),
        })
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn closed_loop_sends_unique_events() {
        let seen = Arc::new(Seen::default());
        let addr = stub_server(seen.clone());
        for route in [Route::Batch, Route::Track] {
            let a = args(addr, route, None);
            let st = closed::run(&rt(), &ctx(&a), &a).unwrap();
            assert!(
                st.window_requests > 10,
                "{route:?}: {} requests",
                st.window_requests
            );
            assert_eq!(st.status.keys().copied().collect::<Vec<_>>(), vec![200]);
            assert_eq!(st.transport_errors + st.timeouts, 0);
        }
        assert_eq!(seen.duplicates.load(Ordering::Relaxed), 0);
        assert!(seen.events.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn open_loop_keeps_the_schedule() {
        let seen = Arc::new(Seen::default());
        let addr = stub_server(seen.clone());
        let a = args(addr, Route::Batch, Some(4_000.0)); // 200 requests/s
        let (st, extra) = open::run(&rt(), &ctx(&a), &a, 4_000.0).unwrap();
        // 0.6 s of schedule at 5 ms intervals.
        assert!(
            (110..=130).contains(&extra.scheduled),
            "scheduled {}",
            extra.scheduled
        );
        assert_eq!(extra.unfinished, 0);
        assert_eq!(st.total_requests, extra.scheduled);
        assert!(
            (90..=110).contains(&st.latency.len()),
            "measured {}",
            st.latency.len()
        );
        assert_eq!(seen.duplicates.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn wrong_key_is_counted_as_errors() {
        let seen = Arc::new(Seen::default());
        let addr = stub_server(seen);
        let mut a = args(addr, Route::Batch, None);
        a.write_key = "nope".into();
        let st = closed::run(&rt(), &ctx(&a), &a).unwrap();
        assert_eq!(st.status.keys().copied().collect::<Vec<_>>(), vec![401]);
        assert_eq!(st.window_events, 0);
    }
}
