//! `tillbridge dlq replay`: re-publishes dead letters an operator has fixed to the topic they
//! came from (`source_topic`), with their original key and bytes.
//!
//! Two ways a dead letter gets fixed:
//!
//! - the cause was fixed elsewhere (a store added to the store table, `max_clock_skew` raised):
//!   the letters on the DLQ are replayed as they are, chosen with `--reason`;
//! - the records themselves needed fixing: `tillbridge tail dlq --format json > letters.jsonl`,
//!   edit the payloads, `tillbridge dlq replay --file letters.jsonl` publishes the edited ones.
//!   A line is what `tail --format json` writes for a dead letter ([`crate::tail`]): `id`,
//!   `reason`, `source_topic`, `key`, and the payload in `original` (text; a JSON original) or
//!   `original_base64` (any bytes; a protobuf original). Other fields are ignored, except
//!   `original_sha256`, which tells an unchanged payload from an edited one.
//!
//! Each record published carries `tillbridge-replayed-from: <dead letter id>` and the
//! `content-type` of its payload (`application/json` for a JSON payload, as the original
//! producer had to send it for ingest to read it as JSON). Its record time is the time of the
//! replay: that is when it was sent, and ingest judges clock skew against it.
//!
//! Letters that cannot be replayed as they are, are skipped and counted: `OVERSIZED` (the
//! original was truncated), `CARD_DATA` (the original was redacted), unless they come from
//! `--file` with a new payload; letters with an empty original; letters whose source topic is not
//! a topic of this configuration; payloads that hold a card number. A letter found twice (the DLQ
//! is written at least once) is replayed once.
//!
//! Replaying twice is safe: ingest drops an identical resend of an accepted event by its event
//! id, and a record that is still wrong is dead-lettered again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::BufRead;

use base64::Engine as _;
use serde::Deserialize;
use tillbridge_core::config::Config;
use tillbridge_core::log::OutRecord;
use tillbridge_core::pan;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::tail::{mask, sha256_hex};
use crate::Transport;

/// The header naming the dead letter a replayed record came from.
pub const REPLAYED_FROM: &str = "tillbridge-replayed-from";

/// Records appended per write.
const REPLAY_BATCH: usize = 1000;

/// What `dlq replay` is asked for.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Only letters with one of these reasons (any when empty); case-insensitive.
    pub reasons: Vec<String>,
    /// Letters (with payloads perhaps edited) as `tail dlq --format json` writes them, instead
    /// of the DLQ itself. `-` reads standard input.
    pub file: Option<std::path::PathBuf>,
    /// Only say what would be published.
    pub dry_run: bool,
}

/// What `dlq replay` did.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// One line per letter (replayed, skipped) and per bad input line, in order.
    pub lines: Vec<String>,
    /// Records published (or that would be), per topic.
    pub replayed: BTreeMap<String, u64>,
    /// Letters skipped, per reason of the letter.
    pub skipped: BTreeMap<String, u64>,
    /// Letters left out by `--reason`.
    pub filtered: u64,
    /// Letters seen again (the same id).
    pub repeated: u64,
    /// Input lines that are not dead letters.
    pub bad_lines: u64,
}

impl ReplayReport {
    pub fn replayed_total(&self) -> u64 {
        self.replayed.values().sum()
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let per_topic: Vec<String> = self
            .replayed
            .iter()
            .map(|(t, n)| format!("{t}: {n}"))
            .collect();
        write!(f, "{verb} {}", self.replayed_total())?;
        if !per_topic.is_empty() {
            write!(f, " ({})", per_topic.join(", "))?;
        }
        let per_reason: Vec<String> = self
            .skipped
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        write!(f, ", skipped {}", self.skipped_total())?;
        if !per_reason.is_empty() {
            write!(f, " ({})", per_reason.join(", "))?;
        }
        write!(f, ", left out by --reason {}", self.filtered)?;
        if self.repeated > 0 {
            write!(f, ", repeated {}", self.repeated)?;
        }
        if self.bad_lines > 0 {
            write!(f, ", bad lines {}", self.bad_lines)?;
        }
        if self.dry_run {
            write!(f, " (dry run: nothing published)")?;
        }
        writeln!(f)
    }
}

/// A dead letter to replay, from the DLQ or from a file.
#[derive(Clone, Debug)]
struct Letter {
    id: String,
    reason: String,
    source_topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    /// The payload was given as text (`original`): JSON.
    text: bool,
    event_id: Option<String>,
    /// A payload other than the dead letter's original (from `--file`).
    edited: bool,
    /// Where it was read: `dlq p0@3` or `line 7`.
    from: String,
}

