//! Kafka through rdkafka.
//!
//! Consumers run with `enable.auto.offset.store=false`: an offset is stored only by
//! [`Source::ack`], which callers invoke once a record's effects are durable, and auto-commit
//! commits only what was stored. Before partitions are revoked in a rebalance the stored offsets
//! are committed synchronously (`pre_rebalance`), so the next owner resumes exactly there.
//! Producers are idempotent; [`Sink::send`] waits for every delivery report and fails when any
//! record was not acknowledged, so no offset is ever stored past a failed send.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

pub(super) mod admin;

use super::api::{BatchLimits, Order, OutRecord, Position, Record, Sink, Source};
use super::changelog::StateRestore;
use super::merge::{Key, Merge};
use crate::config::{is_secret_property, KafkaConfig};
use crate::{Error, Result};

/// Where a stage's consumer starts each partition it is assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// At the group's committed offset (a state without positions, not new).
    Committed,
    /// From the beginning at the partition's first assignment to this process, then at the
    /// committed offset (a new state without positions: the delivery stage's new outbox).
    ReplayOnce,
    /// At the state's own position, at every assignment: the positions the state held at start,
    /// then those of every batch it acknowledged. A partition the state holds no position for is
    /// read from its beginning. A partition that comes back after another member owned it is
    /// read again from where this state left it, so the state learns what the other member
    /// accepted (ingest then still refuses a conflicting resend of an event the other accepted),
    /// re-sending identical records; with a changelog ([`StateRestore`]) the state is first
    /// restored or brought up to date from it, and these positions follow.
    State(BTreeMap<(String, i32), i64>),
    /// At the state's own position at a partition's first assignment to this process, where it
    /// has one; otherwise, and at later assignments, at the committed offset. For a state whose
    /// acknowledgements trail what it consumed (the delivery stage: its outbox records how far
    /// it read, the group's offset how far it delivered): the process resumes past what its
    /// state holds, another member from the group's offset.
    Known(BTreeMap<(String, i32), i64>),
}

/// The linked librdkafka: its version and its compiled-in features (`builtin.features`: ssl,
/// sasl_scram, zstd, ...).
pub fn librdkafka_build() -> (String, String) {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let features = ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    (version, features)
}

/// Factory of Kafka consumers, producers and admin calls for one cluster.
#[derive(Clone, Debug)]
pub struct KafkaLog {
    config: KafkaConfig,
}

impl KafkaLog {
    pub fn new(config: KafkaConfig) -> Self {
        KafkaLog { config }
    }

    /// The same cluster for the `task`-th of several members of one stage in this process: its
    /// static membership id (`kafka.instance_id`), when there is one, gets `-{task}` added so
    /// each member keeps its own. Task 0 is this log unchanged.
    pub fn member(&self, task: usize) -> KafkaLog {
        let mut config = self.config.clone();
        if task > 0 {
            if let Some(id) = &mut config.instance_id {
                id.push_str(&format!("-{task}"));
            }
        }
        KafkaLog { config }
    }

    /// The consumer group of `stage`: `{group_prefix}.{stage}`.
    pub fn group(&self, stage: &str) -> String {
        format!("{}.{}", self.config.group_prefix, stage)
    }

