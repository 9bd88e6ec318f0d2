//! The metrics endpoint answers a scrape with the counters the docs list, 404 and 405 elsewhere,
//! and serves a scrape while other connections sit idle.

#![allow(clippy::unwrap_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_run_shows_the_ingest_counters() {
    let shutdown = CancellationToken::new();
    let addr = tillbridge::serve_metrics("127.0.0.1:0".parse().unwrap(), None, shutdown.clone())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = tillbridge::demo::run(2, out.path(), CancellationToken::new())
        .await
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
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
        "tillbridge_till_sequence_gaps ",
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

async fn request(addr: std::net::SocketAddr, head: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test]
async fn other_paths_and_methods_are_refused_and_idle_connections_do_not_block_a_scrape() {
    let shutdown = CancellationToken::new();
    let addr = tillbridge::serve_metrics("127.0.0.1:0".parse().unwrap(), None, shutdown.clone())
        .await
        .unwrap();
    let close = "host: x\r\nconnection: close\r\n\r\n";
    let text = request(addr, &format!("GET /admin HTTP/1.1\r\n{close}")).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    let text = request(
        addr,
        &format!("POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n{close}"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    // Ten clients connect and send nothing; a scrape is still answered at once.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let head = format!("GET /metrics HTTP/1.1\r\n{close}");
    let scrape = request(addr, &head);
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), scrape)
        .await
        .expect("a scrape waits behind idle connections");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    shutdown.cancel();
}
