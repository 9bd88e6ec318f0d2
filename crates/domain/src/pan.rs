//! Card numbers (PAN) in free text. Such a number must never reach a log, a report or a topic.
//!
//! A PAN is found where text holds digits that
//! - form **whole digit groups**: a run of digits, or several runs joined by up to
//!   [`MAX_SEPARATOR_RUN`] separators (spaces, tabs, no-break spaces, line breaks, dashes of any
//!   kind, dots, slashes, underscores). A candidate starts and ends at a group boundary, so a
//!   card number stands out next to another group (`Receipt 123 4111 1111 1111 1111`,
//!   `4111111111111111 0528`), while a number is never cut out of the middle of a longer run.
//!   Printed card numbers are grouped in fours (Amex and Diners 4-6-5, 4-6-4), so a candidate of
//!   several groups has none longer than [`MAX_GROUP_DIGITS`]: a run such as
//!   `412-3-1764320000123-42` (store, till, epoch milliseconds, counter) is an identifier;
//! - count a length that a **major network** issues for its prefix (IIN): Visa, Mastercard,
//!   American Express, Discover, JCB, Diners Club, UnionPay, Maestro, Mir, RuPay, Verve, Troy;
//! - pass the **Luhn** check.
//!
//! Digits of any script count (full-width, Arabic-Indic, Devanagari, …): they are read as their
//! value. Digits inside a UUID-shaped token (8-4-4-4-12 hex digits) are not a card number.
//!
//! The network rule is what keeps identifiers out: a random 13 to 19 digit run passes Luhn one
//! time in ten, but most such ids (epoch milliseconds start with 1, counters with 0, store
//! numbers) match no network's prefix and length. `crates/core/tests/pan_corpus.rs` measures
//! both rates on a corpus; docs/CONTRACT.md states them.

/// Most separator characters between two digit groups of one number.
pub const MAX_SEPARATOR_RUN: usize = 3;

/// Longest digit group in a PAN written in several groups.
pub const MAX_GROUP_DIGITS: usize = 6;

/// Smallest and largest number of digits a PAN has.
const PAN_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// A card network's prefixes (an inclusive range of IIN values of `digits` digits) and the
/// lengths it issues.
struct Iin {
    digits: u32,
    from: u32,
    to: u32,
    lengths: &'static [usize],
}

const fn iin(digits: u32, from: u32, to: u32, lengths: &'static [usize]) -> Iin {
    Iin {
        digits,
        from,
        to,
        lengths,
    }
}

const SIXTEEN_TO_NINETEEN: &[usize] = &[16, 17, 18, 19];
const THIRTEEN_TO_NINETEEN: &[usize] = &[13, 14, 15, 16, 17, 18, 19];

/// The major networks' IIN ranges and lengths (ISO/IEC 7812, networks' published tables).
const NETWORKS: &[Iin] = &[
    // Visa (Electron included).
    iin(1, 4, 4, &[13, 16, 19]),
    // Mastercard.
    iin(2, 51, 55, &[16]),
    iin(4, 2221, 2720, &[16]),
    // American Express.
    iin(2, 34, 34, &[15]),
    iin(2, 37, 37, &[15]),
    // Discover.
    iin(4, 6011, 6011, SIXTEEN_TO_NINETEEN),
    iin(3, 644, 649, SIXTEEN_TO_NINETEEN),
    iin(2, 65, 65, SIXTEEN_TO_NINETEEN),
    // JCB.
    iin(4, 3528, 3589, SIXTEEN_TO_NINETEEN),
    // Diners Club.
    iin(3, 300, 305, &[14, 15, 16, 17, 18, 19]),
    iin(4, 3095, 3095, &[14, 15, 16, 17, 18, 19]),
    iin(2, 36, 36, &[14, 15, 16, 17, 18, 19]),
    iin(2, 38, 39, &[14, 15, 16, 17, 18, 19]),
    // UnionPay.
    iin(2, 62, 62, SIXTEEN_TO_NINETEEN),
    iin(2, 81, 81, SIXTEEN_TO_NINETEEN),
    // Maestro.
    iin(4, 5018, 5018, THIRTEEN_TO_NINETEEN),
    iin(4, 5020, 5020, THIRTEEN_TO_NINETEEN),
    iin(4, 5038, 5038, THIRTEEN_TO_NINETEEN),
    iin(4, 5893, 5893, THIRTEEN_TO_NINETEEN),
    iin(4, 6304, 6304, THIRTEEN_TO_NINETEEN),
    iin(4, 6759, 6759, THIRTEEN_TO_NINETEEN),
    iin(4, 6761, 6763, THIRTEEN_TO_NINETEEN),
    // Mir.
    iin(4, 2200, 2204, SIXTEEN_TO_NINETEEN),
    // RuPay.
    iin(2, 60, 60, &[16]),
    iin(3, 508, 508, &[16]),
    iin(3, 353, 353, &[16]),
    iin(3, 356, 356, &[16]),
    iin(2, 82, 82, &[16]),
    // Verve.
    iin(6, 506099, 506198, &[16, 18, 19]),
    iin(6, 650002, 650027, &[16, 18, 19]),
    // Troy.
    iin(4, 9792, 9792, &[16]),
];

