//! Behaviour tests of the event log: round trips, concurrency, recovery, rolling, retention,
//! backpressure, failure injection, identity-only reading and the v1/v2 format fixtures.

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::format::{Payload, SEGMENT_HEADER_LEN, SegmentHeader};
use super::*;

fn config(dir: &Path, segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        ..LogConfig::new(dir)
    }
}

fn open(config: LogConfig) -> (Log, RecoveryReport) {
    Log::open(config).expect("open log")
}

fn event_json(offset_hint: u64, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"track","event":"Order Completed","n":{offset_hint},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

/// What one appended entry should read back as (`json: None` = erased).
#[derive(Clone, Debug)]
struct Expect {
    source: String,
    received_at_ms: i64,
    message_id: String,
    json: Option<Vec<u8>>,
    /// The identity projection (empty = none).
    identity: Vec<u8>,
}

/// The identity projection `make_frame` gives entry `i` of frame `seed`; every 5th has none.
fn identity_json(seed: u64, i: u64) -> Vec<u8> {
    match (seed + i) % 5 == 1 {
        true => Vec::new(),
        false => format!(r#"{{"userId":"u-{seed}-{i}"}}"#).into_bytes(),
    }
}

/// Builds a frame of `n` entries; every 7th entry of `seed` is erased (and handed to the
/// encoder with an identity, which must not be stored), every 5th has no identity.
fn make_frame(
    seed: u64,
    n: u64,
    pad: usize,
    codec: Codec,
    received_at_ms: i64,
) -> (PendingFrame, Vec<Expect>) {
    let source = format!("src-{}", seed % 3);
    let expect: Vec<Expect> = (0..n)
        .map(|i| Expect {
            source: source.clone(),
            received_at_ms,
            message_id: format!("msg-{seed}-{i}"),
            json: ((seed + i) % 7 != 3).then(|| event_json(seed * 100 + i, pad)),
            identity: identity_json(seed, i),
        })
        .collect();
    let entries = expect.iter().map(|e| Entry {
        message_id: &e.message_id,
        json: e.json.as_deref().unwrap_or_default(),
        identity: &e.identity,
    });
    (
        PendingFrame::encode(&source, received_at_ms, entries, codec),
        expect,
    )
}

fn read_all(dir: &Path, from: u64) -> Vec<Record> {
    drain(LogReader::open(dir, from).expect("open reader"))
}

/// What an identity-only reader returns from `from` on.
fn read_identities(dir: &Path, from: u64) -> Vec<Record> {
    drain(LogReader::open_identities(dir, from).expect("open identity reader"))
}

fn drain(mut reader: LogReader) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(record) = reader.next_record().expect("read record") {
        out.push(record);
    }
    out
}

/// Checks that `records` are exactly the non-erased entries of `expected[from..]`, with
/// their JSON and identity.
fn assert_records(records: &[Record], expected: &[Expect], from: u64) {
    check_records(records, expected, from, false);
}

/// Like [`assert_records`] for an identity-only reader: the identity instead of the JSON
/// where there is one, the JSON where there is none.
fn assert_identity_records(records: &[Record], expected: &[Expect], from: u64) {
    check_records(records, expected, from, true);
}

fn check_records(records: &[Record], expected: &[Expect], from: u64, identity_only: bool) {
    let want: Vec<(u64, &Expect)> = (0u64..)
        .zip(expected)
        .skip(from as usize)
        .filter(|(_, e)| e.json.is_some())
        .collect();
    assert_eq!(records.len(), want.len(), "record count from offset {from}");
    for (record, (offset, e)) in records.iter().zip(want) {
        assert_eq!(record.offset, offset);
        assert_eq!(&*record.source, e.source);
        assert_eq!(record.received_at_ms, e.received_at_ms);
        assert_eq!(record.message_id, e.message_id);
        assert_eq!(record.identity, e.identity, "identity at offset {offset}");
        let json = match identity_only && !e.identity.is_empty() {
            true => Some(Vec::new()),
            false => e.json.clone(),
        };
        assert_eq!(Some(&record.json), json.as_ref(), "json at offset {offset}");
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Appends `frames` frames of `per_frame` entries; returns the expectations and each
/// frame's `(byte position, length)` assuming they all landed in the first segment.
fn append_frames(
    log: &Log,
    frames: u64,
    per_frame: u64,
    seed0: u64,
) -> (Vec<Expect>, Vec<(u64, u64)>) {
    let mut expected = Vec::new();
    let mut spans = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    for seed in seed0..seed0 + frames {
        let (frame, expect) = make_frame(seed, per_frame, 20, Codec::None, 1_000 + seed as i64);
        let len = frame.len_bytes() as u64;
        let appended = log.append_blocking(frame).unwrap();
        assert_eq!(appended.first_offset, log.next_offset() - per_frame);
        spans.push((pos, len));
        pos += len;
        expected.extend(expect);
    }
    (expected, spans)
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Log>();
    fn check_send<T: Send>() {}
    check_send::<LogReader>();
    check_send::<PendingFrame>();
}

#[test]
fn round_trip_with_both_codecs() {
    for codec in [Codec::None, Codec::Lz4] {
        let tmp = tempfile::tempdir().unwrap();
        let (log, report) = open(LogConfig {
            codec,
            ..config(tmp.path(), 1 << 20)
        });
        assert!(report.created);
        assert_eq!(log.codec(), codec);
        let mut expected = Vec::new();
        for seed in 0..120u64 {
            let (frame, expect) = make_frame(
                seed,
                1 + seed % 5,
                (seed as usize * 37) % 700,
                codec,
                seed as i64,
            );
            let appended = log.append_blocking(frame).unwrap();
            assert_eq!(
                appended.first_offset,
                expected.len() as u64,
                "dense offsets"
            );
            assert_eq!(appended.count as usize, expect.len());
            expected.extend(expect);
        }
        assert_eq!(log.next_offset(), expected.len() as u64);
        assert_records(&read_all(tmp.path(), 0), &expected, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_dense_unique_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 64 << 10));
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20u64 {
                let (frame, expect) = make_frame(task * 1000 + i, 3, 50, Codec::Lz4, 7);
                got.push((log.append(frame).await.unwrap(), expect));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_by_key(|(appended, _)| appended.first_offset);
    let mut expected = Vec::new();
    for (appended, expect) in all {
        assert_eq!(
            appended.first_offset,
            expected.len() as u64,
            "no gap, no overlap"
        );
        expected.extend(expect);
    }
    assert_eq!(expected.len(), 32 * 20 * 3);
    assert_records(&read_all(tmp.path(), 0), &expected, 0);
    let stats = log.stats();
    assert_eq!(stats.appended_frames, 640);
    assert!(
        stats.fsync_seconds.count() <= 640,
        "at most one fdatasync per batch"
    );
    assert!(stats.segments > 1, "rolled: {stats:?}");
}

#[test]
fn restart_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 4096));
    let (mut expected, _) = append_frames(&log, 60, 2, 0);
    drop(log);
    let (log, report) = open(config(tmp.path(), 4096));
    assert_eq!(report.next_offset, 120);
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.torn_tail.is_none());
    assert!(!report.created);
    assert_eq!(report.segments, segment_files(tmp.path()).len());
    let (more, _) = append_frames(&log, 1, 2, 60);
    expected.extend(more);
    log.shutdown();
    assert_records(&read_all(tmp.path(), 0), &expected, 0);
}

/// Damages the last of 10 frames (or the bytes after it) with `damage`, reopens, and checks
/// that exactly the frames before the damage survive and appends continue after them.
fn check_torn_tail(damage: impl FnOnce(&Path, (u64, u64)), last_frame_survives: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 64 << 10));
    let (mut expected, spans) = append_frames(&log, 10, 2, 0);
    drop(log);
    let segment = &segment_files(dir)[0];
    damage(segment, spans[9]);
    let before = fs::read(segment).unwrap();
    // A reader never repairs anything.
    let survivors = if last_frame_survives { 20 } else { 18 };
    assert_records(&read_all(dir, 0), &expected[..survivors], 0);
    assert_eq!(
        fs::read(segment).unwrap(),
        before,
        "reader modified the segment"
    );

    let (log, report) = open(config(dir, 64 << 10));
    assert_eq!(report.next_offset, survivors as u64);
    assert!(report.truncated_bytes > 0, "{report:?}");
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(
        torn.position,
        if last_frame_survives {
            spans[9].0 + spans[9].1
        } else {
            spans[9].0
        }
    );
    expected.truncate(survivors);
    let (more, _) = append_frames(&log, 3, 2, 100);
    assert_eq!(log.next_offset(), survivors as u64 + 6);
    expected.extend(more);
    drop(log);
    let (_log, report) = open(config(dir, 64 << 10));
    assert_eq!(report.truncated_bytes, 0, "tail was zeroed: {report:?}");
    assert_records(&read_all(dir, 0), &expected, 0);
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at).unwrap();
}

#[test]
fn torn_tail_half_written_frame() {
    check_torn_tail(
        |seg, (pos, len)| patch(seg, pos + len / 2, &vec![0; (len - len / 2) as usize]),
        false,
    );
}

#[test]
fn torn_tail_header_without_body() {
    check_torn_tail(
        |seg, (pos, len)| patch(seg, pos + 8, &vec![0; len as usize - 8]),
        false,
    );
}

