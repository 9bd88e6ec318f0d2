//! A deterministic POS fleet simulator for the demo: several stores and tills, offline windows
//! that sync late, resent duplicates, coupons redeemed past their limit in two stores, loyalty
//! points redeemed twice, malformed events and one carrying a card number. Events are encoded
//! the way outside clients write them: mostly proto3 JSON, some protobuf.

use chrono::{DateTime, Duration, TimeZone, Utc};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tillbridge_core::log::OutRecord;
use tillbridge_proto::pb::{self, till_event::Body};
use tillbridge_proto::to_json;

/// Sales per till over the simulated day.
const SALES_PER_TILL: usize = 45;
/// Share of events a till resends (per mille).
const RESEND_PER_MILLE: u32 = 50;

pub const STORES: [&str; 6] = ["S01", "S02", "S03", "S04", "S05", "S06"];
const TILLS: [&str; 3] = ["T1", "T2", "T3"];

/// What the simulator planted, for the demo's summary.
pub const PLANTED: &[&str] = &[
    "LEAK-7Q2X: single-use coupon redeemed at S03 (offline), S05 and S01 within 20 minutes -> 2 over-redemptions, COUPON_VELOCITY",
    "FLASH-24: unlimited coupon at 3 stores within 15 minutes -> COUPON_VELOCITY only",
    "VIP-GOLD: one profile uses a once-per-profile coupon twice -> PER_PROFILE_LIMIT",
    "STAFF-OFF: redeemed offline though offline use is not allowed -> OFFLINE_NOT_ALLOWED",
    "XMAS-EARLY: redeemed before its validity window -> OUTSIDE_VALIDITY",
    "GHOST-99: a code the promotion core never issued -> UNKNOWN_COUPON",
    "SU-CANCEL: single-use coupon released by a cancelled session, then used again -> no case",
    "P007: 400 + 400 points redeemed against a balance of 500 at two stores -> POINTS_DEFICIT 300",
    "S03: till T2 offline 10:00-13:00 with large discounts -> OFFLINE_EXPOSURE",
    "cashier S05-C2: 7 price overrides in an hour -> OVERRIDE_RATE",
    "S06/T3: receipts 31-33 never sync -> SEQUENCE_GAP",
    "S02/T3: clock 20 minutes slow -> CLOCK_DRIFT",
    "one event stamped two hours ahead (a random till) -> dead-lettered as CLOCK_SKEW, and CLOCK_DRIFT",
    "S01: partial return of a sale that used a coupon -> RETURN_AFTER_REDEMPTION",
    "9 malformed or rejected records: DECODE_ERROR x2, MISSING_FIELD, INVALID_FIELD, INCONSISTENT_TOTAL, CLOCK_SKEW, CARD_DATA, OVERSIZED, DUPLICATE_CONFLICT",
];

/// The simulated fleet's records, in arrival order.
#[derive(Debug)]
pub struct Fleet {
    pub coupons: Vec<OutRecord>,
    pub balances: Vec<OutRecord>,
    pub till_events: Vec<OutRecord>,
}

use tillbridge_proto::timestamp as ts;

fn day() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

#[derive(Clone, Copy)]
enum Enc {
    Json,
    Proto,
}

struct Planned {
    ev: pb::TillEvent,
    record_ms: i64,
    enc: Enc,
}

struct Sim {
    rng: SmallRng,
    seqs: std::collections::HashMap<String, u64>,
    planned: Vec<Planned>,
    next_session: u64,
    /// Single-use welcome codes handed out in ordinary traffic.
    welcome: Vec<String>,
}

fn coupon(code: &str, limit: u32, per_profile: u32, offline_allowed: bool) -> pb::CouponDefinition {
    pb::CouponDefinition {
        code: code.into(),
        campaign_id: format!(
            "camp-{}",
            code.split('-').next().unwrap_or(code).to_lowercase()
        ),
        usage_limit: limit,
        per_profile_limit: per_profile,
        valid_from: Some(ts(day() - Duration::days(30))),
        valid_until: Some(ts(day() + Duration::days(60))),
        offline_allowed,
    }
}

/// Options of one sale.
#[derive(Default, Clone)]
struct SaleSpec {
    coupons: Vec<(String, i64)>,
    profile: Option<String>,
    redeem_points: i64,
    offline: bool,
    line_discount: i64,
}

impl Sim {
    /// A fresh single-use welcome code (each customer gets their own).
    fn welcome_code(&mut self) -> String {
        let code = format!("WEL-{:05}", self.welcome.len() + 1);
        self.welcome.push(code.clone());
        code
    }

