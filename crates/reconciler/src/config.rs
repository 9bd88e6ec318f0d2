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
    /// Deprecated: the former place of `[fingerprint] key`, still read (with a warning) for one
    /// release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_key: Option<String>,
}

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
        Ok(())
    }
}
