//! The fault battery (issue: scale out on Kafka), on the Apache Kafka broker the test scripts
//! start: `tillbridge run` instances (every stage) join and leave the consumer groups, or are
//! SIGKILLed and restarted, or have their state wiped, or run while a broker of the scenario's
//! own is SIGKILLed and restarted, while a backlog is consumed and more is produced: the
//! determinism harness's fleet (planted cases of every kind) and generated till events (coupons
//! redeemed past their limits, 5% resends, 1% conflicting resends). A checker compares the ids
//! a single-instance reference run accepted with `promo.sessions` and prints lost, duplicated
//! (by deterministic id), conflicting (one id, two contents), conflicting resends accepted,
//! unexpected and out-of-order counts; then the compensations, alerts and report (from the
//! topics, as `tillbridge report` makes it) must equal the reference's.
//!
//! The short variant runs in CI. The full one (1,000,000 events, 20 kills):
//! `BATTERY_EVENTS=1000000 BATTERY_KILLS=20 scripts/test.sh -p tillbridge-tests --test fault_battery -- --nocapture`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kit::events::{good_events_with, Sale};
use kit::process::{Instance, OwnBroker};
use kit::same_answers::{
    in_sync_order, kafka_outcome, records, reference, report_from_topics, Outcome, FINGERPRINT_KEY,
};
use kit::IdWatch;
use prost::Message;
use rand::{Rng, SeedableRng};
use tillbridge_core::config::Config;
use tillbridge_core::log::OutRecord;
use tillbridge_proto::pb;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The cashier of every conflicting resend: an original never has it.
const CONFLICT_CASHIER: &str = "CONFLICTING-RESEND";

/// What a scenario produces, in production order, and the generated events among it.
struct Workload {
    records: Vec<OutRecord>,
    generated: Vec<pb::TillEvent>,
}

