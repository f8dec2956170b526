//! Computed traits and audiences end to end: definitions from the config file, events in
//! through the tracking API, values out through the Profile API and `/metrics`, under a
//! fixed clock that the tests move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use junction::clock::FixedClock;
use serde_json::{Value, json};

use crate::support::*;

pub(crate) const USERS: &str = "/v1/spaces/acme/collections/users/profiles";
pub(crate) const DAY: i64 = 86_400_000;
/// 2024-05-10T00:00:00Z.
pub(crate) const T: i64 = 1_715_299_200_000;

pub const DEFINITIONS: &str = r#"
[compute]
time_lag_secs = 1

[[computed_traits]]
key = "orders"
expr = 'count(event = "Order Completed")'

[[computed_traits]]
key = "ltv"
expr = 'sum(properties.revenue, event = "Order Completed")'

[[audiences]]
key = "buyers"
name = "Buyers"
expr = 'traits.ltv >= 100 and traits.plan == "pro"'

[[audiences]]
key = "recent_viewers"
expr = '''count(event = "Viewed", within = 7d) >= 1'''
"#;

pub(crate) fn iso(ms: i64) -> String {
    junction_core::timestamp::format(ms)
}

pub(crate) async fn send(app: &TestApp, events: Value) {
    let (s, j) = app
        .post("/v1/batch", json!({ "batch": events }).to_string())
        .await;
    assert_eq!(s, 200, "{j}");
}

