//! Scenarios from Segment's identity-resolution documentation, and property tests of the
//! graph's invariants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_714_521_600_000; // 2024-05-01

/// Applies events (as JSON values) in order; offsets are their indexes.
struct Run {
    graph: Graph,
    next: u64,
}

impl Run {
    fn new(rules: Rules) -> Run {
        Run {
            graph: Graph::new(rules),
            next: 0,
        }
    }

    fn send(&mut self, mut event: serde_json::Value, at_ms: i64) -> Applied {
        event["timestamp"] = json!(crate::timestamp::format(at_ms));
        let bytes = serde_json::to_vec(&event).unwrap();
        let source: Arc<str> = Arc::from("web");
        let meta = EventMeta {
            offset: self.next,
            received_at_ms: at_ms,
            source: &source,
            message_id: &format!("m{}", self.next),
        };
        let mut batch = Batch::default();
        batch.push(&meta, &bytes, self.graph.rules()).unwrap();
        self.next += 1;
        let (meta, observed) = batch.get(0);
        let applied = self.graph.apply(&meta, &observed.unwrap());
        self.graph.check_invariants().unwrap();
        applied
    }

    fn owner(&self, kind: &str, value: &str) -> Option<ProfileId> {
        self.graph.lookup(kind, value).map(|p| p.id)
    }

    fn trait_of(&self, kind: &str, value: &str, key: &str) -> Option<String> {
        let p = self.graph.lookup(kind, value)?;
        p.traits.get(key).map(|t| t.json.to_string())
    }
}

fn track(ids: serde_json::Value) -> serde_json::Value {
    let mut e = json!({"type": "track", "event": "Viewed"});
    for (k, v) in ids.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

#[test]
fn anonymous_browsing_then_identify_joins_the_history() {
    let mut r = Run::new(Rules::default());
    r.send(track(json!({"anonymousId": "a1"})), T0);
    r.send(track(json!({"anonymousId": "a1"})), T0 + 1);
    let anon = r.owner("anonymous_id", "a1").unwrap();
    let applied = r.send(
        json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"email": "p@x.io"}}),
        T0 + 2,
    );
    assert_eq!(applied.profile, Some(anon));
    assert_eq!(r.owner("user_id", "u1"), Some(anon));
    assert_eq!(r.owner("email", "p@x.io"), Some(anon));
    assert_eq!(r.graph.profile(anon).unwrap().events.len(), 3);
    assert_eq!(r.graph.profile_count(), 1);
}

#[test]
fn the_same_person_on_two_devices_merges_and_explains_why() {
    let mut r = Run::new(Rules::default());
    r.send(
        json!({"type": "identify", "userId": "u1", "anonymousId": "phone"}),
        T0,
    );
    r.send(track(json!({"anonymousId": "laptop"})), T0 + 1);
    assert_eq!(r.graph.profile_count(), 2);
    let applied = r.send(
        json!({"type": "identify", "userId": "u1", "anonymousId": "laptop"}),
        T0 + 2,
    );
    assert_eq!(applied.merged.len(), 1);
    assert_eq!(r.graph.profile_count(), 1);
    let p = r.graph.lookup("anonymous_id", "laptop").unwrap();
    assert_eq!(r.owner("anonymous_id", "phone"), Some(p.id));
    assert_eq!(p.events.len(), 3);
    let m = &p.merges[0];
    assert_eq!(m.message_id.as_ref(), "m2");
    let joined = [m.into_identifier.clone(), m.from_identifier.clone()];
    assert!(joined.contains(&(Arc::from("user_id"), "u1".into())));
    assert!(joined.contains(&(Arc::from("anonymous_id"), "laptop".into())));
}

#[test]
fn a_shared_device_never_merges_two_user_ids() {
    let mut r = Run::new(Rules::default());
    r.send(
        json!({"type": "identify", "userId": "alice", "anonymousId": "kiosk"}),
        T0,
    );
    let applied = r.send(
        json!({"type": "identify", "userId": "bob", "anonymousId": "kiosk"}),
        T0 + 1,
    );
    let alice = r.owner("user_id", "alice").unwrap();
    let bob = r.owner("user_id", "bob").unwrap();
    assert_ne!(alice, bob);
    assert_eq!(applied.profile, Some(bob));
    assert_eq!(applied.dropped, vec![IdKey::new("anonymous_id", "kiosk")]);
    assert_eq!(r.owner("anonymous_id", "kiosk"), Some(alice));
}

