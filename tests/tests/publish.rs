//! `publish` as an integrator uses it: bare contract messages and kcat-style record envelopes for
//! every contract topic, each line judged on its own, and a captured topic replayed on the
//! embedded log exactly (key, timestamp, headers, payload).

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use kit::events::Sale;
use prost::Message;
use tillbridge::publish::publish;
use tillbridge::Transport;
use tillbridge_core::config::Topics;
use tillbridge_core::domain::RejectReason;
use tillbridge_core::log::{EmbeddedLog, Record};
use tillbridge_proto::pb;

/// A sale with `id`: till S1/T1, receipt 12.
fn sale(id: &str) -> Sale {
    Sale::new(id, "S1", "T1", 12)
        .session("R-1")
        .line("A", 2, 1000)
        .total(2000)
}

fn sale_with_id(id: &str) -> String {
    sale(id).json()
}

const SALE_ID: &str = "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c11";

fn envelope(topic: &str, key: Option<&str>, ts: i64, payload: serde_json::Value) -> String {
    serde_json::json!({
        "topic": topic, "partition": 0, "offset": 3, "tstype": "create", "ts": ts, "broker": 1,
        "headers": ["content-type", "application/json", "x-origin", "pos-7"],
        "key": key, "payload": payload,
    })
    .to_string()
}

/// What a replay must keep of a record: partition, key, value, record time, headers.
type Stripped = (
    i32,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<i64>,
    Vec<(String, Vec<u8>)>,
);

fn open(dir: &std::path::Path) -> (EmbeddedLog, Transport) {
    let log = EmbeddedLog::open(dir, 4).unwrap();
    (log.clone(), Transport::Embedded(log))
}

fn one(log: &EmbeddedLog, topic: &str) -> Vec<Record> {
    let mut v = log.read_all(topic).unwrap();
    v.sort_by(|a, b| a.key.cmp(&b.key).then(a.timestamp_ms.cmp(&b.timestamp_ms)));
    v
}

#[tokio::test]
async fn every_contract_topic_from_bare_lines_and_envelopes_each_line_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (log, transport) = open(dir.path());
    let t = Topics::default();
    let proto_sale = {
        let mut e: pb::TillEvent = tillbridge_proto::decode_till_event(
            sale_with_id("6f1c2f0e-5a0b-4c49-9d0e-2b7e3f1a9c01").as_bytes(),
            None,
        )
        .unwrap();
        e.till_seq = 13;
        e.encode_to_vec()
    };
    let mut input: Vec<u8> = Vec::new();
    let mut line = |s: &str| {
        input.extend_from_slice(s.as_bytes());
        input.push(b'\n');
    };
    // 1: a bare till event.
    line(&sale_with_id(SALE_ID));
    // 2: a till event in an envelope, its record time kept.
    line(&envelope(
        "till.events",
        Some("S1/T1"),
        1_793_614_600_123,
        serde_json::Value::String(sale_with_id("3a0e1c55-7b7e-4d6c-8a3b-0d8f5e2c1b22")),
    ));
    // 3: a protobuf till event, base64 in the envelope.
    line(
        &serde_json::json!({
            "topic": "till.events", "key": "S1/T1", "ts": 1_793_614_700_000i64,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&proto_sale),
        })
        .to_string(),
    );
    // 4: a coupon definition as a JSON object, keyed by its code.
    line(&envelope(
        "promo.coupons",
        Some("SPRING-25"),
        1_762_000_000_000,
        serde_json::json!({"code": "SPRING-25", "usageLimit": 1}),
    ));
    // 5: a loyalty balance in an envelope, its payload as text.
    line(&envelope(
        "promo.loyalty.balances",
        Some("P-1"),
        1_762_000_000_001,
        serde_json::Value::String(
            r#"{"profileId":"P-1","balance":"500","asOf":"2026-11-01T00:00:00Z"}"#.into(),
        ),
    ));
    // 6: a store tombstone.
    line(&envelope(
        "promo.stores",
        Some("S9"),
        1_762_000_000_002,
        serde_json::Value::Null,
    ));
    // 7: not UTF-8.
    input.extend_from_slice(b"{\"eventId\":\"\xff\xfe\"}\n");
    // 8: a till event breaking the contract.
    let mut line = |s: &str| {
        input.extend_from_slice(s.as_bytes());
        input.push(b'\n');
    };
    line(&sale(SALE_ID).line("A", 0, 1000).total(2000).json());
    // 9: an envelope with a typo.
    line(r#"{"topic":"till.events","kee":"S1/T1","payload":"{}"}"#);
    // 10: a till event tombstone.
    line(&envelope(
        "till.events",
        Some("S1/T1"),
        1,
        serde_json::Value::Null,
    ));
    // 11: a store row whose key disagrees with its id.
    line(&envelope(
        "promo.stores",
        Some("S1"),
        1,
        serde_json::json!({"storeId": "S2"}),
    ));
    // 12: a captured topic this configuration does not know.
    line(&envelope(
        "other.topic",
        Some("k"),
        1,
        serde_json::json!({}),
    ));

    let report = publish(
        &input[..],
        Some(&transport),
        &t,
        &Default::default(),
        None,
        false,
    )
    .await
    .unwrap();
    let problems: Vec<(u64, RejectReason)> =
        report.problems.iter().map(|(n, r, _)| (*n, *r)).collect();
    assert_eq!(
        problems,
        vec![
            (7, RejectReason::DecodeError),
            (8, RejectReason::InvalidField),
            (9, RejectReason::DecodeError),
            (10, RejectReason::MissingField),
            (11, RejectReason::InvalidField),
            (12, RejectReason::InvalidField),
        ],
        "{report}"
    );
    assert_eq!(report.published, 6, "{report}");

    let events = one(&log, &t.till_events);
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e.key.as_deref(), Some(&b"S1/T1"[..]));
    }
    let stamped = events
        .iter()
        .find(|e| e.timestamp_ms == Some(1_793_614_600_123))
        .expect("the envelope's record time is kept");
    assert_eq!(stamped.header("x-origin"), Some(&b"pos-7"[..]));
    assert_eq!(
        stamped.header("content-type"),
        Some(&b"application/json"[..])
    );
    let binary = events
        .iter()
        .find(|e| e.timestamp_ms == Some(1_793_614_700_000))
        .unwrap();
    assert_eq!(binary.payload.as_deref(), Some(proto_sale.as_slice()));
    assert_eq!(binary.header("content-type"), None);

    let coupons = one(&log, &t.coupons);
    assert_eq!(coupons.len(), 1);
    assert_eq!(coupons[0].key.as_deref(), Some(&b"SPRING-25"[..]));
    assert_eq!(one(&log, &t.loyalty_balances).len(), 1);
    let stores = one(&log, &t.stores);
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].payload, None, "a tombstone");
}