    fn uuid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.gen())
            .into_uuid()
            .to_string()
    }

    fn seq(&mut self, store: &str, till: &str) -> u64 {
        let s = self.seqs.entry(format!("{store}/{till}")).or_insert(0);
        *s += 1;
        *s
    }

    fn base(&mut self, store: &str, till: &str, at: DateTime<Utc>, offline: bool) -> pb::TillEvent {
        let till_seq = self.seq(store, till);
        pb::TillEvent {
            event_id: self.uuid(),
            store_id: store.into(),
            till_id: till.into(),
            till_seq,
            occurred_at: Some(ts(at)),
            cashier_id: Some(format!("{store}-C{}", &till[1..])),
            channel: pb::Channel::InStore as i32,
            offline,
            session_id: String::new(),
            profile_id: None,
            currency: "EUR".into(),
            body: None,
        }
    }

    /// Online events arrive seconds after they happen; offline ones when the till syncs.
    fn push(&mut self, ev: pb::TillEvent, arrives: DateTime<Utc>) {
        let enc = if self.rng.gen_ratio(1, 5) {
            Enc::Proto
        } else {
            Enc::Json
        };
        self.planned.push(Planned {
            ev,
            record_ms: arrives.timestamp_millis(),
            enc,
        });
    }

    fn sale(
        &mut self,
        store: &str,
        till: &str,
        at: DateTime<Utc>,
        spec: SaleSpec,
    ) -> pb::TillEvent {
        let mut ev = self.base(store, till, at, spec.offline);
        self.next_session += 1;
        ev.session_id = format!("R-{store}-{till}-{:05}", self.next_session);
        ev.profile_id = spec.profile.clone();
        let n_lines = self.rng.gen_range(1..=4);
        let mut lines = Vec::new();
        let mut total = 0i64;
        for i in 0..n_lines {
            let qty = self.rng.gen_range(1..=3u32);
            let price = self.rng.gen_range(199..=4999i64);
            let disc = if i == 0 {
                spec.line_discount.min(price * i64::from(qty))
            } else {
                0
            };
            total += price * i64::from(qty) - disc;
            lines.push(pb::SaleLine {
                sku: format!("SKU-{:04}", self.rng.gen_range(1..500)),
                quantity: qty,
                unit_price_minor: price,
                discount_minor: disc,
            });
        }
        let coupons: Vec<pb::CouponRedemption> = spec
            .coupons
            .iter()
            .map(|(code, d)| pb::CouponRedemption {
                code: code.clone(),
                discount_minor: (*d).min(total),
                campaign_id: None,
            })
            .collect();
        for c in &coupons {
            total -= c.discount_minor;
        }
        let loyalty = spec.profile.as_ref().map(|_| pb::LoyaltyActivity {
            program_id: "club".into(),
            // A sale that spends points earns none, so planted deficits are exact.
            points_earned: if spec.redeem_points > 0 {
                0
            } else {
                total.max(0) / 100
            },
            points_redeemed: spec.redeem_points,
        });
        ev.body = Some(Body::Sale(pb::Sale {
            lines,
            coupons,
            loyalty,
            total_minor: Some(total),
        }));
        ev
    }
}

fn record(topic: &str, key: String, payload: Vec<u8>, json: bool, at_ms: i64) -> OutRecord {
    let mut r = OutRecord::new(topic, key, payload).with_timestamp(Some(at_ms));
    if json {
        r = r.with_header("content-type", "application/json");
    }
    r
}

