//! Shared helpers: hand-built till events and a harness that drives the processor with
//! `Record`s the way the stage loop does (process, then commit).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use prost::Message;
use tempfile::TempDir;
use tillbridge_core::config::Topics;
use tillbridge_core::log::Record;
use tillbridge_core::stage::Processor;
use tillbridge_fraud_guard::{FraudGuard, FraudGuardConfig};
use tillbridge_proto::pb;
use uuid::Uuid;

pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 60 * MIN;
/// 2026-03-02T09:00:00Z, the start of every scenario.
pub const T0: i64 = 1_772_442_000_000;
pub const REPORT_KEY: &str = "test-report-key";

pub fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// A bare event; `till_seq` 0 means "the harness numbers it".
pub fn base(store: &str, till: &str, at: i64) -> pb::TillEvent {
    pb::TillEvent {
        event_id: Uuid::new_v4().to_string(),
        store_id: store.into(),
        till_id: till.into(),
        till_seq: 0,
        occurred_at: Some(ts(at)),
        cashier_id: Some(format!("{store}-c1")),
        currency: "EUR".into(),
        ..Default::default()
    }
}

/// A sale of one 100.00 item with the given coupons (code, discount in minor units).
pub fn sale(store: &str, till: &str, at: i64, coupons: &[(&str, i64)]) -> pb::TillEvent {
    let mut e = base(store, till, at);
    e.session_id = session_id();
    e.body = Some(pb::till_event::Body::Sale(pb::Sale {
        lines: vec![pb::SaleLine {
            sku: "SKU-1".into(),
            quantity: 1,
            unit_price_minor: 100_000,
            discount_minor: 0,
        }],
        coupons: coupons
            .iter()
            .map(|(c, d)| pb::CouponRedemption {
                code: (*c).into(),
                discount_minor: *d,
                campaign_id: None,
            })
            .collect(),
        loyalty: None,
        total_minor: None,
    }));
    e
}

/// A random session id without digit runs (ingest would take a long one for a card number).
pub fn session_id() -> String {
    let hex = Uuid::new_v4().simple().to_string();
    let letters: String = hex
        .chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from(b'g' + d as u8),
            None => c,
        })
        .collect();
    format!("sess-{letters}")
}

pub fn offline(mut e: pb::TillEvent) -> pb::TillEvent {
    e.offline = true;
    e
}

pub fn session_of(e: &pb::TillEvent) -> String {
    e.session_id.clone()
}

pub fn ret(store: &str, till: &str, at: i64, original_session: &str, refund: i64) -> pb::TillEvent {
    let mut e = base(store, till, at);
    e.session_id = session_id();
    e.body = Some(pb::till_event::Body::Return(pb::Return {
        original_session_id: original_session.into(),
        lines: vec![],
        refund_minor: refund,
    }));
    e
}

pub fn cancel(store: &str, till: &str, at: i64, session: &str) -> pb::TillEvent {
    let mut e = base(store, till, at);
    e.session_id = session.into();
    e.body = Some(pb::till_event::Body::SessionCancelled(
        pb::SessionCancelled {
            reason: "customer left".into(),
        },
    ));
    e
}

pub fn manual_override(store: &str, till: &str, at: i64, cashier: &str) -> pb::TillEvent {
    let mut e = base(store, till, at);
    e.cashier_id = Some(cashier.into());
    e.body = Some(pb::till_event::Body::ManualOverride(pb::ManualOverride {
        kind: pb::manual_override::Kind::Price as i32,
        amount_minor: 500,
        reason: "price check".into(),
        approved_by: None,
    }));
    e
}

pub fn status(store: &str, till: &str, at: i64, online: bool) -> pb::TillEvent {
    let mut e = base(store, till, at);
    e.offline = !online;
    let status = if online {
        pb::till_status::Status::Online
    } else {
        pb::till_status::Status::Offline
    };
    e.body = Some(pb::till_event::Body::TillStatus(pb::TillStatus {
        status: status as i32,
        last_synced_seq: 0,
    }));
    e
}

pub fn with_seq(mut e: pb::TillEvent, seq: u64) -> pb::TillEvent {
    e.till_seq = seq;
    e
}

