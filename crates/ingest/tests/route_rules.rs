//! Routing rules: each matcher, quarantine of stores that are not live, and a start-up error for
//! each kind of bad rule.

#![allow(clippy::unwrap_used)]

use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::domain::{Channel, TillEvent};
use tillbridge_core::log::Record;
use tillbridge_ingest::route::{Router, RouterConfig, RuleError, Rules, StoreTable};
use tillbridge_proto::pb;

fn config(json: serde_json::Value) -> RouterConfig {
    serde_json::from_value(json).unwrap()
}

fn event(store: &str, body: &str, channel: Channel) -> (TillEvent, pb::TillEvent) {
    let mut raw = pb::TillEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        store_id: store.into(),
        till_id: "T1".into(),
        till_seq: 1,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        channel: match channel {
            Channel::InStore => pb::Channel::InStore,
            Channel::Online => pb::Channel::Online,
            Channel::Mobile => pb::Channel::Mobile,
            Channel::Kiosk => pb::Channel::Kiosk,
        } as i32,
        session_id: "R-1".into(),
        profile_id: Some("P1".into()),
        currency: "EUR".into(),
        ..Default::default()
    };
    raw.body = Some(match body {
        "sale" => pb::till_event::Body::Sale(pb::Sale {
            lines: vec![pb::SaleLine {
                sku: "A".into(),
                quantity: 1,
                unit_price_minor: 1000,
                discount_minor: 0,
            }],
            coupons: vec![pb::CouponRedemption {
                code: "C1".into(),
                discount_minor: 100,
                campaign_id: None,
            }],
            loyalty: Some(pb::LoyaltyActivity {
                program_id: "club".into(),
                points_earned: 9,
                points_redeemed: 0,
            }),
            total_minor: None,
        }),
        _ => pb::till_event::Body::SessionCancelled(pb::SessionCancelled { reason: "x".into() }),
    });
    let ev = tillbridge_proto::validate(&raw).unwrap();
    (ev, raw)
}

fn rules() -> Rules {
    let cfg = config(serde_json::json!({
        "destinations": { "quarantine": "q.topic", "north": "north.sessions", "web": "web.sessions" },
        "rules": [
            { "name": "web", "match": { "channel": ["ONLINE", "MOBILE"] }, "to": ["web"] },
            { "name": "north sales", "match": { "body": ["sale"], "region": "north" }, "to": ["north", "sessions"] },
            { "name": "outlets", "match": { "store": "OUT-*", "channel_type": "outlet" }, "to": ["north"] }
        ],
        "stores": [
            { "store_id": "N1", "region": "north", "channel_type": "mall" },
            { "store_id": "OUT-7", "region": "south", "channel_type": "outlet" },
            { "store_id": "OUT-8", "region": "south", "channel_type": "street" },
            { "store_id": "TEST-1", "is_live": false, "opening_date": "2027-01-01" }
        ]
    }));
    Rules::compile(&Topics::default(), &cfg).unwrap()
}

fn topics(r: &Rules, store: &str, body: &str, channel: Channel) -> Vec<String> {
    r.decide(&event(store, body, channel).0).topics
}

#[test]
fn each_matcher_decides() {
    let r = rules();
    // channel
    assert_eq!(
        topics(&r, "N1", "sale", Channel::Online),
        vec!["web.sessions"]
    );
    // body + region (store metadata), two destinations
    assert_eq!(
        topics(&r, "N1", "sale", Channel::InStore),
        vec!["north.sessions", "promo.sessions"]
    );
    assert_eq!(
        topics(&r, "N1", "cancel", Channel::InStore),
        vec!["promo.sessions"],
        "body must match"
    );
    // store glob + channel_type
    assert_eq!(
        topics(&r, "OUT-7", "cancel", Channel::InStore),
        vec!["north.sessions"]
    );
    assert_eq!(
        topics(&r, "OUT-8", "cancel", Channel::InStore),
        vec!["promo.sessions"],
        "channel_type must match"
    );
    // a store missing from the table matches no metadata condition
    assert_eq!(
        topics(&r, "S9", "sale", Channel::InStore),
        vec!["promo.sessions"]
    );
}

#[test]
fn stores_that_are_not_live_are_quarantined_without_facts() {
    let r = rules();
    let d = r.decide(&event("TEST-1", "sale", Channel::Online).0);
    assert_eq!(d.topics, vec!["q.topic"]);
    assert!(!d.facts);
    let router = Router::with_rules(Topics::default(), r);
    let (ev, raw) = event("TEST-1", "sale", Channel::InStore);
    let out = router.route(&ev, &raw, None, None);
    assert_eq!(
        out.len(),
        1,
        "quarantined: the session record only, no facts"
    );
    assert_eq!(out[0].topic, "q.topic");
    assert_eq!(
        pb::TillEvent::decode(out[0].payload.as_deref().unwrap()).unwrap(),
        raw
    );
    let (ev, raw) = event("N1", "sale", Channel::InStore);
    let out = router.route(&ev, &raw, None, None);
    let topics: Vec<&str> = out.iter().map(|o| o.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            "north.sessions",
            "promo.sessions",
            "tillbridge.redemptions",
            "tillbridge.loyalty"
        ]
    );
}

