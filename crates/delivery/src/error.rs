//! The delivery crate's one error type.

/// Errors of the delivery crate: configuration mistakes (at start-up) and failures of the
/// outbox's local storage. Neither is helped by retrying; an unreachable promotion core is not
/// an error here (its requests wait and are retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("delivery: {0}")]
    Config(String),
    #[error(transparent)]
    Core(#[from] tillbridge_core::Error),
    #[error("outbox state: {0}")]
    State(String),
}
