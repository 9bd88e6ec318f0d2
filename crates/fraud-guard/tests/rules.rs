//! Table tests per rule: at, below and above the threshold, window edges, late batches,
//! cool-down merging, and replays that must not count twice.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use prost::Message;
use tillbridge_core::stage::Processor;
use tillbridge_fraud_guard::{input_topics, FraudGuardConfig};
use tillbridge_proto::pb::{self, AlertRule};

const CODE: &str = "SPRING-2026-ABCDEF";

/// Name, redemptions of CODE at (store, till, minutes after T0), alerts expected.
type VelocityCase = (&'static str, Vec<(&'static str, &'static str, i64)>, usize);
/// Name, offline sales (till, coupon discount), whether t1 syncs after the first, alerts.
type ExposureCase = (&'static str, Vec<(&'static str, i64)>, bool, usize);
/// Name, (till_seq, minutes after T0) in arrival order, alerts.
type GapCase = (&'static str, Vec<(u64, i64)>, usize);

// ---------------------------------------------------------------- COUPON_VELOCITY

/// Redemptions of CODE at (store, till, minutes after T0).
async fn velocity(plan: &[(&str, &str, i64)]) -> (Vec<pb::FraudAlert>, Harness) {
    let mut h = Harness::new();
    let evs = plan
        .iter()
        .map(|(s, t, m)| sale(s, t, T0 + m * MIN, &[(CODE, 1000)]))
        .collect();
    let alerts = h.feed(evs).await;
    (of_rule(&alerts, AlertRule::CouponVelocity), h)
}

#[tokio::test]
async fn coupon_velocity_table() {
    let edge = 30; // minutes, the default window
    let cases: Vec<VelocityCase> = vec![
        ("2 stores: below", vec![("s1", "t1", 0), ("s2", "t1", 5)], 0),
        (
            "3 stores: at",
            vec![("s1", "t1", 0), ("s2", "t1", 5), ("s3", "t1", 10)],
            1,
        ),
        (
            "5 stores: above, merged into one",
            vec![
                ("s1", "t1", 0),
                ("s2", "t1", 1),
                ("s3", "t1", 2),
                ("s4", "t1", 3),
                ("s5", "t1", 4),
            ],
            1,
        ),
        (
            "3 stores, last exactly at the window end",
            vec![("s1", "t1", 0), ("s2", "t1", 10), ("s3", "t1", edge)],
            1,
        ),
        (
            "3 stores over 31 minutes",
            vec![("s1", "t1", 0), ("s2", "t1", 10), ("s3", "t1", edge + 1)],
            0,
        ),
        (
            "3 tills of one store: below",
            vec![("s1", "t1", 0), ("s1", "t2", 1), ("s1", "t3", 2)],
            0,
        ),
        (
            "4 tills of one store: at",
            vec![
                ("s1", "t1", 0),
                ("s1", "t2", 1),
                ("s1", "t3", 2),
                ("s1", "t4", 3),
            ],
            1,
        ),
        (
            "same till many times",
            vec![
                ("s1", "t1", 0),
                ("s1", "t1", 1),
                ("s1", "t1", 2),
                ("s1", "t1", 3),
                ("s1", "t1", 4),
            ],
            0,
        ),
    ];
    for (name, plan, want) in cases {
        let (alerts, h) = velocity(&plan).await;
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
        if let Some(a) = alerts.first() {
            assert_eq!(
                a.risk_score, 70,
                "{name}: score at the threshold is the weight"
            );
            assert!(!a.late, "{name}");
            assert!(
                a.subject.starts_with("coupon:SP…EF#"),
                "{name}: {}",
                a.subject
            );
            assert!(
                !a.subject.contains(CODE) && !a.evidence.contains(CODE),
                "{name}: code leaked"
            );
            assert!(!a
                .encode_to_vec()
                .windows(CODE.len())
                .any(|w| w == CODE.as_bytes()));
            assert_eq!(ms(&a.window_start), T0);
            assert_eq!(ms(&a.window_end), T0 + 30 * MIN);
            assert!(a.event_ids.len() >= 3, "{name}");
        }
        let merged = h.fg.stats().merged["COUPON_VELOCITY"];
        if name.starts_with("5 stores") {
            assert_eq!(
                merged, 2,
                "{name}: the 4th and 5th stores merge into the first alert"
            );
        }
    }
}

#[tokio::test]
async fn coupon_velocity_never_stores_the_code() {
    let (alerts, h) = velocity(&[("s1", "t1", 0), ("s2", "t1", 1), ("s3", "t1", 2)]).await;
    assert_eq!(alerts.len(), 1);
    for entry in walk(h.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(CODE.len()).any(|w| w == CODE.as_bytes()),
            "{entry:?} holds the code"
        );
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn coupon_velocity_late_batch_is_flagged_late() {
    let mut h = Harness::new();
    // Other stores move event time 5 hours on.
    let a = h.feed(vec![sale("s9", "t1", T0 + 5 * HOUR, &[])]).await;
    assert!(a.is_empty());
    // An offline batch from three stores, from 09:00, syncs now.
    let late = (0..3)
        .map(|i| offline(sale(&format!("s{i}"), "t1", T0 + i * MIN, &[(CODE, 1000)])))
        .collect();
    let alerts = of_rule(&h.feed(late).await, AlertRule::CouponVelocity);
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].late);
    assert_eq!(ms(&alerts[0].window_start), T0);
}

