//! `tillbridge publish`: checks JSON-lines events against the contract, reports every problem
//! by line number, and appends the good ones (as the JSON the integrator wrote, with a
//! `content-type: application/json` header) to the till events topic.

use std::fmt;
use std::io::BufRead;

use tillbridge_core::domain::RejectReason;
use tillbridge_core::log::OutRecord;
use tillbridge_proto::pb;

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

/// Checks one JSON line; the event when it keeps the contract.
pub fn check_line(line: &str) -> Result<pb::TillEvent, tillbridge_proto::Rejection> {
    let raw: pb::TillEvent =
        tillbridge_proto::from_json("tillbridge.v1.TillEvent", line.as_bytes())?;
    tillbridge_proto::validate(&raw)?;
    Ok(raw)
}

/// Reads `input` line by line; appends the valid events to `topic` unless `check_only`.
pub async fn publish(
    input: impl BufRead,
    transport: &Transport,
    topic: &str,
    check_only: bool,
) -> anyhow::Result<PublishReport> {
    let mut report = PublishReport {
        checked_only: check_only,
        ..Default::default()
    };
    let mut batch = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        match check_line(&line) {
            Ok(raw) => {
                if !check_only {
                    let key = format!("{}/{}", raw.store_id, raw.till_id);
                    batch.push(
                        OutRecord::new(topic, key, line.into_bytes())
                            .with_header("content-type", "application/json"),
                    );
                }
            }
            Err(r) => report.problems.push((n, r.reason, r.detail)),
        }
        if batch.len() >= PUBLISH_BATCH {
            report.published += batch.len() as u64;
            transport.append(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        report.published += batch.len() as u64;
        transport.append(batch).await?;
    }
    Ok(report)
}
