//! The ingest processor driven directly with records, as the stage loop drives it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;
use tillbridge_core::config::{IngestConfig, Topics};
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::stage::Processor;
use tillbridge_ingest::Ingest;
use tillbridge_proto::pb;

const T0: i64 = 1_793_000_000; // 2026-10-26, seconds

fn event(id: u128, till_seq: u64, at_s: i64) -> pb::TillEvent {
    pb::TillEvent {
        event_id: uuid::Uuid::from_u128(id).to_string(),
        store_id: "S1".into(),
        till_id: "T1".into(),
        till_seq,
        occurred_at: Some(prost_types::Timestamp {
            seconds: at_s,
            nanos: 0,
        }),
        session_id: format!("R-{id}"),
        currency: "EUR".into(),
        body: Some(pb::till_event::Body::Sale(pb::Sale {
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
            loyalty: None,
            total_minor: None,
        })),
        ..Default::default()
    }
}

fn record(offset: i64, payload: Vec<u8>, ts_s: i64) -> Record {
    Record {
        topic: "till.events".into(),
        partition: 0,
        offset,
        key: Some(b"S1/T1".to_vec()),
        payload: Some(payload),
        headers: Vec::new(),
        timestamp_ms: Some(ts_s * 1000),
    }
}

fn reasons(out: &[OutRecord]) -> Vec<String> {
    out.iter()
        .filter(|o| o.topic == "tillbridge.dlq")
        .map(|o| {
            pb::DeadLetter::decode(o.payload.as_deref().unwrap())
                .unwrap()
                .reason
        })
        .collect()
}

fn topics_of(out: &[OutRecord]) -> Vec<&str> {
    out.iter().map(|o| o.topic.as_str()).collect()
}

#[tokio::test]
async fn duplicates_conflicts_skew_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IngestConfig {
        max_payload_bytes: 4096,
        ..IngestConfig::default()
    };
    let mut ing = Ingest::open(dir.path(), Topics::default(), cfg).unwrap();
    let e1 = event(1, 1, T0);
    let mut e1_changed = e1.clone();
    e1_changed.till_seq = 9;
    let mut skewed = event(2, 2, T0 + 3600);
    skewed.session_id = "R-2".into();
    let batch = vec![
        record(0, e1.encode_to_vec(), T0),
        record(1, tillbridge_proto::to_json(&e1).into_bytes(), T0), // same event as JSON
        record(2, e1_changed.encode_to_vec(), T0),
        record(3, skewed.encode_to_vec(), T0),
        record(4, vec![b'{'; 5000], T0),
    ];
    let out = ing.process(&batch).unwrap();
    assert_eq!(
        topics_of(&out),
        vec![
            "promo.sessions",
            "tillbridge.redemptions",
            "tillbridge.dlq",
            "tillbridge.dlq",
            "tillbridge.dlq"
        ]
    );
    assert_eq!(
        reasons(&out),
        vec!["DUPLICATE_CONFLICT", "CLOCK_SKEW", "OVERSIZED"]
    );
    let stats = ing.stats();
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    ing.commit().await.unwrap();
    // Processing the same batch again after a commit (a replay) emits only the dead letters,
    // byte for byte the same as before (`rejected_at` is the record's timestamp, not the time
    // of processing).
    let again = ing.process(&batch).unwrap();
    let dead_letters = |o: &[OutRecord]| -> Vec<OutRecord> {
        o.iter()
            .filter(|r| r.topic == "tillbridge.dlq")
            .cloned()
            .collect()
    };
    assert_eq!(dead_letters(&again), dead_letters(&out));
    let first = pb::DeadLetter::decode(dead_letters(&out)[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(first.rejected_at.unwrap().seconds, T0);
    assert!(again.iter().all(|o| o.topic != "promo.sessions"));
}

#[tokio::test]
async fn an_id_older_than_the_window_is_accepted_again_after_a_restart_and_the_index_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IngestConfig {
        dedup_window: Duration::from_secs(3600),
        ..IngestConfig::default()
    };
    let old = event(1, 1, T0);
    {
        let mut ing = Ingest::open(dir.path(), Topics::default(), cfg.clone()).unwrap();
        let out = ing
            .process(&[
                record(0, old.encode_to_vec(), T0),
                record(1, event(2, 2, T0 + 60).encode_to_vec(), T0 + 60),
            ])
            .unwrap();
        assert_eq!(
            out.iter().filter(|o| o.topic == "promo.sessions").count(),
            2
        );
        ing.commit().await.unwrap();
        assert_eq!(ing.dedup_len(), 2);
        // Within the window the old id is a duplicate.
        assert!(ing
            .process(&[record(2, old.encode_to_vec(), T0 + 120)])
            .unwrap()
            .is_empty());
        ing.commit().await.unwrap();
    }
    {
        // Two hours of event time later, both ids fall out of the window.
        let mut ing = Ingest::open(dir.path(), Topics::default(), cfg.clone()).unwrap();
        ing.process(&[record(3, event(3, 3, T0 + 7200).encode_to_vec(), T0 + 7200)])
            .unwrap();
        ing.commit().await.unwrap();
        assert_eq!(ing.dedup_len(), 1, "expired ids left the index");
    }
    let mut ing = Ingest::open(dir.path(), Topics::default(), cfg).unwrap();
    let out = ing
        .process(&[record(4, old.encode_to_vec(), T0 + 7300)])
        .unwrap();
    assert_eq!(
        topics_of(&out)[0],
        "promo.sessions",
        "the expired id is accepted again"
    );
}