#[test]
fn torn_tail_garbage_crc() {
    check_torn_tail(
        |seg, (pos, _)| patch(seg, pos + 4, &[0xde, 0xad, 0xbe, 0xef]),
        false,
    );
}

#[test]
fn torn_tail_impossible_length() {
    check_torn_tail(
        |seg, (pos, _)| patch(seg, pos, &u32::MAX.to_le_bytes()),
        false,
    );
}

#[test]
fn torn_tail_file_cut_inside_the_frame() {
    check_torn_tail(
        |seg, (pos, len)| {
            fs::OpenOptions::new()
                .write(true)
                .open(seg)
                .unwrap()
                .set_len(pos + len - 3)
                .unwrap()
        },
        false,
    );
}

#[test]
fn torn_tail_random_bytes_after_the_end() {
    check_torn_tail(
        |seg, (pos, len)| patch(seg, pos + len + 100, b"\x13\x37garbage\xff"),
        true,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any truncation point or bit flip inside the last frame drops exactly that frame; junk
    /// after the end drops nothing. Appends continue at the right offset either way.
    #[test]
    fn torn_tail_property(frames in 1u64..6, kind in 0u8..3, at in any::<prop::sample::Index>(), bit in 0u8..8, junk in prop::collection::vec(1u8..=255, 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (log, _) = open(config(dir, 16 << 10));
        let (mut expected, spans) = append_frames(&log, frames, 1 + frames % 3, 0);
        drop(log);
        let segment = &segment_files(dir)[0];
        let (pos, len) = *spans.last().unwrap();
        let per_frame = expected.len() as u64 / frames;
        let survivors = match kind {
            0 => { // cut: zero everything from a point inside the frame to its end
                let k = at.index(len as usize) as u64;
                patch(segment, pos + k, &vec![0; (len - k) as usize]);
                expected.len() as u64 - per_frame
            }
            1 => { // flip one bit anywhere in the frame
                let k = pos + at.index(len as usize) as u64;
                let mut byte = [0u8];
                fs::File::open(segment).unwrap().read_exact_at(&mut byte, k).unwrap();
                patch(segment, k, &[byte[0] ^ (1 << bit)]);
                expected.len() as u64 - per_frame
            }
            _ => { // junk somewhere after the end
                patch(segment, pos + len + at.index(1000) as u64, &junk);
                expected.len() as u64
            }
        };
        expected.truncate(survivors as usize);
        let (log, report) = open(config(dir, 16 << 10));
        prop_assert_eq!(report.next_offset, survivors);
        // Zeroing a whole frame leaves nothing to discard; every other damage leaves bytes.
        let whole_frame_zeroed = kind == 0 && at.index(len as usize) == 0;
        prop_assert_eq!(report.truncated_bytes > 0, !whole_frame_zeroed);
        let (more, _) = append_frames(&log, 1, 1, 50);
        prop_assert_eq!(log.next_offset(), survivors + 1);
        expected.extend(more);
        drop(log);
        assert_records(&read_all(dir, 0), &expected, 0);
    }
}

#[test]
fn rolls_across_small_segments_and_reads_from_any_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1024));
    let mut expected = Vec::new();
    for seed in 0..80u64 {
        // One frame larger than a whole segment gets a segment of its own.
        let pad = if seed == 40 { 3000 } else { 30 };
        let codec = if seed % 2 == 0 || seed == 40 {
            Codec::None
        } else {
            Codec::Lz4
        };
        let (frame, expect) = make_frame(seed, 1 + seed % 3, pad, codec, 5);
        log.append_blocking(frame).unwrap();
        expected.extend(expect);
    }
    let stats = log.stats();
    let files = segment_files(dir);
    assert!(files.len() > 10, "{} segments", files.len());
    assert_eq!(stats.segments, files.len() as u64);
    let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(stats.size_bytes, on_disk);
    assert!(
        files.iter().any(|f| fs::metadata(f).unwrap().len() > 3000),
        "big frame segment"
    );
    let n = expected.len() as u64;
    for from in 0..=n + 2 {
        assert_records(&read_all(dir, from), &expected, from.min(n));
    }
    drop(log);
    // Segment boundaries survive a restart.
    let (_log, report) = open(config(dir, 1024));
    assert_eq!(report.next_offset, n);
    assert_records(&read_all(dir, 17), &expected, 17);
}

#[test]
fn reader_follows_a_live_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut reader = LogReader::open(&dir, 0).unwrap(); // before the first segment exists
    assert!(reader.next_record().unwrap().is_none());
    let (log, _) = open(config(&dir, 2048));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut expected = Vec::new();
            for seed in 0..300u64 {
                let (frame, expect) = make_frame(seed, 2, 10, Codec::Lz4, 1);
                log.append_blocking(frame).unwrap();
                expected.extend(expect);
            }
            expected
        })
    };
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while records.len() < 600 - 600 / 7 - 1 || !writer.is_finished() {
        match reader.next_record().unwrap() {
            Some(record) => records.push(record),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
        assert!(
            Instant::now() < deadline,
            "reader stalled at {} records",
            records.len()
        );
    }
    while let Some(record) = reader.next_record().unwrap() {
        records.push(record);
    }
    let expected = writer.join().unwrap();
    assert_records(&records, &expected, 0);
}

#[test]
fn end_bound_stops_at_the_durable_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 1 << 20));
    let (expected, _) = append_frames(&log, 4, 2, 0);
    let mut reader = LogReader::open(tmp.path(), 0).unwrap();
    reader.set_end_offset(Some(4));
    let first: Vec<_> = std::iter::from_fn(|| reader.next_record().unwrap()).collect();
    assert_records(&first, &expected[..4], 0);
    reader.set_end_offset(Some(log.next_offset()));
    let rest: Vec<_> = std::iter::from_fn(|| reader.next_record().unwrap()).collect();
    assert_records(&rest, &expected, 4);
}

#[tokio::test]
async fn subscribe_reports_the_durable_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 1 << 20));
    let mut rx = log.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let (frame, _) = make_frame(1, 3, 5, Codec::None, 0);
    let appended = log.append(frame).await.unwrap();
    assert_eq!(
        appended,
        Appended {
            first_offset: 0,
            count: 3
        }
    );
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*rx.borrow(), 3);
    let empty = PendingFrame::encode("s", 0, [], Codec::None);
    assert_eq!(
        log.append(empty).await.unwrap(),
        Appended {
            first_offset: 3,
            count: 0
        }
    );
}

#[test]
fn retention_by_bytes_keeps_the_newest_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let retention = Retention {
        max_bytes: Some(4096),
        max_age: None,
    };
    let (log, _) = open(LogConfig {
        retention,
        ..config(dir, 1024)
    });
    let (expected, _) = append_frames(&log, 100, 1, 0);
    let stats = log.stats();
    assert!(stats.size_bytes <= 4096, "{stats:?}");
    assert_eq!(segment_files(dir).len() as u64, stats.segments);
    assert!(stats.first_offset > 0, "old segments deleted: {stats:?}");
    let first = segment::list_segments(dir).unwrap()[0].0;
    assert_eq!(first, stats.first_offset);
    // A consumer behind retention continues at the oldest kept offset.
    let records = read_all(dir, 0);
    assert_eq!(
        records[0].offset,
        expected
            .iter()
            .skip(first as usize)
            .position(|e| e.json.is_some())
            .unwrap() as u64
            + first
    );
    assert_records(&records, &expected, first);
}

const HOUR_MS: i64 = 3_600_000;

fn age_retention() -> Retention {
    Retention {
        max_bytes: None,
        max_age: Some(Duration::from_secs(3600)),
    }
}

/// Appends 40 events received two hours ago, then 20 received `now`.
fn append_old_then_new(log: &Log, now: i64) -> Vec<Expect> {
    let mut expected = Vec::new();
    let old = (0..40u64).map(|s| (s, now - 2 * HOUR_MS));
    for (seed, received) in old.chain((40..60).map(|s| (s, now))) {
        let (frame, expect) = make_frame(seed, 1, 20, Codec::None, received);
        log.append_blocking(frame).unwrap();
        expected.extend(expect);
    }
    expected
}

/// Old events survive only in the segment shared with new ones; every new one survives.
fn assert_only_new_segments_left(log: &Log, expected: &[Expect], now: i64) {
    let records = read_all(log.dir(), 0);
    let old_left = records.iter().filter(|r| r.received_at_ms < now).count();
    assert!(old_left <= 8, "old events left: {old_left}");
    let new_left = records.iter().filter(|r| r.received_at_ms == now).count();
    let new_written = expected[40..].iter().filter(|e| e.json.is_some()).count();
    assert_eq!(new_left, new_written);
    assert_records(&records, expected, log.stats().first_offset);
}

#[test]
fn retention_by_age_while_running() {
    let tmp = tempfile::tempdir().unwrap();
    let now = segment::now_ms();
    let (log, _) = open(LogConfig {
        retention: age_retention(),
        ..config(tmp.path(), 1024)
    });
    let expected = append_old_then_new(&log, now);
    assert_only_new_segments_left(&log, &expected, now);
}

