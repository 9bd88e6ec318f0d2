//! The loop that drives one stage, and the delivery guarantee it enforces.
//!
//! **At-least-once, no loss.** For each batch: the [`Processor`] computes the outputs and stages
//! (but does not persist) its state changes; the outputs are written to the [`Sink`], which
//! returns only when all of them are durable; then [`Processor::commit`] makes the state durable;
//! only then are the batch's positions acknowledged to the [`Source`]. A crash anywhere before the
//! acknowledgement replays the batch, and because every output id is derived from its input, a
//! replay re-sends identical records that consumers can drop. Preconditions: records of one
//! partition are handled in order (a batch is processed whole, in order), and a failed send is
//! retried, never skipped.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::log::{BatchLimits, Order, OutRecord, Position, Record, Sink, Source};

/// First and largest pause between retries of a failed send.
const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A stage's logic over batches of records.
pub trait Processor: Send {
    type Error: std::error::Error + From<crate::Error> + Send + Sync + 'static;

    /// Computes the outputs of `batch` and stages its state changes without persisting them.
    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Self::Error>;

    /// The records that mirror the batch's staged state changes to the stage's changelog topic
    /// (see [`crate::log::StateRestore`]); written once the batch's outputs are durable and
    /// before [`Processor::commit`]. Empty for a state without a changelog.
    fn changelog(&mut self) -> Result<Vec<OutRecord>, Self::Error> {
        Ok(Vec::new())
    }

    /// Where the batch's changelog records landed (see [`crate::log::StateRestore::checkpoint`]);
    /// called before [`Processor::commit`], which keeps it with the state.
    fn changelog_written(&mut self, _written: &crate::log::Written) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The restore side of the state's changelog, for the source to restore a partition the
    /// state holds nothing of before it reads the partition's input.
    fn restorer(&self) -> Option<std::sync::Arc<dyn crate::log::StateRestore>> {
        None
    }

    /// How long the stage may keep processing batches (their outputs durable) before it makes
    /// the state, the changelog and the offsets durable together, as Kafka Streams'
    /// `commit.interval.ms` does; `None` commits every batch. A processor that returns `Some`
    /// stages the changes of several batches, and answers each batch from the staged changes of
    /// the batches before it.
    fn commit_interval(&self) -> Option<Duration> {
        None
    }

    /// Persists the staged state changes; called once the batch's outputs are durable.
    fn commit(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The order in which the processor needs records of different partitions. A processor
    /// whose rules span partitions asks for [`Order::RecordTime`], so that what it computes
    /// does not depend on fetch timing.
    fn order(&self) -> Order {
        Order::Arrival
    }

    /// The next offset of each input partition as the processor's durable state reflects it
    /// (the offsets are stored with the state). A source resumes there rather than at the
    /// group's committed offset, which only follows the state. Empty when the state keeps no
    /// positions.
    fn positions(&self) -> Result<std::collections::BTreeMap<(String, i32), i64>, Self::Error> {
        Ok(Default::default())
    }

    /// Whether the processor's state starts empty (new or rebuilt after damage), so that its
    /// inputs must be read from the beginning to rebuild it.
    fn fresh_state(&self) -> bool {
        false
    }

    /// Whether [`Processor::positions`] names every input partition the state reflects, so that
    /// a partition it does not name must be read from its beginning (whatever the group's
    /// committed offset says: a state rebuilt from the topics, stopped half-way, has not read
    /// it yet). A processor without positions replays only when its state is new.
    fn keeps_positions(&self) -> bool {
        false
    }

    /// Whether the stage judges its inputs as a whole (rules across partitions, a catalog it
    /// must see entirely), so that every instance reads every partition instead of a share of
    /// them: several instances then compute the same outputs (same ids, same content), each a
    /// hot standby of the others, and none judges from half the facts.
    fn whole_input(&self) -> bool {
        false
    }

    /// The input positions to acknowledge once the open batches are committed (`positions`: the
    /// last record of each partition they read). The default acknowledges all of them. A
    /// processor whose effects complete after its commit (the HTTP outbox, whose requests are
    /// sent later) acknowledges each partition only up to its oldest unfinished record, so the
    /// group's committed offset never passes work that only this process holds: a partition
    /// that moves, or outlives this process, is taken up there by its next owner.
    fn acknowledge(&self, positions: Vec<Position>) -> Vec<Position> {
        positions
    }

    /// Waits until the processor can take another batch. A processor with a bounded buffer
    /// behind it (the HTTP outbox) waits here while the buffer is full, so the stage stops
    /// consuming (backpressure) instead of growing the buffer. The default is ready at once.
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// How a stage loop ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Until the shutdown token is cancelled.
    Shutdown,
    /// Until the source has nothing more (the embedded log can tell), or shutdown.
    Idle,
}

/// Counters of one stage run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageStats {
    pub records: u64,
    pub batches: u64,
    pub outputs: u64,
    pub send_retries: u64,
}

