//! The decoder against what outside clients send: both JSON field-name forms, enums by name,
//! 64-bit integers as strings or numbers; and against arbitrary input, where it must always
//! answer with an event or a typed rejection, never a panic.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tillbridge_domain::{Body, RejectReason};
use tillbridge_proto::{decode_till_event, detect_encoding, pb, to_json, validate, Encoding};

const SALE: &str = r#"{"eventId":"0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c11","storeId":"S1","tillId":"T1",
"tillSeq":"12","occurredAt":"2026-11-02T10:15:00Z","channel":"KIOSK","sessionId":"R-1","currency":"EUR",
"sale":{"lines":[{"sku":"A","quantity":2,"unitPriceMinor":"1000"}],"coupons":[{"code":"C","discountMinor":"250"}],
"totalMinor":1750}}"#;

fn reject(json: &str) -> RejectReason {
    match decode_till_event(json.as_bytes(), None).and_then(|e| validate(&e)) {
        Ok(_) => panic!("accepted: {json}"),
        Err(r) => r.reason,
    }
}

/// Found by `fuzz/` (the ingest target): protobuf's error message quotes the key it read, and a
/// crafted key can be a card number, which then reached the dead letter's detail.
#[test]
fn a_protobuf_error_never_quotes_a_card_number() {
    let mut payload = Vec::new();
    prost::encoding::encode_varint(4_111_111_111_111_111, &mut payload);
    let r = decode_till_event(&payload, None).unwrap_err();
    assert_eq!(r.reason, RejectReason::DecodeError);
    assert!(r.detail.contains("invalid key value"), "{}", r.detail);
    assert!(
        !tillbridge_domain::pan::contains(&r.detail),
        "a PAN in {}",
        r.detail
    );
}

#[test]
fn camel_case_json_with_string_integers_decodes() {
    let raw = decode_till_event(SALE.as_bytes(), None).unwrap();
    let ev = validate(&raw).unwrap();
    assert_eq!(ev.till_seq, 12);
    let Body::Sale(s) = ev.body else {
        panic!("not a sale")
    };
    assert_eq!(s.total_minor, 1750);
    assert_eq!(s.coupons[0].discount_minor, 250);
}

#[test]
fn snake_case_and_numbers_decode_the_same() {
    let snake = SALE
        .replace("eventId", "event_id")
        .replace("storeId", "store_id")
        .replace("tillId", "till_id")
        .replace("\"tillSeq\":\"12\"", "\"till_seq\":12")
        .replace("occurredAt", "occurred_at")
        .replace("sessionId", "session_id")
        .replace("unitPriceMinor", "unit_price_minor")
        .replace("discountMinor", "discount_minor")
        .replace("totalMinor", "total_minor");
    let a = decode_till_event(SALE.as_bytes(), None).unwrap();
    let b = decode_till_event(snake.as_bytes(), None).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        tillbridge_proto::content_hash(&a),
        tillbridge_proto::content_hash(&b)
    );
}

#[test]
fn json_round_trips_through_the_proto3_mapping() {
    let raw = decode_till_event(SALE.as_bytes(), None).unwrap();
    let json = to_json(&raw);
    assert!(json.contains("\"eventId\""), "{json}");
    assert_eq!(decode_till_event(json.as_bytes(), None).unwrap(), raw);
    let bin = prost::Message::encode_to_vec(&raw);
    assert_eq!(detect_encoding(&bin, None), Encoding::Protobuf);
    assert_eq!(decode_till_event(&bin, None).unwrap(), raw);
    assert_eq!(detect_encoding(b"  {", None), Encoding::Json);
    assert_eq!(
        detect_encoding(b"x", Some(b"application/json; charset=utf-8")),
        Encoding::Json
    );
}

