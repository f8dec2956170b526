//! Tracking API through the router, in process, over real storage.

use std::io::Write;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};

use crate::support::*;

fn batch(events: Value) -> String {
    json!({"batch": events, "sentAt": "2024-05-01T10:00:00.000Z"}).to_string()
}

#[tokio::test]
async fn every_route_stores_with_its_type() {
    let app = TestApp::new();
    let single = [
        ("identify", "identify"),
        ("track", "track"),
        ("page", "page"),
        ("screen", "screen"),
        ("group", "group"),
        ("alias", "alias"),
        ("i", "identify"),
        ("t", "track"),
        ("p", "page"),
        ("s", "screen"),
        ("g", "group"),
        ("a", "alias"),
    ];
    for (route, _) in single {
        let body = json!({"userId": "u1", "event": "E", "groupId": "g1", "previousId": "p1", "messageId": format!("m-{route}")});
        let (status, resp) = app.post(&format!("/v1/{route}"), body.to_string()).await;
        assert_eq!(
            (status, resp.clone()),
            (200, json!({"success": true})),
            "route {route}"
        );
    }
    for (i, route) in ["/v1/batch", "/v1/import", "/v1/b"].iter().enumerate() {
        let (status, _) = app.post(route, batch(json!([{"type": "track", "event": "B", "userId": "u1", "messageId": format!("b-{i}")}]))).await;
        assert_eq!(status, 200, "{route}");
    }
    let beacon = Request::post(format!("/beacon/v1/batch?writeKey={WRITE_KEY}"))
        .header("content-type", "text/plain")
        .body(Body::from(batch(
            json!([{"type": "page", "anonymousId": "a1", "messageId": "beacon-1"}]),
        )))
        .unwrap();
    assert_eq!(app.call(beacon).await.0, 200);
    let stored = app.stored();
    let types: Vec<(&str, &str)> = stored
        .iter()
        .map(|e| {
            (
                e["messageId"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
            )
        })
        .collect();
    for (route, ty) in single {
        assert!(
            types.contains(&(format!("m-{route}").as_str(), ty)),
            "{route} → {ty} missing in {types:?}"
        );
    }
    assert_eq!(stored.len(), single.len() + 4);
    assert!(
        stored
            .iter()
            .all(|e| e["receivedAt"].is_string() && e["timestamp"].is_string())
    );
}

#[tokio::test]
async fn metrics_route_v1_m_is_accepted_and_ignored() {
    let app = TestApp::new();
    let req = Request::post("/v1/m")
        .body(Body::from(r#"{"series":[]}"#))
        .unwrap();
    assert_eq!(app.call(req).await.0, 200);
    assert!(app.stored().is_empty());
}

#[tokio::test]
async fn write_key_from_basic_body_or_query_else_401() {
    let app = TestApp::new();
    let ev = |id: &str| json!({"userId": "u", "event": "E", "messageId": id});
    // Body writeKey, no header.
    let mut b = ev("body");
    b["writeKey"] = json!(WRITE_KEY);
    let (s, _, _) = app
        .call(
            Request::post("/v1/track")
                .body(Body::from(b.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200);
    // Query writeKey.
    let (s, _, _) = app
        .call(
            Request::post(format!("/v1/track?writeKey={WRITE_KEY}"))
                .body(Body::from(ev("query").to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200);
    // Basic without the colon.
    use base64::Engine;
    let nocolon = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(WRITE_KEY)
    );
    let (s, _, _) = app
        .call(
            Request::post("/v1/track")
                .header("authorization", nocolon)
                .body(Body::from(ev("nocolon").to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200);
    // Unknown Basic key but a valid body key: the body key is used.
    let mut b = ev("fallback");
    b["writeKey"] = json!(OTHER_WRITE_KEY);
    let (s, _, _) = app
        .call(
            Request::post("/v1/track")
                .header("authorization", basic("nope"))
                .body(Body::from(b.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200);
    // Nothing valid.
    for req in [
        Request::post("/v1/track")
            .body(Body::from(ev("x").to_string()))
            .unwrap(),
        Request::post("/v1/track")
            .header("authorization", basic("nope"))
            .body(Body::from(ev("x").to_string()))
            .unwrap(),
        Request::post("/v1/batch?writeKey=nope")
            .body(Body::from("not json"))
            .unwrap(),
    ] {
        let (s, _, body) = app.call(req).await;
        assert_eq!(s, 401);
        assert_eq!(body["code"], "invalid_write_key");
        assert!(body["message"].as_str().unwrap().contains("write key"));
    }
    let stored = app.stored();
    assert_eq!(stored.len(), 4);
    assert!(
        stored.iter().all(|e| e.get("writeKey").is_none()),
        "writeKey must not be stored"
    );
    let sources: Vec<String> = read_log(&app.state.config.log.dir)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(sources, ["web", "web", "web", "ios"]);
}

#[tokio::test]
async fn cors_preflight_echoes_and_errors_carry_allow_origin() {
    let app = TestApp::new();
    let req = Request::options("/v1/batch")
        .header("origin", "http://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,anonymousid",
        )
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = app.call(req).await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "http://shop.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization,content-type,anonymousid"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(h["access-control-max-age"], "900");
    let req = Request::post("/v1/t")
        .header("origin", "http://shop.example")
        .body(Body::from("{}"))
        .unwrap();
    let (s, h, _) = app.call(req).await;
    assert_eq!(s, 401);
    assert_eq!(h["access-control-allow-origin"], "http://shop.example");
    let req = Request::options("/v1/projects/x/settings")
        .header("origin", "http://a")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.call(req).await.0, 200);
}

#[tokio::test]
async fn batch_rejects_bad_events_one_by_one() {
    let app = TestApp::new();
    let (s, body) = app
        .post(
            "/v1/batch",
            batch(json!([
                {"type": "track", "event": "Ok", "userId": "u1", "messageId": "ok-1"},
                {"type": "track", "event": "NoId"},
                {"type": "track", "userId": "u1"},
                {"type": "identify", "userId": "u2", "messageId": "x".repeat(101)},
                {"type": "identify", "userId": "u2", "messageId": "ok-2"},
            ])),
        )
        .await;
    assert_eq!(s, 200);
    let rejected = body["rejected"].as_array().unwrap();
    let idx: Vec<u64> = rejected
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [1, 2, 3]);
    assert!(
        rejected
            .iter()
            .all(|r| r["code"].is_string() && r["message"].is_string())
    );
    let ids: Vec<String> = app
        .stored()
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["ok-1", "ok-2"]);
    // A single-event call with such an event gets 400 naming the problem.
    let (s, body) = app
        .post("/v1/track", json!({"event": "NoId"}).to_string())
        .await;
    assert_eq!(s, 400);
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn duplicates_are_dropped_per_source_and_survive_restart() {
    let app = TestApp::new();
    let ev = json!([{"type": "track", "event": "E", "userId": "u", "messageId": "dup-1"}]);
    assert_eq!(app.post("/v1/batch", batch(ev.clone())).await.0, 200);
    assert_eq!(app.post("/v1/batch", batch(ev.clone())).await.0, 200);
    // The same messageId twice in one batch is stored once.
    let twice = json!([{"type": "track", "event": "E", "userId": "u", "messageId": "dup-2"}, {"type": "track", "event": "E", "userId": "u", "messageId": "dup-2"}]);
    assert_eq!(app.post("/v1/batch", batch(twice)).await.0, 200);
    // Another source with the same messageId is kept.
    let req = Request::post("/v1/batch")
        .header("authorization", basic(OTHER_WRITE_KEY))
        .body(Body::from(batch(ev.clone())))
        .unwrap();
    assert_eq!(app.call(req).await.0, 200);
    assert_eq!(app.stored().len(), 3);
    // Restart (graceful), then again without the snapshot (as after kill -9).
    let dir = app.close();
    let app = TestApp::in_dir(dir, "");
    assert_eq!(app.post("/v1/batch", batch(ev.clone())).await.0, 200);
    assert_eq!(app.stored().len(), 3);
    let dir = app.close();
    std::fs::remove_file(dir.path().join("dedup.snapshot")).unwrap();
    let app = TestApp::in_dir(dir, "");
    assert_eq!(app.post("/v1/batch", batch(ev)).await.0, 200);
    assert_eq!(app.stored().len(), 3);
    let metrics = app
        .call(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .2;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("junction_events_deduplicated_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn dedup_window_is_configurable() {
    let app = TestApp::with_config("\n[ingest]\ndedup_window_secs = 0\n");
    let ev = json!([{"type": "track", "event": "E", "userId": "u", "messageId": "w-1"}]);
    app.post("/v1/batch", batch(ev.clone())).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.post("/v1/batch", batch(ev)).await;
    assert_eq!(
        app.stored().len(),
        2,
        "outside the window a repeated messageId is stored again"
    );
}

/// The default limits, with the status and limit name of each, are in `bad_input::cases`.
#[tokio::test]
async fn a_raised_max_batch_bytes_admits_rudderstack_sized_batches() {
    let app = TestApp::with_config("\n[ingest]\nmax_batch_bytes = 4000000\n");
    let big_batch: Vec<Value> = (0..40).map(|i| json!({"type": "track", "event": "E", "userId": "u", "messageId": format!("big-{i}"), "properties": {"p": "x".repeat(20_000)}})).collect();
    let (s, _) = app.post("/v1/batch", batch(Value::Array(big_batch))).await;
    assert_eq!(
        s, 200,
        "a raised max_batch_bytes admits RudderStack-sized batches"
    );
    assert_eq!(app.stored().len(), 40);
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let app = TestApp::new();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(
        batch(json!([{"type": "track", "event": "Gz", "userId": "u", "messageId": "gz-1"}]))
            .as_bytes(),
    )
    .unwrap();
    let req = Request::post("/v1/batch")
        .header("authorization", basic(WRITE_KEY))
        .header("content-encoding", "gzip")
        .body(Body::from(enc.finish().unwrap()))
        .unwrap();
    assert_eq!(app.call(req).await.0, 200);
    assert_eq!(app.stored()[0]["event"], "Gz");
}

#[tokio::test]
async fn settings_routes_point_browser_sdks_back_here() {
    let app = TestApp::new();
    let req = Request::get(format!("/v1/projects/{WRITE_KEY}/settings"))
        .header("host", "cdp.local:8088")
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = app.call(req).await;
    assert_eq!(s, 200);
    assert_eq!(body["integrations"]["Segment.io"]["apiKey"], WRITE_KEY);
    assert_eq!(
        body["integrations"]["Segment.io"]["apiHost"],
        "cdp.local:8088/v1"
    );
    assert_eq!(body["metrics"]["sampleRate"], 0);
    assert_eq!(app.get("/v1/projects/nope/settings").await.0, 404);
    let req = Request::get("/sourceConfig/?p=npm&v=3&writeKey=x")
        .header("authorization", basic(WRITE_KEY))
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = app.call(req).await;
    assert_eq!(s, 200);
    assert_eq!(body["source"]["id"], "web");
    assert_eq!(body["source"]["enabled"], true);
    assert!(body["source"]["config"].is_object() && body["source"]["destinations"].is_array());
    assert_eq!(app.get("/sourceConfig/?writeKey=nope").await.0, 401);
}

#[tokio::test]
async fn wrong_method_and_unknown_route_get_json_errors() {
    let app = TestApp::new();
    let (s, _, body) = app
        .call(Request::get("/v1/track").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, 405);
    assert_eq!(body["code"], "method_not_allowed");
    let (s, _, body) = app
        .call(
            Request::post("/v1/nope")
                .header("authorization", basic(WRITE_KEY))
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = TestApp::new();
    app.post(
        "/v1/batch",
        batch(json!([{"type": "track", "event": "E", "userId": "u"}, {"type": "track"}])),
    )
    .await;
    assert_eq!(
        app.call(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .0,
        200
    );
    let (s, _, body) = app
        .call(Request::get("/ready").body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ready")));
    let (_, _, m) = app
        .call(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    let m = m.as_str().unwrap();
    for needle in [
        "junction_events_ingested_total{source=\"web\"} 1",
        "junction_events_rejected_total{code=",
        "junction_events_deduplicated_total 0",
        "junction_ingest_bytes_total",
        "junction_log_fsync_seconds_bucket",
        "junction_log_size_bytes",
        "junction_http_request_seconds_bucket{route=\"tracking\"",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

#[tokio::test]
async fn debugger_streams_ingested_and_rejected_events_filtered_by_source() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let app = TestApp::new();
    let router = junction::http::router(app.state.clone());
    let open = |token: Option<&str>, query: &str| {
        let mut req = Request::get(format!("/api/v1/debugger/events{query}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        router.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    assert_eq!(open(None, "").await.unwrap().status(), 401);
    assert_eq!(open(Some(PROFILES_TOKEN), "").await.unwrap().status(), 403);
    let resp = open(Some(EVENTS_TOKEN), "?source=web").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.into_body();
    // An event of another source (filtered out), then a good and a bad one of `web`.
    let req = Request::post("/v1/batch")
        .header("authorization", basic(OTHER_WRITE_KEY))
        .body(Body::from(batch(
            json!([{"type": "track", "event": "Ios", "userId": "u"}]),
        )))
        .unwrap();
    app.call(req).await;
    app.post("/v1/batch", batch(json!([{"type": "track", "event": "Web", "userId": "u"}, {"type": "track", "event": "NoId"}]))).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(text.contains("event: ingested") && text.contains("event: rejected")) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("debugger stream stalled")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("\"Web\""), "{text}");
    assert!(!text.contains("\"Ios\""), "source filter: {text}");
    assert!(text.contains("missing_id"), "{text}");
}
