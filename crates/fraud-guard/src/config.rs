//! The fraud-guard configuration: one sub-struct per rule, each with its own switch, thresholds,
//! window and weight, and the settings every rule shares (cool-down, lateness bound).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration value that cannot work; reported at start-up by [`FraudGuardConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A threshold that must be at least 1 is 0.
    #[error("fraud_guard.{rule}.{field} must be at least 1")]
    ZeroThreshold {
        rule: &'static str,
        field: &'static str,
    },
    /// A window or duration that must be positive is zero.
    #[error("fraud_guard.{rule}.{field} must be longer than zero")]
    ZeroDuration {
        rule: &'static str,
        field: &'static str,
    },
    /// A rule weight outside 0..=100.
    #[error("fraud_guard.{rule}.weight is {weight}, it must be between 0 and 100")]
    WeightOutOfRange { rule: &'static str, weight: u8 },
    /// The lateness bound is shorter than a rule's window, so that rule could never see late events.
    #[error(
        "fraud_guard.max_lateness ({max_lateness:?}) must be at least fraud_guard.{rule}'s window ({window:?})"
    )]
    LatenessBelowWindow {
        rule: &'static str,
        window: Duration,
        max_lateness: Duration,
    },
    /// A commit interval so long that a crash would replay too much.
    #[error(
        "fraud_guard.commit_interval ({0:?}) must be at most 60s (a crash replays up to that much)"
    )]
    CommitIntervalTooLong(Duration),
}

/// The fraud-guard stage. All windows are in event time (`occurred_at`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudGuardConfig {
    /// Alerts of the same rule and subject whose windows start less than this apart are merged
    /// into the first one instead of being repeated.
    #[serde(with = "humantime_serde")]
    pub alert_cooldown: Duration,
    /// How far behind the newest event time seen an event may be and still be judged; older
    /// events are counted and skipped. It also bounds state: everything a rule keeps expires once
    /// its window ends more than this behind the newest event time.
    #[serde(with = "humantime_serde")]
    pub max_lateness: Duration,
    /// How long fraud-guard may go on with batches whose alerts are durable before it makes its
    /// state and offsets durable together (Kafka Streams' `commit.interval.ms`); 0 commits every
    /// batch. A crash replays at most this much, with the same alerts.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// COUPON_VELOCITY: one coupon code at many stores or tills in a short time.
    pub coupon_velocity: CouponVelocityConfig,
    /// OFFLINE_EXPOSURE: discount value a store gave while its tills were offline.
    pub offline_exposure: OfflineExposureConfig,
    /// OVERRIDE_RATE: manual overrides per cashier.
    pub override_rate: OverrideRateConfig,
    /// RETURN_AFTER_REDEMPTION: a partial return of goods bought with a coupon.
    pub return_after_redemption: ReturnAfterRedemptionConfig,
    /// SEQUENCE_GAP: receipts of a till that never synced.
    pub sequence_gap: SequenceGapConfig,
    /// CLOCK_DRIFT: a till clock far from its records' timestamps.
    pub clock_drift: ClockDriftConfig,
}

fn default_alert_cooldown() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_lateness() -> Duration {
    Duration::from_secs(72 * 3600)
}

impl Default for FraudGuardConfig {
    fn default() -> Self {
        FraudGuardConfig {
            alert_cooldown: default_alert_cooldown(),
            max_lateness: default_max_lateness(),
            commit_interval: Duration::from_millis(100),
            coupon_velocity: CouponVelocityConfig::default(),
            offline_exposure: OfflineExposureConfig::default(),
            override_rate: OverrideRateConfig::default(),
            return_after_redemption: ReturnAfterRedemptionConfig::default(),
            sequence_gap: SequenceGapConfig::default(),
            clock_drift: ClockDriftConfig::default(),
        }
    }
}

fn enabled() -> bool {
    true
}

/// COUPON_VELOCITY settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CouponVelocityConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when one code is redeemed at this many distinct stores within `window`.
    pub min_stores: u32,
    /// Alert when one code is redeemed at this many distinct tills within `window`.
    pub min_tills: u32,
    /// The sliding event-time window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Risk score at the threshold (0..=100); the score rises toward 100 at twice the threshold.
    pub weight: u8,
}

