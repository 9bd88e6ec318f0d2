//! Table tests: one scenario per ledger rule, each fed in batches and checked against the
//! compensations left outstanding and the number of retractions emitted.

mod common;

use common::*;
use pb::LoyaltyFactKind as L;
use tillbridge_proto::pb;

const CODE: &str = "SPRING-SALE-2024";

fn r(f: pb::RedemptionFact) -> Input {
    Input::Redemption(f)
}
fn c(d: pb::CouponDefinition) -> Input {
    Input::Coupon(d)
}
fn l(f: pb::LoyaltyFact) -> Input {
    Input::Loyalty(f)
}
fn with_profile(mut f: pb::RedemptionFact, p: &str) -> pb::RedemptionFact {
    f.profile_id = Some(p.into());
    f
}
fn offline(mut f: pb::RedemptionFact) -> pb::RedemptionFact {
    f.offline = true;
    f
}
fn redeem_on(n: u32, store: &str, min: i64) -> pb::RedemptionFact {
    redeem(n, CODE, store, min, 500)
}

struct Scenario {
    name: &'static str,
    batches: Vec<Vec<Input>>,
    /// (reason, event id of the redemption acted on, points) left outstanding.
    expect: Vec<(&'static str, &'static str, i64)>,
    retracts: usize,
}

fn check(s: Scenario) {
    let mut h = Harness::new();
    for b in &s.batches {
        h.feed(b);
    }
    let mut got: Vec<(String, String, i64)> = h
        .outstanding
        .values()
        .map(|a| (a.reason.clone(), a.event_ids[0].clone(), a.points))
        .collect();
    got.sort();
    let mut want: Vec<(String, String, i64)> = s
        .expect
        .iter()
        .map(|(r, e, p)| (r.to_string(), e.to_string(), *p))
        .collect();
    want.sort();
    assert_eq!(got, want, "scenario {:?}: outstanding", s.name);
    let retracts = h
        .actions
        .iter()
        .filter(|a| a.kind == pb::CompensationKind::Retract as i32)
        .count();
    assert_eq!(retracts, s.retracts, "scenario {:?}: retractions", s.name);
    for a in &h.actions {
        assert!(
            !a.subject.contains(CODE),
            "scenario {:?}: full code in an output",
            s.name
        );
        let expected_kind = match a.reason.as_str() {
            _ if a.kind == pb::CompensationKind::Retract as i32 => pb::CompensationKind::Retract,
            "UNKNOWN_COUPON" => pb::CompensationKind::ReviewOnly,
            "POINTS_DEFICIT" => pb::CompensationKind::ClawbackPoints,
            _ => pb::CompensationKind::ReverseCouponRedemption,
        };
        assert_eq!(
            a.kind, expected_kind as i32,
            "scenario {:?}: kind of {}",
            s.name, a.reason
        );
        assert!(!a.case_id.is_empty() && a.decided_at.is_some());
    }
}

