//! Limits that serde_json's `RawValue` does not enforce: nesting depth and number range.
//!
//! Contract: [`validate_json_limits`] takes bytes that are **already valid JSON** (it does not
//! re-validate syntax) and answers whether every array/object nests at most `max_depth` levels
//! (`{}` is depth 1) and every number is finite as an `f64` (`1e400` is not; a 30-digit integer
//! is). It never recurses, so arbitrarily deep input cannot overflow the stack. The common path
//! is one pass over the bytes without allocation; only on failure a second pass builds the path
//! (`properties.items[2].price`) named in the error. The crate-internal `split_object` does the
//! same checks while listing an object's top-level members, so an event is scanned once.

/// Why a JSON value breaks a limit. `path` is dotted/bracketed from the scanned value's root
/// (empty when the offending value is the root itself).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonLimitError {
    #[error("JSON nests deeper than {limit} levels at `{path}`")]
    TooDeep { limit: usize, path: String },
    #[error("number {token} at `{path}` is out of range (not a finite 64-bit float)")]
    NumberOutOfRange { path: String, token: String },
}

/// Longest number token that is finite whatever its digits (no exponent): 1e308 has 309 digits.
const SAFE_NUMBER_LEN: usize = 300;
/// Longest path or number token echoed in an error message.
const MAX_ECHO: usize = 120;

/// Checks nesting depth and number range of already-valid JSON. See the module docs.
pub fn validate_json_limits(raw: &[u8], max_depth: usize) -> Result<(), JsonLimitError> {
    if fast_scan(raw, max_depth) {
        Ok(())
    } else {
        Err(explain(raw, max_depth))
    }
}

/// `true` when `raw` is within limits. No allocation.
fn fast_scan(raw: &[u8], max_depth: usize) -> bool {
    walk(raw, 0, max_depth, false).is_ok()
}

/// Walks the tokens of valid JSON from `j`: strings are skipped, containers may nest
/// `budget` levels (counted from `j`), every number must be finite as f64. With
/// `until_close` it stops just past the bracket that closes the container opened at `j`
/// (`Malformed` if none does); otherwise it walks to the end of `b`.
#[inline]
fn walk(b: &[u8], mut j: usize, budget: usize, until_close: bool) -> Result<usize, Stop> {
    let mut depth = 0usize;
    while j < b.len() {
        match b[j] {
            b'"' => j = skip_string(b, j + 1),
            b'{' | b'[' => {
                depth += 1;
                if depth > budget {
                    return Err(Stop::Limit);
                }
                j += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                j += 1;
                if until_close && depth == 0 {
                    return Ok(j);
                }
            }
            b'-' | b'0'..=b'9' => {
                let end = number_end(b, j);
                if !number_ok(&b[j..end]) {
                    return Err(Stop::Limit);
                }
                j = end;
            }
            _ => j += 1,
        }
    }
    if until_close {
        Err(Stop::Malformed)
    } else {
        Ok(j)
    }
}

