//! Settlement: judging the touched ledgers, turning their cases into compensating actions,
//! and retracting what no longer holds; after a restore, adopting or retracting what an earlier
//! life of the stage emitted.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tillbridge_core::config::Topics;

use crate::config::ReconcilerConfig;
use tillbridge_core::ids;
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_proto::pb;

use crate::coupon;
use crate::error::Error;
use crate::loyalty;
use crate::model::{Compensations, CouponState, Desired, Evaluation, Outstanding, ProfileState};
use crate::state::State;

/// What a compensation says, as the name its id is derived from: the whole content, so one id
/// never carries two meanings.
fn meaning(case_id: &str, fact_id: &str, d: &Desired) -> String {
    format!(
        "{case_id}/{fact_id}/{}/{}/{}/{}/{}/{}",
        d.reason.as_str(),
        d.points,
        d.exposure_minor,
        d.currency,
        d.event_ids.join(","),
        d.decided_at.timestamp_millis()
    )
}

/// The case id of a coupon: derived from its keyed fingerprint, so the id does not give the code
/// away to anyone who can guess codes.
fn coupon_case_id(fingerprint_key: &str, code: &str) -> String {
    let fp = tillbridge_core::domain::code::fingerprint(fingerprint_key.as_bytes(), code);
    ids::derive(&format!("coupon/{fp}"), "case", 0).to_string()
}

fn profile_case_id(profile: &str) -> String {
    ids::derive(&format!("profile/{profile}"), "case", 0).to_string()
}

/// The case a settlement acts for.
struct Subject<'a> {
    case_id: &'a str,
    /// The record key of the actions: the coupon code or the profile id.
    key: &'a str,
    /// What the actions name: the masked code or the profile id.
    name: &'a str,
}

impl Outstanding {
    fn of(action_id: String, d: &Desired) -> Self {
        Outstanding {
            action_id,
            reason: d.reason,
            exposure_minor: d.exposure_minor,
            currency: d.currency.clone(),
            points: d.points,
            event_ids: d.event_ids.clone(),
            decided_at: Some(d.decided_at),
        }
    }

    /// Whether this action says what `d` says, in every field.
    fn carries(&self, d: &Desired) -> bool {
        d.reason == self.reason
            && d.points == self.points
            && d.exposure_minor == self.exposure_minor
            && d.currency == self.currency
            && d.event_ids == self.event_ids
            && Some(d.decided_at) == self.decided_at
    }

    /// The action of kind `kind` for `s`.
    fn action(&self, kind: pb::CompensationKind, s: &Subject) -> pb::CompensatingAction {
        pb::CompensatingAction {
            id: self.action_id.clone(),
            kind: kind as i32,
            case_id: s.case_id.to_owned(),
            subject: s.name.to_owned(),
            reason: self.reason.as_str().to_owned(),
            exposure_minor: self.exposure_minor,
            currency: self.currency.clone(),
            points: self.points,
            event_ids: self.event_ids.clone(),
            retracts: None,
            decided_at: self.decided_at.map(tillbridge_proto::timestamp),
        }
    }
}

/// The retraction of `target`: one per action, its id follows from the action it retracts, and
/// it carries that action's fields, so it reads the same in every run.
fn retraction(target: pb::CompensatingAction, s: &Subject) -> pb::CompensatingAction {
    pb::CompensatingAction {
        id: ids::derive(&target.id, "retract", 0).to_string(),
        kind: pb::CompensationKind::Retract as i32,
        case_id: s.case_id.to_owned(),
        subject: s.name.to_owned(),
        retracts: Some(target.id.clone()),
        ..target
    }
}

/// The compensations a previous life of the stage emitted, read back from its output topic.
#[derive(Debug, Default)]
struct Learned {
    /// Actions still outstanding (issued, not retracted), per record key (code or profile id),
    /// by action id.
    outstanding: BTreeMap<String, BTreeMap<String, pb::CompensatingAction>>,
    /// Every action id ever issued.
    ever: BTreeSet<String>,
}

/// Settles the judged ledgers into compensations, by the policy of the configuration.
pub(crate) struct Settler {
    /// The topic the compensations go to.
    compensations: String,
    pub(crate) horizon: chrono::Duration,
    /// The key of coupon-code fingerprints (case ids).
    fingerprint_key: String,
    /// Reasons answered with REVIEW_ONLY instead of an automatic action (policy).
    review_only: BTreeSet<String>,
    /// What the compensations topic says was emitted before (read by a restore).
    learned: Learned,
}

impl Settler {
    pub(crate) fn new(
        topics: &Topics,
        cfg: &ReconcilerConfig,
        fingerprint_key: &str,
    ) -> Result<Settler, Error> {
        let horizon = chrono::Duration::from_std(cfg.settlement_horizon).map_err(|_| {
            tillbridge_core::Error::Config("reconciler.settlement_horizon is too large".into())
        })?;
        Ok(Settler {
            compensations: topics.compensations.clone(),
            horizon,
            fingerprint_key: fingerprint_key.to_owned(),
            review_only: cfg.review_only.iter().cloned().collect(),
            learned: Learned::default(),
        })
    }

