//! Unit and property tests of `parse_request` / `normalize_one`: one test (or more) per rule.

use super::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// 2023-11-14T22:13:20.000Z
const RECEIVED: i64 = 1_700_000_000_000;
const RECEIVED_STR: &str = "2023-11-14T22:13:20.000Z";

fn server() -> RequestMeta<'static> {
    RequestMeta {
        received_at_ms: RECEIVED,
        client_ip: Some("203.0.113.7"),
        browser: false,
    }
}

fn browser() -> RequestMeta<'static> {
    RequestMeta {
        browser: true,
        ..server()
    }
}

fn batch_with(body: &str, meta: &RequestMeta, limits: &Limits) -> Parsed {
    parse_request(body.as_bytes(), Shape::Batch, meta, limits).expect("request accepted")
}

fn batch(body: &str) -> Parsed {
    batch_with(body, &server(), &Limits::default())
}

fn batch_err(body: &str) -> RequestError {
    parse_request(body.as_bytes(), Shape::Batch, &server(), &Limits::default())
        .expect_err("request refused")
}

fn single(ty: EventType, body: &str) -> Result<Parsed, RequestError> {
    parse_request(
        body.as_bytes(),
        Shape::Single(ty),
        &server(),
        &Limits::default(),
    )
}

fn one_event(body: &str) -> Value {
    let parsed = batch(body);
    assert_eq!(parsed.rejected, [], "no rejection expected");
    assert_eq!(parsed.events.len(), 1);
    serde_json::from_slice(&parsed.events[0].json).expect("output is JSON")
}

/// Wraps one item into a batch body.
fn item(event: &str) -> String {
    format!(r#"{{"batch":[{event}]}}"#)
}

fn rejection(event: &str) -> Rejected {
    let parsed = batch(&item(event));
    assert_eq!(parsed.events.len(), 0, "event should be rejected");
    parsed.rejected.into_iter().next().unwrap()
}

fn assert_rejected(event: &str, code: &str, needle: &str) {
    let r = rejection(event);
    assert_eq!(r.index, 0);
    assert_eq!(r.code, code, "{}", r.message);
    assert!(
        r.message.starts_with("event 0: "),
        "message has the index: {}",
        r.message
    );
    assert!(
        r.message.contains(needle),
        "message {:?} should contain {needle:?}",
        r.message
    );
}

// ---- EventType, Limits, Rejected ----

#[test]
fn event_type_names_and_letters() {
    for (t, name, letter) in [
        (EventType::Identify, "identify", "i"),
        (EventType::Track, "track", "t"),
        (EventType::Page, "page", "p"),
        (EventType::Screen, "screen", "s"),
        (EventType::Group, "group", "g"),
        (EventType::Alias, "alias", "a"),
    ] {
        assert_eq!(t.as_str(), name);
        assert_eq!(EventType::parse(name), Some(t));
        assert_eq!(EventType::from_letter(letter), Some(t));
    }
    assert_eq!(EventType::parse("Track"), None);
    assert_eq!(EventType::parse("batch"), None);
    assert_eq!(EventType::from_letter("b"), None);
    assert_eq!(EventType::from_letter("track"), None);
}

#[test]
fn default_limits() {
    let l = Limits::default();
    assert_eq!(
        (
            l.max_event_bytes,
            l.max_batch_bytes,
            l.max_batch_events,
            l.max_depth
        ),
        (32 * 1024, 500 * 1024, 2500, 64)
    );
}

#[test]
fn rejected_serializes_as_documented() {
    let r = Rejected {
        index: 3,
        code: "missing_id",
        message: "m".into(),
    };
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"index":3,"code":"missing_id","message":"m"})
    );
    let e = RequestError {
        status: 400,
        code: "empty_batch",
        message: "x".into(),
    };
    assert_eq!(e.to_string(), "empty_batch: x");
}

// ---- Rule 1: request-level errors ----