#[tokio::test]
async fn a_cancel_that_syncs_before_its_sale_releases_the_coupon_when_the_sale_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let mut ing = Ingest::open(dir.path(), Topics::default(), IngestConfig::default()).unwrap();
    let sale = event(1, 1, T0);
    let cancel = pb::TillEvent {
        event_id: uuid::Uuid::from_u128(2).to_string(),
        till_seq: 2,
        body: Some(pb::till_event::Body::SessionCancelled(
            pb::SessionCancelled { reason: "x".into() },
        )),
        ..sale.clone()
    };
    let out = ing
        .process(&[record(0, cancel.encode_to_vec(), T0 + 10)])
        .unwrap();
    assert_eq!(topics_of(&out), vec!["promo.sessions"]);
    ing.commit().await.unwrap();
    let out = ing
        .process(&[record(1, sale.encode_to_vec(), T0 + 20)])
        .unwrap();
    let facts: Vec<pb::RedemptionFact> = out
        .iter()
        .filter(|o| o.topic == "tillbridge.redemptions")
        .map(|o| pb::RedemptionFact::decode(o.payload.as_deref().unwrap()).unwrap())
        .collect();
    let kinds: Vec<i32> = facts.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        vec![
            pb::RedemptionKind::Redeemed as i32,
            pb::RedemptionKind::Released as i32
        ]
    );
    assert_eq!(facts[1].session_id, sale.session_id);
    assert_eq!(facts[1].event_id, cancel.event_id);
}

#[tokio::test]
async fn sequence_gaps_are_tracked_per_till() {
    let dir = tempfile::tempdir().unwrap();
    let mut ing = Ingest::open(dir.path(), Topics::default(), IngestConfig::default()).unwrap();
    let batch: Vec<Record> = [1u64, 2, 5, 3]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            record(
                i as i64,
                event(100 + *s as u128, *s, T0).encode_to_vec(),
                T0,
            )
        })
        .collect();
    ing.process(&batch).unwrap();
    ing.commit().await.unwrap();
    let gaps = ing.till_gaps().unwrap();
    assert_eq!(gaps["S1/T1"].highest, 5);
    assert_eq!(gaps["S1/T1"].missing, vec![4]);
}

