//! The coupon ledger: which redemptions of one code stand and which are violations.
//!
//! Rules, in the order they apply to each redemption (ledger order: event time, then store, till,
//! till sequence, event id):
//! 1. Released (its session was cancelled or fully returned): it does not count.
//! 2. No definition in the catalog: UNKNOWN_COUPON, reviewed, never guessed.
//! 3. Outside `valid_from..=valid_until`: OUTSIDE_VALIDITY. Offline while `offline_allowed` is
//!    false: OFFLINE_NOT_ALLOWED. These are violations of their own and take no slot of a limit,
//!    since they are reversed anyway.
//! 4. Per (coupon, profile), the first `per_profile_limit` pass; later ones are PER_PROFILE_LIMIT.
//! 5. Of those left, the first `usage_limit` stand; later ones are OVER_LIMIT.
//!
//! Finality, in sync time (a fact's record timestamp, when it reached Kafka): a redemption is
//! final once a fact of its coupon has synced at least the horizon after it did. Its limit
//! decision is the one the ledger gave at that moment, from the facts synced by then and the
//! decisions frozen before; frozen standing redemptions keep their slots, so a redemption that
//! syncs later never displaces them: it takes what is left or is the over-redemption itself. A
//! frozen over-redemption stays one even if a slot frees later; a release still clears it, since
//! a cancelled sale needs no reversal. The definition in force judges the whole history (the
//! catalog topic is compacted: a replay sees only the latest). Every decision is therefore a
//! function of the facts (their event and sync times) and the definition, never of the order
//! or the batches they were read in: live, as a backlog or in a replay, the verdicts are the same.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use tillbridge_core::domain::CouponDefinition;

use crate::model::{
    add_exposure, Case, CouponState, Desired, Evaluation, Frozen, OrderKey, Reason, Redemption,
    Release, SubjectType, TimelineEntry,
};

/// What the ledger says about one redemption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Stands,
    Released,
    Violation(Reason),
}

impl Verdict {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Stands => "STANDS",
            Verdict::Released => "RELEASED",
            Verdict::Violation(r) => r.as_str(),
        }
    }
}

fn outside(def: &CouponDefinition, at: DateTime<Utc>) -> bool {
    def.valid_from.is_some_and(|f| at < f) || def.valid_until.is_some_and(|u| at > u)
}

/// Verdicts of some redemptions (in ledger order) under a definition, the releases known and the
/// limit decisions already frozen.
struct Judgement {
    verdicts: BTreeMap<String, Verdict>,
    /// Redemptions that reached the limit passes (not released, defined, valid).
    candidates: BTreeSet<String>,
    /// Event ids of the standing redemptions, in ledger order.
    standing: Vec<String>,
    /// Event ids passing the per-profile limit, per profile.
    passing_by_profile: BTreeMap<String, Vec<String>>,
}

