//! `tillbridge tail TOPIC`: a topic's records decoded, one a line, for people (`text`) or for
//! tools (`json`, one object a line), on either transport, card numbers masked.
//!
//! A topic is named by its configured name or by a short alias: `dlq`, `alerts`,
//! `compensations`, `sessions`, `events` (the till events). Each record is decoded by what its
//! topic carries (docs/CONTRACT.md): `DeadLetter`, `FraudAlert`, `CompensatingAction`, or
//! `TillEvent` (protobuf on the sessions topic; protobuf or JSON on the till events topic). A
//! record that does not decode is printed as such, with its position, and the reading goes on.
//!
//! Every text printed is passed through [`pan::redact`] (dead letters and the outputs are
//! already free of card numbers: this is the second line of defence), and coupon codes in till
//! events are masked the way the reconciler and fraud-guard mask them. The exception is a dead
//! letter's `original` in the JSON form: it is the record's bytes (redacted of card numbers when
//! it was dead-lettered, and again here) because `tillbridge dlq replay --file` publishes it.
//!
//! The JSON form's field names are stable. Money stays integer minor units plus `currency`;
//! times are RFC 3339 (UTC). A dead letter's line is exactly what `dlq replay --file` reads
//! ([`crate::dlq`]): `original` holds a JSON original as text, `original_base64` any other
//! (protobuf) original, and `original_sha256` the digest of the bytes as printed, so a replay can
//! tell an edited payload from an unchanged one.

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tillbridge_core::config::{Config, Topics};
use tillbridge_core::domain::{code, money};
use tillbridge_core::log::{BatchLimits, EmbeddedSource, KafkaSource, Record, Source};
use tillbridge_core::pan;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::Transport;

/// The output form of `tail`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line a record, for people.
    #[default]
    Text,
    /// One JSON object a line, stable field names, for tools (and `dlq replay --file`).
    Json,
}

/// What a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DeadLetter,
    Alert,
    Compensation,
    /// Accepted till events (protobuf).
    Session,
    /// Till events as the fleets send them (protobuf or JSON).
    TillEvent,
}

impl Kind {
    /// The word that starts a text line.
    fn word(self) -> &'static str {
        match self {
            Kind::DeadLetter => "dlq",
            Kind::Alert => "alert",
            Kind::Compensation => "compensation",
            Kind::Session => "session",
            Kind::TillEvent => "event",
        }
    }
}

/// The topic `name` stands for (an alias or a configured topic name) and what it carries.
pub fn resolve(topics: &Topics, name: &str) -> anyhow::Result<(String, Kind)> {
    let known = [
        ("dlq", &topics.dlq, Kind::DeadLetter),
        ("alerts", &topics.alerts, Kind::Alert),
        ("compensations", &topics.compensations, Kind::Compensation),
        ("sessions", &topics.sessions, Kind::Session),
        ("events", &topics.till_events, Kind::TillEvent),
    ];
    known
        .iter()
        .find(|(alias, topic, _)| *alias == name || topic.as_str() == name)
        .map(|(_, topic, kind)| ((*topic).clone(), *kind))
        .ok_or_else(|| {
            let names: Vec<String> = known
                .iter()
                .map(|(alias, topic, _)| format!("{alias} ({topic})"))
                .collect();
            anyhow::anyhow!(
                "tail cannot decode topic {name:?}: give one of {}",
                names.join(", ")
            )
        })
}

/// What `tail` is asked for.
#[derive(Clone, Debug)]
pub struct TailOptions {
    /// An alias or a configured topic name ([`resolve`]).
    pub topic: String,
    /// Keep reading past the end until shutdown (Kafka only).
    pub follow: bool,
    pub format: Format,
    /// Only the last `limit` records (by record time) of what is there at the start.
    pub limit: Option<usize>,
}

/// Reads a topic from its beginning, outside any consumer group: to its end as it stands at the
/// start, then on when following.
enum Reader {
    /// The embedded log is held by one process at a time: nothing is appended while we read.
    Embedded(EmbeddedSource),
    Kafka {
        source: KafkaSource,
        /// The high watermark of each non-empty partition at the start.
        ends: BTreeMap<i32, i64>,
        /// The next offset of each partition.
        next: BTreeMap<i32, i64>,
    },
}

