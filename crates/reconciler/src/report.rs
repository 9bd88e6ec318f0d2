//! Reports for fraud analysts: JSON, CSV and a self-contained HTML page built from the cases in
//! the reconciler's state.
//!
//! Determinism: the JSON and CSV hold only what the state holds, in a fixed order (cases by
//! exposure, then case id; buckets by key), and no processing time, so the same state gives
//! byte-identical files. Coupon codes appear only masked, with a keyed fingerprint.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tillbridge_core::config::ReconcilerConfig;

use crate::model::TimelineEntry;
use crate::model::{Case, SubjectType};
use crate::Error;
use tillbridge_core::domain::code::{fingerprint, mask};

/// A case as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaseReport {
    pub case_id: String,
    /// COUPON or PROFILE.
    pub subject_type: String,
    /// The masked coupon code, or the profile id.
    pub subject: String,
    /// Keyed fingerprint of the coupon code (coupon cases only).
    pub fingerprint: Option<String>,
    /// The case's main reason (the first of its reasons).
    pub kind: String,
    pub reasons: Vec<String>,
    /// PROVISIONAL or FINAL.
    pub status: String,
    /// Discount given by the violating redemptions, minor units per currency.
    pub exposure: BTreeMap<String, i64>,
    pub deficit_points: i64,
    /// Event ids of the redemptions acted on, latest first.
    pub flagged_event_ids: Vec<String>,
    pub timeline: Vec<TimelineEntry>,
}

/// Violations and exposure of one store or day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub key: String,
    pub violations: u64,
    pub exposure: BTreeMap<String, i64>,
    pub deficit_points: i64,
}

/// Totals over every case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub cases: u64,
    pub provisional: u64,
    pub final_cases: u64,
    pub violations: u64,
    pub cases_by_kind: BTreeMap<String, u64>,
    pub exposure: BTreeMap<String, i64>,
    pub deficit_points: i64,
}

/// The report over a reconciler state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub settlement_horizon_secs: u64,
    pub totals: Totals,
    pub by_store: Vec<Bucket>,
    pub by_day: Vec<Bucket>,
    pub cases: Vec<CaseReport>,
}

/// Counts by case kind and exposure per currency, for a printed summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub cases: u64,
    pub cases_by_kind: BTreeMap<String, u64>,
    pub exposure: BTreeMap<String, i64>,
    pub deficit_points: i64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} case(s)", self.cases)?;
        let kinds: Vec<String> = self
            .cases_by_kind
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        if !kinds.is_empty() {
            write!(f, " ({})", kinds.join(", "))?;
        }
        for (cur, minor) in &self.exposure {
            write!(f, "; exposure {minor} {cur} (minor units)")?;
        }
        if self.deficit_points > 0 {
            write!(f, "; points deficit {}", self.deficit_points)?;
        }
        Ok(())
    }
}

fn is_violation(verdict: &str) -> bool {
    !matches!(verdict, "" | "STANDS" | "RELEASED" | "VOID" | "IN_SNAPSHOT")
}

fn exposure_sum(e: &BTreeMap<String, i64>) -> i64 {
    e.values().fold(0i64, |a, v| a.saturating_add(*v))
}

impl Report {
    /// Builds the report from persisted cases, masking coupon codes with `report_key`.
    pub(crate) fn build(cases: Vec<Case>, cfg: &ReconcilerConfig) -> Report {
        let mut totals = Totals::default();
        let mut by_store: BTreeMap<String, Bucket> = BTreeMap::new();
        let mut by_day: BTreeMap<String, Bucket> = BTreeMap::new();
        let mut out = Vec::with_capacity(cases.len());
        for c in cases {
            let (subject, fp, subject_type) = match c.subject_type {
                SubjectType::Coupon => (
                    mask(&c.subject_key),
                    Some(fingerprint(cfg.report_key.as_bytes(), &c.subject_key)),
                    "COUPON",
                ),
                SubjectType::Profile => (c.subject_key.clone(), None, "PROFILE"),
            };
            totals.cases += 1;
            if c.is_final {
                totals.final_cases += 1;
            } else {
                totals.provisional += 1;
            }
            *totals
                .cases_by_kind
                .entry(c.kind.as_str().to_owned())
                .or_default() += 1;
            for (cur, v) in &c.exposure {
                {
                    let t = totals.exposure.entry(cur.clone()).or_default();
                    *t = t.saturating_add(*v);
                }
            }
            totals.deficit_points = totals.deficit_points.saturating_add(c.deficit_points);
            let flagged: std::collections::BTreeSet<&str> =
                c.flagged.iter().map(String::as_str).collect();
            for e in &c.timeline {
                if !is_violation(&e.verdict) || !flagged.contains(e.event_id.as_str()) {
                    continue;
                }
                totals.violations += 1;
                let day = e.occurred_at.format("%Y-%m-%d").to_string();
                for (key, map) in [(e.store_id.clone(), &mut by_store), (day, &mut by_day)] {
                    let b = map.entry(key.clone()).or_insert_with(|| Bucket {
                        key,
                        ..Bucket::default()
                    });
                    b.violations += 1;
                    if c.subject_type == SubjectType::Coupon {
                        {
                            let t = b.exposure.entry(e.currency.clone()).or_default();
                            *t = t.saturating_add(e.amount_minor);
                        }
                    } else {
                        b.deficit_points = b.deficit_points.saturating_add(e.clawback_points);
                    }
                }
            }
            out.push(CaseReport {
                case_id: c.case_id,
                subject_type: subject_type.into(),
                subject,
                fingerprint: fp,
                kind: c.kind.as_str().into(),
                reasons: c.reasons.iter().map(|r| r.as_str().to_owned()).collect(),
                status: if c.is_final { "FINAL" } else { "PROVISIONAL" }.into(),
                exposure: c.exposure,
                deficit_points: c.deficit_points,
                flagged_event_ids: c.flagged,
                timeline: c.timeline,
            });
        }
        out.sort_by(|a, b| {
            exposure_sum(&b.exposure)
                .cmp(&exposure_sum(&a.exposure))
                .then(b.deficit_points.cmp(&a.deficit_points))
                .then_with(|| a.case_id.cmp(&b.case_id))
        });
        Report {
            settlement_horizon_secs: cfg.settlement_horizon.as_secs(),
            totals,
            by_store: by_store.into_values().collect(),
            by_day: by_day.into_values().collect(),
            cases: out,
        }
    }