/// Drives a [`FraudGuard`] over hand-built records of `till.events`, in the order given (the
/// source's record-time order).
pub struct Harness {
    pub dir: TempDir,
    pub cfg: FraudGuardConfig,
    pub fg: FraudGuard,
    pub topics: Topics,
    seqs: BTreeMap<(String, String), u64>,
    /// `till.events` partition of each `{store}/{till}` (0 unless a test sets it), and the next
    /// offset of each partition.
    pub till_partitions: BTreeMap<String, i32>,
    till_offsets: BTreeMap<i32, i64>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(FraudGuardConfig::default())
    }

    pub fn with(cfg: FraudGuardConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::default();
        let fg = FraudGuard::open(dir.path(), &topics, cfg.clone(), REPORT_KEY).unwrap();
        Harness {
            dir,
            cfg,
            fg,
            topics,
            seqs: BTreeMap::new(),
            till_partitions: BTreeMap::new(),
            till_offsets: BTreeMap::new(),
        }
    }

    /// Closes and reopens the processor on the same state directory.
    pub fn reopen(&mut self) {
        // sled must be closed before the same directory is opened again.
        let scratch = tempfile::tempdir().unwrap();
        let placeholder =
            FraudGuard::open(scratch.path(), &self.topics, self.cfg.clone(), REPORT_KEY).unwrap();
        drop(std::mem::replace(&mut self.fg, placeholder));
        self.fg =
            FraudGuard::open(self.dir.path(), &self.topics, self.cfg.clone(), REPORT_KEY).unwrap();
    }

    /// The event as the till published it on `till.events`: JSON, as an outside client writes
    /// it, at the next offset of the till's partition (0 unless `till_partitions` says
    /// otherwise). The record timestamp is the event's `occurred_at` unless `timestamp_ms` says
    /// otherwise. Numbers `till_seq` when it is 0.
    pub fn record(&mut self, mut e: pb::TillEvent, timestamp_ms: Option<i64>) -> Record {
        let seq = self
            .seqs
            .entry((e.store_id.clone(), e.till_id.clone()))
            .or_insert(0);
        if e.till_seq == 0 {
            *seq += 1;
            e.till_seq = *seq;
        } else {
            *seq = (*seq).max(e.till_seq);
        }
        let ts = timestamp_ms.unwrap_or_else(|| ms(&e.occurred_at));
        let till = format!("{}/{}", e.store_id, e.till_id);
        let partition = self.till_partitions.get(&till).copied().unwrap_or(0);
        let offset = self.till_offsets.entry(partition).or_insert(0);
        let raw = Record {
            topic: self.topics.till_events.clone(),
            partition,
            offset: *offset,
            key: Some(till.into_bytes()),
            payload: Some(tillbridge_proto::to_json(&e).into_bytes()),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            timestamp_ms: Some(ts),
        };
        *offset += 1;
        raw
    }

    /// A record of `till.events` partition 0 with any payload, as protobuf.
    pub fn raw_record(&mut self, payload: Option<Vec<u8>>, timestamp_ms: Option<i64>) -> Record {
        let offset = self.till_offsets.entry(0).or_insert(0);
        let rec = Record {
            topic: self.topics.till_events.clone(),
            partition: 0,
            offset: *offset,
            key: Some(b"k".to_vec()),
            payload,
            headers: vec![("content-type".into(), b"application/x-protobuf".to_vec())],
            timestamp_ms,
        };
        *offset += 1;
        rec
    }

    /// Processes `records` as one batch and commits, like the stage loop; returns the alerts.
    pub async fn run(&mut self, records: &[Record]) -> Vec<pb::FraudAlert> {
        let out = self.fg.process(records).unwrap();
        self.fg.commit().await.unwrap();
        decode(&out, &self.topics)
    }

    /// One batch of events whose record timestamps equal their `occurred_at`.
    pub async fn feed(&mut self, events: Vec<pb::TillEvent>) -> Vec<pb::FraudAlert> {
        let recs: Vec<Record> = events.into_iter().map(|e| self.record(e, None)).collect();
        self.run(&recs).await
    }
}

pub fn decode(out: &[tillbridge_core::log::OutRecord], topics: &Topics) -> Vec<pb::FraudAlert> {
    out.iter()
        .map(|o| {
            assert_eq!(o.topic, topics.alerts);
            let a = pb::FraudAlert::decode(o.payload.as_deref().unwrap()).unwrap();
            assert_eq!(o.key, a.store_id.as_bytes(), "alerts are keyed by store id");
            a
        })
        .collect()
}

pub fn of_rule(alerts: &[pb::FraudAlert], rule: pb::AlertRule) -> Vec<pb::FraudAlert> {
    alerts
        .iter()
        .filter(|a| a.rule == rule as i32)
        .cloned()
        .collect()
}