#[test]
fn retention_by_age_on_open_scans_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = segment::now_ms();
    let (log, _) = open(config(dir, 1024));
    let expected = append_old_then_new(&log, now);
    let segments_before = log.stats().segments;
    drop(log);
    let (log, _) = open(LogConfig {
        retention: age_retention(),
        ..config(dir, 1024)
    });
    wait_until("age retention", || {
        log.stats().segments < segments_before - 3
    });
    assert_only_new_segments_left(&log, &expected, now);
}

#[test]
fn overloaded_when_the_budget_is_used_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(LogConfig {
        max_inflight_bytes: 4096,
        ..config(tmp.path(), 1 << 20)
    });
    log.fail_points().pause_writer(true);
    let frame_len: u64 = (0..3)
        .map(|seed| make_frame(seed, 1, 1100, Codec::None, 0).0.len_bytes() as u64)
        .sum();
    let blocked: Vec<_> = (0..3u64)
        .map(|seed| {
            let log = log.clone();
            std::thread::spawn(move || {
                log.append_blocking(make_frame(seed, 1, 1100, Codec::None, 0).0)
            })
        })
        .collect();
    wait_until("three frames in flight", || {
        log.stats().inflight_bytes == frame_len
    });
    let overloaded = log.append_blocking(make_frame(9, 1, 1100, Codec::None, 0).0);
    assert_eq!(overloaded, Err(AppendError::Overloaded));
    assert_eq!(log.stats().append_errors, 1);
    log.fail_points().pause_writer(false);
    let mut offsets: Vec<u64> = blocked
        .into_iter()
        .map(|t| t.join().unwrap().unwrap().first_offset)
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2]);
    assert_eq!(log.stats().inflight_bytes, 0);
    // A single frame larger than the whole budget is admitted when nothing else is in flight.
    let big = make_frame(10, 1, 10_000, Codec::None, 0).0;
    assert_eq!(log.append_blocking(big).unwrap().first_offset, 3);
    let mut text = String::new();
    log.render_metrics(&mut text);
    assert!(
        text.contains("junction_log_append_errors_total{reason=\"overloaded\"} 1"),
        "{text}"
    );
}

#[test]
fn enospc_while_preparing_degrades_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1024));
    log.fail_points().fail_prepare(true);
    let mut expected = Vec::new();
    let mut seed = 0;
    let reason = loop {
        let (frame, expect) = make_frame(seed, 2, 30, Codec::None, 0);
        seed += 1;
        match log.append_blocking(frame) {
            Ok(appended) => {
                assert_eq!(appended.first_offset, expected.len() as u64);
                expected.extend(expect);
            }
            Err(AppendError::Storage(reason)) => break reason,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(seed < 200, "never ran out of prepared segments");
    };
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(matches!(log.health(), Health::Degraded(r) if r.contains("No space left")));
    let fail_fast = log.append_blocking(make_frame(seed, 1, 5, Codec::None, 0).0);
    assert!(
        matches!(fail_fast, Err(AppendError::Storage(_))),
        "{fail_fast:?}"
    );
    assert_eq!(log.next_offset(), expected.len() as u64);

    log.fail_points().fail_prepare(false);
    wait_until("health Ok", || log.health() == Health::Ok);
    for _ in 0..20 {
        let (frame, expect) = make_frame(seed, 2, 30, Codec::None, 0);
        seed += 1;
        assert_eq!(
            log.append_blocking(frame).unwrap().first_offset,
            expected.len() as u64
        );
        expected.extend(expect);
    }
    drop(log);
    let (_log, report) = open(config(dir, 1024));
    assert_eq!(report.next_offset, expected.len() as u64);
    assert_records(&read_all(dir, 0), &expected, 0);
}

#[test]
fn failed_fdatasync_degrades_then_recovers_without_lost_or_duplicated_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1 << 20));
    let (mut expected, _) = append_frames(&log, 5, 2, 0);
    log.fail_points().fail_sync(true);
    let failed = log.append_blocking(make_frame(50, 2, 500, Codec::None, 0).0);
    assert!(
        matches!(failed, Err(AppendError::Storage(ref r)) if r.contains("No space left")),
        "{failed:?}"
    );
    assert!(matches!(log.health(), Health::Degraded(_)));
    // The failed frame was written before fdatasync failed; a reader bounded by the durable
    // end does not see it.
    let mut reader = LogReader::open(dir, 0).unwrap();
    reader.set_end_offset(Some(log.next_offset()));
    let durable = expected.iter().filter(|e| e.json.is_some()).count();
    assert_eq!(
        std::iter::from_fn(|| reader.next_record().unwrap()).count(),
        durable
    );
    std::thread::sleep(Duration::from_millis(1500)); // repairs keep failing while the fault lasts
    assert!(matches!(log.health(), Health::Degraded(_)));
    assert!(matches!(
        log.append_blocking(make_frame(51, 1, 5, Codec::None, 0).0),
        Err(AppendError::Storage(_))
    ));

    log.fail_points().fail_sync(false);
    wait_until("health Ok", || log.health() == Health::Ok);
    let (more, _) = append_frames(&log, 1, 3, 60);
    assert_eq!(
        log.next_offset(),
        13,
        "the failed frame's offsets were reused"
    );
    expected.extend(more);
    assert_records(&read_all(dir, 0), &expected, 0);
    drop(log);
    let (_log, report) = open(config(dir, 1 << 20));
    assert_eq!(
        report.truncated_bytes, 0,
        "the failed write was zeroed: {report:?}"
    );
    assert_records(&read_all(dir, 0), &expected, 0);
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 4096));
    let err = Log::open(config(tmp.path(), 4096)).err().expect("locked");
    assert!(matches!(err, LogError::Locked { .. }));
    let message = err.to_string();
    assert!(
        message.contains(&tmp.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("in use by another junction process"),
        "{message}"
    );
    drop(log);
    open(config(tmp.path(), 4096));
}

#[test]
fn corruption_in_a_sealed_segment_is_reported_with_its_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1024));
    append_frames(&log, 30, 1, 0);
    drop(log);
    let first = &segment_files(dir)[0];
    patch(first, SEGMENT_HEADER_LEN + 20, b"\xff");
    let mut reader = LogReader::open(dir, 0).unwrap();
    let err = loop {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("corruption skipped silently"),
            Err(e) => break e,
        }
    };
    match &err {
        LogError::Corrupt {
            segment,
            position,
            reason,
        } => {
            assert_eq!(segment, first);
            assert_eq!(*position, SEGMENT_HEADER_LEN);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string()
            .contains("00000000000000000000.seg at byte 32"),
        "{err}"
    );
}

#[test]
fn unknown_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let header = SegmentHeader {
        version: FORMAT_VERSION + 1,
        base_offset: 0,
        created_at_ms: 0,
    }
    .encode();
    let path = segment::segment_path(tmp.path(), 0);
    let mut bytes = header.to_vec();
    bytes.resize(4096, 0);
    fs::write(&path, bytes).unwrap();
    let err = Log::open(config(tmp.path(), 4096)).err().expect("refused");
    assert!(
        matches!(err, LogError::UnsupportedVersion { version, .. } if version == FORMAT_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("reads versions 1 to 3"), "{err}");
}

#[test]
fn shutdown_is_idempotent_and_later_appends_fail_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 4096));
    let (expected, _) = append_frames(&log, 3, 1, 0);
    log.shutdown();
    log.shutdown();
    assert_eq!(
        log.append_blocking(make_frame(9, 1, 1, Codec::None, 0).0),
        Err(AppendError::Closed)
    );
    assert!(
        fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
    drop(log);
    assert_records(&read_all(tmp.path(), 0), &expected, 0);
}