// ---------------------------------------------------------------- OFFLINE_EXPOSURE

#[tokio::test]
async fn offline_exposure_table() {
    // (name, coupon discounts of offline sales at tills t1/t2, sync of t1 after the first sale, alerts)
    let cases: Vec<ExposureCase> = vec![
        (
            "below the cap",
            vec![("t1", 20_000), ("t2", 20_000)],
            false,
            0,
        ),
        ("at the cap", vec![("t1", 20_000), ("t2", 30_000)], false, 0),
        (
            "one over the cap across two tills",
            vec![("t1", 20_000), ("t2", 30_001)],
            false,
            1,
        ),
        (
            "far above, one alert per exposure",
            vec![("t1", 40_000), ("t2", 40_000), ("t1", 40_000)],
            false,
            1,
        ),
        (
            "t1 synced in between",
            vec![("t1", 30_000), ("t1", 30_000)],
            true,
            0,
        ),
    ];
    for (name, plan, sync, want) in cases {
        let mut h = Harness::new();
        let mut evs = vec![];
        for (i, (till, disc)) in plan.iter().enumerate() {
            evs.push(offline(sale(
                "s1",
                till,
                T0 + i as i64 * MIN,
                &[("OFFLINE-CODE-1", *disc)],
            )));
            if i == 0 && sync {
                evs.push(status("s1", "t1", T0 + 30 * 1000, true));
            }
        }
        let alerts = of_rule(&h.feed(evs).await, AlertRule::OfflineExposure);
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
        if let Some(a) = alerts.first() {
            assert_eq!(a.subject, "store:s1");
            assert_eq!(ms(&a.window_start), T0, "{name}");
            assert!(a.risk_score >= 60, "{name}");
            assert!(
                a.evidence.contains("cap 500.00 EUR"),
                "{name}: {}",
                a.evidence
            );
        }
    }
}

#[tokio::test]
async fn offline_exposure_counts_line_discounts_and_an_online_event_closes_it() {
    let mut h = Harness::new();
    let mut s = offline(sale("s1", "t1", T0, &[]));
    if let Some(pb::till_event::Body::Sale(sale)) = &mut s.body {
        sale.lines[0].discount_minor = 45_000;
    }
    assert!(h.feed(vec![s]).await.is_empty());
    // An online sale of t1 closes its exposure.
    h.feed(vec![sale("s1", "t1", T0 + MIN, &[])]).await;
    let a = h
        .feed(vec![offline(sale(
            "s1",
            "t1",
            T0 + 2 * MIN,
            &[("X-CODE-0001", 45_000)],
        ))])
        .await;
    assert!(of_rule(&a, AlertRule::OfflineExposure).is_empty());
}

