//! The ingest stage: the front door for till events.
//!
//! For each record of `till.events`, in partition order: size check, decode (protobuf or proto3
//! JSON), contract validation, clock-skew check against the record timestamp, deduplication by
//! `event_id`; then either dead-letter it (with a reason code, redacted of card data) or route it
//! ([`route`]: rules, the router and the store table). It implements [`Processor`], so the stage loop in
//! `tillbridge_core::stage` gives it the at-least-once guarantee:
//!
//! **Guarantee.** A record's offset is acknowledged only after (1) every output for it
//! (`promo.sessions`, re-keyed facts, or the dead letter) is acknowledged by the log, and then
//! (2) its dedup index entry is flushed to sled. A crash before (1) re-processes the record and
//! re-sends identical outputs (deterministic ids); a crash between (1) and (2) re-sends them too;
//! a crash between (2) and the acknowledgement finds the id in the index and drops the replay as a
//! plain duplicate, whose outputs are already durable. No event is lost; none is applied twice by
//! a consumer that drops repeated output ids.
//!
//! **State that follows its partitions.** On Kafka ([`Ingest::with_changelog`]) every batch's
//! state changes are also written to a compacted changelog topic, after the batch's outputs are
//! durable and before its state and offsets; an instance with no state for a partition restores
//! it from there before reading the partition (`state`).
//!
//! Parts: [`Ingest`] (the processor), [`IngestStats`] (counters), the dedup index with expiry
//! (`dedup`), held whole in memory (dashmap) with a sled tree ordered by event time as its
//! durable copy, and the state's
//! values and changelog (`state`).

mod dedup;
mod error;
mod processor;
pub mod route;
mod state;

/// The dedup index on its own, for `benches/dedup_index.rs`; not a stable interface.
#[doc(hidden)]
pub use dedup::{DedupIndex, Seen};
pub use error::Error;
pub use processor::{Ingest, IngestStats};
pub use state::TillGaps;