#[test]
fn metrics_are_rendered() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 4096));
    append_frames(&log, 2, 1, 0);
    let mut text = String::new();
    log.render_metrics(&mut text);
    for line in [
        "junction_log_size_bytes 4096",
        "junction_log_segments 1",
        "junction_log_next_offset 2",
        "junction_log_fsync_seconds_count 2",
        "junction_log_appended_frames_total 2",
        "junction_log_append_errors_total{reason=\"storage\"} 0",
        "junction_log_healthy 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

// ---- format fixtures ----

const FIXTURE_SEGMENT_BYTES: u64 = 1024;
const FIXTURE_SPLIT_SEGMENT_BYTES: u64 = 4096;

fn fixture_dir(version: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/log-v{version}"))
}

/// A copy of a committed fixture in a temporary directory.
fn copy_fixture(version: u16) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture_dir(version)).expect("fixture present") {
        let entry = entry.unwrap();
        fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

struct FixtureFrame {
    source: String,
    received_at_ms: i64,
    codec: Codec,
    /// An empty json is an erased entry; an empty identity is none.
    entries: Vec<FixtureEntry>,
}

struct FixtureEntry {
    message_id: String,
    json: String,
    identity: Vec<u8>,
}

/// The frames stored in `tests/fixtures/log-v1` (no identities: version 1 has none).
fn fixture_frames() -> Vec<FixtureFrame> {
    (0..12u64)
        .map(|f| {
            let source = ["web", "ios", "server"][f as usize % 3].to_string();
            let codec = if f % 2 == 0 { Codec::None } else { Codec::Lz4 };
            let entries = (0..1 + f % 3)
                .map(|i| {
                    let id = format!("fx-{f:02}-{i}");
                    let json = if f == 4 && i == 1 {
                        String::new() // erased
                    } else {
                        format!(
                            r#"{{"type":"track","event":"Fixture {f}","messageId":"{id}","properties":{{"plan":"pro","plan2":"pro","plan3":"pro"}}}}"#
                        )
                    };
                    FixtureEntry {
                        message_id: id,
                        json,
                        identity: Vec::new(),
                    }
                })
                .collect();
            FixtureFrame {
                source,
                received_at_ms: 1_700_000_000_000 + f as i64 * 1000,
                codec,
                entries,
            }
        })
        .collect()
}

/// The frames stored in `tests/fixtures/log-v2` and `log-v3`: entries with and without
/// identities, an erased one (handed over with an identity), and blocks of both codecs
/// (frame 3 has both blocks compressed, frame 7 only the JSON block). Version 2 holds JSON
/// projections (written by hand), version 3 binary ones of events with a timestamp
/// (computed by `junction_core::identity::project`, as it was before the event tag).
fn fixture_split_frames(version: u16) -> Vec<FixtureFrame> {
    (0..10u64)
        .map(|f| {
            let source = ["web", "ios", "server"][f as usize % 3].to_string();
            let codec = if f % 2 == 0 { Codec::None } else { Codec::Lz4 };
            let n = [1, 2, 3, 40, 1, 2, 3, 20, 12, 2][f as usize];
            let entries = (0..n)
                .map(|i| {
                    let id = format!("fx{version}-{f:02}-{i:02}");
                    let user = format!(r#""userId":"fx-user-{f}","anonymousId":"fx-anon-{f}-{i}""#);
                    let traits = format!(r#""traits":{{"plan":"pro","email":"u{f}@example.com"}}"#);
                    let event = match version {
                        2 => format!(r#"{{"type":"identify",{user},"messageId":"{id}",{traits}}}"#),
                        _ => format!(
                            r#"{{"type":"identify",{user},"messageId":"{id}","timestamp":"2023-11-14T22:13:{:02}.000Z",{traits}}}"#,
                            f * 5 + i % 5
                        ),
                    };
                    let identity = if f == 7 || (f + i) % 4 == 2 {
                        Vec::new()
                    } else if version == 2 {
                        format!(r#"{{"type":"identify",{user}}}"#).into_bytes()
                    } else {
                        // As projected before the event tag was added (it was committed so).
                        let mut p = junction_core::identity::project(event.as_bytes())
                            .expect("projects");
                        let no_event_member = [0x8a, 0];
                        assert!(p.ends_with(&no_event_member), "{p:?}");
                        p.truncate(p.len() - no_event_member.len());
                        p
                    };
                    let erased = f == 6 && i == 1;
                    FixtureEntry {
                        message_id: id,
                        json: if erased { String::new() } else { event },
                        identity,
                    }
                })
                .collect();
            FixtureFrame {
                source,
                received_at_ms: 1_700_000_000_000 + f as i64 * 1000,
                codec,
                entries,
            }
        })
        .collect()
}

fn fixture_pending(frame: &FixtureFrame) -> PendingFrame {
    let entries = frame.entries.iter().map(|e| Entry {
        message_id: &e.message_id,
        json: e.json.as_bytes(),
        identity: &e.identity,
    });
    PendingFrame::encode(&frame.source, frame.received_at_ms, entries, frame.codec)
}

/// What the fixture `frames` read back as.
fn fixture_expect(frames: Vec<FixtureFrame>) -> Vec<Expect> {
    let mut expected = Vec::new();
    for frame in frames {
        for e in frame.entries {
            let erased = e.json.is_empty();
            expected.push(Expect {
                source: frame.source.clone(),
                received_at_ms: frame.received_at_ms,
                message_id: e.message_id,
                json: (!erased).then(|| e.json.into_bytes()),
                identity: if erased { Vec::new() } else { e.identity },
            });
        }
    }
    expected
}

/// One-time generator of the committed v3 fixture; never run by default. (The v1 and v2
/// fixtures can no longer be generated: this binary writes version 3 only.)
#[test]
#[ignore = "regenerates tests/fixtures/log-v3; run only when creating a new format version"]
fn generate_v3_fixture() {
    let dir = fixture_dir(3);
    let _ = fs::remove_dir_all(&dir);
    let (log, _) = open(config(&dir, FIXTURE_SPLIT_SEGMENT_BYTES));
    for frame in fixture_split_frames(3) {
        log.append_blocking(fixture_pending(&frame)).unwrap();
    }
    drop(log);
    fs::remove_file(dir.join("LOCK")).unwrap();
}

#[test]
fn opens_v1_fixture() {
    let tmp = copy_fixture(1);
    let dir = tmp.path();
    let files = segment_files(dir);
    assert_eq!(files.len(), 4, "{files:?}");
    let head = fs::read(&files[0]).unwrap();
    assert_eq!(&head[0..10], b"JNCTNLOG\x01\x00");

    let mut expected = fixture_expect(fixture_frames());
    assert_eq!(expected.len(), 24);
    let records = read_all(dir, 0);
    assert_records(&records, &expected, 0);
    assert_eq!(records[0].message_id, "fx-00-0");
    assert_eq!(&*records[0].source, "web");
    assert_eq!(records[0].received_at_ms, 1_700_000_000_000);
    assert_eq!(
        String::from_utf8(records[0].json.clone()).unwrap(),
        r#"{"type":"track","event":"Fixture 0","messageId":"fx-00-0","properties":{"plan":"pro","plan2":"pro","plan3":"pro"}}"#
    );
    assert!(records.iter().all(|r| r.offset != 8), "offset 8 is erased");
    assert_eq!(records.len(), 23);
    assert_records(&read_all(dir, 13), &expected, 13);
    // Version 1 frames have no identity block: an identity reader gets the full JSON.
    assert_eq!(read_identities(dir, 0), records);

    let report = reopen_and_append(dir, FIXTURE_SEGMENT_BYTES, 1, &mut expected);
    assert_eq!(
        (report.next_offset, report.truncated_bytes, report.segments),
        (24, 0, 4)
    );
    assert_eq!(expected.len(), 26);
}

/// Reopens a fixture log for writing, appends two frames of `per_frame` events and checks
/// that everything reads back; returns the recovery report.
fn reopen_and_append(
    dir: &Path,
    segment_bytes: u64,
    per_frame: u64,
    expected: &mut Vec<Expect>,
) -> RecoveryReport {
    let (log, report) = open(config(dir, segment_bytes));
    let (more, _) = append_frames(&log, 2, per_frame, 500);
    assert_eq!(log.next_offset(), report.next_offset + 2 * per_frame);
    expected.extend(more);
    drop(log);
    assert_records(&read_all(dir, 0), expected, 0);
    report
}

/// Checks a committed fixture of two-block frames (format `version` 2 or 3): the encoder
/// still writes its frames byte for byte, frame 0 with neither block compressed, frame 3
/// with both, frame 7 with the JSON block only; everything reads back, also identities only
/// and from the middle; appending continues it (in a new segment when it is older than this
/// binary's version).
fn check_split_fixture(version: u16) -> Vec<Record> {
    let tmp = copy_fixture(version);
    let dir = tmp.path();
    let files = segment_files(dir);
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let header = SegmentHeader::decode(&fs::read(file).unwrap()).unwrap();
        assert_eq!(header.version, version, "{file:?}");
    }
    let frames = fixture_split_frames(version);
    let mut stored = Vec::new();
    for (base, path) in segment::list_segments(dir).unwrap() {
        let bytes = fs::read(&path).unwrap();
        let mut cursor = segment::SegmentCursor::open(&path, base).unwrap();
        loop {
            let pos = cursor.pos;
            let segment::Step::Frame { frame, end } = cursor.peek().unwrap() else {
                break;
            };
            let (first, next) = (frame.first_offset, frame.end_offset());
            let codecs = match frame.payload {
                Payload::Split { ids, events } => (ids.codec, events.codec),
                Payload::Single(_) => panic!("version 1 frame in the v{version} fixture"),
            };
            stored.push((first, bytes[pos as usize..end as usize].to_vec(), codecs));
            cursor.advance(end, next);
        }
    }
    assert_eq!(stored.len(), frames.len());
    let mut next = 0;
    for (frame, (first, bytes, _)) in frames.iter().zip(&stored) {
        assert_eq!(*first, next);
        let mut pending = fixture_pending(frame);
        assert_eq!(pending.finalize(next), &bytes[..], "frame at offset {next}");
        next += u64::from(pending.count());
    }
    let stored_codecs = [0, 3, 7].map(|f| stored[f].2);
    let (none, lz4) = (Codec::None, Codec::Lz4);
    assert_eq!(stored_codecs, [(none, none), (lz4, lz4), (none, lz4)]);

    let mut expected = fixture_expect(frames);
    assert_eq!(expected.len(), 86);
    let records = read_all(dir, 0);
    assert_records(&records, &expected, 0);
    assert_eq!(records.len(), 85, "one erased entry");
    let identities = read_identities(dir, 0);
    assert_identity_records(&identities, &expected, 0);
    assert!(identities.iter().any(|r| r.json.is_empty()));
    assert!(identities.iter().any(|r| r.identity.is_empty()));
    assert_identity_records(&read_identities(dir, 47), &expected, 47);

    let report = reopen_and_append(dir, FIXTURE_SPLIT_SEGMENT_BYTES, 3, &mut expected);
    assert_eq!((report.next_offset, report.truncated_bytes), (86, 0));
    let last = segment_files(dir).pop().unwrap();
    let header = SegmentHeader::decode(&fs::read(&last).unwrap()).unwrap();
    assert_eq!(
        header.version, FORMAT_VERSION,
        "appends go to a current segment"
    );
    if version < FORMAT_VERSION {
        assert!(
            segment_files(dir).len() > files.len(),
            "an older segment gets no frame"
        );
    }
    records
}

#[test]
fn opens_v2_fixture() {
    let records = check_split_fixture(2);
    assert_eq!(
        String::from_utf8(records[0].identity.clone()).unwrap(),
        r#"{"type":"identify","userId":"fx-user-0","anonymousId":"fx-anon-0-0"}"#
    );
}

#[test]
fn opens_v3_fixture() {
    let records = check_split_fixture(3);
    // The committed binary projections read like their events.
    let rules = junction_core::identity::Rules::default();
    let mut read = 0;
    for r in records.iter().filter(|r| !r.identity.is_empty()) {
        let from_projection = junction_core::identity::observe(&r.identity, &rules).unwrap();
        assert_eq!(
            from_projection,
            junction_core::identity::observe(&r.json, &rules).unwrap()
        );
        read += 1;
    }
    assert!(read > 40, "{read} projections");
}

/// Satisfies point 3 of format version 2: an old binary must never find a version 2 frame
/// in a version 1 segment, so a v1 log is continued in a new segment.
#[test]
fn v1_log_is_continued_in_a_new_segment() {
    let tmp = copy_fixture(1);
    let dir = tmp.path();
    let old: Vec<(PathBuf, Vec<u8>)> = segment_files(dir)
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    let mut expected = fixture_expect(fixture_frames());

    let (log, report) = open(config(dir, FIXTURE_SEGMENT_BYTES));
    assert_eq!((report.next_offset, report.segments), (24, 4));
    let mut more = Vec::new();
    for seed in 0..3 {
        let (frame, expect) = make_frame(seed, 2, 10, Codec::Lz4, 5);
        assert_eq!(
            log.append_blocking(frame).unwrap().first_offset,
            24 + 2 * seed
        );
        more.extend(expect);
    }
    assert!(more.iter().any(|e| !e.identity.is_empty()));
    assert_eq!(log.stats().segments, 5);
    drop(log);

    for (path, bytes) in &old {
        assert_eq!(&fs::read(path).unwrap(), bytes, "{path:?} unchanged");
    }
    let files = segment_files(dir);
    assert_eq!(files.len(), 5, "{files:?}");
    assert_eq!(files[4], segment::segment_path(dir, 24));
    let header = SegmentHeader::decode(&fs::read(&files[4]).unwrap()).unwrap();
    assert_eq!((header.version, header.base_offset), (FORMAT_VERSION, 24));

    expected.extend(more);
    assert_records(&read_all(dir, 0), &expected, 0);
    assert_records(&read_all(dir, 20), &expected, 20);
    assert_identity_records(&read_identities(dir, 0), &expected, 0);
    let asked: Vec<u64> = (0..expected.len() as u64).rev().collect();
    assert_eq!(
        EventFetcher::new(dir).read(&asked).unwrap(),
        expected_records(&expected, 0, &asked)
    );

    // Reopened, the log appends to its new segment.
    let (log, report) = open(config(dir, FIXTURE_SEGMENT_BYTES));
    assert_eq!((report.next_offset, report.segments), (30, 5));
    let (last, _) = append_frames(&log, 1, 1, 77);
    drop(log);
    assert_eq!(segment_files(dir).len(), 5);
    expected.extend(last);
    assert_records(&read_all(dir, 0), &expected, 0);
}

#[test]
fn empty_v1_segment_is_replaced_by_a_current_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_segment_version(dir, 0, 1, [], 4096);
    let (log, report) = open(config(dir, 4096));
    assert_eq!((report.next_offset, report.segments), (0, 1));
    let (expected, _) = append_frames(&log, 2, 2, 0);
    drop(log);
    let files = segment_files(dir);
    assert_eq!(files, [segment::segment_path(dir, 0)]);
    let header = SegmentHeader::decode(&fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(header.version, FORMAT_VERSION);
    assert_records(&read_all(dir, 0), &expected, 0);
}

#[test]
fn v2_frame_in_a_v1_segment_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (v1_frame, mut expected) = make_frame(0, 2, 10, Codec::None, 1);
    let (v2_frame, _) = make_frame(1, 2, 10, Codec::None, 1);
    let v1_frame = {
        // The same entries, as version 1 wrote them (no identities).
        let entries = expected.iter().map(|e| Entry {
            message_id: &e.message_id,
            json: e.json.as_deref().unwrap_or_default(),
            identity: b"",
        });
        drop(v1_frame);
        PendingFrame::encode_v1("src-0", 1, entries, Codec::None)
    };
    for e in &mut expected {
        e.identity.clear();
    }
    let end = write_segment_version(dir, 0, 1, [v1_frame, v2_frame], 4096);
    write_segment(dir, end, [], 4096);
    let mut reader = LogReader::open(dir, 0).unwrap();
    let mut records = Vec::new();
    let err = loop {
        match reader.next_record() {
            Ok(Some(record)) => records.push(record),
            Ok(None) => panic!("invalid frame skipped silently"),
            Err(e) => break e,
        }
    };
    assert_records(&records, &expected, 0);
    assert!(
        err.to_string()
            .contains("two-block frame in a version 1 segment"),
        "{err}"
    );
}

// ---- identity-only reading ----

#[test]
fn identity_reader_returns_projections_and_falls_back_to_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A v2 segment that also holds v1 frames (readers tell them apart frame by frame),
    // then a log continuing it with v2 frames of both codecs.
    let mut expected = Vec::new();
    let mut frames = Vec::new();
    for seed in 0..6u64 {
        let codec = if seed % 2 == 0 {
            Codec::None
        } else {
            Codec::Lz4
        };
        let (frame, mut expect) = make_frame(seed, 1 + seed * 4, 200, codec, seed as i64);
        if seed % 3 == 0 {
            drop(frame);
            for e in &mut expect {
                e.identity.clear();
            }
            let entries = expect.iter().map(|e| Entry {
                message_id: &e.message_id,
                json: e.json.as_deref().unwrap_or_default(),
                identity: b"",
            });
            let source = expect[0].source.clone();
            frames.push(PendingFrame::encode_v1(
                &source,
                seed as i64,
                entries,
                codec,
            ));
        } else {
            frames.push(frame);
        }
        expected.extend(expect);
    }
    let end = write_segment(dir, 0, frames, 64 << 10);
    assert_eq!(end, expected.len() as u64);
    let (log, _) = open(config(dir, 64 << 10));
    for seed in 6..40u64 {
        let codec = if seed % 2 == 0 {
            Codec::None
        } else {
            Codec::Lz4
        };
        let (frame, expect) = make_frame(seed, 1 + seed % 30, 150, codec, seed as i64);
        log.append_blocking(frame).unwrap();
        expected.extend(expect);
    }
    // Frames whose entries all have an identity, large enough for LZ4 on both blocks.
    for seed in 40..44u64 {
        let (_, mut expect) = make_frame(seed, 30, 150, Codec::Lz4, seed as i64);
        for (i, e) in (0..).zip(&mut expect) {
            e.json = Some(event_json(i, 150));
            e.identity = format!(r#"{{"userId":"all-{seed}-{i}","anonymousId":"a"}}"#).into_bytes();
        }
        let entries = expect.iter().map(|e| Entry {
            message_id: &e.message_id,
            json: e.json.as_deref().unwrap_or_default(),
            identity: &e.identity,
        });
        let frame = PendingFrame::encode(&expect[0].source, seed as i64, entries, Codec::Lz4);
        log.append_blocking(frame).unwrap();
        expected.extend(expect);
    }
    let n = expected.len() as u64;
    assert_eq!(log.next_offset(), n);
    assert!(segment_files(dir).len() > 1, "rolled");
    for from in [0, 1, 7, 30, n / 2, n - 3, n] {
        assert_identity_records(&read_identities(dir, from), &expected, from);
        assert_records(&read_all(dir, from), &expected, from);
    }
    let identities = read_identities(dir, 0);
    let with = identities.iter().filter(|r| !r.identity.is_empty()).count();
    let without = identities.len() - with;
    assert!(
        with > 100 && without > 20,
        "{with} with identity, {without} without"
    );
    assert!(
        identities
            .iter()
            .all(|r| r.json.is_empty() != r.identity.is_empty())
    );

    // Following a live writer, bounded by the durable end, like any reader.
    let mut reader = LogReader::open_identities(dir, n).unwrap();
    reader.set_end_offset(Some(log.next_offset()));
    assert_eq!(reader.next_record().unwrap(), None);
    let (frame, expect) = make_frame(90, 3, 10, Codec::None, 9);
    log.append_blocking(frame).unwrap();
    expected.extend(expect);
    reader.set_end_offset(Some(log.next_offset()));
    let tail = drain(reader);
    assert_identity_records(&tail, &expected, n);
}

/// Replaces the stored bytes of block B (the JSON) of the frame at `pos` with garbage and
/// re-seals its CRC: a valid frame whose JSON block cannot be decompressed.
fn garble_json_block(path: &Path, pos: u64) {
    let mut bytes = fs::read(path).unwrap();
    let at = pos as usize + 8;
    let (len, _) = format::frame_prefix(&bytes[pos as usize..]);
    let body = &bytes[at..at + len as usize];
    let Payload::Split { events, .. } = format::parse_body(body).unwrap().payload else {
        panic!("not a v2 frame");
    };
    assert_eq!(events.codec, Codec::Lz4);
    let from = events.stored.as_ptr() as usize - body.as_ptr() as usize;
    let to = from + events.stored.len();
    bytes[at + from..at + to].fill(0xff);
    let crc = crc32c::crc32c(&bytes[at..at + len as usize]);
    bytes[pos as usize + 4..at].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, bytes).unwrap();
}

/// One segment of one LZ4 frame of 40 events with `identity`, whose JSON block is garbled
/// (readers that do not decode it still read the frame).
fn write_garbled_frame(dir: &Path, identity: &[u8]) {
    let ids: Vec<String> = (0..40).map(|i| format!("m-{i}")).collect();
    let json = event_json(1, 300);
    let entries = ids.iter().map(|id| Entry {
        message_id: id,
        json: &json,
        identity,
    });
    let frame = PendingFrame::encode("web", 1, entries, Codec::Lz4);
    let end = write_segment(dir, 0, [frame], 64 << 10);
    write_segment(dir, end, [], 4096);
    garble_json_block(&segment_files(dir)[0], SEGMENT_HEADER_LEN);
}

#[test]
fn identity_reader_never_decodes_the_json_block_it_does_not_need() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let identity = br#"{"userId":"u-1","anonymousId":"a-1"}"#;
    write_garbled_frame(dir, identity);

    let records = read_identities(dir, 0);
    assert_eq!(records.len(), 40);
    assert!(
        records
            .iter()
            .all(|r| r.identity == identity && r.json.is_empty())
    );
    let mut full = LogReader::open(dir, 0).unwrap();
    match full.next_record() {
        Err(LogError::Corrupt {
            reason, position, ..
        }) => {
            assert_eq!(position, SEGMENT_HEADER_LEN);
            assert!(reason.contains("lz4"), "{reason}");
        }
        other => panic!("the full reader decodes block B: {other:?}"),
    }
}

// ---- picked reading (the history pass of Compute) ----

/// What [`LogReader::next_frame_picked`] hands out from `from` on, asking for the JSON of
/// the records `want` names: (the records `pick` saw, those `visit` saw).
fn read_picked(dir: &Path, from: u64, want: fn(u64) -> bool) -> (Vec<Record>, Vec<Record>) {
    struct Collect {
        want: fn(u64) -> bool,
        picked: Vec<Record>,
        visited: Vec<Record>,
    }
    impl Pick for Collect {
        fn pick(&mut self, r: RecordRef<'_>) -> bool {
            self.picked.push(r.to_record());
            (self.want)(r.offset)
        }
        fn visit(&mut self, r: RecordRef<'_>) {
            self.visited.push(r.to_record());
        }
    }
    let mut c = Collect {
        want,
        picked: Vec::new(),
        visited: Vec::new(),
    };
    let mut reader = LogReader::open(dir, from).expect("open reader");
    while reader.next_frame_picked(&mut c).expect("read frame") {}
    (c.picked, c.visited)
}

/// `read_picked` agrees with the other readers: `pick` sees exactly the records an
/// identity-only reader returns with a projection (and no JSON), `visit` the records of a
/// full reader that were asked for or have no projection, in order.
fn check_picked(dir: &Path, from: u64, want: fn(u64) -> bool) -> (usize, usize) {
    let (picked, visited) = read_picked(dir, from, want);
    let projected: Vec<Record> = read_identities(dir, from)
        .into_iter()
        .filter(|r| !r.identity.is_empty())
        .collect();
    assert_eq!(picked, projected, "picked from {from}");
    let full: Vec<Record> = read_all(dir, from)
        .into_iter()
        .filter(|r| r.identity.is_empty() || want(r.offset))
        .collect();
    assert_eq!(visited, full, "visited from {from}");
    (picked.len(), visited.len())
}

#[test]
fn picked_reader_reads_like_the_others_in_every_format() {
    for version in [1, 2, 3] {
        let tmp = copy_fixture(version);
        for from in [0, 5, 47] {
            for want in [|_| false, |_| true, |o| o % 3 == 0] {
                check_picked(tmp.path(), from, want);
            }
        }
        let (picked, visited) = check_picked(tmp.path(), 0, |_| false);
        match version {
            1 => assert_eq!(picked, 0, "version 1 frames have no projections"),
            _ => assert!(
                picked > 40 && visited > 0,
                "{picked} picked, {visited} visited"
            ),
        }
    }
    // Frames of both codecs, with erased entries and entries without projection.
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(config(tmp.path(), 8 << 10));
    for seed in 0..30u64 {
        let codec = [Codec::None, Codec::Lz4][seed as usize % 2];
        let (frame, _) = make_frame(seed, 1 + seed % 20, 150, codec, seed as i64);
        log.append_blocking(frame).unwrap();
    }
    assert!(segment_files(tmp.path()).len() > 1, "rolled");
    let n = log.next_offset();
    for from in [0, 1, 7, n / 2, n] {
        check_picked(tmp.path(), from, |o| o % 4 == 1);
    }
}

#[test]
fn picked_reader_decodes_the_json_block_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_garbled_frame(dir, br#"{"userId":"u-1"}"#);

    let (picked, visited) = read_picked(dir, 0, |_| false);
    assert_eq!((picked.len(), visited.len()), (40, 0));
    let mut reader = LogReader::open(dir, 0).unwrap();
    struct Third;
    impl Pick for Third {
        fn pick(&mut self, r: RecordRef<'_>) -> bool {
            r.offset == 3
        }
        fn visit(&mut self, _: RecordRef<'_>) {}
    }
    match reader.next_frame_picked(&mut Third) {
        Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("lz4"), "{reason}"),
        other => panic!("asked for a JSON it cannot decode: {other:?}"),
    }
}

// ---- random access (fetch.rs) ----

/// What `EventFetcher::read(offsets)` must return: the non-erased entries at `offsets` that
/// are at or above `first` (the oldest retained offset), in the order asked.
fn expected_records(expected: &[Expect], first: u64, offsets: &[u64]) -> Vec<Record> {
    offsets
        .iter()
        .filter_map(|&offset| {
            let e = expected.get(usize::try_from(offset).ok()?)?;
            let json = e.json.clone().filter(|_| offset >= first)?;
            Some(Record {
                offset,
                received_at_ms: e.received_at_ms,
                source: e.source.as_str().into(),
                message_id: e.message_id.clone(),
                json,
                identity: e.identity.clone(),
            })
        })
        .collect()
}

/// `0..n` in a scattered order (a fixed permutation).
fn scattered(n: u64) -> Vec<u64> {
    let mut offsets: Vec<u64> = (0..n).collect();
    offsets.sort_by_key(|&o| o.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
    offsets
}

/// Appends `frames` frames of 1 to 6 entries of varied size; returns the expectations.
fn append_varied(log: &Log, frames: u64, codec: Codec) -> Vec<Expect> {
    let mut expected = Vec::new();
    for seed in 0..frames {
        let pad = 100 + (seed as usize * 37) % 500;
        let (frame, expect) = make_frame(seed, 1 + seed % 6, pad, codec, seed as i64);
        log.append_blocking(frame).unwrap();
        expected.extend(expect);
    }
    expected
}

/// Rewrites a sealed segment the way person deletion will: entries at offsets for which
/// `erase` holds are erased, every frame is re-encoded with `codec` (so byte positions
/// move), offsets and frame boundaries stay. `in_place` overwrites the file itself (same
/// inode and size) instead of renaming a new file over it.
fn rewrite_segment(
    path: &Path,
    base: u64,
    erase: impl Fn(u64) -> bool,
    codec: Codec,
    in_place: bool,
) {
    let mut cursor = segment::SegmentCursor::open(path, base).unwrap();
    let mut bytes = SegmentHeader::new(base, 0).encode().to_vec();
    loop {
        let (end, next) = match cursor.peek().unwrap() {
            segment::Step::Frame { frame, end } => {
                let entries = frame.entries().unwrap();
                let kept = entries
                    .iter()
                    .zip(frame.first_offset..)
                    .map(|(e, offset)| Entry {
                        message_id: &e.message_id,
                        json: match erase(offset) {
                            true => b"",
                            false => e.json.as_deref().unwrap_or_default(),
                        },
                        identity: &e.identity,
                    });
                let mut pending =
                    PendingFrame::encode(frame.source, frame.received_at_ms, kept, codec);
                bytes.extend_from_slice(pending.finalize(frame.first_offset));
                (end, frame.end_offset())
            }
            segment::Step::End => break,
            segment::Step::Bad(reason) => panic!("{reason}"),
        };
        cursor.advance(end, next);
    }
    let len = fs::metadata(path).unwrap().len() as usize;
    assert!(bytes.len() <= len, "the rewrite fits");
    bytes.resize(len, 0);
    if in_place {
        fs::write(path, &bytes).unwrap();
    } else {
        let new = path.with_extension("rewrite");
        fs::write(&new, &bytes).unwrap();
        fs::rename(&new, path).unwrap();
    }
}

/// Writes a segment file directly (no writer, no fsync): `frames` from `base` on, zero
/// padded to `size`. Returns the offset after the last frame.
fn write_segment(
    dir: &Path,
    base: u64,
    frames: impl IntoIterator<Item = PendingFrame>,
    size: u64,
) -> u64 {
    write_segment_version(dir, base, FORMAT_VERSION, frames, size)
}

/// [`write_segment`] with a header of format `version`.
fn write_segment_version(
    dir: &Path,
    base: u64,
    version: u16,
    frames: impl IntoIterator<Item = PendingFrame>,
    size: u64,
) -> u64 {
    let header = SegmentHeader {
        version,
        ..SegmentHeader::new(base, 0)
    };
    let mut bytes = header.encode().to_vec();
    let mut next = base;
    for mut frame in frames {
        bytes.extend_from_slice(frame.finalize(next));
        next += u64::from(frame.count());
    }
    assert!(bytes.len() as u64 <= size);
    bytes.resize(size as usize, 0);
    fs::write(segment::segment_path(dir, base), bytes).unwrap();
    next
}

#[test]
fn fetch_reads_scattered_offsets_across_segments_with_both_codecs() {
    fn check<T: Send + Sync + Clone>() {}
    check::<EventFetcher>();
    for codec in [Codec::None, Codec::Lz4] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Several segments, each with several index entries (one per 16 KiB).
        let (log, _) = open(LogConfig {
            codec,
            ..config(dir, 40 << 10)
        });
        let expected = append_varied(&log, 160, codec);
        assert!(segment_files(dir).len() >= 3, "{:?}", segment_files(dir));
        assert!(
            expected.iter().any(|e| e.json.is_none()),
            "some entries are erased"
        );
        let n = expected.len() as u64;
        let fetcher = EventFetcher::new(dir);
        assert!(fetcher.read(&[]).unwrap().is_empty());
        // One at a time, in a scattered order: indexes are built lazily and then reused.
        for offset in scattered(n + 3) {
            assert_eq!(
                fetcher.read(&[offset]).unwrap(),
                expected_records(&expected, 0, &[offset]),
                "offset {offset}"
            );
        }
        // All at once, with duplicates and offsets past the end, in the order asked.
        let mut asked = scattered(n);
        asked.extend([5, 5, n + 100, 0, u64::MAX, n - 1, 5]);
        assert_eq!(
            fetcher.read(&asked).unwrap(),
            expected_records(&expected, 0, &asked)
        );
        // A fresh fetcher asked for everything at once agrees.
        let fresh = EventFetcher::new(dir);
        assert_eq!(
            fresh.read(&asked).unwrap(),
            expected_records(&expected, 0, &asked)
        );
        assert_eq!(fresh.read(&asked).unwrap(), fetcher.read(&asked).unwrap());
        drop(log);
        assert_eq!(
            fresh.read(&asked).unwrap(),
            expected_records(&expected, 0, &asked),
            "stopped log"
        );
    }
}

#[test]
fn fetch_sees_the_active_segment_grow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fetcher = EventFetcher::new(dir);
    let (log, _) = open(config(dir, 1 << 20));
    assert!(fetcher.read(&[0, 1]).unwrap().is_empty(), "no frame yet");
    let mut expected = Vec::new();
    for round in 0..4 {
        let (more, _) = append_frames(&log, 5, 2, round * 10);
        expected.extend(more);
        let asked: Vec<u64> = (0..expected.len() as u64 + 4).rev().collect();
        assert_eq!(
            fetcher.read(&asked).unwrap(),
            expected_records(&expected, 0, &asked),
            "round {round}"
        );
    }
    assert_eq!(segment_files(dir).len(), 1);
}

