//! A record that breaks the contract.

use tillbridge_domain::pan;
use tillbridge_domain::RejectReason;

/// A record that breaks the contract: the reason code and a detail naming the field. The detail
/// never holds card digits: [`Rejection::new`] redacts any, whatever put them there (a decoder's
/// message can quote a number read from the input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let detail = if pan::contains(&detail) {
            String::from_utf8_lossy(&pan::redact(detail.as_bytes())).into_owned()
        } else {
            detail
        };
        Rejection { reason, detail }
    }
    pub(crate) fn missing(field: &str) -> Self {
        Self::new(RejectReason::MissingField, format!("{field} is required"))
    }
    pub(crate) fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(RejectReason::InvalidField, format!("{field}: {why}"))
    }
}
