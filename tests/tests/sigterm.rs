//! SIGTERM, what supervisors and Kubernetes send, drains like Ctrl-C: `tillbridge run` stops
//! within the drain timeout with exit code 0 and its summary, having finished the batches in hand;
//! a later run ends with the same answers as a run that was never stopped.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kit::same_answers::{backlog, config, finish_and_compare, in_sync_order, records};

/// The value of `tillbridge_records_consumed_total` for `stage` on the metrics endpoint.
fn consumed(addr: &str, stage: &str) -> u64 {
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    let series = format!("tillbridge_records_consumed_total{{stage=\"{stage}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_later_run_gives_the_same_answers() {
    let reference = backlog(2000, false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 5);
    {
        let log = tillbridge_core::log::EmbeddedLog::open(&config.embedded.path, 4).unwrap();
        log.append(in_sync_order(records(&config))).await.unwrap();
    }
    let mut child = kit::process::with_config(&config)
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env("TILLBRIDGE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The metrics address from the log, then the log drained in a thread (a full pipe would
    // block the process).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no metrics address logged"
        );
        if let Some(rest) = line.split("bound=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    let start = Instant::now();
    while consumed(&addr, "ingest") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ingest never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kit::process::send_sigterm(&child);
    let signalled = Instant::now();
    let status = child.wait().unwrap();
    let drain = signalled.elapsed();
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "SIGTERM ended the run with {status}; log:\n{log}"
    );
    assert!(
        drain < tillbridge::signals::DRAIN_TIMEOUT,
        "the drain took {drain:?}"
    );
    assert!(log.contains("SIGTERM"), "the drain is not logged:\n{log}");
    let mut summary = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(summary.contains("ingest:"), "no summary: {summary:?}");
    println!(
        "drained in {drain:?}: {}",
        summary.trim().replace('\n', "; ")
    );
    finish_and_compare(&config, dir.path(), &reference, "after SIGTERM");
}
