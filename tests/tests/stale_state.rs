//! A state that sled serves older than the consumer's positions (its newest writes lost, a
//! backup restored) resumes where the state is, not where the group committed: the records it
//! lacks are read again, none is skipped.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use prost::Message;
use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tillbridge_core::log::OutRecord;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

/// 2026-03-02T09:00:00Z.
const T0_MS: i64 = 1_772_442_000_000;
const MIN_MS: i64 = 60_000;

fn override_at(n: i64) -> OutRecord {
    let ev = pb::TillEvent {
        event_id: uuid::Uuid::from_u128(0xabc0 + n as u128).to_string(),
        store_id: "S1".into(),
        till_id: "T1".into(),
        till_seq: n as u64 + 1,
        occurred_at: Some(prost_types::Timestamp {
            seconds: (T0_MS + n * MIN_MS) / 1000,
            nanos: 0,
        }),
        cashier_id: Some("C-7".into()),
        currency: "EUR".into(),
        body: Some(pb::till_event::Body::ManualOverride(pb::ManualOverride {
            kind: pb::manual_override::Kind::Price as i32,
            amount_minor: 500,
            reason: "price check".into(),
            approved_by: None,
        })),
        ..Default::default()
    };
    OutRecord::new(
        "till.events",
        "S1/T1",
        tillbridge_proto::to_json(&ev).into_bytes(),
    )
    .with_header("content-type", "application/json")
    .with_timestamp(Some(T0_MS + n * MIN_MS))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_state_reads_again_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.embedded.path = dir.path().join("log");
    config.state.dir = dir.path().join("state");
    let transport = Transport::from_config(&config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    let stages = Stages {
        fraud_guard: true,
        ..Default::default()
    };
    let run = || async {
        tillbridge::run(&config, &transport, stages, true, CancellationToken::new())
            .await
            .unwrap();
    };
    let state = config.state.dir.join("fraud-guard");
    let backup = dir.path().join("backup");
    // Three overrides of cashier C-7; the state after them is kept aside.
    log.append((0..3).map(override_at).collect()).await.unwrap();
    run().await;
    copy_dir(&state, &backup);
    // Two more, judged and committed: the group's position is past them.
    log.append((3..5).map(override_at).collect()).await.unwrap();
    run().await;
    // The state goes back to the copy (it knows three overrides), then a sixth arrives.
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&backup, &state);
    log.append(vec![override_at(5)]).await.unwrap();
    run().await;
    // Six overrides within the hour: the alert needs the two the old state lacked.
    let alerts: Vec<pb::FraudAlert> = log
        .read_all(&config.topics.alerts)
        .unwrap()
        .into_iter()
        .map(|r| pb::FraudAlert::decode(r.payload.unwrap().as_slice()).unwrap())
        .filter(|a| a.rule == pb::AlertRule::OverrideRate as i32)
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].event_ids.len(), 6, "{:?}", alerts[0].event_ids);
}
