//! The fault battery (issue: scale out on Kafka), on the Apache Kafka broker the test scripts
//! start: ingest instances join and leave one consumer group, or are SIGKILLed and restarted,
//! or run while a broker of the scenario's own is SIGKILLed and restarted, while a backlog of till events (with 5% resends and 1% conflicting resends) is consumed and
//! more is produced. A checker compares the input with `promo.sessions` and prints lost,
//! duplicated (by deterministic id), conflicting (one id, two contents), conflicting resends
//! accepted and out-of-order counts.
//!
//! The short variant runs in CI. The full one (1,000,000 events, 20 kills):
//! `BATTERY_EVENTS=1000000 BATTERY_KILLS=20 scripts/test.sh -p tillbridge-tests --test fault_battery -- --nocapture`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kit::events::{good_events, Sent};
use kit::process::{Instance, OwnBroker};
use kit::IdWatch;
use prost::Message;
use rand::{Rng, SeedableRng};
use tillbridge_core::config::Config;
use tillbridge_proto::pb;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The cashier of every conflicting resend: an original never has it.
const CONFLICT_CASHIER: &str = "CONFLICTING-RESEND";

/// `n` distinct events and, spread among them, resends of 5% of them (the same bytes, as a till
/// resends what it is unsure was received) and conflicting resends of 1% (the same id with other
/// content, long after the original, so that its partition has likely moved between the two);
/// returned in production order with the originals.
fn workload(n: usize, seed: u64) -> (Vec<Sent>, Vec<pb::TillEvent>) {
    let (sent, events) = good_events(n, 48, seed);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut all = Vec::with_capacity(n + n / 16);
    for (i, s) in sent.iter().enumerate() {
        all.push(s.clone());
        if i >= 100 && rng.gen_ratio(1, 20) {
            // A resend of an event produced a little earlier, on its own till's key.
            all.push(sent[rng.gen_range(i - 100..i)].clone());
        }
        if i >= n / 10 && rng.gen_ratio(1, 100) {
            // The same id with another cashier, on the original's key (so after it in its
            // partition): ingest must refuse it as DUPLICATE_CONFLICT whoever owns the partition.
            let j = rng.gen_range(i - n / 10..i);
            let mut changed = events[j].clone();
            changed.cashier_id = Some(CONFLICT_CASHIER.into());
            all.push(Sent {
                key: sent[j].key.clone(),
                payload: changed.encode_to_vec(),
                content_type: None,
            });
        }
    }
    (all, events)
}

/// An instance of `tillbridge run --stages ingest` with a state directory of its own.
fn ingest_instance(config: &Config, base: &std::path::Path, k: usize) -> Instance {
    Instance::new(
        config,
        base,
        &format!("instance-{k}"),
        &["run", "--stages", "ingest"],
        "info,tillbridge_ingest=warn",
    )
}

/// What an instance's log says: partitions assigned, replayed into a new state, sends that
/// failed and were retried, and restores from the changelog or the input topic (each finished
/// one's records and rate).
fn rebalances(i: &Instance) -> (usize, usize, usize, Vec<(u64, u64)>) {
    let text = i.log_text();
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..].split(' ').next()?.parse().ok()
    };
    let restores = text
        .lines()
        .filter(|l| l.contains("restored the stage's state of a partition"))
        .filter_map(|l| Some((field(l, "records")?, field(l, "records_per_second")?)))
        .collect();
    (
        text.matches("partitions assigned").count(),
        text.matches("replaying from the beginning").count(),
        text.matches("send failed, retrying").count(),
        restores,
    )
}

