//! `junction profiles get|explain <id_type>:<value>`: a profile (or, with `group_id:`, an
//! account) as the Profile API shows it, and the merges that formed it.
//!
//! Contract: when a server holds the data dir's log (its `LOCK`), the command asks that
//! server's Profile API (address from the config, `JUNCTION_LISTEN` or `--listen`; token:
//! the first configured one allowing `profiles:read`, in dev mode the generated admin
//! token). Otherwise it opens the data dir itself, holding the log's lock so no server
//! starts meanwhile, applies the log to its end (progress on a TTY; the result is
//! committed, as the server would) and renders the same bodies with the same code. `--json`
//! prints the API bodies; the default is a readable summary. An unknown profile is an error.

use std::fs::{File, OpenOptions, TryLockError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::Location;
use crate::config::Config;
use crate::http::profiles::{self as api, ProfileRequest};
use crate::unify::Unify;
use crate::unify::view::{
    ACCOUNT_ID_TYPE, Collection, MAX_LIMIT, MAX_LINKS_LIMIT, MAX_TRAITS_LIMIT, Resource,
};

/// Events shown by `get --events`.
const EVENTS_SHOWN: usize = 20;

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Show a profile: identifiers, traits, metadata, accounts (`group_id:<value>`: an account).
    Get(GetArgs),
    /// Explain how a profile was formed: its identifiers and the merges that joined them.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct Target {
    /// `<id_type>:<value>`, e.g. `user_id:u1`, `email:a@example.com`, `group_id:acme`.
    pub id: String,
    /// Print the Profile API bodies as JSON.
    #[arg(long)]
    pub json: bool,
    /// Address of the running server (default: from the config, else 127.0.0.1:8088).
    #[arg(long, env = "JUNCTION_LISTEN")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub location: Location,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also show the latest events.
    #[arg(long)]
    pub events: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub target: Target,
}

pub fn run(command: ProfilesCommand) -> anyhow::Result<()> {
    match command {
        ProfilesCommand::Get(args) => get(&args),
        ProfilesCommand::Explain(args) => explain(&args.target),
    }
}

fn collection_of(id: &str) -> Collection {
    match id.split_once(':') {
        Some((ACCOUNT_ID_TYPE, _)) => Collection::Accounts,
        _ => Collection::Users,
    }
}

fn get(args: &GetArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let backend = Backend::open(t)?;
    let collection = collection_of(&t.id);
    let not_found = || anyhow::anyhow!("profile `{}` was not found", t.id);
    let mut bodies = Map::new();
    let traits = backend
        .pages(
            collection,
            &t.id,
            Resource::Traits,
            &[
                ("verbose", "true".into()),
                ("limit", MAX_TRAITS_LIMIT.to_string()),
            ],
        )?
        .ok_or_else(not_found)?;
    bodies.insert("traits".into(), traits);
    for (resource, limit) in [
        (Resource::ExternalIds, MAX_LIMIT),
        (Resource::Metadata, 0),
        (Resource::Links, MAX_LINKS_LIMIT),
    ] {
        let params = match limit {
            0 => Vec::new(),
            n => vec![("limit", n.to_string())],
        };
        let body = backend
            .pages(collection, &t.id, resource, &params)?
            .ok_or_else(not_found)?;
        bodies.insert(resource.as_str().into(), body);
    }
    if args.events {
        let body = backend
            .call(
                collection,
                &t.id,
                Resource::Events,
                &[("limit", EVENTS_SHOWN.to_string())],
            )?
            .ok_or_else(not_found)?;
        bodies.insert("events".into(), body);
    }
    if collection == Collection::Users {
        let body = backend.merges(&t.id)?.ok_or_else(not_found)?;
        bodies.insert("merges".into(), body);
    }
    let bodies = Value::Object(bodies);
    if t.json {
        println!("{}", serde_json::to_string_pretty(&bodies)?);
    } else {
        print!("{}", summary(&t.id, collection, &bodies));
    }
    Ok(())
}

fn explain(t: &Target) -> anyhow::Result<()> {
    if collection_of(&t.id) == Collection::Accounts {
        bail!(
            "`{}` is an account: accounts are never merged (see `junction profiles get {}`)",
            t.id,
            t.id
        );
    }
    let backend = Backend::open(t)?;
    let body = backend
        .merges(&t.id)?
        .ok_or_else(|| anyhow::anyhow!("profile `{}` was not found", t.id))?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", explanation(&t.id, &body));
    }
    Ok(())
}

/// Where the bodies come from: the running server, or the data dir opened here.
enum Backend {
    Remote {
        addr: SocketAddr,
        token: String,
        workspace: String,
        runtime: tokio::runtime::Runtime,
    },
    Local {
        unify: Box<Unify>,
        compute: Box<crate::compute::Compute>,
        workspace: String,
        /// The log's lock, held so that no server starts while the state is written.
        _lock: File,
    },
}

