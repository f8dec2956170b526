//! Profile API (users and accounts), the merges route and `junction profiles`: events go in
//! through the tracking API, the processor applies them, and the reads poll until it has.

use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::*;

const USERS: &str = "/v1/spaces/acme/collections/users/profiles";
const ACCOUNTS: &str = "/v1/spaces/acme/collections/accounts/profiles";

fn ts(second: u32) -> String {
    format!("2024-05-01T00:00:{second:02}.000Z")
}

/// u1 (merged with a2 by an alias), u2, accounts g1 (u1, u2) and g2 (u1); 14 traits on u1.
fn history() -> Value {
    let mut traits = json!({"email": "a+b@x.io", "plan": "pro"});
    for i in 0..12 {
        traits[format!("t{i:02}")] = json!(i);
    }
    json!({"batch": [
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": traits, "messageId": "m1", "timestamp": ts(1)},
        {"type": "track", "anonymousId": "a2", "event": "Viewed", "properties": {"sku": "s1"}, "messageId": "m2", "timestamp": ts(2)},
        {"type": "track", "userId": "u1", "event": "Bought", "properties": {"revenue": 9.5}, "messageId": "m3", "timestamp": ts(3)},
        {"type": "alias", "userId": "u1", "previousId": "a2", "messageId": "m4", "timestamp": ts(4)},
        {"type": "page", "userId": "u1", "name": "Home", "messageId": "m5", "timestamp": ts(5)},
        {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme", "size": 5}, "messageId": "m6", "timestamp": ts(6)},
        {"type": "group", "userId": "u1", "groupId": "g2", "messageId": "m7", "timestamp": ts(7)},
        {"type": "identify", "userId": "u2", "messageId": "m8", "timestamp": ts(8)},
        {"type": "group", "userId": "u2", "groupId": "g1", "messageId": "m9", "timestamp": ts(9)},
    ]})
}

const LAST: &str = "m9";

async fn call(app: &TestApp, path: &str, auth: Option<String>) -> (u16, HeaderMap, Value) {
    let mut req = Request::get(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    app.call(req.body(Body::empty()).unwrap()).await
}

/// GET with the profiles token (Basic, empty password); status and body.
async fn read(app: &TestApp, path: &str) -> (u16, Value) {
    let (s, _, j) = call(app, path, Some(basic(PROFILES_TOKEN))).await;
    (s, j)
}

async fn ok(app: &TestApp, path: &str) -> Value {
    let (s, j) = read(app, path).await;
    assert_eq!(s, 200, "{path}: {j}");
    j
}

/// Sends the history and waits until the processor applied its last event.
async fn loaded() -> TestApp {
    let app = TestApp::new();
    let (s, j) = app.post("/v1/batch", history().to_string()).await;
    assert_eq!(s, 200, "{j}");
    let path = format!("{ACCOUNTS}/group_id:g1/metadata");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, j) = read(&app, &path).await;
        if s == 200 && j["metadata"]["last_message_id"] == LAST {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "the processor did not apply the events: {s} {j}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn field(body: &Value, list: &str, key: &str) -> Vec<String> {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("no `{list}` in {body}"))
        .iter()
        .map(|e| match &e[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn keys(body: &Value) -> Vec<String> {
    body["traits"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn user_traits_page_by_key_with_include_verbose_and_class() {
    let app = loaded().await;
    let path = format!("{USERS}/user_id:u1/traits");
    let page1 = ok(&app, &path).await;
    assert_eq!(
        keys(&page1),
        [
            "email", "plan", "t00", "t01", "t02", "t03", "t04", "t05", "t06", "t07"
        ]
    );
    assert_eq!(page1["traits"]["email"], "a+b@x.io");
    assert_eq!(page1["traits"]["t03"], 3);
    assert_eq!(
        page1["cursor"],
        json!({"url": path, "has_more": true, "next": "t08", "limit": 10})
    );
    let page2 = ok(&app, &format!("{path}?next=t08")).await;
    assert_eq!(keys(&page2), ["t08", "t09", "t10", "t11"]);
    assert_eq!(page2["cursor"]["has_more"], false);
    assert_eq!(page2["cursor"]["next"], "");
    let all = ok(&app, &format!("{path}?limit=200")).await;
    assert_eq!(keys(&all).len(), 14);
    let small = ok(&app, &format!("{path}?limit=1")).await;
    assert_eq!(
        (keys(&small), &small["cursor"]["next"]),
        (vec!["email".to_string()], &json!("plan"))
    );
    let some = ok(&app, &format!("{path}?include=plan,t11,nope&verbose=true")).await;
    assert_eq!(
        some["traits"],
        json!({"plan": {"value": "pro", "source_id": "web", "updated_at": ts(1)},
               "t11": {"value": 11, "source_id": "web", "updated_at": ts(1)}})
    );
    let classed = ok(&app, &format!("{path}?class=audience")).await;
    assert_eq!(classed["traits"], json!({}), "no audiences exist yet");
    for (q, param) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("verbose=yes", "verbose"),
        ("class=x", "class"),
        ("include=", "include"),
    ] {
        let (s, j) = read(&app, &format!("{path}?{q}")).await;
        assert_eq!(s, 400, "{q}: {j}");
        assert_eq!(j["error"]["code"], "validation_error", "{q}: {j}");
        assert!(
            j["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{q}: {j}"
        );
    }
    let (s, j) = read(&app, &format!("{path}?limt=5")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (400, Some("invalid_request_error")),
        "{j}"
    );
    assert!(
        j["error"]["message"].as_str().unwrap().contains("limt"),
        "{j}"
    );
}

#[tokio::test]
async fn any_identifier_of_a_merged_profile_resolves_it_and_ids_are_percent_decoded() {
    let app = loaded().await;
    let want = ok(&app, &format!("{USERS}/user_id:u1/external_ids?limit=100")).await;
    assert_eq!(
        ids(&want),
        [
            "anonymous_id:a1",
            "email:a+b@x.io",
            "user_id:u1",
            "anonymous_id:a2"
        ],
        "first seen first"
    );
    for id in [
        "anonymous_id:a1",
        "anonymous_id:a2",
        "email:a%2Bb@x.io",
        "email:a+b@x.io",
        "email:a%2Bb%40x.io",
        "user_id%3Au1",
    ] {
        let got = ok(&app, &format!("{USERS}/{id}/external_ids?limit=100")).await;
        assert_eq!(ids(&got), ids(&want), "{id}");
    }
    for id in [
        "email:a%20b@x.io",
        "user_id:U1",
        "email:a+b",
        "anonymous_id:u1",
    ] {
        let (s, j) = read(&app, &format!("{USERS}/{id}/traits")).await;
        assert_eq!(
            (s, j),
            (
                404,
                json!({"error": {"code": "not_found", "message": "Profile was not found."}})
            ),
            "{id}"
        );
    }
    // The value may hold colons: only the first one splits.
    let (s, j) = read(&app, &format!("{USERS}/user_id:u1:x/traits")).await;
    assert_eq!(s, 404, "{j}");
    for id in ["u1", "user_id:", ":u1"] {
        let (s, j) = read(&app, &format!("{USERS}/{id}/traits")).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (400, Some("validation_error")),
            "{id}: {j}"
        );
        assert!(
            j["error"]["message"].as_str().unwrap().contains("`id`"),
            "{j}"
        );
    }
}

#[tokio::test]
async fn user_external_ids_metadata_and_links() {
    let app = loaded().await;
    let path = format!("{USERS}/email:a%2Bb@x.io/external_ids");
    let page1 = ok(&app, &format!("{path}?limit=2")).await;
    assert_eq!(
        page1["data"][0],
        json!({"source_id": "web", "collection": "users", "id": "a1", "type": "anonymous_id",
               "created_at": ts(1), "encoding": "none", "first_message_id": "m1"})
    );
    assert_eq!(ids(&page1), ["anonymous_id:a1", "email:a+b@x.io"]);
    assert_eq!(page1["cursor"]["has_more"], true);
    let next = page1["cursor"]["next"].as_str().unwrap();
    let page2 = ok(&app, &format!("{path}?limit=2&next={next}")).await;
    assert_eq!(ids(&page2), ["user_id:u1", "anonymous_id:a2"]);
    assert_eq!(page2["data"][1]["first_message_id"], "m2");
    assert_eq!(page2["cursor"]["has_more"], false);
    let only = ok(&app, &format!("{path}?include=anonymous_id&verbose=true")).await;
    assert_eq!(ids(&only), ["anonymous_id:a1", "anonymous_id:a2"]);
    let (s, j) = read(&app, &format!("{path}?next=garbage!")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "{j}"
    );
    let (s, _) = read(&app, &format!("{path}?limit=101")).await;
    assert_eq!(s, 400);

    let meta = ok(
        &app,
        &format!("{USERS}/anonymous_id:a2/metadata?verbose=true"),
    )
    .await;
    let m = &meta["metadata"];
    assert_eq!(m["first_message_id"], "m1");
    assert_eq!(m["first_source_id"], "web");
    assert_eq!(m["last_message_id"], "m7");
    assert_eq!(m["last_source_id"], "web");
    assert_eq!(m["expires_at"], Value::Null);
    assert!(
        m["created_at"].as_str().unwrap() <= m["updated_at"].as_str().unwrap(),
        "{m}"
    );
    let (s, _) = read(&app, &format!("{USERS}/user_id:u1/metadata?limit=1")).await;
    assert_eq!(s, 400);

    let links = ok(&app, &format!("{USERS}/user_id:u1/links")).await;
    assert_eq!(
        field(&links, "data", "to_collection"),
        ["accounts", "accounts"]
    );
    assert_eq!(
        links["data"][0]["external_ids"],
        json!([{"source_id": "web", "collection": "accounts", "id": "g1", "type": "group_id",
                "created_at": ts(6), "encoding": "none", "first_message_id": "m6"}])
    );
    let page1 = ok(&app, &format!("{USERS}/user_id:u1/links?limit=1")).await;
    assert_eq!(page1["data"][0]["external_ids"][0]["id"], "g1");
    assert_eq!(page1["cursor"]["next"], "g2");
    let page2 = ok(&app, &format!("{USERS}/user_id:u1/links?limit=1&next=g2")).await;
    assert_eq!(page2["data"][0]["external_ids"][0]["id"], "g2");
    assert_eq!(page2["cursor"]["has_more"], false);
    let (s, j) = read(&app, &format!("{USERS}/user_id:u1/links?limit=21")).await;
    assert_eq!(s, 400, "{j}");
    let none = ok(&app, &format!("{USERS}/user_id:u2/links")).await;
    assert_eq!(
        none["data"],
        json!([{"to_collection": "accounts", "external_ids": [{
        "source_id": "web", "collection": "accounts", "id": "g1", "type": "group_id",
        "created_at": ts(6), "encoding": "none", "first_message_id": "m6"}]}])
    );
}

#[tokio::test]
async fn user_events_sort_filter_and_page() {
    let app = loaded().await;
    let path = format!("{USERS}/user_id:u1/events");
    let all = ok(&app, &path).await;
    assert_eq!(
        field(&all, "data", "message_id"),
        ["m7", "m6", "m5", "m4", "m3", "m2", "m1"]
    );
    assert_eq!(all["cursor"]["has_more"], false);
    let bought = &all["data"][4];
    assert_eq!(bought["type"], "track");
    assert_eq!(bought["event"], "Bought");
    assert_eq!(bought["properties"], json!({"revenue": 9.5}));
    assert_eq!(bought["source_id"], "web");
    assert_eq!(bought["timestamp"], ts(3));
    assert_eq!(bought["related"], json!({"users": null}));
    assert!(bought["context"].is_object(), "{bought}");
    assert_eq!(
        bought["external_ids"],
        json!([{"collection": "users", "type": "user_id", "id": "u1", "encoding": "none"}])
    );
    assert_eq!(all["data"][2]["name"], "Home");

    let mut seen = Vec::new();
    let mut url = format!("{path}?sort=asc&limit=3");
    loop {
        let page = ok(&app, &url).await;
        assert!(page["data"].as_array().unwrap().len() <= 3);
        seen.extend(field(&page, "data", "message_id"));
        if page["cursor"]["has_more"] != true {
            break;
        }
        url = format!(
            "{path}?sort=asc&limit=3&next={}",
            page["cursor"]["next"].as_str().unwrap()
        );
    }
    assert_eq!(seen, ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);

    let range = ok(&app, &format!("{path}?start={}&end={}", ts(3), ts(5))).await;
    assert_eq!(
        field(&range, "data", "message_id"),
        ["m4", "m3"],
        "start inclusive, end exclusive"
    );
    let range = ok(&app, &format!("{path}?start=2024-05-01T02:00:06%2B02:00")).await;
    assert_eq!(
        field(&range, "data", "message_id"),
        ["m7", "m6"],
        "an offset given as %2B"
    );
    let named = ok(&app, &format!("{path}?include=Bought,Viewed")).await;
    assert_eq!(field(&named, "data", "message_id"), ["m3", "m2"]);
    let named = ok(&app, &format!("{path}?include=Bought,Viewed&limit=1")).await;
    assert_eq!(field(&named, "data", "message_id"), ["m3"]);
    let next = named["cursor"]["next"].as_str().unwrap();
    let named = ok(
        &app,
        &format!("{path}?include=Bought,Viewed&limit=1&next={next}"),
    )
    .await;
    assert_eq!(field(&named, "data", "message_id"), ["m2"]);
    assert_eq!(named["cursor"]["has_more"], false);
    let rest = ok(&app, &format!("{path}?exclude=Bought")).await;
    assert_eq!(
        field(&rest, "data", "message_id"),
        ["m7", "m6", "m5", "m4", "m2", "m1"]
    );
    let other = ok(&app, &format!("{USERS}/user_id:u2/events?sort=desc")).await;
    assert_eq!(field(&other, "data", "message_id"), ["m9", "m8"]);
    for (q, param) in [
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("sort=newest", "sort"),
        ("start=yesterday", "start"),
        ("end=2024-13-01", "end"),
        ("next=nope", "next"),
    ] {
        let (s, j) = read(&app, &format!("{path}?{q}")).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (400, Some("validation_error")),
            "{q}: {j}"
        );
        assert!(
            j["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{q}: {j}"
        );
    }
}

#[tokio::test]
async fn account_resources() {
    let app = loaded().await;
    let base = format!("{ACCOUNTS}/group_id:g1");
    let traits = ok(&app, &format!("{base}/traits?verbose")).await;
    assert_eq!(
        traits["traits"],
        json!({"name": {"value": "Acme", "source_id": "web", "updated_at": ts(6)},
               "size": {"value": 5, "source_id": "web", "updated_at": ts(6)}})
    );
    let page = ok(&app, &format!("{base}/traits?limit=1")).await;
    assert_eq!(
        (keys(&page), &page["cursor"]["next"]),
        (vec!["name".to_string()], &json!("size"))
    );
    let ext = ok(&app, &format!("{base}/external_ids")).await;
    assert_eq!(
        ext["data"],
        json!([{"source_id": "web", "collection": "accounts", "id": "g1", "type": "group_id",
                "created_at": ts(6), "encoding": "none", "first_message_id": "m6"}])
    );
    let meta = ok(&app, &format!("{base}/metadata")).await;
    assert_eq!(meta["metadata"]["first_message_id"], "m6");
    assert_eq!(meta["metadata"]["last_message_id"], "m9");
    let links = ok(&app, &format!("{base}/links")).await;
    assert_eq!(field(&links, "data", "to_collection"), ["users", "users"]);
    assert_eq!(
        ids(&json!({"data": links["data"][0]["external_ids"]})),
        [
            "anonymous_id:a1",
            "email:a+b@x.io",
            "user_id:u1",
            "anonymous_id:a2"
        ]
    );
    assert_eq!(
        ids(&json!({"data": links["data"][1]["external_ids"]})),
        ["user_id:u2"]
    );
    let page1 = ok(&app, &format!("{base}/links?limit=1")).await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 1);
    let next = page1["cursor"]["next"].as_str().unwrap();
    let page2 = ok(&app, &format!("{base}/links?limit=1&next={next}")).await;
    assert_eq!(page2["data"][0]["external_ids"][0]["id"], "u2");
    assert_eq!(page2["cursor"]["has_more"], false);
    let events = ok(&app, &format!("{base}/events")).await;
    assert_eq!(field(&events, "data", "message_id"), ["m9", "m6"]);
    assert_eq!(
        events["data"][0]["external_ids"],
        json!([{"collection": "accounts", "type": "group_id", "id": "g1", "encoding": "none"}])
    );
    assert_eq!(
        events["data"][0]["related"],
        json!({"users": [{"collection": "users", "type": "user_id", "id": "u2", "encoding": "none"}]})
    );
    assert_eq!(
        events["data"][1]["traits"],
        json!({"name": "Acme", "size": 5})
    );
    let asc = ok(&app, &format!("{base}/events?sort=asc&limit=1")).await;
    assert_eq!(field(&asc, "data", "message_id"), ["m6"]);
    assert_eq!(asc["cursor"]["has_more"], true);
    let g2 = ok(&app, &format!("{ACCOUNTS}/group_id:g2/links")).await;
    assert_eq!(g2["data"].as_array().unwrap().len(), 1);

    let (s, j) = read(&app, &format!("{ACCOUNTS}/user_id:u1/traits")).await;
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (400, Some("invalid_request_error")),
        "{j}"
    );
    let (s, j) = read(&app, &format!("{ACCOUNTS}/group_id:nope/metadata")).await;
    assert_eq!(
        (s, j),
        (
            404,
            json!({"error": {"code": "not_found", "message": "Profile was not found."}})
        )
    );
}

#[tokio::test]
async fn auth_routing_errors_request_id_and_no_cors() {
    let app = loaded().await;
    let path = format!("{USERS}/user_id:u1/traits");
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "authentication_error"),
        (Some(basic("tok_wrong_1234")), 401, "authentication_error"),
        (Some("Basic !!!".into()), 401, "authentication_error"),
        (
            Some(format!("Token {PROFILES_TOKEN}")),
            401,
            "authentication_error",
        ),
        (Some(basic(WRITE_KEY)), 401, "authentication_error"),
        (Some(basic(EVENTS_TOKEN)), 403, "forbidden"),
        (Some(basic(PROFILES_TOKEN)), 200, ""),
        (Some(basic(ADMIN_TOKEN)), 200, ""),
        (Some(format!("Bearer {PROFILES_TOKEN}")), 200, ""),
    ];
    let mut request_ids = std::collections::HashSet::new();
    for (auth, status, code) in cases {
        let (s, h, j) = call(&app, &path, auth.clone()).await;
        assert_eq!(s, status, "{auth:?}: {j}");
        if !code.is_empty() {
            assert_eq!(j["error"]["code"], code, "{auth:?}: {j}");
        }
        let id = h
            .get("request-id")
            .expect("Request-Id on every response")
            .to_str()
            .unwrap();
        assert!(request_ids.insert(id.to_string()), "request ids are unique");
    }
    for (path, status) in [
        (
            "/v1/spaces/other/collections/users/profiles/user_id:u1/traits".to_string(),
            404,
        ),
        (
            "/v1/spaces/acme/collections/groups/profiles/user_id:u1/traits".to_string(),
            404,
        ),
        (format!("{USERS}/user_id:u1/friends"), 404),
        (format!("{USERS}/user_id:u1"), 404),
        ("/v1/spaces/acme".to_string(), 404),
    ] {
        let (s, h, j) = call(&app, &path, Some(basic(PROFILES_TOKEN))).await;
        assert_eq!(s, status, "{path}: {j}");
        assert_eq!(j["error"]["code"], "not_found", "{path}: {j}");
        assert!(h.contains_key("request-id"), "{path}");
    }
    // No CORS: the Profile API is for servers.
    let req = Request::get(&path)
        .header("authorization", basic(PROFILES_TOKEN))
        .header("origin", "https://app.example")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = app.call(req).await;
    assert_eq!(s, 200);
    assert!(!h.contains_key("access-control-allow-origin"));
    let req = Request::options(&path)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = app.call(req).await;
    assert!(s >= 400, "preflight is not answered: {s}");
    assert!(!h.contains_key("access-control-allow-origin"));
    assert!(h.contains_key("request-id"));
}

#[tokio::test]
async fn rate_limit_per_token_answers_429_with_retry_after() {
    // The configured rate (default 100/s, Segment's) holds per token across requests.
    let app = TestApp::with_config("[profiles]\nrate_limit_per_sec = 20\n");
    let router = junction::http::router(std::sync::Arc::clone(&app.state));
    let get = |token: &str| {
        Request::get(format!("{USERS}/user_id:nobody/traits"))
            .header("authorization", basic(token))
            .body(Body::empty())
            .unwrap()
    };
    let limit = 20;
    let mut limited = None;
    for i in 0..limit * 3 {
        // A fresh router per request, as TestApp::call does: the limiter is in the state.
        let resp = junction::http::router(std::sync::Arc::clone(&app.state))
            .oneshot(get(PROFILES_TOKEN))
            .await
            .unwrap();
        if resp.status() == 429 {
            limited = Some((i, resp));
            break;
        }
        assert_eq!(resp.status(), 404, "request {i}");
    }
    let (i, resp) = limited.expect("a 429 after the burst");
    assert!(
        (limit..limit + 5).contains(&i),
        "{limit} requests pass first, then 429 (429 at {i})"
    );
    assert!(resp.headers().contains_key("request-id"));
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeded 20 requests per second"),
        "{body}"
    );
    // Another token has its own bucket.
    let resp = router.clone().oneshot(get(ADMIN_TOKEN)).await.unwrap();
    assert_eq!(resp.status(), 404);
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = router.clone().oneshot(get(PROFILES_TOKEN)).await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn merges_route_explains_the_profile() {
    let app = loaded().await;
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let (s, h, j) = call(
        &app,
        "/api/v1/profiles/anonymous_id:a2/merges",
        bearer(PROFILES_TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert!(h.contains_key("request-id"));
    assert_eq!(
        j["merges"],
        json!([{"into": 1, "from": 2, "into_identifier": "user_id:u1", "from_identifier": "anonymous_id:a2",
                "message_id": "m4", "source_id": "web", "timestamp": ts(4),
                "received_at": j["merges"][0]["received_at"]}])
    );
    assert!(
        j["merges"][0]["received_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(j["profile"]["id"], 1);
    assert_eq!(
        ids(&json!({"data": j["profile"]["external_ids"]})),
        [
            "anonymous_id:a1",
            "email:a+b@x.io",
            "user_id:u1",
            "anonymous_id:a2"
        ]
    );
    let (s, _, j) = call(
        &app,
        "/api/v1/profiles/email:a%2Bb@x.io/merges",
        bearer(ADMIN_TOKEN),
    )
    .await;
    assert_eq!((s, j["profile"]["id"].as_u64()), (200, Some(1)));
    let (s, _, j) = call(
        &app,
        "/api/v1/profiles/user_id:u2/merges",
        bearer(PROFILES_TOKEN),
    )
    .await;
    assert_eq!((s, j["merges"].clone()), (200, json!([])));
    for (path, auth, status, code) in [
        (
            "/api/v1/profiles/user_id:u1/merges",
            None,
            401,
            "authentication_error",
        ),
        (
            "/api/v1/profiles/user_id:u1/merges",
            Some(basic(PROFILES_TOKEN)),
            401,
            "authentication_error",
        ),
        (
            "/api/v1/profiles/user_id:u1/merges",
            bearer(EVENTS_TOKEN),
            403,
            "forbidden",
        ),
        (
            "/api/v1/profiles/user_id:zz/merges",
            bearer(PROFILES_TOKEN),
            404,
            "not_found",
        ),
        (
            "/api/v1/profiles/u1/merges",
            bearer(PROFILES_TOKEN),
            400,
            "validation_error",
        ),
    ] {
        let (s, h, j) = call(&app, path, auth.clone()).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {auth:?}: {j}"
        );
        assert!(h.contains_key("request-id"));
    }
}

// ---- `junction profiles` against a running server and a stopped data dir ----

fn cli(args: &[&str], env: &[(&str, String)], cwd: &std::path::Path) -> (bool, String, String) {
    let args: Vec<&str> = std::iter::once("profiles")
        .chain(args.iter().copied())
        .collect();
    run_junction(&args, env, cwd)
}

fn cli_json(args: &[&str], env: &[(&str, String)], cwd: &std::path::Path) -> Value {
    let (ok, out, err) = cli(args, env, cwd);
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed non-JSON ({e}): {out}"))
}

/// Polls the server's Profile API until `path` answers 200 with `last` as last message.
fn wait_applied(base: &str, token: &str, path: &str, last: &str) {
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http
            .get(format!("{base}{path}"))
            .basic_auth(token, Some(""))
            .send()
            .unwrap();
        if resp.status() == 200 {
            let j: Value = resp.json().unwrap();
            if j["metadata"]["last_message_id"] == last {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not apply the events"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cli_reads_through_the_running_server_and_the_stopped_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let http = reqwest::blocking::Client::new();
    let resp = http
        .post(server.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .body(history().to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_applied(
        &server.url(""),
        PROFILES_TOKEN,
        &format!("{ACCOUNTS}/group_id:g1/metadata"),
        LAST,
    );

    let config = server.config.to_str().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", server.port);
    let env = [("JUNCTION_LISTEN", listen.clone())];
    let cwd = dir.path();
    let get = [
        "get",
        "user_id:u1",
        "--events",
        "--json",
        "--config",
        &config,
    ];
    let online = cli_json(&get, &env, cwd);
    assert_eq!(online.as_object().unwrap().len(), 6, "{online}");
    assert_eq!(online["traits"]["traits"].as_object().unwrap().len(), 14);
    assert_eq!(online["traits"]["traits"]["plan"]["value"], "pro");
    assert_eq!(online["external_ids"]["data"].as_array().unwrap().len(), 4);
    assert_eq!(online["metadata"]["metadata"]["last_message_id"], "m7");
    assert_eq!(online["links"]["data"].as_array().unwrap().len(), 2);
    assert_eq!(field(&online["events"], "data", "message_id")[0], "m7");
    assert_eq!(
        online["merges"]["merges"][0]["from_identifier"],
        "anonymous_id:a2"
    );
    let explain = [
        "explain",
        "email:a+b@x.io",
        "--json",
        "--config",
        &config,
        "--listen",
        &listen,
    ];
    let online_explain = cli_json(&explain, &[], cwd);
    assert_eq!(online_explain["profile"]["id"], 1);
    let account = ["get", "group_id:g1", "--json", "--config", &config];
    let online_account = cli_json(&account, &env, cwd);
    assert_eq!(online_account["traits"]["traits"]["name"]["value"], "Acme");
    assert!(online_account.get("merges").is_none());

    let (ok, text, err) = cli(
        &["explain", "anonymous_id:a2", "--config", &config],
        &env,
        cwd,
    );
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!(
            "profile 1 ← profile 2 by message m4: anonymous_id:a2 + user_id:u1 at {}",
            ts(4)
        )),
        "{text}"
    );
    let (ok, text, err) = cli(
        &["get", "user_id:u1", "--events", "--config", &config],
        &env,
        cwd,
    );
    assert!(ok, "{err}");
    for needle in [
        "email:a+b@x.io",
        "plan",
        "\"pro\"",
        "group_id:g1",
        "merges: 1",
        "track \"Bought\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let (ok, _, err) = cli(&["get", "user_id:nobody", "--config", &config], &env, cwd);
    assert!(
        !ok && err.contains("profile `user_id:nobody` was not found"),
        "{err}"
    );
    let (ok, _, err) = cli(&["explain", "group_id:g1", "--config", &config], &env, cwd);
    assert!(!ok && err.contains("account"), "{err}");
    // The wrong address while the server holds the data dir: a clear error.
    let (ok, _, err) = cli(
        &[
            "get",
            "user_id:u1",
            "--config",
            &config,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
        cwd,
    );
    assert!(
        !ok && err.contains("cannot reach the running server"),
        "{err}"
    );

    // Stopped hard: the data dir is read (and the log applied past the last commit) offline.
    server.kill9();
    assert_eq!(cli_json(&get, &[], cwd), online);
    assert_eq!(cli_json(&explain, &[], cwd), online_explain);
    assert_eq!(cli_json(&account, &[], cwd), online_account);
    let (ok, text, err) = cli(&["explain", "user_id:u1", "--config", &config], &[], cwd);
    assert!(
        ok && text.contains("profile 1 ← profile 2 by message m4"),
        "{text}{err}"
    );
    let (ok, _, err) = cli(&["get", "email:nobody", "--config", &config], &[], cwd);
    assert!(!ok && err.contains("was not found"), "{err}");
}

#[test]
fn cli_uses_the_dev_mode_token_of_a_running_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(junction_bin())
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &listen])
        .env("JUNCTION_LOG", "warn")
        .env_remove("JUNCTION_CONFIG")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < deadline, "dev server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let creds: Value =
        serde_json::from_slice(&std::fs::read(data.join("dev-credentials.json")).unwrap()).unwrap();
    let write_key = creds["sources"][0]["write_key"].as_str().unwrap();
    let token = creds["tokens"][0]["secret"].as_str().unwrap();
    let http = reqwest::blocking::Client::new();
    let event = json!({"userId": "dev1", "traits": {"plan": "free"}, "messageId": "d1"});
    let resp = http
        .post(format!("http://{listen}/v1/identify"))
        .basic_auth(write_key, Some(""))
        .body(event.to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let path = "/v1/spaces/default/collections/users/profiles/user_id:dev1/metadata";
    wait_applied(&format!("http://{listen}"), token, path, "d1");
    let data_arg = data.to_str().unwrap().to_string();
    let got = cli_json(
        &[
            "get",
            "user_id:dev1",
            "--json",
            "--data-dir",
            &data_arg,
            "--listen",
            &listen,
        ],
        &[],
        dir.path(),
    );
    assert_eq!(got["traits"]["traits"]["plan"]["value"], "free");
    let _ = child.kill();
    let _ = child.wait();
}
