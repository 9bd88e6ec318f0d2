//! Decode and validate one contract-shaped sale (two lines, a coupon, loyalty points redeemed), as protobuf and
//! as proto3 JSON, each as `tillbridge ingest` does it: `decode_till_event`, then `validate`,
//! then `content_hash` (the dedup key's content). The issue's targets: at most 1 µs per protobuf
//! event and 3 µs per JSON event.
//!
//! ```sh
//! cargo bench -p tillbridge-proto --bench decode
//! ```

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use tillbridge_proto::pb;

fn sale() -> pb::TillEvent {
    pb::TillEvent {
        event_id: "0b6c2a1e-3f5d-4c1a-9e2b-7d4f8a9c0e11".into(),
        store_id: "S042".into(),
        till_id: "T3".into(),
        till_seq: 18_211,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_764_000_000,
            nanos: 250_000_000,
        }),
        session_id: "R-042-3-18211".into(),
        currency: "EUR".into(),
        profile_id: Some("P-000913".into()),
        cashier_id: Some("C-17".into()),
        body: Some(pb::till_event::Body::Sale(pb::Sale {
            lines: vec![
                pb::SaleLine {
                    sku: "SKU-10442".into(),
                    quantity: 2,
                    unit_price_minor: 1_299,
                    discount_minor: 0,
                },
                pb::SaleLine {
                    sku: "SKU-77".into(),
                    quantity: 1,
                    unit_price_minor: 499,
                    discount_minor: 50,
                },
            ],
            coupons: vec![pb::CouponRedemption {
                code: "SPRING-5OFF".into(),
                discount_minor: 500,
                campaign_id: None,
            }],
            loyalty: Some(pb::LoyaltyActivity {
                program_id: "STAR".into(),
                points_earned: 25,
                points_redeemed: 200,
            }),
            total_minor: Some(2_547),
        })),
        ..Default::default()
    }
}

fn decode(c: &mut Criterion) {
    let ev = sale();
    let protobuf = ev.encode_to_vec();
    let json = tillbridge_proto::to_json(&ev).into_bytes();
    let mut group = c.benchmark_group("decode_validate_hash");
    group.throughput(Throughput::Elements(1));
    group.bench_function("protobuf", |b| {
        b.iter(|| {
            let raw = tillbridge_proto::decode_till_event(&protobuf, None).unwrap();
            let valid = tillbridge_proto::validate(&raw).unwrap();
            (valid, tillbridge_proto::content_hash(&raw))
        })
    });
    group.bench_function("json", |b| {
        b.iter(|| {
            let raw =
                tillbridge_proto::decode_till_event(&json, Some(b"application/json")).unwrap();
            let valid = tillbridge_proto::validate(&raw).unwrap();
            (valid, tillbridge_proto::content_hash(&raw))
        })
    });
    group.finish();

    // Each step on its own, to show where the time goes.
    let raw = tillbridge_proto::decode_till_event(&protobuf, None).unwrap();
    let mut steps = c.benchmark_group("steps");
    steps.throughput(Throughput::Elements(1));
    steps.bench_function("decode_protobuf", |b| {
        b.iter(|| tillbridge_proto::decode_till_event(&protobuf, None).unwrap())
    });
    steps.bench_function("decode_json", |b| {
        b.iter(|| tillbridge_proto::decode_till_event(&json, Some(b"application/json")).unwrap())
    });
    steps.bench_function("validate", |b| {
        b.iter(|| tillbridge_proto::validate(&raw).unwrap())
    });
    steps.bench_function("content_hash", |b| {
        b.iter(|| tillbridge_proto::content_hash(&raw))
    });
    steps.bench_function("prost_decode_only", |b| {
        b.iter(|| pb::TillEvent::decode(protobuf.as_slice()).unwrap())
    });
    steps.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
