//! The fraud-guard stage: streaming fraud rules over accepted till events, with alerts and a risk
//! score. The reconciler settles what happened; fraud-guard warns while it is happening.
//!
//! It reads `till.events`, what the tills sent, in record-time order across partitions (see
//! [`Order::RecordTime`](tillbridge_core::log::Order)), decodes and validates each event as
//! ingest does and judges each event id once; it writes `FraudAlert`s to `tillbridge.alerts`,
//! keyed by store id. Rules, all in event time
//! (`occurred_at`), each with its own switch, thresholds, window and weight in
//! [`FraudGuardConfig`]:
//!
//! - COUPON_VELOCITY: one coupon code at >= 3 stores or >= 4 tills within 30 minutes.
//! - OFFLINE_EXPOSURE: per store, coupon and line discounts given offline since each till last
//!   synced (an online event or a till_status ONLINE) over 500.00 (50000 minor units).
//! - OVERRIDE_RATE: per cashier, more than 5 manual overrides within an hour.
//! - RETURN_AFTER_REDEMPTION: a partial return within 24 h of a sale that used a coupon (a full
//!   return releases the coupon and raises nothing).
//! - SEQUENCE_GAP: a missing `till_seq` still missing 1 h after the till synced the receipt
//!   that revealed it, judged on `till.events` in sync (record) time (see
//!   `rules::sequence_gap`).
//! - CLOCK_DRIFT: `occurred_at` more than 10 minutes from the record timestamp on an event not
//!   flagged offline.
//!
//! Every alert has a deterministic id (rule, subject and cool-down bucket), a subject (`store:`,
//! `till:`, `cashier:` or a masked `coupon:SU…YZ#<hmac16>`; a full coupon code is never stored
//! or written), evidence (event ids and a readable summary), a risk score 0..100 (the rule's
//! weight at the threshold, rising to 100 at twice the threshold), its window, and `late` when
//! the newest event time seen had already passed the window's end. Alerts of the same rule and
//! subject whose windows start within the cool-down are merged into the first.
//!
//! An alert, in proto3 JSON (ids shortened):
//!
//! ```text
//! {"id":"f21b91cf-…","rule":"COUPON_VELOCITY","storeId":"store-03",
//!  "subject":"coupon:SP…EF#750746f3cdbb4820","riskScore":70,"eventIds":["3d12…","55eb…","ce0b…"],
//!  "evidence":"3 redemptions at 3 stores (store-01, store-02, store-03) and 3 tills between
//!   2026-03-02T09:00:00.000Z and 2026-03-02T09:11:00.000Z; limits 3 stores or 4 tills within 30m",
//!  "windowStart":"2026-03-02T09:00:00Z","windowEnd":"2026-03-02T09:30:00Z"}
//! ```
//!
//! State is bounded by `max_lateness` (default 72 h): events further behind the newest event
//! time are counted and skipped, and every window that ends before that horizon is dropped
//! (each time the horizon has moved 10 minutes, at that point of the event sequence).
//!
//! Because the input order is a function of the topic's contents, so is every alert: the same
//! records give the same alerts (ids and content, `late` included) live, as a backlog, after a
//! wipe and replay, for any batch size and on either transport.
//!
//! Parts: [`FraudGuard`] (the [`Processor`](tillbridge_core::stage::Processor), with the
//! delivery guarantee on its docs), [`FraudGuardConfig`] and one sub-struct per rule,
//! [`FraudGuardStats`], [`Error`] and [`ConfigError`]. Inside: `rules`, one file per rule
//! (`coupon_velocity`, `offline_exposure`, `override_rate`, `return_after_redemption`,
//! `sequence_gap` on `till.events`, `clock_drift`), each owning its state, its sled sections,
//! its evaluation and its expiry; `engine` (admission, the watermark and horizon, calling each
//! rule per event, cool-down merging and the periodic expiry); `state` (everything remembered
//! and its sled entries: the meta entry, the ids judged, the cool-down starts and each rule's
//! sections); `kv` (tagged sections and the dirty keys) and `window` (sorted lists and sliding
//! windows), shared by the rules and importing none; `alert` (masking, scores, ids); `config`;
//! `processor` (decoding, replay protection, commits); `error`.

mod alert;
mod config;
mod engine;
mod error;
mod kv;
mod processor;
mod rules;
mod state;
mod window;

use tillbridge_core::config::Topics;

pub use config::{
    ClockDriftConfig, ConfigError, CouponVelocityConfig, FraudGuardConfig, OfflineExposureConfig,
    OverrideRateConfig, ReturnAfterRedemptionConfig, SequenceGapConfig,
};
pub use error::Error;
pub use processor::{FraudGuard, FraudGuardStats};

/// The topics the stage reads.
pub fn input_topics(topics: &Topics) -> Vec<String> {
    vec![topics.till_events.clone()]
}