#[test]
fn unknown_json_fields_are_rejected_with_their_name() {
    let extra = SALE.replacen('{', r#"{"posVendorExtension":{"a":1},"#, 1);
    let r = decode_till_event(extra.as_bytes(), None).unwrap_err();
    assert_eq!(r.reason, RejectReason::DecodeError);
    assert!(r.detail.contains("posVendorExtension"), "{}", r.detail);
}

#[test]
fn every_contract_rule_has_its_reason() {
    assert_eq!(reject("{\"eventId\":"), RejectReason::DecodeError);
    assert_eq!(
        reject(&SALE.replace("\"storeId\":\"S1\",", "")),
        RejectReason::MissingField
    );
    assert_eq!(
        reject(&SALE.replace("\"S1\"", "\"S 1\"")),
        RejectReason::InvalidField
    );
    assert_eq!(
        reject(&SALE.replace("0b6f2a59-3f8e", "not-a-uuid")),
        RejectReason::InvalidField
    );
    assert_eq!(
        reject(&SALE.replace("\"tillSeq\":\"12\",", "")),
        RejectReason::MissingField
    );
    assert_eq!(
        reject(&SALE.replace("\"quantity\":2", "\"quantity\":0")),
        RejectReason::InvalidField
    );
    assert_eq!(
        reject(&SALE.replace("\"sessionId\":\"R-1\",", "")),
        RejectReason::MissingField
    );
    assert_eq!(
        reject(&SALE.replace("\"currency\":\"EUR\",", "")),
        RejectReason::MissingField
    );
    assert_eq!(
        reject(&SALE.replace("\"EUR\"", "\"euro\"")),
        RejectReason::InvalidField
    );
    assert_eq!(
        reject(&SALE.replace("1750", "1751")),
        RejectReason::InconsistentTotal
    );
    assert_eq!(
        reject(&SALE.replace("\"channel\":\"KIOSK\"", "\"channel\":\"FAX\"")),
        RejectReason::DecodeError
    );
    assert_eq!(
        reject(&SALE.replace("\"sku\":\"A\"", "\"sku\":\"5500-0000-0000-0004\"")),
        RejectReason::CardData
    );
    let r = decode_till_event(
        SALE.replace("\"sku\":\"A\"", "\"sku\":\"5500 0000 0000 0004\"")
            .as_bytes(),
        None,
    )
    .and_then(|e| validate(&e))
    .unwrap_err();
    assert!(r.detail.contains("sale.lines[0].sku"), "{}", r.detail);
    assert!(!r.detail.contains("5500"), "{}", r.detail);
    let no_body = r#"{"eventId":"0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c11","storeId":"S1","tillId":"T1","tillSeq":1,"occurredAt":"2026-11-02T10:15:00Z"}"#;
    assert_eq!(reject(no_body), RejectReason::MissingField);
}

#[test]
fn a_missing_total_is_computed() {
    let raw =
        decode_till_event(SALE.replace(",\n\"totalMinor\":1750", "").as_bytes(), None).unwrap();
    let Body::Sale(s) = validate(&raw).unwrap().body else {
        panic!()
    };
    assert_eq!(s.total_minor, 1750);
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-zA-Z0-9 _:.-]{0,20}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let keys = prop_oneof![
            Just("eventId".to_owned()),
            Just("storeId".to_owned()),
            Just("tillSeq".to_owned()),
            Just("occurredAt".to_owned()),
            Just("sale".to_owned()),
            Just("lines".to_owned()),
            Just("quantity".to_owned()),
            Just("return".to_owned()),
            Just("totalMinor".to_owned()),
            "[a-z]{1,8}".prop_map(|s| s),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_till_event(&bytes, None).map(|e| validate(&e));
        let _ = decode_till_event(&bytes, Some(b"application/json")).map(|e| validate(&e));
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let text = v.to_string();
        match decode_till_event(text.as_bytes(), None).and_then(|e| validate(&e)) {
            Ok(_) => {}
            Err(r) => prop_assert!(!r.detail.is_empty()),
        }
    }

    #[test]
    fn mutated_valid_protobuf_never_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let raw = decode_till_event(SALE.as_bytes(), None).unwrap();
        let mut bin = prost::Message::encode_to_vec(&raw);
        for (i, b) in flips {
            let at = i.index(bin.len());
            bin[at] = b;
        }
        let _ = decode_till_event(&bin, None).map(|e| validate(&e));
        let _ = pb::TillEvent::default();
    }
}