/// Builds the fleet's traffic for `seed`.
pub fn fleet(seed: u64, till_topic: &str, coupon_topic: &str, balance_topic: &str) -> Fleet {
    let mut sim = Sim {
        rng: SmallRng::seed_from_u64(seed),
        seqs: Default::default(),
        planned: Vec::new(),
        next_session: 0,
        welcome: Vec::new(),
    };
    let d0 = day();
    let m = Duration::minutes;

    // The promotion core's catalog and balances, published before the day starts.
    let catalog_at = (d0 - Duration::hours(1)).timestamp_millis();
    let mut defs = vec![
        coupon("LEAK-7Q2X", 1, 0, true),
        coupon("FLASH-24", 0, 0, true),
        coupon("VIP-GOLD", 10, 1, true),
        coupon("STAFF-OFF", 0, 0, false),
        coupon("SU-CANCEL", 1, 0, true),
    ];
    let mut xmas = coupon("XMAS-EARLY", 0, 0, true);
    xmas.valid_from = Some(ts(Utc
        .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
        .single()
        .unwrap_or(d0)));
    defs.push(xmas);
    let balances = (1..=30)
        .map(|i| {
            let b = pb::LoyaltyBalance {
                profile_id: format!("P{i:03}"),
                program_id: "club".into(),
                balance: if i == 7 { 500 } else { 1000 },
                as_of: Some(ts(d0 - Duration::hours(8))),
            };
            OutRecord::new(balance_topic, b.profile_id.clone(), b.encode_to_vec())
                .with_timestamp(Some(catalog_at))
        })
        .collect();

    // S03/T2 is offline from 10:00 to 13:00 and syncs at 13:05.
    let offline_from = d0 + m(120);
    let offline_to = d0 + m(300);
    let sync_at = d0 + m(305);
    // A till that comes back online resends its backlog oldest first (a second per minute of
    // backlog), as POS vendors' offline queues do.
    let backlog_arrival = move |at: DateTime<Utc>| {
        sync_at + Duration::seconds((at - offline_from).num_minutes().max(0))
    };

    // A sale stamped by the till's clock and made at `at`, reaching the broker `online_delay`
    // seconds later, or with the backlog when it was made offline.
    let send = |sim: &mut Sim,
                store: &str,
                till: &str,
                (stamped, at): (DateTime<Utc>, DateTime<Utc>),
                spec: SaleSpec,
                online_delay: i64| {
        let arrives = if spec.offline {
            backlog_arrival(at)
        } else {
            at + Duration::seconds(online_delay)
        };
        let ev = sim.sale(store, till, stamped, spec);
        sim.push(ev, arrives);
    };

    // Ordinary traffic on every till.
    for store in STORES {
        for till in TILLS {
            for i in 0..SALES_PER_TILL {
                let at = d0 + m((i as i64) * 15 + sim.rng.gen_range(0..14));
                let offline =
                    store == "S03" && till == "T2" && at >= offline_from && at < offline_to;
                let mut spec = SaleSpec {
                    offline,
                    ..Default::default()
                };
                if sim.rng.gen_ratio(1, 3) {
                    spec.profile = Some(format!("P{:03}", sim.rng.gen_range(11..=30)));
                }
                if sim.rng.gen_ratio(1, 6) {
                    spec.coupons.push((sim.welcome_code(), 500));
                }
                if offline {
                    spec.line_discount = 5000;
                    spec.coupons = vec![(sim.welcome_code(), 2500)];
                }
                // The till with a slow clock stamps events 20 minutes early.
                let stamped = if store == "S02" && till == "T3" {
                    at - m(20)
                } else {
                    at
                };
                send(&mut sim, store, till, (stamped, at), spec, 2);
            }
        }
    }

    // LEAK-7Q2X: S03 offline 10:15, S05 10:25, S01 10:35.
    let plant = |sim: &mut Sim, store: &str, till: &str, at: DateTime<Utc>, spec: SaleSpec| {
        send(sim, store, till, (at, at), spec, 3);
    };
    let leak = |offline| SaleSpec {
        coupons: vec![("LEAK-7Q2X".to_owned(), 2000)],
        offline,
        ..Default::default()
    };
    plant(&mut sim, "S03", "T2", d0 + m(135), leak(true));
    plant(&mut sim, "S05", "T1", d0 + m(145), leak(false));
    plant(&mut sim, "S01", "T3", d0 + m(155), leak(false));
    // FLASH-24 at three stores within 15 minutes.
    for (k, store) in ["S01", "S02", "S04"].iter().enumerate() {
        let spec = SaleSpec {
            coupons: vec![("FLASH-24".to_owned(), 300)],
            ..Default::default()
        };
        plant(&mut sim, store, "T1", d0 + m(360 + 5 * k as i64), spec);
    }
    // VIP-GOLD twice by P010.
    for (store, at) in [("S02", d0 + m(240)), ("S06", d0 + m(420))] {
        let spec = SaleSpec {
            coupons: vec![("VIP-GOLD".to_owned(), 1000)],
            profile: Some("P010".into()),
            ..Default::default()
        };
        plant(&mut sim, store, "T2", at, spec);
    }
    // STAFF-OFF offline, XMAS-EARLY too early, GHOST-99 unknown.
    let one = |code: &'static str, d: i64, offline: bool| SaleSpec {
        coupons: vec![(code.to_owned(), d)],
        offline,
        ..Default::default()
    };
    plant(
        &mut sim,
        "S03",
        "T2",
        d0 + m(170),
        one("STAFF-OFF", 800, true),
    );
    plant(
        &mut sim,
        "S04",
        "T3",
        d0 + m(200),
        one("XMAS-EARLY", 700, false),
    );
    plant(
        &mut sim,
        "S05",
        "T3",
        d0 + m(210),
        one("GHOST-99", 900, false),
    );
    // SU-CANCEL: used, cancelled, used again elsewhere.
    let first = sim.sale("S02", "T1", d0 + m(90), one("SU-CANCEL", 500, false));
    let session = first.session_id.clone();
    sim.push(first, d0 + m(90) + Duration::seconds(2));
    let mut cancel = sim.base("S02", "T1", d0 + m(95), false);
    cancel.session_id = session;
    cancel.body = Some(Body::SessionCancelled(pb::SessionCancelled {
        reason: "customer changed mind".into(),
    }));
    sim.push(cancel, d0 + m(95) + Duration::seconds(2));
    plant(
        &mut sim,
        "S04",
        "T2",
        d0 + m(360),
        one("SU-CANCEL", 500, false),
    );
    // P007 redeems 400 points twice: offline at S03, online at S04.
    for (store, till, at, offline) in [
        ("S03", "T2", d0 + m(160), true),
        ("S04", "T1", d0 + m(200), false),
    ] {
        let spec = SaleSpec {
            profile: Some("P007".into()),
            redeem_points: 400,
            offline,
            ..Default::default()
        };
        plant(&mut sim, store, till, at, spec);
    }
    // S05-C2: seven price overrides between 14:00 and 14:50.
    for k in 0..7 {
        let at = d0 + m(360 + 7 * k);
        let mut ev = sim.base("S05", "T2", at, false);
        ev.body = Some(Body::ManualOverride(pb::ManualOverride {
            kind: pb::manual_override::Kind::Price as i32,
            amount_minor: 1000 + 100 * k,
            reason: "price match".into(),
            approved_by: None,
        }));
        sim.push(ev, at + Duration::seconds(2));
    }
    // S01: a coupon sale, then a partial return two hours later.
    let spec = SaleSpec {
        coupons: vec![(sim.welcome_code(), 500)],
        profile: Some("P012".into()),
        ..Default::default()
    };
    let sale = sim.sale("S01", "T2", d0 + m(250), spec);
    let (sid, first_line) = match &sale.body {
        Some(Body::Sale(s)) => (sale.session_id.clone(), s.lines[0].clone()),
        _ => (String::new(), pb::SaleLine::default()),
    };
    sim.push(sale, d0 + m(250) + Duration::seconds(2));
    let mut ret = sim.base("S01", "T2", d0 + m(370), false);
    sim.next_session += 1;
    ret.session_id = format!("R-S01-T2-{:05}", sim.next_session);
    ret.profile_id = Some("P012".into());
    let refund = first_line.unit_price_minor;
    ret.body = Some(Body::Return(pb::Return {
        original_session_id: sid,
        lines: vec![pb::ReturnLine {
            sku: first_line.sku,
            quantity: 1,
            refund_minor: refund,
        }],
        refund_minor: refund,
    }));
    sim.push(ret, d0 + m(370) + Duration::seconds(2));
    // Status changes around the offline window.
    for (at, status) in [
        (offline_from, pb::till_status::Status::Offline),
        (offline_to, pb::till_status::Status::Online),
    ] {
        let arrives = backlog_arrival(at);
        let mut ev = sim.base("S03", "T2", at, status == pb::till_status::Status::Offline);
        ev.body = Some(Body::TillStatus(pb::TillStatus {
            status: status as i32,
            last_synced_seq: 0,
        }));
        sim.push(ev, arrives);
    }

    for code in &sim.welcome {
        defs.push(coupon(code, 1, 0, true));
    }
    let coupons = defs
        .iter()
        .map(|c| {
            OutRecord::new(coupon_topic, c.code.clone(), c.encode_to_vec())
                .with_timestamp(Some(catalog_at))
        })
        .collect();

    // Number each till's events in the order they happened, as a till does; then lose
    // receipts 31-33 of S06/T3, which never sync.
    sim.planned.sort_by_key(|p| {
        (
            p.ev.store_id.clone(),
            p.ev.till_id.clone(),
            p.ev.occurred_at.map(|t| t.seconds),
        )
    });
    let mut seqs: std::collections::HashMap<String, u64> = Default::default();
    for p in &mut sim.planned {
        let s = seqs
            .entry(format!("{}/{}", p.ev.store_id, p.ev.till_id))
            .or_insert(0);
        *s += 1;
        p.ev.till_seq = *s;
    }
    sim.planned.retain(|p| {
        !(p.ev.store_id == "S06" && p.ev.till_id == "T3" && (31..=33).contains(&p.ev.till_seq))
    });

    // Encode in arrival order; resend some.
    sim.planned.sort_by_key(|p| p.record_ms);
    let mut till_events = Vec::new();
    let planned = std::mem::take(&mut sim.planned);
    for p in &planned {
        let key = format!("{}/{}", p.ev.store_id, p.ev.till_id);
        let (bytes, json) = match p.enc {
            Enc::Json => (to_json(&p.ev).into_bytes(), true),
            Enc::Proto => (p.ev.encode_to_vec(), false),
        };
        till_events.push(record(till_topic, key.clone(), bytes, json, p.record_ms));
        if sim.rng.gen_ratio(RESEND_PER_MILLE, 1000) {
            // A resend of the same event, sometimes in the other encoding.
            let (bytes, json) = if sim.rng.gen_bool(0.5) {
                (p.ev.encode_to_vec(), false)
            } else {
                (to_json(&p.ev).into_bytes(), true)
            };
            till_events.push(record(till_topic, key, bytes, json, p.record_ms + 60_000));
        }
    }

    // Malformed and rejected records, from a badly behaved integration.
    let bad_at = (d0 + m(480)).timestamp_millis();
    let mut bad = Vec::new();
    bad.push((
        br#"{"eventId": "9b6f0c2e-0000-4000-8000-00000000000""#.to_vec(),
        true,
    ));
    bad.push((vec![0xff, 0x01, 0x02, 0x03, 0x99], false));
    let template = planned
        .iter()
        .find(|p| matches!(p.ev.body, Some(Body::Sale(_))))
        .map(|p| p.ev.clone());
    let template_key = template
        .as_ref()
        .map(|t| format!("{}/{}", t.store_id, t.till_id));
    if let Some(t) = template {
        let fresh = |sim: &mut Sim, t: &pb::TillEvent| {
            let mut e = t.clone();
            e.event_id = sim.uuid();
            e.occurred_at = Some(ts(d0 + m(470)));
            e
        };
        let mut e = fresh(&mut sim, &t);
        e.store_id = String::new();
        bad.push((to_json(&e).into_bytes(), true));
        let mut e = fresh(&mut sim, &t);
        if let Some(Body::Sale(s)) = &mut e.body {
            s.lines[0].quantity = 0;
        }
        bad.push((to_json(&e).into_bytes(), true));
        let mut e = fresh(&mut sim, &t);
        if let Some(Body::Sale(s)) = &mut e.body {
            s.total_minor = Some(s.total_minor.unwrap_or(0) + 1);
        }
        bad.push((e.encode_to_vec(), false));
        let mut e = fresh(&mut sim, &t);
        e.occurred_at = Some(ts(d0 + m(480 + 120)));
        bad.push((to_json(&e).into_bytes(), true));
        let mut e = fresh(&mut sim, &t);
        if let Some(Body::Sale(s)) = &mut e.body {
            s.lines[0].sku = "card 4111 1111 1111 1111".into();
        }
        bad.push((to_json(&e).into_bytes(), true));
        let mut e = fresh(&mut sim, &t);
        if let Some(Body::Sale(s)) = &mut e.body {
            s.lines[0].sku = "X".repeat(1_100_000);
        }
        bad.push((to_json(&e).into_bytes(), true));
        // Same id as an accepted event, different content.
        let mut e = t.clone();
        if let Some(Body::Sale(s)) = &mut e.body {
            s.lines[0].discount_minor += 1;
            s.total_minor = s.total_minor.map(|v| v - 1);
        }
        bad.push((to_json(&e).into_bytes(), true));
    }
    // A till resends on its own key, so the conflicting resend follows its original in the same
    // partition; the other bad records come from a misbehaving integration on S01/T9.
    let conflict_key = template_key.unwrap_or_else(|| "S01/T1".to_owned());
    let n_bad = bad.len();
    for (i, (bytes, json)) in bad.into_iter().enumerate() {
        let key = if i + 1 == n_bad {
            conflict_key.clone()
        } else {
            "S01/T9".to_owned()
        };
        till_events.push(record(till_topic, key, bytes, json, bad_at + i as i64));
    }
    Fleet {
        coupons,
        balances,
        till_events,
    }
}
