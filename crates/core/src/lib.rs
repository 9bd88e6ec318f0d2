//! Shared foundation of tillbridge.
//!
//! - [`domain`]: validated till events and promotion-core records (money in integer minor units).
//! - [`config`]: the strict configuration every stage reads.
//! - [`log`]: the partitioned event log with offsets, implemented by Kafka ([`log::KafkaLog`]) and by
//!   an embedded sled-backed log ([`log::EmbeddedLog`]).
//! - [`stage`]: the loop that drives a stage over a log with the at-least-once guarantee.
//! - [`store`]: opening sled state safely (verify, and rebuild from the topics when damaged).
//! - [`pan`]: card-number (PAN) detection and redaction.
//! - [`ids`]: deterministic output ids.
//! - [`crash`]: crash points for the kill-between-writes tests.

pub mod config;
pub mod crash;
pub mod domain;
mod error;
pub mod ids;
pub mod log;
pub mod metrics;
pub mod pan;
pub mod stage;
pub mod store;

pub use error::{Error, Result};
