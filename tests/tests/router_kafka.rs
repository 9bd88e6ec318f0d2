//! The store table from its compacted topic on the real broker: rows published by another
//! team's client (JSON) decide routing before the first event, updates are followed while ingest
//! runs, and a bad row is dead-lettered with its reason.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use tillbridge_proto::pb;

fn sale(store: &str, seq: u64) -> pb::TillEvent {
    kit::events::Sale::new(uuid::Uuid::new_v4(), store, "T1", seq)
        .at(chrono::Utc::now() - chrono::Duration::seconds(60))
        .session(format!("R-{store}-{seq}"))
        .line("A", 1, 500)
        .proto()
}

fn ids(broker: &str, topic: &str) -> Vec<String> {
    kit::read_all(broker, topic)
        .iter()
        .map(|g| {
            pb::TillEvent::decode(g.payload.as_slice())
                .unwrap()
                .store_id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_rows_from_the_topic_decide_routing_and_updates_are_followed() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, state.path()).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let north = format!("north-{tag}");
    let quarantine = format!("quarantine-{tag}");
    config.router = serde_json::json!({
        "destinations": { "north": north, "quarantine": quarantine },
        "rules": [{ "name": "north", "match": { "region": "north" }, "to": ["north"] }],
    });
    tillbridge_core::log::KafkaLog::new(config.kafka.clone().unwrap())
        .create_topics(&[&north, &quarantine], kit::PARTITIONS)
        .await
        .unwrap();
    let producer = kit::producer(&broker);
    let json = Some("application/json");
    // All rows in one produce request, as a bulk loader sends them.
    let rows: Vec<(String, Vec<u8>, Option<&str>)> = [
        (
            "S-N",
            r#"{"storeId":"S-N","region":"north","channelType":"mall"}"#,
        ),
        (
            "S-T",
            r#"{"store_id":"S-T","is_live":false,"opening_date":"2027-01-01"}"#,
        ),
        ("S-BAD", r#"{"storeId":"S-BAD","openingDate":"soon"}"#),
    ]
    .into_iter()
    .map(|(key, row)| (key.to_owned(), row.as_bytes().to_vec(), json))
    .collect();
    kit::produce(&producer, &config.topics.stores, &rows).await;
    let events = [sale("S-N", 1), sale("S-T", 1), sale("S-X", 1)];
    let records: Vec<(String, Vec<u8>, Option<&str>)> = events
        .iter()
        .map(|e| {
            (
                format!("{}/T1", e.store_id),
                tillbridge_proto::to_json(e).into_bytes(),
                json,
            )
        })
        .collect();
    kit::produce(&producer, &config.topics.till_events, &records).await;

    let run = kit::InProcess::ingest(&config);
    let wait = |topic: String, n: usize| {
        let b = broker.clone();
        tokio::task::spawn_blocking(move || {
            kit::read_until(&b, &topic, Duration::from_secs(60), |g| g.len() >= n)
        })
    };
    wait(config.topics.sessions.clone(), 1).await.unwrap();
    wait(quarantine.clone(), 1).await.unwrap();
    wait(north.clone(), 1).await.unwrap();
    // The store goes live: its next sale is routed to promo.sessions.
    kit::produce(
        &producer,
        &config.topics.stores,
        &[(
            "S-T".into(),
            br#"{"storeId":"S-T","isLive":true}"#.to_vec(),
            json,
        )],
    )
    .await;
    // Give the follower a moment measured by a condition: a sale sent after the update lands on
    // promo.sessions once the row is applied; earlier ones may still be quarantined.
    let mut seq = 2;
    loop {
        let e = sale("S-T", seq);
        kit::produce(
            &producer,
            &config.topics.till_events,
            &[(
                "S-T/T1".into(),
                tillbridge_proto::to_json(&e).into_bytes(),
                json,
            )],
        )
        .await;
        let got = wait(config.topics.sessions.clone(), 1).await.unwrap();
        let live = got.iter().any(|g| {
            pb::TillEvent::decode(g.payload.as_slice())
                .unwrap()
                .store_id
                == "S-T"
        });
        if live {
            break;
        }
        seq += 1;
        assert!(seq < 50, "the store table update was not followed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dlq = config.topics.dlq.clone();
    wait(dlq.clone(), 1).await.unwrap();
    run.stop().await;

    assert_eq!(ids(&broker, &north), vec!["S-N"]);
    let mut sessions = ids(&broker, &config.topics.sessions);
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions, vec!["S-T", "S-X"]);
    assert!(ids(&broker, &quarantine).iter().all(|s| s == "S-T"));
    let dead: Vec<pb::DeadLetter> = kit::read_all(&broker, &dlq)
        .iter()
        .map(|g| pb::DeadLetter::decode(g.payload.as_slice()).unwrap())
        .collect();
    // One dead letter for the one bad row: the follower re-reads the topic after loading it,
    // and skips what it applied.
    assert_eq!(dead.len(), 1, "{dead:?}");
    for d in &dead {
        assert_eq!(d.reason, "INVALID_FIELD");
        assert_eq!(d.source_topic, config.topics.stores);
        assert!(d.detail.contains("opening_date"), "{}", d.detail);
    }
}
