//! The tillbridge process: wires the stages to a transport and runs them.
//!
//! - [`Transport`]: Kafka when configured, else the embedded sled log.
//! - [`run`]: runs the chosen stages concurrently under one shutdown token; a stage that fails
//!   cancels the others.
//! - [`publish`]: the integrator's first tool (check JSON lines against the contract, append).
//! - [`demo`]: a simulated POS fleet through every stage, ending in a reconciliation report.

pub mod demo;
pub mod logging;
pub mod publish;
pub mod signals;
pub mod sim;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tillbridge_core::config::Config;
use tillbridge_core::log::{BatchLimits, EmbeddedLog, KafkaLog, OutRecord, Record, Sink, Source};
use tillbridge_core::stage::{self, Processor, StageStats, Until};
use tillbridge_fraud_guard::{FraudGuard, FraudGuardConfig};
use tillbridge_ingest::Ingest;
use tillbridge_reconciler::Reconciler;
use tokio_util::sync::CancellationToken;

/// How long a stage waits for records before it checks for shutdown or idleness.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Where records live.
#[derive(Clone, Debug)]
pub enum Transport {
    Embedded(EmbeddedLog),
    Kafka(KafkaLog),
}

impl Transport {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(match &config.kafka {
            Some(k) => Transport::Kafka(KafkaLog::new(k.clone())),
            None => {
                std::fs::create_dir_all(&config.embedded.path)
                    .with_context(|| format!("creating {}", config.embedded.path.display()))?;
                Transport::Embedded(EmbeddedLog::open(
                    &config.embedded.path,
                    config.embedded.partitions,
                )?)
            }
        })
    }

    /// Appends records (and waits until they are durable).
    pub async fn append(&self, records: Vec<OutRecord>) -> anyhow::Result<()> {
        match self {
            Transport::Embedded(log) => log.append(records).await?,
            Transport::Kafka(k) => {
                let sink = k.sink()?;
                sink.send(records).await?;
                sink.flush()?;
            }
        }
        Ok(())
    }
}

/// Which stages a process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages {
    pub ingest: bool,
    /// The HTTP destination's delivery stage (runs only when `[delivery]` is configured).
    pub delivery: bool,
    pub reconciler: bool,
    pub fraud_guard: bool,
}

impl Stages {
    pub const ALL: Stages = Stages {
        ingest: true,
        delivery: true,
        reconciler: true,
        fraud_guard: true,
    };

    pub fn parse(names: &[String]) -> anyhow::Result<Stages> {
        let mut s = Stages::default();
        for n in names {
            match n.trim() {
                "ingest" | "router" => s.ingest = true,
                "delivery" => s.delivery = true,
                "reconciler" => s.reconciler = true,
                "fraud-guard" | "fraud_guard" => s.fraud_guard = true,
                "all" => s = Stages::ALL,
                other => anyhow::bail!(
                    "unknown stage {other:?} (ingest, delivery, reconciler, fraud-guard)"
                ),
            }
        }
        Ok(s)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub stages: Vec<(&'static str, StageStats)>,
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s) in &self.stages {
            writeln!(
                f,
                "{name}: {} records in {} batches, {} outputs, {} send retries",
                s.records, s.batches, s.outputs, s.send_retries
            )?;
        }
        Ok(())
    }
}

/// Runs one stage over the transport.
pub async fn run_stage<P>(
    name: &'static str,
    transport: &Transport,
    topics: &[String],
    processor: &mut P,
    limits: BatchLimits,
    until: Until,
    shutdown: CancellationToken,
) -> anyhow::Result<StageStats>
where
    P: Processor,
{
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    // New or rebuilt state with no positions: replay the inputs from the beginning. (A
    // restored state has positions: it resumes where its restore ended.)
    let start = processor.positions()?;
    let from_start = processor.fresh_state() && start.is_empty();
    match transport {
        Transport::Embedded(log) => {
            let mut source = log.source_at(name, &topics, from_start, &start)?;
            let sink = log.sink();
            Ok(stage::run(name, &mut source, &sink, processor, limits, until, shutdown).await?)
        }
        Transport::Kafka(k) => {
            let mut source = k.source(name, &topics, from_start, processor.order(), &start)?;
            let sink = k.sink()?;
            let result = stage::run(
                name,
                &mut source,
                &sink,
                processor,
                limits,
                Until::Shutdown,
                shutdown,
            )
            .await;
            sink.flush()?;
            source.commit_stored()?;
            Ok(result?)
        }
    }
}

