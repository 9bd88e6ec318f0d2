//! `tillbridge publish`: checks JSON lines against the contract of their topic, reports every
//! problem by line number, and appends the good ones.
//!
//! A line is either a bare contract message in proto3 JSON (a `TillEvent` on the till events
//! topic, a `CouponDefinition`, `LoyaltyBalance` or `Store` on theirs), or a **record envelope**
//! as kcat (`-J`) and similar tools write a captured topic:
//!
//! ```text
//! {"topic":"till.events","partition":0,"offset":7,"tstype":"create","ts":1764320000123,
//!  "headers":["content-type","application/json"],"key":"S01/T1","payload":"{\"eventId\":…}"}
//! ```
//!
//! `payload` is the value as text (or as a JSON object), `null` for a tombstone, or
//! `payload_base64` carries binary (protobuf) values; `key`, `ts` (the record timestamp, ms) and
//! `headers` (a flat `[name, value, …]` list or an object) are kept as they are, so a topic
//! captured from Kafka replays on the embedded log exactly. `topic`, `partition`, `offset`,
//! `tstype` and `broker` are accepted; other fields are refused. `--topic` overrides the
//! envelope's topic; without either a line goes to the till events topic.
//!
//! Each line is judged on its own: one that is not UTF-8 or breaks the contract is reported with
//! its reason code and the rest still go out.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use base64::Engine as _;
use serde::Deserialize;
use tillbridge_core::config::{IngestConfig, Topics};
use tillbridge_core::domain::RejectReason;
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_proto::{pb, Rejection};

use crate::Transport;

/// Records appended per write.
const PUBLISH_BATCH: usize = 1000;

/// What `publish` found.
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    pub lines: u64,
    pub published: u64,
    /// (line number, reason, detail) of every rejected line.
    pub problems: Vec<(u64, RejectReason, String)>,
    pub checked_only: bool,
}

impl PublishReport {
    pub fn rejected(&self) -> u64 {
        self.problems.len() as u64
    }
}

impl fmt::Display for PublishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (line, reason, detail) in &self.problems {
            writeln!(f, "line {line}: {reason}: {detail}")?;
        }
        let verb = if self.checked_only {
            "valid (not published)"
        } else {
            "published"
        };
        writeln!(
            f,
            "{} lines: {} {verb}, {} rejected",
            self.lines,
            if self.checked_only {
                self.lines - self.rejected()
            } else {
                self.published
            },
            self.rejected()
        )
    }
}

/// Checks one JSON line holding a till event; the event when it keeps the contract.
pub fn check_line(line: &str) -> Result<pb::TillEvent, Rejection> {
    let raw: pb::TillEvent =
        tillbridge_proto::from_json("tillbridge.v1.TillEvent", line.as_bytes())?;
    tillbridge_proto::validate(&raw)?;
    Ok(raw)
}

/// The contract message a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TillEvent,
    Coupon,
    Balance,
    Store,
}

fn kind_of(topics: &Topics, topic: &str) -> Option<Kind> {
    [
        (&topics.till_events, Kind::TillEvent),
        (&topics.coupons, Kind::Coupon),
        (&topics.loyalty_balances, Kind::Balance),
        (&topics.stores, Kind::Store),
    ]
    .into_iter()
    .find(|(t, _)| t.as_str() == topic)
    .map(|(_, k)| k)
}

/// A record envelope (see the module documentation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    topic: Option<String>,
    #[allow(dead_code)]
    partition: Option<i64>,
    #[allow(dead_code)]
    offset: Option<i64>,
    #[allow(dead_code)]
    tstype: Option<String>,
    #[allow(dead_code)]
    broker: Option<i64>,
    key: Option<String>,
    #[serde(alias = "timestamp")]
    ts: Option<i64>,
    #[serde(default)]
    headers: Option<serde_json::Value>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    payload_base64: Option<String>,
}

fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidField, detail)
}

