//! Ingest over any till.events record: it never fails, never panics, and no output (session
//! record, fact, dead letter) carries a card number. The state lives on across inputs, so
//! duplicates, conflicts and dedup expiry are reached as well.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use tillbridge_core::config::{IngestConfig, Topics};
use tillbridge_core::stage::Processor;
use tillbridge_fuzz::{assert_no_card, record, runtime, state_dir};
use tillbridge_ingest::Ingest;

struct State {
    _dir: tempfile::TempDir,
    ingest: Ingest,
    topics: Topics,
    rt: tokio::runtime::Runtime,
    offset: i64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let s = guard.get_or_insert_with(|| {
        let dir = state_dir();
        let topics = Topics::default();
        // As `tillbridge run` builds it: the default rules over an (empty) store table.
        let rules = tillbridge_router::Rules::compile(&topics, &Default::default())
            .expect("default rules")
            .with_store_table(tillbridge_router::StoreTable::new());
        let router = tillbridge_router::Router::with_rules(topics.clone(), rules);
        let ingest = Ingest::open(dir.path(), topics.clone(), IngestConfig::default())
            .expect("open ingest")
            .with_router(router);
        State {
            _dir: dir,
            ingest,
            topics,
            rt: runtime(),
            offset: 0,
        }
    });
    s.offset += 1;
    let Some(rec) = record(data, &[s.topics.till_events.as_str()], s.offset) else {
        return;
    };
    let outputs = s
        .ingest
        .process(&[rec])
        .expect("bad input is dead-lettered, not an error");
    assert_no_card(&s.topics, &outputs);
    s.rt.block_on(s.ingest.commit()).expect("commit");
});