#[tokio::test]
async fn the_same_uuid_in_another_textual_form_is_a_duplicate_not_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let mut ing = Ingest::open(dir.path(), Topics::default(), IngestConfig::default()).unwrap();
    let e = event(0xABCD_EF01, 1, T0);
    let canonical = e.event_id.clone();
    let mut batch = vec![record(0, e.encode_to_vec(), T0)];
    for (i, form) in [
        canonical.to_uppercase(),
        format!("{{{canonical}}}"),
        format!("urn:uuid:{canonical}"),
        canonical.replace('-', ""),
    ]
    .into_iter()
    .enumerate()
    {
        let mut resent = e.clone();
        resent.event_id = form;
        batch.push(record(i as i64 + 1, resent.encode_to_vec(), T0));
    }
    let out = ing.process(&batch).unwrap();
    assert!(reasons(&out).is_empty(), "{:?}", reasons(&out));
    assert_eq!(
        ing.stats()
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[tokio::test]
async fn one_record_stamped_far_ahead_does_not_expire_the_dedup_window() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IngestConfig {
        dedup_window: Duration::from_secs(3600),
        ..IngestConfig::default()
    };
    let now = chrono::Utc::now().timestamp();
    let mut ing = Ingest::open(dir.path(), Topics::default(), cfg).unwrap();
    let first: Vec<Record> = (0..100)
        .map(|i| {
            record(
                i,
                event(100 + i as u128, i as u64 + 1, now - 60).encode_to_vec(),
                now,
            )
        })
        .collect();
    ing.process(&first).unwrap();
    ing.commit().await.unwrap();
    // A record whose timestamp and occurred_at are a year ahead is accepted (its clock agrees
    // with its record), but moves the window only up to the wall clock.
    let year = 365 * 24 * 3600;
    let ahead = ing
        .process(&[record(
            100,
            event(1, 101, now + year).encode_to_vec(),
            now + year,
        )])
        .unwrap();
    assert_eq!(topics_of(&ahead)[0], "promo.sessions");
    ing.commit().await.unwrap();
    assert_eq!(ing.dedup_len(), 101, "nothing expired");
    let resent: Vec<Record> = (0..100)
        .map(|i| {
            record(
                101 + i,
                event(100 + i as u128, i as u64 + 1, now - 60).encode_to_vec(),
                now + 1,
            )
        })
        .collect();
    let out = ing.process(&resent).unwrap();
    ing.commit().await.unwrap();
    assert!(out.is_empty(), "every resend is still a duplicate: {out:?}");
}

#[tokio::test]
async fn a_card_number_in_json_escapes_is_dead_lettered_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut ing = Ingest::open(dir.path(), Topics::default(), IngestConfig::default()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let json = tillbridge_proto::to_json(&event(7, 1, now)).replace(
        r#""sku":"A""#,
        r#""sku":"\u0034\u0031\u0031\u0031 1111 1111 1111""#,
    );
    assert!(json.contains(r"\u0034"), "{json}");
    let mut rec = record(0, json.into_bytes(), now);
    rec.headers = vec![("content-type".into(), b"application/json".to_vec())];
    let out = ing.process(&[rec]).unwrap();
    assert_eq!(reasons(&out), vec!["CARD_DATA"]);
    let dl = pb::DeadLetter::decode(out[0].payload.as_deref().unwrap()).unwrap();
    let decoded: serde_json::Value = serde_json::from_slice(&dl.original).unwrap();
    let text = decoded.to_string();
    assert!(!tillbridge_core::pan::contains(&text), "{text}");
    assert!(text.contains("*"), "{text}");
}

