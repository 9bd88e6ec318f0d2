//! Routing: where every accepted till event goes.
//!
//! - Every accepted event goes to `promo.sessions`, keyed by its session id (events without one,
//!   such as manual overrides and till status changes, by `{store_id}/{till_id}`).
//! - Every coupon in a sale becomes a `RedemptionFact` on `tillbridge.redemptions` keyed by the
//!   coupon code; a cancelled or fully returned session releases its coupons with `RELEASED` facts.
//! - Loyalty activity becomes `LoyaltyFact`s on `tillbridge.loyalty` keyed by profile id; returns
//!   and cancellations point back to the original session so the reconciler can roll back.
//!
//! - Routing rules ([`rules`]) decide where the session record goes (by body, store glob, store
//!   metadata and channel), and quarantine the events of stores that are not live.
//!
//! The HTTP destination that sends a destination's records to the promotion core is the
//! `tillbridge-delivery` crate; ingest compiles no HTTP client.
//!
//! Output ids are UUIDv5 over the input event id, the fact kind and its index, so a replay
//! re-sends identical records. The router is pure: what it needs to know about an earlier sale
//! (its coupons, profile and total) is passed in as a [`SessionInfo`] by the stage that keeps the
//! session index.

mod follower;
pub mod rules;

pub use follower::StoreFollower;

use prost::Message;
pub use rules::{Decision, RouterConfig, RuleError, Rules, StoreTable};

use serde::{Deserialize, Serialize};
use tillbridge_core::config::Topics;
use tillbridge_core::domain::{Body, TillEvent};
use tillbridge_core::ids;
use tillbridge_core::log::OutRecord;
use tillbridge_proto::pb;

/// Header naming the encoding of tillbridge's own records.
pub use tillbridge_proto::CONTENT_TYPE_PROTOBUF;

/// What the session index remembers of a sale.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub event_id: String,
    pub coupons: Vec<String>,
    pub profile_id: Option<String>,
    pub program_id: Option<String>,
    pub total_minor: i64,
    pub currency: String,
}

impl SessionInfo {
    /// The index entry for a sale; `None` for other bodies.
    pub fn from_sale(ev: &TillEvent) -> Option<SessionInfo> {
        let Body::Sale(s) = &ev.body else { return None };
        Some(SessionInfo {
            event_id: ev.event_id.to_string(),
            coupons: s.coupons.iter().map(|c| c.code.clone()).collect(),
            profile_id: ev.profile_id.clone(),
            program_id: s.loyalty.as_ref().map(|l| l.program_id.clone()),
            total_minor: s.total_minor,
            currency: ev.currency.map(|c| c.to_string()).unwrap_or_default(),
        })
    }
}

/// Counts of records per destination topic.
pub type Routed = std::collections::BTreeMap<String, u64>;

/// Routes accepted events.
#[derive(Clone, Debug)]
pub struct Router {
    topics: Topics,
    rules: Rules,
}

use tillbridge_proto::timestamp as ts;

impl Router {
    /// A router with the default rules (everything to `promo.sessions`).
    pub fn new(topics: Topics) -> Self {
        let rules = Rules::default_for(&topics);
        Router { topics, rules }
    }

    /// A router with compiled `rules`.
    pub fn with_rules(topics: Topics, rules: Rules) -> Self {
        Router { topics, rules }
    }

    /// The key of `promo.sessions` for an event.
    pub fn session_key(ev: &TillEvent) -> String {
        ev.session_id.clone().unwrap_or_else(|| ev.till_key())
    }

