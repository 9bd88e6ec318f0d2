//! The rules' state and their evaluation, all in event time (`occurred_at`).
//!
//! Every structure here is bounded by time: the *horizon* is the newest event time seen minus
//! `max_lateness`. Events older than the horizon are not judged, so anything whose window ends
//! before the horizon can no longer matter and is dropped by [`Engine::expire`]. With a stable
//! set of stores, tills and cashiers the state therefore stays flat however long the stage runs.
//! Coupon codes are never kept: coupons are keyed by their masked subject, which carries an HMAC
//! fingerprint.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tillbridge_core::domain::{Body, Connectivity, TillEvent};
use tillbridge_proto::pb;
use uuid::Uuid;

use crate::alert::{self, capped_ids, excess_pct, fmt_dur, fmt_ms, CodeMasker, Rule, Trigger};
use crate::config::FraudGuardConfig;
use crate::gaps::{self, GapState};

/// Most returns remembered per session while waiting for their sale to arrive.
const MAX_PENDING_RETURNS_PER_SESSION: usize = 16;
/// Most later offline redemptions at which a late offline redemption re-evaluates its store's
/// exposure (the exposure at those times grew by the late value).
const MAX_EXPOSURE_CANDIDATES: usize = 64;
/// Most window starts tried when a redemption or override lands in a busy sliding window.
const MAX_WINDOW_STARTS: usize = 64;
/// How far the horizon moves between two expiries. Expiry runs at fixed points of the event
/// sequence (when the horizon has moved this far), never at batch ends, because it folds old
/// offline value into `carried` and so changes what later evidence lists.
const EXPIRY_STEP_MS: i64 = 10 * 60 * 1000;

fn ms_of(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One redemption of a coupon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CouponHit {
    ms: i64,
    event_id: Uuid,
    store: String,
    till: String,
}

/// One manual override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OverrideHit {
    ms: i64,
    event_id: Uuid,
    store: String,
}

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

/// What the rules keep per till.
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
}

/// A sale that used coupons, kept for RETURN_AFTER_REDEMPTION.
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

/// Everything the stage remembers, with the input offsets it reflects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    /// Highest offset applied, per topic and partition.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Newest event time seen.
    pub watermark_ms: Option<i64>,
    /// Event ids judged, with their event time (for deduplication).
    seen: BTreeMap<Uuid, i64>,
    /// Redemptions per masked coupon subject (sorted by time).
    coupons: BTreeMap<String, Vec<CouponHit>>,
    /// Per `{store}/{till}`.
    tills: BTreeMap<String, TillState>,
    /// Overrides per cashier (sorted by time).
    cashiers: BTreeMap<String, Vec<OverrideHit>>,
    /// Sales with coupons, per session id.
    sales: BTreeMap<String, SaleEntry>,
    /// Returns waiting for their sale, per original session id.
    returns: BTreeMap<String, Vec<ReturnEntry>>,
    /// Window starts of the alerts emitted, per `RULE|subject`, for the cool-down.
    alerted: BTreeMap<String, Vec<i64>>,
    /// SEQUENCE_GAP's own state, kept on `till.events` (see `gaps`).
    gaps: GapState,
    /// The horizon of the last expiry.
    #[serde(default)]
    expired_at: Option<i64>,
}

impl State {
    /// Number of entries held (map keys plus list items), the figure that must stay flat.
    pub(crate) fn entries(&self) -> usize {
        self.offsets.values().map(BTreeMap::len).sum::<usize>()
            + self.seen.len()
            + self.coupons.values().map(|v| 1 + v.len()).sum::<usize>()
            + self.tills.values().map(TillState::entries).sum::<usize>()
            + self.cashiers.values().map(|v| 1 + v.len()).sum::<usize>()
            + self.sales.len()
            + self.returns.values().map(|v| 1 + v.len()).sum::<usize>()
            + self.alerted.values().map(|v| 1 + v.len()).sum::<usize>()
            + self.gaps.entries()
    }
}

/// The meta entry of the state: what is not kept per key.
#[derive(Default, Serialize, Deserialize)]
struct Meta {
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    watermark_ms: Option<i64>,
    expired_at: Option<i64>,
    gap_read_ms: BTreeMap<i32, i64>,
    gap_open: Vec<gaps::OpenGap>,
}