/// Whether some network issues numbers of this length with this prefix.
fn issued(digits: &[u8]) -> bool {
    NETWORKS.iter().any(|n| {
        let k = n.digits as usize;
        if digits.len() < k || !n.lengths.contains(&digits.len()) {
            return false;
        }
        let prefix = digits[..k]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(*d));
        (n.from..=n.to).contains(&prefix)
    })
}

/// The value of a decimal digit of any script, or `None`.
fn digit_value(c: char) -> Option<u8> {
    if c.is_ascii_digit() {
        return Some(c as u8 - b'0');
    }
    // The zero of every block of ten decimal digits (Unicode category Nd) outside ASCII that a
    // till or a phone keyboard may produce.
    const ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6,
    ];
    let cp = u32::from(c);
    ZEROS
        .iter()
        .find(|z| (**z..**z + 10).contains(&cp))
        .map(|z| (cp - z) as u8)
}

/// Whether `c` may stand between two digit groups of one number.
fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t'
            | '\n'
            | '\r'
            | '-'
            | '.'
            | '/'
            | '_'
            | '\u{00A0}' // no-break space
            | '\u{2007}' // figure space
            | '\u{202F}' // narrow no-break space
            | '\u{2009}' // thin space
            | '\u{3000}' // ideographic space
            | '\u{2010}'
            ..='\u{2015}' // hyphens and dashes
            | '\u{2212}' // minus sign
            | '\u{FE58}' // small em dash
            | '\u{FE63}' // small hyphen-minus
            | '\u{FF0D}' // full-width hyphen-minus
            | '\u{FF0E}' // full-width full stop
            | '\u{FF0F}' // full-width solidus
    )
}

/// One character of the text: where it is and what it is.
#[derive(Clone, Copy)]
enum Class {
    Digit(u8),
    Separator,
    Other,
}

/// The characters of `bytes` (invalid UTF-8 counts as `Other`), with their byte offsets.
fn classify(bytes: &[u8]) -> Vec<(usize, usize, Class)> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        for (i, c) in chunk.valid().char_indices() {
            let class = match digit_value(c) {
                Some(d) => Class::Digit(d),
                None if is_separator(c) => Class::Separator,
                None => Class::Other,
            };
            out.push((at + i, at + i + c.len_utf8(), class));
        }
        at += chunk.valid().len();
        for i in 0..chunk.invalid().len() {
            out.push((at + i, at + i + 1, Class::Other));
        }
        at += chunk.invalid().len();
    }
    out
}

/// How many characters of `bytes` are digits (as [`classify`] counts them).
fn digit_count(bytes: &[u8]) -> usize {
    bytes
        .utf8_chunks()
        .map(|chunk| {
            chunk
                .valid()
                .chars()
                .filter(|c| digit_value(*c).is_some())
                .count()
        })
        .sum()
}

/// A maximal run of digits: its byte range and values.
struct Group {
    start: usize,
    end: usize,
    digits: Vec<u8>,
    /// Whether the separators before it (at most `MAX_SEPARATOR_RUN`) join it to the previous
    /// group.
    joined: bool,
}

