//! Input records: decoding by the contract's encoding rule and applying each fact or table
//! row to the ledgers it touches; a malformed record is counted and skipped.

use super::*;

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

/// Decodes an input message by the contract's encoding rule (`tillbridge_proto::decode_message`,
/// the same decoder ingest uses). The reason never quotes the payload or the decoder's message:
/// those can echo values, and values can be coupon codes.
pub(crate) fn decode_input<M: Message + Default + tillbridge_proto::ReflectMessageName>(
    r: &Record,
    payload: &[u8],
) -> Result<M, Malformed> {
    tillbridge_proto::decode_message(payload, r.header("content-type"))
        .map_err(|e| Malformed::new(format!("undecodable {} ({})", M::FULL_NAME, e.reason)))
}

pub(crate) fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(tillbridge_proto::datetime)
}

/// A record's timestamp: when it reached Kafka.
pub(crate) fn record_time(r: &Record) -> Option<DateTime<Utc>> {
    r.timestamp_ms.and_then(DateTime::from_timestamp_millis)
}

pub(crate) fn later(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.max(b)))
}

pub(crate) fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.is_empty()).cloned()
}

impl Reconciler {
    /// Applies one input record to the touched ledgers. `Ok(Err(_))` is a malformed record.
    pub(crate) fn apply(
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
            let f: pb::RedemptionFact = match decode_input(r, payload) {
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
            let f: pb::LoyaltyFact = match decode_input(r, payload) {
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
                    let d: pb::CouponDefinition = match decode_input(r, p) {
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
            let b: pb::LoyaltyBalance = match decode_input(r, payload) {
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
}