/// Counts output records a stage made durable, per topic
/// (`tillbridge_records_produced_total`).
pub fn count_produced(stage: &str, outputs: &[OutRecord]) {
    let mut per_topic: std::collections::BTreeMap<&str, u64> = Default::default();
    for o in outputs {
        *per_topic.entry(o.topic.as_str()).or_default() += 1;
    }
    for (topic, n) in per_topic {
        crate::metrics::RECORDS_PRODUCED
            .with_label_values(&[stage, topic])
            .inc_by(n);
    }
}

/// Runs `processor` over `source` into `sink` until `until`.
pub async fn run<S, K, P>(
    name: &'static str,
    source: &mut S,
    sink: &K,
    processor: &mut P,
    limits: BatchLimits,
    until: Until,
    shutdown: CancellationToken,
) -> Result<StageStats, P::Error>
where
    S: Source,
    K: Sink,
    P: Processor,
{
    let span = tracing::info_span!("stage", stage = name);
    crate::health::starting(name);
    // This run's share of the stage's lag gauge, taken back when it ends.
    let mut lag_reported = 0i64;
    let lag = &mut lag_reported;
    let result = async move {
        let lag_reported = lag;
        let mut stats = StageStats::default();
        let mut open = Open::default();
        let mut progress = Progress::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = processor.ready() => {}
            }
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = source.next_batch(limits) => b,
            };
            let batch = match batch {
                Ok(batch) => batch,
                // The broker is down or restarting, or the group is rebalancing: librdkafka
                // reconnects and rejoins by itself and reports each step as an error event in
                // the consumer's queue. They are counted and the stage polls on at once: sleeping
                // per event would leave records waiting behind a queue of stale errors.
                Err(e) if e.is_retryable() => {
                    crate::metrics::CONSUMER_RETRIES
                        .with_label_values(&[name])
                        .inc();
                    tracing::warn!(error = %e, "consumer error; the client recovers, polling on");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            crate::health::running(name);
            progress.note(batch.len() as u64, || source.behind());
            if batch.is_empty() {
                // Nothing came: what is open becomes durable now, not at the next batch.
                if !commit_open(
                    name, source, sink, processor, &mut open, &mut stats, &shutdown,
                )
                .await?
                {
                    return Ok(stats);
                }
                acknowledge_held_back(source, processor, &mut open).await?;
                if until == Until::Idle && source.lag() == Some(0) {
                    break;
                }
                continue;
            }
            let outputs = processor.process(&batch)?;
            crate::crash::point(name, "processed");
            let n_out = outputs.len() as u64;
            if send_durably(name, sink, &outputs, &mut stats, &shutdown)
                .await?
                .is_none()
            {
                return Ok(stats);
            }
            open.add(&batch);
            let due = processor
                .commit_interval()
                .is_none_or(|every| open.since.is_some_and(|t| t.elapsed() >= every));
            if due
                && !commit_open(
                    name, source, sink, processor, &mut open, &mut stats, &shutdown,
                )
                .await?
            {
                return Ok(stats);
            }
            crate::metrics::RECORDS_CONSUMED
                .with_label_values(&[name])
                .inc_by(batch.len() as u64);
            count_produced(name, &outputs);
            if let Some(lag) = source.lag() {
                // Its own share: several tasks of one stage each add theirs.
                crate::metrics::CONSUMER_LAG
                    .with_label_values(&[name, "all", "all"])
                    .add(lag as i64 - *lag_reported);
                *lag_reported = lag as i64;
            }
            stats.records += batch.len() as u64;
            stats.batches += 1;
            stats.outputs += n_out;
            tracing::debug!(records = batch.len(), outputs = n_out, "batch done");
        }
        // A stop keeps the work whose outputs are durable (a failed send here is replayed).
        commit_open(
            name, source, sink, processor, &mut open, &mut stats, &shutdown,
        )
        .await?;
        Ok(stats)
    }
    .instrument(span)
    .await;
    crate::metrics::CONSUMER_LAG
        .with_label_values(&[name, "all", "all"])
        .sub(lag_reported);
    crate::health::stopped(name);
    result
}

