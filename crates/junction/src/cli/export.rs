//! `junction bench-export-events --out FILE.csv` (hidden; benchmark baseline only): every
//! stored event with the profile that owns it, as CSV, for the DuckDB baseline of the Compute
//! benchmark (`junction-bench compute-baseline`).
//!
//! Contract:
//! - Like `junction rebuild --in-memory`: refuses a data dir a server holds, and replays the
//!   log with the config's identity rules into an in-memory graph ([`rebuild::replay`]).
//! - Then reads the stored events below the replay's end offset in log order and writes a
//!   header and one row per event a profile owns: `profile_id,timestamp_ms,type,event,revenue`.
//!   `profile_id` is the owner after every merge; `timestamp_ms` the event time the profile
//!   keeps for the event ([`EventRef::timestamp_ms`]); `type` the event type; `event` a
//!   track's name (empty for other types); `revenue` the JSON text of `properties.revenue`
//!   when that is a number, else empty. A field holding a comma, a quote or a line break is
//!   quoted (RFC 4180). Events no profile owns (no usable identifier) are counted, not written.
//! - The file appears complete or not at all (written beside it, then renamed). Prints a
//!   summary (rows, the newest `timestamp_ms`, seconds), one JSON object with `--json`.
//!
//! [`EventRef::timestamp_ms`]: junction_core::identity::EventRef

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::rebuild;
use crate::config::Overrides;
use crate::log::LogReader;

pub const HEADER: &str = "profile_id,timestamp_ms,type,event,revenue";

#[derive(Debug, Serialize)]
pub struct Summary {
    /// Stored events read.
    pub events: u64,
    /// Rows written (events a profile owns).
    pub rows: u64,
    /// Events no profile owns.
    pub unowned: u64,
    pub profiles: usize,
    /// The newest and oldest `timestamp_ms` written (`None` without rows).
    pub max_timestamp_ms: Option<i64>,
    pub min_timestamp_ms: Option<i64>,
    pub next_offset: u64,
    pub replay_seconds: f64,
    pub seconds: f64,
}

/// The owner of one log offset and the event time it keeps for it (profile 0: nobody), as
/// [`crate::unify::owners`] gives them.
type Owner = (junction_core::identity::ProfileId, i64);

/// The fields of a stored event that a row holds.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    properties: Option<Properties>,
}

#[derive(Deserialize)]
struct Properties {
    revenue: Option<serde_json::Value>,
}

pub fn run(overrides: &Overrides, out: &Path, json: bool) -> anyhow::Result<()> {
    let config = crate::config::load(overrides)?;
    let log = rebuild::lock_log(&config)?;
    let result = export(log.dir(), config.identity.clone(), out);
    log.shutdown();
    let summary = result?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "exported {} rows of {} events ({} owned by no profile, {} profiles) to {} in {:.2} s (replay {:.2} s); newest timestamp_ms {}",
            summary.rows,
            summary.events,
            summary.unowned,
            summary.profiles,
            out.display(),
            summary.seconds,
            summary.replay_seconds,
            summary
                .max_timestamp_ms
                .map_or_else(|| "none".to_string(), |t| t.to_string())
        );
    }
    Ok(())
}

/// Replays `log_dir` and writes the CSV to `out`.
pub fn export(
    log_dir: &Path,
    rules: junction_core::identity::Rules,
    out: &Path,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (graph, next) = rebuild::replay(log_dir, rules)?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let profiles = graph.profile_count();
    let owners = crate::unify::owners(&graph, next);
    drop(graph);

    let partial = out.with_extension("csv.partial");
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut summary = Summary {
        events: 0,
        rows: 0,
        unowned: 0,
        profiles,
        max_timestamp_ms: None,
        min_timestamp_ms: None,
        next_offset: next,
        replay_seconds,
        seconds: 0.0,
    };
    writeln!(w, "{HEADER}")?;
    let bar = super::progress(
        Some(next),
        "{bar:40} {pos}/{len} events exported ({per_sec}) eta {eta}",
    );
    let mut reader = LogReader::open(log_dir, 0)
        .with_context(|| format!("cannot open the event log in {}", log_dir.display()))?;
    reader.set_end_offset(Some(next));
    let mut failed: Option<anyhow::Error> = None;
    loop {
        let more = reader.next_frame(&mut |r| {
            if failed.is_some() {
                return;
            }
            summary.events += 1;
            let owner = owners
                .get(usize::try_from(r.offset).unwrap_or(usize::MAX))
                .copied()
                .unwrap_or((0, 0));
            if owner.0 == 0 {
                summary.unowned += 1;
                return;
            }
            match write_row(&mut w, owner, r.json) {
                Ok(()) => {
                    summary.rows += 1;
                    let t = owner.1;
                    summary.max_timestamp_ms =
                        Some(summary.max_timestamp_ms.map_or(t, |m| m.max(t)));
                    summary.min_timestamp_ms =
                        Some(summary.min_timestamp_ms.map_or(t, |m| m.min(t)));
                }
                Err(e) => failed = Some(e.context(format!("event at offset {}", r.offset))),
            }
        });
        if let Some(e) = failed.take() {
            return Err(e);
        }
        bar.set_position(summary.events);
        if !more.context("cannot read the event log")? {
            break;
        }
    }
    bar.finish_and_clear();
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all().map(|()| f))
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Writes the row of one owned event.
fn write_row(w: &mut impl Write, owner: Owner, json: &[u8]) -> anyhow::Result<()> {
    let f: Fields = serde_json::from_slice(json).context("stored event is not a JSON event")?;
    let kind = f.kind.unwrap_or_default();
    write!(w, "{},{},", owner.0, owner.1)?;
    write_field(w, &kind)?;
    w.write_all(b",")?;
    if kind == "track" {
        write_field(w, f.event.as_deref().unwrap_or_default())?;
    }
    w.write_all(b",")?;
    if let Some(serde_json::Value::Number(n)) = f.properties.and_then(|p| p.revenue) {
        write!(w, "{n}")?;
    }
    w.write_all(b"\n")?;
    Ok(())
}

/// Writes `text` as one CSV field, quoted (quotes doubled) when it needs to be.
fn write_field(w: &mut impl Write, text: &str) -> std::io::Result<()> {
    if !text.contains([',', '"', '\n', '\r']) {
        return w.write_all(text.as_bytes());
    }
    w.write_all(b"\"")?;
    w.write_all(text.replace('"', "\"\"").as_bytes())?;
    w.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> String {
        let mut out = Vec::new();
        let owner = (7, 1_700_000_000_000);
        write_row(&mut out, owner, json.as_bytes()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rows_keep_numeric_revenue_and_quote_names() {
        assert_eq!(
            row(r#"{"type":"track","event":"Order Completed","properties":{"revenue":12.5}}"#),
            "7,1700000000000,track,Order Completed,12.5\n"
        );
        assert_eq!(
            row(r#"{"type":"track","event":"Say \"hi\", then","properties":{"revenue":"12"}}"#),
            "7,1700000000000,track,\"Say \"\"hi\"\", then\",\n"
        );
        assert_eq!(
            row(r#"{"type":"page","name":"Home","event":"x","properties":{"revenue":3}}"#),
            "7,1700000000000,page,,3\n"
        );
        assert_eq!(
            row(r#"{"type":"identify","traits":{}}"#),
            "7,1700000000000,identify,,\n"
        );
    }
}
