//! `junction import`, `junction events tail` and the hidden `junction bench-export-events`,
//! run as the binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn write_config(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = dir.join("junction.toml");
    let data = dir.join("data");
    std::fs::write(&config, config_text(&data, "")).unwrap();
    (config, data)
}

fn history_lines() -> String {
    [
        json!({"type": "identify", "userId": "u1", "traits": {"email": "a@b.c"}, "messageId": "h1", "timestamp": "2023-01-01T00:00:00.000Z", "receivedAt": "2023-01-01T00:00:01.000Z"}).to_string(),
        json!({"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 9.5}, "messageId": "h2"}).to_string(),
        "{not json".to_string(),
        String::new(),
        json!({"type": "track", "event": "NoId", "messageId": "h3"}).to_string(),
        json!({"type": "identify", "userId": "u1", "messageId": "h1"}).to_string(),
        json!({"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "h4"}).to_string(),
    ]
    .join("\n")
}

#[test]
fn import_validates_dedups_and_summarizes() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = write_config(dir.path());
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, history_lines()).unwrap();
    let out = import(&config, &file, "web");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("imported: 3"), "{stdout}");
    assert!(stdout.contains("duplicates: 1"), "{stdout}");
    assert!(stdout.contains("rejected: 2"), "{stdout}");
    assert!(stdout.contains("invalid_json: 1 (lines 3)"), "{stdout}");
    assert!(stdout.contains("missing_id: 1 (lines 5)"), "{stdout}");
    let stored = tail_json(&data, &[]);
    let ids: Vec<&str> = stored
        .iter()
        .map(|e| e["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h1", "h2", "h4"]);
    assert_eq!(
        stored[0]["receivedAt"], "2023-01-01T00:00:01.000Z",
        "an exported receivedAt is kept"
    );
    assert_eq!(stored[1]["properties"], json!({"revenue": 9.5}));
    // Again, gzipped: everything is a duplicate now.
    let gz = dir.path().join("history.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(history_lines().as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let out = import(&config, &gz, "web");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("imported: 0") && stdout.contains("duplicates: 4"),
        "{stdout}"
    );
    // Unknown source.
    let out = import(&config, &file, "nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown source `nope`"));
}

#[test]
fn import_refuses_a_data_dir_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let file = dir.path().join("h.jsonl");
    std::fs::write(&file, history_lines()).unwrap();
    let out = import(&server.config, &file, "web");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn tail_filters_by_source_prints_humans_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let http = reqwest::blocking::Client::new();
    for (key, event) in [(WRITE_KEY, "Web Event"), (OTHER_WRITE_KEY, "Ios Event")] {
        let r = http
            .post(server.url("/v1/track"))
            .header("authorization", basic(key))
            .body(json!({"userId": "u", "event": event}).to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let web = tail_json(&server.data_dir, &["--source", "web"]);
    assert_eq!(web.len(), 1);
    assert_eq!(web[0]["event"], "Web Event");
    let human = Command::new(junction_bin())
        .args(["events", "tail", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("Web Event") && text.contains("Ios Event") && text.contains("track"),
        "{text}"
    );
    // --follow prints events stored after it started.
    let mut follow = Command::new(junction_bin())
        .args([
            "events",
            "tail",
            "--follow",
            "--json",
            "--from",
            "2",
            "--data-dir",
        ])
        .arg(&server.data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let r = http
        .post(server.url("/v1/track"))
        .header("authorization", basic(WRITE_KEY))
        .body(json!({"userId": "u", "event": "Later"}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tail --follow printed nothing");
    let _ = follow.kill();
    let _ = follow.wait();
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["event"], "Later");
    // And it works on the stopped server's data dir.
    let data = server.data_dir.clone();
    assert!(server.terminate().success());
    assert_eq!(tail_json(&data, &[]).len(), 3);
}

#[test]
fn dev_mode_env_overrides_flags_and_sigint() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("env-data");
    let (env_port, flag_port) = (free_port(), free_port());
    let start = |extra: &[String]| {
        Command::new(junction_bin())
            .arg("serve")
            .args(extra)
            .current_dir(cwd.path())
            .env("JUNCTION_DATA_DIR", &data)
            .env("JUNCTION_LISTEN", format!("127.0.0.1:{env_port}"))
            .env("JUNCTION_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // No config file in the working directory: dev mode, data dir and address from the env.
    let mut child = start(&[]);
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(4)
        .map(Result::unwrap)
        .collect();
    let text = lines.join("\n");
    assert!(text.contains("dev mode"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{env_port}")), "{text}");
    let write_key = lines
        .iter()
        .find_map(|l| l.split("write key: ").nth(1))
        .expect("write key printed")
        .trim()
        .to_string();
    let token = lines
        .iter()
        .find_map(|l| l.split("admin token: ").nth(1))
        .expect("admin token printed")
        .trim()
        .to_string();
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("http://127.0.0.1:{env_port}/v1/track"))
        .header("authorization", basic(&write_key))
        .body(r#"{"userId":"u","event":"Dev"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!(
            "http://127.0.0.1:{env_port}/api/v1/debugger/events"
        ))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(500))
        .send();
    assert!(
        r.is_ok_and(|r| r.status() == 200),
        "the printed admin token works"
    );
    signal(&child, "INT");
    assert!(child.wait().unwrap().success(), "SIGINT exits 0");
    // The credentials were kept: same write key after a restart; a flag beats the env.
    let mut child = start(&["--listen".into(), format!("127.0.0.1:{flag_port}")]);
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(4)
        .map(Result::unwrap)
        .collect();
    assert!(lines.iter().any(|l| l.contains(&write_key)), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("127.0.0.1:{flag_port}"))),
        "{lines:?}"
    );
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    assert_eq!(tail_json(&data, &[])[0]["event"], "Dev");
}

#[test]
fn a_bad_config_file_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("junction.toml");
    std::fs::write(
        &config,
        "version = 1\n\n[[sources]]\nname = \"web\"\nwrite_key = \"wk\"\nwritekey = \"typo\"\n",
    )
    .unwrap();
    let out = Command::new(junction_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writekey") && err.contains("line 6"), "{err}");
}

#[test]
fn import_shows_progress_on_a_tty_only() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path());
    let file = dir.path().join("many.jsonl");
    let lines: Vec<String> = (0..30_000)
        .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "Bulk", "properties": {"i": i, "pad": "x".repeat(200)}}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    // `script` gives the command a pseudo-terminal and copies what it printed.
    let command = format!(
        "{} import {} --source web --config {}",
        junction_bin().display(),
        file.display(),
        config.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("util-linux `script`");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("imported: 30000"), "{text}");
    assert!(text.contains("eta"), "no progress bar on a TTY:\n{text}");
    // Without a TTY: the summary only.
    let file2 = dir.path().join("more.jsonl");
    std::fs::write(&file2, lines[..100].join("\n")).unwrap();
    let out = import(&config, &file2, "web");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("imported: 100") && !all.contains("eta"),
        "{all}"
    );
}

