//! The JSON fast path never disagrees with the full proto3 JSON decoder: whatever it accepts,
//! the full decoder accepts with the same message; what it cannot judge it leaves to it. Checked
//! over arbitrary events in every spelling an outside client may use, and over mutations of
//! them (nulls, floats, odd integer strings, enums by number, duplicated keys, arrays in place
//! of objects, two bodies at once).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::Value;
use tillbridge_proto::{from_json, json_fast, pb, to_json};

const NAME: &str = "tillbridge.v1.TillEvent";

fn slow(json: &str) -> Result<pb::TillEvent, String> {
    from_json::<pb::TillEvent>(NAME, json.as_bytes()).map_err(|r| r.to_string())
}

/// The property: a fast answer is the full decoder's answer.
fn agrees(json: &str) -> Result<bool, TestCaseError> {
    match json_fast::till_event(json.as_bytes()) {
        None => Ok(false),
        Some(fast) => {
            let full = slow(json);
            prop_assert_eq!(Ok(fast), full, "the fast path disagrees on {}", json);
            Ok(true)
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(10).collect()),
        Just(String::new()),
    ]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![0i64..100_000, any::<i64>(), Just(i64::MIN), Just(i64::MAX)]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let nanos = prop_oneof![
        Just(0),
        (0i32..1000).prop_map(|m| m * 1_000_000),
        (0i32..1_000_000).prop_map(|u| u * 1000),
        0i32..1_000_000_000,
    ];
    proptest::option::of(
        (-62_135_596_800i64..=253_402_300_799, nanos)
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn body() -> impl Strategy<Value = Option<pb::till_event::Body>> {
    use pb::till_event::Body;
    let sale_line =
        (text(), any::<u32>(), amount(), amount()).prop_map(|(sku, q, p, d)| pb::SaleLine {
            sku,
            quantity: q,
            unit_price_minor: p,
            discount_minor: d,
        });
    let coupon = (text(), amount(), proptest::option::of(text())).prop_map(|(code, d, c)| {
        pb::CouponRedemption {
            code,
            discount_minor: d,
            campaign_id: c,
        }
    });
    let loyalty = (text(), amount(), amount()).prop_map(|(p, e, r)| pb::LoyaltyActivity {
        program_id: p,
        points_earned: e,
        points_redeemed: r,
    });
    let sale = (
        prop::collection::vec(sale_line, 0..3),
        prop::collection::vec(coupon, 0..3),
        proptest::option::of(loyalty),
        proptest::option::of(amount()),
    )
        .prop_map(|(lines, coupons, loyalty, total_minor)| {
            Body::Sale(pb::Sale {
                lines,
                coupons,
                loyalty,
                total_minor,
            })
        });
    let ret_line = (text(), any::<u32>(), amount()).prop_map(|(sku, q, r)| pb::ReturnLine {
        sku,
        quantity: q,
        refund_minor: r,
    });
    let ret = (text(), prop::collection::vec(ret_line, 0..3), amount()).prop_map(|(o, l, r)| {
        Body::Return(pb::Return {
            original_session_id: o,
            lines: l,
            refund_minor: r,
        })
    });
    let cancel = text().prop_map(|reason| Body::SessionCancelled(pb::SessionCancelled { reason }));
    let over = (0i32..5, amount(), text(), proptest::option::of(text())).prop_map(
        |(kind, amount_minor, reason, approved_by)| {
            Body::ManualOverride(pb::ManualOverride {
                kind,
                amount_minor,
                reason,
                approved_by,
            })
        },
    );
    let status = (0i32..4, any::<u64>()).prop_map(|(status, last_synced_seq)| {
        Body::TillStatus(pb::TillStatus {
            status,
            last_synced_seq,
        })
    });
    proptest::option::of(prop_oneof![sale, ret, cancel, over, status])
}

fn event() -> impl Strategy<Value = pb::TillEvent> {
    (
        (text(), text(), text(), any::<u64>(), timestamp()),
        (
            proptest::option::of(text()),
            0i32..6,
            any::<bool>(),
            text(),
            proptest::option::of(text()),
            text(),
        ),
        body(),
    )
        .prop_map(
            |(
                (event_id, store_id, till_id, till_seq, occurred_at),
                (cashier_id, channel, offline, session_id, profile_id, currency),
                body,
            )| pb::TillEvent {
                event_id,
                store_id,
                till_id,
                till_seq,
                occurred_at,
                cashier_id,
                channel,
                offline,
                session_id,
                profile_id,
                currency,
                body,
            },
        )
}

/// Whether every enum of `e` has a name (the fast path reads enums by name only).
fn named_enums(e: &pb::TillEvent) -> bool {
    use pb::till_event::Body;
    pb::Channel::try_from(e.channel).is_ok()
        && match &e.body {
            Some(Body::ManualOverride(m)) => pb::manual_override::Kind::try_from(m.kind).is_ok(),
            Some(Body::TillStatus(t)) => pb::till_status::Status::try_from(t.status).is_ok(),
            _ => true,
        }
}

fn camel_to_snake(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The integer fields of the contract's events (their JSON names).
const INTEGERS: &[&str] = &[
    "tillSeq",
    "quantity",
    "unitPriceMinor",
    "discountMinor",
    "pointsEarned",
    "pointsRedeemed",
    "totalMinor",
    "refundMinor",
    "amountMinor",
    "lastSyncedSeq",
];

/// Another spelling of the same message: snake_case keys and integers (written as strings) as
/// JSON numbers, each where `pick` says so.
fn respell(v: &Value, pick: &mut impl FnMut() -> bool) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) if INTEGERS.contains(&k.as_str()) && pick() => {
                            match (s.parse::<i64>(), s.parse::<u64>()) {
                                (Ok(n), _) => Value::from(n),
                                (_, Ok(n)) => Value::from(n),
                                _ => v.clone(),
                            }
                        }
                        _ => respell(v, pick),
                    };
                    let k = if pick() { camel_to_snake(k) } else { k.clone() };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| respell(v, pick)).collect()),
        _ => v.clone(),
    }
}

