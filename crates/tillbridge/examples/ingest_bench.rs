//! Ingest throughput on the embedded log, side by side with a baseline that only decodes and
//! validates the same records (no dedup, no state, no log): the ratio is the cost of the
//! delivery guarantee. Prints figures; asserts nothing.
//!
//!     cargo run --release --example ingest_bench -- [events]

use std::time::Instant;

use prost::Message;
use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tillbridge_core::log::OutRecord;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

fn events(n: usize) -> Vec<OutRecord> {
    let t0 = chrono::Utc::now().timestamp() - 86_400;
    (0..n)
        .map(|i| {
            let ev = pb::TillEvent {
                event_id: uuid::Uuid::from_u128(i as u128 + 1).to_string(),
                store_id: format!("S{:03}", i % 50),
                till_id: format!("T{}", i % 4),
                till_seq: (i / 200 + 1) as u64,
                occurred_at: Some(prost_types::Timestamp {
                    seconds: t0 + (i as i64 / 10),
                    nanos: 0,
                }),
                session_id: format!("R-{i}"),
                currency: "EUR".into(),
                body: Some(pb::till_event::Body::Sale(pb::Sale {
                    lines: vec![pb::SaleLine {
                        sku: "SKU-1".into(),
                        quantity: 2,
                        unit_price_minor: 1299,
                        discount_minor: 0,
                    }],
                    coupons: vec![pb::CouponRedemption {
                        code: format!("C{}", i % 997),
                        discount_minor: 100,
                        campaign_id: None,
                    }],
                    loyalty: None,
                    total_minor: Some(2498),
                })),
                ..Default::default()
            };
            let (payload, json) = if i % 2 == 0 {
                (tillbridge_proto::to_json(&ev).into_bytes(), true)
            } else {
                (ev.encode_to_vec(), false)
            };
            let mut r =
                OutRecord::new("till.events", format!("S{:03}/T{}", i % 50, i % 4), payload);
            if json {
                r = r.with_header("content-type", "application/json");
            }
            r
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let records = events(n);

    let start = Instant::now();
    let mut ok = 0usize;
    for r in &records {
        let payload = r.payload.as_deref().unwrap_or_default();
        if let Ok(raw) = tillbridge_proto::decode_till_event(payload, None) {
            ok += usize::from(tillbridge_proto::validate(&raw).is_ok());
        }
    }
    let baseline = start.elapsed();
    assert_eq!(ok, n);

    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.embedded.path = dir.path().join("log");
    config.state.dir = dir.path().join("state");
    let transport = Transport::from_config(&config)?;
    if let Transport::Embedded(log) = &transport {
        log.append(records).await?;
    }
    let start = Instant::now();
    let stages = Stages {
        ingest: true,
        ..Default::default()
    };
    tillbridge::run(&config, &transport, stages, true, CancellationToken::new()).await?;
    let ingest = start.elapsed();

    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!("events:                         {n}");
    println!(
        "baseline (decode + validate):   {:>10.0} events/s",
        rate(baseline)
    );
    println!("ingest on the embedded log:     {:>10.0} events/s (dedup, routing, durable outputs and state)", rate(ingest));
    println!(
        "ratio ingest / baseline:        {:>10.3}",
        baseline.as_secs_f64() / ingest.as_secs_f64()
    );
    Ok(())
}