#[test]
fn coupon_rules() {
    let valid = pb::CouponDefinition {
        valid_from: Some(at(0)),
        valid_until: Some(at(100)),
        ..coupon(CODE, 1, 0)
    };
    let no_offline = pb::CouponDefinition {
        offline_allowed: false,
        ..coupon(CODE, 0, 0)
    };
    let table = vec![
        Scenario {
            name: "usage limit: the first usage_limit stand, by event time",
            batches: vec![vec![
                c(coupon(CODE, 1, 0)),
                r(redeem_on(3, "store-b", 30)),
                r(redeem_on(1, "store-a", 10)),
                r(redeem_on(2, "store-a", 20)),
            ]],
            expect: vec![("OVER_LIMIT", "event-2", 0), ("OVER_LIMIT", "event-3", 0)],
            retracts: 0,
        },
        Scenario {
            name: "usage limit: equal event times are ordered by store",
            batches: vec![vec![
                c(coupon(CODE, 1, 0)),
                r(redeem_on(1, "store-b", 10)),
                r(redeem_on(2, "store-a", 10)),
            ]],
            expect: vec![("OVER_LIMIT", "event-1", 0)],
            retracts: 0,
        },
        Scenario {
            name: "usage limit 0 is unlimited",
            batches: vec![vec![
                c(coupon(CODE, 0, 0)),
                r(redeem_on(1, "s", 1)),
                r(redeem_on(2, "s", 2)),
                r(redeem_on(3, "s", 3)),
            ]],
            expect: vec![],
            retracts: 0,
        },
        Scenario {
            name: "per-profile limit",
            batches: vec![vec![
                c(coupon(CODE, 0, 1)),
                r(with_profile(redeem_on(1, "s", 10), "P")),
                r(with_profile(redeem_on(2, "s", 20), "P")),
                r(with_profile(redeem_on(3, "s", 30), "Q")),
                r(redeem_on(4, "s", 40)),
            ]],
            expect: vec![("PER_PROFILE_LIMIT", "event-2", 0)],
            retracts: 0,
        },
        Scenario {
            name: "validity window: outside is a violation of its own and takes no slot",
            batches: vec![vec![
                c(valid),
                r(redeem_on(1, "s", -10)),
                r(redeem_on(2, "s", 10)),
                r(redeem_on(3, "s", 200)),
                r(redeem_on(4, "s", 50)),
            ]],
            expect: vec![
                ("OUTSIDE_VALIDITY", "event-1", 0),
                ("OUTSIDE_VALIDITY", "event-3", 0),
                ("OVER_LIMIT", "event-4", 0),
            ],
            retracts: 0,
        },
        Scenario {
            name: "offline while offline is not allowed",
            batches: vec![vec![
                c(no_offline),
                r(offline(redeem_on(1, "s", 10))),
                r(redeem_on(2, "s", 20)),
            ]],
            expect: vec![("OFFLINE_NOT_ALLOWED", "event-1", 0)],
            retracts: 0,
        },
        Scenario {
            name: "unknown coupon is reviewed, not guessed",
            batches: vec![vec![r(redeem_on(1, "s", 10))]],
            expect: vec![("UNKNOWN_COUPON", "event-1", 0)],
            retracts: 0,
        },
        Scenario {
            name: "release by cancellation, arriving after: the over-redemption is retracted",
            batches: vec![
                vec![
                    c(coupon(CODE, 1, 0)),
                    r(redeem_on(1, "s", 10)),
                    r(redeem_on(2, "s", 20)),
                ],
                vec![r(release(10, 1, CODE, 25))],
            ],
            expect: vec![],
            retracts: 1,
        },
        Scenario {
            name: "release by full return, arriving before the redemption it releases",
            batches: vec![
                vec![c(coupon(CODE, 1, 0)), r(release(10, 1, CODE, 60))],
                vec![r(redeem_on(1, "s", 10)), r(redeem_on(2, "s", 20))],
            ],
            expect: vec![],
            retracts: 0,
        },
        Scenario {
            name: "late offline event takes the slot: the later one becomes the over-redemption",
            batches: vec![
                vec![c(coupon(CODE, 1, 0)), r(redeem_on(2, "store-b", 20))],
                vec![r(offline(redeem_on(1, "store-a", 10)))],
            ],
            expect: vec![("OVER_LIMIT", "event-2", 0)],
            retracts: 0,
        },
        Scenario {
            name: "late event changes the reason: retract and re-issue",
            batches: vec![
                vec![
                    c(coupon(CODE, 1, 1)),
                    r(with_profile(redeem_on(1, "s", 10), "P")),
                    r(with_profile(redeem_on(2, "s", 20), "Q")),
                ],
                vec![r(with_profile(redeem_on(0, "s", 5), "Q"))],
            ],
            expect: vec![
                ("OVER_LIMIT", "event-1", 0),
                ("PER_PROFILE_LIMIT", "event-2", 0),
            ],
            retracts: 1,
        },
        Scenario {
            name: "horizon: a final standing redemption is never displaced by a late one",
            batches: vec![
                vec![c(coupon(CODE, 1, 0)), r(redeem_on(1, "s", 0))],
                vec![r(redeem_on(2, "s", 73 * 60))],
                vec![r(offline(redeem_on(0, "s", -60)))],
            ],
            expect: vec![("OVER_LIMIT", "event-0", 0), ("OVER_LIMIT", "event-2", 0)],
            retracts: 0,
        },
        Scenario {
            name: "inside the horizon the same late event does displace",
            batches: vec![
                vec![c(coupon(CODE, 1, 0)), r(redeem_on(1, "s", 0))],
                vec![r(redeem_on(2, "s", 60))],
                vec![r(offline(redeem_on(0, "s", -60)))],
            ],
            expect: vec![("OVER_LIMIT", "event-1", 0), ("OVER_LIMIT", "event-2", 0)],
            // event-2's reversal rested on event-1 standing; it now rests on event-0: the
            // action is retracted and issued anew with that evidence.
            retracts: 1,
        },
        Scenario {
            name: "coupon defined after its redemptions: reviews retracted, limit applied",
            batches: vec![
                vec![
                    r(redeem_on(1, "s", 10)),
                    r(redeem_on(2, "s", 20)),
                    r(redeem_on(3, "s", 30)),
                ],
                vec![c(coupon(CODE, 1, 0))],
            ],
            expect: vec![("OVER_LIMIT", "event-2", 0), ("OVER_LIMIT", "event-3", 0)],
            retracts: 3,
        },
        Scenario {
            name: "coupon removed by a tombstone: back to review",
            batches: vec![
                vec![
                    c(coupon(CODE, 1, 0)),
                    r(redeem_on(1, "s", 10)),
                    r(redeem_on(2, "s", 20)),
                ],
                vec![Input::Tombstone(CODE.into())],
            ],
            expect: vec![
                ("UNKNOWN_COUPON", "event-1", 0),
                ("UNKNOWN_COUPON", "event-2", 0),
            ],
            retracts: 1,
        },
        Scenario {
            name: "limit raised later: the over-redemption is retracted",
            batches: vec![
                vec![
                    c(coupon(CODE, 1, 0)),
                    r(redeem_on(1, "s", 10)),
                    r(redeem_on(2, "s", 20)),
                ],
                vec![c(coupon(CODE, 2, 0))],
            ],
            expect: vec![],
            retracts: 1,
        },
        Scenario {
            name: "duplicate fact ids apply once",
            batches: vec![
                vec![
                    c(coupon(CODE, 1, 0)),
                    r(redeem_on(1, "s", 10)),
                    r(redeem_on(2, "s", 20)),
                    r(redeem_on(2, "s", 20)),
                ],
                vec![r(redeem_on(2, "s", 20)), r(redeem_on(1, "s", 10))],
            ],
            expect: vec![("OVER_LIMIT", "event-2", 0)],
            retracts: 0,
        },
    ];
    for s in table {
        check(s);
    }
}

