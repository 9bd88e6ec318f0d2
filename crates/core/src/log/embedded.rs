//! The embedded log: one sled database, a tree per topic partition keyed by offset, and a tree of
//! consumer positions. Appends and position updates are flushed before they return, so the log
//! offers the same durability promise as a broker acknowledgement.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use super::api::{partition_for, BatchLimits, Header, OutRecord, Position, Record, Sink, Source};
use crate::{Error, Result};

const POSITIONS: &str = "positions";

/// A handle on the embedded log; cheap to clone.
#[derive(Clone, Debug)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    path: String,
    partitions: u32,
    append_lock: Mutex<()>,
    appended: Notify,
}

impl EmbeddedLog {
    /// Opens (or creates) the log at `path` with `partitions` partitions per topic.
    pub fn open(path: &Path, partitions: u32) -> Result<Self> {
        let db = crate::store::open_sled(path)
            .map_err(|e| Error::storage(path.display().to_string(), e))?;
        Ok(EmbeddedLog {
            inner: Arc::new(Inner {
                db,
                path: path.display().to_string(),
                partitions: partitions.max(1),
                append_lock: Mutex::new(()),
                appended: Notify::new(),
            }),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    fn tree(&self, topic: &str, partition: i32) -> Result<sled::Tree> {
        self.inner
            .db
            .open_tree(format!("t/{topic}/{partition}"))
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: sled::Error) -> Error {
        Error::storage(self.inner.path.clone(), e)
    }

    /// A sink appending to this log.
    pub fn sink(&self) -> EmbeddedSink {
        EmbeddedSink { log: self.clone() }
    }

    /// A source reading `topics` for consumer `group`, from the group's stored positions, or
    /// from the beginning when `from_start` (the positions are reset).
    pub fn source_from(
        &self,
        group: &str,
        topics: &[&str],
        from_start: bool,
    ) -> Result<EmbeddedSource> {
        if from_start {
            let positions = self
                .inner
                .db
                .open_tree(POSITIONS)
                .map_err(|e| self.err(e))?;
            for topic in topics {
                for p in 0..self.inner.partitions as i32 {
                    positions
                        .remove(position_key(group, topic, p))
                        .map_err(|e| self.err(e))?;
                }
            }
            positions.flush().map_err(|e| self.err(e))?;
        }
        self.source(group, topics)
    }

    /// As [`EmbeddedLog::source_from`], but each partition in `start` resumes at that offset
    /// (where the stage's state says it is; see `KafkaLog::source`).
    pub fn source_at(
        &self,
        group: &str,
        topics: &[&str],
        from_start: bool,
        start: &BTreeMap<(String, i32), i64>,
    ) -> Result<EmbeddedSource> {
        let mut source = self.source_from(group, topics, from_start)?;
        for (key, next) in start {
            if let Some(cursor) = source.cursors.get_mut(key) {
                *cursor = u64::try_from(*next).unwrap_or(0);
            }
        }
        Ok(source)
    }

    /// A source reading `topics` for consumer `group`, from the group's stored positions.
    pub fn source(&self, group: &str, topics: &[&str]) -> Result<EmbeddedSource> {
        let positions = self
            .inner
            .db
            .open_tree(POSITIONS)
            .map_err(|e| self.err(e))?;
        let mut cursors = BTreeMap::new();
        for topic in topics {
            for p in 0..self.inner.partitions as i32 {
                let stored = positions
                    .get(position_key(group, topic, p))
                    .map_err(|e| self.err(e))?
                    .map(|v| decode_u64(&v))
                    .transpose()?
                    .unwrap_or(0);
                cursors.insert(((*topic).to_owned(), p), stored);
            }
        }
        Ok(EmbeddedSource {
            log: self.clone(),
            group: group.to_owned(),
            cursors,
            positions,
        })
    }

    /// Every record of a topic, in partition then offset order (for reports and tests).
    pub fn read_all(&self, topic: &str) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for p in 0..self.inner.partitions as i32 {
            for item in self.tree(topic, p)?.iter() {
                let (k, v) = item.map_err(|e| self.err(e))?;
                out.push(decode_record(topic, p, decode_u64(&k)? as i64, &v)?);
            }
        }
        Ok(out)
    }

    /// Appends `records` and flushes them to disk.
    pub async fn append(&self, records: Vec<OutRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        {
            let _guard = self.inner.append_lock.lock().await;
            let mut batches: BTreeMap<(String, i32), (u64, sled::Batch)> = BTreeMap::new();
            for r in records {
                let p = match r.partition {
                    Some(p) => p.rem_euclid(self.inner.partitions as i32),
                    None => partition_for(&r.key, self.inner.partitions),
                };
                let slot = match batches.entry((r.topic.clone(), p)) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let next = self
                            .tree(&r.topic, p)?
                            .last()
                            .map_err(|e| self.err(e))?
                            .map(|(k, _)| decode_u64(&k).map(|o| o + 1))
                            .transpose()?
                            .unwrap_or(0);
                        v.insert((next, sled::Batch::default()))
                    }
                };
                let ts = r.timestamp_ms.unwrap_or_else(now_ms);
                slot.1.insert(&slot.0.to_be_bytes(), encode_record(&r, ts));
                slot.0 += 1;
            }
            for ((topic, p), (_, batch)) in batches {
                self.tree(&topic, p)?
                    .apply_batch(batch)
                    .map_err(|e| self.err(e))?;
            }
            self.inner.db.flush_async().await.map_err(|e| self.err(e))?;
        }
        self.inner.appended.notify_waiters();
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn position_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    format!("{group}\0{topic}\0{partition}").into_bytes()
}

fn decode_u64(b: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Corrupt("embedded log: bad offset".into()))?;
    Ok(u64::from_be_bytes(arr))
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn encode_record(r: &OutRecord, ts: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.key.len() + r.payload.as_ref().map_or(0, Vec::len));
    out.extend_from_slice(&ts.to_be_bytes());
    put_bytes(&mut out, Some(&r.key));
    put_bytes(&mut out, r.payload.as_deref());
    out.extend_from_slice(&(r.headers.len() as u32).to_be_bytes());
    for (k, v) in &r.headers {
        put_bytes(&mut out, Some(k.as_bytes()));
        put_bytes(&mut out, Some(v));
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(Error::Corrupt("embedded log: truncated record".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self) -> Result<Option<Vec<u8>>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?.to_vec()))
    }
}

