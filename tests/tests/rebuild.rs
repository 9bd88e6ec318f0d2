//! A damaged state directory is moved aside and rebuilt by replaying the topics: never trusted
//! blindly, never a crash loop, and the rebuilt state gives the same report.

#![allow(clippy::unwrap_used)]

use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tokio_util::sync::CancellationToken;

fn damage(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            damage(&path);
        } else {
            std::fs::write(&path, b"\x00garbage from a failing disk\xff").unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_state_is_rebuilt_from_the_log() {
    let out = tempfile::tempdir().unwrap();
    tillbridge::demo::run(5, out.path(), CancellationToken::new())
        .await
        .unwrap();
    let before = std::fs::read(out.path().join("report.json")).unwrap();

    let mut config = Config::default();
    config.embedded.path = out.path().join("data/log");
    config.state.dir = out.path().join("data/state");
    config.fingerprint.key = "demo-key-5".into();
    for stage in ["reconciler", "fraud-guard", "ingest"] {
        damage(&config.state.dir.join(stage));
    }
    let transport = Transport::from_config(&config).unwrap();
    let summary = tillbridge::run(
        &config,
        &transport,
        Stages::ALL,
        true,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // Every stage replayed its inputs from the beginning: ingest and fraud-guard through their
    // consumers; the reconciler restores before its loop (it replays its inputs to their end,
    // then its loop resumes there), so the rebuilt report below is its proof.
    for (name, stats) in &summary.stages {
        if *name != "reconciler" {
            assert!(stats.records > 0, "{name} did not replay");
        }
    }
    let moved_aside = std::fs::read_dir(&config.state.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("damaged")
        })
        .count();
    assert_eq!(
        moved_aside, 3,
        "each damaged store is kept aside for inspection"
    );
    let rebuilt = out.path().join("rebuilt");
    tillbridge::write_report(&config, &rebuilt).unwrap();
    assert_eq!(std::fs::read(rebuilt.join("report.json")).unwrap(), before);
}

/// Outstanding actions over a whole compensations topic: issued and not retracted.
fn outstanding(log: &tillbridge_core::log::EmbeddedLog, topic: &str) -> (usize, Vec<String>) {
    use prost::Message;
    let records = log.read_all(topic).unwrap();
    let mut issued = std::collections::BTreeSet::new();
    let mut retracted = std::collections::BTreeSet::new();
    for r in &records {
        let a = tillbridge_proto::pb::CompensatingAction::decode(r.payload.as_deref().unwrap())
            .unwrap();
        match a.retracts {
            Some(t) => {
                retracted.insert(t);
            }
            None => {
                issued.insert(a.id);
            }
        }
    }
    (
        records.len(),
        issued.difference(&retracted).cloned().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_reconciler_learns_what_it_emitted_and_emits_only_the_difference() {
    let out = tempfile::tempdir().unwrap();
    tillbridge::demo::run(5, out.path(), CancellationToken::new())
        .await
        .unwrap();
    let before = std::fs::read(out.path().join("report.json")).unwrap();
    let mut config = Config::default();
    config.embedded.path = out.path().join("data/log");
    config.state.dir = out.path().join("data/state");
    config.fingerprint.key = "demo-key-5".into();
    let topic = config.topics.compensations.clone();
    let (records_before, outstanding_before) = {
        let log = tillbridge_core::log::EmbeddedLog::open(&config.embedded.path, 4).unwrap();
        outstanding(&log, &topic)
    };
    assert!(!outstanding_before.is_empty());

    std::fs::remove_dir_all(config.state.dir.join("reconciler")).unwrap();
    let transport = Transport::from_config(&config).unwrap();
    let reconciler = Stages {
        reconciler: true,
        ..Stages::default()
    };
    tillbridge::run(
        &config,
        &transport,
        reconciler,
        true,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    let (records_after, outstanding_after) = outstanding(log, &topic);
    assert_eq!(
        outstanding_after, outstanding_before,
        "the same outstanding compensations, same ids"
    );
    assert_eq!(
        records_after, records_before,
        "nothing changed, so nothing was emitted again"
    );
    let rebuilt = out.path().join("rebuilt");
    tillbridge::write_report(&config, &rebuilt).unwrap();
    assert_eq!(std::fs::read(rebuilt.join("report.json")).unwrap(), before);
}