/// Waits until the group gave `i` a partition (a join takes seconds).
fn await_partitions(i: &mut Instance) {
    let start = Instant::now();
    loop {
        let given = i.log_text().lines().rev().any(|l| {
            l.contains("partitions assigned") && !l.contains("partitions assigned partitions=0")
        });
        if given {
            return;
        }
        i.running();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no partition within 60 s; log:\n{}",
            kit::process::log_tail(&i.log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the checker found on `promo.sessions`.
#[derive(Debug, Default)]
struct Figures {
    records: usize,
    lost: usize,
    duplicated: usize,
    conflicting: usize,
    /// Conflicting resends that reached `promo.sessions` (each should be a dead letter).
    conflicts_accepted: usize,
    out_of_order: usize,
}

/// Follows `promo.sessions`, counting distinct event ids.
struct Watch(IdWatch);

impl Watch {
    /// Polls until `n` distinct ids arrived, checking that every running instance is alive.
    fn until(&mut self, n: usize, instances: &mut [Instance]) {
        self.0.until(n, Duration::from_secs(300), || {
            for i in instances.iter_mut() {
                i.running();
            }
        });
    }

    /// The checker: every input id once or more, every copy identical, and the events of one
    /// till in their till order on each output partition (first copies; a replay after a move
    /// may repeat earlier ones).
    fn figures(&self, events: &[pb::TillEvent]) -> Figures {
        let mut copies: BTreeMap<String, BTreeSet<&[u8]>> = BTreeMap::new();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let mut last_seq: BTreeMap<(i32, String), u64> = BTreeMap::new();
        let mut f = Figures {
            records: self.0.tail.got.len(),
            ..Figures::default()
        };
        let mut first = BTreeSet::new();
        for g in &self.0.tail.got {
            let ev = pb::TillEvent::decode(g.payload.as_slice()).unwrap();
            copies
                .entry(ev.event_id.clone())
                .or_default()
                .insert(&g.payload);
            *count.entry(ev.event_id.clone()).or_default() += 1;
            if ev.cashier_id.as_deref() == Some(CONFLICT_CASHIER) {
                f.conflicts_accepted += 1;
            }
            if first.insert(ev.event_id.clone()) {
                let till = format!("{}/{}", ev.store_id, ev.till_id);
                let last = last_seq.entry((g.partition, till)).or_insert(0);
                if ev.till_seq < *last {
                    f.out_of_order += 1;
                }
                *last = (*last).max(ev.till_seq);
            }
        }
        f.lost = events
            .iter()
            .filter(|e| !copies.contains_key(&e.event_id))
            .count();
        f.duplicated = count.values().filter(|c| **c > 1).count();
        f.conflicting = copies.values().filter(|c| c.len() > 1).count();
        f
    }
}

/// Produces the first `before` records of `sent` now and returns a task producing the rest in
/// the background (the run goes on while instances come and go).
async fn produce_during(
    broker: &str,
    config: &Config,
    sent: Vec<Sent>,
    before: usize,
) -> tokio::task::JoinHandle<()> {
    let producer = kit::producer(broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent[..before]).await;
    let topic = config.topics.till_events.clone();
    tokio::spawn(async move {
        for chunk in sent[before..].chunks(2000) {
            kit::produce_sent(&producer, &topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn report(name: &str, f: &Figures, started: Instant) {
    println!(
        "{name}: {} records on promo.sessions in {:.1} s; lost {}, duplicated (same id) {}, \
         conflicting {}, conflicting resends accepted {}, out of order {}",
        f.records,
        started.elapsed().as_secs_f64(),
        f.lost,
        f.duplicated,
        f.conflicting,
        f.conflicts_accepted,
        f.out_of_order
    );
    assert_eq!(
        (f.lost, f.conflicting, f.conflicts_accepted, f.out_of_order),
        (0, 0, 0, 0),
        "{name}: {f:?}"
    );
}

/// Which broker a scenario runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Broker {
    /// The suite's broker; half the workload is produced while the script runs.
    Shared,
    /// A broker of the scenario's own, which the script may kill and restart; the whole
    /// workload is produced before the script runs.
    Own,
}

/// One scenario: `instances` ingest instances over a fresh set of topics (tuned by `tune`), the
/// workload of `seed` produced before and (on the shared broker) during `script`, which starts,
/// stops and kills instances (and its own broker) as the output grows; then every instance is
/// stopped and the checker runs.
async fn battery(
    name: &'static str,
    on: Broker,
    instances: usize,
    seed: u64,
    tune: impl FnOnce(&mut Config),
    script: impl FnOnce(usize, &mut Watch, &mut [Instance], Option<&OwnBroker>) + Send + 'static,
) {
    let Some(shared) = kit::broker() else {
        return;
    };
    let n = env_or("BATTERY_EVENTS", 20_000);
    let base = tempfile::tempdir().unwrap();
    let own = (on == Broker::Own).then(|| OwnBroker::start(&base.path().join("broker")));
    let broker = own.as_ref().map_or(shared, |b| b.address.clone());
    let mut config = kit::config(&broker, &base.path().join("state")).await;
    tune(&mut config);
    let (sent, events) = workload(n, seed);
    let started = Instant::now();
    let before = if own.is_some() {
        sent.len()
    } else {
        sent.len() / 2
    };
    let producing = produce_during(&broker, &config, sent, before).await;
    let mut instances: Vec<Instance> = (0..instances)
        .map(|k| ingest_instance(&config, base.path(), k))
        .collect();
    let figures = tokio::task::spawn_blocking(move || {
        let mut watch = Watch(IdWatch::new(&broker, &config.topics.sessions));
        script(n, &mut watch, &mut instances, own.as_ref());
        watch.until(n, &mut instances);
        // What a late replay could still add.
        watch.0.poll(Duration::from_secs(2));
        for i in instances.iter_mut() {
            if i.running() {
                i.stop();
            }
        }
        watch.0.poll(Duration::from_millis(50));
        for (k, i) in instances.iter().enumerate() {
            let (assigned, replayed, retried, restores) = rebalances(i);
            let rates: Vec<String> = restores
                .iter()
                .map(|(n, r)| format!("{n} records at {r}/s"))
                .collect();
            println!(
                "{name}: instance {k}: {assigned} assignments, {replayed} partitions replayed \
                 from the beginning into a new state, {retried} failed sends retried; \
                 restores finished: [{}]",
                rates.join(", ")
            );
        }
        watch.figures(&events)
    })
    .await
    .unwrap();
    producing.await.unwrap();
    report(name, &figures, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_scaled_1_2_3_2_1_lose_nothing() {
    battery(
        "scaled 1 -> 2 -> 3 -> 2 -> 1",
        Broker::Shared,
        3,
        21,
        |_| {},
        |n, watch, instances, _| {
            instances[0].start();
            watch.until(n * 15 / 100, instances);
            instances[1].start();
            await_partitions(&mut instances[1]);
            watch.until(n * 30 / 100, instances);
            instances[2].start();
            await_partitions(&mut instances[2]);
            watch.until(n * 50 / 100, instances);
            instances[2].stop();
            watch.until(n * 70 / 100, instances);
            instances[1].stop();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_of_random_instances_lose_nothing() {
    let kills = env_or("BATTERY_KILLS", 4);
    let tune = |c: &mut Config| c.kafka.as_mut().unwrap().fetch_wait_max_ms = 10;
    battery(
        "SIGKILLs",
        Broker::Shared,
        2,
        22,
        tune,
        move |n, watch, instances, _| {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(23);
            for i in instances.iter_mut() {
                i.start();
            }
            for k in 1..=kills {
                watch.until(n * k / (kills + 2), instances);
                let victim = rng.gen_range(0..instances.len());
                instances[victim].kill();
                println!(
                    "SIGKILL #{k} of instance {victim} with {} events out",
                    watch.0.ids.len()
                );
                instances[victim].start();
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_instance_restores_its_partitions_from_the_changelog() {
    battery(
        "a wiped instance",
        Broker::Shared,
        2,
        24,
        |_| {},
        |n, watch, instances, _| {
            for i in instances.iter_mut() {
                i.start();
            }
            watch.until(n * 40 / 100, instances);
            instances[1].stop();
            std::fs::remove_dir_all(&instances[1].config.state.dir).unwrap();
            println!("instance 1 wiped with {} events out", watch.0.ids.len());
            let mark = instances[1].log_text().len();
            instances[1].start();
            // It restores the partitions it is given from the changelog, and reports it.
            let start = Instant::now();
            while !instances[1].log_text()[mark..]
                .contains("restored the stage's state of a partition from its changelog")
            {
                instances[1].running();
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "no restore finished within 120 s; log:\n{}",
                    kit::process::log_tail(&instances[1].log)
                );
                watch.0.poll(Duration::from_millis(50));
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_lose_nothing() {
    // The producer's message timeout, short so that one outage outlasts it.
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
    let restarts = env_or("BATTERY_BROKER_RESTARTS", 5);
    let tune = |c: &mut Config| c.kafka.as_mut().unwrap().delivery_timeout = DELIVERY_TIMEOUT;
    battery(
        "broker restarts",
        Broker::Own,
        2,
        25,
        tune,
        move |n, watch, instances, broker| {
            let broker = broker.unwrap();
            for i in instances.iter_mut() {
                i.start();
            }
            for k in 1..=restarts {
                watch.until(n * k / (restarts + 2), instances);
                broker.kill();
                // The last outage outlasts the producer's message timeout: the sends in flight
                // fail, and the stage must retry them, not skip them or stop.
                let down = if k == restarts {
                    DELIVERY_TIMEOUT + Duration::from_secs(3)
                } else {
                    Duration::from_secs(2)
                };
                std::thread::sleep(down);
                for i in instances.iter_mut() {
                    i.running();
                }
                broker.restart();
                println!(
                    "broker restart #{k}: down {down:?} with {} events out",
                    watch.0.ids.len()
                );
            }
        },
    )
    .await;
}
