//! Real client SDKs against a real `junction serve`: `@segment/analytics-node`,
//! `@rudderstack/rudder-sdk-node`, `segment-analytics-python` and `rudder-sdk-python` (the
//! scripts in `tests/sdk/`, installed by `scripts/install-test-deps.sh`) each send identify,
//! track, page, screen, group and alias, flush, and report the messageIds they sent; the test
//! then reads the log with `junction events tail --json` and checks every field per event.
//!
//! A missing tool (node, node_modules, the venv) fails under CI and is a skip notice elsewhere.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Server, WRITE_KEY};

// ---------------------------------------------------------------------------------------------
// Shared with browser.rs

/// The repository root (two levels above this crate).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `tests/sdk/` at the repository root.
pub(crate) fn sdk_dir() -> PathBuf {
    repo_root().join("tests/sdk")
}

/// Checks that every `(what, path)` exists. Under CI a missing one is a failure; elsewhere the
/// test prints a skip notice and the caller returns.
pub(crate) fn tools_present(test: &str, needed: &[(&str, PathBuf)]) -> bool {
    let missing: Vec<String> = needed
        .iter()
        .filter(|(_, p)| !p.exists())
        .map(|(what, p)| format!("{what} ({})", p.display()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: missing {}: run scripts/install-test-deps.sh",
        missing.join(", ")
    );
    assert!(!support::in_ci(), "{msg}");
    eprintln!("SKIP {msg}");
    false
}

/// The absolute path of `prog` on `PATH`, if any.
pub(crate) fn which(prog: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(prog))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(format!("<{prog} on PATH>")))
}

pub(crate) struct RunOutput {
    /// `None` when the process was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// The last stdout line, parsed as the script's JSON report; panics with everything the
    /// script printed when it failed, timed out or printed no report.
    pub fn report(&self, what: &str) -> Value {
        let context = || format!("--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr);
        match self.status {
            None => panic!(
                "{what} did not finish within its deadline ({:?})\n{}",
                self.elapsed,
                context()
            ),
            Some(s) if !s.success() => panic!("{what} failed ({s})\n{}", context()),
            Some(_) => {}
        }
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{what} printed no report\n{}", context()));
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what}: report is not JSON ({e})\n{}", context()))
    }
}

