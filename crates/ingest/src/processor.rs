use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::route::{Router, SessionInfo};
use prost::Message;
use tillbridge_core::config::{IngestConfig, Topics};
use tillbridge_core::domain::{Body, RejectReason, TillEvent};
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::stage::Processor;
use tillbridge_core::store::StateStore;
use tillbridge_core::{metrics, pan};
use tillbridge_proto::{pb, Rejection};

use crate::dedup::{DedupIndex, Seen, Staged};
use crate::error::Error;
use crate::state::{
    checkpoint_key, Changes, IngestRestore, SessionEntry, TillGaps, OFFSET_PREFIX, WATERMARK_KEY,
};

/// Layout version of the ingest state; a store of another layout is rebuilt.
const STATE_FORMAT: &str = "ingest-v2";
/// Most bytes of an oversized payload kept in its dead letter (brokers cap record size).
const OVERSIZED_KEEP_BYTES: usize = 64 * 1024;

/// Counters of the ingest stage, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub consumed: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    dead: [AtomicU64; 8],
    pub routed: std::sync::Mutex<BTreeMap<String, u64>>,
    pub dedup_index_size: AtomicU64,
}

impl IngestStats {
    pub fn dead_lettered(&self, reason: RejectReason) -> u64 {
        self.dead[reason as usize].load(Ordering::Relaxed)
    }
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
    fn count_dead(&self, reason: RejectReason) {
        self.dead[reason as usize].fetch_add(1, Ordering::Relaxed);
        metrics::DEAD_LETTERS
            .with_label_values(&[reason.code()])
            .inc();
    }
    /// Records routed per destination topic (counted once their batch is durable).
    pub fn routed(&self) -> BTreeMap<String, u64> {
        self.routed.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The ingest processor (see the crate docs for its guarantee).
#[derive(Debug)]
pub struct Ingest {
    cfg: IngestConfig,
    topics: Topics,
    router: Router,
    store: StateStore,
    dedup: DedupIndex,
    sessions: sled::Tree,
    tills: sled::Tree,
    meta: sled::Tree,
    /// Staged changes of the batch in flight, with the input partition of the record that made
    /// each (its changelog partition).
    staged_sessions: BTreeMap<String, (SessionEntry, i32)>,
    staged_tills: BTreeMap<String, (TillGaps, i32)>,
    /// The dedup index's writes of the batch in flight, once computed.
    staged_dedup: Option<Staged>,
    /// The staged sessions and tills encoded once for the changelog, reused by the commit that
    /// follows it (no record is processed in between).
    encoded: Option<(sled::Batch, sled::Batch)>,
    /// The input partition of the record being handled.
    partition: i32,
    /// The changelog's restore side, when the state is mirrored to a changelog topic.
    restore: Option<Arc<IngestRestore>>,
    /// The changelog checkpoints the open batches' changelog records move forward.
    staged_checkpoints: BTreeMap<i32, i64>,
    /// Change of the missing receipts over all tills in the batch in flight.
    staged_gap_delta: i64,
    /// Next offset per input partition after the batch in flight.
    staged_offsets: BTreeMap<(String, i32), i64>,
    /// Records routed per destination topic in the batch in flight.
    staged_routed: BTreeMap<String, u64>,
    /// Highest event time accepted (ms), the dedup window's reference.
    watermark_ms: Option<i64>,
    stats: Arc<IngestStats>,
    /// What this state adds to the process's gauges (missing receipts, dedup index entries):
    /// several ingest tasks each add their share, and take it back when dropped.
    gauges: (i64, i64),
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let (gaps, index) = self.gauges;
        metrics::TILL_SEQUENCE_GAPS
            .with_label_values::<&str>(&[])
            .sub(gaps);
        metrics::DEDUP_INDEX_ENTRIES
            .with_label_values::<&str>(&[])
            .sub(index);
    }
}

use sled::transaction::{ConflictableTransactionError, Transactional};

fn state_err(e: sled::Error) -> Error {
    Error::State(e.to_string())
}

impl Ingest {
    /// Opens the stage's state under `state_dir`.
    pub fn open(state_dir: &Path, topics: Topics, cfg: IngestConfig) -> Result<Self, Error> {
        let store = StateStore::open(&state_dir.join("ingest"), STATE_FORMAT)?;
        let dedup = DedupIndex::open(store.tree("dedup_expiry")?)?;
        let meta = store.tree("meta")?;
        let watermark_ms = meta
            .get(WATERMARK_KEY)
            .map_err(state_err)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes);
        let stats = Arc::new(IngestStats::default());
        stats
            .dedup_index_size
            .store(dedup.len() as u64, Ordering::Relaxed);
        let tills = store.tree("tills")?;
        let mut missing = 0i64;
        for item in tills.iter() {
            let (_, v) = item.map_err(state_err)?;
            if let Ok(g) = serde_json::from_slice::<TillGaps>(&v) {
                missing += g.missing.len() as i64;
            }
        }
        metrics::TILL_SEQUENCE_GAPS
            .with_label_values::<&str>(&[])
            .add(missing);
        let index = dedup.len() as i64;
        metrics::DEDUP_INDEX_ENTRIES
            .with_label_values::<&str>(&[])
            .add(index);
        Ok(Ingest {
            gauges: (missing, index),
            router: Router::new(topics.clone()),
            sessions: store.tree("sessions")?,
            tills,
            meta,
            store,
            dedup,
            staged_sessions: BTreeMap::new(),
            staged_tills: BTreeMap::new(),
            staged_dedup: None,
            encoded: None,
            partition: 0,
            restore: None,
            staged_checkpoints: BTreeMap::new(),
            staged_gap_delta: 0,
            staged_offsets: BTreeMap::new(),
            staged_routed: BTreeMap::new(),
            watermark_ms,
            cfg,
            topics,
            stats,
        })
    }

