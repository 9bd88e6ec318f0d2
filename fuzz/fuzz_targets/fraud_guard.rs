//! fraud-guard over any till.events record: it never fails, never panics, and no alert carries a
//! card number.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use tillbridge_core::config::Topics;
use tillbridge_fraud_guard::{FraudGuard, FraudGuardConfig};
use tillbridge_fuzz::{assert_no_card, Driven};

static STAGE: Mutex<Option<Driven<FraudGuard>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let topics = Topics::default();
    let mut lock = STAGE.lock().unwrap_or_else(|e| e.into_inner());
    let stage = lock.get_or_insert_with(|| {
        Driven::new(|dir| {
            FraudGuard::open(dir, &topics, FraudGuardConfig::default(), "fuzz-key")
                .expect("open fraud-guard")
        })
    });
    if let Some(outputs) = stage.feed(data, &[topics.till_events.as_str()]) {
        assert_no_card(&topics, &outputs);
    }
});
