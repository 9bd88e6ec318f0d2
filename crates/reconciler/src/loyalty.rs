//! The loyalty ledger: a profile's balance over event time, and the redemptions that overdrew it.
//!
//! The balance starts from the latest snapshot of the promotion core (zero without one) and
//! applies, in ledger order, every fact after the snapshot's `as_of`:
//! - EARNED adds its points; REDEEMED_POINTS subtracts them.
//! - RETURNED rolls back the points earned in the original sale, pro rata by the refunded share
//!   of the sale total, rounded down. Several partial returns are summed first, so their
//!   rounding never rolls back more than a single full return would.
//! - CANCELLED rolls back every point the session earned so far. Points the cancelled session
//!   redeemed are void: the sale did not happen, so they neither overdraw nor need restoring
//!   (when the snapshot already deducted them, the cancellation gives them back).
//!
//! Facts at or before `as_of` are already in the snapshot: they only feed the bookkeeping of
//! what a later return or cancellation rolls back.
//!
//! Deficit: walking the ledger with a running clawback, a redemption that leaves the balance
//! (plus what earlier clawbacks already recovered) below zero overdrew it by the missing part,
//! at most its own points. The deficit is the sum, so it never exceeds what is really missing.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    final_before, is_final, Case, Desired, Evaluation, LoyaltyEntry, LoyaltyKind, ProfileState,
    Reason, SubjectType, TimelineEntry,
};

/// Points of `earned` rolled back once `refunded` of `total` is refunded, rounded down.
fn pro_rata(earned: i64, refunded: i64, total: i64) -> i64 {
    if total <= 0 {
        return earned;
    }
    let share = i128::from(refunded.clamp(0, total));
    let rolled = i128::from(earned) * share / i128::from(total);
    i64::try_from(rolled).unwrap_or(earned)
}

