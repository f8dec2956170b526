//! Open loop: requests leave on a fixed schedule, whatever the server does.
//!
//! Contract: a dispatcher task prepares each body ahead of time, waits until the request's
//! intended send time (tokio's 1 ms timer, then yielding in a loop for the last 1.5 ms, so it
//! runs on the same thread as the connections and needs no cross-thread wake-up) and hands it
//! to the pool of connection workers; if no worker is idle at that moment it spawns one more
//! connection (up to `--max-connections`), so a slow response never delays the schedule.
//! Latency runs from the intended time to the end of the response. Requests scheduled inside
//! the window are measured whenever they finish; those not finished `drain` seconds after the
//! end are reported as `unfinished`. The dispatcher's own lateness is reported too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::client::Conn;
use super::{Ctx, LoadArgs, OpenExtra, Window, WorkerStats};
use crate::stats::Samples;

struct Job {
    intended: Instant,
    body: Bytes,
    events: u64,
}

struct Shared {
    ctx: Arc<Ctx>,
    jobs: Mutex<mpsc::UnboundedReceiver<Job>>,
    idle: AtomicUsize,
    finished: AtomicU64,
    window: Window,
}

const DRAIN: Duration = Duration::from_secs(10);

pub(crate) fn run(
    rt: &Runtime,
    ctx: &Arc<Ctx>,
    args: &LoadArgs,
    rate: f64,
) -> Result<(WorkerStats, OpenExtra)> {
    let events_per_request = match args.route {
        super::Route::Batch => args.batch as f64,
        super::Route::Track => 1.0,
    };
    let interval = Duration::from_secs_f64(events_per_request / rate);
    let conns = rt.block_on(Conn::connect_all(&ctx.target, args.connections))?;
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let begin = Instant::now() + Duration::from_millis(20);
    let start = begin + Duration::from_secs_f64(args.warmup);
    let window = Window {
        start,
        end: start + Duration::from_secs_f64(args.seconds),
    };
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        jobs: Mutex::new(rx),
        idle: AtomicUsize::new(0),
        finished: AtomicU64::new(0),
        window,
    });
    let handles: Vec<_> = conns
        .into_iter()
        .map(|c| rt.spawn(worker(shared.clone(), Some(c))))
        .collect();

    let dispatcher = Dispatcher {
        shared: shared.clone(),
        begin,
        interval_nanos: interval.as_nanos() as f64,
        max_connections: args.max_connections,
    };
    // Spawned (not `block_on`) so that it runs on the runtime's worker thread(s), next to the
    // connections, instead of on this thread.
    let (handles, mut lag, scheduled) = rt.block_on(rt.spawn(dispatcher.run(tx, handles)))?;

    let deadline = tokio::time::Instant::from_std(window.end + DRAIN);
    let total = rt.block_on(async {
        let mut total = WorkerStats::default();
        for h in handles {
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(st)) => total.merge(st),
                Ok(Err(e)) => return Err(anyhow::Error::from(e)),
                Err(_) => {} // still waiting on the server: counted below as unfinished
            }
        }
        Ok(total)
    })?;
    let finished = shared.finished.load(Ordering::Acquire);
    let extra = OpenExtra {
        scheduled,
        unfinished: scheduled.saturating_sub(finished),
        dispatch_lag: lag.summary(),
    };
    Ok((total, extra))
}

struct Dispatcher {
    shared: Arc<Shared>,
    begin: Instant,
    interval_nanos: f64,
    max_connections: usize,
}

/// How long before a send the dispatcher stops sleeping on tokio's 1 ms timer and starts
/// yielding in a loop, to leave on time.
const SPIN: Duration = Duration::from_micros(1_500);

impl Dispatcher {
    async fn run(
        self,
        tx: mpsc::UnboundedSender<Job>,
        mut handles: Vec<JoinHandle<WorkerStats>>,
    ) -> (Vec<JoinHandle<WorkerStats>>, Samples, u64) {
        let ctx = &self.shared.ctx;
        let mut lag = Samples::default();
        let mut scheduled = 0u64;
        loop {
            let intended =
                self.begin + Duration::from_nanos((self.interval_nanos * scheduled as f64) as u64);
            if intended >= self.shared.window.end {
                break;
            }
            let (body, events) = ctx.pool.next();
            if intended > Instant::now() + SPIN {
                tokio::time::sleep_until((intended - SPIN).into()).await;
            }
            while Instant::now() < intended {
                tokio::task::yield_now().await;
            }
            lag.record(intended.elapsed().as_nanos() as u64);
            let idle = self.shared.idle.load(Ordering::Acquire);
            if tx
                .send(Job {
                    intended,
                    body,
                    events,
                })
                .is_err()
            {
                break;
            }
            scheduled += 1;
            if idle == 0 && handles.len() < self.max_connections {
                handles.push(tokio::spawn(worker(self.shared.clone(), None)));
            }
        }
        (handles, lag, scheduled)
    }
}

async fn worker(shared: Arc<Shared>, conn: Option<Conn>) -> WorkerStats {
    let ctx = &shared.ctx;
    let w = shared.window;
    let mut st = WorkerStats {
        connects: conn.is_some() as u64,
        ..Default::default()
    };
    let mut conn = conn;
    loop {
        shared.idle.fetch_add(1, Ordering::AcqRel);
        let job = shared.jobs.lock().await.recv().await;
        shared.idle.fetch_sub(1, Ordering::AcqRel);
        let Some(job) = job else { break };
        let measured = job.intended >= w.start && job.intended < w.end;
        // A connection opened for this job counts in its latency, as it would for a real client.
        if conn.is_none() {
            match Conn::connect(&ctx.target).await {
                Ok(c) => {
                    st.connects += 1;
                    conn = Some(c);
                }
                Err(_) => st.transport_errors += 1,
            }
        }
        if let Some((outcome, done)) = st.send(ctx, &mut conn, job.body).await {
            st.finish(outcome, job.events, done - job.intended, measured, done, w);
        }
        shared.finished.fetch_add(1, Ordering::AcqRel);
    }
    st
}