#[test]
fn fetch_follows_a_live_writer_that_rolls() {
    // Offset `o` is entry `o % 2` of the frame of seed `o / 2`.
    fn expect(offset: u64) -> Vec<Record> {
        let (_, frame) = make_frame(offset / 2, 2, 10, Codec::Lz4, 1);
        expected_records(&frame, 0, &[offset % 2])
            .into_iter()
            .map(|r| Record { offset, ..r })
            .collect()
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (log, _) = open(config(&dir, 2048));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for seed in 0..300u64 {
                log.append_blocking(make_frame(seed, 2, 10, Codec::Lz4, 1).0)
                    .unwrap();
            }
        })
    };
    let fetcher = EventFetcher::new(&dir);
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (fetcher, log) = (fetcher.clone(), log.clone());
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while log.next_offset() < 600 {
                    let durable = log.next_offset();
                    let asked = [
                        durable.saturating_sub(1),
                        durable / 2,
                        r + rounds % 7,
                        durable + 3,
                    ];
                    let got = fetcher.read(&asked).unwrap();
                    // Durable offsets are all there; a newer one may be too, and is right.
                    let mut want = Vec::new();
                    for &offset in &asked {
                        let mut record = expect(offset);
                        if offset >= durable && got.iter().all(|g| g.offset != offset) {
                            record.clear();
                        }
                        want.extend(record);
                    }
                    assert_eq!(got, want, "asked {asked:?} at durable end {durable}");
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    writer.join().unwrap();
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert!(segment_files(&dir).len() > 10);
    let all = scattered(600);
    let want: Vec<Record> = all.iter().flat_map(|&o| expect(o)).collect();
    assert_eq!(fetcher.read(&all).unwrap(), want);
}

