//! `junction events tail`: prints stored events straight from the log files, so it works on
//! a data dir whether or not a server is running (read-only, no lock).
//!
//! Contract: with `--json`, exactly one stored event per line: the normalized Segment event
//! as stored (with `receivedAt` and `messageId`). `--follow` keeps polling for new events.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::log::LogReader;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep waiting for new events.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of this source.
    #[arg(long)]
    pub source: Option<String>,
    /// One stored event per line as JSON.
    #[arg(long)]
    pub json: bool,
    /// Start at this log offset.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    #[command(flatten)]
    pub location: super::Location,
}

#[derive(Deserialize)]
struct Summary<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "anonymousId")]
    anonymous_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "receivedAt")]
    received_at: Option<std::borrow::Cow<'a, str>>,
}

pub fn run(args: &TailArgs) -> anyhow::Result<()> {
    let data_dir: PathBuf = crate::config::resolve_data_dir(&args.location.overrides(None))?;
    let log_dir = data_dir.join("log");
    if !log_dir.exists() {
        anyhow::bail!(
            "no event log in {} (has the server run with this data dir?)",
            data_dir.display()
        );
    }
    let mut reader = LogReader::open(&log_dir, args.from)
        .with_context(|| format!("cannot open the event log in {}", log_dir.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        match reader.next_record().context("cannot read the event log")? {
            Some(rec) => {
                if args.source.as_ref().is_some_and(|s| **s != *rec.source) {
                    continue;
                }
                let written = if args.json {
                    out.write_all(&rec.json).and_then(|_| out.write_all(b"\n"))
                } else {
                    let s: Summary = serde_json::from_slice(&rec.json)
                        .with_context(|| format!("record {} is not a JSON event", rec.offset))?;
                    let what = s.event.or(s.name).unwrap_or_default();
                    writeln!(
                        out,
                        "{:>8} {} {:<10} {:<8} {:<24} user={} anon={} id={}",
                        rec.offset,
                        s.received_at.unwrap_or_default(),
                        rec.source,
                        s.kind.unwrap_or_default(),
                        what,
                        s.user_id.unwrap_or_default(),
                        s.anonymous_id.unwrap_or_default(),
                        rec.message_id
                    )
                };
                if let Err(e) = written {
                    return quiet_on_broken_pipe(e);
                }
            }
            None if args.follow => {
                if let Err(e) = out.flush() {
                    return quiet_on_broken_pipe(e);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            None => break,
        }
    }
    out.flush().or_else(quiet_on_broken_pipe)
}

fn quiet_on_broken_pipe(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e.into())
    }
}
