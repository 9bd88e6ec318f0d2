//! End to end on a real broker: a mixed batch of protobuf and JSON till events, built the way an
//! outside client builds them, through the ingest stage; exactly the expected records come out on
//! `promo.sessions`, `tillbridge.redemptions` and `tillbridge.dlq`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tillbridge_proto::pb;

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_yields_exactly_the_expected_outputs() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, state.path()).await;
    let now = chrono::Utc::now();
    let at = rfc3339(now - chrono::Duration::minutes(1));
    let ids: Vec<String> = (0..12).map(|_| uuid::Uuid::new_v4().to_string()).collect();

    // A JSON sale in lowerCamelCase, 64-bit integers as strings, enums by name.
    let sale_json = format!(
        r#"{{"eventId":"{id}","storeId":"S1","tillId":"T1","tillSeq":"1","occurredAt":"{at}",
        "cashierId":"C7","channel":"IN_STORE","offline":false,"sessionId":"R-1","profileId":"P1","currency":"EUR",
        "sale":{{"lines":[{{"sku":"A","quantity":2,"unitPriceMinor":"1000","discountMinor":"0"}}],
        "coupons":[{{"code":"SAVE5","discountMinor":"500"}},{{"code":"VIP","discountMinor":100}}],
        "loyalty":{{"programId":"club","pointsEarned":"14"}},"totalMinor":"1400"}}}}"#,
        id = ids[0]
    );
    // A JSON return in snake_case field names.
    let return_json = format!(
        r#"{{"event_id":"{id}","store_id":"S1","till_id":"T2","till_seq":7,"occurred_at":"{at}",
        "session_id":"R-2","currency":"EUR","return":{{"original_session_id":"R-1",
        "lines":[{{"sku":"A","quantity":1,"refund_minor":1000}}],"refund_minor":1000}}}}"#,
        id = ids[1]
    );
    let ts = |t: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    };
    let status = pb::TillEvent {
        event_id: ids[2].clone(),
        store_id: "S2".into(),
        till_id: "T1".into(),
        till_seq: 3,
        occurred_at: Some(ts(now)),
        body: Some(pb::till_event::Body::TillStatus(pb::TillStatus {
            status: pb::till_status::Status::Offline as i32,
            last_synced_seq: 2,
        })),
        ..Default::default()
    };
    let proto_sale = pb::TillEvent {
        event_id: ids[3].clone(),
        store_id: "S2".into(),
        till_id: "T1".into(),
        till_seq: 4,
        occurred_at: Some(ts(now)),
        session_id: "R-3".into(),
        currency: "EUR".into(),
        offline: true,
        body: Some(pb::till_event::Body::Sale(pb::Sale {
            lines: vec![pb::SaleLine {
                sku: "B".into(),
                quantity: 1,
                unit_price_minor: 999,
                discount_minor: 0,
            }],
            coupons: vec![pb::CouponRedemption {
                code: "SAVE5".into(),
                discount_minor: 99,
                campaign_id: None,
            }],
            loyalty: None,
            total_minor: None,
        })),
        ..Default::default()
    };
    // The same protobuf event resent as JSON: same content, so a plain duplicate.
    let proto_sale_as_json = tillbridge_proto::to_json(&proto_sale);
    let conflict = sale_json.replace("\"C7\"", "\"C8\"");
    let missing_till = sale_json
        .replace(&ids[0], &ids[4])
        .replace("\"tillId\":\"T1\",", "");
    let card = sale_json
        .replace(&ids[0], &ids[5])
        .replace("\"C7\"", "\"4111 1111 1111 1111\"");
    let inconsistent = sale_json
        .replace(&ids[0], &ids[6])
        .replace("\"totalMinor\":\"1400\"", "\"totalMinor\":\"1401\"");
    let skewed = sale_json
        .replace(&ids[0], &ids[7])
        .replace(&at, &rfc3339(now + chrono::Duration::hours(1)));
    let json = Some("application/json");
    let k = |s: &str| s.to_owned();
    let records = vec![
        (k("S1/T1"), sale_json.clone().into_bytes(), json),
        (k("S1/T2"), return_json.into_bytes(), None),
        (k("S2/T1"), status.encode_to_vec(), None),
        (k("S2/T1"), proto_sale.encode_to_vec(), None),
        (k("S1/T1"), sale_json.into_bytes(), json),
        (k("S2/T1"), proto_sale_as_json.into_bytes(), json),
        (k("S1/T1"), br#"{"eventId": "broken"#.to_vec(), json),
        (k("S1/T1"), vec![0xff, 0xff, 0x00], None),
        (k("S1/T1"), missing_till.into_bytes(), json),
        (k("S1/T1"), card.into_bytes(), json),
        (k("S1/T1"), conflict.into_bytes(), json),
        (k("S1/T1"), inconsistent.into_bytes(), None),
        (k("S1/T1"), skewed.into_bytes(), json),
    ];
    let producer = kit::producer(&broker);
    kit::produce(&producer, &config.topics.till_events, &records).await;

    let run = kit::InProcess::ingest(&config);
    let dlq_topic = config.topics.dlq.clone();
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        kit::read_until(&b, &dlq_topic, Duration::from_secs(60), |g| g.len() >= 7)
    })
    .await
    .unwrap();
    let sessions_topic = config.topics.sessions.clone();
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        kit::read_until(&b, &sessions_topic, Duration::from_secs(60), |g| {
            g.len() >= 4
        })
    })
    .await
    .unwrap();
    run.stop().await;

    let sessions = kit::read_all(&broker, &config.topics.sessions);
    let mut session_ids: Vec<String> = sessions
        .iter()
        .map(|g| {
            pb::TillEvent::decode(g.payload.as_slice())
                .unwrap()
                .event_id
        })
        .collect();
    session_ids.sort();
    let mut want: Vec<String> = ids[..4].to_vec();
    want.sort();
    assert_eq!(
        session_ids, want,
        "each good event exactly once on promo.sessions"
    );
    let keys: BTreeMap<String, String> = sessions
        .iter()
        .map(|g| {
            let e = pb::TillEvent::decode(g.payload.as_slice()).unwrap();
            (e.event_id, String::from_utf8(g.key.clone()).unwrap())
        })
        .collect();
    assert_eq!(keys[&ids[0]], "R-1");
    assert_eq!(
        keys[&ids[2]], "S2/T1",
        "an event without a session is keyed by its till"
    );

    let redemptions = kit::read_all(&broker, &config.topics.redemptions);
    let mut codes: Vec<String> = redemptions
        .iter()
        .map(|g| String::from_utf8(g.key.clone()).unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, vec!["SAVE5", "SAVE5", "VIP"]);

    // One LoyaltyFact for the sale's loyalty activity, and one for the return that points back
    // to the original session (the return synced from another till; its profile comes from
    // the sale).
    let loyalty: Vec<pb::LoyaltyFact> = kit::read_all(&broker, &config.topics.loyalty)
        .iter()
        .map(|g| {
            assert_eq!(g.key, b"P1");
            pb::LoyaltyFact::decode(g.payload.as_slice()).unwrap()
        })
        .collect();
    let mut kinds: Vec<i32> = loyalty.iter().map(|f| f.kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            pb::LoyaltyFactKind::Earned as i32,
            pb::LoyaltyFactKind::Returned as i32
        ]
    );
    let returned = loyalty
        .iter()
        .find(|f| f.kind == pb::LoyaltyFactKind::Returned as i32)
        .unwrap();
    assert_eq!(returned.original_session_id.as_deref(), Some("R-1"));
    assert_eq!(
        (returned.refund_minor, returned.sale_total_minor),
        (1000, 1400)
    );

    let dlq = kit::read_all(&broker, &config.topics.dlq);
    let mut reasons: Vec<String> = dlq
        .iter()
        .map(|g| pb::DeadLetter::decode(g.payload.as_slice()).unwrap().reason)
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "CARD_DATA",
            "CLOCK_SKEW",
            "DECODE_ERROR",
            "DECODE_ERROR",
            "DUPLICATE_CONFLICT",
            "INCONSISTENT_TOTAL",
            "MISSING_FIELD"
        ]
    );
    for g in &dlq {
        let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
        assert_eq!(dl.source_topic, config.topics.till_events);
        assert!(!dl.detail.is_empty());
        let text = String::from_utf8_lossy(&dl.original);
        assert!(
            !tillbridge_core::pan::contains(&text),
            "card digits reached the DLQ"
        );
        // The planted number's digits, spaced or not (a bare "4111" may be part of a random
        // event id).
        assert!(
            !text.contains("4111 1111") && !text.contains("4111111111111111"),
            "card digits reached the DLQ"
        );
        if dl.reason == "CARD_DATA" {
            assert!(
                dl.detail.contains("cashier_id"),
                "detail names the field: {}",
                dl.detail
            );
            assert!(text.contains("**** **** **** ****"));
        }
    }
}
