//! `tillbridge tail` and `tillbridge dlq replay` as an operator uses them: dead letters read back
//! decoded and masked, fixed (by editing their payloads, or by fixing the cause and replaying
//! them as they are) and replayed into the pipeline, a second replay adding nothing; bad records
//! and bad input lines reported, never a panic; on Kafka, the alerts and compensations the real
//! stages wrote, decoded, and `--follow` until SIGTERM.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kit::events::Sale;
use tillbridge_core::config::Config;
use tillbridge_core::log::{EmbeddedLog, OutRecord};

const GOOD: &str = "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c01";
const ZERO_QUANTITY: &str = "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c02";
const CARD_IN_CASHIER: &str = "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c03";
const AHEAD: &str = "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c04";
const CARD: &str = "4111 1111 1111 1111";

/// 2026-11-02T10:16:00Z: a minute after the events' `occurred_at` ([`kit::events::DAY`]).
const SENT_MS: i64 = 1_793_614_560_000;

fn embedded_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.embedded.path = dir.join("log");
    config.state.dir = dir.join("state");
    config
}

/// Runs `tillbridge --config … args`; returns (success, stdout, stderr).
fn tb(config: &Config, args: &[&str]) -> (bool, String, String) {
    kit::process::output(kit::process::with_config(config).args(args))
}

