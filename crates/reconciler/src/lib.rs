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
mod loyalty;
mod model;
mod report;

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
pub use model::TimelineEntry;
pub use report::{Bucket, CaseReport, Report, Summary, Totals};

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

/// Why an input record was skipped. Never holds a coupon code.
#[derive(Debug)]
struct Malformed(String);

impl Malformed {
    /// The reason, with any card number redacted (a decoder's message can quote input).
    fn new(why: impl Into<String>) -> Self {
        let why = why.into();
        Malformed(
            String::from_utf8_lossy(&tillbridge_core::pan::redact(why.as_bytes())).into_owned(),
        )
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

/// Decodes an input message, protobuf or proto3 JSON by the contract's encoding rule. The error
/// never quotes the payload: JSON errors can echo values, and values can be coupon codes.
fn decode_input<M: Message + Default>(
    name: &str,
    r: &Record,
    payload: &[u8],
) -> Result<M, Malformed> {
    match tillbridge_proto::detect_encoding(payload, r.header("content-type")) {
        tillbridge_proto::Encoding::Json => tillbridge_proto::from_json::<M>(name, payload)
            .map_err(|e| Malformed::new(format!("invalid JSON {name} ({})", e.reason))),
        tillbridge_proto::Encoding::Protobuf => {
            M::decode(payload).map_err(|e| Malformed::new(format!("invalid protobuf {name}: {e}")))
        }
    }
}

fn decode_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn encode_json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

fn pb_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A record's timestamp: when it reached Kafka.
fn record_time(r: &Record) -> Option<DateTime<Utc>> {
    r.timestamp_ms.and_then(DateTime::from_timestamp_millis)
}

fn later(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.max(b)))
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.is_empty()).cloned()
}

/// What a compensation says, as the name its id is derived from: the whole content, so one id
/// never carries two meanings.
fn meaning(case_id: &str, fact_id: &str, d: &Desired) -> String {
    format!(
        "{case_id}/{fact_id}/{}/{}/{}/{}/{}/{}",
        d.reason.as_str(),
        d.points,
        d.exposure_minor,
        d.currency,
        d.event_ids.join(","),
        d.decided_at.timestamp_millis()
    )
}

impl Outstanding {
    fn of(action_id: String, d: &Desired) -> Self {
        Outstanding {
            action_id,
            reason: d.reason,
            exposure_minor: d.exposure_minor,
            currency: d.currency.clone(),
            points: d.points,
            event_ids: d.event_ids.clone(),
            decided_at: Some(d.decided_at),
        }
    }
}

/// The case id of a coupon: derived from its keyed fingerprint, so the id does not give the code
/// away to anyone who can guess codes.
fn coupon_case_id(report_key: &str, code: &str) -> String {
    let fp = tillbridge_core::domain::code::fingerprint(report_key.as_bytes(), code);
    ids::derive(&format!("coupon/{fp}"), "case", 0).to_string()
}

