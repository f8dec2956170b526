//! The Unify processor end to end: crash safety of its checkpoint, `junction rebuild`,
//! freshness, and its `/ready` and `/metrics` figures.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// The state a stopped data dir holds, and the log's end.
fn stored(config: &Path, data_dir: &Path) -> (junction::unify::Unify, u64) {
    let text = std::fs::read_to_string(config).unwrap();
    let file = junction::config::parse_file(&text, config).unwrap();
    let cfg = junction::config::build(Some(file), &Default::default()).unwrap();
    let unify =
        junction::unify::Unify::open(data_dir, &data_dir.join("log"), cfg.identity).unwrap();
    let end = junction::log::LogReader::open(&data_dir.join("log"), 0)
        .map(|mut r| {
            let mut end = 0;
            while let Some(rec) = r.next_record().unwrap() {
                end = rec.offset + 1;
            }
            end
        })
        .unwrap();
    (unify, end)
}

fn stored_digest(config: &Path, data_dir: &Path) -> String {
    format!("{:016x}", stored(config, data_dir).0.digest())
}

/// Panics naming the first profile or account where the stored state and a replay differ.
fn explain_difference(config: &Path, data_dir: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let file = junction::config::parse_file(&text, config).unwrap();
    let cfg = junction::config::build(Some(file), &Default::default()).unwrap();
    let stored =
        junction::unify::Unify::open(data_dir, &data_dir.join("log"), cfg.identity.clone())
            .unwrap();
    let (replayed, _) =
        junction::unify::processor::replay(&data_dir.join("log"), cfg.identity, &mut |_, _| {})
            .unwrap();
    let stored = stored.graph();
    let (sp, sa) = stored.canonical();
    let (rp, ra) = replayed.canonical();
    for (s, r) in sp.iter().zip(&rp) {
        assert_eq!(s.id, r.id, "profile ids differ");
        assert_eq!(
            s.identifiers, r.identifiers,
            "identifiers of profile {} differ",
            s.id
        );

        assert_eq!(
            s.metadata, r.metadata,
            "metadata of profile {} differs",
            s.id
        );
        assert_eq!(s.merges, r.merges, "merges of profile {} differ", s.id);
        if s.events != r.events {
            let only_s: Vec<_> = s.events.iter().filter(|e| !r.events.contains(e)).collect();
            let only_r: Vec<_> = r.events.iter().filter(|e| !s.events.contains(e)).collect();
            panic!(
                "events of profile {} differ: only stored {only_s:?}, only replayed {only_r:?} (stored {} replayed {})",
                s.id,
                s.events.len(),
                r.events.len()
            );
        }
        assert_eq!(
            s.accounts, r.accounts,
            "accounts of profile {} differ",
            s.id
        );
        assert_eq!(s.traits, r.traits, "traits of profile {} differ", s.id);
    }
    assert_eq!(sp.len(), rp.len(), "profile counts differ");
    for (s, r) in sa.iter().zip(&ra) {
        assert_eq!(s, r, "stored account differs from the replayed one");
    }
    assert_eq!(
        stored.next_id(),
        replayed.next_id(),
        "next profile id differs"
    );
}

