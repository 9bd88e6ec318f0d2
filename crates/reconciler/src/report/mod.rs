//! Reports for fraud analysts, built from the cases in the reconciler's state: the model
//! ([`Report`] and its parts, built here) and one file per output format, each adding its
//! method to [`Report`]:
//! - `json.rs`: [`Report::to_json`];
//! - `csv.rs`: [`Report::to_csv`];
//! - `html.rs`: [`Report::to_html`], a self-contained page with inline SVG charts, the
//!   compensating actions and fraud alerts when given ([`Report::with_activity`]), and a small
//!   inline script that sorts and filters the cases;
//! - `write.rs`: [`Report::write`], the three files into a directory.
//!
//! Determinism: the JSON and CSV hold only what the state holds, in a fixed order (cases by
//! exposure, then case id; buckets by key), and no processing time, so the same state gives
//! byte-identical files. Coupon codes appear only masked, with a keyed fingerprint.
//!
//! Amounts: report.json keeps integer minor units (the machine format); the summary, the HTML
//! and the CSV's readable columns show major units with the currency's own digits
//! ([`tillbridge_core::domain::money`]).

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
use tillbridge_core::domain::money::format_amount;
use tillbridge_proto::pb;

use crate::config::ReconcilerConfig;
use crate::error::Error;
use crate::model::{add_exposure, Case, SubjectType, TimelineEntry};
use crate::state::{cases_in, read_cases};

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

/// Builds reports from the committed state of a reconciler that is running in this process
/// (`Reconciler::report_reader`): what `report` cannot open while the stage holds the
/// state, the running process can still read, for a snapshot.
#[derive(Clone)]
pub struct ReportReader {
    pub(crate) db: sled::Db,
    pub(crate) cfg: ReconcilerConfig,
    pub(crate) fingerprint_key: String,
}

// By hand: the fingerprint key is a secret.
impl fmt::Debug for ReportReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportReader").finish_non_exhaustive()
    }
}

impl ReportReader {
    /// The report of the state as of its last commit.
    pub fn report(&self) -> Result<Report, Error> {
        Ok(Report::build(
            cases_in(&self.db)?,
            &self.cfg,
            &self.fingerprint_key,
        ))
    }
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
    /// The compensating actions and fraud alerts read from their topics, for the HTML page
    /// only (not in report.json: compensations carry processing time). `None`: not read.
    #[serde(skip)]
    activity: Option<Activity>,
}

/// What the topics hold beside the cases: compensating actions and fraud alerts, in topic order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Activity {
    compensations: Vec<CompensationRow>,
    alerts: Vec<AlertRow>,
}

/// A compensating action as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CompensationRow {
    id: String,
    /// REVERSE_COUPON_REDEMPTION, CLAWBACK_POINTS, REVIEW_ONLY or RETRACT.
    kind: String,
    case_id: String,
    subject: String,
    reason: String,
    exposure_minor: i64,
    currency: String,
    points: i64,
    event_ids: Vec<String>,
    /// For a RETRACT: the action no longer due.
    retracts: Option<String>,
    /// The id of the RETRACT that withdrew this action, if any.
    retracted_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
}

/// A fraud alert as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AlertRow {
    id: String,
    rule: String,
    store_id: String,
    subject: String,
    risk_score: u32,
    event_ids: Vec<String>,
    evidence: String,
    window_start: Option<DateTime<Utc>>,
    window_end: Option<DateTime<Utc>>,
    late: bool,
}

impl CompensationRow {
    fn from_pb(c: &pb::CompensatingAction) -> Self {
        CompensationRow {
            id: c.id.clone(),
            kind: pb::CompensationKind::try_from(c.kind)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_else(|_| c.kind.to_string()),
            case_id: c.case_id.clone(),
            subject: c.subject.clone(),
            reason: c.reason.clone(),
            exposure_minor: c.exposure_minor,
            currency: c.currency.clone(),
            points: c.points,
            event_ids: c.event_ids.clone(),
            retracts: c.retracts.clone(),
            retracted_by: None,
            decided_at: c.decided_at.as_ref().and_then(tillbridge_proto::datetime),
        }
    }

    fn is_retraction(&self) -> bool {
        self.retracts.is_some() || self.kind == "RETRACT"
    }
}

