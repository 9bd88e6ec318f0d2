//! [`FraudGuard`]: decoding, replay protection, persistence; the rules live in `rules`, run by
//! `engine`, their state in `state`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::log::{Order, OutRecord, Record};
use tillbridge_core::stage::Processor;
use tillbridge_core::store::StateStore;
use tillbridge_proto::pb;

use crate::alert::{CodeMasker, Rule};
use crate::config::FraudGuardConfig;
use crate::engine::{Admission, Engine};
use crate::error::Error;
use crate::state::State;

/// Layout version of the state; a store of another layout is rebuilt from the topics.
const STATE_FORMAT: &str = "fraud-guard-v4";
/// The sled tree of the state: one entry per key (`State::to_kv`), the offsets among them.
const STATE_TREE: &str = "state";
/// Content type of the alerts written.
const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// Counters of the stage since it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FraudGuardStats {
    /// Records read (including the ones skipped below).
    pub records: u64,
    /// Records at or below the stored offsets (a replay after a crash), skipped.
    pub replayed: u64,
    /// Events whose id was already judged (at-least-once duplicates), skipped.
    pub duplicates: u64,
    /// Records that are not a valid till event (ingest dead-letters them), skipped.
    pub malformed: u64,
    /// Events older than the newest event time minus `max_lateness`, skipped.
    pub too_late: u64,
    /// Alerts written, per rule code.
    pub alerts: BTreeMap<&'static str, u64>,
    /// Alerts merged into an earlier one by the cool-down, per rule code.
    pub merged: BTreeMap<&'static str, u64>,
}

/// The fraud-guard processor.
///
/// **Guarantee.** `process` applies a batch to the in-memory state and returns its alerts;
/// `commit`, called by the stage loop once those alerts are durable (after every batch, or
/// once per `commit_interval` for the batches of the interval), writes the entries those
/// batches changed (one sled entry per event id, coupon, till, cashier, sale...; expired ones
/// removed) together with the offsets they reflect as one sled batch, and flushes it. On
/// restart, records at or below the stored offsets are skipped, so a replayed batch never
/// counts twice; batches replayed because the crash came before `commit` are judged again from
/// the same state and yield alerts with the same ids.
#[derive(Debug)]
pub struct FraudGuard {
    topics: Topics,
    store: StateStore,
    tree: sled::Tree,
    /// The entries as last written, to write only what a batch changed.
    persisted: HashMap<Vec<u8>, Vec<u8>>,
    engine: Engine,
    stats: FraudGuardStats,
    /// `fraud_guard.commit_interval`; `None` commits every batch.
    commit_interval: Option<std::time::Duration>,
}

fn state_err(e: impl std::fmt::Display) -> Error {
    Error::State(e.to_string())
}

impl FraudGuard {
    /// Opens the stage's state under `state_dir` (sub-directory `fraud-guard`).
    /// `fingerprint_key` (`[fingerprint] key`) is the HMAC key of coupon fingerprints.
    pub fn open(
        state_dir: &Path,
        topics: &Topics,
        cfg: FraudGuardConfig,
        fingerprint_key: &str,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        let store = StateStore::open(&state_dir.join("fraud-guard"), STATE_FORMAT)?;
        let tree = store.tree(STATE_TREE)?;
        let mut persisted = HashMap::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| store.err(e))?;
            persisted.insert(k.to_vec(), v.to_vec());
        }
        let state = State::from_kv(persisted.iter().map(|(k, v)| (k.clone(), v.clone())))
            .map_err(state_err)?;
        let commit_interval = Some(cfg.commit_interval).filter(|d| !d.is_zero());
        Ok(FraudGuard {
            commit_interval,
            topics: topics.clone(),
            engine: Engine::new(cfg, CodeMasker::new(fingerprint_key), state),
            store,
            tree,
            persisted,
            stats: FraudGuardStats::default(),
        })
    }

    /// Whether the state was found damaged and recreated: the caller must replay from the start.
    pub fn rebuilt(&self) -> bool {
        self.store.rebuilt()
    }

    /// The counters so far.
    pub fn stats(&self) -> FraudGuardStats {
        let mut s = self.stats.clone();
        for r in Rule::ALL {
            s.alerts
                .insert(r.code(), self.engine.counts.emitted[r.index()]);
            s.merged
                .insert(r.code(), self.engine.counts.merged[r.index()]);
        }
        s
    }

    /// Number of entries the rules hold in memory (keys plus list items): the figure that stays
    /// flat over a long run with a stable fleet.
    pub fn state_entries(&self) -> usize {
        self.engine.state.entries()
    }

    /// Whether the state on disk (as of the last commit) is the state in memory: every entry
    /// written and nothing stale. For tests of the incremental writes.
    #[doc(hidden)]
    pub fn persisted_matches_memory(&self) -> bool {
        let Ok(kv) = self.engine.state.to_kv() else {
            return false;
        };
        let on_disk: BTreeMap<Vec<u8>, Vec<u8>> = self
            .tree
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        on_disk == kv.into_iter().collect::<BTreeMap<_, _>>()
    }

    /// The newest event time seen (ms since the epoch).
    pub fn watermark_ms(&self) -> Option<i64> {
        self.engine.state.watermark_ms
    }

    fn alert_record(&self, alert: &pb::FraudAlert, timestamp_ms: Option<i64>) -> OutRecord {
        let rule = pb::AlertRule::try_from(alert.rule)
            .map(|r| r.as_str_name())
            .unwrap_or("ALERT_RULE_UNSPECIFIED");
        OutRecord::new(
            &self.topics.alerts,
            alert.store_id.as_bytes(),
            alert.encode_to_vec(),
        )
        .with_header("content-type", CONTENT_TYPE_PROTOBUF)
        .with_header("tillbridge-alert-rule", rule)
        .with_timestamp(timestamp_ms)
    }

    /// The event of a record, decoded once for every rule (`None`: counted as malformed).
    fn decode(&mut self, rec: &Record) -> Option<pb::TillEvent> {
        let Some(payload) = rec.payload.as_deref() else {
            self.malformed(rec, "tombstone");
            return None;
        };
        match tillbridge_proto::decode_till_event(payload, rec.header("content-type")) {
            Ok(raw) => Some(raw),
            Err(r) => {
                self.malformed(rec, r.reason.code());
                None
            }
        }
    }

    fn handle(&mut self, rec: &Record, raw: &pb::TillEvent) -> Vec<pb::FraudAlert> {
        let ev = match tillbridge_proto::validate(raw) {
            Ok(ev) => ev,
            Err(r) => {
                self.malformed(rec, r.reason.code());
                return Vec::new();
            }
        };
        match self.engine.admit(&ev) {
            Admission::Duplicate => {
                self.stats.duplicates += 1;
                Vec::new()
            }
            Admission::TooLate => {
                self.stats.too_late += 1;
                tracing::debug!(event_id = %ev.event_id, occurred_at = %ev.occurred_at,
                    "event older than max_lateness behind the newest event time; not judged");
                Vec::new()
            }
            Admission::Judge => self.engine.apply(&ev, rec.timestamp_ms),
        }
    }

    /// A record ingest dead-letters: counted and skipped (its reason is logged, never its
    /// content, which may hold card data).
    fn malformed(&mut self, rec: &Record, reason: &str) {
        self.stats.malformed += 1;
        tracing::debug!(topic = %rec.topic, partition = rec.partition, offset = rec.offset, reason,
            "invalid till event not judged");
    }
}