/// Index just past the closing quote of a string whose body starts at `i` (`raw.len()` when
/// unterminated). Eight bytes at a time while no quote or backslash is in sight.
#[inline]
fn skip_string(raw: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    loop {
        while let Some(chunk) = raw.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            // The lowest flagged byte of `has_zero` is exact, so this finds the first match.
            let hits =
                has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')));
            if hits != 0 {
                i += (hits.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match raw.get(i) {
            None => return raw.len(),
            Some(b'"') => return i + 1,
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
        }
    }
}

/// Whether `b` holds a backslash; eight bytes at a time (keys and ids are short, and
/// `memchr`'s set-up costs more than the search).
#[inline]
pub(crate) fn has_backslash(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let w =
            u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")) ^ (ONES * u64::from(b'\\'));
        if w.wrapping_sub(ONES) & !w & HIGHS != 0 {
            return true;
        }
    }
    // A loop, not `contains` (memchr): at most 7 bytes.
    #[allow(clippy::manual_contains)]
    let found = chunks.remainder().iter().any(|&c| c == b'\\');
    found
}

#[inline]
fn number_end(raw: &[u8], mut i: usize) -> usize {
    while i < raw.len() && matches!(raw[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
        i += 1;
    }
    i
}

#[inline]
fn number_ok(token: &[u8]) -> bool {
    let needs_parse =
        token.len() > SAFE_NUMBER_LEN || token.iter().any(|&c| c == b'e' || c == b'E');
    if !needs_parse {
        return true;
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// Why [`split_object`] stopped.
#[derive(Debug)]
pub(crate) enum SplitError {
    /// A limit is broken (with the path, from the slow second pass).
    Limit(JsonLimitError),
    /// The input is not a JSON object (the caller broke the "already valid JSON" contract).
    Malformed,
}

/// Calls `member(key, value)` for each top-level member of a JSON object, in order, while
/// checking the same limits as [`validate_json_limits`] in the same single pass. `key` is the
/// raw quoted key (escapes intact); `value` the raw value without surrounding whitespace.
/// Precondition: `raw` is valid JSON (e.g. a serde_json `RawValue`). Never panics.
pub(crate) fn split_object<'a>(
    raw: &'a str,
    max_depth: usize,
    member: impl FnMut(&'a str, &'a str),
) -> Result<(), SplitError> {
    let b = raw.as_bytes();
    let limit = || SplitError::Limit(explain(b, max_depth));
    if max_depth == 0 && b.get(skip_ws(b, 0)) == Some(&b'{') {
        return Err(limit());
    }
    let value_end = |b: &[u8], i| match scan_value(b, i, max_depth - 1) {
        Ok(end) => Ok(end),
        Err(Stop::Limit) => Err(limit()),
        Err(Stop::Malformed) => Err(SplitError::Malformed),
    };
    members(raw, value_end, member)
}

/// The member loop of [`split_object`] and [`for_each_member`]: `value_end(bytes, i)` is
/// the index just past the value that starts at `i`.
fn members<'a>(
    raw: &'a str,
    value_end: impl Fn(&[u8], usize) -> Result<usize, SplitError>,
    mut member: impl FnMut(&'a str, &'a str),
) -> Result<(), SplitError> {
    let b = raw.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(SplitError::Malformed);
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => return Ok(()),
            Some(b'"') => {}
            _ => return Err(SplitError::Malformed),
        }
        let key_start = i;
        i = skip_string(b, i + 1);
        let key = raw.get(key_start..i).ok_or(SplitError::Malformed)?;
        i = skip_ws(b, i);
        if b.get(i) != Some(&b':') {
            return Err(SplitError::Malformed);
        }
        i = skip_ws(b, i + 1);
        let value_start = i;
        i = value_end(b, i)?;
        let value = raw
            .get(value_start..i)
            .filter(|v| !v.is_empty())
            .ok_or(SplitError::Malformed)?;
        member(key, value);
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(()),
            _ => return Err(SplitError::Malformed),
        }
    }
}

/// Calls `item(value)` for each element of a JSON array, in order (`value` is the raw text
/// without surrounding whitespace). Same precondition and limits as [`split_object`], with
/// no depth limit. Never panics.
pub(crate) fn split_array<'a>(
    raw: &'a str,
    mut item: impl FnMut(&'a str),
) -> Result<(), SplitError> {
    let b = raw.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return Err(SplitError::Malformed);
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return Ok(());
    }
    loop {
        let start = i;
        i = match scan_value(b, i, usize::MAX) {
            Ok(end) => end,
            Err(Stop::Limit) => return Err(SplitError::Limit(explain(b, usize::MAX))),
            Err(Stop::Malformed) => return Err(SplitError::Malformed),
        };
        let Some(value) = raw.get(start..i) else {
            return Err(SplitError::Malformed);
        };
        item(value);
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok(()),
            _ => return Err(SplitError::Malformed),
        }
    }
}

/// Calls `member(key, value)` for each top-level member of a JSON object, in order, like
/// [`split_object`] but for JSON known to be valid and within limits (stored events): it
/// checks no limit and validates nothing, so it costs a fraction of it. `Err` when `raw` is
/// not an object; never panics, whatever the input.
pub(crate) fn for_each_member<'a>(
    raw: &'a str,
    member: impl FnMut(&'a str, &'a str),
) -> Result<(), SplitError> {
    members(raw, |b, i| Ok(skip_value(b, i)), member)
}

/// Index just past the value starting at `i` of valid JSON (nothing is checked).
fn skip_value(b: &[u8], mut i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => skip_string(b, i + 1),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(&c) = b.get(i) {
                i += 1;
                match c {
                    b'"' => i = skip_string(b, i),
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i;
                        }
                    }
                    _ => {}
                }
            }
            i
        }
        _ => {
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
            {
                i += 1;
            }
            i
        }
    }
}

/// The text of a raw JSON string (quotes included), escapes decoded; `None` when `raw` is
/// not a string.
pub(crate) fn unquote(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let body = raw.strip_prefix('"')?.strip_suffix('"')?;
    if has_backslash(body.as_bytes()) {
        serde_json::from_str::<String>(raw)
            .ok()
            .map(std::borrow::Cow::Owned)
    } else {
        Some(std::borrow::Cow::Borrowed(body))
    }
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitError::Limit(e) => e.fmt(f),
            SplitError::Malformed => f.write_str("not a valid JSON object"),
        }
    }
}

