//! The process outlives the broker: a broker of this test's own, killed (SIGKILL) while ingest
//! runs and started again on the same port and data directory after a few seconds. Ingest polls
//! on through the outage (consumer errors are counted, not fatal) and every event, from before and after
//! the restart, reaches `promo.sessions` with no id lost.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use tillbridge::{Stages, Transport};
use tokio_util::sync::CancellationToken;

fn event_ids(got: &[kit::Got]) -> BTreeSet<Vec<u8>> {
    got.iter()
        .filter_map(|g| g.headers.get("tillbridge-event-id").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_waits_out_a_broker_restart_and_loses_nothing() {
    // The shared broker's presence says the broker's jars are installed; this test runs its own.
    if kit::broker().is_none() {
        return;
    }
    // The stage's log goes to the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,librdkafka=warn")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let own = kit::process::OwnBroker::start(&dir.path().join("broker"));
    let broker = own.address.clone();
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, state.path()).await;
    let (sent, events) = kit::events::good_events(400, 16, 21);
    let want: BTreeSet<Vec<u8>> = events
        .iter()
        .map(|e| e.event_id.clone().into_bytes())
        .collect();

    let shutdown = CancellationToken::new();
    let transport = Transport::from_config(&config).unwrap();
    let mut run = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        let ingest = Stages {
            ingest: true,
            ..Stages::default()
        };
        tokio::spawn(
            async move { tillbridge::run(&config, &transport, ingest, false, shutdown).await },
        )
    };

    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent[..200]).await;
    let (b, sessions) = (broker.clone(), config.topics.sessions.clone());
    tokio::task::spawn_blocking(move || {
        kit::read_until(&b, &sessions, Duration::from_secs(120), |g| {
            event_ids(g).len() >= 200
        })
    })
    .await
    .unwrap();

    // The outage: the broker dies, stays down for a few seconds, and comes back on its port
    // with its data.
    own.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !run.is_finished(),
        "ingest stopped while the broker was down: {:?}",
        (&mut run).await
    );
    own.restart();

    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent[200..]).await;
    let (b, sessions) = (broker.clone(), config.topics.sessions.clone());
    let want_all = want.clone();
    let got = tokio::task::spawn_blocking(move || {
        kit::read_until(&b, &sessions, Duration::from_secs(180), |g| {
            event_ids(g) == want_all
        })
    })
    .await
    .unwrap();
    assert!(!run.is_finished(), "ingest stopped after the restart");
    let seen = event_ids(&got);
    let missing: Vec<String> = want
        .difference(&seen)
        .map(|id| String::from_utf8_lossy(id).into_owned())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events missing from promo.sessions after the restart: {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    let retries = tillbridge_core::metrics::CONSUMER_RETRIES
        .with_label_values(&["ingest"])
        .get();
    println!(
        "{} events, {} session records, {} consumer errors polled through",
        want.len(),
        got.len(),
        retries
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
