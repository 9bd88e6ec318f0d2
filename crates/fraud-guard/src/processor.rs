//! [`FraudGuard`]: decoding, replay protection, persistence; the rules live in `engine`.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::log::{Order, OutRecord, Record};
use tillbridge_core::stage::Processor;
use tillbridge_core::store::StateStore;
use tillbridge_proto::pb;

use crate::alert::{CodeMasker, Rule};
use crate::config::FraudGuardConfig;
use crate::engine::{Admission, Engine, State};
use crate::Error;

/// Layout version of the state; a store of another layout is rebuilt from the topics.
const STATE_FORMAT: &str = "fraud-guard-v3";
/// The sled key holding the whole state together with the offsets it reflects.
const STATE_KEY: &[u8] = b"state";
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
/// `commit`, called by the stage loop once those alerts are durable, writes the whole state and
/// the offsets it reflects as one sled value and flushes it. On restart, records at or below
/// the stored offsets are skipped, so a replayed batch never counts twice; a batch replayed
/// because the crash came before `commit` is judged again from the same state and yields alerts
/// with the same ids.
#[derive(Debug)]
pub struct FraudGuard {
    topics: Topics,
    store: StateStore,
    engine: Engine,
    stats: FraudGuardStats,
}

fn state_err(e: impl std::fmt::Display) -> Error {
    Error::State(e.to_string())
}

impl FraudGuard {
    /// Opens the stage's state under `state_dir` (sub-directory `fraud-guard`). `report_key` is
    /// the HMAC key of coupon fingerprints.
    pub fn open(
        state_dir: &Path,
        topics: &Topics,
        cfg: FraudGuardConfig,
        report_key: &str,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        let store = StateStore::open(&state_dir.join("fraud-guard"), STATE_FORMAT)?;
        let state = match store.db().get(STATE_KEY).map_err(|e| store.err(e))? {
            Some(bytes) => serde_json::from_slice::<State>(&bytes).map_err(state_err)?,
            None => State::default(),
        };
        Ok(FraudGuard {
            topics: topics.clone(),
            engine: Engine::new(cfg, CodeMasker::new(report_key), state),
            store,
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

    fn handle(&mut self, rec: &Record) -> Vec<pb::FraudAlert> {
        let Some(payload) = rec.payload.as_deref() else {
            self.malformed(rec, "tombstone");
            return Vec::new();
        };
        let raw = match tillbridge_proto::decode_till_event(payload, rec.header("content-type")) {
            Ok(raw) => raw,
            Err(r) => {
                self.malformed(rec, r.reason.code());
                return Vec::new();
            }
        };
        let ev = match tillbridge_proto::validate(&raw) {
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
            let mut alerts = self.engine.apply_till_record(rec);
            alerts.extend(self.handle(rec));
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

    async fn commit(&mut self) -> Result<(), Error> {
        // One value for the state and its offsets: they are durable together or not at all.
        let bytes = serde_json::to_vec(&self.engine.state).map_err(state_err)?;
        self.store
            .db()
            .insert(STATE_KEY, bytes)
            .map_err(|e| self.store.err(e))?;
        self.store.flush().await?;
        Ok(())
    }
}
