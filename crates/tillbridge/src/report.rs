//! `tillbridge report`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tillbridge_core::config::Config;
use tillbridge_reconciler::Report;

/// The reconciliation report from the reconciler's state.
pub fn build_report(config: &Config) -> anyhow::Result<Report> {
    Ok(tillbridge_reconciler::report(
        &config.state.dir.join("reconciler"),
        &crate::config::reconciler_config(config)?,
        &crate::config::fingerprint_key(config)?,
    )?)
}

/// Writes the reconciliation report from the reconciler's state into `out`.
pub fn write_report(config: &Config, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let report = build_report(config)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(report.write(out)?)
}
