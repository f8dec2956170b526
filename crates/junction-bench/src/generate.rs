//! `generate`: write a seeded event data set as JSONL (optionally gzip), and batch bodies.
//!
//! Contract: streaming with constant memory (events are produced into ~1 MiB chunks handed to
//! one writer thread per output file through a bounded channel); the output for a given
//! `(--events, --seed, --users, --zipf-s, --end-time)` is byte-identical on every machine and
//! every run. Files ending in `.gz` are gzip-compressed. `--batches-out` receives one
//! `/v1/batch` request body per line: `{"batch":[...],"sentAt":"..."}` with `--batch` events each.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::events::{GenConfig, Generator, Kind};
use crate::timefmt::{Rfc3339Millis, parse_utc};

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Number of events.
    #[arg(long)]
    pub events: u64,
    /// Seed of the generator: same seed, same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Size of the user population.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Zipf exponent of user popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Newest timestamp (`YYYY-MM-DDTHH:MM:SSZ` or `now`, which breaks reproducibility);
    /// timestamps cover the 30 days before it.
    #[arg(long, default_value = GenConfig::DEFAULT_END)]
    pub end_time: String,
    /// Output file (JSONL, one event per line; `.gz` suffix compresses).
    #[arg(long)]
    pub out: PathBuf,
    /// Events per batch body in `--batches-out`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Also write `/v1/batch` request bodies, one per line.
    #[arg(long)]
    pub batches_out: Option<PathBuf>,
    /// gzip level for `.gz` outputs (0–9).
    #[arg(long, default_value_t = 1)]
    pub gzip_level: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

const CHUNK: usize = 1 << 20;

pub fn run(args: &GenerateArgs) -> Result<()> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(args.users >= 1, "--users must be at least 1");
    let end_ms = parse_utc(&args.end_time).map_err(anyhow::Error::msg)?;
    let mut generator = Generator::new(GenConfig {
        seed: args.seed,
        users: args.users,
        zipf_s: args.zipf_s,
        events: args.events,
        end_ms,
        span_ms: GenConfig::THIRTY_DAYS_MS,
        only_track: false,
    });

    let started = Instant::now();
    let events_out = Output::spawn(&args.out, args.gzip_level)?;
    let batches_out = args
        .batches_out
        .as_deref()
        .map(|p| Output::spawn(p, args.gzip_level))
        .transpose()?;

    let mut stats = Stats::new(args.users);
    let mut chunk = Vec::with_capacity(CHUNK + 64 * 1024);
    let mut batch_chunk = Vec::with_capacity(if batches_out.is_some() {
        CHUNK + 256 * 1024
    } else {
        0
    });
    let mut event = Vec::with_capacity(4096);
    let mut in_batch = 0usize;
    let mut last_ts = 0i64;
    for _ in 0..args.events {
        event.clear();
        let info = generator.write_event(&mut event);
        stats.add(&info, event.len());
        chunk.extend_from_slice(&event);
        chunk.push(b'\n');
        if batches_out.is_some() {
            batch_chunk.extend_from_slice(if in_batch == 0 { b"{\"batch\":[" } else { b"," });
            batch_chunk.extend_from_slice(&event);
            in_batch += 1;
            last_ts = info.timestamp_ms;
            if in_batch == args.batch {
                close_batch(&mut batch_chunk, last_ts);
                in_batch = 0;
            }
        }
        if chunk.len() >= CHUNK {
            events_out.send(std::mem::replace(
                &mut chunk,
                Vec::with_capacity(CHUNK + 64 * 1024),
            ))?;
        }
        if let Some(out) = &batches_out
            && in_batch == 0
            && batch_chunk.len() >= CHUNK
        {
            out.send(std::mem::replace(
                &mut batch_chunk,
                Vec::with_capacity(CHUNK + 256 * 1024),
            ))?;
        }
    }
    if in_batch > 0 {
        close_batch(&mut batch_chunk, last_ts);
    }
    events_out.send(chunk)?;
    let out_bytes = events_out.finish()?;
    let batch_bytes = match batches_out {
        Some(out) => {
            out.send(batch_chunk)?;
            Some(out.finish()?)
        }
        None => None,
    };
    let secs = started.elapsed().as_secs_f64();
    report(args, &stats, secs, out_bytes, batch_bytes);
    Ok(())
}

fn close_batch(buf: &mut Vec<u8>, last_ts: i64) {
    // The client sends the batch shortly after its newest event.
    let sent = Rfc3339Millis(last_ts + 1_000).to_string();
    buf.extend_from_slice(b"],\"sentAt\":\"");
    buf.extend_from_slice(sent.as_bytes());
    buf.extend_from_slice(b"\"}\n");
}

/// One output file written (and maybe compressed) by its own thread.
struct Output {
    tx: SyncSender<Vec<u8>>,
    handle: JoinHandle<Result<u64>>,
}

