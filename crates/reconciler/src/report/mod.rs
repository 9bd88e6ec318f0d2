//! Reports for fraud analysts, built from the cases in the reconciler's state: the model
//! ([`Report`] and its parts, built here) and one file per output format, each adding its
//! method to [`Report`]:
//! - `json.rs`: [`Report::to_json`];
//! - `csv.rs`: [`Report::to_csv`];
//! - `html.rs`: [`Report::to_html`], a self-contained page with inline SVG charts;
//! - `write.rs`: [`Report::write`], the three files into a directory.
//!
//! Determinism: the JSON and CSV hold only what the state holds, in a fixed order (cases by
//! exposure, then case id; buckets by key), and no processing time, so the same state gives
//! byte-identical files. Coupon codes appear only masked, with a keyed fingerprint.

mod csv;
mod html;
mod json;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tillbridge_core::domain::code::{fingerprint, mask};

use crate::config::ReconcilerConfig;
use crate::error::Error;
use crate::model::{add_exposure, Case, SubjectType, TimelineEntry};
use crate::state::read_cases;

/// Reads the reconciler's state in `state_dir` and builds the report, coupon codes shown as
/// fingerprints made with `fingerprint_key`. Call it while no
/// [`Reconciler`](crate::processor::Reconciler) has the state open (sled takes an exclusive lock).
pub fn report(
    state_dir: &Path,
    cfg: &ReconcilerConfig,
    fingerprint_key: &str,
) -> Result<Report, Error> {
    Ok(Report::build(read_cases(state_dir)?, cfg, fingerprint_key))
}

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
    /// Builds the report from persisted cases, coupon codes masked and fingerprinted with
    /// `fingerprint_key`.
    fn build(cases: Vec<Case>, cfg: &ReconcilerConfig, fingerprint_key: &str) -> Report {
        let mut totals = Totals::default();
        let mut by_store: BTreeMap<String, Bucket> = BTreeMap::new();
        let mut by_day: BTreeMap<String, Bucket> = BTreeMap::new();
        let mut out = Vec::with_capacity(cases.len());
        for c in cases {
            let (subject, fp, subject_type) = match c.subject_type {
                SubjectType::Coupon => (
                    mask(&c.subject_key),
                    Some(fingerprint(fingerprint_key.as_bytes(), &c.subject_key)),
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
                add_exposure(&mut totals.exposure, cur, *v);
            }
            totals.deficit_points = totals.deficit_points.saturating_add(c.deficit_points);
            let flagged: BTreeSet<&str> = c.flagged.iter().map(String::as_str).collect();
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
                        add_exposure(&mut b.exposure, &e.currency, e.amount_minor);
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
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn money_list(m: &BTreeMap<String, i64>) -> String {
    let v: Vec<String> = m.iter().map(|(c, v)| format!("{v} {c}")).collect();
    v.join(" + ")
}