    /// Routes with `router` (its rules) instead of the default router.
    pub fn with_router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Mirrors the state to the compacted changelog topic `topic`: every batch's changes are
    /// written there ([`Processor::changelog`]), and a partition the state holds nothing of is
    /// restored from there ([`Processor::restorer`]).
    pub fn with_changelog(mut self, topic: &str) -> Result<Self, Error> {
        self.restore = Some(Arc::new(IngestRestore {
            topic: topic.to_owned(),
            db: self.store.db().clone(),
            dedup: self.dedup.index(),
            expiry: self.dedup.tree().clone(),
            sessions: self.sessions.clone(),
            tills: self.tills.clone(),
            meta: self.meta.clone(),
            restored: Default::default(),
            positions: Default::default(),
        }));
        Ok(self)
    }

    /// Whether the state was found damaged and recreated: the caller must replay from the start.
    pub fn rebuilt(&self) -> bool {
        self.store.rebuilt()
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    /// The input topics.
    pub fn input_topics(topics: &Topics) -> Vec<String> {
        vec![topics.till_events.clone()]
    }

    /// Sequence gaps per till (`{store_id}/{till_id}`), as durable state knows them.
    pub fn till_gaps(&self) -> Result<BTreeMap<String, TillGaps>, Error> {
        let mut out = BTreeMap::new();
        for item in self.tills.iter() {
            let (k, v) = item.map_err(state_err)?;
            if let Ok(g) = serde_json::from_slice::<TillGaps>(&v) {
                out.insert(String::from_utf8_lossy(&k).into_owned(), g);
            }
        }
        Ok(out)
    }

    /// Number of ids in the dedup index.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    fn dead_letter(
        &self,
        rec: &Record,
        rejection: &Rejection,
        event_id: Option<String>,
    ) -> OutRecord {
        self.stats.count_dead(rejection.reason);
        let payload = rec.payload.as_deref().unwrap_or_default();
        let mut detail = rejection.detail.clone();
        if rejection.reason == RejectReason::Oversized && payload.len() > OVERSIZED_KEEP_BYTES {
            detail.push_str(&format!(
                " (original truncated to its first {OVERSIZED_KEEP_BYTES} bytes)"
            ));
        }
        tracing::info!(
            topic = %rec.topic, partition = rec.partition, offset = rec.offset,
            reason = rejection.reason.code(), detail = %detail, "dead-lettered"
        );
        let keep = if rejection.reason == RejectReason::Oversized {
            OVERSIZED_KEEP_BYTES
        } else {
            usize::MAX
        };
        tillbridge_core::log::dead_letter_of(
            rec,
            &self.topics.dlq,
            rejection.reason.code(),
            detail,
            event_id,
            keep,
        )
    }

