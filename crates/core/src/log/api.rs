//! The interface both logs implement: records, positions, batches, [`Source`] and [`Sink`],
//! and the dead letter of a record.

use std::future::Future;
use std::time::Duration;

use crate::Result;

/// A header's name and value.
pub type Header = (String, Vec<u8>);

/// A record read from a topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    /// The record's timestamp (milliseconds since the Unix epoch), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The position of this record, for [`Source::ack`].
    pub fn position(&self) -> Position {
        Position {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// Payload size in bytes.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// Where a record sits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A record to write.
#[derive(Clone, Debug, PartialEq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Vec<u8>,
    /// `None` writes a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub timestamp_ms: Option<i64>,
    /// The partition to write to; `None` lets the key decide. A changelog record names its
    /// partition: the one of the input partition whose state it mirrors.
    pub partition: Option<i32>,
}

impl OutRecord {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        OutRecord {
            topic: topic.into(),
            key: key.into(),
            payload: Some(payload),
            headers: Vec::new(),
            timestamp_ms: None,
            partition: None,
        }
    }

    /// A tombstone: compaction drops every earlier record of `key`.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Vec<u8>>) -> Self {
        OutRecord {
            payload: None,
            ..OutRecord::new(topic, key, Vec::new())
        }
    }

    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn with_timestamp(mut self, timestamp_ms: Option<i64>) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }
}

/// The order in which a [`Source`] hands out records of different partitions (records of one
/// partition always come in offset order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// As they are fetched.
    #[default]
    Arrival,
    /// Merged by record timestamp across the partitions of the (single) input topic, waiting
    /// for every partition, so the order depends on the topic's contents alone (see
    /// `log::merge`). The embedded log always reads this way.
    RecordTime,
}

/// Limits of one [`Source::next_batch`] call.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    /// How long to wait for the first record.
    pub wait: Duration,
}

/// Reads records of a consumer group. Records of one partition come in offset order.
pub trait Source: Send {
    /// The next records, at most `limits`; empty when none came within `limits.wait`.
    fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// Marks every record of a partition up to and including `positions`' offsets as done. Call it
    /// only once the effects of those records are durable.
    fn ack(&mut self, positions: &[Position]) -> impl Future<Output = Result<()>> + Send;

    /// Records not yet handed out, when the log can tell cheaply (the embedded log can).
    fn lag(&self) -> Option<u64>;

    /// Records not yet read, even when telling costs a request to the broker: for the periodic
    /// progress line, not for every batch.
    fn behind(&self) -> Option<u64> {
        self.lag()
    }
}

/// Writes records.
pub trait Sink: Send + Sync {
    /// Writes `records`; returns once all of them are durable (acknowledged by the broker, or
    /// flushed to disk), or an error when any of them is not.
    fn send(&self, records: Vec<OutRecord>) -> impl Future<Output = Result<()>> + Send;

    /// As [`Sink::send`], and tells where the records landed, partition by partition, when the
    /// log can tell (Kafka can; the default tells nothing).
    fn send_tracked(
        &self,
        records: Vec<OutRecord>,
    ) -> impl Future<Output = Result<Written>> + Send {
        async move { self.send(records).await.map(|()| Written::new()) }
    }
}

/// Where records landed: per `(topic, partition)`, the first and last offset written and how
/// many records (so a caller can tell whether another writer's records fell in between).
pub type Written = std::collections::BTreeMap<(String, i32), Landed>;

/// The records one send wrote to one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landed {
    pub first: i64,
    pub last: i64,
    pub count: i64,
}

impl Landed {
    /// Whether they are contiguous and start at `next`: nothing else was written to the
    /// partition since offset `next`.
    pub fn follows(&self, next: i64) -> bool {
        self.first == next && self.last - self.first + 1 == self.count
    }
}

/// The dead letter of a record a stage read that breaks the contract (a till event, a store row,
/// a destination record): its original bytes and key redacted of card numbers, its id derived
/// from the record's position and `rejected_at` the record's timestamp (the time it was sent),
/// so a replay writes the same dead letter, byte for byte. Only a record without a timestamp
/// (none of Kafka's or the embedded log's) is stamped with the processing time.
pub fn dead_letter(rec: &Record, dlq: &str, reason: &str, detail: &str) -> OutRecord {
    dead_letter_of(rec, dlq, reason, detail.to_owned(), None, usize::MAX)
}

/// [`dead_letter`] naming the event it held, with at most `keep_bytes` of the original.
pub fn dead_letter_of(
    rec: &Record,
    dlq: &str,
    reason: &str,
    detail: String,
    event_id: Option<String>,
    keep_bytes: usize,
) -> OutRecord {
    use prost::Message;
    use tillbridge_proto::pb;
    let source = format!("{}/{}/{}", rec.topic, rec.partition, rec.offset);
    let mut original = crate::pan::redact(rec.payload.as_deref().unwrap_or_default());
    original.truncate(keep_bytes);
    let dl = pb::DeadLetter {
        id: crate::ids::derive(&source, "dead_letter", 0).to_string(),
        reason: reason.to_owned(),
        detail,
        source_topic: rec.topic.clone(),
        source_partition: rec.partition,
        source_offset: rec.offset,
        original,
        event_id,
        rejected_at: Some(tillbridge_proto::timestamp(
            rec.timestamp_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or_else(chrono::Utc::now),
        )),
    };
    OutRecord::new(
        dlq,
        crate::pan::redact(rec.key.as_deref().unwrap_or_default()),
        dl.encode_to_vec(),
    )
    .with_header("content-type", tillbridge_proto::CONTENT_TYPE_PROTOBUF)
    .with_header("tillbridge-reason", reason)
    .with_timestamp(rec.timestamp_ms)
}

/// A stable partitioner: the same key always lands in the same partition.
pub fn partition_for(key: &[u8], partitions: u32) -> i32 {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as i32
}
