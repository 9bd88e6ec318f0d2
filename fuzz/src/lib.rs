//! What the fuzz targets share: a record built from fuzz input the way an outside client could
//! send it, and the checks every stage's outputs must pass whatever the input.
//!
//! Input layout: the first byte chooses the content-type header (bits 0-1), the record timestamp
//! (bits 2-3) and, where a stage reads several topics, the topic (bits 4-5); the rest is the
//! payload. A seed is therefore one control byte followed by a JSON or protobuf event.

use std::path::Path;

use prost::Message;
use tillbridge_core::config::Topics;
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::pan;
use tillbridge_core::stage::Processor;
use tillbridge_proto::pb;

/// 2026-11-02T08:00:00Z.
pub const D0_MS: i64 = 1_793_606_400_000;

/// A record on `topics[selector bits 4-5]` (or the only topic) built from `data`.
pub fn record(data: &[u8], topics: &[&str], offset: i64) -> Option<Record> {
    let (&control, payload) = data.split_first()?;
    let content_type: Option<&[u8]> = match control & 3 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"application/x-protobuf"),
        _ => Some(b"text/plain; charset=utf-8"),
    };
    let timestamp_ms = match (control >> 2) & 3 {
        0 => None,
        1 => Some(D0_MS),
        2 => Some(D0_MS + 86_400_000),
        _ => Some(D0_MS + 400 * 86_400_000),
    };
    let topic = topics[usize::from((control >> 4) & 3) % topics.len()];
    Some(Record {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: Some(b"fuzz".to_vec()),
        payload: Some(payload.to_vec()),
        headers: content_type
            .map(|c| vec![("content-type".to_owned(), c.to_vec())])
            .unwrap_or_default(),
        timestamp_ms,
    })
}

/// A stage's processor over state of its own, fed one record per fuzz input and committed after
/// each, as the stage loop would. The state lives on across inputs, so duplicates, windows,
/// ledgers and expiry are reached as well.
pub struct Driven<P> {
    _dir: tempfile::TempDir,
    pub processor: P,
    rt: tokio::runtime::Runtime,
    offset: i64,
}

impl<P: Processor> Driven<P> {
    /// `open` gets the state directory (in memory when the machine has /dev/shm: every commit
    /// flushes).
    pub fn new(open: impl FnOnce(&Path) -> P) -> Self {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("state dir");
        let processor = open(dir.path());
        Driven {
            _dir: dir,
            processor,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            offset: 0,
        }
    }

    /// Processes the record built from `data` (see [`record`]) and commits; its outputs, or
    /// `None` for empty input. Bad input must be dead-lettered or skipped, never a stage error.
    pub fn feed(&mut self, data: &[u8], topics: &[&str]) -> Option<Vec<OutRecord>> {
        self.offset += 1;
        let rec = record(data, topics, self.offset)?;
        let outputs = match self.processor.process(&[rec]) {
            Ok(o) => o,
            Err(e) => panic!("bad input became a stage error: {e}"),
        };
        if let Err(e) = self.rt.block_on(self.processor.commit()) {
            panic!("commit failed: {e}");
        }
        Some(outputs)
    }
}

/// Panics when any output carries a card number: in its key, a header, or any field of its
/// payload (decoded by its topic's message type; a dead letter's `original` as the bytes it is).
pub fn assert_no_card(topics: &Topics, outputs: &[OutRecord]) {
    for o in outputs {
        assert!(
            pan::find(&o.key).is_empty(),
            "a PAN in a key on {}",
            o.topic
        );
        for (name, value) in &o.headers {
            assert!(
                pan::find(value).is_empty(),
                "a PAN in header {name} on {}",
                o.topic
            );
        }
        let Some(payload) = &o.payload else { continue };
        let text = match o.topic.as_str() {
            t if t == topics.dlq => {
                let mut dl = pb::DeadLetter::decode(payload.as_slice()).expect("a dead letter");
                assert!(
                    pan::find(&dl.original).is_empty(),
                    "a PAN in a dead letter's original"
                );
                dl.original.clear();
                format!("{dl:?}")
            }
            t if t == topics.sessions => debug::<pb::TillEvent>(payload),
            t if t == topics.redemptions => debug::<pb::RedemptionFact>(payload),
            t if t == topics.loyalty => debug::<pb::LoyaltyFact>(payload),
            t if t == topics.compensations => debug::<pb::CompensatingAction>(payload),
            t if t == topics.alerts => debug::<pb::FraudAlert>(payload),
            t => panic!("an output on an unexpected topic {t}"),
        };
        assert!(!pan::contains(&text), "a PAN on {}: {text}", o.topic);
    }
}

fn debug<M: Message + Default + std::fmt::Debug>(payload: &[u8]) -> String {
    format!(
        "{:?}",
        M::decode(payload).expect("an output the stage wrote decodes")
    )
}
