//! The ingest pipeline shared by the tracking API and `junction import`: dedup, durable append,
//! metrics and the live debugger feed.
//!
//! Contract: `store` returns Ok only after every fresh event of the call is durable in the
//! log (fdatasync'd) and its dedup key committed; events whose `(source, messageId)` was
//! stored within the window are counted as duplicates and not appended again. On any append
//! failure the reserved keys are released and the whole call fails, so the client's retry
//! stores them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use junction_core::event::{Normalized, Rejected};
use serde::Serialize;

use crate::clock::Clock;
use crate::dedup::{self, Check, Dedup, KeyState};
use crate::log::{AppendError, Appended, Entry, Log, PendingFrame};
use crate::metrics::{self, Counter, Histogram};

/// The source name of events Junction itself writes into the log (derived events).
pub const DERIVED_SOURCE: &str = "junction";

/// Why a call stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the event log is overloaded; retry later")]
    Overloaded,
    #[error("the event log cannot store events: {0}")]
    Storage(String),
    #[error("the server is shutting down")]
    Closed,
}

impl From<AppendError> for IngestError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Overloaded => IngestError::Overloaded,
            AppendError::Storage(m) => IngestError::Storage(m),
            AppendError::Closed => IngestError::Closed,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub stored: usize,
    pub duplicates: usize,
    /// Where in the log the stored events are.
    pub offsets: Vec<std::ops::Range<u64>>,
}

/// One entry of the live debugger stream.
#[derive(Clone, Debug, Serialize)]
pub struct DebugEvent {
    pub kind: &'static str,
    pub source: String,
    #[serde(rename = "receivedAt")]
    pub received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Rejected>,
}

#[derive(Default)]
pub struct IngestMetrics {
    pub ingested: Mutex<BTreeMap<String, u64>>,
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub deduplicated: Counter,
    pub bytes: Counter,
    pub store_latency: Histogram,
}

pub struct Ingestor {
    log: Log,
    dedup: Arc<Dedup>,
    debugger: tokio::sync::broadcast::Sender<Arc<DebugEvent>>,
    last_overload_ms: AtomicI64,
    clock: Arc<dyn Clock>,
    pub metrics: IngestMetrics,
}

pub fn secs(ms: i64) -> u32 {
    (ms / 1000).clamp(0, u32::MAX as i64) as u32
}

impl Ingestor {
    pub fn new(log: Log, dedup: Arc<Dedup>, clock: Arc<dyn Clock>) -> Self {
        let (debugger, _) = tokio::sync::broadcast::channel(1024);
        Ingestor {
            log,
            dedup,
            debugger,
            last_overload_ms: AtomicI64::new(i64::MIN / 2),
            clock,
            metrics: IngestMetrics::default(),
        }
    }

