//! A real browser against a real `junction serve`: headless Chromium (Debian's, driven by
//! playwright-core) loads a page served from another port, whose script is
//! `@segment/analytics-next` bundled from npm with esbuild (`tests/sdk/browser/`). The SDK
//! fetches its settings from Junction (`AnalyticsBrowser.load({writeKey, cdnURL})`), then
//! sends page, track and identify cross-origin (CORS preflights and allow-origin headers). The
//! test checks the script's report and the stored events.
//!
//! A missing tool (node, node_modules, chromium, the bundle) fails under CI and is a skip
//! notice elsewhere.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::sdk::{Problems, run_with_timeout, sdk_dir, tools_present, which};
use crate::support::{self, Server, WRITE_KEY};

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[test]
fn analytics_next_in_chromium() {
    let dir = sdk_dir();
    let needed = [
        ("node", which("node")),
        (
            "playwright-core",
            dir.join("node_modules/playwright-core/package.json"),
        ),
        (
            "@segment/analytics-next",
            dir.join("node_modules/@segment/analytics-next/package.json"),
        ),
        ("chromium", chromium()),
        ("the esbuild bundle", dir.join("browser/bundle.js")),
    ];
    if !tools_present("browser", &needed) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "");
    let junction = server.url("");
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("browser/browser.mjs")
        .args([
            "--junction",
            &junction,
            "--write-key",
            WRITE_KEY,
            "--timeout-ms",
            "30000",
        ])
        .arg("--chromium")
        .arg(chromium());
    let out = run_with_timeout(cmd, b"", Duration::from_secs(60));
    let report = out.report("browser.mjs");
    eprintln!("browser: done in {:?}", out.elapsed);
    let mut p = Problems::default();
    let ctx = || serde_json::to_string_pretty(&report).unwrap();

    // What the browser saw.
    p.eq(
        "errors the script or page reported",
        &report["errors"],
        &json!([]),
    );
    p.eq("uncaught page errors", &report["pageErrors"], &json!([]));
    let page_origin = report["pageOrigin"].clone();
    p.check(
        page_origin != json!(junction.trim_end_matches('/')),
        "the page must be served from another origin than Junction",
    );
    let settings = &report["settings"];
    p.eq("settings fetch: status", &settings["status"], &json!(200));
    p.eq(
        "settings fetch: URL",
        &settings["url"],
        &json!(server.url(&format!("/v1/projects/{WRITE_KEY}/settings"))),
    );
    p.eq(
        "settings fetch: Access-Control-Allow-Origin",
        &settings["allowOrigin"],
        &page_origin,
    );
    let seg = &settings["body"]["integrations"]["Segment.io"];
    p.eq(
        "settings: Segment.io.apiHost",
        &seg["apiHost"],
        &json!(format!("127.0.0.1:{}/v1", server.port)),
    );
    p.eq(
        "settings: Segment.io.protocol",
        &seg["protocol"],
        &json!("http"),
    );
    let requests = report["requests"].as_array().cloned().unwrap_or_default();
    for path in ["/v1/p", "/v1/t", "/v1/i"] {
        let hits: Vec<&Value> = requests
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == path)
            .collect();
        p.check(
            hits.len() == 1,
            format!("want one POST {path}, saw {}", hits.len()),
        );
        for r in hits {
            p.eq(format!("POST {path}: status"), &r["status"], &json!(200));
            p.eq(
                format!("POST {path}: Access-Control-Allow-Origin"),
                &r["allowOrigin"],
                &page_origin,
            );
        }
    }
    // analytics-next sends `Authorization: Basic …`, so each POST is preflighted (watched
    // through CDP: Playwright does not surface preflights as requests).
    let preflights = report["preflights"].as_array().cloned().unwrap_or_default();
    p.check(
        !preflights.is_empty(),
        "Chromium sent no CORS preflight to Junction",
    );
    for pf in &preflights {
        let at = |f: &str| {
            format!(
                "preflight OPTIONS {}: {f}",
                pf["path"].as_str().unwrap_or("?")
            )
        };
        let h = &pf["headers"];
        p.check(
            pf["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s)),
            format!("{}: {}", at("status"), pf["status"]),
        );
        p.eq(
            at("Access-Control-Allow-Origin"),
            &h["access-control-allow-origin"],
            &page_origin,
        );
        p.eq(
            at("Access-Control-Allow-Credentials"),
            &h["access-control-allow-credentials"],
            &json!("true"),
        );
        let allowed = h["access-control-allow-headers"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase();
        p.check(
            allowed.split(',').any(|x| x.trim() == "authorization"),
            format!(
                "{}: {}",
                at("Access-Control-Allow-Headers lacks authorization"),
                h["access-control-allow-headers"]
            ),
        );
        let methods = h["access-control-allow-methods"].as_str().unwrap_or("");
        p.check(
            methods.contains("POST"),
            format!(
                "{}: {}",
                at("Access-Control-Allow-Methods lacks POST"),
                h["access-control-allow-methods"]
            ),
        );
    }
    let page = &report["page"];
    p.eq("the SDK loaded", &page["loaded"], &json!(true));
    let results = page["results"].as_array().cloned().unwrap_or_default();
    p.eq(
        "types the SDK dispatched",
        &json!(
            results
                .iter()
                .map(|r| r["type"].clone())
                .collect::<Vec<_>>()
        ),
        &json!(["page", "track", "identify"]),
    );
    for r in &results {
        p.eq(
            format!("{}: failed delivery", r["type"]),
            &r["failedDelivery"],
            &Value::Null,
        );
    }
    let anon = page["anonymousId"].clone();
    p.check(
        anon.as_str().is_some_and(|a| !a.is_empty()),
        format!("the SDK has no anonymousId: {anon}"),
    );
    if !p.0.is_empty() {
        p.0.push(format!("report: {}", ctx()));
        p.finish("analytics-next in Chromium (browser side)");
        return;
    }

    // What Junction stored.
    let stored = support::tail_json(&server.data_dir, &["--source", "web"]);
    p.check(
        stored.len() == 3,
        format!(
            "want exactly 3 stored events, got {}: {stored:#?}",
            stored.len()
        ),
    );
    let page_url = report["pageUrl"].as_str().unwrap().to_string();
    let search = format!("?{}", page_url.split_once('?').unwrap().1);
    for r in &results {
        let ty = r["type"].as_str().unwrap_or("?");
        let at = |f: &str| format!("{ty}.{f}");
        let Some(e) = stored.iter().find(|e| e["messageId"] == r["messageId"]) else {
            p.0.push(format!(
                "{ty}: no stored event with messageId {}",
                r["messageId"]
            ));
            continue;
        };
        p.check(
            r["messageId"]
                .as_str()
                .is_some_and(|m| m.starts_with("ajs-next-")),
            format!("{}: {}", at("messageId"), r["messageId"]),
        );
        p.eq(at("type"), &e["type"], &json!(ty));
        p.eq(at("anonymousId"), &e["anonymousId"], &anon);
        p.eq(
            at("context.library.name"),
            &e["context"]["library"]["name"],
            &json!("analytics.js"),
        );
        p.check(
            e["context"]["library"]["version"]
                .as_str()
                .is_some_and(|v| v.contains("1.84.3")),
            format!(
                "{}: {}",
                at("context.library.version"),
                e["context"]["library"]["version"]
            ),
        );
        p.eq(
            at("context.userAgent"),
            &e["context"]["userAgent"],
            &report["userAgent"],
        );
        let cp = &e["context"]["page"];
        p.eq(at("context.page.url"), &cp["url"], &json!(page_url));
        p.eq(at("context.page.path"), &cp["path"], &json!("/index.html"));
        p.eq(at("context.page.search"), &cp["search"], &json!(search));
        p.eq(
            at("context.page.title"),
            &cp["title"],
            &json!("Junction browser test — Überblick"),
        );
        p.check(
            cp["referrer"].is_string(),
            format!("{}: {}", at("context.page.referrer"), cp["referrer"]),
        );
        p.iso(at("receivedAt"), &e["receivedAt"]);
        p.iso(at("timestamp"), &e["timestamp"]);
        p.iso(at("sentAt"), &e["sentAt"]);
        if ty != "identify" {
            p.check(
                e["userId"].is_null(),
                format!(
                    "{}: want none before identify, got {}",
                    at("userId"),
                    e["userId"]
                ),
            );
        }
        match ty {
            "page" => {
                p.eq(
                    at("properties.url"),
                    &e["properties"]["url"],
                    &json!(page_url),
                );
                p.eq(
                    at("properties.path"),
                    &e["properties"]["path"],
                    &json!("/index.html"),
                );
                p.eq(
                    at("properties.title"),
                    &e["properties"]["title"],
                    &json!("Junction browser test — Überblick"),
                );
            }
            "track" => {
                p.eq(at("event"), &e["event"], &json!("Browser Clicked"));
                p.eq(
                    at("properties"),
                    &e["properties"],
                    &json!({"button": "Kaufen ✓", "price": 9.99, "items": [{"sku": "b-1", "qty": 1}], "nested": {"level1": {"level2": "ünïcödé 日本"}}}),
                );
            }
            "identify" => {
                p.eq(at("userId"), &e["userId"], &json!("user-b1"));
                p.eq(
                    at("traits"),
                    &e["traits"],
                    &json!({"email": "b1@example.com", "name": "Zoë Browser 🚀", "prefs": {"lang": "de", "tz": "Europe/Zurich"}}),
                );
            }
            _ => p.0.push(format!("unexpected type {ty}")),
        }
    }
    p.finish("analytics-next in Chromium → junction");
}