pub(crate) fn evaluate(st: &ProfileState, horizon: chrono::Duration, case_id: &str) -> Evaluation {
    let threshold = final_before(st.newest, horizon);
    let as_of = st.snapshot.as_ref().map(|s| s.as_of);
    let live = |f: &LoyaltyEntry| as_of.is_none_or(|a| f.occurred_at > a);

    let mut order: Vec<&LoyaltyEntry> = st.facts.values().collect();
    order.sort_by(|a, b| a.key().cmp(&b.key()));

    let mut earned_total: BTreeMap<&str, i64> = BTreeMap::new();
    let mut cancelled: BTreeSet<&str> = BTreeSet::new();
    for f in &order {
        match f.kind {
            LoyaltyKind::Earned => *earned_total.entry(&f.session_id).or_default() += f.points,
            LoyaltyKind::Cancelled => {
                cancelled.insert(f.target_session());
            }
            LoyaltyKind::RedeemedPoints | LoyaltyKind::Returned => {}
        }
    }

    let mut earned_seen: BTreeMap<&str, i64> = BTreeMap::new();
    let mut rolled: BTreeMap<&str, i64> = BTreeMap::new();
    let mut refunded: BTreeMap<&str, i64> = BTreeMap::new();
    let mut cancel_done: BTreeSet<&str> = BTreeSet::new();
    let mut redeemed_in_snapshot: BTreeMap<&str, i64> = BTreeMap::new();
    let mut balance = st.snapshot.as_ref().map_or(0, |s| s.balance);
    let mut recovered: i64 = 0;
    let mut claws: Vec<(&LoyaltyEntry, i64)> = Vec::new();
    let mut balances: BTreeMap<&str, i64> = BTreeMap::new();
    let mut void: BTreeSet<&str> = BTreeSet::new();

    for f in &order {
        let is_live = live(f);
        let delta = match f.kind {
            LoyaltyKind::Earned => {
                if cancel_done.contains(f.session_id.as_str()) {
                    0
                } else {
                    *earned_seen.entry(&f.session_id).or_default() += f.points;
                    f.points
                }
            }
            LoyaltyKind::RedeemedPoints => {
                if cancelled.contains(f.session_id.as_str()) {
                    void.insert(&f.id);
                    if !is_live {
                        *redeemed_in_snapshot.entry(&f.session_id).or_default() += f.points;
                    }
                    0
                } else {
                    -f.points
                }
            }
            LoyaltyKind::Returned => {
                let s = f.target_session();
                if cancel_done.contains(s) {
                    0
                } else {
                    let cum = refunded
                        .get(s)
                        .copied()
                        .unwrap_or(0)
                        .saturating_add(f.refund_minor);
                    refunded.insert(s, cum);
                    let earned = earned_total.get(s).copied().unwrap_or(0);
                    let target = pro_rata(earned, cum, f.sale_total_minor);
                    let before = rolled.get(s).copied().unwrap_or(0);
                    let d = (target - before).max(0);
                    rolled.insert(s, before + d);
                    -d
                }
            }
            LoyaltyKind::Cancelled => {
                let s = f.target_session();
                if cancel_done.insert(s) {
                    let before = rolled.get(s).copied().unwrap_or(0);
                    let d = (earned_seen.get(s).copied().unwrap_or(0) - before).max(0);
                    rolled.insert(s, before + d);
                    redeemed_in_snapshot.get(s).copied().unwrap_or(0) - d
                } else {
                    0
                }
            }
        };
        if !is_live {
            continue;
        }
        balance = balance.saturating_add(delta);
        balances.insert(&f.id, balance);
        if f.kind == LoyaltyKind::RedeemedPoints && !void.contains(f.id.as_str()) {
            let short = balance.saturating_add(recovered);
            if short < 0 {
                let claw = f.points.min(-short);
                recovered += claw;
                claws.push((f, claw));
            }
        }
    }

    let desired: BTreeMap<String, Desired> = claws
        .iter()
        .map(|(f, claw)| {
            (
                f.id.clone(),
                Desired {
                    reason: Reason::PointsDeficit,
                    exposure_minor: 0,
                    currency: f.currency.clone(),
                    points: *claw,
                    event_ids: vec![f.event_id.clone()],
                    decided_at: f.occurred_at,
                },
            )
        })
        .collect();
    if claws.is_empty() {
        return Evaluation {
            desired,
            case: None,
        };
    }
    let claw_of: BTreeMap<&str, i64> = claws.iter().map(|(f, c)| (f.id.as_str(), *c)).collect();
    let timeline = order
        .iter()
        .map(|f| {
            let verdict = match f.kind {
                LoyaltyKind::RedeemedPoints if void.contains(f.id.as_str()) => "VOID",
                LoyaltyKind::RedeemedPoints if claw_of.contains_key(f.id.as_str()) => {
                    "POINTS_DEFICIT"
                }
                LoyaltyKind::RedeemedPoints if live(f) => "STANDS",
                LoyaltyKind::RedeemedPoints => "IN_SNAPSHOT",
                _ => "",
            };
            TimelineEntry {
                fact_id: f.id.clone(),
                event_id: f.event_id.clone(),
                fact: f.kind.as_str().into(),
                occurred_at: f.occurred_at,
                store_id: f.store_id.clone(),
                till_id: f.till_id.clone(),
                till_seq: f.till_seq,
                cashier_id: f.cashier_id.clone(),
                profile_id: Some(st.profile_id.clone()),
                session_id: f.target_session().to_owned(),
                offline: f.offline,
                amount_minor: if f.kind == LoyaltyKind::Returned {
                    f.refund_minor
                } else {
                    f.sale_total_minor
                },
                currency: f.currency.clone(),
                points: f.points,
                clawback_points: claw_of.get(f.id.as_str()).copied().unwrap_or(0),
                balance_after: balances.get(f.id.as_str()).copied(),
                verdict: verdict.into(),
                is_final: is_final(f.occurred_at, threshold),
            }
        })
        .collect();
    let mut flagged: Vec<&LoyaltyEntry> = claws.iter().map(|(f, _)| *f).collect();
    flagged.sort_by(|a, b| b.key().cmp(&a.key()));
    let case = Case {
        case_id: case_id.to_owned(),
        subject_type: SubjectType::Profile,
        subject_key: st.profile_id.clone(),
        kind: Reason::PointsDeficit,
        reasons: vec![Reason::PointsDeficit],
        is_final: flagged.iter().all(|f| is_final(f.occurred_at, threshold)),
        exposure: BTreeMap::new(),
        deficit_points: recovered,
        flagged: flagged.iter().map(|f| f.event_id.clone()).collect(),
        timeline,
    };
    Evaluation {
        desired,
        case: Some(case),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pro_rata_rounds_down_and_never_exceeds_what_was_earned() {
        assert_eq!(pro_rata(100, 333, 1000), 33);
        assert_eq!(pro_rata(3, 500, 1000), 1);
        assert_eq!(pro_rata(3, 1000, 1000), 3);
        assert_eq!(pro_rata(3, 5000, 1000), 3);
        assert_eq!(pro_rata(7, 10, 0), 7);
        assert_eq!(pro_rata(i64::MAX, i64::MAX, i64::MAX), i64::MAX);
    }
}