    /// The start of every client's settings: `bootstrap.servers` and the operator's
    /// `[kafka.properties]` and `[kafka.secrets]` (so TLS and SASL reach every client, admin and
    /// metadata ones too). A client sets its own settings on it, then
    /// [`KafkaLog::apply_properties`] applies the operator's again, last, so they win.
    fn base(&self) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        // librdkafka's logs reach `tracing` through the clients' context ([`Guard`]): they are
        // produced down to the level `tracing` lets through for the target `librdkafka`.
        c.set_log_level(librdkafka_log_level());
        c.set("bootstrap.servers", &self.config.bootstrap_servers);
        self.apply_properties(&mut c)?;
        Ok(c)
    }

    /// Applies `[kafka.properties]` and `[kafka.secrets]` (read now from their sources) over the
    /// client's own settings: every client this log makes goes through here, so TLS and SASL
    /// settings reach stage consumers and producers, admin calls and table and changelog readers.
    fn apply_properties(&self, c: &mut ClientConfig) -> Result<()> {
        for (k, v) in self.config.client_properties()? {
            c.set(k, v);
        }
        Ok(())
    }

    /// A consumer in group `{group_prefix}.{stage}` subscribed to `topics`, starting each
    /// partition it is assigned as `resume` says. The group's committed offsets are never rewound
    /// as a whole: the other members of the group keep theirs. With [`Order::RecordTime`],
    /// `topics` must be one topic.
    ///
    /// With `whole`, the consumer does not join the group: it is assigned every partition of
    /// `topics` (read at start) and commits its offsets under the group's name, so every instance
    /// of the stage reads everything (see [`crate::stage::Processor::whole_input`]).
    ///
    /// With [`Resume::State`], the state and its positions are written together, so they are the
    /// truth, and the committed offsets only follow them: a state older than the commits (sled
    /// served an earlier version, or another member owned the partition meanwhile) re-reads what
    /// it lacks, a state ahead of them skips what it already holds.
    ///
    /// With `restore` (a state mirrored to a changelog topic), a partition the state holds no
    /// position for is first restored from the changelog, in the rebalance callback before it
    /// is assigned, and read from the position the changelog gives
    /// ([`crate::log::StateRestore`]).
    pub fn source(
        &self,
        stage: &str,
        topics: &[&str],
        resume: Resume,
        order: Order,
        whole: bool,
        restore: Option<std::sync::Arc<dyn StateRestore>>,
    ) -> Result<KafkaSource> {
        let merged = order == Order::RecordTime;
        if merged && topics.len() != 1 {
            return Err(Error::Config(format!(
                "stage {stage}: record-time order needs exactly one input topic, got {topics:?}"
            )));
        }
        let group = self.group(stage);
        let mut c = self.base()?;
        c.set("group.id", &group)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set(
                "enable.partition.eof",
                if merged { "true" } else { "false" },
            )
            .set(
                "fetch.wait.max.ms",
                self.config.fetch_wait_max_ms.to_string(),
            )
            // The prefetch is bounded by bytes. A queue over its bound postpones the partition's
            // next fetch by `fetch.queue.backoff.ms` (1 s by default in librdkafka 2.x): with a
            // count bound of 10,000 records that capped each partition at about 10,000 records
            // a second (the pipeline bench: 13,700 events/s before, see docs/PERFORMANCE.md).
            .set(
                "queued.max.messages.kbytes",
                self.config.queued_max_messages_kbytes.to_string(),
            )
            .set("fetch.queue.backoff.ms", "10")
            // Incremental rebalances: a member joining or leaving moves only the partitions
            // that must move, and the others keep being consumed through it.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("statistics.interval.ms", "5000");
        if let Some(id) = &self.config.instance_id {
            c.set("group.instance.id", format!("{id}.{stage}"));
        }
        self.apply_properties(&mut c)?;
        let mut reader = self.base()?;
        reader
            .set("group.id", format!("{group}.restore"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.queue.backoff.ms", "10");
        self.apply_properties(&mut reader)?;
        let mut context = CommitBeforeRevoke::new(&group, resume.clone());
        let restores = restore.is_some();
        context.restore = restore.map(|r| (r, reader));
        context.stage = stage.to_owned();
        let consumer: StreamConsumer<CommitBeforeRevoke> = create(&c, context)?;
        match &resume {
            Resume::ReplayOnce => tracing::warn!(%group,
                "stage state is new: its partitions are replayed from the beginning"),
            Resume::State(p) if p.is_empty() && restores => tracing::warn!(%group,
                "stage state holds no position: each partition is restored from the changelog \
                 (replayed from the beginning when the changelog holds none of it)"),
            Resume::State(p) if p.is_empty() => tracing::warn!(%group,
                "stage state holds no position: its partitions are replayed from the beginning"),
            _ => {}
        }
        if whole {
            assign_every_partition(&consumer, topics)?;
        } else {
            consumer.subscribe(topics).map_err(kafka_err)?;
        }
        let merge = merged.then(|| Merge::new(MERGE_HOLD, MERGE_MAX_QUEUED));
        Ok(KafkaSource {
            consumer,
            group,
            merge,
        })
    }

    /// A reader of every partition of `topic` from its beginning, outside any consumer group (each
    /// process reads a whole table topic such as the store table), with the partitions' high
    /// watermarks at start, so the caller can tell when it has caught up.
    pub fn table_source(&self, topic: &str) -> Result<(KafkaSource, BTreeMap<i32, i64>)> {
        self.table_source_from(topic, &BTreeMap::new())
    }

    /// [`KafkaLog::table_source`] resuming each partition named in `from` at its offset there
    /// (the others from their beginning); the ends leave out the partitions already read to them.
    pub fn table_source_from(
        &self,
        topic: &str,
        from: &BTreeMap<i32, i64>,
    ) -> Result<(KafkaSource, BTreeMap<i32, i64>)> {
        // A group id is required by the client; this one never joins (assign, no commits).
        let group = format!(
            "{}.table.{}",
            self.config.group_prefix,
            uuid::Uuid::new_v4().simple()
        );
        let mut c = self.base()?;
        c.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "fetch.wait.max.ms",
                self.config.fetch_wait_max_ms.to_string(),
            );
        self.apply_properties(&mut c)?;
        let consumer: StreamConsumer<CommitBeforeRevoke> =
            create(&c, CommitBeforeRevoke::new(&group, Resume::Committed))?;
        let timeout = Duration::from_secs(10);
        let guard = &consumer.context().guard;
        let md = settled_guarded(guard, || consumer.fetch_metadata(Some(topic), timeout))?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) =
                    settled_guarded(guard, || consumer.fetch_watermarks(topic, p.id(), timeout))?;
                let start = from.get(&p.id()).copied();
                // A partition compacted or deleted down to nothing, or already read to its end,
                // has nothing to wait for.
                if high > low.max(start.unwrap_or(0)) {
                    ends.insert(p.id(), high);
                }
                let offset = start.map_or(Offset::Beginning, Offset::Offset);
                tpl.add_partition_offset(topic, p.id(), offset)
                    .map_err(kafka_err)?;
            }
        }
        consumer.assign(&tpl).map_err(kafka_err)?;
        Ok((
            KafkaSource {
                consumer,
                group,
                merge: None,
            },
            ends,
        ))
    }

    /// An idempotent producer.
    pub fn sink(&self) -> Result<KafkaSink> {
        let mut c = self.base()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                self.config.delivery_timeout.as_millis().to_string(),
            );
        self.apply_properties(&mut c)?;
        let producer: FutureProducer<Guard> = create(&c, Guard::default())?;
        Ok(KafkaSink {
            producer: std::sync::Arc::new(std::sync::Mutex::new(producer)),
            config: c,
            timeout: self.config.delivery_timeout,
        })
    }

    /// Whether a broker of the cluster answers a metadata request within `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<()> {
        let c: BaseConsumer<Guard> = create(&self.base()?, Guard::default())?;
        c.fetch_metadata(None, timeout)
            .map(drop)
            .map_err(|e| c.context().refused().unwrap_or_else(|| kafka_err(e)))
    }

    /// Number of partitions of `topic`.
    pub fn partition_count(&self, topic: &str) -> Result<usize> {
        let c: BaseConsumer<Guard> = create(&self.base()?, Guard::default())?;
        let md = settled_guarded(c.context(), || {
            c.fetch_metadata(Some(topic), Duration::from_secs(10))
        })?;
        Ok(md.topics().iter().map(|t| t.partitions().len()).sum())
    }

    /// Creates the compacted changelog topic `topic` with `partitions` partitions when it does not
    /// exist, and checks that an existing one has at least that many (changelog partition `p`
    /// mirrors input partition `p`).
    pub async fn ensure_changelog(&self, topic: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<Guard> = create(&self.base()?, Guard::default())?;
        // The cluster's default replication factor (-1): a changelog is as precious as the
        // state it restores.
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in guarded(admin.inner().context(), admin.create_topics([&new], &opts)).await? {
            match r {
                Ok(_) => tracing::info!(%topic, partitions, "changelog topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(Error::Kafka(format!(
                        "creating changelog topic {t}: {code}"
                    )));
                }
            }
        }
        let have = settled_partitions(self, topic)?;
        if have < partitions as usize {
            return Err(Error::Config(format!(
                "changelog topic {topic} has {have} partitions, its input {partitions}: \
                 recreate it with at least as many"
            )));
        }
        Ok(())
    }

    /// Creates `topics` with `partitions` partitions; topics that exist are left alone.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        let admin: AdminClient<Guard> = create(&self.base()?, Guard::default())?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(t, partitions, TopicReplication::Fixed(1))
                    .set("cleanup.policy", "delete")
                    .set("retention.ms", "-1")
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = guarded(admin.inner().context(), admin.create_topics(&new, &opts)).await?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(Error::Kafka(format!("creating topic {t}: {code}")));
                }
            }
        }
        Ok(())
    }
}

