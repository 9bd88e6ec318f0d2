//! The ingest state's values (till sequences, the session index) and their mirror on the
//! changelog topic: how a batch's changes are written there, and how a partition's state is
//! restored from it (see `tillbridge_core::log::StateRestore`).
//!
//! A changelog record's key is a tag byte and the state key: `d` + event id (16 bytes) for a
//! dedup entry (value: content hash, event time), `s` + session id (value: the session entry as
//! JSON), `t` + `{store}/{till}` (value: the till's sequence gaps as JSON), `w` (value: the
//! watermark, ms) and `o` + `{topic}/{partition}` (value: the next input offset the state
//! reflects). An expired dedup entry is a tombstone of its key, so compaction keeps the topic
//! bounded by the dedup window like the local index.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tillbridge_core::log::{OutRecord, Record, StateRestore};
use tillbridge_core::store::{parse_position_key, position_key};
use uuid::Uuid;

use crate::dedup::{entry_value, expiry_key, expiry_value, held, parse_entry_value, Index};
use crate::route::SessionInfo;

/// Most missing sequence numbers remembered per till.
const MAX_GAPS_PER_TILL: usize = 1024;
/// Prefix of the input positions in the `meta` tree.
pub(crate) const OFFSET_PREFIX: &[u8] = b"off/";
/// Key of the watermark in the `meta` tree.
pub(crate) const WATERMARK_KEY: &[u8] = b"watermark_ms";
/// Prefix of the changelog checkpoints (per changelog partition) in the `meta` tree.
pub(crate) const CHECKPOINT_PREFIX: &str = "clog/";

/// The `meta` key of changelog partition `partition`'s checkpoint.
pub(crate) fn checkpoint_key(partition: i32) -> Vec<u8> {
    format!("{CHECKPOINT_PREFIX}{partition}").into_bytes()
}

const TAG_DEDUP: u8 = b'd';
const TAG_SESSION: u8 = b's';
const TAG_TILL: u8 = b't';
const TAG_WATERMARK: u8 = b'w';
const TAG_POSITION: u8 = b'o';

/// Sequence state of one till: the highest `till_seq` seen and the numbers below it never seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TillGaps {
    pub highest: u64,
    pub missing: Vec<u64>,
}

impl TillGaps {
    pub(crate) fn observe(&mut self, seq: u64) {
        if seq > self.highest {
            let from = if self.highest == 0 {
                seq
            } else {
                self.highest + 1
            };
            for s in from..seq {
                if self.missing.len() >= MAX_GAPS_PER_TILL {
                    break;
                }
                self.missing.push(s);
            }
            self.highest = seq;
        } else if let Ok(i) = self.missing.binary_search(&seq) {
            self.missing.remove(i);
        }
    }

    /// The state that knows both: the further one wins; at the same height a number is missing
    /// only when missing in both. Commutative, so restored partitions merge in any order.
    fn merge(self, other: TillGaps) -> TillGaps {
        match self.highest.cmp(&other.highest) {
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Equal => TillGaps {
                highest: self.highest,
                missing: self
                    .missing
                    .into_iter()
                    .filter(|s| other.missing.binary_search(s).is_ok())
                    .collect(),
            },
        }
    }
}

/// What the session index holds: the sale, and a cancel or full return that came first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SessionEntry {
    pub(crate) sale: Option<SessionInfo>,
    /// A cancel or return that arrived before its sale (late sync), replayed when the sale comes.
    pub(crate) waiting: Vec<Vec<u8>>,
}

impl SessionEntry {
    /// The entry that knows both: the sale once either has it (the records waiting for it were
    /// released then), else every waiting record of both. Commutative.
    fn merge(self, other: SessionEntry) -> SessionEntry {
        match (self.sale, other.sale) {
            (Some(a), Some(b)) => SessionEntry {
                sale: Some(if a.event_id <= b.event_id { a } else { b }),
                waiting: Vec::new(),
            },
            (Some(s), None) | (None, Some(s)) => SessionEntry {
                sale: Some(s),
                waiting: Vec::new(),
            },
            (None, None) => {
                let mut waiting = self.waiting;
                for w in other.waiting {
                    if !waiting.contains(&w) {
                        waiting.push(w);
                    }
                }
                waiting.sort();
                SessionEntry {
                    sale: None,
                    waiting,
                }
            }
        }
    }
}

fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(tag);
    k.extend_from_slice(key);
    k
}

/// Builds the changelog records of one batch, partition by partition.
#[derive(Debug)]
pub(crate) struct Changes<'a> {
    pub(crate) topic: &'a str,
    pub(crate) out: Vec<OutRecord>,
}

impl Changes<'_> {
    fn push(&mut self, partition: i32, key: Vec<u8>, value: Option<Vec<u8>>) {
        let r = match value {
            Some(v) => OutRecord::new(self.topic, key, v),
            None => OutRecord::tombstone(self.topic, key),
        };
        self.out.push(r.with_partition(partition));
    }

    pub(crate) fn dedup(&mut self, partition: i32, id: &Uuid, hash: &[u8; 32], ms: i64) {
        self.push(
            partition,
            tagged(TAG_DEDUP, id.as_bytes()),
            Some(entry_value(hash, ms)),
        );
    }

    pub(crate) fn dedup_expired(&mut self, partition: i32, id: &Uuid) {
        self.push(partition, tagged(TAG_DEDUP, id.as_bytes()), None);
    }

    pub(crate) fn session(&mut self, partition: i32, id: &str, entry: &[u8]) {
        self.push(
            partition,
            tagged(TAG_SESSION, id.as_bytes()),
            Some(entry.to_vec()),
        );
    }

    pub(crate) fn till(&mut self, partition: i32, key: &str, gaps: &[u8]) {
        self.push(
            partition,
            tagged(TAG_TILL, key.as_bytes()),
            Some(gaps.to_vec()),
        );
    }

    /// The watermark and the input position, last of the partition's records of the batch.
    pub(crate) fn position(
        &mut self,
        topic: &str,
        partition: i32,
        next: i64,
        watermark: Option<i64>,
    ) {
        if let Some(w) = watermark {
            self.push(
                partition,
                vec![TAG_WATERMARK],
                Some(w.to_be_bytes().to_vec()),
            );
        }
        self.push(
            partition,
            position_key(&[TAG_POSITION], topic, partition),
            Some(next.to_be_bytes().to_vec()),
        );
    }
}

/// The restore side of ingest's changelog: applies a partition's records to the local trees.
#[derive(Debug)]
pub(crate) struct IngestRestore {
    pub(crate) topic: String,
    pub(crate) db: sled::Db,
    /// The dedup index in memory, and its tree.
    pub(crate) dedup: Index,
    pub(crate) expiry: sled::Tree,
    pub(crate) sessions: sled::Tree,
    pub(crate) tills: sled::Tree,
    pub(crate) meta: sled::Tree,
    /// Set once a restore finished, so the processor reloads what it keeps in memory.
    pub(crate) restored: Arc<AtomicBool>,
    /// Input positions read so far, written by `finish`.
    pub(crate) positions: Mutex<BTreeMap<(String, i32), i64>>,
}

fn storage(e: sled::Error) -> tillbridge_core::Error {
    tillbridge_core::Error::Storage {
        path: "ingest state".into(),
        source: e,
    }
}

fn i64_of(v: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(v).ok().map(i64::from_be_bytes)
}

fn merged<T: Serialize + for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &[u8],
    new: &[u8],
    merge: impl FnOnce(T, T) -> T,
) -> tillbridge_core::Result<()> {
    let Ok(new) = serde_json::from_slice::<T>(new) else {
        return Ok(());
    };
    let value = match tree.get(key).map_err(storage)? {
        Some(old) => match serde_json::from_slice::<T>(&old) {
            Ok(old) => merge(old, new),
            Err(_) => new,
        },
        None => new,
    };
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| tillbridge_core::Error::Corrupt(format!("ingest state: {e}")))?;
    tree.insert(key, bytes).map_err(storage)?;
    Ok(())
}

