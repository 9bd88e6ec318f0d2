//! The card-number detector: redaction leaves nothing it would find, keeps the length, and never
//! panics on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillbridge_core::pan;

fuzz_target!(|data: &[u8]| {
    let redacted = pan::redact(data);
    assert!(
        pan::find(&redacted).is_empty(),
        "a PAN left after redaction: {:?}",
        String::from_utf8_lossy(&redacted)
    );
    let _ = pan::contains(&String::from_utf8_lossy(data));
});