impl AlertRow {
    fn from_pb(a: &pb::FraudAlert) -> Self {
        AlertRow {
            id: a.id.clone(),
            rule: pb::AlertRule::try_from(a.rule)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_else(|_| a.rule.to_string()),
            store_id: a.store_id.clone(),
            subject: a.subject.clone(),
            risk_score: a.risk_score,
            event_ids: a.event_ids.clone(),
            evidence: a.evidence.clone(),
            window_start: a.window_start.as_ref().and_then(tillbridge_proto::datetime),
            window_end: a.window_end.as_ref().and_then(tillbridge_proto::datetime),
            late: a.late,
        }
    }
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
            write!(f, "; exposure {}", format_amount(*minor, cur))?;
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
            activity: None,
        }
    }

    /// The report with the compensating actions (`tillbridge.compensations`, retractions
    /// included) and the fraud alerts (`tillbridge.alerts`) read from their topics, in topic
    /// order: the HTML page shows them. report.json and report.csv do not change.
    pub fn with_activity(
        mut self,
        compensations: &[pb::CompensatingAction],
        alerts: &[pb::FraudAlert],
    ) -> Report {
        let mut rows: Vec<CompensationRow> =
            compensations.iter().map(CompensationRow::from_pb).collect();
        let retracted: BTreeMap<String, String> = rows
            .iter()
            .filter_map(|r| r.retracts.clone().map(|t| (t, r.id.clone())))
            .collect();
        for r in &mut rows {
            r.retracted_by = retracted.get(&r.id).cloned();
        }
        self.activity = Some(Activity {
            compensations: rows,
            alerts: alerts.iter().map(AlertRow::from_pb).collect(),
        });
        self
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

/// Amounts per currency in major units: `69.84 EUR + 1,200 JPY`.
fn money_list(m: &BTreeMap<String, i64>) -> String {
    let v: Vec<String> = m.iter().map(|(c, v)| format_amount(*v, c)).collect();
    v.join(" + ")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A report with one coupon case whose cashier id is a formula and a negative amount, one
    /// compensation, its retraction, and an alert.
    pub(crate) fn sample() -> Report {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default()
        };
        let entry = |n: u64, cashier: &str, amount: i64, verdict: &str| TimelineEntry {
            fact_id: format!("fact-{n}"),
            event_id: format!("event-{n}"),
            fact: "REDEEMED".into(),
            occurred_at: at("2026-03-01T10:00:00Z"),
            store_id: "S01".into(),
            till_id: "T1".into(),
            till_seq: n,
            cashier_id: Some(cashier.into()),
            profile_id: None,
            session_id: format!("session-{n}"),
            offline: false,
            amount_minor: amount,
            currency: "EUR".into(),
            points: 0,
            clawback_points: 0,
            balance_after: None,
            verdict: verdict.into(),
            is_final: false,
        };
        let case =
            |id: &str, subject: &str, exposure: i64, timeline: Vec<TimelineEntry>| CaseReport {
                case_id: id.into(),
                subject_type: "COUPON".into(),
                subject: subject.into(),
                fingerprint: Some("00ff".into()),
                kind: "OVER_LIMIT".into(),
                reasons: vec!["OVER_LIMIT".into()],
                status: "PROVISIONAL".into(),
                exposure: [("EUR".to_owned(), exposure)].into(),
                deficit_points: 0,
                flagged_event_ids: vec![],
                timeline,
            };
        let cases = vec![
            case(
                "case-b",
                "BB\u{2026}22",
                6984,
                vec![
                    entry(1, "=HYPERLINK(\"http://evil\",\"x\")", 6984, "OVER_LIMIT"),
                    entry(2, "cashier-2", -5, "STANDS"),
                ],
            ),
            case(
                "case-a",
                "AA\u{2026}11",
                250,
                vec![entry(3, "c", 250, "OVER_LIMIT")],
            ),
        ];
        let action = pb::CompensatingAction {
            id: "action-1".into(),
            kind: pb::CompensationKind::ReverseCouponRedemption as i32,
            case_id: "case-b".into(),
            subject: "BB\u{2026}22".into(),
            reason: "OVER_LIMIT".into(),
            exposure_minor: 6984,
            currency: "EUR".into(),
            points: 0,
            event_ids: vec!["event-1".into()],
            retracts: None,
            decided_at: None,
        };
        let retract = pb::CompensatingAction {
            id: "action-2".into(),
            kind: pb::CompensationKind::Retract as i32,
            retracts: Some("action-1".into()),
            ..action.clone()
        };
        let alert = pb::FraudAlert {
            id: "alert-1".into(),
            rule: pb::AlertRule::OfflineExposure as i32,
            store_id: "S03".into(),
            subject: "store:S03".into(),
            risk_score: 77,
            event_ids: vec!["event-9".into()],
            evidence: "offline discounts of 69.84 EUR <since>".into(),
            window_start: None,
            window_end: None,
            late: true,
        };
        Report {
            settlement_horizon_secs: 259_200,
            totals: Totals {
                cases: 2,
                provisional: 2,
                exposure: [("EUR".to_owned(), 7234)].into(),
                ..Totals::default()
            },
            by_store: vec![],
            by_day: vec![],
            cases,
            activity: None,
        }
        .with_activity(&[action, retract], &[alert])
    }

    #[test]
    fn activity_is_not_in_the_json() {
        let r = sample();
        let json = r.to_json().unwrap_or_default();
        assert!(json.contains("\"amount_minor\": 6984"), "minor units stay");
        assert!(!json.contains("action-1") && !json.contains("alert-1"));
        let a = r.activity.as_ref().map(|a| a.compensations.clone());
        let a = a.unwrap_or_default();
        assert_eq!(a[0].retracted_by.as_deref(), Some("action-2"));
        assert!(a[1].is_retraction() && !a[0].is_retraction());
    }

    #[test]
    fn the_summary_shows_major_units() {
        let mut s = Summary {
            cases: 2,
            ..Summary::default()
        };
        s.cases_by_kind.insert("OVER_LIMIT".into(), 2);
        s.exposure.insert("EUR".into(), 6984);
        s.exposure.insert("JPY".into(), 1200);
        s.exposure.insert("BHD".into(), 1234);
        assert_eq!(
            s.to_string(),
            "2 case(s) (OVER_LIMIT: 2); exposure 1.234 BHD; exposure 69.84 EUR; exposure 1,200 JPY"
        );
        let m: BTreeMap<String, i64> = [("EUR".to_owned(), -5), ("JPY".to_owned(), 7)].into();
        assert_eq!(money_list(&m), "-0.05 EUR + 7 JPY");
    }
}
