//! Coupon codes are bearer secrets: whoever knows one can redeem it. Everything that leaves
//! tillbridge (outputs, alerts, reports, logs) shows a masked form, with a keyed fingerprint so an
//! analyst holding the code can match it without any output holding it. One masker and one
//! fingerprinter serve the reconciler and fraud-guard alike.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Codes shorter than this are masked completely: showing four characters of a short code would
/// give away most of it.
const MIN_LEN_TO_SHOW_ENDS: usize = 8;
/// Hex characters of the fingerprint: 64 bits, enough to tell codes apart in one report.
const FINGERPRINT_HEX_LEN: usize = 16;

/// First two and last two characters around an ellipsis, or `****` for a short code.
pub fn mask(code: &str) -> String {
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
pub fn fingerprint(key: &[u8], code: &str) -> String {
    // HMAC accepts keys of any length, so this never fails; the fallback only keeps the code
    // free of a panic path.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(code.as_bytes());
            let mut hex = hex::encode(mac.finalize().into_bytes());
            hex.truncate(FINGERPRINT_HEX_LEN);
            hex
        }
        Err(_) => "0".repeat(FINGERPRINT_HEX_LEN),
    }
}

/// Masks and fingerprints codes under one key, which its `Debug` never shows.
#[derive(Clone)]
pub struct CodeMasker {
    key: Vec<u8>,
}

impl std::fmt::Debug for CodeMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeMasker { key: <redacted> }")
    }
}

impl CodeMasker {
    pub fn new(key: &str) -> Self {
        CodeMasker {
            key: key.as_bytes().to_vec(),
        }
    }

    /// See [`fingerprint`].
    pub fn fingerprint(&self, code: &str) -> String {
        fingerprint(&self.key, code)
    }

    /// The subject of a coupon in an alert: `coupon:AB…YZ#<fingerprint>`.
    pub fn subject(&self, code: &str) -> String {
        format!("coupon:{}#{}", mask(code), self.fingerprint(code))
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
        let a = fingerprint(b"k", "SUMMER2024X");
        assert_eq!(a.len(), 16);
        assert_eq!(a, fingerprint(b"k", "SUMMER2024X"));
        assert_ne!(a, fingerprint(b"other", "SUMMER2024X"));
        assert!(!a.contains("SUMMER"));
        let m = CodeMasker::new("k");
        assert_eq!(m.subject("SUMMER2024X"), format!("coupon:SU\u{2026}4X#{a}"));
        assert_eq!(format!("{m:?}"), "CodeMasker { key: <redacted> }");
    }
}
