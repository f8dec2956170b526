//! Runtime values of the expression language and their JSON form.
//!
//! Contract:
//! - JSON maps onto values one to one: `null`, booleans, numbers (as `f64`), strings, arrays
//!   (`List`) and objects (`Object`, kept as canonical JSON text: they can be tested with
//!   `exists` and `==` but not ordered). Timestamps (`Time`, milliseconds since the epoch)
//!   and durations (`Dur`, milliseconds) only come from the language (`now()`, `last_seen`,
//!   `30d`); their JSON form is an ISO-8601 string and a number of milliseconds.
//! - [`Value::total_cmp`] is a total order over all values (by type first: null < bool <
//!   number < string < time < duration < list < object), used where results must not depend
//!   on the order events arrived in (`unique`, `most_frequent`).

use std::cmp::Ordering;
use std::sync::Arc;

use crate::timestamp;

#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Num(f64),
    Str(Arc<str>),
    Time(i64),
    Dur(i64),
    List(Arc<[Value]>),
    Object(Arc<str>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => a == b,
            _ => self.total_cmp(other) == Ordering::Equal,
        }
    }
}

impl Value {
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => n.as_f64().map_or(Value::Null, Value::Num),
            serde_json::Value::String(s) => Value::Str(s.as_str().into()),
            serde_json::Value::Array(items) => {
                Value::List(items.iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(_) => Value::Object(v.to_string().into()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Num(n) => num_json(*n),
            Value::Str(s) => (&**s).into(),
            Value::Time(ms) => timestamp::format(*ms).into(),
            Value::Dur(ms) => (*ms).into(),
            Value::List(items) => items.iter().map(Value::to_json).collect(),
            Value::Object(text) => serde_json::from_str(text).unwrap_or_default(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// `true` only for the boolean `true` (null and other values count as false).
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    pub fn as_num(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Num(_) => 2,
            Value::Str(_) => 3,
            Value::Time(_) => 4,
            Value::Dur(_) => 5,
            Value::List(_) => 6,
            Value::Object(_) => 7,
        }
    }

    /// A total order over all values (see the module docs).
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Num(a), Value::Num(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) | (Value::Object(a), Value::Object(b)) => a.cmp(b),
            (Value::Time(a), Value::Time(b)) | (Value::Dur(a), Value::Dur(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => {
                for (x, y) in a.iter().zip(b.iter()) {
                    let o = x.total_cmp(y);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// The order of `<`, `<=`, `>`, `>=`: numbers, strings, times and durations among their
    /// own kind; `None` for anything else (the comparison is then false).
    pub fn partial_order(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => a.partial_cmp(b),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Time(a), Value::Time(b)) | (Value::Dur(a), Value::Dur(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// A number as JSON: whole numbers as integers (`3`, not `3.0`), non-finite as null.
fn num_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        (n as i64).into()
    } else {
        serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into)
    }
}

/// A value ordered by [`Value::total_cmp`], for sets and maps.
#[derive(Clone, Debug)]
pub struct Key(pub Value);

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