/// The determinism harness's fleet (its planted cases), then coupon definitions and `n` distinct
/// generated events on tills of their own (1 in 50 redeems one of `n / 5000` coupons of 10 uses
/// each, so most redemptions are past the limit) and, spread among them, resends of 5% of them
/// (the same bytes, as a till resends what it is unsure was received) and conflicting resends of
/// 1% (the same id with other content, long after the original, so that its partition has
/// likely moved between the two). Every record carries its record time (its sync time), so the
/// reference reads the same records.
fn workload(config: &Config, n: usize, seed: u64) -> Workload {
    let coupons = (n / 5000).max(4);
    let code = |k: usize| format!("BATTERY-{k}");
    let (sent, events) = good_events_with(n, 48, seed, |i, sale| {
        let sale = Sale {
            store: format!("B{}", &sale.store[1..]),
            ..sale
        };
        if i % 50 != 7 {
            return sale;
        }
        let price = sale.lines[0].2;
        sale.coupon(&code(i / 50 % coupons), 50).total(price - 50)
    });
    // Synced a second after it happened.
    let synced = |e: &pb::TillEvent| {
        let t = e.occurred_at.as_ref().unwrap();
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000 + 1000
    };
    let record = |key: &str, payload: Vec<u8>, json: bool, ts: i64| {
        let r = OutRecord::new(&config.topics.till_events, key, payload).with_timestamp(Some(ts));
        if json {
            r.with_header("content-type", "application/json")
        } else {
            r
        }
    };
    let mut all = in_sync_order(records(config));
    all.extend((0..coupons).map(|k| {
        let definition = format!(r#"{{"code":"{}","usageLimit":10}}"#, code(k));
        OutRecord::new(&config.topics.coupons, code(k), definition.into_bytes())
            .with_header("content-type", "application/json")
            .with_timestamp(Some(synced(&events[0]) - 1000))
    }));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for (i, s) in sent.iter().enumerate() {
        let ts = synced(&events[i]);
        all.push(record(
            &s.key,
            s.payload.clone(),
            s.content_type.is_some(),
            ts,
        ));
        if i >= 100 && rng.gen_ratio(1, 20) {
            // A resend of an event produced a little earlier, on its own till's key.
            let r = &sent[rng.gen_range(i - 100..i)];
            all.push(record(
                &r.key,
                r.payload.clone(),
                r.content_type.is_some(),
                ts,
            ));
        }
        if i >= n / 10 && rng.gen_ratio(1, 100) {
            // The same id with another cashier, on the original's key (so after it in its
            // partition): ingest must refuse it as DUPLICATE_CONFLICT whoever owns the partition.
            let j = rng.gen_range(i - n / 10..i);
            let mut changed = events[j].clone();
            changed.cashier_id = Some(CONFLICT_CASHIER.into());
            all.push(record(&sent[j].key, changed.encode_to_vec(), false, ts));
        }
    }
    Workload {
        records: all,
        generated: events,
    }
}

/// An instance of `tillbridge run` (every stage) with a state directory of its own.
fn instance(config: &Config, base: &Path, k: usize) -> Instance {
    Instance::new(
        config,
        base,
        &format!("instance-{k}"),
        &["run"],
        "info,tillbridge_ingest=warn",
    )
}

/// What an instance's log says: partitions assigned, replayed into a new state, sends that
/// failed and were retried, restores from the changelog or the input topic (each finished
/// one's records and rate), and the reconciler's restores from the topics (records replayed
/// and rate).
fn rebalances(i: &Instance) -> LogSays {
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
    let reconciler = text
        .lines()
        .filter(|l| l.contains("reconciler inputs replayed"))
        .filter_map(|l| Some((field(l, "replayed")?, field(l, "records_per_second")?)))
        .collect();
    LogSays {
        assigned: text.matches("partitions assigned").count(),
        replayed: text.matches("replaying from the beginning").count(),
        retried: text.matches("send failed, retrying").count(),
        restores,
        reconciler,
    }
}

/// See [`rebalances`].
struct LogSays {
    assigned: usize,
    replayed: usize,
    retried: usize,
    /// (records, records/s) of each restore from ingest's changelog or input.
    restores: Vec<(u64, u64)>,
    /// (records, records/s) of each reconciler restore from the topics.
    reconciler: Vec<(u64, u64)>,
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
    /// Ids the reference did not accept.
    unexpected: usize,
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

    /// The checker: every id the reference accepted once or more and no other, every copy
    /// identical, and the generated events of one till in their till order on each output
    /// partition (first copies; a replay after a move may repeat earlier ones).
    fn figures(&self, accepted: &BTreeSet<String>, generated: &[pb::TillEvent]) -> Figures {
        let generated: BTreeSet<&str> = generated.iter().map(|e| e.event_id.as_str()).collect();
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
            if first.insert(ev.event_id.clone()) && generated.contains(ev.event_id.as_str()) {
                let till = format!("{}/{}", ev.store_id, ev.till_id);
                let last = last_seq.entry((g.partition, till)).or_insert(0);
                if ev.till_seq < *last {
                    f.out_of_order += 1;
                }
                *last = (*last).max(ev.till_seq);
            }
        }
        f.lost = accepted
            .iter()
            .filter(|id| !copies.contains_key(*id))
            .count();
        f.unexpected = copies.keys().filter(|id| !accepted.contains(*id)).count();
        f.duplicated = count.values().filter(|c| **c > 1).count();
        f.conflicting = copies.values().filter(|c| c.len() > 1).count();
        f
    }
}

