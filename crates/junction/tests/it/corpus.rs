//! The compatibility corpus: `tests/corpus/compat.jsonl`, one request → expected stored
//! events (and response) per line, replayed through the router in process with a fixed clock
//! (receivedAt = 2024-05-01T12:00:00.000Z). Expectations are written from the Segment spec.
//!
//! Comparison rules: `"messageId": "<generated>"` matches any UUID; an empty `context` or
//! `integrations` object equals an absent one; expected `rejected` entries are matched on
//! `index` and `code` (messages are free text, but must be non-empty).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use serde_json::Value;

use crate::support::*;

const RECEIVED_AT_MS: i64 = 1_714_564_800_000;

fn normalize(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["context", "integrations"] {
            if o.get(k)
                .is_some_and(|c| c.as_object().is_some_and(|m| m.is_empty()))
            {
                o.remove(k);
            }
        }
    }
    v
}

#[tokio::test]
async fn compatibility_corpus() {
    let text = include_str!("../corpus/compat.jsonl");
    let mut failures = Vec::new();
    for (line, case) in text.lines().enumerate() {
        let case: Value = serde_json::from_str(case).unwrap();
        let name = case["name"].as_str().unwrap();
        let app = TestApp::with_clock(Arc::new(junction::clock::FixedClock::new(RECEIVED_AT_MS)));
        let mut route = case["route"].as_str().unwrap().to_string();
        let mut req = Request::post(&route);
        match case["auth"].as_str().unwrap() {
            "basic" => req = req.header("authorization", basic(WRITE_KEY)),
            "query" => {
                route.push_str(&format!("?writeKey={WRITE_KEY}"));
                req = Request::post(&route);
            }
            _ => {}
        }
        let mut req = req
            .header("content-type", "text/plain")
            .body(Body::from(case["request"].to_string()))
            .unwrap();
        if case["peer"] == true {
            req.extensions_mut()
                .insert(ConnectInfo(std::net::SocketAddr::from((
                    [203, 0, 113, 9],
                    40000,
                ))));
        }
        let (status, _, body) = app.call(req).await;
        if status != case["status"].as_u64().unwrap() as u16 {
            failures.push(format!(
                "line {}: {name}: status {status}, body {body}",
                line + 1
            ));
            continue;
        }
        if let Some(expected) = case.get("response") {
            let mut got = body.clone();
            if let Some(rej) = got.get_mut("rejected").and_then(Value::as_array_mut) {
                for r in rej.iter_mut() {
                    assert!(
                        r["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "{name}: rejection without message"
                    );
                    r.as_object_mut().unwrap().remove("message");
                }
            }
            if got != *expected {
                failures.push(format!(
                    "line {}: {name}: response\n  got      {got}\n  expected {expected}",
                    line + 1
                ));
            }
        }
        let stored: Vec<Value> = app.stored().into_iter().map(normalize).collect();
        let mut expected: Vec<Value> = case["stored"]
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(normalize)
            .collect();
        for (e, s) in expected.iter_mut().zip(&stored) {
            if e["messageId"] == "<generated>" {
                let id = s["messageId"].as_str().unwrap_or_default();
                assert!(
                    uuid::Uuid::parse_str(id).is_ok(),
                    "{name}: generated messageId {id:?} is not a UUID"
                );
                e["messageId"] = s["messageId"].clone();
            }
        }
        if stored != expected {
            failures.push(format!(
                "line {}: {name}:\n  got      {}\n  expected {}",
                line + 1,
                Value::Array(stored),
                Value::Array(expected)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