#[tokio::test]
async fn offline_exposure_of_a_late_batch_is_late_and_counted_before_the_sync() {
    let mut h = Harness::new();
    // The till comes back online at 12:00 and its offline receipts of 09:00-09:02 sync after.
    h.feed(vec![status("s1", "t1", T0 + 3 * HOUR, true)]).await;
    let late = (0..3)
        .map(|i| {
            offline(sale(
                "s1",
                "t1",
                T0 + i * MIN,
                &[("OFFLINE-CODE-1", 20_000)],
            ))
        })
        .collect();
    let alerts = of_rule(&h.feed(late).await, AlertRule::OfflineExposure);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(alerts[0].late);
    assert_eq!(alerts[0].event_ids.len(), 3);
}

// ---------------------------------------------------------------- OVERRIDE_RATE

#[tokio::test]
async fn override_rate_table() {
    // (name, minutes of each override, alerts)
    let cases: Vec<(&str, Vec<i64>, usize)> = vec![
        ("5 in an hour: at the limit", vec![0, 10, 20, 30, 40], 0),
        ("6 in an hour: above", vec![0, 10, 20, 30, 40, 50], 1),
        (
            "6 with the last exactly at the window end",
            vec![0, 10, 20, 30, 40, 60],
            1,
        ),
        ("6 over 61 minutes", vec![0, 10, 20, 30, 40, 61], 0),
        (
            "12 in an hour: one merged alert",
            (0..12).map(|i| i * 5).collect(),
            1,
        ),
    ];
    for (name, minutes, want) in cases {
        let mut h = Harness::new();
        let evs = minutes
            .iter()
            .map(|m| manual_override("s1", "t1", T0 + m * MIN, "alice"))
            .collect();
        let alerts = of_rule(&h.feed(evs).await, AlertRule::OverrideRate);
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
        if let Some(a) = alerts.first() {
            assert_eq!(a.subject, "cashier:alice");
            assert_eq!(a.event_ids.len(), 6, "{name}");
            assert_eq!(a.risk_score, 52, "{name}: 6 of 5 is 20% past the limit");
        }
    }
}

#[tokio::test]
async fn override_rate_counts_a_replayed_event_once() {
    let mut h = Harness::new();
    let evs: Vec<_> = (0..5)
        .map(|m| manual_override("s1", "t1", T0 + m * MIN, "bob"))
        .collect();
    let again = evs[4].clone();
    let mut recs: Vec<_> = evs.into_iter().map(|e| h.record(e, None)).collect();
    // The same event id at a later offset (at-least-once upstream).
    recs.push(h.record(again, None));
    let alerts = h.run(&recs).await;
    assert!(
        of_rule(&alerts, AlertRule::OverrideRate).is_empty(),
        "{alerts:#?}"
    );
    assert_eq!(h.fg.stats().duplicates, 1);
}

// ---------------------------------------------------------------- RETURN_AFTER_REDEMPTION