/// Reads topics from their beginning up to their end as it stands at the start, outside any
/// consumer group (the embedded log: from the beginning until no lag is left).
enum TableReader {
    Embedded(tillbridge_core::log::EmbeddedSource),
    Kafka {
        /// One reader per topic, with the end of each partition; read one after the other.
        topics: Vec<(tillbridge_core::log::KafkaSource, BTreeMap<i32, i64>)>,
        /// The next offset of each partition of the topic being read.
        next: BTreeMap<i32, i64>,
    },
}

impl TableReader {
    fn new(transport: &Transport, reader: &str, topics: &[String]) -> anyhow::Result<Self> {
        Ok(match transport {
            Transport::Embedded(log) => {
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                TableReader::Embedded(log.source_from(reader, &topics, true)?)
            }
            Transport::Kafka(k) => TableReader::Kafka {
                topics: topics
                    .iter()
                    .map(|t| k.table_source(t))
                    .collect::<Result<_, _>>()?,
                next: BTreeMap::new(),
            },
        })
    }

    /// The next batch (possibly empty), or `None` once every topic was read to its end.
    async fn next(&mut self, limits: BatchLimits) -> anyhow::Result<Option<Vec<Record>>> {
        match self {
            TableReader::Embedded(source) => {
                let batch = source.next_batch(limits).await?;
                Ok((!batch.is_empty() || source.lag() != Some(0)).then_some(batch))
            }
            TableReader::Kafka { topics, next } => loop {
                let Some((source, ends)) = topics.first_mut() else {
                    return Ok(None);
                };
                if ends
                    .iter()
                    .all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end)
                {
                    topics.remove(0);
                    next.clear();
                    continue;
                }
                let batch = source.next_batch(limits).await?;
                for r in &batch {
                    next.insert(r.partition, r.offset + 1);
                }
                return Ok(Some(batch));
            },
        }
    }
}

/// Reads the compacted `tables` from their beginning up to their end at start through
/// `processor`, making each batch's outputs and state durable, before the stage's own loop
/// starts: the stage then judges its facts against the whole table, whatever their order on the
/// topics. The processor records the offsets it applied, so its own loop skips them later.
pub async fn preload<P>(
    name: &'static str,
    transport: &Transport,
    tables: &[String],
    processor: &mut P,
    limits: BatchLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<u64>
where
    P: Processor,
{
    async fn apply<P: Processor, K: Sink>(
        name: &str,
        processor: &mut P,
        sink: &K,
        batch: &[Record],
    ) -> anyhow::Result<()> {
        let outputs = processor.process(batch)?;
        sink.send(outputs.clone()).await?;
        tillbridge_core::crash::point(name, "preload_sent");
        processor.commit().await?;
        stage::count_produced(name, &outputs);
        tillbridge_core::metrics::RECORDS_PRELOADED
            .with_label_values(&[name])
            .inc_by(batch.len() as u64);
        Ok(())
    }
    let mut reader = TableReader::new(transport, &format!("{name}.preload"), tables)?;
    let (embedded_sink, kafka_sink) = match transport {
        Transport::Embedded(log) => (Some(log.sink()), None),
        Transport::Kafka(k) => (None, Some(k.sink()?)),
    };
    let mut read = 0u64;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(read),
            b = reader.next(limits) => b?,
        };
        let Some(batch) = batch else { break };
        if batch.is_empty() {
            continue;
        }
        read += batch.len() as u64;
        if let Some(sink) = &kafka_sink {
            apply(name, processor, sink, &batch).await?;
        } else if let Some(sink) = &embedded_sink {
            apply(name, processor, sink, &batch).await?;
        }
    }
    if let Some(sink) = &kafka_sink {
        sink.flush()?;
    }
    tracing::info!(stage = name, records = read, "tables read to their end");
    Ok(read)
}

