//! Shared helpers: hand-built input records and a harness that drives the reconciler directly
//! (no broker) and keeps the set of outstanding compensations from its outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::stage::Processor;
use tillbridge_proto::pb;
use tillbridge_reconciler::Reconciler;
use tillbridge_reconciler::ReconcilerConfig;

/// Base event time: 2024-06-01T12:00:00Z.
pub const T0: i64 = 1_717_243_200;

/// An event time `min` minutes after [`T0`].
pub fn at(min: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: T0 + min * 60,
        nanos: 0,
    }
}

/// The fingerprint key of every test.
pub const KEY: &str = "test-report-key";

pub fn cfg() -> ReconcilerConfig {
    ReconcilerConfig {
        settlement_horizon: Duration::from_secs(72 * 3600),
        ..ReconcilerConfig::default()
    }
}

/// A REDEEMED fact: `n` names the event, `min` its event time.
pub fn redeem(n: u32, code: &str, store: &str, min: i64, discount: i64) -> pb::RedemptionFact {
    pb::RedemptionFact {
        id: format!("fact-{n}"),
        kind: pb::RedemptionKind::Redeemed as i32,
        event_id: format!("event-{n}"),
        code: code.into(),
        campaign_id: None,
        session_id: format!("session-{n}"),
        store_id: store.into(),
        till_id: "till-1".into(),
        till_seq: u64::from(n),
        cashier_id: Some("cashier-1".into()),
        profile_id: None,
        offline: false,
        occurred_at: Some(at(min)),
        discount_minor: discount,
        currency: "EUR".into(),
        index: 0,
    }
}

/// A RELEASED fact for the session of redemption `n`, caused by event `by` at `min`.
pub fn release(by: u32, n: u32, code: &str, min: i64) -> pb::RedemptionFact {
    pb::RedemptionFact {
        id: format!("release-{by}-{n}"),
        kind: pb::RedemptionKind::Released as i32,
        event_id: format!("event-{by}"),
        session_id: format!("session-{n}"),
        discount_minor: 0,
        ..redeem(by, code, "store-1", min, 0)
    }
}

pub fn coupon(code: &str, usage_limit: u32, per_profile_limit: u32) -> pb::CouponDefinition {
    pb::CouponDefinition {
        code: code.into(),
        campaign_id: "campaign-1".into(),
        usage_limit,
        per_profile_limit,
        valid_from: None,
        valid_until: None,
        offline_allowed: true,
    }
}

pub fn loyalty(
    n: u32,
    profile: &str,
    kind: pb::LoyaltyFactKind,
    session: u32,
    min: i64,
    points: i64,
) -> pb::LoyaltyFact {
    pb::LoyaltyFact {
        id: format!("lfact-{n}"),
        kind: kind as i32,
        event_id: format!("event-{n}"),
        profile_id: profile.into(),
        program_id: "program-1".into(),
        session_id: format!("session-{session}"),
        original_session_id: None,
        store_id: "store-1".into(),
        till_id: "till-1".into(),
        till_seq: u64::from(n),
        cashier_id: None,
        offline: true,
        occurred_at: Some(at(min)),
        points,
        refund_minor: 0,
        sale_total_minor: 1000,
        currency: "EUR".into(),
    }
}

pub fn balance(profile: &str, value: i64, min: i64) -> pb::LoyaltyBalance {
    pb::LoyaltyBalance {
        profile_id: profile.into(),
        program_id: "program-1".into(),
        balance: value,
        as_of: Some(at(min)),
    }
}

/// An input message, before it gets a position.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Redemption(pb::RedemptionFact),
    Coupon(pb::CouponDefinition),
    Tombstone(String),
    Loyalty(pb::LoyaltyFact),
    Balance(pb::LoyaltyBalance),
    Raw {
        topic: String,
        key: String,
        payload: Vec<u8>,
    },
    /// An input whose record timestamp (sync time, ms) is given.
    Synced(Box<Input>, i64),
}

