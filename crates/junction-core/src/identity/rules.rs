//! Identity-resolution rules: identifier types with limit, time window and priority, blocked
//! values, custom identifiers and the per-profile hard caps.
//!
//! Contract: [`Rules::default`] is Segment's default configuration (`user_id` limit 1,
//! every other type 5, priority `user_id` 1, `email` 2, then configured types, then the rest
//! alphabetically; blocked `^[0-]*$`, `-1`, `null`, `anonymous`, ...). [`Rules::new`] validates
//! a configuration and names the offending field on error. Lookups never fail: a type that
//! is not configured (e.g. a new `context.externalIds` type) gets the default limit and ranks
//! after every configured type.
//!
//! Identifier types are interned process-wide as [`Kind`]s (a number per distinct name), so
//! the graph compares and hashes a type as a `u32`, and any thread may intern a name.

use std::sync::{Arc, LazyLock, OnceLock, RwLock};

use regex::Regex;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// Identifier type names Junction derives itself.
pub mod kinds {
    pub const USER_ID: &str = "user_id";
    pub const ANONYMOUS_ID: &str = "anonymous_id";
    pub const EMAIL: &str = "email";
    pub const PHONE: &str = "phone";
    pub const GROUP_ID: &str = "group_id";
    pub const GA_CLIENT_ID: &str = "ga_client_id";
}

/// An interned identifier type name: equal names are equal kinds for the life of the process.
/// The order of kinds is that of interning, not of names (never sort by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(u32);

/// Names of the built-in kinds, at the indexes of their constants.
const BUILT_IN: [&str; 6] = [
    kinds::USER_ID,
    kinds::ANONYMOUS_ID,
    kinds::EMAIL,
    kinds::PHONE,
    kinds::GROUP_ID,
    kinds::GA_CLIENT_ID,
];

/// Chunks of the name table: chunk `c` holds the names of kinds `2^c - 1 .. 2^(c+1) - 1`.
const CHUNKS: usize = 32;

/// Names by kind, appended under [`INDEX`]'s write lock and read without any lock (a name,
/// once interned, is never removed or changed).
static NAMES: [OnceLock<Chunk>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];

/// One chunk of [`NAMES`].
type Chunk = Box<[OnceLock<Arc<str>>]>;

/// [`INDEX`]: kinds by name, and how many there are.
type Index = (HashMap<Arc<str>, Kind>, u32);

/// Kinds by name, and how many there are.
static INDEX: LazyLock<RwLock<Index>> = LazyLock::new(|| {
    let mut index = (HashMap::default(), 0);
    for name in BUILT_IN {
        intern(&mut index, name);
    }
    RwLock::new(index)
});

/// The chunk and position of kind `i` in [`NAMES`].
fn slot(i: u32) -> (usize, usize) {
    let n = u64::from(i) + 1;
    let chunk = 63 - n.leading_zeros();
    (chunk as usize, (n - (1 << chunk)) as usize)
}

fn intern(index: &mut Index, name: &str) -> Kind {
    assert!(index.1 < u32::MAX, "fewer than 2^32 - 1 identifier types");
    let kind = Kind(index.1);
    let (chunk, at) = slot(kind.0);
    let chunk =
        NAMES[chunk].get_or_init(|| (0..1usize << chunk).map(|_| OnceLock::new()).collect());
    let name: Arc<str> = name.into();
    let _ = chunk[at].set(Arc::clone(&name));
    index.0.insert(name, kind);
    index.1 += 1;
    kind
}

impl Kind {
    pub const USER_ID: Kind = Kind(0);
    pub const ANONYMOUS_ID: Kind = Kind(1);
    pub const EMAIL: Kind = Kind(2);
    pub const PHONE: Kind = Kind(3);
    pub const GROUP_ID: Kind = Kind(4);
    pub const GA_CLIENT_ID: Kind = Kind(5);

    /// The kind named `name`, interned on first use.
    pub fn of(name: &str) -> Kind {
        if let Some(kind) = Kind::find(name) {
            return kind;
        }
        let mut index = INDEX.write().unwrap_or_else(|e| e.into_inner());
        match index.0.get(name) {
            Some(kind) => *kind,
            None => intern(&mut index, name),
        }
    }

    /// The kind named `name` if it was ever interned (nothing is added: for lookups of
    /// names that come from outside, such as an API path). Built-in names without a lock.
    pub fn find(name: &str) -> Option<Kind> {
        if let Some(i) = BUILT_IN.iter().position(|b| *b == name) {
            return Some(Kind(i as u32));
        }
        let index = INDEX.read().unwrap_or_else(|e| e.into_inner());
        index.0.get(name).copied()
    }