/// How often a stage that is behind says how far behind it is.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The periodic "catching up" line: records behind and the rate since the last line, logged
/// while a stage is behind its inputs, and once when it has caught up.
struct Progress {
    since: std::time::Instant,
    records: u64,
    behind: bool,
}

/// What [`Progress::note`] says.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Behind { records: u64, per_second: u64 },
    CaughtUp { per_second: u64 },
}

impl Progress {
    fn new() -> Self {
        Progress {
            since: std::time::Instant::now(),
            records: 0,
            behind: false,
        }
    }

    /// Counts `records` read; every [`PROGRESS_EVERY`], asks how far behind the stage is
    /// (`behind` may cost a request to the broker) and logs it.
    fn note(&mut self, records: u64, behind: impl FnOnce() -> Option<u64>) {
        match self.at(std::time::Instant::now(), records, behind) {
            Some(Said::Behind {
                records,
                per_second,
            }) => tracing::info!(
                records_behind = records,
                records_per_second = per_second,
                "catching up"
            ),
            Some(Said::CaughtUp { per_second }) => {
                tracing::info!(records_per_second = per_second, "caught up")
            }
            None => {}
        }
    }

    fn at(
        &mut self,
        now: std::time::Instant,
        records: u64,
        behind: impl FnOnce() -> Option<u64>,
    ) -> Option<Said> {
        self.records += records;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < PROGRESS_EVERY {
            return None;
        }
        let per_second = (u128::from(self.records) * 1000 / elapsed.as_millis().max(1)) as u64;
        self.since = now;
        self.records = 0;
        match behind() {
            Some(records) if records > 0 => {
                self.behind = true;
                Some(Said::Behind {
                    records,
                    per_second,
                })
            }
            Some(_) if self.behind => {
                self.behind = false;
                Some(Said::CaughtUp { per_second })
            }
            _ => None,
        }
    }
}

/// Batches whose outputs are durable and whose state, changelog and offsets are not yet.
#[derive(Debug, Default)]
struct Open {
    /// The last offset of each partition in them.
    positions: std::collections::BTreeMap<(String, i32), i64>,
    batches: usize,
    /// When the first of them was sent.
    since: Option<tokio::time::Instant>,
    /// Partitions committed but acknowledged short of what was consumed
    /// ([`Processor::acknowledge`]): the last offset consumed and the last acknowledged.
    held_back: std::collections::BTreeMap<(String, i32), (i64, i64)>,
}

fn to_positions(offsets: impl IntoIterator<Item = ((String, i32), i64)>) -> Vec<Position> {
    offsets
        .into_iter()
        .map(|((topic, partition), offset)| Position {
            topic,
            partition,
            offset,
        })
        .collect()
}

