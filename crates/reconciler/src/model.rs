//! The reconciler's persisted state: one entry per coupon, per profile and per open case, stored
//! as JSON in sled. Facts are kept by their id, so a duplicate delivery overwrites nothing.
//! Also what judging a ledger gives ([`Evaluation`]), shared by the coupon and loyalty ledgers.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tillbridge_core::domain::CouponDefinition;
use tillbridge_proto::pb;

/// Why a redemption is compensated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Reason {
    OverLimit,
    PerProfileLimit,
    OutsideValidity,
    OfflineNotAllowed,
    UnknownCoupon,
    PointsDeficit,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::OverLimit => "OVER_LIMIT",
            Reason::PerProfileLimit => "PER_PROFILE_LIMIT",
            Reason::OutsideValidity => "OUTSIDE_VALIDITY",
            Reason::OfflineNotAllowed => "OFFLINE_NOT_ALLOWED",
            Reason::UnknownCoupon => "UNKNOWN_COUPON",
            Reason::PointsDeficit => "POINTS_DEFICIT",
        }
    }

    /// The action a violation calls for. An unknown coupon is only reviewed: the reconciler does
    /// not guess what the catalog would have said.
    pub(crate) fn action(self) -> pb::CompensationKind {
        match self {
            Reason::OverLimit
            | Reason::PerProfileLimit
            | Reason::OutsideValidity
            | Reason::OfflineNotAllowed => pb::CompensationKind::ReverseCouponRedemption,
            Reason::UnknownCoupon => pb::CompensationKind::ReviewOnly,
            Reason::PointsDeficit => pb::CompensationKind::ClawbackPoints,
        }
    }
}

/// The ledger's order of events: event time, then store, till, till sequence and event id; the
/// position in the sale and the fact id only separate facts of one event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OrderKey<'a> {
    pub(crate) at: DateTime<Utc>,
    pub(crate) store: &'a str,
    pub(crate) till: &'a str,
    pub(crate) seq: u64,
    pub(crate) event: &'a str,
    pub(crate) index: u32,
    pub(crate) id: &'a str,
}

/// A coupon applied in a sale (`REDEEMED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Redemption {
    pub(crate) id: String,
    pub(crate) event_id: String,
    pub(crate) campaign_id: Option<String>,
    pub(crate) session_id: String,
    pub(crate) store_id: String,
    pub(crate) till_id: String,
    pub(crate) till_seq: u64,
    pub(crate) cashier_id: Option<String>,
    pub(crate) profile_id: Option<String>,
    pub(crate) offline: bool,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) discount_minor: i64,
    pub(crate) currency: String,
    pub(crate) index: u32,
    /// When the fact reached Kafka (its record timestamp, that of the till record it came
    /// from): the settlement horizon counts from here.
    #[serde(default)]
    pub(crate) synced_at: Option<DateTime<Utc>>,
}

/// The session that redeemed a coupon was cancelled or fully returned (`RELEASED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Release {
    pub(crate) id: String,
    pub(crate) event_id: String,
    pub(crate) session_id: String,
    pub(crate) store_id: String,
    pub(crate) till_id: String,
    pub(crate) till_seq: u64,
    pub(crate) cashier_id: Option<String>,
    pub(crate) offline: bool,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) index: u32,
    /// When the fact reached Kafka (see [`Redemption::synced_at`]).
    #[serde(default)]
    pub(crate) synced_at: Option<DateTime<Utc>>,
}

/// The sync time and ledger order of a coupon fact (a redemption or a release): both read the
/// same fields of either.
macro_rules! coupon_fact {
    ($fact:ty) => {
        impl $fact {
            /// The sync time, or the event time for a record without a timestamp.
            pub(crate) fn synced(&self) -> DateTime<Utc> {
                self.synced_at.unwrap_or(self.occurred_at)
            }

            pub(crate) fn key(&self) -> OrderKey<'_> {
                OrderKey {
                    at: self.occurred_at,
                    store: &self.store_id,
                    till: &self.till_id,
                    seq: self.till_seq,
                    event: &self.event_id,
                    index: self.index,
                    id: &self.id,
                }
            }
        }
    };
}

coupon_fact!(Redemption);
coupon_fact!(Release);

/// A limit decision taken when a redemption became final (see `coupon`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Frozen {
    Stands,
    OverLimit,
    PerProfileLimit,
}

/// A compensation the current ledger calls for, keyed elsewhere by the fact it acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) reason: Reason,
    pub(crate) exposure_minor: i64,
    pub(crate) currency: String,
    pub(crate) points: i64,
    pub(crate) event_ids: Vec<String>,
    /// When the newest fact the decision rests on synced: a function of the facts named, so
    /// the same action carries the same time in every run.
    pub(crate) decided_at: DateTime<Utc>,
}

/// What judging a ledger (coupon or profile) gives: the compensations due, by the fact they act
/// on, and the case, if there is one.
#[derive(Debug)]
pub(crate) struct Evaluation {
    pub(crate) desired: BTreeMap<String, Desired>,
    pub(crate) case: Option<Case>,
}

/// A compensation that was emitted and not retracted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outstanding {
    pub(crate) action_id: String,
    pub(crate) reason: Reason,
    pub(crate) exposure_minor: i64,
    pub(crate) currency: String,
    pub(crate) points: i64,
    pub(crate) event_ids: Vec<String>,
    #[serde(default)]
    pub(crate) decided_at: Option<DateTime<Utc>>,
}

/// Compensations of one subject (a coupon or a profile), keyed by the fact id they act on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Compensations {
    pub(crate) outstanding: BTreeMap<String, Outstanding>,
    /// How many compensations were ever issued per fact, reason and points: the next one's
    /// revision.
    pub(crate) issued: BTreeMap<String, u32>,
}

