//! The real `@segment/analytics-node` and `segment-analytics-python` SDKs feed one person
//! across two devices; through the Profile API every identifier of the merged profile returns
//! the same traits, external ids and events (Segment Unify's promise).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sdk::{
    node_cmd, python_cmd, run_with_timeout, sdk_dir, site_packages, tools_present, which,
};
use crate::support::{PROFILES_TOKEN, Server, WRITE_KEY, basic};

/// Device 1 browses anonymously and signs in; device 2 browses and signs in as the same
/// user (a merge); the user joins an account; an alias links a third anonymous id.
fn fixture(tag: &str, host: &str) -> Value {
    let user = format!("{tag}-user");
    let (a1, a2, a3) = (
        format!("{tag}-a1"),
        format!("{tag}-a2"),
        format!("{tag}-a3"),
    );
    json!({
        "host": host,
        "writeKey": WRITE_KEY,
        "calls": [
            {"type": "track", "anonymousId": a1, "event": "Product Viewed", "properties": {"sku": "s1"}},
            {"type": "identify", "userId": user, "anonymousId": a1,
             "traits": {"email": format!("{tag}@example.com"), "plan": "free", "name": "Zoë"}},
            {"type": "page", "anonymousId": a2, "name": "Pricing", "properties": {"path": "/pricing"}},
            {"type": "identify", "userId": user, "anonymousId": a2, "traits": {"plan": "team"}},
            {"type": "group", "userId": user, "groupId": format!("{tag}-org"), "traits": {"name": "Acme"}},
            {"type": "alias", "userId": user, "previousId": a3},
        ],
    })
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .get(server.url(path))
        .header("authorization", basic(PROFILES_TOKEN))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn run(tag: &str, cmd: Command, needed: &[(&str, PathBuf)]) {
    if !tools_present(tag, needed) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let fx = fixture(tag, &server.url(""));
    let mut cmd = cmd;
    cmd.current_dir(sdk_dir());
    let out = run_with_timeout(cmd, fx.to_string().as_bytes(), Duration::from_secs(60));
    let report = out.report(tag);
    assert_eq!(report["errors"], json!([]), "{report}");
    let sent: Vec<String> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent.len(), 6);

    let base = "/v1/spaces/acme/collections/users/profiles";
    let ids = [
        format!("user_id:{tag}-user"),
        format!("anonymous_id:{tag}-a1"),
        format!("anonymous_id:{tag}-a2"),
        format!("anonymous_id:{tag}-a3"),
        format!("email:{tag}@example.com"),
    ];
    // Wait until the processor has applied all six events.
    let started = Instant::now();
    loop {
        let (status, body) = get(&server, &format!("{base}/{}/events?limit=100", ids[3]));
        if status == 200 && body["data"].as_array().map_or(0, Vec::len) == 6 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "profile not complete: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answers = Vec::new();
    for id in &ids {
        let (s1, traits) = get(&server, &format!("{base}/{id}/traits?limit=200"));
        let (s2, external) = get(&server, &format!("{base}/{id}/external_ids?limit=100"));
        let (s3, events) = get(&server, &format!("{base}/{id}/events?limit=100"));
        assert_eq!((s1, s2, s3), (200, 200, 200), "{id}");
        answers.push((id, traits, external, events));
    }
    let (_, traits, external, events) = &answers[0];
    for (id, t, x, e) in &answers[1..] {
        // Bodies minus `cursor.url`, which echoes the request.
        assert_eq!(
            t["traits"], traits["traits"],
            "traits of {id} differ from the user's"
        );
        assert_eq!(
            x["data"], external["data"],
            "external ids of {id} differ from the user's"
        );
        assert_eq!(
            e["data"], events["data"],
            "events of {id} differ from the user's"
        );
    }
    // Latest identify wins; the first identify's other traits stay.
    assert_eq!(traits["traits"]["plan"], "team", "{traits}");
    assert_eq!(traits["traits"]["name"], "Zoë", "{traits}");
    assert_eq!(traits["traits"]["email"], format!("{tag}@example.com"));
    let mut kinds: Vec<String> = external["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            format!(
                "{}:{}",
                x["type"].as_str().unwrap(),
                x["id"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    let mut want: Vec<String> = ids.to_vec();
    want.sort();
    assert_eq!(kinds, want);
    let mut got: Vec<String> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message_id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut sent = sent;
    sent.sort();
    assert_eq!(
        got, sent,
        "the merged profile's events are every message the SDK sent"
    );
    // The account and its link back to the person.
    let (status, links) = get(&server, &format!("{base}/user_id:{tag}-user/links"));
    assert_eq!(status, 200);
    assert!(links.to_string().contains(&format!("{tag}-org")), "{links}");
    // And the merge is explained.
    let resp = reqwest::blocking::Client::new()
        .get(server.url(&format!("/api/v1/profiles/anonymous_id:{tag}-a2/merges")))
        .bearer_auth(PROFILES_TOKEN)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let merges: Value = resp.json().unwrap();
    assert!(
        merges.to_string().contains(&sent_identify_id(&report)),
        "{merges}"
    );
}

/// The messageId of the second identify (the call that merged the two devices).
fn sent_identify_id(report: &Value) -> String {
    report["sent"][3]["messageId"].as_str().unwrap().to_string()
}

#[test]
fn segment_analytics_node_merged_profile() {
    let nm = sdk_dir().join("node_modules");
    run(
        "segment-node",
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
fn segment_analytics_python_merged_profile() {
    let venv = sdk_dir().join(".venv");
    run(
        "segment-python",
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
