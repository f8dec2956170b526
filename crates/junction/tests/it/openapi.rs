//! The OpenAPI document (`/api/v1/openapi.json`) against the router: every documented
//! operation is routed (and refuses a request without a token when it is secured), every
//! undocumented method of a documented path is a 405, and every management route in the
//! source is documented.

use serde_json::Value;

use crate::support::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// A concrete path for a templated one.
fn concrete(path: &str) -> String {
    path.replace("{key}", "nope")
        .replace("{id}", "user_id:nobody")
}

/// Every `"/api/v1/..."`, `"/health"`, `"/ready"`, `"/metrics"` route string in the HTTP
/// sources.
fn routes_in_source() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for part in text.split(".route(").skip(1) {
            let route = part.trim_start().trim_start_matches('"');
            let route = &route[..route.find('"').unwrap()];
            if route.starts_with("/api/v1/") || ["/health", "/ready", "/metrics"].contains(&route) {
                found.push(route.to_string());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let app = TestApp::new();
    let (s, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();

    let mut documented: Vec<String> = paths.keys().cloned().collect();
    documented.sort();
    assert_eq!(
        documented,
        routes_in_source(),
        "documented paths vs routes in src/http"
    );

    for (path, item) in paths {
        let url = concrete(path);
        for method in METHODS {
            let op = &item[method.to_lowercase()];
            let req = axum::http::Request::builder()
                .method(method)
                .uri(&url)
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let (status, _, body) = app.call(req).await;
            if op.is_null() {
                assert_eq!(status, 405, "{method} {path} is not documented: {body}");
                continue;
            }
            let secured = op["security"].as_array().is_none_or(|s| !s.is_empty());
            if secured {
                assert_eq!(status, 401, "{method} {path} without a token: {body}");
                let scope = op["x-scope"].as_str().unwrap_or_default();
                assert!(
                    junction::config::SCOPES.contains(&scope),
                    "{method} {path}: scope `{scope}`"
                );
            } else {
                assert!(
                    status == 200 || status == 503,
                    "{method} {path}: {status} {body}"
                );
            }
            for code in op["responses"].as_object().unwrap().keys() {
                assert!(
                    code.parse::<u16>().is_ok(),
                    "{method} {path}: response `{code}`"
                );
            }
        }
    }

    // Every reference resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", &part[..part.find('"').unwrap()]);
        assert!(
            doc.pointer(&pointer).is_some_and(|v: &Value| !v.is_null()),
            "{pointer}"
        );
    }
}
