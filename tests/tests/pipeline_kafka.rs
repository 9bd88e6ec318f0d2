//! The whole pipeline on a real broker: the demo's simulated fleet, produced to Kafka as outside
//! clients would, through ingest, reconciler and fraud-guard; the cases, outstanding
//! compensations and alerts equal those of the embedded run of the same fleet; and wiping the
//! reconciler's state and replaying the topics rebuilds the same report.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use tillbridge::Stages;
use tillbridge_core::config::Config;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

/// Compensations still due: issued and not retracted.
fn outstanding(records: &[Vec<u8>]) -> BTreeSet<String> {
    let mut issued = BTreeSet::new();
    let mut retracted = BTreeSet::new();
    for r in records {
        let c = pb::CompensatingAction::decode(r.as_slice()).unwrap();
        if c.kind == pb::CompensationKind::Retract as i32 {
            retracted.insert(c.retracts.unwrap_or_default());
        } else {
            issued.insert(c.id);
        }
    }
    issued.difference(&retracted).cloned().collect()
}

fn alert_subjects(records: &[Vec<u8>]) -> BTreeMap<i32, BTreeSet<String>> {
    let mut out: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for r in records {
        let a = pb::FraudAlert::decode(r.as_slice()).unwrap();
        out.entry(a.rule).or_default().insert(a.subject);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_pipeline_matches_the_embedded_run_and_rebuilds_from_the_topics() {
    let Some(broker) = kit::broker() else {
        return;
    };
    const SEED: u64 = 3;

    // The reference: the embedded run of the same fleet.
    let embedded = tempfile::tempdir().unwrap();
    tillbridge::demo::run(SEED, embedded.path(), CancellationToken::new())
        .await
        .unwrap();
    let elog =
        tillbridge_core::log::EmbeddedLog::open(&embedded.path().join("data/log"), 4).unwrap();
    let defaults = Config::default();
    let payloads = |topic: &str| -> Vec<Vec<u8>> {
        elog.read_all(topic)
            .unwrap()
            .into_iter()
            .filter_map(|r| r.payload)
            .collect()
    };
    let want_outstanding = outstanding(&payloads(&defaults.topics.compensations));
    let want_alerts = alert_subjects(&payloads(&defaults.topics.alerts));
    let want_report = std::fs::read(embedded.path().join("report.json")).unwrap();
    assert!(!want_outstanding.is_empty());

    // The same fleet through Kafka.
    let state = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, state.path()).await;
    config.fingerprint.key = format!("demo-key-{SEED}");
    // Without the planted 1.1 MB event, which the embedded run dead-letters as OVERSIZED (not
    // compared here).
    kit::produce_fleet(&broker, &config, SEED).await;

    let (b, topics) = (broker.clone(), config.topics.clone());
    let want = (want_outstanding.clone(), want_alerts.clone());
    kit::run_until(&config, Stages::ALL, move || {
        let comps: Vec<Vec<u8>> = kit::read_all(&b, &topics.compensations)
            .into_iter()
            .map(|g| g.payload)
            .collect();
        let alerts: Vec<Vec<u8>> = kit::read_all(&b, &topics.alerts)
            .into_iter()
            .map(|g| g.payload)
            .collect();
        let (o, a) = (outstanding(&comps), alert_subjects(&alerts));
        if o == want.0 && a == want.1 {
            return Ok(());
        }
        Err(format!(
            "outstanding compensations not expected {:?}, missing {:?}; alerts {a:?}, expected {:?}",
            o.difference(&want.0).collect::<Vec<_>>(),
            want.0.difference(&o).collect::<Vec<_>>(),
            want.1
        ))
    })
    .await;
    // Each planted pattern yields exactly its alert subject on Kafka too.
    let alerts: Vec<Vec<u8>> = kit::read_all(&broker, &config.topics.alerts)
        .into_iter()
        .map(|g| g.payload)
        .collect();
    let got = alert_subjects(&alerts);
    let subjects = |rule: pb::AlertRule| -> Vec<String> {
        got.get(&(rule as i32))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(subjects(pb::AlertRule::OfflineExposure), vec!["store:S03"]);
    assert_eq!(
        subjects(pb::AlertRule::OverrideRate),
        vec!["cashier:S05-C2"]
    );
    assert_eq!(subjects(pb::AlertRule::SequenceGap), vec!["till:S06/T3"]);
    // The slow till, and the till of the event stamped ahead (ingest dead-letters it).
    let drift = subjects(pb::AlertRule::ClockDrift);
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(drift.contains(&"till:S02/T3".to_owned()), "{drift:?}");
    assert_eq!(
        subjects(pb::AlertRule::ReturnAfterRedemption),
        vec!["cashier:S01-C2"]
    );
    let velocity = subjects(pb::AlertRule::CouponVelocity);
    assert_eq!(velocity.len(), 2);
    assert!(velocity.iter().any(|s| s.starts_with("coupon:LE…2X#")));
    assert!(velocity.iter().any(|s| s.starts_with("coupon:FL…24#")));

    let report = tillbridge::write_report(&config, &state.path().join("report")).unwrap();
    assert_eq!(report.len(), 3);
    let got_report = std::fs::read(state.path().join("report/report.json")).unwrap();
    assert_eq!(
        got_report, want_report,
        "Kafka and embedded runs reach the same report"
    );

    // The whole deployment's report from the topics, from another process, while a `run` holds
    // the reconciler's state: the same report.
    let log = state.path().join("holder.log");
    let mut holder = kit::process::spawn_logged(
        kit::process::with_config(&config)
            .args(["run", "--stages", "reconciler"])
            .env("TILLBRIDGE_LOG", "info"),
        &log,
    );
    kit::await_condition(Duration::from_secs(60), {
        let log = log.clone();
        move || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("tables read to their end") {
                Ok(())
            } else {
                Err(format!("the holder has not started:\n{text}"))
            }
        }
    })
    .await;
    let (ok, stdout, stderr) = kit::process::output(
        kit::process::with_config(&config)
            .args(["report", "--from", "topics", "--out"])
            .arg(state.path().join("from-topics")),
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(holder.try_wait().unwrap().is_none(), "the holder stopped");
    // SIGTERM: the holder drains and leaves the group, which the replay below joins again.
    kit::process::terminate(&mut holder);
    assert_eq!(
        std::fs::read(state.path().join("from-topics/report.json")).unwrap(),
        want_report,
        "the report from the topics is the report of the state"
    );

    // Wipe the reconciler's state and run it again in the same consumer group, whose offsets
    // are at the end: the new state makes the stage replay its topics from the beginning.
    let compensations_before = kit::read_all(&broker, &config.topics.compensations).len();
    std::fs::remove_dir_all(state.path().join("reconciler")).unwrap();
    let replay = config.clone();
    let reconciler_only = Stages {
        reconciler: true,
        ..Default::default()
    };
    let group = format!("{}.reconciler", replay.kafka.as_ref().unwrap().group_prefix);
    let ends = kit::ends(
        &broker,
        &tillbridge_reconciler::input_topics(&replay.topics),
    );
    let b = broker.clone();
    // The new state is restored before the stage's loop: the replay is done once the stage
    // (in this process) has read every input record again, its restore has finished and the
    // group's offsets are at the ends.
    let consumed = || kit::records_read("reconciler");
    let restores = || kit::restores("reconciler");
    let (before, restores_before) = (consumed(), restores());
    let total: u64 = ends.values().map(|e| *e as u64).sum();
    kit::run_until(&replay, reconciler_only, move || {
        let replayed = consumed() - before;
        if replayed >= total
            && restores() > restores_before
            && kit::group_caught_up(&b, &group, &ends)
        {
            Ok(())
        } else {
            Err(format!(
                "group {group} replayed {replayed} of {total} records; ends {ends:?}"
            ))
        }
    })
    .await;
    tillbridge::write_report(&replay, &state.path().join("rebuilt")).unwrap();
    let rebuilt = std::fs::read(state.path().join("rebuilt/report.json")).unwrap();
    assert_eq!(
        rebuilt, want_report,
        "wiping the state and replaying rebuilds the same report"
    );
    // The rebuilt stage learned what it had emitted: the same outstanding compensations, and
    // nothing emitted again.
    let comps: Vec<Vec<u8>> = kit::read_all(&broker, &config.topics.compensations)
        .into_iter()
        .map(|g| g.payload)
        .collect();
    assert_eq!(outstanding(&comps), want_outstanding);
    assert_eq!(comps.len(), compensations_before);
}