fn default_velocity_min_stores() -> u32 {
    3
}
fn default_velocity_min_tills() -> u32 {
    4
}
fn default_velocity_window() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_velocity_weight() -> u8 {
    70
}

impl Default for CouponVelocityConfig {
    fn default() -> Self {
        CouponVelocityConfig {
            enabled: enabled(),
            min_stores: default_velocity_min_stores(),
            min_tills: default_velocity_min_tills(),
            window: default_velocity_window(),
            weight: default_velocity_weight(),
        }
    }
}

/// OFFLINE_EXPOSURE settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineExposureConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when a store's coupon and line discounts given offline, since each till last
    /// synced, sum to more than this (minor units of the store's currency).
    pub cap_minor: i64,
    /// Risk score at the threshold (0..=100); the score rises toward 100 at twice the cap.
    pub weight: u8,
}

fn default_exposure_cap_minor() -> i64 {
    50_000
}
fn default_exposure_weight() -> u8 {
    60
}

impl Default for OfflineExposureConfig {
    fn default() -> Self {
        OfflineExposureConfig {
            enabled: enabled(),
            cap_minor: default_exposure_cap_minor(),
            weight: default_exposure_weight(),
        }
    }
}

/// OVERRIDE_RATE settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverrideRateConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when a cashier makes more than this many manual overrides within `window`.
    pub max_overrides: u32,
    /// The sliding event-time window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Risk score just past the threshold (0..=100); it rises toward 100 at twice the threshold.
    pub weight: u8,
}

fn default_override_max() -> u32 {
    5
}
fn default_override_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_override_weight() -> u8 {
    40
}

impl Default for OverrideRateConfig {
    fn default() -> Self {
        OverrideRateConfig {
            enabled: enabled(),
            max_overrides: default_override_max(),
            window: default_override_window(),
            weight: default_override_weight(),
        }
    }
}

/// RETURN_AFTER_REDEMPTION settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReturnAfterRedemptionConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert on a partial return made within this time after a sale that used a coupon.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Risk score of a return at the very end of the window (0..=100); it rises toward 100 for
    /// a return right after the sale.
    pub weight: u8,
}

fn default_return_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_return_weight() -> u8 {
    50
}

impl Default for ReturnAfterRedemptionConfig {
    fn default() -> Self {
        ReturnAfterRedemptionConfig {
            enabled: enabled(),
            window: default_return_window(),
            weight: default_return_weight(),
        }
    }
}

/// SEQUENCE_GAP settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequenceGapConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when a missing `till_seq` is still missing this long after the till synced the
    /// event that revealed it (record time on `till.events`).
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Most missing sequence numbers remembered per till; a larger jump is counted as this many.
    pub max_missing_per_till: u32,
    /// Risk score of a single missing receipt (0..=100); it rises toward 100 with more missing.
    pub weight: u8,
}

fn default_gap_open_for() -> Duration {
    Duration::from_secs(3600)
}
fn default_gap_max_missing() -> u32 {
    1024
}
fn default_gap_weight() -> u8 {
    30
}

impl Default for SequenceGapConfig {
    fn default() -> Self {
        SequenceGapConfig {
            enabled: enabled(),
            open_for: default_gap_open_for(),
            max_missing_per_till: default_gap_max_missing(),
            weight: default_gap_weight(),
        }
    }
}

/// CLOCK_DRIFT settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockDriftConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Alert when an online event's `occurred_at` differs from its record timestamp by more than
    /// this, either way.
    #[serde(with = "humantime_serde")]
    pub max_drift: Duration,
    /// Risk score just past the threshold (0..=100); it rises toward 100 at twice the threshold.
    pub weight: u8,
}

fn default_drift_max() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_drift_weight() -> u8 {
    20
}

impl Default for ClockDriftConfig {
    fn default() -> Self {
        ClockDriftConfig {
            enabled: enabled(),
            max_drift: default_drift_max(),
            weight: default_drift_weight(),
        }
    }
}