#[test]
fn email_joins_profiles_and_a_conflicting_user_id_drops_the_email() {
    let mut r = Run::new(Rules::default());
    r.send(
        track(json!({"anonymousId": "a1", "context": {"traits": {"email": "e@x.io"}}})),
        T0,
    );
    r.send(
        json!({"type": "identify", "anonymousId": "a2", "traits": {"email": "e@x.io"}}),
        T0 + 1,
    );
    assert_eq!(r.owner("anonymous_id", "a1"), r.owner("anonymous_id", "a2"));
    // Segment's example: profile {user_id abc123, email e}; event {user_id abc456, email e}
    // → the email is dropped and abc456 gets its own profile.
    r.send(
        json!({"type": "identify", "userId": "abc123", "traits": {"email": "e@x.io"}}),
        T0 + 2,
    );
    let applied = r.send(
        json!({"type": "identify", "userId": "abc456", "traits": {"email": "e@x.io"}}),
        T0 + 3,
    );
    assert_eq!(applied.dropped, vec![IdKey::new("email", "e@x.io")]);
    assert_ne!(r.owner("user_id", "abc123"), r.owner("user_id", "abc456"));
    assert_eq!(r.owner("email", "e@x.io"), r.owner("user_id", "abc123"));
}

#[test]
fn blocked_values_never_merge_anything() {
    let mut r = Run::new(Rules::default());
    for (i, v) in ["null", "-1", "anonymous", "0000", "NULL", ""]
        .iter()
        .enumerate()
    {
        r.send(
            track(json!({"userId": format!("u{i}"), "anonymousId": v})),
            T0 + i as i64,
        );
        r.send(
            json!({"type": "identify", "userId": format!("v{i}"), "traits": {"email": v}}),
            T0 + i as i64,
        );
    }
    assert_eq!(r.graph.profile_count(), 12);
    assert!(r.owner("anonymous_id", "null").is_none());
    let applied = r.send(track(json!({"anonymousId": "null"})), T0 + 100);
    assert_eq!(applied.profile, None);
    // The value stays in the payload: the event is unchanged, only not an identifier.
    assert_eq!(r.graph.counters().unresolved, 1);
}

#[test]
fn configured_blocked_values_and_patterns() {
    let rules = Rules::new(&RulesSpec {
        blocked_values: vec!["test@example.com".into()],
        blocked_patterns: vec!["^tmp-".into()],
        ..Default::default()
    })
    .unwrap();
    let mut r = Run::new(rules);
    r.send(
        json!({"type": "identify", "userId": "u1", "traits": {"email": "TEST@example.com"}}),
        T0,
    );
    r.send(
        json!({"type": "identify", "userId": "u2", "traits": {"email": "test@example.com"}}),
        T0,
    );
    r.send(track(json!({"userId": "u3", "anonymousId": "tmp-1"})), T0);
    r.send(track(json!({"userId": "u4", "anonymousId": "tmp-1"})), T0);
    assert_eq!(r.graph.profile_count(), 4);
}

#[test]
fn limits_count_only_values_inside_their_window() {
    let rules = Rules::new(&RulesSpec {
        identifiers: vec![TypeSpec {
            kind: "anonymous_id".into(),
            limit: Some(2),
            window: Some("weekly".into()),
            priority: None,
        }],
        ..Default::default()
    })
    .unwrap();
    let mut r = Run::new(rules);
    r.send(track(json!({"userId": "u1", "anonymousId": "a1"})), T0);
    r.send(
        track(json!({"userId": "u1", "anonymousId": "a2"})),
        T0 + DAY,
    );
    // A third anonymous id within the week is dropped...
    let applied = r.send(
        track(json!({"userId": "u1", "anonymousId": "a3"})),
        T0 + 2 * DAY,
    );
    assert_eq!(applied.dropped, vec![IdKey::new("anonymous_id", "a3")]);
    assert_eq!(r.owner("anonymous_id", "a3"), None);
    // ...but once a1 is older than a week it no longer counts.
    let applied = r.send(
        track(json!({"userId": "u1", "anonymousId": "a4"})),
        T0 + 7 * DAY + 1,
    );
    assert!(applied.dropped.is_empty());
    assert_eq!(r.owner("anonymous_id", "a4"), r.owner("user_id", "u1"));
    // A merge that would break the limit drops the event's lowest-priority identifier.
    r.send(track(json!({"userId": "u2", "anonymousId": "b1"})), T0);
    let applied = r.send(
        track(json!({"userId": "u2", "anonymousId": "a4"})),
        T0 + 7 * DAY + 2,
    );
    assert_eq!(applied.dropped, vec![IdKey::new("anonymous_id", "a4")]);
    assert_ne!(r.owner("user_id", "u2"), r.owner("user_id", "u1"));
}