/// As [`tb`], and panics unless it succeeds.
fn ok(config: &Config, args: &[&str]) -> String {
    let (success, stdout, stderr) = tb(config, args);
    assert!(success, "tillbridge {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The event ids on the sessions topic, one per record.
fn session_ids(config: &Config) -> Vec<String> {
    json_lines(&ok(config, &["tail", "sessions", "--format", "json"]))
        .iter()
        .map(|v| v["event"]["eventId"].as_str().unwrap().to_owned())
        .collect()
}

fn json_record(topic: &str, key: &str, payload: String, ts: i64) -> OutRecord {
    OutRecord::new(topic, key, payload.into_bytes())
        .with_header("content-type", "application/json")
        .with_timestamp(Some(ts))
}

/// Whether `text` holds the planted card number's digits in any grouping.
fn has_card(text: &str) -> bool {
    text.contains(CARD)
        || text.contains(&CARD.replace(' ', ""))
        || tillbridge_core::pan::contains(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_read_back_masked_fixed_and_replayed_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let t = config.topics.clone();
    {
        // Appended through the library: `publish` would refuse the bad ones.
        let log = EmbeddedLog::open(&config.embedded.path, config.embedded.partitions).unwrap();
        let sale = |id: &str, seq: u64| Sale::new(id, "S1", "T1", seq).session(format!("R-{seq}"));
        let ahead = sale(AHEAD, 4).at_ms(SENT_MS + 2 * 3_600_000);
        log.append(vec![
            json_record(&t.till_events, "S1/T1", sale(GOOD, 1).json(), SENT_MS),
            json_record(
                &t.till_events,
                "S1/T1",
                sale(ZERO_QUANTITY, 2).line("A", 0, 1000).json(),
                SENT_MS + 1,
            ),
            json_record(
                &t.till_events,
                "S1/T1",
                sale(CARD_IN_CASHIER, 3).cashier(CARD).json(),
                SENT_MS + 2,
            ),
            json_record(&t.till_events, "S1/T1", ahead.json(), SENT_MS + 3),
            // Neither JSON nor a TillEvent.
            OutRecord::new(&t.till_events, "S1/T1", vec![0xff, 0x01, 0x02])
                .with_timestamp(Some(SENT_MS + 4)),
        ])
        .await
        .unwrap();
    }
    ok(&config, &["run", "--until-idle"]);
    assert_eq!(session_ids(&config), vec![GOOD]);

    // Text: one line per dead letter, its reason and source, never the card number.
    let text = ok(&config, &["tail", "dlq"]);
    assert_eq!(text.lines().count(), 4, "{text}");
    for reason in ["INVALID_FIELD", "CARD_DATA", "CLOCK_SKEW", "DECODE_ERROR"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("dlq p") && l.contains(&format!(" {reason} "))),
            "{reason} missing:\n{text}"
        );
    }
    assert!(text.contains(&format!("{}/", t.till_events)), "{text}");
    assert!(text.contains(&format!("event={ZERO_QUANTITY}")), "{text}");
    assert!(!has_card(&text), "a card number printed:\n{text}");
    let last_two = ok(&config, &["tail", "dlq", "--limit", "2"]);
    assert_eq!(last_two.lines().count(), 2, "{last_two}");
    assert!(last_two.contains("CLOCK_SKEW") && last_two.contains("DECODE_ERROR"));

    // JSON: what replay --file reads.
    let json = ok(&config, &["tail", "dlq", "--format", "json"]);
    assert!(!has_card(&json), "a card number printed:\n{json}");
    let letters = json_lines(&json);
    let by_reason = |r: &str| {
        letters
            .iter()
            .find(|l| l["reason"] == r)
            .unwrap_or_else(|| panic!("no {r} letter"))
            .clone()
    };
    let decode_error = by_reason("DECODE_ERROR");
    assert!(
        decode_error["original_base64"].is_string(),
        "{decode_error}"
    );
    assert_eq!(decode_error["record"], "dead_letter");

    // Nothing is published by a dry run or by a filter that matches nothing.
    let events_before = ok(&config, &["tail", "events"]).lines().count();
    let dry = ok(&config, &["dlq", "replay", "--dry-run"]);
    assert!(dry.contains("would replay 3"), "{dry}");
    assert!(dry.contains("CARD_DATA: 1"), "{dry}");
    let none = ok(&config, &["dlq", "replay", "--reason", "OVERSIZED"]);
    assert!(none.contains("replayed 0"), "{none}");
    assert!(none.contains("left out by --reason 4"), "{none}");
    let file = dir.path().join("letters.jsonl");
    std::fs::write(&file, &json).unwrap();
    let unedited = ok(
        &config,
        &[
            "dlq",
            "replay",
            "--dry-run",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(unedited.contains("skipped 1 (CARD_DATA: 1)"), "{unedited}");
    assert_eq!(
        ok(&config, &["tail", "events"]).lines().count(),
        events_before
    );

    // The operator fixes two payloads and replays them.
    let mut quantity = by_reason("INVALID_FIELD");
    let fixed = quantity["original"]
        .as_str()
        .unwrap()
        .replace("\"quantity\":0", "\"quantity\":1");
    quantity["original"] = fixed.into();
    let mut card = by_reason("CARD_DATA");
    let original = card["original"].as_str().unwrap().to_owned();
    assert!(original.contains("**** **** **** ****"), "{original}");
    card["original"] = original.replace("**** **** **** ****", "C-1").into();
    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, format!("{quantity}\n{card}\n")).unwrap();
    let edited = edited.to_str().unwrap();
    let replayed = ok(&config, &["dlq", "replay", "--file", edited]);
    assert!(replayed.contains("replayed 2"), "{replayed}");
    // The cause of the clock skew is fixed elsewhere (the till's clock): replayed as it is, at
    // the time of the replay.
    let skew = ok(&config, &["dlq", "replay", "--reason", "clock_skew"]);
    assert!(skew.contains("replayed 1"), "{skew}");
    ok(&config, &["run", "--until-idle"]);
    let want: BTreeSet<&str> = [GOOD, ZERO_QUANTITY, CARD_IN_CASHIER, AHEAD].into();
    let got = session_ids(&config);
    assert_eq!(
        got.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want
    );
    assert_eq!(got.len(), 4, "{got:?}");
    let sessions = ok(&config, &["tail", "sessions"]);
    assert!(
        sessions.contains(&format!("event={CARD_IN_CASHIER}")),
        "{sessions}"
    );

    // Replaying again adds nothing: ingest drops the identical resends.
    ok(&config, &["dlq", "replay", "--file", edited]);
    ok(&config, &["dlq", "replay", "--reason", "CLOCK_SKEW"]);
    ok(&config, &["run", "--until-idle"]);
    assert_eq!(session_ids(&config).len(), 4);
    // And writes no new dead letter.
    assert_eq!(ok(&config, &["tail", "dlq"]).lines().count(), 4);

    // Each replayed record names its dead letter and keeps its key and JSON content type.
    let log = EmbeddedLog::open(&config.embedded.path, config.embedded.partitions).unwrap();
    let replays: Vec<_> = log
        .read_all(&t.till_events)
        .unwrap()
        .into_iter()
        .filter(|r| r.header("tillbridge-replayed-from").is_some())
        .collect();
    assert_eq!(replays.len(), 6);
    for r in &replays {
        assert_eq!(r.key.as_deref(), Some(&b"S1/T1"[..]));
        assert_eq!(r.header("content-type"), Some(&b"application/json"[..]));
    }
    let from: BTreeSet<String> = replays
        .iter()
        .map(|r| String::from_utf8(r.header("tillbridge-replayed-from").unwrap().to_vec()).unwrap())
        .collect();
    let want_from: BTreeSet<String> = ["INVALID_FIELD", "CARD_DATA", "CLOCK_SKEW"]
        .iter()
        .map(|r| by_reason(r)["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(from, want_from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_and_bad_lines_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let t = config.topics.clone();
    {
        let log = EmbeddedLog::open(&config.embedded.path, config.embedded.partitions).unwrap();
        log.append(vec![
            OutRecord::new(&t.dlq, "k", vec![0xff, 0xff, 0xff]),
            OutRecord::new(&t.dlq, "k", format!("{{\"detail\":\"{CARD}\"").into_bytes()),
            OutRecord::tombstone(&t.dlq, "k"),
            OutRecord::new(&t.alerts, "S1", vec![0x0a, 0xff]),
            OutRecord::new(&t.compensations, CARD, b"{\"bogus\":1}".to_vec()),
            OutRecord::new(&t.sessions, "R-1", Vec::new()),
        ])
        .await
        .unwrap();
    }
    for topic in ["dlq", "alerts", "compensations", "sessions", t.dlq.as_str()] {
        for format in ["text", "json"] {
            let (success, stdout, stderr) = tb(&config, &["tail", topic, "--format", format]);
            assert!(success, "tail {topic} --format {format}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(!has_card(&stdout), "{stdout}");
            for line in stdout.lines() {
                if format == "text" {
                    assert!(
                        line.contains("UNDECODABLE") || line.contains("TOMBSTONE"),
                        "{line}"
                    );
                    assert!(line.contains(" p") && line.contains('@'), "{line}");
                } else {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(
                        v["record"] == "undecodable" || v["record"] == "tombstone",
                        "{v}"
                    );
                    assert!(v["offset"].is_i64(), "{v}");
                }
            }
        }
    }
    let (success, _, stderr) = tb(&config, &["tail", "nonsense"]);
    assert!(!success);
    assert!(stderr.contains("dlq (tillbridge.dlq)"), "{stderr}");

    // Replaying a DLQ without a dead letter on it: each record reported, nothing published.
    let (success, stdout, stderr) = tb(&config, &["dlq", "replay"]);
    assert!(!success, "bad records exit 1");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("replayed 0"), "{stdout}");
    assert!(stdout.contains("bad lines 3"), "{stdout}");

    // A file of bad lines: each reported with its number; a card number in one never printed.
    let file = dir.path().join("bad.jsonl");
    let lines = [
        "not json".to_owned(),
        r#"{"record":"alert","id":"x"}"#.to_owned(),
        r#"{"id":"x","source_topic":"till.events"}"#.to_owned(),
        format!(r#"{{"id":"{CARD}","source_topic":"till.events","original_base64":"%%"}}"#),
        format!(
            r#"{{"id":"y","source_topic":"nowhere","original":"{{\"cashierId\":\"{CARD}\"}}"}}"#
        ),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (success, stdout, stderr) = tb(
        &config,
        &["dlq", "replay", "--file", file.to_str().unwrap()],
    );
    assert!(!success);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!has_card(&stdout), "{stdout}");
    for n in 1..=4 {
        assert!(
            stdout.contains(&format!("line {n}: ")),
            "line {n}:\n{stdout}"
        );
    }
    // The fifth is a dead letter, but for a topic of no configuration's, holding a card number.
    assert!(stdout.contains("skipped 1"), "{stdout}");
    assert_eq!(ok(&config, &["tail", "events"]).lines().count(), 0);
}

/// Reads `child`'s stdout lines into a channel.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_alerts_and_compensations_of_the_real_stages_decoded() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, state.path()).await;
    kit::produce_fleet(&broker, &config, 3).await;
    let (b, topics) = (broker.clone(), config.topics.clone());
    kit::run_until(&config, tillbridge::Stages::ALL, move || {
        let n = |t: &str| kit::read_all(&b, t).len();
        let (a, c, d) = (n(&topics.alerts), n(&topics.compensations), n(&topics.dlq));
        if a > 0 && c > 0 && d > 0 {
            Ok(())
        } else {
            Err(format!("{a} alerts, {c} compensations, {d} dead letters"))
        }
    })
    .await;

    let alerts = ok(&config, &["tail", "alerts"]);
    assert_eq!(
        alerts.lines().count(),
        kit::read_all(&broker, &config.topics.alerts).len(),
        "{alerts}"
    );
    for line in alerts.lines() {
        assert!(line.starts_with("alert p"), "{line}");
        assert!(!line.contains("UNDECODABLE"), "{line}");
        assert!(
            line.contains(" score=") && line.contains(" evidence="),
            "{line}"
        );
    }
    let rules: BTreeSet<String> = json_lines(&ok(&config, &["tail", "alerts", "--format", "json"]))
        .iter()
        .map(|v| v["rule"].as_str().unwrap().to_owned())
        .collect();
    assert!(rules.contains("CLOCK_DRIFT"), "{rules:?}");

    let comps = json_lines(&ok(&config, &["tail", "compensations", "--format", "json"]));
    assert_eq!(
        comps.len(),
        kit::read_all(&broker, &config.topics.compensations).len()
    );
    for c in &comps {
        assert_eq!(c["record"], "compensation", "{c}");
        assert!(c["exposure_minor"].is_i64(), "{c}");
        assert!(c["kind"]
            .as_str()
            .unwrap()
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch == '_'));
        // Coupon codes never in clear: the key shows the masked subject.
        assert_eq!(c["key"], c["subject"], "{c}");
    }
    let text = ok(&config, &["tail", "compensations", "--limit", "3"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.starts_with("compensation p") && l.contains(" exposure=")),
        "{text}"
    );
    let dlq = ok(&config, &["tail", "dlq"]);
    assert!(dlq.contains(" CARD_DATA "), "{dlq}");
    assert!(!tillbridge_core::pan::contains(&dlq), "{dlq}");

    // --follow prints what is there, then what arrives, until SIGTERM.
    let before = kit::read_all(&broker, &config.topics.dlq).len();
    let mut follow = kit::process::with_config(&config)
        .args(["tail", "dlq", "--follow", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut follow);
    for _ in 0..before {
        rx.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    let bad = tillbridge_core::log::Record {
        topic: config.topics.till_events.clone(),
        partition: 2,
        offset: 99,
        key: Some(b"S9/T9".to_vec()),
        payload: Some(b"{".to_vec()),
        headers: Vec::new(),
        timestamp_ms: Some(SENT_MS),
    };
    kit::produce_records(
        &broker,
        vec![tillbridge_core::log::dead_letter(
            &bad,
            &config.topics.dlq,
            "DECODE_ERROR",
            "planted",
        )],
    )
    .await;
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["detail"], "planted", "{v}");
    assert_eq!(v["source_offset"], 99, "{v}");
    kit::process::terminate(&mut follow);

    // The event stamped ahead, replayed as it is once its till's clock is fixed.
    let skewed = json_lines(&ok(&config, &["tail", "dlq", "--format", "json"]))
        .iter()
        .filter(|l| l["reason"] == "CLOCK_SKEW")
        .count();
    assert_eq!(skewed, 1);
    let replayed = ok(&config, &["dlq", "replay", "--reason", "CLOCK_SKEW"]);
    assert!(replayed.contains("replayed 1 "), "{replayed}");
    let on_input: Vec<_> = kit::read_all(&broker, &config.topics.till_events)
        .into_iter()
        .filter(|g| g.headers.contains_key("tillbridge-replayed-from"))
        .collect();
    assert_eq!(on_input.len(), 1);
    assert_eq!(
        on_input[0].headers.get("content-type").map(Vec::as_slice),
        Some(&b"application/json"[..])
    );
}