/// How long a start-up metadata or watermark call keeps retrying while the cluster settles (a
/// topic just created has no leader yet, a broker is restarting).
const SETTLE_FOR: Duration = Duration::from_secs(30);
const SETTLE_BACKOFF: Duration = Duration::from_millis(200);

/// Runs a blocking admin-style call, retrying transient errors (no leader yet, broker not
/// reachable) for up to [`SETTLE_FOR`].
/// Assigns `consumer` every partition of `topics`, each starting where its context's resume rule
/// says (the committed offset otherwise).
fn assign_every_partition(
    consumer: &StreamConsumer<CommitBeforeRevoke>,
    topics: &[&str],
) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let mut tpl = TopicPartitionList::new();
    let mut resumed = TopicPartitionList::new();
    for topic in topics {
        let md = settled_guarded(&consumer.context().guard, || {
            consumer.fetch_metadata(Some(topic), timeout)
        })?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::Config(format!(
                "topic {topic} has no partitions: create the topics first (tillbridge create-topics)"
            )));
        }
        for p in partitions {
            let key = ((*topic).to_owned(), p);
            if let Ok(mut seen) = consumer.context().seen.lock() {
                seen.insert(key.clone());
            }
            let start = consumer.context().prepare(consumer, &key, true);
            tpl.add_partition_offset(topic, p, start.unwrap_or(Offset::Stored))
                .map_err(kafka_err)?;
            if let Some(o @ Offset::Offset(_)) = start {
                resumed
                    .add_partition_offset(topic, p, o)
                    .map_err(kafka_err)?;
            }
        }
    }
    consumer.assign(&tpl).map_err(kafka_err)?;
    if resumed.count() > 0 {
        if let Err(e) = consumer.store_offsets(&resumed) {
            tracing::debug!(error = %e, "resumed positions not stored");
        }
    }
    tracing::info!(
        partitions = tpl.count(),
        "every partition of the input assigned (the stage judges its input as a whole)"
    );
    Ok(())
}

/// The partition count of `topic`, waiting while a topic just created has none yet.
fn settled_partitions(log: &KafkaLog, topic: &str) -> Result<usize> {
    let start = std::time::Instant::now();
    loop {
        let n = log.partition_count(topic)?;
        if n > 0 || start.elapsed() >= SETTLE_FOR {
            return Ok(n);
        }
        std::thread::sleep(SETTLE_BACKOFF);
    }
}

/// Runs a blocking metadata-style call, retrying transient errors (no leader yet, broker not
/// reachable) for up to [`SETTLE_FOR`], but failing at once when `guard` (the client's context)
/// notes a refused TLS handshake or SASL login.
fn settled_guarded<T>(
    guard: &Guard,
    mut call: impl FnMut() -> std::result::Result<T, KafkaError>,
) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        // A refused TLS handshake or SASL login is no cluster settling: retrying will not mend it.
        match call().map_err(|e| guard.refused().unwrap_or_else(|| kafka_err(e))) {
            Err(e) if e.is_retryable() && start.elapsed() < SETTLE_FOR => {
                tracing::info!(error = %e, "cluster not settled yet, retrying");
                std::thread::sleep(SETTLE_BACKOFF);
            }
            other => return other,
        }
    }
}

/// Creates a client from `config`, its connection watched for a while by its context's [`Guard`]
/// ([`Guard::watch`]). A property librdkafka refuses is a configuration error naming the
/// property, never its value (a mistyped `sasl.pasword` must not print the password); any other
/// error has the values of secret properties blanked out.
fn create<C: ClientContext + Guarded, T: FromClientConfigAndContext<C>>(
    config: &ClientConfig,
    context: C,
) -> Result<T> {
    let guard = context.guard().clone();
    let client = config.create_with_context(context).map_err(|e| {
        let secrets = config
            .config_map()
            .iter()
            .filter(|(k, _)| is_secret_property(k))
            .map(|(_, v)| v.as_str());
        match kafka_err(e) {
            Error::Kafka(m) => Error::Kafka(blank(&m, secrets)),
            Error::Config(m) => Error::Config(blank(&m, secrets)),
            Error::BrokerUnavailable(m) => Error::BrokerUnavailable(blank(&m, secrets)),
            e => e,
        }
    })?;
    guard.watch(config);
    Ok(client)
}