fn decode_record(topic: &str, partition: i32, offset: i64, v: &[u8]) -> Result<Record> {
    let mut r = Reader(v);
    let tsb = r.take(8)?;
    let ts = i64::from_be_bytes(tsb.try_into().map_err(|_| Error::Corrupt("ts".into()))?);
    let key = r.bytes()?;
    let payload = r.bytes()?;
    let n = r.u32()?;
    let mut headers: Vec<Header> = Vec::new();
    for _ in 0..n {
        let k = r.bytes()?.unwrap_or_default();
        let v = r.bytes()?.unwrap_or_default();
        headers.push((String::from_utf8_lossy(&k).into_owned(), v));
    }
    Ok(Record {
        topic: topic.to_owned(),
        partition,
        offset,
        key,
        payload,
        headers,
        timestamp_ms: Some(ts),
    })
}

/// Appends to the embedded log.
#[derive(Clone, Debug)]
pub struct EmbeddedSink {
    log: EmbeddedLog,
}

impl Sink for EmbeddedSink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<()> {
        self.log.append(records).await
    }
}

/// Reads the embedded log for one consumer group.
#[derive(Debug)]
pub struct EmbeddedSource {
    log: EmbeddedLog,
    group: String,
    /// Next offset to hand out, per (topic, partition).
    cursors: BTreeMap<(String, i32), u64>,
    positions: sled::Tree,
}

