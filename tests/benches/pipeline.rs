//! The pipeline benchmark (issue: performance). One topic of N contract-shaped till events on one
//! Apache Kafka broker (half proto3 JSON, half protobuf; two lines a sale, a coupon on 1 in 10,
//! loyalty on 1 in 4, offline on 1 in 20, a return on 1 in 50, a cancel on 1 in 100, 5% resends),
//! consumed side by side in one run by:
//! 1. a bare rdkafka copier with tillbridge's client settings, producing every record to another
//!    topic and storing its offset once the copy is acknowledged (the baseline), in two forms:
//!    waiting for each batch's acknowledgements before the next batch (the loop tillbridge's
//!    stages run), and pipelined (up to 50,000 copies in flight, offsets stored as the
//!    acknowledgements arrive, in order);
//! 2. `tillbridge run --stages ingest` (decode, validate, dedup, route, facts), with one ingest
//!    task and with two (`ingest.tasks = 2`);
//! 3. `tillbridge run` with every stage (ingest, the reconciler and fraud-guard).
//!
//! Each is timed from its start (the process start for tillbridge, so start-up is included) until
//! its consumer groups have committed the end of their inputs (the copier: until its last copy is
//! acknowledged). Prints events/s and the ratios to the baseline; asserts nothing.
//!
//! ```sh
//! cargo bench -p tillbridge-tests --bench pipeline                    # 1,000,000 events
//! PIPELINE_EVENTS=200000 cargo bench -p tillbridge-tests --bench pipeline
//! ```
//!
//! It uses the broker in `TILLBRIDGE_TEST_KAFKA`, or starts one of its own with
//! `scripts/test-broker.sh` (removed at the end).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kit::process::{Instance, OwnBroker};
use prost::Message;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tillbridge_core::config::Config;
use tillbridge_proto::pb::{self, till_event::Body};

