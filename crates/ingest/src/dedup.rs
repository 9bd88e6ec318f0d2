//! The dedup index: `event_id -> (content hash, event time)`, bounded by a window of event time.
//!
//! The whole index lives in memory (a dashmap of id to a 128-bit prefix of the content hash and
//! the event time), so checking an id never reads the disk. Its durable copy is one sled tree
//! ordered by event time (`dedup_expiry`: event time and id, then the input partition and the
//! full content hash), so a batch's new entries are near-sequential writes, expiring everything
//! older than `watermark - window` is a range scan, and the index stays bounded by the window,
//! not by history. At open the map is rebuilt by one scan of that tree. On Kafka the changelog
//! topic is a second durable copy (`state.rs`).

use std::sync::Arc;

use dashmap::DashMap;
use uuid::Uuid;

use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// What the map keeps of an entry: the first 16 bytes of the content hash (two contents of one
/// id collide with probability 2^-128) and the event time (the entry's key in the tree).
pub(crate) type Held = ([u8; 16], i64);

/// The index in memory, shared with the changelog's restore.
pub(crate) type Index = Arc<DashMap<Uuid, Held>>;

/// The writes of one batch to the dedup tree.
#[derive(Debug)]
pub struct Staged {
    pub(crate) expiry: sled::Batch,
    /// The entries added: id, content hash, event time, input partition.
    pub(crate) inserted: Vec<(Uuid, [u8; 32], i64, i32)>,
    /// The entries expired, with the input partition that added them when known.
    pub(crate) expired: Vec<(Uuid, Option<i32>)>,
}

#[derive(Debug)]
pub struct DedupIndex {
    expiry: sled::Tree,
    index: Index,
    /// Entries of the batch in flight (with their input partition), written at commit.
    pending: Vec<(Uuid, [u8; 32], i64, i32)>,
}

fn storage(e: sled::Error) -> Error {
    Error::State(e.to_string())
}

pub(crate) fn held(hash: &[u8; 32], ms: i64) -> Held {
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&hash[..16]);
    (prefix, ms)
}

impl DedupIndex {
    /// The index kept in `expiry`, loaded into memory.
    pub fn open(expiry: sled::Tree) -> Result<Self, Error> {
        let index = DashMap::new();
        for item in expiry.iter() {
            let (k, v) = item.map_err(storage)?;
            let parsed = parse_expiry_key(&k).zip(expiry_hash(&v));
            if let Some(((ms, id), hash)) = parsed {
                index.insert(id, held(&hash, ms));
            }
        }
        Ok(DedupIndex {
            expiry,
            index: Arc::new(index),
            pending: Vec::new(),
        })
    }

    /// Whether `id` was accepted with content `hash` (a duplicate), with another content (a
    /// conflict), or is new: then it is staged as accepted from input `partition`.
    pub fn check(
        &mut self,
        id: Uuid,
        hash: [u8; 32],
        event_ms: i64,
        partition: i32,
    ) -> Result<Seen, Error> {
        let entry = held(&hash, event_ms);
        Ok(match self.index.entry(id) {
            dashmap::Entry::Occupied(known) if known.get().0 == entry.0 => Seen::Duplicate,
            dashmap::Entry::Occupied(_) => Seen::Conflict,
            dashmap::Entry::Vacant(v) => {
                v.insert(entry);
                self.pending.push((id, hash, event_ms, partition));
                Seen::New
            }
        })
    }

    /// The writes of the pending entries and of the expiry of those older than `horizon_ms`
    /// (event time). The caller applies them in one transaction with the rest of the stage's
    /// state, then calls [`DedupIndex::committed`].
    pub fn stage(&mut self, horizon_ms: Option<i64>) -> Result<Staged, Error> {
        let mut staged = Staged {
            expiry: sled::Batch::default(),
            inserted: std::mem::take(&mut self.pending),
            expired: Vec::new(),
        };
        for (id, hash, ms, partition) in &staged.inserted {
            staged
                .expiry
                .insert(expiry_key(*ms, id), expiry_value(*partition, hash));
        }
        if let Some(h) = horizon_ms {
            let end = expiry_key(h, &Uuid::nil());
            for item in self.expiry.range(..end) {
                let (k, v) = item.map_err(storage)?;
                if let Some((_, id)) = parse_expiry_key(&k) {
                    let partition = v.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok());
                    staged.expired.push((id, partition.map(i32::from_be_bytes)));
                }
                staged.expiry.remove(k);
            }
        }
        Ok(staged)
    }

    /// Takes note that `staged` was applied; returns how many entries expired.
    pub fn committed(&mut self, staged: &Staged) -> usize {
        for (id, _) in &staged.expired {
            self.index.remove(id);
        }
        staged.expired.len()
    }

    /// Applies `staged` to the tree on its own (the processor applies it in its transaction
    /// instead); returns how many entries expired.
    pub fn write(&mut self, staged: Staged) -> Result<usize, Error> {
        self.expiry
            .apply_batch(staged.expiry.clone())
            .map_err(storage)?;
        Ok(self.committed(&staged))
    }

    /// The tree, for the caller's transaction.
    pub fn tree(&self) -> &sled::Tree {
        &self.expiry
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The index in memory, shared with a restore that adds and removes entries.
    pub(crate) fn index(&self) -> Index {
        self.index.clone()
    }
}

/// A changelog entry's value: the content hash, then the event time.
pub(crate) fn entry_value(hash: &[u8; 32], ms: i64) -> Vec<u8> {
    let mut v = hash.to_vec();
    v.extend_from_slice(&ms.to_be_bytes());
    v
}

/// The content hash and event time of a changelog entry's value.
pub(crate) fn parse_entry_value(value: &[u8]) -> Option<([u8; 32], i64)> {
    let hash = value.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok())?;
    let ms = value
        .get(32..40)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes)?;
    Some((hash, ms))
}

/// An entry's value in the tree: the input partition that added it, then the content hash.
pub(crate) fn expiry_value(partition: i32, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = partition.to_be_bytes().to_vec();
    v.extend_from_slice(hash);
    v
}

fn expiry_hash(value: &[u8]) -> Option<[u8; 32]> {
    value.get(4..36).and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// Event time first (sign-flipped so negative times sort too), then the id.
pub(crate) fn expiry_key(ms: i64, id: &Uuid) -> Vec<u8> {
    let mut k = ((ms as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn parse_expiry_key(key: &[u8]) -> Option<(i64, Uuid)> {
    let t = key.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok())?;
    let id = key.get(8..24).and_then(|b| Uuid::from_slice(b).ok())?;
    Some(((u64::from_be_bytes(t) ^ (1 << 63)) as i64, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keys_sort_by_event_time_and_parse_back() {
        let id = Uuid::from_u128(7);
        let times = [-5_000i64, -1, 0, 1, 1_700_000_000_000];
        let keys: Vec<_> = times.iter().map(|t| expiry_key(*t, &id)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (t, k) in times.iter().zip(&keys) {
            assert_eq!(parse_expiry_key(k), Some((*t, id)));
        }
    }
}
