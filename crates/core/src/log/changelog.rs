//! Changelog topics: a stage's state mirrored, partition by partition, to a compacted topic, so
//! that an instance that has no state for a partition (new, wiped, rebuilt after damage, or never
//! assigned it before) restores it from there instead of replaying the partition's input.
//!
//! The records of one batch go to the changelog after the batch's outputs are durable and
//! before its state is committed and its offsets stored (`stage::run`). So a changelog never
//! holds state whose outputs are not durable: a restore may end ahead of the last position
//! record it read (the changelog of a batch half written), and what it skips then was sent.
//! Changelog partition `p` mirrors input partition `p` of the stage's one input topic.

use super::api::Record;
use crate::Result;

/// A stage's state that a changelog topic mirrors, as the restore sees it. The calls come from
/// the consumer's rebalance callback, between batches (never while a batch is in flight).
pub trait StateRestore: Send + Sync + std::fmt::Debug {
    /// The changelog topic.
    fn topic(&self) -> &str;

    /// Applies records read from changelog partition `partition`, in offset order. Applying the
    /// same records twice gives the same state.
    fn apply(&self, partition: i32, records: &[Record]) -> Result<()>;

    /// The next changelog offset of `partition` the local state reflects with every record
    /// before it (its own writes, and what it restored), when it knows one. A partition the
    /// state already holds a position for is brought up to date from there: what other
    /// instances wrote while they owned the partition. `None` (a state from before checkpoints,
    /// or one whose own writes were interleaved with another writer's) leaves it to the input.
    fn checkpoint(&self, partition: i32) -> Option<i64>;

    /// Makes the restored state of input partition `input` durable, with `changelog_next` (the
    /// next changelog offset now reflected) as its checkpoint, and returns the next offset of the
    /// input partition it reflects: the later of the state's own and the changelog's (`None`
    /// when neither holds one: the input is then read from its beginning).
    fn finish(&self, input: &(String, i32), changelog_next: i64) -> Result<Option<i64>>;
}

/// The changelog topic of a stage's state in consumer group `group`.
pub fn changelog_topic(group: &str) -> String {
    format!("{group}-changelog")
}
