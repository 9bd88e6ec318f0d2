//! The reconciler: event-time coupon and loyalty ledgers that find double redemptions and
//! overdrawn balances after the fact, and say what must be done about them.
//!
//! Parts:
//! - [`Reconciler`]: the stage's [`Processor`]. It reads redemption and loyalty facts from the
//!   router, coupon definitions and balance snapshots from the promotion core, keeps one ledger
//!   per coupon code and per loyalty profile in sled, and emits [`pb::CompensatingAction`]s.
//! - The coupon ledger (`coupon`): ordering rule, limits, validity, offline policy, releases,
//!   settlement horizon and finality.
//! - The loyalty ledger (`loyalty`): balance over event time from the latest snapshot, pro-rata
//!   return rollback, cancellation rollback, points deficits.
//! - Cases: one per coupon or profile incident, with status, exposure and a full timeline,
//!   persisted next to the ledgers.
//! - [`report()`] and [`Report`]: JSON, CSV and self-contained HTML for fraud analysts.
//!
//! **Delivery.** `process` stages every state change in memory; `commit` writes the state and the
//! input offsets it reflects in one atomic sled batch, after the stage has made the outputs
//! durable. A record at or below a stored offset is skipped, so a replay after a crash never
//! applies a fact twice; a fact delivered twice under different offsets is kept once by its id.
//! The outputs of a replayed batch carry the same deterministic ids, so consumers can drop them.
//!
//! **Compensations and retractions.** Each compensation acts on one fact (a redemption) of one
//! case; its id is UUIDv5 over the case id, the fact id, its whole content (reason, points,
//! exposure, the event ids it rests on, `decided_at`) and a revision, so an id never names two
//! different actions, whatever order the facts came in. `decided_at` is the sync time of the
//! newest fact the decision rests on, not the moment it was computed. When a later
//! fact (a late offline sale, a release, a definition change) means a compensation is no longer
//! due, a RETRACT naming it is emitted (its id follows from the retracted action's); if the same
//! action becomes due again, it is re-issued under the next revision, so the re-issue has a new
//! id.
//!
//! **Worked example** (usage limit 1, horizon 72 h). Store A redeems code X at 10:00 while
//! offline; store B redeems it online at 10:05. B's fact arrives first: it stands, nothing is
//! emitted. A syncs at 14:00: in event time A comes first, so A stands and B becomes OVER_LIMIT:
//! one REVERSE_COUPON_REDEMPTION for B (exposure = B's discount). If A's sale is then cancelled,
//! a RELEASED fact frees the slot: B stands again and a RETRACT names the compensation for B.
//! Now let a fact of the coupon sync more than 72 h after B did, so B's standing is final, and
//! a redemption C from 09:55 sync days later. In event time C comes first, but it cannot
//! displace a final redemption: C itself is the over-redemption and gets the compensation.
//! Finality is judged in sync time (record timestamps), never by when facts are read, so the
//! outcome is the same live, as a backlog or in a replay (docs/RECONCILER.md).
//!
//! Coupon codes are bearer secrets: outputs carry a masked code, reports a masked code and a
//! keyed fingerprint, logs neither. The codes live only in the state store and as record keys.

mod coupon;
mod error;
mod input;
mod loyalty;
mod model;
mod report;
mod settle;
mod state;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tillbridge_core::config::{ReconcilerConfig, Topics};
use tillbridge_core::ids;
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::stage::Processor;
use tillbridge_core::store::StateStore;
use tillbridge_proto::pb;

pub use error::Error;
pub use state::report;

use input::*;
pub use model::TimelineEntry;
pub use report::{Bucket, CaseReport, Report, Summary, Totals};
use settle::*;
use state::*;

use coupon::Desired;
use model::{
    Case, Compensations, CouponState, LoyaltyEntry, LoyaltyKind, Outstanding, ProfileState,
    Redemption, Release, Snapshot,
};

/// The state layout version; another value makes the store rebuild from the topics.
const FORMAT: &str = "tillbridge-reconciler-v3";
/// The marker key `StateStore` writes; checked by [`report()`], which must not move a store aside.
const FORMAT_KEY: &[u8] = b"__tillbridge_format";
const PREFIX_OFFSET: &str = "off/";
const PREFIX_COUPON: &str = "cpn/";
const PREFIX_PROFILE: &str = "pro/";
const PREFIX_CASE: &str = "case/";
/// Present while a restore has begun and not finished (it survives a crash in between).
const RESTORE_MARKER: &[u8] = b"restore/pending";

/// The reconciler stage. See the crate documentation.
pub struct Reconciler {
    store: StateStore,
    topics: Topics,
    horizon: chrono::Duration,
    report_key: String,
    /// Reasons answered with REVIEW_ONLY instead of an automatic action (policy).
    review_only: std::collections::BTreeSet<String>,
    /// State changes of processed batches not yet committed: key to new value (`None` deletes).
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    malformed: u64,
    /// While restoring, facts are applied to the ledgers but nothing is settled or emitted.
    restoring: bool,
    /// What the compensations topic says was emitted before (read by a restore).
    learned: Learned,
}

