//! The CSV form of a report.
//!
//! Amounts: `amount_minor` keeps the integer minor units, `amount` beside it shows the same
//! value in major units with the currency's digits (`-0.05`; the code is in `currency`), and
//! `case_exposure` lists the case's exposure in major units with codes (`69.84 EUR`).
//!
//! Spreadsheet formulas: a free-text cell (ids, codes, verdicts: anything a till or the core
//! wrote) that starts with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'`, as
//! OWASP recommends against CSV injection, so `=HYPERLINK(...)` stays text. The numeric columns
//! this report writes itself (counts, points, amounts, flags, times) are left as they are, so a
//! negative number stays a number.

use tillbridge_core::domain::money::format_major;

use super::{money_list, rfc3339, Report};

/// One cell: free text from the inputs (neutralised) or a value this report formatted.
enum Cell {
    Text(String),
    Num(String),
}

impl Report {
    /// The CSV form: one row per timeline entry of every case, cases in report order.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "case_id,subject_type,subject,fingerprint,kind,status,case_exposure,deficit_points,\
             fact_id,event_id,fact,occurred_at,store_id,till_id,till_seq,cashier_id,profile_id,\
             session_id,offline,amount_minor,amount,currency,points,clawback_points,balance_after,\
             verdict,is_final\n",
        );
        for c in &self.cases {
            let exposure = money_list(&c.exposure);
            for e in &c.timeline {
                use Cell::{Num, Text};
                let fields = [
                    Text(c.case_id.clone()),
                    Text(c.subject_type.clone()),
                    Text(c.subject.clone()),
                    Text(c.fingerprint.clone().unwrap_or_default()),
                    Text(c.kind.clone()),
                    Text(c.status.clone()),
                    Num(exposure.clone()),
                    Num(c.deficit_points.to_string()),
                    Text(e.fact_id.clone()),
                    Text(e.event_id.clone()),
                    Text(e.fact.clone()),
                    Num(rfc3339(e.occurred_at)),
                    Text(e.store_id.clone()),
                    Text(e.till_id.clone()),
                    Num(e.till_seq.to_string()),
                    Text(e.cashier_id.clone().unwrap_or_default()),
                    Text(e.profile_id.clone().unwrap_or_default()),
                    Text(e.session_id.clone()),
                    Num(e.offline.to_string()),
                    Num(e.amount_minor.to_string()),
                    Num(format_major(e.amount_minor, &e.currency)),
                    Text(e.currency.clone()),
                    Num(e.points.to_string()),
                    Num(e.clawback_points.to_string()),
                    Num(e.balance_after.map(|b| b.to_string()).unwrap_or_default()),
                    Text(e.verdict.clone()),
                    Num(e.is_final.to_string()),
                ];
                let row: Vec<String> = fields
                    .iter()
                    .map(|f| match f {
                        Text(t) => csv_text(t),
                        Num(n) => csv_field(n),
                    })
                    .collect();
                s.push_str(&row.join(","));
                s.push('\n');
            }
        }
        s
    }
}

/// A free-text cell: neutralised against formulas, then quoted as needed.
fn csv_text(s: &str) -> String {
    csv_field(&neutralise(s))
}

/// `s` with a leading `'` when a spreadsheet would read it as a formula (OWASP, CSV injection).
fn neutralise(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

/// A cell quoted when it holds a separator, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_csv() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn report_rows_neutralise_text_and_keep_numbers() {
        let csv = crate::report::tests::sample().to_csv();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or(usize::MAX);
        assert_eq!(col("amount"), col("amount_minor") + 1);
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 3);
        // The formula cashier id is text: quoted (it holds commas and quotes) and prefixed.
        assert!(rows[0].contains(",\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\","));
        assert!(rows[0].contains(",6984,69.84,EUR,"));
        assert!(
            rows[0].contains(",69.84 EUR,"),
            "case exposure in major units"
        );
        // A negative amount stays a number in both amount columns.
        assert!(rows[1].contains(",-5,-0.05,EUR,"), "{}", rows[1]);
        assert!(rows[1].contains(",cashier-2,"));
        assert!(!csv.contains(",=") && !csv.contains(",\"="));
    }

    #[test]
    fn neutralises_formulas_in_text_cells() {
        assert_eq!(
            csv_text("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_text("+1+2"), "'+1+2");
        assert_eq!(csv_text("-2+3"), "'-2+3");
        assert_eq!(csv_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_text("\tcmd"), "'\tcmd");
        assert_eq!(csv_text("\rcmd"), "\"'\rcmd\"");
        assert_eq!(csv_text("cashier-1"), "cashier-1", "a '-' inside is fine");
        assert_eq!(csv_text(""), "");
    }
}
