//! The HTTP destination: a durable outbox in front of a promotion core that may be slow,
//! rate-limited or down.
//!
//! **Delivery stage** ([`Delivery`], a [`Processor`]). It consumes the topic of the configured
//! destination (`promo.sessions` by default) and appends one request per record to the outbox,
//! a sled tree. Its guarantee follows the stage loop's: a record's offset is acknowledged only
//! after its request is flushed to the outbox, so a crash replays records whose requests may
//! not be durable yet; a replayed request with an id already waiting is dropped.
//!
//! **Drainer** ([`Drainer`]). A fixed set of `max_in_flight` workers (no task per request) sends
//! what waits in the outbox: per session in outbox order (the order of the destination topic's
//! partition, which is the till's order), at most one request of a session in flight or in
//! back-off at a time, under one token-bucket rate limit shared by all workers. 2xx removes the
//! request; 429, 408, 5xx, timeouts and connection failures keep it and retry it after a
//! jittered exponential back-off (honouring `Retry-After`); any other status dead-letters it
//! with the status and the start of the response body, then removes it. A request is removed
//! only after its outcome is final, so a crash re-sends it with the same `Idempotency-Key`.
//!
//! **Backpressure.** The outbox counts the bytes of its waiting requests; while they exceed
//! `disk_budget_bytes`, [`Processor::ready`] waits, so the stage stops consuming (the topic
//! keeps the records) until requests drain.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prost::Message;
use serde::{Deserialize, Serialize};
use tillbridge_core::log::{dead_letter, OutRecord, Position, Record, Sink};
use tillbridge_core::stage::Processor;
use tillbridge_core::store::StateStore;
use tillbridge_core::{ids, metrics, pan};
use tillbridge_proto::pb;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;
use crate::http::{self, HttpConfig, HttpMethod, Outcome, UrlValues};

/// Layout version of the outbox state; a store of another layout is rebuilt.
const STATE_FORMAT: &str = "outbox-v1";
/// The reason code of a request the promotion core refused.
pub const HTTP_REJECTED: &str = "HTTP_REJECTED";
/// Pause between retries of a dead letter the log did not take.
const DLQ_RETRY: Duration = Duration::from_millis(500);
/// How often the outbox gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

fn state_err(e: impl std::fmt::Display) -> Error {
    Error::State(e.to_string())
}

/// One waiting request.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// The output id: the request's `Idempotency-Key`.
    id: String,
    /// The record's key: the session id (`{store_id}/{till_id}` for events without one).
    session: String,
    event_id: String,
    store_id: String,
    till_id: String,
    /// The event in the contract's JSON form.
    body: String,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    /// Processing time the request entered the outbox (ms since the epoch).
    enqueued_ms: i64,
}

