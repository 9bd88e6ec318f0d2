//! Same facts, same answers on the broker: the determinism harness's records (the demo's fleet
//! with planted cases) produced to Apache Kafka as outside clients would: as a backlog (all on
//! the topics before the stages start); live (in sync order, a slice at a time while every
//! stage runs, every stage's state wiped halfway); then rebuilt after every stage's state is
//! wiped at the end (ingest's restored from its changelog, the others' replayed). Each must give exactly the embedded backlog run's outstanding
//! compensations, alerts (ids and content) and report.json, and no id may be written with two
//! contents. One test, so the stage counters it waits on are its own.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kit::process::Instance;
use kit::same_answers::{
    backlog, in_sync_order, kafka_outcome, records, report_from_topics, wipe, Outcome,
    FINGERPRINT_KEY,
};
use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tokio_util::sync::CancellationToken;

fn report(config: &Config, dir: &std::path::Path) -> Vec<u8> {
    tillbridge::write_report(config, dir).unwrap();
    std::fs::read(dir.join("report.json")).unwrap()
}

/// Every stage's consumer group and the topics it reads.
fn groups(config: &Config) -> Vec<(&'static str, String, Vec<String>)> {
    let prefix = &config.kafka.as_ref().unwrap().group_prefix;
    vec![
        (
            "ingest",
            format!("{prefix}.ingest"),
            vec![config.topics.till_events.clone()],
        ),
        (
            "reconciler",
            format!("{prefix}.reconciler"),
            tillbridge_reconciler::input_topics(&config.topics),
        ),
        (
            "fraud-guard",
            format!("{prefix}.fraud-guard"),
            tillbridge_fraud_guard::input_topics(&config.topics),
        ),
    ]
}