const META_KEY: &[u8] = b"m";
const TAG_SEEN: u8 = b's';
const TAG_COUPON: u8 = b'c';
const TAG_TILL: u8 = b't';
const TAG_CASHIER: u8 = b'k';
const TAG_SALE: u8 = b'S';
const TAG_RETURNS: u8 = b'r';
const TAG_ALERTED: u8 = b'a';
const TAG_GAP_TILL: u8 = b'g';

fn kv_key(tag: u8, k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.len() + 2);
    v.extend_from_slice(&[tag, b'/']);
    v.extend_from_slice(k);
    v
}

fn section<V: Serialize>(
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    tag: u8,
    map: &BTreeMap<String, V>,
) -> serde_json::Result<()> {
    for (k, v) in map {
        out.push((kv_key(tag, k.as_bytes()), serde_json::to_vec(v)?));
    }
    Ok(())
}

fn bad_entry(what: &str) -> serde_json::Error {
    serde::de::Error::custom(format!("unreadable state entry: {what}"))
}

impl State {
    /// The state as one entry per key (a coupon, a till, a cashier, an event id...), so that a
    /// batch writes only the entries it changed and expiry removes entries one by one.
    pub(crate) fn to_kv(&self) -> serde_json::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = self.small_kv()?;
        for (id, ms) in &self.seen {
            out.push((kv_key(TAG_SEEN, id.as_bytes()), ms.to_be_bytes().to_vec()));
        }
        section(&mut out, TAG_COUPON, &self.coupons)?;
        section(&mut out, TAG_TILL, &self.tills)?;
        section(&mut out, TAG_CASHIER, &self.cashiers)?;
        section(&mut out, TAG_SALE, &self.sales)?;
        section(&mut out, TAG_RETURNS, &self.returns)?;
        section(&mut out, TAG_ALERTED, &self.alerted)?;
        Ok(out)
    }

    /// The entries written in full at every commit: the meta entry (offsets, watermark, open
    /// sequence gaps) and the sequence state per till (one per till, small).
    pub(crate) fn small_kv(&self) -> serde_json::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::with_capacity(self.gaps.tills.len() + 1);
        let meta = Meta {
            offsets: self.offsets.clone(),
            watermark_ms: self.watermark_ms,
            expired_at: self.expired_at,
            gap_read_ms: self.gaps.read_ms.clone(),
            gap_open: self.gaps.open.clone(),
        };
        out.push((META_KEY.to_vec(), serde_json::to_vec(&meta)?));
        section(&mut out, TAG_GAP_TILL, &self.gaps.tills)?;
        Ok(out)
    }

    /// The bytes of the entry at `key` as [`State::to_kv`] writes it, `None` when it is gone.
    pub(crate) fn entry(&self, key: &[u8]) -> serde_json::Result<Option<Vec<u8>>> {
        let (Some(tag), Some(rest)) = (key.first().copied(), key.get(2..)) else {
            return Err(bad_entry("short key"));
        };
        let name = std::str::from_utf8(rest).map_err(|_| bad_entry("key is not UTF-8"));
        fn json<V: Serialize>(v: Option<&V>) -> serde_json::Result<Option<Vec<u8>>> {
            v.map(serde_json::to_vec).transpose()
        }
        match tag {
            TAG_SEEN => {
                let id = Uuid::from_slice(rest).map_err(|_| bad_entry("event id"))?;
                Ok(self.seen.get(&id).map(|ms| ms.to_be_bytes().to_vec()))
            }
            TAG_COUPON => json(self.coupons.get(name?)),
            TAG_TILL => json(self.tills.get(name?)),
            TAG_CASHIER => json(self.cashiers.get(name?)),
            TAG_SALE => json(self.sales.get(name?)),
            TAG_RETURNS => json(self.returns.get(name?)),
            TAG_ALERTED => json(self.alerted.get(name?)),
            TAG_GAP_TILL => json(self.gaps.tills.get(name?)),
            _ => Err(bad_entry("unknown key")),
        }
    }

    /// The state from the entries [`State::to_kv`] wrote.
    pub(crate) fn from_kv(
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> serde_json::Result<State> {
        let mut s = State::default();
        for (k, v) in entries {
            if k == META_KEY {
                let m: Meta = serde_json::from_slice(&v)?;
                s.offsets = m.offsets;
                s.watermark_ms = m.watermark_ms;
                s.expired_at = m.expired_at;
                s.gaps.read_ms = m.gap_read_ms;
                s.gaps.open = m.gap_open;
                continue;
            }
            let (Some(tag), Some(rest)) = (k.first().copied(), k.get(2..)) else {
                return Err(bad_entry("short key"));
            };
            let name =
                || String::from_utf8(rest.to_vec()).map_err(|_| bad_entry("key is not UTF-8"));
            match tag {
                TAG_SEEN => {
                    let id = Uuid::from_slice(rest).map_err(|_| bad_entry("event id"))?;
                    let ms =
                        <[u8; 8]>::try_from(v.as_slice()).map_err(|_| bad_entry("event time"))?;
                    s.seen.insert(id, i64::from_be_bytes(ms));
                }
                TAG_COUPON => {
                    s.coupons.insert(name()?, serde_json::from_slice(&v)?);
                }
                TAG_TILL => {
                    s.tills.insert(name()?, serde_json::from_slice(&v)?);
                }
                TAG_CASHIER => {
                    s.cashiers.insert(name()?, serde_json::from_slice(&v)?);
                }
                TAG_SALE => {
                    s.sales.insert(name()?, serde_json::from_slice(&v)?);
                }
                TAG_RETURNS => {
                    s.returns.insert(name()?, serde_json::from_slice(&v)?);
                }
                TAG_ALERTED => {
                    s.alerted.insert(name()?, serde_json::from_slice(&v)?);
                }
                TAG_GAP_TILL => {
                    s.gaps.tills.insert(name()?, serde_json::from_slice(&v)?);
                }
                _ => return Err(bad_entry("unknown key")),
            }
        }
        Ok(s)
    }
}

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