    /// The outputs of one accepted event. `raw` is its wire form (re-encoded canonically),
    /// `record_ts` the timestamp of the till record it came in, and `original` what the index
    /// knows of the session a cancel or return refers to.
    pub fn route(
        &self,
        ev: &TillEvent,
        raw: &pb::TillEvent,
        record_ts: Option<i64>,
        original: Option<&SessionInfo>,
    ) -> Vec<OutRecord> {
        let eid = ev.event_id.to_string();
        let decision = self.rules.decide(ev);
        let payload = raw.encode_to_vec();
        let mut out: Vec<OutRecord> = decision
            .topics
            .iter()
            .map(|topic| {
                OutRecord::new(topic, Self::session_key(ev), payload.clone())
                    .with_header("content-type", CONTENT_TYPE_PROTOBUF)
                    .with_header("tillbridge-event-id", eid.as_bytes())
                    .with_timestamp(record_ts)
            })
            .collect();
        if decision.facts {
            out.extend(self.facts(ev, record_ts, original));
        }
        out
    }

    /// The re-keyed facts of one accepted event (none for a quarantined store).
    pub fn facts(
        &self,
        ev: &TillEvent,
        record_ts: Option<i64>,
        original: Option<&SessionInfo>,
    ) -> Vec<OutRecord> {
        if !self.rules.decide(ev).facts {
            return Vec::new();
        }
        let eid = ev.event_id.to_string();
        let mut out = Vec::new();
        let currency = ev.currency.map(|c| c.to_string()).unwrap_or_default();
        match &ev.body {
            Body::Sale(sale) => {
                for (i, c) in sale.coupons.iter().enumerate() {
                    let fact = self.redemption(ev, pb::RedemptionKind::Redeemed, &c.code, i as u32);
                    let fact = pb::RedemptionFact {
                        campaign_id: c.campaign_id.clone(),
                        discount_minor: c.discount_minor,
                        session_id: ev.session_id.clone().unwrap_or_default(),
                        ..fact
                    };
                    out.push(self.fact_record(
                        &self.topics.redemptions,
                        &c.code,
                        fact.encode_to_vec(),
                        record_ts,
                    ));
                }
                if let (Some(profile), Some(l)) = (&ev.profile_id, &sale.loyalty) {
                    let base = self.loyalty(ev, profile, &l.program_id, &currency);
                    for (points, kind, what) in [
                        (
                            l.points_earned,
                            pb::LoyaltyFactKind::Earned,
                            "loyalty.earned",
                        ),
                        (
                            l.points_redeemed,
                            pb::LoyaltyFactKind::RedeemedPoints,
                            "loyalty.redeemed",
                        ),
                    ] {
                        if points > 0 {
                            let f = pb::LoyaltyFact {
                                id: ids::derive(&eid, what, 0).to_string(),
                                kind: kind as i32,
                                points,
                                sale_total_minor: sale.total_minor,
                                ..base.clone()
                            };
                            out.push(self.loyalty_record(profile, &f, record_ts));
                        }
                    }
                }
            }
            Body::SessionCancelled { .. } => {
                if let Some(orig) = original {
                    out.extend(self.releases(ev, orig, record_ts));
                    if let Some(profile) = ev.profile_id.as_ref().or(orig.profile_id.as_ref()) {
                        let program = orig.program_id.clone().unwrap_or_default();
                        let f = pb::LoyaltyFact {
                            id: ids::derive(&eid, "loyalty.cancelled", 0).to_string(),
                            kind: pb::LoyaltyFactKind::Cancelled as i32,
                            original_session_id: ev.session_id.clone(),
                            sale_total_minor: orig.total_minor,
                            ..self.loyalty(ev, profile, &program, &currency)
                        };
                        out.push(self.loyalty_record(profile, &f, record_ts));
                    }
                }
            }
            Body::Return(r) => {
                if let Some(orig) = original {
                    if tillbridge_core::domain::is_full_return(r.refund_minor, orig.total_minor) {
                        out.extend(self.releases(ev, orig, record_ts));
                    }
                    if let Some(profile) = ev.profile_id.as_ref().or(orig.profile_id.as_ref()) {
                        let program = orig.program_id.clone().unwrap_or_default();
                        let f = pb::LoyaltyFact {
                            id: ids::derive(&eid, "loyalty.returned", 0).to_string(),
                            kind: pb::LoyaltyFactKind::Returned as i32,
                            original_session_id: Some(r.original_session_id.clone()),
                            refund_minor: r.refund_minor,
                            sale_total_minor: orig.total_minor,
                            ..self.loyalty(ev, profile, &program, &currency)
                        };
                        out.push(self.loyalty_record(profile, &f, record_ts));
                    }
                }
            }
            Body::ManualOverride(_) | Body::TillStatus(_) => {}
        }
        out
    }

