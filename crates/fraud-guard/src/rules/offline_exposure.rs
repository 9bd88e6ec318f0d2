//! OFFLINE_EXPOSURE: per store, the coupon and line discounts given offline since each till last
//! synced (an online event or a till_status ONLINE) over `cap_minor`.
//!
//! State: per till (`{store}/{till}`, section `t`) its newest event time, the event times it was
//! known online and the discounts it gave offline. Expiry closes offline value up to the last
//! sync before the horizon; what is still open from before the horizon is summed into
//! `carried`, so a till that never syncs stays bounded too.

use serde::{Deserialize, Serialize};
use tillbridge_core::domain::money::format_amount;
use tillbridge_core::domain::{Body, Connectivity, Sale, TillEvent};
use uuid::Uuid;

use crate::alert::{excess_pct, fmt_ms, Rule, Trigger};
use crate::config::OfflineExposureConfig;
use crate::kv::{Dirty, Keyed, Section, Sections};
use crate::window::insert_sorted;

const TAG_TILL: u8 = b't';
/// Most later offline redemptions at which a late offline redemption re-evaluates its store's
/// exposure (the exposure at those times grew by the late value).
const MAX_EXPOSURE_CANDIDATES: usize = 64;

/// Discount value given offline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OfflineHit {
    ms: i64,
    value_minor: i64,
    event_id: Uuid,
}

/// Offline value older than the horizon but still open (no sync since), summed to stay bounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Carried {
    first_ms: i64,
    value_minor: i64,
    count: u64,
}

/// What the rule keeps per till.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TillState {
    /// The till's newest event time.
    last_ms: i64,
    /// Event times at which the till was known online (sorted).
    syncs: Vec<i64>,
    /// Offline discounts (sorted by time).
    offline: Vec<OfflineHit>,
    carried: Option<Carried>,
}

impl TillState {
    fn entries(&self) -> usize {
        1 + self.syncs.len() + self.offline.len()
    }

    /// The till's offline value at event time `t`: what it gave offline after its last sync at
    /// or before `t`, up to `t`.
    fn exposure_at(&self, t: i64) -> (i64, Option<i64>, Vec<Uuid>) {
        let i = self.syncs.partition_point(|s| *s <= t);
        let last_sync = i.checked_sub(1).map(|i| self.syncs[i]);
        let mut value: i64 = 0;
        let mut first: Option<i64> = None;
        let mut ids = Vec::new();
        if let Some(c) = &self.carried {
            if last_sync.is_none_or(|s| s < c.first_ms) && c.first_ms <= t {
                value = value.saturating_add(c.value_minor);
                first = Some(c.first_ms);
            }
        }
        for h in &self.offline {
            if h.ms > t {
                break;
            }
            if last_sync.is_none_or(|s| h.ms > s) {
                value = value.saturating_add(h.value_minor);
                first = Some(first.map_or(h.ms, |f| f.min(h.ms)));
                ids.push(h.event_id);
            }
        }
        (value, first, ids)
    }

    /// Offline value up to the last sync before the horizon is closed for good; what is still
    /// open from before the horizon is summed into `carried`. Whether anything changed.
    fn expire(&mut self, horizon: i64) -> bool {
        let before = (self.syncs.len(), self.offline.len(), self.carried.clone());
        let k = self.syncs.partition_point(|t| *t < horizon);
        let closed_at = k.checked_sub(1).map(|i| self.syncs[i]);
        if k > 1 {
            self.syncs.drain(..k - 1);
        }
        if let Some(c) = closed_at {
            self.offline.retain(|h| h.ms > c);
            if self.carried.as_ref().is_some_and(|x| x.first_ms <= c) {
                self.carried = None;
            }
        }
        let old = self.offline.partition_point(|h| h.ms < horizon);
        for h in self.offline.drain(..old) {
            let c = self.carried.get_or_insert(Carried {
                first_ms: h.ms,
                value_minor: 0,
                count: 0,
            });
            c.first_ms = c.first_ms.min(h.ms);
            c.value_minor = c.value_minor.saturating_add(h.value_minor);
            c.count += 1;
        }
        before != (self.syncs.len(), self.offline.len(), self.carried.clone())
    }
}

/// The rule's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct OfflineExposure {
    /// Per `{store}/{till}`.
    tills: Keyed<TAG_TILL, TillState>,
}

