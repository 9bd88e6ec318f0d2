//! [`Error`], the errors that stop the stage.

use crate::config::ConfigError;

/// Errors of the fraud-guard stage. Malformed records are not errors (they are counted and
/// skipped); these stop the stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] tillbridge_core::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stored state could not be written or read back.
    #[error("fraud-guard state: {0}")]
    State(String),
}
