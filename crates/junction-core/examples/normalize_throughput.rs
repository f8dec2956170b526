//! One-shot throughput figure for batch normalization (not a timed test).
//!
//! `cargo run --release -p junction-core --example normalize_throughput`
//! Normalizes a 100-event `/v1/batch` body of ~650-byte analytics-node style events in a loop
//! (20 windows of 100 ms per scenario) and prints events/s and MB/s of input on one thread.

use junction_core::event::{Limits, RequestMeta, Shape, parse_request};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn event(i: usize) -> String {
    format!(
        r#"{{"type":"track","event":"Order Completed","userId":"user-{i:06}","anonymousId":"5f1c2a7e-3b8d-4c11-9e0a-{i:012}","messageId":"node-next-1700000000000-4b3c2d1e-0f9a-4b8c-{i:012}","timestamp":"2023-11-14T22:13:19.{ms:03}Z","properties":{{"orderId":"ord-{i}","total":99.95,"revenue":89.95,"currency":"USD","coupon":"FALL23","products":[{{"sku":"SKU-1","name":"Socks","price":9.95,"quantity":2}},{{"sku":"SKU-2","name":"Shoes","price":79.95,"quantity":1}}]}},"context":{{"library":{{"name":"@segment/analytics-node","version":"2.1.0"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64)","locale":"en-US"}},"integrations":{{}},"_metadata":{{"nodeVersion":"20.10.0","jsRuntime":"node"}}}}"#,
        ms = i % 1000
    )
}

/// Runs 20 windows of ~100 ms and prints the median and best window: the machine is shared,
/// so the best window is the least disturbed one.
fn run(name: &str, body: &[u8], meta: &RequestMeta, events_per_body: usize) {
    let limits = Limits::default();
    let mut rates = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let mut bodies = 0usize;
        while start.elapsed() < Duration::from_millis(100) {
            for _ in 0..10 {
                let parsed = parse_request(black_box(body), Shape::Batch, meta, &limits).unwrap();
                assert_eq!(parsed.events.len(), events_per_body);
                black_box(parsed);
            }
            bodies += 10;
        }
        rates.push((bodies * events_per_body) as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let (median, best) = (rates[rates.len() / 2], rates[rates.len() - 1]);
    let mb = |rate: f64| rate / events_per_body as f64 * body.len() as f64 / 1e6;
    println!(
        "{name}: median {median:.0} events/s ({:.0} MB/s), best {best:.0} events/s ({:.0} MB/s)",
        mb(median),
        mb(best)
    );
}

fn main() {
    let events: Vec<String> = (0..100).map(event).collect();
    let avg = events.iter().map(String::len).sum::<usize>() / events.len();
    let body = format!(
        r#"{{"batch":[{}],"writeKey":"wk_0123","sentAt":"2023-11-14T22:13:20.500Z"}}"#,
        events.join(",")
    );
    println!("event size ~{avg} bytes");
    let server = RequestMeta {
        received_at_ms: 1_700_000_000_000,
        client_ip: Some("203.0.113.7"),
        browser: false,
    };
    run("server batch", body.as_bytes(), &server, 100);
    let browser = RequestMeta {
        browser: true,
        ..server
    };
    run(
        "browser batch (context.ip filled)",
        body.as_bytes(),
        &browser,
        100,
    );
    let merged = format!(
        r#"{{"batch":[{}],"context":{{"library":{{"name":"analytics-python","version":"2.3.0"}}}},"sentAt":"2023-11-14T22:13:20.500Z"}}"#,
        events.join(",")
    );
    run(
        "batch-level context merged",
        merged.as_bytes(),
        &server,
        100,
    );
}