    /// The shared name (no lock).
    pub fn name(self) -> &'static Arc<str> {
        LazyLock::force(&INDEX);
        let (chunk, at) = slot(self.0);
        NAMES[chunk]
            .get()
            .and_then(|c| c[at].get())
            .expect("a kind is only made by interning its name")
    }

    /// A number for hashing (stable for the life of the process only).
    pub fn index(self) -> u32 {
        self.0
    }
}

pub const DEFAULT_LIMIT: u32 = 5;
pub const DEFAULT_MAX_MERGES: usize = 100;
pub const DEFAULT_MAX_IDENTIFIERS: usize = 1000;
/// Exact values (compared case-insensitively, trimmed) that never become identifiers.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "-1",
    "null",
    "nil",
    "none",
    "undefined",
    "anonymous",
    "unknown",
    "void",
    "n/a",
    "[object object]",
];
/// Values made only of zeros and dashes (and the empty string).
pub const DEFAULT_BLOCKED_PATTERN: &str = "^[0-]*$";

/// The rule for one identifier type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeRule {
    /// At most this many values of the type per profile (within `window_ms` when set).
    pub limit: u32,
    /// Only values first seen within this long before the event count toward `limit`.
    pub window_ms: Option<i64>,
    /// 1 is the highest; `None` ranks after every configured priority, by type name.
    pub priority: Option<u32>,
}

/// One `[[identity.identifiers]]` entry before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSpec {
    pub kind: String,
    pub limit: Option<u32>,
    /// `ever`, `weekly`, `monthly`, `annually` or `<n>d` / `<n>h`.
    pub window: Option<String>,
    pub priority: Option<u32>,
}

/// The `[identity]` section before validation; every field has a working default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesSpec {
    pub identifiers: Vec<TypeSpec>,
    pub blocked_values: Vec<String>,
    pub blocked_patterns: Vec<String>,
    /// `(trait key, identifier type)`: a trait (in `traits` or `context.traits`) that is an id.
    pub trait_identifiers: Vec<(String, String)>,
    /// `(property key, identifier type)`: a property that is an identifier.
    pub property_identifiers: Vec<(String, String)>,
    pub max_merges: Option<usize>,
    pub max_identifiers: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("identity.{field}: {message}")]
pub struct RulesError {
    pub field: String,
    pub message: String,
}

/// A custom identifier: the trait or property `key` whose value is an identifier of `kind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomId {
    pub key: String,
    pub kind: Kind,
}

/// Validated rules.
#[derive(Clone, Debug)]
pub struct Rules {
    types: HashMap<Kind, TypeRule>,
    blocked_exact: HashSet<String>,
    /// Length of the longest exact blocked value: longer values skip the lowercase lookup.
    blocked_exact_max: usize,
    /// Configured patterns (the default one is checked without a regex).
    blocked_patterns: Vec<Regex>,
    pub trait_identifiers: Vec<CustomId>,
    pub property_identifiers: Vec<CustomId>,
    pub max_merges: usize,
    pub max_identifiers: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new(&RulesSpec::default()).expect("the default identity rules are valid")
    }
}

fn error(field: impl Into<String>, message: impl Into<String>) -> RulesError {
    RulesError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses `ever`, `weekly`, `monthly`, `annually`, `<n>d`, `<n>h` into milliseconds.
pub fn parse_window(s: &str) -> Result<Option<i64>, String> {
    const DAY: i64 = 86_400_000;
    let s = s.trim();
    let days = match s {
        "ever" => return Ok(None),
        "weekly" => 7,
        "monthly" => 30,
        "annually" | "yearly" => 365,
        _ => {
            let (n, unit) = s.split_at(s.len().saturating_sub(1));
            let n: i64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("window {s:?} is not ever, weekly, monthly, annually, <n>d or <n>h")
            })?;
            return match unit {
                "d" => Ok(Some(n * DAY)),
                "h" => Ok(Some(n * 3_600_000)),
                _ => Err(format!(
                    "window {s:?} is not ever, weekly, monthly, annually, <n>d or <n>h"
                )),
            };
        }
    };
    Ok(Some(days * DAY))
}

