//! The ingest crate's one error type.

/// Errors of the ingest stage. All of them stop the stage; retryable conditions (a broker that is
/// down) are retried by the stage loop before they become one of these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] tillbridge_core::Error),
    #[error("state store: {0}")]
    State(String),
    #[error(transparent)]
    Rule(#[from] crate::route::rules::RuleError),
}
