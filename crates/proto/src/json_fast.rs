//! The common proto3 JSON forms of a `TillEvent`, decoded by generated serde code instead of
//! prost-reflect's dynamic message (about ten times faster).
//!
//! It is a fast path, never a second judge: it accepts only forms whose meaning is beyond doubt
//! (field names in either proto3 spelling, strings, booleans, integers as JSON integers or as
//! canonical decimal strings, enums by name, timestamps as `YYYY-MM-DDTHH:MM:SS[.f]Z`) and
//! answers `None` for anything else (a `null`, an enum by number, a float, an unknown field, a
//! key given twice, two bodies at once, another timestamp form), which the full decoder
//! ([`crate::from_json`]) then judges, accepting or rejecting it with its reason.
//! `tests/json_fast.rs` checks that whatever this path accepts, the full decoder accepts with
//! the same message.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::pb;

/// The event, when `payload` is one of the forms this path knows; `None` otherwise.
pub fn till_event(payload: &[u8]) -> Option<pb::TillEvent> {
    let j: Obj<TillEventJson> = serde_json::from_slice(payload).ok()?;
    j.0.into_pb()
}

/// A message, from a JSON object only: serde's derived code would also read a struct from an
/// array, field by field, which proto3 JSON does not allow.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Deserializes a present field as `T`: `null` is an error (so the full decoder judges it).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

macro_rules! integer {
    ($name:ident, $t:ty) => {
        /// An integer given as a JSON integer or as a canonical decimal string.
        #[derive(Clone, Copy, Default)]
        struct $name($t);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an integer")
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        <$t>::try_from(v)
                            .map($name)
                            .map_err(|_| E::custom("out of range"))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        <$t>::try_from(v)
                            .map($name)
                            .map_err(|_| E::custom("out of range"))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        let digits = v.strip_prefix('-').unwrap_or(v);
                        let canonical = !digits.is_empty()
                            && digits.bytes().all(|b| b.is_ascii_digit())
                            && (digits == "0" || !digits.starts_with('0'))
                            && v != "-0";
                        if !canonical {
                            return Err(E::custom("not a canonical integer"));
                        }
                        v.parse::<$t>()
                            .map($name)
                            .map_err(|_| E::custom("out of range"))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

integer!(I64, i64);
integer!(U64, u64);
integer!(U32, u32);

/// A timestamp as `YYYY-MM-DDTHH:MM:SS[.f]Z` (1 to 9 fraction digits), years 1 to 9999.
struct Ts(prost_types::Timestamp);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_timestamp(&s)
            .map(Ts)
            .ok_or_else(|| de::Error::custom("not a timestamp of the fast form"))
    }
}

