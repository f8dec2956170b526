//! Definitions changed through the management API: created, replaced and deleted while the
//! server runs, computed over the history in the background, kept across restarts, and
//! refused with a reason when invalid or owned by the config file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use junction::clock::FixedClock;
use serde_json::{Value, json};

use crate::compute::{DEFINITIONS, T, USERS, api, derived, iso, send, traits_until};
use crate::support::*;

/// Polls `GET path` until `want` holds (10 s at most).
async fn get_until(app: &TestApp, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, j) = api(app, "GET", path, PROFILES_TOKEN, None).await;
        if s == 200 && want(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "{path}: {s} {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of `GET path` (with `profiles:read`).
async fn status_of(app: &TestApp, path: &str) -> u16 {
    api(app, "GET", path, PROFILES_TOKEN, None).await.0
}

/// How often the log says `user` entered (exited) audience `key`.
fn entries(app: &TestApp, what: &str, key: &str, user: &str) -> usize {
    derived(app)
        .iter()
        .filter(|(w, k, u, _)| w == what && k == key && u == user)
        .count()
}

/// Waits until the log holds `n` events `what` of `key` for `user`.
async fn entries_until(app: &TestApp, what: &str, key: &str, user: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries(app, what, key, user) < n {
        assert!(
            Instant::now() < deadline,
            "{what} {key} {user}: {:?}",
            derived(app)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_created_replaced_and_deleted_through_the_api() {
    let clock = Arc::new(FixedClock::new(T));
    let app = TestApp::in_dir_with_clock(tempfile::tempdir().unwrap(), DEFINITIONS, clock.clone());
    // Five viewers; v0 and v1 bought (revenue 100 and 101).
    crate::compute::send_viewers_and_buyers(&app, false).await;
    get_until(&app, "/api/v1/audiences/recent_viewers", |j| j["size"] == 5).await;

    // Writing needs `compute:write` (or admin).
    let spenders =
        json!({"key": "big_spenders", "name": "Big spenders", "expr": "traits.ltv >= 101"});
    let (s, j) = api(
        &app,
        "POST",
        "/api/v1/audiences",
        PROFILES_TOKEN,
        Some(spenders.clone()),
    )
    .await;
    assert_eq!(
        (s, j["error"]["code"].clone()),
        (403, json!("forbidden")),
        "{j}"
    );

    // Created: answered at once, computed over the history in the background.
    let (s, created) = api(
        &app,
        "POST",
        "/api/v1/audiences",
        ADMIN_TOKEN,
        Some(spenders),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["managed_by"], "api");
    assert_eq!(created["name"], "Big spenders");
    let status = created["status"].as_str().unwrap();
    assert!(
        status == "ready" || status.starts_with("computing "),
        "{created}"
    );
    // Events while it computes: the serving engine or the new one writes v3's entry, once.
    send(&app, json!([
        {"type": "identify", "userId": "v3", "traits": {"plan": "pro"}, "timestamp": iso(T)},
        {"type": "track", "userId": "v3", "event": "Order Completed", "properties": {"revenue": 100}, "timestamp": iso(T)},
    ])).await;
    let ready = get_until(&app, "/api/v1/audiences/big_spenders", |j| {
        j["status"] == "ready" && j["size"] == 1
    })
    .await;
    assert_eq!(ready["expr"], "traits.ltv >= 101");
    entries_until(&app, "Audience Entered", "big_spenders", "v1", 1).await;
    // The config's audiences kept what they wrote: no entry twice across the takeover.
    entries_until(&app, "Audience Entered", "buyers", "v3", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(entries(&app, "Audience Entered", "recent_viewers", "v0"), 1);
    assert_eq!(entries(&app, "Audience Entered", "buyers", "v3"), 1);
    let list = get_until(&app, "/api/v1/audiences", |j| {
        j["data"].as_array().unwrap().len() == 3
    })
    .await;
    assert_eq!(list["data"][2]["key"], "big_spenders");

    // Real time goes on with the new engine: v2 spends 200.
    send(&app, json!([{"type": "track", "userId": "v2", "event": "Order Completed", "properties": {"revenue": 200}, "timestamp": iso(T)}])).await;
    entries_until(&app, "Audience Entered", "big_spenders", "v2", 1).await;
    traits_until(&app, "user_id:v2", "class=audience", |t| {
        t["big_spenders"] == true
    })
    .await;

    // A computed trait through the API, shown among the profile's traits.
    let views =
        json!({"key": "views", "expr": "count(event = \"Viewed\")", "description": "pages seen"});
    let (s, j) = api(
        &app,
        "POST",
        "/api/v1/computed-traits",
        ADMIN_TOKEN,
        Some(views),
    )
    .await;
    assert_eq!(s, 201, "{j}");
    traits_until(&app, "user_id:v3", "class=computed_trait", |t| {
        t["views"] == 1
    })
    .await;

    // Replaced: v1 (101) leaves, v2 (200) stays.
    let (s, j) = api(
        &app,
        "PUT",
        "/api/v1/audiences/big_spenders",
        ADMIN_TOKEN,
        Some(json!({"name": "Big spenders", "expr": "traits.ltv >= 150"})),
    )
    .await;
    assert_eq!(
        (s, j["expr"].clone()),
        (200, json!("traits.ltv >= 150")),
        "{j}"
    );
    entries_until(&app, "Audience Exited", "big_spenders", "v1", 1).await;
    get_until(&app, "/api/v1/audiences/big_spenders", |j| {
        j["status"] == "ready" && j["size"] == 1
    })
    .await;
    assert_eq!(entries(&app, "Audience Entered", "big_spenders", "v2"), 1);

    // Refused, with the reason; nothing changes.
    let cases = [
        (
            "POST",
            "/api/v1/audiences",
            json!({"key": "x", "expr": "cuont(event = \"Viewed\") > 1"}),
            400,
            "invalid_expression",
            "column 1: unknown function `cuont`",
        ),
        (
            "POST",
            "/api/v1/audiences",
            json!({"key": "x", "expr": "audience(\"nope\")"}),
            400,
            "invalid_expression",
            "nope",
        ),
        (
            "POST",
            "/api/v1/audiences",
            json!({"key": "x"}),
            400,
            "invalid_request",
            "missing field `expr`",
        ),
        (
            "POST",
            "/api/v1/audiences",
            json!({"expr": "true"}),
            400,
            "invalid_request",
            "`key`",
        ),
        (
            "POST",
            "/api/v1/audiences",
            json!({"key": "bad key", "expr": "true"}),
            400,
            "invalid_request",
            "a key is",
        ),
        (
            "POST",
            "/api/v1/computed-traits",
            json!({"key": "x", "name": "X", "expr": "1"}),
            400,
            "invalid_request",
            "`name`",
        ),
        (
            "POST",
            "/api/v1/audiences",
            json!({"key": "big_spenders", "expr": "true"}),
            409,
            "conflict",
            "exists already",
        ),
        (
            "POST",
            "/api/v1/audiences",
            json!({"key": "buyers", "expr": "true"}),
            409,
            "conflict",
            "exists already",
        ),
        (
            "PUT",
            "/api/v1/audiences/buyers",
            json!({"expr": "true"}),
            409,
            "managed_by_config",
            "config file",
        ),
        (
            "PUT",
            "/api/v1/audiences/nope",
            json!({"expr": "true"}),
            404,
            "not_found",
            "nope",
        ),
        (
            "PUT",
            "/api/v1/audiences/big_spenders",
            json!({"key": "other", "expr": "true"}),
            400,
            "invalid_request",
            "`key`",
        ),
        (
            "DELETE",
            "/api/v1/computed-traits/ltv",
            Value::Null,
            409,
            "managed_by_config",
            "config file",
        ),
        (
            "DELETE",
            "/api/v1/audiences/nope",
            Value::Null,
            404,
            "not_found",
            "nope",
        ),
    ];
    for (method, path, body, status, code, message) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, j) = api(&app, method, path, ADMIN_TOKEN, body.clone()).await;
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body:?}: {j}"
        );
        let m = j["error"]["message"].as_str().unwrap();
        assert!(m.contains(message), "{method} {path}: {m}");
    }
    let (_, list) = api(&app, "GET", "/api/v1/audiences", PROFILES_TOKEN, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");

    // Kept across a restart, with nothing written twice.
    let before = derived(&app).len();
    let dir = app.close();
    let app = TestApp::in_dir_with_clock(dir, DEFINITIONS, clock.clone());
    let one = get_until(&app, "/api/v1/audiences/big_spenders", |j| {
        j["status"] == "ready" && j["size"] == 1
    })
    .await;
    assert_eq!(
        (one["managed_by"].clone(), one["expr"].clone()),
        (json!("api"), json!("traits.ltv >= 150"))
    );
    let (_, t) = api(
        &app,
        "GET",
        "/api/v1/computed-traits/views",
        PROFILES_TOKEN,
        None,
    )
    .await;
    assert_eq!(t["description"], "pages seen");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(derived(&app).len(), before, "{:?}", derived(&app));

    // Deleted: gone from the API and from the profiles, and after a restart.
    let (s, _) = api(
        &app,
        "DELETE",
        "/api/v1/audiences/big_spenders",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(status_of(&app, "/api/v1/audiences/big_spenders").await, 404);
    // At once, before the new engine takes over.
    let (s, _, j) = app
        .call(
            axum::http::Request::get(format!("{USERS}/user_id:v2/traits?class=audience"))
                .header("authorization", basic(PROFILES_TOKEN))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200, "{j}");
    assert!(j["traits"].get("big_spenders").is_none(), "{j}");
    assert_eq!(j["traits"]["buyers"], false, "{j}");
    let dir = app.close();
    let app = TestApp::in_dir_with_clock(dir, DEFINITIONS, clock);
    assert_eq!(status_of(&app, "/api/v1/audiences/big_spenders").await, 404);
    assert_eq!(status_of(&app, "/api/v1/computed-traits/views").await, 200);
}

#[test]
fn api_definitions_that_clash_with_the_config_file_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("compute")).unwrap();
    std::fs::write(
        dir.path().join("compute/definitions.json"),
        json!({"version": 1, "audiences": [{"key": "buyers", "expr": "true"}]}).to_string(),
    )
    .unwrap();
    let text = config_text(dir.path(), DEFINITIONS);
    let file = junction::config::parse_file(&text, std::path::Path::new("t.toml")).unwrap();
    let err = junction::config::build(Some(file), &Default::default()).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("compute/definitions.json")
            && err.contains("clash with the config file")
            && err.contains("another audience has this key"),
        "{err}"
    );
}