impl Reader {
    fn open(transport: &Transport, topic: &str) -> anyhow::Result<Reader> {
        Ok(match transport {
            Transport::Embedded(log) => {
                let group = format!("tail.{}", uuid::Uuid::new_v4().simple());
                Reader::Embedded(log.source_from(&group, &[topic], true)?)
            }
            Transport::Kafka(k) => {
                let (source, ends) = k.table_source(topic)?;
                Reader::Kafka {
                    source,
                    ends,
                    next: BTreeMap::new(),
                }
            }
        })
    }

    /// Whether everything there at the start was read.
    fn caught_up(&self) -> bool {
        match self {
            Reader::Embedded(source) => source.lag() == Some(0),
            Reader::Kafka { ends, next, .. } => ends
                .iter()
                .all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end),
        }
    }

    async fn next(&mut self, limits: BatchLimits) -> anyhow::Result<Vec<Record>> {
        Ok(match self {
            Reader::Embedded(source) => source.next_batch(limits).await?,
            Reader::Kafka { source, next, .. } => {
                let batch = source.next_batch(limits).await?;
                for r in &batch {
                    let n = next.entry(r.partition).or_insert(0);
                    *n = (*n).max(r.offset + 1);
                }
                batch
            }
        })
    }
}

/// Prints the records of `opts.topic` to `out`; returns how many were printed. Stops at the end
/// as it stood at the start, or (following) at `shutdown`. A reader that went away (a closed
/// pipe) ends it quietly.
pub async fn tail(
    config: &Config,
    transport: &Transport,
    opts: &TailOptions,
    out: &mut dyn Write,
    shutdown: &CancellationToken,
) -> anyhow::Result<u64> {
    let (topic, kind) = resolve(&config.topics, &opts.topic)?;
    if opts.follow && matches!(transport, Transport::Embedded(_)) {
        anyhow::bail!(
            "--follow needs Kafka: the embedded log is held by one process at a time, so nothing \
             can append to it while tail reads it (stop `run`, tail, start `run` again)"
        );
    }
    let limits = crate::transport::limits(config);
    let mut reader = Reader::open(transport, &topic)?;
    let mut printed = 0u64;
    // The last `limit` records, by (record time, partition, offset).
    let mut kept: BTreeMap<(i64, i32, i64), Record> = BTreeMap::new();
    let mut emit =
        |records: &mut dyn Iterator<Item = &Record>, out: &mut dyn Write| -> std::io::Result<()> {
            for r in records {
                writeln!(out, "{}", render(kind, r, opts.format))?;
                printed += 1;
            }
            out.flush()
        };
    // To the end as it stands.
    while !reader.caught_up() {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(printed),
            b = reader.next(limits) => b?,
        };
        if batch.is_empty() {
            continue;
        }
        match opts.limit {
            Some(n) => {
                for r in batch {
                    kept.insert(
                        (r.timestamp_ms.unwrap_or(i64::MIN), r.partition, r.offset),
                        r,
                    );
                    if kept.len() > n {
                        kept.pop_first();
                    }
                }
            }
            None => {
                if quiet_on_broken_pipe(emit(&mut batch.iter(), out))? {
                    return Ok(printed);
                }
            }
        }
    }
    if quiet_on_broken_pipe(emit(&mut kept.values(), out))? {
        return Ok(printed);
    }
    if !opts.follow {
        return Ok(printed);
    }
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(printed),
            b = reader.next(limits) => b?,
        };
        if quiet_on_broken_pipe(emit(&mut batch.iter(), out))? {
            return Ok(printed);
        }
    }
}

/// `Ok(true)` when the reader of our output went away (stop quietly), the error otherwise.
fn quiet_on_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// One record as a line of `format` (no line break).
pub fn render(kind: Kind, rec: &Record, format: Format) -> String {
    let decoded = decode(kind, rec);
    match format {
        Format::Text => text_line(kind, rec, &decoded),
        Format::Json => json_line(rec, &decoded).to_string(),
    }
}

/// A record decoded by what its topic carries.
enum Decoded {
    Tombstone,
    Undecodable(String),
    DeadLetter(pb::DeadLetter),
    Alert(pb::FraudAlert),
    Compensation(pb::CompensatingAction),
    TillEvent(Box<pb::TillEvent>),
}

