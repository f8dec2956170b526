//! Tests of the expression language: parse and check errors, every function and filter,
//! window boundaries, definitions reading definitions, merges, and the property that the
//! incremental state, a full recompute and the brute-force reference always agree.

use proptest::prelude::*;
use serde_json::json;

use super::reference;
use super::*;

const DAY: i64 = 86_400_000;
const NOW: i64 = 1_700_000_000_000;

fn spec(kind: DefKind, key: &str, expr: &str) -> DefinitionSpec {
    DefinitionSpec {
        kind,
        key: key.into(),
        expr: expr.into(),
    }
}

fn trait_def(expr: &str) -> Vec<DefinitionSpec> {
    vec![spec(DefKind::ComputedTrait, "t", expr)]
}

fn compile_err(specs: &[DefinitionSpec]) -> String {
    Catalog::compile(specs)
        .expect_err("must be refused")
        .to_string()
}

fn err_of(expr: &str) -> String {
    compile_err(&trait_def(expr))
}

/// A stored event: `(type, name, timestamp, properties)`.
fn ev(kind: &str, name: Option<&str>, ts: i64, props: serde_json::Value) -> serde_json::Value {
    let mut e = json!({"type": kind, "timestamp": ts, "properties": props});
    if let Some(n) = name {
        e["event"] = n.into();
    }
    e
}

fn events(list: &[serde_json::Value]) -> Vec<Event<'_>> {
    list.iter()
        .enumerate()
        .map(|(i, j)| Event {
            offset: i as u64,
            timestamp_ms: j["timestamp"]
                .as_i64()
                .expect("test events carry a timestamp"),
            json: j,
        })
        .collect()
}

fn no_traits() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

/// The value of the single computed trait `expr` over `list` at `now`, checked three ways.
fn value_at(expr: &str, list: &[serde_json::Value], now: i64) -> serde_json::Value {
    let catalog = Catalog::compile(&trait_def(expr)).unwrap_or_else(|e| panic!("{e}"));
    let evs = events(list);
    let mut state = ProfileState::default();
    for e in &evs {
        catalog.observe(&mut state, e, now);
    }
    let traits = no_traits();
    let incremental = catalog.evaluate(&state, &traits, now);
    let reference = reference::evaluate(&catalog, &evs, &traits, now);
    assert_eq!(incremental, reference, "{expr}");
    let texts: Vec<Vec<u8>> = list
        .iter()
        .map(|j| serde_json::to_vec(j).unwrap())
        .collect();
    assert_eq!(
        slimmed_value(&catalog, list, &texts, now),
        incremental[0],
        "{expr}, slimmed"
    );
    incremental[0].to_json()
}

/// The first definition's value over events stored as `texts` (their timestamps from
/// `list`), each read through [`super::slim::Reads::slim`].
fn slimmed_value(
    catalog: &Catalog,
    list: &[serde_json::Value],
    texts: &[Vec<u8>],
    now: i64,
) -> Value {
    let reads = super::slim::Reads::of(catalog);
    let mut state = ProfileState::default();
    for (e, text) in events(list).iter().zip(texts) {
        if let Some(v) = reads.slim(text).expect("valid JSON") {
            catalog.observe(&mut state, &Event { json: &v, ..*e }, now);
        }
    }
    catalog.evaluate(&state, &no_traits(), now).swap_remove(0)
}