#[test]
fn bench_export_events_writes_each_owned_event_with_its_merged_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path());
    let file = dir.path().join("events.jsonl");
    let at = |s: u32| format!("2026-01-01T00:00:{s:02}.000Z");
    let lines = [
        // Two profiles (anonymous, then a user) that the identify merges.
        json!({"type": "track", "anonymousId": "a1", "event": "Product Viewed", "properties": {"revenue": "12"}, "timestamp": at(1)}),
        json!({"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 20.5}, "timestamp": at(2)}),
        json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "timestamp": at(3)}),
        // Another person.
        json!({"type": "track", "anonymousId": "a2", "event": "Clicked, then \"left\"", "properties": {"revenue": 3}, "timestamp": at(4)}),
        json!({"type": "page", "anonymousId": "a2", "name": "Home", "properties": {"revenue": null}, "timestamp": at(5)}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    assert!(import(&config, &file, "web").status.success());

    let csv = dir.path().join("events.csv");
    let out = Command::new(junction_bin())
        .args(["bench-export-events", "--json", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&csv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(summary["rows"], 5, "{summary}");
    assert_eq!(summary["unowned"], 0, "{summary}");
    assert_eq!(summary["profiles"], 2, "{summary}");
    let t0 = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    assert_eq!(summary["max_timestamp_ms"], t0 + 5000, "{summary}");

    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "profile_id,timestamp_ms,type,event,revenue");
    let ids: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.split(',').next().unwrap())
        .collect();
    let (merged, other) = (ids[0], ids[3]);
    assert_eq!(&ids[..], [merged, merged, merged, other, other], "{text}");
    assert_ne!(merged, other);
    let rest: Vec<String> = rows[1..]
        .iter()
        .map(|r| r.split_once(',').unwrap().1.to_string())
        .collect();
    assert_eq!(
        rest,
        [
            format!("{},track,Product Viewed,", t0 + 1000),
            format!("{},track,Order Completed,20.5", t0 + 2000),
            format!("{},identify,,", t0 + 3000),
            format!("{},track,\"Clicked, then \"\"left\"\"\",3", t0 + 4000),
            format!("{},page,,", t0 + 5000),
        ],
        "{text}"
    );
    // The help does not list it.
    let help = Command::new(junction_bin()).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("bench-export-events"));
}
