//! Shared foundation of tillbridge.
//!
//! - [`domain`]: validated till events and promotion-core records (money in integer minor units),
//!   re-exported from the leaf crate `tillbridge-domain` with [`pan`] and [`ids`].
//! - [`config`]: the strict configuration every stage reads.
//! - [`log`]: the partitioned event log with offsets, implemented by Kafka ([`log::KafkaLog`]) and by
//!   an embedded sled-backed log ([`log::EmbeddedLog`]).
//! - [`stage`]: the loop that drives a stage over a log with the at-least-once guarantee.
//! - [`store`]: opening sled state safely (verify, and rebuild from the topics when damaged).
//! - [`crash`]: crash points for the kill-between-writes tests.

pub mod config;
pub mod crash;
mod error;
pub mod health;
pub mod log;
pub mod metrics;
pub mod stage;
pub mod store;

pub use error::{Error, Result};
/// The leaf crate's modules, under the names the stages use.
pub use tillbridge_domain as domain;
pub use tillbridge_domain::{ids, pan};
