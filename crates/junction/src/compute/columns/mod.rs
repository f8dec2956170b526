//! Event columns: what the history pass reads of each stored event, kept per sealed segment
//! so that later passes need not decompress and scan the events again.
//!
//! Contract:
//! - [`load`] returns, for every offset below `applied` in the log's segments, the event's
//!   [`Kind`] and the raw values at the paths asked for: read from the segment's column file
//!   when it is valid for the segment file as it is now and holds those paths, else built
//!   from the log (once per segment, by several threads) and, for a sealed segment, written
//!   to its column file (holding the paths it held before as well). The last segment
//!   (written to while the server runs) is always read from the log, never kept.
//! - Column files live in `<data dir>/compute/columns/` (a log outside a data dir, named
//!   other than `log`, keeps none). A file that is missing, truncated, corrupt or made from
//!   a segment file since rewritten is ignored and replaced (see `file.rs`); files of
//!   segments that are gone (retention) and temporary files left by a killed write are
//!   removed by the next [`load`]. Failing to write one only costs the next pass the build.
//! - The columns evaluate exactly like the events: an event of kind [`Kind::Typed`] reads,
//!   through [`Columns::fill`], like its JSON for every aggregate reading `type`, `event`
//!   and the paths asked for ([`junction_core::compute::paths`]).

mod build;
pub use build::Wanted;
mod file;
#[cfg(test)]
mod tests;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use junction_core::compute::paths::{Path, event_object, set};
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

use crate::log::LogReader;

/// A kind: the offset has no event (erased, never written, or not in the log).
const ABSENT: u32 = u32::MAX;
/// A kind: the offset holds an event that is not read (a derived event, when not wanted).
const PRESENT: u32 = u32::MAX - 1;
/// A kind with this bit: index into the part's [`Raw`] events.
const RAW: u32 = 1 << 31;
/// A kind in [`Columns`] with this bit: index into its rows (an event with values).
const VALUED: u32 = 1 << 30;

/// The columns of one part of the log (a segment, or what is written of the last one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Per offset from the part's first: [`ABSENT`], [`RAW`] | an index into `raws`, or an
    /// index into `names`.
    #[serde(skip)]
    kinds: Vec<u32>,
    /// Event type and name (`None`: no `event` string).
    names: Vec<(Box<str>, Option<Box<str>>)>,
    raws: Vec<Raw>,
    paths: Vec<Path>,
    /// Per path: (offset from the part's first, raw JSON of the value), by offset.
    values: Vec<Vec<(u32, Box<str>)>>,
}

/// An event kept whole: a derived event, or one that is not a JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Raw {
    pub derived: bool,
    pub json: Vec<u8>,
}

impl Part {
    /// Whether every index in the part points inside it (a file that passed its checksum
    /// can still have been written by another version).
    fn check(&self) -> Result<(), String> {
        let kinds_ok = self.kinds.iter().all(|&k| match k {
            ABSENT | PRESENT => true,
            k if k & RAW != 0 => ((k & !RAW) as usize) < self.raws.len(),
            k => (k as usize) < self.names.len(),
        });
        let values_ok = self.values.len() == self.paths.len()
            && (self.values.iter()).all(|column| {
                column.windows(2).all(|w| w[0].0 < w[1].0)
                    && column
                        .last()
                        .is_none_or(|l| (l.0 as usize) < self.kinds.len())
            });
        match kinds_ok && values_ok {
            true => Ok(()),
            false => Err("indexes out of range".into()),
        }
    }
}

/// What an offset holds ([`Columns::kind`]).
pub enum Kind<'c> {
    Absent,
    /// An event not read.
    Present,
    /// An event to read from its JSON.
    Raw(&'c Raw),
    /// An event of type and name [`Columns::names`]`[id]`, with values at the paths (a row)
    /// or none.
    Typed(u32, Option<u32>),
}

/// What the history pass reads of every offset below its end (see the module docs).
#[derive(Debug, Default, PartialEq)]
pub struct Columns {
    /// The offset of `kinds[0]`.
    first: u64,
    /// As [`Part::kinds`], with indexes into the fields below, and [`VALUED`] | a row for
    /// an event with a value at some path.
    kinds: Vec<u32>,
    names: Vec<(Box<str>, Option<Box<str>>)>,
    raws: Vec<Raw>,
    /// The paths asked for.
    paths: Vec<Path>,
    /// Per row: the event's type and name.
    rows: Vec<u32>,
    /// Per row, per path: the raw value.
    values: Vec<Option<Box<str>>>,
}

