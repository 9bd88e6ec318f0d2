//! Till events built the way an outside client builds them: proto3 JSON written with a generic
//! JSON library (camelCase names, 64-bit integers as strings, defaults left out), or protobuf
//! bytes from the contract's `.proto` files. Tests change one field with [`Sale`]'s setters, or
//! a piece of the JSON text itself when they plant something a client could send.

use prost::Message;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tillbridge_proto::pb;

/// The day most fixed events happen on: 2026-11-02T10:15:00Z.
pub const DAY: &str = "2026-11-02T10:15:00Z";

/// A sale as a till sends it. [`Sale::new`] gives one line (`A`, 1 x 10.00 EUR) on [`DAY`],
/// online, no coupon, no cashier, no total.
#[derive(Clone, Debug)]
pub struct Sale {
    pub id: String,
    pub store: String,
    pub till: String,
    pub seq: u64,
    /// `occurred_at`, RFC 3339.
    pub at: String,
    pub session: String,
    pub offline: bool,
    pub cashier: Option<String>,
    pub currency: String,
    /// `(sku, quantity, unit price in minor units)`.
    pub lines: Vec<(String, u32, i64)>,
    /// `(code, discount in minor units)`.
    pub coupons: Vec<(String, i64)>,
    pub total_minor: Option<i64>,
}

impl Sale {
    pub fn new(id: impl ToString, store: &str, till: &str, seq: u64) -> Sale {
        Sale {
            id: id.to_string(),
            store: store.into(),
            till: till.into(),
            seq,
            at: DAY.into(),
            session: format!("R-{seq}"),
            offline: false,
            cashier: None,
            currency: "EUR".into(),
            lines: vec![("A".into(), 1, 1000)],
            coupons: Vec::new(),
            total_minor: None,
        }
    }

    /// `occurred_at` as milliseconds since the epoch.
    pub fn at_ms(mut self, ms: i64) -> Sale {
        self.at = rfc3339_ms(ms);
        self
    }

    pub fn at(mut self, at: chrono::DateTime<chrono::Utc>) -> Sale {
        self.at = at.to_rfc3339();
        self
    }

    pub fn session(mut self, session: impl Into<String>) -> Sale {
        self.session = session.into();
        self
    }

    pub fn offline(mut self, offline: bool) -> Sale {
        self.offline = offline;
        self
    }

    pub fn cashier(mut self, cashier: &str) -> Sale {
        self.cashier = Some(cashier.into());
        self
    }

    /// Replaces the lines with one line.
    pub fn line(mut self, sku: &str, quantity: u32, unit_price_minor: i64) -> Sale {
        self.lines = vec![(sku.into(), quantity, unit_price_minor)];
        self
    }

    pub fn coupon(mut self, code: &str, discount_minor: i64) -> Sale {
        self.coupons.push((code.into(), discount_minor));
        self
    }

    pub fn total(mut self, total_minor: i64) -> Sale {
        self.total_minor = Some(total_minor);
        self
    }