impl Processor for FraudGuard {
    type Error = Error;

    fn fresh_state(&self) -> bool {
        self.store.fresh()
    }

    fn order(&self) -> Order {
        Order::RecordTime
    }

    /// Every partition: the rules span tills, stores and cashiers, over one record-time order.
    fn whole_input(&self) -> bool {
        true
    }

    fn keeps_positions(&self) -> bool {
        true
    }

    fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        Ok(self
            .engine
            .state
            .offsets
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| ((t.clone(), *p), o + 1)))
            .collect())
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Error> {
        let mut out = Vec::new();
        // What a replay skips is judged against the offsets stored before this batch.
        let before = self.engine.state.offsets.clone();
        let fresh = |rec: &Record| {
            before
                .get(&rec.topic)
                .and_then(|p| p.get(&rec.partition))
                .is_none_or(|o| rec.offset > *o)
        };
        // Records come from `till.events` in the source's record-time order across partitions
        // (each partition in offset order; see `Source`): a function of the topic's contents,
        // not of batching, so the rules see the same sequence live, as a backlog and on replay.
        for rec in batch {
            self.stats.records += 1;
            if !fresh(rec) {
                self.stats.replayed += 1;
                continue;
            }
            let raw = self.decode(rec);
            let mut alerts = self.engine.apply_till_record(rec, raw.as_ref());
            if let Some(raw) = &raw {
                alerts.extend(self.handle(rec, raw));
            }
            for alert in alerts {
                out.push(self.alert_record(&alert, rec.timestamp_ms));
            }
            let stored = self
                .engine
                .state
                .offsets
                .entry(rec.topic.clone())
                .or_default()
                .entry(rec.partition)
                .or_insert(rec.offset);
            *stored = (*stored).max(rec.offset);
        }
        Ok(out)
    }

    /// The batches of an interval share the in-memory state; `commit` writes what all of them
    /// changed.
    fn commit_interval(&self) -> Option<std::time::Duration> {
        self.commit_interval
    }

    async fn commit(&mut self) -> Result<(), Error> {
        // Only the entries the batch changed, and the removal of those it expired, in one sled
        // batch with the offsets: durable together or not at all, and the disk holds what is
        // live rather than a copy of the whole state per batch.
        let mut batch = sled::Batch::default();
        let dirty = std::mem::take(&mut self.engine.dirty);
        let state = &self.engine.state;
        let small = state.small_kv().map_err(state_err)?;
        // Entries written in full that are no longer kept (small sections, compared in full).
        let in_full = state.tags_in_full();
        let gone: Vec<Vec<u8>> = self
            .persisted
            .keys()
            .filter(|k| {
                k.first().is_some_and(|t| in_full.contains(t))
                    && !small.iter().any(|(s, _)| s == *k)
            })
            .cloned()
            .collect();
        let changed = dirty
            .keys
            .into_iter()
            .map(|k| state.entry(&k).map(|v| (k, v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(state_err)?;
        for (k, v) in small
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .chain(changed)
            .chain(gone.into_iter().map(|k| (k, None)))
        {
            match v {
                Some(v) if self.persisted.get(&k) != Some(&v) => {
                    batch.insert(k.as_slice(), v.as_slice());
                    self.persisted.insert(k, v);
                }
                Some(_) => {}
                None => {
                    if self.persisted.remove(&k).is_some() {
                        batch.remove(k.as_slice());
                    }
                }
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        self.store.flush().await?;
        Ok(())
    }
}