fn returned(n: u32, profile: &str, orig: u32, min: i64, refund: i64) -> pb::LoyaltyFact {
    pb::LoyaltyFact {
        original_session_id: Some(format!("session-{orig}")),
        refund_minor: refund,
        ..loyalty(n, profile, L::Returned, n, min, 0)
    }
}

fn cancelled(n: u32, profile: &str, orig: u32, min: i64) -> pb::LoyaltyFact {
    pb::LoyaltyFact {
        original_session_id: Some(format!("session-{orig}")),
        session_id: format!("session-{orig}"),
        ..loyalty(n, profile, L::Cancelled, orig, min, 0)
    }
}

#[test]
fn loyalty_rules() {
    let p = "profile-7";
    let table = vec![
        Scenario {
            name: "points deficit: the redemptions that overdrew, by the missing part",
            batches: vec![vec![
                Input::Balance(balance(p, 100, 0)),
                l(loyalty(1, p, L::RedeemedPoints, 1, 10, 80)),
                l(loyalty(3, p, L::RedeemedPoints, 3, 30, 40)),
                l(loyalty(2, p, L::RedeemedPoints, 2, 20, 50)),
            ]],
            expect: vec![
                ("POINTS_DEFICIT", "event-2", 30),
                ("POINTS_DEFICIT", "event-3", 40),
            ],
            retracts: 0,
        },
        Scenario {
            name: "points earned on a sale cannot pay for that same sale",
            batches: vec![vec![
                Input::Balance(balance(p, 0, 0)),
                l(pb::LoyaltyFact {
                    id: "lfact-1-earned".into(),
                    ..loyalty(1, p, L::Earned, 1, 10, 100)
                }),
                l(loyalty(1, p, L::RedeemedPoints, 1, 10, 50)),
            ]],
            expect: vec![("POINTS_DEFICIT", "event-1", 50)],
            retracts: 0,
        },
        Scenario {
            name: "facts at or before the snapshot are already in it",
            batches: vec![vec![
                Input::Balance(balance(p, 100, 50)),
                l(loyalty(1, p, L::RedeemedPoints, 1, 10, 500)),
                l(loyalty(2, p, L::RedeemedPoints, 2, 60, 80)),
            ]],
            expect: vec![],
            retracts: 0,
        },
        Scenario {
            name: "return rolls back earned points pro rata, rounded down",
            batches: vec![vec![
                Input::Balance(balance(p, 0, 0)),
                l(loyalty(1, p, L::Earned, 1, 10, 100)),
                l(returned(2, p, 1, 15, 333)),
                l(loyalty(3, p, L::RedeemedPoints, 3, 20, 100)),
            ]],
            expect: vec![("POINTS_DEFICIT", "event-3", 33)],
            retracts: 0,
        },
        Scenario {
            name: "partial returns are summed before rounding",
            batches: vec![vec![
                Input::Balance(balance(p, 0, 0)),
                l(loyalty(1, p, L::Earned, 1, 10, 3)),
                l(returned(2, p, 1, 15, 500)),
                l(returned(3, p, 1, 16, 500)),
                l(loyalty(4, p, L::RedeemedPoints, 4, 20, 1)),
            ]],
            // 3 points earned, both halves returned: 1 then 2 rolled back, balance 0 before the
            // redemption of 1 point.
            expect: vec![("POINTS_DEFICIT", "event-4", 1)],
            retracts: 0,
        },
        Scenario {
            name: "cancellation rolls back earned points and voids redeemed ones",
            batches: vec![vec![
                Input::Balance(balance(p, 0, 0)),
                l(loyalty(1, p, L::Earned, 1, 10, 50)),
                l(cancelled(2, p, 1, 15)),
                l(loyalty(3, p, L::RedeemedPoints, 3, 20, 30)),
                l(loyalty(4, p, L::RedeemedPoints, 4, 25, 500)),
                l(cancelled(5, p, 4, 26)),
            ]],
            expect: vec![("POINTS_DEFICIT", "event-3", 30)],
            retracts: 0,
        },
        Scenario {
            name: "late earning covers the redemption: the clawback is retracted",
            batches: vec![
                vec![
                    Input::Balance(balance(p, 0, 0)),
                    l(loyalty(1, p, L::RedeemedPoints, 1, 20, 50)),
                ],
                vec![l(loyalty(2, p, L::Earned, 2, 10, 100))],
            ],
            expect: vec![],
            retracts: 1,
        },
        Scenario {
            name: "duplicate loyalty facts apply once",
            batches: vec![
                vec![
                    Input::Balance(balance(p, 60, 0)),
                    l(loyalty(1, p, L::RedeemedPoints, 1, 20, 50)),
                    l(loyalty(1, p, L::RedeemedPoints, 1, 20, 50)),
                ],
                vec![l(loyalty(1, p, L::RedeemedPoints, 1, 20, 50))],
            ],
            expect: vec![],
            retracts: 0,
        },
    ];
    for s in table {
        check(s);
    }
}