fn judge(
    definition: Option<&CouponDefinition>,
    order: &[&Redemption],
    released: &BTreeSet<&str>,
    frozen: &BTreeMap<String, Frozen>,
) -> Judgement {
    let mut verdicts: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut candidates: Vec<&Redemption> = Vec::new();
    for r in order {
        let v = if released.contains(r.session_id.as_str()) {
            Some(Verdict::Released)
        } else {
            match definition {
                None => Some(Verdict::Violation(Reason::UnknownCoupon)),
                Some(d) if outside(d, r.occurred_at) => {
                    Some(Verdict::Violation(Reason::OutsideValidity))
                }
                Some(d) if r.offline && !d.offline_allowed => {
                    Some(Verdict::Violation(Reason::OfflineNotAllowed))
                }
                Some(_) => None,
            }
        };
        match v {
            Some(v) => {
                verdicts.insert(r.id.clone(), v);
            }
            None => candidates.push(r),
        }
    }
    let mut j = Judgement {
        verdicts,
        candidates: candidates.iter().map(|r| r.id.clone()).collect(),
        standing: Vec::new(),
        passing_by_profile: BTreeMap::new(),
    };
    let Some(def) = definition else {
        return j;
    };
    // Per-profile pass: who passes, per profile, in ledger order.
    let mut over_pp: BTreeSet<&str> = BTreeSet::new();
    if def.per_profile_limit > 0 {
        let mut groups: BTreeMap<&str, Vec<&Redemption>> = BTreeMap::new();
        for r in &candidates {
            if let Some(p) = r.profile_id.as_deref() {
                groups.entry(p).or_default().push(r);
            }
        }
        for (profile, group) in groups {
            let reserved = group
                .iter()
                .filter(|r| matches!(frozen.get(&r.id), Some(Frozen::Stands | Frozen::OverLimit)))
                .count();
            let mut avail = (def.per_profile_limit as usize).saturating_sub(reserved);
            for r in group {
                let passes = match frozen.get(&r.id) {
                    Some(Frozen::PerProfileLimit) => false,
                    Some(Frozen::Stands | Frozen::OverLimit) => true,
                    None if avail > 0 => {
                        avail -= 1;
                        true
                    }
                    None => false,
                };
                if passes {
                    j.passing_by_profile
                        .entry(profile.to_owned())
                        .or_default()
                        .push(r.event_id.clone());
                } else {
                    over_pp.insert(&r.id);
                    j.verdicts
                        .insert(r.id.clone(), Verdict::Violation(Reason::PerProfileLimit));
                }
            }
        }
    }
    let passing: Vec<&Redemption> = candidates
        .iter()
        .filter(|r| !over_pp.contains(r.id.as_str()))
        .copied()
        .collect();
    if def.usage_limit == 0 {
        for r in &passing {
            j.verdicts.insert(r.id.clone(), Verdict::Stands);
        }
        return j;
    }
    let reserved = passing
        .iter()
        .filter(|r| frozen.get(&r.id) == Some(&Frozen::Stands))
        .count();
    let mut avail = (def.usage_limit as usize).saturating_sub(reserved);
    for r in &passing {
        let stands = match frozen.get(&r.id) {
            Some(Frozen::Stands) => true,
            Some(Frozen::OverLimit) => false,
            // A redemption frozen over its per-profile limit that passes it now (a release
            // freed the profile's slot) is judged afresh against the usage limit.
            Some(Frozen::PerProfileLimit) | None if avail > 0 => {
                avail -= 1;
                true
            }
            Some(Frozen::PerProfileLimit) | None => false,
        };
        let v = if stands {
            j.standing.push(r.event_id.clone());
            Verdict::Stands
        } else {
            Verdict::Violation(Reason::OverLimit)
        };
        j.verdicts.insert(r.id.clone(), v);
    }
    j
}

/// When a redemption becomes final: the horizon after it synced.
fn due(r: &Redemption, horizon: chrono::Duration) -> Option<DateTime<Utc>> {
    r.synced().checked_add_signed(horizon)
}

/// The limit decisions frozen by `now`, replayed in sync time: at each moment a redemption
/// becomes final (the horizon after it synced), the ledger is judged with the facts synced by
/// then and the decisions frozen before, and that redemption's decision is frozen. The result
/// depends on the facts alone (their event and sync times), not on the order they were read in.
fn freeze(
    definition: Option<&CouponDefinition>,
    order: &[&Redemption],
    releases: &[&Release],
    horizon: chrono::Duration,
    now: Option<DateTime<Utc>>,
) -> BTreeMap<String, Frozen> {
    let mut frozen = BTreeMap::new();
    let Some(def) = definition else {
        return frozen;
    };
    let Some(now) = now else {
        return frozen;
    };
    if def.usage_limit == 0 && def.per_profile_limit == 0 {
        // No slots: no decision depends on another.
        return frozen;
    }
    let mut moments: Vec<DateTime<Utc>> = order
        .iter()
        .filter_map(|r| due(r, horizon))
        .filter(|d| *d <= now)
        .collect();
    moments.sort();
    moments.dedup();
    for m in moments {
        let known: Vec<&Redemption> = order.iter().copied().filter(|r| r.synced() <= m).collect();
        let released: BTreeSet<&str> = releases
            .iter()
            .filter(|r| r.synced() <= m)
            .map(|r| r.session_id.as_str())
            .collect();
        let j = judge(Some(def), &known, &released, &frozen);
        for r in &known {
            if due(r, horizon).is_some_and(|d| d <= m)
                && j.candidates.contains(&r.id)
                && !frozen.contains_key(&r.id)
            {
                let f = match j.verdicts.get(&r.id) {
                    Some(Verdict::Violation(Reason::OverLimit)) => Frozen::OverLimit,
                    Some(Verdict::Violation(Reason::PerProfileLimit)) => Frozen::PerProfileLimit,
                    _ => Frozen::Stands,
                };
                frozen.insert(r.id.clone(), f);
            }
        }
    }
    frozen
}