fn groups(bytes: &[u8]) -> Vec<Group> {
    let chars = classify(bytes);
    let mut groups: Vec<Group> = Vec::new();
    let mut separators = 0usize;
    let mut broken = true;
    for (start, end, class) in chars {
        match class {
            Class::Digit(d) => {
                match groups.last_mut() {
                    Some(g) if g.end == start => {
                        g.digits.push(d);
                        g.end = end;
                    }
                    _ => groups.push(Group {
                        start,
                        end,
                        digits: vec![d],
                        joined: !broken && separators > 0 && separators <= MAX_SEPARATOR_RUN,
                    }),
                }
                separators = 0;
                broken = false;
            }
            Class::Separator => separators += 1,
            Class::Other => {
                broken = true;
                separators = 0;
            }
        }
    }
    groups
}

/// Byte ranges (start, end exclusive) of every PAN in `bytes`.
pub fn find(bytes: &[u8]) -> Vec<(usize, usize)> {
    // Most values (ids, codes, SKUs) hold fewer digits than the shortest PAN: answered without
    // allocating.
    if digit_count(bytes) < *PAN_DIGITS.start() {
        return Vec::new();
    }
    let uuids = uuid_spans(bytes);
    let groups = groups(bytes);
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        // The longest run of joined groups from `i` that is a PAN wins.
        let mut digits: Vec<u8> = Vec::new();
        let mut best = None;
        let mut j = i;
        while j < groups.len() && (j == i || groups[j].joined) {
            if j > i
                && (groups[j].digits.len() > MAX_GROUP_DIGITS
                    || groups[i].digits.len() > MAX_GROUP_DIGITS)
            {
                break;
            }
            digits.extend_from_slice(&groups[j].digits);
            if digits.len() > *PAN_DIGITS.end() {
                break;
            }
            let (start, end) = (groups[i].start, groups[j].end);
            let in_uuid = uuids.iter().any(|&(us, ue)| start >= us && end <= ue);
            if PAN_DIGITS.contains(&digits.len()) && !in_uuid && issued(&digits) && luhn(&digits) {
                best = Some((j, start, end));
            }
            j += 1;
        }
        match best {
            Some((last, start, end)) => {
                found.push((start, end));
                i = last + 1;
            }
            None => i += 1,
        }
    }
    found
}

/// Whether `s` holds a PAN.
pub fn contains(s: &str) -> bool {
    !find(s.as_bytes()).is_empty()
}

/// `bytes` with every byte of every digit of every PAN replaced by `*` (length and separators
/// kept). A PAN written with JSON escapes (`\u0034111…`, possibly mixed with plain digits) is
/// found once the escapes are decoded; then every escaped digit is replaced by `*` as well.
pub fn redact(bytes: &[u8]) -> Vec<u8> {
    let plain = redact_plain(bytes);
    let escapes = digit_escapes(&plain);
    if escapes.is_empty() {
        return plain;
    }
    // The text with its digit escapes decoded (each to one ASCII digit, the other bytes kept).
    let mut decoded = Vec::with_capacity(plain.len());
    let mut starred = Vec::with_capacity(plain.len());
    let mut at = 0;
    for (start, digit) in &escapes {
        decoded.extend_from_slice(&plain[at..*start]);
        decoded.push(*digit);
        starred.extend_from_slice(&plain[at..*start]);
        starred.push(b'*');
        at = start + 6;
    }
    decoded.extend_from_slice(&plain[at..]);
    starred.extend_from_slice(&plain[at..]);
    if find(&decoded).is_empty() {
        plain
    } else {
        redact_plain(&starred)
    }
}

