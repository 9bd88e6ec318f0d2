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
    /// The reconciler state under `state.dir`: what this process has seen. While an embedded
    /// `run` holds it, the report snapshot that process writes every 10 s (and at its stop).
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

/// How often an embedded `run` with the reconciler writes its report snapshot.
pub(crate) const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Where an embedded `run` keeps its latest report snapshot: a symbolic link, replaced
/// atomically, to the newest `report-snapshot.<millis>` directory beside it.
fn snapshot_link(config: &Config) -> PathBuf {
    config.state.dir.join("report-snapshot")
}

/// Writes the report of `reader`'s committed state, with the compensations and alerts on their
/// topics, as the newest snapshot (see [`snapshot_link`]), and removes all but the one before
/// it (which a `report` may still be copying).
pub(crate) async fn write_snapshot(
    config: &Config,
    transport: &Transport,
    reader: &tillbridge_reconciler::ReportReader,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (compensations, alerts) = read_activity(config, transport, shutdown).await?;
    let report = reader.report()?.with_activity(&compensations, &alerts);
    let millis = chrono::Utc::now().timestamp_millis();
    let name = format!("report-snapshot.{millis}");
    let dir = config.state.dir.join(&name);
    report.write(&dir)?;
    let link = snapshot_link(config);
    let tmp = config
        .state
        .dir
        .join(format!(".report-snapshot.link.{millis}"));
    std::os::unix::fs::symlink(&name, &tmp)
        .with_context(|| format!("linking {}", tmp.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("replacing {}", link.display()))?;
    let mut older: Vec<(i64, PathBuf)> = std::fs::read_dir(&config.state.dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("report-snapshot.")?
                .parse()
                .ok()?;
            (n < millis).then(|| (n, e.path()))
        })
        .collect();
    older.sort();
    older.pop(); // the one before, kept
    for (_, path) in older {
        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// An embedded `run`'s snapshots: one every [`SNAPSHOT_EVERY`] until `stop` (a failed one is
/// logged and the next tried). `run` writes a last one once its stages have stopped.
pub(crate) async fn keep_snapshots(
    config: Config,
    transport: Transport,
    reader: tillbridge_reconciler::ReportReader,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SNAPSHOT_EVERY) => {}
        }
        if let Err(e) = write_snapshot(&config, &transport, &reader, &stop).await {
            tracing::warn!(error = %format!("{e:#}"), "writing the report snapshot failed");
        }
    }
}

/// Copies the newest report snapshot into `out`, or `None` when there is none.
fn copy_snapshot(config: &Config, out: &Path) -> anyhow::Result<Option<Vec<PathBuf>>> {
    let link = snapshot_link(config);
    let Ok(dir) = std::fs::canonicalize(&link) else {
        return Ok(None);
    };
    let taken = std::fs::symlink_metadata(&link)
        .and_then(|m| m.modified())
        .map(chrono::DateTime::<chrono::Utc>::from)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|_| "an unknown time".into());
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let from = entry?.path();
        let Some(name) = from.file_name() else {
            continue;
        };
        let to = out.join(name);
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        files.push(to);
    }
    files.sort();
    tracing::warn!(
        snapshot_taken = %taken,
        "the reconciler state is held by a running `tillbridge run`: this is the report snapshot \
         it wrote (one every {} s, and at its stop)",
        SNAPSHOT_EVERY.as_secs()
    );
    Ok(Some(files))
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
            let report = match build_report(config) {
                Ok(report) => report,
                Err(e)
                    if matches!(
                        e.downcast_ref::<tillbridge_reconciler::Error>(),
                        Some(tillbridge_reconciler::Error::Held(_))
                    ) =>
                {
                    // A running embedded `run` holds the state and the log: its snapshot.
                    return copy_snapshot(config, out)?.ok_or(e);
                }
                Err(e) => return Err(e),
            };
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
