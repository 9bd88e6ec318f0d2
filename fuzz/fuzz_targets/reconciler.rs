//! The reconciler over any record of its four inputs (redemption and loyalty facts, coupon
//! definitions, loyalty balances), chosen by the control byte: it never fails and never panics.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use tillbridge_core::config::Topics;
use tillbridge_fuzz::Driven;
use tillbridge_reconciler::{Reconciler, ReconcilerConfig};

static STAGE: Mutex<Option<Driven<Reconciler>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let topics = Topics::default();
    let mut lock = STAGE.lock().unwrap_or_else(|e| e.into_inner());
    let stage = lock.get_or_insert_with(|| {
        Driven::new(|dir| {
            let cfg = ReconcilerConfig::default();
            Reconciler::open(&dir.join("reconciler"), &topics, &cfg, "fuzz-key")
                .expect("open reconciler")
        })
    });
    let inputs = Reconciler::input_topics(&topics);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    stage.feed(data, &inputs);
});
