//! `junction audiences list|get|members|preview` and `junction traits list|get`: computed
//! traits and audiences as the management API shows them (`http/compute.rs`).
//!
//! Contract: the bodies come from the running server, or from the stopped data dir rendered
//! with the handlers' own functions (see `backend.rs`; token scope `profiles:read`), so
//! `--json` prints the same JSON either way: `list` the API's `data`, `get` the definition,
//! `members` every member (all pages, or the first `--limit`), `preview` the API's body
//! without `took_ms` (the timing of one run, not data; the readable form shows it). The
//! default is a readable form. Size history is kept in a running server's memory: `get`
//! shows it from a server and says so offline. API errors (an unknown key, an invalid
//! expression with its column) are errors.

use std::fmt::Write as _;
use std::num::NonZeroUsize;

use clap::{Args, Subcommand};
use junction_core::compute::DefKind;
use serde_json::Value;

use super::backend::{Backend, Connection, Request, encode_segment, follow_pages, query_string};
use crate::http::compute::{self as api, MAX_MEMBERS_LIMIT, MembersQuery, PreviewRequest};

/// Size-history points `audiences get` shows (the latest).
const HISTORY_SHOWN: usize = 10;

#[derive(Debug, Subcommand)]
pub enum AudiencesCommand {
    /// List the audiences: key, name, size, status.
    List(ListArgs),
    /// Show one audience: every field, and its size history (from a running server).
    Get(GetArgs),
    /// List an audience's members with their external ids.
    Members(MembersArgs),
    /// Evaluate an expression as an audience over current data, without saving it.
    Preview(PreviewArgs),
}

#[derive(Debug, Subcommand)]
pub enum TraitsCommand {
    /// List the computed traits: key, status, expression.
    List(ListArgs),
    /// Show one computed trait.
    Get(GetArgs),
}

#[derive(Debug, Args)]
pub struct Output {
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The definition's key.
    pub key: String,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    /// The audience's key.
    pub key: String,
    /// Show at most this many members (default: all).
    #[arg(long)]
    pub limit: Option<NonZeroUsize>,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The expression (docs/expressions.md), e.g. `count(event = "Viewed", within = 7d) >= 1`.
    pub expr: String,
    /// Sample members to show (default 10, at most 100).
    #[arg(long)]
    pub sample: Option<usize>,
    #[command(flatten)]
    pub output: Output,
}

pub fn run_audiences(command: AudiencesCommand) -> anyhow::Result<()> {
    match command {
        AudiencesCommand::List(args) => list(DefKind::Audience, &args.output),
        AudiencesCommand::Get(args) => get(DefKind::Audience, &args),
        AudiencesCommand::Members(args) => members(&args),
        AudiencesCommand::Preview(args) => preview(&args),
    }
}

pub fn run_traits(command: TraitsCommand) -> anyhow::Result<()> {
    match command {
        TraitsCommand::List(args) => list(DefKind::ComputedTrait, &args.output),
        TraitsCommand::Get(args) => get(DefKind::ComputedTrait, &args),
    }
}

/// The API's collection of `kind`.
fn route(kind: DefKind) -> &'static str {
    match kind {
        DefKind::ComputedTrait => "/api/v1/computed-traits",
        DefKind::Audience => "/api/v1/audiences",
    }
}