    /// The record key the contract asks for: `{store_id}/{till_id}`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.store, self.till)
    }

    /// Proto3 JSON, as a client in another language writes it.
    pub fn json(&self) -> String {
        let mut sale = Map::new();
        sale.insert(
            "lines".into(),
            self.lines
                .iter()
                .map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unitPriceMinor": p.to_string()}))
                .collect(),
        );
        if !self.coupons.is_empty() {
            sale.insert(
                "coupons".into(),
                self.coupons
                    .iter()
                    .map(|(code, d)| json!({"code": code, "discountMinor": d.to_string()}))
                    .collect(),
            );
        }
        if let Some(t) = self.total_minor {
            sale.insert("totalMinor".into(), Value::String(t.to_string()));
        }
        let mut ev = json!({
            "eventId": self.id, "storeId": self.store, "tillId": self.till,
            "tillSeq": self.seq.to_string(), "occurredAt": self.at,
            "sessionId": self.session, "currency": self.currency, "sale": sale,
        });
        if self.offline {
            ev["offline"] = Value::Bool(true);
        }
        if let Some(c) = &self.cashier {
            ev["cashierId"] = Value::String(c.clone());
        }
        ev.to_string()
    }

    /// The protobuf message.
    pub fn proto(&self) -> pb::TillEvent {
        let at = chrono::DateTime::parse_from_rfc3339(&self.at).expect("occurred_at");
        pb::TillEvent {
            event_id: self.id.clone(),
            store_id: self.store.clone(),
            till_id: self.till.clone(),
            till_seq: self.seq,
            occurred_at: Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: at.timestamp_subsec_nanos() as i32,
            }),
            offline: self.offline,
            cashier_id: self.cashier.clone(),
            session_id: self.session.clone(),
            currency: self.currency.clone(),
            body: Some(pb::till_event::Body::Sale(pb::Sale {
                lines: self
                    .lines
                    .iter()
                    .map(|(sku, q, p)| pb::SaleLine {
                        sku: sku.clone(),
                        quantity: *q,
                        unit_price_minor: *p,
                        discount_minor: 0,
                    })
                    .collect(),
                coupons: self
                    .coupons
                    .iter()
                    .map(|(code, d)| pb::CouponRedemption {
                        code: code.clone(),
                        discount_minor: *d,
                        ..Default::default()
                    })
                    .collect(),
                loyalty: None,
                total_minor: self.total_minor,
            })),
            ..Default::default()
        }
    }
}

/// Milliseconds since the epoch as RFC 3339.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339()
}

/// A line of `tillbridge publish`'s input: the minimal envelope (topic, key, record time,
/// payload as text).
pub fn envelope(topic: &str, key: &str, ts: i64, payload: &str) -> String {
    json!({"topic": topic, "key": key, "ts": ts, "payload": payload}).to_string()
}

/// A generated till event as an outside client sends it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub key: String,
    pub payload: Vec<u8>,
    pub content_type: Option<&'static str>,
}

/// A conflicting resend of `event` (sent as `sent`): the same id under the same key with other
/// content (its `till_seq` a million further), as protobuf, as a till that reused an id would
/// send it. Ingest must refuse it (`DUPLICATE_CONFLICT`).
pub fn conflicting(event: &pb::TillEvent, sent: &Sent) -> Sent {
    let mut e = event.clone();
    e.till_seq += 1_000_000;
    Sent {
        key: sent.key.clone(),
        payload: prost::Message::encode_to_vec(&e),
        content_type: None,
    }
}

/// `n` distinct valid events over `tills` tills (half JSON, half protobuf) and their ids.
pub fn good_events(n: usize, tills: usize, seed: u64) -> (Vec<Sent>, Vec<pb::TillEvent>) {
    good_events_with(n, tills, seed, |_, sale| sale)
}

/// [`good_events`] with each sale (the `i`th) changed by `edit` before it is encoded: another
/// store, a coupon.
pub fn good_events_with(
    n: usize,
    tills: usize,
    seed: u64,
    mut edit: impl FnMut(usize, Sale) -> Sale,
) -> (Vec<Sent>, Vec<pb::TillEvent>) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    // Event times spread over n/10 seconds, all in the past (no CLOCK_SKEW).
    let now = chrono::Utc::now().timestamp() - (n as i64 / 10) - 3600;
    let mut seqs = vec![0u64; tills];
    let mut sent = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let t = rng.gen_range(0..tills);
        seqs[t] += 1;
        let price = rng.gen_range(100..10_000i64);
        let id = uuid::Builder::from_random_bytes(rng.gen()).into_uuid();
        let sale = Sale::new(
            id,
            &format!("S{:02}", t / 4),
            &format!("T{}", t % 4),
            seqs[t],
        )
        .at_ms((now + i as i64 / 10) * 1000)
        .session(format!("R-{seed}-{i}"))
        .line(&format!("SKU-{}", rng.gen_range(0..1000)), 1, price)
        .total(price);
        let sale = edit(i, sale);
        let ev = sale.proto();
        let (payload, content_type) = if i % 2 == 0 {
            (sale.json().into_bytes(), Some("application/json"))
        } else {
            (ev.encode_to_vec(), None)
        };
        sent.push(Sent {
            key: sale.key(),
            payload,
            content_type,
        });
        events.push(ev);
    }
    (sent, events)
}
