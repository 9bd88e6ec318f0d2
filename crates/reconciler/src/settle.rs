//! Settlement: judging the touched ledgers, turning their cases into compensating actions,
//! and retracting what no longer holds.

use super::*;

/// What a compensation says, as the name its id is derived from: the whole content, so one id
/// never carries two meanings.
pub(crate) fn meaning(case_id: &str, fact_id: &str, d: &Desired) -> String {
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

impl Outstanding {
    pub(crate) fn of(action_id: String, d: &Desired) -> Self {
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
}

/// The case id of a coupon: derived from its keyed fingerprint, so the id does not give the code
/// away to anyone who can guess codes.
pub(crate) fn coupon_case_id(report_key: &str, code: &str) -> String {
    let fp = tillbridge_core::domain::code::fingerprint(report_key.as_bytes(), code);
    ids::derive(&format!("coupon/{fp}"), "case", 0).to_string()
}

pub(crate) fn profile_case_id(profile: &str) -> String {
    ids::derive(&format!("profile/{profile}"), "case", 0).to_string()
}

impl Reconciler {
    /// Emits what it takes to bring `comp` to `desired`: retractions first, then new actions.
    /// An action whose content would change in any field is retracted and issued anew.
    pub(crate) fn settle(
        &self,
        comp: &mut Compensations,
        desired: &BTreeMap<String, Desired>,
        case_id: &str,
        key: &str,
        subject: &str,
        out: &mut Vec<OutRecord>,
    ) {
        let same = |d: &Desired, o: &Outstanding| {
            d.reason == o.reason
                && d.points == o.points
                && d.exposure_minor == o.exposure_minor
                && d.currency == o.currency
                && d.event_ids == o.event_ids
                && Some(d.decided_at) == o.decided_at
        };
        let stale: Vec<String> = comp
            .outstanding
            .iter()
            .filter(|(id, o)| desired.get(*id).is_none_or(|d| !same(d, o)))
            .map(|(id, _)| id.clone())
            .collect();
        for fact_id in stale {
            let Some(o) = comp.outstanding.remove(&fact_id) else {
                continue;
            };
            // One retraction per action: its id follows from the action it retracts, and it
            // carries that action's fields, so it reads the same in every run.
            let id = ids::derive(&o.action_id, "retract", 0);
            tracing::info!(case_id, action = %id, retracts = %o.action_id, reason = o.reason.as_str(),
                "compensation no longer due, retracting");
            let action = pb::CompensatingAction {
                id: id.to_string(),
                kind: pb::CompensationKind::Retract as i32,
                case_id: case_id.to_owned(),
                subject: subject.to_owned(),
                reason: o.reason.as_str().to_owned(),
                exposure_minor: o.exposure_minor,
                currency: o.currency.clone(),
                points: o.points,
                event_ids: o.event_ids.clone(),
                retracts: Some(o.action_id.clone()),
                decided_at: o.decided_at.map(tillbridge_proto::timestamp),
            };
            out.push(OutRecord::new(
                &self.topics.compensations,
                key,
                action.encode_to_vec(),
            ));
        }
        for (fact_id, d) in desired {
            if comp.outstanding.contains_key(fact_id) {
                continue;
            }
            // The id names the whole content, so one id never carries two meanings across
            // runs; the revision counts re-issues of that same action after a retraction.
            let meaning = meaning(case_id, fact_id, d);
            let revision = comp.issued.entry(meaning.clone()).or_insert(0);
            let id = ids::derive(&meaning, "compensation", *revision);
            *revision += 1;
            tracing::info!(case_id, action = %id, reason = d.reason.as_str(), "compensation issued");
            let action = pb::CompensatingAction {
                id: id.to_string(),
                kind: if self.review_only.contains(d.reason.as_str()) {
                    pb::CompensationKind::ReviewOnly as i32
                } else {
                    d.reason.action() as i32
                },
                case_id: case_id.to_owned(),
                subject: subject.to_owned(),
                reason: d.reason.as_str().to_owned(),
                exposure_minor: d.exposure_minor,
                currency: d.currency.clone(),
                points: d.points,
                event_ids: d.event_ids.clone(),
                retracts: None,
                decided_at: Some(tillbridge_proto::timestamp(d.decided_at)),
            };
            out.push(OutRecord::new(
                &self.topics.compensations,
                key,
                action.encode_to_vec(),
            ));
            comp.outstanding
                .insert(fact_id.clone(), Outstanding::of(id.to_string(), d));
        }
    }

    /// Judges the touched ledgers, settles their compensations and stages them with their cases.
    pub(crate) fn settle_ledgers(
        &mut self,
        coupons: BTreeMap<String, CouponState>,
        profiles: BTreeMap<String, ProfileState>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), Error> {
        for (code, mut st) in coupons {
            let case_id = coupon_case_id(&self.report_key, &code);
            let eval = coupon::evaluate(&st, self.horizon, &case_id);
            let mut comp = std::mem::take(&mut st.compensations);
            let subject = tillbridge_core::domain::code::mask(&code);
            if self.learned.outstanding.contains_key(&code) || !self.learned.ever.is_empty() {
                self.adopt_learned(&mut comp, &eval.desired, &case_id, &code, &subject, out);
            }
            self.settle(&mut comp, &eval.desired, &case_id, &code, &subject, out);
            st.compensations = comp;
            self.stage_case(&case_id, eval.case.as_ref())?;
            let value = encode_json("coupon ledger", &st)?;
            self.staged
                .insert(format!("{PREFIX_COUPON}{code}").into_bytes(), Some(value));
        }
        for (profile, mut st) in profiles {
            let case_id = profile_case_id(&profile);
            let eval = loyalty::evaluate(&st, self.horizon, &case_id);
            let mut comp = std::mem::take(&mut st.compensations);
            if self.learned.outstanding.contains_key(&profile) || !self.learned.ever.is_empty() {
                self.adopt_learned(&mut comp, &eval.desired, &case_id, &profile, &profile, out);
            }
            self.settle(&mut comp, &eval.desired, &case_id, &profile, &profile, out);
            st.compensations = comp;
            self.stage_case(&case_id, eval.case.as_ref())?;
            let value = encode_json("profile ledger", &st)?;
            self.staged.insert(
                format!("{PREFIX_PROFILE}{profile}").into_bytes(),
                Some(value),
            );
        }
        Ok(())
    }

    pub(crate) fn stage_case(&mut self, case_id: &str, case: Option<&Case>) -> Result<(), Error> {
        let key = format!("{PREFIX_CASE}{case_id}").into_bytes();
        let value = case.map(|c| encode_json("case", c)).transpose()?;
        self.staged.insert(key, value);
        Ok(())
    }
}