#[test]
fn a_malformed_record_is_counted_and_skipped() {
    let mut h = Harness::new();
    let topic = h.topics.redemptions.clone();
    let out = h.feed(&[
        Input::Raw {
            topic: topic.clone(),
            key: CODE.into(),
            payload: vec![0xff, 0xff, 0xff],
        },
        Input::Redemption(pb::RedemptionFact {
            occurred_at: None,
            ..redeem(9, CODE, "s", 0, 1)
        }),
        Input::Redemption(redeem(1, CODE, "s", 10, 100)),
    ]);
    assert_eq!(h.rec.as_ref().map(|r| r.malformed()), Some(2));
    assert_eq!(out.len(), 1, "the good record is still processed");
}

#[test]
fn cases_name_flagged_redemptions_latest_first_and_turn_final() {
    let mut h = Harness::new();
    h.feed(&[
        c(coupon(CODE, 1, 0)),
        r(redeem_on(1, "store-a", 0)),
        r(redeem_on(2, "store-b", 10)),
        r(redeem_on(3, "store-c", 20)),
    ]);
    let report = h.close_and_report();
    assert_eq!(report.cases.len(), 1);
    let case = &report.cases[0];
    assert_eq!(case.status, "PROVISIONAL");
    assert_eq!(case.flagged_event_ids, vec!["event-3", "event-2"]);
    assert_eq!(case.exposure.get("EUR"), Some(&1000));
    assert_eq!(case.timeline.len(), 3);
    assert_ne!(case.subject, CODE);

    h.reopen();
    h.feed(&[r(release(50, 1, CODE, 30))]);
    let report = h.close_and_report();
    let case = &report.cases[0];
    // The release, synced inside the horizon, frees the slot: event-2 stands now; event-3 stays
    // over.
    assert_eq!(case.flagged_event_ids, vec!["event-3"]);
    assert_eq!(case.status, "PROVISIONAL");

    // A fact of the coupon synced more than the horizon after all of them: the case is final.
    h.reopen();
    h.feed(&[r(release(51, 99, CODE, 100 * 60))]);
    let report = h.close_and_report();
    let case = &report.cases[0];
    assert_eq!(case.flagged_event_ids, vec!["event-3"]);
    assert_eq!(case.status, "FINAL");

    h.reopen();
    let mut p = Harness::new();
    p.feed(&[
        Input::Balance(balance("profile-1", 100, 0)),
        l(loyalty(1, "profile-1", L::RedeemedPoints, 1, 10, 80)),
        l(loyalty(2, "profile-1", L::RedeemedPoints, 2, 20, 50)),
        l(loyalty(3, "profile-1", L::RedeemedPoints, 3, 30, 40)),
    ]);
    let report = p.close_and_report();
    let case = &report.cases[0];
    assert_eq!(case.kind, "POINTS_DEFICIT");
    assert_eq!(case.deficit_points, 70);
    assert_eq!(case.flagged_event_ids, vec!["event-3", "event-2"]);
}