/// Brings the reconciler's state up to the topics before its consumer starts. A new, rebuilt or
/// half-restored state first learns what an earlier life emitted (the compensations topic), then
/// replays every input to its end at start without emitting, then settles every ledger once
/// against what was emitted: only the difference goes out, so a wipe followed by a replay ends
/// with the same outstanding compensations (same ids) as the run that was wiped. An intact
/// state reads the catalog tables to their end first (see [`preload`]).
async fn restore_reconciler(
    transport: &Transport,
    topics: &tillbridge_core::config::Topics,
    p: &mut Reconciler,
    limits: BatchLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !p.needs_restore()? {
        preload(
            "reconciler",
            transport,
            &Reconciler::table_topics(topics),
            p,
            limits,
            shutdown,
        )
        .await?;
        return Ok(());
    }
    let emitted = read_to_end(transport, &topics.compensations, limits, &shutdown).await?;
    tracing::info!(
        compensations = emitted.len(),
        "reconciler state is new: learning what was emitted, then replaying its inputs"
    );
    p.begin_restore(&emitted);
    let inputs = Reconciler::input_topics(topics);
    let replayed = preload(
        "reconciler",
        transport,
        &inputs,
        p,
        limits,
        shutdown.clone(),
    )
    .await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let out = p.finish_restore()?;
    tracing::info!(
        replayed,
        emitted = out.len(),
        "reconciler restored; emitting only what changed"
    );
    match transport {
        Transport::Embedded(log) => log.sink().send(out.clone()).await?,
        Transport::Kafka(k) => {
            let sink = k.sink()?;
            sink.send(out.clone()).await?;
            sink.flush()?;
        }
    }
    p.commit().await?;
    stage::count_produced("reconciler", &out);
    tillbridge_core::metrics::RESTORES
        .with_label_values(&["reconciler"])
        .inc();
    Ok(())
}

/// Every record of `topic` up to its end when called (outside any consumer group).
async fn read_to_end(
    transport: &Transport,
    topic: &str,
    limits: BatchLimits,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Record>> {
    let mut reader = TableReader::new(
        transport,
        &format!("read-to-end.{topic}"),
        &[topic.to_owned()],
    )?;
    let mut all = Vec::new();
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = reader.next(limits) => b?,
        };
        match batch {
            Some(batch) => all.extend(batch),
            None => break,
        }
    }
    Ok(all)
}

fn limits(config: &Config) -> BatchLimits {
    BatchLimits {
        max_records: config.ingest.batch_size,
        max_bytes: config.ingest.batch_bytes,
        wait: POLL_WAIT,
    }
}

/// The default HMAC key of fingerprints, refused on a Kafka cluster.
pub const DEFAULT_REPORT_KEY: &str = "change-me";

/// Loads the configuration (see [`Config::load`]) and checks every section, whatever the command
/// and the stages it runs: a typo under `[fraud_guard]` or `[router]` is an error for `report`
/// and `create-topics` as much as for `run`. On a Kafka cluster the fingerprint key must be set:
/// the default is public, so fingerprints made with it could be reversed for short codes.
pub fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let config = Config::load(file)?;
    fraud_guard_config(&config)?;
    router_rules(&config)?;
    delivery_config(&config)?;
    let key = config.reconciler.report_key.trim();
    if config.kafka.is_some() && (key.is_empty() || key == DEFAULT_REPORT_KEY) {
        anyhow::bail!(
            "reconciler.report_key is {}: set a secret of your own (TILLBRIDGE_RECONCILER__REPORT_KEY) \
             before running against a Kafka cluster",
            if key.is_empty() { "empty" } else { "the default" }
        );
    }
    Ok(config)
}