impl Rules {
    pub fn new(spec: &RulesSpec) -> Result<Rules, RulesError> {
        let mut types: HashMap<Kind, TypeRule> = HashMap::default();
        types.insert(
            Kind::USER_ID,
            TypeRule {
                limit: 1,
                window_ms: None,
                priority: Some(1),
            },
        );
        types.insert(
            Kind::EMAIL,
            TypeRule {
                limit: DEFAULT_LIMIT,
                window_ms: None,
                priority: Some(2),
            },
        );
        for (i, t) in spec.identifiers.iter().enumerate() {
            let field = |name: &str| format!("identifiers[{i}].{name}");
            if !valid_kind(&t.kind) {
                return Err(error(
                    field("type"),
                    format!(
                        "{:?} must be 1-100 characters of a-z, 0-9, '_', '.', '-'",
                        t.kind
                    ),
                ));
            }
            let kind = Kind::of(&t.kind);
            let base = types.get(&kind).copied().unwrap_or(TypeRule {
                limit: DEFAULT_LIMIT,
                window_ms: None,
                priority: None,
            });
            let limit = t.limit.unwrap_or(base.limit);
            if limit == 0 {
                return Err(error(field("limit"), "must be at least 1"));
            }
            let window_ms = match &t.window {
                Some(w) => parse_window(w).map_err(|m| error(field("window"), m))?,
                None => base.window_ms,
            };
            if t.priority == Some(0) {
                return Err(error(
                    field("priority"),
                    "must be at least 1 (1 is the highest)",
                ));
            }
            types.insert(
                kind,
                TypeRule {
                    limit,
                    window_ms,
                    priority: t.priority.or(base.priority),
                },
            );
        }
        let mut blocked_exact: HashSet<String> =
            DEFAULT_BLOCKED.iter().map(|s| s.to_string()).collect();
        blocked_exact.extend(spec.blocked_values.iter().map(|v| v.trim().to_lowercase()));
        let blocked_exact_max = blocked_exact.iter().map(String::len).max().unwrap_or(0);
        let mut blocked_patterns = Vec::new();
        for (i, p) in spec.blocked_patterns.iter().enumerate() {
            let re = Regex::new(p)
                .map_err(|e| error(format!("blocked_patterns[{i}]"), e.to_string()))?;
            blocked_patterns.push(re);
        }
        let custom = |list: &[(String, String)], name: &str| {
            list.iter()
                .enumerate()
                .map(|(i, (key, kind))| {
                    if key.is_empty() {
                        return Err(error(format!("{name}[{i}].key"), "must not be empty"));
                    }
                    if !valid_kind(kind) {
                        return Err(error(
                            format!("{name}[{i}].type"),
                            format!("{kind:?} must be 1-100 characters of a-z, 0-9, '_', '.', '-'"),
                        ));
                    }
                    let interned = Kind::of(kind);
                    Ok(CustomId {
                        key: key.clone(),
                        kind: interned,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let max_merges = spec.max_merges.unwrap_or(DEFAULT_MAX_MERGES);
        let max_identifiers = spec.max_identifiers.unwrap_or(DEFAULT_MAX_IDENTIFIERS);
        if max_identifiers == 0 {
            return Err(error("max_identifiers", "must be at least 1"));
        }
        let trait_identifiers = custom(&spec.trait_identifiers, "trait_identifiers")?;
        let property_identifiers = custom(&spec.property_identifiers, "property_identifiers")?;
        Ok(Rules {
            types,
            blocked_exact,
            blocked_exact_max,
            blocked_patterns,
            trait_identifiers,
            property_identifiers,
            max_merges,
            max_identifiers,
        })
    }

    /// The rule for `kind`; unconfigured types get the default limit, no window, no priority.
    pub fn rule(&self, kind: Kind) -> TypeRule {
        self.types.get(&kind).copied().unwrap_or(TypeRule {
            limit: DEFAULT_LIMIT,
            window_ms: None,
            priority: None,
        })
    }

    /// Sort key of the type named `name`: lower ranks first (higher priority). Unranked
    /// types follow by name.
    pub fn rank<'a>(&self, name: &'a str) -> (u32, &'a str) {
        rank(Kind::find(name).and_then(|k| self.priority(k)), name)
    }

    /// The configured priority of `kind` ([`Rules::rank`] without the name).
    pub fn priority(&self, kind: Kind) -> Option<u32> {
        self.types.get(&kind).and_then(|r| r.priority)
    }

    /// A value that stays in the payload but never becomes an identifier.
    pub fn is_blocked(&self, value: &str) -> bool {
        let trimmed = value.trim();
        if trimmed.len() > 500 {
            return true;
        }
        // DEFAULT_BLOCKED_PATTERN, `^[0-]*$`, without a regex: this runs for every identifier.
        if trimmed.bytes().all(|b| b == b'0' || b == b'-') {
            return true;
        }
        (trimmed.len() <= self.blocked_exact_max && self.is_blocked_exact(trimmed))
            || self.blocked_patterns.iter().any(|re| re.is_match(trimmed))
    }

    /// Compares case-insensitively; lowercase ASCII (most values) is looked up as it is.
    fn is_blocked_exact(&self, trimmed: &str) -> bool {
        if trimmed
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        {
            self.blocked_exact.contains(trimmed)
        } else {
            self.blocked_exact.contains(&trimmed.to_lowercase())
        }
    }
}

/// [`Rules::rank`] of a type with the given priority.
pub fn rank(priority: Option<u32>, kind: &str) -> (u32, &str) {
    match priority {
        Some(p) => (p, ""),
        None => (u32::MAX, kind),
    }
}

fn valid_kind(kind: &str) -> bool {
    (1..=100).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_interned_once_and_named_without_a_lock() {
        assert_eq!(Kind::of("user_id"), Kind::USER_ID);
        assert_eq!(&**Kind::GA_CLIENT_ID.name(), "ga_client_id");
        assert_eq!(Kind::find("kinds_test.never_seen"), None);
        let kinds: Vec<Kind> = (0..300)
            .map(|i| Kind::of(&format!("kinds_test.{i}")))
            .collect();
        for (i, kind) in kinds.iter().enumerate() {
            assert_eq!(Kind::of(&format!("kinds_test.{i}")), *kind);
            assert_eq!(&**kind.name(), format!("kinds_test.{i}"));
        }
        let mut distinct = kinds.clone();
        distinct.sort_by_key(|k| k.index());
        distinct.dedup();
        assert_eq!(distinct.len(), kinds.len());
        assert_eq!(slot(0), (0, 0));
        assert_eq!(slot(1), (1, 0));
        assert_eq!(slot(2), (1, 1));
        assert_eq!(slot(3), (2, 0));
        assert_eq!(slot(u32::MAX - 1), (31, (1 << 31) - 1));
    }

    #[test]
    fn defaults_match_segment() {
        let r = Rules::default();
        assert_eq!(r.rule(Kind::USER_ID).limit, 1);
        assert_eq!(r.rule(Kind::ANONYMOUS_ID).limit, 5);
        assert_eq!(r.rule(Kind::of("some.new_type")).limit, 5);
        assert!(r.rank("user_id") < r.rank("email"));
        assert!(r.rank("email") < r.rank("anonymous_id"));
        assert!(r.rank("anonymous_id") < r.rank("ios.id"));
        for v in [
            "null",
            "NULL",
            "-1",
            "anonymous",
            "0000",
            "",
            "  ",
            "0-0",
            "undefined",
        ] {
            assert!(r.is_blocked(v), "{v:?} should be blocked");
        }
        for v in ["abc123", "u1", "10", "a@b.c"] {
            assert!(!r.is_blocked(v), "{v:?} should not be blocked");
        }
    }

    #[test]
    fn configured_types_rank_after_user_id_and_email_and_errors_name_the_field() {
        let spec = RulesSpec {
            identifiers: vec![TypeSpec {
                kind: "phone".into(),
                limit: Some(2),
                window: Some("30d".into()),
                priority: Some(3),
            }],
            blocked_values: vec!["Test@Example.com".into()],
            blocked_patterns: vec!["^temp_".into()],
            ..Default::default()
        };
        let r = Rules::new(&spec).unwrap();
        assert_eq!(r.rule(Kind::PHONE).window_ms, Some(30 * 86_400_000));
        assert!(r.rank("phone") < r.rank("anonymous_id"));
        assert!(r.is_blocked("test@example.com"));
        assert!(r.is_blocked("temp_123"));
        let bad = RulesSpec {
            identifiers: vec![TypeSpec {
                kind: "phone".into(),
                window: Some("fortnightly".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = Rules::new(&bad).unwrap_err();
        assert_eq!(e.field, "identifiers[0].window");
        let bad = RulesSpec {
            blocked_patterns: vec!["(".into()],
            ..Default::default()
        };
        assert_eq!(Rules::new(&bad).unwrap_err().field, "blocked_patterns[0]");
        assert_eq!(parse_window("weekly"), Ok(Some(7 * 86_400_000)));
        assert_eq!(parse_window("ever"), Ok(None));
        assert_eq!(parse_window("12h"), Ok(Some(12 * 3_600_000)));
    }
}
