//! One process, several ingest tasks (`ingest.tasks`): each is a member of ingest's consumer
//! group with a state of its own, so the partitions are split between them as between two
//! processes. Every event goes out once, and a conflicting resend is refused by whichever task
//! owns its partition.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use tillbridge_core::stage::Processor;
use tillbridge_proto::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_tasks_split_the_partitions_and_send_each_event_once() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, &base.path().join("unused")).await;
    config.ingest.tasks = 2;
    config.ingest.batch_size = 50;
    let n = 2000;
    let (sent, events) = kit::events::good_events(n, 16, 11);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;
    let args = ["run", "--stages", "ingest"];
    let mut instance = kit::process::Instance::new(&config, base.path(), "a", &args, "info");
    instance.start();
    let caught_up = kit::caught_up(&broker, &config, "ingest", &config.topics.till_events);
    kit::await_condition(Duration::from_secs(120), caught_up).await;

    // One event in ten resent with another content: refused, whichever task reads it.
    let resends: Vec<_> = events
        .iter()
        .zip(&sent)
        .step_by(10)
        .map(|(e, s)| kit::events::conflicting(e, s))
        .collect();
    kit::produce_sent(&producer, &config.topics.till_events, &resends).await;
    let caught_up = kit::caught_up(&broker, &config, "ingest", &config.topics.till_events);
    kit::await_condition(Duration::from_secs(120), caught_up).await;
    instance.stop();

    let sessions = kit::events_on(&broker, &config.topics.sessions);
    let ids: BTreeSet<&String> = sessions.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), n);
    assert_eq!(sessions.len(), n, "no session record sent twice");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for g in kit::read_all(&broker, &config.topics.dlq) {
        let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
        *reasons.entry(dl.reason).or_default() += 1;
    }
    assert_eq!(
        reasons,
        BTreeMap::from([("DUPLICATE_CONFLICT".to_owned(), resends.len())])
    );

    // Both tasks read partitions, each into its own state.
    let state = &instance.config.state.dir;
    let mut read_by = Vec::new();
    for dir in [state.clone(), state.join("task-1")] {
        let ingest =
            tillbridge_ingest::Ingest::open(&dir, config.topics.clone(), config.ingest.clone())
                .unwrap();
        let positions = ingest.positions().unwrap();
        assert!(
            !positions.is_empty(),
            "the task with the state in {} read nothing",
            dir.display()
        );
        read_by.push(positions.into_keys().collect::<BTreeSet<_>>());
    }
    let all: BTreeSet<_> = read_by.iter().flatten().collect();
    assert_eq!(all.len(), kit::PARTITIONS as usize);
}