#[test]
fn parse_errors_point_at_the_column() {
    let e = err_of(r#"count(event = "A") >= 1 and cuont(event = "B") > 0"#);
    assert!(
        e.starts_with("computed trait `t`: column 29: unknown function `cuont`"),
        "{e}"
    );
    let e = err_of(r#"count(event = "A") >= "3""#);
    assert!(
        e.contains("column 23: `>=` cannot compare a number with a string"),
        "{e}"
    );
    let e = err_of(r#"sum("abc")"#);
    assert!(
        e.contains("column 5: `sum` needs numbers, found a string"),
        "{e}"
    );
    let e = err_of(r#"count(event = "A", within = "7d")"#);
    assert!(
        e.contains("column 29: `within` takes a positive duration"),
        "{e}"
    );
    let e = err_of(r#"count(event = "A" "#);
    assert!(
        e.contains("column 19: expected `,` or `)`, found the end"),
        "{e}"
    );
    let e = err_of(r#"count(event = "A") = 3"#);
    assert!(e.contains("column 20: `=` names an argument"), "{e}");
    let e = err_of("1 < 2 < 3");
    assert!(e.contains("comparisons do not chain"), "{e}");
    let e = err_of("properties.revenue > 3");
    assert!(
        e.contains("column 1: unknown name `properties.revenue`"),
        "{e}"
    );
    let e = err_of(r#"count(evnt = "A")"#);
    assert!(e.contains("column 7: unknown filter `evnt`"), "{e}");
    let e = err_of(r#"count(type = "click")"#);
    assert!(e.contains("unknown event type `click`"), "{e}");
    let e = err_of("count(where = timestamp > now() - 1h)");
    assert!(
        e.contains("column 27: `now()` cannot be used inside an aggregate"),
        "{e}"
    );
    let e = err_of(r#"sum(count(event = "A"))"#);
    assert!(
        e.contains("column 5: `count` cannot be used inside another aggregate"),
        "{e}"
    );
    let e = err_of("traits.plan == \"pro\" and\n  traits.age > 3 + \"x\"");
    assert!(
        e.contains("line 2, column 20: `+` cannot combine a number and a string"),
        "{e}"
    );
    let e = err_of("3 $");
    assert!(
        e.contains("column 3: expected an operator or the end, found `$`"),
        "{e}"
    );
    let e = err_of("3 @");
    assert!(e.contains("column 3: unexpected character `@`"), "{e}");
    let e = err_of("\"open");
    assert!(e.contains("column 1: this string is not closed"), "{e}");
    let e = err_of("count() > 3x");
    assert!(
        e.contains("column 11: a number may only be followed by a duration unit"),
        "{e}"
    );
}

#[test]
fn audiences_and_keys_are_checked_together() {
    let e = compile_err(&[spec(DefKind::Audience, "a", r#"audience("missing")"#)]);
    assert!(
        e.starts_with("audience `a`: column 10: unknown audience `missing` (known: a)"),
        "{e}"
    );
    let e = compile_err(&[
        spec(DefKind::Audience, "a", r#"audience("b") and count() > 1"#),
        spec(DefKind::Audience, "b", r#"not audience("c")"#),
        spec(DefKind::Audience, "c", r#"audience("a")"#),
    ]);
    assert!(
        e.contains("column 10: definitions depend on each other in a cycle: `a` → `b` → `c` → `a`"),
        "{e}"
    );
    let e = compile_err(&[spec(DefKind::Audience, "a", r#"audience("a")"#)]);
    assert!(e.contains("cycle: `a` → `a`"), "{e}");
    let e = compile_err(&[spec(DefKind::Audience, "a", "count()")]);
    assert!(e.contains("must be true or false"), "{e}");
    let e = compile_err(&[
        spec(DefKind::Audience, "a", "true"),
        spec(DefKind::Audience, "a", "false"),
    ]);
    assert!(
        e.contains("audience `a`: another audience has this key"),
        "{e}"
    );
    let e = compile_err(&[spec(DefKind::ComputedTrait, "bad key", "1")]);
    assert!(e.contains("a key is 1 to 120 letters"), "{e}");
    // A computed trait and an audience may share a key; `traits.x` means the trait.
    let catalog = Catalog::compile(&[
        spec(DefKind::ComputedTrait, "x", "1"),
        spec(DefKind::Audience, "x", "traits.x == 1"),
    ])
    .expect("valid");
    let got = catalog.evaluate(&ProfileState::default(), &no_traits(), NOW);
    assert_eq!(got, vec![Value::Num(1.0), Value::Bool(true)]);
}

#[test]
fn the_spec_examples_compile() {
    let examples = [
        r#"count(event = "Order Completed", within = 90d)"#,
        r#"sum(properties.revenue, event = "Order Completed")"#,
        r#"last(properties.plan, event = "Plan Changed")"#,
        r#"most_frequent(properties.category, event = "Product Viewed", within = 30d)"#,
        r#"unique(properties.sku, event = "Product Added", within = 30d)"#,
        r#"first_seen(event = "Signed Up")"#,
        r#"last_seen(type = "page")"#,
        r#"count(event in ["Product Added", "Product Viewed"], where = properties.price > 100, within = 7d) >= 3
             and not audience("churned") and traits.plan == "pro" and exists(traits.email)"#,
        r#"now() - last_seen(type = "page") > 30d"#,
        r#"properties_count(1)"#,
    ];
    let mut specs: Vec<_> = examples[..9]
        .iter()
        .enumerate()
        .map(|(i, e)| spec(DefKind::ComputedTrait, &format!("t{i}"), e))
        .collect();
    specs.push(spec(
        DefKind::Audience,
        "churned",
        "count(within = 30d) == 0",
    ));
    let catalog = Catalog::compile(&specs).unwrap_or_else(|e| panic!("{e}"));
    assert!(catalog.aggregates().len() >= 9);
    assert!(Catalog::compile(&trait_def(examples[9])).is_err());
}

#[test]
fn every_function_over_events() {
    let list = [
        ev(
            "track",
            Some("Order Completed"),
            NOW - 3 * DAY,
            json!({"revenue": 10.5, "cat": "a"}),
        ),
        ev(
            "track",
            Some("Order Completed"),
            NOW - 2 * DAY,
            json!({"revenue": 4, "cat": "b"}),
        ),
        ev(
            "track",
            Some("Order Completed"),
            NOW - DAY,
            json!({"revenue": "n/a", "cat": "b"}),
        ),
        ev(
            "track",
            Some("Viewed"),
            NOW - 5 * DAY,
            json!({"revenue": 100, "cat": "a"}),
        ),
        ev("page", None, NOW - 4 * DAY, json!({"cat": "c"})),
        ev("identify", None, NOW - 10 * DAY, json!({})),
    ];
    let oc = r#"event = "Order Completed""#;
    let cases = [
        (format!("count({oc})"), json!(3)),
        (format!("sum(properties.revenue, {oc})"), json!(14.5)),
        (format!("avg(properties.revenue, {oc})"), json!(7.25)),
        (format!("min(properties.revenue, {oc})"), json!(4)),
        (format!("max(properties.revenue, {oc})"), json!(10.5)),
        (format!("first(properties.cat, {oc})"), json!("a")),
        (format!("last(properties.cat, {oc})"), json!("b")),
        (format!("last(properties.revenue, {oc})"), json!("n/a")),
        ("most_frequent(properties.cat)".into(), json!("b")),
        ("unique(properties.cat)".into(), json!(["a", "b", "c"])),
        ("unique_count(properties.cat)".into(), json!(3)),
        ("first_seen()".into(), json!("2023-11-04T22:13:20.000Z")),
        (
            format!("last_seen({oc})"),
            json!("2023-11-13T22:13:20.000Z"),
        ),
        ("count(type = \"page\")".into(), json!(1)),
        ("count(type in [\"page\", \"identify\"])".into(), json!(2)),
        (
            "count(event in [\"Viewed\", \"Order Completed\"])".into(),
            json!(4),
        ),
        ("count(where = properties.revenue > 5)".into(), json!(2)),
        (
            "count(where = properties.cat in [\"a\", \"c\"])".into(),
            json!(3),
        ),
        (
            "count(where = event starts_with \"Order\" and not (properties.cat == \"a\"))".into(),
            json!(2),
        ),
        ("count(where = exists(properties.revenue))".into(), json!(4)),
        ("count(within = 2881m)".into(), json!(2)),
        (
            "sum(properties.revenue * 2, event = \"Viewed\") + 1".into(),
            json!(201),
        ),
        (
            "avg(properties.revenue, event = \"nothing\")".into(),
            json!(null),
        ),
        (
            "sum(properties.revenue, event = \"nothing\")".into(),
            json!(0),
        ),
        (
            "min(properties.revenue, event = \"nothing\")".into(),
            json!(null),
        ),
        ("last_seen(event = \"nothing\")".into(), json!(null)),
        ("(now() - first_seen()) / 1d".into(), json!(10)),
        ("now() - first_seen() > 2 * 4d + 12h".into(), json!(true)),
        ("now() - first_seen() > 9d".into(), json!(true)),
        ("unique(properties.cat) contains \"c\"".into(), json!(true)),
        ("10 % 4 + -2".into(), json!(0)),
        ("1 / 0".into(), json!(null)),
        ("null == null".into(), json!(true)),
        ("\"a\" < \"b\" and 2 >= 2 and 3d > 2d".into(), json!(true)),
        ("4 not in [1, 2]".into(), json!(true)),
    ];
    for (expr, want) in cases {
        assert_eq!(value_at(&expr, &list, NOW), want, "{expr}");
    }
}

#[test]
fn windows_exclude_an_event_exactly_their_length_old() {
    let expr = r#"count(event = "X", within = 7d)"#;
    let at = |ts| value_at(expr, &[ev("track", Some("X"), ts, json!({}))], NOW);
    assert_eq!(at(NOW - 7 * DAY), json!(0), "exactly 7d old: outside");
    assert_eq!(at(NOW - 7 * DAY + 1), json!(1), "1 ms younger: inside");
    assert_eq!(at(NOW + DAY), json!(1), "future timestamps are inside");
    let expr = r#"count(event = "X", within = 90m)"#;
    let at = |ts| value_at(expr, &[ev("track", Some("X"), ts, json!({}))], NOW);
    assert_eq!(at(NOW - 90 * 60_000 + 1), json!(1));
    assert_eq!(at(NOW - 90 * 60_000), json!(0));
}

#[test]
fn a_profile_leaves_a_windowed_audience_as_time_passes() {
    let catalog = Catalog::compile(&[spec(
        DefKind::Audience,
        "recent",
        r#"count(event = "X", within = 7d) >= 1"#,
    )])
    .expect("valid");
    assert!(catalog.reads_clock(0));
    let list = [ev("track", Some("X"), NOW - DAY, json!({}))];
    let evs = events(&list);
    let mut state = ProfileState::default();
    catalog.observe(&mut state, &evs[0], NOW);
    let traits = no_traits();
    assert_eq!(
        catalog.evaluate(&state, &traits, NOW),
        vec![Value::Bool(true)]
    );
    let expiry = catalog
        .next_expiry(&state)
        .expect("a window holds an event");
    assert_eq!(expiry, NOW + 6 * DAY);
    assert_eq!(
        catalog.evaluate(&state, &traits, expiry - 1),
        vec![Value::Bool(true)]
    );
    assert_eq!(
        catalog.evaluate(&state, &traits, expiry),
        vec![Value::Bool(false)]
    );
    catalog.prune(&mut state, expiry);
    assert!(state.is_empty());
    assert_eq!(catalog.next_expiry(&state), None);
}

#[test]
fn definitions_read_definitions_and_traits() {
    let catalog = Catalog::compile(&[
        spec(
            DefKind::Audience,
            "vip",
            r#"audience("buyer") and traits.ltv > 100"#,
        ),
        spec(
            DefKind::ComputedTrait,
            "ltv",
            r#"sum(properties.revenue, event = "Order")"#,
        ),
        spec(
            DefKind::Audience,
            "buyer",
            r#"count(event = "Order") >= 1 and traits.plan == "pro""#,
        ),
        spec(
            DefKind::Audience,
            "not_vip",
            r#"not audience("vip") and exists(traits.email)"#,
        ),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let list = [
        ev("track", Some("Order"), NOW, json!({"revenue": 80})),
        ev("track", Some("Order"), NOW, json!({"revenue": 30})),
    ];
    let evs = events(&list);
    let mut state = ProfileState::default();
    for e in &evs {
        catalog.observe(&mut state, e, NOW);
    }
    let mut traits = no_traits();
    traits.insert("plan".into(), "pro".into());
    let got = catalog.evaluate(&state, &traits, NOW);
    assert_eq!(
        got,
        vec![
            Value::Bool(true),
            Value::Num(110.0),
            Value::Bool(true),
            Value::Bool(false)
        ]
    );
    traits.insert("plan".into(), "free".into());
    traits.insert("email".into(), "a@example.com".into());
    let got = catalog.evaluate(&state, &traits, NOW);
    assert_eq!(
        got,
        vec![
            Value::Bool(false),
            Value::Num(110.0),
            Value::Bool(false),
            Value::Bool(true)
        ]
    );
}

#[test]
fn a_merge_moves_a_profile_into_an_audience() {
    let catalog = Catalog::compile(&[spec(
        DefKind::Audience,
        "engaged",
        r#"count(event = "Viewed", within = 30d) >= 3 and count(event = "Bought", within = 30d) == 0"#,
    )])
    .expect("valid");
    let a_events = [
        ev("track", Some("Viewed"), NOW - DAY, json!({})),
        ev("track", Some("Viewed"), NOW - 2 * DAY, json!({})),
    ];
    let b_events = [ev("track", Some("Viewed"), NOW - 3 * DAY, json!({}))];
    let traits = no_traits();
    let mut a = ProfileState::default();
    for e in &events(&a_events) {
        catalog.observe(&mut a, e, NOW);
    }
    let mut b = ProfileState::default();
    for e in &events(&b_events) {
        catalog.observe(&mut b, e, NOW);
    }
    assert_eq!(catalog.evaluate(&a, &traits, NOW), vec![Value::Bool(false)]);
    assert_eq!(catalog.evaluate(&b, &traits, NOW), vec![Value::Bool(false)]);
    catalog.absorb(&mut a, b);
    assert_eq!(catalog.evaluate(&a, &traits, NOW), vec![Value::Bool(true)]);
}

#[test]
fn equal_aggregates_share_one_state() {
    let catalog = Catalog::compile(&[
        spec(
            DefKind::ComputedTrait,
            "a",
            r#"count(within = 7d, event = "X")"#,
        ),
        spec(
            DefKind::Audience,
            "b",
            r#"count(event = "X", within = 7d) > 2"#,
        ),
        spec(
            DefKind::Audience,
            "c",
            r#"count(event = "X", within = 1w) > 2"#,
        ),
    ])
    .expect("valid");
    assert_eq!(catalog.aggregates().len(), 1, "{:?}", catalog.aggregates());
}

#[test]
fn paths_read_nested_values_arrays_and_quoted_keys() {
    let list = [ev(
        "track",
        Some("X"),
        NOW,
        json!({"items": [{"sku": "a1"}], "odd key": 3, "nested": {"deep": true}}),
    )];
    assert_eq!(
        value_at("last(properties.items.0.sku)", &list, NOW),
        json!("a1")
    );
    assert_eq!(
        value_at(r#"sum(properties["odd key"])"#, &list, NOW),
        json!(3)
    );
    assert_eq!(
        value_at("count(where = properties.nested.deep)", &list, NOW),
        json!(1)
    );
    assert_eq!(
        value_at("last(properties.nested)", &list, NOW),
        json!({"deep": true})
    );
    // Slimming reads only the members paths name, also from text as clients send it:
    // escaped keys, spaces, a duplicate key (the last counts), a value that is not an object.
    let texts = [
        r#"{"type":"track","event":"X","timestamp":0,"properties": { "odd\u0020key" : 3, "skip": {"a": [1, {"b": 2}]}, "nested" : {"deep": false, "deep": true} , "items": [ {"sku" : "a1"} ] }}"#,
        r#"{"type":"track","event":"X","timestamp":0,"properties":{"nested":"text","odd key":4}}"#,
    ];
    let list: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let texts: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    for (expr, want) in [
        (r#"sum(properties["odd key"])"#, json!(7)),
        ("count(where = properties.nested.deep)", json!(1)),
        (
            "last(properties.items.0.sku, where = exists(properties.items))",
            json!("a1"),
        ),
        ("count(where = properties.nested == \"text\")", json!(1)),
        (
            "last(properties.skip.a.1.b, where = exists(properties.skip))",
            json!(2),
        ),
    ] {
        let catalog = Catalog::compile(&trait_def(expr)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            slimmed_value(&catalog, &list, &texts, NOW).to_json(),
            want,
            "{expr}"
        );
        assert_eq!(value_at(expr, &list, NOW), want, "{expr}");
    }
}

// ---------------------------------------------------------------------------------------
// Property: incremental == full recompute == reference, for random streams and expressions.

/// A random expression from the grammar, always valid; audiences may read earlier ones.
fn arb_agg() -> impl Strategy<Value = String> {
    let filter = prop_oneof![
        Just(String::new()),
        Just(", event = \"A\"".to_string()),
        Just(", event in [\"A\", \"B\"]".to_string()),
        Just(", type = \"page\"".to_string()),
        Just(", where = properties.n > 1".to_string()),
        Just(", where = properties.c == \"x\" or not exists(properties.n)".to_string()),
    ];
    let within = prop_oneof![
        Just(String::new()),
        Just(", within = 1d".to_string()),
        Just(", within = 3d".to_string()),
        Just(", within = 90m".to_string()),
    ];
    let func = prop_oneof![
        Just("count(x"),
        Just("sum(properties.n"),
        Just("avg(properties.n"),
        Just("min(properties.n"),
        Just("max(properties.n"),
        Just("first(properties.c"),
        Just("last(properties.n"),
        Just("most_frequent(properties.c"),
        Just("unique(properties.c"),
        Just("unique_count(properties.c"),
        Just("first_seen(x"),
        Just("last_seen(x"),
    ];
    (func, filter, within).prop_map(|(f, filter, within)| {
        let args = format!("{filter}{within}");
        match f.strip_suffix("(x") {
            Some(name) => format!("{name}({})", args.trim_start_matches(", ")),
            None => format!("{f}{args})"),
        }
    })
}

fn arb_condition(audiences_before: usize) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        arb_agg().prop_map(|a| format!("exists({a})")),
        (arb_numeric_agg(), 0..4u8).prop_map(|(a, n)| format!("{a} >= {n}")),
        arb_agg().prop_map(|a| format!("{a} == null")),
        Just("traits.plan == \"pro\"".to_string()),
        Just("now() - last_seen() < 2d".to_string()),
        (0..audiences_before.max(1)).prop_map(move |i| if audiences_before == 0 {
            "true".to_string()
        } else {
            format!("audience(\"a{i}\")")
        }),
    ];
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
            inner.prop_map(|a| format!("not {a}")),
        ]
    })
}

/// Aggregates whose value is a number (they compare with numbers).
fn arb_numeric_agg() -> impl Strategy<Value = String> {
    arb_agg().prop_filter("a numeric aggregate", |a| {
        ["count(", "sum(", "avg(", "min(", "max(", "unique_count("]
            .iter()
            .any(|f| a.starts_with(f))
    })
}

#[derive(Clone, Debug)]
enum Op {
    /// An event for profile `p`: (type, name, timestamp offset from the clock, n, c).
    Event(usize, u8, u8, i64, Option<i8>, Option<u8>),
    Merge(usize, usize),
    Tick(i64),
    Prune,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4usize, 0..3u8, 0..3u8, -5 * DAY..DAY / 2, proptest::option::of(-4..8i8), proptest::option::of(0..3u8))
            .prop_map(|(p, t, n, dt, num, c)| Op::Event(p, t, n, dt, num, c)),
        1 => (0..4usize, 0..4usize).prop_map(|(a, b)| Op::Merge(a, b)),
        2 => (0..2 * DAY).prop_map(Op::Tick),
        1 => Just(Op::Prune),
    ]
}

fn make_event(t: u8, n: u8, ts: i64, num: Option<i8>, c: Option<u8>) -> serde_json::Value {
    let kind = ["track", "page", "identify"][t as usize];
    let mut props = serde_json::Map::new();
    if let Some(num) = num {
        // Quarters: sums are exact in any order.
        props.insert("n".into(), json!(f64::from(num) * 0.25));
    }
    if let Some(c) = c {
        props.insert("c".into(), json!(["x", "y", "z"][c as usize]));
    }
    let name = (kind == "track").then(|| ["A", "B", "C"][n as usize]);
    ev(kind, name, ts, props.into())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_recompute_equals_reference(
        traits_defs in proptest::collection::vec(arb_agg(), 1..4),
        audience_defs in (1..4usize).prop_flat_map(|n| {
            (0..n).map(arb_condition).collect::<Vec<_>>()
        }),
        ops in proptest::collection::vec(arb_op(), 1..60),
        plan_pro in any::<bool>(),
    ) {
        let mut specs: Vec<DefinitionSpec> = traits_defs
            .iter()
            .enumerate()
            .map(|(i, e)| spec(DefKind::ComputedTrait, &format!("t{i}"), e))
            .collect();
        specs.extend(audience_defs.iter().enumerate().map(|(i, e)| spec(DefKind::Audience, &format!("a{i}"), e)));
        let catalog = Catalog::compile(&specs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let reads = super::slim::Reads::of(&catalog);
        let mut traits = no_traits();
        traits.insert("plan".into(), if plan_pro { "pro" } else { "free" }.into());

        // Profiles: each holds its state and (the index of) its events; merged ones are gone.
        let mut all: Vec<serde_json::Value> = Vec::new();
        let mut owned: Vec<Option<(ProfileState, Vec<usize>)>> = (0..4).map(|_| Some(Default::default())).collect();
        let mut now = NOW;
        // Per profile: the results kept up to date by `evaluate_changed`.
        let mut kept: Vec<Vec<Value>> = vec![Vec::new(); 4];
        let mut changes = super::catalog::Changes::default();
        for op in &ops {
            match *op {
                Op::Event(p, t, n, dt, num, c) => {
                    let Some((state, mine)) = owned[p].as_mut() else { continue };
                    all.push(make_event(t, n, now + dt, num, c));
                    let j = &all[all.len() - 1];
                    let e = Event { offset: (all.len() - 1) as u64, timestamp_ms: now + dt, json: j };
                    catalog.observe(state, &e, now);
                    mine.push(all.len() - 1);
                }
                Op::Merge(a, b) if a != b && owned[a].is_some() && owned[b].is_some() => {
                    let (state_b, events_b) = owned[b].take().expect("checked");
                    let (state_a, events_a) = owned[a].as_mut().expect("checked");
                    catalog.absorb(state_a, state_b);
                    events_a.extend(events_b);
                }
                Op::Merge(..) => {}
                Op::Tick(dt) => now += dt,
                Op::Prune => {
                    for (state, _) in owned.iter_mut().flatten() {
                        catalog.prune(state, now);
                        // What is left is inside its window: it expires later.
                        if let Some(t) = catalog.next_expiry(state) {
                            prop_assert!(t > now, "expiry {t} at or before {now} after pruning");
                        }
                    }
                }
            }
            // Every profile, after every step.
            for (p, (state_mut, mine)) in owned.iter_mut().enumerate().filter_map(|(p, o)| Some((p, o.as_mut()?))) {
                let state = &*state_mut;
                let evs: Vec<Event<'_>> = mine
                    .iter()
                    .map(|&i| Event { offset: i as u64, timestamp_ms: all[i]["timestamp"].as_i64().expect("ts"), json: &all[i] })
                    .collect();
                let incremental = catalog.evaluate(state, &traits, now);
                let mut fresh = ProfileState::default();
                for e in &evs {
                    catalog.observe(&mut fresh, e, now);
                }
                let full = catalog.evaluate(&fresh, &traits, now);
                // Only the members the catalog reads, and only events it can match.
                let mut slimmed = ProfileState::default();
                for e in &evs {
                    let bytes = serde_json::to_vec(e.json).expect("serializable");
                    if let Some(v) = reads.slim(&bytes).expect("valid JSON") {
                        catalog.observe(&mut slimmed, &Event { json: &v, ..*e }, now);
                    }
                }
                prop_assert_eq!(&catalog.evaluate(&slimmed, &traits, now), &full, "slim events");
                // Planned from the type and name alone, as the history pass does.
                let mut planned = ProfileState::default();
                for e in &evs {
                    let kind = e.json["type"].as_str().expect("a type");
                    match reads.plan(kind, e.json["event"].as_str()) {
                        super::slim::Plan::Skip => {}
                        super::slim::Plan::Fixed(v) => {
                            catalog.observe(&mut planned, &Event { json: &v, ..*e }, now);
                        }
                        super::slim::Plan::Slim => {
                            let bytes = serde_json::to_vec(e.json).expect("serializable");
                            let v = reads.slim(&bytes).expect("valid JSON").expect("may match");
                            catalog.observe(&mut planned, &Event { json: &v, ..*e }, now);
                        }
                    }
                }
                prop_assert_eq!(&planned, &slimmed, "planned events");
                let reference = reference::evaluate(&catalog, &evs, &traits, now);
                for (i, want) in incremental.iter().enumerate() {
                    prop_assert_eq!(&catalog.evaluate_one(state, &traits, now, i), want, "evaluate_one({})", i);
                }
                prop_assert_eq!(&incremental, &full, "incremental vs full recompute, specs {:?}", specs);
                let before = kept[p].clone();
                catalog.evaluate_changed(state_mut, &traits, now, &mut kept[p], &mut changes);
                prop_assert_eq!(&kept[p], &incremental, "evaluate_changed, specs {:?}", specs);
                let differ: Vec<usize> = (0..incremental.len())
                    .filter(|&i| before.get(i) != Some(&incremental[i]))
                    .collect();
                prop_assert_eq!(changes.changed().collect::<Vec<_>>(), differ, "changes, specs {:?}", specs);
                prop_assert_eq!(&full, &reference, "full recompute vs reference, specs {:?}", specs);
            }
        }
    }
}

#[test]
fn every_example_of_the_user_docs_compiles() {
    let doc = include_str!("../../../../docs/expressions.md");
    let mut examples = 0;
    for line in doc
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with("` |"))
    {
        let cell = line
            .trim_end_matches(" |")
            .rsplit(" | ")
            .next()
            .expect("a cell");
        let Some(expr) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        let specs = [
            spec(DefKind::ComputedTrait, "t", expr),
            spec(DefKind::Audience, "a", "true"),
            spec(DefKind::Audience, "b", "true"),
            spec(DefKind::Audience, "churned", "false"),
        ];
        if let Err(e) = Catalog::compile(&specs) {
            panic!("docs/expressions.md example `{expr}`: {e}");
        }
        examples += 1;
    }
    assert!(examples >= 40, "found only {examples} examples");
}
