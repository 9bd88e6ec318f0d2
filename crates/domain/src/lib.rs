//! The leaf crate of tillbridge; it imports no other crate of the workspace, and every other one
//! may import it.
//!
//! Validated domain types. Every value here passed the contract's checks (docs/CONTRACT.md);
//! the wire types of the `tillbridge-proto` crate convert into them with `TryFrom`.
//!
//! Money is integer minor units with a [`Currency`]; time is UTC. `occurred_at` is event time on
//! the till's clock; processing time is never stored in these types.
//!
//! Also here: [`pan`] (card-number detection and redaction), [`ids`] (deterministic output
//! ids), [`code`] (the one masker and fingerprinter of coupon codes) and [`money`] (amounts in
//! major units with each currency's digits, and durations, as people read them).

pub mod code;
pub mod ids;
pub mod money;
pub mod pan;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An ISO 4217 currency code (three upper-case letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        (b.len() == 3 && b.iter().all(u8::is_ascii_uppercase)).then(|| Currency([b[0], b[1], b[2]]))
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Currency::parse(&s).ok_or_else(|| format!("not an ISO 4217 code: {s:?}"))
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

/// An amount of money in minor units (cents) of a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    #[default]
    InStore,
    Online,
    Mobile,
    Kiosk,
}

/// A till event that passed validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TillEvent {
    pub event_id: Uuid,
    pub store_id: String,
    pub till_id: String,
    pub till_seq: u64,
    pub occurred_at: DateTime<Utc>,
    pub cashier_id: Option<String>,
    pub channel: Channel,
    pub offline: bool,
    pub session_id: Option<String>,
    pub profile_id: Option<String>,
    pub currency: Option<Currency>,
    pub body: Body,
}

impl TillEvent {
    /// The key of `till.events`: `{store_id}/{till_id}`.
    pub fn till_key(&self) -> String {
        format!("{}/{}", self.store_id, self.till_id)
    }
    pub fn body_kind(&self) -> BodyKind {
        self.body.kind()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Sale(Sale),
    Return(Return),
    SessionCancelled { reason: String },
    ManualOverride(ManualOverride),
    TillStatus(TillStatus),
}

/// The kind of a body, for routing and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    Sale,
    Return,
    SessionCancelled,
    ManualOverride,
    TillStatus,
}

impl BodyKind {
    pub const ALL: [BodyKind; 5] = [
        BodyKind::Sale,
        BodyKind::Return,
        BodyKind::SessionCancelled,
        BodyKind::ManualOverride,
        BodyKind::TillStatus,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Sale => "sale",
            BodyKind::Return => "return",
            BodyKind::SessionCancelled => "session_cancelled",
            BodyKind::ManualOverride => "manual_override",
            BodyKind::TillStatus => "till_status",
        }
    }
}

impl Body {
    pub fn kind(&self) -> BodyKind {
        match self {
            Body::Sale(_) => BodyKind::Sale,
            Body::Return(_) => BodyKind::Return,
            Body::SessionCancelled { .. } => BodyKind::SessionCancelled,
            Body::ManualOverride(_) => BodyKind::ManualOverride,
            Body::TillStatus(_) => BodyKind::TillStatus,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
    pub discount_minor: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRedemption {
    pub code: String,
    pub discount_minor: i64,
    pub campaign_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoyaltyActivity {
    pub program_id: String,
    pub points_earned: i64,
    pub points_redeemed: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub lines: Vec<SaleLine>,
    pub coupons: Vec<CouponRedemption>,
    pub loyalty: Option<LoyaltyActivity>,
    /// The sale's total: sum(quantity x unit_price - line discount) - sum(coupon discounts).
    pub total_minor: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLine {
    pub sku: String,
    pub quantity: u32,
    pub refund_minor: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Return {
    pub original_session_id: String,
    pub lines: Vec<ReturnLine>,
    pub refund_minor: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OverrideKind {
    Price,
    Discount,
    Void,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualOverride {
    pub kind: OverrideKind,
    pub amount_minor: i64,
    pub reason: String,
    pub approved_by: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Connectivity {
    Online,
    Offline,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TillStatus {
    pub status: Connectivity,
    pub last_synced_seq: u64,
}

/// A coupon as the promotion core defines it (`promo.coupons`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponDefinition {
    pub code: String,
    pub campaign_id: String,
    /// 0 = unlimited.
    pub usage_limit: u32,
    /// 0 = unlimited.
    pub per_profile_limit: u32,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub offline_allowed: bool,
}

/// A loyalty balance snapshot from the promotion core (`promo.loyalty.balances`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoyaltyBalance {
    pub profile_id: String,
    pub program_id: String,
    pub balance: i64,
    pub as_of: DateTime<Utc>,
}

/// Whether `s` is a valid store or till id: 1 to 64 of `A-Za-z0-9._-`.
pub fn is_valid_ident(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_and_currencies() {
        assert!(is_valid_ident("store-01.a_b"));
        assert!(!is_valid_ident(""));
        assert!(!is_valid_ident("a/b"));
        assert!(!is_valid_ident(&"x".repeat(65)));
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Some("EUR".into())
        );
        assert!(Currency::parse("eur").is_none());
        assert!(Currency::parse("EURO").is_none());
    }
}

/// Why a record was dead-lettered (the contract's reason codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectReason {
    DecodeError,
    MissingField,
    InvalidField,
    InconsistentTotal,
    CardData,
    ClockSkew,
    Oversized,
    DuplicateConflict,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::DecodeError,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::InconsistentTotal,
        RejectReason::CardData,
        RejectReason::ClockSkew,
        RejectReason::Oversized,
        RejectReason::DuplicateConflict,
    ];

    /// The code as it appears on the wire.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::DecodeError => "DECODE_ERROR",
            RejectReason::MissingField => "MISSING_FIELD",
            RejectReason::InvalidField => "INVALID_FIELD",
            RejectReason::InconsistentTotal => "INCONSISTENT_TOTAL",
            RejectReason::CardData => "CARD_DATA",
            RejectReason::ClockSkew => "CLOCK_SKEW",
            RejectReason::Oversized => "OVERSIZED",
            RejectReason::DuplicateConflict => "DUPLICATE_CONFLICT",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Whether a return refunds the whole sale: then the sale's coupons are released (routing emits
/// `RELEASED` facts, fraud-guard keeps nothing to judge). One rule for both.
pub fn is_full_return(refund_minor: i64, sale_total_minor: i64) -> bool {
    refund_minor >= sale_total_minor
}
