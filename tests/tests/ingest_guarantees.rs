//! The ingest guarantee on a real broker: every good event exactly once (by id) on
//! `promo.sessions`, every bad one on the DLQ with its reason, no card digits anywhere, and no
//! loss across SIGKILLs of the process in the middle of consumption.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kit::process::Instance;
use prost::Message;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tillbridge_proto::pb;

fn ids_on(broker: &str, topic: &str) -> (Vec<String>, BTreeMap<String, BTreeSet<Vec<u8>>>) {
    let got = kit::read_all(broker, topic);
    let mut ids = Vec::new();
    let mut payloads: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for g in got {
        let e = pb::TillEvent::decode(g.payload.as_slice()).expect("sessions hold protobuf");
        payloads
            .entry(e.event_id.clone())
            .or_default()
            .insert(g.payload.clone());
        ids.push(e.event_id);
    }
    (ids, payloads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_with_duplicates_conflicts_malformed_and_cards() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, state.path()).await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(20_000);
    let (good, events) = kit::events::good_events(17_000, 40, 1);
    let mut tail = Vec::new();
    // 10% resent duplicates (2,000), some in the other encoding.
    for _ in 0..2000 {
        let i = rng.gen_range(0..good.len());
        let mut s = good[i].clone();
        if rng.gen_bool(0.5) {
            s.payload = events[i].encode_to_vec();
            s.content_type = None;
        }
        tail.push(s);
    }
    // 1% same id, different content (200).
    let mut conflict_ids = BTreeSet::new();
    for i in (0..events.len()).step_by(85).take(200) {
        let mut e = events[i].clone();
        e.till_seq += 1_000_000;
        conflict_ids.insert(e.event_id.clone());
        tail.push(kit::events::Sent {
            key: good[i].key.clone(),
            payload: tillbridge_proto::to_json(&e).into_bytes(),
            content_type: Some("application/json"),
        });
    }
    // 2% malformed (400) and a few card numbers (5).
    let mut bad = Vec::new();
    for i in 0..400 {
        let payload = match i % 4 {
            0 => b"{\"eventId\": ".to_vec(),
            1 => vec![0xff; 7],
            2 => tillbridge_proto::to_json(&pb::TillEvent {
                event_id: uuid::Uuid::new_v4().to_string(),
                ..events[i].clone()
            })
            .replace("\"storeId\"", "\"storeIdd\"")
            .into_bytes(),
            _ => {
                let mut e = events[i].clone();
                e.event_id = uuid::Uuid::new_v4().to_string();
                e.store_id = String::new();
                e.encode_to_vec()
            }
        };
        bad.push(kit::events::Sent {
            key: good[i].key.clone(),
            payload,
            content_type: None,
        });
    }
    for i in 0..5 {
        let mut e = events[i].clone();
        e.event_id = uuid::Uuid::new_v4().to_string();
        e.cashier_id = Some(format!("4000 0566 5566 555{}", [6, 6, 6, 6, 6][i]));
        bad.push(kit::events::Sent {
            key: good[i].key.clone(),
            payload: tillbridge_proto::to_json(&e).into_bytes(),
            content_type: Some("application/json"),
        });
    }
    tail.shuffle(&mut rng);
    let mut all = good.clone();
    // Bad records interleave with good ones; duplicates and conflicts follow their originals.
    for (k, b) in bad.into_iter().enumerate() {
        all.insert((k * 41) % all.len(), b);
    }
    all.extend(tail);
    assert_eq!(all.len(), 17_000 + 2000 + 200 + 405);
    let producer = kit::producer(&broker);
    let t = Instant::now();
    kit::produce_sent(&producer, &config.topics.till_events, &all).await;
    println!("produced {} records in {:?}", all.len(), t.elapsed());

    let run = kit::InProcess::ingest(&config);
    let (b, sessions, dlq) = (
        broker.clone(),
        config.topics.sessions.clone(),
        config.topics.dlq.clone(),
    );
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        kit::Tail::new(&b, &sessions).until(Duration::from_secs(300), |g| g.len() >= 17_000);
        kit::Tail::new(&b, &dlq).until(Duration::from_secs(60), |g| g.len() >= 605);
    })
    .await
    .unwrap();
    println!(
        "ingest handled {} records in {:?}",
        all.len(),
        started.elapsed()
    );
    let stats = run.stop().await;
    println!("{stats}");

    let (ids, _) = ids_on(&broker, &config.topics.sessions);
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        ids.len(),
        17_000,
        "no duplicate on promo.sessions in a run without crashes"
    );
    let want: BTreeSet<&String> = events.iter().map(|e| &e.event_id).collect();
    assert_eq!(distinct, want);

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for g in kit::read_all(&broker, &config.topics.dlq) {
        let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
        *reasons.entry(dl.reason.clone()).or_default() += 1;
        if dl.reason == "DUPLICATE_CONFLICT" {
            assert!(conflict_ids.contains(dl.event_id.as_deref().unwrap_or_default()));
        }
        let text = String::from_utf8_lossy(&dl.original);
        assert!(!text.contains("4000 0566"), "card digits on the DLQ");
    }
    assert_eq!(reasons.get("DUPLICATE_CONFLICT"), Some(&200));
    assert_eq!(reasons.get("CARD_DATA"), Some(&5));
    assert_eq!(reasons.get("DECODE_ERROR"), Some(&300));
    assert_eq!(reasons.get("MISSING_FIELD"), Some(&100));
    for topic in config
        .topics
        .all()
        .into_iter()
        .filter(|t| *t != config.topics.till_events)
    {
        for g in kit::read_all(&broker, topic) {
            assert!(
                !String::from_utf8_lossy(&g.payload).contains("4000 0566"),
                "card digits on {topic}"
            );
        }
    }
}