impl OfflineExposure {
    /// Updates the till's clock and online marks (for every event, the rule enabled or not).
    pub(crate) fn track(&mut self, dirty: &mut Dirty, ev: &TillEvent) {
        let ms = ev.occurred_at.timestamp_millis();
        let key = ev.till_key();
        self.tills.touch(dirty, &key);
        let till = self.tills.entry(key).or_default();
        till.last_ms = till.last_ms.max(ms);
        // A till_status says itself whether the till is online; any other event made online
        // shows the till could reach the core at that time.
        let online = match &ev.body {
            Body::TillStatus(s) => s.status == Connectivity::Online,
            _ => !ev.offline,
        };
        if online {
            insert_sorted(&mut till.syncs, ms, |s| *s);
            till.syncs.dedup();
        }
    }

    /// Records the discounts of a sale made offline and judges the store's exposure.
    pub(crate) fn on_sale(
        &mut self,
        cfg: &OfflineExposureConfig,
        dirty: &mut Dirty,
        ev: &TillEvent,
        sale: &Sale,
    ) -> Option<Trigger> {
        if !ev.offline {
            return None;
        }
        let value = sale
            .coupons
            .iter()
            .map(|c| c.discount_minor)
            .chain(sale.lines.iter().map(|l| l.discount_minor))
            .fold(0i64, i64::saturating_add);
        if value <= 0 {
            return None;
        }
        let ms = ev.occurred_at.timestamp_millis();
        let cap = cfg.cap_minor;
        let key = ev.till_key();
        self.tills.touch(dirty, &key);
        let till = self.tills.entry(key).or_default();
        insert_sorted(
            &mut till.offline,
            OfflineHit {
                ms,
                value_minor: value,
                event_id: ev.event_id,
            },
            |h| h.ms,
        );
        let prefix = format!("{}/", ev.store_id);
        let store_tills: Vec<&TillState> = self
            .tills
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, t)| t)
            .collect();
        // The exposure grew at this event's time and at every later offline redemption of the
        // store (a late offline batch adds to what was open then).
        let mut candidates: Vec<i64> = store_tills
            .iter()
            .flat_map(|t| t.offline.iter().map(|h| h.ms))
            .filter(|t| *t >= ms)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.truncate(MAX_EXPOSURE_CANDIDATES);
        let mut best: Option<(i64, i64, i64, Vec<Uuid>)> = None;
        for t in candidates {
            let mut total: i64 = 0;
            let mut first = i64::MAX;
            let mut ids = Vec::new();
            for till in &store_tills {
                let (v, f, i) = till.exposure_at(t);
                total = total.saturating_add(v);
                if let Some(f) = f {
                    first = first.min(f);
                }
                ids.extend(i);
            }
            if best.as_ref().is_none_or(|b| total > b.1) {
                best = Some((t, total, first, ids));
            }
        }
        let (at, total, first, ids) = best?;
        if total <= cap {
            return None;
        }
        let currency = ev.currency.map(|c| c.to_string()).unwrap_or_default();
        Some(Trigger {
            rule: Rule::OfflineExposure,
            store_id: ev.store_id.clone(),
            subject: format!("store:{}", ev.store_id),
            window_start_ms: first.min(at),
            window_end_ms: at,
            event_ids: ids,
            evidence: format!(
                "offline discounts of {} since the tills last synced, from {} to {}; cap {}",
                format_amount(total, &currency),
                fmt_ms(first.min(at)),
                fmt_ms(at),
                format_amount(cap, &currency)
            ),
            excess_pct: excess_pct(total, cap),
        })
    }

    /// Closes or carries the offline value before `horizon` and drops the tills left with
    /// nothing after it.
    pub(crate) fn expire(&mut self, horizon: i64, dirty: &mut Dirty) {
        self.tills.update(dirty, |t| t.expire(horizon));
        self.tills.retain(dirty, |t| {
            t.last_ms >= horizon || !t.offline.is_empty() || t.carried.is_some()
        });
    }
}

impl Sections for OfflineExposure {
    fn sections(&self) -> Vec<&dyn Section> {
        vec![&self.tills]
    }
    fn sections_mut(&mut self) -> Vec<&mut dyn Section> {
        vec![&mut self.tills]
    }
    fn entries(&self) -> usize {
        self.tills.values().map(TillState::entries).sum()
    }
}
