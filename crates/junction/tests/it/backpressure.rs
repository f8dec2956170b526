//! Backpressure: when the log writer falls behind or the disk is full the server answers 503
//! with `Retry-After` (never 200), `/ready` reports degraded, and it recovers by itself.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use serde_json::json;

use crate::support::*;

fn batch(prefix: &str, n: usize, pad: usize) -> (Vec<String>, String) {
    // Pseudo-random padding so LZ4 cannot shrink it away.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ prefix.len() as u64;
    let mut noise = |len: usize| -> String {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect()
    };
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events: Vec<_> = ids.iter().map(|id| json!({"type": "track", "userId": "u", "event": "E", "messageId": id, "properties": {"pad": noise(pad)}})).collect();
    (ids, json!({"batch": events}).to_string())
}

#[tokio::test]
async fn a_stalled_writer_gives_503_with_retry_after_then_recovers() {
    let app = TestApp::with_config("\n[log]\nmax_inflight_bytes = 65536\n");
    let log = app.state.ingestor.log().clone();
    log.fail_points().pause_writer(true);
    let router = junction::http::router(app.state.clone());
    let send = |body: String| {
        use tower::ServiceExt;
        let router = router.clone();
        tokio::spawn(async move {
            let req = Request::post("/v1/batch")
                .header("authorization", basic(WRITE_KEY))
                .body(Body::from(body))
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            (
                resp.status().as_u16(),
                resp.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        })
    };
    let mut pending = Vec::new();
    let mut acked_ids = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let (ids, body) = batch(&format!("s{i}"), 10, 2000);
        let handle = send(body);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if handle.is_finished() {
            let (status, retry_after) = handle.await.unwrap();
            assert_ne!(
                status, 200,
                "nothing can be durable while the writer is stalled"
            );
            refused = Some((status, retry_after));
            break;
        }
        pending.push((ids, handle));
    }
    let (status, retry_after) = refused.expect("the in-flight budget must refuse work");
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (s, _, body) = app
        .call(Request::get("/ready").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, 503);
    assert_eq!(body["status"], "degraded");
    log.fail_points().pause_writer(false);
    for (ids, h) in pending {
        assert_eq!(
            h.await.unwrap().0,
            200,
            "queued requests complete once the writer resumes"
        );
        acked_ids.extend(ids);
    }
    let (ids, body) = batch("after", 5, 10);
    assert_eq!(app.post("/v1/batch", body).await.0, 200);
    acked_ids.extend(ids);
    let stored: HashSet<String> = app
        .stored()
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    assert!(acked_ids.iter().all(|id| stored.contains(id)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .call(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "/ready must recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_503_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let Some(_tmpfs) = Tmpfs::mount(&mnt, "8m") else {
        assert!(
            !in_ci(),
            "mounting a tmpfs failed: the disk-full test needs root (CI runs as root)"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    };
    let config = dir.path().join("junction.toml");
    let data = mnt.join("data");
    std::fs::write(
        &config,
        config_text(&data, "\n[log]\nsegment_bytes = 1048576\n"),
    )
    .unwrap();
    let server = Server::start_with(&config, &data);
    // Leave little room: two 1 MiB segments (active + spare) are already allocated.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 5 * 1024 * 1024]).unwrap();
    let http = reqwest::blocking::Client::new();
    let post = |body: &str| {
        http.post(server.url("/v1/batch"))
            .header("authorization", basic(WRITE_KEY))
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let mut acked = Vec::new();
    let mut failed = None;
    for i in 0..200 {
        let (ids, body) = batch(&format!("f{i}"), 20, 1500);
        let r = post(&body);
        match r.status().as_u16() {
            200 => acked.extend(ids),
            503 => {
                assert!(
                    r.headers().get("retry-after").is_some(),
                    "503 without Retry-After"
                );
                let err: serde_json::Value = r.json().unwrap();
                assert_eq!(err["code"], "storage_unavailable");
                failed = Some((ids, body));
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let (ids, body) = failed.expect("the disk never filled up");
    let ready = http.get(server.url("/ready")).send().unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().unwrap().contains("degraded"));
    // Free space; the server recovers by itself and the same batch is then accepted.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&body);
        if r.status() == 200 {
            acked.extend(ids);
            break;
        }
        assert_eq!(r.status(), 503, "only 503 while storage is unavailable");
        assert!(
            Instant::now() < deadline,
            "did not recover within 20 s of space returning"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(server.url("/ready")).send().unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "/ready must recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.terminate().success());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in tail_json(&data, &[]) {
        *counts
            .entry(e["messageId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        acked.iter().all(|id| counts.get(id) == Some(&1)),
        "every acknowledged event stored exactly once"
    );
}

#[tokio::test]
async fn a_request_dropped_mid_append_leaves_no_pending_dedup_keys() {
    use tower::ServiceExt;
    let app = TestApp::new();
    let log = app.state.ingestor.log().clone();
    log.fail_points().pause_writer(true);
    let body = json!({"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "dropped-1"}]}).to_string();
    let req = Request::post("/v1/batch")
        .header("authorization", basic(WRITE_KEY))
        .body(Body::from(body.clone()))
        .unwrap();
    // The request is abandoned (client gone, deadline) while its append waits for the writer.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        junction::http::router(app.state.clone()).oneshot(req),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "nothing can complete while the writer is paused"
    );
    log.fail_points().pause_writer(false);
    // The retry must neither hang on a pending key nor store the event twice.
    let (s, _) = tokio::time::timeout(Duration::from_secs(5), app.post("/v1/batch", body))
        .await
        .expect("retry hung on a pending key");
    assert_eq!(s, 200);
    assert_eq!(app.stored().len(), 1);
}
