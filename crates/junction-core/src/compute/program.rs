//! The checked form of an expression ([`Node`]), its aggregates ([`AggSpec`]), and how both
//! are evaluated.
//!
//! Contract:
//! - A [`Node`] is evaluated against a [`Scope`]: a profile (traits, results of other
//!   definitions, aggregate values) or one event (its fields). The checker
//!   (`check.rs`) only builds nodes that are valid in their scope.
//! - Runtime semantics, never an error: a missing field or trait is `null`; an operation on
//!   values of the wrong kind gives `null` (arithmetic) or `false` (comparisons); `and`,
//!   `or`, `not` treat anything but `true` as false; division by zero is `null`; `==` between
//!   different kinds is false and `null == null` is true. Timestamps and durations combine as
//!   `time ± duration`, `time - time`, `duration × number`, `duration / number`, and
//!   `duration / duration` (a number: `(now() - first_seen()) / 1d` is an age in days).
//! - An event matches an [`AggSpec`] when its name is among `events`, its type among `types`,
//!   `where` is `true`, and — with `within` — its timestamp is inside the window:
//!   `timestamp > now - within` (an event exactly `within` old has left it; events with
//!   timestamps in the future are inside).

use std::cmp::Ordering;
use std::sync::Arc;

use super::ast::BinOp;
use super::value::Value;

/// What a node reads of an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// `event`: the track event's name.
    Name,
    /// `type`: `track`, `identify`, `page`, ...
    Type,
    /// `timestamp`: the event's timestamp.
    Timestamp,
    /// Any other path into the event: `properties.revenue`, `context.page.path`.
    Path(Box<[Box<str>]>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Const(Value),
    List(Vec<Node>),
    Field(Field),
    /// `traits.a.b` of the profile: the path below `traits`.
    Trait(Box<[Box<str>]>),
    /// The result of another definition (a computed trait or an audience), by index.
    Def(usize),
    /// The value of an aggregate, by index in the catalog's aggregates.
    Agg(usize),
    Now,
    Exists(Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
}

/// Aggregate functions over a profile's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    MostFrequent,
    Unique,
    UniqueCount,
    FirstSeen,
    LastSeen,
}

impl AggFunc {
    pub const ALL: [(&'static str, AggFunc); 12] = [
        ("count", AggFunc::Count),
        ("sum", AggFunc::Sum),
        ("avg", AggFunc::Avg),
        ("min", AggFunc::Min),
        ("max", AggFunc::Max),
        ("first", AggFunc::First),
        ("last", AggFunc::Last),
        ("most_frequent", AggFunc::MostFrequent),
        ("unique", AggFunc::Unique),
        ("unique_count", AggFunc::UniqueCount),
        ("first_seen", AggFunc::FirstSeen),
        ("last_seen", AggFunc::LastSeen),
    ];

    pub fn named(name: &str) -> Option<AggFunc> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// Whether the function takes a value argument (`sum(properties.revenue, ...)`).
    pub fn takes_value(self) -> bool {
        !matches!(
            self,
            AggFunc::Count | AggFunc::FirstSeen | AggFunc::LastSeen
        )
    }
}

/// One aggregate: a function over the events that match its filters.
#[derive(Clone, Debug)]
pub struct AggSpec {
    pub func: AggFunc,
    /// The value read from each matching event (functions that take one).
    pub value: Option<Node>,
    /// `event = ` / `event in`: the names an event must have.
    pub events: Option<Box<[Arc<str>]>>,
    /// `type = ` / `type in`.
    pub types: Option<Box<[Arc<str>]>>,
    /// `where = `.
    pub filter: Option<Node>,
    /// `within = `, in milliseconds.
    pub within_ms: Option<i64>,
    /// The canonical text of the call: equal keys share one state.
    pub key: String,
}

/// One stored event, as the language sees it.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// Its log offset: orders events with equal timestamps.
    pub offset: u64,
    pub timestamp_ms: i64,
    pub json: &'a serde_json::Value,
}

impl Event<'_> {
    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(serde_json::Value::as_str)
    }

    pub fn field(&self, f: &Field) -> Value {
        match f {
            Field::Name => self
                .text("event")
                .map_or(Value::Null, |s| Value::Str(s.into())),
            Field::Type => self
                .text("type")
                .map_or(Value::Null, |s| Value::Str(s.into())),
            Field::Timestamp => Value::Time(self.timestamp_ms),
            Field::Path(parts) => lookup(self.json, parts),
        }
    }
}