#[tokio::test]
async fn a_captured_topic_replays_on_the_embedded_log_exactly() {
    let t = Topics::default();
    // The "cluster": records as other teams' clients wrote them.
    let src = tempfile::tempdir().unwrap();
    let (src_log, src_transport) = open(src.path());
    let mut records = Vec::new();
    for i in 0..40u32 {
        let id = uuid::Uuid::from_u128(0x1000 + u128::from(i)).to_string();
        let mut r = tillbridge_core::log::OutRecord::new(
            &t.till_events,
            format!("S{}/T1", i % 3),
            Sale {
                seq: (i + 1).into(),
                ..sale(&id)
            }
            .json()
            .into_bytes(),
        )
        .with_header("content-type", "application/json")
        .with_timestamp(Some(1_793_614_600_000 + i64::from(i) * 1000));
        if i % 5 == 0 {
            // protobuf, no header
            let e =
                tillbridge_proto::decode_till_event(r.payload.as_deref().unwrap(), None).unwrap();
            r.payload = Some(e.encode_to_vec());
            r.headers.clear();
        }
        records.push(r);
    }
    src_transport.append(records).await.unwrap();

    // Captured as kcat -J would print it (binary values in base64).
    let captured: String = src_log
        .read_all(&t.till_events)
        .unwrap()
        .iter()
        .map(|r| {
            let mut headers = Vec::new();
            for (k, v) in &r.headers {
                headers.push(serde_json::Value::String(k.clone()));
                headers.push(serde_json::Value::String(
                    String::from_utf8(v.clone()).unwrap(),
                ));
            }
            let payload = r.payload.as_deref().unwrap();
            let mut j = serde_json::json!({
                "topic": r.topic, "partition": r.partition, "offset": r.offset, "tstype": "create",
                "ts": r.timestamp_ms, "headers": headers,
                "key": String::from_utf8(r.key.clone().unwrap()).unwrap(),
            });
            match std::str::from_utf8(payload) {
                Ok(text) if text.starts_with('{') => j["payload"] = text.into(),
                _ => {
                    j["payload_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(payload)
                        .into()
                }
            }
            format!("{j}\n")
        })
        .collect();

    let dst = tempfile::tempdir().unwrap();
    let (dst_log, dst_transport) = open(dst.path());
    let report = publish(
        captured.as_bytes(),
        Some(&dst_transport),
        &t,
        &Default::default(),
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.rejected(), 0, "{report}");
    let strip = |v: Vec<Record>| -> Vec<Stripped> {
        v.into_iter()
            .map(|r| (r.partition, r.key, r.payload, r.timestamp_ms, r.headers))
            .collect()
    };
    assert_eq!(
        strip(one(&dst_log, &t.till_events)),
        strip(one(&src_log, &t.till_events)),
        "same partition, key, value, record time and headers"
    );
}

#[test]
fn check_applies_every_ingest_rule_and_works_while_the_log_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    // This process holds the embedded log, as `tillbridge run` would.
    let (_log, _transport) = open(&log_dir);
    let now = chrono::Utc::now();
    let sale_at = |at: chrono::DateTime<chrono::Utc>, id: &str| {
        Sale::new(id, "S1", "T1", 1).session("R-1").at(at).json()
    };
    let big = sale_at(now, "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c13")
        .replace(r#""sku":"A""#, &format!(r#""sku":"{}""#, "A".repeat(2048)));
    let input = [
        sale_at(now, "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c11"),
        // Stamped an hour ahead of the time it is appended.
        sale_at(
            now + chrono::Duration::hours(1),
            "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c12",
        ),
        big,
    ]
    .join("\n");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, input).unwrap();
    let out = kit::process::tillbridge()
        .args(["publish", "--check", "--file"])
        .arg(&file)
        .env("TILLBRIDGE_EMBEDDED__PATH", &log_dir)
        .env("TILLBRIDGE_INGEST__MAX_PAYLOAD_BYTES", "1024")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("line 2") && stdout.contains("CLOCK_SKEW"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 3") && stdout.contains("OVERSIZED"),
        "{stdout}"
    );
    assert!(!stdout.contains("line 1"), "{stdout}");
}