/// One `tillbridge run --stages ingest` (short fetch waits, static membership) SIGKILLed five
/// times at random points, then run to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_across_sigkills() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, state.path()).await;
    // The issue asks for 100,000; CRASH_TEST_EVENTS can shrink it while debugging.
    let n: usize = std::env::var("CRASH_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (sent, events) = kit::events::good_events(n, 64, 2);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;
    let mut child_config = config.clone();
    child_config.fingerprint.key = "ingest-guarantees-key".into();
    let kafka = child_config.kafka.as_mut().unwrap();
    kafka.fetch_wait_max_ms = 10;
    kafka.instance_id = Some("crash-test".into());
    let mut ingest = Instance::new(
        &child_config,
        state.path(),
        "child",
        &["run", "--stages", "ingest"],
        "info,tillbridge_core=debug,tillbridge_ingest=warn",
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let b = broker.clone();
    let sessions = config.topics.sessions.clone();
    let kills = tokio::task::spawn_blocking(move || {
        let mut watch = kit::IdWatch::new(&b, &sessions);
        let mut kills = 0;
        while kills < 5 {
            ingest.start();
            // Kill it once it has made a random amount of progress (1% to 12% of the input).
            let step = rng.gen_range(n / 100..n / 8);
            let target = (watch.ids.len() + step).min(n - 1);
            let start = Instant::now();
            watch.until(target, Duration::from_secs(180), || {
                ingest.running();
            });
            ingest.kill();
            kills += 1;
            println!(
                "SIGKILL #{kills} after {:?}, with {} distinct events on promo.sessions",
                start.elapsed(),
                watch.ids.len()
            );
        }
        // A last run to the end.
        ingest.start();
        let start = Instant::now();
        watch.until(n, Duration::from_secs(300), || {
            ingest.running();
        });
        println!(
            "all {n} events on promo.sessions {:?} after the last restart",
            start.elapsed()
        );
        ingest.kill();
        kills
    })
    .await
    .unwrap();
    assert!(kills >= 5);
    let (ids, payloads) = ids_on(&broker, &config.topics.sessions);
    let distinct: BTreeSet<&String> = ids.iter().collect();
    let want: BTreeSet<&String> = events.iter().map(|e| &e.event_id).collect();
    assert_eq!(
        distinct, want,
        "every good event id is on the output, and nothing else"
    );
    let replayed = ids.len() - distinct.len();
    println!(
        "{} records for {} distinct events: {replayed} re-sent by replays after SIGKILL",
        ids.len(),
        distinct.len()
    );
    for (id, p) in &payloads {
        assert_eq!(
            p.len(),
            1,
            "a replayed record of {id} differs from the first one"
        );
    }
}
