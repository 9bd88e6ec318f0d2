//! A stage killed between two of its writes loses nothing and applies nothing twice. Each batch a
//! stage handles makes three writes, in this order: its outputs (to the log), its state (one sled
//! transaction with the input positions it reflects), the acknowledgement of its input offsets.
//! For every stage, a first run handles half of the records; then the rest arrive and the process
//! is aborted at a crash point (`tillbridge_core::crash`) before the first write, between each
//! pair, or between a preload batch's outputs and its state; then it runs again to the end. The
//! outcome must equal a run that was never killed (outstanding compensations with the same ids
//! and content, alerts of every rule, report.json).

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;

use kit::same_answers::{backlog, config, finish_and_compare, in_sync_order, records, spawn_run};

/// (stage, point, which hit aborts): the points of `tillbridge_core::crash`, at the first and
/// later batches of the second run (the second half makes a dozen batches of 25 per stage).
const KILLS: [(&str, &str, u32); 10] = [
    ("ingest", "processed", 1),
    ("ingest", "sent", 3),
    ("ingest", "committed", 5),
    ("reconciler", "preload_sent", 1),
    ("reconciler", "processed", 2),
    ("reconciler", "sent", 4),
    ("reconciler", "committed", 1),
    ("fraud-guard", "processed", 3),
    ("fraud-guard", "sent", 1),
    ("fraud-guard", "committed", 4),
];

/// Whether the reconciler state the last run left must be restored from the topics (opened and
/// closed again here, so what it says is unchanged).
fn reconciler_needs_restore(config: &tillbridge_core::config::Config) -> bool {
    let mut p = tillbridge_reconciler::Reconciler::open(
        &config.state.dir.join("reconciler"),
        &config.topics,
        &tillbridge::reconciler_config(config).unwrap(),
        &tillbridge::fingerprint_key(config).unwrap(),
    )
    .unwrap();
    let needs = p.needs_restore().unwrap();
    if !needs {
        let closed =
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(p.close()));
        assert!(closed.unwrap());
    }
    needs
}

/// What `std::process::abort` raises.
const SIGABRT: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_any_two_writes_changes_no_answer() {
    let reference = backlog(2000, false).await;
    for (stage, point, nth) in KILLS {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 25);
        // Every stage commits every batch here, so each of its points is passed once per batch
        // (with an interval, one commit covers several batches: the determinism tests run that
        // way).
        config.ingest.commit_interval = std::time::Duration::ZERO;
        config.reconciler["commit_interval"] = "0s".into();
        config.fraud_guard["commit_interval"] = "0s".into();
        let mut recs = in_sync_order(records(&config));
        let rest = recs.split_off(recs.len() / 2);
        let append = |recs| async {
            let log = tillbridge_core::log::EmbeddedLog::open(&config.embedded.path, 4).unwrap();
            log.append(recs).await.unwrap();
        };
        append(recs).await;
        let status = spawn_run(&config, &[]).wait().unwrap();
        assert!(status.success(), "the first run ended with {status}");
        assert!(
            !reconciler_needs_restore(&config),
            "a run that ended normally left its reconciler state unclean"
        );
        append(rest).await;
        let spec = format!("{stage}:{point}:{nth}");
        let status = spawn_run(&config, &[(tillbridge_core::crash::VAR, &spec)])
            .wait()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "{spec}: the run was not aborted at the crash point ({status})"
        );
        // Killed once it had processed a batch, the reconciler cannot tell what it sent.
        if stage == "reconciler" && point != "preload_sent" {
            assert!(
                reconciler_needs_restore(&config),
                "{spec}: a killed reconciler's state passed for closed cleanly"
            );
        }
        finish_and_compare(
            &config,
            dir.path(),
            &reference,
            &format!("after a kill at {spec}"),
        );
        println!("killed at {spec}: no difference");
    }
}