/// A line of `--file` (a dead letter as `tail --format json` writes it).
#[derive(Debug, Deserialize)]
struct FileLetter {
    record: Option<String>,
    id: Option<String>,
    reason: Option<String>,
    source_topic: Option<String>,
    key: Option<String>,
    original: Option<String>,
    original_base64: Option<String>,
    original_sha256: Option<String>,
    event_id: Option<String>,
}

fn letter_of_line(line: &str, n: u64) -> Result<Option<Letter>, String> {
    let l: FileLetter =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {}", json_error(&e)))?;
    if let Some(r) = l.record.as_deref().filter(|r| *r != "dead_letter") {
        return Err(format!("not a dead letter (record {r:?})"));
    }
    let id = l.id.filter(|s| !s.is_empty()).ok_or("id: required")?;
    let source_topic = l
        .source_topic
        .filter(|s| !s.is_empty())
        .ok_or("source_topic: required")?;
    let (payload, text) = match (l.original, l.original_base64) {
        (Some(_), Some(_)) => return Err("original and original_base64: give one".into()),
        (Some(t), None) => (t.into_bytes(), true),
        (None, Some(b)) => (
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| "original_base64: not base64".to_owned())?,
            false,
        ),
        (None, None) => return Err("original or original_base64: required".into()),
    };
    let edited = l
        .original_sha256
        .is_none_or(|h| !h.eq_ignore_ascii_case(&sha256_hex(&payload)));
    Ok(Some(Letter {
        id,
        reason: l.reason.unwrap_or_default(),
        source_topic,
        key: l.key.unwrap_or_default().into_bytes(),
        payload,
        text,
        event_id: l.event_id,
        edited,
        from: format!("line {n}"),
    }))
}

/// serde_json's message without echoing input values (which may hold card digits).
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if pan::contains(&msg) {
        format!("{:?} error at column {}", e.classify(), e.column())
    } else {
        msg
    }
}

fn letter_of_record(rec: &tillbridge_core::log::Record, d: pb::DeadLetter) -> Letter {
    Letter {
        text: false,
        edited: false,
        id: d.id,
        reason: d.reason,
        source_topic: d.source_topic,
        key: rec.key.clone().unwrap_or_default(),
        payload: d.original,
        event_id: d.event_id,
        from: format!("dlq p{}@{}", rec.partition, rec.offset),
    }
}

/// Why a letter cannot be replayed as it is, if it cannot.
fn unreplayable(l: &Letter, topics: &[String]) -> Option<&'static str> {
    if !l.edited {
        match l.reason.as_str() {
            "OVERSIZED" => {
                return Some(
                    "its original was truncated: fix it with --file and a complete payload",
                )
            }
            "CARD_DATA" => return Some(
                "its original was redacted of card digits: fix it with --file and a new payload",
            ),
            _ => {}
        }
    }
    if l.payload.is_empty() {
        return Some("its original is empty: nothing to replay");
    }
    if !topics.contains(&l.source_topic) {
        return Some("its source topic is not a topic of this configuration");
    }
    if !pan::find(&l.payload).is_empty() {
        return Some("the payload holds a card number");
    }
    None
}

fn record_of(l: &Letter, sessions: &str) -> OutRecord {
    let json = l.text
        || tillbridge_proto::detect_encoding(&l.payload, None) == tillbridge_proto::Encoding::Json;
    let content_type = if json {
        "application/json"
    } else {
        tillbridge_proto::CONTENT_TYPE_PROTOBUF
    };
    let mut r = OutRecord::new(&l.source_topic, l.key.clone(), l.payload.clone())
        .with_header("content-type", content_type)
        .with_header(REPLAYED_FROM, l.id.as_bytes().to_vec());
    if l.source_topic == sessions {
        if let Some(id) = &l.event_id {
            r = r.with_header("tillbridge-event-id", id.as_bytes().to_vec());
        }
    }
    r
}