/// Judges every redemption of `st` (see the module documentation).
pub(crate) fn evaluate(st: &CouponState, horizon: chrono::Duration, case_id: &str) -> Evaluation {
    let mut order: Vec<&Redemption> = st.redemptions.values().collect();
    order.sort_by(|a, b| a.key().cmp(&b.key()));
    let releases: Vec<&Release> = st.releases.values().collect();
    let now = st.synced_now();
    let frozen = freeze(st.definition.as_ref(), &order, &releases, horizon, now);
    let released: BTreeSet<&str> = releases.iter().map(|r| r.session_id.as_str()).collect();
    let j = judge(st.definition.as_ref(), &order, &released, &frozen);

    let mut desired = BTreeMap::new();
    for r in &order {
        let Some(Verdict::Violation(reason)) = j.verdicts.get(r.id.as_str()).copied() else {
            continue;
        };
        let mut event_ids = vec![r.event_id.clone()];
        let mut decided_at = r.synced();
        let rests_on: &[String] = match reason {
            Reason::OverLimit => &j.standing,
            Reason::PerProfileLimit => r
                .profile_id
                .as_deref()
                .and_then(|p| j.passing_by_profile.get(p))
                .map_or(&[], Vec::as_slice),
            _ => &[],
        };
        for e in rests_on {
            if !event_ids.iter().any(|x| x == e) {
                event_ids.push(e.clone());
            }
            if let Some(s) = order.iter().find(|o| &o.event_id == e) {
                decided_at = decided_at.max(s.synced());
            }
        }
        desired.insert(
            r.id.clone(),
            Desired {
                reason,
                exposure_minor: r.discount_minor,
                currency: r.currency.clone(),
                points: 0,
                event_ids,
                decided_at,
            },
        );
    }
    let is_final = |synced: DateTime<Utc>| {
        now.is_some_and(|n| synced.checked_add_signed(horizon).is_some_and(|d| d <= n))
    };
    let case = build_case(st, &order, &j.verdicts, &is_final, case_id);
    Evaluation { desired, case }
}

fn build_case(
    st: &CouponState,
    order: &[&Redemption],
    verdicts: &BTreeMap<String, Verdict>,
    is_final: &dyn Fn(DateTime<Utc>) -> bool,
    case_id: &str,
) -> Option<Case> {
    let mut reasons: BTreeSet<Reason> = BTreeSet::new();
    let mut exposure: BTreeMap<String, i64> = BTreeMap::new();
    let mut flagged: Vec<(&Redemption, Reason)> = Vec::new();
    for r in order {
        if let Some(Verdict::Violation(reason)) = verdicts.get(r.id.as_str()) {
            reasons.insert(*reason);
            add_exposure(&mut exposure, &r.currency, r.discount_minor);
            flagged.push((r, *reason));
        }
    }
    let kind = *reasons.first()?;
    let mut timeline: Vec<(OrderKey<'_>, TimelineEntry)> = Vec::new();
    for r in order {
        let v = verdicts
            .get(r.id.as_str())
            .copied()
            .unwrap_or(Verdict::Stands);
        timeline.push((
            r.key(),
            TimelineEntry {
                fact_id: r.id.clone(),
                event_id: r.event_id.clone(),
                fact: "REDEEMED".into(),
                occurred_at: r.occurred_at,
                store_id: r.store_id.clone(),
                till_id: r.till_id.clone(),
                till_seq: r.till_seq,
                cashier_id: r.cashier_id.clone(),
                profile_id: r.profile_id.clone(),
                session_id: r.session_id.clone(),
                offline: r.offline,
                amount_minor: r.discount_minor,
                currency: r.currency.clone(),
                points: 0,
                clawback_points: 0,
                balance_after: None,
                verdict: v.label().into(),
                is_final: is_final(r.synced()),
            },
        ));
    }
    for r in st.releases.values() {
        timeline.push((
            r.key(),
            TimelineEntry {
                fact_id: r.id.clone(),
                event_id: r.event_id.clone(),
                fact: "RELEASED".into(),
                occurred_at: r.occurred_at,
                store_id: r.store_id.clone(),
                till_id: r.till_id.clone(),
                till_seq: r.till_seq,
                cashier_id: r.cashier_id.clone(),
                profile_id: None,
                session_id: r.session_id.clone(),
                offline: r.offline,
                amount_minor: 0,
                currency: String::new(),
                points: 0,
                clawback_points: 0,
                balance_after: None,
                verdict: String::new(),
                is_final: is_final(r.synced()),
            },
        ));
    }
    timeline.sort_by(|a, b| a.0.cmp(&b.0));
    flagged.sort_by(|a, b| b.0.key().cmp(&a.0.key()));
    Some(Case {
        case_id: case_id.to_owned(),
        subject_type: SubjectType::Coupon,
        subject_key: st.code.clone(),
        kind,
        reasons: reasons.into_iter().collect(),
        is_final: order.iter().all(|r| is_final(r.synced())),
        exposure,
        deficit_points: 0,
        flagged: flagged.iter().map(|(r, _)| r.event_id.clone()).collect(),
        timeline: timeline.into_iter().map(|(_, e)| e).collect(),
    })
}
