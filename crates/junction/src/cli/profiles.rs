//! `junction profiles get|explain <id_type>:<value>`: a profile (or, with `group_id:`, an
//! account) as the Profile API shows it, and the merges that formed it.
//!
//! Contract: the bodies come from the running server's Profile API, or from the stopped
//! data dir rendered with the same code (see `backend.rs`; token scope `profiles:read`).
//! `--json` prints the API bodies; the default is a readable summary. An unknown profile is
//! an error.

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::backend::{ApiFailure, Backend, Connection, Request, encode_segment, query_string};
use crate::http::profiles::{self as api, ProfileRequest};
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
    #[command(flatten)]
    pub connection: Connection,
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
    let backend = Backend::open(&t.connection, api::SCOPE)?;
    let collection = collection_of(&t.id);
    let not_found = || anyhow::anyhow!("profile `{}` was not found", t.id);
    let mut bodies = Map::new();
    let traits = pages(
        &backend,
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
        let body = pages(&backend, collection, &t.id, resource, &params)?.ok_or_else(not_found)?;
        bodies.insert(resource.as_str().into(), body);
    }
    if args.events {
        let body = call(
            &backend,
            collection,
            &t.id,
            Resource::Events,
            &[("limit", EVENTS_SHOWN.to_string())],
        )?
        .ok_or_else(not_found)?;
        bodies.insert("events".into(), body);
    }
    if collection == Collection::Users {
        let body = merges(&backend, &t.id)?.ok_or_else(not_found)?;
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
    let backend = Backend::open(&t.connection, api::SCOPE)?;
    let body = merges(&backend, &t.id)?
        .ok_or_else(|| anyhow::anyhow!("profile `{}` was not found", t.id))?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", explanation(&t.id, &body));
    }
    Ok(())
}

/// One resource's body; `None` when the profile does not exist.
fn call(
    backend: &Backend,
    collection: Collection,
    id: &str,
    resource: Resource,
    params: &[(&str, String)],
) -> anyhow::Result<Option<Value>> {
    let mut url = format!(
        "/v1/spaces/{}/collections/{}/profiles/{}/{}",
        encode_segment(backend.workspace()),
        collection.as_str(),
        encode_segment(id),
        resource.as_str()
    );
    if !params.is_empty() {
        url.push('?');
        url.push_str(&query_string(params));
    }
    let answer = backend.call(Request::Get(url.clone()), |o| {
        let pairs: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        ProfileRequest::parse(collection, id, resource, &pairs, url)
            .and_then(|req| api::render(&o.unify, &o.compute, &req))
    })?;
    found(answer)
}

/// Every page of a resource, joined (see [`super::backend::follow_pages`]).
fn pages(
    backend: &Backend,
    collection: Collection,
    id: &str,
    resource: Resource,
    params: &[(&str, String)],
) -> anyhow::Result<Option<Value>> {
    let Some(body) = call(backend, collection, id, resource, params)? else {
        return Ok(None);
    };
    super::backend::follow_pages(body, |next| {
        let mut more_params = params.to_vec();
        more_params.push(("next", next));
        call(backend, collection, id, resource, &more_params)
    })
    .map(Some)
}

fn merges(backend: &Backend, id: &str) -> anyhow::Result<Option<Value>> {
    let url = format!("/api/v1/profiles/{}/merges", encode_segment(id));
    found(backend.call(Request::Get(url), |o| api::render_merges(&o.unify, id))?)
}

/// The body, `None` for "Profile was not found.", else the API's error.
fn found(answer: Result<Value, ApiFailure>) -> anyhow::Result<Option<Value>> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(f) if f.status == 404 && f.message == api::profile_not_found().message => Ok(None),
        Err(f) => Err(f.into()),
    }
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
    use serde_json::json;

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
