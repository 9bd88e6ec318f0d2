//! OVERRIDE_RATE: per cashier, more than `max_overrides` manual overrides within `window`.
//!
//! State: the overrides per cashier, section `k`, one entry per cashier; an override is dropped
//! once its window ends before the horizon.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tillbridge_core::domain::TillEvent;
use uuid::Uuid;

use crate::alert::{excess_pct, fmt_dur, fmt_ms, Rule, Trigger};
use crate::config::OverrideRateConfig;
use crate::kv::{Dirty, Keyed, Section, Sections};
use crate::window::{best_window, insert_sorted, ms_of};

const TAG_CASHIER: u8 = b'k';

/// One manual override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OverrideHit {
    ms: i64,
    event_id: Uuid,
    store: String,
}

/// The rule's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct OverrideRate {
    /// Overrides per cashier (sorted by time).
    cashiers: Keyed<TAG_CASHIER, Vec<OverrideHit>>,
}

impl OverrideRate {
    /// Records a manual override of the event's cashier (none: nothing to judge) and judges it.
    pub(crate) fn on_override(
        &mut self,
        cfg: &OverrideRateConfig,
        dirty: &mut Dirty,
        ev: &TillEvent,
    ) -> Option<Trigger> {
        let cashier = ev.cashier_id.clone()?;
        let ms = ev.occurred_at.timestamp_millis();
        let max = i64::from(cfg.max_overrides);
        let len = ms_of(cfg.window);
        self.cashiers.touch(dirty, &cashier);
        let hits = self.cashiers.entry(cashier.clone()).or_default();
        insert_sorted(
            hits,
            OverrideHit {
                ms,
                event_id: ev.event_id,
                store: ev.store_id.clone(),
            },
            |h| h.ms,
        );
        let count = |w: &[OverrideHit]| i64::try_from(w.len()).unwrap_or(i64::MAX);
        let (start, lo, hi, n) = best_window(hits, ms, len, |h| h.ms, count)?;
        if n <= max {
            return None;
        }
        let window = &hits[lo..hi];
        let stores: BTreeSet<&str> = window.iter().map(|h| h.store.as_str()).collect();
        let stores: Vec<&str> = stores.into_iter().collect();
        let last = window.last().map_or(start, |h| h.ms);
        Some(Trigger {
            rule: Rule::OverrideRate,
            store_id: ev.store_id.clone(),
            subject: format!("cashier:{cashier}"),
            window_start_ms: start,
            window_end_ms: start.saturating_add(len),
            event_ids: window.iter().map(|h| h.event_id).collect(),
            evidence: format!(
                "{n} manual overrides between {} and {} at {}; limit {max} per {}",
                fmt_ms(start),
                fmt_ms(last),
                stores.join(", "),
                fmt_dur(len)
            ),
            excess_pct: excess_pct(n, max),
        })
    }

    /// Drops the overrides whose window ends before `horizon`.
    pub(crate) fn expire(&mut self, cfg: &OverrideRateConfig, horizon: i64, dirty: &mut Dirty) {
        let len = ms_of(cfg.window);
        self.cashiers
            .trim(dirty, |h| h.ms.saturating_add(len) >= horizon);
    }
}

impl Sections for OverrideRate {
    fn sections(&self) -> Vec<&dyn Section> {
        vec![&self.cashiers]
    }
    fn sections_mut(&mut self) -> Vec<&mut dyn Section> {
        vec![&mut self.cashiers]
    }
    fn entries(&self) -> usize {
        self.cashiers.entries()
    }
}
