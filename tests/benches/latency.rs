//! The latency benchmark (issue: performance). Till events are produced at a steady rate (5,000
//! a second for 60 s by default) to a topic that `tillbridge run` (every stage) consumes, and a
//! plain consumer follows `promo.sessions`. For each event, the time from the producer's send
//! call to the arrival of its session record is measured; the bench prints p50, p99, p99.9 and
//! the maximum, and how many events never arrived. Once a second it also plants an
//! over-redemption (two sales at two tills redeeming a coupon whose definition allows one) and
//! measures the time from the second sale's send to the compensation on
//! `tillbridge.compensations`. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p tillbridge-tests --bench latency                         # 5,000/s for 60 s
//! LATENCY_RATE=2000 LATENCY_SECONDS=20 cargo bench -p tillbridge-tests --bench latency
//! ```
//!
//! The producer is a plain client as another team would configure it (`linger.ms=5`), so its
//! batching is part of the figure; the clocks are one process's monotonic clock. It uses the
//! broker in `TILLBRIDGE_TEST_KAFKA`, or starts one of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::process::{Instance, OwnBroker};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The event id of a session record.
fn event_id(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    let ev = tillbridge_proto::pb::TillEvent::decode(m.payload()?).ok()?;
    Some(ev.event_id)
}

/// The key of a compensation (the coupon code).
fn record_key(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    Some(String::from_utf8_lossy(m.key()?).into_owned())
}

/// Follows `topic` from its beginning on a thread of its own, noting when each record (named by
/// `name`) first arrived, until `stop` is set.
fn follow(
    broker: &str,
    topic: &str,
    arrived: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    name: fn(&rdkafka::message::BorrowedMessage<'_>) -> Option<String>,
) -> std::thread::JoinHandle<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("latency-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..kit::PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let now = Instant::now();
            if let Some(id) = name(&m) {
                arrived.lock().unwrap().entry(id).or_insert(now);
            }
        }
    })
}