    /// `RELEASED` facts for every coupon of the session `orig`, caused by `ev` (a cancel or a
    /// full return). Ids derive from `ev`, so they are the same whenever they are emitted.
    pub fn releases(
        &self,
        ev: &TillEvent,
        orig: &SessionInfo,
        record_ts: Option<i64>,
    ) -> Vec<OutRecord> {
        let session = match &ev.body {
            Body::Return(r) => r.original_session_id.clone(),
            _ => ev.session_id.clone().unwrap_or_default(),
        };
        orig.coupons
            .iter()
            .enumerate()
            .map(|(i, code)| {
                let mut f = self.redemption(ev, pb::RedemptionKind::Released, code, i as u32);
                f.id = ids::derive(&ev.event_id.to_string(), "redemption.released", i as u32)
                    .to_string();
                f.session_id = session.clone();
                f.currency = orig.currency.clone();
                f.profile_id = orig.profile_id.clone();
                self.fact_record(&self.topics.redemptions, code, f.encode_to_vec(), record_ts)
            })
            .collect()
    }

    fn loyalty_record(
        &self,
        profile: &str,
        fact: &pb::LoyaltyFact,
        record_ts: Option<i64>,
    ) -> OutRecord {
        self.fact_record(
            &self.topics.loyalty,
            profile,
            fact.encode_to_vec(),
            record_ts,
        )
    }

    fn fact_record(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
        record_ts: Option<i64>,
    ) -> OutRecord {
        OutRecord::new(topic, key, payload)
            .with_header("content-type", CONTENT_TYPE_PROTOBUF)
            .with_timestamp(record_ts)
    }

    fn redemption(
        &self,
        ev: &TillEvent,
        kind: pb::RedemptionKind,
        code: &str,
        index: u32,
    ) -> pb::RedemptionFact {
        pb::RedemptionFact {
            id: ids::derive(&ev.event_id.to_string(), "redemption", index).to_string(),
            kind: kind as i32,
            event_id: ev.event_id.to_string(),
            code: code.to_owned(),
            campaign_id: None,
            session_id: String::new(),
            store_id: ev.store_id.clone(),
            till_id: ev.till_id.clone(),
            till_seq: ev.till_seq,
            cashier_id: ev.cashier_id.clone(),
            profile_id: ev.profile_id.clone(),
            offline: ev.offline,
            occurred_at: Some(ts(ev.occurred_at)),
            discount_minor: 0,
            currency: ev.currency.map(|c| c.to_string()).unwrap_or_default(),
            index,
        }
    }

    fn loyalty(
        &self,
        ev: &TillEvent,
        profile: &str,
        program: &str,
        currency: &str,
    ) -> pb::LoyaltyFact {
        pb::LoyaltyFact {
            id: String::new(),
            kind: 0,
            event_id: ev.event_id.to_string(),
            profile_id: profile.to_owned(),
            program_id: program.to_owned(),
            session_id: ev.session_id.clone().unwrap_or_default(),
            original_session_id: None,
            store_id: ev.store_id.clone(),
            till_id: ev.till_id.clone(),
            till_seq: ev.till_seq,
            cashier_id: ev.cashier_id.clone(),
            offline: ev.offline,
            occurred_at: Some(ts(ev.occurred_at)),
            points: 0,
            refund_minor: 0,
            sale_total_minor: 0,
            currency: currency.to_owned(),
        }
    }
}