/// A client context holding a [`Guard`].
trait Guarded {
    fn guard(&self) -> &Guard;
}

impl Guarded for Guard {
    fn guard(&self) -> &Guard {
        self
    }
}

impl Guarded for CommitBeforeRevoke {
    fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// `text` with every occurrence of each non-empty value in `values` replaced by `<redacted>`.
fn blank<'a>(text: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = text.to_owned();
    for v in values {
        if !v.is_empty() {
            text = text.replace(v, "<redacted>");
        }
    }
    text
}

/// The most detailed level `tracing` lets through for librdkafka's logs.
fn librdkafka_log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

/// The first refusal a client met, shared by its [`Guard`] and the guard's watcher.
type Refusal = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// Whether librdkafka's message (level `level`) says a connection was refused for good: a TLS
/// handshake or a SASL login.
fn is_refusal(level: RDKafkaLogLevel, message: &str) -> bool {
    let severe = matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
    );
    severe
        && (message.contains("SSL handshake failed")
            || message.contains("SASL authentication error")
            || message.contains("Authentication failed"))
}

/// Whether librdkafka's error event is a refused TLS handshake or SASL login.
fn is_refusal_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
        )
    )
}

fn note(refusal: &Refusal, reason: &str) {
    if let Ok(mut r) = refusal.lock() {
        r.get_or_insert_with(|| reason.to_owned());
    }
}

/// The context of a guard's watcher: a producer whose own thread serves librdkafka's events,
/// noting a refusal for the guard while the guard lives. It logs nothing: the client watched
/// logs for itself.
struct Watcher(std::sync::Weak<std::sync::Mutex<Option<String>>>);