#[test]
fn fetch_skips_segments_deleted_by_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let retention = Retention {
        max_bytes: Some(8192),
        max_age: None,
    };
    let (log, _) = open(LogConfig {
        retention,
        ..config(dir, 2048)
    });
    let fetcher = EventFetcher::new(dir);
    let (mut expected, _) = append_frames(&log, 30, 1, 0);
    let early: Vec<u64> = (0..30).collect();
    // Indexes built while the first segment was the active one, then sealed.
    assert_eq!(
        fetcher.read(&early).unwrap(),
        expected_records(&expected, 0, &early)
    );
    let (more, _) = append_frames(&log, 150, 1, 30);
    expected.extend(more);
    log.shutdown();
    let first = segment::list_segments(dir).unwrap()[0].0;
    assert!(
        first > 30,
        "the early segments were deleted: first offset {first}"
    );
    let all: Vec<u64> = (0..expected.len() as u64).rev().collect();
    assert_eq!(
        fetcher.read(&all).unwrap(),
        expected_records(&expected, first, &all)
    );
    assert!(fetcher.read(&early).unwrap().is_empty());
}

#[test]
fn fetch_rebuilds_the_index_of_a_rewritten_segment() {
    for in_place in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (log, _) = open(config(dir, 64 << 10));
        let mut expected = append_varied(&log, 150, Codec::None);
        drop(log);
        let segments = segment::list_segments(dir).unwrap();
        assert!(segments.len() >= 2);
        let fetcher = EventFetcher::new(dir);
        let all = scattered(expected.len() as u64);
        assert_eq!(
            fetcher.read(&all).unwrap(),
            expected_records(&expected, 0, &all)
        );

        let ((base, path), end) = (&segments[0], segments[1].0);
        let erase = |offset: u64| offset % 5 == 1 && offset < end;
        rewrite_segment(path, *base, erase, Codec::Lz4, in_place);
        for (offset, e) in (0u64..).zip(expected.iter_mut()) {
            if erase(offset) {
                e.json = None;
            }
        }
        let last = end - 1;
        assert_eq!(
            fetcher.read(&[last]).unwrap(),
            expected_records(&expected, 0, &[last]),
            "in place: {in_place}"
        );
        assert_eq!(
            fetcher.read(&all).unwrap(),
            expected_records(&expected, 0, &all),
            "in place: {in_place}"
        );
        assert_records(&read_all(dir, 0), &expected, 0);
    }
}