/// Produces the first `before` records now and returns a task producing the rest in the
/// background (the run goes on while instances come and go).
async fn produce_during(
    broker: &str,
    records: Vec<OutRecord>,
    before: usize,
) -> tokio::task::JoinHandle<()> {
    let producer = kit::producer(broker);
    kit::produce_records_with(&producer, &records[..before]).await;
    tokio::spawn(async move {
        for chunk in records[before..].chunks(2000) {
            kit::produce_records_with(&producer, chunk).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Waits until the compensations and alerts on the topics are the reference's (the stages
/// downstream of ingest may still be at work when every event is out), checking that every
/// running instance is alive; panics with what still differs after 300 s and a second per
/// 2,000 events.
fn settle(broker: &str, config: &Config, reference: &Outcome, instances: &mut [Instance]) {
    let limit = Duration::from_secs(300 + env_or("BATTERY_EVENTS", 20_000) as u64 / 2000);
    let start = Instant::now();
    while let Err(differs) =
        kafka_outcome(broker, config, reference.report.clone()).compare(reference)
    {
        assert!(start.elapsed() < limit, "after {limit:?}: {differs}");
        for i in instances.iter_mut() {
            i.running();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check(
    name: &str,
    f: &Figures,
    downstream: Result<(), String>,
    reference: &Outcome,
    started: Instant,
) {
    println!(
        "{name}: {} records on promo.sessions in {:.1} s; lost {}, duplicated (same id) {}, \
         conflicting {}, conflicting resends accepted {}, unexpected {}, out of order {}",
        f.records,
        started.elapsed().as_secs_f64(),
        f.lost,
        f.duplicated,
        f.conflicting,
        f.conflicts_accepted,
        f.unexpected,
        f.out_of_order
    );
    assert_eq!(
        (
            f.lost,
            f.conflicting,
            f.conflicts_accepted,
            f.unexpected,
            f.out_of_order
        ),
        (0, 0, 0, 0, 0),
        "{name}: {f:?}"
    );
    if let Err(e) = downstream {
        panic!("{name}: differs from the single-instance reference: {e}");
    }
    println!(
        "{name}: {} outstanding compensations, {} alerts, report.json: no difference from the \
         single-instance reference",
        reference.outstanding.len(),
        reference.alerts.len()
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

/// One scenario: `instances` instances over a fresh set of topics (tuned by `tune`), the
/// workload of `seed` produced before and (on the shared broker) during `script`, which starts,
/// stops and kills instances (and its own broker) as the output grows (its first argument is
/// how many distinct events will be out); then the downstream stages settle, every instance is
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
    let dir = base.path().to_owned();
    let own = (on == Broker::Own).then(|| OwnBroker::start(&dir.join("broker")));
    let broker = own.as_ref().map_or(shared, |b| b.address.clone());
    let mut config = kit::config(&broker, &dir.join("state")).await;
    config.fingerprint.key = FINGERPRINT_KEY.into();
    tune(&mut config);
    let Workload { records, generated } = workload(&config, n, seed);
    let (reference, accepted) = reference(&config.topics, records.clone()).await;
    assert!(
        reference.outstanding.len() > 10 && reference.rules().len() >= 4,
        "the reference has compensations and alerts of several rules"
    );
    let started = Instant::now();
    let before = if own.is_some() {
        records.len()
    } else {
        records.len() / 2
    };
    let producing = produce_during(&broker, records, before).await;
    let mut instances: Vec<Instance> = (0..instances).map(|k| instance(&config, &dir, k)).collect();
    let (figures, downstream, reference) = tokio::task::spawn_blocking(move || {
        let mut watch = Watch(IdWatch::new(&broker, &config.topics.sessions));
        script(accepted.len(), &mut watch, &mut instances, own.as_ref());
        watch.until(accepted.len(), &mut instances);
        settle(&broker, &config, &reference, &mut instances);
        // What a late replay could still add.
        watch.0.poll(Duration::from_secs(2));
        for i in instances.iter_mut() {
            if i.running() {
                i.stop();
            }
        }
        watch.0.poll(Duration::from_millis(50));
        for (k, i) in instances.iter().enumerate() {
            let LogSays {
                assigned,
                replayed,
                retried,
                restores,
                reconciler,
            } = rebalances(i);
            let rates = |restores: &[(u64, u64)]| -> String {
                let rates: Vec<String> = restores
                    .iter()
                    .map(|(n, r)| format!("{n} records at {r}/s"))
                    .collect();
                rates.join(", ")
            };
            println!(
                "{name}: instance {k}: {assigned} assignments, {replayed} partitions replayed \
                 from the beginning into a new state, {retried} failed sends retried; \
                 restores finished: [{}]; reconciler restores: [{}]",
                rates(&restores),
                rates(&reconciler)
            );
        }
        let report = report_from_topics(&config, &dir.join("report"));
        let downstream = kafka_outcome(&broker, &config, report).compare(&reference);
        (watch.figures(&accepted, &generated), downstream, reference)
    })
    .await
    .unwrap();
    producing.await.unwrap();
    check(name, &figures, downstream, &reference, started);
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