/// The compensations a previous life of the stage emitted, read back from its output topic.
#[derive(Debug, Default)]
struct Learned {
    /// Actions still outstanding (issued, not retracted), per record key (code or profile id),
    /// by action id.
    outstanding: BTreeMap<String, BTreeMap<String, pb::CompensatingAction>>,
    /// Every action id ever issued.
    ever: std::collections::BTreeSet<String>,
}

// By hand: the report key is a secret, and the staged values and sled's own Debug (which dumps
// every entry) hold coupon codes.
impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("rebuilt", &self.store.rebuilt())
            .field("horizon", &self.horizon)
            .field("staged", &self.staged.len())
            .field("malformed", &self.malformed)
            .field("restoring", &self.restoring)
            .finish_non_exhaustive()
    }
}

/// The inputs of the reconciler (also [`Reconciler::input_topics`]).
pub fn input_topics(topics: &Topics) -> Vec<String> {
    vec![
        topics.redemptions.clone(),
        topics.loyalty.clone(),
        topics.coupons.clone(),
        topics.loyalty_balances.clone(),
    ]
}

impl Reconciler {
    /// Opens (or creates) the reconciler's state in `state_dir`.
    pub fn open(
        state_dir: &Path,
        topics: &Topics,
        cfg: &ReconcilerConfig,
    ) -> Result<Reconciler, Error> {
        let horizon = chrono::Duration::from_std(cfg.settlement_horizon).map_err(|_| {
            tillbridge_core::Error::Config("reconciler.settlement_horizon is too large".into())
        })?;
        // `StateStore::open` waits for a closing handle's lock, and never takes a held lock for
        // damage.
        let store = StateStore::open(state_dir, FORMAT)?;
        Ok(Reconciler {
            store,
            topics: topics.clone(),
            horizon,
            report_key: cfg.report_key.clone(),
            review_only: cfg.review_only.iter().cloned().collect(),
            staged: BTreeMap::new(),
            malformed: 0,
            restoring: false,
            learned: Learned::default(),
        })
    }

    /// The topics the reconciler reads.
    pub fn input_topics(topics: &Topics) -> Vec<String> {
        input_topics(topics)
    }

    /// The compacted inputs (coupon definitions, balance snapshots), read to their end before
    /// any fact is judged.
    pub fn table_topics(topics: &Topics) -> Vec<String> {
        vec![topics.coupons.clone(), topics.loyalty_balances.clone()]
    }

    /// Whether the state must be restored from the topics before the stage runs: it is new or
    /// was rebuilt, or a restore began and did not finish. See [`Reconciler::begin_restore`].
    pub fn needs_restore(&self) -> Result<bool, Error> {
        Ok(self.store.fresh() || self.get(RESTORE_MARKER)?.is_some())
    }