#[test]
fn fetch_sees_offsets_reused_after_a_failed_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1 << 20));
    let (mut expected, _) = append_frames(&log, 5, 2, 0);
    let fetcher = EventFetcher::new(dir);
    log.fail_points().fail_sync(true);
    let (failed, failed_expect) = make_frame(50, 2, 500, Codec::None, 0);
    assert!(log.append_blocking(failed).is_err());
    // Written but never durable: a fetcher (not bounded by the durable end) may see it.
    let mut with_failed = expected.clone();
    with_failed.extend(failed_expect);
    let asked: Vec<u64> = (0..14).collect();
    assert_eq!(
        fetcher.read(&asked).unwrap(),
        expected_records(&with_failed, 0, &asked)
    );

    log.fail_points().fail_sync(false);
    wait_until("health Ok", || log.health() == Health::Ok);
    let (more, _) = append_frames(&log, 1, 3, 60);
    assert_eq!(
        log.next_offset(),
        13,
        "the failed frame's offsets were reused"
    );
    expected.extend(more);
    assert_eq!(
        fetcher.read(&asked).unwrap(),
        expected_records(&expected, 0, &asked)
    );
}

#[test]
fn fetch_reports_corruption_in_a_sealed_segment_and_stops_at_a_bad_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1024));
    append_frames(&log, 30, 1, 0);
    drop(log);
    let files = segment_files(dir);
    patch(&files[0], SEGMENT_HEADER_LEN + 20, b"\xff");
    match EventFetcher::new(dir).read(&[0]) {
        Err(LogError::Corrupt {
            segment, position, ..
        }) => {
            assert_eq!(segment, files[0]);
            assert_eq!(position, SEGMENT_HEADER_LEN);
        }
        other => panic!("corruption not reported: {other:?}"),
    }

    // In the newest segment a bad frame is the (not yet valid) end of the data.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = open(config(dir, 1 << 20));
    let (expected_tail, spans) = append_frames(&log, 10, 2, 0);
    drop(log);
    patch(&segment_files(dir)[0], spans[6].0 + 20, b"\xff");
    let asked: Vec<u64> = (0..20).collect();
    assert_eq!(
        EventFetcher::new(dir).read(&asked).unwrap(),
        expected_records(&expected_tail[..12], 0, &asked)
    );
}