impl StateRestore for IngestRestore {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn apply(&self, partition: i32, records: &[Record]) -> tillbridge_core::Result<()> {
        for r in records {
            let Some((&tag, key)) = r.key.as_deref().and_then(<[u8]>::split_first) else {
                continue;
            };
            match (tag, r.payload.as_deref()) {
                (TAG_DEDUP, Some(v)) => {
                    let (Ok(id), Some((hash, ms))) = (Uuid::from_slice(key), parse_entry_value(v))
                    else {
                        continue;
                    };
                    // An id accepted with another content first keeps it.
                    if let dashmap::Entry::Vacant(slot) = self.dedup.entry(id) {
                        self.expiry
                            .insert(expiry_key(ms, &id), expiry_value(partition, &hash))
                            .map_err(storage)?;
                        slot.insert(held(&hash, ms));
                    }
                }
                (TAG_DEDUP, None) => {
                    let Ok(id) = Uuid::from_slice(key) else {
                        continue;
                    };
                    if let Some((_, (_, ms))) = self.dedup.remove(&id) {
                        self.expiry.remove(expiry_key(ms, &id)).map_err(storage)?;
                    }
                }
                (TAG_SESSION, Some(v)) => merged(&self.sessions, key, v, SessionEntry::merge)?,
                (TAG_TILL, Some(v)) => merged(&self.tills, key, v, TillGaps::merge)?,
                (TAG_WATERMARK, Some(v)) => {
                    let Some(w) = i64_of(v) else { continue };
                    let old = self.meta.get(WATERMARK_KEY).map_err(storage)?;
                    if old.as_deref().and_then(i64_of).is_none_or(|o| o < w) {
                        self.meta
                            .insert(WATERMARK_KEY, &w.to_be_bytes())
                            .map_err(storage)?;
                    }
                }
                (TAG_POSITION, Some(v)) => {
                    if let (Some(input), Some(next)) = (parse_position_key(key), i64_of(v)) {
                        if let Ok(mut p) = self.positions.lock() {
                            p.insert(input, next);
                        }
                    }
                }
                // A record of a later version's layout: not this version's to apply.
                _ => {}
            }
        }
        Ok(())
    }

    fn checkpoint(&self, partition: i32) -> Option<i64> {
        self.meta
            .get(checkpoint_key(partition))
            .ok()
            .flatten()
            .and_then(|v| i64_of(&v))
    }

    fn finish(
        &self,
        input: &(String, i32),
        changelog_next: i64,
    ) -> tillbridge_core::Result<Option<i64>> {
        let key = position_key(OFFSET_PREFIX, &input.0, input.1);
        let held = self
            .meta
            .get(&key)
            .map_err(storage)?
            .and_then(|v| i64_of(&v));
        let read = self.positions.lock().ok().and_then(|mut p| p.remove(input));
        let next = held.max(read);
        if let Some(next) = next {
            self.meta
                .insert(key, &next.to_be_bytes())
                .map_err(storage)?;
        }
        self.meta
            .insert(checkpoint_key(input.1), &changelog_next.to_be_bytes())
            .map_err(storage)?;
        self.db.flush().map_err(storage)?;
        self.restored.store(true, Ordering::Release);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn till_merge_is_commutative() {
        let a = TillGaps {
            highest: 7,
            missing: vec![3, 5],
        };
        let b = TillGaps {
            highest: 7,
            missing: vec![5, 6],
        };
        let c = TillGaps {
            highest: 9,
            missing: vec![8],
        };
        assert_eq!(a.clone().merge(b.clone()), b.clone().merge(a.clone()));
        assert_eq!(a.clone().merge(b.clone()).missing, vec![5]);
        assert_eq!(a.clone().merge(c.clone()), c.clone().merge(a));
    }

    #[test]
    fn session_merge_keeps_the_sale_and_is_commutative() {
        let waiting = SessionEntry {
            sale: None,
            waiting: vec![b"r1".to_vec()],
        };
        let other = SessionEntry {
            sale: None,
            waiting: vec![b"r0".to_vec(), b"r1".to_vec()],
        };
        let merged = waiting.clone().merge(other.clone());
        assert_eq!(merged, other.clone().merge(waiting.clone()));
        assert_eq!(merged.waiting, vec![b"r0".to_vec(), b"r1".to_vec()]);
        let sale = SessionEntry {
            sale: Some(SessionInfo::default()),
            waiting: Vec::new(),
        };
        assert_eq!(waiting.clone().merge(sale.clone()), sale);
        assert_eq!(sale.clone().merge(waiting), sale);
    }
}
