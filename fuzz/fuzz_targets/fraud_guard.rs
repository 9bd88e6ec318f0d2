//! fraud-guard over any till.events record: it never fails, never panics, and no alert carries a
//! card number. The state lives on across inputs, so windows, cool-downs and expiry are reached.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use tillbridge_core::config::Topics;
use tillbridge_core::stage::Processor;
use tillbridge_fraud_guard::{FraudGuard, FraudGuardConfig};
use tillbridge_fuzz::{assert_no_card, record, runtime, state_dir};

struct State {
    _dir: tempfile::TempDir,
    guard: FraudGuard,
    topics: Topics,
    rt: tokio::runtime::Runtime,
    offset: i64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut lock = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let s = lock.get_or_insert_with(|| {
        let dir = state_dir();
        let topics = Topics::default();
        let guard = FraudGuard::open(dir.path(), &topics, FraudGuardConfig::default(), "fuzz-key")
            .expect("open fraud-guard");
        State {
            _dir: dir,
            guard,
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
        .guard
        .process(&[rec])
        .expect("bad input is skipped, not an error");
    assert_no_card(&s.topics, &outputs);
    s.rt.block_on(s.guard.commit()).expect("commit");
});
