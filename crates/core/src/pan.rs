//! Card numbers (PAN): a run of 13 to 19 digits, with single spaces or dashes allowed between
//! digits, that passes the Luhn check. Such a run must never reach a log, a report or a topic.
//!
//! Digits inside a UUID-shaped token (8-4-4-4-12 hex digits) are not a card number: identifiers
//! such as session ids are often UUIDs, and the all-digit groups of a random UUID pass the Luhn
//! check often enough to reject real traffic.

/// Smallest and largest number of digits a PAN has.
const PAN_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// Byte ranges (start, end exclusive) of every PAN in `bytes`.
pub fn find(bytes: &[u8]) -> Vec<(usize, usize)> {
    let uuids = uuid_spans(bytes);
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A maximal run of digits with single separators between them.
        let start = i;
        let mut end = i;
        let mut digits = Vec::new();
        let mut j = i;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits.push(b - b'0');
                end = j + 1;
                j += 1;
            } else if (b == b' ' || b == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
                && j > start
            {
                j += 1;
            } else {
                break;
            }
        }
        let in_uuid = uuids.iter().any(|&(us, ue)| start >= us && end <= ue);
        if PAN_DIGITS.contains(&digits.len()) && luhn(&digits) && !in_uuid {
            found.push((start, end));
        }
        i = end.max(i + 1);
    }
    found
}

/// Whether `s` holds a PAN.
pub fn contains(s: &str) -> bool {
    !find(s.as_bytes()).is_empty()
}

/// `bytes` with the digits of every PAN replaced by `*` (length and separators kept).
pub fn redact(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (start, end) in find(bytes) {
        for b in &mut out[start..end] {
            if b.is_ascii_digit() {
                *b = b'*';
            }
        }
    }
    out
}

/// Byte ranges of UUID-shaped tokens (`8-4-4-4-12` hex digits, not part of a longer word).
fn uuid_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    const LEN: usize = 36;
    let mut spans = Vec::new();
    if bytes.len() < LEN {
        return spans;
    }
    let mut i = 0;
    while i + LEN <= bytes.len() {
        let w = &bytes[i..i + LEN];
        let shaped = w.iter().enumerate().all(|(k, b)| match k {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
        let bounded = (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && (i + LEN == bytes.len() || !bytes[i + LEN].is_ascii_alphanumeric());
        if shaped && bounded {
            spans.push((i, i + LEN));
            i += LEN;
        } else {
            i += 1;
        }
    }
    spans
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_plain_spaced_and_dashed_pans() {
        assert!(contains("4111111111111111"));
        assert!(contains("card 4111 1111 1111 1111 ok"));
        assert!(contains("5500-0000-0000-0004"));
        assert!(contains("378282246310005")); // 15-digit Amex test number
    }

    #[test]
    fn ignores_non_luhn_short_and_long_runs() {
        assert!(!contains("4111111111111112"));
        assert!(!contains("411111111111")); // 12 digits
        assert!(!contains("41111111111111111111")); // 20 digits
        assert!(!contains("receipt R-000123"));
        assert!(!contains("4111  1111 1111 1111")); // two separators in a row break the run
    }

    #[test]
    fn uuids_are_not_card_numbers() {
        // 8-4-4 all-digit groups: 16 digits with dashes that pass the Luhn check.
        let digits = "41111111-1111-1111-a111-111111111111";
        assert!(!contains(digits));
        assert!(!contains(&format!("R-{digits}")));
        // A card number next to a UUID is still found.
        assert!(contains(&format!("{digits} card 4111 1111 1111 1111")));
    }

    #[test]
    fn redaction_keeps_length_and_separators() {
        let r = redact(b"{\"note\":\"4111-1111-1111-1111\"}");
        assert_eq!(r, b"{\"note\":\"****-****-****-****\"}".to_vec());
        assert!(!contains(std::str::from_utf8(&r).unwrap_or_default()));
    }

    proptest! {
        #[test]
        fn redacted_bytes_never_hold_a_pan(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = redact(&bytes);
            prop_assert_eq!(r.len(), bytes.len());
            prop_assert!(find(&r).is_empty());
        }
    }
}
