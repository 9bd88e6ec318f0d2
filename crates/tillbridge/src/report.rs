//! `tillbridge report`: the reconciliation report, from this process's reconciler state or, for
//! the whole deployment, rebuilt from the topics.

use std::path::{Path, PathBuf};

use anyhow::Context;
use prost::Message;
use tillbridge_core::config::Config;
use tillbridge_proto::pb;
use tillbridge_reconciler::{Reconciler, Report};
use tokio_util::sync::CancellationToken;

use crate::config::{fingerprint_key, reconciler_config};
use crate::tables::replay_reconciler;
use crate::transport::{limits, read_to_end, Transport};

/// Where a report is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFrom {
    /// The reconciler state under `state.dir`: what this process has seen; it cannot be read
    /// while a `run` holds it.
    State,
    /// The topics: the reconciler's inputs and compensations replayed into a scratch state, from
    /// any machine that reaches the cluster, while `run` is up. On a cluster this is the whole
    /// deployment's report, whichever instance owns which partitions.
    Topics,
}

/// The reconciliation report from the reconciler's state.
pub fn build_report(config: &Config) -> anyhow::Result<Report> {
    Ok(tillbridge_reconciler::report(
        &config.state.dir.join("reconciler"),
        &reconciler_config(config)?,
        &fingerprint_key(config)?,
    )?)
}

/// The reconciliation report rebuilt from the topics (see [`ReportFrom::Topics`]): the same
/// report a reconciler that read every partition to the topics' current end would give.
pub async fn build_report_from_topics(
    config: &Config,
    transport: &Transport,
    shutdown: &CancellationToken,
) -> anyhow::Result<Report> {
    // Created 0700: the scratch state holds coupon codes. Removed on drop.
    let scratch = tempfile::Builder::new()
        .prefix("tillbridge-report-")
        .tempdir()
        .context("creating a scratch directory for the report")?;
    let dir = scratch.path().join("reconciler");
    let (cfg, key) = (reconciler_config(config)?, fingerprint_key(config)?);
    {
        let mut p = Reconciler::open(&dir, &config.topics, &cfg, &key)?;
        replay_reconciler(transport, &config.topics, &mut p, limits(config), shutdown)
            .await?
            .context("shut down before the topics were read")?;
        tillbridge_core::stage::Processor::commit(&mut p).await?;
    }
    Ok(tillbridge_reconciler::report(&dir, &cfg, &key)?)
}

/// Writes the reconciliation report from the reconciler's state into `out`.
pub fn write_report(config: &Config, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let report = build_report(config)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(report.write(out)?)
}

/// The compensating actions (retractions included) and the fraud alerts on their topics, up to
/// the topics' end, in topic order, for the HTML page ([`Report::with_activity`]).
async fn read_activity(
    config: &Config,
    transport: &Transport,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<pb::CompensatingAction>, Vec<pb::FraudAlert>)> {
    let lim = limits(config);
    let mut compensations = Vec::new();
    for r in read_to_end(transport, &config.topics.compensations, lim, shutdown).await? {
        if let Some(p) = r.payload.as_deref() {
            compensations.push(
                pb::CompensatingAction::decode(p)
                    .with_context(|| format!("decoding {}", config.topics.compensations))?,
            );
        }
    }
    let mut alerts = Vec::new();
    for r in read_to_end(transport, &config.topics.alerts, lim, shutdown).await? {
        if let Some(p) = r.payload.as_deref() {
            alerts.push(
                pb::FraudAlert::decode(p)
                    .with_context(|| format!("decoding {}", config.topics.alerts))?,
            );
        }
    }
    Ok((compensations, alerts))
}

/// Writes the reconciliation report built from `from` into `out`, its HTML page with the
/// compensating actions and fraud alerts read from their topics (left out, with a warning, when
/// the topics cannot be read).
pub async fn write_report_from(
    config: &Config,
    out: &Path,
    from: ReportFrom,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<PathBuf>> {
    let (report, transport) = match from {
        ReportFrom::State => {
            let report = build_report(config)?;
            let transport = if config.kafka.is_none() && !config.embedded.path.exists() {
                // No log to read (and none to create here).
                Err(anyhow::anyhow!(
                    "no embedded log at {}",
                    config.embedded.path.display()
                ))
            } else {
                Transport::from_config(config)
            };
            (report, transport)
        }
        ReportFrom::Topics => {
            let transport = Transport::from_config(config)?;
            let report = build_report_from_topics(config, &transport, shutdown).await?;
            (report, Ok(transport))
        }
    };
    let activity = match transport {
        Ok(t) => read_activity(config, &t, shutdown).await,
        Err(e) => Err(e),
    };
    let report = match activity {
        Ok((compensations, alerts)) => report.with_activity(&compensations, &alerts),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "compensations and alerts left out of the report");
            report
        }
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(report.write(out)?)
}