fn parse_timestamp(s: &str) -> Option<prost_types::Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0u32, |n, d| Some(n * 10 + u32::from(d - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &b[19..b.len() - 1];
    let nanos = match rest {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            let n = num(20..20 + frac.len())?;
            n * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    if year == 0 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = chrono::NaiveTime::from_hms_opt(hour, minute, second)?;
    Some(prost_types::Timestamp {
        seconds: date.and_time(time).and_utc().timestamp(),
        nanos: i32::try_from(nanos).ok()?,
    })
}

/// An enum value by name.
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A string only: an enum by number goes to the full decoder.
        String::deserialize(d).map(Name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TillEventJson {
    #[serde(default, rename = "eventId", alias = "event_id")]
    event_id: String,
    #[serde(default, rename = "storeId", alias = "store_id")]
    store_id: String,
    #[serde(default, rename = "tillId", alias = "till_id")]
    till_id: String,
    #[serde(default, rename = "tillSeq", alias = "till_seq")]
    till_seq: U64,
    #[serde(
        default,
        rename = "occurredAt",
        alias = "occurred_at",
        deserialize_with = "some"
    )]
    occurred_at: Option<Ts>,
    #[serde(
        default,
        rename = "cashierId",
        alias = "cashier_id",
        deserialize_with = "some"
    )]
    cashier_id: Option<String>,
    #[serde(default, deserialize_with = "some")]
    channel: Option<Name>,
    #[serde(default)]
    offline: bool,
    #[serde(default, rename = "sessionId", alias = "session_id")]
    session_id: String,
    #[serde(
        default,
        rename = "profileId",
        alias = "profile_id",
        deserialize_with = "some"
    )]
    profile_id: Option<String>,
    #[serde(default)]
    currency: String,
    #[serde(default, deserialize_with = "some")]
    sale: Option<Obj<SaleJson>>,
    #[serde(default, rename = "return", deserialize_with = "some")]
    return_: Option<Obj<ReturnJson>>,
    #[serde(
        default,
        rename = "sessionCancelled",
        alias = "session_cancelled",
        deserialize_with = "some"
    )]
    session_cancelled: Option<Obj<SessionCancelledJson>>,
    #[serde(
        default,
        rename = "manualOverride",
        alias = "manual_override",
        deserialize_with = "some"
    )]
    manual_override: Option<Obj<ManualOverrideJson>>,
    #[serde(
        default,
        rename = "tillStatus",
        alias = "till_status",
        deserialize_with = "some"
    )]
    till_status: Option<Obj<TillStatusJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleLineJson {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    quantity: U32,
    #[serde(default, rename = "unitPriceMinor", alias = "unit_price_minor")]
    unit_price_minor: I64,
    #[serde(default, rename = "discountMinor", alias = "discount_minor")]
    discount_minor: I64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CouponJson {
    #[serde(default)]
    code: String,
    #[serde(default, rename = "discountMinor", alias = "discount_minor")]
    discount_minor: I64,
    #[serde(
        default,
        rename = "campaignId",
        alias = "campaign_id",
        deserialize_with = "some"
    )]
    campaign_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoyaltyJson {
    #[serde(default, rename = "programId", alias = "program_id")]
    program_id: String,
    #[serde(default, rename = "pointsEarned", alias = "points_earned")]
    points_earned: I64,
    #[serde(default, rename = "pointsRedeemed", alias = "points_redeemed")]
    points_redeemed: I64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleJson {
    #[serde(default)]
    lines: Vec<Obj<SaleLineJson>>,
    #[serde(default)]
    coupons: Vec<Obj<CouponJson>>,
    #[serde(default, deserialize_with = "some")]
    loyalty: Option<Obj<LoyaltyJson>>,
    #[serde(
        default,
        rename = "totalMinor",
        alias = "total_minor",
        deserialize_with = "some"
    )]
    total_minor: Option<I64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnLineJson {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    quantity: U32,
    #[serde(default, rename = "refundMinor", alias = "refund_minor")]
    refund_minor: I64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnJson {
    #[serde(default, rename = "originalSessionId", alias = "original_session_id")]
    original_session_id: String,
    #[serde(default)]
    lines: Vec<Obj<ReturnLineJson>>,
    #[serde(default, rename = "refundMinor", alias = "refund_minor")]
    refund_minor: I64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionCancelledJson {
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualOverrideJson {
    #[serde(default, deserialize_with = "some")]
    kind: Option<Name>,
    #[serde(default, rename = "amountMinor", alias = "amount_minor")]
    amount_minor: I64,
    #[serde(default)]
    reason: String,
    #[serde(
        default,
        rename = "approvedBy",
        alias = "approved_by",
        deserialize_with = "some"
    )]
    approved_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TillStatusJson {
    #[serde(default, deserialize_with = "some")]
    status: Option<Name>,
    #[serde(default, rename = "lastSyncedSeq", alias = "last_synced_seq")]
    last_synced_seq: U64,
}

impl TillEventJson {
    fn into_pb(self) -> Option<pb::TillEvent> {
        use pb::till_event::Body;
        let bodies = [
            self.sale.is_some(),
            self.return_.is_some(),
            self.session_cancelled.is_some(),
            self.manual_override.is_some(),
            self.till_status.is_some(),
        ];
        if bodies.iter().filter(|b| **b).count() > 1 {
            return None;
        }
        let channel = match self.channel {
            Some(Name(n)) => pb::Channel::from_str_name(&n)? as i32,
            None => 0,
        };
        let body = if let Some(Obj(s)) = self.sale {
            Some(Body::Sale(pb::Sale {
                lines: s
                    .lines
                    .into_iter()
                    .map(|Obj(l)| pb::SaleLine {
                        sku: l.sku,
                        quantity: l.quantity.0,
                        unit_price_minor: l.unit_price_minor.0,
                        discount_minor: l.discount_minor.0,
                    })
                    .collect(),
                coupons: s
                    .coupons
                    .into_iter()
                    .map(|Obj(c)| pb::CouponRedemption {
                        code: c.code,
                        discount_minor: c.discount_minor.0,
                        campaign_id: c.campaign_id,
                    })
                    .collect(),
                loyalty: s.loyalty.map(|Obj(l)| pb::LoyaltyActivity {
                    program_id: l.program_id,
                    points_earned: l.points_earned.0,
                    points_redeemed: l.points_redeemed.0,
                }),
                total_minor: s.total_minor.map(|t| t.0),
            }))
        } else if let Some(Obj(r)) = self.return_ {
            Some(Body::Return(pb::Return {
                original_session_id: r.original_session_id,
                lines: r
                    .lines
                    .into_iter()
                    .map(|Obj(l)| pb::ReturnLine {
                        sku: l.sku,
                        quantity: l.quantity.0,
                        refund_minor: l.refund_minor.0,
                    })
                    .collect(),
                refund_minor: r.refund_minor.0,
            }))
        } else if let Some(Obj(c)) = self.session_cancelled {
            Some(Body::SessionCancelled(pb::SessionCancelled {
                reason: c.reason,
            }))
        } else if let Some(Obj(m)) = self.manual_override {
            let kind = match m.kind {
                Some(Name(n)) => pb::manual_override::Kind::from_str_name(&n)? as i32,
                None => 0,
            };
            Some(Body::ManualOverride(pb::ManualOverride {
                kind,
                amount_minor: m.amount_minor.0,
                reason: m.reason,
                approved_by: m.approved_by,
            }))
        } else if let Some(Obj(t)) = self.till_status {
            let status = match t.status {
                Some(Name(n)) => pb::till_status::Status::from_str_name(&n)? as i32,
                None => 0,
            };
            Some(Body::TillStatus(pb::TillStatus {
                status,
                last_synced_seq: t.last_synced_seq.0,
            }))
        } else {
            None
        };
        Some(pb::TillEvent {
            event_id: self.event_id,
            store_id: self.store_id,
            till_id: self.till_id,
            till_seq: self.till_seq.0,
            occurred_at: self.occurred_at.map(|t| t.0),
            cashier_id: self.cashier_id,
            channel,
            offline: self.offline,
            session_id: self.session_id,
            profile_id: self.profile_id,
            currency: self.currency,
            body,
        })
    }
}
