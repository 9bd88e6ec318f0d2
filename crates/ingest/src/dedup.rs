//! The dedup index: `event_id -> (content hash, event time)`, bounded by a window of event time.
//!
//! Entries live in sled (`dedup` tree) with a second tree ordered by event time (`dedup_expiry`),
//! so expiring everything older than `watermark - window` is a range scan, and the index stays
//! bounded by the window, not by history. A dashmap in front answers for ids seen recently,
//! including ids of the batch in flight that are not yet in sled.

use dashmap::DashMap;
use uuid::Uuid;

use crate::Error;

/// Most ids the in-memory set keeps beyond the batch in flight.
const HOT_CAPACITY: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    New,
    Duplicate,
    Conflict,
}

#[derive(Debug)]
pub(crate) struct DedupIndex {
    tree: sled::Tree,
    expiry: sled::Tree,
    hot: DashMap<Uuid, [u8; 32]>,
    /// Entries of the batch in flight, written at commit.
    pending: Vec<(Uuid, [u8; 32], i64)>,
    /// Entries in `tree` (sled's `len` is a full scan, so it is counted once at open).
    count: usize,
}

fn storage(e: sled::Error) -> Error {
    Error::State(e.to_string())
}

impl DedupIndex {
    pub(crate) fn new(tree: sled::Tree, expiry: sled::Tree) -> Self {
        let count = tree.len();
        DedupIndex {
            tree,
            expiry,
            hot: DashMap::new(),
            pending: Vec::new(),
            count,
        }
    }

    pub(crate) fn check(&mut self, id: Uuid, hash: [u8; 32], event_ms: i64) -> Result<Seen, Error> {
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
                self.pending.push((id, hash, event_ms));
                Seen::New
            }
        })
    }

    /// Writes the pending entries and expires those older than `horizon_ms` (event time). The
    /// caller flushes.
    pub(crate) fn commit(&mut self, horizon_ms: Option<i64>) -> Result<usize, Error> {
        let mut batch = sled::Batch::default();
        let mut exp = sled::Batch::default();
        let inserted = self.pending.len();
        for (id, hash, ms) in self.pending.drain(..) {
            let mut v = hash.to_vec();
            v.extend_from_slice(&ms.to_be_bytes());
            batch.insert(id.as_bytes(), v);
            exp.insert(expiry_key(ms, &id), &[]);
        }
        let mut expired = 0;
        if let Some(h) = horizon_ms {
            let end = expiry_key(h, &Uuid::nil());
            for item in self.expiry.range(..end) {
                let (k, _) = item.map_err(storage)?;
                if let Some(id) = k.get(8..24).and_then(|b| Uuid::from_slice(b).ok()) {
                    batch.remove(id.as_bytes());
                    self.hot.remove(&id);
                }
                exp.remove(k);
                expired += 1;
            }
        }
        self.tree.apply_batch(batch).map_err(storage)?;
        self.expiry.apply_batch(exp).map_err(storage)?;
        self.count = (self.count + inserted).saturating_sub(expired);
        if self.hot.len() > HOT_CAPACITY {
            self.hot.clear();
        }
        Ok(expired)
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

/// Event time first (sign-flipped so negative times sort too), then the id.
fn expiry_key(ms: i64, id: &Uuid) -> Vec<u8> {
    let mut k = ((ms as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}