fn profile_case_id(profile: &str) -> String {
    ids::derive(&format!("profile/{profile}"), "case", 0).to_string()
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
        if state_dir.exists() {
            // `StateStore::open` takes a store it cannot open for a damaged one and moves it
            // aside; a lock still held by a handle that is closing must not trigger that. A
            // probe that opens and drops the store here releases the lock synchronously.
            match open_when_released(state_dir) {
                Ok(probe) => drop(probe),
                Err(e) => tracing::debug!(error = %e, "probe open failed; the state store decides"),
            }
        }
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

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(v) = self.staged.get(key) {
            return Ok(v.clone());
        }
        let v = self.store.db().get(key).map_err(|e| self.store.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
        tillbridge_core::store::position_key(PREFIX_OFFSET.as_bytes(), topic, partition)
    }

    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Error> {
        let Some(v) = self.get(&Self::offset_key(topic, partition))? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::Corrupt {
            what: "offset",
            detail: format!("{} bytes, expected 8", v.len()),
        })?;
        Ok(Some(i64::from_be_bytes(bytes)))
    }

    /// The ledger stored under `{prefix}{key}`, loaded once per batch into `cache`; `fresh`
    /// when there is none yet.
    fn cached<'a, T: DeserializeOwned>(
        &self,
        cache: &'a mut BTreeMap<String, T>,
        prefix: &str,
        key: &str,
        what: &'static str,
        fresh: impl FnOnce() -> T,
    ) -> Result<&'a mut T, Error> {
        match cache.entry(key.to_owned()) {
            std::collections::btree_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::btree_map::Entry::Vacant(v) => {
                let st = match self.get(format!("{prefix}{key}").as_bytes())? {
                    Some(bytes) => decode_json(what, &bytes)?,
                    None => fresh(),
                };
                Ok(v.insert(st))
            }
        }
    }

    fn coupon<'a>(
        &self,
        cache: &'a mut BTreeMap<String, CouponState>,
        code: &str,
    ) -> Result<&'a mut CouponState, Error> {
        self.cached(cache, PREFIX_COUPON, code, "coupon ledger", || {
            CouponState {
                code: code.to_owned(),
                ..CouponState::default()
            }
        })
    }

    fn profile<'a>(
        &self,
        cache: &'a mut BTreeMap<String, ProfileState>,
        profile: &str,
    ) -> Result<&'a mut ProfileState, Error> {
        self.cached(cache, PREFIX_PROFILE, profile, "profile ledger", || {
            ProfileState {
                profile_id: profile.to_owned(),
                ..ProfileState::default()
            }
        })
    }

    /// Applies one input record to the touched ledgers. `Ok(Err(_))` is a malformed record.
    fn apply(
        &self,
        r: &Record,
        coupons: &mut BTreeMap<String, CouponState>,
        profiles: &mut BTreeMap<String, ProfileState>,
    ) -> Result<Result<(), Malformed>, Error> {
        let key = r
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or("");
        if r.topic == self.topics.redemptions {
            let Some(payload) = &r.payload else {
                return Ok(Err(Malformed::new("redemption fact without payload")));
            };
            let f: pb::RedemptionFact =
                match decode_input("tillbridge.v1.RedemptionFact", r, payload) {
                    Ok(f) => f,
                    Err(e) => return Ok(Err(e)),
                };
            let code = if f.code.is_empty() {
                key
            } else {
                f.code.as_str()
            };
            if code.is_empty() || f.id.is_empty() || f.event_id.is_empty() {
                return Ok(Err(Malformed::new(
                    "redemption fact lacks code, id or event_id",
                )));
            }
            let Some(at) = timestamp(f.occurred_at.as_ref()) else {
                return Ok(Err(Malformed::new(
                    "redemption fact lacks a valid occurred_at",
                )));
            };
            match pb::RedemptionKind::try_from(f.kind) {
                Ok(pb::RedemptionKind::Redeemed) => {
                    if f.discount_minor < 0 {
                        return Ok(Err(Malformed::new(
                            "redemption fact with negative discount",
                        )));
                    }
                    let st = self.coupon(coupons, code)?;
                    st.newest = later(st.newest, at);
                    st.redemptions
                        .entry(f.id.clone())
                        .or_insert_with(|| Redemption {
                            id: f.id.clone(),
                            event_id: f.event_id.clone(),
                            campaign_id: non_empty(f.campaign_id.as_ref()),
                            session_id: f.session_id.clone(),
                            store_id: f.store_id.clone(),
                            till_id: f.till_id.clone(),
                            till_seq: f.till_seq,
                            cashier_id: non_empty(f.cashier_id.as_ref()),
                            profile_id: non_empty(f.profile_id.as_ref()),
                            offline: f.offline,
                            occurred_at: at,
                            discount_minor: f.discount_minor,
                            currency: f.currency.clone(),
                            index: f.index,
                            synced_at: record_time(r),
                        });
                }
                Ok(pb::RedemptionKind::Released) => {
                    if f.session_id.is_empty() {
                        return Ok(Err(Malformed::new("release without session_id")));
                    }
                    let st = self.coupon(coupons, code)?;
                    st.newest = later(st.newest, at);
                    st.releases.entry(f.id.clone()).or_insert_with(|| Release {
                        id: f.id.clone(),
                        event_id: f.event_id.clone(),
                        session_id: f.session_id.clone(),
                        store_id: f.store_id.clone(),
                        till_id: f.till_id.clone(),
                        till_seq: f.till_seq,
                        cashier_id: non_empty(f.cashier_id.as_ref()),
                        offline: f.offline,
                        occurred_at: at,
                        index: f.index,
                        synced_at: record_time(r),
                    });
                }
                _ => {
                    return Ok(Err(Malformed::new(format!(
                        "unknown redemption kind {}",
                        f.kind
                    ))))
                }
            }
        } else if r.topic == self.topics.loyalty {
            let Some(payload) = &r.payload else {
                return Ok(Err(Malformed::new("loyalty fact without payload")));
            };
            let f: pb::LoyaltyFact = match decode_input("tillbridge.v1.LoyaltyFact", r, payload) {
                Ok(f) => f,
                Err(e) => return Ok(Err(e)),
            };
            let profile = if f.profile_id.is_empty() {
                key
            } else {
                f.profile_id.as_str()
            };
            if profile.is_empty() || f.id.is_empty() || f.event_id.is_empty() {
                return Ok(Err(Malformed::new(
                    "loyalty fact lacks profile_id, id or event_id",
                )));
            }
            let Some(at) = timestamp(f.occurred_at.as_ref()) else {
                return Ok(Err(Malformed::new(
                    "loyalty fact lacks a valid occurred_at",
                )));
            };
            let kind = match pb::LoyaltyFactKind::try_from(f.kind) {
                Ok(pb::LoyaltyFactKind::Earned) => LoyaltyKind::Earned,
                Ok(pb::LoyaltyFactKind::RedeemedPoints) => LoyaltyKind::RedeemedPoints,
                Ok(pb::LoyaltyFactKind::Returned) => LoyaltyKind::Returned,
                Ok(pb::LoyaltyFactKind::Cancelled) => LoyaltyKind::Cancelled,
                _ => {
                    return Ok(Err(Malformed::new(format!(
                        "unknown loyalty fact kind {}",
                        f.kind
                    ))))
                }
            };
            if f.points < 0 || f.refund_minor < 0 {
                return Ok(Err(Malformed::new(
                    "loyalty fact with negative points or refund",
                )));
            }
            let st = self.profile(profiles, profile)?;
            st.newest = later(st.newest, at);
            st.facts
                .entry(f.id.clone())
                .or_insert_with(|| LoyaltyEntry {
                    id: f.id.clone(),
                    kind,
                    event_id: f.event_id.clone(),
                    session_id: f.session_id.clone(),
                    original_session_id: non_empty(f.original_session_id.as_ref()),
                    store_id: f.store_id.clone(),
                    till_id: f.till_id.clone(),
                    till_seq: f.till_seq,
                    cashier_id: non_empty(f.cashier_id.as_ref()),
                    offline: f.offline,
                    occurred_at: at,
                    points: f.points,
                    refund_minor: f.refund_minor,
                    sale_total_minor: f.sale_total_minor,
                    currency: f.currency.clone(),
                });
        } else if r.topic == self.topics.coupons {
            let definition = match &r.payload {
                None => None,
                Some(p) => {
                    let d: pb::CouponDefinition =
                        match decode_input("tillbridge.v1.CouponDefinition", r, p) {
                            Ok(d) => d,
                            Err(e) => return Ok(Err(e)),
                        };
                    match tillbridge_proto::coupon_definition(&d) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            return Ok(Err(Malformed::new(format!(
                                "coupon definition rejected: {e}"
                            ))))
                        }
                    }
                }
            };
            // The topic is compacted by code: the key names the coupon, a tombstone has no body.
            let code = if key.is_empty() {
                definition
                    .as_ref()
                    .map(|d| d.code.clone())
                    .unwrap_or_default()
            } else {
                key.to_owned()
            };
            if code.is_empty() {
                return Ok(Err(Malformed::new("coupon definition without a code")));
            }
            // The definition in force judges the whole coupon, as if it had always been (the
            // topic is compacted: only the latest survives a replay).
            self.coupon(coupons, &code)?.definition = definition;
        } else if r.topic == self.topics.loyalty_balances {
            let Some(payload) = &r.payload else {
                return Ok(Ok(()));
            };
            let b: pb::LoyaltyBalance =
                match decode_input("tillbridge.v1.LoyaltyBalance", r, payload) {
                    Ok(b) => b,
                    Err(e) => return Ok(Err(e)),
                };
            let b = match tillbridge_proto::loyalty_balance(&b) {
                Ok(b) => b,
                Err(e) => {
                    return Ok(Err(Malformed::new(format!(
                        "balance snapshot rejected: {e}"
                    ))))
                }
            };
            let st = self.profile(profiles, &b.profile_id)?;
            // The newest snapshot wins whatever the arrival order.
            if st.snapshot.as_ref().is_none_or(|s| b.as_of >= s.as_of) {
                st.snapshot = Some(Snapshot {
                    balance: b.balance,
                    as_of: b.as_of,
                });
            }
        } else {
            return Ok(Err(Malformed::new(
                "record from a topic the reconciler does not read",
            )));
        }
        Ok(Ok(()))
    }

    /// Emits what it takes to bring `comp` to `desired`: retractions first, then new actions.
    /// An action whose content would change in any field is retracted and issued anew.
    fn settle(
        &self,
        comp: &mut Compensations,
        desired: &BTreeMap<String, Desired>,
        case_id: &str,
        key: &str,
        subject: &str,
        out: &mut Vec<OutRecord>,
    ) {
        let same = |d: &Desired, o: &Outstanding| {
            d.reason == o.reason
                && d.points == o.points
                && d.exposure_minor == o.exposure_minor
                && d.currency == o.currency
                && d.event_ids == o.event_ids
                && Some(d.decided_at) == o.decided_at
        };
        let stale: Vec<String> = comp
            .outstanding
            .iter()
            .filter(|(id, o)| desired.get(*id).is_none_or(|d| !same(d, o)))
            .map(|(id, _)| id.clone())
            .collect();
        for fact_id in stale {
            let Some(o) = comp.outstanding.remove(&fact_id) else {
                continue;
            };
            // One retraction per action: its id follows from the action it retracts, and it
            // carries that action's fields, so it reads the same in every run.
            let id = ids::derive(&o.action_id, "retract", 0);
            tracing::info!(case_id, action = %id, retracts = %o.action_id, reason = o.reason.as_str(),
                "compensation no longer due, retracting");
            let action = pb::CompensatingAction {
                id: id.to_string(),
                kind: pb::CompensationKind::Retract as i32,
                case_id: case_id.to_owned(),
                subject: subject.to_owned(),
                reason: o.reason.as_str().to_owned(),
                exposure_minor: o.exposure_minor,
                currency: o.currency.clone(),
                points: o.points,
                event_ids: o.event_ids.clone(),
                retracts: Some(o.action_id.clone()),
                decided_at: o.decided_at.map(pb_timestamp),
            };
            out.push(OutRecord::new(
                &self.topics.compensations,
                key,
                action.encode_to_vec(),
            ));
        }
        for (fact_id, d) in desired {
            if comp.outstanding.contains_key(fact_id) {
                continue;
            }
            // The id names the whole content, so one id never carries two meanings across
            // runs; the revision counts re-issues of that same action after a retraction.
            let meaning = meaning(case_id, fact_id, d);
            let revision = comp.issued.entry(meaning.clone()).or_insert(0);
            let id = ids::derive(&meaning, "compensation", *revision);
            *revision += 1;
            tracing::info!(case_id, action = %id, reason = d.reason.as_str(), "compensation issued");
            let action = pb::CompensatingAction {
                id: id.to_string(),
                kind: if self.review_only.contains(d.reason.as_str()) {
                    pb::CompensationKind::ReviewOnly as i32
                } else {
                    d.reason.action() as i32
                },
                case_id: case_id.to_owned(),
                subject: subject.to_owned(),
                reason: d.reason.as_str().to_owned(),
                exposure_minor: d.exposure_minor,
                currency: d.currency.clone(),
                points: d.points,
                event_ids: d.event_ids.clone(),
                retracts: None,
                decided_at: Some(pb_timestamp(d.decided_at)),
            };
            out.push(OutRecord::new(
                &self.topics.compensations,
                key,
                action.encode_to_vec(),
            ));
            comp.outstanding
                .insert(fact_id.clone(), Outstanding::of(id.to_string(), d));
        }
    }

    /// Judges the touched ledgers, settles their compensations and stages them with their cases.
    fn settle_ledgers(
        &mut self,
        coupons: BTreeMap<String, CouponState>,
        profiles: BTreeMap<String, ProfileState>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), Error> {
        for (code, mut st) in coupons {
            let case_id = coupon_case_id(&self.report_key, &code);
            let eval = coupon::evaluate(&st, self.horizon, &case_id);
            let mut comp = std::mem::take(&mut st.compensations);
            let subject = tillbridge_core::domain::code::mask(&code);
            if self.learned.outstanding.contains_key(&code) || !self.learned.ever.is_empty() {
                self.adopt_learned(&mut comp, &eval.desired, &case_id, &code, &subject, out);
            }
            self.settle(&mut comp, &eval.desired, &case_id, &code, &subject, out);
            st.compensations = comp;
            self.stage_case(&case_id, eval.case.as_ref())?;
            let value = encode_json("coupon ledger", &st)?;
            self.staged
                .insert(format!("{PREFIX_COUPON}{code}").into_bytes(), Some(value));
        }
        for (profile, mut st) in profiles {
            let case_id = profile_case_id(&profile);
            let eval = loyalty::evaluate(&st, self.horizon, &case_id);
            let mut comp = std::mem::take(&mut st.compensations);
            if self.learned.outstanding.contains_key(&profile) || !self.learned.ever.is_empty() {
                self.adopt_learned(&mut comp, &eval.desired, &case_id, &profile, &profile, out);
            }
            self.settle(&mut comp, &eval.desired, &case_id, &profile, &profile, out);
            st.compensations = comp;
            self.stage_case(&case_id, eval.case.as_ref())?;
            let value = encode_json("profile ledger", &st)?;
            self.staged.insert(
                format!("{PREFIX_PROFILE}{profile}").into_bytes(),
                Some(value),
            );
        }
        Ok(())
    }

    fn stage_case(&mut self, case_id: &str, case: Option<&Case>) -> Result<(), Error> {
        let key = format!("{PREFIX_CASE}{case_id}").into_bytes();
        let value = case.map(|c| encode_json("case", c)).transpose()?;
        self.staged.insert(key, value);
        Ok(())
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

/// How long opening waits for the lock of a just-closed state: a dropped sled handle can live on
/// for a moment in sled's background threads, holding the file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens sled at `state_dir`, waiting up to [`LOCK_WAIT`] while another handle holds its lock.
fn open_when_released(state_dir: &Path) -> Result<sled::Db, Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // sled 0.34 can panic on some damaged files; that must be an error, not a crash.
        let opened =
            std::panic::catch_unwind(|| sled::open(state_dir)).map_err(|_| Error::Corrupt {
                what: "state store",
                detail: "sled panicked while opening the store".into(),
            })?;
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                tracing::debug!("state store still locked by a closing handle, waiting");
                std::thread::sleep(LOCK_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the reconciler's state in `state_dir` and builds the report. Call it while no
/// [`Reconciler`] has the state open (sled takes an exclusive lock).
pub fn report(state_dir: &Path, cfg: &ReconcilerConfig) -> Result<Report, Error> {
    if !state_dir.exists() {
        return Err(Error::NoState(state_dir.to_owned()));
    }
    // Opened directly rather than through `StateStore::open`, which would move a store of another
    // layout aside: a report must never change the state it reads.
    let db = open_when_released(state_dir)?;
    match db.get(FORMAT_KEY)? {
        Some(v) if v.as_ref() == FORMAT.as_bytes() => {}
        _ => {
            return Err(Error::Corrupt {
                what: "state format",
                detail: format!(
                    "{} is not a reconciler state of layout {FORMAT}",
                    state_dir.display()
                ),
            })
        }
    }
    let mut cases = Vec::new();
    for item in db.scan_prefix(PREFIX_CASE.as_bytes()) {
        let (_, v) = item?;
        cases.push(decode_json::<Case>("case", &v)?);
    }
    Ok(Report::build(cases, cfg))
}
