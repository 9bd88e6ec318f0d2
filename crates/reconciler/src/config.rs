//! The `[reconciler]` section, owned here and checked strictly at load by the binary whatever
//! stages it runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The reconciler stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerConfig {
    /// A redemption older than this behind the newest event time of its coupon is final.
    #[serde(with = "humantime_serde")]
    pub settlement_horizon: Duration,
    /// Policy: violations of these reasons get a REVIEW_ONLY action for an analyst instead of an
    /// automatic reversal or clawback. An unknown coupon is always review only.
    pub review_only: Vec<String>,
    /// How long the reconciler may go on with batches whose outputs are durable before it
    /// makes its state and offsets durable together (Kafka Streams' `commit.interval.ms`); 0
    /// commits every batch. A crash replays at most this much, with the same outputs.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Deprecated: the former place of `[fingerprint] key`, still read (with a warning) for one
    /// release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_key: Option<String>,
}

/// The longest commit interval: a crash replays up to that much.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(60);

/// The reasons a reconciler case can have.
pub const CASE_REASONS: [&str; 6] = [
    "OVER_LIMIT",
    "PER_PROFILE_LIMIT",
    "OUTSIDE_VALIDITY",
    "OFFLINE_NOT_ALLOWED",
    "UNKNOWN_COUPON",
    "POINTS_DEFICIT",
];

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            settlement_horizon: Duration::from_secs(72 * 3600),
            review_only: vec!["UNKNOWN_COUPON".into()],
            commit_interval: Duration::from_millis(100),
            report_key: None,
        }
    }
}

impl ReconcilerConfig {
    /// Checks what types cannot: every review-only reason is a case reason, and the horizon fits
    /// event-time arithmetic.
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.review_only {
            if !CASE_REASONS.contains(&r.as_str()) {
                return Err(format!(
                    "review_only: unknown reason {r:?} (one of {})",
                    CASE_REASONS.join(", ")
                ));
            }
        }
        if chrono::Duration::from_std(self.settlement_horizon).is_err() {
            return Err("settlement_horizon is too large".into());
        }
        if self.commit_interval > MAX_COMMIT_INTERVAL {
            return Err(
                "commit_interval must be at most 60s (a crash replays up to that much)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_long_commit_interval_is_refused() {
        let c = ReconcilerConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.commit_interval, Duration::from_millis(100));
        let bad = ReconcilerConfig {
            commit_interval: Duration::from_secs(61),
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().contains("commit_interval"));
        let every_batch = ReconcilerConfig {
            commit_interval: Duration::ZERO,
            ..c
        };
        assert_eq!(every_batch.validate(), Ok(()));
    }
}