#[tokio::test]
async fn return_after_redemption_table() {
    // (name, hours after the sale, refund of a 90.00 sale, coupon used, alerts)
    let cases: Vec<(&str, i64, i64, bool, usize)> = vec![
        ("partial return within a day", 3, 40_000, true, 1),
        ("partial return at exactly 24 h", 24, 40_000, true, 1),
        ("partial return after 25 h", 25, 40_000, true, 0),
        ("full return releases the coupon", 3, 90_000, true, 0),
        (
            "partial return of a sale without coupon",
            3,
            40_000,
            false,
            0,
        ),
    ];
    for (name, hours, refund, coupon, want) in cases {
        let mut h = Harness::new();
        let coupons: &[(&str, i64)] = if coupon {
            &[("RETURN-CODE-42", 10_000)]
        } else {
            &[]
        };
        let s = sale("s1", "t1", T0, coupons);
        let sid = session_of(&s);
        let r = ret("s1", "t2", T0 + hours * HOUR, &sid, refund);
        let alerts = of_rule(&h.feed(vec![s, r]).await, AlertRule::ReturnAfterRedemption);
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
        if let Some(a) = alerts.first() {
            assert_eq!(a.subject, "cashier:s1-c1");
            assert_eq!(a.event_ids.len(), 2);
            assert!(a.evidence.contains("RE…42#"), "{name}: {}", a.evidence);
            assert!(!a.evidence.contains("RETURN-CODE-42"));
            // Amounts in major units with the currency's digits.
            assert!(a.evidence.starts_with("partial return of 400.00 EUR of "));
            assert!(
                a.evidence.contains("(discount 100.00 EUR)"),
                "{}",
                a.evidence
            );
            assert_eq!(ms(&a.window_end), T0 + 24 * HOUR);
        }
    }
}

#[tokio::test]
async fn return_after_redemption_when_the_sale_syncs_after_the_return() {
    let mut h = Harness::new();
    let s = offline(sale("s1", "t1", T0, &[("RETURN-CODE-42", 10_000)]));
    let r = ret("s1", "t2", T0 + 2 * HOUR, &session_of(&s), 5_000);
    assert!(of_rule(&h.feed(vec![r]).await, AlertRule::ReturnAfterRedemption).is_empty());
    let alerts = of_rule(&h.feed(vec![s]).await, AlertRule::ReturnAfterRedemption);
    assert_eq!(alerts.len(), 1);
}

#[tokio::test]
async fn return_after_a_cancelled_sale_raises_nothing() {
    let mut h = Harness::new();
    let s = sale("s1", "t1", T0, &[("RETURN-CODE-42", 10_000)]);
    let sid = session_of(&s);
    let c = cancel("s1", "t1", T0 + MIN, &sid);
    let r = ret("s1", "t1", T0 + HOUR, &sid, 5_000);
    assert!(of_rule(
        &h.feed(vec![s, c, r]).await,
        AlertRule::ReturnAfterRedemption
    )
    .is_empty());
}

// ---------------------------------------------------------------- SEQUENCE_GAP

#[tokio::test]
async fn sequence_gap_table() {
    // (name, (seq, minutes) in arrival order, alerts)
    let cases: Vec<GapCase> = vec![
        ("no gap", vec![(1, 0), (2, 1), (3, 70)], 0),
        ("gap open 59 minutes", vec![(1, 0), (3, 1), (4, 60)], 0),
        ("gap open exactly 1 hour", vec![(1, 0), (3, 1), (4, 61)], 1),
        ("gap open 2 hours", vec![(1, 0), (3, 1), (4, 121)], 1),
        (
            "gap filled late before it is due",
            vec![(1, 0), (3, 1), (2, 2), (4, 121)],
            0,
        ),
        (
            "gap filled after it fired",
            vec![(1, 0), (3, 1), (4, 121), (2, 122)],
            1,
        ),
        (
            "three missing in one alert",
            vec![(1, 0), (5, 1), (6, 61)],
            1,
        ),
    ];
    for (name, plan, want) in cases {
        let mut h = Harness::new();
        let evs = plan
            .iter()
            .map(|(seq, m)| with_seq(sale("s1", "t1", T0 + m * MIN, &[]), *seq))
            .collect();
        let alerts = of_rule(&h.feed(evs).await, AlertRule::SequenceGap);
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
        if let Some(a) = alerts.first() {
            assert_eq!(a.subject, "till:s1/t1");
            assert_eq!(ms(&a.window_start), T0 + MIN);
            assert_eq!(ms(&a.window_end), T0 + 61 * MIN);
            if name.starts_with("three") {
                assert!(
                    a.evidence.starts_with("3 till_seq missing (2, 3, 4)"),
                    "{}",
                    a.evidence
                );
                assert_eq!(a.risk_score, 100);
            } else {
                assert_eq!(a.risk_score, 30);
            }
        }
    }
}