fn decode(kind: Kind, rec: &Record) -> Decoded {
    let Some(payload) = rec.payload.as_deref() else {
        return Decoded::Tombstone;
    };
    if payload.is_empty() {
        return Decoded::Undecodable("empty payload".into());
    }
    let ct = rec.header("content-type");
    let failed = |e: tillbridge_proto::Rejection| Decoded::Undecodable(e.detail);
    match kind {
        Kind::DeadLetter => tillbridge_proto::decode_message(payload, ct)
            .map(Decoded::DeadLetter)
            .unwrap_or_else(failed),
        Kind::Alert => tillbridge_proto::decode_message(payload, ct)
            .map(Decoded::Alert)
            .unwrap_or_else(failed),
        Kind::Compensation => tillbridge_proto::decode_message(payload, ct)
            .map(Decoded::Compensation)
            .unwrap_or_else(failed),
        Kind::Session | Kind::TillEvent => tillbridge_proto::decode_till_event(payload, ct)
            .map(|e| Decoded::TillEvent(Box::new(e)))
            .unwrap_or_else(failed),
    }
}

/// Text with every card number's digits replaced by `*`.
pub fn mask(s: &str) -> String {
    if pan::find(s.as_bytes()).is_empty() {
        return s.to_owned();
    }
    String::from_utf8_lossy(&pan::redact(s.as_bytes())).into_owned()
}

/// Bytes (a key) as masked text.
fn mask_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(&pan::redact(b)).into_owned()
}

/// A masked value for a text line: as it is when it is one plain word, else quoted and escaped
/// (control characters never reach a terminal raw).
fn word(s: &str) -> String {
    let s = mask(s);
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\' && c != '=');
    if plain {
        s
    } else {
        format!("{s:?}")
    }
}