#[test]
fn an_alias_chain_links_previous_ids_to_the_user() {
    let mut r = Run::new(Rules::default());
    r.send(track(json!({"anonymousId": "a1"})), T0);
    r.send(track(json!({"anonymousId": "a2"})), T0 + 1);
    r.send(
        json!({"type": "alias", "previousId": "a1", "userId": "u1"}),
        T0 + 2,
    );
    r.send(
        json!({"type": "alias", "previousId": "a2", "userId": "u1"}),
        T0 + 3,
    );
    let p = r.owner("user_id", "u1").unwrap();
    assert_eq!(r.owner("anonymous_id", "a1"), Some(p));
    assert_eq!(r.owner("anonymous_id", "a2"), Some(p));
    assert_eq!(r.graph.profile(p).unwrap().merges.len(), 1);
    // An alias between two user ids cannot break the user_id limit.
    r.send(json!({"type": "identify", "userId": "u2"}), T0 + 4);
    r.send(
        json!({"type": "alias", "previousId": "u2", "userId": "u1"}),
        T0 + 5,
    );
    assert_ne!(r.owner("user_id", "u2"), r.owner("user_id", "u1"));
}

#[test]
fn hard_caps_stop_merging_but_events_still_resolve() {
    let rules = Rules::new(&RulesSpec {
        max_merges: Some(2),
        ..Default::default()
    })
    .unwrap();
    let mut r = Run::new(rules);
    r.send(
        json!({"type": "identify", "userId": "u1", "anonymousId": "a0"}),
        T0,
    );
    for i in 1..=4 {
        r.send(track(json!({"anonymousId": format!("a{i}")})), T0 + i);
        r.send(
            track(json!({"userId": "u1", "anonymousId": format!("a{i}")})),
            T0 + 10 + i,
        );
    }
    let p = r.graph.lookup("user_id", "u1").unwrap();
    assert_eq!(p.merges.len(), 2);
    assert_ne!(r.owner("anonymous_id", "a4"), Some(p.id));
}

#[test]
fn traits_take_the_latest_event_timestamp_whatever_the_arrival_order() {
    let mut r = Run::new(Rules::default());
    r.send(
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}),
        T0 + 10,
    );
    // A late-arriving older event does not overwrite the newer value.
    r.send(
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "free", "name": "Ann"}}),
        T0,
    );
    assert_eq!(
        r.trait_of("user_id", "u1", "plan").as_deref(),
        Some("\"pro\"")
    );
    assert_eq!(
        r.trait_of("user_id", "u1", "name").as_deref(),
        Some("\"Ann\"")
    );
    // On a merge, each trait keeps the newer value of the two profiles.
    r.send(
        json!({"type": "identify", "anonymousId": "a1", "traits": {"plan": "team", "name": "Old"}}),
        T0 + 20,
    );
    r.send(
        json!({"type": "identify", "anonymousId": "a1", "traits": {"name": "Older"}}),
        T0 - 5,
    );
    r.send(track(json!({"userId": "u1", "anonymousId": "a1"})), T0 + 30);
    assert_eq!(
        r.trait_of("user_id", "u1", "plan").as_deref(),
        Some("\"team\"")
    );
    assert_eq!(
        r.trait_of("user_id", "u1", "name").as_deref(),
        Some("\"Old\"")
    );
}

