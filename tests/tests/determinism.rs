//! Same facts, same answers: the demo's fleet, extended with a late sync past the settlement
//! horizon and a coupon defined after its redemptions, run on the embedded log live (paced, in
//! sync order), as a backlog, with small batches, with every stage's state wiped mid-run and at
//! the end, and with the process SIGKILLed mid-run. Every variant must end with the live run's
//! outstanding compensations (same ids, same content), the same report.json, the same alerts of
//! every rule, and no compensation or alert id that carries two contents. (The broker variants
//! are in `determinism_kafka.rs`.)

#![allow(clippy::unwrap_used)]

use kit::same_answers::{
    backlog, config, finish_and_compare, in_sync_order, outcome, records, run_all, spawn_run, wipe,
    Outcome,
};
use tillbridge::Transport;
use tillbridge_core::log::OutRecord;

/// Live: records appended in sync order, a few at a time, each slice processed before the next
/// arrives; optionally every stage's state wiped halfway.
async fn live(wipe_halfway: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 2000);
    let transport = Transport::from_config(&config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    let recs = in_sync_order(records(&config));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_give_the_same_answers_however_they_arrive() {
    let reference = live(false).await;
    reference.check_reference();
    let variants = [
        ("backlog", backlog(2000, false).await),
        ("backlog in batches of 7", backlog(7, false).await),
        ("backlog in batches of 1", backlog(1, false).await),
        ("wiped and rebuilt at the end", backlog(2000, true).await),
        ("live, wiped halfway", live(true).await),
    ];
    for (name, got) in &variants {
        if let Err(e) = got.compare(&reference) {
            panic!("{name}: {e}");
        }
    }
    println!(
        "{} variants, {} outstanding compensations, {} alerts of {} rules: no difference",
        variants.len() + 1,
        reference.outstanding.len(),
        reference.alerts.len(),
        reference.rules().len()
    );
}

/// The whole pipeline as a process, SIGKILLed at random points while it works through the
/// records in small batches committed once a second, then run to the end: the same answers as
/// the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_anywhere_change_no_answer() {
    let reference = backlog(2000, false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 25);
    // Every stage commits once a second: each kill lands inside an interval of many batches
    // whose outputs are durable and whose state and offsets are not.
    config.ingest.commit_interval = std::time::Duration::from_secs(1);
    config.reconciler["commit_interval"] = "1s".into();
    config.fraud_guard["commit_interval"] = "1s".into();
    {
        let log = tillbridge_core::log::EmbeddedLog::open(&config.embedded.path, 4).unwrap();
        log.append(in_sync_order(records(&config))).await.unwrap();
    }
    let spawn = || spawn_run(&config, &[]);
    // Kill points spread over the run (a fixed sequence, so a failure can be replayed).
    let mut killed = 0;
    for wait_ms in [150u64, 400, 90, 700, 250, 1200] {
        let mut child = spawn();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    finish_and_compare(
        &config,
        dir.path(),
        &reference,
        &format!("after {killed} SIGKILLs"),
    );
    println!("{killed} SIGKILLs: no difference");
}