fn open(output: &Output) -> anyhow::Result<Backend> {
    Backend::open(&output.connection, api::SCOPE)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn list(kind: DefKind, output: &Output) -> anyhow::Result<()> {
    let backend = open(output)?;
    let body = backend.call(Request::Get(route(kind).into()), |o| {
        Ok(api::list_body(&o.compute, kind))
    })??;
    let data = body["data"].as_array().cloned().unwrap_or_default();
    if output.json {
        return print_json(&Value::Array(data));
    }
    print!("{}", table(kind, &data));
    Ok(())
}

fn get(kind: DefKind, args: &GetArgs) -> anyhow::Result<()> {
    let backend = open(&args.output)?;
    let url = format!("{}/{}", route(kind), encode_segment(&args.key));
    let body = backend.call(Request::Get(url.clone()), |o| {
        api::definition_body(&o.compute, kind, &args.key)
    })??;
    if args.output.json {
        return print_json(&body);
    }
    let mut out = fields(kind, &body);
    if kind == DefKind::Audience {
        if backend.is_offline() {
            out.push_str(
                "\nsize history: none offline (a running server keeps it in memory, from its start)\n",
            );
        } else {
            let history = backend.call(Request::Get(format!("{url}/size-history")), |o| {
                api::size_history_body(&o.compute, &args.key)
            })??;
            out.push_str(&size_history(&history));
        }
    }
    print!("{out}");
    Ok(())
}

fn members(args: &MembersArgs) -> anyhow::Result<()> {
    let backend = open(&args.output)?;
    let per_page = |fetched: usize| {
        args.limit
            .map_or(MAX_MEMBERS_LIMIT, |cap| cap.get().saturating_sub(fetched))
            .min(MAX_MEMBERS_LIMIT)
    };
    let page = |next: Option<String>, limit: usize| -> anyhow::Result<Value> {
        let mut params = vec![("limit", limit.to_string())];
        params.extend(next.iter().map(|n| ("next", n.clone())));
        let url = format!(
            "/api/v1/audiences/{}/members?{}",
            encode_segment(&args.key),
            query_string(&params)
        );
        let q = MembersQuery {
            limit: Some(limit.to_string()),
            next,
        };
        Ok(backend.call(Request::Get(url), |o| {
            api::members_body(&o.compute, &o.unify, &args.key, &q)
        })??)
    };
    let count = |body: &Value| body["data"].as_array().map_or(0, Vec::len);
    let first = page(None, per_page(0))?;
    let mut fetched = count(&first);
    let all = follow_pages(first, |next| match per_page(fetched) {
        0 => Ok(None),
        limit => {
            let more = page(Some(next), limit)?;
            fetched += count(&more);
            Ok(Some(more))
        }
    })?;
    let data = all["data"].as_array().cloned().unwrap_or_default();
    if args.output.json {
        return print_json(&Value::Array(data));
    }
    let more = all.pointer("/cursor/has_more") == Some(&Value::Bool(true));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} member{} of audience `{}`{}",
        data.len(),
        if data.len() == 1 { "" } else { "s" },
        args.key,
        if more {
            " (the first ones: more remain, raise --limit)"
        } else {
            ""
        }
    );
    for m in &data {
        let _ = writeln!(out, "  {}", member(m));
    }
    print!("{out}");
    Ok(())
}

fn preview(args: &PreviewArgs) -> anyhow::Result<()> {
    let backend = open(&args.output)?;
    let req = PreviewRequest {
        expr: args.expr.clone(),
        sample: args.sample,
    };
    let url = "/api/v1/audiences/preview".to_string();
    let mut body = match backend.call(Request::Post(url, serde_json::to_value(&req)?), |o| {
        api::preview_body(&o.compute.serving, &o.unify, &o.config.log.dir, &req)
    })? {
        Ok(body) => body,
        Err(f) if f.code == "invalid_expression" => {
            return Err(anyhow::Error::new(f).context("invalid expression"));
        }
        Err(f) => return Err(f.into()),
    };
    let took_ms = body
        .as_object_mut()
        .and_then(|b| b.remove("took_ms"))
        .unwrap_or_default();
    if args.output.json {
        return print_json(&body);
    }
    let mut out = String::new();
    let from = match body["computed_from"].as_str() {
        Some("state") => "from the live state",
        _ => "from a pass over the log",
    };
    let _ = writeln!(
        out,
        "{} of {} profiles match (computed {from} in {took_ms} ms, nothing saved)",
        body["size"], body["profiles"]
    );
    let sample = body["sample"].as_array().cloned().unwrap_or_default();
    if !sample.is_empty() {
        let _ = writeln!(
            out,
            "\nsample ({}, lowest profile ids first):",
            sample.len()
        );
        for m in &sample {
            let _ = writeln!(out, "  {}", member(m));
        }
    }
    print!("{out}");
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `profile 3  user_id:u1, anonymous_id:a1`.
fn member(m: &Value) -> String {
    let ids: Vec<String> = m["external_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| format!("{}:{}", text(&e["type"]), text(&e["id"])))
                .collect()
        })
        .unwrap_or_default();
    format!("profile {}  {}", text(&m["profile_id"]), ids.join(", "))
}

