use std::time::Duration;

/// Errors of the shared foundation. [`Error::is_retryable`] tells whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; start-up must stop.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker could not be reached or timed out; retrying can help.
    #[error("broker unavailable: {0}")]
    BrokerUnavailable(String),
    /// A record could not be delivered to the log; retrying can help.
    #[error("delivery to topic {topic} failed: {reason}")]
    Delivery { topic: String, reason: String },
    /// The Kafka client failed in a way retrying will not mend.
    #[error("kafka client error: {0}")]
    Kafka(String),
    /// Local state (sled) failed: I/O error, disk full, corruption. The stage must stop.
    #[error("state store error at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: sled::Error,
    },
    /// Local state holds data this version cannot read.
    #[error("corrupt state in {0}")]
    Corrupt(String),
    /// An operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The stage was asked to stop.
    #[error("shut down")]
    Shutdown,
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::BrokerUnavailable(_) | Error::Delivery { .. } | Error::Timeout(_)
        )
    }

    pub(crate) fn storage(path: impl Into<String>, source: sled::Error) -> Self {
        Error::Storage {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
