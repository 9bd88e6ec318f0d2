//! Input records: decoding by the contract's encoding rule and applying each fact or table
//! row to the ledgers it touches; a malformed record is counted and skipped.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::log::Record;
use tillbridge_proto::pb;

use crate::error::Error;
use crate::model::{
    CouponState, LoyaltyEntry, LoyaltyKind, ProfileState, Redemption, Release, Snapshot,
};
use crate::state::State;

/// Why an input record was skipped. Never holds a coupon code.
#[derive(Debug)]
pub(crate) struct Malformed(pub(crate) String);

impl Malformed {
    /// The reason, with any card number redacted (a decoder's message can quote input).
    pub(crate) fn new(why: impl Into<String>) -> Self {
        let why = why.into();
        Malformed(
            String::from_utf8_lossy(&tillbridge_core::pan::redact(why.as_bytes())).into_owned(),
        )
    }
}

/// Why a record was not applied: it is malformed (skipped), or the state failed.
enum Stop {
    Malformed(Malformed),
    Failed(Error),
}

impl From<Malformed> for Stop {
    fn from(m: Malformed) -> Self {
        Stop::Malformed(m)
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// Skips the record as malformed for `why`.
fn malformed<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Malformed::new(why).into())
}

/// Decodes an input message by the contract's encoding rule (`tillbridge_proto::decode_message`,
/// the same decoder ingest uses). The reason never quotes the payload or the decoder's message:
/// those can echo values, and values can be coupon codes.
fn decode_input<M: Message + Default + tillbridge_proto::ReflectMessageName>(
    r: &Record,
    payload: &[u8],
) -> Result<M, Malformed> {
    tillbridge_proto::decode_message(payload, r.header("content-type"))
        .map_err(|e| Malformed::new(format!("undecodable {} ({})", M::FULL_NAME, e.reason)))
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(tillbridge_proto::datetime)
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

/// Decodes a fact record (`what`: a redemption or loyalty fact) and checks what every fact
/// needs: a subject (its own field named `subject`, else the record `key`), an id, an event id
/// and a valid event time. `head` reads those four fields of the message, in that order.
/// Returns the fact, its subject and its event time.
fn fact<M: Message + Default + tillbridge_proto::ReflectMessageName>(
    r: &Record,
    key: &str,
    what: &str,
    subject: &str,
    head: impl Fn(&M) -> (&str, &str, &str, Option<&prost_types::Timestamp>),
) -> Result<(M, String, DateTime<Utc>), Malformed> {
    let Some(payload) = &r.payload else {
        return Err(Malformed::new(format!("{what} without payload")));
    };
    let f: M = decode_input(r, payload)?;
    let (own, id, event_id, occurred_at) = head(&f);
    let found = if own.is_empty() { key } else { own }.to_owned();
    if found.is_empty() || id.is_empty() || event_id.is_empty() {
        return Err(Malformed::new(format!(
            "{what} lacks {subject}, id or event_id"
        )));
    }
    let Some(at) = timestamp(occurred_at) else {
        return Err(Malformed::new(format!("{what} lacks a valid occurred_at")));
    };
    Ok((f, found, at))
}

/// Applies one input record to the touched ledgers, loading them from `state` into the caches.
/// `Ok(Err(_))` is a malformed record.
pub(crate) fn apply(
    state: &State,
    topics: &Topics,
    r: &Record,
    coupons: &mut BTreeMap<String, CouponState>,
    profiles: &mut BTreeMap<String, ProfileState>,
) -> Result<Result<(), Malformed>, Error> {
    match route(state, topics, r, coupons, profiles) {
        Ok(()) => Ok(Ok(())),
        Err(Stop::Malformed(m)) => Ok(Err(m)),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// [`apply`], by the topic of the record.
fn route(
    state: &State,
    topics: &Topics,
    r: &Record,
    coupons: &mut BTreeMap<String, CouponState>,
    profiles: &mut BTreeMap<String, ProfileState>,
) -> Result<(), Stop> {
    let key = r
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("");
    if r.topic == topics.redemptions {
        let (f, code, at) = fact(
            r,
            key,
            "redemption fact",
            "code",
            |f: &pb::RedemptionFact| (&f.code, &f.id, &f.event_id, f.occurred_at.as_ref()),
        )?;
        redemption(state, coupons, &code, f, at, record_time(r))
    } else if r.topic == topics.loyalty {
        let (f, profile, at) = fact(
            r,
            key,
            "loyalty fact",
            "profile_id",
            |f: &pb::LoyaltyFact| (&f.profile_id, &f.id, &f.event_id, f.occurred_at.as_ref()),
        )?;
        loyalty(state, profiles, &profile, f, at)
    } else if r.topic == topics.coupons {
        definition(state, r, key, coupons)
    } else if r.topic == topics.loyalty_balances {
        snapshot(state, r, profiles)
    } else {
        malformed("record from a topic the reconciler does not read")
    }
}

/// A checked redemption fact of coupon `code` (a redemption or a release), which happened `at`
/// and reached Kafka at `synced_at`.
fn redemption(
    state: &State,
    coupons: &mut BTreeMap<String, CouponState>,
    code: &str,
    f: pb::RedemptionFact,
    at: DateTime<Utc>,
    synced_at: Option<DateTime<Utc>>,
) -> Result<(), Stop> {
    match pb::RedemptionKind::try_from(f.kind) {
        Ok(pb::RedemptionKind::Redeemed) => {
            if f.discount_minor < 0 {
                return malformed("redemption fact with negative discount");
            }
            let st = state.ledger(coupons, code)?;
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
                    synced_at,
                });
        }
        Ok(pb::RedemptionKind::Released) => {
            if f.session_id.is_empty() {
                return malformed("release without session_id");
            }
            let st = state.ledger(coupons, code)?;
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
                synced_at,
            });
        }
        _ => return malformed(format!("unknown redemption kind {}", f.kind)),
    }
    Ok(())
}

