//! Amounts and durations as people read them: minor units shown in major units with the
//! currency's own number of digits (ISO 4217), and durations in days, hours, minutes and seconds.
//!
//! Integer arithmetic only (no floats), safe for every `i64` including `i64::MIN`. Machine
//! formats (topic records, report.json) keep the integer minor units; these are for summaries,
//! printed lines, HTML and the readable CSV columns.

use std::time::Duration;

/// ISO 4217 currencies whose minor unit is not 1/100 of the major one, with their exponent.
/// Every other code (and an unknown one) has 2.
const EXPONENTS: &[(&str, u32)] = &[
    // No minor unit.
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    // Thousandths.
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
    // Units of account with four digits.
    ("CLF", 4),
    ("UYW", 4),
];

/// The number of digits after the decimal point of `currency` (ISO 4217; 2 when not listed).
pub fn minor_digits(currency: &str) -> u32 {
    EXPONENTS
        .iter()
        .find(|(c, _)| *c == currency)
        .map_or(2, |(_, d)| *d)
}

/// `minor` units of `currency` as a major-unit number with the currency's digits, `,` between
/// groups of three digits: `1,234.56` for 123456 EUR, `1,234` for 1234 JPY, `-0.005` for -5 BHD.
pub fn format_major(minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    // unsigned_abs: i64::MIN has no positive i64 but fits a u64.
    let abs = minor.unsigned_abs();
    let scale = 10u64.pow(digits);
    let (whole, frac) = (abs / scale, abs % scale);
    let mut s = String::with_capacity(32);
    if minor < 0 {
        s.push('-');
    }
    s.push_str(&group_thousands(whole));
    if digits > 0 {
        s.push('.');
        s.push_str(&format!("{frac:0width$}", width = digits as usize));
    }
    s
}

/// `minor` units of `currency` in major units followed by the code: `69.84 EUR`, `1,200 JPY`,
/// `-0.050 BHD`. An empty code is shown with two digits and no code.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let n = format_major(minor, currency);
    if currency.is_empty() {
        n
    } else {
        format!("{n} {currency}")
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let len = digits.len();
    let mut s = String::with_capacity(len + len / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (len - i) % 3 == 0 {
            s.push(',');
        }
        s.push(ch);
    }
    s
}

/// A duration in whole seconds as people read it: `3d`, `1m 30s`, `2h 5s`, `0s`; below one
/// second, milliseconds (`250ms`). Days are the largest unit (no months or years, whose length
/// varies).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        let ms = d.subsec_millis();
        return if ms > 0 {
            format!("{ms}ms")
        } else {
            "0s".to_owned()
        };
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let v: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    v.join(" ")
}

/// [`format_duration`] of a number of seconds.
pub fn format_secs(secs: u64) -> String {
    format_duration(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_digit_currencies() {
        assert_eq!(format_amount(6984, "EUR"), "69.84 EUR");
        assert_eq!(format_amount(123_456, "EUR"), "1,234.56 EUR");
        assert_eq!(format_amount(5, "EUR"), "0.05 EUR");
        assert_eq!(format_amount(-5, "EUR"), "-0.05 EUR");
        assert_eq!(format_amount(-123_456_789, "USD"), "-1,234,567.89 USD");
        assert_eq!(format_amount(0, "EUR"), "0.00 EUR");
        assert_eq!(
            format_amount(100, "XYZ"),
            "1.00 XYZ",
            "unknown codes have 2"
        );
    }

    #[test]
    fn zero_three_and_four_digit_currencies() {
        assert_eq!(format_amount(1200, "JPY"), "1,200 JPY");
        assert_eq!(format_amount(-7, "KRW"), "-7 KRW");
        assert_eq!(format_amount(0, "JPY"), "0 JPY");
        assert_eq!(format_amount(1234, "BHD"), "1.234 BHD");
        assert_eq!(format_amount(-50, "KWD"), "-0.050 KWD");
        assert_eq!(format_amount(0, "BHD"), "0.000 BHD");
        assert_eq!(format_amount(12_345, "CLF"), "1.2345 CLF");
        assert_eq!(minor_digits("EUR"), 2);
        assert_eq!(minor_digits("TND"), 3);
        assert_eq!(minor_digits("XPF"), 0);
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(format_major(i64::MAX, "EUR"), "92,233,720,368,547,758.07");
        assert_eq!(format_major(i64::MIN, "EUR"), "-92,233,720,368,547,758.08");
        assert_eq!(format_major(i64::MIN, "JPY"), "-9,223,372,036,854,775,808");
        assert_eq!(format_major(i64::MAX, "CLF"), "922,337,203,685,477.5807");
        assert_eq!(format_major(i64::MIN, "BHD"), "-9,223,372,036,854,775.808");
    }

    #[test]
    fn no_code_no_suffix() {
        assert_eq!(format_amount(6984, ""), "69.84");
    }

    #[test]
    fn durations() {
        assert_eq!(format_secs(259_200), "3d");
        assert_eq!(format_secs(90), "1m 30s");
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(3_605), "1h 5s");
        assert_eq!(format_secs(90_061), "1d 1h 1m 1s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_secs(u64::MAX), "213503982334601d 7h 15s");
    }
}