/// Everything known about one coupon code.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CouponState {
    pub(crate) code: String,
    pub(crate) definition: Option<CouponDefinition>,
    pub(crate) redemptions: BTreeMap<String, Redemption>,
    pub(crate) releases: BTreeMap<String, Release>,
    /// Newest event time seen for this coupon.
    pub(crate) newest: Option<DateTime<Utc>>,
    pub(crate) compensations: Compensations,
}

impl CouponState {
    /// The newest sync time among the coupon's facts: how far its own history reaches.
    pub(crate) fn synced_now(&self) -> Option<DateTime<Utc>> {
        self.redemptions
            .values()
            .map(Redemption::synced)
            .chain(self.releases.values().map(Release::synced))
            .max()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum LoyaltyKind {
    Earned,
    RedeemedPoints,
    Returned,
    Cancelled,
}

impl LoyaltyKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LoyaltyKind::Earned => "EARNED",
            LoyaltyKind::RedeemedPoints => "REDEEMED_POINTS",
            LoyaltyKind::Returned => "RETURNED",
            LoyaltyKind::Cancelled => "CANCELLED",
        }
    }
}

/// One loyalty fact of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoyaltyEntry {
    pub(crate) id: String,
    pub(crate) kind: LoyaltyKind,
    pub(crate) event_id: String,
    pub(crate) session_id: String,
    pub(crate) original_session_id: Option<String>,
    pub(crate) store_id: String,
    pub(crate) till_id: String,
    pub(crate) till_seq: u64,
    pub(crate) cashier_id: Option<String>,
    pub(crate) offline: bool,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) points: i64,
    pub(crate) refund_minor: i64,
    pub(crate) sale_total_minor: i64,
    pub(crate) currency: String,
}

impl LoyaltyEntry {
    pub(crate) fn key(&self) -> OrderKey<'_> {
        OrderKey {
            at: self.occurred_at,
            store: &self.store_id,
            till: &self.till_id,
            seq: self.till_seq,
            event: &self.event_id,
            // Within one sale, points are redeemed at payment, before the sale earns any: points
            // earned on a sale cannot pay for that same sale.
            index: match self.kind {
                LoyaltyKind::RedeemedPoints => 0,
                LoyaltyKind::Earned => 1,
                LoyaltyKind::Returned | LoyaltyKind::Cancelled => 2,
            },
            id: &self.id,
        }
    }

    /// The session a return or cancellation acts on.
    pub(crate) fn target_session(&self) -> &str {
        self.original_session_id
            .as_deref()
            .unwrap_or(&self.session_id)
    }
}

/// The latest balance the promotion core reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) balance: i64,
    pub(crate) as_of: DateTime<Utc>,
}

/// Everything known about one loyalty profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProfileState {
    pub(crate) profile_id: String,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) facts: BTreeMap<String, LoyaltyEntry>,
    pub(crate) newest: Option<DateTime<Utc>>,
    pub(crate) compensations: Compensations,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum SubjectType {
    Coupon,
    Profile,
}

/// One incident of a coupon or a profile, as persisted. `subject_key` is the coupon code or
/// profile id: it stays in the state store and is masked on the way out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Case {
    pub(crate) case_id: String,
    pub(crate) subject_type: SubjectType,
    pub(crate) subject_key: String,
    pub(crate) kind: Reason,
    pub(crate) reasons: Vec<Reason>,
    pub(crate) is_final: bool,
    pub(crate) exposure: BTreeMap<String, i64>,
    pub(crate) deficit_points: i64,
    /// Event ids of the redemptions the case acts on, latest first.
    pub(crate) flagged: Vec<String>,
    pub(crate) timeline: Vec<TimelineEntry>,
}

/// `Some` newest event time minus the horizon: facts strictly older are final.
pub(crate) fn final_before(
    newest: Option<DateTime<Utc>>,
    horizon: chrono::Duration,
) -> Option<DateTime<Utc>> {
    newest.and_then(|n| n.checked_sub_signed(horizon))
}

pub(crate) fn is_final(at: DateTime<Utc>, threshold: Option<DateTime<Utc>>) -> bool {
    threshold.is_some_and(|t| at.cmp(&t) == Ordering::Less)
}

/// Adds `minor` units of `currency` to an exposure, saturating.
pub(crate) fn add_exposure(exposure: &mut BTreeMap<String, i64>, currency: &str, minor: i64) {
    let t = exposure.entry(currency.to_owned()).or_default();
    *t = t.saturating_add(minor);
}

/// One fact in a case's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub fact_id: String,
    pub event_id: String,
    /// REDEEMED, RELEASED, EARNED, REDEEMED_POINTS, RETURNED or CANCELLED.
    pub fact: String,
    pub occurred_at: DateTime<Utc>,
    pub store_id: String,
    pub till_id: String,
    pub till_seq: u64,
    pub cashier_id: Option<String>,
    pub profile_id: Option<String>,
    /// The sale's session; for a release, return or cancellation the session it acts on.
    pub session_id: String,
    pub offline: bool,
    /// The coupon discount, the refund of a return, or the sale total of a loyalty fact.
    pub amount_minor: i64,
    pub currency: String,
    pub points: i64,
    /// Points to claw back from this redemption (loyalty deficits only).
    pub clawback_points: i64,
    /// The profile's balance after this fact, for facts after the snapshot.
    pub balance_after: Option<i64>,
    /// STANDS, RELEASED, a violation reason, VOID (redeemed in a cancelled session),
    /// IN_SNAPSHOT (already in the balance snapshot), or empty for facts that are not judged.
    pub verdict: String,
    pub is_final: bool,
}