#[test]
fn an_event_that_changes_nothing_but_the_last_event_only_touches_its_profile() {
    let mut r = Run::new(Rules::default());
    r.send(track(json!({"anonymousId": "a1"})), T0);
    let created = r.graph.take_changes();
    let id = r.owner("anonymous_id", "a1").unwrap();
    assert_eq!((created.profiles, created.touched), (vec![id], vec![]));
    r.send(track(json!({"anonymousId": "a1"})), T0 + 1);
    let c = r.graph.take_changes();
    assert_eq!(
        (c.profiles, c.touched, c.timeline.len()),
        (vec![], vec![id], 1)
    );
    // A trait, an identifier or an account changes the record.
    r.send(
        json!({"type": "identify", "anonymousId": "a1", "traits": {"plan": "pro"}}),
        T0 + 2,
    );
    r.send(track(json!({"anonymousId": "a1"})), T0 + 3);
    let c = r.graph.take_changes();
    assert_eq!((c.profiles, c.touched), (vec![id], vec![]));
    r.send(track(json!({"anonymousId": "a1", "userId": "u1"})), T0 + 4);
    assert_eq!(r.graph.take_changes().profiles, vec![id]);
    r.send(
        json!({"type": "group", "userId": "u1", "groupId": "g1"}),
        T0 + 5,
    );
    assert_eq!(r.graph.take_changes().profiles, vec![id]);
    // The same trait value again (older) changes nothing.
    r.send(
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}),
        T0 + 1,
    );
    let c = r.graph.take_changes();
    assert_eq!((c.profiles, c.touched), (vec![], vec![id]));
}

#[test]
fn identify_traits_win_over_context_traits_of_the_same_event() {
    let mut r = Run::new(Rules::default());
    r.send(
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
               "context": {"traits": {"plan": "free", "seats": 3}}}),
        T0,
    );
    assert_eq!(
        r.trait_of("user_id", "u1", "plan").as_deref(),
        Some("\"pro\"")
    );
    assert_eq!(r.trait_of("user_id", "u1", "seats").as_deref(), Some("3"));
}

