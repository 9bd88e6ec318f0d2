//! The HTML form of a report: one self-contained page (inline CSS, SVG and script; no external
//! asset, no network access: a Content-Security-Policy forbids any). Amounts in major units with
//! the currency's digits; the sortable tables carry the integer minor units in `data-sort`.
//!
//! The inline script sorts every `table.sortable` by the clicked header (again: reversed) and
//! filters a table by the text typed in its `input[data-filter]`; filtering the cases also hides
//! the detail sections of the cases it hides. Without script the page shows everything.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use tillbridge_core::domain::money::{format_amount, format_secs};

use super::{
    exposure_sum, is_violation, money_list, rfc3339, Activity, AlertRow, Bucket, CompensationRow,
    Report,
};

const HEAD: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
     <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
     style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
     <title>tillbridge reconciliation report</title>\n<style>\
     body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
     table{border-collapse:collapse;margin:0.5em 0 1.5em}\
     th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left;vertical-align:top}\
     th{background:#f0f0f0}.v{color:#b00020;font-weight:bold}.num{text-align:right;white-space:nowrap}\
     table.sortable th{cursor:pointer;user-select:none}\
     table.sortable th[aria-sort=ascending]::after{content:\" \\25B2\"}\
     table.sortable th[aria-sort=descending]::after{content:\" \\25BC\"}\
     tr.retract td{background:#fff4e5}tr.retracted td{color:#888;text-decoration:line-through}\
     td.evidence{max-width:48em}.muted{color:#666}\
     input.filter{font-size:14px;padding:3px 6px;width:24em}\
     section.case{border-top:2px solid #444;margin-top:1.5em}\
     .tag{display:inline-block;padding:1px 6px;border-radius:3px;background:#eee}\
     </style></head><body>\n<h1>tillbridge reconciliation report</h1>\n";

/// Sorting and filtering, inline (no external script).
const SCRIPT: &str = r#"<script>
(function () {
  function each(list, f) { Array.prototype.forEach.call(list, f); }
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    return v !== null ? v : cell.textContent.trim();
  }
  each(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    each(heads, function (th, i) {
      th.tabIndex = 0;
      th.title = "sort by " + th.textContent;
      function sort() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        each(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var num = th.hasAttribute("data-num");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (x, y) {
          var a = key(x.cells[i]), b = key(y.cells[i]);
          var c = num ? Number(a) - Number(b) : a.localeCompare(b, undefined, { numeric: true });
          return asc ? c : -c;
        });
        each(rows, function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
  });
  each(document.querySelectorAll("input[data-filter]"), function (input) {
    var id = input.getAttribute("data-filter");
    var table = document.getElementById(id);
    var count = document.getElementById(id + "-count");
    function apply() {
      var q = input.value.trim().toLowerCase();
      var rows = table.tBodies[0].rows, shown = 0;
      each(rows, function (r) {
        var hit = q === "" || r.textContent.toLowerCase().indexOf(q) >= 0;
        r.hidden = !hit;
        if (hit) { shown++; }
        var c = r.getAttribute("data-case");
        var section = c === null ? null : document.getElementById("case-" + c);
        if (section) { section.hidden = !hit; }
      });
      if (count) { count.textContent = shown + " of " + rows.length + " shown"; }
    }
    input.addEventListener("input", apply);
    apply();
  });
})();
</script>
"#;

impl Report {
    /// The self-contained HTML page: inline CSS, SVG and script, no external asset.
    pub fn to_html(&self) -> String {
        let mut h = String::from(HEAD);
        let t = &self.totals;
        let _ = writeln!(
            h,
            "<p>Settlement horizon: {}. Cases: {} ({} provisional, {} final). Violations: {}. \
             Points deficit: {}.</p>",
            esc(&format_secs(self.settlement_horizon_secs)),
            t.cases,
            t.provisional,
            t.final_cases,
            t.violations,
            t.deficit_points
        );
        h.push_str("<p>Contents: <a href=\"#totals\">totals</a> &middot; <a href=\"#cases\">cases</a> \
             &middot; <a href=\"#compensations\">compensating actions</a> &middot; \
             <a href=\"#alerts\">fraud alerts</a> &middot; <a href=\"#details\">case details</a></p>\n");
        h.push_str(
            "<h2 id=\"totals\">Totals</h2>\n<table><tr><th>Case kind</th><th>Cases</th></tr>\n",
        );
        for (k, n) in &t.cases_by_kind {
            let _ = writeln!(h, "<tr><td>{}</td><td class=\"num\">{n}</td></tr>", esc(k));
        }
        h.push_str("</table>\n<table><tr><th>Currency</th><th>Exposure</th></tr>\n");
        for (cur, v) in &t.exposure {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\" data-sort=\"{v}\">{}</td></tr>",
                esc(cur),
                esc(&format_amount(*v, cur))
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
                    &format!("Exposure by {title} ({cur})"),
                    buckets,
                    |b| b.exposure.get(cur).copied().unwrap_or(0),
                    |v| format_amount(v, cur),
                ));
            }
            if buckets.iter().any(|b| b.deficit_points > 0) {
                h.push_str(&bucket_chart(
                    &format!("Points deficit by {title}"),
                    buckets,
                    |b| b.deficit_points,
                    |v| v.to_string(),
                ));
            }
        }
        self.cases_table(&mut h);
        activity_sections(&mut h, self.activity.as_ref());
        h.push_str("<h2 id=\"details\">Case details, by exposure</h2>\n");
        for c in &self.cases {
            let _ = write!(
                h,
                "<section class=\"case\" id=\"case-{}\"><h3>{} <span class=\"tag\">{}</span> <span class=\"tag\">{}</span></h3>\n\
                 <p>Case {} &middot; {} {}{} &middot; reasons: {} &middot; exposure: {} &middot; \
                 points deficit: {}</p>\n",
                esc(&c.case_id),
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
                     <td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td><td{cls}>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&rfc3339(e.occurred_at)),
                    esc(&e.fact),
                    esc(&e.store_id),
                    esc(&e.till_id),
                    e.till_seq,
                    esc(e.cashier_id.as_deref().unwrap_or("")),
                    esc(e.profile_id.as_deref().unwrap_or("")),
                    if e.offline { "offline" } else { "online" },
                    esc(&format_amount(e.amount_minor, &e.currency)),
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
        h.push_str(SCRIPT);
        h.push_str("</body></html>\n");
        h
    }

    /// One row per case: sortable, filtered by the box above it.
    fn cases_table(&self, h: &mut String) {
        h.push_str(
            "<h2 id=\"cases\">Cases</h2>\n<p><label>Filter cases: <input class=\"filter\" \
             type=\"search\" id=\"cases-filter\" data-filter=\"cases-table\" \
             placeholder=\"code, profile, store, kind, status\"></label> \
             <span class=\"muted\" id=\"cases-table-count\"></span></p>\n\
             <table class=\"sortable\" id=\"cases-table\"><thead><tr><th>Subject</th><th>Type</th>\
             <th>Kind</th><th>Status</th><th>Reasons</th><th data-num>Exposure</th>\
             <th data-num>Points deficit</th><th>Stores</th><th data-num>Facts</th></tr></thead><tbody>\n",
        );
        for c in &self.cases {
            let stores: BTreeSet<&str> = c.timeline.iter().map(|e| e.store_id.as_str()).collect();
            let _ = writeln!(
                h,
                "<tr data-case=\"{id}\"><td><a href=\"#case-{id}\">{}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td class=\"num\" data-sort=\"{}\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&c.subject),
                esc(&c.subject_type),
                esc(&c.kind),
                esc(&c.status),
                esc(&c.reasons.join(", ")),
                exposure_sum(&c.exposure),
                esc(&money_list(&c.exposure)),
                c.deficit_points,
                esc(&stores.into_iter().collect::<Vec<_>>().join(", ")),
                c.timeline.len(),
                id = esc(&c.case_id),
            );
        }
        h.push_str("</tbody></table>\n");
    }
}

/// The compensating actions and the fraud alerts, or a note that they were not read.
fn activity_sections(h: &mut String, activity: Option<&Activity>) {
    h.push_str("<h2 id=\"compensations\">Compensating actions</h2>\n");
    let Some(a) = activity else {
        h.push_str(
            "<p class=\"muted\">Not read: this report was built from the reconciler state alone \
             (<code>tillbridge report</code> reads them from the topics).</p>\n\
             <h2 id=\"alerts\">Fraud alerts</h2>\n<p class=\"muted\">Not read.</p>\n",
        );
        return;
    };
    compensations_table(h, &a.compensations);
    h.push_str("<h2 id=\"alerts\">Fraud alerts</h2>\n");
    alerts_table(h, &a.alerts);
}

fn compensations_table(h: &mut String, rows: &[CompensationRow]) {
    if rows.is_empty() {
        h.push_str("<p>None.</p>\n");
        return;
    }
    let retractions = rows.iter().filter(|r| r.is_retraction()).count();
    let _ = writeln!(
        h,
        "<p>{} action(s) on <code>tillbridge.compensations</code>, {retractions} of them \
         retraction(s) of an earlier action no longer due.</p>\n\
         <p><label>Filter actions: <input class=\"filter\" type=\"search\" \
         data-filter=\"compensations-table\"></label> \
         <span class=\"muted\" id=\"compensations-table-count\"></span></p>",
        rows.len()
    );
    h.push_str(
        "<table class=\"sortable\" id=\"compensations-table\"><thead><tr><th>Decided at</th>\
         <th>Kind</th><th>Subject</th><th>Reason</th><th data-num>Exposure</th><th data-num>Points</th>\
         <th data-num>Events</th><th>Status</th><th>Case</th><th>Action id</th></tr></thead><tbody>\n",
    );
    for r in rows {
        let (cls, status) = if let Some(t) = &r.retracts {
            (" class=\"retract\"", format!("retraction of {}", esc(t)))
        } else if r.is_retraction() {
            (" class=\"retract\"", "retraction".to_owned())
        } else if let Some(by) = &r.retracted_by {
            (" class=\"retracted\"", format!("retracted by {}", esc(by)))
        } else {
            ("", "due".to_owned())
        };
        let _ = writeln!(
            h,
            "<tr{cls}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\" data-sort=\"{}\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{status}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.decided_at.map(rfc3339).unwrap_or_default()),
            esc(&r.kind),
            esc(&r.subject),
            esc(&r.reason),
            r.exposure_minor,
            // A points clawback has no money exposure.
            if r.exposure_minor == 0 && (r.currency.is_empty() || r.points != 0) {
                String::new()
            } else {
                esc(&format_amount(r.exposure_minor, &r.currency))
            },
            r.points,
            r.event_ids.len(),
            esc(&r.case_id),
            esc(&r.id),
        );
    }
    h.push_str("</tbody></table>\n");
}

fn alerts_table(h: &mut String, rows: &[AlertRow]) {
    if rows.is_empty() {
        h.push_str("<p>None.</p>\n");
        return;
    }
    let _ = writeln!(
        h,
        "<p>{} alert(s) on <code>tillbridge.alerts</code>.</p>\n\
         <p><label>Filter alerts: <input class=\"filter\" type=\"search\" \
         data-filter=\"alerts-table\"></label> \
         <span class=\"muted\" id=\"alerts-table-count\"></span></p>",
        rows.len()
    );
    h.push_str(
        "<table class=\"sortable\" id=\"alerts-table\"><thead><tr><th>Rule</th><th>Subject</th>\
         <th>Store</th><th data-num>Score</th><th>Late</th><th>Window start</th><th>Window end</th>\
         <th>Evidence</th><th data-num>Events</th><th>Alert id</th></tr></thead><tbody>\n",
    );
    for a in rows {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"evidence\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&a.rule),
            esc(&a.subject),
            esc(&a.store_id),
            a.risk_score,
            if a.late { "late" } else { "" },
            esc(&a.window_start.map(rfc3339).unwrap_or_default()),
            esc(&a.window_end.map(rfc3339).unwrap_or_default()),
            esc(&a.evidence),
            a.event_ids.len(),
            esc(&a.id),
        );
    }
    h.push_str("</tbody></table>\n");
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

/// A bar chart of one value of each bucket, labelled by its key, the value shown by `show`.
fn bucket_chart(
    title: &str,
    buckets: &[Bucket],
    value: impl Fn(&Bucket) -> i64,
    show: impl Fn(i64) -> String,
) -> String {
    let bars: Vec<(String, i64)> = buckets.iter().map(|b| (b.key.clone(), value(b))).collect();
    bar_chart(title, &bars, show)
}

/// A horizontal bar chart as inline SVG; bar lengths in integer arithmetic.
fn bar_chart(title: &str, bars: &[(String, i64)], show: impl Fn(i64) -> String) -> String {
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
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"12\">{shown}</text>",
            ty = y + 14,
            l = esc(label),
            shown = esc(&show(*v)),
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
    fn the_page_shows_activity_amounts_and_sorts() {
        let html = crate::report::tests::sample().to_html();
        assert!(
            html.contains("Settlement horizon: 3d."),
            "a readable horizon"
        );
        assert!(!html.contains("minor units") && !html.contains("259200"));
        assert!(html.contains(">69.84 EUR<") && html.contains(">72.34 EUR<"));
        assert!(html.contains(">-0.05 EUR<"));
        // The cases table: sortable, filterable, linked to the details.
        assert!(html.contains("<table class=\"sortable\" id=\"cases-table\">"));
        assert!(html.contains("data-filter=\"cases-table\""));
        assert!(html.contains("<tr data-case=\"case-b\"><td><a href=\"#case-case-b\">"));
        assert!(html.contains("<section class=\"case\" id=\"case-case-b\">"));
        // Compensations with the retraction shown as such, and the one it retracts.
        assert!(html.contains("1 of them retraction(s)"));
        assert!(html.contains("<tr class=\"retract\">") && html.contains("retraction of action-1"));
        assert!(
            html.contains("<tr class=\"retracted\">") && html.contains("retracted by action-2")
        );
        // The alert, its evidence escaped.
        assert!(html.contains("<td>OFFLINE_EXPOSURE</td><td>store:S03</td><td>S03</td><td class=\"num\">77</td><td>late</td>"));
        assert!(html.contains("offline discounts of 69.84 EUR &lt;since&gt;"));
        // Self-contained: inline script, a policy that forbids any load, no src or link.
        assert!(html.contains("<script>") && html.contains("default-src 'none'"));
        assert!(!html.contains(" src=") && !html.contains("<link"));
    }

    #[test]
    fn without_activity_the_page_says_so() {
        let mut r = crate::report::tests::sample();
        r.activity = None;
        let html = r.to_html();
        assert!(html.contains("id=\"compensations\"") && html.contains("Not read"));
        assert!(!html.contains("compensations-table"));
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