impl ClientContext for Watcher {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, log_message: &str) {
        if let (true, Some(r)) = (is_refusal(level, log_message), self.0.upgrade()) {
            note(&r, log_message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let (true, Some(r)) = (is_refusal_error(&error), self.0.upgrade()) {
            note(&r, reason);
        }
    }
}

/// The context of tillbridge's Kafka clients: it logs what librdkafka logs and reports, and notes
/// the first refusal that retrying will not mend: a TLS handshake that failed (a broker
/// certificate not signed by `ssl.ca.location`, or not for the host connected to, a client
/// certificate the broker refuses) or a SASL login refused (wrong user, password or
/// mechanism). A call waiting on the cluster then fails at once with librdkafka's explanation
/// instead of timing out as if the broker were down.
///
/// librdkafka delivers its logs and errors as events on the client's main queue, which admin
/// clients and metadata calls never serve: so each client is also watched for a while by a
/// producer of the same settings ([`Guard::watch`]).
#[derive(Clone, Debug, Default)]
pub struct Guard {
    refusal: Refusal,
}

impl Guard {
    /// Connects with `config` from a thread of its own, through a producer whose background
    /// thread serves librdkafka's events, until the cluster answers, a refusal is noted, this
    /// guard is dropped or [`SETTLE_FOR`] has passed.
    fn watch(&self, config: &ClientConfig) {
        let refusal = std::sync::Arc::downgrade(&self.refusal);
        // The same settings, consumer ones included: librdkafka ignores those in a producer,
        // with a warning the watcher does not log.
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-watch".into())
            .spawn(move || {
                let Ok(producer) = config
                    .create_with_context::<_, FutureProducer<Watcher>>(Watcher(refusal.clone()))
                else {
                    return;
                };
                let start = std::time::Instant::now();
                while start.elapsed() < SETTLE_FOR {
                    // The cluster id comes with the brokers' metadata, no topic's.
                    let answered = producer
                        .client()
                        .fetch_cluster_id(Duration::from_secs(1))
                        .is_some();
                    let refused = match refusal.upgrade() {
                        Some(r) => r.lock().map_or(true, |r| r.is_some()),
                        None => true,
                    };
                    if answered || refused {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "could not start a connection watcher");
        }
    }

    /// The refusal noted, as an error.
    fn refused(&self) -> Option<Error> {
        let refusal = self.refusal.lock().ok()?.clone()?;
        Some(Error::Kafka(format!(
            "the broker refused the connection: {refusal}"
        )))
    }
}

impl ClientContext for Guard {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if is_refusal(level, log_message) {
            note(&self.refusal, log_message);
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_refusal_error(&error) {
            note(&self.refusal, reason);
            tracing::error!(%error, reason, "kafka client error");
            return;
        }
        match error.rdkafka_error_code() {
            // The end of a partition (fraud-guard's record-time merge asks for these events):
            // news, not an error.
            Some(RDKafkaErrorCode::PartitionEOF) => {
                tracing::debug!(reason, "end of partition");
            }
            // The brokers down or restarting: librdkafka reconnects by itself, the stages poll
            // through it and `/readyz` says so.
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::RequestTimedOut,
            ) => tracing::warn!(%error, reason, "kafka client error; the client reconnects"),
            _ => tracing::error!(%error, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for Guard {}

/// Runs an admin call, failing at once with the refusal `guard` notes (TLS or SASL) rather than
/// waiting for the call's own timeout.
async fn guarded<T>(
    guard: &Guard,
    call: impl std::future::Future<Output = std::result::Result<T, KafkaError>>,
) -> Result<T> {
    let call = std::pin::pin!(call);
    let watch = async {
        loop {
            if let Some(e) = guard.refused() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let watch = std::pin::pin!(watch);
    match futures::future::select(call, watch).await {
        futures::future::Either::Left((r, _)) => {
            r.map_err(|e| guard.refused().unwrap_or_else(|| kafka_err(e)))
        }
        futures::future::Either::Right((e, _)) => Err(e),
    }
}

fn kafka_err(e: KafkaError) -> Error {
    if let KafkaError::ClientConfig(_, description, key, value) = &e {
        // librdkafka's message names the value too, which may be a secret (a mistyped key).
        return Error::Config(format!(
            "kafka property {key:?} refused by librdkafka: {}",
            blank(description, [value.as_str()])
        ));
    }
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::QueueFull,
        ) => Error::BrokerUnavailable(e.to_string()),
        _ => Error::Kafka(e.to_string()),
    }
}

/// Commits stored offsets before partitions are taken away (rust-rdkafka #627/#636), and
/// publishes the consumer lag librdkafka reports in its statistics.
pub struct CommitBeforeRevoke {
    group: String,
    /// Notes a refused TLS handshake or SASL login ([`Guard`]).
    guard: Guard,
    /// Where each assigned partition starts; with [`Resume::State`], its positions follow
    /// every acknowledged batch ([`KafkaSource::ack`]).
    resume: std::sync::Mutex<Resume>,
    /// The partitions this process has been assigned at least once.
    seen: std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>,
    /// The partitions whose state is being rebuilt from the topic, with its progress.
    restoring: std::sync::Mutex<BTreeMap<(String, i32), Restoring>>,
    /// The state's changelog and the settings of the client that reads it.
    restore: Option<(std::sync::Arc<dyn StateRestore>, ClientConfig)>,
    /// The stage's name (for crash points).
    stage: String,
}

/// Not derived: the changelog reader's settings may hold secrets.
impl std::fmt::Debug for CommitBeforeRevoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitBeforeRevoke")
            .field("group", &self.group)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// How long a changelog restore waits for a record before it gives up (the partition is then
/// replayed from its input instead, which is slower but as correct).
const RESTORE_STALL: Duration = Duration::from_secs(60);
/// Changelog records applied at once.
const RESTORE_CHUNK: usize = 10_000;

/// A partition whose state a stage rebuilds from the topic: read from `from` (the beginning or
/// where the state left it) to `target`, the end of the partition when it was assigned.
#[derive(Debug)]
struct Restoring {
    from: i64,
    target: i64,
    started: std::time::Instant,
    logged: std::time::Instant,
}

/// How often a restore's progress is logged.
const RESTORE_LOG_EVERY: Duration = Duration::from_secs(5);

impl CommitBeforeRevoke {
    fn new(group: &str, resume: Resume) -> Self {
        CommitBeforeRevoke {
            group: group.to_owned(),
            guard: Guard::default(),
            resume: std::sync::Mutex::new(resume),
            seen: Default::default(),
            restoring: Default::default(),
            restore: None,
            stage: String::new(),
        }
    }

    /// Restores the state of input partition `key` from its changelog when the state holds no
    /// position for it; the position the changelog gives becomes the partition's start.
    fn restore_from_changelog(&self, key: &(String, i32)) {
        let Some((restore, reader)) = &self.restore else {
            return;
        };
        let held = match self.resume.lock().as_deref() {
            Ok(Resume::State(positions)) => positions.get(key).copied(),
            _ => return,
        };
        // A state with nothing of the partition restores it whole; one that holds it is brought
        // up to date from its checkpoint (what others wrote while they owned it), or, without
        // one, re-reads the input from its position.
        let from = match held {
            None => None,
            Some(_) => match restore.checkpoint(key.1) {
                Some(c) => Some(c),
                None => return,
            },
        };
        // The callback runs on the task polling the consumer: on a multi-threaded runtime the
        // other tasks move off this thread while it reads.
        let run = || {
            read_changelog(
                restore.as_ref(),
                reader,
                key,
                from,
                &self.group,
                &self.stage,
            )
        };
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let restored = if multi {
            tokio::task::block_in_place(run)
        } else {
            run()
        };
        match restored {
            Ok(Some(next)) => {
                if let Ok(mut resume) = self.resume.lock() {
                    if let Resume::State(positions) = &mut *resume {
                        positions.insert(key.clone(), next);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(topic = %key.0, partition = key.1, error = %e,
                "restore from the changelog failed: the partition is replayed from its input"),
        }
    }

    /// Where partition `key` starts at this assignment, restoring its state from the changelog
    /// first when it has none; `None` for the committed offset.
    fn prepare(
        &self,
        consumer: &impl Consumer<CommitBeforeRevoke>,
        key: &(String, i32),
        first: bool,
    ) -> Option<Offset> {
        self.restore_from_changelog(key);
        let start = self.start_of(key, first)?;
        self.track_restore(consumer, key, start);
        Some(start)
    }

    fn restore_gauge(&self, key: &(String, i32), remaining: i64) {
        crate::metrics::RESTORE_REMAINING
            .with_label_values(&[&self.group, &key.0, &key.1.to_string()])
            .set(remaining);
    }

    /// Notes that the state of partition `key`, starting at `start`, is rebuilt from the topic
    /// when the partition holds records past it (a state that keeps positions only).
    fn track_restore(
        &self,
        consumer: &impl Consumer<CommitBeforeRevoke>,
        key: &(String, i32),
        start: Offset,
    ) {
        if !matches!(self.resume.lock().as_deref(), Ok(Resume::State(_))) {
            return;
        }
        let Ok((low, high)) = consumer.fetch_watermarks(&key.0, key.1, Duration::from_secs(5))
        else {
            return;
        };
        let from = match start {
            Offset::Offset(n) => n.max(low),
            _ => low,
        };
        if high <= from {
            self.restore_gauge(key, 0);
            return;
        }
        tracing::info!(topic = %key.0, partition = key.1, records = high - from,
            "restoring the stage's state of a partition from the topic");
        self.restore_gauge(key, high - from);
        let now = std::time::Instant::now();
        if let Ok(mut r) = self.restoring.lock() {
            r.insert(
                key.clone(),
                Restoring {
                    from,
                    target: high,
                    started: now,
                    logged: now,
                },
            );
        }
    }

    /// Progress of a restore: the state reflects `key` up to `next`.
    fn restore_progress(&self, key: &(String, i32), next: i64) {
        let Ok(mut restoring) = self.restoring.lock() else {
            return;
        };
        let Some(r) = restoring.get_mut(key) else {
            return;
        };
        let secs = r.started.elapsed().as_secs_f64().max(1e-3);
        let rate = ((next - r.from) as f64 / secs) as u64;
        self.restore_gauge(key, (r.target - next).max(0));
        if next >= r.target {
            tracing::info!(topic = %key.0, partition = key.1, records = r.target - r.from,
                seconds = %format!("{secs:.1}"), records_per_second = rate,
                "restored the stage's state of a partition from the topic");
            restoring.remove(key);
        } else if r.logged.elapsed() >= RESTORE_LOG_EVERY {
            r.logged = std::time::Instant::now();
            tracing::info!(topic = %key.0, partition = key.1, remaining = r.target - next,
                records_per_second = rate, "restoring");
        }
    }

    /// A restore that will not finish here: its partition was revoked.
    fn restore_dropped(&self, key: &(String, i32)) {
        if let Ok(mut restoring) = self.restoring.lock() {
            if restoring.remove(key).is_some() {
                tracing::info!(topic = %key.0, partition = key.1,
                    "restore left unfinished: the partition was revoked");
                self.restore_gauge(key, 0);
            }
        }
    }

    /// Where partition `key` starts at this assignment; `None` for the committed offset.
    fn start_of(&self, key: &(String, i32), first: bool) -> Option<Offset> {
        let resume = self.resume.lock().ok()?;
        match &*resume {
            Resume::Committed => None,
            Resume::ReplayOnce if first => {
                tracing::info!(topic = %key.0, partition = key.1,
                    "replaying from the beginning into the new state");
                Some(Offset::Beginning)
            }
            Resume::ReplayOnce => None,
            Resume::Known(positions) if first => positions.get(key).map(|next| {
                tracing::info!(topic = %key.0, partition = key.1, next = *next,
                    "resuming where the stage's state is");
                Offset::Offset(*next)
            }),
            Resume::Known(_) => None,
            Resume::State(positions) => match positions.get(key) {
                Some(next) => {
                    tracing::info!(topic = %key.0, partition = key.1, next = *next,
                        "resuming where the stage's state is");
                    Some(Offset::Offset(*next))
                }
                None => {
                    tracing::info!(topic = %key.0, partition = key.1,
                        "replaying from the beginning into the new state");
                    Some(Offset::Beginning)
                }
            },
        }
    }

    /// Takes note that the state now reflects `partition` up to `next` (exclusive).
    fn advanced(&self, topic: &str, partition: i32, next: i64) {
        let key = (topic.to_owned(), partition);
        if let Ok(mut resume) = self.resume.lock() {
            if let Resume::State(positions) = &mut *resume {
                positions.insert(key.clone(), next);
            }
        }
        self.restore_progress(&key, next);
    }
}

impl ClientContext for CommitBeforeRevoke {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.guard.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.guard.error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    crate::metrics::CONSUMER_LAG
                        .with_label_values(&[&self.group, topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for CommitBeforeRevoke {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr as E;
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut resumed = TopicPartitionList::new();
                let keys: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                for key in keys {
                    let first = self
                        .seen
                        .lock()
                        .map(|mut s| s.insert(key.clone()))
                        .unwrap_or(false);
                    let Some(next) = self.prepare(consumer, &key, first) else {
                        continue;
                    };
                    // Only fails for a partition not in the list, which it is.
                    let _ = tpl.set_partition_offset(&key.0, key.1, next);
                    if let Offset::Offset(_) = next {
                        let _ = resumed.add_partition_offset(&key.0, key.1, next);
                    }
                }
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                let assigned = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                // The group's offsets follow the state at once (auto-commit sends them), so its
                // lag is right before the first record.
                if resumed.count() > 0 {
                    if let Err(e) = consumer.store_offsets(&resumed) {
                        tracing::debug!(error = %e, "resumed positions not stored");
                    }
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    self.restore_dropped(&(e.topic().to_owned(), e.partition()));
                }
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let revoked = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
                    _ => consumer.unassign(),
                };
                if let Err(e) = revoked {
                    tracing::error!(error = %e, "revoking partitions failed");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "rebalance error");
                // As librdkafka asks: drop the assignment, the group rejoins.
                let _ = consumer.unassign();
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), group = %self.group, "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), group = %self.group, "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Nothing stored yet is not an error.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    partitions = tpl.count(),
                    "committed stored offsets before revoke"
                ),
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "commit before revoke failed"),
            }
        }
    }
}

/// Reads changelog partition `key.1` from `from` (its beginning when `None`) to its end into
/// `restore`, logging its progress; returns the position of input partition `key` the restored
/// state reflects (`None`: unchanged).
fn read_changelog(
    restore: &dyn StateRestore,
    reader: &ClientConfig,
    key: &(String, i32),
    from: Option<i64>,
    group: &str,
    stage: &str,
) -> Result<Option<i64>> {
    let topic = restore.topic();
    let partition = key.1;
    let consumer: BaseConsumer<Guard> = create(reader, Guard::default())?;
    let (low, high) = settled_guarded(consumer.context(), || {
        consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
    })?;
    let low = from.map_or(low, |c| c.max(low));
    if high <= low {
        // Nothing to read: a new state notes where the changelog ends; one brought up to date
        // had nothing new.
        return match from {
            None => restore.finish(key, high),
            Some(_) => Ok(None),
        };
    }
    let gauge = crate::metrics::RESTORE_REMAINING.with_label_values(&[
        group,
        topic,
        &partition.to_string(),
    ]);
    tracing::info!(%topic, partition, from = low, records = high - low,
        "restoring the stage's state of a partition from its changelog");
    gauge.set(high - low);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .map_err(kafka_err)?;
    consumer.assign(&tpl).map_err(kafka_err)?;
    let started = std::time::Instant::now();
    let (mut logged, mut last_record) = (started, started);
    let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
    let (mut next, mut read) = (low, 0u64);
    while next < high {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                read += 1;
                last_record = std::time::Instant::now();
                chunk.push(KafkaSource::owned(&m));
                if chunk.len() >= RESTORE_CHUNK {
                    restore.apply(partition, &chunk)?;
                    crate::crash::point(stage, "restore_applied");
                    chunk.clear();
                    gauge.set((high - next).max(0));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                let e = kafka_err(e);
                if !e.is_retryable() {
                    return Err(e);
                }
            }
            None => {}
        }
        if last_record.elapsed() >= RESTORE_STALL {
            gauge.set(0);
            return Err(Error::Timeout(RESTORE_STALL));
        }
        if logged.elapsed() >= RESTORE_LOG_EVERY {
            logged = std::time::Instant::now();
            tracing::info!(%topic, partition, remaining = high - next,
                records_per_second = (read as f64 / started.elapsed().as_secs_f64()) as u64,
                "restoring from the changelog");
        }
    }
    restore.apply(partition, &chunk)?;
    crate::crash::point(stage, "restore_applied");
    let position = restore.finish(key, next)?;
    gauge.set(0);
    crate::metrics::RESTORES.with_label_values(&[stage]).inc();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(%topic, partition, records = read, seconds = %format!("{secs:.1}"),
        records_per_second = (read as f64 / secs) as u64, next = ?position,
        "restored the stage's state of a partition from its changelog");
    Ok(position)
}

/// How long a record waits, under [`Order::RecordTime`], for a partition read to its end to
/// receive something earlier (a producer a little behind).
const MERGE_HOLD: Duration = Duration::from_secs(1);
/// Most records queued for the record-time merge before the oldest goes without waiting.
const MERGE_MAX_QUEUED: usize = 200_000;

/// A consumer group member.
pub struct KafkaSource {
    consumer: StreamConsumer<CommitBeforeRevoke>,
    group: String,
    /// The record-time merge, under [`Order::RecordTime`].
    merge: Option<Merge>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("group", &self.group)
            .finish()
    }
}

impl KafkaSource {
    fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// Partitions currently assigned (for tests waiting on a rebalance).
    pub fn assignment_count(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    /// Commits stored offsets now (on shutdown).
    pub fn commit_stored(&self) -> Result<()> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(kafka_err(e)),
        }
    }
}

impl KafkaSource {
    /// What a consumer error means for the stage: `Ok(())` to poll on.
    fn consumer_error(&self, e: KafkaError) -> Result<()> {
        match e {
            // A stage that paused longer than `max.poll.interval.ms` (backpressure from a full
            // outbox) left the group; the next poll rejoins it. Nothing was stored past what is
            // durable, so this is not an error.
            KafkaError::MessageConsumption(RDKafkaErrorCode::PollExceeded) => {
                tracing::warn!(group = %self.group, "paused past max.poll.interval.ms; rejoining");
                Ok(())
            }
            // librdkafka recovers from every consumer error but a fatal one by itself (it
            // reconnects, rejoins, refetches): those are transient for the stage.
            KafkaError::MessageConsumption(code) if code != RDKafkaErrorCode::Fatal => Err(
                Error::BrokerUnavailable(format!("consumer error in group {}: {code}", self.group)),
            ),
            e => Err(kafka_err(e)),
        }
    }

