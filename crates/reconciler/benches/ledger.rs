//! Coupon- and loyalty-ledger updates through the reconciler's stage interface, as the stage loop
//! drives them: one batch of facts processed (decoded, applied to their ledgers, every touched
//! ledger judged, compensations built), then committed (one atomic sled batch, flushed). Each
//! iteration starts from a fresh state, so every batch is judged against the same ledgers.
//!
//! - `coupon`: 1,000 REDEEMED facts over 100 codes whose definitions allow 8 redemptions each, so
//!   each code ends 2 over its limit (compensations built and emitted);
//! - `loyalty`: 1,000 loyalty facts (EARNED and REDEEMED_POINTS) over 100 profiles with a
//!   balance snapshot each.
//!
//! The issue's target: at least 1,000,000 ledger updates per second on one core. Criterion
//! prints elements/s (`thrpt`).
//!
//! ```sh
//! cargo bench -p tillbridge-reconciler --bench ledger
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{at, balance, block_on, cfg, coupon, loyalty, redeem, KEY};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::log::Record;
use tillbridge_core::stage::Processor;
use tillbridge_proto::pb;
use tillbridge_reconciler::Reconciler;

const FACTS: usize = 1_000;
const KEYS: usize = 100;

fn record(topic: &str, offset: usize, key: &str, payload: Vec<u8>, ms: i64) -> Record {
    Record {
        topic: topic.to_owned(),
        partition: 0,
        offset: offset as i64,
        key: Some(key.as_bytes().to_vec()),
        payload: Some(payload),
        headers: vec![],
        timestamp_ms: Some(ms),
    }
}

fn ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1000
}

/// The catalog (or balances) batch and the facts batch.
fn coupon_batches(t: &Topics) -> (Vec<Record>, Vec<Record>) {
    let defs = (0..KEYS)
        .map(|k| {
            let code = format!("CODE-{k}");
            record(
                &t.coupons,
                k,
                &code,
                coupon(&code, 8, 0).encode_to_vec(),
                ms(&at(0)),
            )
        })
        .collect();
    let facts = (0..FACTS)
        .map(|n| {
            let code = format!("CODE-{}", n % KEYS);
            let f = redeem(n as u32, &code, &format!("S{}", n % 7), 1 + n as i64, 500);
            let ts = ms(f.occurred_at.as_ref().unwrap());
            record(&t.redemptions, n, &code, f.encode_to_vec(), ts)
        })
        .collect();
    (defs, facts)
}

fn loyalty_batches(t: &Topics) -> (Vec<Record>, Vec<Record>) {
    let balances = (0..KEYS)
        .map(|k| {
            let p = format!("P-{k}");
            record(
                &t.loyalty_balances,
                k,
                &p,
                balance(&p, 5_000, 0).encode_to_vec(),
                ms(&at(0)),
            )
        })
        .collect();
    let facts = (0..FACTS)
        .map(|n| {
            let p = format!("P-{}", n % KEYS);
            let kind = if n % 2 == 0 {
                pb::LoyaltyFactKind::Earned
            } else {
                pb::LoyaltyFactKind::RedeemedPoints
            };
            let f = loyalty(n as u32, &p, kind, n as u32, 1 + n as i64, 300);
            let ts = ms(f.occurred_at.as_ref().unwrap());
            record(&t.loyalty, n, &p, f.encode_to_vec(), ts)
        })
        .collect();
    (balances, facts)
}

/// A fresh reconciler that has read `tables` (definitions or balances).
fn fresh(t: &Topics, tables: &[Record]) -> (tempfile::TempDir, Reconciler) {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Reconciler::open(&dir.path().join("state"), t, &cfg(), KEY).unwrap();
    rec.process(tables).unwrap();
    block_on(rec.commit()).unwrap();
    (dir, rec)
}

fn bench(c: &mut Criterion) {
    let t = Topics::default();
    for (name, (tables, facts)) in [
        ("coupon", coupon_batches(&t)),
        ("loyalty", loyalty_batches(&t)),
    ] {
        let mut g = c.benchmark_group(format!("ledger/{name}"));
        g.throughput(Throughput::Elements(FACTS as u64));
        g.sample_size(20);
        g.bench_function("process", |b| {
            b.iter_batched(
                || fresh(&t, &tables),
                |(_dir, mut rec)| rec.process(&facts).unwrap(),
                BatchSize::PerIteration,
            )
        });
        g.bench_function("process_and_commit", |b| {
            b.iter_batched(
                || fresh(&t, &tables),
                |(_dir, mut rec)| {
                    let out = rec.process(&facts).unwrap();
                    block_on(rec.commit()).unwrap();
                    out
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