/// A checked loyalty fact of `profile`, which happened `at`.
fn loyalty(
    state: &State,
    profiles: &mut BTreeMap<String, ProfileState>,
    profile: &str,
    f: pb::LoyaltyFact,
    at: DateTime<Utc>,
) -> Result<(), Stop> {
    let kind = match pb::LoyaltyFactKind::try_from(f.kind) {
        Ok(pb::LoyaltyFactKind::Earned) => LoyaltyKind::Earned,
        Ok(pb::LoyaltyFactKind::RedeemedPoints) => LoyaltyKind::RedeemedPoints,
        Ok(pb::LoyaltyFactKind::Returned) => LoyaltyKind::Returned,
        Ok(pb::LoyaltyFactKind::Cancelled) => LoyaltyKind::Cancelled,
        _ => return malformed(format!("unknown loyalty fact kind {}", f.kind)),
    };
    if f.points < 0 || f.refund_minor < 0 {
        return malformed("loyalty fact with negative points or refund");
    }
    let st = state.ledger(profiles, profile)?;
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
    Ok(())
}

/// A coupon definition, or its tombstone.
fn definition(
    state: &State,
    r: &Record,
    key: &str,
    coupons: &mut BTreeMap<String, CouponState>,
) -> Result<(), Stop> {
    let definition = match &r.payload {
        None => None,
        Some(p) => {
            let d: pb::CouponDefinition = decode_input(r, p)?;
            match tillbridge_proto::coupon_definition(&d) {
                Ok(d) => Some(d),
                Err(e) => return malformed(format!("coupon definition rejected: {e}")),
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
        return malformed("coupon definition without a code");
    }
    // The definition in force judges the whole coupon, as if it had always been (the
    // topic is compacted: only the latest survives a replay).
    state.ledger(coupons, &code)?.definition = definition;
    Ok(())
}

/// A balance snapshot of a profile; a tombstone is ignored.
fn snapshot(
    state: &State,
    r: &Record,
    profiles: &mut BTreeMap<String, ProfileState>,
) -> Result<(), Stop> {
    let Some(payload) = &r.payload else {
        return Ok(());
    };
    let b: pb::LoyaltyBalance = decode_input(r, payload)?;
    let b = match tillbridge_proto::loyalty_balance(&b) {
        Ok(b) => b,
        Err(e) => return malformed(format!("balance snapshot rejected: {e}")),
    };
    let st = state.ledger(profiles, &b.profile_id)?;
    // The newest snapshot wins whatever the arrival order.
    if st.snapshot.as_ref().is_none_or(|s| b.as_of >= s.as_of) {
        st.snapshot = Some(Snapshot {
            balance: b.balance,
            as_of: b.as_of,
        });
    }
    Ok(())
}