enum Stop {
    Limit,
    Malformed,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// End of the value starting at `i`; containers may nest `budget` levels.
fn scan_value(b: &[u8], i: usize, budget: usize) -> Result<usize, Stop> {
    match b.get(i) {
        Some(b'"') => Ok(skip_string(b, i + 1)),
        Some(b'{' | b'[') => walk(b, i, budget, true),
        Some(b'-' | b'0'..=b'9') => {
            let end = number_end(b, i);
            if number_ok(&b[i..end]) {
                Ok(end)
            } else {
                Err(Stop::Limit)
            }
        }
        Some(b't' | b'f' | b'n') => {
            let mut j = i;
            while b.get(j).is_some_and(u8::is_ascii_lowercase) {
                j += 1;
            }
            Ok(j)
        }
        _ => Err(Stop::Malformed),
    }
}

enum Frame {
    Object { key: String, expect_key: bool },
    Array { index: usize },
}

/// Slow second pass that locates the first violation and names its path.
fn explain(raw: &[u8], max_depth: usize) -> JsonLimitError {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let end = skip_string(raw, i + 1);
                if let Some(Frame::Object { key, expect_key }) = stack.last_mut()
                    && *expect_key
                {
                    let body = &raw[i + 1..end.saturating_sub(1).max(i + 1)];
                    *key = String::from_utf8_lossy(body).into_owned();
                    *expect_key = false;
                }
                i = end;
            }
            b'{' | b'[' => {
                if stack.len() + 1 > max_depth {
                    return JsonLimitError::TooDeep {
                        limit: max_depth,
                        path: path_of(&stack),
                    };
                }
                stack.push(if raw[i] == b'{' {
                    Frame::Object {
                        key: String::new(),
                        expect_key: true,
                    }
                } else {
                    Frame::Array { index: 0 }
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                    Some(Frame::Array { index }) => *index += 1,
                    None => {}
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = number_end(raw, i);
                if !number_ok(&raw[i..end]) {
                    return JsonLimitError::NumberOutOfRange {
                        path: path_of(&stack),
                        token: truncate(&String::from_utf8_lossy(&raw[i..end])),
                    };
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    // The fast scan failed, so the slow one must too; stay total for inconsistent callers.
    JsonLimitError::TooDeep {
        limit: max_depth,
        path: String::new(),
    }
}

fn path_of(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        if path.len() > MAX_ECHO {
            path.push('…');
            break;
        }
        match frame {
            Frame::Object { key, .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<(), JsonLimitError> {
        // Every input here must be valid JSON: that is the function's precondition.
        serde_json::from_str::<&serde_json::value::RawValue>(s).expect("test input is JSON");
        validate_json_limits(s.as_bytes(), 64)
    }

    #[test]
    fn backslashes_are_found_at_every_position_and_strings_unquoted() {
        for len in 0..20 {
            let plain = "a".repeat(len);
            assert!(!has_backslash(plain.as_bytes()));
            for at in 0..len {
                let mut b = plain.clone().into_bytes();
                b[at] = b'\\';
                assert!(has_backslash(&b), "len {len} at {at}");
            }
        }
        assert!(!has_backslash("é\u{80}\u{ff}ÿ".as_bytes()));
        assert_eq!(unquote(r#""abc""#).as_deref(), Some("abc"));
        assert_eq!(unquote(r#""a\u0062c\n""#).as_deref(), Some("abc\n"));
        assert_eq!(unquote("12"), None);
        assert_eq!(unquote("\""), None);
        let mut items = Vec::new();
        split_array(r#"[ 1, "a,]", {"b":[2,3]} ,null]"#, |v| items.push(v)).unwrap();
        assert_eq!(items, ["1", r#""a,]""#, r#"{"b":[2,3]}"#, "null"]);
        split_array("[]", |_| panic!("no items")).unwrap();
        let mut members = Vec::new();
        let raw = r#" { "a" : 1.5e3 , "b\"c":{"x":["}",{"y":null}]},"d":"q\\","e":true,"f":[]} "#;
        for_each_member(raw, |k, v| members.push((k, v))).unwrap();
        let mut split = Vec::new();
        split_object(raw, 64, |k, v| split.push((k, v))).unwrap();
        assert_eq!(members, split);
        assert_eq!(members.len(), 5);
        for_each_member("{}", |_, _| panic!("no members")).unwrap();
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1"#,
            r#"{"a":"#,
        ] {
            assert!(for_each_member(bad, |_, _| {}).is_err(), "{bad}");
        }
        assert!(split_array("{}", |_| {}).is_err());
        assert!(split_array("[1,", |_| {}).is_err());
    }

    #[test]
    fn deep_nesting_is_rejected_without_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            validate_json_limits(deep.as_bytes(), 64),
            Err(JsonLimitError::TooDeep { limit: 64, .. })
        ));
        let deep_obj = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let err = validate_json_limits(deep_obj.as_bytes(), 64).unwrap_err();
        let JsonLimitError::TooDeep { path, .. } = err else {
            panic!("expected TooDeep")
        };
        assert!(path.starts_with("a.a.a"), "{path}");
        assert!(path.ends_with('…'), "path is truncated: {path}");
    }

    #[test]
    fn depth_boundary() {
        let at = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check(&at), Ok(()));
        let over = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check(&over).is_err());
        assert_eq!(validate_json_limits(b"{}", 1), Ok(()));
        assert!(validate_json_limits(b"{\"a\":{}}", 1).is_err());
        assert_eq!(validate_json_limits(b"1", 0), Ok(()));
    }

    #[test]
    fn infinite_numbers_are_rejected_with_their_path() {
        assert_eq!(
            check(r#"{"properties":{"items":[1,{"price":1e400}]}}"#),
            Err(JsonLimitError::NumberOutOfRange {
                path: "properties.items[1].price".into(),
                token: "1e400".into()
            })
        );
        assert_eq!(
            check("-1e400"),
            Err(JsonLimitError::NumberOutOfRange {
                path: String::new(),
                token: "-1e400".into()
            })
        );
        assert!(check(r#"{"a":[-1E+400]}"#).is_err());
        let huge_int = "9".repeat(400);
        assert!(check(&format!("[{huge_int}]")).is_err());
        assert!(check(&format!("[{huge_int}.5]")).is_err());
    }

    #[test]
    fn finite_numbers_are_accepted() {
        for s in [
            "1e300",
            "-1e300",
            "1.7976931348623157e308",
            "1e-400",
            "123456789012345678901234567890",
            "-0.0",
            r#"{"a":[0,1,-2,3.5,6e7,8E-9]}"#,
        ] {
            assert_eq!(check(s), Ok(()), "{s}");
        }
        assert_eq!(check(&format!("[{}]", "9".repeat(300))), Ok(()));
    }

    #[test]
    fn strings_do_not_confuse_the_scanner() {
        let tricky = r#"{"a":"[[[[{{{{","b\"[{":"\"]}1e400\\","c":"\\","d":[1e5]}"#;
        assert_eq!(validate_json_limits(tricky.as_bytes(), 2), Ok(()));
        assert!(check(tricky).is_ok());
        // A string value that looks like a deep structure.
        let s = format!("{{\"x\":\"{}\"}}", "[".repeat(10_000));
        assert_eq!(check(&s), Ok(()));
        // Keys with escapes still name the path.
        assert_eq!(
            check(r#"{"k\"ey":{"n":1e999}}"#),
            Err(JsonLimitError::NumberOutOfRange {
                path: r#"k\"ey.n"#.into(),
                token: "1e999".into()
            })
        );
    }
    #[test]
    fn split_object_members_and_limits() {
        let src =
            " { \"a\" : 1 , \"b\\\"\":{\"x\": [true, null, \"]\"]},\"c\":\"s\" ,\"d\":-2.5e3 } ";
        let mut members = Vec::new();
        split_object(src, 64, |k, v| members.push((k, v))).unwrap();
        assert_eq!(
            members,
            [
                ("\"a\"", "1"),
                ("\"b\\\"\"", "{\"x\": [true, null, \"]\"]}"),
                ("\"c\"", "\"s\""),
                ("\"d\"", "-2.5e3")
            ]
        );
        split_object("{}", 1, |_, _| panic!("no members")).unwrap();
        assert!(matches!(
            split_object("{\"a\":{\"b\":[1]}}", 2, |_, _| {}),
            Err(SplitError::Limit(JsonLimitError::TooDeep { limit: 2, .. }))
        ));
        split_object("{\"a\":{\"b\":[1]}}", 3, |_, _| {}).unwrap();
        assert!(matches!(
            split_object("{\"a\":1e400}", 3, |_, _| {}),
            Err(SplitError::Limit(JsonLimitError::NumberOutOfRange { .. }))
        ));
        assert!(matches!(
            split_object("{\"a\":[1E999]}", 3, |_, _| {}),
            Err(SplitError::Limit(JsonLimitError::NumberOutOfRange { .. }))
        ));
        for bad in [
            "[1]",
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":[1",
            "{\"a\":1,",
            "{1:2}",
            "{\"é",
        ] {
            assert!(
                matches!(split_object(bad, 64, |_, _| {}), Err(SplitError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn skip_string_finds_the_first_quote_in_long_strings() {
        for n in 0..40 {
            let body = format!("{}\\\"{}\"rest", "x".repeat(n), "y".repeat(n % 11));
            let end = skip_string(body.as_bytes(), 0);
            assert_eq!(&body[end..], "rest", "n={n}");
        }
        assert_eq!(skip_string(b"abcdefghijklmnop", 0), 16);
        assert_eq!(skip_string(b"abc\\", 0), 4);
    }
}
