//! The store table over any promo.stores row: a row is applied or refused with a rejection whose
//! detail carries no card number; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillbridge_core::pan;
use tillbridge_fuzz::record;
use tillbridge_ingest::route::StoreTable;

fuzz_target!(|data: &[u8]| {
    let table = StoreTable::new();
    let Some(rec) = record(data, &["promo.stores"], 1) else {
        return;
    };
    if let Err(r) = table.apply(&rec) {
        assert!(
            !pan::contains(&r.detail),
            "a PAN in a rejection: {}",
            r.detail
        );
    }
});
