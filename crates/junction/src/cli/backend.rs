//! Where the read-only commands (`profiles`, `audiences`, `traits`) get the API's bodies: the
//! running server, or the stopped data dir opened here.
//!
//! Contract: when a server holds the data dir's log (its `LOCK`), [`Backend::call`] sends the
//! request to that server (address from the config, `JUNCTION_LISTEN` or `--listen`, an
//! unspecified IP asked on localhost; `Authorization: Bearer` with the first configured
//! token allowing the command's scope — `admin` allows every scope —, in dev mode the
//! generated admin token). Otherwise [`Backend::open`] opens the data dir itself, holding the
//! log's lock so no server starts meanwhile: Unify applies the log to its end (progress on a
//! TTY; the result is committed, as the server would), Compute computes every definition
//! over the history, and each call renders its body with the function the HTTP handler
//! uses. Either way a call answers the API's body or its error ([`ApiFailure`]); failing to
//! reach the server, or to open the data dir, is an error of its own.

use std::fs::{File, OpenOptions, TryLockError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use super::Location;
use crate::compute::Compute;
use crate::compute::registry::Snapshot;
use crate::config::Config;
use crate::http::error::ApiError;
use crate::unify::Unify;

/// How to find the server, or the data dir.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Address of the running server (default: from the config, else 127.0.0.1:8088).
    #[arg(long, env = "JUNCTION_LISTEN")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub location: Location,
}

/// A request to the API, as the server's routes take it (path and query string).
pub enum Request {
    Get(String),
    Post(String, Value),
}

impl Request {
    fn describe(&self) -> String {
        match self {
            Request::Get(url) => format!("GET {url}"),
            Request::Post(url, _) => format!("POST {url}"),
        }
    }
}

/// An error answered by the API (by the server, or by its functions offline).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}{message}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// From a server: which server answered what to which request.
    pub origin: Option<String>,
}

impl From<ApiError> for ApiFailure {
    fn from(e: ApiError) -> Self {
        ApiFailure {
            status: e.status.as_u16(),
            code: e.code.into(),
            message: e.message,
            origin: None,
        }
    }
}

/// The data dir opened here (see the module docs).
pub struct Offline {
    pub config: Config,
    pub unify: Unify,
    /// Every definition (config file and API), computed here.
    pub compute: Snapshot,
    /// The log's lock, held so that no server starts while the state is written.
    _lock: File,
}

/// The running server.
pub struct Remote {
    addr: SocketAddr,
    token: String,
    workspace: String,
    runtime: tokio::runtime::Runtime,
}

pub enum Backend {
    Remote(Remote),
    Offline(Box<Offline>),
}

impl Backend {
    /// The running server, or the data dir when none holds it; `scope` is what the
    /// command's routes require of the token.
    pub fn open(c: &Connection, scope: &str) -> anyhow::Result<Backend> {
        let overrides = c.location.overrides(c.listen.clone());
        let data_dir = crate::config::resolve_data_dir(&overrides)?;
        let log_dir = data_dir.join("log");
        if !log_dir.exists() {
            bail!(
                "no event log in {} (has the server run with this data dir?)",
                data_dir.display()
            );
        }
        let config = crate::config::load(&overrides)?;
        match try_lock(&log_dir)? {
            None => Self::remote(config, scope),
            Some(lock) => Self::offline(config, lock),
        }
    }

    fn remote(config: Config, scope: &str) -> anyhow::Result<Backend> {
        let token = config
            .tokens
            .iter()
            .find(|t| t.allows(scope))
            .with_context(|| {
                format!(
                    "the data dir is in use by a running server, and no configured token has the `{scope}` scope to ask it"
                )
            })?
            .secret
            .clone();
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Backend::Remote(Remote {
            addr,
            token,
            workspace: config.workspace,
            runtime,
        }))
    }

    fn offline(config: Config, lock: File) -> anyhow::Result<Backend> {
        let bar = super::progress(None, "{spinner} applying the event log: {msg}");
        let unify = crate::unify::processor::open_and_catch_up(
            &config.data_dir,
            config.identity.clone(),
            &mut |offset, applied| {
                bar.set_message(format!("offset {offset}, {applied} events applied"))
            },
        )
        .with_context(|| format!("cannot read the profiles in {}", config.data_dir.display()))?;
        bar.set_message("computing traits and audiences");
        let compute = Compute::new(
            &config.definitions,
            std::sync::Arc::new(crate::clock::SystemClock),
            config.compute_time_lag,
        );
        crate::compute::compute_offline(&compute, &unify, &config.log.dir)
            .with_context(|| format!("cannot compute traits in {}", config.data_dir.display()))?;
        let compute = Snapshot::of(
            std::sync::Arc::new(config.definitions.clone()),
            std::sync::Arc::new(compute),
        );
        bar.finish_and_clear();
        Ok(Backend::Offline(Box::new(Offline {
            config,
            unify,
            compute,
            _lock: lock,
        })))
    }

    pub fn workspace(&self) -> &str {
        match self {
            Backend::Remote(r) => &r.workspace,
            Backend::Offline(o) => &o.config.workspace,
        }
    }

    /// Whether the data dir was opened here (no server runs).
    pub fn is_offline(&self) -> bool {
        matches!(self, Backend::Offline(_))
    }

    /// The API's answer to `request`: the server's, or `offline`'s on the data dir opened
    /// here (which must render what the route's handler renders).
    pub fn call(
        &self,
        request: Request,
        offline: impl FnOnce(&Offline) -> Result<Value, ApiError>,
    ) -> anyhow::Result<Result<Value, ApiFailure>> {
        let r = match self {
            Backend::Offline(o) => return Ok(offline(o).map_err(ApiFailure::from)),
            Backend::Remote(r) => r,
        };
        let addr = r.addr;
        let (status, bytes) = r
            .runtime
            .block_on(send(addr, &request, &r.token))
            .with_context(|| format!("cannot reach the running server at http://{addr} (the data dir is in use by it)"))?;
        let body = serde_json::from_slice::<Value>(&bytes);
        if status == 200 {
            return body.map(Ok).with_context(|| {
                format!(
                    "the server at http://{addr} answered {} with a body that is not JSON",
                    request.describe()
                )
            });
        }
        let body = body.unwrap_or(Value::Null);
        let field = |name: &str| {
            body.pointer(&format!("/error/{name}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(Err(ApiFailure {
            status,
            code: field("code").unwrap_or_default(),
            message: field("message")
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            origin: Some(format!(
                "the server at http://{addr} answered {status} to {}",
                request.describe()
            )),
        }))
    }
}