/// Queues `record`, serving the producer's events while its queue is full.
fn send_record(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                producer.poll(Duration::from_millis(1));
                record = back;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let rate = env_or("LATENCY_RATE", 5_000);
    let seconds = env_or("LATENCY_SECONDS", 60);
    let dir = tempfile::tempdir().unwrap();
    let (broker, _own) = OwnBroker::for_bench(dir.path());
    println!("latency bench: {rate} events/s for {seconds} s, broker {broker}");
    let config = kit::config(&broker, &dir.path().join("state")).await;
    let warm_up = 200usize;
    let n = (rate * seconds) as usize;
    let (sent, events) = kit::events::good_events(warm_up + n, 400, 11);

    let arrived = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = follow(
        &broker,
        &config.topics.sessions,
        arrived.clone(),
        stop.clone(),
        event_id,
    );
    // One coupon a second to over-redeem, defined by the promotion core before the run: one
    // redemption allowed.
    let codes: Vec<String> = (0..seconds).map(|k| format!("PLANT-{k}")).collect();
    let definitions: Vec<(String, Vec<u8>, Option<&str>)> = codes
        .iter()
        .map(|code| {
            let def = tillbridge_proto::pb::CouponDefinition {
                code: code.clone(),
                campaign_id: "bench".into(),
                usage_limit: 1,
                offline_allowed: true,
                ..Default::default()
            };
            (code.clone(), def.encode_to_vec(), None)
        })
        .collect();
    kit::produce(
        &kit::producer(&broker),
        &config.topics.coupons,
        &definitions,
    )
    .await;
    let compensated = Arc::new(Mutex::new(HashMap::new()));
    let comp_follower = follow(
        &broker,
        &config.topics.compensations,
        compensated.clone(),
        stop.clone(),
        record_key,
    );
    let mut instance = Instance::new(
        &config,
        dir.path(),
        "tillbridge",
        &["run", "--stages", "ingest,reconciler,fraud-guard"],
        "warn",
    );
    instance.start();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let send = |i: usize| {
        let s = &sent[i];
        let mut record = BaseRecord::to(&config.topics.till_events)
            .key(s.key.as_bytes())
            .payload(s.payload.as_slice());
        if let Some(ct) = s.content_type {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(ct.as_bytes()),
            }));
        }
        send_record(&producer, record);
    };

    // Warm-up: the first events wait for the instance to start and join its groups.
    for i in 0..warm_up {
        send(i);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let started = Instant::now();
    loop {
        let got = {
            let a = arrived.lock().unwrap();
            events[..warm_up]
                .iter()
                .filter(|e| a.contains_key(&e.event_id))
                .count()
        };
        if got == warm_up {
            break;
        }
        instance.running();
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "warm-up: {got} of {warm_up} events on promo.sessions after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // An over-redemption: two sales at two tills of one store redeem `code`, the second a
    // millisecond later in event time; returns when the second was sent.
    let plant = |k: usize| -> Instant {
        let now = chrono::Utc::now().timestamp_millis();
        let mut second = Instant::now();
        for (i, till) in ["P1", "P2"].into_iter().enumerate() {
            let sale = kit::events::Sale::new(uuid::Uuid::new_v4(), "PLANTED", till, k as u64 + 1)
                .at_ms(now + i as i64)
                .session(format!("PLANT-{k}-{till}"))
                .coupon(&codes[k], 100);
            let payload = sale.proto().encode_to_vec();
            let key = sale.key();
            let record = BaseRecord::to(&config.topics.till_events)
                .key(key.as_bytes())
                .payload(payload.as_slice());
            second = Instant::now();
            send_record(&producer, record);
        }
        second
    };

    // The steady rate: about every millisecond, the events due by then; at each second, one
    // planted over-redemption.
    let mut sent_at = Vec::with_capacity(n);
    let mut planted_at = Vec::with_capacity(codes.len());
    let start = Instant::now();
    let mut next = 0usize;
    while next < n {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(n);
        while next < due {
            sent_at.push(Instant::now());
            send(warm_up + next);
            next += 1;
        }
        let second = start.elapsed().as_secs() as usize;
        if planted_at.len() <= second && planted_at.len() < codes.len() {
            planted_at.push(plant(planted_at.len()));
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    let produced = start.elapsed();
    producer.flush(Duration::from_secs(60)).unwrap();
    println!(
        "produced {n} events in {:.1} s ({:.0} events/s)",
        produced.as_secs_f64(),
        n as f64 / produced.as_secs_f64()
    );

    // Wait for the last events (at most 60 s after the end).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let a = arrived.lock().unwrap();
            events[warm_up..]
                .iter()
                .filter(|e| !a.contains_key(&e.event_id))
                .count()
        } + {
            let c = compensated.lock().unwrap();
            codes[..planted_at.len()]
                .iter()
                .filter(|code| !c.contains_key(*code))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        instance.running();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    follower.join().unwrap();
    comp_follower.join().unwrap();
    instance.stop();

    let a = arrived.lock().unwrap();
    let mut latencies: Vec<Duration> = events[warm_up..]
        .iter()
        .zip(&sent_at)
        .filter_map(|(e, at)| {
            a.get(&e.event_id)
                .map(|got| got.saturating_duration_since(*at))
        })
        .collect();
    latencies.sort();
    println!(
        "send to promo.sessions, {} of {n} events: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; {} never arrived",
        latencies.len(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 0.999)),
        ms(latencies.last().copied().unwrap_or_default()),
        n - latencies.len()
    );
    let c = compensated.lock().unwrap();
    let mut to_compensation: Vec<Duration> = codes
        .iter()
        .zip(&planted_at)
        .filter_map(|(code, at)| c.get(code).map(|got| got.saturating_duration_since(*at)))
        .collect();
    to_compensation.sort();
    println!(
        "send to the compensation of a planted over-redemption, {} of {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} never arrived",
        to_compensation.len(),
        planted_at.len(),
        ms(percentile(&to_compensation, 0.50)),
        ms(percentile(&to_compensation, 0.99)),
        ms(to_compensation.last().copied().unwrap_or_default()),
        planted_at.len() - to_compensation.len()
    );
}
