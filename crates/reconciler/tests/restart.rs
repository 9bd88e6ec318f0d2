//! Restart and rebuild: state and offsets are committed together, so a replay after a restart
//! emits nothing new, and a wiped state rebuilt from the same records gives the same report.

mod common;

use common::*;
use tillbridge_core::stage::Processor;
use tillbridge_proto::pb;

const CODE: &str = "WINTER-DEAL-77";

fn inputs() -> Vec<Input> {
    vec![
        Input::Coupon(coupon(CODE, 1, 0)),
        Input::Redemption(redeem(1, CODE, "store-a", 10, 500)),
        Input::Redemption(redeem(2, CODE, "store-b", 20, 700)),
        Input::Redemption(redeem(3, CODE, "store-b", 30, 300)),
        Input::Balance(balance("profile-1", 10, 0)),
        Input::Loyalty(loyalty(
            4,
            "profile-1",
            pb::LoyaltyFactKind::RedeemedPoints,
            4,
            5,
            50,
        )),
    ]
}

#[test]
fn replaying_committed_records_after_a_restart_emits_nothing() {
    let mut h = Harness::new();
    let first = h.feed(&inputs());
    assert_eq!(first.len(), 3);
    h.reopen();
    assert!(!h.rec.as_ref().is_some_and(|r| r.rebuilt()));
    let fed = h.fed.clone();
    let again = h.run(&fed);
    assert!(again.is_empty(), "replay re-applied facts: {again:?}");
    // Part of a batch replayed with new records after it: only the new one counts.
    let mut more = fed[1..3].to_vec();
    more.extend(h.records(&[Input::Redemption(redeem(5, CODE, "store-c", 40, 100))]));
    let out = h.run(&more);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event_ids[0], "event-5");
}

#[test]
fn an_uncommitted_batch_is_reprocessed_with_the_same_ids() {
    let mut h = Harness::new();
    let records = h.records(&inputs());
    let rec = h.rec.as_mut().expect("open");
    let lost = rec.process(&records).expect("process");
    // Crash before commit: nothing of the batch is in the state.
    h.reopen();
    let rec = h.rec.as_mut().expect("open");
    let again = rec.process(&records).expect("process");
    let ids = |o: &[tillbridge_core::log::OutRecord]| -> Vec<String> {
        o.iter()
            .map(|r| {
                use prost::Message;
                pb::CompensatingAction::decode(r.payload.as_deref().expect("payload"))
                    .expect("decode")
                    .id
            })
            .collect()
    };
    assert_eq!(ids(&lost), ids(&again));
    assert_eq!(again.len(), 3);
}

#[test]
fn only_a_state_closed_with_everything_committed_is_trusted_at_the_next_start() {
    let needs_restore = |h: &Harness| h.rec.as_ref().unwrap().needs_restore().unwrap();
    let mut h = Harness::new();
    h.feed(&inputs());
    // Stopped with everything committed: closed cleanly, trusted.
    h.reopen();
    assert!(!needs_restore(&h));
    // Stopped with a batch processed (its outputs possibly sent) but not committed.
    let more = h.records(&[Input::Redemption(redeem(5, CODE, "store-c", 40, 100))]);
    let rec = h.rec.as_mut().unwrap();
    assert!(!rec.process(&more).unwrap().is_empty());
    assert!(
        !block_on(rec.close()).unwrap(),
        "closed with work not committed"
    );
    h.rec = None;
    h.rec = Some(
        tillbridge_reconciler::Reconciler::open(&h.state_dir(), &h.topics, &h.cfg, KEY).unwrap(),
    );
    assert!(needs_restore(&h));
    // Stopped again before restoring: still not to be trusted.
    h.reopen();
    assert!(needs_restore(&h));
    // Restored, then stopped: trusted.
    h.kill_after_sending(&[]);
    h.reopen();
    assert!(!needs_restore(&h));
    // Killed (never closed), even with everything committed.
    h.rec = None;
    h.rec = Some(
        tillbridge_reconciler::Reconciler::open(&h.state_dir(), &h.topics, &h.cfg, KEY).unwrap(),
    );
    assert!(needs_restore(&h));
}

#[test]
fn a_wiped_state_rebuilt_from_the_topics_gives_the_same_report() {
    let mut h = Harness::new();
    h.feed(&inputs());
    h.feed(&[Input::Redemption(release(9, 1, CODE, 50))]);
    let before = h.close_and_report().to_json().expect("json");
    let outstanding_before: Vec<String> = h.outstanding.keys().cloned().collect();
    std::fs::remove_dir_all(h.state_dir()).expect("wipe");
    h.reopen();
    h.outstanding.clear();
    let fed = h.fed.clone();
    h.run(&fed);
    // Same ids as the first run, so consumers drop what they already have.
    let outstanding_after: Vec<String> = h.outstanding.keys().cloned().collect();
    assert_eq!(outstanding_before, outstanding_after);
    let after = h.close_and_report().to_json().expect("json");
    assert_eq!(before, after);
}

#[test]
fn policy_can_make_a_reason_review_only() {
    let mut h = Harness::with_cfg(tillbridge_reconciler::ReconcilerConfig {
        review_only: vec!["OVER_LIMIT".into()],
        ..cfg()
    });
    let out = h.feed(&inputs());
    let kinds: Vec<(String, i32)> = out.iter().map(|a| (a.reason.clone(), a.kind)).collect();
    assert!(kinds.contains(&("OVER_LIMIT".into(), pb::CompensationKind::ReviewOnly as i32)));
    assert!(kinds.contains(&(
        "POINTS_DEFICIT".into(),
        pb::CompensationKind::ClawbackPoints as i32
    )));
    assert!(!kinds
        .iter()
        .any(|(_, k)| *k == pb::CompensationKind::ReverseCouponRedemption as i32));
}
