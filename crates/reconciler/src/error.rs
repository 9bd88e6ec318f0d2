//! The error type of the reconciler.

use std::path::PathBuf;

/// Errors of the reconciler.
///
/// A malformed input record is not an error: it is counted and skipped, so one bad record never
/// stops the stage. These are the failures the stage cannot work around.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared foundation failed (state store, configuration, log).
    #[error(transparent)]
    Core(#[from] tillbridge_core::Error),
    /// sled failed while reading or writing the reconciler's state.
    #[error("reconciler state store error: {0}")]
    Storage(#[from] sled::Error),
    /// A stored value could not be read back. `what` names the kind of entry, never a coupon code.
    #[error("corrupt reconciler state ({what}): {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// `report` was asked for a state that a running process holds (sled opens in one process
    /// at a time).
    #[error(
        "the reconciler state at {0} is held by a running `tillbridge run` and there is no \
         report snapshot beside it (an embedded `run` writes one every 10 s): wait for it, or \
         stop the process (SIGTERM) and run `report` again; with [kafka], `report` reads the \
         topics and needs no stop"
    )]
    Held(PathBuf),
    /// `report` was asked for a state directory that does not exist.
    #[error("no reconciler state at {0}")]
    NoState(PathBuf),
    /// Writing a report file failed.
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stored value (or a report) that could not be read or written: `what` names its kind.
    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Error {
        Error::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}