/// Odd values a client might send in place of any field's value.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!(1.0)),
        Just(serde_json::json!(-0.0)),
        Just(serde_json::json!("-0")),
        Just(serde_json::json!("007")),
        Just(serde_json::json!("+7")),
        Just(serde_json::json!("1e2")),
        Just(serde_json::json!(" 7")),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(i64::MIN)),
        Just(serde_json::json!(true)),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!(["a", 1])),
        Just(serde_json::json!("IN_STORE")),
        Just(serde_json::json!(2)),
        Just(serde_json::json!("2026-03-02T09:00:00Z")),
        Just(serde_json::json!("2026-03-02T09:00:00.1234567891Z")),
        Just(serde_json::json!("2026-03-02T09:00:00+01:00")),
        Just(serde_json::json!("2026-02-30T09:00:00Z")),
        Just(serde_json::json!("0000-01-01T00:00:00Z")),
        Just(serde_json::json!("2026-03-02t09:00:00z")),
        Just(serde_json::json!("")),
    ]
}

/// `v` with the value at one path (chosen by `at`) replaced by `with`.
fn replace_one(v: &mut Value, at: usize, with: &Value) {
    fn walk(v: &mut Value, n: &mut usize, with: &Value) -> bool {
        match v {
            Value::Object(m) => {
                for (_, child) in m.iter_mut() {
                    if *n == 0 {
                        *child = with.clone();
                        return true;
                    }
                    *n -= 1;
                    if walk(child, n, with) {
                        return true;
                    }
                }
                false
            }
            Value::Array(a) => a.iter_mut().any(|child| walk(child, n, with)),
            _ => false,
        }
    }
    let mut n = at;
    walk(v, &mut n, with);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_canonical_form_of_any_event_decodes_the_same_both_ways(e in event()) {
        let json = to_json(&e);
        prop_assert_eq!(slow(&json), Ok(e.clone()));
        let fast = agrees(&json)?;
        // Only enums by number leave the fast path.
        prop_assert_eq!(fast, named_enums(&e), "{}", json);
    }

    #[test]
    fn every_spelling_decodes_the_same_both_ways(e in event(), seed in any::<u64>()) {
        let mut rng = seed;
        let mut pick = move || {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            rng >> 63 == 1
        };
        let v: Value = serde_json::from_str(&to_json(&e)).unwrap();
        let json = respell(&v, &mut pick).to_string();
        let fast = agrees(&json)?;
        prop_assert_eq!(fast, named_enums(&e), "{}", json);
    }

    #[test]
    fn a_mutated_event_is_never_read_otherwise(e in event(), at in 0usize..40, with in odd_value()) {
        let mut v: Value = serde_json::from_str(&to_json(&e)).unwrap();
        replace_one(&mut v, at, &with);
        agrees(&v.to_string())?;
    }

    #[test]
    fn a_key_given_twice_or_in_both_spellings_is_left_to_the_full_decoder(
        e in event(),
        which in 0usize..4,
    ) {
        let json = to_json(&e);
        let doubled = match which {
            0 => json.replacen('{', "{\"storeId\":\"X\",", 1),
            1 => json.replacen('{', "{\"store_id\":\"X\",", 1),
            2 => json.replacen('{', "{\"offline\":false,", 1),
            _ => json.replacen('{', "{\"till_seq\":\"1\",", 1),
        };
        agrees(&doubled)?;
    }
}

#[test]
fn forms_the_fast_path_leaves_to_the_full_decoder() {
    let base = r#"{"eventId":"e","storeId":"S1","tillId":"T1","tillSeq":"3","occurredAt":"2026-03-02T09:00:00Z","sessionId":"s","currency":"EUR","sale":{"lines":[{"sku":"A","quantity":1,"unitPriceMinor":"100"}]}}"#;
    let ok = json_fast::till_event(base.as_bytes()).expect("the common form");
    assert_eq!(Ok(ok), slow(base));
    for odd in [
        // A struct as an array (serde's derived code would read it field by field).
        r#"["e","S1","T1","3"]"#.to_owned(),
        base.replace(
            r#""lines":[{"sku":"A","quantity":1,"unitPriceMinor":"100"}]"#,
            r#""lines":[["A",1,"100","0"]]"#,
        ),
        base.replace(r#""cashierId""#, "x")
            .replace(r#""sessionId":"s""#, r#""sessionId":"s","cashierId":null"#),
        base.replace(r#""tillSeq":"3""#, r#""tillSeq":3.0"#),
        base.replace(r#""tillSeq":"3""#, r#""tillSeq":"03""#),
        base.replace(r#""currency":"EUR""#, r#""currency":"EUR","channel":2"#),
        base.replace(r#""currency":"EUR""#, r#""currency":"EUR","cancel":{}"#),
        base.replace(
            r#""currency":"EUR""#,
            r#""currency":"EUR","sessionCancelled":{}"#,
        ),
        base.replace(
            r#""currency":"EUR""#,
            r#""currency":"EUR","currency":"USD""#,
        ),
        base.replace("2026-03-02T09:00:00Z", "2026-03-02T10:00:00+01:00"),
        base.replace('}', "} "),
    ] {
        let fast = json_fast::till_event(odd.as_bytes());
        if let Some(fast) = fast {
            // Only the trailing white space is a form the fast path reads.
            assert_eq!(Ok(fast), slow(&odd), "{odd}");
            assert!(odd.ends_with(' '), "the fast path read {odd}");
        }
    }
}