/// `n` till events as outside clients publish them: (key, payload, content type).
fn workload(n: usize, seed: u64) -> Vec<(String, Vec<u8>, Option<&'static str>)> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let tills = 400;
    let mut seqs = vec![0u64; tills];
    let t0 = chrono::Utc::now().timestamp() - 86_400;
    let mut sales: Vec<(usize, String)> = Vec::new();
    let mut out: Vec<(String, Vec<u8>, Option<&'static str>)> = Vec::with_capacity(n);
    while out.len() < n {
        let i = out.len();
        if i > 1000 && rng.gen_ratio(1, 20) {
            // A resend of a recent event, byte for byte.
            let j = rng.gen_range(i - 1000..i);
            out.push(out[j].clone());
            continue;
        }
        let t = rng.gen_range(0..tills);
        seqs[t] += 1;
        let mut ev = pb::TillEvent {
            event_id: uuid::Builder::from_random_bytes(rng.gen())
                .into_uuid()
                .to_string(),
            store_id: format!("S{:03}", t / 4),
            till_id: format!("T{}", t % 4),
            till_seq: seqs[t],
            occurred_at: Some(prost_types::Timestamp {
                seconds: t0 + i as i64 / 20,
                nanos: 0,
            }),
            offline: rng.gen_ratio(1, 20),
            cashier_id: Some(format!("C{}", t % 7)),
            session_id: format!("R-{seed}-{i}"),
            currency: "EUR".into(),
            ..Default::default()
        };
        let roll = rng.gen_range(0..100);
        if roll == 0 && !sales.is_empty() {
            let (till, sid) = sales[rng.gen_range(0..sales.len())].clone();
            if till == t {
                ev.session_id = sid;
                ev.body = Some(Body::SessionCancelled(pb::SessionCancelled {
                    reason: "customer left".into(),
                }));
            }
        } else if roll <= 2 && !sales.is_empty() {
            let (_, sid) = sales[rng.gen_range(0..sales.len())].clone();
            ev.body = Some(Body::Return(pb::Return {
                original_session_id: sid,
                lines: vec![pb::ReturnLine {
                    sku: "SKU-1".into(),
                    quantity: 1,
                    refund_minor: 499,
                }],
                refund_minor: 499,
            }));
        }
        if ev.body.is_none() {
            let lines = vec![
                pb::SaleLine {
                    sku: format!("SKU-{}", rng.gen_range(0..5000)),
                    quantity: rng.gen_range(1..4),
                    unit_price_minor: rng.gen_range(100..5000),
                    discount_minor: 0,
                },
                pb::SaleLine {
                    sku: "SKU-1".into(),
                    quantity: 1,
                    unit_price_minor: 499,
                    discount_minor: 0,
                },
            ];
            let gross: i64 = lines
                .iter()
                .map(|l| l.unit_price_minor * i64::from(l.quantity))
                .sum();
            let coupons = if rng.gen_ratio(1, 10) {
                vec![pb::CouponRedemption {
                    code: format!("BENCH-{}", rng.gen_range(0..2000)),
                    discount_minor: 100,
                    ..Default::default()
                }]
            } else {
                Vec::new()
            };
            let discount: i64 = coupons.iter().map(|c| c.discount_minor).sum();
            let loyalty = rng.gen_ratio(1, 4).then(|| {
                ev.profile_id = Some(format!("P{:05}", rng.gen_range(0..20_000)));
                pb::LoyaltyActivity {
                    program_id: "club".into(),
                    points_earned: (gross - discount) / 100,
                    points_redeemed: 0,
                }
            });
            ev.body = Some(Body::Sale(pb::Sale {
                lines,
                coupons,
                loyalty,
                total_minor: Some(gross - discount),
            }));
            sales.push((t, ev.session_id.clone()));
            if sales.len() > 10_000 {
                sales.swap_remove(rng.gen_range(0..sales.len()));
            }
        }
        let key = format!("{}/{}", ev.store_id, ev.till_id);
        if i % 2 == 0 {
            let json = tillbridge_proto::to_json(&ev);
            out.push((key, json.into_bytes(), Some("application/json")));
        } else {
            out.push((key, ev.encode_to_vec(), None));
        }
    }
    out
}

/// Most copies the pipelined copier keeps in flight.
const IN_FLIGHT: usize = 50_000;

/// The baseline: consumes `from` in group `group` and produces every record to `to` with the
/// client settings tillbridge uses, storing each partition's offset once its copies are
/// acknowledged (after each batch, or with `pipelined` as the acknowledgements arrive); returns
/// when `n` records were copied.
async fn copier(
    broker: &str,
    group: &str,
    from: &str,
    to: &str,
    n: usize,
    pipelined: bool,
) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "10")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let start = Instant::now();
    consumer.subscribe(&[from]).unwrap();
    let mut copied = 0;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let store = |partition: i32, offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(from, partition, Offset::Offset(offset + 1))
            .unwrap();
        consumer.store_offsets(&tpl).unwrap();
    };
    while pipelined && copied < n {
        let m = consumer.recv().await.unwrap();
        let mut r = FutureRecord::to(to).payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            r = r.key(k);
        }
        if let Some(h) = m.headers() {
            r = r.headers(h.detach());
        }
        let (partition, offset) = (m.partition(), m.offset());
        // Enqueued at once (the queue holds more than IN_FLIGHT records).
        let sent = producer.send_result(r).map_err(|(e, _)| e).unwrap();
        in_flight.push_back(async move { (sent.await, partition, offset) });
        copied += 1;
        if in_flight.len() >= IN_FLIGHT || copied == n {
            while in_flight.len() > if copied == n { 0 } else { IN_FLIGHT / 2 } {
                let (sent, partition, offset) =
                    futures::StreamExt::next(&mut in_flight).await.unwrap();
                sent.unwrap().map_err(|(e, _)| e).unwrap();
                store(partition, offset);
            }
        }
    }
    while copied < n {
        // A batch as tillbridge takes one: what is queued, up to 2,000 records.
        let mut batch = vec![consumer.recv().await.unwrap().detach()];
        while batch.len() < 2000 {
            match futures::FutureExt::now_or_never(consumer.recv()) {
                Some(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        let sends = batch.iter().map(|m| {
            let mut r = FutureRecord::to(to).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if let Some(h) = m.headers() {
                r = r.headers(h.clone());
            }
            producer.send(r, Duration::from_secs(30))
        });
        for sent in join_all(sends).await {
            sent.map_err(|(e, _)| e).unwrap();
        }
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for m in &batch {
            last.insert(m.partition(), m.offset());
        }
        for (p, o) in last {
            store(p, o);
        }
        copied += batch.len();
    }
    start.elapsed()
}

/// Runs `tillbridge run {args}` on `config` until every group of `stages` has committed the end
/// of its input topics; returns the time from the process start.
fn tillbridge(
    broker: &str,
    config: &Config,
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
    stages: &[(&str, Vec<String>)],
) -> Duration {
    let mut instance = Instance::new(config, dir, name, args, "warn");
    let prefix = config.kafka.as_ref().unwrap().group_prefix.clone();
    let start = Instant::now();
    instance.start();
    // Stages in pipeline order: a later stage's inputs are complete once the earlier ones are
    // caught up, so its ends are read then.
    for (stage, topics) in stages {
        let group = format!("{prefix}.{stage}");
        let ends = kit::ends(broker, topics);
        while !kit::group_caught_up(broker, &group, &ends) {
            instance.running();
            assert!(
                start.elapsed() < Duration::from_secs(3600),
                "{name}: {stage} not caught up within an hour"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let took = start.elapsed();
    instance.stop();
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let n: usize = std::env::var("PIPELINE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (broker, _own) = OwnBroker::for_bench(dir.path());
    println!("pipeline bench: {n} events, broker {broker}");
    // The binary, built before any clock starts.
    let _ = kit::process::bin();

    let started = Instant::now();
    let records = workload(n, 7);
    println!(
        "generated {} records in {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );
    let base = kit::config(&broker, &dir.path().join("state")).await;
    let input = base.topics.till_events.clone();
    let producer = kit::producer(&broker);
    let started = Instant::now();
    for chunk in records.chunks(20_000) {
        kit::produce(&producer, &input, chunk).await;
    }
    let produced = started.elapsed();
    println!(
        "produced to {input}: {:.0} events/s ({:.1} s)",
        n as f64 / produced.as_secs_f64(),
        produced.as_secs_f64()
    );

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let prefix = base.kafka.as_ref().unwrap().group_prefix.clone();
    let piped = copier(
        &broker,
        &format!("{prefix}.copier-pipelined"),
        &input,
        &base.topics.sessions,
        n,
        true,
    )
    .await;
    println!(
        "bare rdkafka copier, pipelined:     {:>9.0} events/s ({:.1} s)",
        rate(piped),
        piped.as_secs_f64()
    );
    let copy = copier(
        &broker,
        &format!("{prefix}.copier"),
        &input,
        &base.topics.alerts,
        n,
        false,
    )
    .await;
    println!(
        "bare rdkafka copier, per batch:     {:>9.0} events/s ({:.1} s)",
        rate(copy),
        copy.as_secs_f64()
    );
    let ratios = |d: Duration| {
        format!(
            "{:.2}x the per-batch copier, {:.2}x the pipelined one",
            copy.as_secs_f64() / d.as_secs_f64(),
            piped.as_secs_f64() / d.as_secs_f64()
        )
    };

    // Each tillbridge run on topics of its own but the same input: `stages` (the groups it
    // waits on are those stages'), with `tasks` ingest tasks.
    let time = |name: &'static str, label: &'static str, stages: &'static str, tasks: usize| {
        let (broker, dir, input) = (broker.clone(), dir.path().to_owned(), input.clone());
        async move {
            let mut c = kit::config(&broker, &dir.join(name)).await;
            c.topics.till_events = input;
            c.ingest.tasks = tasks;
            let took = tokio::task::spawn_blocking(move || {
                let mut groups = vec![("ingest", vec![c.topics.till_events.clone()])];
                if stages.contains("reconciler") {
                    groups.push(("fraud-guard", vec![c.topics.till_events.clone()]));
                    groups.push(("reconciler", tillbridge_reconciler::input_topics(&c.topics)));
                }
                tillbridge(
                    &broker,
                    &c,
                    &dir,
                    name,
                    &["run", "--stages", stages],
                    &groups,
                )
            })
            .await
            .unwrap();
            println!(
                "{label:<40}{:>9.0} events/s ({:.1} s)  {}",
                rate(took),
                took.as_secs_f64(),
                ratios(took)
            );
        }
    };
    time("ingest", "tillbridge run --stages ingest:", "ingest", 1).await;
    // Two ingest tasks in the process (`ingest.tasks`), each a member of the group.
    time(
        "ingest-tasks",
        "tillbridge run --stages ingest, 2 tasks:",
        "ingest",
        2,
    )
    .await;
    time(
        "all",
        "tillbridge run (every stage):",
        "ingest,reconciler,fraud-guard",
        1,
    )
    .await;
}