/// The fraud-guard rules of `config`, checked strictly.
pub fn fraud_guard_config(config: &Config) -> anyhow::Result<FraudGuardConfig> {
    if config.fraud_guard.is_null() {
        return Ok(FraudGuardConfig::default());
    }
    let fg: FraudGuardConfig = serde_json::from_value(config.fraud_guard.clone())
        .context("invalid [fraud_guard] section")?;
    fg.validate().context("invalid [fraud_guard] section")?;
    Ok(fg)
}

/// The `[router]` section of `config`, checked strictly (without `http`, which is the former
/// place of `[delivery]`).
pub fn router_config(config: &Config) -> anyhow::Result<tillbridge_ingest::route::RouterConfig> {
    let mut router = config.router.clone();
    if let Some(section) = router.as_object_mut() {
        section.remove("http");
    }
    if router.is_null() {
        return Ok(tillbridge_ingest::route::RouterConfig::default());
    }
    serde_json::from_value(router).context("invalid [router] section")
}

/// The `[delivery]` section of `config` (`None`: no HTTP destination), checked strictly,
/// including that its destination is one the routing rules name. `[router.http]`, its former
/// place, is read with a warning; both at once is an error.
pub fn delivery_config(config: &Config) -> anyhow::Result<Option<tillbridge_delivery::HttpConfig>> {
    let old = config.router.get("http").filter(|v| !v.is_null());
    let section = match (config.delivery.is_null(), old) {
        (true, None) => return Ok(None),
        (false, None) => config.delivery.clone(),
        (true, Some(old)) => {
            tracing::warn!("[router.http] is deprecated: move it to [delivery]");
            old.clone()
        }
        (false, Some(_)) => {
            anyhow::bail!("both [delivery] and [router.http] are set: keep [delivery] only")
        }
    };
    let http: tillbridge_delivery::HttpConfig =
        serde_json::from_value(section).context("invalid [delivery] section")?;
    http.validate().context("invalid [delivery] section")?;
    let rules = router_rules(config)?;
    if rules.topic_of(&http.destination).is_none() {
        anyhow::bail!(
            "invalid [delivery] section: destination {:?} is not a destination of [router]; known: {}",
            http.destination,
            rules.destination_names().join(", ")
        );
    }
    Ok(Some(http))
}

/// The routing rules of `config`, compiled (every mistake is a start-up error).
pub fn router_rules(config: &Config) -> anyhow::Result<tillbridge_ingest::route::Rules> {
    Ok(tillbridge_ingest::route::Rules::compile(
        &config.topics,
        &router_config(config)?,
    )?)
}

/// The store follower's stage loop over `source`, until `stop`.
async fn follow<S: Source, K: Sink>(
    mut source: S,
    sink: &K,
    follower: &mut tillbridge_ingest::route::StoreFollower,
    limits: BatchLimits,
    stop: CancellationToken,
) -> Result<StageStats, tillbridge_ingest::Error> {
    stage::run(
        "stores",
        &mut source,
        sink,
        follower,
        limits,
        Until::Shutdown,
        stop,
    )
    .await
}