    /// Learns what an earlier life of the stage emitted from `emitted`, the records of the
    /// compensations topic: what is still outstanding per key, and every id ever issued.
    pub(crate) fn learn(&mut self, emitted: &[Record]) {
        for r in emitted {
            let Some(payload) = r.payload.as_deref() else {
                continue;
            };
            let Ok(a) = pb::CompensatingAction::decode(payload) else {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    "unreadable compensation skipped while restoring");
                continue;
            };
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let outstanding = self.learned.outstanding.entry(key).or_default();
            match &a.retracts {
                Some(target) if a.kind == pb::CompensationKind::Retract as i32 => {
                    outstanding.remove(target);
                }
                _ => {
                    self.learned.ever.insert(a.id.clone());
                    outstanding.insert(a.id.clone(), a);
                }
            }
        }
        self.learned.outstanding.retain(|_, v| !v.is_empty());
    }

    /// Forgets what was learned (once a restore has settled every ledger against it).
    pub(crate) fn forget(&mut self) {
        self.learned = Learned::default();
    }

    fn emit(&self, s: &Subject, action: &pb::CompensatingAction, out: &mut Vec<OutRecord>) {
        out.push(OutRecord::new(
            &self.compensations,
            s.key,
            action.encode_to_vec(),
        ));
    }

    /// Seeds `comp` (a ledger's compensations, empty after a rebuild) with the actions an
    /// earlier life emitted under `s.key`: one still desired keeps its id; the others are
    /// retracted.
    fn adopt_learned(
        &mut self,
        comp: &mut Compensations,
        desired: &BTreeMap<String, Desired>,
        s: &Subject,
        out: &mut Vec<OutRecord>,
    ) {
        let mut learned = self.learned.outstanding.remove(s.key).unwrap_or_default();
        for (fact_id, d) in desired {
            let meaning = meaning(s.case_id, fact_id, d);
            let mut revision = 0;
            loop {
                let id = ids::derive(&meaning, "compensation", revision).to_string();
                if !self.learned.ever.contains(&id) {
                    break;
                }
                revision += 1;
                if learned.remove(&id).is_some() {
                    comp.outstanding
                        .insert(fact_id.clone(), Outstanding::of(id, d));
                    break;
                }
            }
            comp.issued.insert(meaning, revision);
        }
        for (_, a) in learned {
            tracing::info!(case_id = s.case_id, retracts = %a.id, "compensation of an earlier run no longer due, retracting");
            self.emit(s, &retraction(a, s), out);
        }
    }

    /// Emits what it takes to bring `comp` to `desired`: retractions first, then new actions.
    /// An action whose content would change in any field is retracted and issued anew.
    fn settle(
        &self,
        comp: &mut Compensations,
        desired: &BTreeMap<String, Desired>,
        s: &Subject,
        out: &mut Vec<OutRecord>,
    ) {
        let stale: Vec<String> = comp
            .outstanding
            .iter()
            .filter(|(id, o)| desired.get(*id).is_none_or(|d| !o.carries(d)))
            .map(|(id, _)| id.clone())
            .collect();
        for fact_id in stale {
            let Some(o) = comp.outstanding.remove(&fact_id) else {
                continue;
            };
            let action = retraction(o.action(pb::CompensationKind::Retract, s), s);
            tracing::info!(case_id = s.case_id, action = %action.id, retracts = %o.action_id, reason = o.reason.as_str(),
                "compensation no longer due, retracting");
            self.emit(s, &action, out);
        }
        for (fact_id, d) in desired {
            if comp.outstanding.contains_key(fact_id) {
                continue;
            }
            // The id names the whole content, so one id never carries two meanings across
            // runs; the revision counts re-issues of that same action after a retraction.
            let meaning = meaning(s.case_id, fact_id, d);
            let revision = comp.issued.entry(meaning.clone()).or_insert(0);
            let id = ids::derive(&meaning, "compensation", *revision);
            *revision += 1;
            tracing::info!(case_id = s.case_id, action = %id, reason = d.reason.as_str(), "compensation issued");
            let kind = if self.review_only.contains(d.reason.as_str()) {
                pb::CompensationKind::ReviewOnly
            } else {
                d.reason.action()
            };
            let o = Outstanding::of(id.to_string(), d);
            self.emit(s, &o.action(kind, s), out);
            comp.outstanding.insert(fact_id.clone(), o);
        }
    }

    /// Settles one judged ledger's compensations `comp` and stages its case.
    fn settle_ledger(
        &mut self,
        state: &mut State,
        comp: &mut Compensations,
        eval: &Evaluation,
        s: &Subject,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), Error> {
        if self.learned.outstanding.contains_key(s.key) || !self.learned.ever.is_empty() {
            self.adopt_learned(comp, &eval.desired, s, out);
        }
        self.settle(comp, &eval.desired, s, out);
        state.stage_case(s.case_id, eval.case.as_ref())
    }

    /// Judges the touched ledgers, settles their compensations and stages them with their cases.
    pub(crate) fn settle_ledgers(
        &mut self,
        state: &mut State,
        coupons: BTreeMap<String, CouponState>,
        profiles: BTreeMap<String, ProfileState>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), Error> {
        for (code, mut st) in coupons {
            let case_id = coupon_case_id(&self.fingerprint_key, &code);
            let eval = coupon::evaluate(&st, self.horizon, &case_id);
            let name = tillbridge_core::domain::code::mask(&code);
            let s = Subject {
                case_id: &case_id,
                key: &code,
                name: &name,
            };
            self.settle_ledger(state, &mut st.compensations, &eval, &s, out)?;
            state.stage_ledger(&code, &st)?;
        }
        for (profile, mut st) in profiles {
            let case_id = profile_case_id(&profile);
            let eval = loyalty::evaluate(&st, self.horizon, &case_id);
            let s = Subject {
                case_id: &case_id,
                key: &profile,
                name: &profile,
            };
            self.settle_ledger(state, &mut st.compensations, &eval, &s, out)?;
            state.stage_ledger(&profile, &st)?;
        }
        Ok(())
    }
}