fn headers_of(v: Option<serde_json::Value>) -> Result<Vec<(String, Vec<u8>)>, Rejection> {
    let text = |v: &serde_json::Value| -> Result<Vec<u8>, Rejection> {
        match v {
            serde_json::Value::String(s) => Ok(s.clone().into_bytes()),
            serde_json::Value::Null => Ok(Vec::new()),
            _ => Err(invalid("headers: values must be strings")),
        }
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => {
            if items.len() % 2 != 0 {
                return Err(invalid("headers: a [name, value, ...] list of even length"));
            }
            items
                .chunks(2)
                .map(|kv| {
                    let name = kv[0]
                        .as_str()
                        .ok_or_else(|| invalid("headers: names must be strings"))?;
                    Ok((name.to_owned(), text(&kv[1])?))
                })
                .collect()
        }
        Some(serde_json::Value::Object(map)) => {
            map.iter().map(|(k, v)| Ok((k.clone(), text(v)?))).collect()
        }
        Some(_) => Err(invalid("headers: a list or an object")),
    }
}

/// One line turned into the record to append, or why not.
fn record_of(
    line: &str,
    topics: &Topics,
    rules: &IngestConfig,
    topic_override: Option<&str>,
) -> Result<OutRecord, Rejection> {
    let trimmed = line.trim_start();
    let envelope = trimmed.starts_with('{')
        && serde_json::from_str::<BTreeMap<String, serde_json::Value>>(trimmed)
            .is_ok_and(|m| m.contains_key("payload") || m.contains_key("payload_base64"));
    let (topic, key, ts, mut headers, payload) = if envelope {
        let e: Envelope = serde_json::from_str(trimmed).map_err(|e| {
            Rejection::new(
                RejectReason::DecodeError,
                format!("record envelope: {}", describe_json_error(&e)),
            )
        })?;
        let payload = match (e.payload, e.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(invalid("payload and payload_base64: give one"));
            }
            (_, Some(b)) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|_| invalid("payload_base64: not base64"))?,
            ),
            (Some(serde_json::Value::String(s)), None) => Some(s.into_bytes()),
            (Some(serde_json::Value::Null) | None, None) => None,
            (Some(v @ serde_json::Value::Object(_)), None) => Some(v.to_string().into_bytes()),
            (Some(_), None) => return Err(invalid("payload: a string, an object or null")),
        };
        let topic = match (topic_override, e.topic) {
            (Some(t), _) => t.to_owned(),
            (None, Some(t)) if kind_of(topics, &t).is_some() => t,
            (None, Some(_)) => {
                return Err(invalid(
                    "topic: not a contract input topic of this configuration (pass --topic)",
                ))
            }
            (None, None) => topics.till_events.clone(),
        };
        (topic, e.key, e.ts, headers_of(e.headers)?, payload)
    } else {
        let topic = topic_override.unwrap_or(&topics.till_events).to_owned();
        (
            topic,
            None,
            None,
            Vec::new(),
            Some(line.as_bytes().to_vec()),
        )
    };
    let kind = kind_of(topics, &topic).unwrap_or(Kind::TillEvent);
    let json_payload = payload.as_deref().is_some_and(|p| {
        tillbridge_proto::detect_encoding(p, content_type(&headers))
            == tillbridge_proto::Encoding::Json
    });
    if json_payload && content_type(&headers).is_none() {
        headers.push(("content-type".into(), b"application/json".to_vec()));
    }
    let derived = match &payload {
        None => {
            if kind == Kind::TillEvent {
                return Err(Rejection::new(
                    RejectReason::MissingField,
                    "payload: required (a till event cannot be a tombstone)",
                ));
            }
            if key.as_deref().is_none_or(str::is_empty) {
                return Err(Rejection::new(
                    RejectReason::MissingField,
                    "key: required (a tombstone needs one)",
                ));
            }
            String::new()
        }
        Some(p) => check_payload(kind, p, content_type(&headers), key.as_deref(), ts, rules)?,
    };
    Ok(OutRecord {
        topic,
        key: key.unwrap_or(derived).into_bytes(),
        payload,
        headers,
        timestamp_ms: ts,
        partition: None,
    })
}

fn content_type(headers: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_slice())
}

/// serde_json's message for an envelope, without echoing input values.
fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if tillbridge_core::pan::contains(&msg) {
        format!("{:?} error at column {}", e.classify(), e.column())
    } else {
        msg
    }
}