/// Polls the traits of `id` with `query` until `want` holds (10 s at most).
pub(crate) async fn traits_until(
    app: &TestApp,
    id: &str,
    query: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("{USERS}/{id}/traits?{query}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _, j) = app
            .call(
                axum::http::Request::get(&path)
                    .header("authorization", basic(PROFILES_TOKEN))
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
        if s == 200 && want(&j["traits"]) {
            return j["traits"].clone();
        }
        assert!(Instant::now() < deadline, "{path}: {s} {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The derived events in the log: `(event or type, audience key or traits, userId, anonymousId)`.
pub(crate) fn derived(app: &TestApp) -> Vec<(String, Value, Value, Value)> {
    read_log(&app.state.config.log.dir)
        .into_iter()
        .filter(|(source, _)| source == "junction")
        .map(|(_, e)| {
            let what = e["event"]
                .as_str()
                .or(e["type"].as_str())
                .unwrap_or_default()
                .to_string();
            let detail = match what.as_str() {
                "identify" => e["traits"].clone(),
                _ => e["properties"]["audience_key"].clone(),
            };
            (what, detail, e["userId"].clone(), e["anonymousId"].clone())
        })
        .collect()
}

/// Waits until the log holds `n` derived events, and returns them.
async fn derived_until(app: &TestApp, n: usize) -> Vec<(String, Value, Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = derived(app);
        if d.len() >= n {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{} derived events, waiting for {n}: {d:?}",
            d.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entered(key: &str, user: Value, anon: Value) -> (String, Value, Value, Value) {
    ("Audience Entered".into(), json!(key), user, anon)
}

async fn metric(app: &TestApp, line_start: &str) -> String {
    let (_, body) = app.get("/metrics").await;
    let text = body.as_str().expect("prometheus text");
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{text}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traits_and_audiences_follow_events_merges_and_the_clock() {
    let clock = Arc::new(FixedClock::new(T));
    let app = TestApp::in_dir_with_clock(tempfile::tempdir().unwrap(), DEFINITIONS, clock.clone());
    send(
        &app,
        json!([
            {"type": "track", "anonymousId": "a1", "event": "Viewed", "timestamp": iso(T - DAY)},
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "timestamp": iso(T - 3 * DAY)},
            {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 60}, "timestamp": iso(T - 2 * DAY)},
            {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 50.5}, "timestamp": iso(T - 2 * DAY)},
        ]),
    )
    .await;
    let computed = traits_until(&app, "user_id:u1", "class=computed_trait", |t| {
        t["orders"] == 2
    })
    .await;
    assert_eq!(computed, json!({"orders": 2, "ltv": 110.5}));
    let audiences = traits_until(&app, "user_id:u1", "class=audience", |t| {
        t["buyers"] == true
    })
    .await;
    assert_eq!(audiences, json!({"buyers": true, "recent_viewers": false}));
    // Without a class: own traits, computed traits and audiences together.
    let all = traits_until(&app, "user_id:u1", "", |t| t["orders"] == 2).await;
    assert_eq!(
        all,
        json!({"buyers": true, "ltv": 110.5, "orders": 2, "plan": "pro", "recent_viewers": false})
    );
    let verbose = traits_until(&app, "user_id:u1", "class=audience&verbose=true", |_| true).await;
    assert_eq!(verbose["buyers"]["source_id"], "junction");
    traits_until(&app, "anonymous_id:a1", "class=audience", |t| {
        *t == json!({"buyers": false, "recent_viewers": true})
    })
    .await;
    assert_eq!(
        metric(&app, "junction_audience_members{audience=\"buyers\"}").await,
        "junction_audience_members{audience=\"buyers\"} 1"
    );
    // Written back into the log: the last identify carries the final values.
    let log = derived_until(&app, 3).await;
    // Each derived event whole, as destinations will see it.
    let stored = read_log(&app.state.config.log.dir);
    let whole = |what: &str| {
        let (_, e) = (stored.iter())
            .find(|(source, e)| source == "junction" && (e["event"] == what || e["type"] == what))
            .unwrap_or_else(|| panic!("no derived {what}: {stored:?}"));
        assert!(
            e["messageId"].as_str().is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert_eq!(e["timestamp"], iso(T), "{e}");
        e.clone()
    };
    let e = whole("Audience Entered");
    assert_eq!(e["type"], "track", "{e}");
    let keys = (
        e["properties"]["audience_key"].clone(),
        e["context"]["personas"].clone(),
    );
    let want = |key: &str| {
        (
            json!(key),
            json!({"computation_class": "audience", "computation_key": key}),
        )
    };
    assert!(
        keys == want("buyers") || keys == want("recent_viewers"),
        "{e}"
    );
    let name = if keys.0 == "buyers" {
        "Buyers"
    } else {
        "recent_viewers"
    };
    assert_eq!(e["properties"]["audience_name"], name, "{e}");
    let e = whole("identify");
    assert_eq!(
        e["context"]["personas"],
        json!({"computation_class": "computed_trait"}),
        "{e}"
    );
    assert!(
        log.contains(&entered("buyers", json!("u1"), Value::Null)),
        "{log:?}"
    );
    assert!(
        log.contains(&entered("recent_viewers", Value::Null, json!("a1"))),
        "{log:?}"
    );
    let last_identify = |user: Value, anon: Value| {
        log.iter()
            .rev()
            .find(|d| d.0 == "identify" && d.2 == user && d.3 == anon)
            .map(|d| d.1.clone())
    };
    assert_eq!(
        last_identify(json!("u1"), Value::Null),
        Some(json!({"orders": 2, "ltv": 110.5}))
    );
    assert_eq!(
        last_identify(Value::Null, json!("a1")),
        Some(json!({"orders": 0, "ltv": 0}))
    );
    assert_eq!(
        log.iter().filter(|d| d.0 == "Audience Entered").count(),
        2,
        "{log:?}"
    );

    // The identify joins a1 to u1: the merged profile has the view.
    send(
        &app,
        json!([{"type": "identify", "userId": "u1", "anonymousId": "a1", "timestamp": iso(T)}]),
    )
    .await;
    traits_until(&app, "anonymous_id:a1", "class=audience", |t| {
        *t == json!({"buyers": true, "recent_viewers": true})
    })
    .await;
    assert_eq!(
        metric(
            &app,
            "junction_audience_members{audience=\"recent_viewers\"}"
        )
        .await,
        "junction_audience_members{audience=\"recent_viewers\"} 1"
    );

    // Both sides had entered what the merged profile is in: nothing new to write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_merge = derived(&app);
    assert_eq!(
        after_merge
            .iter()
            .filter(|d| d.0.starts_with("Audience"))
            .count(),
        2,
        "{after_merge:?}"
    );

    // The view turns 7 days old: the profile leaves without any new event.
    clock.set(T + 6 * DAY - 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    traits_until(&app, "user_id:u1", "class=audience", |t| {
        t["recent_viewers"] == true
    })
    .await;
    clock.set(T + 6 * DAY);
    let left = traits_until(&app, "user_id:u1", "class=audience", |t| {
        t["recent_viewers"] == false
    })
    .await;
    assert_eq!(left, json!({"buyers": true, "recent_viewers": false}));
    assert_eq!(
        metric(
            &app,
            "junction_audience_members{audience=\"recent_viewers\"}"
        )
        .await,
        "junction_audience_members{audience=\"recent_viewers\"} 0"
    );

    let log = derived_until(&app, after_merge.len() + 1).await;
    assert_eq!(
        log.last().expect("an exit"),
        &(
            "Audience Exited".into(),
            json!("recent_viewers"),
            json!("u1"),
            json!("a1")
        )
    );
    let before_restart = log.len();

    // A restart recomputes everything from the log, and writes nothing it already wrote.
    let dir = app.close();
    let app = TestApp::in_dir_with_clock(dir, DEFINITIONS, clock.clone());
    // (The derived identify made `orders` and `ltv` own traits too; the computed values
    // hide them once computed.)
    traits_until(&app, "user_id:u1", "class=audience", |t| {
        *t == json!({"buyers": true, "recent_viewers": false})
    })
    .await;
    let again = traits_until(&app, "user_id:u1", "", |_| true).await;
    assert_eq!(
        again,
        json!({"buyers": true, "ltv": 110.5, "orders": 2, "plan": "pro", "recent_viewers": false})
    );
    assert_eq!(
        metric(&app, "junction_compute_ready").await,
        "junction_compute_ready 1"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(derived(&app).len(), before_restart, "{:?}", derived(&app));
}

#[test]
fn a_bad_definition_in_the_config_names_the_definition_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[audiences]]
key = "vip"
expr = 'count(event = "A") >= 1 and cuont(event = "B") > 0'
"#;
    let text = config_text(dir.path(), extra);
    let file = junction::config::parse_file(&text, std::path::Path::new("t.toml")).unwrap();
    let err = junction::config::build(Some(file), &Default::default()).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "invalid config: audience `vip`: column 29: unknown function `cuont` (known: count, sum, avg, min, max, first, last, most_frequent, unique, unique_count, first_seen, last_seen, audience, exists, now)"
    );
    let extra = r#"
[[audiences]]
key = "a"
expr = 'audience("b")'

[[audiences]]
key = "b"
expr = 'audience("a")'
"#;
    let file = junction::config::parse_file(
        &config_text(dir.path(), extra),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let err = junction::config::build(Some(file), &Default::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "audience `a`: column 10: definitions depend on each other in a cycle: `a` → `b` → `a`"
        ),
        "{err:#}"
    );
}

/// Five viewers (v0..v4), a day ago; v0 and v1 bought (revenue 100 and 101), on the pro plan
/// with `pro`.
pub(crate) async fn send_viewers_and_buyers(app: &TestApp, pro: bool) {
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(json!({"type": "track", "userId": format!("v{i}"), "event": "Viewed", "timestamp": iso(T - DAY)}));
    }
    for i in 0..2 {
        if pro {
            batch.push(json!({"type": "identify", "userId": format!("v{i}"), "traits": {"plan": "pro"}, "timestamp": iso(T - DAY)}));
        }
        batch.push(json!({"type": "track", "userId": format!("v{i}"), "event": "Order Completed", "properties": {"revenue": 100 + i}, "timestamp": iso(T - DAY)}));
    }
    send(app, Value::Array(batch)).await;
}

pub(crate) async fn api(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    let body = body.map_or_else(axum::body::Body::empty, |b| b.to_string().into());
    let (s, _, j) = app.call(req.body(body).unwrap()).await;
    (s, j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_lists_sizes_members_history_and_previews() {
    let clock = Arc::new(FixedClock::new(T));
    let app = TestApp::in_dir_with_clock(tempfile::tempdir().unwrap(), DEFINITIONS, clock.clone());
    // Five viewers (v0..v4), two of them buyers on the pro plan (v0, v1).
    send_viewers_and_buyers(&app, true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let (s, j) = api(&app, "GET", "/api/v1/audiences", PROFILES_TOKEN, None).await;
        assert_eq!(s, 200, "{j}");
        if j["data"][0]["size"] == 2 && j["data"][1]["size"] == 5 {
            break j;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        list["data"][0],
        json!({"key": "buyers", "name": "Buyers", "description": "", "managed_by": "config",
               "status": "ready", "size": 2,
               "expr": "traits.ltv >= 100 and traits.plan == \"pro\""})
    );
    let (s, one) = api(
        &app,
        "GET",
        "/api/v1/computed-traits/ltv",
        PROFILES_TOKEN,
        None,
    )
    .await;
    assert_eq!(
        (s, one["expr"].clone()),
        (
            200,
            json!("sum(properties.revenue, event = \"Order Completed\")")
        )
    );
    let (s, traits) = api(&app, "GET", "/api/v1/computed-traits", PROFILES_TOKEN, None).await;
    assert_eq!((s, traits["data"].as_array().map(Vec::len)), (200, Some(2)));

    // Members, two pages.
    let (s, page) = api(
        &app,
        "GET",
        "/api/v1/audiences/recent_viewers/members?limit=3",
        PROFILES_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert_eq!(page["cursor"]["has_more"], true);
    let next = page["cursor"]["next"].as_str().unwrap().to_string();
    let (_, rest) = api(
        &app,
        "GET",
        &format!("/api/v1/audiences/recent_viewers/members?limit=3&next={next}"),
        PROFILES_TOKEN,
        None,
    )
    .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!(rest["cursor"]["has_more"], false);
    let mut users: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["data"].as_array().unwrap())
        .map(|m| m["external_ids"][0]["id"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["v0", "v1", "v2", "v3", "v4"]);

    // Size history: the sizes at each change, the latest last.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h) = api(
            &app,
            "GET",
            "/api/v1/audiences/buyers/size-history",
            PROFILES_TOKEN,
            None,
        )
        .await;
        if h["data"]
            .as_array()
            .and_then(|d| d.last())
            .is_some_and(|p| p["size"] == 2)
        {
            assert_eq!(h["data"].as_array().unwrap().last().unwrap()["at"], iso(T));
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Preview: from the live state when its aggregates are kept, else from the log.
    let (s, p) = api(&app, "POST", "/api/v1/audiences/preview", PROFILES_TOKEN,
        Some(json!({"expr": "audience(\"recent_viewers\") and not audience(\"buyers\")", "sample": 2}))).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["size"].clone(), p["computed_from"].clone()),
        (json!(3), json!("state"))
    );
    assert_eq!(p["sample"].as_array().unwrap().len(), 2);
    let (s, p) = api(
        &app,
        "POST",
        "/api/v1/audiences/preview",
        PROFILES_TOKEN,
        Some(json!({"expr": "max(properties.revenue, event = \"Order Completed\") > 100"})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["size"].clone(), p["computed_from"].clone()),
        (json!(1), json!("log"))
    );
    assert_eq!(p["sample"][0]["external_ids"][0]["id"], "v1");
    let (s, e) = api(
        &app,
        "POST",
        "/api/v1/audiences/preview",
        PROFILES_TOKEN,
        Some(json!({"expr": "count() >= \"3\""})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "invalid_expression");
    assert_eq!(
        e["error"]["message"],
        "column 12: `>=` cannot compare a number with a string"
    );

    // Errors: unknown key, auth.
    let (s, e) = api(&app, "GET", "/api/v1/audiences/nope", PROFILES_TOKEN, None).await;
    assert_eq!(
        (s, e["error"]["message"].clone()),
        (404, json!("no audience with the key `nope`"))
    );
    let (s, _) = api(&app, "GET", "/api/v1/audiences", "wrong-token", None).await;
    assert_eq!(s, 401);
    let (s, _) = api(&app, "GET", "/api/v1/audiences", EVENTS_TOKEN, None).await;
    assert_eq!(s, 403);
}

const CRASH_DEFINITIONS: &str = r#"
[[computed_traits]]
key = "views"
expr = 'count(event = "Viewed")'

[[audiences]]
key = "engaged"
expr = 'count(event = "Viewed") >= 3'
"#;

/// Users in the crash test, and views each gets: user `i` gets `i % 5` views.
const CRASH_USERS: usize = 3_000;

pub(crate) fn view(user: usize, n: usize) -> Value {
    json!({"type": "track", "userId": format!("u{user}"), "event": "Viewed",
           "messageId": format!("v{user}-{n}"), "timestamp": "2024-05-01T00:00:00.000Z"})
}

/// Imports a history of `views(u)` `Viewed` events for each user `u` below `users`.
pub(crate) fn import_views(
    config: &std::path::Path,
    dir: &std::path::Path,
    users: usize,
    views: impl Fn(usize) -> usize,
) {
    let mut lines = String::new();
    for u in 0..users {
        for n in 0..views(u) {
            lines.push_str(&view(u, n).to_string());
            lines.push('\n');
        }
    }
    let history = dir.join("history.jsonl");
    std::fs::write(&history, lines).unwrap();
    let out = import(config, &history, "web");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn metric_of(server: &Server, name: &str) -> Option<u64> {
    let text = reqwest::blocking::get(server.url("/metrics"))
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// Waits until Compute has caught up with every stored event and written what it derived.
pub fn settled(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = metric_of(server, "junction_compute_ready ") == Some(1);
        let lag = metric_of(server, "junction_compute_lag_events ");
        if ready && lag == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compute did not catch up: lag {lag:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The last round's derived events are written after its events were applied.
    std::thread::sleep(Duration::from_millis(500));
}

/// Kill -9 while the history is being computed and while live events are, then restart:
/// the memberships equal what the events say, every member entered exactly once, and the
/// last written computed trait of each user is its final value.
#[test]
fn kill_9_mid_history_and_mid_stream_writes_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("junction.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(&config, config_text(&data_dir, CRASH_DEFINITIONS)).unwrap();
    // History: every user's first two views, imported (a long first pass for Compute).
    import_views(&config, dir.path(), CRASH_USERS, |u| (u % 5).min(2));

    // Killed while computing the history (`junction_compute_ready` still 0).
    let port = free_port();
    let server = Server::start_on(&config, &data_dir, port);
    let computing = metric_of(&server, "junction_compute_ready ") == Some(0);
    server.kill9();

    // The rest of the views arrive live, with kills in between: after Compute wrote its
    // derived events (a restart must not write them again), and right after the 200s
    // (while it is writing them).
    let mut server = Server::start_on(&config, &data_dir, port);
    let http = reqwest::blocking::Client::new();
    for n in 2..5 {
        let batch: Vec<Value> = (0..CRASH_USERS)
            .filter(|u| n < u % 5)
            .map(|u| view(u, n))
            .collect();
        for chunk in batch.chunks(500) {
            let sent = http
                .post(server.url("/v1/batch"))
                .header("authorization", basic(WRITE_KEY))
                .body(json!({ "batch": chunk }).to_string())
                .send()
                .unwrap();
            assert_eq!(sent.status(), 200);
        }
        if n != 3 {
            settled(&server);
        }
        server.kill9();
        server = Server::start_on(&config, &data_dir, port);
    }
    settled(&server);
    std::thread::sleep(Duration::from_millis(500));
    let size = metric_of(&server, "junction_audience_members{audience=\"engaged\"} ");
    assert!(server.terminate().success());

    let log = read_log(&data_dir.join("log"));
    let mut views = vec![0u64; CRASH_USERS];
    let mut entered = vec![0u64; CRASH_USERS];
    let mut last_trait = vec![None; CRASH_USERS];
    for (source, e) in &log {
        let user: usize = e["userId"].as_str().unwrap()[1..].parse().unwrap();
        match (source.as_str(), e["type"].as_str(), e["event"].as_str()) {
            ("web", Some("track"), Some("Viewed")) => views[user] += 1,
            ("junction", Some("track"), Some("Audience Entered")) => entered[user] += 1,
            ("junction", Some("track"), other) => panic!("unexpected derived event {other:?}"),
            ("junction", Some("identify"), _) => last_trait[user] = e["traits"]["views"].as_u64(),
            other => panic!("unexpected event {other:?}"),
        }
    }
    let members = views.iter().filter(|&&v| v >= 3).count() as u64;
    assert!(members > 0);
    assert_eq!(size, Some(members), "audience size after the kills");
    for u in 0..CRASH_USERS {
        let want = u64::from(views[u] >= 3);
        assert_eq!(
            entered[u], want,
            "u{u}: {} views, {} Audience Entered",
            views[u], entered[u]
        );
        if views[u] > 0 {
            assert_eq!(last_trait[u], Some(views[u]), "u{u}: last written `views`");
        }
    }
    eprintln!(
        "killed mid-history: {computing}; {} events, {members} members",
        log.len()
    );
}

/// `junction rebuild` recomputes computed traits and audiences too, as of a given time.
#[test]
fn rebuild_computes_traits_and_audiences_as_of_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("junction.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(&config, config_text(&data_dir, DEFINITIONS)).unwrap();
    let history = dir.path().join("history.jsonl");
    let lines = [
        json!({"type": "track", "userId": "u1", "event": "Viewed", "timestamp": iso(T - DAY)}),
        json!({"type": "track", "userId": "u2", "event": "Viewed", "timestamp": iso(T - 3 * DAY)}),
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "timestamp": iso(T)}),
        json!({"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 120}, "timestamp": iso(T)}),
        json!({"type": "track", "userId": "u2", "event": "Order Completed", "properties": {"revenue": 2.5}, "timestamp": iso(T)}),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&history, text.join("\n")).unwrap();
    let out = import(&config, &history, "web");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuild = |as_of: i64| {
        let out = std::process::Command::new(junction_bin())
            .args([
                "rebuild",
                "--in-memory",
                "--json",
                "--as-of",
                &iso(as_of),
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        summary["compute"].clone()
    };
    let now = rebuild(T);
    assert_eq!(now["as_of"], iso(T));
    assert_eq!(now["audiences"], json!({"buyers": 1, "recent_viewers": 2}));
    assert_eq!(
        now["computed_traits"]["ltv"],
        json!({"profiles": 2, "nonzero": 2, "sum": 122.5})
    );
    assert_eq!(now["computed_traits"]["orders"]["sum"], 2.0);
    // Four days later u2's view (3 days old then) has left the 7-day window.
    let later = rebuild(T + 4 * DAY + 1);
    assert_eq!(
        later["audiences"],
        json!({"buyers": 1, "recent_viewers": 1})
    );
    let out = std::process::Command::new(junction_bin())
        .args(["rebuild", "--in-memory", "--as-of", "yesterday", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--as-of: `yesterday` is not an ISO-8601")
    );
}

/// The README's example definitions are valid.
#[test]
fn the_readme_definitions_compile() {
    let readme = include_str!("../../../../README.md");
    let block = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("[[audiences]]"))
        .expect("a toml block with audiences in the README");
    let dir = tempfile::tempdir().unwrap();
    let file = junction::config::parse_file(
        &config_text(dir.path(), block),
        std::path::Path::new("README.md"),
    )
    .unwrap();
    let config = junction::config::build(Some(file), &Default::default()).unwrap();
    assert_eq!(config.definitions.catalog.definitions().len(), 2);
}

/// The Compute benchmark's 40 definitions are valid.
#[test]
fn the_benchmark_definitions_compile() {
    let defs = include_str!("../../../junction-bench/configs/compute-40-definitions.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = junction::config::parse_file(
        &config_text(dir.path(), defs),
        std::path::Path::new("bench.toml"),
    )
    .unwrap();
    let config = junction::config::build(Some(file), &Default::default()).unwrap();
    assert_eq!(config.definitions.catalog.definitions().len(), 40);
}
