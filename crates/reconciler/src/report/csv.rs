//! The CSV form of a report.

use super::{money_list, rfc3339, Report};

impl Report {
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
}

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
}