fn entry_key(seq: u64) -> Vec<u8> {
    let mut k = b"e/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Where the outbox keeps how far it read each source partition (the next offset).
const POSITION_PREFIX: &[u8] = b"p/";

fn id_key(id: &str) -> Vec<u8> {
    let mut k = b"i/".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

#[derive(Debug)]
struct Meta {
    session: String,
    size: u64,
    enqueued_ms: i64,
    /// The topic and partition of the record the request was made of, and its offset.
    source: (String, i32),
    offset: i64,
}

/// The requests of one session, oldest first.
#[derive(Debug, Default)]
struct Lane {
    pending: VecDeque<u64>,
    /// The head is being sent or waits for its retry.
    busy: bool,
    /// Failed attempts of the head.
    attempts: u32,
}

#[derive(Debug, Default)]
struct Queue {
    next_seq: u64,
    bytes: u64,
    entries: BTreeMap<u64, Meta>,
    lanes: HashMap<String, Lane>,
    /// Sessions whose head can be sent now.
    ready: VecDeque<String>,
    /// Sessions whose head waits for a retry, by when.
    backoff: BTreeSet<(Instant, String)>,
    /// The source offsets of the waiting requests, per source topic and partition.
    unfinished: HashMap<(String, i32), BTreeSet<i64>>,
}

impl Queue {
    fn push(&mut self, seq: u64, meta: Meta) {
        let lane = self.lanes.entry(meta.session.clone()).or_default();
        if lane.pending.is_empty() && !lane.busy {
            self.ready.push_back(meta.session.clone());
        }
        lane.pending.push_back(seq);
        self.bytes += meta.size;
        self.unfinished
            .entry(meta.source.clone())
            .or_default()
            .insert(meta.offset);
        self.entries.insert(seq, meta);
        self.next_seq = self.next_seq.max(seq + 1);
    }

    fn remove(&mut self, seq: u64) {
        let Some(meta) = self.entries.remove(&seq) else {
            return;
        };
        self.bytes -= meta.size;
        if let Some(offsets) = self.unfinished.get_mut(&meta.source) {
            offsets.remove(&meta.offset);
            if offsets.is_empty() {
                self.unfinished.remove(&meta.source);
            }
        }
    }
}

/// A request handed to a worker.
#[derive(Debug)]
struct Job {
    seq: u64,
    entry: Entry,
    /// Attempts so far, this one included.
    attempt: u32,
}

/// Counters of the HTTP destination, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Requests appended to the outbox.
    pub enqueued: AtomicU64,
    /// Requests the core answered with 2xx.
    pub delivered: AtomicU64,
    /// Requests the core refused (dead-lettered).
    pub rejected: AtomicU64,
    /// Attempts that will be retried.
    pub retries: AtomicU64,
}

/// The durable queue of requests.
#[derive(Debug)]
pub struct Outbox {
    label: String,
    store: StateStore,
    tree: sled::Tree,
    budget: u64,
    queue: Mutex<Queue>,
    changed: Notify,
    paused: std::sync::atomic::AtomicBool,
    stats: DeliveryStats,
}

impl Outbox {
    fn open(path: &Path, label: &str, budget: u64) -> Result<Outbox, Error> {
        let store = StateStore::open(path, STATE_FORMAT)?;
        let tree = store.tree("outbox")?;
        let mut queue = Queue::default();
        for item in tree.scan_prefix(b"e/") {
            let (k, v) = item.map_err(state_err)?;
            let seq = k
                .get(2..10)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::State("outbox key of the wrong shape".into()))?;
            let e: Entry = serde_json::from_slice(&v).map_err(state_err)?;
            queue.push(
                seq,
                Meta {
                    session: e.session,
                    size: v.len() as u64,
                    enqueued_ms: e.enqueued_ms,
                    source: (e.source_topic, e.source_partition),
                    offset: e.source_offset,
                },
            );
        }
        if !queue.entries.is_empty() {
            tracing::info!(
                destination = label,
                requests = queue.entries.len(),
                bytes = queue.bytes,
                "outbox holds requests from before the restart"
            );
        }
        Ok(Outbox {
            label: label.to_owned(),
            store,
            tree,
            budget,
            queue: Mutex::new(queue),
            changed: Notify::new(),
            paused: std::sync::atomic::AtomicBool::new(false),
            stats: DeliveryStats::default(),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked while holding the lock left the queue consistent: every
        // mutation under it is a few map operations that cannot panic halfway.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.queue().entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the requests waiting (what the budget counts).
    pub fn bytes(&self) -> u64 {
        self.queue().bytes
    }

    /// Whether the delivery stage waits for room (its consumption is paused).
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// The offset of the oldest record of `topic`/`partition` whose request waits.
    fn oldest_unfinished(&self, topic: &str, partition: i32) -> Option<i64> {
        self.queue()
            .unfinished
            .get(&(topic.to_owned(), partition))
            .and_then(|offsets| offsets.first().copied())
    }

    fn has_id(&self, id: &str) -> Result<bool, Error> {
        self.tree.contains_key(id_key(id)).map_err(state_err)
    }

    /// How far the outbox read each source partition: the next offset.
    fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        let mut out = BTreeMap::new();
        for item in self.tree.scan_prefix(POSITION_PREFIX) {
            let (k, v) = item.map_err(state_err)?;
            let key = tillbridge_core::store::parse_position_key(&k[POSITION_PREFIX.len()..])
                .ok_or_else(|| Error::State("outbox position key of the wrong shape".into()))?;
            let next = <[u8; 8]>::try_from(v.as_ref())
                .map(i64::from_be_bytes)
                .map_err(|_| Error::State("outbox position of the wrong size".into()))?;
            out.insert(key, next);
        }
        Ok(out)
    }

    /// Appends `entries` durably with how far the source partitions were read (`read`: the
    /// next offset of each), then hands them to the workers.
    async fn enqueue(
        &self,
        entries: Vec<Entry>,
        read: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), Error> {
        if entries.is_empty() && read.is_empty() {
            return Ok(());
        }
        // Only the delivery stage appends, one batch at a time, so the sequence is its own.
        let first = self.queue().next_seq;
        let mut batch = sled::Batch::default();
        for ((topic, partition), next) in read {
            batch.insert(
                tillbridge_core::store::position_key(POSITION_PREFIX, topic, *partition),
                &next.to_be_bytes(),
            );
        }
        let mut metas = Vec::with_capacity(entries.len());
        for (seq, e) in (first..).zip(entries.iter()) {
            let bytes = serde_json::to_vec(e).map_err(state_err)?;
            batch.insert(entry_key(seq), bytes.as_slice());
            batch.insert(id_key(&e.id), &seq.to_be_bytes());
            metas.push((
                seq,
                Meta {
                    session: e.session.clone(),
                    size: bytes.len() as u64,
                    enqueued_ms: e.enqueued_ms,
                    source: (e.source_topic.clone(), e.source_partition),
                    offset: e.source_offset,
                },
            ));
        }
        self.tree.apply_batch(batch).map_err(state_err)?;
        self.store.flush().await?;
        {
            let mut q = self.queue();
            for (seq, meta) in metas {
                q.push(seq, meta);
            }
        }
        self.stats
            .enqueued
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The next request to send, if one is due.
    fn take(&self) -> Result<Option<Job>, Error> {
        let mut q = self.queue();
        let now = Instant::now();
        while let Some(first) = q.backoff.first().cloned() {
            if first.0 > now {
                break;
            }
            q.backoff.pop_first();
            q.ready.push_back(first.1);
        }
        while let Some(session) = q.ready.pop_front() {
            let Some(lane) = q.lanes.get_mut(&session) else {
                continue;
            };
            let Some(&seq) = lane.pending.front() else {
                continue;
            };
            lane.busy = true;
            lane.attempts += 1;
            let attempt = lane.attempts;
            let raw = self
                .tree
                .get(entry_key(seq))
                .map_err(state_err)?
                .ok_or_else(|| Error::State(format!("outbox entry {seq} vanished")))?;
            let entry: Entry = serde_json::from_slice(&raw).map_err(state_err)?;
            return Ok(Some(Job {
                seq,
                entry,
                attempt,
            }));
        }
        Ok(None)
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue().backoff.first().map(|(t, _)| *t)
    }

    /// Waits for a request to send; `None` on shutdown.
    async fn next_job(&self, shutdown: &CancellationToken) -> Result<Option<Job>, Error> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(job) = self.take()? {
                return Ok(Some(job));
            }
            let due = self.next_due();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = &mut notified => {}
                _ = async {
                    match due {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// The head of `job`'s session is done (delivered or dead-lettered): remove it.
    fn finish(&self, job: &Job) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        batch.remove(entry_key(job.seq));
        batch.remove(id_key(&job.entry.id));
        // Not flushed here: sled flushes within its interval, and a removal lost to a crash
        // only re-sends a request with the same Idempotency-Key.
        self.tree.apply_batch(batch).map_err(state_err)?;
        {
            let mut q = self.queue();
            q.remove(job.seq);
            let session = &job.entry.session;
            let more = match q.lanes.get_mut(session) {
                Some(lane) => {
                    lane.pending.pop_front();
                    lane.busy = false;
                    lane.attempts = 0;
                    !lane.pending.is_empty()
                }
                None => false,
            };
            if more {
                q.ready.push_back(session.clone());
            } else {
                q.lanes.remove(session);
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Keeps `job`'s request and makes its session wait `delay` before the next attempt.
    fn retry_later(&self, job: &Job, delay: Duration) {
        self.queue()
            .backoff
            .insert((Instant::now() + delay, job.entry.session.clone()));
        self.changed.notify_waiters();
    }

    /// Waits until the waiting requests fit the budget.
    async fn wait_for_room(&self) {
        let paused = metrics::OUTBOX_PAUSED.with_label_values(&[&self.label]);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.bytes() < self.budget {
                paused.set(0);
                self.paused.store(false, Ordering::Relaxed);
                return;
            }
            if !self.paused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    destination = %self.label,
                    bytes = self.bytes(),
                    budget = self.budget,
                    "outbox is over its budget; consumption paused until requests drain"
                );
            }
            paused.set(1);
            notified.await;
        }
    }

    /// Waits until nothing waits (or shutdown).
    pub async fn drained(&self, shutdown: &CancellationToken) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notified => {}
            }
        }
    }

    fn refresh_gauges(&self) {
        let (n, bytes, oldest) = {
            let q = self.queue();
            let oldest = q.entries.values().map(|m| m.enqueued_ms).min();
            (q.entries.len(), q.bytes, oldest)
        };
        let age = oldest.map_or(0, |t| {
            (chrono::Utc::now().timestamp_millis() - t).max(0) / 1000
        });
        metrics::OUTBOX_ENTRIES
            .with_label_values(&[&self.label])
            .set(n as i64);
        metrics::OUTBOX_BYTES
            .with_label_values(&[&self.label])
            .set(bytes as i64);
        metrics::OUTBOX_OLDEST_AGE
            .with_label_values(&[&self.label])
            .set(age);
    }
}

/// The delivery stage's processor: appends the destination topic's records to the outbox.
#[derive(Debug)]
pub struct Delivery {
    outbox: Arc<Outbox>,
    dlq: String,
    staged: Vec<Entry>,
    staged_ids: HashSet<String>,
    /// The next offset of each source partition the staged batches read.
    staged_read: BTreeMap<(String, i32), i64>,
}

/// Opens the HTTP destination's outbox under `state_dir/delivery`: the stage's processor and
/// the drainer that sends what it appends.
pub fn open(
    state_dir: &Path,
    dlq_topic: &str,
    cfg: &HttpConfig,
) -> Result<(Delivery, Drainer), Error> {
    cfg.validate()?;
    let label = cfg.destination.clone();
    let outbox = Arc::new(Outbox::open(
        &state_dir.join("delivery"),
        &label,
        cfg.disk_budget_bytes,
    )?);
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .user_agent(concat!("tillbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
    let quota =
        Quota::per_second(NonZeroU32::new(cfg.rate_limit_per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN));
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &cfg.headers {
        // Checked by validate().
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    let drainer = Drainer {
        outbox: outbox.clone(),
        cfg: cfg.clone(),
        client,
        headers,
        limiter: RateLimiter::direct(quota),
        dlq: dlq_topic.to_owned(),
    };
    Ok((
        Delivery {
            outbox,
            dlq: dlq_topic.to_owned(),
            staged: Vec::new(),
            staged_ids: HashSet::new(),
            staged_read: BTreeMap::new(),
        },
        drainer,
    ))
}

impl Delivery {
    /// The outbox (for its size and counters).
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }
}

impl Processor for Delivery {
    type Error = Error;

    /// Never: a new (or rebuilt) outbox resumes at the group's offset, which only ever passes
    /// delivered requests (see [`Delivery::acknowledge`]), so what an earlier outbox held is
    /// read again from there and nothing needs the topic's beginning.
    fn fresh_state(&self) -> bool {
        false
    }

    /// How far the outbox read each partition: this process resumes there (its outbox holds
    /// or has delivered everything before), while the group's offset trails it at the oldest
    /// request not yet delivered, for another member.
    fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        self.outbox.positions()
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Error> {
        let mut out = Vec::new();
        let now = chrono::Utc::now().timestamp_millis();
        for rec in batch {
            let next = self
                .staged_read
                .entry((rec.topic.clone(), rec.partition))
                .or_insert(rec.offset + 1);
            *next = (*next).max(rec.offset + 1);
            let Some(payload) = rec.payload.as_deref() else {
                continue; // a tombstone asks for no request
            };
            let raw = match tillbridge_proto::decode_till_event(payload, rec.header("content-type"))
            {
                Ok(raw) if !raw.event_id.is_empty() => raw,
                Ok(_) => {
                    metrics::DEAD_LETTERS
                        .with_label_values(&["MISSING_FIELD"])
                        .inc();
                    out.push(dead_letter(
                        rec,
                        &self.dlq,
                        "MISSING_FIELD",
                        "event_id: required",
                    ));
                    continue;
                }
                Err(r) => {
                    metrics::DEAD_LETTERS
                        .with_label_values(&[r.reason.code()])
                        .inc();
                    out.push(dead_letter(rec, &self.dlq, r.reason.code(), &r.detail));
                    continue;
                }
            };
            let id = ids::derive(&raw.event_id, "http", 0).to_string();
            if self.staged_ids.contains(&id) || self.outbox.has_id(&id)? {
                continue; // a replayed record whose request already waits
            }
            self.staged_ids.insert(id.clone());
            self.staged.push(Entry {
                id,
                session: String::from_utf8_lossy(rec.key.as_deref().unwrap_or_default())
                    .into_owned(),
                body: tillbridge_proto::to_json(&raw),
                event_id: raw.event_id,
                store_id: raw.store_id,
                till_id: raw.till_id,
                source_topic: rec.topic.clone(),
                source_partition: rec.partition,
                source_offset: rec.offset,
                enqueued_ms: now,
            });
        }
        Ok(out)
    }

    async fn commit(&mut self) -> Result<(), Error> {
        self.staged_ids.clear();
        let staged = std::mem::take(&mut self.staged);
        let read = std::mem::take(&mut self.staged_read);
        let n = staged.len() as u64;
        self.outbox.enqueue(staged, &read).await?;
        metrics::ROUTED
            .with_label_values(&[&format!("http:{}", self.outbox.label)])
            .inc_by(n);
        Ok(())
    }

    /// Each partition only up to the record before its oldest waiting request: the group's
    /// offset then says "delivered up to here", so a partition that moves to another process
    /// (or whose process is gone for good) is taken up from its first request not yet
    /// delivered, and sent again under the same `Idempotency-Key`s, rather than left in this
    /// process's outbox.
    fn acknowledge(&self, positions: Vec<Position>) -> Vec<Position> {
        positions
            .into_iter()
            .map(|mut p| {
                if let Some(oldest) = self.outbox.oldest_unfinished(&p.topic, p.partition) {
                    p.offset = p.offset.min(oldest - 1);
                }
                p
            })
            .collect()
    }

    fn ready(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let outbox = self.outbox.clone();
        async move { outbox.wait_for_room().await }
    }
}

/// Sends what waits in the outbox (see the module docs).
#[derive(Debug)]
pub struct Drainer {
    outbox: Arc<Outbox>,
    cfg: HttpConfig,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    limiter: DefaultDirectRateLimiter,
    dlq: String,
}

impl Drainer {
    /// The outbox it drains.
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// Runs `max_in_flight` workers until `shutdown`; dead letters go to `sink`. Fails only on a
    /// local error (the outbox's storage, a dead-letter topic that refuses for good).
    pub async fn run<K: Sink>(&self, sink: &K, shutdown: CancellationToken) -> Result<(), Error> {
        let span = tracing::info_span!("stage", stage = "delivery-http", destination = %self.cfg.destination);
        async {
            let workers = (0..self.cfg.max_in_flight).map(|_| self.worker(sink, &shutdown));
            let gauges = async {
                loop {
                    self.outbox.refresh_gauges();
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok::<(), Error>(()),
                        _ = tokio::time::sleep(GAUGE_EVERY) => {}
                    }
                }
            };
            let result = tokio::try_join!(futures::future::try_join_all(workers), gauges);
            self.outbox.refresh_gauges();
            // Persist removals, so a clean stop re-sends nothing.
            self.outbox.store.flush().await?;
            result.map(|_| ())
        }
        .instrument(span)
        .await
    }

    async fn worker<K: Sink>(&self, sink: &K, shutdown: &CancellationToken) -> Result<(), Error> {
        while let Some(job) = self.outbox.next_job(shutdown).await? {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.limiter.until_ready() => {}
            }
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                o = self.attempt(&job.entry) => o,
            };
            let label = self.cfg.destination.as_str();
            match outcome {
                Outcome::Delivered(status) => {
                    metrics::HTTP_RESPONSES
                        .with_label_values(&[label, &status.to_string()])
                        .inc();
                    tillbridge_core::crash::point("delivery", "delivered");
                    self.outbox.finish(&job)?;
                    self.outbox.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Retry { cause, retry_after } => {
                    metrics::HTTP_RETRIES
                        .with_label_values(&[label, &cause])
                        .inc();
                    let backoff = self.cfg.backoff(job.attempt, &mut rand::thread_rng());
                    let delay =
                        retry_after.map_or(backoff, |r| r.min(self.cfg.backoff_max).max(backoff));
                    tracing::debug!(session = %job.entry.session, attempt = job.attempt, %cause, ?delay, "retrying later");
                    self.outbox.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.outbox.retry_later(&job, delay);
                }
                Outcome::Rejected { status, body } => {
                    metrics::HTTP_RESPONSES
                        .with_label_values(&[label, &status.to_string()])
                        .inc();
                    tracing::warn!(session = %job.entry.session, event_id = %job.entry.event_id, status,
                        "the promotion core refused a request; dead-lettered");
                    let dl = self.dead_letter(&job.entry, status, &body);
                    loop {
                        match sink.send(vec![dl.clone()]).await {
                            Ok(()) => break,
                            Err(e) if e.is_retryable() => {
                                tracing::warn!(error = %e, "dead letter not written; retrying");
                                tokio::select! {
                                    _ = shutdown.cancelled() => return Ok(()),
                                    _ = tokio::time::sleep(DLQ_RETRY) => {}
                                }
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    metrics::DEAD_LETTERS
                        .with_label_values(&[HTTP_REJECTED])
                        .inc();
                    tillbridge_core::crash::point("delivery", "dead_lettered");
                    self.outbox.finish(&job)?;
                    self.outbox.stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// One attempt of one request.
    async fn attempt(&self, e: &Entry) -> Outcome {
        let url = self.cfg.url_for(UrlValues {
            session_id: &e.session,
            event_id: &e.event_id,
            store_id: &e.store_id,
            till_id: &e.till_id,
        });
        let method = match self.cfg.method {
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Post => reqwest::Method::POST,
        };
        let sent = self
            .client
            .request(method, url)
            .headers(self.headers.clone())
            .header("idempotency-key", &e.id)
            .header("content-type", "application/json")
            .header("tillbridge-event-id", &e.event_id)
            .body(e.body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = if resp.status().is_client_error() && status != 408 && status != 429
                    || resp.status().is_redirection()
                {
                    http::body_start(resp).await
                } else {
                    String::new()
                };
                http::classify(status, retry_after.as_deref(), body)
            }
            Err(err) => {
                let cause = http::transport_cause(&err);
                metrics::HTTP_RESPONSES
                    .with_label_values(&[&self.cfg.destination, cause])
                    .inc();
                Outcome::Retry {
                    cause: cause.to_owned(),
                    retry_after: None,
                }
            }
        }
    }

    fn dead_letter(&self, e: &Entry, status: u16, body: &str) -> OutRecord {
        let method = match self.cfg.method {
            HttpMethod::Put => "PUT",
            HttpMethod::Post => "POST",
        };
        let dl = pb::DeadLetter {
            id: ids::derive(&e.id, "http.rejected", 0).to_string(),
            reason: HTTP_REJECTED.to_owned(),
            detail: format!("the promotion core answered {status} to {method}: {body}"),
            source_topic: e.source_topic.clone(),
            source_partition: e.source_partition,
            source_offset: e.source_offset,
            original: pan::redact(e.body.as_bytes()),
            event_id: Some(e.event_id.clone()),
            rejected_at: Some(tillbridge_proto::timestamp(chrono::Utc::now())),
        };
        OutRecord::new(&self.dlq, e.session.as_bytes(), dl.encode_to_vec())
            .with_header("content-type", tillbridge_proto::CONTENT_TYPE_PROTOBUF)
            .with_header("tillbridge-reason", HTTP_REJECTED)
            .with_header("tillbridge-http-status", status.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The outbox's scheduler on tokio's paused clock: per-session order, one request of a
    //! session at a time, and a retry due exactly when its back-off ends.

    use super::*;

    fn entry(n: u32, session: &str) -> Entry {
        Entry {
            id: format!("id-{n}"),
            session: session.to_owned(),
            event_id: format!("ev-{n}"),
            store_id: "S1".into(),
            till_id: "T1".into(),
            body: "{}".into(),
            source_topic: "promo.sessions".into(),
            source_partition: 0,
            source_offset: i64::from(n),
            enqueued_ms: 0,
        }
    }

    /// The next job, or `None` if none is due within `within` (of paused time).
    async fn next_within(outbox: &Outbox, within: Duration) -> Option<Job> {
        let shutdown = CancellationToken::new();
        tokio::time::timeout(within, outbox.next_job(&shutdown))
            .await
            .ok()
            .map(|j| j.unwrap().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_go_in_order_one_request_at_a_time_and_retries_wait_their_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox"), "test", 1 << 20).unwrap();
        outbox
            .enqueue(
                vec![entry(1, "A"), entry(2, "A"), entry(3, "B")],
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        let a1 = next_within(&outbox, Duration::ZERO).await.unwrap();
        let b3 = next_within(&outbox, Duration::ZERO).await.unwrap();
        assert_eq!((a1.entry.id.as_str(), a1.attempt), ("id-1", 1));
        assert_eq!(b3.entry.id.as_str(), "id-3");
        // A's second request waits while its first is in flight.
        assert!(next_within(&outbox, Duration::from_secs(60))
            .await
            .is_none());
        outbox.retry_later(&a1, Duration::from_secs(5));
        outbox.finish(&b3).unwrap();
        // Not before the back-off ends; then the same request again, as attempt 2.
        let start = Instant::now();
        assert!(next_within(&outbox, Duration::from_millis(4_999))
            .await
            .is_none());
        let again = next_within(&outbox, Duration::from_secs(1)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!((again.entry.id.as_str(), again.attempt), ("id-1", 2));
        outbox.finish(&again).unwrap();
        let a2 = next_within(&outbox, Duration::ZERO).await.unwrap();
        assert_eq!((a2.entry.id.as_str(), a2.attempt), ("id-2", 1));
        outbox.finish(&a2).unwrap();
        assert!(outbox.is_empty());
    }
}