/// A masked free text for a text line, always quoted and escaped.
fn quoted(s: &str) -> String {
    format!("{:?}", mask(s))
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn time_of_ms(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(rfc3339)
}

fn time_of(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.and_then(tillbridge_proto::datetime).map(rfc3339)
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

fn text_line(kind: Kind, rec: &Record, decoded: &Decoded) -> String {
    let pos = format!("{} p{}@{}", kind.word(), rec.partition, rec.offset);
    let key = word(&mask_bytes(rec.key.as_deref().unwrap_or_default()));
    match decoded {
        Decoded::Tombstone => format!(
            "{pos} {} TOMBSTONE key={key}",
            or_dash(time_of_ms(rec.timestamp_ms))
        ),
        Decoded::Undecodable(why) => format!(
            "{pos} {} UNDECODABLE key={key} error={}",
            or_dash(time_of_ms(rec.timestamp_ms)),
            quoted(why)
        ),
        Decoded::DeadLetter(d) => {
            let encoding = match tillbridge_proto::detect_encoding(&d.original, None) {
                _ if d.original.is_empty() => "empty",
                tillbridge_proto::Encoding::Json => "json",
                tillbridge_proto::Encoding::Protobuf => "protobuf",
            };
            format!(
                "{pos} {} {} {}/{}@{} event={} key={key} original={} bytes ({encoding}) id={} detail={}",
                or_dash(time_of(d.rejected_at.as_ref()).or_else(|| time_of_ms(rec.timestamp_ms))),
                word(&d.reason),
                word(&d.source_topic),
                d.source_partition,
                d.source_offset,
                d.event_id.as_deref().map_or_else(|| "-".into(), word),
                d.original.len(),
                word(&d.id),
                quoted(&d.detail),
            )
        }
        Decoded::Alert(a) => {
            let rule = pb::AlertRule::try_from(a.rule)
                .map(|r| r.as_str_name().to_owned())
                .unwrap_or_else(|_| format!("RULE_{}", a.rule));
            format!(
                "{pos} {} {rule} subject={} store={} score={} window={}..{}{} events={} id={} evidence={}",
                or_dash(time_of_ms(rec.timestamp_ms)),
                word(&a.subject),
                word(&a.store_id),
                a.risk_score,
                or_dash(time_of(a.window_start.as_ref())),
                or_dash(time_of(a.window_end.as_ref())),
                if a.late { " late" } else { "" },
                a.event_ids.len(),
                word(&a.id),
                quoted(&a.evidence),
            )
        }
        Decoded::Compensation(c) => {
            let kind = pb::CompensationKind::try_from(c.kind)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_else(|_| format!("KIND_{}", c.kind));
            let mut line = format!(
                "{pos} {} {kind} subject={} reason={} exposure={} points={} case={} events={} id={}",
                or_dash(time_of(c.decided_at.as_ref()).or_else(|| time_of_ms(rec.timestamp_ms))),
                word(&c.subject),
                if c.reason.is_empty() { "-".into() } else { word(&c.reason) },
                word(&money::format_amount(c.exposure_minor, &c.currency)),
                c.points,
                word(&c.case_id),
                c.event_ids.len(),
                word(&c.id),
            );
            if let Some(r) = &c.retracts {
                line.push_str(&format!(" retracts={}", word(r)));
            }
            line
        }
        Decoded::TillEvent(e) => {
            format!(
                "{pos} {} {} event={} till={}/{}#{} session={} {}{}",
                or_dash(time_of(e.occurred_at.as_ref())),
                body_name(e),
                word(&e.event_id),
                word(&e.store_id),
                word(&e.till_id),
                e.till_seq,
                if e.session_id.is_empty() {
                    "-".into()
                } else {
                    word(&e.session_id)
                },
                body_text(e),
                if e.offline { " offline" } else { "" },
            )
        }
    }
}

fn body_name(e: &pb::TillEvent) -> &'static str {
    use pb::till_event::Body;
    match &e.body {
        Some(Body::Sale(_)) => "SALE",
        Some(Body::Return(_)) => "RETURN",
        Some(Body::SessionCancelled(_)) => "SESSION_CANCELLED",
        Some(Body::ManualOverride(_)) => "MANUAL_OVERRIDE",
        Some(Body::TillStatus(_)) => "TILL_STATUS",
        None => "NO_BODY",
    }
}

/// A sale's total: `total_minor` when given, else computed as the contract says.
fn sale_total(s: &pb::Sale) -> i64 {
    s.total_minor.unwrap_or_else(|| {
        let lines = s.lines.iter().fold(0i64, |acc, l| {
            acc.saturating_add(
                i64::from(l.quantity)
                    .saturating_mul(l.unit_price_minor)
                    .saturating_sub(l.discount_minor),
            )
        });
        s.coupons
            .iter()
            .fold(lines, |acc, c| acc.saturating_sub(c.discount_minor))
    })
}

fn body_text(e: &pb::TillEvent) -> String {
    use pb::till_event::Body;
    let amount = |minor: i64| word(&money::format_amount(minor, &e.currency));
    match &e.body {
        Some(Body::Sale(s)) => {
            let mut t = format!("lines={} total={}", s.lines.len(), amount(sale_total(s)));
            if !s.coupons.is_empty() {
                let codes: Vec<String> = s.coupons.iter().map(|c| code::mask(&c.code)).collect();
                t.push_str(&format!(" coupons={}", word(&codes.join(","))));
            }
            if let Some(l) = &s.loyalty {
                t.push_str(&format!(
                    " points=+{}/-{}",
                    l.points_earned, l.points_redeemed
                ));
            }
            t
        }
        Some(Body::Return(r)) => format!(
            "original_session={} refund={}",
            word(&r.original_session_id),
            amount(r.refund_minor)
        ),
        Some(Body::SessionCancelled(c)) => format!("reason={}", quoted(&c.reason)),
        Some(Body::ManualOverride(o)) => {
            let kind = pb::manual_override::Kind::try_from(o.kind)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_else(|_| o.kind.to_string());
            format!(
                "kind={kind} amount={} reason={}",
                amount(o.amount_minor),
                quoted(&o.reason)
            )
        }
        Some(Body::TillStatus(s)) => {
            let status = pb::till_status::Status::try_from(s.status)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_else(|_| s.status.to_string());
            format!("status={status} last_synced_seq={}", s.last_synced_seq)
        }
        None => String::new(),
    }
}

/// The hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json_line(rec: &Record, decoded: &Decoded) -> Value {
    let mut m = Map::new();
    m.insert("topic".into(), json!(rec.topic));
    m.insert("partition".into(), json!(rec.partition));
    m.insert("offset".into(), json!(rec.offset));
    m.insert("timestamp".into(), json!(time_of_ms(rec.timestamp_ms)));
    let key = match decoded {
        // Keyed by coupon code (a bearer secret) or profile id: the subject is its masked form.
        Decoded::Compensation(c) => rec.key.as_deref().map(|_| mask(&c.subject)),
        _ => rec.key.as_deref().map(mask_bytes),
    };
    m.insert("key".into(), json!(key));
    let masked = |v: &[String]| -> Vec<String> { v.iter().map(|s| mask(s)).collect() };
    match decoded {
        Decoded::Tombstone => {
            m.insert("record".into(), json!("tombstone"));
        }
        Decoded::Undecodable(why) => {
            m.insert("record".into(), json!("undecodable"));
            m.insert("error".into(), json!(mask(why)));
        }
        Decoded::DeadLetter(d) => {
            m.insert("record".into(), json!("dead_letter"));
            m.insert("id".into(), json!(mask(&d.id)));
            m.insert("reason".into(), json!(mask(&d.reason)));
            m.insert("detail".into(), json!(mask(&d.detail)));
            m.insert("source_topic".into(), json!(d.source_topic));
            m.insert("source_partition".into(), json!(d.source_partition));
            m.insert("source_offset".into(), json!(d.source_offset));
            m.insert("event_id".into(), json!(d.event_id.as_deref().map(mask)));
            m.insert("rejected_at".into(), json!(time_of(d.rejected_at.as_ref())));
            // Redacted when dead-lettered; again here, before it is printed.
            let original = pan::redact(&d.original);
            m.insert("original_bytes".into(), json!(original.len()));
            m.insert("original_sha256".into(), json!(sha256_hex(&original)));
            let as_text = (tillbridge_proto::detect_encoding(&original, None)
                == tillbridge_proto::Encoding::Json)
                .then(|| String::from_utf8(original.clone()).ok())
                .flatten();
            match as_text {
                Some(text) => {
                    m.insert("original".into(), json!(text));
                }
                None => {
                    m.insert(
                        "original_base64".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(&original)),
                    );
                }
            }
        }
        Decoded::Alert(a) => {
            m.insert("record".into(), json!("alert"));
            m.insert("id".into(), json!(mask(&a.id)));
            m.insert(
                "rule".into(),
                json!(pb::AlertRule::try_from(a.rule)
                    .map(|r| r.as_str_name().to_owned())
                    .unwrap_or_else(|_| a.rule.to_string())),
            );
            m.insert("store_id".into(), json!(mask(&a.store_id)));
            m.insert("subject".into(), json!(mask(&a.subject)));
            m.insert("risk_score".into(), json!(a.risk_score));
            m.insert("event_ids".into(), json!(masked(&a.event_ids)));
            m.insert("evidence".into(), json!(mask(&a.evidence)));
            m.insert(
                "window_start".into(),
                json!(time_of(a.window_start.as_ref())),
            );
            m.insert("window_end".into(), json!(time_of(a.window_end.as_ref())));
            m.insert("late".into(), json!(a.late));
        }
        Decoded::Compensation(c) => {
            m.insert("record".into(), json!("compensation"));
            m.insert("id".into(), json!(mask(&c.id)));
            m.insert(
                "kind".into(),
                json!(pb::CompensationKind::try_from(c.kind)
                    .map(|k| k.as_str_name().to_owned())
                    .unwrap_or_else(|_| c.kind.to_string())),
            );
            m.insert("case_id".into(), json!(mask(&c.case_id)));
            m.insert("subject".into(), json!(mask(&c.subject)));
            m.insert("reason".into(), json!(mask(&c.reason)));
            m.insert("exposure_minor".into(), json!(c.exposure_minor));
            m.insert("currency".into(), json!(mask(&c.currency)));
            m.insert("points".into(), json!(c.points));
            m.insert("event_ids".into(), json!(masked(&c.event_ids)));
            m.insert("retracts".into(), json!(c.retracts.as_deref().map(mask)));
            m.insert("decided_at".into(), json!(time_of(c.decided_at.as_ref())));
        }
        Decoded::TillEvent(e) => {
            m.insert("record".into(), json!("till_event"));
            m.insert("body".into(), json!(body_name(e).to_ascii_lowercase()));
            m.insert("event".into(), event_json(e));
        }
    }
    Value::Object(m)
}

