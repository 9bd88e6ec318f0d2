//! Same facts, same answers: the demo's fleet, extended with a late sync past the settlement
//! horizon and a coupon defined after its redemptions, run on the embedded log live (paced, in
//! sync order), as a backlog, with small batches, with every stage's state wiped mid-run and at
//! the end. Every variant must end with the live run's outstanding compensations (same ids, same
//! content), the same report.json, the same SEQUENCE_GAP alerts, and no compensation id that
//! carries two contents. (The broker variant is `pipeline_kafka.rs`.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tillbridge_core::log::{EmbeddedLog, OutRecord};
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

const SEED: u64 = 11;
/// 2026-11-02T08:00:00Z, the simulator's day.
const D0_MS: i64 = 1_793_606_400_000;
const HOUR_MS: i64 = 3_600_000;

fn event(id: u128, store: &str, till: &str, at_ms: i64, offline: bool, code: &str) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap()
        .to_rfc3339();
    format!(
        r#"{{"eventId":"{}","storeId":"{store}","tillId":"{till}","tillSeq":"1","occurredAt":"{at}","offline":{offline},"sessionId":"H-{id}","currency":"EUR","sale":{{"lines":[{{"sku":"A","quantity":1,"unitPriceMinor":"2000"}}],"coupons":[{{"code":"{code}","discountMinor":"500"}}],"totalMinor":1500}}}}"#,
        uuid::Uuid::from_u128(0xd00d_0000 + id)
    )
}

fn json(topic: &str, key: &str, ts: i64, payload: String) -> OutRecord {
    OutRecord::new(topic, key, payload.into_bytes())
        .with_header("content-type", "application/json")
        .with_timestamp(Some(ts))
}

/// The fleet plus the planted cases, as records with their sync times.
fn records(config: &Config) -> Vec<OutRecord> {
    let t = &config.topics;
    let fleet = tillbridge::sim::fleet(SEED, &t.till_events, &t.coupons, &t.loyalty_balances);
    let mut v: Vec<OutRecord> = fleet
        .coupons
        .into_iter()
        .chain(fleet.balances)
        .chain(fleet.till_events)
        .filter(|r| r.payload.as_ref().is_none_or(|p| p.len() < 1_000_000))
        .collect();
    // A single-use coupon: online at S01 (synced at once), offline at S02 (an hour earlier,
    // synced an hour later) and offline at S04 (earlier still, synced four days later: past
    // the horizon).
    v.push(json(
        &t.coupons,
        "HORIZON-1",
        D0_MS - HOUR_MS,
        r#"{"code":"HORIZON-1","usageLimit":1,"offlineAllowed":true}"#.into(),
    ));
    for (id, store, at, synced, offline) in [
        (1, "S01", D0_MS + 2 * HOUR_MS, D0_MS + 2 * HOUR_MS, false),
        (2, "S02", D0_MS + HOUR_MS, D0_MS + 3 * HOUR_MS, true),
        (3, "S04", D0_MS + HOUR_MS / 2, D0_MS + 96 * HOUR_MS, true),
    ] {
        v.push(json(
            &t.till_events,
            &format!("{store}/T9"),
            synced,
            event(id, store, "T9", at, offline, "HORIZON-1"),
        ));
    }
    // A coupon the core defines only after two stores redeemed it.
    for (id, store) in [(4, "S01"), (5, "S03")] {
        v.push(json(
            &t.till_events,
            &format!("{store}/T8"),
            D0_MS + 5 * HOUR_MS + id as i64,
            event(id, store, "T8", D0_MS + 5 * HOUR_MS, false, "LATE-DEF"),
        ));
    }
    v.push(json(
        &t.coupons,
        "LATE-DEF",
        D0_MS + 6 * HOUR_MS,
        r#"{"code":"LATE-DEF","usageLimit":1}"#.into(),
    ));
    v
}

/// What must not depend on how the records arrived.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Outstanding compensations over the whole topic: id to encoded action.
    outstanding: BTreeMap<String, Vec<u8>>,
    report: Vec<u8>,
    /// SEQUENCE_GAP alerts: id to encoded alert.
    gaps: BTreeMap<String, Vec<u8>>,
    /// Every compensation emitted: id to encoded action (checked for one content per id).
    all: Vec<(String, Vec<u8>)>,
}

fn config(dir: &Path, batch_size: usize) -> Config {
    let mut config = Config::default();
    config.embedded.path = dir.join("log");
    config.state.dir = dir.join("state");
    config.reconciler.report_key = "determinism-key".into();
    config.ingest.batch_size = batch_size;
    config
}

async fn run_all(config: &Config, transport: &Transport) {
    tillbridge::run(
        config,
        transport,
        Stages::ALL,
        true,
        CancellationToken::new(),
    )
    .await
    .unwrap();
}

