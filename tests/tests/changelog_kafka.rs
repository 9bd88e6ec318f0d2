//! Ingest's state follows its partitions through its changelog topic. An instance whose state
//! is wiped while it is down restores every partition from the changelog (killed half-way
//! through that restore and started again), then sends nothing twice: it does not replay the
//! input it had read, it drops identical resends and refuses a conflicting resend of every
//! event it knew.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use tillbridge_proto::pb;

const RESTORED: &str = "restored the stage's state of a partition from its changelog";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_instance_restores_from_the_changelog_and_sends_nothing_twice() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, &base.path().join("unused")).await;
    // Many batches: many changelog records per key, positions and watermarks among them.
    config.ingest.batch_size = 10;
    let n = 2000;
    let (sent, events) = kit::events::good_events(n, 16, 47);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;
    let caught_up = kit::caught_up(&broker, &config, "ingest", &config.topics.till_events);
    let args = ["run", "--stages", "ingest"];
    let mut instance = kit::process::Instance::new(&config, base.path(), "a", &args, "info");

    // A first life reads everything and is killed; its state is wiped.
    instance.start();
    kit::await_condition(Duration::from_secs(120), caught_up).await;
    instance.kill();
    std::fs::remove_dir_all(&instance.config.state.dir).unwrap();
    let changelog = kit::changelog_of(&config, "ingest");
    assert!(
        kit::end_offsets(&broker, &changelog) > n as i64,
        "the changelog holds the state"
    );

    // The new state dies after the first chunk it restored.
    let log = base.path().join("killed.log");
    let status = kit::process::spawn_logged(
        kit::process::with_config(&instance.config)
            .args(args)
            .env(tillbridge_core::crash::VAR, "ingest:restore_applied:1"),
        &log,
    )
    .wait()
    .unwrap();
    assert!(!status.success(), "{}", kit::process::log_tail(&log));

    // Started again, it restores every partition from the changelog.
    let logged_before = instance.log_text().len();
    instance.start();
    let a_log = instance.log.clone();
    kit::await_condition(Duration::from_secs(120), move || {
        let text = std::fs::read_to_string(&a_log).unwrap_or_default();
        let restored = text.lines().filter(|l| l.contains(RESTORED)).count();
        if restored >= kit::PARTITIONS as usize {
            Ok(())
        } else {
            Err(format!("{restored} partitions restored"))
        }
    })
    .await;
    assert!(instance.running());

    // One event in ten resent as it was, one in ten with another content, on every partition.
    let mut resends = Vec::new();
    let mut want = 0;
    for (i, (e, s)) in events.iter().zip(&sent).enumerate() {
        match i % 10 {
            0 => resends.push(kit::events::Sent {
                key: s.key.clone(),
                payload: s.payload.clone(),
                content_type: s.content_type,
            }),
            5 => {
                let mut e = e.clone();
                e.till_seq += 1_000_000;
                want += 1;
                resends.push(kit::events::Sent {
                    key: s.key.clone(),
                    payload: e.encode_to_vec(),
                    content_type: None,
                });
            }
            _ => {}
        }
    }
    kit::produce_sent(&producer, &config.topics.till_events, &resends).await;
    let caught_up = kit::caught_up(&broker, &config, "ingest", &config.topics.till_events);
    kit::await_condition(Duration::from_secs(120), caught_up).await;
    instance.stop();

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for g in kit::read_all(&broker, &config.topics.dlq) {
        let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
        *reasons.entry(dl.reason).or_default() += 1;
    }
    assert_eq!(
        reasons,
        BTreeMap::from([("DUPLICATE_CONFLICT".to_owned(), want)]),
        "every conflicting resend refused: the restored state knows every partition"
    );
    // Each event went out once: the restored instance neither replayed the input nor let a
    // resend through.
    let sessions = kit::read_all(&broker, &config.topics.sessions);
    let mut contents: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for g in &sessions {
        let ev = pb::TillEvent::decode(g.payload.as_slice()).unwrap();
        contents
            .entry(ev.event_id)
            .or_default()
            .insert(g.payload.clone());
    }
    assert_eq!(contents.len(), n);
    assert_eq!(sessions.len(), n, "no session record sent twice");
    let text = instance.log_text();
    assert!(
        !text[logged_before..].contains("replaying from the beginning"),
        "no partition replayed from its input:\n{}",
        kit::process::log_tail(&instance.log)
    );
}