    fn session(&mut self, id: &str) -> Result<SessionEntry, Error> {
        if let Some((e, _)) = self.staged_sessions.get(id) {
            return Ok(e.clone());
        }
        Ok(self
            .sessions
            .get(id.as_bytes())
            .map_err(state_err)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    fn till(&mut self, key: &str) -> Result<TillGaps, Error> {
        if let Some((g, _)) = self.staged_tills.get(key) {
            return Ok(g.clone());
        }
        Ok(self
            .tills
            .get(key.as_bytes())
            .map_err(state_err)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    /// Routes an accepted event, keeping the session index.
    fn route(
        &mut self,
        ev: &TillEvent,
        raw: &pb::TillEvent,
        ts: Option<i64>,
    ) -> Result<Vec<OutRecord>, Error> {
        let mut out = Vec::new();
        match &ev.body {
            Body::Sale(_) => {
                let sid = ev.session_id.clone().unwrap_or_default();
                let mut entry = self.session(&sid)?;
                let info = SessionInfo::from_sale(ev);
                out.extend(self.router.route(ev, raw, ts, None));
                // A cancel or return that synced before this sale releases it now.
                for waiting in std::mem::take(&mut entry.waiting) {
                    let Ok(w) = pb::TillEvent::decode(waiting.as_slice()) else {
                        continue;
                    };
                    let Ok(wev) = tillbridge_proto::validate(&w) else {
                        continue;
                    };
                    if let Some(i) = &info {
                        out.extend(self.deferred(&wev, i, ts));
                    }
                }
                entry.sale = info;
                self.staged_sessions.insert(sid, (entry, self.partition));
            }
            Body::SessionCancelled { .. } | Body::Return(_) => {
                let sid = match &ev.body {
                    Body::Return(r) => r.original_session_id.clone(),
                    _ => ev.session_id.clone().unwrap_or_default(),
                };
                let mut entry = self.session(&sid)?;
                match &entry.sale {
                    Some(orig) => out.extend(self.router.route(ev, raw, ts, Some(orig))),
                    None => {
                        out.extend(self.router.route(ev, raw, ts, None));
                        entry.waiting.push(raw.encode_to_vec());
                        self.staged_sessions.insert(sid, (entry, self.partition));
                    }
                }
            }
            Body::ManualOverride(_) | Body::TillStatus(_) => {
                out.extend(self.router.route(ev, raw, ts, None))
            }
        }
        Ok(out)
    }

    /// The facts of a cancel or return whose sale arrived after it (without its session record,
    /// which was routed when it arrived).
    fn deferred(&self, ev: &TillEvent, orig: &SessionInfo, ts: Option<i64>) -> Vec<OutRecord> {
        self.router.facts(ev, ts, Some(orig))
    }

    fn handle(&mut self, rec: &Record) -> Result<Vec<OutRecord>, Error> {
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        let payload = rec.payload.as_deref().unwrap_or_default();
        if payload.len() > self.cfg.max_payload_bytes {
            let r = Rejection::new(
                RejectReason::Oversized,
                format!(
                    "payload is {} bytes, the limit is {}",
                    payload.len(),
                    self.cfg.max_payload_bytes
                ),
            );
            return Ok(vec![self.dead_letter(rec, &r, None)]);
        }
        if payload.is_empty() {
            let r = Rejection::new(RejectReason::DecodeError, "empty payload");
            return Ok(vec![self.dead_letter(rec, &r, None)]);
        }
        let raw = match tillbridge_proto::decode_till_event(payload, rec.header("content-type")) {
            Ok(raw) => raw,
            Err(r) => return Ok(vec![self.dead_letter(rec, &r, None)]),
        };
        let event_id = (!raw.event_id.is_empty() && !pan::contains(&raw.event_id))
            .then(|| raw.event_id.clone());
        let ev = match tillbridge_proto::validate(&raw) {
            Ok(ev) => ev,
            Err(r) => return Ok(vec![self.dead_letter(rec, &r, event_id)]),
        };
        let record_ms = rec
            .timestamp_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let skew_ms = self.cfg.max_clock_skew.as_millis() as i64;
        let event_ms = ev.occurred_at.timestamp_millis();
        if event_ms > record_ms.saturating_add(skew_ms) {
            let r = Rejection::new(
                RejectReason::ClockSkew,
                format!(
                    "occurred_at is {} ms ahead of the record timestamp; at most {skew_ms} ms allowed",
                    event_ms - record_ms
                ),
            );
            return Ok(vec![self.dead_letter(rec, &r, event_id)]);
        }
        match self.dedup.check(
            ev.event_id,
            tillbridge_proto::content_hash(&raw),
            event_ms,
            rec.partition,
        )? {
            Seen::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics::DUPLICATES_DROPPED
                    .with_label_values::<&str>(&[])
                    .inc();
                return Ok(Vec::new());
            }
            Seen::Conflict => {
                let r = Rejection::new(
                    RejectReason::DuplicateConflict,
                    "event_id was seen before with different content",
                );
                return Ok(vec![self.dead_letter(rec, &r, event_id)]);
            }
            Seen::New => {}
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        metrics::EVENTS_ACCEPTED
            .with_label_values(&[ev.body_kind().as_str()])
            .inc();
        // The dedup window's reference moves with event time, but never past the wall clock
        // (plus the allowed skew): one record stamped far ahead, by a till with a fast clock or
        // on purpose, must not expire every entry and let later resends through.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let reference = event_ms.min(now_ms.saturating_add(skew_ms));
        self.watermark_ms = Some(self.watermark_ms.map_or(reference, |w| w.max(reference)));
        let till_key = ev.till_key();
        let mut gaps = self.till(&till_key)?;
        let before = gaps.missing.len() as i64;
        gaps.observe(ev.till_seq);
        self.staged_gap_delta += gaps.missing.len() as i64 - before;
        self.staged_tills.insert(till_key, (gaps, self.partition));
        let out = self.route(&ev, &raw, rec.timestamp_ms)?;
        for o in &out {
            *self.staged_routed.entry(o.topic.clone()).or_default() += 1;
        }
        Ok(out)
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::State(e.to_string()))
}

impl Ingest {
    /// Computes the dedup index's writes of the batch in flight (its entries, and the expiry of
    /// those older than the window), once per batch.
    fn stage_dedup(&mut self) -> Result<(), Error> {
        if self.staged_dedup.is_none() {
            let horizon = self
                .watermark_ms
                .map(|w| w - self.cfg.dedup_window.as_millis() as i64);
            self.staged_dedup = Some(self.dedup.stage(horizon)?);
        }
        Ok(())
    }

    /// Takes in what a restore from the changelog wrote to the trees behind the processor's
    /// back (between batches): the watermark it keeps in memory.
    fn reload_if_restored(&mut self) -> Result<(), Error> {
        let Some(restore) = &self.restore else {
            return Ok(());
        };
        if !restore.restored.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let restored = self
            .meta
            .get(WATERMARK_KEY)
            .map_err(state_err)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes);
        self.watermark_ms = self.watermark_ms.max(restored);
        Ok(())
    }
}

impl Processor for Ingest {
    type Error = Error;

    fn fresh_state(&self) -> bool {
        self.store.fresh()
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Error> {
        // Staged entries may change now: what the changelog encoded no longer holds.
        self.encoded = None;
        self.reload_if_restored()?;
        let mut out = Vec::with_capacity(batch.len() * 2);
        for rec in batch {
            self.partition = rec.partition;
            out.extend(self.handle(rec)?);
            let next = self
                .staged_offsets
                .entry((rec.topic.clone(), rec.partition))
                .or_insert(rec.offset + 1);
            *next = (*next).max(rec.offset + 1);
        }
        Ok(out)
    }

    fn keeps_positions(&self) -> bool {
        true
    }

    fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        let mut out = BTreeMap::new();
        for item in self.meta.scan_prefix(OFFSET_PREFIX) {
            let (k, v) = item.map_err(state_err)?;
            let parsed = tillbridge_core::store::parse_position_key(&k[OFFSET_PREFIX.len()..]);
            let next = <[u8; 8]>::try_from(v.as_ref()).ok().map(i64::from_be_bytes);
            if let (Some(key), Some(next)) = (parsed, next) {
                out.insert(key, next);
            }
        }
        Ok(out)
    }

    fn commit_interval(&self) -> Option<std::time::Duration> {
        Some(self.cfg.commit_interval).filter(|d| !d.is_zero())
    }

    fn restorer(&self) -> Option<Arc<dyn tillbridge_core::log::StateRestore>> {
        self.restore
            .clone()
            .map(|r| r as Arc<dyn tillbridge_core::log::StateRestore>)
    }

    fn changelog(&mut self) -> Result<Vec<OutRecord>, Error> {
        let Some(restore) = self.restore.clone() else {
            return Ok(Vec::new());
        };
        self.stage_dedup()?;
        let mut changes = Changes {
            topic: &restore.topic,
            out: Vec::new(),
        };
        if let Some(dedup) = &self.staged_dedup {
            for (id, hash, ms, partition) in &dedup.inserted {
                changes.dedup(*partition, id, hash, *ms);
            }
            for (id, partition) in &dedup.expired {
                if let Some(partition) = partition {
                    changes.dedup_expired(*partition, id);
                }
            }
        }
        let (mut sessions, mut tills) = (sled::Batch::default(), sled::Batch::default());
        for (k, (v, partition)) in &self.staged_sessions {
            let bytes = json(v)?;
            changes.session(*partition, k, &bytes);
            sessions.insert(k.as_bytes(), bytes);
        }
        for (k, (v, partition)) in &self.staged_tills {
            let bytes = json(v)?;
            changes.till(*partition, k, &bytes);
            tills.insert(k.as_bytes(), bytes);
        }
        self.encoded = Some((sessions, tills));
        for ((topic, partition), next) in &self.staged_offsets {
            changes.position(topic, *partition, *next, self.watermark_ms);
        }
        Ok(changes.out)
    }

    fn changelog_written(&mut self, written: &tillbridge_core::log::Written) -> Result<(), Error> {
        let Some(restore) = &self.restore else {
            return Ok(());
        };
        for ((topic, partition), landed) in written {
            if *topic != restore.topic {
                continue;
            }
            // The checkpoint moves only over a run of this state's own records right after it:
            // records another instance wrote in between are not in this state, and must be
            // read from the changelog when the partition comes back.
            let checkpoint =
                tillbridge_core::log::StateRestore::checkpoint(restore.as_ref(), *partition);
            if checkpoint.is_some_and(|c| landed.follows(c)) {
                self.staged_checkpoints.insert(*partition, landed.last + 1);
            }
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), Error> {
        self.stage_dedup()?;
        let dedup = self
            .staged_dedup
            .take()
            .ok_or_else(|| Error::State("dedup writes not staged".into()))?;
        let staged_sessions = std::mem::take(&mut self.staged_sessions);
        let staged_tills = std::mem::take(&mut self.staged_tills);
        let (sessions, tills) = match self.encoded.take() {
            Some(encoded) => encoded,
            None => {
                let (mut sessions, mut tills) = (sled::Batch::default(), sled::Batch::default());
                for (k, (v, _)) in staged_sessions {
                    sessions.insert(k.as_bytes(), json(&v)?);
                }
                for (k, (v, _)) in staged_tills {
                    tills.insert(k.as_bytes(), json(&v)?);
                }
                (sessions, tills)
            }
        };
        let mut meta = sled::Batch::default();
        if let Some(w) = self.watermark_ms {
            meta.insert(WATERMARK_KEY, &w.to_be_bytes());
        }
        for (partition, next) in std::mem::take(&mut self.staged_checkpoints) {
            meta.insert(checkpoint_key(partition), &next.to_be_bytes());
        }
        // The positions this state reflects, with it (see `Processor::positions`).
        for ((topic, partition), next) in std::mem::take(&mut self.staged_offsets) {
            meta.insert(
                tillbridge_core::store::position_key(OFFSET_PREFIX, &topic, partition),
                &next.to_be_bytes(),
            );
        }
        // One transaction over every tree: a crash leaves all of the batch's state or none of
        // it (dedup entries without their session entries would drop the replays that could
        // heal the index).
        (self.dedup.tree(), &self.sessions, &self.tills, &self.meta)
            .transaction(|(e, s, t, m)| {
                e.apply_batch(&dedup.expiry)?;
                s.apply_batch(&sessions)?;
                t.apply_batch(&tills)?;
                m.apply_batch(&meta)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| Error::State(format!("state transaction: {e:?}")))?;
        let expired = self.dedup.committed(&dedup);
        let gap_delta = std::mem::take(&mut self.staged_gap_delta);
        metrics::TILL_SEQUENCE_GAPS
            .with_label_values::<&str>(&[])
            .add(gap_delta);
        self.gauges.0 += gap_delta;
        self.store.flush().await?;
        let routed = std::mem::take(&mut self.staged_routed);
        if let Ok(mut total) = self.stats.routed.lock() {
            for (topic, n) in routed {
                metrics::ROUTED
                    .with_label_values(&[topic.as_str()])
                    .inc_by(n);
                *total.entry(topic).or_default() += n;
            }
        }
        self.stats
            .dedup_index_size
            .store(self.dedup.len() as u64, Ordering::Relaxed);
        let index = self.dedup.len() as i64;
        metrics::DEDUP_INDEX_ENTRIES
            .with_label_values::<&str>(&[])
            .add(index - self.gauges.1);
        self.gauges.1 = index;
        if expired > 0 {
            tracing::debug!(expired, "dedup entries expired");
        }
        Ok(())
    }
}