#[tokio::test]
async fn sequence_gap_is_judged_in_sync_time_on_the_tills_partition_and_never_late() {
    let mut h = Harness::new();
    h.till_partitions.insert("s9/t1".into(), 1);
    // Another partition is 6 hours ahead: it does not judge s1/t1's gap.
    h.feed(vec![sale("s9", "t1", T0 + 6 * HOUR, &[])]).await;
    // s1/t1 was offline for 2 hours and syncs at T0 + 3h: receipt 2 never comes.
    let sync = T0 + 3 * HOUR;
    let mut recs = Vec::new();
    for (seq, at) in [(1, T0), (3, T0 + MIN), (4, T0 + 2 * HOUR)] {
        recs.push(h.record(
            with_seq(offline(sale("s1", "t1", at, &[])), seq),
            Some(sync),
        ));
    }
    assert!(of_rule(&h.run(&recs).await, AlertRule::SequenceGap).is_empty());
    // 59 minutes of sync time later the gap is still open, not judged.
    let a = h.feed(vec![sale("s1", "t2", sync + 59 * MIN, &[])]).await;
    assert!(of_rule(&a, AlertRule::SequenceGap).is_empty());
    // An hour after the sync that revealed it, any record of the partition judges it.
    let a = of_rule(
        &h.feed(vec![sale("s1", "t2", sync + HOUR, &[])]).await,
        AlertRule::SequenceGap,
    );
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].subject, "till:s1/t1");
    assert_eq!(
        ms(&a[0].window_start),
        T0 + MIN,
        "the revealing receipt's event time"
    );
    assert!(!a[0].late);
    assert!(
        a[0].evidence
            .starts_with("1 till_seq missing (2) before till_seq 3"),
        "{}",
        a[0].evidence
    );
}

#[tokio::test]
async fn alerts_do_not_depend_on_batch_boundaries() {
    // The same records: a gap filled in time, one never filled, a resend, a silent till, and
    // overrides, coupons and offline discounts that cross thresholds.
    let plan: Vec<(&str, u64, i64)> = vec![
        ("t1", 1, 0),
        ("t1", 3, 1),
        ("t2", 1, 2),
        ("t1", 2, 30),
        ("t1", 6, 31),
        ("t2", 4, 40),
        ("t1", 6, 45),
        ("t1", 7, 100),
        ("t2", 5, 130),
        ("t1", 8, 200),
    ];
    let mut events: Vec<_> = plan
        .iter()
        .map(|(till, seq, m)| with_seq(sale("s1", till, T0 + m * MIN, &[]), *seq))
        .collect();
    for m in 0..8 {
        events.push(manual_override("s2", "t1", T0 + m * 5 * MIN, "erin"));
        events.push(offline(sale(
            &format!("s{}", 3 + m % 4),
            "t1",
            T0 + m * MIN,
            &[("VELO-1", 30_000)],
        )));
    }
    events.sort_by_key(|e| ms(&e.occurred_at));
    let run = |batch: usize| {
        let events = events.clone();
        async move {
            let mut h = Harness::new();
            let recs: Vec<_> = events.into_iter().map(|e| h.record(e, None)).collect();
            let mut alerts = Vec::new();
            for chunk in recs.chunks(batch) {
                alerts.extend(h.run(chunk).await);
            }
            alerts.sort_by(|a, b| a.id.cmp(&b.id));
            alerts
        }
    };
    let want = run(100).await;
    assert_eq!(of_rule(&want, AlertRule::SequenceGap).len(), 2, "{want:#?}");
    assert_eq!(
        of_rule(&want, AlertRule::OverrideRate).len(),
        1,
        "{want:#?}"
    );
    assert_eq!(
        of_rule(&want, AlertRule::CouponVelocity).len(),
        1,
        "{want:#?}"
    );
    assert!(
        !of_rule(&want, AlertRule::OfflineExposure).is_empty(),
        "{want:#?}"
    );
    for batch in [1, 3, 7] {
        assert_eq!(run(batch).await, want, "batch {batch}");
    }
}

