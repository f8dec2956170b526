//! Times `identity::observe` over stored events and over their identity projections.
//! Usage: observe_throughput <events.jsonl> [max events]
use std::io::BufRead;
use std::time::Instant;

use junction_core::event::{Limits, RequestMeta, normalize_one};
use junction_core::identity::{Rules, observe};

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
    let rules = Rules::default();
    let bytes = |f: fn(&(Vec<u8>, Vec<u8>)) -> usize| stored.iter().map(f).sum::<usize>();
    println!(
        "{} events, {} B/event stored, {} B/event projected",
        stored.len(),
        bytes(|s| s.0.len()) / stored.len(),
        bytes(|s| s.1.len()) / stored.len()
    );
    let one = br#"{"type":"track","anonymousId":"f0037e0f-88b4-4877-ac40-9dbfd2f4b5f0","timestamp":"2026-10-01T23:59:58.595Z"}"#;
    let t = Instant::now();
    let mut n = 0usize;
    for _ in 0..1_000_000 {
        n += observe(std::hint::black_box(one), &rules).map_or(0, |o| o.identifiers.len());
    }
    println!(
        "one projection 1M times: {:.0} ns/event ({n})",
        t.elapsed().as_nanos() as f64 / 1e6
    );
    for round in 0..3 {
        for (name, pick) in [
            (
                "whole event",
                (|s: &(Vec<u8>, Vec<u8>)| &s.0[..]) as fn(&_) -> &[u8],
            ),
            ("projection ", |s| &s.1[..]),
        ] {
            let t = Instant::now();
            let mut ids = 0usize;
            for s in &stored {
                ids += observe(pick(s), &rules).map_or(0, |o| o.identifiers.len());
            }
            let ns = t.elapsed().as_nanos() as f64 / stored.len() as f64;
            println!("round {round} {name}: {ns:.0} ns/event ({ids} identifiers)");
        }
    }
}
