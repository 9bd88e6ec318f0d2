//! The metrics endpoint answers a scrape with the counters the docs list.

#![allow(clippy::unwrap_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_run_shows_the_ingest_counters() {
    let shutdown = CancellationToken::new();
    let addr = tillbridge::serve_metrics("127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = tillbridge::demo::run(2, out.path(), CancellationToken::new())
        .await
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    shutdown.cancel();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for name in [
        "tillbridge_records_consumed_total{stage=\"ingest\"}",
        "tillbridge_events_accepted_total{body=\"sale\"}",
        "tillbridge_duplicates_dropped_total",
        "tillbridge_dead_letters_total{reason=\"CARD_DATA\"}",
        "tillbridge_dedup_index_entries",
        "tillbridge_till_sequence_gaps{till=\"S06/T3\"}",
        "tillbridge_records_produced_total{stage=\"reconciler\",topic=\"tillbridge.compensations\"}",
        "tillbridge_consumer_lag{group=\"ingest\"",
    ] {
        assert!(text.contains(name), "{name} missing from the scrape");
    }
    // The counters move with the work (other tests in this process may add to them).
    let line = text
        .lines()
        .find(|l| l.starts_with("tillbridge_dead_letters_total{reason=\"OVERSIZED\"}"))
        .unwrap();
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= summary.dead_lettered["OVERSIZED"]);
}
