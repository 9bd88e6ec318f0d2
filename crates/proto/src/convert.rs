//! Wire types into validated domain types, with the contract's checks.

use chrono::{DateTime, Utc};
use tillbridge_domain::pan;
use tillbridge_domain::{
    self, Body, Channel, Connectivity, CouponDefinition, CouponRedemption, Currency,
    LoyaltyActivity, LoyaltyBalance, ManualOverride, OverrideKind, RejectReason, Return,
    ReturnLine, Sale, SaleLine, TillEvent, TillStatus,
};
use uuid::Uuid;

use crate::pb;
use crate::rejection::Rejection;

fn timestamp(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>, Rejection> {
    let ts = ts.ok_or_else(|| Rejection::missing(field))?;
    let nanos = u32::try_from(ts.nanos).map_err(|_| Rejection::invalid(field, "negative nanos"))?;
    DateTime::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| Rejection::invalid(field, "out of range"))
}

fn opt_timestamp(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Rejection> {
    ts.map(|t| timestamp(field, Some(t))).transpose()
}

fn required(field: &str, s: &str) -> Result<String, Rejection> {
    if s.trim().is_empty() {
        return Err(Rejection::missing(field));
    }
    Ok(s.to_owned())
}

fn ident(field: &str, s: &str) -> Result<String, Rejection> {
    let s = required(field, s)?;
    if !tillbridge_domain::is_valid_ident(&s) {
        return Err(Rejection::invalid(field, "must be 1 to 64 of A-Za-z0-9._-"));
    }
    Ok(s)
}

/// The largest amount (minor units) or points figure one field may carry: 12 digits, so that a
/// sum of many stays far from overflow and no accepted amount can be a card number.
pub const MAX_AMOUNT: i64 = 999_999_999_999;

fn non_negative(field: &str, v: i64) -> Result<i64, Rejection> {
    if v < 0 {
        return Err(Rejection::invalid(field, "must not be negative"));
    }
    if v > MAX_AMOUNT {
        return Err(Rejection::invalid(field, "must be at most 999999999999"));
    }
    Ok(v)
}

fn optional(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty()).cloned()
}

fn overflow(field: &str) -> Rejection {
    Rejection::invalid(field, "amount overflows")
}

/// Names the first string field of `e` (other than the event id, a validated UUID) that holds a
/// card number.
pub(crate) fn card_field(e: &pb::TillEvent) -> Option<String> {
    // (field, index of its repeated element, value); the name is only written for a finding.
    let mut fields: Vec<(&str, Option<usize>, &str)> = vec![
        ("store_id", None, &e.store_id),
        ("till_id", None, &e.till_id),
        ("session_id", None, &e.session_id),
        ("currency", None, &e.currency),
    ];
    if let Some(c) = &e.cashier_id {
        fields.push(("cashier_id", None, c));
    }
    if let Some(p) = &e.profile_id {
        fields.push(("profile_id", None, p));
    }
    match &e.body {
        Some(pb::till_event::Body::Sale(s)) => {
            for (i, l) in s.lines.iter().enumerate() {
                fields.push(("sale.lines[].sku", Some(i), &l.sku));
            }
            for (i, c) in s.coupons.iter().enumerate() {
                fields.push(("sale.coupons[].code", Some(i), &c.code));
                if let Some(id) = &c.campaign_id {
                    fields.push(("sale.coupons[].campaign_id", Some(i), id));
                }
            }
            if let Some(l) = &s.loyalty {
                fields.push(("sale.loyalty.program_id", None, &l.program_id));
            }
        }
        Some(pb::till_event::Body::Return(r)) => {
            fields.push(("return.original_session_id", None, &r.original_session_id));
            for (i, l) in r.lines.iter().enumerate() {
                fields.push(("return.lines[].sku", Some(i), &l.sku));
            }
        }
        Some(pb::till_event::Body::SessionCancelled(c)) => {
            fields.push(("session_cancelled.reason", None, &c.reason));
        }
        Some(pb::till_event::Body::ManualOverride(o)) => {
            fields.push(("manual_override.reason", None, &o.reason));
            if let Some(a) = &o.approved_by {
                fields.push(("manual_override.approved_by", None, a));
            }
        }
        Some(pb::till_event::Body::TillStatus(_)) | None => {}
    }
    fields
        .into_iter()
        .find(|(_, _, v)| pan::contains(v))
        .map(|(name, i, _)| match i {
            Some(i) => name.replacen("[]", &format!("[{i}]"), 1),
            None => name.to_owned(),
        })
}