#[test]
fn promotion_core_records_may_be_proto3_json() {
    let mut h = Harness::new();
    let topic = h.topics.coupons.clone();
    let json = tillbridge_proto::to_json(&coupon(CODE, 1, 0));
    assert!(json.starts_with('{'));
    h.feed(&[
        Input::Raw {
            topic: topic.clone(),
            key: CODE.into(),
            payload: json.into_bytes(),
        },
        r(redeem_on(1, "s", 10)),
        r(redeem_on(2, "s", 20)),
    ]);
    assert_eq!(
        h.outstanding_reasons(),
        vec![("OVER_LIMIT".to_string(), "event-2".to_string())]
    );
    // A JSON typo is malformed, not a default value.
    h.feed(&[Input::Raw {
        topic,
        key: CODE.into(),
        payload: br#"{"code":"X","usageLimitt":3}"#.to_vec(),
    }]);
    assert_eq!(h.rec.as_ref().map(|r| r.malformed()), Some(1));
}

#[test]
fn an_action_id_names_one_action_whatever_order_the_catalog_came_in() {
    let facts = [
        r(redeem(1, "ONE-USE", "S1", 0, 300)),
        r(redeem(2, "ONE-USE", "S2", 5, 300)),
    ];
    let def = c(coupon("ONE-USE", 1, 0));
    // Facts before their definition: REVIEW_ONLY first, then the definition re-judges them.
    let mut late = Harness::new();
    late.feed(&facts);
    late.feed(std::slice::from_ref(&def));
    // The definition first.
    let mut early = Harness::new();
    early.feed(std::slice::from_ref(&def));
    early.feed(&facts);
    assert_eq!(late.outstanding_set(), early.outstanding_set());
    let mut meaning: std::collections::BTreeMap<String, (i32, String)> = Default::default();
    for a in late.actions.iter().chain(&early.actions) {
        if a.kind == pb::CompensationKind::Retract as i32 {
            continue;
        }
        let m = (a.kind, a.reason.clone());
        let seen = meaning.entry(a.id.clone()).or_insert_with(|| m.clone());
        assert_eq!(*seen, m, "action id {} carries two meanings", a.id);
    }
    assert!(late.actions.iter().any(|a| a.reason == "UNKNOWN_COUPON"));
}

#[test]
fn worked_example_a_late_sync_past_the_horizon_reads_the_same_in_any_order() {
    // docs/RECONCILER.md: O online Mon 10:00, A offline Mon 09:00 synced 11:00, B offline Mon
    // 08:00 synced Sat 12:00 (minutes from Mon 10:00).
    let synced =
        |f: pb::RedemptionFact, min: i64| Input::Synced(Box::new(r(f)), at(min).seconds * 1000);
    let def = Input::Synced(Box::new(c(coupon(CODE, 1, 0))), 0);
    let o = synced(redeem_on(1, "S1", 0), 0);
    let a = synced(offline(redeem_on(2, "S2", -60)), 60);
    let b = synced(offline(redeem_on(3, "S3", -120)), (5 * 24 + 2) * 60);
    let orders: Vec<Vec<Vec<Input>>> = vec![
        // Live, one by one as they sync.
        vec![
            vec![def.clone()],
            vec![o.clone()],
            vec![a.clone()],
            vec![b.clone()],
        ],
        // A backlog in one batch.
        vec![vec![def.clone(), b.clone(), a.clone(), o.clone()]],
        // Another order.
        vec![
            vec![def.clone(), b.clone()],
            vec![o.clone()],
            vec![a.clone()],
        ],
    ];
    for batches in orders {
        let mut h = Harness::new();
        for batch in &batches {
            h.feed(batch);
        }
        assert_eq!(
            h.outstanding_reasons(),
            vec![
                ("OVER_LIMIT".to_owned(), "event-1".to_owned()),
                ("OVER_LIMIT".to_owned(), "event-3".to_owned()),
            ],
            "O and B reversed, A stands"
        );
    }
}