/// The JSON examples in docs/CONTRACT.md are what integrators paste: they must stay valid.
#[test]
fn contract_doc_examples_are_valid() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/CONTRACT.md"
    ))
    .unwrap();
    let mut found = 0;
    for block in doc.split("```json").skip(1) {
        let json = block.split("```").next().unwrap();
        found += 1;
        // A store row (the store table's topic) is the only other JSON the contract shows.
        if json.contains("\"storeId\"") && !json.contains("\"eventId\"") {
            let store: pb::Store = tillbridge_proto::decode_message(json.as_bytes(), None)
                .unwrap_or_else(|r| panic!("{r}: {json}"));
            assert!(!store.store_id.is_empty());
            continue;
        }
        let raw =
            decode_till_event(json.as_bytes(), None).unwrap_or_else(|r| panic!("{r}: {json}"));
        validate(&raw).unwrap_or_else(|r| panic!("{r}: {json}"));
    }
    assert!(found >= 2);
}

/// Whether the digits of `s` pass the Luhn check.
fn luhn(s: &str) -> bool {
    let sum: u32 = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            match (i % 2, d * 2) {
                (1, x) if x > 9 => x - 9,
                (1, x) => x,
                _ => d,
            }
        })
        .sum();
    sum % 10 == 0
}

#[test]
fn numeric_session_ids_are_not_card_data_but_a_pan_beside_them_is() {
    // Store, till, epoch milliseconds and a counter: a 19-digit run with a dash inside that
    // passes Luhn (dead-lettered as CARD_DATA before).
    let id = (0..100)
        .map(|c| format!("S012-TA-1764320000123-{c:06}"))
        .find(|id| luhn(&id[8..]))
        .unwrap();
    let sale = SALE.replace("\"sessionId\":\"R-1\"", &format!("\"sessionId\":\"{id}\""));
    let raw = decode_till_event(sale.as_bytes(), None).unwrap();
    assert_eq!(
        validate(&raw).unwrap().session_id.as_deref(),
        Some(id.as_str())
    );
    // A card number written next to a receipt number is still found.
    assert_eq!(
        reject(&SALE.replace(
            "\"sku\":\"A\"",
            "\"sku\":\"Receipt 123 4111 1111 1111 1111\""
        )),
        RejectReason::CardData
    );
}

#[test]
fn amounts_are_bounded_totals_never_negative_and_never_echoed() {
    let huge = SALE.replace(
        "\"discountMinor\":\"250\"",
        "\"discountMinor\":\"4611686018427387904\"",
    );
    assert_eq!(
        reject(&huge),
        RejectReason::InvalidField,
        "2^62 is no amount"
    );
    let negative = SALE
        .replace("\"discountMinor\":\"250\"", "\"discountMinor\":\"5000\"")
        .replace("\"totalMinor\":1750", "\"totalMinor\":-3000");
    assert_eq!(reject(&negative), RejectReason::InvalidField);
    // A card number in a string-encoded total is refused without being echoed.
    let pan_total = SALE.replace("\"totalMinor\":1750", "\"totalMinor\":\"4111111111111111\"");
    let r = decode_till_event(pan_total.as_bytes(), None)
        .and_then(|e| validate(&e))
        .unwrap_err();
    assert!(!r.detail.contains("4111"), "{}", r.detail);
    assert!(!tillbridge_domain::pan::contains(&r.detail));
}

#[test]
fn a_field_given_twice_is_refused_whatever_its_spelling() {
    // The same key twice: a reader keeping the first value and one keeping the last would see
    // two different events.
    let twice = SALE.replace(r#""sku":"A","#, r#""sku":"4111 1111 1111 1111","sku":"A","#);
    let r = decode_till_event(twice.as_bytes(), None).unwrap_err();
    assert_eq!(r.reason, RejectReason::DecodeError);
    assert!(r.detail.contains("duplicate key \"sku\""), "{}", r.detail);
    assert!(!tillbridge_domain::pan::contains(&r.detail), "{}", r.detail);
    // Both proto3 JSON spellings of one field.
    let both = SALE.replace(r#""storeId":"S1","#, r#""storeId":"S1","store_id":"S2","#);
    assert_eq!(
        reject(&both),
        RejectReason::DecodeError,
        "storeId and store_id"
    );
}