/// Follows `cursor.next` from `first`: `next_page(next)` answers the page after `next`, or
/// `None` to stop there. `data` lists are concatenated and `traits` maps merged; the last
/// page's cursor stays.
pub fn follow_pages(
    mut body: Value,
    mut next_page: impl FnMut(String) -> anyhow::Result<Option<Value>>,
) -> anyhow::Result<Value> {
    loop {
        let next = match body.pointer("/cursor/has_more") {
            Some(Value::Bool(true)) => body["cursor"]["next"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            _ => return Ok(body),
        };
        let Some(mut more) = next_page(next)? else {
            return Ok(body);
        };
        if let (Some(Value::Object(all)), Some(Value::Object(page))) =
            (body.get_mut("traits"), more.get_mut("traits"))
        {
            all.append(page);
        }
        if let (Some(Value::Array(all)), Some(Value::Array(page))) =
            (body.get_mut("data"), more.get_mut("data"))
        {
            all.append(page);
        }
        body["cursor"] = more["cursor"].take();
    }
}

/// A percent-encoded path segment (`+` as `%2B`, as Segment asks; `:` and `@` kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A query-string component (form encoding).
fn encode_query(s: &str) -> String {
    encode_segment(s).replace("%20", "+")
}

/// `k=v&...`, each value encoded.
pub fn query_string(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_query(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `Some(lock)` when no server holds the log; `None` when one does.
fn try_lock(log_dir: &Path) -> anyhow::Result<Option<File>> {
    let path = log_dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

async fn send(
    addr: SocketAddr,
    request: &Request,
    token: &str,
) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let (builder, body) = match request {
        Request::Get(url) => (
            hyper::Request::get(format!("http://{addr}{url}")),
            bytes::Bytes::new(),
        ),
        Request::Post(url, body) => (
            hyper::Request::post(format!("http://{addr}{url}"))
                .header(hyper::header::CONTENT_TYPE, "application/json"),
            serde_json::to_vec(body)?.into(),
        ),
    };
    // Both the Profile API and the management API take a bearer token.
    let req = builder
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Full::new(body))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .context("timed out")??;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_percent_encoded_as_segment_asks() {
        assert_eq!(encode_segment("email:a+b@x.io"), "email:a%2Bb@x.io");
        assert_eq!(encode_segment("user_id:a/b c"), "user_id:a%2Fb%20c");
        assert_eq!(encode_segment("user_id:é"), "user_id:%C3%A9");
        assert_eq!(
            query_string(&[("include", "a b,c".into())]),
            "include=a+b%2Cc"
        );
    }

    #[test]
    fn pages_are_joined_until_the_last_or_a_stop() {
        let page = |data: Value, more: bool, next: &str| json!({"data": data, "cursor": {"has_more": more, "next": next}});
        let mut asked = Vec::new();
        let all = follow_pages(page(json!([1, 2]), true, "2"), |next| {
            asked.push(next.clone());
            Ok(Some(match next.as_str() {
                "2" => page(json!([3]), true, "3"),
                _ => page(json!([4]), false, ""),
            }))
        })
        .unwrap();
        assert_eq!(asked, ["2", "3"]);
        assert_eq!(all, page(json!([1, 2, 3, 4]), false, ""));
        let stopped = follow_pages(page(json!([1]), true, "1"), |_| Ok(None)).unwrap();
        assert_eq!(stopped, page(json!([1]), true, "1"));
    }

    #[test]
    fn a_failure_names_the_server_that_answered() {
        let offline = ApiFailure::from(ApiError::not_found("no audience with the key `x`").api());
        assert_eq!(offline.to_string(), "no audience with the key `x`");
        let remote = ApiFailure {
            origin: Some("the server at http://127.0.0.1:1 answered 404 to GET /x".into()),
            ..offline
        };
        assert_eq!(
            remote.to_string(),
            "the server at http://127.0.0.1:1 answered 404 to GET /x: no audience with the key `x`"
        );
    }
}
