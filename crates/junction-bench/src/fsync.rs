//! `fsync-ceiling`: how fast can one thread append event batches durably on this disk?
//!
//! Contract: one process, one thread. A file in `--dir` is preallocated by writing zeros (so
//! appends overwrite allocated blocks and `fdatasync` need not update extent metadata), then the
//! same generated batches (`--batch` events as JSONL, ~`batch` × 670 B) are written at increasing
//! offsets (wrapping at the end of the preallocation) with `fdatasync` after every group of
//! `g` batches, one `write` per group, for each `g` in `--groups` (default 1 and 8). Reported per
//! group size: events/s, MB/s, fdatasync/s and fdatasync latency percentiles. The file is removed
//! at the end. This is the ceiling a group-committing event log can reach on this machine.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};

use crate::events::{GenConfig, Generator};
use crate::stats::{Samples, round3};

#[derive(Args, Debug, Clone)]
pub struct FsyncArgs {
    /// Directory on the disk to measure (use the server's data disk).
    #[arg(long)]
    pub dir: PathBuf,
    /// Seconds per group size.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Batches per fdatasync to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub groups: Vec<usize>,
    /// Size of the zero-filled file, in MiB.
    #[arg(long, default_value_t = 512)]
    pub prealloc_mib: u64,
    /// Seed of the generated batches.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Figures for one group size.
pub struct GroupResult {
    pub group: usize,
    pub syncs: u64,
    pub events: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub sync_latency: crate::stats::Summary,
}

impl GroupResult {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    pub fn to_json(&self) -> Value {
        json!({
            "batches_per_fdatasync": self.group,
            "events_per_s": self.events_per_s().round(),
            "mb_per_s": round3(self.bytes as f64 / self.seconds / 1e6),
            "fdatasync_per_s": round3(self.syncs as f64 / self.seconds),
            "fdatasync": self.sync_latency.to_json(),
            "events": self.events,
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
        })
    }
}

pub fn run(args: &FsyncArgs) -> Result<()> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        !args.groups.is_empty() && args.groups.iter().all(|&g| g >= 1),
        "--groups must be >= 1"
    );
    let batches = make_batches(args.seed, args.batch, 64);
    let path = args
        .dir
        .join(format!("junction-bench-fsync-{}.tmp", std::process::id()));
    let result = measure_all(args, &path, &batches);
    let _ = std::fs::remove_file(&path);
    let results = result?;
    let batch_bytes = batches.iter().map(Vec::len).sum::<usize>() / batches.len();
    if args.json {
        let v = json!({
            "command": "fsync-ceiling",
            "dir": args.dir,
            "batch": args.batch,
            "avg_batch_bytes": batch_bytes,
            "prealloc_mib": args.prealloc_mib,
            "results": results.iter().map(GroupResult::to_json).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "fsync ceiling in {} ({} events per batch, {} B per batch, {} MiB zero-filled file)",
            args.dir.display(),
            args.batch,
            batch_bytes,
            args.prealloc_mib
        );
        for r in &results {
            println!(
                "  {} batch(es)/fdatasync: {:.0} events/s, {:.1} MB/s, {:.0} fdatasync/s; fdatasync {}",
                r.group,
                r.events_per_s(),
                r.bytes as f64 / r.seconds / 1e6,
                r.syncs as f64 / r.seconds,
                r.sync_latency.line()
            );
        }
    }
    Ok(())
}

/// `count` batches of `batch` generated events each, as JSONL bytes.
pub fn make_batches(seed: u64, batch: usize, count: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(GenConfig {
        seed,
        users: 1_000_000,
        zipf_s: 1.1,
        events: (batch * count) as u64,
        end_ms: crate::timefmt::now_millis(),
        span_ms: GenConfig::THIRTY_DAYS_MS,
        only_track: false,
    });
    (0..count)
        .map(|_| {
            let mut b = Vec::with_capacity(batch * 800);
            for _ in 0..batch {
                g.write_event(&mut b);
                b.push(b'\n');
            }
            b
        })
        .collect()
}

fn measure_all(args: &FsyncArgs, path: &Path, batches: &[Vec<u8>]) -> Result<Vec<GroupResult>> {
    let file = preallocate(path, args.prealloc_mib << 20)?;
    args.groups
        .iter()
        .map(|&g| {
            measure(
                &file,
                args.prealloc_mib << 20,
                batches,
                g,
                Duration::from_secs_f64(args.seconds),
            )
        })
        .collect()
}

fn preallocate(path: &Path, size: u64) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let zeros = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all().context("fsync of the preallocated file")?;
    Ok(file)
}

fn measure(
    file: &File,
    size: u64,
    batches: &[Vec<u8>],
    group: usize,
    dur: Duration,
) -> Result<GroupResult> {
    let mut latency = Samples::default();
    let (mut offset, mut syncs, mut events, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let per_batch_events = batches[0].iter().filter(|&&b| b == b'\n').count() as u64;
    let mut buf = Vec::new();
    let mut next = 0usize;
    let start = Instant::now();
    while start.elapsed() < dur {
        buf.clear();
        for _ in 0..group {
            buf.extend_from_slice(&batches[next % batches.len()]);
            next += 1;
        }
        if offset + buf.len() as u64 > size {
            offset = 0;
        }
        file.write_all_at(&buf, offset).context("write")?;
        let t = Instant::now();
        file.sync_data().context("fdatasync")?;
        latency.record(t.elapsed().as_nanos() as u64);
        offset += buf.len() as u64;
        syncs += 1;
        events += per_batch_events * group as u64;
        bytes += buf.len() as u64;
    }
    Ok(GroupResult {
        group,
        syncs,
        events,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        sync_latency: latency.summary(),
    })
}