fn wipe(config: &Config) {
    for stage in ["ingest", "reconciler", "fraud-guard"] {
        let dir = config.state.dir.join(stage);
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

fn outcome(config: &Config, log: &EmbeddedLog, dir: &Path) -> Outcome {
    let mut issued = BTreeMap::new();
    let mut retracted = Vec::new();
    let mut all = Vec::new();
    for r in log.read_all(&config.topics.compensations).unwrap() {
        let bytes = r.payload.unwrap();
        let a = pb::CompensatingAction::decode(bytes.as_slice()).unwrap();
        all.push((a.id.clone(), bytes.clone()));
        match a.retracts {
            Some(t) => retracted.push(t),
            None => {
                issued.insert(a.id, bytes);
            }
        }
    }
    for t in retracted {
        issued.remove(&t);
    }
    let mut gaps = BTreeMap::new();
    for r in log.read_all(&config.topics.alerts).unwrap() {
        let bytes = r.payload.unwrap();
        let a = pb::FraudAlert::decode(bytes.as_slice()).unwrap();
        if a.rule == pb::AlertRule::SequenceGap as i32 {
            gaps.insert(a.id, bytes);
        }
    }
    let out = dir.join("report");
    tillbridge::write_report(config, &out).unwrap();
    Outcome {
        outstanding: issued,
        report: std::fs::read(out.join("report.json")).unwrap(),
        gaps,
        all,
    }
}

/// Live: records appended in sync order, a few at a time, each slice processed before the next
/// arrives; optionally every stage's state wiped halfway.
async fn live(wipe_halfway: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 2000);
    let transport = Transport::from_config(&config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    let mut recs = records(&config);
    recs.sort_by_key(|r| r.timestamp_ms);
    let chunks: Vec<Vec<OutRecord>> = recs.chunks(40).map(<[OutRecord]>::to_vec).collect();
    let half = chunks.len() / 2;
    for (i, chunk) in chunks.into_iter().enumerate() {
        log.append(chunk).await.unwrap();
        if wipe_halfway && i == half {
            wipe(&config);
        }
        run_all(&config, &transport).await;
    }
    outcome(&config, log, dir.path())
}

/// A backlog: everything appended (catalog first, then the events in the fleet's order), then
/// processed with `batch_size`; optionally every stage's state wiped and rebuilt at the end.
async fn backlog(batch_size: usize, wipe_at_end: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), batch_size);
    let transport = Transport::from_config(&config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    log.append(records(&config)).await.unwrap();
    run_all(&config, &transport).await;
    if wipe_at_end {
        wipe(&config);
        run_all(&config, &transport).await;
    }
    outcome(&config, log, dir.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_give_the_same_answers_however_they_arrive() {
    let reference = live(false).await;
    assert!(
        reference.outstanding.len() >= 5,
        "{:?}",
        reference.outstanding.keys()
    );
    assert!(!reference.gaps.is_empty());
    // The late sync past the horizon: S02 (earliest to sync among the first two) stands, the
    // online S01 redemption and the one synced four days later are reversed.
    let reversed: Vec<String> = reference
        .outstanding
        .values()
        .map(|b| pb::CompensatingAction::decode(b.as_slice()).unwrap())
        .filter_map(|a| a.event_ids.first().cloned())
        .filter(|e| e.starts_with("00000000-0000-0000-0000-0000d00d"))
        .collect();
    let planted = |n: u128| uuid::Uuid::from_u128(0xd00d_0000 + n).to_string();
    let mut want = vec![planted(1), planted(3), planted(5)];
    want.sort();
    let mut got = reversed.clone();
    got.sort();
    assert_eq!(
        got, want,
        "HORIZON-1: S01 and S04 reversed; LATE-DEF: the second one"
    );
    let variants = [
        ("backlog", backlog(2000, false).await),
        ("backlog in batches of 7", backlog(7, false).await),
        ("backlog in batches of 1", backlog(1, false).await),
        ("wiped and rebuilt at the end", backlog(2000, true).await),
        ("live, wiped halfway", live(true).await),
    ];
    let mut contents: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (id, bytes) in &reference.all {
        contents.entry(id).or_insert(bytes);
    }
    for (name, got) in &variants {
        assert_eq!(
            got.outstanding.keys().collect::<Vec<_>>(),
            reference.outstanding.keys().collect::<Vec<_>>(),
            "{name}: outstanding compensation ids"
        );
        assert_eq!(
            got.outstanding, reference.outstanding,
            "{name}: outstanding content"
        );
        assert!(
            got.report == reference.report,
            "{name}: report.json differs"
        );
        assert_eq!(got.gaps, reference.gaps, "{name}: SEQUENCE_GAP alerts");
        for (id, bytes) in &got.all {
            let first = *contents.entry(id).or_insert(bytes);
            assert_eq!(
                first,
                bytes.as_slice(),
                "{name}: compensation {id} with two contents"
            );
        }
    }
    println!(
        "{} variants, {} outstanding compensations, {} gap alerts: no difference",
        variants.len() + 1,
        reference.outstanding.len(),
        reference.gaps.len()
    );
}