impl Columns {
    pub fn kind(&self, offset: u64) -> Kind<'_> {
        let k =
            (offset.checked_sub(self.first)).and_then(|i| self.kinds.get(usize::try_from(i).ok()?));
        match k {
            None | Some(&ABSENT) => Kind::Absent,
            Some(&PRESENT) => Kind::Present,
            Some(&k) if k & RAW != 0 => Kind::Raw(&self.raws[(k & !RAW) as usize]),
            Some(&k) if k & VALUED != 0 => {
                Kind::Typed(self.rows[(k & !VALUED) as usize], Some(k & !VALUED))
            }
            Some(&k) => Kind::Typed(k, None),
        }
    }

    /// Event types and names, by [`Kind::Typed`] id.
    pub fn names(&self) -> &[(Box<str>, Option<Box<str>>)] {
        &self.names
    }

    /// The object of an event of type and name `id` to give to [`Columns::fill`].
    pub fn object(&self, id: u32) -> serde_json::Value {
        let (kind, name) = &self.names[id as usize];
        event_object(kind, name.as_deref(), &self.paths)
    }

    /// Sets the values of the event of `row` (none: no values) in `object`, made by
    /// [`Columns::object`] for its type and name: it then evaluates like the event (see the
    /// module docs).
    pub fn fill(&self, object: &mut serde_json::Value, row: Option<u32>) {
        for (p, path) in self.paths.iter().enumerate() {
            let raw = row.and_then(|r| self.values[r as usize * self.paths.len() + p].as_deref());
            let value = raw.and_then(|v| serde_json::from_str(v).ok());
            set(object, path, value.unwrap_or_default());
        }
    }

    /// The columns of `parts` (of the segments starting at `ranges`, in offset order,
    /// without gaps) below `end`, with the values at `paths`: the kinds are brought to
    /// shared ids by `workers` threads, then copied.
    fn join(
        ranges: &[(u64, Option<u64>, &FsPath)],
        mut parts: Vec<Part>,
        end: u64,
        paths: &[Path],
        workers: usize,
    ) -> Columns {
        let mut columns = Columns {
            first: ranges.first().map_or(0, |r| r.0),
            paths: paths.to_vec(),
            ..Columns::default()
        };
        // Shared ids of each part's names and raw events.
        let mut ids: HashMap<(Box<str>, Option<Box<str>>), u32> = HashMap::default();
        let mut maps = Vec::with_capacity(parts.len());
        for part in &mut parts {
            let names: Vec<u32> = (part.names.drain(..))
                .map(|n| {
                    let next = columns.names.len() as u32;
                    *ids.entry(n).or_insert_with_key(|n| {
                        columns.names.push(n.clone());
                        next
                    })
                })
                .collect();
            maps.push((names, columns.raws.len() as u32));
            columns.raws.append(&mut part.raws);
        }
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<(&mut Part, &IdMap)>> =
            parts.iter_mut().zip(&maps).map(Mutex::new).collect();
        let remap = || -> anyhow::Result<()> {
            while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                let (part, (names, raws)) = &mut *slot;
                for k in &mut part.kinds {
                    *k = match *k {
                        k @ (ABSENT | PRESENT) => k,
                        k if k & RAW != 0 => RAW | (raws + (k & !RAW)),
                        k => names[k as usize],
                    };
                }
            }
            Ok(())
        };
        run(workers, remap).expect("remapping does not fail");
        drop(slots);
        for ((from, _, _), part) in ranges.iter().zip(parts) {
            columns.append(*from, part, end);
        }
        columns
    }

    /// Appends `part` (its kinds remapped), whose first offset is `from`, keeping its
    /// offsets below `end`.
    fn append(&mut self, from: u64, mut part: Part, end: u64) {
        let keep = usize::try_from(end.saturating_sub(from)).unwrap_or(usize::MAX);
        self.kinds
            .extend_from_slice(&part.kinds[..keep.min(part.kinds.len())]);
        let width = self.paths.len();
        for (p, path) in self.paths.iter().enumerate() {
            let Some(q) = part.paths.iter().position(|q| q == path) else {
                continue;
            };
            for (i, v) in std::mem::take(&mut part.values[q]) {
                let Some(k) = self.kinds.get_mut(
                    usize::try_from(from + u64::from(i) - self.first).unwrap_or(usize::MAX),
                ) else {
                    continue;
                };
                let row = match *k {
                    ABSENT | PRESENT => continue,
                    k if k & RAW != 0 => continue,
                    k if k & VALUED != 0 => k & !VALUED,
                    name => {
                        let row = self.rows.len() as u32;
                        self.rows.push(name);
                        self.values.resize(self.values.len() + width, None);
                        *k = VALUED | row;
                        row
                    }
                };
                self.values[row as usize * width + p] = Some(v);
            }
        }
    }
}

/// A part's shared ids: of its names (by its own ids), and of its first raw event.
type IdMap = (Vec<u32>, u32);