impl Output {
    fn spawn(path: &Path, level: u32) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let gz = path.extension().is_some_and(|e| e == "gz");
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let path = path.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<u64> {
            let buffered = BufWriter::with_capacity(1 << 20, file);
            let mut sink: Box<dyn Write> = if gz {
                Box::new(flate2::write::GzEncoder::new(
                    buffered,
                    flate2::Compression::new(level.min(9)),
                ))
            } else {
                Box::new(buffered)
            };
            for chunk in rx {
                sink.write_all(&chunk)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            sink.flush()?;
            drop(sink); // finishes the gzip stream
            Ok(std::fs::metadata(&path)?.len())
        });
        Ok(Self { tx, handle })
    }

    fn send(&self, chunk: Vec<u8>) -> Result<()> {
        // A closed channel means the writer failed: `finish` reports why.
        self.tx
            .send(chunk)
            .map_err(|_| anyhow::anyhow!("writer thread stopped"))
    }

    fn finish(self) -> Result<u64> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
    }
}

/// Figures about the generated data, to check it against its documented shape.
struct Stats {
    events: u64,
    bytes: u64,
    min: usize,
    max: usize,
    kinds: [u64; 6],
    identified: u64,
    email: u64,
    seen: Vec<u64>,
    distinct: u64,
    hottest: u64,
}

impl Stats {
    fn new(users: u64) -> Self {
        Self {
            events: 0,
            bytes: 0,
            min: usize::MAX,
            max: 0,
            kinds: [0; 6],
            identified: 0,
            email: 0,
            seen: vec![0; users.div_ceil(64) as usize],
            distinct: 0,
            hottest: 0,
        }
    }

    fn add(&mut self, info: &crate::events::EventInfo, len: usize) {
        self.events += 1;
        self.bytes += len as u64;
        self.min = self.min.min(len);
        self.max = self.max.max(len);
        let k = Kind::ALL.iter().position(|k| *k == info.kind).unwrap_or(0);
        self.kinds[k] += 1;
        self.identified += info.identified as u64;
        self.email += info.has_email as u64;
        let (word, bit) = ((info.user / 64) as usize, info.user % 64);
        if self.seen[word] & (1 << bit) == 0 {
            self.seen[word] |= 1 << bit;
            self.distinct += 1;
        }
        self.hottest += (info.user == 0) as u64;
    }
}

fn report(args: &GenerateArgs, s: &Stats, secs: f64, out_bytes: u64, batch_bytes: Option<u64>) {
    let n = s.events.max(1) as f64;
    let pct = |x: u64| (x as f64 * 1000.0 / n).round() / 10.0;
    let types: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .zip(s.kinds)
        .map(|(k, c)| (k.name().to_string(), json!(pct(c))))
        .collect();
    let eps = s.events as f64 / secs.max(1e-9);
    let avg = s.bytes as f64 / n;
    if args.json {
        let v = json!({
            "command": "generate",
            "events": s.events,
            "seed": args.seed,
            "users": args.users,
            "zipf_s": args.zipf_s,
            "seconds": crate::stats::round3(secs),
            "events_per_s": eps.round(),
            "mb_per_s": crate::stats::round3(s.bytes as f64 / secs.max(1e-9) / 1e6),
            "avg_event_bytes": crate::stats::round3(avg),
            "min_event_bytes": if s.events == 0 { 0 } else { s.min },
            "max_event_bytes": s.max,
            "types_pct": types,
            "identified_pct": pct(s.identified),
            "email_pct": pct(s.email),
            "distinct_users": s.distinct,
            "hottest_user_pct": pct(s.hottest),
            "out": args.out,
            "out_bytes": out_bytes,
            "batches_out": args.batches_out,
            "batches_out_bytes": batch_bytes,
        });
        println!("{v}");
        return;
    }
    println!(
        "generated {} events (seed {}, {} users, zipf s={}) in {:.2} s: {:.0} events/s, {:.1} MB/s of JSON",
        s.events,
        args.seed,
        args.users,
        args.zipf_s,
        secs,
        eps,
        s.bytes as f64 / secs.max(1e-9) / 1e6
    );
    println!(
        "event size: avg {:.1} B, min {} B, max {} B",
        avg,
        if s.events == 0 { 0 } else { s.min },
        s.max
    );
    let mix: Vec<String> = Kind::ALL
        .iter()
        .zip(s.kinds)
        .map(|(k, c)| format!("{} {:.1}%", k.name(), pct(c)))
        .collect();
    println!("types: {}", mix.join(", "));
    println!(
        "identified {:.1}%, with email {:.1}%, distinct users {}, hottest user {:.2}% of events",
        pct(s.identified),
        pct(s.email),
        s.distinct,
        pct(s.hottest)
    );
    println!("wrote {} ({} bytes)", args.out.display(), out_bytes);
    if let (Some(p), Some(b)) = (&args.batches_out, batch_bytes) {
        println!(
            "wrote {} ({} bytes, {} events per batch)",
            p.display(),
            b,
            args.batch
        );
    }
}
