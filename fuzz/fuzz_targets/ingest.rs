//! Ingest over any till.events record: it never fails, never panics, and no output (session
//! record, fact, dead letter) carries a card number.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use tillbridge_core::config::{IngestConfig, Topics};
use tillbridge_fuzz::{assert_no_card, Driven};
use tillbridge_ingest::Ingest;

static STAGE: Mutex<Option<Driven<Ingest>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let topics = Topics::default();
    let mut lock = STAGE.lock().unwrap_or_else(|e| e.into_inner());
    let stage = lock.get_or_insert_with(|| {
        Driven::new(|dir| {
            // As `tillbridge run` builds it: the default rules over an (empty) store table.
            let rules = tillbridge_ingest::route::Rules::compile(&topics, &Default::default())
                .expect("default rules")
                .with_store_table(tillbridge_ingest::route::StoreTable::new());
            let router = tillbridge_ingest::route::Router::with_rules(topics.clone(), rules);
            Ingest::open(dir, topics.clone(), IngestConfig::default())
                .expect("open ingest")
                .with_router(router)
        })
    });
    if let Some(outputs) = stage.feed(data, &[topics.till_events.as_str()]) {
        assert_no_card(&topics, &outputs);
    }
});
