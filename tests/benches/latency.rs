//! The latency benchmark (issue: performance). Till events are produced at a steady rate (5,000
//! a second for 60 s by default) to a topic that `tillbridge run` (every stage) consumes, and a
//! plain consumer follows `promo.sessions`. For each event, the time from the producer's send
//! call to the arrival of its session record is measured; the bench prints p50, p99, p99.9 and
//! the maximum, and how many events never arrived. Prints figures; asserts nothing.
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

/// Follows `topic` from its beginning on a thread of its own, noting when each event id first
/// arrived, until `stop` is set.
fn follow(
    broker: &str,
    topic: &str,
    arrived: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
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
            if let Some(ev) = m
                .payload()
                .and_then(|p| tillbridge_proto::pb::TillEvent::decode(p).ok())
            {
                arrived.lock().unwrap().entry(ev.event_id).or_insert(now);
            }
        }
    })
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
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(1));
                    record = back;
                }
            }
        }
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

    // The steady rate: about every millisecond, the events due by then.
    let mut sent_at = Vec::with_capacity(n);
    let start = Instant::now();
    let mut next = 0usize;
    while next < n {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(n);
        while next < due {
            sent_at.push(Instant::now());
            send(warm_up + next);
            next += 1;
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
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        instance.running();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    follower.join().unwrap();
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
}