/// Runs `cmd` in its own process group with `stdin` written to it; at `timeout` the whole
/// group (the script and anything it started, e.g. Chromium) is killed.
pub(crate) fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> RunOutput {
    use std::os::unix::process::CommandExt;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pgid = child.id();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    // Whatever is left of the group (a browser the script did not close, a timed-out script).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    if status.is_none() {
        let _ = child.wait();
    }
    let _ = writer.join();
    RunOutput {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// Milliseconds since the epoch of an RFC 3339 / ISO-8601 timestamp.
pub(crate) fn iso_ms(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Accumulates every mismatch so that one run shows the whole compatibility picture.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<String>);

impl Problems {
    pub fn eq(&mut self, what: impl std::fmt::Display, got: &Value, want: &Value) {
        if got != want {
            self.0.push(format!("{what}: got {got}, want {want}"));
        }
    }

    pub fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        if !ok {
            self.0.push(what.to_string());
        }
    }

    /// `v` is an ISO-8601 string; returns its time.
    pub fn iso(&mut self, what: impl std::fmt::Display, v: &Value) -> Option<i64> {
        let t = iso_ms(v);
        if t.is_none() {
            self.0
                .push(format!("{what}: want an ISO-8601 timestamp, got {v}"));
        }
        t
    }

    pub fn finish(self, title: &str) {
        assert!(
            self.0.is_empty(),
            "{title}: {} problem(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture and the checks

/// A fixed date far from now on the track call, to see that an explicit client `timestamp`
/// (a backfill) survives: the Python SDKs and analytics-node send it as `timestamp` alone
/// (skew correction keeps it within the network delay); rudder-sdk-node sends it as `timestamp`
/// next to its own `originalTimestamp` (enqueue time), and RudderStack's server then keeps the
/// client's `timestamp` as is (rudder-server processor `enhanceWithTimeFields`).
const EXPLICIT_TS: &str = "2024-05-06T07:08:09.123Z";

/// The six calls every SDK makes. `tag` keeps ids apart between SDKs.
fn fixture(tag: &str, host: &str) -> Value {
    let user = format!("user-{tag}-1");
    let anon = format!("anon-{tag}-1");
    let context = json!({
        "locale": "de-CH",
        "campaign": {"name": "Été 2024 — “quotes”", "source": "newsletter", "medium": "email"},
        "custom": {"nested": {"level": 2, "list": [1, "zwei", {"drei": 3.5}], "flag": false}},
    });
    let track = json!({
        "type": "track", "userId": user, "anonymousId": anon,
        "event": "Order Completed ✓",
        "properties": {
            "orderId": format!("order-{tag}-1"), "total": 42.5, "currency": "EUR", "coupon": null,
            "products": [{"sku": "sku-1", "name": "Crème brûlée", "qty": 2, "price": 7.25}],
            "meta": {"nested": {"deep": "ünïcödé ✓ 中文", "empty": {}}, "tags": ["x", "y"]},
        },
        "context": context,
        "integrations": {"All": false, "Amplitude": {"session_id": 1714979289123_i64}, "Webhooks": true},
        "timestamp": EXPLICIT_TS,
    });
    json!({
        "host": host,
        "writeKey": WRITE_KEY,
        "calls": [
            {
                "type": "identify", "userId": user, "anonymousId": anon,
                "traits": {
                    "email": format!("{tag}@example.com"), "name": "Zoë Ångström 日本語 🚀", "plan": "pro",
                    "logins": 3, "vip": true, "tags": ["a", "b"],
                    "address": {"city": "Zürich", "geo": {"lat": 47.3769, "lon": 8.5417}, "lines": ["Bahnhofstrasse 1", "8001"]},
                },
                "context": context,
                "integrations": {"All": true, "Mixpanel": false},
            },
            track,
            {
                "type": "page", "userId": user, "anonymousId": anon,
                "category": "Docs", "name": "Getting Started — Überblick",
                "properties": {"path": "/docs/start", "title": "Démarrage", "url": "https://example.com/docs/start?x=1", "referrer": ""},
                "context": context,
                "integrations": {"All": true},
            },
            {
                "type": "screen", "userId": user, "anonymousId": anon,
                "category": "Onboarding", "name": "Welcome 👋",
                "properties": {"step": 1, "variant": {"color": "grün", "sizes": [1, 2, 3]}},
                "context": context,
                "integrations": {"All": true, "Firebase": false},
            },
            {
                "type": "group", "userId": user, "anonymousId": anon, "groupId": format!("grp-{tag}"),
                "traits": {"name": "Acme Société", "employees": 120, "industry": "Software", "address": {"country": "CH"}},
                "context": context,
                "integrations": {"All": true},
                "messageId": format!("{tag}-group-{}", uuid::Uuid::new_v4()),
            },
            {
                "type": "alias", "userId": user, "previousId": anon,
                "context": context,
                "integrations": {"All": true},
                "messageId": format!("{tag}-alias-{}", uuid::Uuid::new_v4()),
            },
        ],
    })
}

struct Sdk {
    /// Short name, also the ids' tag.
    tag: &'static str,
    /// `context.library.name` the SDK itself sets.
    library: &'static str,
    /// analytics-node (through analytics-core's event factory) also copies a page's
    /// `category` into its `properties`.
    page_category_in_properties: bool,
}

fn run_sdk(sdk: Sdk, mut cmd: Command, needed: &[(&str, PathBuf)]) {
    if !tools_present(sdk.tag, needed) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let fx = fixture(sdk.tag, &server.url(""));
    cmd.current_dir(sdk_dir());
    let out = run_with_timeout(cmd, fx.to_string().as_bytes(), Duration::from_secs(60));
    let report = out.report(sdk.tag);
    eprintln!(
        "{}: SDK done in {:?}; report {report}",
        sdk.tag, out.elapsed
    );
    if !out.stderr.trim().is_empty() {
        eprintln!("{} stderr:\n{}", sdk.tag, out.stderr);
    }
    let stored = support::tail_json(&server.data_dir, &["--source", "web"]);
    let other = support::tail_json(&server.data_dir, &["--source", "ios"]);
    check_stored(&sdk, &fx, &report, &stored, &other);
}

fn check_stored(sdk: &Sdk, fx: &Value, report: &Value, stored: &[Value], other: &[Value]) {
    let mut p = Problems::default();
    let calls = fx["calls"].as_array().unwrap();
    let sent = report["sent"].as_array().cloned().unwrap_or_default();
    p.eq(
        "reported library name",
        &report["library"]["name"],
        &json!(sdk.library),
    );
    p.check(
        sent.len() == calls.len(),
        format!(
            "the script reported {} sends for {} calls",
            sent.len(),
            calls.len()
        ),
    );
    p.check(
        stored.len() == calls.len(),
        format!(
            "want exactly {} stored events, got {}: {stored:#?}",
            calls.len(),
            stored.len()
        ),
    );
    p.check(
        other.is_empty(),
        format!("events landed in the other source: {other:?}"),
    );
    let mut ids: Vec<&str> = stored
        .iter()
        .filter_map(|e| e["messageId"].as_str())
        .collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    p.check(
        ids.len() == before && before == stored.len(),
        format!("stored messageIds missing or duplicated: {ids:?}"),
    );

    for (call, s) in calls.iter().zip(&sent) {
        let ty = call["type"].as_str().unwrap();
        p.eq(format!("{ty}: reported type"), &s["type"], &call["type"]);
        let Some(mid) = s["messageId"].as_str() else {
            p.0.push(format!("{ty}: the SDK reported no messageId"));
            continue;
        };
        if let Some(explicit) = call.get("messageId") {
            p.eq(
                format!("{ty}: messageId the SDK sent"),
                &json!(mid),
                explicit,
            );
        }
        let Some(e) = stored.iter().find(|e| e["messageId"] == json!(mid)) else {
            p.0.push(format!("{ty}: no stored event with messageId {mid}"));
            continue;
        };
        let at = |f: &str| format!("{ty}.{f}");
        p.eq(at("type"), &e["type"], &call["type"]);
        p.eq(at("userId"), &e["userId"], &call["userId"]);
        match call.get("anonymousId") {
            Some(a) => p.eq(at("anonymousId"), &e["anonymousId"], a),
            None => p.check(
                e["anonymousId"].is_null(),
                format!("{}: want none, got {}", at("anonymousId"), e["anonymousId"]),
            ),
        }
        for f in [
            "event",
            "name",
            "category",
            "properties",
            "groupId",
            "previousId",
        ] {
            if let Some(want) = call.get(f) {
                let mut want = want.clone();
                if f == "properties" && ty == "page" && sdk.page_category_in_properties {
                    want["category"] = call["category"].clone();
                }
                p.eq(at(f), &e[f], &want);
            }
        }
        if let Some(want) = call.get("traits") {
            // rudder-sdk-python puts identify traits only in context.traits; rudder-sdk-node
            // puts them in both. Wherever they are, they are exact.
            let top = &e["traits"];
            let ctx = &e["context"]["traits"];
            p.check(
                !top.is_null() || !ctx.is_null(),
                format!("{}: none at the top level nor in context", at("traits")),
            );
            if !top.is_null() {
                p.eq(at("traits"), top, want);
            }
            if ty == "identify" && !ctx.is_null() {
                p.eq(at("context.traits"), ctx, want);
            }
        }
        // Context: every key we set, plus the SDK's own library.
        for (k, v) in call["context"].as_object().unwrap() {
            p.eq(at(&format!("context.{k}")), &e["context"][k], v);
        }
        p.eq(
            at("context.library.name"),
            &e["context"]["library"]["name"],
            &json!(sdk.library),
        );
        p.eq(
            at("context.library.version"),
            &e["context"]["library"]["version"],
            &report["library"]["version"],
        );
        p.eq(
            at("integrations"),
            &e["integrations"],
            &call["integrations"],
        );
        // Times.
        let received = p.iso(at("receivedAt"), &e["receivedAt"]);
        let ts = p.iso(at("timestamp"), &e["timestamp"]);
        p.iso(
            at("sentAt (each SDK sends one, per event or per batch)"),
            &e["sentAt"],
        );
        match (call.get("timestamp"), ts, received) {
            (Some(want), Some(ts), _) => {
                let want = iso_ms(want).unwrap();
                p.check(
                    (ts - want).abs() <= 60_000,
                    format!(
                        "{}: {} is not the client's {} (±60 s)",
                        at("timestamp"),
                        e["timestamp"],
                        call["timestamp"]
                    ),
                );
            }
            (None, Some(ts), Some(rec)) => {
                p.check(
                    (ts - rec).abs() <= 600_000,
                    format!(
                        "{}: {} is far from receivedAt {}",
                        at("timestamp"),
                        e["timestamp"],
                        e["receivedAt"]
                    ),
                );
            }
            _ => {}
        }
        if let Some(rec) = received {
            let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
            p.check(
                (now - rec).abs() <= 600_000,
                format!("{}: {} is not now", at("receivedAt"), e["receivedAt"]),
            );
        }
    }
    p.finish(&format!("{} → junction", sdk.tag));
}

pub(crate) fn node_cmd(script: &str) -> Command {
    let mut c = Command::new("node");
    c.arg(script);
    c
}

/// `<venv>/lib/pythonX.Y/site-packages` (whichever Python made the venv).
pub(crate) fn site_packages(venv: &Path) -> PathBuf {
    std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|d| d.path().join("site-packages"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| venv.join("lib/python3/site-packages"))
}

pub(crate) fn python_cmd(which: &str) -> Command {
    let mut c = Command::new(sdk_dir().join(".venv/bin/python"));
    c.args(["python_sdk.py", which])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

#[test]
fn segment_analytics_node() {
    let nm = sdk_dir().join("node_modules");
    run_sdk(
        Sdk {
            tag: "segment-node",
            library: "@segment/analytics-node",
            page_category_in_properties: true,
        },
        node_cmd("segment-node.mjs"),
        &[
            ("node", which("node")),
            (
                "@segment/analytics-node",
                nm.join("@segment/analytics-node/package.json"),
            ),
        ],
    );
}

#[test]
fn rudder_sdk_node() {
    let nm = sdk_dir().join("node_modules");
    run_sdk(
        Sdk {
            tag: "rudder-node",
            library: "analytics-node",
            page_category_in_properties: false,
        },
        node_cmd("rudder-node.mjs"),
        &[
            ("node", which("node")),
            (
                "@rudderstack/rudder-sdk-node",
                nm.join("@rudderstack/rudder-sdk-node/package.json"),
            ),
        ],
    );
}

#[test]
fn segment_analytics_python() {
    let venv = sdk_dir().join(".venv");
    run_sdk(
        Sdk {
            tag: "segment-python",
            library: "analytics-python",
            page_category_in_properties: false,
        },
        python_cmd("segment"),
        &[
            ("the Python venv", venv.join("bin/python")),
            (
                "segment-analytics-python",
                site_packages(&venv).join("segment/analytics"),
            ),
        ],
    );
}

#[test]
fn rudder_sdk_python() {
    let venv = sdk_dir().join(".venv");
    run_sdk(
        Sdk {
            tag: "rudder-python",
            library: "analytics-python",
            page_category_in_properties: false,
        },
        python_cmd("rudder"),
        &[
            ("the Python venv", venv.join("bin/python")),
            (
                "rudder-sdk-python",
                site_packages(&venv).join("rudderstack/analytics"),
            ),
        ],
    );
}