impl Open {
    fn add(&mut self, batch: &[Record]) {
        for p in last_positions(batch) {
            let e = self
                .positions
                .entry((p.topic, p.partition))
                .or_insert(p.offset);
            *e = (*e).max(p.offset);
        }
        self.batches += 1;
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Takes note of what was acknowledged of the partitions consumed up to `consumed`.
    fn acknowledged(
        &mut self,
        consumed: &std::collections::BTreeMap<(String, i32), i64>,
        acked: &[Position],
    ) {
        for p in acked {
            let key = (p.topic.clone(), p.partition);
            match consumed.get(&key) {
                Some(&c) if p.offset < c => {
                    self.held_back.insert(key, (c, p.offset));
                }
                _ => {
                    self.held_back.remove(&key);
                }
            }
        }
    }
}

/// While the stage is idle, acknowledges what the processor now lets go of in the partitions it
/// held back (the HTTP outbox delivered their oldest waiting requests), so the group's offset
/// does not wait for the partition's next record. A failed acknowledgement is retried at the
/// next idle poll.
async fn acknowledge_held_back<S: Source, P: Processor>(
    source: &mut S,
    processor: &P,
    open: &mut Open,
) -> Result<(), P::Error> {
    if open.held_back.is_empty() || open.batches > 0 {
        return Ok(());
    }
    let consumed: std::collections::BTreeMap<(String, i32), i64> = open
        .held_back
        .iter()
        .map(|(k, (c, _))| (k.clone(), *c))
        .collect();
    let moved: Vec<Position> = processor
        .acknowledge(to_positions(consumed.clone()))
        .into_iter()
        .filter(|p| {
            open.held_back
                .get(&(p.topic.clone(), p.partition))
                .is_some_and(|(_, acked)| p.offset > *acked)
        })
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    match source.ack(&moved).await {
        Ok(()) => open.acknowledged(&consumed, &moved),
        Err(e) if e.is_retryable() => {
            tracing::debug!(error = %e, "storing offsets failed; retried at the next idle poll");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Makes the open batches durable: their changelog records, then the processor's state, then
/// their offsets. `false` when shutdown came first (nothing acknowledged: they are replayed).
async fn commit_open<S, K, P>(
    name: &str,
    source: &mut S,
    sink: &K,
    processor: &mut P,
    open: &mut Open,
    stats: &mut StageStats,
    shutdown: &CancellationToken,
) -> Result<bool, P::Error>
where
    S: Source,
    K: Sink,
    P: Processor,
{
    if open.batches == 0 {
        return Ok(true);
    }
    let changes = processor.changelog()?;
    if !changes.is_empty() {
        match send_durably(name, sink, &changes, stats, shutdown).await? {
            Some(written) => processor.changelog_written(&written)?,
            None => return Ok(false),
        }
    }
    crate::crash::point(name, "sent");
    processor.commit().await?;
    crate::crash::point(name, "committed");
    let consumed = std::mem::take(&mut open.positions);
    open.batches = 0;
    open.since = None;
    let positions = processor.acknowledge(to_positions(consumed.clone()));
    let mut backoff = RETRY_BACKOFF_FIRST;
    loop {
        match source.ack(&positions).await {
            Ok(()) => {
                open.acknowledged(&consumed, &positions);
                return Ok(true);
            }
            Err(e) if e.is_retryable() => {
                crate::metrics::CONSUMER_RETRIES
                    .with_label_values(&[name])
                    .inc();
                tracing::warn!(error = %e, ?backoff, "storing offsets failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `records` until they are durable, retrying a retryable failure with capped back-off;
/// where they landed, or `None` when shutdown came first.
async fn send_durably<K: Sink>(
    name: &str,
    sink: &K,
    records: &[OutRecord],
    stats: &mut StageStats,
    shutdown: &CancellationToken,
) -> crate::Result<Option<crate::log::Written>> {
    let mut backoff = RETRY_BACKOFF_FIRST;
    loop {
        match sink.send_tracked(records.to_vec()).await {
            Ok(written) => return Ok(Some(written)),
            Err(e) if e.is_retryable() => {
                stats.send_retries += 1;
                crate::metrics::SEND_RETRIES
                    .with_label_values(&[name])
                    .inc();
                tracing::warn!(error = %e, ?backoff, "send failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The last position of each partition in `batch`.
fn last_positions(batch: &[Record]) -> Vec<Position> {
    let mut last: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
    for r in batch {
        let e = last
            .entry((r.topic.as_str(), r.partition))
            .or_insert(r.offset);
        *e = (*e).max(r.offset);
    }
    last.into_iter()
        .map(|((t, p), o)| Position {
            topic: t.to_owned(),
            partition: p,
            offset: o,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    //! The retry back-off of the stage loop, on tokio's paused clock: the pauses between attempts
    //! are exact, whatever the machine's load.

    #[test]
    fn progress_is_said_every_interval_while_behind_and_once_when_caught_up() {
        let mut p = Progress::new();
        let t0 = p.since;
        let asked = std::cell::Cell::new(0);
        let behind = |n: u64| {
            asked.set(asked.get() + 1);
            Some(n)
        };
        assert_eq!(
            p.at(t0 + Duration::from_secs(1), 500, || behind(9_000)),
            None
        );
        assert_eq!(
            asked.get(),
            0,
            "the source is asked only when a line is due"
        );
        assert_eq!(
            p.at(t0 + Duration::from_secs(10), 19_500, || behind(9_000)),
            Some(Said::Behind {
                records: 9_000,
                per_second: 2_000
            })
        );
        assert_eq!(
            p.at(t0 + Duration::from_secs(20), 9_000, || behind(0)),
            Some(Said::CaughtUp { per_second: 900 })
        );
        assert_eq!(p.at(t0 + Duration::from_secs(30), 10, || behind(0)), None);
        assert_eq!(p.at(t0 + Duration::from_secs(40), 10, || None), None);
    }

    use std::sync::{Arc, Mutex};

    use super::*;

    /// Hands out one batch of `n` records, then nothing (and says so through `lag`).
    struct OneBatch {
        records: Option<Vec<Record>>,
        acked: Arc<Mutex<Vec<Position>>>,
    }

    impl Source for OneBatch {
        async fn next_batch(&mut self, _: BatchLimits) -> crate::Result<Vec<Record>> {
            Ok(self.records.take().unwrap_or_default())
        }
        async fn ack(&mut self, positions: &[Position]) -> crate::Result<()> {
            self.acked.lock().unwrap().extend_from_slice(positions);
            Ok(())
        }
        fn lag(&self) -> Option<u64> {
            Some(self.records.as_ref().map_or(0, |r| r.len() as u64))
        }
    }

    /// Refuses the first `failures` sends with a retryable error, noting when each attempt came.
    struct Flaky {
        failures: usize,
        attempts: Mutex<Vec<tokio::time::Instant>>,
        sent: Mutex<Vec<OutRecord>>,
    }

    impl Flaky {
        fn new(failures: usize) -> Flaky {
            Flaky {
                failures,
                attempts: Mutex::new(Vec::new()),
                sent: Mutex::new(Vec::new()),
            }
        }
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_records: 10,
        max_bytes: 1 << 20,
        wait: Duration::from_millis(1),
    };

    impl Sink for Flaky {
        async fn send(&self, records: Vec<OutRecord>) -> crate::Result<()> {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(tokio::time::Instant::now());
            if attempts.len() <= self.failures {
                return Err(crate::Error::BrokerUnavailable("down".into()));
            }
            self.sent.lock().unwrap().extend(records);
            Ok(())
        }
    }

    /// Echoes each record to `out`, and counts commits.
    struct Echo {
        commits: usize,
        interval: Option<Duration>,
    }

    impl Processor for Echo {
        type Error = crate::Error;
        fn process(&mut self, batch: &[Record]) -> crate::Result<Vec<OutRecord>> {
            Ok(batch
                .iter()
                .map(|r| OutRecord::new("out", r.key.clone().unwrap_or_default(), vec![]))
                .collect())
        }
        async fn commit(&mut self) -> crate::Result<()> {
            self.commits += 1;
            Ok(())
        }
        fn commit_interval(&self) -> Option<Duration> {
            self.interval
        }
    }

    /// Hands out its batches 60 ms apart, then nothing.
    struct Paced {
        batches: std::collections::VecDeque<Vec<Record>>,
        acked: Vec<Vec<Position>>,
    }

    impl Source for Paced {
        async fn next_batch(&mut self, _: BatchLimits) -> crate::Result<Vec<Record>> {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok(self.batches.pop_front().unwrap_or_default())
        }
        async fn ack(&mut self, positions: &[Position]) -> crate::Result<()> {
            self.acked.push(positions.to_vec());
            Ok(())
        }
        fn lag(&self) -> Option<u64> {
            Some(self.batches.len() as u64)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_commit_interval_several_batches_are_committed_and_acknowledged_together() {
        let at = |partition: i32, offset: i64| Record {
            partition,
            ..record(offset)
        };
        let mut source = Paced {
            batches: [
                vec![at(0, 0), at(1, 0)],
                vec![at(0, 1)],
                vec![at(1, 1), at(1, 2)],
                vec![at(0, 2)],
            ]
            .into(),
            acked: Vec::new(),
        };
        let sink = Flaky::new(0);
        let mut p = Echo {
            commits: 0,
            interval: Some(Duration::from_millis(100)),
        };
        run(
            "test",
            &mut source,
            &sink,
            &mut p,
            LIMITS,
            Until::Idle,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        // Batches at 60, 120, 180 ms: the third is 120 ms after the first, so the three commit
        // together; the fourth (240 ms) commits when nothing more comes.
        assert_eq!(sink.sent.lock().unwrap().len(), 6);
        assert_eq!(p.commits, 2);
        assert_eq!(
            source.acked,
            vec![
                vec![at(0, 1).position(), at(1, 2).position()],
                vec![at(0, 2).position()],
            ]
        );
    }

    fn record(offset: i64) -> Record {
        Record {
            topic: "in".into(),
            partition: 0,
            offset,
            key: Some(offset.to_string().into_bytes()),
            payload: Some(Vec::new()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_send_is_retried_with_doubling_pauses_capped_at_ten_seconds() {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut source = OneBatch {
            records: Some((0..3).map(record).collect()),
            acked: acked.clone(),
        };
        let sink = Flaky::new(9);
        let mut p = Echo {
            commits: 0,
            interval: None,
        };
        let stats = run(
            "test",
            &mut source,
            &sink,
            &mut p,
            LIMITS,
            Until::Idle,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let attempts = sink.attempts.lock().unwrap();
        let pauses: Vec<u64> = attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000],
            "pauses between attempts (ms)"
        );
        assert_eq!(stats.send_retries, 9);
        // Delivered once, then committed, then acknowledged: nothing lost, nothing twice.
        assert_eq!(sink.sent.lock().unwrap().len(), 3);
        assert_eq!(p.commits, 1);
        assert_eq!(acked.lock().unwrap().as_slice(), [record(2).position()]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_back_off_acknowledges_nothing() {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut source = OneBatch {
            records: Some(vec![record(0)]),
            acked: acked.clone(),
        };
        let sink = Flaky::new(usize::MAX);
        let mut p = Echo {
            commits: 0,
            interval: None,
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
        });
        run(
            "test",
            &mut source,
            &sink,
            &mut p,
            LIMITS,
            Until::Shutdown,
            shutdown,
        )
        .await
        .unwrap();
        assert_eq!(p.commits, 0, "state committed without its outputs");
        assert!(
            acked.lock().unwrap().is_empty(),
            "offsets moved without outputs"
        );
    }

    /// Lets go of its records only from `release_at` on (as the HTTP outbox does once it has
    /// delivered them): until then it acknowledges none of partition 0.
    struct HoldsBack {
        release_at: tokio::time::Instant,
    }

    impl Processor for HoldsBack {
        type Error = crate::Error;
        fn process(&mut self, _: &[Record]) -> crate::Result<Vec<OutRecord>> {
            Ok(Vec::new())
        }
        async fn commit(&mut self) -> crate::Result<()> {
            Ok(())
        }
        fn acknowledge(&self, positions: Vec<Position>) -> Vec<Position> {
            let held = tokio::time::Instant::now() < self.release_at;
            positions
                .into_iter()
                .map(|p| Position {
                    offset: if held && p.partition == 0 {
                        -1
                    } else {
                        p.offset
                    },
                    ..p
                })
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_back_partition_is_acknowledged_once_let_go_while_idle() {
        let at = |partition: i32, offset: i64| Record {
            partition,
            ..record(offset)
        };
        let mut source = Paced {
            batches: [vec![at(0, 0), at(0, 1), at(1, 0)]].into(),
            acked: Vec::new(),
        };
        let mut p = HoldsBack {
            release_at: tokio::time::Instant::now() + Duration::from_millis(300),
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        });
        run(
            "test",
            &mut source,
            &Flaky::new(0),
            &mut p,
            LIMITS,
            Until::Shutdown,
            shutdown,
        )
        .await
        .unwrap();
        let offsets = |acked: &[Position]| -> Vec<(i32, i64)> {
            acked.iter().map(|p| (p.partition, p.offset)).collect()
        };
        let acked: Vec<Vec<(i32, i64)>> = source.acked.iter().map(|a| offsets(a)).collect();
        // At the commit, partition 0 is held back; once let go, it is acknowledged while idle,
        // once, without a record of its own.
        assert_eq!(acked, vec![vec![(0, -1), (1, 0)], vec![(0, 1)]]);
    }
}