    /// Starts a restore: `emitted` are the records of the compensations topic (what an earlier
    /// life of the stage emitted). Until [`Reconciler::finish_restore`], `process` applies facts
    /// to the ledgers and emits nothing.
    pub fn begin_restore(&mut self, emitted: &[Record]) {
        for r in emitted {
            let Some(payload) = r.payload.as_deref() else {
                continue;
            };
            let Ok(a) = pb::CompensatingAction::decode(payload) else {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    "unreadable compensation skipped while restoring");
                continue;
            };
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let outstanding = self.learned.outstanding.entry(key).or_default();
            match &a.retracts {
                Some(target) if a.kind == pb::CompensationKind::Retract as i32 => {
                    outstanding.remove(target);
                }
                _ => {
                    self.learned.ever.insert(a.id.clone());
                    outstanding.insert(a.id.clone(), a);
                }
            }
        }
        self.learned.outstanding.retain(|_, v| !v.is_empty());
        self.restoring = true;
        self.staged
            .insert(RESTORE_MARKER.to_vec(), Some(Vec::new()));
    }

    /// Ends a restore: judges every ledger once against what was emitted before and returns only
    /// the difference (actions still due are adopted with their ids, those no longer due are
    /// retracted, new ones issued). The caller sends the outputs, then commits.
    pub fn finish_restore(&mut self) -> Result<Vec<OutRecord>, Error> {
        self.restoring = false;
        let mut out = Vec::new();
        let mut coupons: BTreeMap<String, CouponState> = BTreeMap::new();
        let mut profiles: BTreeMap<String, ProfileState> = BTreeMap::new();
        for prefix in [PREFIX_COUPON, PREFIX_PROFILE] {
            let keys: Vec<String> = self
                .store
                .db()
                .scan_prefix(prefix.as_bytes())
                .keys()
                .filter_map(|k| k.ok())
                .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
                .chain(
                    self.staged
                        .keys()
                        .filter(|k| k.starts_with(prefix.as_bytes()))
                        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned()),
                )
                .collect();
            for key in keys {
                if prefix == PREFIX_COUPON {
                    self.coupon(&mut coupons, &key)?;
                } else {
                    self.profile(&mut profiles, &key)?;
                }
            }
        }
        self.settle_ledgers(coupons, profiles, &mut out)?;
        self.learned = Learned::default();
        self.staged.insert(RESTORE_MARKER.to_vec(), None);
        Ok(out)
    }

    /// Seeds `comp` (a ledger's compensations, empty after a rebuild) with the actions an
    /// earlier life emitted under `key`: one still desired keeps its id; the others are
    /// retracted.
    fn adopt_learned(
        &mut self,
        comp: &mut Compensations,
        desired: &BTreeMap<String, Desired>,
        case_id: &str,
        key: &str,
        subject: &str,
        out: &mut Vec<OutRecord>,
    ) {
        let mut learned = self.learned.outstanding.remove(key).unwrap_or_default();
        for (fact_id, d) in desired {
            let meaning = meaning(case_id, fact_id, d);
            let mut revision = 0;
            loop {
                let id = ids::derive(&meaning, "compensation", revision).to_string();
                if !self.learned.ever.contains(&id) {
                    break;
                }
                revision += 1;
                if learned.remove(&id).is_some() {
                    comp.outstanding
                        .insert(fact_id.clone(), Outstanding::of(id, d));
                    break;
                }
            }
            comp.issued.insert(meaning, revision);
        }
        for (_, a) in learned {
            tracing::info!(case_id, retracts = %a.id, "compensation of an earlier run no longer due, retracting");
            let retract = pb::CompensatingAction {
                id: ids::derive(&a.id, "retract", 0).to_string(),
                kind: pb::CompensationKind::Retract as i32,
                case_id: case_id.to_owned(),
                subject: subject.to_owned(),
                retracts: Some(a.id.clone()),
                ..a
            };
            out.push(OutRecord::new(
                &self.topics.compensations,
                key,
                retract.encode_to_vec(),
            ));
        }
    }

    /// Whether the state was found damaged and recreated empty: the caller must replay the input
    /// topics from the beginning.
    pub fn rebuilt(&self) -> bool {
        self.store.rebuilt()
    }

    /// Input records skipped as malformed since this reconciler was opened.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl Processor for Reconciler {
    type Error = Error;

    fn fresh_state(&self) -> bool {
        self.store.fresh()
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Error> {
        let mut coupons: BTreeMap<String, CouponState> = BTreeMap::new();
        let mut profiles: BTreeMap<String, ProfileState> = BTreeMap::new();
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in batch {
            let done = match offsets.get(&(r.topic.clone(), r.partition)) {
                Some(o) => Some(*o),
                None => self.stored_offset(&r.topic, r.partition)?,
            };
            if done.is_some_and(|o| r.offset <= o) {
                tracing::debug!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    "record already reflected in the state, skipped");
                continue;
            }
            offsets.insert((r.topic.clone(), r.partition), r.offset);
            if let Err(Malformed(why)) = self.apply(r, &mut coupons, &mut profiles)? {
                self.malformed += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, reason = %why,
                    "malformed input record skipped");
            }
        }

        let mut out = Vec::new();
        if self.restoring {
            for (code, st) in coupons {
                let value = encode_json("coupon ledger", &st)?;
                self.staged
                    .insert(format!("{PREFIX_COUPON}{code}").into_bytes(), Some(value));
            }
            for (profile, st) in profiles {
                let value = encode_json("profile ledger", &st)?;
                self.staged.insert(
                    format!("{PREFIX_PROFILE}{profile}").into_bytes(),
                    Some(value),
                );
            }
        } else {
            self.settle_ledgers(coupons, profiles, &mut out)?;
        }
        for ((topic, partition), offset) in offsets {
            self.staged.insert(
                Self::offset_key(&topic, partition),
                Some(offset.to_be_bytes().to_vec()),
            );
        }
        Ok(out)
    }

    fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        let mut out = BTreeMap::new();
        for item in self.store.db().scan_prefix(PREFIX_OFFSET.as_bytes()) {
            let (k, v) = item.map_err(|e| self.store.err(e))?;
            let Some((topic, partition)) =
                tillbridge_core::store::parse_position_key(&k[PREFIX_OFFSET.len()..])
            else {
                continue;
            };
            let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| Error::Corrupt {
                what: "offset",
                detail: format!("{} bytes, expected 8", v.len()),
            })?;
            out.insert((topic, partition), i64::from_be_bytes(bytes) + 1);
        }
        Ok(out)
    }

    async fn commit(&mut self) -> Result<(), Error> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(&mut self.staged) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.store
            .db()
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        self.store.flush().await?;
        Ok(())
    }
}
