//! A state rebuilt from the input topic on the broker: ingest's state is lost after a run, and
//! its changelog too (a deployment that lost it, or that predates it; with the changelog the
//! state is restored from there: `changelog_kafka.rs`). The new state is killed after its first
//! batch of the replay, and started again. The group's committed offsets are at the end (from
//! before the loss), yet every partition is replayed into the new state: afterwards it knows
//! every event, so a conflicting resend of any of them is refused.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tillbridge_proto::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_state_killed_half_way_through_its_replay_still_reads_every_partition() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, &base.path().join("state")).await;
    config.ingest.batch_size = 10;
    let n = 2000;
    let (sent, events) = kit::events::good_events(n, 16, 31);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;
    let caught_up = kit::caught_up(&broker, &config, "ingest", &config.topics.till_events);

    // A first life reads everything; its state is then lost.
    let run = kit::InProcess::ingest(&config);
    kit::await_condition(Duration::from_secs(120), caught_up.clone()).await;
    run.stop().await;
    std::fs::remove_dir_all(&config.state.dir).unwrap();
    kit::delete_topic(&broker, &kit::changelog_of(&config, "ingest")).await;

    // The new state dies after its first batch.
    let log = base.path().join("killed.log");
    let status = kit::process::spawn_logged(
        kit::process::with_config(&config)
            .args(["run", "--stages", "ingest"])
            .env(tillbridge_core::crash::VAR, "ingest:committed:1"),
        &log,
    )
    .wait()
    .unwrap();
    assert!(!status.success(), "{}", kit::process::log_tail(&log));

    // Started again, it goes on with the replay, every partition of it.
    let run = kit::InProcess::ingest(&config);
    kit::await_condition(Duration::from_secs(120), caught_up).await;
    // A conflicting resend (same id, other content) of one event in ten, on every partition.
    let conflicting: Vec<kit::events::Sent> = events
        .iter()
        .zip(&sent)
        .step_by(10)
        .map(|(e, s)| kit::events::conflicting(e, s))
        .collect();
    kit::produce_sent(&producer, &config.topics.till_events, &conflicting).await;
    let want = conflicting.len();
    let dlq = config.topics.dlq.clone();
    let b = broker.clone();
    kit::await_condition(Duration::from_secs(120), move || {
        let got = kit::read_all(&b, &dlq).len();
        if got >= want {
            Ok(())
        } else {
            Err(format!("{got} of {want} dead letters"))
        }
    })
    .await;
    run.stop().await;

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for g in kit::read_all(&broker, &config.topics.dlq) {
        let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
        *reasons.entry(dl.reason).or_default() += 1;
    }
    assert_eq!(
        reasons,
        BTreeMap::from([("DUPLICATE_CONFLICT".to_owned(), want)]),
        "every conflicting resend refused: the rebuilt state knows every partition"
    );
    // And none of them went out as a session.
    let contents = kit::contents_by_id(&broker, &config.topics.sessions);
    assert_eq!(contents.len(), n);
    assert!(
        contents.values().all(|c| c.len() == 1),
        "one content per id"
    );
}
