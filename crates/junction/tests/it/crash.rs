//! Durability under SIGKILL: every messageId answered 200 is in the log exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

const CLIENTS: usize = 8;
const BATCH: usize = 20;
const KILLS: usize = 4;

#[test]
fn acknowledged_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "");
    let (config, data_dir, port) = (server.config.clone(), server.data_dir.clone(), server.port);
    let acked: Arc<Mutex<HashSet<String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (acked, stop) = (acked.clone(), stop.clone());
            runtime.spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                let url = format!("http://127.0.0.1:{port}/v1/batch");
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..BATCH).map(|i| format!("c{c}-{seq}-{i}")).collect();
                    let batch: Vec<_> = ids.iter().map(|id| json!({"type": "track", "event": "Crash", "userId": format!("u{c}"), "messageId": id})).collect();
                    let body = json!({"batch": batch}).to_string();
                    // Retry the same batch until it is acknowledged: a batch stored but not
                    // acknowledged before a kill must be deduplicated on its retry.
                    loop {
                        let sent = http.post(&url).header("authorization", basic(WRITE_KEY)).body(body.clone()).send().await;
                        if matches!(&sent, Ok(r) if r.status() == 200) {
                            acked.lock().unwrap().extend(ids.iter().cloned());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    for kill in 0..KILLS {
        std::thread::sleep(Duration::from_millis(600 + 250 * kill as u64));
        server.kill9();
        server = Server::start_on(&config, &data_dir, port);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        runtime.block_on(c).unwrap();
    }
    server.kill9();
    let stored = tail_json(&data_dir, &[]);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in &stored {
        *counts
            .entry(e["messageId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() >= CLIENTS * BATCH * 2,
        "too little traffic to mean anything: {}",
        acked.len()
    );
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let dups: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} messageIds stored more than once, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    eprintln!(
        "crash test: {} acknowledged, {} stored, {KILLS} kills",
        acked.len(),
        stored.len()
    );
}