/// The value at `path` below `root` (object keys, and array indexes for numeric segments).
pub fn lookup(root: &serde_json::Value, path: &[Box<str>]) -> Value {
    let mut v = root;
    for part in path {
        let next = match v {
            serde_json::Value::Object(map) => map.get(&**part),
            serde_json::Value::Array(items) => {
                part.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return Value::Null,
        }
    }
    Value::from_json(v)
}

impl AggSpec {
    /// Whether `ev` matches the filters other than the window.
    pub fn matches(&self, ev: &Event<'_>, now_ms: i64) -> bool {
        let listed = |allowed: &Option<Box<[Arc<str>]>>, key: &str| match allowed {
            None => true,
            Some(names) => ev
                .text(key)
                .is_some_and(|n| names.iter().any(|x| &**x == n)),
        };
        listed(&self.events, "event")
            && listed(&self.types, "type")
            && self
                .filter
                .as_ref()
                .is_none_or(|f| eval(f, &EventScope { ev, now_ms }).is_true())
    }

    /// Whether an event at `timestamp_ms` is inside the window at `now_ms`.
    pub fn in_window(&self, timestamp_ms: i64, now_ms: i64) -> bool {
        self.within_ms
            .is_none_or(|w| timestamp_ms > now_ms.saturating_sub(w))
    }

    /// The value this aggregate reads from `ev` (`null` for functions without one).
    pub fn value_of(&self, ev: &Event<'_>, now_ms: i64) -> Value {
        match &self.value {
            Some(node) => eval(node, &EventScope { ev, now_ms }),
            None => Value::Null,
        }
    }
}

/// What a node can read where it is evaluated.
pub trait Scope {
    fn field(&self, _f: &Field) -> Value {
        Value::Null
    }
    fn trait_value(&self, _path: &[Box<str>]) -> Value {
        Value::Null
    }
    fn def(&self, _index: usize) -> Value {
        Value::Null
    }
    fn agg(&self, _index: usize) -> Value {
        Value::Null
    }
    fn now_ms(&self) -> i64;
}

/// An event being filtered (`where`) or read (an aggregate's value).
struct EventScope<'a, 'b> {
    ev: &'a Event<'b>,
    now_ms: i64,
}

impl Scope for EventScope<'_, '_> {
    fn field(&self, f: &Field) -> Value {
        self.ev.field(f)
    }
    fn now_ms(&self) -> i64 {
        self.now_ms
    }
}

/// Evaluates `node` (see the module docs for the semantics).
pub fn eval(node: &Node, s: &dyn Scope) -> Value {
    match node {
        Node::Const(v) => v.clone(),
        Node::List(items) => Value::List(items.iter().map(|n| eval(n, s)).collect()),
        Node::Field(f) => s.field(f),
        Node::Trait(path) => s.trait_value(path),
        Node::Def(i) => s.def(*i),
        Node::Agg(i) => s.agg(*i),
        Node::Now => Value::Time(s.now_ms()),
        Node::Exists(n) => Value::Bool(!eval(n, s).is_null()),
        Node::Not(n) => Value::Bool(!eval(n, s).is_true()),
        Node::Neg(n) => match eval(n, s) {
            Value::Num(x) => Value::Num(-x),
            Value::Dur(x) => Value::Dur(-x),
            _ => Value::Null,
        },
        Node::Bin(BinOp::And, l, r) => Value::Bool(eval(l, s).is_true() && eval(r, s).is_true()),
        Node::Bin(BinOp::Or, l, r) => Value::Bool(eval(l, s).is_true() || eval(r, s).is_true()),
        Node::Bin(op, l, r) => binary(*op, eval(l, s), eval(r, s)),
    }
}

/// A duration from a computed number of milliseconds (rounded; `null` when out of range).
fn dur(ms: f64) -> Value {
    if ms.is_finite() && ms.abs() < 9.2e18 {
        Value::Dur(ms.round() as i64)
    } else {
        Value::Null
    }
}

fn binary(op: BinOp, l: Value, r: Value) -> Value {
    use Value::{Bool, Dur, List, Null, Num, Str, Time};
    let order = |want: fn(Ordering) -> bool| Bool(l.partial_order(&r).is_some_and(want));
    match op {
        BinOp::Eq => Bool(l == r),
        BinOp::Ne => Bool(l != r),
        BinOp::Lt => order(Ordering::is_lt),
        BinOp::Le => order(Ordering::is_le),
        BinOp::Gt => order(Ordering::is_gt),
        BinOp::Ge => order(Ordering::is_ge),
        BinOp::In | BinOp::NotIn => {
            let found = match &r {
                List(items) => items.contains(&l),
                _ => return Bool(false),
            };
            Bool(found == (op == BinOp::In))
        }
        BinOp::Contains => Bool(match (&l, &r) {
            (Str(a), Str(b)) => a.contains(&**b),
            (List(items), x) => items.iter().any(|i| i == x),
            _ => false,
        }),
        BinOp::StartsWith => Bool(matches!((&l, &r), (Str(a), Str(b)) if a.starts_with(&**b))),
        BinOp::Add => match (l, r) {
            (Num(a), Num(b)) => Num(a + b),
            (Time(t), Dur(d)) | (Dur(d), Time(t)) => Time(t.saturating_add(d)),
            (Dur(a), Dur(b)) => Dur(a.saturating_add(b)),
            _ => Null,
        },
        BinOp::Sub => match (l, r) {
            (Num(a), Num(b)) => Num(a - b),
            (Time(t), Dur(d)) => Time(t.saturating_sub(d)),
            (Time(a), Time(b)) => Dur(a.saturating_sub(b)),
            (Dur(a), Dur(b)) => Dur(a.saturating_sub(b)),
            _ => Null,
        },
        BinOp::Mul => match (l, r) {
            (Num(a), Num(b)) => Num(a * b),
            (Dur(d), Num(n)) | (Num(n), Dur(d)) => dur(d as f64 * n),
            _ => Null,
        },
        BinOp::Div | BinOp::Mod => match (l, r) {
            (Num(_), Num(0.0)) => Null,
            (Num(a), Num(b)) if op == BinOp::Div => Num(a / b),
            (Num(a), Num(b)) => Num(a % b),
            (Dur(_), Num(0.0)) => Null,
            (Dur(_), Dur(0)) => Null,
            (Dur(d), Num(n)) if op == BinOp::Div => dur(d as f64 / n),
            (Dur(a), Dur(b)) if op == BinOp::Div => Num(a as f64 / b as f64),
            _ => Null,
        },
        BinOp::And | BinOp::Or => unreachable!("short-circuited in eval"),
    }
}