/// The readable `list`: a header and one aligned row per definition.
fn table(kind: DefKind, data: &[Value]) -> String {
    let (plural, section, columns): (&str, &str, &[&str]) = match kind {
        DefKind::Audience => (
            "audiences",
            "[[audiences]]",
            &["key", "name", "size", "status"],
        ),
        DefKind::ComputedTrait => (
            "computed traits",
            "[[computed_traits]]",
            &["key", "status", "expr"],
        ),
    };
    if data.is_empty() {
        return format!("no {plural} (define them with {section} in the config file)\n");
    }
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_uppercase()).collect()];
    rows.extend(
        data.iter()
            .map(|d| columns.iter().map(|c| text(&d[*c])).collect()),
    );
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The readable `get`: every field, the usual ones first.
fn fields(kind: DefKind, body: &Value) -> String {
    const ORDER: [&str; 7] = [
        "key",
        "name",
        "description",
        "expr",
        "size",
        "status",
        "managed_by",
    ];
    let Some(object) = body.as_object() else {
        return format!("{body}\n");
    };
    let mut keys: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|k| object.contains_key(*k))
        .collect();
    keys.extend(
        object
            .keys()
            .map(String::as_str)
            .filter(|k| !ORDER.contains(k)),
    );
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    let mut out = format!("{kind} {}\n", text(&body["key"]));
    for k in keys {
        let line = format!("  {k:<width$}  {}", text(&object[k]));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The readable size history: the latest points.
fn size_history(body: &Value) -> String {
    let points = body["data"].as_array().cloned().unwrap_or_default();
    if points.is_empty() {
        return "\nsize history: no point yet\n".into();
    }
    let shown = &points[points.len().saturating_sub(HISTORY_SHOWN)..];
    let mut out = format!(
        "\nsize history (the last {} of {} changes):\n",
        shown.len(),
        points.len()
    );
    for p in shown {
        let _ = writeln!(out, "  {}  {}", text(&p["at"]), p["size"]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_audience_table_is_aligned() {
        let data = [
            json!({"key": "buyers", "name": "Buyers", "size": 2, "status": "ready"}),
            json!({"key": "recent_viewers", "name": "recent_viewers", "size": 15, "status": "computing 43%"}),
        ];
        assert_eq!(
            table(DefKind::Audience, &data),
            "KEY             NAME            SIZE  STATUS\n\
             buyers          Buyers          2     ready\n\
             recent_viewers  recent_viewers  15    computing 43%\n"
        );
        assert_eq!(
            table(DefKind::ComputedTrait, &[]),
            "no computed traits (define them with [[computed_traits]] in the config file)\n"
        );
    }

    #[test]
    fn a_definition_shows_every_field_the_usual_ones_first() {
        let body = json!({"key": "ltv", "expr": "sum(x)", "description": "", "managed_by": "config",
                          "status": "ready", "extra": true});
        assert_eq!(
            fields(DefKind::ComputedTrait, &body),
            "computed trait ltv\n  key          ltv\n  description\n  expr         sum(x)\n  status       ready\n  managed_by   config\n  extra        true\n"
        );
    }

    #[test]
    fn a_member_lists_its_external_ids() {
        let m = json!({"profile_id": "3", "external_ids": [
            {"type": "user_id", "id": "u1"}, {"type": "anonymous_id", "id": "a1"}]});
        assert_eq!(member(&m), "profile 3  user_id:u1, anonymous_id:a1");
    }
}