/// Checks a till event against the contract. Card data is checked first, so an event that
/// carries a card number is always CARD_DATA whatever else is wrong with it.
pub fn validate(e: &pb::TillEvent) -> Result<TillEvent, Rejection> {
    if let Some(field) = card_field(e) {
        return Err(Rejection::new(
            RejectReason::CardData,
            format!("{field} holds a card number (PAN)"),
        ));
    }
    let event_id = required("event_id", &e.event_id)?;
    let event_id =
        Uuid::parse_str(&event_id).map_err(|_| Rejection::invalid("event_id", "not a UUID"))?;
    let store_id = ident("store_id", &e.store_id)?;
    let till_id = ident("till_id", &e.till_id)?;
    if e.till_seq == 0 {
        return Err(Rejection::missing("till_seq"));
    }
    let occurred_at = timestamp("occurred_at", e.occurred_at.as_ref())?;
    let channel = match pb::Channel::try_from(e.channel) {
        Ok(pb::Channel::Unspecified | pb::Channel::InStore) => Channel::InStore,
        Ok(pb::Channel::Online) => Channel::Online,
        Ok(pb::Channel::Mobile) => Channel::Mobile,
        Ok(pb::Channel::Kiosk) => Channel::Kiosk,
        Err(_) => return Err(Rejection::invalid("channel", "unknown channel")),
    };
    let currency = if e.currency.is_empty() {
        None
    } else {
        Some(
            Currency::parse(&e.currency)
                .ok_or_else(|| Rejection::invalid("currency", "not an ISO 4217 code"))?,
        )
    };
    let session_id = optional(Some(&e.session_id));
    let body = body(e.body.as_ref())?;
    let needs_session = matches!(
        body,
        Body::Sale(_) | Body::Return(_) | Body::SessionCancelled { .. }
    );
    if needs_session && session_id.is_none() {
        return Err(Rejection::missing("session_id"));
    }
    let has_amounts = match &body {
        Body::Sale(_) | Body::Return(_) => true,
        Body::ManualOverride(o) => o.amount_minor != 0,
        Body::SessionCancelled { .. } | Body::TillStatus(_) => false,
    };
    if has_amounts && currency.is_none() {
        return Err(Rejection::missing("currency"));
    }
    Ok(TillEvent {
        event_id,
        store_id,
        till_id,
        till_seq: e.till_seq,
        occurred_at,
        cashier_id: optional(e.cashier_id.as_ref()),
        channel,
        offline: e.offline,
        session_id,
        profile_id: optional(e.profile_id.as_ref()),
        currency,
        body,
    })
}

fn body(b: Option<&pb::till_event::Body>) -> Result<Body, Rejection> {
    use pb::till_event::Body as B;
    match b {
        None => Err(Rejection::missing(
            "body (one of sale, return, session_cancelled, manual_override, till_status)",
        )),
        Some(B::Sale(s)) => sale(s).map(Body::Sale),
        Some(B::Return(r)) => ret(r).map(Body::Return),
        Some(B::SessionCancelled(c)) => Ok(Body::SessionCancelled {
            reason: c.reason.clone(),
        }),
        Some(B::ManualOverride(o)) => {
            let kind = match pb::manual_override::Kind::try_from(o.kind) {
                Ok(pb::manual_override::Kind::Price) => OverrideKind::Price,
                Ok(pb::manual_override::Kind::Discount) => OverrideKind::Discount,
                Ok(pb::manual_override::Kind::Void) => OverrideKind::Void,
                Ok(pb::manual_override::Kind::Unspecified) => {
                    return Err(Rejection::missing("manual_override.kind"))
                }
                Err(_) => return Err(Rejection::invalid("manual_override.kind", "unknown kind")),
            };
            Ok(Body::ManualOverride(ManualOverride {
                kind,
                amount_minor: o.amount_minor,
                reason: o.reason.clone(),
                approved_by: optional(o.approved_by.as_ref()),
            }))
        }
        Some(B::TillStatus(t)) => {
            let status = match pb::till_status::Status::try_from(t.status) {
                Ok(pb::till_status::Status::Online) => Connectivity::Online,
                Ok(pb::till_status::Status::Offline) => Connectivity::Offline,
                Ok(pb::till_status::Status::Unspecified) => {
                    return Err(Rejection::missing("till_status.status"))
                }
                Err(_) => return Err(Rejection::invalid("till_status.status", "unknown status")),
            };
            Ok(Body::TillStatus(TillStatus {
                status,
                last_synced_seq: t.last_synced_seq,
            }))
        }
    }
}