/// A definition created through the API shows `computing N%` until `ready`; one replaced and
/// then killed -9 while it computes is computed at the restart, and every member entered
/// (and exited) exactly once.
#[test]
fn a_change_shows_progress_and_survives_kill_9_mid_computation() {
    const USERS: usize = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("junction.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(&config, config_text(&data_dir, "")).unwrap();
    // User u viewed u % 6 times.
    let views = |u: usize| u % 6;
    crate::compute::import_views(&config, dir.path(), USERS, views);

    let port = free_port();
    let server = Server::start_on(&config, &data_dir, port);
    let http = reqwest::blocking::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(method, server.url(path))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let engaged = json!({"key": "engaged", "expr": "count(event = \"Viewed\") >= 3"});
    let (s, j) = call(reqwest::Method::POST, "/api/v1/audiences", Some(engaged));
    assert_eq!(s, 201, "{j}");
    let mut seen = vec![j["status"].as_str().unwrap().to_string()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().unwrap() != "ready" {
        assert!(Instant::now() < deadline, "{seen:?}");
        let (_, j) = call(reqwest::Method::GET, "/api/v1/audiences/engaged", None);
        let status = j["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
    }
    assert!(seen[0].starts_with("computing "), "{seen:?}");
    let (_, j) = call(reqwest::Method::GET, "/api/v1/audiences/engaged", None);
    let members = |min: usize| (0..USERS).filter(|&u| views(u) >= min).count();
    assert_eq!(j["size"], members(3), "{j}");
    crate::compute::settled(&server);

    // Replaced, and killed while the new engine computes.
    let (s, j) = call(
        reqwest::Method::PUT,
        "/api/v1/audiences/engaged",
        Some(json!({"expr": "count(event = \"Viewed\") >= 4"})),
    );
    assert_eq!(s, 200, "{j}");
    server.kill9();
    let server = Server::start_on(&config, &data_dir, port);
    crate::compute::settled(&server);
    let size =
        crate::compute::metric_of(&server, "junction_audience_members{audience=\"engaged\"} ");
    assert_eq!(size, Some(members(4) as u64));
    assert!(server.terminate().success());

    let mut entered = vec![0; USERS];
    let mut exited = vec![0; USERS];
    for (source, e) in read_log(&data_dir.join("log")) {
        let user: usize = e["userId"].as_str().unwrap()[1..].parse().unwrap();
        match (source.as_str(), e["event"].as_str()) {
            ("junction", Some("Audience Entered")) => entered[user] += 1,
            ("junction", Some("Audience Exited")) => exited[user] += 1,
            _ => {}
        }
    }
    for u in 0..USERS {
        let want = (usize::from(views(u) >= 3), usize::from(views(u) == 3));
        assert_eq!((entered[u], exited[u]), want, "u{u}: {} views", views(u));
    }
    eprintln!("statuses seen: {seen:?}");
}
