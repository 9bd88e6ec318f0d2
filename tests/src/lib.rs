//! The system tests' kit: what every test under `tests/tests/` shares.
//!
//! - [`kafka`] (re-exported here): the broker the project's script started, topics and groups no
//!   other test uses, an outside client's producer, and readers that follow a topic.
//! - [`events`]: till events built the way an outside client builds them (hand-written proto3
//!   JSON, or protobuf bytes), and the envelope `tillbridge publish` reads.
//! - [`process`]: the workspace's `tillbridge` binary (built once per test process), a config
//!   file written from a [`Config`](tillbridge_core::config::Config), spawning with a log file.
//! - [`same_answers`]: the records of the determinism variants and the outcome they must share.
//! - [`flaky_core`]: a promotion core that misbehaves on purpose, for the HTTP destination.

#![allow(dead_code, clippy::unwrap_used)]

pub mod events;
pub mod flaky_core;
pub mod kafka;
pub mod process;
pub mod same_answers;

pub use kafka::*;
