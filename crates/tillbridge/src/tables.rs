//! Tables read whole before a stage starts (the coupon catalog, the store table), the
//! reconciler's restore, and the store table followed while ingest runs.

use std::collections::BTreeMap;

use tillbridge_core::log::{BatchLimits, OutRecord, Record, Sink, Source};
use tillbridge_core::stage::{self, Processor, StageStats, Until};
use tillbridge_reconciler::Reconciler;
use tokio_util::sync::CancellationToken;

use crate::transport::{read_to_end, TableReader, Transport, POLL_WAIT};

/// Reads the compacted `tables` from their beginning (or, on Kafka, from the next offsets in
/// `from`) up to their end at start through `processor`, making each batch's outputs and state
/// durable, before the stage's own loop starts: the stage then judges its facts against the whole
/// table, whatever their order on the topics. The processor records the offsets it applied, so
/// its own loop skips them later.
pub async fn preload<P>(
    name: &'static str,
    transport: &Transport,
    tables: &[String],
    from: &BTreeMap<(String, i32), i64>,
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
    let mut reader = TableReader::resuming(transport, &format!("{name}.preload"), tables, from)?;
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
pub(crate) async fn restore_reconciler(
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
            &BTreeMap::new(),
            p,
            limits,
            shutdown,
        )
        .await?;
        return Ok(());
    }
    let Some(out) = replay_reconciler(transport, topics, p, limits, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
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

/// Rebuilds a new reconciler state from the topics alone: learns what was emitted, replays every
/// input to its end at start, and returns what is due beyond what was emitted (not sent: the
/// caller decides), or `None` when shut down on the way.
pub(crate) async fn replay_reconciler(
    transport: &Transport,
    topics: &tillbridge_core::config::Topics,
    p: &mut Reconciler,
    limits: BatchLimits,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<OutRecord>>> {
    let started = std::time::Instant::now();
    let emitted = read_to_end(transport, &topics.compensations, limits, shutdown).await?;
    // What the state holds already (an intact state that was not closed cleanly, or a restore
    // stopped half-way) is not read again.
    let from = p.positions()?;
    if p.fresh_state() {
        tracing::info!(
            compensations = emitted.len(),
            "reconciler state is new: learning what was emitted, then replaying its inputs"
        );
    } else {
        tracing::warn!(
            compensations = emitted.len(),
            unclean = p.unclean(),
            "reconciler state was not closed cleanly or its restore did not finish: learning what \
             was emitted, then reading its inputs on from its positions"
        );
    }
    p.begin_restore(&emitted);
    let inputs = Reconciler::input_topics(topics);
    let replayed = preload(
        "reconciler",
        transport,
        &inputs,
        &from,
        p,
        limits,
        shutdown.clone(),
    )
    .await?;
    if shutdown.is_cancelled() {
        return Ok(None);
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        learned = emitted.len(),
        replayed,
        seconds = format!("{seconds:.1}"),
        records_per_second = (replayed as f64 / seconds.max(0.001)) as u64,
        "reconciler inputs replayed"
    );
    Ok(Some(p.finish_restore()?))
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
pub(crate) async fn follow_store_table(
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
        &BTreeMap::new(),
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