/// The records all on their topics before any stage starts (an outage, a deploy).
async fn backlog_on_kafka(broker: &str, reference: std::sync::Arc<Outcome>) {
    let broker = broker.to_owned();
    let state = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, state.path()).await;
    config.fingerprint.key = FINGERPRINT_KEY.into();
    kit::produce_records(&broker, in_sync_order(records(&config))).await;
    let (b, c, r) = (broker.clone(), config.clone(), reference.clone());
    kit::run_until(&config, Stages::ALL, move || {
        kafka_outcome(&b, &c, r.report.clone()).compare(&r)
    })
    .await;
    let got = kafka_outcome(&broker, &config, report(&config, &state.path().join("r")));
    if let Err(e) = got.compare(&reference) {
        panic!("backlog on Kafka: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_gives_the_embedded_answers_as_a_backlog_live_and_after_a_wipe() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let reference = std::sync::Arc::new(backlog(2000, false).await);
    reference.check_reference();
    backlog_on_kafka(&broker, reference.clone()).await;

    let state = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, state.path()).await;
    config.fingerprint.key = FINGERPRINT_KEY.into();
    let recs = in_sync_order(records(&config));

    // Live: every stage runs while the records arrive in sync order, a slice at a time; halfway
    // the process stops and every stage's state is wiped, and a new one carries on.
    let chunks: Vec<_> = recs.chunks(40).collect();
    let half = chunks.len() / 2;
    let start = |config: &Config| {
        let shutdown = CancellationToken::new();
        let transport = Transport::from_config(config).unwrap();
        let (config, stop) = (config.clone(), shutdown.clone());
        let run = tokio::spawn(async move {
            tillbridge::run(&config, &transport, Stages::ALL, false, stop).await
        });
        (shutdown, run)
    };
    let (mut shutdown, mut run) = start(&config);
    for (i, chunk) in chunks.iter().enumerate() {
        if i == half {
            shutdown.cancel();
            run.await.unwrap().unwrap();
            wipe(&config);
            (shutdown, run) = start(&config);
        }
        kit::produce_records(&broker, chunk.to_vec()).await;
        // The pace of a live fleet: the stages see the topic grow, not a backlog.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (b, c, want) = (broker.clone(), config.clone(), reference.report.clone());
    let r = reference.clone();
    kit::await_condition(Duration::from_secs(240), move || {
        kafka_outcome(&b, &c, want.clone()).compare(&r)
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let live = kafka_outcome(
        &broker,
        &config,
        report(&config, &state.path().join("live")),
    );
    if let Err(e) = live.compare(&reference) {
        panic!("live on Kafka, wiped halfway: {e}");
    }

    // Every stage's state wiped: ingest restores every partition from its changelog, the
    // others replay their topics from the beginning.
    wipe(&config);
    let before: Vec<u64> = groups(&config)
        .iter()
        .map(|(s, _, _)| kit::records_read(s))
        .collect();
    let restores = || kit::restores("reconciler");
    let restores_before = restores();
    let ingest_restores_before = kit::restores("ingest");
    let (b, c) = (broker.clone(), config.clone());
    kit::run_until(&config, Stages::ALL, move || {
        for ((stage, group, topics), before) in groups(&c).iter().zip(&before) {
            let ends = kit::ends(&b, topics);
            let total: u64 = ends.values().map(|e| *e as u64).sum();
            let replayed = kit::records_read(stage) - before;
            if *stage == "ingest" {
                let restored = kit::restores("ingest") - ingest_restores_before;
                if restored < kit::PARTITIONS as u64 || !kit::group_caught_up(&b, group, &ends) {
                    return Err(format!("ingest restored {restored} partitions"));
                }
                continue;
            }
            if replayed < total || !kit::group_caught_up(&b, group, &ends) {
                return Err(format!("{stage} replayed {replayed} of {total} records"));
            }
        }
        // The reconciler replays inside its restore: done once the restore is.
        if restores() == restores_before {
            return Err("the reconciler's restore has not finished".into());
        }
        Ok(())
    })
    .await;
    let rebuilt = kafka_outcome(
        &broker,
        &config,
        report(&config, &state.path().join("rebuilt")),
    );
    if let Err(e) = rebuilt.compare(&reference) {
        panic!("wiped and replayed on Kafka: {e}");
    }
    println!(
        "Kafka live (wiped halfway) and wiped-and-replayed at the end: {} outstanding compensations, {} alerts of {} rules, \
         report.json: no difference from the embedded run",
        reference.outstanding.len(),
        reference.alerts.len(),
        reference.rules().len()
    );
}

/// Two `tillbridge run` processes with every stage, each with a state of its own, in the same
/// consumer groups, while the records arrive live: the deployment's outstanding compensations,
/// alerts and report (from the topics) are the embedded single-instance run's. While records
/// arrive, the first is SIGKILLed and restarted at a quarter, a third process joins halfway (so
/// partitions move), and at three quarters the second is SIGKILLed, its state wiped and
/// restarted (ingest restores from its changelog, the reconciler and fraud-guard replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_give_the_single_instance_answers() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let reference = std::sync::Arc::new(backlog(2000, false).await);
    let dir = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, &dir.path().join("state")).await;
    config.fingerprint.key = FINGERPRINT_KEY.into();
    let recs = in_sync_order(records(&config));
    let mut instances: Vec<Instance> = (0..3)
        .map(|k| {
            Instance::new(
                &config,
                dir.path(),
                &format!("instance-{k}"),
                &["run"],
                "info,tillbridge_ingest=warn",
            )
        })
        .collect();
    instances[0].start();
    instances[1].start();
    let chunks: Vec<_> = recs.chunks(40).collect();
    let n = chunks.len();
    for (i, chunk) in chunks.iter().enumerate() {
        if i == n / 4 {
            instances[0].kill();
            instances[0].start();
        }
        if i == n / 2 {
            instances[2].start();
        }
        if i == 3 * n / 4 {
            instances[1].kill();
            std::fs::remove_dir_all(dir.path().join("instance-1")).unwrap();
            instances[1].start();
        }
        kit::produce_records(&broker, chunk.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (b, c, r) = (broker.clone(), config.clone(), reference.clone());
    let settled = kit::await_condition(Duration::from_secs(240), move || {
        kafka_outcome(&b, &c, r.report.clone()).compare(&r)
    });
    let mut alive = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(settled);
    loop {
        tokio::select! {
            _ = &mut settled => break,
            _ = alive.tick() => {
                for i in instances.iter_mut() {
                    i.running();
                }
            }
        }
    }
    for i in instances.iter_mut() {
        i.stop();
    }
    // The deployment's report, as an analyst makes it: from the topics, on another machine.
    let got = kafka_outcome(
        &broker,
        &config,
        report_from_topics(&config, &dir.path().join("report")),
    );
    if let Err(e) = got.compare(&reference) {
        panic!("three instances on Kafka, two SIGKILLs, one wipe: {e}");
    }
    println!(
        "three instances on Kafka, two SIGKILLs, one wipe: {} outstanding compensations, {} \
         alerts, report.json: no difference from the embedded single-instance run",
        reference.outstanding.len(),
        reference.alerts.len()
    );
}