// ---------------------------------------------------------------- CLOCK_DRIFT

#[tokio::test]
async fn clock_drift_table() {
    // (name, occurred_at minus record timestamp in seconds, offline, alerts, score)
    let cases: Vec<(&str, i64, bool, usize, u32)> = vec![
        ("no drift", 0, false, 0, 0),
        ("exactly 10 minutes ahead", 600, false, 0, 0),
        ("10 minutes and 1 second ahead", 601, false, 1, 20),
        ("10 minutes and 1 second behind", -601, false, 1, 20),
        ("20 minutes behind", -1200, false, 1, 100),
        ("2 hours behind but flagged offline", -7200, true, 0, 0),
    ];
    for (name, drift_s, off, want, score) in cases {
        let mut h = Harness::new();
        let mut e = sale("s1", "t1", T0, &[]);
        e.offline = off;
        let rec = h.record(e, Some(T0 - drift_s * 1000));
        let alerts = of_rule(&h.run(&[rec]).await, AlertRule::ClockDrift);
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
        if let Some(a) = alerts.first() {
            assert_eq!(a.subject, "till:s1/t1");
            assert_eq!(a.risk_score, score, "{name}");
            assert!(a.evidence.contains("limit 10m"), "{}", a.evidence);
        }
    }
}

/// Hardening: one event stamped a year ahead of its record timestamp raises CLOCK_DRIFT but moves
/// the watermark only to its record timestamp plus the tolerated drift, so the events after it
/// are still judged (before, they all fell behind the horizon and nothing more was raised).
#[tokio::test]
async fn one_event_far_ahead_does_not_blind_the_rules() {
    let mut h = Harness::new();
    let ahead = h.record(sale("s9", "t9", T0 + 365 * 24 * 60 * MIN, &[]), Some(T0));
    let drift = of_rule(&h.run(&[ahead]).await, AlertRule::ClockDrift);
    assert_eq!(drift.len(), 1);
    let recs: Vec<_> = [("s1", 1), ("s2", 5), ("s3", 10)]
        .into_iter()
        .map(|(s, m)| {
            let e = sale(s, "t1", T0 + m * MIN, &[(CODE, 1000)]);
            h.record(e, Some(T0 + m * MIN))
        })
        .collect();
    let velocity = of_rule(&h.run(&recs).await, AlertRule::CouponVelocity);
    assert_eq!(
        velocity.len(),
        1,
        "the redemptions after it were not judged"
    );
}

// ---------------------------------------------------------------- cool-down, ids, replays

#[tokio::test]
async fn cool_down_merges_then_a_new_alert_after_it() {
    let mut h = Harness::new();
    let mut recs = vec![];
    for m in [0, 30, 59, 60, 61] {
        let e = sale("s1", "t1", T0 + m * MIN, &[]);
        recs.push(h.record(e, Some(T0 + m * MIN - 20 * MIN)));
    }
    let alerts = of_rule(&h.run(&recs).await, AlertRule::ClockDrift);
    // 0 fires; 30 and 59 merge; 60 is a full cool-down (1 h) after 0 and fires; 61 merges into it.
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_ne!(alerts[0].id, alerts[1].id);
    assert_eq!(h.fg.stats().merged["CLOCK_DRIFT"], 3);
    assert_eq!(h.fg.stats().alerts["CLOCK_DRIFT"], 2);
}

#[tokio::test]
async fn a_batch_replayed_before_commit_yields_the_same_alert_ids() {
    let mut h = Harness::new();
    let recs: Vec<_> = (0..6)
        .map(|m| manual_override("s1", "t1", T0 + m * MIN, "carol"))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|e| h.record(e, None))
        .collect();
    let first = decode(&h.fg.process(&recs).unwrap(), &h.topics);
    // Crash before commit: the state on disk does not have the batch.
    h.reopen();
    let second = h.run(&recs).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first, second);
    // After the commit, a replay of the same offsets is skipped and counts nothing.
    h.reopen();
    assert!(h.run(&recs).await.is_empty());
    assert_eq!(h.fg.stats().replayed, 6);
    // And the counts survived: one more override is the 7th, merged into the alert.
    let more = vec![manual_override("s1", "t1", T0 + 7 * MIN, "carol")];
    assert!(h.feed(more).await.is_empty());
    assert_eq!(h.fg.stats().merged["OVERRIDE_RATE"], 1);
}

