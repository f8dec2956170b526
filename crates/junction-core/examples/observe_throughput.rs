//! Times reading events into a `identity::Batch` (what the processor's reader does), over
//! stored events and over their identity projections.
//! Usage: observe_throughput <events.jsonl> [max events [rounds [projection]]]
use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use junction_core::event::{Limits, RequestMeta, normalize_one};
use junction_core::identity::{Batch, EventMeta, Rules};

/// Reads `events` into a batch cleared every 4,096 events; returns the identifiers read.
fn read_all<'a>(events: impl Iterator<Item = &'a [u8]>, rules: &Rules) -> usize {
    let source: Arc<str> = Arc::from("bench");
    let mut batch = Batch::default();
    let mut ids = 0;
    for (offset, json) in events.enumerate() {
        if batch.len() == 4096 {
            batch.clear();
        }
        let meta = EventMeta {
            offset: offset as u64,
            received_at_ms: 0,
            source: &source,
            message_id: "ajs-next-1790899198595-ddfdb48a-b9ed-4a21-8d3c-db8c3aa5b1d0",
        };
        if batch.push(&meta, json, rules).is_ok() {
            ids += batch
                .get(batch.len() - 1)
                .1
                .map_or(0, |o| o.identifiers().len());
        }
    }
    ids
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("a JSONL file");
    let max: usize = args
        .next()
        .map_or(1_000_000, |m| m.parse().expect("a count"));
    let meta = RequestMeta {
        received_at_ms: 1_790_000_000_000,
        client_ip: None,
        browser: false,
    };
    let limits = Limits::default();
    let mut stored = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .take(max)
    {
        if let Ok(n) = normalize_one(line.unwrap().as_bytes(), &meta, &limits) {
            stored.push((n.json, n.identity));
        }
    }
    let rounds: usize = args.next().map_or(3, |r| r.parse().expect("a count"));
    let only_projections = args.next().is_some_and(|a| a == "projection");
    let rules = Rules::default();
    let bytes = |f: fn(&(Vec<u8>, Vec<u8>)) -> usize| stored.iter().map(f).sum::<usize>();
    println!(
        "{} events, {} B/event stored, {} B/event projected",
        stored.len(),
        bytes(|s| s.0.len()) / stored.len(),
        bytes(|s| s.1.len()) / stored.len()
    );
    if !only_projections {
        let one = junction_core::identity::project(
            br#"{"type":"track","anonymousId":"f0037e0f-88b4-4877-ac40-9dbfd2f4b5f0","timestamp":"2026-10-01T23:59:58.595Z"}"#,
        )
        .expect("an event");
        let t = Instant::now();
        let n = read_all(
            (0..1_000_000).map(|_| std::hint::black_box(&one[..])),
            &rules,
        );
        println!(
            "one (binary) projection 1M times: {:.0} ns/event ({n})",
            t.elapsed().as_nanos() as f64 / 1e6
        );
    }
    for round in 0..rounds {
        for (name, pick) in [
            (
                "whole event",
                (|s: &(Vec<u8>, Vec<u8>)| &s.0[..]) as fn(&_) -> &[u8],
            ),
            ("projection ", |s| &s.1[..]),
        ] {
            if only_projections && name == "whole event" {
                continue;
            }
            let t = Instant::now();
            let ids = read_all(stored.iter().map(pick), &rules);
            let ns = t.elapsed().as_nanos() as f64 / stored.len() as f64;
            println!("round {round} {name}: {ns:.0} ns/event ({ids} identifiers)");
        }
    }
}