fn weight(rule: &'static str, weight: u8) -> Result<(), ConfigError> {
    if weight > 100 {
        return Err(ConfigError::WeightOutOfRange { rule, weight });
    }
    Ok(())
}

fn positive(rule: &'static str, field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::ZeroDuration { rule, field });
    }
    Ok(())
}

fn at_least_one(rule: &'static str, field: &'static str, v: i64) -> Result<(), ConfigError> {
    if v < 1 {
        return Err(ConfigError::ZeroThreshold { rule, field });
    }
    Ok(())
}

impl FraudGuardConfig {
    /// Checks every value and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("fraud_guard", "max_lateness", self.max_lateness)?;
        if self.commit_interval > Duration::from_secs(60) {
            return Err(ConfigError::CommitIntervalTooLong(self.commit_interval));
        }
        let v = &self.coupon_velocity;
        at_least_one("coupon_velocity", "min_stores", i64::from(v.min_stores))?;
        at_least_one("coupon_velocity", "min_tills", i64::from(v.min_tills))?;
        positive("coupon_velocity", "window", v.window)?;
        weight("coupon_velocity", v.weight)?;
        at_least_one(
            "offline_exposure",
            "cap_minor",
            self.offline_exposure.cap_minor,
        )?;
        weight("offline_exposure", self.offline_exposure.weight)?;
        let o = &self.override_rate;
        at_least_one("override_rate", "max_overrides", i64::from(o.max_overrides))?;
        positive("override_rate", "window", o.window)?;
        weight("override_rate", o.weight)?;
        let r = &self.return_after_redemption;
        positive("return_after_redemption", "window", r.window)?;
        weight("return_after_redemption", r.weight)?;
        let g = &self.sequence_gap;
        positive("sequence_gap", "open_for", g.open_for)?;
        at_least_one(
            "sequence_gap",
            "max_missing_per_till",
            i64::from(g.max_missing_per_till),
        )?;
        weight("sequence_gap", g.weight)?;
        positive("clock_drift", "max_drift", self.clock_drift.max_drift)?;
        weight("clock_drift", self.clock_drift.weight)?;
        for (rule, window) in [
            ("coupon_velocity", v.window),
            ("override_rate", o.window),
            ("return_after_redemption", r.window),
            ("sequence_gap", g.open_for),
        ] {
            if self.max_lateness < window {
                return Err(ConfigError::LatenessBelowWindow {
                    rule,
                    window,
                    max_lateness: self.max_lateness,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_typed_errors() {
        let c = FraudGuardConfig::default();
        assert_eq!(c.validate(), Ok(()));
        let mut bad = c.clone();
        bad.coupon_velocity.min_stores = 0;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::ZeroThreshold { .. })
        ));
        let mut bad = c.clone();
        bad.commit_interval = Duration::from_secs(61);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::CommitIntervalTooLong(_))
        ));
        let mut bad = c.clone();
        bad.clock_drift.weight = 101;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::WeightOutOfRange { .. })
        ));
        let mut bad = c.clone();
        bad.override_rate.window = Duration::ZERO;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::ZeroDuration { .. })
        ));
        let mut bad = c;
        bad.max_lateness = Duration::from_secs(3600);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::LatenessBelowWindow { .. })
        ));
    }

    #[test]
    fn parses_with_humantime_and_rejects_unknown_keys() {
        let c: FraudGuardConfig =
            serde_json::from_str(r#"{"alert_cooldown":"15m","coupon_velocity":{"window":"1h"}}"#)
                .unwrap();
        assert_eq!(c.alert_cooldown, Duration::from_secs(900));
        assert_eq!(c.coupon_velocity.window, Duration::from_secs(3600));
        assert_eq!(c.coupon_velocity.min_stores, 3);
        assert!(serde_json::from_str::<FraudGuardConfig>(r#"{"bogus":1}"#).is_err());
        assert!(
            serde_json::from_str::<FraudGuardConfig>(r#"{"clock_drift":{"drift":"1m"}}"#).is_err()
        );
    }
}