    /// Counts by case kind and total exposure per currency.
    pub fn summary(&self) -> Summary {
        Summary {
            cases: self.totals.cases,
            cases_by_kind: self.totals.cases_by_kind.clone(),
            exposure: self.totals.exposure.clone(),
            deficit_points: self.totals.deficit_points,
        }
    }

    /// The JSON form (pretty, with a final newline).
    pub fn to_json(&self) -> Result<String, Error> {
        let mut s = serde_json::to_string_pretty(self).map_err(|e| Error::Corrupt {
            what: "report",
            detail: e.to_string(),
        })?;
        s.push('\n');
        Ok(s)
    }

    /// The CSV form: one row per timeline entry of every case, cases in report order.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "case_id,subject_type,subject,fingerprint,kind,status,case_exposure,deficit_points,\
             fact_id,event_id,fact,occurred_at,store_id,till_id,till_seq,cashier_id,profile_id,\
             session_id,offline,amount_minor,currency,points,clawback_points,balance_after,verdict,is_final\n",
        );
        for c in &self.cases {
            let exposure = money_list(&c.exposure);
            for e in &c.timeline {
                let fields = [
                    c.case_id.clone(),
                    c.subject_type.clone(),
                    c.subject.clone(),
                    c.fingerprint.clone().unwrap_or_default(),
                    c.kind.clone(),
                    c.status.clone(),
                    exposure.clone(),
                    c.deficit_points.to_string(),
                    e.fact_id.clone(),
                    e.event_id.clone(),
                    e.fact.clone(),
                    rfc3339(e.occurred_at),
                    e.store_id.clone(),
                    e.till_id.clone(),
                    e.till_seq.to_string(),
                    e.cashier_id.clone().unwrap_or_default(),
                    e.profile_id.clone().unwrap_or_default(),
                    e.session_id.clone(),
                    e.offline.to_string(),
                    e.amount_minor.to_string(),
                    e.currency.clone(),
                    e.points.to_string(),
                    e.clawback_points.to_string(),
                    e.balance_after.map(|b| b.to_string()).unwrap_or_default(),
                    e.verdict.clone(),
                    e.is_final.to_string(),
                ];
                let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                s.push_str(&row.join(","));
                s.push('\n');
            }
        }
        s
    }

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
            let currencies: std::collections::BTreeSet<&String> =
                buckets.iter().flat_map(|b| b.exposure.keys()).collect();
            for cur in currencies {
                let bars: Vec<(String, i64)> = buckets
                    .iter()
                    .map(|b| (b.key.clone(), b.exposure.get(cur).copied().unwrap_or(0)))
                    .collect();
                h.push_str(&bar_chart(
                    &format!("Exposure by {title} ({cur}, minor units)"),
                    &bars,
                ));
            }
            if buckets.iter().any(|b| b.deficit_points > 0) {
                let bars: Vec<(String, i64)> = buckets
                    .iter()
                    .map(|b| (b.key.clone(), b.deficit_points))
                    .collect();
                h.push_str(&bar_chart(&format!("Points deficit by {title}"), &bars));
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

    /// Writes report.json, report.csv and report.html into `out_dir` (created when missing) and
    /// returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<Vec<PathBuf>, Error> {
        // Reports name coupons and profiles: readable by their owner only.
        tillbridge_core::store::private_dir(out_dir).map_err(|source| Error::Io {
            path: out_dir.to_owned(),
            source,
        })?;
        let files = [
            ("report.json", self.to_json()?),
            ("report.csv", self.to_csv()),
            ("report.html", self.to_html()),
        ];
        let mut paths = Vec::with_capacity(files.len());
        for (name, body) in files {
            let path = out_dir.join(name);
            tillbridge_core::store::write_private(&path, body.as_bytes()).map_err(|source| {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            })?;
            paths.push(path);
        }
        Ok(paths)
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn money_list(m: &BTreeMap<String, i64>) -> String {
    let v: Vec<String> = m.iter().map(|(c, v)| format!("{v} {c}")).collect();
    v.join(" + ")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
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
    fn escapes_html_and_csv() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