impl Input {
    /// The event time of a fact, in ms.
    fn event_time_ms(&self) -> Option<i64> {
        let ts = match self {
            Input::Synced(..) => return None,
            Input::Redemption(f) => f.occurred_at.as_ref(),
            Input::Loyalty(f) => f.occurred_at.as_ref(),
            _ => None,
        }?;
        Some(ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000))
    }

    fn parts(&self, t: &Topics) -> (String, String, Option<Vec<u8>>) {
        match self {
            Input::Redemption(f) => (
                t.redemptions.clone(),
                f.code.clone(),
                Some(f.encode_to_vec()),
            ),
            Input::Coupon(c) => (t.coupons.clone(), c.code.clone(), Some(c.encode_to_vec())),
            Input::Tombstone(code) => (t.coupons.clone(), code.clone(), None),
            Input::Loyalty(f) => (
                t.loyalty.clone(),
                f.profile_id.clone(),
                Some(f.encode_to_vec()),
            ),
            Input::Balance(b) => (
                t.loyalty_balances.clone(),
                b.profile_id.clone(),
                Some(b.encode_to_vec()),
            ),
            Input::Raw {
                topic,
                key,
                payload,
            } => (topic.clone(), key.clone(), Some(payload.clone())),
            Input::Synced(i, _) => i.parts(t),
        }
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Drives one reconciler over hand-built records and tracks what its outputs leave outstanding.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub topics: Topics,
    pub cfg: ReconcilerConfig,
    pub rec: Option<Reconciler>,
    next_offset: BTreeMap<String, i64>,
    /// Every record fed so far, with its position, for replays.
    pub fed: Vec<Record>,
    /// Outstanding compensations by action id.
    pub outstanding: BTreeMap<String, pb::CompensatingAction>,
    /// Every action emitted, in order.
    pub actions: Vec<pb::CompensatingAction>,
    /// Every record written to the compensations topic, in order.
    pub emitted: Vec<OutRecord>,
    /// The newest event time fed: the record timestamp of the next records.
    clock_ms: Option<i64>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_cfg(cfg())
    }

    pub fn with_cfg(cfg: ReconcilerConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let topics = Topics::default();
        let rec = Reconciler::open(&dir.path().join("state"), &topics, &cfg, KEY).expect("open");
        Harness {
            dir,
            topics,
            cfg,
            rec: Some(rec),
            next_offset: BTreeMap::new(),
            fed: Vec::new(),
            outstanding: BTreeMap::new(),
            actions: Vec::new(),
            emitted: Vec::new(),
            clock_ms: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Gives each input the next offset of its topic (partition 0) and a record timestamp: the
    /// newest event time fed so far (a fact syncs no earlier than it happened, and a late one
    /// syncs "now").
    pub fn records(&mut self, inputs: &[Input]) -> Vec<Record> {
        inputs
            .iter()
            .map(|i| {
                if let Some(t) = i.event_time_ms() {
                    self.clock_ms = Some(self.clock_ms.map_or(t, |c| c.max(t)));
                }
                let (topic, key, payload) = i.parts(&self.topics);
                let o = self.next_offset.entry(topic.clone()).or_insert(0);
                let r = Record {
                    topic,
                    partition: 0,
                    offset: *o,
                    key: Some(key.into_bytes()),
                    payload,
                    headers: Vec::new(),
                    timestamp_ms: match i {
                        Input::Synced(_, at) => Some(*at),
                        _ => self.clock_ms,
                    },
                };
                *o += 1;
                r
            })
            .collect()
    }

    /// Processes `inputs` as one batch and commits; returns the actions emitted.
    pub fn feed(&mut self, inputs: &[Input]) -> Vec<pb::CompensatingAction> {
        let records = self.records(inputs);
        self.fed.extend(records.iter().cloned());
        self.run(&records)
    }

    /// Processes already positioned records as one batch and commits.
    pub fn run(&mut self, records: &[Record]) -> Vec<pb::CompensatingAction> {
        let rec = self.rec.as_mut().expect("open reconciler");
        let out = rec.process(records).expect("process");
        block_on(rec.commit()).expect("commit");
        self.absorb(&out)
    }

    pub fn absorb(&mut self, out: &[OutRecord]) -> Vec<pb::CompensatingAction> {
        let mut actions = Vec::new();
        for o in out {
            assert_eq!(o.topic, self.topics.compensations);
            let a = pb::CompensatingAction::decode(o.payload.as_deref().expect("payload"))
                .expect("decode");
            if a.kind == pb::CompensationKind::Retract as i32 {
                let target = a.retracts.clone().expect("retract names its target");
                assert!(
                    self.outstanding.remove(&target).is_some(),
                    "retract of an unknown action"
                );
            } else {
                assert!(
                    self.outstanding.insert(a.id.clone(), a.clone()).is_none(),
                    "action id reused"
                );
            }
            self.actions.push(a.clone());
            self.emitted.push(o.clone());
            actions.push(a);
        }
        actions
    }

    /// Outstanding actions as (case, kind, reason, first event id, exposure, points), sorted: what
    /// must not depend on arrival order.
    pub fn outstanding_set(&self) -> Vec<(String, i32, String, String, i64, i64)> {
        let mut v: Vec<_> = self
            .outstanding
            .values()
            .map(|a| {
                (
                    a.case_id.clone(),
                    a.kind,
                    a.reason.clone(),
                    a.event_ids.first().cloned().unwrap_or_default(),
                    a.exposure_minor,
                    a.points,
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Outstanding (reason, event id of the redemption acted on), sorted.
    pub fn outstanding_reasons(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .outstanding
            .values()
            .map(|a| {
                (
                    a.reason.clone(),
                    a.event_ids.first().cloned().unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Closes the reconciler and returns the report JSON of its state.
    pub fn close_and_report(&mut self) -> tillbridge_reconciler::Report {
        self.rec = None;
        tillbridge_reconciler::report(&self.state_dir(), &self.cfg, KEY).expect("report")
    }

    /// Wipes the state and restores it as `tillbridge run` does: learn what the compensations
    /// topic holds, replay every input fed so far, then emit only the difference.
    pub fn wipe_and_restore(&mut self) {
        self.rec = None;
        std::fs::remove_dir_all(self.state_dir()).expect("wipe");
        self.restore();
    }

    /// Processes `batches` and sends their outputs without committing the state, then dies (the
    /// reconciler is dropped, never closed) and restarts on the intact state as `tillbridge run`
    /// does: the state was not closed cleanly, so it is restored from the topics.
    pub fn kill_after_sending(&mut self, batches: &[Vec<Input>]) {
        for b in batches {
            let records = self.records(b);
            self.fed.extend(records.iter().cloned());
            let out = self
                .rec
                .as_mut()
                .expect("open reconciler")
                .process(&records)
                .expect("process");
            self.absorb(&out);
        }
        self.rec = None;
        self.restore();
    }

    /// Opens the state, which must need a restore, and restores it: learns what the
    /// compensations topic holds, replays every input fed so far (the state skips what it
    /// holds), then emits only the difference.
    fn restore(&mut self) {
        let mut rec =
            Reconciler::open(&self.state_dir(), &self.topics, &self.cfg, KEY).expect("open");
        assert!(rec.needs_restore().expect("needs_restore"));
        let emitted: Vec<Record> = self
            .emitted
            .iter()
            .enumerate()
            .map(|(i, o)| Record {
                topic: o.topic.clone(),
                partition: 0,
                offset: i as i64,
                key: Some(o.key.clone()),
                payload: o.payload.clone(),
                headers: o.headers.clone(),
                timestamp_ms: o.timestamp_ms,
            })
            .collect();
        rec.begin_restore(&emitted);
        let quiet = rec.process(&self.fed).expect("replay");
        assert!(quiet.is_empty(), "a restoring reconciler emits nothing");
        block_on(rec.commit()).expect("commit");
        let out = rec.finish_restore().expect("finish_restore");
        block_on(rec.commit()).expect("commit");
        self.rec = Some(rec);
        self.absorb(&out);
    }

    /// Stops the reconciler (closing its state, cleanly when it can) and opens its state again.
    pub fn reopen(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            block_on(rec.close()).expect("close");
        }
        self.rec = Some(
            Reconciler::open(&self.state_dir(), &self.topics, &self.cfg, KEY).expect("reopen"),
        );
    }
}

pub fn path_text(p: &Path) -> String {
    std::fs::read_to_string(p).expect("read")
}