/// Where `\uXXXX` escapes of a decimal digit start, with the ASCII digit they stand for.
fn digit_escapes(bytes: &[u8]) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 6 <= bytes.len() {
        if bytes[i] == b'\\' && bytes[i + 1] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == b'\\' && (bytes[i + 1] == b'u' || bytes[i + 1] == b'U') {
            let hex = std::str::from_utf8(&bytes[i + 2..i + 6]).ok();
            let digit = hex
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(escaped_digit);
            if let Some(d) = digit {
                out.push((i, b'0' + d));
                i += 6;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The value of a decimal digit code point: ASCII, full-width, Arabic-Indic (both), Devanagari.
fn escaped_digit(cp: u32) -> Option<u8> {
    [0x30, 0xff10, 0x660, 0x6f0, 0x966]
        .into_iter()
        .find(|zero| (*zero..*zero + 10).contains(&cp))
        .and_then(|zero| u8::try_from(cp - zero).ok())
}

fn redact_plain(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    // Starring one PAN can unmask another: a UUID-shaped token that hid a number stops being one
    // once a neighbouring PAN's digits are starred. So it goes on until nothing is found; each
    // round stars at least one digit, so it ends.
    loop {
        let found = find(&out);
        if found.is_empty() {
            return out;
        }
        let before = out.clone();
        for (start, end) in found {
            for (s, e, class) in classify(&before[start..end]) {
                if matches!(class, Class::Digit(_)) {
                    out[start + s..start + e].fill(b'*');
                }
            }
        }
    }
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

    /// The text of `bytes` with JSON escapes decoded, as a JSON reader sees it.
    fn json_text(bytes: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v.to_string()
    }

    /// Found by the `pan` fuzz target: the second number sits in a UUID-shaped token, which
    /// stops being one once the first PAN beside it is starred.
    #[test]
    fn redacting_a_pan_that_unmasks_another_redacts_that_one_too() {
        let text = b"u0B1111110-3011-3021-1119-1111A110-3011-3021-1119-1111AB111110-311";
        let redacted = redact(text);
        assert!(
            find(&redacted).is_empty(),
            "{}",
            String::from_utf8_lossy(&redacted)
        );
        assert_eq!(redacted.len(), text.len());
    }

    #[test]
    fn a_pan_written_with_json_escapes_is_redacted() {
        for doc in [
            r#"{"sku":"\u0034\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031"}"#,
            r#"{"sku":"4\u003111111111111111"}"#,
            r#"{"sku":"\u0034111 1111 1111 1111"}"#,
            r#"{"sku":"\uff14\uff11\uff11\uff11111111111111"}"#,
        ] {
            assert!(
                contains(&json_text(doc.as_bytes())),
                "the probe holds a PAN: {doc}"
            );
            let out = redact(doc.as_bytes());
            let text = json_text(&out);
            assert!(!contains(&text), "{doc} -> {text}");
        }
        // Escaped digits that make no PAN are kept.
        let doc = br#"{"sku":"\u0031\u0032\u0033"}"#;
        assert_eq!(redact(doc), doc.to_vec());
        // An escaped backslash is not an escape.
        let doc = br#"{"sku":"\\u0034111111111111111"}"#;
        assert_eq!(redact(doc), doc.to_vec());
    }

    #[test]
    fn finds_plain_spaced_and_dashed_pans() {
        assert!(contains("4111111111111111"));
        assert!(contains("card 4111 1111 1111 1111 ok"));
        assert!(contains("5500-0000-0000-0004"));
        assert!(contains("378282246310005")); // 15-digit Amex test number
    }

    #[test]
    fn ignores_non_luhn_short_long_and_unissued_runs() {
        assert!(!contains("4111111111111112"));
        assert!(!contains("411111111111")); // 12 digits
        assert!(!contains("41111111111111111111")); // 20 digits
        assert!(!contains("receipt R-000123"));
        // Luhn-valid, but no network issues 16 digits starting with 1 (epoch milliseconds).
        assert!(!contains("1764320000123-004"));
        assert!(!contains("1000000000000009"));
    }

    #[test]
    fn finds_a_pan_beside_other_digit_groups_and_with_any_separator() {
        for text in [
            "Receipt 123 4111 1111 1111 1111",
            "4111111111111111 0528",
            "4111  1111 1111 1111",
            "4111.1111.1111.1111",
            "4111/1111/1111/1111",
            "4111_1111_1111_1111",
            "4111\t1111\t1111\t1111",
            "4111\u{00A0}1111\u{00A0}1111\u{00A0}1111",
            "4111\n1111\n1111\n1111",
            "4111\u{2013}1111\u{2014}1111\u{2212}1111",
            "\u{FF14}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}",
            "\u{0664}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}\u{0661}",
        ] {
            assert!(contains(text), "{text:?}");
            assert!(!contains(std::str::from_utf8(&redact(text.as_bytes())).unwrap()), "{text:?}");
        }
    }

    #[test]
    fn a_number_is_never_cut_out_of_a_longer_run() {
        // 4111111111111111 inside 20 digits: not a group boundary.
        assert!(!contains("94111111111111111000"));
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
