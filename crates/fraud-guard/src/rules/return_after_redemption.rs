//! RETURN_AFTER_REDEMPTION: a partial return within `window` of a sale that used a coupon (a
//! full return releases the coupon and raises nothing, as does a cancelled sale).
//!
//! State: the sales with coupons per session id (section `S`) and the returns that synced
//! before their sale, per original session id (section `r`, at most
//! [`MAX_PENDING_RETURNS_PER_SESSION`] each). A sale is dropped once its window ends before the
//! horizon, a waiting return once it is older than the horizon.

use serde::{Deserialize, Serialize};
use tillbridge_core::domain::money::format_amount;
use tillbridge_core::domain::{Return, Sale, TillEvent};
use uuid::Uuid;

use crate::alert::{fmt_dur, fmt_ms, CodeMasker, Rule, Trigger};
use crate::config::ReturnAfterRedemptionConfig;
use crate::kv::{Dirty, Keyed, Section, Sections};
use crate::window::ms_of;

const TAG_SALE: u8 = b'S';
const TAG_RETURNS: u8 = b'r';
/// Most returns remembered per session while waiting for their sale to arrive.
const MAX_PENDING_RETURNS_PER_SESSION: usize = 16;

/// A sale that used coupons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SaleEntry {
    ms: i64,
    event_id: Uuid,
    store: String,
    till: String,
    total_minor: i64,
    currency: String,
    /// Masked coupon subjects and their discounts.
    coupons: Vec<(String, i64)>,
}

/// A return whose sale has not arrived yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReturnEntry {
    ms: i64,
    event_id: Uuid,
    store: String,
    till: String,
    cashier: Option<String>,
    refund_minor: i64,
}

/// The rule's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ReturnAfterRedemption {
    /// Sales with coupons, per session id.
    sales: Keyed<TAG_SALE, SaleEntry>,
    /// Returns waiting for their sale, per original session id.
    returns: Keyed<TAG_RETURNS, Vec<ReturnEntry>>,
}

impl ReturnAfterRedemption {
    /// Remembers a sale that used coupons and judges the returns that synced before it.
    pub(crate) fn on_sale(
        &mut self,
        cfg: &ReturnAfterRedemptionConfig,
        masker: &CodeMasker,
        dirty: &mut Dirty,
        ev: &TillEvent,
        sale: &Sale,
    ) -> Vec<Trigger> {
        if sale.coupons.is_empty() {
            return Vec::new();
        }
        let Some(sid) = ev.session_id.clone() else {
            return Vec::new();
        };
        let entry = SaleEntry {
            ms: ev.occurred_at.timestamp_millis(),
            event_id: ev.event_id,
            store: ev.store_id.clone(),
            till: ev.till_id.clone(),
            total_minor: sale.total_minor,
            currency: ev.currency.map(|c| c.to_string()).unwrap_or_default(),
            coupons: sale
                .coupons
                .iter()
                .map(|c| (masker.subject(&c.code), c.discount_minor))
                .collect(),
        };
        self.sales.insert(sid.clone(), entry);
        self.sales.touch(dirty, &sid);
        // Returns that synced before their sale are judged now.
        self.returns.touch(dirty, &sid);
        let waiting = self.returns.remove(&sid).unwrap_or_default();
        waiting
            .into_iter()
            .filter_map(|r| self.judge(cfg, dirty, &sid, r))
            .collect()
    }

    /// Judges a return against its sale, or keeps it until the sale arrives.
    pub(crate) fn on_return(
        &mut self,
        cfg: &ReturnAfterRedemptionConfig,
        dirty: &mut Dirty,
        ev: &TillEvent,
        ret: &Return,
    ) -> Option<Trigger> {
        let entry = ReturnEntry {
            ms: ev.occurred_at.timestamp_millis(),
            event_id: ev.event_id,
            store: ev.store_id.clone(),
            till: ev.till_id.clone(),
            cashier: ev.cashier_id.clone(),
            refund_minor: ret.refund_minor,
        };
        self.judge(cfg, dirty, &ret.original_session_id, entry)
    }

    /// A cancelled sale releases its coupons: nothing is kept for a later return.
    pub(crate) fn on_cancel(&mut self, dirty: &mut Dirty, ev: &TillEvent) {
        if let Some(sid) = &ev.session_id {
            self.sales.remove(sid);
            self.sales.touch(dirty, sid);
        }
    }

    fn judge(
        &mut self,
        cfg: &ReturnAfterRedemptionConfig,
        dirty: &mut Dirty,
        original: &str,
        ret: ReturnEntry,
    ) -> Option<Trigger> {
        let Some(sale) = self.sales.get(original) else {
            self.returns.touch(dirty, original);
            let waiting = self.returns.entry(original.to_owned()).or_default();
            if waiting.len() < MAX_PENDING_RETURNS_PER_SESSION {
                waiting.push(ret);
            }
            return None;
        };
        if tillbridge_core::domain::is_full_return(ret.refund_minor, sale.total_minor) {
            // A full return releases the coupons (as routing decides, by the same rule): nothing kept.
            self.sales.remove(original);
            self.sales.touch(dirty, original);
            return None;
        }
        let len = ms_of(cfg.window);
        let elapsed = ret.ms.saturating_sub(sale.ms);
        if elapsed > len {
            return None;
        }
        let coupons: Vec<String> = sale
            .coupons
            .iter()
            .map(|(s, d)| {
                format!(
                    "{} (discount {})",
                    s.trim_start_matches("coupon:"),
                    format_amount(*d, &sale.currency)
                )
            })
            .collect();
        let subject = match &ret.cashier {
            Some(c) => format!("cashier:{c}"),
            None => format!("till:{}/{}", ret.store, ret.till),
        };
        Some(Trigger {
            rule: Rule::ReturnAfterRedemption,
            store_id: ret.store.clone(),
            subject,
            window_start_ms: sale.ms,
            window_end_ms: sale.ms.saturating_add(len),
            event_ids: vec![sale.event_id, ret.event_id],
            evidence: format!(
                "partial return of {} of {} at {}/{} {} after the sale at {}/{} ({}) that redeemed {}; \
                 the coupons stay redeemed",
                format_amount(ret.refund_minor, &sale.currency),
                format_amount(sale.total_minor, &sale.currency),
                ret.store,
                ret.till,
                fmt_dur(elapsed.max(0)),
                sale.store,
                sale.till,
                fmt_ms(sale.ms),
                coupons.join(", ")
            ),
            // The sooner after the sale, the higher the score.
            excess_pct: len.saturating_sub(elapsed.max(0)).saturating_mul(100) / len.max(1),
        })
    }

    /// Drops the sales whose window ends before `horizon` and the returns older than it.
    pub(crate) fn expire(
        &mut self,
        cfg: &ReturnAfterRedemptionConfig,
        horizon: i64,
        dirty: &mut Dirty,
    ) {
        let len = ms_of(cfg.window);
        self.sales
            .retain(dirty, |e| e.ms.saturating_add(len) >= horizon);
        self.returns.trim(dirty, |r| r.ms >= horizon);
    }
}

impl Sections for ReturnAfterRedemption {
    fn sections(&self) -> Vec<&dyn Section> {
        vec![&self.sales, &self.returns]
    }
    fn sections_mut(&mut self) -> Vec<&mut dyn Section> {
        vec![&mut self.sales, &mut self.returns]
    }
    fn entries(&self) -> usize {
        self.sales.len() + self.returns.entries()
    }
}
