//! `tillbridge run`: the chosen stages wired to a transport, run concurrently under one shutdown
//! token.

use std::fmt;

use anyhow::Context;
use tillbridge_core::config::Config;
use tillbridge_core::log::{BatchLimits, Resume};
use tillbridge_core::stage::{self, Processor, StageStats, Until};
use tillbridge_fraud_guard::FraudGuard;
use tillbridge_ingest::Ingest;
use tillbridge_reconciler::Reconciler;
use tokio_util::sync::CancellationToken;

use crate::config::{
    delivery_config, fingerprint_key, fraud_guard_config, reconciler_config, router_rules,
};
use crate::tables::{follow_store_table, restore_reconciler};
use crate::transport::{limits, Transport};

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
    // A partition the state has no position for is read from its beginning: a new or rebuilt
    // state replays its inputs, also after a crash half-way through that replay (the group's
    // committed offsets, from before the state was lost, are not its truth). A restored state
    // has positions: it resumes where its restore ended. On Kafka this holds at every
    // assignment, not only at start (`Resume::State`): a partition that comes back from
    // another member resumes where this state left it.
    let start = processor.positions()?;
    let from_start = processor.keeps_positions() || (processor.fresh_state() && start.is_empty());
    match transport {
        Transport::Embedded(log) => {
            let mut source = log.source_at(name, &topics, from_start, &start)?;
            let sink = log.sink();
            Ok(stage::run(name, &mut source, &sink, processor, limits, until, shutdown).await?)
        }
        Transport::Kafka(k) => {
            let resume = if processor.keeps_positions() {
                Resume::State(start)
            } else if from_start {
                Resume::ReplayOnce
            } else if !start.is_empty() {
                Resume::Known(start)
            } else {
                Resume::Committed
            };
            let whole = processor.whole_input();
            let restore = processor.restorer();
            if let (Some(r), [input]) = (&restore, topics.as_slice()) {
                let partitions = k.partition_count(input)? as i32;
                if partitions == 0 {
                    anyhow::bail!(
                        "topic {input} has no partitions: create the topics first (tillbridge topics create)"
                    );
                }
                k.ensure_changelog(r.topic(), partitions).await?;
            }
            let mut source = k.source(name, &topics, resume, processor.order(), whole, restore)?;
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
            // The committed offsets only follow: a stage with positions resumes where its state
            // is, and the delivery stage re-reads what it already queued (dropped when waiting,
            // re-sent under the same idempotency key when delivered), so a failed last commit (a
            // rebalance under way, the group gone) loses nothing and is not a failed run.
            if let Err(e) = source.commit_stored() {
                tracing::warn!(stage = name, error = %e, "last offset commit failed");
            }
            Ok(result?)
        }
    }
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
    // Not ready (`/readyz`) until every stage started here has opened its state, finished its
    // preloads and restores and read from its source.
    for (on, name) in [
        (stages.ingest, "ingest"),
        (
            stages.delivery && delivery_config(config)?.is_some(),
            "delivery",
        ),
        (stages.reconciler, "reconciler"),
        (stages.fraud_guard, "fraud-guard"),
    ] {
        if on {
            tillbridge_core::health::starting(name);
        }
    }
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
        // Several tasks on Kafka: members of one group, each with a state of its own (task 0's
        // where a single task keeps it), restored from the changelog as another process's would.
        for task in 0..config.ingest.tasks.max(1) {
            let router = tillbridge_ingest::route::Router::with_rules(
                config.topics.clone(),
                router_rules(config)?.with_store_table(table.clone()),
            );
            let (dir, t) = match transport {
                Transport::Kafka(k) if task > 0 => (
                    state.join(format!("task-{task}")),
                    Transport::Kafka(k.member(task)),
                ),
                _ => (state.clone(), transport.clone()),
            };
            let mut p = Ingest::open(&dir, config.topics.clone(), config.ingest.clone())?
                .with_router(router);
            // On Kafka the state follows its partitions: mirrored to a changelog topic, restored
            // from it by an instance that has none of a partition.
            if let Transport::Kafka(k) = transport {
                p = p.with_changelog(&tillbridge_core::log::changelog_topic(&k.group("ingest")))?;
            }
            let (topics, stop) = (Ingest::input_topics(&config.topics), shutdown.clone());
            tasks.spawn(async move {
                let r = run_stage("ingest", &t, &topics, &mut p, limits, until, stop).await;
                ("ingest", r)
            });
        }
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
    // An embedded `run` holds the state and the log, so `report` beside it reads the report
    // snapshot it writes (on Kafka, `report` reads the topics instead).
    let mut snapshots = None;
    if stages.reconciler {
        let (cfg, key) = (reconciler_config(config)?, fingerprint_key(config)?);
        let mut p = Reconciler::open(&state.join("reconciler"), &config.topics, &cfg, &key)?;
        if matches!(transport, Transport::Embedded(_)) && until == Until::Shutdown {
            let reader = p.report_reader(&cfg, &key);
            let task = tokio::spawn(crate::report::keep_snapshots(
                config.clone(),
                transport.clone(),
                reader.clone(),
                follow_stop.clone(),
            ));
            snapshots = Some((task, reader));
        }
        let topics = Reconciler::input_topics(&config.topics);
        let (t, stop, all) = (transport.clone(), shutdown.clone(), config.topics.clone());
        tasks.spawn(async move {
            let r = match restore_reconciler(&t, &all, &mut p, limits, stop.clone()).await {
                Ok(()) => run_stage("reconciler", &t, &topics, &mut p, limits, until, stop).await,
                Err(e) => Err(e),
            };
            // Only a stage that stopped with everything it sent committed closes its state
            // cleanly; otherwise the next start restores (see `Reconciler::close`).
            let r = match r {
                Ok(stats) => match p.close().await {
                    Ok(true) => Ok(stats),
                    Ok(false) => {
                        tracing::warn!("reconciler stopped with work not committed or a restore not finished; its next start restores from the topics");
                        Ok(stats)
                    }
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            };
            ("reconciler", r)
        });
    }
    if stages.fraud_guard {
        let fg = fraud_guard_config(config)?;
        let mut p = FraudGuard::open(&state, &config.topics, fg, &fingerprint_key(config)?)?;
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
    if let Some((task, reader)) = snapshots {
        let _ = task.await;
        // The last one, of the state the stopped reconciler committed.
        if let Err(e) =
            crate::report::write_snapshot(config, transport, &reader, &CancellationToken::new())
                .await
        {
            tracing::warn!(error = %format!("{e:#}"), "writing the report snapshot failed");
        }
    }
    summary.stages.sort_by_key(|(n, _)| *n);
    match first_err {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}
