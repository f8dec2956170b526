//! Identity-resolution rules: identifier types with limit, time window and priority, blocked
//! values, custom identifiers and the per-profile hard caps.
//!
//! Contract: [`Rules::default`] is Segment's default configuration (`user_id` limit 1,
//! every other type 5, priority `user_id` 1, `email` 2, then configured types, then the rest
//! alphabetically; blocked `^[0-]*$`, `-1`, `null`, `anonymous`, ...). [`Rules::new`] validates
//! a configuration and names the offending field on error. Lookups never fail: a type that
//! is not configured (e.g. a new `context.externalIds` type) gets the default limit and ranks
//! after every configured type.

use std::sync::Arc;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Validated rules.
#[derive(Clone, Debug)]
pub struct Rules {
    types: HashMap<Arc<str>, TypeRule>,
    /// Shared names of the built-in and configured types (no allocation per identifier).
    interned: HashSet<Arc<str>>,
    blocked_exact: HashSet<String>,
    /// Length of the longest exact blocked value: longer values skip the lowercase lookup.
    blocked_exact_max: usize,
    /// Configured patterns (the default one is checked without a regex).
    blocked_patterns: Vec<Regex>,
    pub trait_identifiers: Vec<(String, Arc<str>)>,
    pub property_identifiers: Vec<(String, Arc<str>)>,
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
        let mut types: HashMap<Arc<str>, TypeRule> = HashMap::default();
        types.insert(
            kinds::USER_ID.into(),
            TypeRule {
                limit: 1,
                window_ms: None,
                priority: Some(1),
            },
        );
        types.insert(
            kinds::EMAIL.into(),
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
            let base = types.get(t.kind.as_str()).cloned().unwrap_or(TypeRule {
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
                t.kind.as_str().into(),
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
                    Ok((key.clone(), Arc::from(kind.as_str())))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let max_merges = spec.max_merges.unwrap_or(DEFAULT_MAX_MERGES);
        let max_identifiers = spec.max_identifiers.unwrap_or(DEFAULT_MAX_IDENTIFIERS);
        if max_identifiers == 0 {
            return Err(error("max_identifiers", "must be at least 1"));
        }
        let mut interned: HashSet<Arc<str>> = types.keys().cloned().collect();
        for kind in [
            kinds::USER_ID,
            kinds::ANONYMOUS_ID,
            kinds::EMAIL,
            kinds::PHONE,
            kinds::GROUP_ID,
            kinds::GA_CLIENT_ID,
        ] {
            interned.insert(kind.into());
        }
        let trait_identifiers = custom(&spec.trait_identifiers, "trait_identifiers")?;
        let property_identifiers = custom(&spec.property_identifiers, "property_identifiers")?;
        for (_, kind) in trait_identifiers.iter().chain(&property_identifiers) {
            interned.insert(Arc::clone(kind));
        }
        Ok(Rules {
            types,
            interned,
            blocked_exact,
            blocked_exact_max,
            blocked_patterns,
            trait_identifiers,
            property_identifiers,
            max_merges,
            max_identifiers,
        })
    }

    /// The shared name of `kind` (allocated only for types the rules do not know).
    pub fn kind(&self, kind: &str) -> Arc<str> {
        self.interned
            .get(kind)
            .cloned()
            .unwrap_or_else(|| kind.into())
    }

    /// The rule for `kind`; unconfigured types get the default limit, no window, no priority.
    pub fn rule(&self, kind: &str) -> TypeRule {
        self.types.get(kind).cloned().unwrap_or(TypeRule {
            limit: DEFAULT_LIMIT,
            window_ms: None,
            priority: None,
        })
    }

    /// Sort key: lower ranks first (higher priority). Unranked types follow by name.
    pub fn rank<'a>(&self, kind: &'a str) -> (u32, &'a str) {
        rank(self.priority(kind), kind)
    }

    /// The configured priority of `kind` ([`Rules::rank`] without the name).
    pub fn priority(&self, kind: &str) -> Option<u32> {
        self.types.get(kind).and_then(|r| r.priority)
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
    fn defaults_match_segment() {
        let r = Rules::default();
        assert_eq!(r.rule("user_id").limit, 1);
        assert_eq!(r.rule("anonymous_id").limit, 5);
        assert_eq!(r.rule("some.new_type").limit, 5);
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
        assert_eq!(r.rule("phone").window_ms, Some(30 * 86_400_000));
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