/// Reads the stores topic into `table` up to its end (before ingest routes anything), then
/// follows it in a task until `stop`, both as a stage ([`tillbridge_ingest::route::StoreFollower`]):
/// a row that breaks the contract is dead-lettered and changes nothing. Every instance reads every
/// partition of the topic (no consumer group): each needs the whole table.
async fn follow_store_table(
    transport: &Transport,
    topics: &tillbridge_core::config::Topics,
    table: tillbridge_ingest::route::StoreTable,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let limits = BatchLimits {
        max_records: 1000,
        max_bytes: 1 << 20,
        wait: POLL_WAIT,
    };
    let topic = topics.stores.clone();
    let mut follower = tillbridge_ingest::route::StoreFollower::new(table, &topics.dlq);
    preload(
        "stores",
        transport,
        std::slice::from_ref(&topic),
        &mut follower,
        limits,
        stop.clone(),
    )
    .await?;
    tracing::info!(stores = follower.table().len(), "store table loaded");
    let transport = transport.clone();
    Ok(tokio::spawn(async move {
        let followed: anyhow::Result<StageStats> = async {
            match &transport {
                Transport::Embedded(log) => {
                    let source = log.source_from("router.stores", &[topic.as_str()], true)?;
                    Ok(follow(source, &log.sink(), &mut follower, limits, stop).await?)
                }
                Transport::Kafka(k) => {
                    let sink = k.sink()?;
                    let r = follow(
                        k.table_source(&topic)?.0,
                        &sink,
                        &mut follower,
                        limits,
                        stop,
                    )
                    .await;
                    sink.flush()?;
                    Ok(r?)
                }
            }
        }
        .await;
        if let Err(e) = followed {
            tracing::error!(error = %e, "the store table stopped following its topic");
        }
    }))
}

/// Runs the delivery stage (destination topic into the outbox) and the drainer (outbox to the
/// promotion core) until shutdown, or with `Until::Idle` until the topic is consumed and the
/// outbox is empty.
async fn run_delivery(
    transport: &Transport,
    topics: &[String],
    mut delivery: tillbridge_delivery::Delivery,
    drainer: tillbridge_delivery::Drainer,
    limits: BatchLimits,
    until: Until,
    shutdown: CancellationToken,
) -> anyhow::Result<StageStats> {
    // The drainer stops with the stage: on shutdown, or once an idle run has drained.
    let stop_drain = shutdown.child_token();
    let outbox = drainer.outbox();
    let stage = async {
        let stats = run_stage(
            "delivery",
            transport,
            topics,
            &mut delivery,
            limits,
            until,
            shutdown.clone(),
        )
        .await;
        if stats.is_ok() && until == Until::Idle {
            outbox.drained(&shutdown).await;
        }
        stop_drain.cancel();
        stats
    };
    let drain = async {
        let r = match transport {
            Transport::Embedded(log) => drainer.run(&log.sink(), stop_drain.clone()).await,
            Transport::Kafka(k) => drainer.run(&k.sink()?, stop_drain.clone()).await,
        };
        if r.is_err() {
            // The stage must not go on filling an outbox nobody drains.
            shutdown.cancel();
        }
        Ok::<(), anyhow::Error>(r?)
    };
    let (stats, drained) = tokio::join!(stage, drain);
    drained.context("HTTP delivery failed")?;
    stats
}

