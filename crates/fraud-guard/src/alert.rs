//! What an alert is made of: the rule, coupon masking and fingerprints, the risk score and the
//! deterministic id.

use chrono::{DateTime, Utc};
pub(crate) use tillbridge_core::domain::code::CodeMasker;
use tillbridge_core::ids;
use tillbridge_proto::pb;
use uuid::Uuid;

/// Most event ids listed in one alert; the evidence string says how many more there were.
pub(crate) const MAX_EVIDENCE_IDS: usize = 32;

/// The six rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Rule {
    CouponVelocity,
    OfflineExposure,
    OverrideRate,
    ReturnAfterRedemption,
    SequenceGap,
    ClockDrift,
}

impl Rule {
    pub(crate) const ALL: [Rule; 6] = [
        Rule::CouponVelocity,
        Rule::OfflineExposure,
        Rule::OverrideRate,
        Rule::ReturnAfterRedemption,
        Rule::SequenceGap,
        Rule::ClockDrift,
    ];

    pub(crate) fn code(self) -> &'static str {
        match self {
            Rule::CouponVelocity => "COUPON_VELOCITY",
            Rule::OfflineExposure => "OFFLINE_EXPOSURE",
            Rule::OverrideRate => "OVERRIDE_RATE",
            Rule::ReturnAfterRedemption => "RETURN_AFTER_REDEMPTION",
            Rule::SequenceGap => "SEQUENCE_GAP",
            Rule::ClockDrift => "CLOCK_DRIFT",
        }
    }

    pub(crate) fn pb(self) -> pb::AlertRule {
        match self {
            Rule::CouponVelocity => pb::AlertRule::CouponVelocity,
            Rule::OfflineExposure => pb::AlertRule::OfflineExposure,
            Rule::OverrideRate => pb::AlertRule::OverrideRate,
            Rule::ReturnAfterRedemption => pb::AlertRule::ReturnAfterRedemption,
            Rule::SequenceGap => pb::AlertRule::SequenceGap,
            Rule::ClockDrift => pb::AlertRule::ClockDrift,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The risk score: `weight` at the threshold, rising linearly to 100 at `excess_pct` = 100
/// (observed twice the threshold, or as far past it as the rule measures).
pub(crate) fn risk_score(weight: u8, excess_pct: i64) -> u32 {
    let w = i64::from(weight.min(100));
    let e = excess_pct.clamp(0, 100);
    u32::try_from(w + (100 - w) * e / 100).unwrap_or(100)
}

/// How far `observed` is past `threshold`, in percent of the threshold.
pub(crate) fn excess_pct(observed: i64, threshold: i64) -> i64 {
    if threshold <= 0 {
        return 0;
    }
    let e = (i128::from(observed) - i128::from(threshold)) * 100 / i128::from(threshold);
    i64::try_from(e.clamp(0, 100)).unwrap_or(100)
}

/// A rule that fired, before cool-down and scoring.
#[derive(Clone, Debug)]
pub(crate) struct Trigger {
    pub rule: Rule,
    pub store_id: String,
    pub subject: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub event_ids: Vec<Uuid>,
    pub evidence: String,
    pub excess_pct: i64,
}

/// The deterministic id of an alert: rule, subject and the cool-down bucket its window starts in.
/// Two alerts that are not merged start at least one cool-down apart, so their buckets differ.
pub(crate) fn alert_id(rule: Rule, subject: &str, window_start_ms: i64, cooldown_ms: i64) -> Uuid {
    let bucket = if cooldown_ms > 0 {
        window_start_ms.div_euclid(cooldown_ms)
    } else {
        window_start_ms
    };
    ids::derive(
        &format!("{}|{subject}|{bucket}", rule.code()),
        "fraud_alert",
        0,
    )
}

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    tillbridge_proto::timestamp(DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default())
}

/// An event time for evidence strings (RFC 3339, UTC).
pub(crate) fn fmt_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A duration in ms for evidence strings (`1h2m3s`).
pub(crate) fn fmt_dur(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    format!(
        "{sign}{}",
        humantime_serde::re::humantime::format_duration(d)
    )
}

/// Event ids for an alert: at most [`MAX_EVIDENCE_IDS`], and how many were left out.
pub(crate) fn capped_ids(ids: &[Uuid]) -> (Vec<String>, usize) {
    let mut v: Vec<Uuid> = ids.to_vec();
    v.sort();
    v.dedup();
    let extra = v.len().saturating_sub(MAX_EVIDENCE_IDS);
    (
        v.into_iter()
            .take(MAX_EVIDENCE_IDS)
            .map(|u| u.to_string())
            .collect(),
        extra,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scores_rise_from_the_weight_to_100() {
        assert_eq!(risk_score(40, excess_pct(5, 5)), 40);
        assert_eq!(risk_score(40, excess_pct(10, 5)), 100);
        assert_eq!(risk_score(40, excess_pct(50, 5)), 100);
        assert_eq!(risk_score(40, excess_pct(6, 5)), 52);
        assert_eq!(risk_score(200, 0), 100);
    }

    #[test]
    fn ids_are_stable_per_cooldown_bucket() {
        let a = alert_id(Rule::ClockDrift, "till:s/t", 1_000, 3_600_000);
        assert_eq!(a, alert_id(Rule::ClockDrift, "till:s/t", 2_000, 3_600_000));
        assert_ne!(
            a,
            alert_id(Rule::ClockDrift, "till:s/t", 3_700_000, 3_600_000)
        );
        assert_ne!(a, alert_id(Rule::SequenceGap, "till:s/t", 1_000, 3_600_000));
    }
}