fn sale(s: &pb::Sale) -> Result<Sale, Rejection> {
    if s.lines.is_empty() {
        return Err(Rejection::missing("sale.lines"));
    }
    let mut computed: i64 = 0;
    let mut lines = Vec::with_capacity(s.lines.len());
    for (i, l) in s.lines.iter().enumerate() {
        let f = |n: &str| format!("sale.lines[{i}].{n}");
        let sku = required(&f("sku"), &l.sku)?;
        if l.quantity == 0 {
            return Err(Rejection::invalid(&f("quantity"), "must be greater than 0"));
        }
        let unit = non_negative(&f("unit_price_minor"), l.unit_price_minor)?;
        let disc = non_negative(&f("discount_minor"), l.discount_minor)?;
        let line_total = unit
            .checked_mul(i64::from(l.quantity))
            .and_then(|v| v.checked_sub(disc))
            .ok_or_else(|| overflow(&f("unit_price_minor")))?;
        computed = computed
            .checked_add(line_total)
            .ok_or_else(|| overflow("sale.lines"))?;
        lines.push(SaleLine {
            sku,
            quantity: l.quantity,
            unit_price_minor: unit,
            discount_minor: disc,
        });
    }
    let mut coupons = Vec::with_capacity(s.coupons.len());
    for (i, c) in s.coupons.iter().enumerate() {
        let code = required(&format!("sale.coupons[{i}].code"), &c.code)?;
        let disc = non_negative(
            &format!("sale.coupons[{i}].discount_minor"),
            c.discount_minor,
        )?;
        computed = computed
            .checked_sub(disc)
            .ok_or_else(|| overflow("sale.coupons"))?;
        coupons.push(CouponRedemption {
            code,
            discount_minor: disc,
            campaign_id: optional(c.campaign_id.as_ref()),
        });
    }
    let loyalty = match &s.loyalty {
        None => None,
        Some(l) => Some(LoyaltyActivity {
            program_id: required("sale.loyalty.program_id", &l.program_id)?,
            points_earned: non_negative("sale.loyalty.points_earned", l.points_earned)?,
            points_redeemed: non_negative("sale.loyalty.points_redeemed", l.points_redeemed)?,
        }),
    };
    if computed < 0 {
        return Err(Rejection::invalid(
            "sale.coupons",
            "discounts exceed the lines: the total would be negative",
        ));
    }
    if let Some(total) = s.total_minor {
        // The given value is not echoed: it is free input and could be anything.
        if total != computed {
            return Err(Rejection::new(
                RejectReason::InconsistentTotal,
                "sale.total_minor differs from the sum of its lines and coupons",
            ));
        }
    }
    Ok(Sale {
        lines,
        coupons,
        loyalty,
        total_minor: computed,
    })
}

fn ret(r: &pb::Return) -> Result<Return, Rejection> {
    let original_session_id = required("return.original_session_id", &r.original_session_id)?;
    let refund_minor = non_negative("return.refund_minor", r.refund_minor)?;
    let mut lines = Vec::with_capacity(r.lines.len());
    let mut sum: i64 = 0;
    for (i, l) in r.lines.iter().enumerate() {
        let f = |n: &str| format!("return.lines[{i}].{n}");
        let sku = required(&f("sku"), &l.sku)?;
        if l.quantity == 0 {
            return Err(Rejection::invalid(&f("quantity"), "must be greater than 0"));
        }
        let refund = non_negative(&f("refund_minor"), l.refund_minor)?;
        sum = sum
            .checked_add(refund)
            .ok_or_else(|| overflow("return.lines"))?;
        lines.push(ReturnLine {
            sku,
            quantity: l.quantity,
            refund_minor: refund,
        });
    }
    if !lines.is_empty() && sum != refund_minor {
        return Err(Rejection::new(
            RejectReason::InconsistentTotal,
            "return.refund_minor differs from the sum of its lines",
        ));
    }
    Ok(Return {
        original_session_id,
        lines,
        refund_minor,
    })
}

/// A coupon definition from `promo.coupons`.
pub fn coupon_definition(c: &pb::CouponDefinition) -> Result<CouponDefinition, Rejection> {
    Ok(CouponDefinition {
        code: required("code", &c.code)?,
        campaign_id: c.campaign_id.clone(),
        usage_limit: c.usage_limit,
        per_profile_limit: c.per_profile_limit,
        valid_from: opt_timestamp("valid_from", c.valid_from.as_ref())?,
        valid_until: opt_timestamp("valid_until", c.valid_until.as_ref())?,
        offline_allowed: c.offline_allowed,
    })
}

/// A loyalty balance snapshot from `promo.loyalty.balances`.
pub fn loyalty_balance(b: &pb::LoyaltyBalance) -> Result<LoyaltyBalance, Rejection> {
    Ok(LoyaltyBalance {
        profile_id: required("profile_id", &b.profile_id)?,
        program_id: b.program_id.clone(),
        balance: b.balance,
        as_of: timestamp("as_of", b.as_of.as_ref())?,
    })
}