impl EmbeddedSource {
    /// Up to `limits` records, merged across partitions by record timestamp, then key (each
    /// partition stays in offset order; the same order as `Order::RecordTime` on Kafka), so that a reader of several partitions sees roughly the order in
    /// which records were written, as it would from a broker, and not one partition after another.
    fn read_available(&mut self, limits: BatchLimits) -> Result<Vec<Record>> {
        let mut queues: Vec<std::collections::VecDeque<Record>> = Vec::new();
        let keys: Vec<(String, i32)> = self.cursors.keys().cloned().collect();
        for (topic, p) in keys {
            let tree = self.log.tree(&topic, p)?;
            let from = self.cursors[&(topic.clone(), p)];
            let mut q = std::collections::VecDeque::new();
            for item in tree.range(from.to_be_bytes()..).take(limits.max_records) {
                let (k, v) = item.map_err(|e| self.log.err(e))?;
                q.push_back(decode_record(&topic, p, decode_u64(&k)? as i64, &v)?);
            }
            if !q.is_empty() {
                queues.push(q);
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < limits.max_records && (bytes < limits.max_bytes || out.is_empty()) {
            let next = queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|r| (r.timestamp_ms, r.key.as_deref(), i)))
                .min()
                .map(|(_, _, i)| i);
            let Some(i) = next else { break };
            let Some(rec) = queues[i].pop_front() else {
                break;
            };
            bytes += rec.size();
            self.cursors
                .insert((rec.topic.clone(), rec.partition), rec.offset as u64 + 1);
            out.push(rec);
        }
        Ok(out)
    }
}

impl Source for EmbeddedSource {
    async fn next_batch(&mut self, limits: BatchLimits) -> Result<Vec<Record>> {
        let deadline = tokio::time::Instant::now() + limits.wait;
        loop {
            // Register interest before reading, so an append between the read and the wait
            // still wakes us.
            let log = self.log.clone();
            let notified = log.inner.appended.notified();
            let batch = self.read_available(limits)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&mut self, positions: &[Position]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for p in positions {
            batch.insert(
                position_key(&self.group, &p.topic, p.partition),
                &((p.offset + 1) as u64).to_be_bytes(),
            );
        }
        self.positions
            .apply_batch(batch)
            .map_err(|e| self.log.err(e))?;
        self.positions
            .flush_async()
            .await
            .map_err(|e| self.log.err(e))?;
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        let mut lag = 0;
        for ((topic, p), next) in &self.cursors {
            let end = self
                .log
                .tree(topic, *p)
                .ok()?
                .last()
                .ok()?
                .and_then(|(k, _)| decode_u64(&k).ok())
                .map_or(0, |o| o + 1);
            lag += end.saturating_sub(*next);
        }
        Some(lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> BatchLimits {
        BatchLimits {
            max_records: 100,
            max_bytes: 1 << 20,
            wait: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn positions_survive_reopen_and_only_acked_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), 2).unwrap();
            let recs = (0..10)
                .map(|i| OutRecord::new("t", format!("k{i}"), vec![i as u8]))
                .collect();
            log.sink().send(recs).await.unwrap();
            let mut src = log.source("g", &["t"]).unwrap();
            let batch = src.next_batch(limits()).await.unwrap();
            assert_eq!(batch.len(), 10);
            // Ack only the first record of each partition.
            let mut firsts: BTreeMap<i32, Position> = BTreeMap::new();
            for r in &batch {
                firsts.entry(r.partition).or_insert_with(|| r.position());
            }
            src.ack(&firsts.into_values().collect::<Vec<_>>())
                .await
                .unwrap();
        }
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        let mut src = log.source("g", &["t"]).unwrap();
        assert_eq!(src.lag(), Some(8));
        let again = src.next_batch(limits()).await.unwrap();
        assert_eq!(again.len(), 8);
        assert!(src.next_batch(limits()).await.unwrap().is_empty());
        // Another group starts from the beginning.
        let mut other = log.source("h", &["t"]).unwrap();
        assert_eq!(other.next_batch(limits()).await.unwrap().len(), 10);
        assert_eq!(log.read_all("t").unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_waiting_source_wakes_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 1).unwrap();
        let mut src = log.source("g", &["t"]).unwrap();
        let writer = log.clone();
        let handle = tokio::spawn(async move {
            let mut l = limits();
            l.wait = Duration::from_secs(30);
            src.next_batch(l).await
        });
        writer
            .append(vec![OutRecord::new("t", "k", b"v".to_vec())])
            .await
            .unwrap();
        let got = handle.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload.as_deref(), Some(&b"v"[..]));
    }
}
