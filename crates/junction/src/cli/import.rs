//! `junction import FILE.jsonl[.gz] --source NAME`: loads historical events through the same
//! validation, normalization and `(source, messageId)` dedup as the tracking API.
//!
//! Contract: each line is one Segment/RudderStack event JSON with its own `type`. An event's
//! own `receivedAt` (e.g. from an export) is kept, so clock-skew correction uses it; events
//! without one are received now. Lines are stored in chunks, each durable before the next
//! is read; a failure stops the import with the count stored so far (re-running it is safe:
//! stored events are skipped as duplicates). Prints progress on a TTY and a summary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, bail};
use junction_core::event::{Normalized, RequestMeta, normalize_one};
use serde::Deserialize;

use crate::clock::SystemClock;
use crate::config::Overrides;
use crate::ingest::Ingestor;

const CHUNK_EVENTS: usize = 1000;
const LINES_SHOWN_PER_REASON: usize = 20;

#[derive(Default, Debug)]
pub struct Summary {
    pub imported: u64,
    pub duplicates: u64,
    /// Error code → (count, first line numbers).
    pub rejected: BTreeMap<&'static str, (u64, Vec<u64>)>,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, rename = "receivedAt")]
    received_at: Option<std::borrow::Cow<'a, str>>,
}

/// Counts bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

pub fn run(file: &Path, source: &str, overrides: &Overrides) -> anyhow::Result<()> {
    let config = crate::config::load(overrides)?;
    if !config.sources.iter().any(|s| s.name == source) {
        let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "unknown source `{source}` (configured sources: {})",
            known.join(", ")
        );
    }
    let ingestor = Ingestor::open(&config, std::sync::Arc::new(SystemClock))?;
    let log = ingestor.log().clone();

    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = super::progress(
        Some(len),
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    );
    let counted = Counting {
        inner: f,
        bar: bar.clone(),
    };
    let reader: Box<dyn BufRead> = if file.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(counted)))
    } else {
        Box::new(BufReader::new(counted))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(import_lines(reader, source, &config.limits, &ingestor));
    bar.finish_and_clear();
    log.shutdown();
    let summary = result?;
    ingestor.dedup().write_snapshot(log.next_offset())?;
    print_summary(&summary);
    Ok(())
}

/// Normalizes and stores every line; returns the summary.
pub async fn import_lines(
    mut reader: impl BufRead,
    source: &str,
    limits: &junction_core::event::Limits,
    ingestor: &Ingestor,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut chunk: Vec<Normalized> = Vec::with_capacity(CHUNK_EVENTS);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .context("cannot read the import file")?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let now = ingestor.now_ms();
        let received_at = serde_json::from_slice::<Peek>(text)
            .ok()
            .and_then(|p| p.received_at)
            .and_then(|t| junction_core::timestamp::parse(&t))
            .unwrap_or(now);
        let meta = RequestMeta {
            received_at_ms: received_at,
            client_ip: None,
            browser: false,
        };
        match normalize_one(text, &meta, limits) {
            Ok(ev) => chunk.push(ev),
            Err(r) => {
                let entry = summary.rejected.entry(r.code).or_default();
                entry.0 += 1;
                if entry.1.len() < LINES_SHOWN_PER_REASON {
                    entry.1.push(line_no);
                }
            }
        }
        if chunk.len() >= CHUNK_EVENTS {
            flush(&mut chunk, source, ingestor, &mut summary).await?;
        }
    }
    flush(&mut chunk, source, ingestor, &mut summary).await?;
    Ok(summary)
}

async fn flush(
    chunk: &mut Vec<Normalized>,
    source: &str,
    ingestor: &Ingestor,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let events = std::mem::take(chunk);
    let stored = ingestor
        .store(source, events, ingestor.now_ms())
        .await
        .with_context(|| format!("import stopped after {} events", summary.imported))?;
    summary.imported += stored.stored as u64;
    summary.duplicates += stored.duplicates as u64;
    Ok(())
}

fn print_summary(s: &Summary) {
    let rejected: u64 = s.rejected.values().map(|(n, _)| n).sum();
    println!("imported: {}", s.imported);
    println!("duplicates: {}", s.duplicates);
    println!("rejected: {rejected}");
    for (code, (n, lines)) in &s.rejected {
        let shown: Vec<String> = lines.iter().map(u64::to_string).collect();
        let more = if *n as usize > lines.len() {
            ", ..."
        } else {
            ""
        };
        println!("  {code}: {n} (lines {}{more})", shown.join(", "));
    }
}