    /// The partitions assigned now.
    fn assigned(&self) -> std::collections::BTreeSet<Key> {
        self.consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// [`Order::RecordTime`]: feeds the merge with what was fetched and hands out what it
    /// releases, waiting at most `limits.wait` for something to release.
    async fn merged_batch(&mut self, limits: BatchLimits) -> Result<Vec<Record>> {
        let deadline = tokio::time::Instant::now() + limits.wait;
        let Some(mut merge) = self.merge.take() else {
            return Ok(Vec::new());
        };
        let result = loop {
            // Everything fetched already, then what the merge can release.
            let mut failed = None;
            while let Some(m) = self.consumer.recv().now_or_never() {
                if let Err(e) = self.merged_push(&mut merge, m) {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            let assigned = self.assigned();
            merge.retain(&assigned);
            let forced = merge.forced;
            let (out, wake) = merge.release(&assigned, limits, std::time::Instant::now());
            if merge.forced > forced {
                tracing::warn!(group = %self.group, released = merge.forced - forced,
                    "record-time merge full: records released before every partition was read");
            }
            if !out.is_empty() {
                break Ok(out);
            }
            let until = wake
                .map(tokio::time::Instant::from_std)
                .map_or(deadline, |w| w.min(deadline));
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Ok(m) => {
                    if let Err(e) = self.merged_push(&mut merge, m) {
                        break Err(e);
                    }
                }
                Err(_) if tokio::time::Instant::now() >= deadline => break Ok(Vec::new()),
                Err(_) => {}
            }
        };
        self.merge = Some(merge);
        result
    }

    fn merged_push(
        &self,
        merge: &mut Merge,
        m: std::result::Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    ) -> Result<()> {
        match m {
            Ok(m) => {
                merge.push(Self::owned(&m), std::time::Instant::now());
                Ok(())
            }
            Err(KafkaError::PartitionEOF(p)) => {
                // One input topic (checked at creation), so the partition number is enough.
                if let Some((topic, _)) = self.assigned().into_iter().find(|(_, q)| *q == p) {
                    merge.end_of(&topic, p);
                }
                Ok(())
            }
            Err(e) => self.consumer_error(e),
        }
    }
}

impl Source for KafkaSource {
    async fn next_batch(&mut self, limits: BatchLimits) -> Result<Vec<Record>> {
        if self.merge.is_some() {
            return self.merged_batch(limits).await;
        }
        let mut out = Vec::new();
        let first = match tokio::time::timeout(limits.wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Err(e)) => {
                self.consumer_error(e)?;
                return Ok(out);
            }
            Ok(Ok(m)) => Self::owned(&m),
        };
        let mut bytes = first.size();
        out.push(first);
        while out.len() < limits.max_records && bytes < limits.max_bytes {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    let r = Self::owned(&m);
                    bytes += r.size();
                    out.push(r);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let mut commit = TopicPartitionList::new();
        let mut highest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for p in positions {
            let e = highest
                .entry((p.topic.as_str(), p.partition))
                .or_insert(p.offset);
            *e = (*e).max(p.offset);
        }
        for ((topic, partition), offset) in highest {
            // The state reflects the partition up to here, whoever owns it now.
            self.consumer
                .context()
                .advanced(topic, partition, offset + 1);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
                .map_err(kafka_err)?;
            match self.consumer.store_offsets(&tpl) {
                Ok(()) => {
                    commit
                        .add_partition_offset(topic, partition, Offset::Offset(offset + 1))
                        .map_err(kafka_err)?;
                }
                // The partition was revoked meanwhile (librdkafka #3774): its new owner replays
                // from the last commit, so the work is dropped here, not lost.
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                    tracing::info!(
                        topic,
                        partition,
                        "offset not stored: partition no longer assigned"
                    );
                }
                Err(e) => return Err(kafka_err(e)),
            }
        }
        // Commit now (asynchronously) rather than at the next auto-commit tick, so a crash
        // replays as little as possible. Auto-commit stays on as the backstop.
        if commit.count() > 0 {
            if let Err(e) = self.consumer.commit(&commit, CommitMode::Async) {
                tracing::debug!(error = %e, "async commit not sent; auto-commit will retry");
            }
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        None
    }

    /// Records past the consumer's fetch position up to each assigned partition's high
    /// watermark, asked of the broker (at most [`BEHIND_BUDGET`] in all); `None` when it does not
    /// answer in time.
    fn behind(&self) -> Option<u64> {
        let positions = self.consumer.position().ok()?;
        let started = std::time::Instant::now();
        let mut behind = 0u64;
        for e in positions.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            let left = BEHIND_BUDGET.checked_sub(started.elapsed())?;
            let (_, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), left)
                .ok()?;
            behind += u64::try_from(high - position).unwrap_or(0);
        }
        Some(behind)
    }
}

/// How long [`Source::behind`] may wait for the broker's watermarks, over every partition.
const BEHIND_BUDGET: Duration = Duration::from_secs(2);

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Err(e) = self.commit_stored() {
            tracing::warn!(error = %e, "final commit failed");
        }
    }
}

