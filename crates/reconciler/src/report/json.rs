//! The JSON form of a report.

use super::Report;
use crate::error::Error;

impl Report {
    /// The JSON form (pretty, with a final newline).
    pub fn to_json(&self) -> Result<String, Error> {
        let mut s = serde_json::to_string_pretty(self).map_err(|e| Error::corrupt("report", e))?;
        s.push('\n');
        Ok(s)
    }
}
