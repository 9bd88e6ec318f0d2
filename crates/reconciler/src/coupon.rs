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
//! Finality: a redemption older than the horizon behind the coupon's newest event is final, and
//! its limit decision is frozen the first time it is judged final. Frozen standing redemptions
//! keep their slots, so a late arrival that is already final never displaces them; it takes what
//! is left or becomes the over-redemption itself. A frozen over-redemption stays one even if a
//! slot frees later (its final decision is not reopened); a release still clears it, since a
//! cancelled sale needs no reversal. A changed definition clears the frozen decisions: a policy
//! change re-judges the whole coupon. Until anything is final, the verdicts are a
//! function of the set of facts only, which is the order-independence invariant.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use tillbridge_core::domain::CouponDefinition;

use crate::model::{
    final_before, is_final, Case, CouponState, Frozen, Reason, Redemption, SubjectType,
};
use crate::report::TimelineEntry;

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

/// A compensation the current ledger calls for, keyed elsewhere by the fact it acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) reason: Reason,
    pub(crate) exposure_minor: i64,
    pub(crate) currency: String,
    pub(crate) points: i64,
    pub(crate) event_ids: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Evaluation {
    pub(crate) desired: BTreeMap<String, Desired>,
    pub(crate) case: Option<Case>,
}

fn outside(def: &CouponDefinition, at: DateTime<Utc>) -> bool {
    def.valid_from.is_some_and(|f| at < f) || def.valid_until.is_some_and(|u| at > u)
}

/// Judges every redemption of `st`, freezing the limit decisions of those now final.
pub(crate) fn evaluate(
    st: &mut CouponState,
    horizon: chrono::Duration,
    case_id: &str,
) -> Evaluation {
    let threshold = final_before(st.newest, horizon);
    let released: BTreeSet<&str> = st
        .releases
        .values()
        .map(|r| r.session_id.as_str())
        .collect();
    let mut order: Vec<&Redemption> = st.redemptions.values().collect();
    order.sort_by(|a, b| a.key().cmp(&b.key()));

    let mut verdicts: BTreeMap<&str, Verdict> = BTreeMap::new();
    let mut candidates: Vec<&Redemption> = Vec::new();
    for r in &order {
        let v = if released.contains(r.session_id.as_str()) {
            Some(Verdict::Released)
        } else {
            match &st.definition {
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
                verdicts.insert(&r.id, v);
            }
            None => candidates.push(r),
        }
    }

    // Per-profile pass: who passes, per profile, in ledger order.
    let mut passing_by_profile: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut standing: Vec<&str> = Vec::new();
    let mut new_frozen: Vec<(String, Frozen)> = Vec::new();
    if let Some(def) = &st.definition {
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
                    .filter(|r| {
                        matches!(
                            st.frozen.get(&r.id),
                            Some(Frozen::Stands | Frozen::OverLimit)
                        )
                    })
                    .count();
                let mut avail = (def.per_profile_limit as usize).saturating_sub(reserved);
                for r in group {
                    let passes = match st.frozen.get(&r.id) {
                        Some(Frozen::PerProfileLimit) => false,
                        Some(Frozen::Stands | Frozen::OverLimit) => true,
                        None if avail > 0 => {
                            avail -= 1;
                            true
                        }
                        None => false,
                    };
                    if passes {
                        passing_by_profile
                            .entry(profile)
                            .or_default()
                            .push(&r.event_id);
                    } else {
                        over_pp.insert(&r.id);
                        verdicts.insert(&r.id, Verdict::Violation(Reason::PerProfileLimit));
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
                verdicts.insert(&r.id, Verdict::Stands);
            }
        } else {
            let reserved = passing
                .iter()
                .filter(|r| st.frozen.get(&r.id) == Some(&Frozen::Stands))
                .count();
            let mut avail = (def.usage_limit as usize).saturating_sub(reserved);
            for r in &passing {
                let stands = match st.frozen.get(&r.id) {
                    Some(Frozen::Stands) => true,
                    Some(Frozen::OverLimit) => false,
                    // A frozen per-profile decision cannot pass the per-profile pass while the
                    // definition is unchanged (a change clears `frozen`); judge it afresh.
                    Some(Frozen::PerProfileLimit) | None if avail > 0 => {
                        avail -= 1;
                        true
                    }
                    Some(Frozen::PerProfileLimit) | None => false,
                };
                let v = if stands {
                    standing.push(&r.event_id);
                    Verdict::Stands
                } else {
                    Verdict::Violation(Reason::OverLimit)
                };
                verdicts.insert(&r.id, v);
            }
        }
        for r in &candidates {
            if is_final(r.occurred_at, threshold) && !st.frozen.contains_key(&r.id) {
                let f = match verdicts.get(r.id.as_str()) {
                    Some(Verdict::Violation(Reason::OverLimit)) => Frozen::OverLimit,
                    Some(Verdict::Violation(Reason::PerProfileLimit)) => Frozen::PerProfileLimit,
                    _ => Frozen::Stands,
                };
                new_frozen.push((r.id.clone(), f));
            }
        }
    }

    let mut desired = BTreeMap::new();
    for r in &order {
        let Some(Verdict::Violation(reason)) = verdicts.get(r.id.as_str()).copied() else {
            continue;
        };
        let mut event_ids = vec![r.event_id.clone()];
        let rests_on: &[&str] = match reason {
            Reason::OverLimit => &standing,
            Reason::PerProfileLimit => r
                .profile_id
                .as_deref()
                .and_then(|p| passing_by_profile.get(p))
                .map_or(&[], Vec::as_slice),
            _ => &[],
        };
        for e in rests_on {
            if !event_ids.iter().any(|x| x == e) {
                event_ids.push((*e).to_owned());
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
            },
        );
    }
    let case = build_case(st, &order, &verdicts, threshold, case_id);
    st.frozen.extend(new_frozen);
    Evaluation { desired, case }
}

fn build_case(
    st: &CouponState,
    order: &[&Redemption],
    verdicts: &BTreeMap<&str, Verdict>,
    threshold: Option<DateTime<Utc>>,
    case_id: &str,
) -> Option<Case> {
    let mut reasons: BTreeSet<Reason> = BTreeSet::new();
    let mut exposure: BTreeMap<String, i64> = BTreeMap::new();
    let mut flagged: Vec<(&Redemption, Reason)> = Vec::new();
    for r in order {
        if let Some(Verdict::Violation(reason)) = verdicts.get(r.id.as_str()) {
            reasons.insert(*reason);
            *exposure.entry(r.currency.clone()).or_default() += r.discount_minor;
            flagged.push((r, *reason));
        }
    }
    let kind = *reasons.first()?;
    let mut timeline: Vec<(crate::model::OrderKey<'_>, TimelineEntry)> = Vec::new();
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
                is_final: is_final(r.occurred_at, threshold),
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
                is_final: is_final(r.occurred_at, threshold),
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
        is_final: order.iter().all(|r| is_final(r.occurred_at, threshold)),
        exposure,
        deficit_points: 0,
        flagged: flagged.iter().map(|(r, _)| r.event_id.clone()).collect(),
        timeline: timeline.into_iter().map(|(_, e)| e).collect(),
    })
}