/// The state entries changed since the last commit (see [`State::entry`]).
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub keys: BTreeSet<Vec<u8>>,
}

impl Dirty {
    fn touch(&mut self, tag: u8, key: &[u8]) {
        self.keys.insert(kv_key(tag, key));
    }
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

/// Insert keeping the list sorted by time (a late event lands in its place).
fn insert_sorted<T>(v: &mut Vec<T>, item: T, ms: impl Fn(&T) -> i64) {
    let t = ms(&item);
    let i = v.partition_point(|x| ms(x) <= t);
    v.insert(i, item);
}

/// Among the windows `[s, s + len]` that contain `t`, with `s` the time of a hit, the one where
/// `metric` is highest (the earliest on a tie): `(start, first index, end index, metric)`. At
/// most [`MAX_WINDOW_STARTS`] starts are tried, the latest ones, so a very busy key costs
/// bounded work per event.
fn best_window<T>(
    hits: &[T],
    t: i64,
    len: i64,
    ms: impl Fn(&T) -> i64,
    metric: impl Fn(&[T]) -> i64,
) -> Option<(i64, usize, usize, i64)> {
    let lo = hits.partition_point(|h| ms(h) < t.saturating_sub(len));
    let hi = hits.partition_point(|h| ms(h) <= t);
    let lo = lo.max(hi.saturating_sub(MAX_WINDOW_STARTS));
    let mut best: Option<(i64, usize, usize, i64)> = None;
    for i in lo..hi {
        let s = ms(&hits[i]);
        let end = hits.partition_point(|h| ms(h) <= s.saturating_add(len));
        let m = metric(&hits[i..end]);
        if best.is_none_or(|b| m > b.3) {
            best = Some((s, i, end, m));
        }
    }
    best
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
        if self.state.seen.contains_key(&ev.event_id) {
            return Admission::Duplicate;
        }
        let ms = ev.occurred_at.timestamp_millis();
        if self.horizon().is_some_and(|h| ms < h) {
            return Admission::TooLate;
        }
        self.state.seen.insert(ev.event_id, ms);
        self.dirty.touch(TAG_SEEN, ev.event_id.as_bytes());
        Admission::Judge
    }

