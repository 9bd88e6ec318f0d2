//! The dedup index: `event_id -> (content hash, event time)`, bounded by a window of event time.
//!
//! Entries live in sled (`dedup` tree) with a second tree ordered by event time (`dedup_expiry`),
//! so expiring everything older than `watermark - window` is a range scan, and the index stays
//! bounded by the window, not by history. A dashmap in front answers for ids seen recently,
//! including ids of the batch in flight that are not yet in sled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use uuid::Uuid;

use crate::error::Error;

/// Most ids the in-memory set keeps beyond the batch in flight.
const HOT_CAPACITY: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// The writes of one batch to the dedup trees.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) entries: sled::Batch,
    pub(crate) expiry: sled::Batch,
    /// The entries added: id, content hash, event time, input partition.
    pub(crate) inserted: Vec<(Uuid, [u8; 32], i64, i32)>,
    /// The entries expired, with the input partition that added them when known.
    pub(crate) expired: Vec<(Uuid, Option<i32>)>,
}

#[derive(Debug)]
pub(crate) struct DedupIndex {
    tree: sled::Tree,
    expiry: sled::Tree,
    hot: DashMap<Uuid, [u8; 32]>,
    /// Entries of the batch in flight (with their input partition), written at commit.
    pending: Vec<(Uuid, [u8; 32], i64, i32)>,
    /// Entries in `tree` (sled's `len` is a full scan, so it is counted once at open, then
    /// kept by the commits and by a restore from the changelog).
    count: Arc<AtomicUsize>,
}

fn storage(e: sled::Error) -> Error {
    Error::State(e.to_string())
}

impl DedupIndex {
    pub(crate) fn new(tree: sled::Tree, expiry: sled::Tree) -> Self {
        let count = Arc::new(AtomicUsize::new(tree.len()));
        DedupIndex {
            tree,
            expiry,
            hot: DashMap::new(),
            pending: Vec::new(),
            count,
        }
    }

    /// Whether `id` was accepted with content `hash` (a duplicate), with another content (a
    /// conflict), or is new: then it is staged as accepted from input `partition`.
    pub(crate) fn check(
        &mut self,
        id: Uuid,
        hash: [u8; 32],
        event_ms: i64,
        partition: i32,
    ) -> Result<Seen, Error> {
        let known = match self.hot.get(&id) {
            Some(h) => Some(*h),
            None => self
                .tree
                .get(id.as_bytes())
                .map_err(storage)?
                .and_then(|v| v.get(..32).and_then(|s| <[u8; 32]>::try_from(s).ok())),
        };
        Ok(match known {
            Some(h) if h == hash => Seen::Duplicate,
            Some(_) => Seen::Conflict,
            None => {
                self.hot.insert(id, hash);
                self.pending.push((id, hash, event_ms, partition));
                Seen::New
            }
        })
    }

    /// The writes of the pending entries and of the expiry of those older than `horizon_ms`
    /// (event time), for the `dedup` and `dedup_expiry` trees. The caller applies them in one
    /// transaction with the rest of the stage's state, then calls [`DedupIndex::committed`].
    pub(crate) fn stage(&mut self, horizon_ms: Option<i64>) -> Result<Staged, Error> {
        let mut staged = Staged {
            entries: sled::Batch::default(),
            expiry: sled::Batch::default(),
            inserted: std::mem::take(&mut self.pending),
            expired: Vec::new(),
        };
        for (id, hash, ms, partition) in &staged.inserted {
            staged.entries.insert(id.as_bytes(), entry_value(hash, *ms));
            staged
                .expiry
                .insert(expiry_key(*ms, id), &partition.to_be_bytes());
        }
        if let Some(h) = horizon_ms {
            let end = expiry_key(h, &Uuid::nil());
            for item in self.expiry.range(..end) {
                let (k, v) = item.map_err(storage)?;
                if let Some(id) = k.get(8..24).and_then(|b| Uuid::from_slice(b).ok()) {
                    staged.entries.remove(id.as_bytes());
                    // States written before the changelog existed hold no partition here.
                    let partition = <[u8; 4]>::try_from(v.as_ref()).ok().map(i32::from_be_bytes);
                    staged.expired.push((id, partition));
                }
                staged.expiry.remove(k);
            }
        }
        Ok(staged)
    }

    /// Takes note that `staged` was applied; returns how many entries expired.
    pub(crate) fn committed(&mut self, staged: &Staged) -> usize {
        for (id, _) in &staged.expired {
            self.hot.remove(id);
        }
        let expired = staged.expired.len();
        let count = (self.len() + staged.inserted.len()).saturating_sub(expired);
        self.count.store(count, Ordering::Relaxed);
        if self.hot.len() > HOT_CAPACITY {
            self.hot.clear();
        }
        expired
    }

    /// The two trees, for the caller's transaction.
    pub(crate) fn trees(&self) -> (&sled::Tree, &sled::Tree) {
        (&self.tree, &self.expiry)
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The entry count, shared with a restore that adds entries.
    pub(crate) fn counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }
}

/// An entry's value: the content hash, then the event time.
pub(crate) fn entry_value(hash: &[u8; 32], ms: i64) -> Vec<u8> {
    let mut v = hash.to_vec();
    v.extend_from_slice(&ms.to_be_bytes());
    v
}

/// The event time of an entry's value.
pub(crate) fn entry_ms(value: &[u8]) -> Option<i64> {
    value
        .get(32..40)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes)
}

/// Event time first (sign-flipped so negative times sort too), then the id.
pub(crate) fn expiry_key(ms: i64, id: &Uuid) -> Vec<u8> {
    let mut k = ((ms as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}
