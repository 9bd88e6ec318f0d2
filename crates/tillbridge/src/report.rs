//! `tillbridge report`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tillbridge_core::config::Config;

/// Writes the reconciliation report from the reconciler's state.
pub fn write_report(config: &Config, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let report =
        tillbridge_reconciler::report(&config.state.dir.join("reconciler"), &config.reconciler)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(report.write(out)?)
}