/// Checks a value against its topic's contract; the key the record gets when the line names
/// none.
fn check_payload(
    kind: Kind,
    payload: &[u8],
    content_type: Option<&[u8]>,
    key: Option<&str>,
    ts: Option<i64>,
    rules: &IngestConfig,
) -> Result<String, Rejection> {
    if payload.len() > rules.max_payload_bytes {
        return Err(Rejection::new(
            RejectReason::Oversized,
            format!(
                "payload is {} bytes, the limit is {}",
                payload.len(),
                rules.max_payload_bytes
            ),
        ));
    }
    match kind {
        Kind::TillEvent => {
            let raw = tillbridge_proto::decode_till_event(payload, content_type)?;
            let ev = tillbridge_proto::validate(&raw)?;
            // Ingest's clock rule, against the record timestamp the line will get (its
            // envelope's, else the time of appending, that is now).
            let record_ms = ts.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            let skew_ms = i64::try_from(rules.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
            let ahead = ev.occurred_at.timestamp_millis().saturating_sub(record_ms);
            if ahead > skew_ms {
                return Err(Rejection::new(
                    RejectReason::ClockSkew,
                    format!(
                        "occurred_at is {ahead} ms ahead of the record timestamp; at most {skew_ms} ms allowed"
                    ),
                ));
            }
            Ok(format!("{}/{}", raw.store_id, raw.till_id))
        }
        Kind::Coupon => {
            let d: pb::CouponDefinition = tillbridge_proto::decode_message(payload, content_type)?;
            tillbridge_proto::coupon_definition(&d)?;
            Ok(d.code)
        }
        Kind::Balance => {
            let b: pb::LoyaltyBalance = tillbridge_proto::decode_message(payload, content_type)?;
            tillbridge_proto::loyalty_balance(&b)?;
            Ok(b.profile_id)
        }
        Kind::Store => {
            let row: pb::Store = tillbridge_proto::decode_message(payload, content_type)?;
            // The store table's own rules, on a table of one.
            let record = Record {
                topic: String::new(),
                partition: 0,
                offset: 0,
                key: key.map(|k| k.as_bytes().to_vec()),
                payload: Some(payload.to_vec()),
                headers: content_type
                    .map(|c| vec![("content-type".to_owned(), c.to_vec())])
                    .unwrap_or_default(),
                timestamp_ms: None,
            };
            tillbridge_ingest::route::StoreTable::new().apply(&record)?;
            Ok(row.store_id)
        }
    }
}

/// Reads `input` line by line; appends the valid records to `transport` unless `check_only`
/// (which needs no transport, so it works while `run` holds the embedded log). Every rule
/// ingest applies is applied (`rules`: size and clock skew too). `topic` overrides the topic of
/// every line.
pub async fn publish(
    mut input: impl BufRead,
    transport: Option<&Transport>,
    topics: &Topics,
    rules: &IngestConfig,
    topic: Option<&str>,
    check_only: bool,
) -> anyhow::Result<PublishReport> {
    let transport = match (transport, check_only) {
        (Some(t), _) => Some(t),
        (None, true) => None,
        (None, false) => anyhow::bail!("publishing needs a transport"),
    };
    let mut report = PublishReport {
        checked_only: check_only,
        ..Default::default()
    };
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        n += 1;
        let Ok(line) = std::str::from_utf8(&buf) else {
            report.lines += 1;
            report
                .problems
                .push((n, RejectReason::DecodeError, "the line is not UTF-8".into()));
            continue;
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        match record_of(line, topics, rules, topic) {
            Ok(record) => {
                if !check_only {
                    batch.push(record);
                }
            }
            Err(r) => report.problems.push((n, r.reason, r.detail)),
        }
        if let Some(t) = transport.filter(|_| batch.len() >= PUBLISH_BATCH) {
            report.published += batch.len() as u64;
            t.append(std::mem::take(&mut batch)).await?;
        }
    }
    if let Some(t) = transport.filter(|_| !batch.is_empty()) {
        report.published += batch.len() as u64;
        t.append(batch).await?;
    }
    Ok(report)
}
