//! Column files: kept, reused, and never trusted when stale or damaged.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::AtomicBool;

use junction_core::compute::paths::Path;

use super::file::{self, Identity};
use super::{Columns, Kind, load};
use crate::compute::history::tests::{events, write_log};
use crate::log::LogReader;

const EVENTS: u64 = 1500;

fn path(p: &str) -> Path {
    p.split('.').map(Into::into).collect()
}

/// A log of [`EVENTS`] events with projections in `<tmp>/data/log`.
fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("data").join("log");
    write_log(&log, &events(EVENTS as usize), |e| e.identity.clone());
    assert!(LogReader::segment_starts(&log).unwrap().len() > 4);
    (tmp, log)
}

fn columns(log: &FsPath, paths: &[Path]) -> Columns {
    load(
        log,
        EVENTS,
        paths,
        (3, &AtomicBool::new(false)),
        super::Wanted::ALL,
        &|_| (),
    )
    .unwrap()
}

/// The same log read without keeping columns (a log directory not named `log`).
fn built(log: &FsPath, paths: &[Path]) -> Columns {
    let copy = log.with_file_name("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for (base, seg) in LogReader::segments(log).unwrap() {
        std::fs::copy(seg, copy.join(format!("{base:020}.seg"))).unwrap();
    }
    let c = columns(&copy, paths);
    std::fs::remove_dir_all(copy).unwrap();
    c
}

/// `(base, segment file, column file)` of the first sealed segment.
fn first(log: &FsPath) -> (u64, PathBuf, PathBuf) {
    let (base, seg) = LogReader::segments(log).unwrap().remove(0);
    let kept = file::path_of(&super::dir_for(log).unwrap(), base);
    (base, seg, kept)
}

/// A [`data_dir`] whose columns of `properties.revenue` are kept: with them, and the
/// [`first`] sealed segment.
fn kept_columns() -> (tempfile::TempDir, PathBuf, Columns, (u64, PathBuf, PathBuf)) {
    let (tmp, log) = data_dir();
    let good = columns(&log, &[path("properties.revenue")]);
    let first = first(&log);
    (tmp, log, good, first)
}

fn revenue_of(c: &Columns, offset: u64) -> Option<serde_json::Value> {
    let Kind::Typed(id, row) = c.kind(offset) else {
        return None;
    };
    let mut object = c.object(id);
    c.fill(&mut object, row);
    let revenue = object.pointer("/properties/revenue")?;
    (!revenue.is_null()).then(|| revenue.clone())
}

#[test]
fn kept_columns_equal_columns_built_from_the_log() {
    let (_tmp, log) = data_dir();
    let paths = [path("properties.revenue")];
    let first = columns(&log, &paths);
    let sealed = LogReader::segment_starts(&log).unwrap().len() - 1;
    let kept = std::fs::read_dir(super::dir_for(&log).unwrap()).unwrap();
    assert_eq!(kept.count(), sealed, "one file per sealed segment");
    let again = columns(&log, &paths);
    assert_eq!(again, first);
    assert_eq!(built(&log, &paths), first);
    let revenues = (0..EVENTS)
        .filter(|&o| revenue_of(&first, o).is_some())
        .count();
    assert!(revenues > 500, "{revenues} events with a revenue");
}

/// A column file made for the segment file before a rewrite (person deletion renames a new
/// file over it) is not read again, even when it is whole.
#[test]
fn a_rewritten_segment_invalidates_its_columns() {
    let (_tmp, log, good, (base, seg, kept)) = kept_columns();
    let paths = [path("properties.revenue")];
    // Columns that differ from the log, for the segment file as it is: they are read.
    let id = Identity::of(&seg).unwrap();
    let mut part = file::decode(std::fs::read(&kept).unwrap(), base, id).unwrap();
    for (_, v) in &mut part.values[0] {
        *v = "1000".into();
    }
    file::write(kept.parent().unwrap(), base, id, &part).unwrap();
    let offset = part.values[0][0].0 as u64 + base;
    assert_eq!(
        revenue_of(&columns(&log, &paths), offset),
        Some(1000.into())
    );
    // The same bytes renamed over the segment: a rewrite.
    let tmp = seg.with_extension("rewrite");
    std::fs::copy(&seg, &tmp).unwrap();
    std::fs::rename(&tmp, &seg).unwrap();
    assert_eq!(columns(&log, &paths), good);
    let id = Identity::of(&seg).unwrap();
    assert!(
        file::decode(std::fs::read(&kept).unwrap(), base, id).is_ok(),
        "rebuilt"
    );
}

#[test]
fn a_corrupt_or_truncated_column_file_is_ignored_and_rebuilt() {
    let (_tmp, log, good, (base, seg, kept)) = kept_columns();
    let paths = [path("properties.revenue")];
    let whole = std::fs::read(&kept).unwrap();
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 5] = [
        ("a flipped byte", |b| {
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
        }),
        ("truncated", |b| b.truncate(b.len() - 3)),
        ("a header only", |b| b.truncate(64)),
        ("empty", Vec::clear),
        ("another version", |b| b[8] = 9),
    ];
    for (what, damage) in damages {
        let mut bytes = whole.clone();
        damage(&mut bytes);
        std::fs::write(&kept, &bytes).unwrap();
        assert_eq!(columns(&log, &paths), good, "{what}");
        let id = Identity::of(&seg).unwrap();
        let rebuilt = file::decode(std::fs::read(&kept).unwrap(), base, id);
        assert!(rebuilt.is_ok(), "{what}: rebuilt");
    }
}

/// A write killed before its rename leaves only its temporary file, never read and removed
/// by the next load, like the files of segments that are gone.
#[test]
fn a_killed_write_and_a_removed_segment_leave_no_column_file_behind() {
    let (_tmp, log) = data_dir();
    let paths = [path("properties.revenue")];
    columns(&log, &paths);
    let (base, seg, kept) = first(&log);
    let whole = std::fs::read(&kept).unwrap();
    let dir = kept.parent().unwrap();
    // As `write_atomic` leaves it when killed between its write and its rename.
    std::fs::write(kept.with_extension("tmp"), &whole[..whole.len() / 2]).unwrap();
    std::fs::remove_file(&kept).unwrap();
    // Retention removed the oldest segment.
    std::fs::remove_file(&seg).unwrap();
    let rest = columns(&log, &paths);
    assert!(matches!(rest.kind(base), Kind::Absent));
    assert_eq!(rest, built(&log, &paths));
    let names: Vec<_> = (std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let sealed = LogReader::segment_starts(&log).unwrap().len() - 1;
    assert_eq!(names.len(), sealed, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".cols")), "{names:?}");
}

/// A catalog reading another path gets it added to the kept files, which keep the first.
#[test]
fn paths_asked_later_join_the_kept_columns() {
    let (_tmp, log) = data_dir();
    let (revenue, plan) = (path("properties.revenue"), path("traits.plan"));
    columns(&log, std::slice::from_ref(&revenue));
    let plans = columns(&log, std::slice::from_ref(&plan));
    assert_eq!(plans, built(&log, std::slice::from_ref(&plan)));
    let (base, seg, kept) = first(&log);
    let part = file::decode(
        std::fs::read(&kept).unwrap(),
        base,
        Identity::of(&seg).unwrap(),
    );
    assert_eq!(part.unwrap().paths, [revenue.clone(), plan.clone()]);
    let both = [plan, revenue];
    assert_eq!(columns(&log, &both), built(&log, &both));
}