/// Every topic the configuration names, router destinations included.
pub fn all_topics(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut topics: Vec<String> = config.topics.all().into_iter().map(str::to_owned).collect();
    for t in router_rules(config)?.destination_topics() {
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    Ok(topics)
}

/// Runs `stages` concurrently until shutdown (or, with `until_idle` on the embedded log, until
/// every input is consumed: then ingest runs first and the stages that read its outputs after).
/// A stage that fails cancels the others.
pub async fn run(
    config: &Config,
    transport: &Transport,
    stages: Stages,
    until_idle: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<RunSummary> {
    if until_idle && stages.ingest && (stages.reconciler || stages.fraud_guard || stages.delivery) {
        // The downstream stages are idle only once ingest has written everything they read.
        let ingest = Stages {
            ingest: true,
            ..Stages::default()
        };
        let rest = Stages {
            ingest: false,
            ..stages
        };
        let mut summary = Box::pin(run(config, transport, ingest, true, shutdown.clone())).await?;
        let more = Box::pin(run(config, transport, rest, true, shutdown)).await?;
        summary.stages.extend(more.stages);
        return Ok(summary);
    }
    let until = if until_idle {
        Until::Idle
    } else {
        Until::Shutdown
    };
    let limits = limits(config);
    let mut tasks = tokio::task::JoinSet::new();
    let state = config.state.dir.clone();
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    // The store table follows its topic while ingest runs; it has caught up before ingest starts.
    let follow_stop = shutdown.child_token();
    let mut follower = None;
    if stages.ingest {
        let table = tillbridge_ingest::route::StoreTable::new();
        follower = Some(
            follow_store_table(
                transport,
                &config.topics,
                table.clone(),
                follow_stop.clone(),
            )
            .await?,
        );
        let router = tillbridge_ingest::route::Router::with_rules(
            config.topics.clone(),
            router_rules(config)?.with_store_table(table),
        );
        let mut p =
            Ingest::open(&state, config.topics.clone(), config.ingest.clone())?.with_router(router);
        let (t, topics, stop) = (
            transport.clone(),
            Ingest::input_topics(&config.topics),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            let r = run_stage("ingest", &t, &topics, &mut p, limits, until, stop.clone()).await;
            ("ingest", r)
        });
    }
    if stages.delivery {
        match delivery_config(config)? {
            Some(http) => {
                let rules = router_rules(config)?;
                let topic = rules
                    .topic_of(&http.destination)
                    .context("delivery.destination")?
                    .to_owned();
                let (p, drainer) =
                    tillbridge_delivery::outbox::open(&state, &config.topics.dlq, &http)?;
                let (t, stop) = (transport.clone(), shutdown.clone());
                tasks.spawn(async move {
                    let r = run_delivery(&t, &[topic], p, drainer, limits, until, stop).await;
                    ("delivery", r)
                });
            }
            None => {
                tracing::info!("no [delivery] configured: the delivery stage is not started")
            }
        }
    }
    if stages.reconciler {
        let mut p = Reconciler::open(
            &state.join("reconciler"),
            &config.topics,
            &config.reconciler,
        )?;
        let topics = Reconciler::input_topics(&config.topics);
        let (t, stop, all) = (transport.clone(), shutdown.clone(), config.topics.clone());
        tasks.spawn(async move {
            let r = match restore_reconciler(&t, &all, &mut p, limits, stop.clone()).await {
                Ok(()) => run_stage("reconciler", &t, &topics, &mut p, limits, until, stop).await,
                Err(e) => Err(e),
            };
            ("reconciler", r)
        });
    }
    if stages.fraud_guard {
        let fg = fraud_guard_config(config)?;
        let mut p = FraudGuard::open(&state, &config.topics, fg, &config.reconciler.report_key)?;
        let topics = tillbridge_fraud_guard::input_topics(&config.topics);
        let (t, stop) = (transport.clone(), shutdown.clone());
        tasks.spawn(async move {
            let r = run_stage("fraud-guard", &t, &topics, &mut p, limits, until, stop).await;
            ("fraud-guard", r)
        });
    }
    let mut summary = RunSummary::default();
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.context("a stage task panicked")?;
        match result {
            Ok(stats) => summary.stages.push((name, stats)),
            Err(e) => {
                tracing::error!(stage = name, error = %e, "stage failed; stopping the others");
                shutdown.cancel();
                first_err.get_or_insert(e.context(format!("stage {name} failed")));
            }
        }
    }
    follow_stop.cancel();
    if let Some(f) = follower {
        let _ = f.await;
    }
    summary.stages.sort_by_key(|(n, _)| *n);
    match first_err {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Writes the reconciliation report from the reconciler's state.
pub fn write_report(config: &Config, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let report =
        tillbridge_reconciler::report(&config.state.dir.join("reconciler"), &config.reconciler)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(report.write(out)?)
}

/// Serves the metrics in Prometheus text format at `GET /metrics` on `addr` until `shutdown`
/// (other paths 404, other methods 405, connections served concurrently); returns the bound
/// address (so `127.0.0.1:0` picks a free port).
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                tillbridge_core::metrics::render(),
            )
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(bound)
}
