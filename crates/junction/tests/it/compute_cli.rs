//! `junction audiences` and `junction traits` run as the binary: through a running server,
//! then on its stopped data dir, printing the same JSON.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::compute::{DEFINITIONS, settled};
use crate::support::*;

const DAY: i64 = 86_400_000;
/// Viewers sent: more than one page of members (1,000 per page), two of them buyers.
const VIEWERS: usize = 1_004;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `path` of the management API until `want` holds (20 s at most).
fn api_until(server: &Server, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http
            .get(server.url(path))
            .bearer_auth(PROFILES_TOKEN)
            .send()
            .unwrap();
        let body: Value = if resp.status() == 200 {
            resp.json().unwrap()
        } else {
            Value::Null
        };
        if want(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cli_reads_audiences_and_traits_through_the_server_and_the_stopped_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), DEFINITIONS);
    let yesterday = junction_core::timestamp::format(now_ms() - DAY);
    let mut batch: Vec<Value> = (0..VIEWERS)
        .map(|i| json!({"type": "track", "userId": format!("v{i}"), "event": "Viewed", "timestamp": yesterday}))
        .collect();
    for i in 0..2 {
        batch.push(json!({"type": "identify", "userId": format!("v{i}"), "traits": {"plan": "pro"}, "timestamp": yesterday}));
        batch.push(json!({"type": "track", "userId": format!("v{i}"), "event": "Order Completed", "properties": {"revenue": 100 + i}, "timestamp": yesterday}));
    }
    let resp = reqwest::blocking::Client::new()
        .post(server.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .body(json!({ "batch": batch }).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    api_until(&server, "/api/v1/audiences", |b| {
        b["data"][0]["size"] == 2 && b["data"][1]["size"] == VIEWERS
    });
    // The derived events (Audience Entered, computed traits) written and read back too.
    settled(&server);

    let config = server.config.to_str().unwrap().to_string();
    let env = [("JUNCTION_LISTEN", format!("127.0.0.1:{}", server.port))];
    let cwd = dir.path();
    let with_config = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(["--config".into(), config.clone()])
            .collect()
    };
    let run = |args: &[&str], env: &[(&str, String)]| {
        let args = with_config(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_junction(&args, env, cwd)
    };
    let json_of = |args: &[&str], env: &[(&str, String)]| -> (String, Value) {
        let (ok, out, err) = run(args, env);
        assert!(ok, "{args:?} failed: {err}");
        let v = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed non-JSON ({e}): {out}"));
        (out, v)
    };
    const STATE_PREVIEW: &str = r#"audience("recent_viewers") and not audience("buyers")"#;
    const LOG_PREVIEW: &str = r#"max(properties.revenue, event = "Order Completed") > 100"#;
    let commands: &[&[&str]] = &[
        &["audiences", "list", "--json"],
        &["audiences", "get", "buyers", "--json"],
        &["audiences", "members", "recent_viewers", "--json"],
        &[
            "audiences",
            "members",
            "recent_viewers",
            "--limit",
            "1002",
            "--json",
        ],
        &["audiences", "members", "buyers", "--limit", "1", "--json"],
        &[
            "audiences",
            "preview",
            STATE_PREVIEW,
            "--sample",
            "2",
            "--json",
        ],
        &["audiences", "preview", LOG_PREVIEW, "--json"],
        &["traits", "list", "--json"],
        &["traits", "get", "ltv", "--json"],
    ];
    let online: Vec<(String, Value)> = commands.iter().map(|c| json_of(c, &env)).collect();

    let list = &online[0].1;
    assert_eq!(
        list[0],
        json!({"key": "buyers", "name": "Buyers", "description": "", "managed_by": "config",
               "status": "ready", "size": 2,
               "expr": "traits.ltv >= 100 and traits.plan == \"pro\""})
    );
    assert_eq!(
        (&list[1]["key"], &list[1]["size"]),
        (&json!("recent_viewers"), &json!(VIEWERS))
    );
    assert_eq!(online[1].1, list[0]);
    // Every member, over two pages, once each, in profile order.
    let members = online[2].1.as_array().unwrap();
    assert_eq!(members.len(), VIEWERS);
    let ids: Vec<u64> = members
        .iter()
        .map(|m| m["profile_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        members[0]["external_ids"],
        json!([{"type": "user_id", "id": "v0"}])
    );
    assert_eq!(online[3].1.as_array().unwrap()[..], members[..1002]);
    assert_eq!(online[4].1.as_array().unwrap().len(), 1);
    let preview = &online[5].1;
    assert_eq!(
        (&preview["size"], &preview["computed_from"]),
        (&json!(VIEWERS - 2), &json!("state"))
    );
    assert_eq!(preview["sample"].as_array().unwrap().len(), 2);
    // `took_ms` is the timing of one run, not data: left out so both ways print the same.
    assert!(preview.get("took_ms").is_none(), "{preview}");
    let preview = &online[6].1;
    assert_eq!(
        (&preview["size"], &preview["computed_from"]),
        (&json!(1), &json!("log"))
    );
    assert_eq!(preview["sample"][0]["external_ids"][0]["id"], "v1");
    assert_eq!(online[7].1.as_array().unwrap().len(), 2);
    assert_eq!(
        online[8].1["expr"],
        "sum(properties.revenue, event = \"Order Completed\")"
    );

    // Readable forms, and errors.
    let readable_and_errors = |env: &[(&str, String)], online: bool| {
        let (ok, text, err) = run(&["audiences", "list"], env);
        assert!(ok, "{err}");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["KEY", "NAME", "SIZE", "STATUS"], "{text}");
        assert_eq!(rows[1], ["buyers", "Buyers", "2", "ready"], "{text}");
        let viewers = VIEWERS.to_string();
        assert_eq!(
            rows[2],
            [
                "recent_viewers",
                "recent_viewers",
                viewers.as_str(),
                "ready"
            ],
            "{text}"
        );
        let (ok, text, err) = run(&["audiences", "get", "buyers"], env);
        assert!(ok && text.contains("name         Buyers"), "{text}{err}");
        let history = if online {
            "size history (the last"
        } else {
            "size history: none offline"
        };
        assert!(text.contains(history), "{text}");
        let (ok, text, err) = run(&["audiences", "members", "buyers"], env);
        assert!(ok, "{err}");
        assert!(
            text.starts_with("2 members of audience `buyers`\n"),
            "{text}"
        );
        assert!(text.contains("user_id:v1"), "{text}");
        let (ok, text, err) = run(&["audiences", "preview", LOG_PREVIEW], env);
        assert!(ok, "{err}");
        assert!(
            text.starts_with(&format!(
                "1 of {} profiles match (computed from a pass over the log in ",
                VIEWERS
            )),
            "{text}"
        );
        let (ok, text, err) = run(&["traits", "list"], env);
        assert!(
            ok && text.contains("ltv") && text.contains("ready"),
            "{text}{err}"
        );

        let (ok, _, err) = run(&["audiences", "preview", r#"count() >= "3""#], env);
        assert!(
            !ok && err.contains("column 12: `>=` cannot compare a number with a string"),
            "{err}"
        );
        let (ok, _, err) = run(&["audiences", "get", "nope"], env);
        assert!(
            !ok && err.contains("no audience with the key `nope`"),
            "{err}"
        );
        let (ok, _, err) = run(&["audiences", "members", "nope"], env);
        assert!(
            !ok && err.contains("no audience with the key `nope`"),
            "{err}"
        );
        let (ok, _, err) = run(&["traits", "get", "nope"], env);
        assert!(
            !ok && err.contains("no computed trait with the key `nope`"),
            "{err}"
        );
    };
    readable_and_errors(&env, true);

    // Stopped: the data dir is read offline, and every command prints the same bytes.
    assert!(server.terminate().success());
    for (command, (online_out, _)) in commands.iter().zip(&online) {
        let (offline_out, _) = json_of(command, &[]);
        assert_eq!(&offline_out, online_out, "{command:?}");
    }
    readable_and_errors(&[], false);
}