    /// Opens the configured log (recovering it) and the dedup index (replaying the log from
    /// its snapshot): what `serve` and `import` both write through.
    pub fn open(config: &crate::config::Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let (log, report) = Log::open(config.log.clone()).with_context(|| {
            format!("cannot open the event log in {}", config.log.dir.display())
        })?;
        tracing::info!(?report, "event log open");
        let (dedup, scanned) = Dedup::open(
            &config.data_dir,
            &config.log.dir,
            config.dedup_window,
            config.dedup_max_keys,
            secs(clock.now_ms()),
        )?;
        tracing::info!(entries = dedup.len(), scanned, "dedup index loaded");
        Ok(Self::new(log, Arc::new(dedup), clock))
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// True for a few seconds after an append was refused for lack of buffer space.
    pub fn recently_overloaded(&self) -> bool {
        self.now_ms() - self.last_overload_ms.load(Ordering::Relaxed) < 5_000
    }

    pub fn subscribe_debugger(&self) -> tokio::sync::broadcast::Receiver<Arc<DebugEvent>> {
        self.debugger.subscribe()
    }

    /// Counts and publishes per-event rejections (they are never stored).
    pub fn record_rejections(&self, source: &str, rejected: &[Rejected], received_at_ms: i64) {
        if rejected.is_empty() {
            return;
        }
        let mut counts = self.metrics.rejected.lock().unwrap();
        for r in rejected {
            *counts.entry(r.code).or_default() += 1;
        }
        drop(counts);
        if self.debugger.receiver_count() > 0 {
            for r in rejected {
                let _ = self.debugger.send(Arc::new(DebugEvent {
                    kind: "rejected",
                    source: source.to_string(),
                    received_at: junction_core::timestamp::format(received_at_ms),
                    event: None,
                    error: Some(r.clone()),
                }));
            }
        }
    }

    /// Stores `events` of `source` durably, skipping duplicates (see the module contract).
    ///
    /// Cancellation-safe: a request dropped at its deadline mid-append hands the append to a
    /// task (see [`Settle`]), so its dedup keys never stay pending.
    pub async fn store(
        &self,
        source: &str,
        events: Vec<Normalized>,
        received_at_ms: i64,
    ) -> Result<Stored, IngestError> {
        let started = std::time::Instant::now();
        let keys: Vec<u128> = events
            .iter()
            .map(|e| dedup::key(source, &e.message_id))
            .collect();
        let mut todo: Vec<usize> = (0..events.len()).collect();
        let mut result = Stored::default();
        while !todo.is_empty() {
            let now = secs(self.now_ms());
            let todo_keys: Vec<u128> = todo.iter().map(|&i| keys[i]).collect();
            let checks = self.dedup.reserve(&todo_keys, now);
            let mut fresh = Vec::new();
            let mut in_flight = Vec::new();
            for (&i, check) in todo.iter().zip(&checks) {
                match check {
                    Check::Fresh => fresh.push(i),
                    Check::Duplicate => result.duplicates += 1,
                    Check::InFlight => in_flight.push(i),
                }
            }
            if !fresh.is_empty() {
                let frame = PendingFrame::encode(
                    source,
                    received_at_ms,
                    fresh.iter().map(|&i| Entry {
                        message_id: &events[i].message_id,
                        json: &events[i].json,
                        identity: &events[i].identity,
                    }),
                    self.log.codec(),
                );
                let bytes = frame.len_bytes() as u64;
                let fresh_keys: Vec<u128> = fresh.iter().map(|&i| keys[i]).collect();
                let appended = Settle::new(self, fresh_keys, self.log.append(frame)).await;
                match appended {
                    Ok(appended) => {
                        result.stored += fresh.len();
                        let first = appended.first_offset;
                        result
                            .offsets
                            .push(first..first + u64::from(appended.count));
                        *self
                            .metrics
                            .ingested
                            .lock()
                            .unwrap()
                            .entry(source.to_string())
                            .or_default() += fresh.len() as u64;
                        self.metrics.bytes.add(bytes);
                        self.publish(source, fresh.iter().map(|&i| &events[i]), received_at_ms);
                    }
                    Err(e) => {
                        if matches!(e, AppendError::Overloaded) {
                            self.last_overload_ms
                                .store(self.now_ms(), Ordering::Relaxed);
                        }
                        return Err(e.into());
                    }
                }
            }
            // Another request holds these keys: wait for its append, then either count them as
            // duplicates (stored) or take them over (its append failed).
            todo.clear();
            for i in in_flight {
                loop {
                    match self.dedup.state(keys[i], secs(self.now_ms())) {
                        KeyState::Pending => tokio::time::sleep(Duration::from_millis(1)).await,
                        KeyState::Stored => {
                            result.duplicates += 1;
                            break;
                        }
                        KeyState::Absent => {
                            todo.push(i);
                            break;
                        }
                    }
                }
            }
        }
        self.metrics.deduplicated.add(result.duplicates as u64);
        self.metrics.store_latency.observe(started.elapsed());
        Ok(result)
    }

    /// Stores events Junction derives (each the JSON text of a whole event object with its
    /// `type`) under the source [`DERIVED_SOURCE`], normalized like imported events. Returns
    /// how many were stored and where; an event that does not normalize is a bug, logged and
    /// skipped.
    pub async fn store_derived(
        &self,
        events: &[&[u8]],
        limits: &junction_core::event::Limits,
    ) -> Result<Stored, IngestError> {
        let now = self.now_ms();
        let meta = junction_core::event::RequestMeta {
            received_at_ms: now,
            client_ip: None,
            browser: false,
        };
        let mut normalized = Vec::with_capacity(events.len());
        for e in events {
            match junction_core::event::normalize_one(e, &meta, limits) {
                Ok(n) => normalized.push(n),
                Err(r) => {
                    tracing::error!(code = r.code, message = %r.message, "a derived event does not normalize")
                }
            }
        }
        self.store(DERIVED_SOURCE, normalized, now).await
    }

    fn publish<'a>(
        &self,
        source: &str,
        events: impl Iterator<Item = &'a Normalized>,
        received_at_ms: i64,
    ) {
        if self.debugger.receiver_count() == 0 {
            return;
        }
        let received_at = junction_core::timestamp::format(received_at_ms);
        for e in events {
            let raw = std::str::from_utf8(&e.json)
                .ok()
                .and_then(|s| serde_json::value::RawValue::from_string(s.to_string()).ok());
            let _ = self.debugger.send(Arc::new(DebugEvent {
                kind: "ingested",
                source: source.to_string(),
                received_at: received_at.clone(),
                event: raw,
                error: None,
            }));
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        metrics::header(
            out,
            "junction_events_ingested_total",
            "counter",
            "Events stored durably, by source.",
        );
        for (source, n) in self.metrics.ingested.lock().unwrap().iter() {
            metrics::sample(
                out,
                "junction_events_ingested_total",
                &format!("source=\"{source}\""),
                *n,
            );
        }
        metrics::header(
            out,
            "junction_events_rejected_total",
            "counter",
            "Events rejected, by error code.",
        );
        for (code, n) in self.metrics.rejected.lock().unwrap().iter() {
            metrics::sample(
                out,
                "junction_events_rejected_total",
                &format!("code=\"{code}\""),
                *n,
            );
        }
        metrics::single(
            out,
            "junction_events_deduplicated_total",
            "counter",
            "Events dropped as duplicates of a stored (source, messageId).",
            self.metrics.deduplicated.get(),
        );
        metrics::single(
            out,
            "junction_ingest_bytes_total",
            "counter",
            "Bytes of stored events (encoded frames).",
            self.metrics.bytes.get(),
        );
        metrics::single(
            out,
            "junction_dedup_entries",
            "gauge",
            "Keys in the dedup window.",
            self.dedup.len() as u64,
        );
        let window = self.dedup.effective_window_secs(secs(self.now_ms()));
        metrics::single(
            out,
            "junction_dedup_window_seconds",
            "gauge",
            "History the dedup index covers: the configured window, less while the key cap evicts.",
            u64::from(window),
        );
        metrics::header(
            out,
            "junction_store_seconds",
            "histogram",
            "Time to dedup and durably store one request's events.",
        );
        self.metrics
            .store_latency
            .render(out, "junction_store_seconds", "");
    }
}

type AppendFuture = std::pin::Pin<Box<dyn Future<Output = Result<Appended, AppendError>> + Send>>;

/// An append in flight whose dedup keys must be committed (stored) or released (failed) once
/// it resolves, even if the request awaiting it is dropped: `Drop` then moves the rest of the
/// wait into a task. The common path spawns nothing.
struct Settle {
    append: Option<AppendFuture>,
    keys: Vec<u128>,
    dedup: Arc<Dedup>,
    clock: Arc<dyn Clock>,
}

impl Settle {
    fn new(
        ingestor: &Ingestor,
        keys: Vec<u128>,
        append: impl Future<Output = Result<Appended, AppendError>> + Send + 'static,
    ) -> Self {
        Settle {
            append: Some(Box::pin(append)),
            keys,
            dedup: ingestor.dedup.clone(),
            clock: ingestor.clock.clone(),
        }
    }

    fn settle(
        dedup: &Dedup,
        clock: &dyn Clock,
        keys: Vec<u128>,
        r: &Result<Appended, AppendError>,
    ) {
        match r {
            Ok(_) => dedup.commit(keys, secs(clock.now_ms())),
            Err(_) => dedup.release(keys),
        }
    }
}

impl Future for Settle {
    type Output = Result<Appended, AppendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let append = this
            .append
            .as_mut()
            .expect("Settle polled after completion");
        let r = std::task::ready!(append.as_mut().poll(cx));
        this.append = None;
        Self::settle(
            &this.dedup,
            &*this.clock,
            std::mem::take(&mut this.keys),
            &r,
        );
        std::task::Poll::Ready(r)
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(append) = self.append.take() {
            let (keys, dedup, clock) = (
                std::mem::take(&mut self.keys),
                self.dedup.clone(),
                self.clock.clone(),
            );
            tokio::spawn(async move {
                let r = append.await;
                Settle::settle(&dedup, &*clock, keys, &r);
            });
        }
    }
}
