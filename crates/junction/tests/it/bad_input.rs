//! Bad input battery: a table of malformed requests with their documented status and error
//! code, and a property test feeding mutated and random bodies to every tracking route.
//! No case may panic or answer 5xx; every error is JSON naming a code and carrying a message;
//! the server keeps serving afterwards.

use std::io::Write;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::json;

use crate::support::*;

struct Case {
    name: &'static str,
    method: &'static str,
    route: &'static str,
    auth: Option<&'static str>,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The message must mention this (the field or the limit).
    mentions: &'static str,
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn track(extra: serde_json::Value) -> Vec<u8> {
    let mut ev = json!({"userId": "u1", "event": "E"});
    for (k, v) in extra.as_object().unwrap() {
        ev[k] = v.clone();
    }
    ev.to_string().into_bytes()
}

fn cases() -> Vec<Case> {
    let deep = format!(
        "{{\"userId\":\"u\",\"event\":\"E\",\"properties\":{{\"d\":{}{}}}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let many: Vec<_> = (0..2501)
        .map(|i| json!({"type": "track", "userId": "u", "event": "E", "messageId": i.to_string()}))
        .collect();
    let c = |name, route, body: Vec<u8>, status, code, mentions| Case {
        name,
        method: "POST",
        route,
        auth: Some(WRITE_KEY),
        encoding: None,
        body,
        status,
        code,
        mentions,
    };
    vec![
        c("invalid JSON", "/v1/batch", b"{\"batch\": [".to_vec(), 400, "invalid_json", "line"),
        c("invalid UTF-8", "/v1/track", b"{\"userId\":\"\xff\xfe\",\"event\":\"E\"}".to_vec(), 400, "invalid_json", "line"),
        c("NUL byte", "/v1/track", b"{\"userId\":\"u\",\"event\":\"E\"}\0".to_vec(), 400, "invalid_json", "line"),
        c("not an object", "/v1/batch", b"[1,2,3]".to_vec(), 400, "invalid_body", "object"),
        c("batch not an array", "/v1/batch", br#"{"batch":{"type":"track"}}"#.to_vec(), 400, "invalid_batch", "batch"),
        c("batch missing", "/v1/batch", br#"{"events":[]}"#.to_vec(), 400, "invalid_batch", "batch"),
        c("empty batch", "/v1/batch", br#"{"batch":[]}"#.to_vec(), 400, "empty_batch", "batch"),
        c("10,000-deep nesting", "/v1/track", deep.into_bytes(), 400, "too_deep", "depth"),
        c("number out of f64 range", "/v1/track", br#"{"userId":"u","event":"E","properties":{"n":1e400}}"#.to_vec(), 400, "number_out_of_range", "number"),
        c("userId of the wrong type", "/v1/track", track(json!({"userId": {"id": 1}})), 400, "invalid_field", "userId"),
        c("properties of the wrong type", "/v1/track", track(json!({"properties": "nope"})), 400, "invalid_field", "properties"),
        c("context of the wrong type", "/v1/track", track(json!({"context": [1]})), 400, "invalid_field", "context"),
        c("timestamp not a date", "/v1/track", track(json!({"timestamp": "yesterday"})), 400, "invalid_timestamp", "timestamp"),
        c("missing ids", "/v1/track", json!({"event": "E"}).to_string().into_bytes(), 400, "missing_id", "userId"),
        c("track without event", "/v1/track", json!({"userId": "u"}).to_string().into_bytes(), 400, "missing_field", "event"),
        c("messageId over 100 chars", "/v1/track", track(json!({"messageId": "m".repeat(101)})), 400, "message_id_too_long", "100"),
        c("event over 32 KB", "/v1/track", track(json!({"properties": {"p": "x".repeat(33 * 1024)}})), 413, "request_too_large", "max_event_bytes"),
        c("batch over 500 KB", "/v1/batch", json!({"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"p": "x".repeat(510 * 1024)}}]}).to_string().into_bytes(), 413, "request_too_large", "max_batch_bytes"),
        c("2,501 events", "/v1/batch", json!({"batch": many}).to_string().into_bytes(), 400, "too_many_events", "2500"),
        Case { encoding: Some("gzip"), ..c("gzip bomb", "/v1/batch", gz(&vec![b' '; 64 * 1024 * 1024]), 413, "request_too_large", "max_batch_bytes") },
        Case { encoding: Some("gzip"), ..c("corrupt gzip", "/v1/batch", b"\x1f\x8b\x08\x00garbage".to_vec(), 400, "invalid_gzip", "gzip") },
        Case { encoding: Some("br"), ..c("unsupported encoding", "/v1/batch", b"{}".to_vec(), 415, "unsupported_encoding", "br") },
        Case { auth: Some("wk_wrong"), ..c("wrong write key", "/v1/track", track(json!({})), 401, "invalid_write_key", "write key") },
        Case { auth: None, ..c("missing write key", "/v1/track", track(json!({})), 401, "invalid_write_key", "write key") },
        Case { method: "GET", ..c("wrong method GET", "/v1/batch", vec![], 405, "method_not_allowed", "method") },
        Case { method: "PUT", ..c("wrong method PUT", "/v1/track", track(json!({})), 405, "method_not_allowed", "method") },
        Case { method: "DELETE", ..c("wrong method DELETE", "/beacon/v1/batch", vec![], 405, "method_not_allowed", "method") },
        c("unknown route", "/v1/teleport", track(json!({})), 404, "not_found", "route"),
    ]
}

fn request(case: &Case) -> Request<Body> {
    let mut r = Request::builder().method(case.method).uri(case.route);
    if let Some(key) = case.auth {
        r = r.header("authorization", basic(key));
    }
    if let Some(enc) = case.encoding {
        r = r.header("content-encoding", enc);
    }
    r.body(Body::from(case.body.clone())).unwrap()
}

async fn still_serves(app: &TestApp) {
    let (s, body) = app
        .post(
            "/v1/track",
            track(json!({"messageId": format!("alive-{}", uuid::Uuid::new_v4())})),
        )
        .await;
    assert_eq!(s, 200, "the server must keep serving: {body}");
}

#[tokio::test]
async fn bad_input_table() {
    let app = TestApp::new();
    let mut failures = Vec::new();
    for case in cases() {
        let (status, _, body) = app.call(request(&case)).await;
        let code = body["code"].as_str().unwrap_or_default();
        let message = body["message"].as_str().unwrap_or_default();
        if status != case.status || code != case.code || !message.contains(case.mentions) {
            failures.push(format!(
                "{}: got {status} {body}, expected {} {} mentioning {:?}",
                case.name, case.status, case.code, case.mentions
            ));
        }
    }
    still_serves(&app).await;
    assert_eq!(
        app.stored().len(),
        1,
        "nothing but the liveness event may be stored"
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn bad_events_inside_a_batch_are_rejected_one_by_one() {
    let app = TestApp::new();
    let deep = serde_json::from_str::<serde_json::Value>(&format!(
        "{}{}",
        "[".repeat(100),
        "]".repeat(100)
    ))
    .ok();
    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "Good", "messageId": "good"},
        {"type": "track", "userId": "u", "event": "Big", "properties": {"p": "x".repeat(33 * 1024)}},
        {"type": "track", "userId": {"x": 1}, "event": "E"},
        "not an object",
        {"type": "track", "userId": "u", "event": "E", "timestamp": 12},
        {"type": "track", "userId": "u", "event": "E", "properties": {"d": deep}},
    ]});
    let (s, body) = app.post("/v1/batch", batch.to_string()).await;
    assert_eq!(s, 200, "{body}");
    let codes: Vec<(u64, &str)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (1, "event_too_large"),
            (2, "invalid_field"),
            (3, "invalid_event"),
            (4, "invalid_timestamp"),
            (5, "too_deep")
        ]
    );
    assert_eq!(app.stored().len(), 1);
}

fn routes() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/v1/batch",
        "/v1/track",
        "/v1/identify",
        "/v1/t",
        "/v1/b",
        "/v1/import",
        "/beacon/v1/batch",
        "/v1/page",
        "/v1/alias",
        "/v1/group",
    ])
}

/// A valid batch, then mutated: truncated, a byte replaced, or a fragment spliced in.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let valid = json!({"batch": [
        {"type": "track", "userId": "u", "event": "E", "properties": {"a": [1, 2.5, "x"], "b": {"c": null}}, "timestamp": "2024-01-01T00:00:00Z"},
        {"type": "identify", "anonymousId": "a", "traits": {"email": "e@x"}, "context": {"ip": "1.2.3.4"}}
    ], "sentAt": "2024-01-01T00:00:01Z"})
    .to_string()
    .into_bytes();
    let fragments = prop::sample::select(vec![
        &b"1e400"[..],
        b"\"\\ud800\"",
        b"[[[[[[[[",
        b"}",
        b"null",
        b"\xff",
        b"\"type\":\"nope\"",
        b",",
        b"-",
        b"9999999999999999999999999",
        b"\"\\u0000\"",
        b"{\"batch\":1}",
        b"true",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        (Just(valid.clone()), 0..valid.len()).prop_map(|(v, n)| v[..n].to_vec()),
        (Just(valid.clone()), 0..valid.len(), any::<u8>()).prop_map(|(mut v, i, b)| {
            v[i] = b;
            v
        }),
        (Just(valid.clone()), 0..valid.len(), fragments).prop_map(|(v, i, f)| [
            &v[..i],
            f,
            &v[i..]
        ]
        .concat()),
    ]
}

#[test]
fn no_input_panics_or_answers_5xx() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async { TestApp::new() });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(routes(), bodies(), any::<bool>()),
            |(route, body, gzip)| {
                let body = if gzip { gz(&body) } else { body };
                let mut r = Request::post(route).header("authorization", basic(WRITE_KEY));
                if gzip {
                    r = r.header("content-encoding", "gzip");
                }
                let (status, _, resp) =
                    runtime.block_on(app.call(r.body(Body::from(body)).unwrap()));
                prop_assert!(
                    [200, 400, 413].contains(&status),
                    "status {} body {}",
                    status,
                    resp
                );
                if status != 200 {
                    prop_assert!(
                        resp["code"].as_str().is_some_and(|c| !c.is_empty()),
                        "no code: {}",
                        resp
                    );
                    prop_assert!(
                        resp["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "no message: {}",
                        resp
                    );
                }
                Ok(())
            },
        )
        .unwrap();
    runtime.block_on(still_serves(&app));
}
