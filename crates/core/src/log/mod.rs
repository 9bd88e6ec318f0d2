//! The partitioned event log every stage reads and writes: records with a topic, partition and
//! offset, and consumer positions per group. Two implementations share one interface: Kafka
//! ([`KafkaLog`], rdkafka) and an embedded sled-backed log ([`EmbeddedLog`]) for a first look or a
//! small single-site install.
//!
//! The interface is built for at-least-once stages: a [`Source`] hands out records, a [`Sink`]
//! returns only once every record it was given is durable, and a [`Source::ack`] moves a
//! partition's position past a record only when its caller says that record's effects are durable.

mod api;
mod changelog;
mod embedded;
mod kafka;
mod merge;

pub use api::*;
pub use changelog::{changelog_topic, StateRestore};
pub use embedded::{EmbeddedLog, EmbeddedSink, EmbeddedSource};
pub use kafka::admin::{TopicSpec, TopicState};
pub use kafka::{librdkafka_build, KafkaLog, KafkaSink, KafkaSource, Resume};
