//! COUPON_VELOCITY: one coupon code redeemed at `min_stores` stores or `min_tills` tills within
//! `window`.
//!
//! State: the redemptions per masked coupon subject (the code itself is never kept), section
//! `c`, one entry per subject; a redemption is dropped once its window ends before the horizon.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tillbridge_core::domain::{Sale, TillEvent};
use uuid::Uuid;

use crate::alert::{fmt_dur, fmt_ms, CodeMasker, Rule, Trigger};
use crate::config::CouponVelocityConfig;
use crate::kv::{Dirty, Keyed, Section, Sections};
use crate::window::{best_window, insert_sorted, ms_of};

const TAG_COUPON: u8 = b'c';

/// One redemption of a coupon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CouponHit {
    ms: i64,
    event_id: Uuid,
    store: String,
    till: String,
}

/// The rule's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CouponVelocity {
    /// Redemptions per masked coupon subject (sorted by time).
    hits: Keyed<TAG_COUPON, Vec<CouponHit>>,
}

/// The distinct stores and tills of some redemptions.
fn distinct(w: &[CouponHit]) -> (BTreeSet<&str>, BTreeSet<(&str, &str)>) {
    let stores = w.iter().map(|h| h.store.as_str()).collect();
    let tills = w
        .iter()
        .map(|h| (h.store.as_str(), h.till.as_str()))
        .collect();
    (stores, tills)
}

impl CouponVelocity {
    /// Records the sale's coupons (each code once) and judges each.
    pub(crate) fn on_sale(
        &mut self,
        cfg: &CouponVelocityConfig,
        masker: &CodeMasker,
        dirty: &mut Dirty,
        ev: &TillEvent,
        sale: &Sale,
    ) -> Vec<Trigger> {
        let codes: BTreeSet<&str> = sale.coupons.iter().map(|c| c.code.as_str()).collect();
        codes
            .into_iter()
            .filter_map(|code| self.redeemed(cfg, dirty, ev, masker.subject(code)))
            .collect()
    }

    fn redeemed(
        &mut self,
        cfg: &CouponVelocityConfig,
        dirty: &mut Dirty,
        ev: &TillEvent,
        subject: String,
    ) -> Option<Trigger> {
        let ms = ev.occurred_at.timestamp_millis();
        let (min_stores, min_tills, len) = (
            i64::from(cfg.min_stores),
            i64::from(cfg.min_tills),
            ms_of(cfg.window),
        );
        self.hits.touch(dirty, &subject);
        let hits = self.hits.entry(subject.clone()).or_default();
        insert_sorted(
            hits,
            CouponHit {
                ms,
                event_id: ev.event_id,
                store: ev.store_id.clone(),
                till: ev.till_id.clone(),
            },
            |h| h.ms,
        );
        let metric = |w: &[CouponHit]| {
            let (s, t) = distinct(w);
            let s = i64::try_from(s.len()).unwrap_or(i64::MAX);
            let t = i64::try_from(t.len()).unwrap_or(i64::MAX);
            (s.saturating_mul(100) / min_stores).max(t.saturating_mul(100) / min_tills)
        };
        let (start, lo, hi, m) = best_window(hits, ms, len, |h| h.ms, metric)?;
        if m < 100 {
            return None;
        }
        let window = &hits[lo..hi];
        let (stores, tills) = distinct(window);
        let last = window.last().map_or(start, |h| h.ms);
        let stores_list: Vec<&str> = stores.iter().copied().collect();
        Some(Trigger {
            rule: Rule::CouponVelocity,
            store_id: ev.store_id.clone(),
            subject,
            window_start_ms: start,
            window_end_ms: start.saturating_add(len),
            event_ids: window.iter().map(|h| h.event_id).collect(),
            evidence: format!(
                "{} redemptions at {} stores ({}) and {} tills between {} and {}; limits {} stores or {} tills within {}",
                window.len(),
                stores.len(),
                stores_list.join(", "),
                tills.len(),
                fmt_ms(start),
                fmt_ms(last),
                min_stores,
                min_tills,
                fmt_dur(len)
            ),
            excess_pct: m.saturating_sub(100),
        })
    }

    /// Drops the redemptions whose window ends before `horizon`.
    pub(crate) fn expire(&mut self, cfg: &CouponVelocityConfig, horizon: i64, dirty: &mut Dirty) {
        let len = ms_of(cfg.window);
        self.hits
            .trim(dirty, |h| h.ms.saturating_add(len) >= horizon);
    }

    /// One redemption, for tests of the state's persistence.
    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, subject: &str, ms: i64, event_id: Uuid) {
        self.hits
            .entry(subject.into())
            .or_default()
            .push(CouponHit {
                ms,
                event_id,
                store: "s".into(),
                till: "t".into(),
            });
    }
}

impl Sections for CouponVelocity {
    fn sections(&self) -> Vec<&dyn Section> {
        vec![&self.hits]
    }
    fn sections_mut(&mut self) -> Vec<&mut dyn Section> {
        vec![&mut self.hits]
    }
    fn entries(&self) -> usize {
        self.hits.entries()
    }
}
