//! Closed loop: every connection sends its next request as soon as the previous one answered.
//!
//! Contract: all connections are opened before the clock starts; a request's latency is measured
//! from just before it is written to when its whole response has been read, and is kept when the
//! request both started and finished inside the measured window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::runtime::Runtime;

use super::client::Conn;
use super::{Ctx, LoadArgs, Window, WorkerStats};

pub(crate) fn run(rt: &Runtime, ctx: &Arc<Ctx>, args: &LoadArgs) -> Result<WorkerStats> {
    let conns = rt.block_on(Conn::connect_all(&ctx.target, args.connections))?;
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let window = Window {
        start,
        end: start + Duration::from_secs_f64(args.seconds),
    };
    let handles: Vec<_> = conns
        .into_iter()
        .map(|c| rt.spawn(worker(ctx.clone(), c, window)))
        .collect();
    rt.block_on(async {
        let mut total = WorkerStats::default();
        for h in handles {
            total.merge(h.await?);
        }
        Ok(total)
    })
}

async fn worker(ctx: Arc<Ctx>, conn: Conn, w: Window) -> WorkerStats {
    let mut st = WorkerStats {
        connects: 1,
        ..Default::default()
    };
    let mut conn = Some(conn);
    while Instant::now() < w.end {
        if conn.is_none() {
            match Conn::connect(&ctx.target).await {
                Ok(c) => {
                    st.connects += 1;
                    conn = Some(c);
                }
                Err(_) => {
                    st.transport_errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let (body, events) = ctx.pool.next();
        let t0 = Instant::now();
        if let Some((outcome, done)) = st.send(&ctx, &mut conn, body).await {
            let measured = t0 >= w.start && done <= w.end;
            st.finish(outcome, events, done - t0, measured, done, w);
        }
    }
    st
}