#[tokio::test]
async fn malformed_records_are_counted_and_skipped() {
    let mut h = Harness::new();
    let garbage = h.raw_record(Some(vec![0xff, 0x01, 0x02]), Some(T0));
    let tombstone = h.raw_record(None, Some(T0));
    let mut invalid = sale("s1", "t1", T0, &[]);
    invalid.event_id = "not-a-uuid".into();
    let invalid = h.record(invalid, None);
    let good: Vec<_> = (0..6)
        .map(|m| manual_override("s1", "t1", T0 + m * MIN, "dave"))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|e| h.record(e, None))
        .collect();
    let mut batch = vec![garbage, tombstone, invalid];
    batch.extend(good);
    let alerts = h.run(&batch).await;
    assert_eq!(h.fg.stats().malformed, 3);
    assert_eq!(of_rule(&alerts, AlertRule::OverrideRate).len(), 1);
}

#[tokio::test]
async fn events_older_than_max_lateness_are_skipped() {
    let mut h = Harness::new();
    h.feed(vec![sale("s1", "t1", T0 + 100 * HOUR, &[])]).await;
    h.feed(vec![sale("s2", "t1", T0, &[])]).await;
    assert_eq!(h.fg.stats().too_late, 1);
}

#[test]
fn the_input_topic_is_till_events_and_bad_config_is_refused() {
    let topics = tillbridge_core::config::Topics::default();
    assert_eq!(input_topics(&topics), vec!["till.events".to_owned()]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = FraudGuardConfig::default();
    cfg.override_rate.max_overrides = 0;
    let err =
        tillbridge_fraud_guard::FraudGuard::open(dir.path(), &topics, cfg, REPORT_KEY).unwrap_err();
    assert!(
        matches!(err, tillbridge_fraud_guard::Error::Config(_)),
        "{err}"
    );
}

#[tokio::test]
async fn sequence_gap_of_a_silent_till_fires_once_its_partition_moves_on() {
    let mut h = Harness::new();
    h.till_partitions.insert("s3/t1".into(), 2);
    let evs = vec![
        with_seq(sale("s1", "t1", T0, &[]), 1),
        with_seq(sale("s1", "t1", T0 + MIN, &[]), 3),
    ];
    assert!(of_rule(&h.feed(evs).await, AlertRule::SequenceGap).is_empty());
    // s1/t1 goes silent. A till of another partition moving on judges nothing.
    let a = h.feed(vec![sale("s3", "t1", T0 + 72 * HOUR, &[])]).await;
    assert!(of_rule(&a, AlertRule::SequenceGap).is_empty(), "{a:#?}");
    // A till of the same partition an hour on does.
    let a = of_rule(
        &h.feed(vec![sale("s2", "t1", T0 + 61 * MIN, &[])]).await,
        AlertRule::SequenceGap,
    );
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].subject, "till:s1/t1");
    assert!(!a[0].late);
}

#[tokio::test]
async fn return_after_redemption_synced_after_its_window_is_late() {
    let mut h = Harness::new();
    let s = sale("s1", "t1", T0, &[("RETURN-CODE-42", 10_000)]);
    let r = offline(ret("s1", "t2", T0 + 3 * HOUR, &session_of(&s), 5_000));
    h.feed(vec![s, sale("s2", "t1", T0 + 30 * HOUR, &[])]).await;
    let a = of_rule(&h.feed(vec![r]).await, AlertRule::ReturnAfterRedemption);
    assert_eq!(a.len(), 1);
    assert!(a[0].late);
}
