//! The reconciler over any record of its four inputs (redemption and loyalty facts, coupon
//! definitions, loyalty balances), chosen by the control byte: it never fails and never panics.
//! The state lives on across inputs, so ledgers fill and settle.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use tillbridge_core::config::{ReconcilerConfig, Topics};
use tillbridge_core::stage::Processor;
use tillbridge_fuzz::{record, runtime, state_dir};
use tillbridge_reconciler::Reconciler;

struct State {
    _dir: tempfile::TempDir,
    reconciler: Reconciler,
    inputs: Vec<String>,
    rt: tokio::runtime::Runtime,
    offset: i64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut lock = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let s = lock.get_or_insert_with(|| {
        let dir = state_dir();
        let topics = Topics::default();
        let cfg = ReconcilerConfig {
            report_key: "fuzz-key".into(),
            ..ReconcilerConfig::default()
        };
        let reconciler =
            Reconciler::open(&dir.path().join("reconciler"), &topics, &cfg).expect("open");
        State {
            _dir: dir,
            reconciler,
            inputs: Reconciler::input_topics(&topics),
            rt: runtime(),
            offset: 0,
        }
    });
    s.offset += 1;
    let topics: Vec<&str> = s.inputs.iter().map(String::as_str).collect();
    let Some(rec) = record(data, &topics, s.offset) else {
        return;
    };
    s.reconciler
        .process(&[rec])
        .expect("bad input is counted and skipped, not an error");
    s.rt.block_on(s.reconciler.commit()).expect("commit");
});
