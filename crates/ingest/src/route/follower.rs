//! The store table's follower: a stage over `promo.stores` ([`Processor`]) that applies each row
//! to the shared [`StoreTable`] and dead-letters a row that breaks the contract (the dead letter
//! then goes through the stage loop like any output: retried until durable).
//!
//! Its state is the table itself, in memory, rebuilt from the topic's beginning at every start:
//! the caller reads the topic to its end first (before ingest routes anything), then follows it
//! with a reader that starts from the beginning again; rows at offsets already applied are
//! skipped, so following never moves the table back to an older row, and never dead-letters a
//! row twice.

use std::collections::BTreeMap;

use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::stage::Processor;

use super::rules::StoreTable;
use crate::error::Error;

/// Applies `promo.stores` rows to a [`StoreTable`].
#[derive(Debug)]
pub struct StoreFollower {
    table: StoreTable,
    dlq: String,
    /// The next offset of each partition not applied yet.
    next: BTreeMap<(String, i32), i64>,
}

impl StoreFollower {
    /// A follower filling `table`; refused rows go to `dlq`.
    pub fn new(table: StoreTable, dlq: &str) -> Self {
        StoreFollower {
            table,
            dlq: dlq.to_owned(),
            next: BTreeMap::new(),
        }
    }

    /// The table it fills.
    pub fn table(&self) -> &StoreTable {
        &self.table
    }
}

impl Processor for StoreFollower {
    type Error = Error;

    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Error> {
        let mut out = Vec::new();
        for r in batch {
            let next = self.next.entry((r.topic.clone(), r.partition)).or_insert(0);
            if r.offset < *next {
                continue;
            }
            *next = r.offset + 1;
            if let Err(rej) = self.table.apply(r) {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    reason = rej.reason.code(), detail = %rej.detail, "store row refused");
                tillbridge_core::metrics::DEAD_LETTERS
                    .with_label_values(&[rej.reason.code()])
                    .inc();
                out.push(tillbridge_core::log::dead_letter(
                    r,
                    &self.dlq,
                    rej.reason.code(),
                    &rej.detail,
                ));
            }
        }
        Ok(out)
    }

    async fn commit(&mut self) -> Result<(), Error> {
        // The table is in memory and rebuilt from the topic at every start: nothing to persist.
        Ok(())
    }
}
