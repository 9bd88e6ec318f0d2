//! Card numbers planted in every field a till can fill, in plain, grouped, JSON-escaped and
//! shadowed (duplicate key) forms, and in a record key, never reach anything tillbridge writes:
//! a topic, a dead letter, a log line at debug level, the state on disk or a report.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use tillbridge_core::log::{EmbeddedLog, OutRecord};

const PAN: &str = "4111 1111 1111 1111";

/// A sale as an outside client writes it; `field` and `value` replace one field's JSON.
fn sale(n: u32, replace: Option<(&str, &str)>) -> String {
    let json = kit::events::Sale::new(
        format!("0b6f2a59-3f8e-4f54-8a57-7b2f0f7c{n:04x}"),
        "S1",
        "T1",
        n.into(),
    )
    .cashier("C-1")
    .coupon("SPRING-25", 100)
    .json();
    match replace {
        Some((from, to)) => {
            assert!(json.contains(from), "{from}");
            json.replace(from, to)
        }
        None => json,
    }
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Whether `bytes` hold a card number, plain or JSON-escaped.
fn holds_card(bytes: &[u8]) -> bool {
    tillbridge_core::pan::redact(bytes) != bytes
}

fn tillbridge(dir: &Path, args: &[&str]) -> (String, String) {
    let (ok, stdout, stderr) = kit::process::output(
        kit::process::tillbridge()
            .args(args)
            .env("TILLBRIDGE_EMBEDDED__PATH", dir.join("log"))
            .env("TILLBRIDGE_STATE__DIR", dir.join("state"))
            .env("TILLBRIDGE_LOG", "debug"),
    );
    assert!(ok, "{args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn a_card_number_reaches_no_topic_log_state_or_report() {
    let dir = tempfile::tempdir().unwrap();
    let escaped = r"\u0034\u0031\u0031\u0031 1111 1111 1111";
    let planted: Vec<(String, String)> = vec![
        (
            "sku".into(),
            sale(1, Some((r#""sku":"A""#, &format!(r#""sku":"{PAN}""#)))),
        ),
        (
            "cashier".into(),
            sale(
                2,
                Some((r#""cashierId":"C-1""#, &format!(r#""cashierId":"{PAN}""#))),
            ),
        ),
        (
            "session".into(),
            sale(
                3,
                Some((r#""sessionId":"R-3""#, &format!(r#""sessionId":"R-{PAN}""#))),
            ),
        ),
        (
            "store".into(),
            sale(
                4,
                Some((r#""storeId":"S1""#, &format!(r#""storeId":"{PAN}""#))),
            ),
        ),
        (
            "coupon".into(),
            sale(
                5,
                Some((r#""code":"SPRING-25""#, &format!(r#""code":"{PAN}""#))),
            ),
        ),
        (
            "escaped".into(),
            sale(6, Some((r#""sku":"A""#, &format!(r#""sku":"{escaped}""#)))),
        ),
        (
            "shadowed".into(),
            sale(
                7,
                Some((r#""sku":"A""#, &format!(r#""sku":"{PAN}","sku":"A""#))),
            ),
        ),
        (
            "amount".into(),
            sale(
                8,
                Some((
                    r#""unitPriceMinor":"1000""#,
                    r#""unitPriceMinor":"4111111111111111""#,
                )),
            ),
        ),
        (
            "tab-grouped".into(),
            sale(
                9,
                Some((r#""sku":"A""#, r#""sku":"4111\t1111\t1111\t1111""#)),
            ),
        ),
        (
            "full-width".into(),
            sale(
                10,
                Some((
                    r#""sku":"A""#,
                    r#""sku":"４１１１１１１１１１１１１１１１""#,
                )),
            ),
        ),
    ];
    let mut records: Vec<OutRecord> = planted
        .iter()
        .map(|(_, json)| {
            OutRecord::new("till.events", "S1/T1", json.clone().into_bytes())
                .with_header("content-type", "application/json")
                .with_timestamp(Some(1_793_614_600_000))
        })
        .collect();
    // A good event whose record key holds a card number, and good events around them.
    records.push(
        OutRecord::new(
            "till.events",
            format!("S1/{PAN}"),
            sale(11, None).into_bytes(),
        )
        .with_header("content-type", "application/json")
        .with_timestamp(Some(1_793_614_600_000)),
    );
    for n in 12..20 {
        records.push(
            OutRecord::new("till.events", "S1/T1", sale(n, None).into_bytes())
                .with_header("content-type", "application/json")
                .with_timestamp(Some(1_793_614_600_000)),
        );
    }
    {
        let log = EmbeddedLog::open(&dir.path().join("log"), 4).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(log.append(records))
            .unwrap();
    }
    let (_, run_log) = tillbridge(dir.path(), &["run", "--until-idle"]);
    let report_dir = dir.path().join("report");
    let (_, report_log) = tillbridge(
        dir.path(),
        &["report", "--out", report_dir.to_str().unwrap()],
    );
    // Every planted event was dead-lettered; the good ones went through.
    let log = EmbeddedLog::open(&dir.path().join("log"), 4).unwrap();
    let dlq = log.read_all("tillbridge.dlq").unwrap();
    assert!(dlq.len() >= planted.len(), "{} dead letters", dlq.len());
    assert!(!log.read_all("promo.sessions").unwrap().is_empty());
    // Nothing anywhere holds a card number.
    // Every topic tillbridge writes (`till.events` is the clients' own input).
    let topics = tillbridge_core::config::Topics::default();
    for topic in topics
        .all()
        .into_iter()
        .filter(|t| *t != topics.till_events)
    {
        for r in log.read_all(topic).unwrap() {
            for bytes in [r.key.unwrap_or_default(), r.payload.unwrap_or_default()] {
                assert!(
                    !holds_card(&bytes),
                    "{topic}/{}/{}: {}",
                    r.partition,
                    r.offset,
                    String::from_utf8_lossy(&bytes)
                );
            }
            for (k, v) in r.headers {
                assert!(!holds_card(&v), "{topic} header {k}");
            }
        }
    }
    drop(log);
    for line in run_log.lines().chain(report_log.lines()) {
        assert!(!holds_card(line.as_bytes()), "a log line: {line}");
    }
    let mut all = Vec::new();
    files(&dir.path().join("state"), &mut all);
    files(&report_dir, &mut all);
    assert!(all.len() > 5, "{all:?}");
    for f in all {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!holds_card(&bytes), "{} holds a card number", f.display());
    }
}
