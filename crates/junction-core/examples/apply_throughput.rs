//! Throughput of [`Graph::apply`] on a JSONL file of Segment events (not a timed test).
//!
//! `cargo run --release -p junction-core --example apply_throughput -- EVENTS.jsonl [MAX [PASS]]`
//!
//! Every line is read into [`Batch`]es of 4,096 events first (untimed; a line that fails
//! still takes an offset), then all events are applied in order, timed, twice: to an
//! untracked graph (a rebuild's replay) and to a tracked one with `take_changes` every 100k
//! events (the live processor's path). `PASS` (`untracked` or `tracked`) runs one of them
//! only, e.g. under a profiler. Prints events/s, ns/event, profile and merge counts and a
//! 64-bit digest of the resulting state, so a change to the graph can be checked to keep
//! its behaviour: equal digests, equal states.
//!
//! The events are read before the clock starts, so their data is not in cache when they
//! are applied (the processor applies events just read), and the tracked pass reuses the
//! memory the untracked pass freed: compare a pass with the same pass.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Instant;

use junction_core::identity::{Batch, EventMeta, Graph, Rules};

/// Changes are taken this often on the tracked pass.
const TAKE_CHANGES_EVERY: usize = 100_000;
/// Events per batch (as the processor's reader makes them).
const BATCH: usize = 4096;

#[derive(serde::Deserialize)]
struct MessageId<'a> {
    #[serde(rename = "messageId", borrow)]
    message_id: Option<std::borrow::Cow<'a, str>>,
}

/// Reads up to `max` lines into batches (offsets are line numbers); the number of events
/// and of lines that could not be read.
fn load(path: &str, max: usize, rules: &Rules) -> (Vec<Batch>, usize, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let source: Arc<str> = Arc::from("bench");
    let mut batches = vec![Batch::default()];
    let (mut n, mut skipped) = (0, 0);
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    while n < max {
        line.clear();
        if reader.read_until(b'\n', &mut line).expect("read") == 0 {
            break;
        }
        let message_id = serde_json::from_slice::<MessageId<'_>>(&line)
            .ok()
            .and_then(|m| m.message_id.map(|m| m.into_owned()))
            .unwrap_or_default();
        let meta = EventMeta {
            offset: n as u64,
            received_at_ms: 1_790_000_000_000 + n as i64,
            source: &source,
            message_id: &message_id,
        };
        let batch = batches.last_mut().expect("one batch at least");
        skipped += usize::from(batch.push(&meta, &line, rules).is_err());
        if batch.len() == BATCH {
            batches.push(Batch::default());
        }
        n += 1;
    }
    (batches, n, skipped)
}

/// Applies every event of `batches` in slices of 512 (as the processor does); `after(n)`
/// follows each slice, `n` events applied so far.
fn apply_all(graph: &mut Graph, batches: &[Batch], mut after: impl FnMut(&mut Graph, usize)) {
    let mut n = 0;
    for batch in batches {
        for start in (0..batch.len()).step_by(512) {
            let end = batch.len().min(start + 512);
            graph.apply_batch(batch, start..end);
            n += end - start;
            after(graph, n);
        }
    }
}

/// Feeds everything written to it into a hasher.
struct HashWriter(DefaultHasher);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The canonical state (with each profile's timeline, which serialization skips).
fn digest(graph: &Graph) -> u64 {
    let canonical = graph.canonical();
    let mut w = HashWriter(DefaultHasher::new());
    serde_json::to_writer(&mut w, &canonical).expect("serializable");
    for p in &canonical.0 {
        serde_json::to_writer(&mut w, &p.events).expect("serializable");
    }
    w.0.finish()
}

/// User and system CPU seconds of this process so far (Linux; zero elsewhere). On a shared
/// machine they tell the time spent apart from the time waited.
fn cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on every Linux configuration that matters here.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// What a timed pass took.
struct Timing {
    secs: f64,
    user_secs: f64,
    sys_secs: f64,
}

fn time(pass: impl FnOnce()) -> Timing {
    let (user, sys) = cpu_secs();
    let start = Instant::now();
    pass();
    let secs = start.elapsed().as_secs_f64();
    let (user_end, sys_end) = cpu_secs();
    Timing {
        secs,
        user_secs: user_end - user,
        sys_secs: sys_end - sys,
    }
}

fn report(name: &str, graph: &Graph, n: usize, t: Timing) {
    let c = graph.counters();
    let secs = t.secs;
    println!(
        "{name}: {:.0} events/s, {:.1} ns/event ({n} events in {secs:.3} s, user {:.2} s, \
         sys {:.2} s); profiles {}, merges {}, identifiers {}, accounts {}, unresolved {}, \
         dropped {}, blocked {}; digest {:016x}",
        n as f64 / secs,
        secs * 1e9 / n as f64,
        t.user_secs,
        t.sys_secs,
        graph.profile_count(),
        c.merges,
        graph.identifier_count(),
        graph.account_count(),
        c.unresolved,
        c.dropped,
        c.blocked,
        digest(graph)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: apply_throughput EVENTS.jsonl [MAX]");
    let max = args
        .next()
        .map_or(usize::MAX, |m| m.parse().expect("MAX is a number"));
    let pass = args.next().unwrap_or_default();
    let (untracked, tracked) = match pass.as_str() {
        "" | "both" => (true, true),
        "untracked" => (true, false),
        "tracked" => (false, true),
        other => panic!("PASS is untracked, tracked or both, not {other:?}"),
    };
    let rules = Rules::default();

    let start = Instant::now();
    let (batches, n, skipped) = load(&path, max, &rules);
    println!(
        "read {n} events ({skipped} unreadable) in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    if untracked {
        let mut graph = Graph::untracked(rules.clone());
        let t = time(|| apply_all(&mut graph, &batches, |_, _| {}));
        report("untracked", &graph, n, t);
    }
    if !tracked {
        return;
    }

    let mut graph = Graph::new(rules);
    let t = time(|| {
        let mut taken = 0;
        apply_all(&mut graph, &batches, |graph, n| {
            if n - taken >= TAKE_CHANGES_EVERY {
                taken = n;
                std::hint::black_box(graph.take_changes());
            }
        });
        std::hint::black_box(graph.take_changes());
    });
    report("tracked", &graph, n, t);
}