fn rebuild(config: &Path, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(junction_bin())
        .args(["rebuild", "--json", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, stderr)
}

/// One batch that links identities across a small population, so merges, drops
/// (two user ids on one device) and trait updates all happen.
fn mixed_batch(c: usize, seq: usize) -> serde_json::Value {
    let batch: Vec<_> = (0..20)
        .map(|i| {
            let n = c * 7 + seq * 3 + i;
            let anon = format!("anon-{}", n % 37);
            let user = format!("user-{}", n % 11);
            match n % 4 {
                0 => json!({"type": "track", "event": "Viewed", "anonymousId": anon, "messageId": format!("m{c}-{seq}-{i}")}),
                1 => json!({"type": "identify", "userId": user, "anonymousId": anon, "messageId": format!("m{c}-{seq}-{i}"),
                            "traits": {"plan": format!("p{}", n % 5), "email": format!("{}@x.io", n % 13)}}),
                2 => json!({"type": "alias", "previousId": anon, "userId": user, "messageId": format!("m{c}-{seq}-{i}")}),
                _ => json!({"type": "group", "userId": user, "groupId": format!("g{}", n % 3), "messageId": format!("m{c}-{seq}-{i}"),
                            "traits": {"seats": n}}),
            }
        })
        .collect();
    json!({"batch": batch})
}

#[test]
fn kill_9_during_processing_then_restart_equals_a_clean_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "[profiles]\ncommit_interval_ms = 5\n");
    let (config, data_dir, port) = (server.config.clone(), server.data_dir.clone(), server.port);
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = mixed_batch(c, seq).to_string();
                    let url = format!("http://127.0.0.1:{port}/v1/batch");
                    let sent = http
                        .post(&url)
                        .header("authorization", basic(WRITE_KEY))
                        .body(body)
                        .send();
                    if matches!(&sent, Ok(r) if r.status() == 200) {
                        seq += 1;
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                seq
            })
        })
        .collect();
    for kill in 0..3 {
        std::thread::sleep(Duration::from_millis(500 + 200 * kill));
        server.kill9();
        server = Server::start_on(&config, &data_dir, port);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let batches: usize = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert!(batches > 20, "only {batches} batches were acknowledged");
    assert!(server.terminate().success());

    // A graceful stop leaves the state caught up with the whole log.
    let (unify, end) = stored(&config, &data_dir);
    assert_eq!(
        unify.committed(),
        end,
        "the state's checkpoint is not the log's end"
    );
    let recovered = format!("{:016x}", unify.digest());
    drop(unify);
    explain_difference(&config, &data_dir);
    let (ok, summary, stderr) = rebuild(&config, &[]);
    assert!(ok, "rebuild failed: {stderr}");
    assert!(summary["merges"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(
        summary["digest"], recovered,
        "state after kill -9 and restart differs from a clean rebuild"
    );
    // The rebuilt store holds that same state.
    assert_eq!(stored_digest(&config, &data_dir), recovered);
    // And an in-memory rebuild agrees without writing anything.
    let (ok, again, _) = rebuild(&config, &["--in-memory"]);
    assert!(ok);
    assert_eq!(again["digest"], recovered);
    assert_eq!(again["durable"], false);
}

#[test]
fn rebuild_refuses_a_data_dir_in_use_and_starts_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let (ok, _, stderr) = rebuild(&server.config, &[]);
    assert!(!ok);
    assert!(stderr.contains("is a server running"), "{stderr}");
    let config = server.config.clone();
    assert!(server.terminate().success());
    // An empty log rebuilds to an empty state.
    let (ok, summary, stderr) = rebuild(&config, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["events"], 0);
    assert_eq!(summary["profiles"], 0);
}

#[tokio::test]
async fn a_merge_is_visible_right_after_the_acknowledging_200_and_lag_is_reported() {
    let app = TestApp::new();
    let (status, _) = app
        .post(
            "/v1/track",
            json!({"writeKey": WRITE_KEY, "event": "Viewed", "anonymousId": "fresh-anon"})
                .to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post("/v1/identify", json!({"writeKey": WRITE_KEY, "userId": "fresh-user", "anonymousId": "fresh-anon", "traits": {"plan": "pro"}}).to_string())
        .await;
    assert_eq!(status, 200);
    let acked = Instant::now();
    loop {
        let merged = {
            let g = app.state.unify.graph();
            g.lookup("anonymous_id", "fresh-anon").map(|p| p.id)
                == g.lookup("user_id", "fresh-user").map(|p| p.id)
                && g.lookup("user_id", "fresh-user").is_some()
        };
        if merged {
            break;
        }
        assert!(
            acked.elapsed() < Duration::from_secs(2),
            "merge not visible 2 s after the 200"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, metrics) = app
        .call(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    let text = metrics
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| metrics.to_string());
    for name in [
        "junction_unify_lag_events 0",
        "junction_unify_profiles 1",
        "junction_unify_merges_total 0",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn ready_fails_while_the_processor_is_behind_the_bound() {
    let app = TestApp::with_config("[profiles]\nready_max_lag_events = 100\n");
    app.state.unify.pause(true);
    let batch: Vec<_> = (0..101)
        .map(|i| json!({"type": "track", "event": "E", "anonymousId": format!("a{i}")}))
        .collect();
    let (status, _) = app
        .post(
            "/v1/batch",
            json!({"writeKey": WRITE_KEY, "batch": batch}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    while app.state.unify.lag() < 101 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lag never reached 101"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("101 events behind the log (bound: 100)"),
        "{body}"
    );
    app.state.unify.pause(false);
    loop {
        let (status, _) = app.get("/ready").await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/ready stayed red after catching up"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(app.state.unify.graph().profile_count(), 101);
}