/// The event in proto3 JSON (as the contract writes it), coupon codes masked, card numbers
/// redacted.
fn event_json(e: &pb::TillEvent) -> Value {
    let mut e = e.clone();
    if let Some(pb::till_event::Body::Sale(s)) = &mut e.body {
        for c in &mut s.coupons {
            c.code = code::mask(&c.code);
        }
    }
    let text = pan::redact(tillbridge_proto::to_json(&e).as_bytes());
    serde_json::from_slice(&text)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into_owned()))
}

/// Whether `rec` decodes as a dead letter (for `dlq replay`).
pub(crate) fn dead_letter_of(rec: &Record) -> Option<pb::DeadLetter> {
    let payload = rec.payload.as_deref()?;
    tillbridge_proto::decode_message::<pb::DeadLetter>(payload, rec.header("content-type")).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CARD: &str = "4111 1111 1111 1111";

    fn record(topic: &str, key: &str, payload: Option<Vec<u8>>) -> Record {
        Record {
            topic: topic.into(),
            partition: 2,
            offset: 17,
            key: Some(key.as_bytes().to_vec()),
            payload,
            headers: Vec::new(),
            timestamp_ms: Some(1_793_614_560_000),
        }
    }

    #[test]
    fn aliases_and_configured_names_resolve_and_others_are_refused() {
        let t = Topics::default();
        assert_eq!(
            resolve(&t, "dlq").unwrap(),
            (t.dlq.clone(), Kind::DeadLetter)
        );
        assert_eq!(
            resolve(&t, "promo.sessions").unwrap(),
            (t.sessions.clone(), Kind::Session)
        );
        assert_eq!(resolve(&t, "events").unwrap().1, Kind::TillEvent);
        let e = resolve(&t, "promo.coupons").unwrap_err().to_string();
        assert!(e.contains("alerts (tillbridge.alerts)"), "{e}");
    }

    #[test]
    fn a_dead_letter_prints_masked_in_both_forms() {
        let d = pb::DeadLetter {
            id: "19f5482b-4baa-547a-8bf2-bac7464a0edb".into(),
            reason: "DECODE_ERROR".into(),
            detail: format!("bad {CARD}\n\x1b[31m"),
            source_topic: "till.events".into(),
            source_partition: 1,
            source_offset: 42,
            original: format!("{{\"cashierId\":\"{CARD}\"}}").into_bytes(),
            event_id: None,
            rejected_at: Some(prost_types::Timestamp {
                seconds: 1_793_614_560,
                nanos: 0,
            }),
        };
        let rec = record(
            "tillbridge.dlq",
            &format!("S1/{CARD}"),
            Some(prost::Message::encode_to_vec(&d)),
        );
        let text = render(Kind::DeadLetter, &rec, Format::Text);
        assert!(
            text.starts_with(
                "dlq p2@17 2026-11-02T10:16:00Z DECODE_ERROR till.events/1@42 event=- key="
            ),
            "{text}"
        );
        assert!(!pan::contains(&text) && !text.contains('\n') && !text.contains('\x1b'));
        let json: Value =
            serde_json::from_str(&render(Kind::DeadLetter, &rec, Format::Json)).unwrap();
        assert!(!pan::contains(&json.to_string()), "{json}");
        assert_eq!(json["record"], "dead_letter");
        assert_eq!(json["source_offset"], 42);
        let original = json["original"].as_str().unwrap();
        assert!(original.contains("**** **** **** ****"), "{original}");
        assert_eq!(
            json["original_sha256"].as_str().unwrap(),
            sha256_hex(original.as_bytes())
        );
    }

    #[test]
    fn what_does_not_decode_says_so_with_its_position() {
        for kind in [
            Kind::DeadLetter,
            Kind::Alert,
            Kind::Compensation,
            Kind::Session,
            Kind::TillEvent,
        ] {
            for payload in [Some(vec![0xff, 0x00]), Some(Vec::new()), None] {
                let rec = record("t", "k", payload.clone());
                let text = render(kind, &rec, Format::Text);
                assert!(text.contains(" p2@17 "), "{text}");
                let json: Value = serde_json::from_str(&render(kind, &rec, Format::Json)).unwrap();
                if payload.is_none() {
                    assert!(text.contains("TOMBSTONE"), "{text}");
                    assert_eq!(json["record"], "tombstone");
                } else {
                    assert!(text.contains("UNDECODABLE"), "{kind:?} {text}");
                    assert_eq!(json["record"], "undecodable");
                }
            }
        }
    }
}
