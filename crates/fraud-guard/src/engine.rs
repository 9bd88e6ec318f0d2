//! The orchestration of the rules, all in event time (`occurred_at`): admission (deduplication
//! and the horizon), each rule called per event (see `rules`), the watermark, alerts out of
//! triggers (cool-down merging, scores, ids) and the periodic expiry that calls each rule's own.
//!
//! The *horizon* is the newest event time seen minus `max_lateness`: events older than it are
//! not judged, and expiry drops what ends before it (see `state`).

use tillbridge_core::domain::{Body, TillEvent};
use tillbridge_proto::pb;

use crate::alert::{self, capped_ids, CodeMasker, Rule, Trigger};
use crate::config::FraudGuardConfig;
use crate::kv::Dirty;
use crate::rules::clock_drift;
use crate::state::State;
use crate::window::ms_of;

/// How far the horizon moves between two expiries. Expiry runs at fixed points of the event
/// sequence (when the horizon has moved this far), never at batch ends, because it folds old
/// offline value into `carried` and so changes what later evidence lists.
const EXPIRY_STEP_MS: i64 = 10 * 60 * 1000;

/// Whether an event is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Judge,
    Duplicate,
    TooLate,
}

/// Alerts emitted and merged, per rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuleCounts {
    pub emitted: [u64; 6],
    pub merged: [u64; 6],
}

/// The rules over [`State`].
#[derive(Debug)]
pub(crate) struct Engine {
    cfg: FraudGuardConfig,
    masker: CodeMasker,
    pub state: State,
    pub counts: RuleCounts,
    /// Entries changed since the last commit.
    pub dirty: Dirty,
}

impl Engine {
    pub(crate) fn new(cfg: FraudGuardConfig, masker: CodeMasker, state: State) -> Self {
        Engine {
            cfg,
            masker,
            state,
            counts: RuleCounts::default(),
            dirty: Dirty::default(),
        }
    }

    fn horizon(&self) -> Option<i64> {
        self.state
            .watermark_ms
            .map(|w| w.saturating_sub(ms_of(self.cfg.max_lateness)))
    }

    /// Deduplicates by event id and drops events older than the horizon; a judged event is
    /// remembered.
    pub(crate) fn admit(&mut self, ev: &TillEvent) -> Admission {
        if self.state.seen.contains(&ev.event_id) {
            return Admission::Duplicate;
        }
        let ms = ev.occurred_at.timestamp_millis();
        if self.horizon().is_some_and(|h| ms < h) {
            return Admission::TooLate;
        }
        self.state.seen.insert(&mut self.dirty, ev.event_id, ms);
        Admission::Judge
    }

    /// Applies one admitted event to every enabled rule and returns the alerts it raises.
    pub(crate) fn apply(&mut self, ev: &TillEvent, record_ts: Option<i64>) -> Vec<pb::FraudAlert> {
        let ms = ev.occurred_at.timestamp_millis();
        let wm = self.state.watermark_ms;
        let triggers = self.triggers(ev, record_ts);
        // An event far ahead of its record timestamp (a till with a fast clock, or a forged
        // time) moves the watermark no further than that timestamp plus the drift the clock-drift
        // rule tolerates: one such event must not push every other event past the horizon. The
        // record timestamp is in the topic, so the bound is the same on every replay.
        let advance = record_ts.map_or(ms, |ts| {
            ms.min(ts.saturating_add(ms_of(self.cfg.clock_drift.max_drift)))
        });
        self.state.watermark_ms = Some(wm.map_or(advance, |w| w.max(advance)));
        let alerts = triggers
            .into_iter()
            .filter_map(|t| self.emit(t, wm))
            .collect();
        if let Some(h) = self.horizon() {
            if self
                .state
                .expired_at
                .is_none_or(|e| h.saturating_sub(e) >= EXPIRY_STEP_MS)
            {
                self.expire(h);
                self.state.expired_at = Some(h);
            }
        }
        alerts
    }

    /// What every enabled rule makes of one event, in the rules' fixed order.
    fn triggers(&mut self, ev: &TillEvent, record_ts: Option<i64>) -> Vec<Trigger> {
        let Engine {
            cfg,
            masker,
            state: s,
            dirty: d,
            ..
        } = self;
        let mut triggers = Vec::new();
        if cfg.clock_drift.enabled {
            triggers.extend(clock_drift::check(&cfg.clock_drift, ev, record_ts));
        }
        s.offline_exposure.track(d, ev);
        match &ev.body {
            Body::Sale(sale) => {
                if cfg.coupon_velocity.enabled {
                    let c = &cfg.coupon_velocity;
                    triggers.extend(s.coupon_velocity.on_sale(c, masker, d, ev, sale));
                }
                if cfg.offline_exposure.enabled {
                    let c = &cfg.offline_exposure;
                    triggers.extend(s.offline_exposure.on_sale(c, d, ev, sale));
                }
                if cfg.return_after_redemption.enabled {
                    let c = &cfg.return_after_redemption;
                    triggers.extend(s.return_after_redemption.on_sale(c, masker, d, ev, sale));
                }
            }
            Body::Return(r) => {
                if cfg.return_after_redemption.enabled {
                    let c = &cfg.return_after_redemption;
                    triggers.extend(s.return_after_redemption.on_return(c, d, ev, r));
                }
            }
            // Whether the rule is enabled or not, as the till marks are kept above.
            Body::SessionCancelled { .. } => s.return_after_redemption.on_cancel(d, ev),
            Body::ManualOverride(_) => {
                if cfg.override_rate.enabled {
                    triggers.extend(s.override_rate.on_override(&cfg.override_rate, d, ev));
                }
            }
            Body::TillStatus(_) => {}
        }
        triggers
    }

