//! Writing a report's files.

use std::path::{Path, PathBuf};

use super::Report;
use crate::error::Error;

impl Report {
    /// Writes report.json, report.csv and report.html into `out_dir` (created when missing) and
    /// returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<Vec<PathBuf>, Error> {
        // Reports name coupons and profiles: readable by their owner only.
        tillbridge_core::store::private_dir(out_dir).map_err(|source| Error::Io {
            path: out_dir.to_owned(),
            source,
        })?;
        let files = [
            ("report.json", self.to_json()?),
            ("report.csv", self.to_csv()),
            ("report.html", self.to_html()),
        ];
        let mut paths = Vec::with_capacity(files.len());
        for (name, body) in files {
            let path = out_dir.join(name);
            tillbridge_core::store::write_private(&path, body.as_bytes()).map_err(|source| {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            })?;
            paths.push(path);
        }
        Ok(paths)
    }
}