/// An idempotent producer that reports success only for acknowledged records.
#[derive(Clone)]
pub struct KafkaSink {
    /// Replaced by a new producer after a fatal error (see [`KafkaSink::send`]).
    producer: std::sync::Arc<std::sync::Mutex<FutureProducer<Guard>>>,
    config: ClientConfig,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").finish_non_exhaustive()
    }
}

impl KafkaSink {
    fn producer(&self) -> FutureProducer<Guard> {
        match self.producer.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Flushes queued records; a timeout is an error (dropping a producer purges its queue).
    pub fn flush(&self) -> Result<()> {
        self.producer().flush(self.timeout).map_err(kafka_err)
    }

    /// After a fatal error (an idempotent producer whose sequence the broker lost, for example
    /// after a broker crash) a producer instance is unusable (librdkafka's rule): it is replaced
    /// by a new one, so the stage's retry of the batch can succeed. Records of the batch that the
    /// old producer did write are written again, with the same ids and content.
    fn replace_if_fatal(&self) {
        let Some((code, reason)) = self.producer().client().fatal_error() else {
            return;
        };
        tracing::error!(%code, %reason, "producer hit a fatal error; creating a new one");
        match create::<_, FutureProducer<Guard>>(&self.config, Guard::default()) {
            Ok(fresh) => match self.producer.lock() {
                Ok(mut p) => *p = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(e) => tracing::error!(error = %e, "could not create a new producer"),
        }
    }
}

impl Sink for KafkaSink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<()> {
        self.send_tracked(records).await.map(|_| ())
    }

    async fn send_tracked(&self, records: Vec<OutRecord>) -> Result<super::api::Written> {
        let producer = self.producer();
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(KHeader {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic)
                .key(r.key.as_slice())
                .headers(headers);
            if let Some(p) = &r.payload {
                fr = fr.payload(p.as_slice());
            }
            if let Some(ts) = r.timestamp_ms {
                fr = fr.timestamp(ts);
            }
            if let Some(p) = r.partition {
                fr = fr.partition(p);
            }
            pending.push(producer.send(fr, self.timeout));
        }
        let results = join_all(pending).await;
        let mut failed = 0usize;
        let mut last = String::new();
        let mut written = super::api::Written::new();
        for (res, r) in results.into_iter().zip(&records) {
            match res {
                Ok(rdkafka::producer::future_producer::Delivery {
                    partition, offset, ..
                }) => {
                    written
                        .entry((r.topic.clone(), partition))
                        .and_modify(|l| {
                            l.first = l.first.min(offset);
                            l.last = l.last.max(offset);
                            l.count += 1;
                        })
                        .or_insert(super::api::Landed {
                            first: offset,
                            last: offset,
                            count: 1,
                        });
                }
                Err((e, _)) => {
                    failed += 1;
                    last = e.to_string();
                }
            }
        }
        if failed > 0 {
            self.replace_if_fatal();
            return Err(Error::Delivery {
                topic: records.first().map(|r| r.topic.clone()).unwrap_or_default(),
                reason: format!(
                    "{failed} of {} records not acknowledged: {last}",
                    records.len()
                ),
            });
        }
        Ok(written)
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "producer flush on drop failed");
        }
    }
}