    /// Applies one admitted event to every enabled rule and returns the alerts it raises.
    pub(crate) fn apply(&mut self, ev: &TillEvent, record_ts: Option<i64>) -> Vec<pb::FraudAlert> {
        let ms = ev.occurred_at.timestamp_millis();
        let wm = self.state.watermark_ms;
        let mut triggers = Vec::new();
        if self.cfg.clock_drift.enabled {
            triggers.extend(self.clock_drift(ev, ms, record_ts));
        }
        self.track_till(ev, ms);
        match &ev.body {
            Body::Sale(sale) => {
                if self.cfg.coupon_velocity.enabled {
                    let codes: BTreeSet<&str> =
                        sale.coupons.iter().map(|c| c.code.as_str()).collect();
                    for code in codes {
                        triggers.extend(self.coupon_velocity(ev, ms, code));
                    }
                }
                if ev.offline && self.cfg.offline_exposure.enabled {
                    let value = sale
                        .coupons
                        .iter()
                        .map(|c| c.discount_minor)
                        .chain(sale.lines.iter().map(|l| l.discount_minor))
                        .fold(0i64, i64::saturating_add);
                    if value > 0 {
                        triggers.extend(self.offline_exposure(ev, ms, value));
                    }
                }
                if self.cfg.return_after_redemption.enabled && !sale.coupons.is_empty() {
                    triggers.extend(self.remember_sale(ev, ms, sale));
                }
            }
            Body::Return(r) => {
                if self.cfg.return_after_redemption.enabled {
                    let entry = ReturnEntry {
                        ms,
                        event_id: ev.event_id,
                        store: ev.store_id.clone(),
                        till: ev.till_id.clone(),
                        cashier: ev.cashier_id.clone(),
                        refund_minor: r.refund_minor,
                    };
                    triggers.extend(self.on_return(&r.original_session_id, entry));
                }
            }
            Body::SessionCancelled { .. } => {
                // A cancelled sale releases its coupons: nothing is kept by a later return.
                if let Some(sid) = &ev.session_id {
                    self.state.sales.remove(sid);
                    self.dirty.touch(TAG_SALE, sid.as_bytes());
                }
            }
            Body::ManualOverride(_) => {
                if self.cfg.override_rate.enabled {
                    triggers.extend(self.override_rate(ev, ms));
                }
            }
            Body::TillStatus(_) => {}
        }
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

    /// Turns a trigger into an alert, unless an alert of the same rule and subject starts within
    /// the cool-down (then it is merged into that one and nothing is written).
    fn emit(&mut self, t: Trigger, watermark_before: Option<i64>) -> Option<pb::FraudAlert> {
        let cooldown = ms_of(self.cfg.alert_cooldown);
        let key = format!("{}|{}", t.rule.code(), t.subject);
        self.dirty.touch(TAG_ALERTED, key.as_bytes());
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
        let (triggers, merged) = gaps::apply(
            &mut self.state.gaps,
            &self.cfg.sequence_gap,
            cooldown,
            rec,
            ev,
        );
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

    fn clock_drift(&self, ev: &TillEvent, ms: i64, record_ts: Option<i64>) -> Option<Trigger> {
        let ts = record_ts?;
        if ev.offline {
            return None;
        }
        let drift = ms.saturating_sub(ts);
        let limit = ms_of(self.cfg.clock_drift.max_drift);
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

    /// Updates the till's clock and online marks.
    fn track_till(&mut self, ev: &TillEvent, ms: i64) {
        let key = ev.till_key();
        self.dirty.touch(TAG_TILL, key.as_bytes());
        self.dirty.touch(TAG_TILL, key.as_bytes());
        let till = self.state.tills.entry(key).or_default();
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

    fn coupon_velocity(&mut self, ev: &TillEvent, ms: i64, code: &str) -> Option<Trigger> {
        let c = &self.cfg.coupon_velocity;
        let (min_stores, min_tills, len) = (
            i64::from(c.min_stores),
            i64::from(c.min_tills),
            ms_of(c.window),
        );
        let subject = self.masker.subject(code);
        self.dirty.touch(TAG_COUPON, subject.as_bytes());
        let hits = self.state.coupons.entry(subject.clone()).or_default();
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

    fn offline_exposure(&mut self, ev: &TillEvent, ms: i64, value: i64) -> Option<Trigger> {
        let cap = self.cfg.offline_exposure.cap_minor;
        let key = ev.till_key();
        let till = self.state.tills.entry(key).or_default();
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
            .state
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
                "offline discounts of {total} {currency} (minor units) since the tills last synced, \
                 from {} to {}; cap {cap}",
                fmt_ms(first.min(at)),
                fmt_ms(at)
            ),
            excess_pct: excess_pct(total, cap),
        })
    }

    fn override_rate(&mut self, ev: &TillEvent, ms: i64) -> Option<Trigger> {
        let cashier = ev.cashier_id.clone()?;
        let max = i64::from(self.cfg.override_rate.max_overrides);
        let len = ms_of(self.cfg.override_rate.window);
        self.dirty.touch(TAG_CASHIER, cashier.as_bytes());
        let hits = self.state.cashiers.entry(cashier.clone()).or_default();
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

    fn remember_sale(
        &mut self,
        ev: &TillEvent,
        ms: i64,
        sale: &tillbridge_core::domain::Sale,
    ) -> Vec<Trigger> {
        let Some(sid) = ev.session_id.clone() else {
            return Vec::new();
        };
        let entry = SaleEntry {
            ms,
            event_id: ev.event_id,
            store: ev.store_id.clone(),
            till: ev.till_id.clone(),
            total_minor: sale.total_minor,
            currency: ev.currency.map(|c| c.to_string()).unwrap_or_default(),
            coupons: sale
                .coupons
                .iter()
                .map(|c| (self.masker.subject(&c.code), c.discount_minor))
                .collect(),
        };
        self.state.sales.insert(sid.clone(), entry);
        self.dirty.touch(TAG_SALE, sid.as_bytes());
        // Returns that synced before their sale are judged now.
        self.dirty.touch(TAG_RETURNS, sid.as_bytes());
        let waiting = self.state.returns.remove(&sid).unwrap_or_default();
        waiting
            .into_iter()
            .filter_map(|r| self.on_return(&sid, r))
            .collect()
    }

    fn on_return(&mut self, original: &str, ret: ReturnEntry) -> Option<Trigger> {
        let Some(sale) = self.state.sales.get(original) else {
            self.dirty.touch(TAG_RETURNS, original.as_bytes());
            let waiting = self.state.returns.entry(original.to_owned()).or_default();
            if waiting.len() < MAX_PENDING_RETURNS_PER_SESSION {
                waiting.push(ret);
            }
            return None;
        };
        if tillbridge_core::domain::is_full_return(ret.refund_minor, sale.total_minor) {
            // A full return releases the coupons (as routing decides, by the same rule): nothing kept.
            self.state.sales.remove(original);
            self.dirty.touch(TAG_SALE, original.as_bytes());
            return None;
        }
        let len = ms_of(self.cfg.return_after_redemption.window);
        let elapsed = ret.ms.saturating_sub(sale.ms);
        if elapsed > len {
            return None;
        }
        let coupons: Vec<String> = sale
            .coupons
            .iter()
            .map(|(s, d)| format!("{} (discount {d})", s.trim_start_matches("coupon:")))
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
                "partial return of {} of {} {} at {}/{} {} after the sale at {}/{} ({}) that redeemed {}; \
                 the coupons stay redeemed",
                ret.refund_minor,
                sale.total_minor,
                sale.currency,
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

    /// Drops everything that can no longer matter (its window ends before `horizon`).
    fn expire(&mut self, horizon: i64) {
        // Every entry that shrinks or goes is marked for the next commit.
        let mut touched: Vec<Vec<u8>> = Vec::new();
        let s = &mut self.state;
        s.seen.retain(|id, ms| {
            let keep = *ms >= horizon;
            if !keep {
                touched.push(kv_key(TAG_SEEN, id.as_bytes()));
            }
            keep
        });
        let vel = ms_of(self.cfg.coupon_velocity.window);
        trim(&mut s.coupons, TAG_COUPON, &mut touched, |h| {
            h.ms.saturating_add(vel) >= horizon
        });
        let ovr = ms_of(self.cfg.override_rate.window);
        trim(&mut s.cashiers, TAG_CASHIER, &mut touched, |h| {
            h.ms.saturating_add(ovr) >= horizon
        });
        let rar = ms_of(self.cfg.return_after_redemption.window);
        s.sales.retain(|sid, e| {
            let keep = e.ms.saturating_add(rar) >= horizon;
            if !keep {
                touched.push(kv_key(TAG_SALE, sid.as_bytes()));
            }
            keep
        });
        trim(&mut s.returns, TAG_RETURNS, &mut touched, |r| {
            r.ms >= horizon
        });
        let longest = [vel, ovr, rar, ms_of(self.cfg.clock_drift.max_drift)]
            .into_iter()
            .max()
            .unwrap_or(0)
            .saturating_add(ms_of(self.cfg.alert_cooldown));
        trim(&mut s.alerted, TAG_ALERTED, &mut touched, |w| {
            w.saturating_add(longest) >= horizon
        });
        for (key, till) in s.tills.iter_mut() {
            let before = (till.syncs.len(), till.offline.len(), till.carried.clone());
            // Offline value up to the last sync before the horizon is closed for good; what is
            // still open from before the horizon is summed into `carried`.
            let k = till.syncs.partition_point(|t| *t < horizon);
            let closed_at = k.checked_sub(1).map(|i| till.syncs[i]);
            if k > 1 {
                till.syncs.drain(..k - 1);
            }
            if let Some(c) = closed_at {
                till.offline.retain(|h| h.ms > c);
                if till.carried.as_ref().is_some_and(|x| x.first_ms <= c) {
                    till.carried = None;
                }
            }
            let old = till.offline.partition_point(|h| h.ms < horizon);
            for h in till.offline.drain(..old) {
                let c = till.carried.get_or_insert(Carried {
                    first_ms: h.ms,
                    value_minor: 0,
                    count: 0,
                });
                c.first_ms = c.first_ms.min(h.ms);
                c.value_minor = c.value_minor.saturating_add(h.value_minor);
                c.count += 1;
            }
            if before != (till.syncs.len(), till.offline.len(), till.carried.clone()) {
                touched.push(kv_key(TAG_TILL, key.as_bytes()));
            }
        }
        s.tills.retain(|key, t| {
            let keep = t.last_ms >= horizon || !t.offline.is_empty() || t.carried.is_some();
            if !keep {
                touched.push(kv_key(TAG_TILL, key.as_bytes()));
            }
            keep
        });
        self.dirty.keys.extend(touched);
    }
}

/// Keeps the items of each list that `keep` accepts and drops emptied lists, noting every key
/// whose list changed.
fn trim<T>(
    map: &mut BTreeMap<String, Vec<T>>,
    tag: u8,
    touched: &mut Vec<Vec<u8>>,
    keep: impl Fn(&T) -> bool,
) {
    map.retain(|k, v| {
        let before = v.len();
        v.retain(&keep);
        if v.len() != before {
            touched.push(kv_key(tag, k.as_bytes()));
        }
        !v.is_empty()
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_through_its_entries() {
        let mut s = State::default();
        s.offsets.entry("t".into()).or_default().insert(3, 42);
        s.watermark_ms = Some(7);
        s.seen.insert(Uuid::from_u128(9), -5);
        s.coupons.insert(
            "coupon:AB…CD#00".into(),
            vec![CouponHit {
                ms: 1,
                event_id: Uuid::from_u128(1),
                store: "s".into(),
                till: "t".into(),
            }],
        );
        s.alerted.insert("X|y".into(), vec![1, 2]);
        s.gaps.read_ms.insert(0, 11);
        let kv = s.to_kv().unwrap();
        for (k, v) in kv.iter().filter(|(k, _)| k != META_KEY) {
            assert_eq!(s.entry(k).unwrap().as_ref(), Some(v), "{k:?}");
        }
        let back = State::from_kv(kv).unwrap();
        assert_eq!(back, s);
        assert!(State::from_kv(vec![(b"z/1".to_vec(), vec![])]).is_err());
    }

    #[test]
    fn best_window_prefers_the_fullest_window_containing_t() {
        let hits = vec![0i64, 10, 20, 100, 105];
        let w = best_window(&hits, 105, 10, |h| *h, |w| w.len() as i64).unwrap();
        assert_eq!(w, (100, 3, 5, 2));
        let w = best_window(&hits, 10, 10, |h| *h, |w| w.len() as i64).unwrap();
        assert_eq!(w, (0, 0, 2, 2));
        assert!(best_window(&hits, 50, 10, |h| *h, |w| w.len() as i64).is_none());
    }
}