/// Replays dead letters (see the module documentation). `transport` may be `None` only for a
/// dry run from a file (which opens no log, so it works while `run` holds the embedded one).
pub async fn replay(
    config: &Config,
    transport: Option<&Transport>,
    opts: &ReplayOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<ReplayReport> {
    let mut report = ReplayReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut letters = Vec::new();
    match &opts.file {
        Some(path) => {
            let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(
                    |e| anyhow::anyhow!("opening {}: {e}", path.display()),
                )?))
            };
            let mut n = 0u64;
            for line in input.split(b'\n') {
                n += 1;
                let line = line?;
                let Ok(line) = std::str::from_utf8(&line) else {
                    report.bad_lines += 1;
                    report.lines.push(format!("line {n}: not UTF-8"));
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                match letter_of_line(line, n) {
                    Ok(Some(l)) => letters.push(l),
                    Ok(None) => {}
                    Err(why) => {
                        report.bad_lines += 1;
                        report.lines.push(format!("line {n}: {}", mask(&why)));
                    }
                }
            }
        }
        None => {
            let Some(t) = transport else {
                anyhow::bail!("replaying from the DLQ needs the log");
            };
            let records = crate::transport::read_to_end(
                t,
                &config.topics.dlq,
                crate::transport::limits(config),
                shutdown,
            )
            .await?;
            for rec in &records {
                match crate::tail::dead_letter_of(rec) {
                    Some(d) => letters.push(letter_of_record(rec, d)),
                    None => {
                        report.bad_lines += 1;
                        report.lines.push(format!(
                            "dlq p{}@{}: not a dead letter (a tombstone or undecodable)",
                            rec.partition, rec.offset
                        ));
                    }
                }
            }
        }
    }
    let topics = crate::all_topics(config)?;
    let wanted: BTreeSet<String> = opts
        .reasons
        .iter()
        .map(|r| r.trim().to_ascii_uppercase())
        .filter(|r| !r.is_empty())
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for l in letters {
        if !wanted.is_empty() && !wanted.contains(&l.reason.to_ascii_uppercase()) {
            report.filtered += 1;
            continue;
        }
        if !seen.insert(l.id.clone()) {
            report.repeated += 1;
            continue;
        }
        let id = mask(&l.id);
        let reason = if l.reason.is_empty() {
            "-".to_owned()
        } else {
            mask(&l.reason)
        };
        if let Some(why) = unreplayable(&l, &topics) {
            *report.skipped.entry(reason.clone()).or_default() += 1;
            report
                .lines
                .push(format!("skipped {id} {reason} ({}): {why}", l.from));
            continue;
        }
        *report.replayed.entry(l.source_topic.clone()).or_default() += 1;
        report.lines.push(format!(
            "{} {id} {reason} ({}) -> {} key={:?} {} bytes{}",
            if opts.dry_run {
                "would replay"
            } else {
                "replay"
            },
            l.from,
            l.source_topic,
            String::from_utf8_lossy(&pan::redact(&l.key)),
            l.payload.len(),
            if l.edited { " (edited)" } else { "" },
        ));
        out.push(record_of(&l, &config.topics.sessions));
    }
    if opts.dry_run || out.is_empty() {
        return Ok(report);
    }
    let Some(t) = transport else {
        anyhow::bail!("replaying needs the log");
    };
    for chunk in out.chunks(REPLAY_BATCH) {
        t.append(chunk.to_vec()).await?;
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_as_printed_is_not_edited_and_a_changed_one_is() {
        let original = "{\"cashierId\":\"**** **** **** ****\"}";
        let line = |payload: &str| {
            serde_json::json!({
                "record": "dead_letter", "id": "a", "reason": "CARD_DATA",
                "source_topic": "till.events", "key": "S1/T1", "original": payload,
                "original_sha256": sha256_hex(original.as_bytes()), "detail": "ignored",
            })
            .to_string()
        };
        let topics = vec!["till.events".to_owned()];
        let same = letter_of_line(&line(original), 1).unwrap().unwrap();
        assert!(!same.edited && same.text);
        assert!(unreplayable(&same, &topics).is_some());
        let fixed = letter_of_line(&line("{\"cashierId\":\"C-1\"}"), 2)
            .unwrap()
            .unwrap();
        assert!(fixed.edited);
        assert_eq!(unreplayable(&fixed, &topics), None);
        let r = record_of(&fixed, "promo.sessions");
        assert_eq!(r.topic, "till.events");
        assert_eq!(r.key, b"S1/T1");
        assert!(r
            .headers
            .contains(&("content-type".into(), b"application/json".to_vec())));
        assert!(r.headers.contains(&(REPLAYED_FROM.into(), b"a".to_vec())));
        assert_eq!(r.timestamp_ms, None);
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            ("[]", "not a JSON object"),
            (r#"{"record":"alert"}"#, "not a dead letter"),
            (r#"{"source_topic":"t","original":"x"}"#, "id: required"),
            (r#"{"id":"a","original":"x"}"#, "source_topic: required"),
            (r#"{"id":"a","source_topic":"t"}"#, "required"),
            (
                r#"{"id":"a","source_topic":"t","original":"x","original_base64":"eA=="}"#,
                "give one",
            ),
            (
                r#"{"id":"a","source_topic":"t","original_base64":"%"}"#,
                "not base64",
            ),
        ] {
            let e = letter_of_line(line, 1).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
