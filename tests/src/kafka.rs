//! The broker side: the broker address, random topic and group names, an outside client's
//! producer, and readers that follow a topic until a condition holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tillbridge_core::config::{Config, KafkaConfig, Topics};

/// The broker the project's script started, or `None` (the test then says why it is skipped).
/// Under CI (`CI` set) a missing broker fails the test: CI must never pass by skipping.
pub fn broker() -> Option<String> {
    match std::env::var("TILLBRIDGE_TEST_KAFKA") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TILLBRIDGE_TEST_KAFKA is not: run the suite with scripts/test.sh")
        }
        _ => {
            eprintln!(
                "SKIPPED: TILLBRIDGE_TEST_KAFKA is not set; run scripts/test.sh to start a broker"
            );
            None
        }
    }
}

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 4;

/// A configuration on `broker` with topics and consumer groups no other test uses.
pub async fn config(broker: &str, state: &std::path::Path) -> Config {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let t = Topics::default();
    let rename = |s: &str| format!("{s}-{tag}");
    let topics = Topics {
        till_events: rename(&t.till_events),
        coupons: rename(&t.coupons),
        loyalty_balances: rename(&t.loyalty_balances),
        stores: rename(&t.stores),
        sessions: rename(&t.sessions),
        redemptions: rename(&t.redemptions),
        loyalty: rename(&t.loyalty),
        compensations: rename(&t.compensations),
        alerts: rename(&t.alerts),
        dlq: rename(&t.dlq),
    };
    let mut kafka = KafkaConfig::new(broker);
    kafka.group_prefix = format!("test-{tag}");
    let mut config = Config {
        topics,
        kafka: Some(kafka.clone()),
        ..Config::default()
    };
    config.state.dir = state.to_owned();
    // The default key is refused on Kafka.
    config.fingerprint.key = format!("test-key-{tag}");
    tillbridge_core::log::KafkaLog::new(kafka)
        .create_topics(&config.topics.all(), PARTITIONS)
        .await
        .expect("create topics");
    config
}