#[test]
fn group_calls_build_accounts_linked_both_ways() {
    let mut r = Run::new(Rules::default());
    r.send(json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme", "plan": "ent"}}), T0);
    r.send(json!({"type": "group", "anonymousId": "a9", "groupId": "acme", "traits": {"employees": 50}}), T0 + 1);
    let account = r.graph.account("acme").unwrap();
    assert_eq!(account.traits.len(), 3);
    assert_eq!(account.users.len(), 2);
    // The person's traits are untouched by group traits.
    assert!(r.trait_of("user_id", "u1", "name").is_none());
    // Merging the two members re-points the account link.
    r.send(track(json!({"userId": "u1", "anonymousId": "a9"})), T0 + 2);
    let p = r.owner("user_id", "u1").unwrap();
    assert_eq!(
        r.graph
            .account("acme")
            .unwrap()
            .users
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![p]
    );
    assert!(r.graph.profile(p).unwrap().accounts.contains("acme"));
}

#[test]
fn identifier_values_match_exactly_whatever_their_length() {
    // The owners table keeps values of up to 38 bytes inline and longer ones on the heap.
    let values = [
        "x".repeat(37),
        "y".repeat(38),
        "z".repeat(39),
        format!("{}é", "w".repeat(37)), // 39 bytes, a two-byte character across the edge
        "a-very-long-anonymous-identifier-value-0123456789".to_string(),
        "ünïcödé".to_string(),
    ];
    let mut r = Run::new(Rules::default());
    for (i, v) in values.iter().enumerate() {
        r.send(track(json!({"anonymousId": v})), T0 + i as i64);
    }
    assert_eq!(r.graph.profile_count(), values.len());
    for (i, v) in values.iter().enumerate() {
        let p = r.graph.lookup("anonymous_id", v).expect("owned");
        assert_eq!(&*p.identifiers[0].value, v.as_str());
        let id = p.id;
        // One character less or more is another (unseen) identifier.
        let shorter: String = v.chars().take(v.chars().count() - 1).collect();
        assert!(r.graph.lookup("anonymous_id", &shorter).is_none());
        assert!(r.graph.lookup("anonymous_id", &format!("{v}0")).is_none());
        // The same value again attaches to the same profile.
        let again = r.send(track(json!({"anonymousId": v})), T0 + 100 + i as i64);
        assert_eq!(again.profile, Some(id));
    }
    let mut owned: Vec<String> = r.graph.owners().map(|(k, _)| k.value.into()).collect();
    owned.sort();
    let mut expected = values.to_vec();
    expected.sort();
    assert_eq!(owned, expected);
}

// ---- properties ----

fn arb_event() -> impl Strategy<Value = (serde_json::Value, i64)> {
    let user = prop::option::of(prop::sample::select(vec!["u1", "u2", "u3", "null"]));
    let anon = prop::option::of(prop::sample::select(vec![
        "a1", "a2", "a3", "a4", "a5", "a6", "0",
    ]));
    let email = prop::option::of(prop::sample::select(vec!["e1@x", "e2@x", "e3@x"]));
    let kind = prop::sample::select(vec!["identify", "track", "alias", "group"]);
    let plan = prop::option::of(prop::sample::select(vec!["free", "pro", "team"]));
    let time = 0i64..(30 * DAY);
    (user, anon, email, kind, plan, time).prop_map(|(user, anon, email, kind, plan, t)| {
        let mut e = json!({"type": kind, "event": "X"});
        if let Some(u) = user {
            e["userId"] = json!(u);
        }
        if let Some(a) = anon {
            e["anonymousId"] = json!(a);
        }
        if kind == "alias" {
            e["previousId"] = json!(anon.unwrap_or("a1"));
            e["userId"] = json!(user.unwrap_or("u1"));
        }
        if kind == "group" {
            e["groupId"] = json!("g1");
        }
        let mut traits = serde_json::Map::new();
        if let Some(m) = email {
            traits.insert("email".into(), json!(m));
        }
        if let Some(p) = plan {
            traits.insert("plan".into(), json!(p));
        }
        if kind == "identify" {
            e["traits"] = json!(traits);
        } else {
            e["context"] = json!({"traits": traits});
        }
        (e, T0 + t)
    })
}

fn run_all(events: &[(serde_json::Value, i64)], rules: &Rules) -> (Run, Vec<Applied>) {
    let mut r = Run::new(rules.clone());
    let applied = events.iter().map(|(e, t)| r.send(e.clone(), *t)).collect();
    (r, applied)
}

/// The events in one batch, with the offsets, times and message ids `Run::send` gives them.
fn batch_of(events: &[(serde_json::Value, i64)], rules: &Rules) -> Batch {
    let mut batch = Batch::default();
    let source: Arc<str> = Arc::from("web");
    for (offset, (e, t)) in events.iter().enumerate() {
        let mut e = e.clone();
        e["timestamp"] = json!(crate::timestamp::format(*t));
        let meta = EventMeta {
            offset: offset as u64,
            received_at_ms: *t,
            source: &source,
            message_id: &format!("m{offset}"),
        };
        batch
            .push(&meta, &serde_json::to_vec(&e).unwrap(), rules)
            .unwrap();
    }
    batch
}

/// Each profile's events.
fn events_of(g: &Graph) -> Vec<(ProfileId, Vec<EventRef>)> {
    g.profiles().map(|p| (p.id, p.events.clone())).collect()
}

fn windowed_rules() -> Rules {
    Rules::new(&RulesSpec {
        identifiers: vec![TypeSpec {
            kind: "anonymous_id".into(),
            limit: Some(3),
            window: Some("7d".into()),
            priority: None,
        }],
        ..Default::default()
    })
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Replaying the same events gives an identical graph; so does a restore from the
    /// persisted profiles followed by the rest of the events (restart mid-stream).
    #[test]
    fn replay_and_restart_give_identical_state(
        events in prop::collection::vec(arb_event(), 1..60),
        cut in 0usize..60,
    ) {
        let rules = windowed_rules();
        let (a, _) = run_all(&events, &rules);
        let (b, _) = run_all(&events, &rules);
        prop_assert_eq!(a.graph.canonical(), b.graph.canonical());
        let cut = cut.min(events.len());
        let (first, _) = run_all(&events[..cut], &rules);
        let (profiles, accounts) = first.graph.canonical();
        let mut restored = Run {
            graph: Graph::restore(
                rules.clone(),
                profiles.into_iter().cloned(),
                accounts.into_iter().cloned(),
                first.graph.next_id(),
            ),
            next: cut as u64,
        };
        for (e, t) in &events[cut..] {
            restored.send(e.clone(), *t);
        }
        prop_assert_eq!(a.graph.canonical(), restored.graph.canonical());
    }

    /// An untracked graph (a rebuild's replay) applies events exactly as a tracked one does,
    /// and records no changes.
    #[test]
    fn untracked_graphs_reach_the_same_state(events in prop::collection::vec(arb_event(), 1..60)) {
        let rules = windowed_rules();
        let (tracked, applied) = run_all(&events, &rules);
        let mut untracked = Graph::untracked(rules.clone());
        // All events in one batch, as the processor's reader hands them over.
        let batch = batch_of(&events, &rules);
        for (i, expected) in applied.iter().enumerate() {
            let (meta, observed) = batch.get(i);
            prop_assert_eq!(&untracked.apply(&meta, &observed.unwrap()), expected);
        }
        prop_assert_eq!(untracked.canonical(), tracked.graph.canonical());
        prop_assert_eq!(events_of(&untracked), events_of(&tracked.graph));
        prop_assert!(!untracked.has_changes());
    }

    /// Applying runs of events with `Graph::apply_batch` (owners looked up ahead of each
    /// run) gives exactly what applying them one by one gives, whatever the run lengths.
    #[test]
    fn batch_application_equals_one_by_one(
        events in prop::collection::vec(arb_event(), 1..120),
        run in 1usize..40,
    ) {
        let rules = windowed_rules();
        let (one_by_one, _) = run_all(&events, &rules);
        let batch = batch_of(&events, &rules);
        let mut batched = Graph::new(rules.clone());
        for start in (0..batch.len()).step_by(run) {
            let end = batch.len().min(start + run);
            prop_assert_eq!(batched.apply_batch(&batch, start..end), Some(end as u64));
        }
        batched.check_invariants().unwrap();
        prop_assert_eq!(batched.canonical(), one_by_one.graph.canonical());
        prop_assert_eq!(events_of(&batched), events_of(&one_by_one.graph));
        prop_assert_eq!(batched.counters(), one_by_one.graph.counters());
        prop_assert_eq!(batched.take_changes(), one_by_one.graph.clone().take_changes());
    }

    /// No profile holds more user_ids than its limit; every identifier ever owned stays
    /// owned by exactly one profile; every identifier of an event is owned afterwards
    /// unless blocked or reported dropped.
    #[test]
    fn limits_hold_and_no_identifier_is_lost(events in prop::collection::vec(arb_event(), 1..80)) {
        let rules = windowed_rules();
        let mut r = Run::new(rules.clone());
        let mut ever_owned: Vec<IdKey> = Vec::new();
        for (e, t) in &events {
            let applied = r.send(e.clone(), *t);
            let bytes = serde_json::to_vec(e).unwrap();
            let mut with_time = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
            with_time["timestamp"] = json!(crate::timestamp::format(*t));
            let observed = observe(&serde_json::to_vec(&with_time).unwrap(), &rules).unwrap();
            for k in observed.identifiers {
                if !rules.is_blocked(&k.value) && !applied.dropped.contains(&k) {
                    prop_assert!(r.graph.lookup(&k.kind, &k.value).is_some(), "{} lost", k);
                }
            }
            for k in &ever_owned {
                prop_assert!(r.graph.lookup(&k.kind, &k.value).is_some(), "{} no longer owned", k);
            }
            ever_owned = r.graph.owners().map(|(k, _)| k).collect();
            for p in r.graph.profiles() {
                let users = p.identifiers.iter().filter(|i| &*i.kind == "user_id").count();
                prop_assert!(users <= 1, "profile {} has {} user_ids", p.id, users);
            }
        }
        r.graph.check_invariants().map_err(TestCaseError::fail)?;
    }

    /// Each trait equals a reference that takes, over all events of the profile, the value
    /// with the latest (timestamp, offset).
    #[test]
    fn traits_equal_the_latest_timestamp_reference(events in prop::collection::vec(arb_event(), 1..60)) {
        let rules = Rules::default();
        let (r, applied) = run_all(&events, &rules);
        // Reference: per final profile, the latest value of `plan` over its events.
        let mut reference: HashMap<ProfileId, BTreeMap<&str, (i64, u64, String)>> = HashMap::new();
        for (offset, ((e, t), a)) in events.iter().zip(&applied).enumerate() {
            let Some(p0) = a.profile else { continue };
            // The profile the event ended up in after later merges.
            let owner = r.graph.profiles().find(|p| p.events.iter().any(|ev| ev.offset == offset as u64));
            let Some(owner) = owner else { continue };
            let _ = p0;
            let traits = if e["type"] == "identify" { &e["traits"] } else { &e["context"]["traits"] };
            if let Some(plan) = traits.get("plan") {
                let entry = reference.entry(owner.id).or_default();
                let candidate = (*t, offset as u64, plan.to_string());
                let slot = entry.entry("plan").or_insert(candidate.clone());
                if (candidate.0, candidate.1) > (slot.0, slot.1) {
                    *slot = candidate;
                }
            }
        }
        for p in r.graph.profiles() {
            let expected = reference.get(&p.id).and_then(|m| m.get("plan")).map(|v| v.2.clone());
            let actual = p.traits.get("plan").map(|t| t.json.to_string());
            prop_assert_eq!(actual, expected, "profile {}", p.id);
        }
    }
}
