//! Coupon codes are bearer secrets: whoever knows one can redeem it. Everything that leaves the
//! reconciler (outputs, reports, logs) shows a masked form, and reports add a keyed fingerprint so
//! an analyst holding the code can match it without the report ever holding it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Codes shorter than this are masked completely: showing four characters of a short code would
/// give away most of it.
const MIN_LEN_TO_SHOW_ENDS: usize = 8;
/// Hex characters of the fingerprint: 64 bits, enough to tell codes apart in one report.
const FINGERPRINT_HEX_LEN: usize = 16;

/// First two and last two characters around an ellipsis, or `****` for a short code.
pub(crate) fn mask(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    if chars.len() < MIN_LEN_TO_SHOW_ENDS {
        return "****".to_owned();
    }
    let n = chars.len();
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[n - 2..].iter().collect();
    format!("{head}\u{2026}{tail}")
}

/// Hex HMAC-SHA256 of `code` under `key`, truncated to 16 hex characters.
pub(crate) fn fingerprint(key: &str, code: &str) -> String {
    // HMAC accepts keys of any length, so this never fails; the fallback only keeps the code
    // free of a panic path.
    match <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(code.as_bytes());
            let mut hex = hex::encode(mac.finalize().into_bytes());
            hex.truncate(FINGERPRINT_HEX_LEN);
            hex
        }
        Err(_) => "0".repeat(FINGERPRINT_HEX_LEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_fingerprints() {
        assert_eq!(mask("SUMMER2024X"), "SU\u{2026}4X");
        assert_eq!(mask("ABC"), "****");
        assert_eq!(mask("ABCDEFG"), "****");
        let a = fingerprint("k", "SUMMER2024X");
        assert_eq!(a.len(), 16);
        assert_eq!(a, fingerprint("k", "SUMMER2024X"));
        assert_ne!(a, fingerprint("other", "SUMMER2024X"));
        assert!(!a.contains("SUMMER"));
    }
}