#[test]
fn invalid_json_names_the_position() {
    let e = batch_err("{\"batch\": [\n  {\"type\": }\n]}");
    assert_eq!((e.status, e.code), (400, "invalid_json"));
    assert!(e.message.contains("line 2 column 12"), "{}", e.message);

    let e = batch_err("");
    assert_eq!(e.code, "invalid_json");
    assert!(e.message.contains("line 1 column 0"), "{}", e.message);

    let e = single(EventType::Track, "{\"a\":1,}").unwrap_err();
    assert_eq!((e.status, e.code), (400, "invalid_json"));
    assert!(e.message.contains("line 1 column"), "{}", e.message);

    // Trailing garbage after a valid value.
    assert_eq!(batch_err(r#"{"batch":[]} x"#).code, "invalid_json");
}

#[test]
fn invalid_utf8_is_invalid_json() {
    let body = b"{\"batch\":[\n{\"userId\":\"\xff\"}]}";
    let e = parse_request(body, Shape::Batch, &server(), &Limits::default()).unwrap_err();
    assert_eq!((e.status, e.code), (400, "invalid_json"));
    assert_eq!(
        e.message,
        "request body is not valid JSON: invalid UTF-8 at line 2 column 12"
    );
}

#[test]
fn body_must_be_an_object() {
    for (body, kind) in [
        ("[1]", "an array"),
        ("\"x\"", "a string"),
        ("null", "null"),
        (" 12 ", "a number"),
    ] {
        let e = batch_err(body);
        assert_eq!((e.status, e.code), (400, "invalid_body"), "{body}");
        assert!(e.message.contains(kind), "{}", e.message);
        let e = single(EventType::Track, body).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_body"), "{body}");
    }
    // Not an object and not JSON either: the syntax error wins.
    assert_eq!(batch_err("[1,").code, "invalid_json");
}

#[test]
fn batch_must_be_a_present_array() {
    let e = batch_err(r#"{"sentAt":"2023-11-14T22:13:20Z"}"#);
    assert_eq!((e.status, e.code), (400, "invalid_batch"));
    assert!(e.message.contains("`batch` is missing"), "{}", e.message);
    for (body, kind) in [
        (r#"{"batch":{"type":"track"}}"#, "an object"),
        (r#"{"batch":"[]"}"#, "a string"),
        (r#"{"batch":null}"#, "null"),
        (r#"{"batch":true}"#, "a boolean"),
        (r#"{"batch":1.5}"#, "a number"),
    ] {
        let e = batch_err(body);
        assert_eq!((e.status, e.code), (400, "invalid_batch"), "{body}");
        assert!(
            e.message.contains("`batch` must be an array"),
            "{}",
            e.message
        );
        assert!(e.message.contains(kind), "{}", e.message);
    }
}

#[test]
fn empty_batch() {
    let e = batch_err(r#"{"batch":[]}"#);
    assert_eq!((e.status, e.code), (400, "empty_batch"));
    assert!(e.message.contains("`batch` is empty"));
}

#[test]
fn too_many_events_names_count_limit_and_key() {
    let limits = Limits {
        max_batch_events: 3,
        ..Limits::default()
    };
    let ev = r#"{"type":"identify","userId":"u"}"#;
    let body = format!(r#"{{"batch":[{ev},{ev},{ev},{ev}]}}"#);
    let e = parse_request(body.as_bytes(), Shape::Batch, &server(), &limits).unwrap_err();
    assert_eq!((e.status, e.code), (400, "too_many_events"));
    assert_eq!(
        e.message,
        "`batch` holds 4 events, over the limit of 3 events per request (`max_batch_events`)"
    );
    let body = format!(r#"{{"batch":[{ev},{ev},{ev}]}}"#);
    assert_eq!(batch_with(&body, &server(), &limits).events.len(), 3);
}

#[test]
fn request_too_large_is_413_naming_the_limit() {
    let limits = Limits {
        max_batch_bytes: 100,
        max_event_bytes: 50,
        ..Limits::default()
    };
    let body = format!(
        r#"{{"batch":[{{"type":"identify","userId":"{}"}}]}}"#,
        "u".repeat(80)
    );
    let e = parse_request(body.as_bytes(), Shape::Batch, &server(), &limits).unwrap_err();
    assert_eq!((e.status, e.code), (413, "request_too_large"));
    assert!(
        e.message
            .contains("over the limit of 100 bytes (`max_batch_bytes`)")
    );

    let body = format!(r#"{{"userId":"{}"}}"#, "u".repeat(60));
    let e = parse_request(
        body.as_bytes(),
        Shape::Single(EventType::Identify),
        &server(),
        &limits,
    )
    .unwrap_err();
    assert_eq!((e.status, e.code), (413, "request_too_large"));
    assert!(
        e.message
            .contains("over the limit of 50 bytes (`max_event_bytes`)")
    );
}

#[test]
fn batch_level_fields_are_validated() {
    let e = batch_err(r#"{"batch":[{}],"context":[]}"#);
    assert_eq!((e.status, e.code), (400, "invalid_field"));
    assert!(
        e.message
            .contains("batch-level `context` must be an object")
    );
    let e = batch_err(r#"{"batch":[{}],"integrations":"x"}"#);
    assert_eq!(e.code, "invalid_field");
    assert!(e.message.contains("`integrations`"));
    let e = batch_err(r#"{"batch":[{}],"sentAt":"soon"}"#);
    assert_eq!((e.status, e.code), (400, "invalid_timestamp"));
    assert!(e.message.contains("batch-level `sentAt`"), "{}", e.message);
    let e = batch_err(r#"{"batch":[{}],"writeKey":12}"#);
    assert_eq!((e.status, e.code), (400, "invalid_field"));
    assert!(e.message.contains("`writeKey` must be a string"));

    let deep = format!(
        r#"{{"batch":[{{}}],"context":{}1{}}}"#,
        r#"{"a":"#.repeat(64),
        "}".repeat(64)
    );
    let e = batch_err(&deep);
    assert_eq!((e.status, e.code), (400, "too_deep"));
    assert!(e.message.contains("batch-level `context`") && e.message.contains("`max_depth`"));
    let e = batch_err(r#"{"batch":[{}],"context":{"n":1e999}}"#);
    assert_eq!((e.status, e.code), (400, "number_out_of_range"));
    assert!(e.message.contains("`n`"), "{}", e.message);

    let limits = Limits {
        max_event_bytes: 20,
        ..Limits::default()
    };
    let body = r#"{"batch":[{}],"context":{"library":"0123456789"}}"#;
    let e = parse_request(body.as_bytes(), Shape::Batch, &server(), &limits).unwrap_err();
    assert_eq!((e.status, e.code), (413, "request_too_large"));
    assert!(e.message.contains("`max_event_bytes`"));
}

// ---- Rule 3: per-event errors ----

#[test]
fn item_must_be_an_object() {
    assert_rejected(
        "42",
        "invalid_event",
        "event must be a JSON object, got a number",
    );
    assert_rejected("[]", "invalid_event", "got an array");
    assert_rejected("null", "invalid_event", "got null");
}

#[test]
fn event_too_large_names_the_limit() {
    let limits = Limits {
        max_event_bytes: 60,
        ..Limits::default()
    };
    let small = r#"{"type":"identify","userId":"u"}"#;
    let big = format!(r#"{{"type":"identify","userId":"{}"}}"#, "u".repeat(60));
    let body = format!(r#"{{"batch":[{small},{big},{small}]}}"#);
    let parsed = batch_with(&body, &server(), &limits);
    assert_eq!(parsed.events.len(), 2);
    assert_eq!(parsed.rejected.len(), 1);
    let r = &parsed.rejected[0];
    assert_eq!((r.index, r.code), (1, "event_too_large"));
    assert_eq!(
        r.message,
        "event 1: event is 91 bytes, over the limit of 60 bytes (`max_event_bytes`)"
    );
}

#[test]
fn batch_items_need_a_known_type() {
    assert_rejected(r#"{"userId":"u"}"#, "invalid_type", "`type` is missing");
    assert_rejected(
        r#"{"type":"purchase","userId":"u"}"#,
        "invalid_type",
        "got \"purchase\"",
    );
    assert_rejected(
        r#"{"type":7,"userId":"u"}"#,
        "invalid_type",
        "one of identify",
    );
    assert_rejected(r#"{"type":null,"userId":"u"}"#, "invalid_type", "missing");
}

#[test]
fn single_route_type_wins() {
    for body in [
        r#"{"type":"identify","userId":"u","event":"Clicked"}"#,
        r#"{"type":"nonsense","userId":"u","event":"Clicked"}"#,
        r#"{"userId":"u","event":"Clicked"}"#,
    ] {
        let parsed = single(EventType::Track, body).unwrap();
        let ev = &parsed.events[0];
        assert_eq!(ev.event_type, EventType::Track);
        let v: Value = serde_json::from_slice(&ev.json).unwrap();
        assert_eq!(v["type"], "track");
    }
}

#[test]
fn identity_is_required() {
    let msg = "event has neither `userId` nor `anonymousId`";
    assert_rejected(r#"{"type":"identify"}"#, "missing_id", msg);
    assert_rejected(
        r#"{"type":"identify","userId":"","anonymousId":null}"#,
        "missing_id",
        msg,
    );
    assert_rejected(
        r#"{"type":"track","event":"E","groupId":"g"}"#,
        "missing_id",
        msg,
    );
    assert_rejected(r#"{"type":"page","previousId":"p"}"#, "missing_id", msg);
    // Either id is enough; group/alias may be identified by their own id.
    one_event(r#"{"batch":[{"type":"identify","anonymousId":"a"}]}"#);
    one_event(r#"{"batch":[{"type":"identify","userId":0}]}"#);
    one_event(r#"{"batch":[{"type":"group","groupId":"g"}]}"#);
    let r = rejection(r#"{"type":"alias","previousId":"p"}"#);
    assert_eq!(r.code, "missing_field");
    assert!(r.message.contains("`userId` is required for alias events"));
}

#[test]
fn identifiers_must_be_strings_or_numbers() {
    for field in ["userId", "anonymousId", "groupId", "previousId"] {
        for (value, kind) in [
            ("{}", "an object"),
            ("[1]", "an array"),
            ("true", "a boolean"),
        ] {
            let ev = format!(r#"{{"type":"identify","userId":"u","{field}":{value}}}"#);
            assert_rejected(
                &ev,
                "invalid_field",
                &format!("`{field}` must be a string or a number, got {kind}"),
            );
        }
    }
}

#[test]
fn documented_message_example() {
    let body = r#"{"batch":[
        {"type":"identify","userId":"a"},
        {"type":"identify","userId":"b"},
        {"type":"identify","userId":"c"},
        {"type":"identify","userId":{"id":1}}]}"#;
    let parsed = batch(body);
    assert_eq!(parsed.events.len(), 3);
    assert_eq!(
        parsed.rejected,
        [Rejected {
            index: 3,
            code: "invalid_field",
            message: "event 3: `userId` must be a string or a number, got an object".into()
        }]
    );
}

#[test]
fn type_specific_required_fields() {
    assert_rejected(
        r#"{"type":"track","userId":"u"}"#,
        "missing_field",
        "`event` is required for track events",
    );
    assert_rejected(
        r#"{"type":"track","userId":"u","event":""}"#,
        "missing_field",
        "`event`",
    );
    assert_rejected(
        r#"{"type":"track","userId":"u","event":null}"#,
        "missing_field",
        "`event`",
    );
    assert_rejected(
        r#"{"type":"track","userId":"u","event":5}"#,
        "invalid_field",
        "`event` must be a string, got a number",
    );
    assert_rejected(
        r#"{"type":"alias","userId":"u"}"#,
        "missing_field",
        "`previousId` is required for alias events",
    );
    assert_rejected(
        r#"{"type":"group","userId":"u"}"#,
        "missing_field",
        "`groupId` is required for group events",
    );
    one_event(&item(r#"{"type":"alias","userId":"u","previousId":"p"}"#));
    one_event(&item(r#"{"type":"page","userId":"u"}"#));
    one_event(&item(r#"{"type":"screen","anonymousId":"a"}"#));
}

#[test]
fn object_members_must_be_objects() {
    for field in ["properties", "traits", "context", "integrations"] {
        let ev = format!(r#"{{"type":"identify","userId":"u","{field}":[1]}}"#);
        assert_rejected(
            &ev,
            "invalid_field",
            &format!("`{field}` must be an object, got an array"),
        );
        let ev = format!(r#"{{"type":"identify","userId":"u","{field}":null}}"#);
        one_event(&item(&ev));
    }
}

#[test]
fn message_id_rules() {
    let long = "m".repeat(101);
    assert_rejected(
        &format!(r#"{{"type":"identify","userId":"u","messageId":"{long}"}}"#),
        "message_id_too_long",
        "`messageId` is 101 characters, over the limit of 100",
    );
    assert_rejected(
        r#"{"type":"identify","userId":"u","messageId":12}"#,
        "invalid_field",
        "`messageId` must be a string, got a number",
    );
    // 100 characters of 2 bytes each is within the limit.
    let wide = "é".repeat(100);
    let v = one_event(&item(&format!(
        r#"{{"type":"identify","userId":"u","messageId":"{wide}"}}"#
    )));
    assert_eq!(v["messageId"], wide.as_str());

    // Absent, null or empty: a UUID v4 is generated.
    for ev in [
        r#"{"type":"identify","userId":"u"}"#,
        r#"{"type":"identify","userId":"u","messageId":null}"#,
        r#"{"type":"identify","userId":"u","messageId":""}"#,
    ] {
        let parsed = batch(&item(ev));
        let n = &parsed.events[0];
        let id = uuid::Uuid::parse_str(&n.message_id).expect("a UUID");
        assert_eq!(id.get_version_num(), 4);
        let v: Value = serde_json::from_slice(&n.json).unwrap();
        assert_eq!(v["messageId"], n.message_id.as_str());
    }
    let parsed = batch(&item(
        r#"{"type":"identify","userId":"u","messageId":"a\"b"}"#,
    ));
    assert_eq!(parsed.events[0].message_id, "a\"b");
}

#[test]
fn timestamps_must_be_iso8601() {
    for field in ["timestamp", "originalTimestamp", "sentAt"] {
        for value in [r#""yesterday""#, "1700000000", r#""2023-02-30T00:00:00Z""#] {
            let ev = format!(r#"{{"type":"identify","userId":"u","{field}":{value}}}"#);
            assert_rejected(
                &ev,
                "invalid_timestamp",
                &format!("`{field}` must be an ISO-8601 date-time string"),
            );
        }
        let ev = format!(r#"{{"type":"identify","userId":"u","{field}":null}}"#);
        one_event(&item(&ev));
    }
    let r = rejection(r#"{"type":"identify","userId":"u","sentAt":"soon"}"#);
    assert!(r.message.ends_with("got \"soon\""), "{}", r.message);
}

#[test]
fn json_limits_per_event() {
    let deep = format!(
        r#"{{"type":"identify","userId":"u","traits":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_rejected(&deep, "too_deep", "limit of 64 levels (`max_depth`)");
    assert_rejected(
        r#"{"type":"track","userId":"u","event":"E","properties":{"price":1e400}}"#,
        "number_out_of_range",
        "`properties.price` holds the number 1e400",
    );
    assert_rejected(
        r#"{"type":"track","userId":"u","event":"E","properties":{"l":[0,-1e400]}}"#,
        "number_out_of_range",
        "`properties.l[1]`",
    );
    // Depth 64 exactly is fine: the event object is level 1.
    let ok = format!(
        r#"{{"type":"identify","userId":"u","list":{}{}}}"#,
        "[".repeat(63),
        "]".repeat(63)
    );
    one_event(&item(&ok));
    let big = r#"{"type":"identify","userId":"u","traits":{"n":123456789012345678901234567890,"f":1e300}}"#;
    let v = one_event(&item(big));
    assert_eq!(v["traits"]["f"], 1e300);
}

#[test]
fn single_shape_errors_are_request_errors() {
    let e = single(EventType::Track, r#"{"userId":"u"}"#).unwrap_err();
    assert_eq!(
        e,
        RequestError {
            status: 400,
            code: "missing_field",
            message: "`event` is required for track events".into()
        }
    );
    let e = single(EventType::Identify, r#"{"traits":{}}"#).unwrap_err();
    assert_eq!((e.status, e.code), (400, "missing_id"));
    let deep = format!(
        r#"{{"userId":"u","p":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let e = single(EventType::Identify, &deep).unwrap_err();
    assert_eq!((e.status, e.code), (400, "too_deep"));
}

#[test]
fn rejected_events_do_not_affect_the_rest() {
    let body = r#"{"batch":[
        {"type":"identify","userId":"a"},
        "nope",
        {"type":"track","userId":"b"},
        {"type":"track","userId":"c","event":"E"}]}"#;
    let parsed = batch(body);
    let ids: Vec<_> = parsed
        .events
        .iter()
        .map(|e| e.user_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    let codes: Vec<_> = parsed.rejected.iter().map(|r| (r.index, r.code)).collect();
    assert_eq!(codes, [(1, "invalid_event"), (2, "missing_field")]);
}

// ---- Rule 4: normalization ----

#[test]
fn clock_skew_correction_with_concrete_numbers() {
    // The client clock is 5 s ahead: it stamped the event at 22:13:24.000 (its time) and sent it
    // at 22:13:25.000 (its time); the server received it at 22:13:20.000. The event happened 1 s
    // before sending, so timestamp = 22:13:20.000 - (25.000 - 24.000) = 22:13:19.000.
    let v = one_event(
        r#"{"batch":[{"type":"identify","userId":"u",
            "originalTimestamp":"2023-11-14T22:13:24.000Z","sentAt":"2023-11-14T22:13:25.000Z"}]}"#,
    );
    assert_eq!(v["timestamp"], "2023-11-14T22:13:19.000Z");
    assert_eq!(v["originalTimestamp"], "2023-11-14T22:13:24.000Z");
    assert_eq!(v["sentAt"], "2023-11-14T22:13:25.000Z");
    assert_eq!(v["receivedAt"], RECEIVED_STR);

    // Offsets and fractions: 23:13:24.500+01:00 = 22:13:24.500Z; sentAt 22:13:25.750Z → skew
    // 1.25 s → 22:13:18.750Z. `timestamp` stands in for a missing originalTimestamp and is kept
    // verbatim as originalTimestamp; the batch-level sentAt applies.
    let v = one_event(
        r#"{"sentAt":"2023-11-14T22:13:25.750Z","batch":[{"type":"identify","userId":"u",
            "timestamp":"2023-11-14T23:13:24.5+01:00"}]}"#,
    );
    assert_eq!(v["timestamp"], "2023-11-14T22:13:18.750Z");
    assert_eq!(v["originalTimestamp"], "2023-11-14T23:13:24.5+01:00");
    assert_eq!(v["sentAt"], "2023-11-14T22:13:25.750Z");

    // The event's own sentAt beats the batch's; originalTimestamp (not timestamp) is the
    // client clock that gets skew-corrected.
    let v = one_event(
        r#"{"sentAt":"2000-01-01T00:00:00Z","batch":[{"type":"identify","userId":"u",
            "originalTimestamp":"2023-11-14T22:00:00Z","sentAt":"2023-11-14T22:00:10Z"}]}"#,
    );
    assert_eq!(v["timestamp"], "2023-11-14T22:13:10.000Z");
    assert_eq!(v["originalTimestamp"], "2023-11-14T22:00:00Z");
    assert_eq!(v["sentAt"], "2023-11-14T22:00:10Z");

    // rudder_sdk_node_explicit_timestamp: a caller-set `timestamp` next to the SDK's own
    // originalTimestamp is the event time and is kept (normalized), not skew-corrected.
    let v = one_event(
        r#"{"sentAt":"2000-01-01T00:00:00Z","batch":[{"type":"track","userId":"u","event":"E",
            "timestamp":"2024-05-06T07:08:09.123Z","originalTimestamp":"2023-11-14T22:00:00Z",
            "sentAt":"2023-11-14T22:00:10Z"}]}"#,
    );
    assert_eq!(v["timestamp"], "2024-05-06T07:08:09.123Z");
    assert_eq!(v["originalTimestamp"], "2023-11-14T22:00:00Z");
}

#[test]
fn clock_skew_fallbacks() {
    // No sentAt: the client time, normalized.
    let v = one_event(&item(
        r#"{"type":"identify","userId":"u","timestamp":"2023-01-01T00:00:00+02:00"}"#,
    ));
    assert_eq!(v["timestamp"], "2022-12-31T22:00:00.000Z");
    assert_eq!(v["originalTimestamp"], "2023-01-01T00:00:00+02:00");
    assert!(v.get("sentAt").is_none());

    // No client time at all: receivedAt; no originalTimestamp is invented.
    let v = one_event(&item(r#"{"type":"identify","userId":"u"}"#));
    assert_eq!(v["timestamp"], RECEIVED_STR);
    assert!(v.get("originalTimestamp").is_none());

    // sentAt without a client event time: receivedAt, sentAt kept.
    let v = one_event(&item(
        r#"{"type":"identify","userId":"u","sentAt":"2020-01-01T00:00:00Z"}"#,
    ));
    assert_eq!(v["timestamp"], RECEIVED_STR);
    assert_eq!(v["sentAt"], "2020-01-01T00:00:00Z");

    // rudder-sdk-node's batch-level `timestamp` stands in for a missing batch `sentAt`.
    let v = one_event(
        r#"{"timestamp":"2023-11-14T22:13:30Z","batch":[{"type":"identify","userId":"u",
            "originalTimestamp":"2023-11-14T22:13:29Z"}]}"#,
    );
    assert_eq!(v["timestamp"], "2023-11-14T22:13:19.000Z");
    assert_eq!(v["sentAt"], "2023-11-14T22:13:30Z");

    // Absurd skews clamp to the representable range instead of overflowing.
    let v = one_event(&item(
        r#"{"type":"identify","userId":"u","originalTimestamp":"0001-01-01T00:00:00Z","sentAt":"9999-12-31T00:00:00Z"}"#,
    ));
    assert_eq!(v["timestamp"], "0000-01-01T00:00:00.000Z");
}

#[test]
fn received_at_and_timestamp_are_server_values() {
    let v = one_event(&item(
        r#"{"type":"identify","userId":"u","receivedAt":"1999-01-01T00:00:00Z","timestamp":null}"#,
    ));
    assert_eq!(v["receivedAt"], RECEIVED_STR);
    assert_eq!(v["timestamp"], RECEIVED_STR);
}

#[test]
fn batch_context_and_integrations_are_deep_merged() {
    let v = one_event(
        r#"{"context":{"library":{"name":"analytics-python","version":"2.3"},"locale":"en"},
            "integrations":{"All":false,"Mixpanel":{"a":1}},
            "batch":[{"type":"identify","userId":"u",
              "context":{"library":{"name":"mine"},"app":{"v":"1"}},
              "integrations":{"Mixpanel":{"b":2},"Amplitude":true}}]}"#,
    );
    assert_eq!(
        v["context"],
        json!({"library":{"name":"mine","version":"2.3"},"app":{"v":"1"},"locale":"en"})
    );
    assert_eq!(
        v["integrations"],
        json!({"Mixpanel":{"b":2,"a":1},"Amplitude":true,"All":false})
    );

    // No event-level context (or a null one): the batch's is copied.
    let v = one_event(
        r#"{"context":{"a":1},"integrations":{"All":true},
            "batch":[{"type":"identify","userId":"u","context":null}]}"#,
    );
    assert_eq!(v["context"], json!({"a":1}));
    assert_eq!(v["integrations"], json!({"All":true}));
}

#[test]
fn numeric_ids_become_strings() {
    let parsed = batch(&item(
        r#"{"type":"alias","userId":123,"anonymousId":1.5,"previousId":-7,
            "groupId":123456789012345678901234567890}"#,
    ));
    let n = &parsed.events[0];
    assert_eq!(n.user_id.as_deref(), Some("123"));
    assert_eq!(n.anonymous_id.as_deref(), Some("1.5"));
    let v: Value = serde_json::from_slice(&n.json).unwrap();
    assert_eq!(v["userId"], "123");
    assert_eq!(v["anonymousId"], "1.5");
    assert_eq!(v["previousId"], "-7");
    assert_eq!(v["groupId"], "123456789012345678901234567890");
    let v = one_event(&item(
        r#"{"type":"identify","userId":1e3,"anonymousId":2.50}"#,
    ));
    assert_eq!(
        (&v["userId"], &v["anonymousId"]),
        (&json!("1000"), &json!("2.5"))
    );
}

#[test]
fn context_ip_from_the_peer() {
    let limits = Limits::default();
    let ip = |body: &str, meta: &RequestMeta| -> Option<Value> {
        let p = batch_with(body, meta, &limits);
        let v: Value = serde_json::from_slice(&p.events[0].json).unwrap();
        v.get("context").map(|c| c["ip"].clone())
    };
    let ev = |ctx: &str| item(&format!(r#"{{"type":"identify","userId":"u"{ctx}}}"#));
    let peer = Some(json!("203.0.113.7"));

    // Browser routes: filled when absent or null, never overwritten.
    assert_eq!(ip(&ev(""), &browser()), peer);
    assert_eq!(ip(&ev(r#","context":{ }"#), &browser()), peer);
    assert_eq!(
        ip(&ev(r#","context":{"ip":null,"x":{"ip":1}}"#), &browser()),
        peer
    );
    assert_eq!(
        ip(&ev(r#","context":{"\u0069p":"8.8.8.8"}"#), &browser()),
        Some(json!("8.8.8.8"))
    );
    assert_eq!(ip(&ev(r#","context":{"a":1}"#), &browser()), peer);
    assert_eq!(ip(&ev(r#","context":{"ip":null}"#), &browser()), peer);
    assert_eq!(
        ip(&ev(r#","context":{"ip":"10.0.0.1"}"#), &browser()),
        Some(json!("10.0.0.1"))
    );
    // Server routes: only with context.direct == true.
    assert_eq!(ip(&ev(""), &server()), None);
    assert_eq!(
        ip(&ev(r#","context":{"a":1}"#), &server()),
        Some(Value::Null)
    );
    assert_eq!(ip(&ev(r#","context":{"direct":true}"#), &server()), peer);
    assert_eq!(
        ip(&ev(r#","context":{"direct":false}"#), &server()),
        Some(Value::Null)
    );
    assert_eq!(
        ip(
            &ev(r#","context":{"direct":true,"ip":"1.1.1.1"}"#),
            &server()
        ),
        Some(json!("1.1.1.1"))
    );
    // Escaped key spelling is still recognized.
    assert_eq!(
        ip(&ev(r#","context":{"\u0064irect":true}"#), &server()),
        peer
    );
    // The batch-level context counts too, the event's value first.
    let body = r#"{"context":{"direct":true},"batch":[{"type":"identify","userId":"u"}]}"#;
    assert_eq!(ip(body, &server()), peer);
    let body =
        r#"{"context":{"direct":true,"ip":"9.9.9.9"},"batch":[{"type":"identify","userId":"u"}]}"#;
    assert_eq!(ip(body, &server()), Some(json!("9.9.9.9")));
    let body = r#"{"context":{"direct":true},"batch":[{"type":"identify","userId":"u","context":{"direct":false}}]}"#;
    assert_eq!(ip(body, &server()), Some(Value::Null));
    // No peer address known: nothing to fill.
    let no_peer = RequestMeta {
        client_ip: None,
        ..browser()
    };
    assert_eq!(ip(&ev(""), &no_peer), None);
}

#[test]
fn write_key_goes_to_parsed_and_is_dropped_from_events() {
    let parsed = batch(
        r#"{"writeKey":"wk_top","batch":[{"type":"identify","userId":"u","writeKey":"wk_item"}]}"#,
    );
    assert_eq!(parsed.write_key.as_deref(), Some("wk_top"));
    let v: Value = serde_json::from_slice(&parsed.events[0].json).unwrap();
    assert!(v.get("writeKey").is_none());

    let parsed = batch(r#"{"batch":[{"type":"identify","userId":"u","writeKey":"wk_item"}]}"#);
    assert_eq!(parsed.write_key, None);

    let parsed = single(EventType::Identify, r#"{"writeKey":"wk_1","userId":"u"}"#).unwrap();
    assert_eq!(parsed.write_key.as_deref(), Some("wk_1"));
    assert!(!String::from_utf8_lossy(&parsed.events[0].json).contains("writeKey"));
    let e = single(EventType::Identify, r#"{"writeKey":[],"userId":"u"}"#).unwrap_err();
    assert_eq!((e.status, e.code), (400, "invalid_field"));
}

#[test]
fn untouched_members_are_copied_byte_for_byte() {
    let props = r#"{ "price" : 1.50, "big": 123456789012345678901234567890, "s": "\u00e9\n" }"#;
    let meta = r#"{"bundled":["Segment.io"],"unbundled":[]}"#;
    let body = format!(
        r#"{{"batch":[{{"type":"track","event":"Bought","userId":"u","channel":"server",
        "properties":{props},"_metadata":{meta},"version":2,"options":{{"x":null}},
        "name":"n","category":"c","traits":{{}},"userId":"v","\u0041":1}}]}}"#
    );
    let parsed = batch(&body);
    let out = String::from_utf8(parsed.events[0].json.clone()).unwrap();
    for member in [
        format!(r#""properties":{props}"#),
        format!(r#""_metadata":{meta}"#),
        r#""channel":"server""#.to_owned(),
        r#""version":2"#.to_owned(),
        r#""options":{"x":null}"#.to_owned(),
        r#""name":"n""#.to_owned(),
        r#""category":"c""#.to_owned(),
        r#""traits":{}"#.to_owned(),
        r#""event":"Bought""#.to_owned(),
        r#""A":1"#.to_owned(),
    ] {
        assert!(out.contains(&member), "{member} missing from {out}");
    }
    // Duplicate keys: the last one wins and only it is stored.
    assert_eq!(parsed.events[0].user_id.as_deref(), Some("v"));
    assert_eq!(out.matches("\"userId\"").count(), 1);
    assert!(out.contains(r#""userId":"v""#));
    // Top level is compact and in input order (a duplicate sits where its last occurrence is).
    assert!(
        out.starts_with(r#"{"type":"track","event":"Bought","channel":"server","properties":{ "#),
        "{out}"
    );
}

#[test]
fn required_members_are_always_present() {
    for ev in [
        r#"{"type":"identify","userId":"u"}"#,
        r#"{"userId":"u","type":"page","messageId":"m1","timestamp":"2023-11-14T22:13:20Z"}"#,
    ] {
        let v = one_event(&item(ev));
        for key in ["type", "messageId", "timestamp", "receivedAt"] {
            assert!(v[key].is_string(), "{key} missing in {v}");
        }
    }
}

#[test]
fn unknown_batch_members_are_ignored() {
    let v = one_event(
        r#"{"metadata":{"nodeVersion":"20"},"whatever":[[[[1]]]],"extra":1e999,
            "batch":[{"type":"identify","userId":"u"}]}"#,
    );
    assert!(v.get("metadata").is_none() && v.get("whatever").is_none());
}

#[test]
fn deep_nesting_anywhere_does_not_overflow_the_stack() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let limits = Limits {
        max_batch_bytes: 1 << 20,
        max_event_bytes: 1 << 20,
        ..Limits::default()
    };
    for body in [
        format!(r#"{{"x":{deep},"batch":[{{"type":"identify","userId":"u"}}]}}"#),
        format!(r#"{{"batch":[{deep}]}}"#),
        format!(r#"{{"batch":{deep}}}"#),
        format!(r#"{{"batch":[{{"type":"identify","userId":"u","p":{deep}}}]}}"#),
    ] {
        let _ = parse_request(body.as_bytes(), Shape::Batch, &server(), &limits);
    }
    let body = format!(r#"{{"userId":"u","p":{deep}}}"#);
    let e = parse_request(
        body.as_bytes(),
        Shape::Single(EventType::Identify),
        &server(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(e.code, "too_deep");
}

#[test]
fn single_event_normalization() {
    let parsed = parse_request(
        br#"{"userId":"u","event":"Clicked","properties":{"a":1},"context":{}}"#,
        Shape::Single(EventType::Track),
        &browser(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(parsed.rejected, []);
    let n = &parsed.events[0];
    assert_eq!(n.event_type, EventType::Track);
    assert_eq!(n.user_id.as_deref(), Some("u"));
    assert_eq!(n.anonymous_id, None);
    let v: Value = serde_json::from_slice(&n.json).unwrap();
    assert_eq!(v["context"], json!({"ip":"203.0.113.7"}));
    assert_eq!(v["type"], "track");

    let parsed = parse_request(
        br#"{"userId":"u","context":{"page":{"url":"https://x/?a=1"}, "ip" : null} }"#,
        Shape::Single(EventType::Page),
        &browser(),
        &Limits::default(),
    )
    .unwrap();
    let out = String::from_utf8(parsed.events[0].json.clone()).unwrap();
    assert!(
        out.contains(r#""context":{"page":{"url":"https://x/?a=1"},"ip":"203.0.113.7"}"#),
        "{out}"
    );
    let parsed = parse_request(
        br#"{"userId":"u","context":{"page":{"url":"https://x/"} }}"#,
        Shape::Single(EventType::Page),
        &browser(),
        &Limits::default(),
    )
    .unwrap();
    let out = String::from_utf8(parsed.events[0].json.clone()).unwrap();
    assert!(
        out.contains(r#""context":{"page":{"url":"https://x/"} ,"ip":"203.0.113.7"}"#),
        "{out}"
    );
}

// ---- normalize_one ----

#[test]
fn normalize_one_for_imports() {
    let limits = Limits::default();
    let n = normalize_one(
        b"{\"type\":\"track\",\"event\":\"E\",\"anonymousId\":\"a\",\"messageId\":\"m\"}\n",
        &server(),
        &limits,
    )
    .unwrap();
    assert_eq!(
        (n.event_type, n.message_id.as_str()),
        (EventType::Track, "m")
    );
    assert_eq!(n.anonymous_id.as_deref(), Some("a"));

    let r = normalize_one(b"{\"event\":\"E\",\"userId\":\"u\"}", &server(), &limits).unwrap_err();
    assert_eq!((r.index, r.code), (0, "invalid_type"));
    assert!(!r.message.starts_with("event 0"), "{}", r.message);

    let r = normalize_one(b"{\"type\":", &server(), &limits).unwrap_err();
    assert_eq!((r.index, r.code), (0, "invalid_json"));
    assert!(r.message.contains("line 1 column"));
    let r = normalize_one(b"\"x\"", &server(), &limits).unwrap_err();
    assert_eq!(r.code, "invalid_event");
    let r = normalize_one(b"{\"a\":\"\xc3\"}", &server(), &limits).unwrap_err();
    assert_eq!(r.code, "invalid_json");
    assert!(
        r.message.starts_with("event is not valid JSON"),
        "{}",
        r.message
    );

    let small = Limits {
        max_event_bytes: 10,
        ..Limits::default()
    };
    let r = normalize_one(b"{\"type\":\"identify\"}", &server(), &small).unwrap_err();
    assert_eq!(r.code, "event_too_large");
    assert!(r.message.contains("`max_event_bytes`"));
}

// ---- Properties ----

fn check_request_outcome(result: Result<Parsed, RequestError>) -> Result<(), TestCaseError> {
    match result {
        Ok(parsed) => {
            for ev in &parsed.events {
                let v: Value = serde_json::from_slice(&ev.json)
                    .map_err(|e| TestCaseError::fail(format!("output not JSON: {e}")))?;
                for key in ["type", "messageId", "timestamp", "receivedAt"] {
                    prop_assert!(v[key].is_string(), "{} missing", key);
                }
            }
            for r in &parsed.rejected {
                prop_assert!(!r.code.is_empty() && !r.message.is_empty());
            }
        }
        Err(e) => {
            prop_assert!(e.status == 400 || e.status == 413, "status {}", e.status);
            prop_assert!(!e.code.is_empty() && !e.message.is_empty());
        }
    }
    Ok(())
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "track",
            "identify",
            "group",
            "alias",
            "page",
            "2023-11-14T22:13:20Z",
            "",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "userId",
            "anonymousId",
            "messageId",
            "timestamp",
            "originalTimestamp",
            "sentAt",
            "event",
            "groupId",
            "previousId",
            "context",
            "integrations",
            "properties",
            "traits",
            "writeKey",
            "batch",
            "ip",
            "direct",
            "receivedAt",
        ])
        .prop_map(String::from),
        ".{0,6}",
    ]
}

/// A JSON body, then maybe damaged (truncated or with a byte changed).
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        prop::collection::vec(
            prop::collection::btree_map(arb_key(), arb_json(), 0..8),
            0..6
        )
        .prop_map(|items| json!({ "batch": items, "sentAt": "2023-11-14T22:13:25Z" })),
        arb_json(),
        (arb_json(), arb_json()).prop_map(|(c, b)| json!({"context": c, "batch": b})),
    ];
    (body, any::<usize>(), any::<u8>(), 0..3u8).prop_map(|(v, at, byte, damage)| {
        let mut bytes = serde_json::to_vec(&v).unwrap();
        if !bytes.is_empty() {
            let at = at % bytes.len();
            match damage {
                0 => bytes.truncate(at),
                1 => bytes[at] = byte,
                _ => {}
            }
        }
        bytes
    })
}

fn arb_meta() -> impl Strategy<Value = (bool, bool)> {
    (any::<bool>(), any::<bool>())
}

fn meta_of(browser: bool, ip: bool) -> RequestMeta<'static> {
    RequestMeta {
        received_at_ms: RECEIVED,
        client_ip: ip.then_some("2001:db8::1"),
        browser,
    }
}

/// A valid event: its required members plus arbitrary extra members (rendered compact or
/// pretty), with their expected raw text.
fn arb_valid_event() -> impl Strategy<Value = (EventType, String, Vec<(String, String)>)> {
    let ty = prop::sample::select(EventType::ALL.to_vec());
    let extra_key = "[a-zA-Z_][a-zA-Z0-9_ ]{0,8}".prop_filter("not a normalized member", |k| {
        ![
            "type",
            "userId",
            "anonymousId",
            "messageId",
            "timestamp",
            "originalTimestamp",
            "sentAt",
            "receivedAt",
            "event",
            "groupId",
            "previousId",
            "context",
            "integrations",
            "properties",
            "traits",
            "writeKey",
        ]
        .contains(&k.as_str())
    });
    let extras = prop::collection::btree_map(extra_key, (arb_json(), any::<bool>()), 0..6);
    let props = prop::option::of(prop::collection::btree_map("[a-z]{1,5}", arb_json(), 0..4));
    let ts = prop::option::of(0i64..4_102_444_800_000);
    (ty, extras, props, ts, any::<bool>()).prop_map(|(ty, extras, props, ts, numeric)| {
        let mut members: Vec<(String, String)> = Vec::new();
        members.push(("type".into(), format!("\"{}\"", ty.as_str())));
        members.push((
            "userId".into(),
            if numeric {
                "42".into()
            } else {
                "\"u-1\"".into()
            },
        ));
        members.push(("anonymousId".into(), "\"a-1\"".into()));
        match ty {
            EventType::Track => members.push(("event".into(), "\"Clicked\"".into())),
            EventType::Alias => members.push(("previousId".into(), "\"p-1\"".into())),
            EventType::Group => members.push(("groupId".into(), "\"g-1\"".into())),
            _ => {}
        }
        if let Some(ms) = ts {
            members.push((
                "timestamp".into(),
                format!("\"{}\"", crate::timestamp::format(ms)),
            ));
        }
        let mut untouched = Vec::new();
        if let Some(p) = props {
            let raw = serde_json::to_string(&p).unwrap();
            members.push(("properties".into(), raw.clone()));
            untouched.push(("properties".into(), raw));
        }
        for (k, (v, pretty)) in extras {
            let raw = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            members.push((k.clone(), raw.clone()));
            untouched.push((k, raw));
        }
        let body = members
            .iter()
            .map(|(k, v)| format!("{}: {v}", serde_json::to_string(k).unwrap()))
            .collect::<Vec<_>>()
            .join(", ");
        (ty, format!("{{ {body} }}"), untouched)
    })
}

/// The stored projection is the one computed from the stored JSON, and identity resolution
/// reads the same from both.
fn check_projection(n: &Normalized) -> Result<(), TestCaseError> {
    let from_json = crate::identity::project(&n.json);
    prop_assert_eq!(Some(&n.identity), from_json.as_ref());
    let rules = crate::identity::Rules::default();
    let (from_projection, from_event) = (
        crate::identity::observe(&n.identity, &rules),
        crate::identity::observe(&n.json, &rules),
    );
    prop_assert_eq!(from_projection.is_ok(), from_event.is_ok());
    prop_assert_eq!(from_projection.ok(), from_event.ok());
    Ok(())
}

#[test]
fn the_identity_projection_holds_what_identity_resolution_reads_after_merging() {
    let body = r#"{"batch":[
        {"type":"identify","userId":7,"traits":{"email":"a@b.io"},"context":{"ip":"1.1.1.1","device":{"id":"d1","type":"ios"}},"writeKey":"k"},
        {"type":"track","event":"E","anonymousId":"an","properties":{"x":1},"integrations":{"Google Analytics":{"clientId":"ga.9"}}},
        {"type":"group","userId":"u","groupId":"g","traits":{"name":"Acme"}},
        {"type":"alias","userId":"u","previousId":"p"}],
        "context":{"traits":{"phone":"+1555"},"library":{"name":"x"}},"sentAt":"2023-11-14T22:13:21.000Z"}"#;
    let parsed = batch(body);
    assert_eq!(parsed.rejected, []);
    let rules = crate::identity::Rules::default();
    let mut observed = Vec::new();
    for n in &parsed.events {
        check_projection(n).unwrap();
        let text = String::from_utf8_lossy(&n.identity).into_owned();
        // Only what identity resolution reads is kept.
        for dropped in ["1.1.1.1", "library", "writeKey", "properties", "\"E\""] {
            assert!(!text.contains(dropped), "{dropped} in {text}");
        }
        observed.push(crate::identity::observe(&n.identity, &rules).unwrap());
    }
    let ids = |i: usize| -> Vec<String> {
        observed[i]
            .identifiers
            .iter()
            .map(|k| k.to_string())
            .collect()
    };
    assert_eq!(
        ids(0),
        ["user_id:7", "email:a@b.io", "ios.id:d1", "phone:+1555"]
    );
    assert!(
        observed[0]
            .traits
            .contains(&("email".into(), "\"a@b.io\"".into()))
    );
    assert!(
        observed[0]
            .traits
            .contains(&("phone".into(), "\"+1555\"".into()))
    );
    assert_eq!(
        ids(1),
        ["anonymous_id:an", "ga_client_id:ga.9", "phone:+1555"]
    );
    let (group_id, group_traits) = observed[2].group.clone().unwrap();
    assert_eq!((group_id.as_str(), group_traits.len()), ("g", 1));
    assert_eq!(observed[3].previous_id.as_deref(), Some("p"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop_oneof![
                                       prop::collection::vec(any::<u8>(), 0..256),
                                       // JSON's alphabet, so more inputs get past UTF-8/lexing.
                                       r#"[\[\]{}":, 0-9eE.+\-ntrufalsbch\\]{0,200}"#
                                           .prop_map(String::into_bytes),
                                       r#"\{"batch":\[\{[\[\]{}":, 0-9eE.+\-a-z\\]{0,120}"#
                                           .prop_map(String::into_bytes),
                                   ],
                                   (browser, ip) in arb_meta()) {
        let meta = meta_of(browser, ip);
        for shape in [Shape::Batch, Shape::Single(EventType::Track)] {
            check_request_outcome(parse_request(&bytes, shape, &meta, &Limits::default()))?;
        }
        let _ = normalize_one(&bytes, &meta, &Limits::default());
    }

    #[test]
    fn json_ish_bodies_never_panic(body in arb_body(), (browser, ip) in arb_meta(),
                                   small in any::<bool>()) {
        let meta = meta_of(browser, ip);
        let limits = if small {
            Limits { max_event_bytes: 64, max_batch_bytes: 256, max_batch_events: 3, max_depth: 3 }
        } else {
            Limits::default()
        };
        for shape in [Shape::Batch, Shape::Single(EventType::Identify)] {
            let result = parse_request(&body, shape, &meta, &limits);
            if let (Ok(parsed), Shape::Batch) = (&result, shape) {
                // Raw values: an accepted batch may hold an event with a number serde's
                // `Value` refuses (that event is rejected, the batch is not).
                let v: std::collections::HashMap<String, &RawValue> =
                    serde_json::from_slice(&body).unwrap();
                let n = v.get("batch")
                    .and_then(|b| serde_json::from_str::<Vec<&RawValue>>(b.get()).ok())
                    .map_or(0, |items| items.len());
                prop_assert_eq!(parsed.events.len() + parsed.rejected.len(), n);
            }
            check_request_outcome(result)?;
        }
        if let Ok(n) = normalize_one(&body, &meta, &limits) {
            prop_assert!(serde_json::from_slice::<Value>(&n.json).is_ok());
            check_projection(&n)?;
        }
    }

    #[test]
    fn valid_events_round_trip_untouched_members((ty, event, untouched) in arb_valid_event(),
                                                 (browser, ip) in arb_meta()) {
        let meta = meta_of(browser, ip);
        let body = format!(r#"{{"batch":[{event}],"sentAt":"2023-11-14T22:13:21.000Z"}}"#);
        let parsed = parse_request(body.as_bytes(), Shape::Batch, &meta, &Limits::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&parsed.rejected, &[]);
        let n = &parsed.events[0];
        prop_assert_eq!(n.event_type, ty);
        check_projection(n)?;
        let out: std::collections::HashMap<String, Box<RawValue>> =
            serde_json::from_slice(&n.json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (k, raw) in &untouched {
            prop_assert_eq!(out.get(k).map(|v| v.get()), Some(raw.as_str()), "member {}", k);
        }
        for key in ["type", "messageId", "timestamp", "receivedAt"] {
            let v = out.get(key).map(|v| v.get().to_owned()).unwrap_or_default();
            prop_assert!(v.starts_with('"'), "{} missing", key);
        }
        let ts = crate::timestamp::parse(
            &serde_json::from_str::<String>(out["timestamp"].get()).unwrap());
        prop_assert!(ts.is_some());
        prop_assert_eq!(out["userId"].get().starts_with('"'), true);
        prop_assert_eq!(out["type"].get(), format!("\"{}\"", ty.as_str()));
    }
}
