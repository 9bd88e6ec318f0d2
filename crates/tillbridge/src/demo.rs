//! `tillbridge demo`: a simulated fleet through every stage on the embedded log, ending in a
//! reconciliation report and a printed summary. Deterministic for a given seed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use prost::Message;
use tillbridge_core::config::Config;
use tillbridge_core::domain::RejectReason;
use tillbridge_core::log::EmbeddedLog;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::{sim, Stages, Transport};

/// What the demo did.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    pub seed: u64,
    pub events_in: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub dead_lettered: BTreeMap<String, u64>,
    pub routed: BTreeMap<String, u64>,
    pub compensations: BTreeMap<String, u64>,
    pub alerts: BTreeMap<String, u64>,
    /// Distinct subjects alerted per rule.
    pub alert_subjects: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Every alert, one line each (rule, subject, score, late, evidence).
    pub alert_lines: Vec<String>,
    pub cases: String,
    pub report_files: Vec<PathBuf>,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tillbridge demo (seed {})", self.seed)?;
        writeln!(f, "  planted by the simulator:")?;
        for p in sim::PLANTED {
            writeln!(f, "    - {p}")?;
        }
        writeln!(f, "  events in:          {}", self.events_in)?;
        writeln!(f, "  accepted:           {}", self.accepted)?;
        writeln!(f, "  duplicates dropped: {}", self.duplicates)?;
        let dead: u64 = self.dead_lettered.values().sum();
        writeln!(f, "  dead-lettered:      {dead}")?;
        for (reason, n) in &self.dead_lettered {
            writeln!(f, "    {reason:<20} {n}")?;
        }
        writeln!(f, "  routed:")?;
        for (topic, n) in &self.routed {
            writeln!(f, "    {topic:<26} {n}")?;
        }
        writeln!(f, "  cases:")?;
        for line in self.cases.lines() {
            writeln!(f, "    {line}")?;
        }
        writeln!(f, "  compensating actions:")?;
        for (kind, n) in &self.compensations {
            writeln!(f, "    {kind:<26} {n}")?;
        }
        writeln!(f, "  fraud alerts:")?;
        for (rule, n) in &self.alerts {
            let subjects = self
                .alert_subjects
                .get(rule)
                .map(|s| s.iter().cloned().collect::<Vec<_>>().join(", "));
            writeln!(f, "    {rule:<26} {n:<4} {}", subjects.unwrap_or_default())?;
        }
        writeln!(f, "  report:")?;
        for p in &self.report_files {
            writeln!(f, "    {}", p.display())?;
        }
        Ok(())
    }
}

/// Runs the demo with its state under `out` (recreated on each run).
pub async fn run(
    seed: u64,
    out: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<DemoSummary> {
    let work = out.join("data");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let mut config = Config::default();
    config.embedded.path = work.join("log");
    config.state.dir = work.join("state");
    config.fingerprint.key = format!("demo-key-{seed}");
    std::fs::create_dir_all(&config.embedded.path)?;
    let log = EmbeddedLog::open(&config.embedded.path, config.embedded.partitions)?;
    let transport = Transport::Embedded(log.clone());

    let fleet = sim::fleet(
        seed,
        &config.topics.till_events,
        &config.topics.coupons,
        &config.topics.loyalty_balances,
    );
    let events_in = fleet.till_events.len() as u64;
    log.append(fleet.coupons).await?;
    log.append(fleet.balances).await?;
    log.append(fleet.till_events).await?;

    // Ingest first, then the stages that read its outputs, each until its inputs are consumed.
    let ingest_only = Stages {
        ingest: true,
        ..Default::default()
    };
    crate::run(&config, &transport, ingest_only, true, shutdown.clone()).await?;
    let downstream = Stages {
        reconciler: true,
        fraud_guard: true,
        ..Default::default()
    };
    crate::run(&config, &transport, downstream, true, shutdown).await?;

    let mut summary = DemoSummary {
        seed,
        events_in,
        ..Default::default()
    };
    let sessions = log.read_all(&config.topics.sessions)?;
    summary.accepted = sessions.len() as u64;
    for topic in [
        &config.topics.sessions,
        &config.topics.redemptions,
        &config.topics.loyalty,
    ] {
        summary
            .routed
            .insert(topic.clone(), log.read_all(topic)?.len() as u64);
    }
    let mut accepted_ids = std::collections::BTreeSet::new();
    for r in &sessions {
        if let Some(id) = r.header("tillbridge-event-id") {
            accepted_ids.insert(id.to_vec());
        }
    }
    for r in log.read_all(&config.topics.dlq)? {
        let dl = pb::DeadLetter::decode(r.payload.as_deref().unwrap_or_default())?;
        *summary.dead_lettered.entry(dl.reason).or_default() += 1;
    }
    let dead: u64 = summary.dead_lettered.values().sum();
    summary.duplicates = events_in - summary.accepted - dead;
    debug_assert!(summary
        .dead_lettered
        .keys()
        .all(|k| RejectReason::from_code(k).is_some()));
    let mut compensations = Vec::new();
    for r in log.read_all(&config.topics.compensations)? {
        let c = pb::CompensatingAction::decode(r.payload.as_deref().unwrap_or_default())?;
        let kind = pb::CompensationKind::try_from(c.kind)
            .map(|k| k.as_str_name().to_owned())
            .unwrap_or_else(|_| c.kind.to_string());
        *summary.compensations.entry(kind).or_default() += 1;
        compensations.push(c);
    }
    let mut alerts = Vec::new();
    for r in log.read_all(&config.topics.alerts)? {
        let a = pb::FraudAlert::decode(r.payload.as_deref().unwrap_or_default())?;
        alerts.push(a.clone());
        let rule = pb::AlertRule::try_from(a.rule)
            .map(|k| k.as_str_name().to_owned())
            .unwrap_or_else(|_| a.rule.to_string());
        *summary.alerts.entry(rule.clone()).or_default() += 1;
        summary.alert_lines.push(format!(
            "{rule} {} score={} late={} {}",
            a.subject, a.risk_score, a.late, a.evidence
        ));
        summary
            .alert_subjects
            .entry(rule)
            .or_default()
            .insert(a.subject);
    }
    // The HTML page shows the compensations and alerts too; report.json and report.csv do not.
    let report = crate::report::build_report(&config)?.with_activity(&compensations, &alerts);
    summary.cases = report.summary().to_string();
    summary.report_files = report.write(out)?;
    Ok(summary)
}