/// A plain producer, as another team's client would configure one.
pub fn producer(broker: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(key, payload, content-type)` records and waits for every acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>, Option<&str>)],
) {
    let futures: Vec<_> = records
        .iter()
        .map(|(k, v, ct)| {
            let mut headers = OwnedHeaders::new();
            if let Some(ct) = ct {
                headers = headers.insert(Header {
                    key: "content-type",
                    value: Some(ct.as_bytes()),
                });
            }
            producer.send(
                FutureRecord::to(topic)
                    .key(k.as_bytes())
                    .payload(v.as_slice())
                    .headers(headers),
                Duration::from_secs(30),
            )
        })
        .collect();
    for r in futures::future::join_all(futures).await {
        r.expect("delivery");
    }
}

/// Produces records as they are (key, headers, record timestamp) and waits for every
/// acknowledgement.
pub async fn produce_records(broker: &str, records: Vec<tillbridge_core::log::OutRecord>) {
    produce_records_with(&producer(broker), &records).await;
}

/// [`produce_records`] with a producer of the caller's.
pub async fn produce_records_with(
    producer: &FutureProducer,
    records: &[tillbridge_core::log::OutRecord],
) {
    for chunk in records.chunks(2000) {
        let futures: Vec<_> = chunk
            .iter()
            .map(|r| {
                let mut headers = rdkafka::message::OwnedHeaders::new();
                for (k, v) in &r.headers {
                    headers = headers.insert(rdkafka::message::Header {
                        key: k,
                        value: Some(v.as_slice()),
                    });
                }
                let mut fr = rdkafka::producer::FutureRecord::to(&r.topic)
                    .key(r.key.as_slice())
                    .headers(headers);
                if let Some(p) = &r.payload {
                    fr = fr.payload(p.as_slice());
                }
                if let Some(ts) = r.timestamp_ms {
                    fr = fr.timestamp(ts);
                }
                producer.send(fr, Duration::from_secs(30))
            })
            .collect();
        for f in futures::future::join_all(futures).await {
            if let Err((e, _)) = f {
                panic!("delivery failed: {e}");
            }
        }
    }
}

/// Produces the simulated fleet of `seed` (tillbridge::sim) to `config`'s topics as its tills
/// and the promotion core would: coupon definitions and balances first, then the till events,
/// all but the planted one past the broker's message size limit (a client cannot produce it;
/// the embedded run dead-letters it as OVERSIZED).
pub async fn produce_fleet(broker: &str, config: &tillbridge_core::config::Config, seed: u64) {
    let fleet = tillbridge::sim::fleet(
        seed,
        &config.topics.till_events,
        &config.topics.coupons,
        &config.topics.loyalty_balances,
    );
    produce_records(broker, fleet.coupons).await;
    produce_records(broker, fleet.balances).await;
    let mut events = fleet.till_events;
    events.retain(|r| r.payload.as_ref().is_none_or(|p| p.len() < 1_000_000));
    produce_records(broker, events).await;
}

/// `stages` running in this process (`tillbridge::run`) until [`InProcess::stop`].
#[derive(Debug)]
pub struct InProcess {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<tillbridge::RunSummary>>,
}

impl InProcess {
    pub fn start(config: &Config, stages: tillbridge::Stages) -> InProcess {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let transport = tillbridge::Transport::from_config(config).unwrap();
        let (config, stop) = (config.clone(), shutdown.clone());
        let task =
            tokio::spawn(
                async move { tillbridge::run(&config, &transport, stages, false, stop).await },
            );
        InProcess { shutdown, task }
    }

    /// Ingest alone.
    pub fn ingest(config: &Config) -> InProcess {
        let stages = tillbridge::Stages {
            ingest: true,
            ..Default::default()
        };
        InProcess::start(config, stages)
    }

    /// Whether the run ended (by itself: a failure).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Drains the stages and returns what they did; panics if one failed.
    pub async fn stop(self) -> tillbridge::RunSummary {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }
}

/// Runs `stages` until `done` returns `Ok`; on a time-out the panic names the last `Err` (what
/// still differs).
pub async fn run_until(
    config: &tillbridge_core::config::Config,
    stages: tillbridge::Stages,
    done: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) {
    let run = InProcess::start(config, stages);
    let done = std::sync::Arc::new(done);
    let start = std::time::Instant::now();
    loop {
        let check = done.clone();
        let Err(differs) = tokio::task::spawn_blocking(move || check()).await.unwrap() else {
            break;
        };
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "pipeline did not finish: {differs}"
        );
        if run.is_finished() {
            run.stop().await;
            panic!("the pipeline stopped early");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    run.stop().await;
}

/// Checks `done` (a blocking call) every 250 ms until it returns `Ok`; after `limit` the panic
/// names its last `Err` (what still differs).
pub async fn await_condition(
    limit: Duration,
    done: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) {
    let done = std::sync::Arc::new(done);
    let start = Instant::now();
    loop {
        let check = done.clone();
        let Err(differs) = tokio::task::spawn_blocking(move || check()).await.unwrap() else {
            return;
        };
        assert!(
            start.elapsed() < limit,
            "not reached within {limit:?}: {differs}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Records `stage` has read in this process: through its consumer group, or from the beginning
/// before its loop (a restoring reconciler replays its inputs that way, then resumes where the
/// replay ended).
pub fn records_read(stage: &str) -> u64 {
    tillbridge_core::metrics::RECORDS_CONSUMED
        .with_label_values(&[stage])
        .get()
        + tillbridge_core::metrics::RECORDS_PRELOADED
            .with_label_values(&[stage])
            .get()
}

/// Restores of `stage`'s state completed in this process.
pub fn restores(stage: &str) -> u64 {
    tillbridge_core::metrics::RESTORES
        .with_label_values(&[stage])
        .get()
}

/// A record read back by a test.
#[derive(Clone, Debug)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Reads every record of `topic` from the beginning until `done(records)` holds while the topic
/// is quiet, or `limit` passes; returns what it read.
pub fn read_until(
    broker: &str,
    topic: &str,
    limit: Duration,
    done: impl Fn(&[Got]) -> bool,
) -> Vec<Got> {
    let mut tail = Tail::new(broker, topic);
    let start = Instant::now();
    while start.elapsed() < limit {
        if tail.poll_for(Duration::from_millis(100)) == 0 && done(&tail.got) {
            break;
        }
    }
    tail.got
}

/// A consumer in consumer group `group` that commits nothing by itself.
fn consumer(broker: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// A consumer in a group of its own.
fn reader(broker: &str) -> BaseConsumer {
    consumer(broker, &format!("reader-{}", uuid::Uuid::new_v4()))
}

fn got(m: &rdkafka::message::BorrowedMessage<'_>) -> Got {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    Got {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().unwrap_or_default().to_vec(),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Every record of `topic` up to its current end (the high watermarks when it is called),
/// sorted by payload.
pub fn read_all(broker: &str, topic: &str) -> Vec<Got> {
    let ends = high_watermarks(broker, topic);
    let mut tail = Tail::new(broker, topic);
    let start = Instant::now();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let behind = |next: &BTreeMap<i32, i64>| {
        ends.iter()
            .any(|(p, (low, high))| next.get(p).copied().unwrap_or(*low) < *high)
    };
    while behind(&next) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "could not read {topic} to its end {ends:?}"
        );
        let from = tail.got.len();
        tail.poll_for(Duration::from_millis(50));
        for g in &tail.got[from..] {
            let n = next.entry(g.partition).or_insert(0);
            *n = (*n).max(g.offset + 1);
        }
    }
    let mut got = tail.got;
    got.retain(|g| g.offset < ends[&g.partition].1);
    got.sort_by(|a, b| a.payload.cmp(&b.payload));
    got
}

/// The event id of every record of a topic of `TillEvent`s (`promo.sessions`) up to its end,
/// one per record (an id sent twice is there twice), with each record's payload.
pub fn events_on(broker: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    use prost::Message as _;
    read_all(broker, topic)
        .into_iter()
        .map(|g| {
            let ev = tillbridge_proto::pb::TillEvent::decode(g.payload.as_slice())
                .expect("a TillEvent on the topic");
            (ev.event_id, g.payload)
        })
        .collect()
}

/// Each event id on a topic of `TillEvent`s with the distinct contents it was sent with.
pub fn contents_by_id(
    broker: &str,
    topic: &str,
) -> BTreeMap<String, std::collections::BTreeSet<Vec<u8>>> {
    let mut contents: BTreeMap<String, std::collections::BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (id, payload) in events_on(broker, topic) {
        contents.entry(id).or_default().insert(payload);
    }
    contents
}

/// The low and high watermark of every partition of `topic`.
pub fn high_watermarks(broker: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer = reader(broker);
    (0..PARTITIONS)
        .map(|p| {
            let w = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, w)
        })
        .collect()
}

/// Produces `sent` in order, in chunks, waiting for every acknowledgement.
pub async fn produce_sent(producer: &FutureProducer, topic: &str, sent: &[crate::events::Sent]) {
    for chunk in sent.chunks(5000) {
        let recs: Vec<(String, Vec<u8>, Option<&str>)> = chunk
            .iter()
            .map(|s| (s.key.clone(), s.payload.clone(), s.content_type))
            .collect();
        produce(producer, topic, &recs).await;
    }
}

/// Sum of the high watermarks of `topic`.
pub fn end_offsets(broker: &str, topic: &str) -> i64 {
    let consumer = reader(broker);
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, h)| h)
                .unwrap_or(0)
        })
        .sum()
}

/// Follows a topic from its beginning, collecting what arrives.
#[allow(missing_debug_implementations)]
pub struct Tail {
    consumer: BaseConsumer,
    pub got: Vec<Got>,
}

impl Tail {
    pub fn new(broker: &str, topic: &str) -> Tail {
        let consumer = reader(broker);
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        Tail {
            consumer,
            got: Vec::new(),
        }
    }

    /// Reads what arrives for up to `d`; returns how many records came.
    pub fn poll_for(&mut self, d: Duration) -> usize {
        let start = Instant::now();
        let before = self.got.len();
        while start.elapsed() < d {
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => self.got.push(got(&m)),
                // A broker restarted by the test: the client reconnects by itself.
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                ))) => {}
                Some(Err(e)) => panic!("consume error: {e}"),
                None => {}
            }
        }
        self.got.len() - before
    }

    /// Reads until `done(records)` holds; panics after `limit`.
    pub fn until(&mut self, limit: Duration, done: impl Fn(&[Got]) -> bool) {
        let start = Instant::now();
        while !done(&self.got) {
            assert!(
                start.elapsed() < limit,
                "condition not reached within {limit:?}"
            );
            self.poll_for(Duration::from_millis(100));
        }
    }
}

/// The end offset (high watermark) of every partition of `topics`.
pub fn ends(broker: &str, topics: &[String]) -> BTreeMap<(String, i32), i64> {
    let mut ends = BTreeMap::new();
    for t in topics {
        for (p, (_, high)) in high_watermarks(broker, t) {
            ends.insert((t.clone(), p), high);
        }
    }
    ends
}

/// Whether consumer group `group` has committed offsets at (or past) `ends`.
pub fn group_caught_up(broker: &str, group: &str, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let consumer = consumer(broker, group);
    let mut tpl = TopicPartitionList::new();
    for (t, p) in ends.keys() {
        tpl.add_partition(t, *p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let end = ends[&(e.topic().to_owned(), e.partition())];
        match e.offset() {
            Offset::Offset(o) => o >= end,
            _ => end == 0,
        }
    })
}

/// Follows a topic of `TillEvent`s (`promo.sessions`), counting the distinct event ids on it.
#[allow(missing_debug_implementations)]
pub struct IdWatch {
    pub tail: Tail,
    pub ids: std::collections::BTreeSet<String>,
    seen: usize,
}

impl IdWatch {
    pub fn new(broker: &str, topic: &str) -> IdWatch {
        IdWatch {
            tail: Tail::new(broker, topic),
            ids: Default::default(),
            seen: 0,
        }
    }

    /// Reads what arrives for up to `d`; returns the number of distinct ids.
    pub fn poll(&mut self, d: Duration) -> usize {
        use prost::Message as _;
        self.tail.poll_for(d);
        for g in &self.tail.got[self.seen..] {
            let ev = tillbridge_proto::pb::TillEvent::decode(g.payload.as_slice())
                .expect("a TillEvent on the watched topic");
            self.ids.insert(ev.event_id);
        }
        self.seen = self.tail.got.len();
        self.ids.len()
    }

    /// Reads until `n` distinct ids arrived, calling `check` (that the producers of the topic
    /// are alive) between polls; panics after `limit`.
    pub fn until(&mut self, n: usize, limit: Duration, mut check: impl FnMut()) {
        let start = Instant::now();
        while self.poll(Duration::from_millis(50)) < n {
            check();
            assert!(
                start.elapsed() < limit,
                "{} of {n} events after {limit:?}",
                self.ids.len()
            );
        }
    }
}

/// Deletes `topic` and waits until the cluster no longer lists it (a deployment that lost it,
/// or that predates it).
pub async fn delete_topic(broker: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.delete_topics(&[topic], &opts).await.expect("delete") {
        r.expect("topic deleted");
    }
    let (b, t) = (broker.to_owned(), topic.to_owned());
    await_condition(Duration::from_secs(60), move || {
        let consumer = reader(&b);
        let md = consumer
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let listed = md
            .topics()
            .iter()
            .any(|x| x.error().is_none() && !x.partitions().is_empty());
        if listed {
            Err(format!("{t} still listed"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// The changelog topic of `stage`'s state under `config`'s group prefix.
pub fn changelog_of(config: &Config, stage: &str) -> String {
    tillbridge_core::log::changelog_topic(&group_of(config, stage))
}

/// `stage`'s consumer group under `config`'s group prefix.
pub fn group_of(config: &Config, stage: &str) -> String {
    let prefix = &config.kafka.as_ref().expect("kafka config").group_prefix;
    format!("{prefix}.{stage}")
}

/// A check for [`await_condition`]: `stage`'s group has committed every partition of `topic` up
/// to its end as it is now.
pub fn caught_up(
    broker: &str,
    config: &Config,
    stage: &str,
    topic: &str,
) -> impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static {
    let (b, g) = (broker.to_owned(), group_of(config, stage));
    let e = ends(broker, &[topic.to_owned()]);
    move || {
        if group_caught_up(&b, &g, &e) {
            Ok(())
        } else {
            Err(format!("group {g} not at {e:?}"))
        }
    }
}