#[test]
fn every_kind_of_bad_rule_is_a_start_up_error() {
    let compile = |v: serde_json::Value| Rules::compile(&Topics::default(), &config(v));
    assert!(matches!(
        compile(serde_json::json!({ "rules": [{ "name": "x", "to": ["nowhere"] }] })),
        Err(RuleError::UnknownDestination { .. })
    ));
    assert!(matches!(
        compile(serde_json::json!({ "rules": [{ "name": "x", "to": [] }] })),
        Err(RuleError::NoDestination { .. })
    ));
    assert!(matches!(
        compile(
            serde_json::json!({ "rules": [{ "name": "x", "match": { "store": "S[0-" }, "to": ["sessions"] }] })
        ),
        Err(RuleError::BadGlob { .. })
    ));
    assert!(matches!(
        compile(serde_json::json!({ "stores": [{ "store_id": "A" }, { "store_id": "A" }] })),
        Err(RuleError::DuplicateStore(_))
    ));
    assert!(matches!(
        compile(serde_json::json!({ "destinations": { "x": " " } })),
        Err(RuleError::EmptyTopic(_))
    ));
    assert!(matches!(
        compile(serde_json::json!({ "quarantine": "missing" })),
        Err(RuleError::Invalid(_))
    ));
    // Unknown keys and unknown body names are refused by the config types themselves.
    assert!(serde_json::from_value::<RouterConfig>(serde_json::json!({ "rule": [] })).is_err());
    assert!(serde_json::from_value::<RouterConfig>(
        serde_json::json!({ "rules": [{ "name": "x", "match": { "body": ["refund"] }, "to": ["sessions"] }] })
    )
    .is_err());
}

fn store_record(key: Option<&str>, payload: Option<Vec<u8>>, json: bool) -> Record {
    Record {
        topic: "promo.stores".into(),
        partition: 0,
        offset: 0,
        key: key.map(|k| k.as_bytes().to_vec()),
        payload,
        headers: if json {
            vec![("content-type".into(), b"application/json".to_vec())]
        } else {
            Vec::new()
        },
        timestamp_ms: None,
    }
}

#[test]
fn the_store_table_topic_overrides_config_rows_and_follows_updates() {
    let table = StoreTable::new();
    let r = rules().with_store_table(table.clone());
    // Config says N1 is a live northern mall store.
    assert_eq!(
        topics(&r, "N1", "sale", Channel::InStore),
        vec!["north.sessions", "promo.sessions"]
    );
    // The topic (JSON, as another team's client writes it) moves N1 south and takes TEST-1 live.
    let n1 =
        br#"{"storeId":"N1","region":"south","channelType":"mall","openingDate":"2021-03-01"}"#;
    table
        .apply(&store_record(Some("N1"), Some(n1.to_vec()), true))
        .unwrap();
    let t1 = pb::Store {
        store_id: "TEST-1".into(),
        is_live: Some(true),
        ..Default::default()
    };
    table
        .apply(&store_record(
            Some("TEST-1"),
            Some(t1.encode_to_vec()),
            false,
        ))
        .unwrap();
    assert_eq!(
        topics(&r, "N1", "sale", Channel::InStore),
        vec!["promo.sessions"]
    );
    assert_eq!(
        topics(&r, "TEST-1", "sale", Channel::InStore),
        vec!["promo.sessions"]
    );
    // A protobuf row without is_live is live; with is_live = false its store is quarantined.
    let s9 = pb::Store {
        store_id: "S9".into(),
        is_live: Some(false),
        ..Default::default()
    };
    table
        .apply(&store_record(Some("S9"), Some(s9.encode_to_vec()), false))
        .unwrap();
    assert_eq!(topics(&r, "S9", "sale", Channel::InStore), vec!["q.topic"]);
    // A tombstone removes the topic's row: the config row counts again.
    table.apply(&store_record(Some("N1"), None, false)).unwrap();
    assert_eq!(
        topics(&r, "N1", "sale", Channel::InStore),
        vec!["north.sessions", "promo.sessions"]
    );
    assert_eq!(table.len(), 2);
}

#[test]
fn bad_store_rows_are_refused_with_a_reason_and_change_nothing() {
    use tillbridge_core::domain::RejectReason;
    let table = StoreTable::new();
    type Case<'a> = (Option<&'a str>, Option<Vec<u8>>, bool, RejectReason);
    let cases: Vec<Case<'_>> = vec![
        (
            Some("S1"),
            Some(b"{\"storeId\":".to_vec()),
            true,
            RejectReason::DecodeError,
        ),
        (
            Some("S1"),
            Some(br#"{"storeId":"S1","regoin":"north"}"#.to_vec()),
            true,
            RejectReason::DecodeError,
        ),
        (
            Some("S1"),
            Some(br#"{"region":"north"}"#.to_vec()),
            true,
            RejectReason::MissingField,
        ),
        (
            Some("S2"),
            Some(br#"{"storeId":"S1"}"#.to_vec()),
            true,
            RejectReason::InvalidField,
        ),
        (
            Some("S1"),
            Some(br#"{"storeId":"S1","openingDate":"01/03/2021"}"#.to_vec()),
            true,
            RejectReason::InvalidField,
        ),
        (None, None, false, RejectReason::MissingField),
    ];
    for (key, payload, json, reason) in cases {
        let err = table
            .apply(&store_record(key, payload.clone(), json))
            .unwrap_err();
        assert_eq!(err.reason, reason, "{payload:?}");
    }
    assert!(table.is_empty());
}
