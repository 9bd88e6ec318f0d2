//! Reports: byte-identical JSON and CSV for the same state, no full coupon code anywhere, and a
//! self-contained HTML page.

mod common;

use common::*;
use tillbridge_proto::pb;

const CODE: &str = "LEAKED-CODE-<b>&42";

fn scenario() -> Harness {
    let mut h = Harness::new();
    let mut late = redeem(4, CODE, "store-c", 60 * 26, 250);
    late.offline = true;
    h.feed(&[
        Input::Coupon(coupon(CODE, 1, 0)),
        Input::Redemption(redeem(1, CODE, "store-a", 10, 500)),
        Input::Redemption(redeem(2, CODE, "store-b", 20, 700)),
        Input::Redemption(redeem(3, "SHORT", "store-b", 30, 300)),
        Input::Balance(balance("profile-1", 10, 0)),
        Input::Loyalty(loyalty(
            5,
            "profile-1",
            pb::LoyaltyFactKind::RedeemedPoints,
            5,
            5,
            50,
        )),
    ]);
    h.feed(&[Input::Redemption(late)]);
    h
}

#[test]
fn the_same_state_gives_byte_identical_reports() {
    let mut h = scenario();
    let a = h.close_and_report();
    let b = tillbridge_reconciler::report(&h.state_dir(), &h.cfg, common::KEY).expect("report");
    assert_eq!(a.to_json().expect("json"), b.to_json().expect("json"));
    assert_eq!(a.to_csv(), b.to_csv());

    let out1 = h.dir.path().join("out1");
    let out2 = h.dir.path().join("out2");
    let files1 = a.write(&out1).expect("write");
    let files2 = b.write(&out2).expect("write");
    assert_eq!(files1.len(), 3);
    for (f1, f2) in files1.iter().zip(&files2) {
        let name = f1
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let (t1, t2) = (path_text(f1), path_text(f2));
        if name != "report.html" {
            assert_eq!(t1, t2, "{name} differs");
        }
        assert!(!t1.contains("LEAKED-CODE"), "{name} holds the full code");
        assert!(!t1.contains("SHORT"), "{name} holds the full short code");
    }

    // Cases by exposure, descending.
    let sums: Vec<i64> = a.cases.iter().map(|c| c.exposure.values().sum()).collect();
    let mut sorted = sums.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(sums, sorted);
    assert_eq!(a.cases[0].subject, "LE\u{2026}42");
    assert_eq!(a.cases[0].fingerprint.as_deref().map(str::len), Some(16));
    assert_eq!(a.cases[0].exposure.get("EUR"), Some(&950));

    let summary = a.summary();
    assert_eq!(summary.cases, 3);
    assert_eq!(summary.cases_by_kind.get("OVER_LIMIT"), Some(&1));
    assert_eq!(summary.cases_by_kind.get("UNKNOWN_COUPON"), Some(&1));
    assert_eq!(summary.cases_by_kind.get("POINTS_DEFICIT"), Some(&1));
    assert_eq!(summary.exposure.get("EUR"), Some(&1250));
    assert!(summary.to_string().contains("3 case(s)"));

    let html = path_text(&files1[2]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("<style>"));
    assert!(
        !html.contains("<script") && !html.contains("http://")
            || html.contains("xmlns=\"http://www.w3.org/2000/svg\"")
    );
    assert!(!html.contains("<b>&"), "unescaped text");
    let day_buckets: Vec<&str> = a.by_day.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(day_buckets, vec!["2024-06-01", "2024-06-02"]);
}

#[test]
fn report_without_state_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = tillbridge_reconciler::report(&dir.path().join("missing"), &cfg(), common::KEY);
    assert!(matches!(err, Err(tillbridge_reconciler::Error::NoState(_))));
}