    /// Turns a trigger into an alert, unless an alert of the same rule and subject starts within
    /// the cool-down (then it is merged into that one and nothing is written).
    fn emit(&mut self, t: Trigger, watermark_before: Option<i64>) -> Option<pb::FraudAlert> {
        let cooldown = ms_of(self.cfg.alert_cooldown);
        let key = format!("{}|{}", t.rule.code(), t.subject);
        self.state.alerted.touch(&mut self.dirty, &key);
        let starts = self.state.alerted.entry(key).or_default();
        if starts
            .iter()
            .any(|w| (w.saturating_sub(t.window_start_ms)).abs() < cooldown)
        {
            self.counts.merged[t.rule.index()] += 1;
            tracing::debug!(rule = t.rule.code(), subject = %t.subject, "alert merged into an earlier one (cool-down)");
            return None;
        }
        starts.push(t.window_start_ms);
        let late = watermark_before.is_some_and(|w| w > t.window_end_ms);
        Some(self.alert(t, late))
    }

    /// Applies one `till.events` record, in its partition's offset order, to SEQUENCE_GAP, and
    /// returns the gap alerts it makes due. They are judged on the till's own partition, so
    /// their cool-down is too, and they are never `late`.
    pub(crate) fn apply_till_record(
        &mut self,
        rec: &tillbridge_core::log::Record,
        ev: Option<&pb::TillEvent>,
    ) -> Vec<pb::FraudAlert> {
        if !self.cfg.sequence_gap.enabled {
            return Vec::new();
        }
        let cooldown = ms_of(self.cfg.alert_cooldown);
        let (triggers, merged) =
            self.state
                .sequence_gap
                .on_record(&self.cfg.sequence_gap, cooldown, rec, ev);
        self.counts.merged[Rule::SequenceGap.index()] += merged;
        triggers.into_iter().map(|t| self.alert(t, false)).collect()
    }

    /// The alert of a trigger that passed the cool-down, scored, with its deterministic id.
    fn alert(&mut self, t: Trigger, late: bool) -> pb::FraudAlert {
        let cooldown = ms_of(self.cfg.alert_cooldown);
        self.counts.emitted[t.rule.index()] += 1;
        let weight = match t.rule {
            Rule::CouponVelocity => self.cfg.coupon_velocity.weight,
            Rule::OfflineExposure => self.cfg.offline_exposure.weight,
            Rule::OverrideRate => self.cfg.override_rate.weight,
            Rule::ReturnAfterRedemption => self.cfg.return_after_redemption.weight,
            Rule::SequenceGap => self.cfg.sequence_gap.weight,
            Rule::ClockDrift => self.cfg.clock_drift.weight,
        };
        let (event_ids, extra) = capped_ids(&t.event_ids);
        let mut evidence = t.evidence;
        if extra > 0 {
            evidence.push_str(&format!(" (+{extra} more events)"));
        }
        pb::FraudAlert {
            id: alert::alert_id(t.rule, &t.subject, t.window_start_ms, cooldown).to_string(),
            rule: t.rule.pb() as i32,
            store_id: t.store_id,
            subject: t.subject,
            risk_score: alert::risk_score(weight, t.excess_pct),
            event_ids,
            evidence,
            window_start: Some(alert::timestamp(t.window_start_ms)),
            window_end: Some(alert::timestamp(t.window_end_ms)),
            late,
        }
    }

    /// Drops everything that can no longer matter (its window ends before `horizon`): the ids
    /// judged, each rule's state, and the cool-down starts no trigger can come near any more.
    fn expire(&mut self, horizon: i64) {
        // Every entry that shrinks or goes is marked for the next commit.
        let Engine {
            cfg,
            state: s,
            dirty: d,
            ..
        } = self;
        s.seen.expire(horizon, d);
        s.coupon_velocity.expire(&cfg.coupon_velocity, horizon, d);
        s.override_rate.expire(&cfg.override_rate, horizon, d);
        s.return_after_redemption
            .expire(&cfg.return_after_redemption, horizon, d);
        s.offline_exposure.expire(horizon, d);
        // SEQUENCE_GAP's state is bounded by tills and open gaps, not by the horizon. A
        // cool-down start goes once no trigger of a windowed rule can start near it any more.
        let longest = [
            cfg.coupon_velocity.window,
            cfg.override_rate.window,
            cfg.return_after_redemption.window,
            cfg.clock_drift.max_drift,
        ]
        .into_iter()
        .map(ms_of)
        .max()
        .unwrap_or(0)
        .saturating_add(ms_of(cfg.alert_cooldown));
        s.alerted.trim(d, |w| w.saturating_add(longest) >= horizon);
    }
}
