//! fraud-guard's cost per till event through its stage interface, as the stage loop drives it:
//! one batch of 1,000 events as outside clients publish them (proto3 JSON) processed (decoded,
//! validated, deduplicated by id, judged by every rule), then committed (one sled batch,
//! flushed). Each iteration starts from a fresh state.
//!
//! The events: sales at 20 stores with 3 tills each, one a minute per till, a coupon on 1 in 10
//! (10 codes) and a price override on 1 in 20, the tills offline half the time.
//! Criterion prints events/s (`thrpt`).
//!
//! ```sh
//! cargo bench -p tillbridge-fraud-guard --bench guard
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{offline, sale, Harness, MIN, T0};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tillbridge_core::log::Record;
use tillbridge_core::stage::Processor;

const EVENTS: usize = 1_000;

fn events() -> Vec<Record> {
    let mut h = Harness::new();
    (0..EVENTS)
        .map(|n| {
            let (store, till) = (format!("S{:02}", n % 20), format!("T{}", (n / 20) % 3));
            let at = T0 + (n as i64 / 60) * MIN;
            let code = format!("CODE-{}", n % 10);
            let coupons: &[(&str, i64)] = if n % 10 == 0 { &[(&code, 500)] } else { &[] };
            let mut e = sale(&store, &till, at, coupons);
            if n % 20 == 5 {
                if let Some(tillbridge_proto::pb::till_event::Body::Sale(s)) = &mut e.body {
                    s.lines[0].discount_minor = 40_000;
                }
            }
            if n % 2 == 0 {
                e = offline(e);
            }
            h.record(e, None)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let records = events();
    let mut g = c.benchmark_group("fraud_guard");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(20);
    g.bench_function("process", |b| {
        b.iter_batched(
            Harness::new,
            |mut h| h.fg.process(&records).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("process_and_commit", |b| {
        b.iter_batched(
            Harness::new,
            |mut h| {
                let out = h.fg.process(&records).unwrap();
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(h.fg.commit())
                    .unwrap();
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
