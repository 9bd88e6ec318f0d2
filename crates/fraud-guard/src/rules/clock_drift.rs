//! CLOCK_DRIFT: `occurred_at` more than `max_drift` from the record timestamp on an event not
//! flagged offline. Judged on the event alone: no state, nothing to expire.

use tillbridge_core::domain::TillEvent;

use crate::alert::{excess_pct, fmt_dur, fmt_ms, Rule, Trigger};
use crate::config::ClockDriftConfig;
use crate::window::ms_of;

/// Judges one event against the timestamp of its record (none: nothing to compare).
pub(crate) fn check(
    cfg: &ClockDriftConfig,
    ev: &TillEvent,
    record_ts: Option<i64>,
) -> Option<Trigger> {
    let ts = record_ts?;
    if ev.offline {
        return None;
    }
    let ms = ev.occurred_at.timestamp_millis();
    let drift = ms.saturating_sub(ts);
    let limit = ms_of(cfg.max_drift);
    if drift.saturating_abs() <= limit {
        return None;
    }
    Some(Trigger {
        rule: Rule::ClockDrift,
        store_id: ev.store_id.clone(),
        subject: format!("till:{}", ev.till_key()),
        window_start_ms: ms.min(ts),
        window_end_ms: ms.max(ts),
        event_ids: vec![ev.event_id],
        evidence: format!(
            "occurred_at {} vs record timestamp {}: drift {}{}, limit {}",
            fmt_ms(ms),
            fmt_ms(ts),
            if drift > 0 { "+" } else { "" },
            fmt_dur(drift),
            fmt_dur(limit)
        ),
        excess_pct: excess_pct(drift.saturating_abs(), limit),
    })
}