/// Where the column files of the log in `log_dir` are kept (see the module docs).
pub fn dir_for(log_dir: &FsPath) -> Option<PathBuf> {
    let parent = log_dir.parent().filter(|_| log_dir.ends_with("log"))?;
    Some(parent.join("compute").join("columns"))
}

/// The columns of every offset below `applied`, with the values at `paths` (see the module
/// docs), read by `workers` threads; `done` is told the offsets of each segment read.
pub fn load(
    log_dir: &FsPath,
    applied: u64,
    paths: &[Path],
    (workers, stop): (usize, &AtomicBool),
    wanted: build::Wanted<'_>,
    done: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Columns> {
    let segments = LogReader::segments(log_dir)?;
    let keep_dir = dir_for(log_dir);
    if let Some(dir) = &keep_dir {
        let sealed = &segments[..segments.len().saturating_sub(1)];
        sweep(dir, &sealed.iter().map(|(b, _)| *b).collect::<Vec<_>>());
    }
    // (first offset, next segment's first offset, file) of each segment read.
    let ranges: Vec<(u64, Option<u64>, &FsPath)> = (segments.iter().enumerate())
        .map(|(i, (base, path))| (*base, segments.get(i + 1).map(|s| s.0), &**path))
        .filter(|(base, _, _)| *base < applied)
        .collect();
    let parts: Vec<Mutex<Option<Part>>> = ranges.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || -> anyhow::Result<()> {
        loop {
            // The last segment first: it is read from the log, the others mostly not.
            let i = match next.fetch_add(1, Ordering::Relaxed) {
                0 => ranges.len().saturating_sub(1),
                i => i - 1,
            };
            let Some(&(base, end, path)) = ranges.get(i) else {
                return Ok(());
            };
            if stop.load(Ordering::Acquire) {
                anyhow::bail!("the history pass was stopped");
            }
            let part = match (end, &keep_dir) {
                (Some(end), Some(dir)) => sealed(log_dir, dir, (base, end, path), paths, stop),
                (Some(end), None) => build::build(log_dir, (base, end), paths, wanted, stop),
                (None, _) => build::build(log_dir, (base, applied), paths, wanted, stop),
            };
            let part = part.inspect_err(|_| next.store(ranges.len(), Ordering::Relaxed))?;
            done(part.kinds.len() as u64);
            *parts[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(part);
        }
    };
    let workers = workers.min(ranges.len()).max(1);
    run(workers, work)?;
    let parts: Vec<Part> = (parts.into_iter())
        .map(|p| p.into_inner().unwrap_or_else(|e| e.into_inner()))
        .map(|p| p.expect("every segment was read"))
        .collect();
    Ok(Columns::join(&ranges, parts, applied, paths, workers))
}

/// Runs `work` on `workers` threads (the calling one when 1): their results, or an error
/// (the first one).
pub fn run<T: Send>(
    workers: usize,
    work: impl Fn() -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    if workers == 1 {
        return Ok(vec![work()?]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                std::thread::Builder::new()
                    .name("compute-columns".into())
                    .spawn_scoped(s, &work)
            })
            .collect::<Result<_, _>>()?;
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The columns of the sealed segment `[base, end)` in file `segment`: its column file when
/// valid and holding `paths`, else built and kept (with the paths the file held as well).
fn sealed(
    log_dir: &FsPath,
    dir: &FsPath,
    (base, end, segment): (u64, u64, &FsPath),
    paths: &[Path],
    stop: &AtomicBool,
) -> anyhow::Result<Part> {
    let Ok(id) = file::Identity::of(segment) else {
        // Gone (retention) or unreadable: the reader says which.
        return build::build(log_dir, (base, end), paths, build::Wanted::ALL, stop);
    };
    let kept = file::read(dir, base, id);
    let mut wanted: Vec<Path> = kept.iter().flat_map(|p| p.paths.clone()).collect();
    if let Some(part) = kept.filter(|p| paths.iter().all(|q| p.paths.contains(q))) {
        return Ok(part);
    }
    wanted.extend(paths.iter().cloned());
    wanted.sort();
    wanted.dedup();
    let part = build::build(log_dir, (base, end), &wanted, build::Wanted::ALL, stop)?;
    if let Err(e) = file::write(dir, base, id, &part) {
        tracing::warn!(error = %format!("{e:#}"), "compute cannot keep a column file");
    }
    Ok(part)
}

/// Removes column files of segments not in `sealed` and temporary files.
fn sweep(dir: &FsPath, sealed: &[u64]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let stale = match file::base_of(&path) {
            Some(base) => sealed.binary_search(&base).is_err(),
            None => path.extension().is_some_and(|e| e == "tmp"),
        };
        if stale && let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), error = %e, "compute cannot remove a column file");
        }
    }
}