#[test]
fn fetch_index_stays_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 20k single-event frames (~190 bytes each) in a 4 MiB segment, then an empty newer one.
    let size = 4 << 20;
    let frames = (0..20_000u64).map(|seed| make_frame(seed, 1, 40, Codec::None, 0).0);
    let end = write_segment(dir, 0, frames, size);
    write_segment(dir, end, [], 1024);
    let fetcher = EventFetcher::new(dir);
    let got = fetcher.read(&[end - 1, 0, end / 2]).unwrap();
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [end - 1, 0, end / 2]
    );
    let entries = size / fetch::CHECKPOINT_BYTES + 1;
    let bytes = fetcher.index_bytes() as u64;
    assert!(
        bytes <= entries * 16,
        "{bytes} bytes of index for a 4 MiB segment"
    );
    assert!(bytes >= 16 * 100, "{bytes}: one entry per 16 KiB");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// `read(offsets)` returns exactly what a full scan holds at those offsets, asked in
    /// parts (indexes built, reused and extended) or at once.
    #[test]
    fn fetch_matches_a_full_scan(
        frames in prop::collection::vec((1u64..6, 0usize..900, any::<bool>()), 1..40),
        segment_kib in 1u64..24,
        asks in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
        split in 0usize..80,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (log, _) = open(config(dir, segment_kib << 10));
        for (seed, &(n, pad, lz4)) in (0u64..).zip(&frames) {
            let codec = if lz4 { Codec::Lz4 } else { Codec::None };
            log.append_blocking(make_frame(seed, n, pad, codec, seed as i64).0).unwrap();
        }
        let scan: std::collections::BTreeMap<u64, Record> =
            read_all(dir, 0).into_iter().map(|r| (r.offset, r)).collect();
        let total = log.next_offset() as usize;
        let offsets: Vec<u64> = asks.iter().map(|i| i.index(total + 5) as u64).collect();
        let fetcher = EventFetcher::new(dir);
        let (a, b) = offsets.split_at(split.min(offsets.len()));
        for part in [a, b, &offsets[..]] {
            let want: Vec<Record> = part.iter().filter_map(|o| scan.get(o).cloned()).collect();
            prop_assert_eq!(fetcher.read(part).unwrap(), want);
        }
    }
}

/// `cargo test --release -p junction --lib log::tests::measure_fetch -- --ignored --nocapture`
#[test]
#[ignore = "measurement; run once in release"]
fn measure_fetch_from_full_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Two full 64 MiB segments of 100k single-event frames each (~670 bytes per frame).
    let size = 64 << 20;
    let mut base = 0;
    for _ in 0..2 {
        let frames = (base..base + 100_000).map(|seed| make_frame(seed, 1, 560, Codec::None, 0).0);
        base = write_segment(dir, base, frames, size);
    }
    let asked: Vec<u64> = scattered(base).into_iter().take(1000).collect();
    let fetcher = EventFetcher::new(dir);
    for round in ["cold index", "warm index"] {
        let started = Instant::now();
        let got = fetcher.read(&asked).unwrap();
        println!(
            "{round}: {} records at 1000 scattered offsets in {:?}",
            got.len(),
            started.elapsed()
        );
    }
    let started = Instant::now();
    for &offset in &asked[..100] {
        fetcher.read(&[offset]).unwrap();
    }
    println!(
        "100 single-offset reads: {:?} each",
        started.elapsed() / 100
    );
    println!(
        "index: {} bytes for 2 segments of 64 MiB",
        fetcher.index_bytes()
    );
}

// ---- measurement ----

/// `cargo test --release -p junction --lib log::tests::measure_identity -- --ignored --nocapture`
#[test]
#[ignore = "measurement; run once in release"]
fn measure_identity_only_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 3000 frames of 64 events: ~850-byte events with varying values, ~100-byte projections.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut hex = |n: usize| {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b"0123456789abcdef"[(state % 16) as usize])
            })
            .collect::<String>()
    };
    let (log, _) = open(LogConfig::new(dir));
    let mut json_bytes = 0;
    for f in 0..3000u64 {
        let events: Vec<(String, Vec<u8>, Vec<u8>)> = (0..64)
            .map(|i| {
                let (user, anon) = (hex(16), hex(32));
                let json = format!(
                    r#"{{"type":"track","event":"Order Completed","userId":"{user}","anonymousId":"{anon}","messageId":"{}","timestamp":"2024-05-01T12:00:00.000Z","context":{{"ip":"10.0.{}.{}","library":{{"name":"analytics.js","version":"2.11.1"}},"page":{{"path":"/checkout/{}","url":"https://shop.example.com/checkout/{}"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"}},"properties":{{"order_id":"{}","total":{},"currency":"EUR","products":[{{"sku":"{}","price":19.99,"quantity":1}},{{"sku":"{}","price":5.5,"quantity":2}}]}}}}"#,
                    hex(36), f % 256, i, hex(8), hex(8), hex(12), f * 7 + i, hex(10), hex(10)
                );
                let identity =
                    format!(r#"{{"type":"track","userId":"{user}","anonymousId":"{anon}"}}"#);
                (hex(36), json.into_bytes(), identity.into_bytes())
            })
            .collect();
        json_bytes += events.iter().map(|e| e.1.len()).sum::<usize>();
        let entries = events.iter().map(|(id, json, identity)| Entry {
            message_id: id,
            json,
            identity,
        });
        let frame = PendingFrame::encode("web", 0, entries, Codec::Lz4);
        log.append_blocking(frame).unwrap();
    }
    drop(log);
    println!(
        "{} events, {:.0} bytes of JSON per event",
        3000 * 64,
        json_bytes as f64 / (3000.0 * 64.0)
    );
    for round in 0..2 {
        // The floor: reading the segments and checking every CRC, decoding nothing.
        let started = Instant::now();
        for (base, path) in segment::list_segments(dir).unwrap() {
            segment::SegmentCursor::open(&path, base)
                .unwrap()
                .scan()
                .unwrap();
        }
        let elapsed = started.elapsed();
        println!(
            "round {round} frames only (CRC, no decoding): {elapsed:?} ({:.0} ns/event)",
            elapsed.as_nanos() as f64 / (3000.0 * 64.0)
        );
        for (name, identity_only) in [("full", false), ("identity-only", true)] {
            let started = Instant::now();
            let mut reader = match identity_only {
                true => LogReader::open_identities(dir, 0),
                false => LogReader::open(dir, 0),
            }
            .unwrap();
            let (mut n, mut bytes) = (0u64, 0usize);
            while let Some(r) = reader.next_record().unwrap() {
                n += 1;
                bytes += r.json.len() + r.identity.len();
            }
            let elapsed = started.elapsed();
            println!(
                "round {round} {name}: {n} records, {bytes} bytes, {elapsed:?} ({:.0} ns/record)",
                elapsed.as_nanos() as f64 / n as f64
            );
        }
    }
}

/// `cargo test --release -p junction --lib log::tests::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run once in release"]
async fn measure_group_commit_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(LogConfig::new(tmp.path()));
    let json = event_json(0, 950); // ~1 KiB events, 64 per frame ≈ 64 KiB frames
    let ids: Vec<String> = (0..64).map(|i| format!("{i:036}")).collect();
    let identity = br#"{"type":"track","userId":"user-000000000000000000001","anonymousId":"anon-00000000000000000001"}"#;
    let frame_len = {
        let entries = ids.iter().map(|id| Entry {
            message_id: id,
            json: &json,
            identity,
        });
        PendingFrame::encode("bench", 0, entries, Codec::None).len_bytes()
    };
    let run_for = Duration::from_secs(8);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (log, json, ids) = (log.clone(), json.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while started.elapsed() < run_for {
                let entries = ids.iter().map(|id| Entry {
                    message_id: id,
                    json: &json,
                    identity,
                });
                let frame = PendingFrame::encode("bench", 0, entries, Codec::None);
                match log.append(frame).await {
                    Ok(_) => done += 1,
                    Err(AppendError::Overloaded) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
            done
        }));
    }
    let mut frames = 0;
    for task in tasks {
        frames += task.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = log.stats();
    let mut text = String::new();
    stats.fsync_seconds.render(&mut text, "fsync", "");
    println!(
        "frame {frame_len} B, 32 appenders: {:.0} appends/s, {:.1} MB/s, {:.0} events/s, {} fdatasyncs ({:.1} frames each), {} segments",
        frames as f64 / secs,
        frames as f64 * frame_len as f64 / secs / 1e6,
        frames as f64 * 64.0 / secs,
        stats.fsync_seconds.count(),
        frames as f64 / stats.fsync_seconds.count() as f64,
        stats.segments,
    );
    println!("{text}");
}
