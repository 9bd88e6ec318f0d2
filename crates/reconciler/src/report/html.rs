//! The HTML form of a report: one self-contained page.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{is_violation, money_list, rfc3339, Bucket, Report};

impl Report {
    /// The self-contained HTML page: inline CSS and SVG, no script, no external asset.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        h.push_str(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>tillbridge reconciliation report</title>\n<style>\
             body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
             table{border-collapse:collapse;margin:0.5em 0 1.5em}\
             th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}\
             th{background:#f0f0f0}.v{color:#b00020;font-weight:bold}.num{text-align:right}\
             section.case{border-top:2px solid #444;margin-top:1.5em}\
             .tag{display:inline-block;padding:1px 6px;border-radius:3px;background:#eee}\
             </style></head><body>\n<h1>tillbridge reconciliation report</h1>\n",
        );
        let t = &self.totals;
        let _ = writeln!(
            h,
            "<p>Settlement horizon: {} s. Cases: {} ({} provisional, {} final). Violations: {}. \
             Points deficit: {}.</p>",
            self.settlement_horizon_secs,
            t.cases,
            t.provisional,
            t.final_cases,
            t.violations,
            t.deficit_points
        );
        h.push_str("<h2>Totals</h2>\n<table><tr><th>Case kind</th><th>Cases</th></tr>\n");
        for (k, n) in &t.cases_by_kind {
            let _ = writeln!(h, "<tr><td>{}</td><td class=\"num\">{n}</td></tr>", esc(k));
        }
        h.push_str("</table>\n<table><tr><th>Currency</th><th>Exposure (minor units)</th></tr>\n");
        for (cur, v) in &t.exposure {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{v}</td></tr>",
                esc(cur)
            );
        }
        h.push_str("</table>\n");
        for (title, heading, buckets) in [
            ("store", "Store", &self.by_store),
            ("day", "Day", &self.by_day),
        ] {
            let _ = writeln!(h, "<h2>By {title}</h2>");
            h.push_str(&bucket_table(heading, buckets));
            let currencies: BTreeSet<&String> =
                buckets.iter().flat_map(|b| b.exposure.keys()).collect();
            for cur in currencies {
                h.push_str(&bucket_chart(
                    &format!("Exposure by {title} ({cur}, minor units)"),
                    buckets,
                    |b| b.exposure.get(cur).copied().unwrap_or(0),
                ));
            }
            if buckets.iter().any(|b| b.deficit_points > 0) {
                h.push_str(&bucket_chart(
                    &format!("Points deficit by {title}"),
                    buckets,
                    |b| b.deficit_points,
                ));
            }
        }
        h.push_str("<h2>Cases by exposure</h2>\n");
        for c in &self.cases {
            let _ = write!(
                h,
                "<section class=\"case\"><h3>{} <span class=\"tag\">{}</span> <span class=\"tag\">{}</span></h3>\n\
                 <p>Case {} &middot; {} {}{} &middot; reasons: {} &middot; exposure: {} &middot; \
                 points deficit: {}</p>\n",
                esc(&c.subject),
                esc(&c.kind),
                esc(&c.status),
                esc(&c.case_id),
                esc(&c.subject_type.to_lowercase()),
                esc(&c.subject),
                c.fingerprint
                    .as_ref()
                    .map(|f| format!(" (fingerprint {})", esc(f)))
                    .unwrap_or_default(),
                esc(&c.reasons.join(", ")),
                esc(&money_list(&c.exposure)),
                c.deficit_points
            );
            h.push_str(
                "<table><tr><th>Event time</th><th>Fact</th><th>Store</th><th>Till</th><th>Seq</th>\
                 <th>Cashier</th><th>Profile</th><th>Offline</th><th>Amount</th><th>Points</th>\
                 <th>Clawback</th><th>Balance</th><th>Verdict</th><th>Final</th><th>Event id</th></tr>\n",
            );
            for e in &c.timeline {
                let cls = if is_violation(&e.verdict) {
                    " class=\"v\""
                } else {
                    ""
                };
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td class=\"num\">{} {}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td><td{cls}>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&rfc3339(e.occurred_at)),
                    esc(&e.fact),
                    esc(&e.store_id),
                    esc(&e.till_id),
                    e.till_seq,
                    esc(e.cashier_id.as_deref().unwrap_or("")),
                    esc(e.profile_id.as_deref().unwrap_or("")),
                    if e.offline { "offline" } else { "online" },
                    e.amount_minor,
                    esc(&e.currency),
                    e.points,
                    e.clawback_points,
                    e.balance_after.map(|b| b.to_string()).unwrap_or_default(),
                    esc(&e.verdict),
                    if e.is_final { "yes" } else { "no" },
                    esc(&e.event_id),
                );
            }
            h.push_str("</table></section>\n");
        }
        h.push_str("</body></html>\n");
        h
    }
}

/// Escapes text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn bucket_table(title: &str, buckets: &[Bucket]) -> String {
    let mut h = format!(
        "<table><tr><th>{}</th><th>Violations</th><th>Exposure</th><th>Points deficit</th></tr>\n",
        esc(title)
    );
    for b in buckets {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&b.key),
            b.violations,
            esc(&money_list(&b.exposure)),
            b.deficit_points
        );
    }
    h.push_str("</table>\n");
    h
}

/// Width of the bar area of a chart, in SVG user units.
const CHART_BAR_WIDTH: i64 = 400;
const CHART_ROW_HEIGHT: i64 = 22;
const CHART_LABEL_WIDTH: i64 = 160;

/// A bar chart of one value of each bucket, labelled by its key.
fn bucket_chart(title: &str, buckets: &[Bucket], value: impl Fn(&Bucket) -> i64) -> String {
    let bars: Vec<(String, i64)> = buckets.iter().map(|b| (b.key.clone(), value(b))).collect();
    bar_chart(title, &bars)
}

/// A horizontal bar chart as inline SVG; bar lengths in integer arithmetic.
fn bar_chart(title: &str, bars: &[(String, i64)]) -> String {
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let height = CHART_ROW_HEIGHT * (bars.len() as i64) + 30;
    let width = CHART_LABEL_WIDTH + CHART_BAR_WIDTH + 120;
    let mut s = format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{t}\"><text x=\"0\" y=\"16\" font-size=\"14\" font-weight=\"bold\">{t}</text>\n",
        t = esc(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 26 + CHART_ROW_HEIGHT * i as i64;
        let w = i128::from((*v).max(0)) * i128::from(CHART_BAR_WIDTH) / i128::from(max);
        let _ = writeln!(
            s,
            "<text x=\"0\" y=\"{ty}\" font-size=\"12\">{l}</text>\
             <rect x=\"{CHART_LABEL_WIDTH}\" y=\"{y}\" width=\"{w}\" height=\"{bh}\" fill=\"#c0392b\"/>\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"12\">{v}</text>",
            ty = y + 14,
            l = esc(label),
            bh = CHART_ROW_HEIGHT - 6,
            tx = i128::from(CHART_LABEL_WIDTH) + w + 6,
        );
    }
    s.push_str("</svg></figure>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
