//! The six rules, one file each. A rule's file owns its state (the types it keeps and the sled
//! sections they are written under, see [`crate::kv`]), its evaluation (events in, `Trigger`s
//! out, before cool-down and scoring) and its expiry (what it drops once its window ends before
//! the horizon). The engine calls them in this order for every event: CLOCK_DRIFT, the till's
//! online marks (OFFLINE_EXPOSURE), then by body COUPON_VELOCITY, OFFLINE_EXPOSURE,
//! RETURN_AFTER_REDEMPTION or OVERRIDE_RATE; SEQUENCE_GAP runs on every `till.events` record
//! before its event is judged.
//!
//! Rules share helpers only through lower modules (`alert`, `config`, `kv`, `window`), never
//! through each other.

pub(crate) mod clock_drift;
pub(crate) mod coupon_velocity;
pub(crate) mod offline_exposure;
pub(crate) mod override_rate;
pub(crate) mod return_after_redemption;
pub(crate) mod sequence_gap;