/// A percent-encoded path segment (`+` as `%2B`, as Segment asks; `:` and `@` kept).
fn encode_segment(s: &str) -> String {
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

fn query_string(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_query(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Backend {
    fn open(t: &Target) -> anyhow::Result<Backend> {
        let overrides = t.location.overrides(t.listen.clone());
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
            None => Self::remote(config),
            Some(lock) => Self::local(config, lock),
        }
    }

    fn remote(config: Config) -> anyhow::Result<Backend> {
        let token = config
            .tokens
            .iter()
            .find(|t| t.allows(api::SCOPE))
            .with_context(|| {
                format!(
                    "the data dir is in use by a running server, and no configured token has the `{}` scope to ask it",
                    api::SCOPE
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
        Ok(Backend::Remote {
            addr,
            token,
            workspace: config.workspace,
            runtime,
        })
    }

    fn local(config: Config, lock: File) -> anyhow::Result<Backend> {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} applying the event log: {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let unify = crate::unify::processor::open_and_catch_up(
            &config.data_dir,
            config.identity.clone(),
            &mut |offset, applied| {
                bar.set_message(format!("offset {offset}, {applied} events applied"))
            },
        )
        .with_context(|| format!("cannot read the profiles in {}", config.data_dir.display()))?;
        bar.set_message("computing traits and audiences");
        let compute = crate::compute::Compute::new(
            &config.definitions,
            std::sync::Arc::new(crate::clock::SystemClock),
            config.compute_time_lag,
        );
        crate::compute::compute_offline(&compute, &unify, &config.data_dir.join("log"))
            .with_context(|| format!("cannot compute traits in {}", config.data_dir.display()))?;
        bar.finish_and_clear();
        Ok(Backend::Local {
            compute: Box::new(compute),
            unify: Box::new(unify),
            workspace: config.workspace,
            _lock: lock,
        })
    }

    fn workspace(&self) -> &str {
        match self {
            Backend::Remote { workspace, .. } | Backend::Local { workspace, .. } => workspace,
        }
    }

    /// One resource's body; `None` when the profile does not exist.
    fn call(
        &self,
        collection: Collection,
        id: &str,
        resource: Resource,
        params: &[(&str, String)],
    ) -> anyhow::Result<Option<Value>> {
        let mut url = format!(
            "/v1/spaces/{}/collections/{}/profiles/{}/{}",
            encode_segment(self.workspace()),
            collection.as_str(),
            encode_segment(id),
            resource.as_str()
        );
        if !params.is_empty() {
            url.push('?');
            url.push_str(&query_string(params));
        }
        match self {
            Backend::Remote { .. } => self.get_remote(&url),
            Backend::Local { unify, compute, .. } => {
                let pairs: Vec<(String, String)> = params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                let result = ProfileRequest::parse(collection, id, resource, &pairs, url)
                    .and_then(|req| api::render(unify, compute, &req));
                local_result(result)
            }
        }
    }

    /// Every page of a resource, joined: `traits` maps merged, `data` lists concatenated,
    /// the last page's cursor.
    fn pages(
        &self,
        collection: Collection,
        id: &str,
        resource: Resource,
        params: &[(&str, String)],
    ) -> anyhow::Result<Option<Value>> {
        let Some(mut body) = self.call(collection, id, resource, params)? else {
            return Ok(None);
        };
        loop {
            let next = match body.pointer("/cursor/has_more") {
                Some(Value::Bool(true)) => body["cursor"]["next"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                _ => return Ok(Some(body)),
            };
            let mut more_params = params.to_vec();
            more_params.push(("next", next));
            let Some(mut more) = self.call(collection, id, resource, &more_params)? else {
                return Ok(Some(body));
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

    fn merges(&self, id: &str) -> anyhow::Result<Option<Value>> {
        match self {
            Backend::Remote { .. } => {
                self.get_remote(&format!("/api/v1/profiles/{}/merges", encode_segment(id)))
            }
            Backend::Local { unify, .. } => local_result(api::render_merges(unify, id)),
        }
    }

    fn get_remote(&self, url: &str) -> anyhow::Result<Option<Value>> {
        let Backend::Remote {
            addr,
            token,
            runtime,
            ..
        } = self
        else {
            unreachable!("remote backend");
        };
        let (status, bytes) = runtime
            .block_on(http_get(*addr, url, token))
            .with_context(|| format!("cannot reach the running server at http://{addr} (the data dir is in use by it)"))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| json!({"error": {"code": "?", "message": String::from_utf8_lossy(&bytes)}}),
        );
        match status {
            200 => Ok(Some(body)),
            404 if body.pointer("/error/message").and_then(Value::as_str)
                == Some("Profile was not found.") =>
            {
                Ok(None)
            }
            _ => bail!(
                "the server at http://{addr} answered {status} to GET {url}: {}",
                body.pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ),
        }
    }
}

fn local_result(
    result: Result<Value, crate::http::error::ApiError>,
) -> anyhow::Result<Option<Value>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status == 404 => Ok(None),
        Err(e) => bail!("{} ({})", e.message, e.code),
    }
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

async fn http_get(addr: SocketAddr, url: &str, token: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    // Both the Profile API and the management API take a bearer token.
    let req = hyper::Request::get(format!("http://{addr}{url}"))
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::new())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .context("timed out")??;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn id_of(e: &Value) -> String {
    format!("{}:{}", s(&e["type"]), s(&e["id"]))
}

/// One aligned line per identifier: which message added it, from which source, when.
fn write_identifiers(out: &mut String, ids: &[Value]) {
    use std::fmt::Write as _;
    let width = ids.iter().map(|e| id_of(e).len()).max().unwrap_or(0);
    for e in ids {
        let _ = writeln!(
            out,
            "  {:<width$}  added by message {} (source {}) at {}",
            id_of(e),
            s(&e["first_message_id"]),
            s(&e["source_id"]),
            s(&e["created_at"]),
        );
    }
}

/// The readable form of `get`.
fn summary(id: &str, collection: Collection, b: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let kind = match collection {
        Collection::Users => "profile",
        Collection::Accounts => "account",
    };
    match b.pointer("/merges/profile/id") {
        Some(n) => {
            let _ = writeln!(out, "{kind} {id} (profile {n})");
        }
        None => {
            let _ = writeln!(out, "{kind} {id}");
        }
    }
    let ids = b["external_ids"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(out, "\nidentifiers ({}):", ids.len());
    write_identifiers(&mut out, &ids);
    let traits = b["traits"]["traits"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(out, "\ntraits ({}):", traits.len());
    let width = traits.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in &traits {
        let _ = writeln!(
            out,
            "  {k:<width$} = {}  (source {}, {})",
            v["value"],
            s(&v["source_id"]),
            s(&v["updated_at"]),
        );
    }
    let m = &b["metadata"]["metadata"];
    let _ = writeln!(out, "\nmetadata:");
    let _ = writeln!(
        out,
        "  created {}  first message {} (source {})",
        s(&m["created_at"]),
        s(&m["first_message_id"]),
        s(&m["first_source_id"])
    );
    let _ = writeln!(
        out,
        "  updated {}  last message {} (source {})",
        s(&m["updated_at"]),
        s(&m["last_message_id"]),
        s(&m["last_source_id"])
    );
    let links = b["links"]["data"].as_array().cloned().unwrap_or_default();
    let linked = match collection {
        Collection::Users => "accounts",
        Collection::Accounts => "users",
    };
    let _ = writeln!(out, "\n{linked} ({}):", links.len());
    for l in &links {
        let ids: Vec<String> = l["external_ids"]
            .as_array()
            .map(|a| a.iter().map(id_of).collect())
            .unwrap_or_default();
        let _ = writeln!(out, "  {}", ids.join(", "));
    }
    if let Some(merges) = b.pointer("/merges/merges").and_then(Value::as_array) {
        let _ = writeln!(out, "\nmerges: {}", merges.len());
        if !merges.is_empty() {
            let _ = writeln!(out, "  (junction profiles explain {id})");
        }
    }
    if let Some(events) = b.pointer("/events/data").and_then(Value::as_array) {
        let _ = writeln!(out, "\nlatest events ({}):", events.len());
        for e in events {
            let what = match (&e["event"], &e["name"]) {
                (Value::String(ev), _) => format!(" {ev:?}"),
                (_, Value::String(name)) => format!(" {name:?}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} {}{what}  (source {}, message {})",
                s(&e["timestamp"]),
                s(&e["type"]),
                s(&e["source_id"]),
                s(&e["message_id"]),
            );
        }
    }
    out
}

/// The readable form of `explain`: identifiers, then the merge chain oldest first.
fn explanation(id: &str, b: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let profile = &b["profile"]["id"];
    let ids = b["profile"]["external_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let merges = b["merges"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{id} is profile {profile}: {} identifiers, {} merges",
        ids.len(),
        merges.len()
    );
    let _ = writeln!(out, "\nidentifiers (first seen first):");
    write_identifiers(&mut out, &ids);
    if merges.is_empty() {
        let _ = writeln!(
            out,
            "\nno merges: every identifier was added to this profile directly"
        );
        return out;
    }
    let _ = writeln!(out, "\nmerges (oldest first):");
    for m in &merges {
        let _ = writeln!(
            out,
            "  profile {} ← profile {} by message {}: {} + {} at {} (source {}, received {})",
            m["into"],
            m["from"],
            s(&m["message_id"]),
            s(&m["from_identifier"]),
            s(&m["into_identifier"]),
            s(&m["timestamp"]),
            s(&m["source_id"]),
            s(&m["received_at"]),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn explanation_shows_the_chain() {
        let body = json!({"profile": {"id": 3, "external_ids": [
            {"type": "anonymous_id", "id": "a1", "first_message_id": "m-0", "source_id": "web", "created_at": "t0"}]},
            "merges": [{"into": 3, "from": 7, "into_identifier": "user_id:u1", "from_identifier": "anonymous_id:a1",
                        "message_id": "m-1", "source_id": "web", "timestamp": "t1", "received_at": "t2"}]});
        let text = explanation("user_id:u1", &body);
        assert!(
            text.contains(
                "profile 3 ← profile 7 by message m-1: anonymous_id:a1 + user_id:u1 at t1"
            ),
            "{text}"
        );
        assert!(
            text.contains("anonymous_id:a1  added by message m-0"),
            "{text}"
        );
    }
}