/// A state restored from the changelog records of another answers every later record as the
/// original does: duplicates, conflicts, a cancel of a sale it never read, a sale whose cancel
/// synced first, and till sequences.
#[tokio::test]
async fn a_state_restored_from_its_changelog_answers_as_the_original() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &std::path::Path| {
        Ingest::open(dir, Topics::default(), IngestConfig::default())
            .unwrap()
            .with_changelog("ingest-changelog")
            .unwrap()
    };
    let mut a = open(a_dir.path());
    let cancel_of = |id: u128, of: &pb::TillEvent, seq: u64| pb::TillEvent {
        event_id: uuid::Uuid::from_u128(id).to_string(),
        till_seq: seq,
        body: Some(pb::till_event::Body::SessionCancelled(
            pb::SessionCancelled { reason: "x".into() },
        )),
        ..of.clone()
    };
    let (sale1, sale6) = (event(1, 1, T0), event(6, 6, T0 + 60));
    let first = [
        sale1.clone(),
        event(3, 3, T0 + 30),
        // Synced before its sale (`sale6`, later).
        cancel_of(5, &sale6, 7),
    ];
    let batch: Vec<Record> = first
        .iter()
        .enumerate()
        .map(|(i, e)| record(i as i64, e.encode_to_vec(), T0 + 100))
        .collect();
    a.process(&batch).unwrap();
    let changes = a.changelog().unwrap();
    a.commit().await.unwrap();
    assert!(changes.iter().all(|c| c.partition == Some(0)));

    // The changelog as a consumer reads it back.
    let read: Vec<Record> = changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| Record {
            topic: c.topic,
            partition: 0,
            offset: i as i64,
            key: Some(c.key),
            payload: c.payload,
            headers: Vec::new(),
            timestamp_ms: None,
        })
        .collect();
    let mut b = open(b_dir.path());
    let restore = b.restorer().unwrap();
    assert_eq!(restore.topic(), "ingest-changelog");
    // Applying twice changes nothing.
    restore.apply(0, &read).unwrap();
    restore.apply(0, &read).unwrap();
    let end = read.len() as i64;
    assert_eq!(
        restore.finish(&("till.events".into(), 0), end).unwrap(),
        Some(3)
    );
    assert_eq!(
        restore.checkpoint(0),
        Some(end),
        "the changelog read is the checkpoint"
    );
    assert_eq!(b.positions().unwrap(), a.positions().unwrap());
    assert_eq!(b.till_gaps().unwrap(), a.till_gaps().unwrap());
    assert_eq!(b.dedup_len(), a.dedup_len());

    let mut conflicting = sale1.clone();
    conflicting.till_seq = 99;
    let next: Vec<Record> = [
        sale1.clone(),
        conflicting,
        cancel_of(8, &sale1, 8),
        sale6,
        event(9, 9, T0 + 90),
    ]
    .iter()
    .enumerate()
    .map(|(i, e)| record(3 + i as i64, e.encode_to_vec(), T0 + 200))
    .collect();
    let out_a = a.process(&next[..2]).unwrap();
    let out_b = b.process(&next[..2]).unwrap();
    // `b`'s own changelog records, right after its checkpoint, move it; records landing after
    // another writer's do not (those must be read back when the partition returns).
    let landed = |first: i64, count: i64| {
        tillbridge_core::log::Written::from([(
            ("ingest-changelog".to_owned(), 0),
            tillbridge_core::log::Landed {
                first,
                last: first + count - 1,
                count,
            },
        )])
    };
    let mine = b.changelog().unwrap().len() as i64;
    b.changelog_written(&landed(end, mine)).unwrap();
    b.commit().await.unwrap();
    let after_own = end + mine;
    assert_eq!(restore.checkpoint(0), Some(after_own));
    let mut out_a = out_a;
    let mut out_b = out_b;
    out_a.extend(a.process(&next[2..]).unwrap());
    out_b.extend(b.process(&next[2..]).unwrap());
    let mine = b.changelog().unwrap().len() as i64;
    b.changelog_written(&landed(after_own + 5, mine)).unwrap();
    // The same records, dead letters included.
    assert_eq!(out_a, out_b);
    assert_eq!(reasons(&out_b), vec!["DUPLICATE_CONFLICT"]);
    // The cancel of the sale `b` never read releases its coupon; the sale whose cancel came
    // first is released too.
    let released = out_b
        .iter()
        .filter(|o| o.topic == "tillbridge.redemptions")
        .map(|o| pb::RedemptionFact::decode(o.payload.as_deref().unwrap()).unwrap())
        .filter(|f| f.kind == pb::RedemptionKind::Released as i32)
        .count();
    assert_eq!(released, 2);
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    assert_eq!(b.till_gaps().unwrap(), a.till_gaps().unwrap());
    assert_eq!(
        restore.checkpoint(0),
        Some(after_own),
        "not moved over another writer's records"
    );
}
