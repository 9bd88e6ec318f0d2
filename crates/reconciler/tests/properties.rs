//! Order independence: random redemption sets, shuffled into random arrival orders with random
//! duplicates and processed in random batch splits, end in the same ledger (the report, which
//! holds every case with its verdicts) and the same outstanding compensations; and a coupon with
//! n counted redemptions and limit L ends with exactly max(0, n - L) outstanding compensations.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use tillbridge_proto::pb;

const CODES: [&str; 3] = ["CODE-AAAA-0001", "CODE-BBBB-0002", "CODE-CCCC-0003"];

#[derive(Clone, Debug)]
struct Sale {
    coupon: usize,
    store: u8,
    minute: i64,
    discount: i64,
    profile: Option<u8>,
    offline: bool,
    released: bool,
}

#[derive(Clone, Debug)]
struct Points {
    /// 0 earn, 1 redeem, 2 return against an earlier fact's session, 3 cancel one.
    kind: u8,
    minute: i64,
    points: i64,
    target: usize,
    refund: i64,
}

fn sale() -> impl Strategy<Value = Sale> {
    (
        0..CODES.len(),
        0u8..3,
        0i64..600,
        1i64..1000,
        proptest::option::of(0u8..3),
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(coupon, store, minute, discount, profile, offline, released)| Sale {
                coupon,
                store,
                minute,
                discount,
                profile,
                offline,
                released,
            },
        )
}

fn points() -> impl Strategy<Value = Points> {
    (0u8..4, 0i64..600, 1i64..80, 0usize..8, 0i64..1200).prop_map(
        |(kind, minute, points, target, refund)| Points {
            kind,
            minute,
            points,
            target,
            refund,
        },
    )
}

fn inputs(
    limits: &[u32],
    sales: &[Sale],
    pts: &[Points],
    opening: i64,
    policy: Option<(u32, bool)>,
) -> Vec<Input> {
    let mut v = Vec::new();
    for (i, code) in CODES.iter().enumerate() {
        let mut def = coupon(code, limits[i], 0);
        if let Some((per_profile, offline_allowed)) = policy {
            def.per_profile_limit = per_profile;
            def.offline_allowed = offline_allowed;
        }
        v.push(Input::Coupon(def));
    }
    for (n, s) in sales.iter().enumerate() {
        let n = n as u32 + 1;
        let mut f = redeem(
            n,
            CODES[s.coupon],
            &format!("store-{}", s.store),
            s.minute,
            s.discount,
        );
        f.profile_id = s.profile.map(|p| format!("profile-{p}"));
        f.offline = s.offline;
        v.push(Input::Redemption(f));
        if s.released {
            v.push(Input::Redemption(release(
                1000 + n,
                n,
                CODES[s.coupon],
                s.minute + 10,
            )));
        }
    }
    v.push(Input::Balance(balance("profile-x", opening, -1)));
    for (n, p) in pts.iter().enumerate() {
        let target = format!("session-{}", 5000 + (p.target % pts.len()) as u32);
        let n = 5000 + n as u32;
        let f = match p.kind {
            0 => loyalty(
                n,
                "profile-x",
                pb::LoyaltyFactKind::Earned,
                n,
                p.minute,
                p.points,
            ),
            1 => loyalty(
                n,
                "profile-x",
                pb::LoyaltyFactKind::RedeemedPoints,
                n,
                p.minute,
                p.points,
            ),
            2 => pb::LoyaltyFact {
                original_session_id: Some(target),
                refund_minor: p.refund,
                ..loyalty(
                    n,
                    "profile-x",
                    pb::LoyaltyFactKind::Returned,
                    n,
                    p.minute,
                    0,
                )
            },
            _ => pb::LoyaltyFact {
                original_session_id: Some(target.clone()),
                session_id: target,
                ..loyalty(
                    n,
                    "profile-x",
                    pb::LoyaltyFactKind::Cancelled,
                    n,
                    p.minute,
                    0,
                )
            },
        };
        v.push(Input::Loyalty(f));
    }
    v
}

/// A small deterministic generator, so one seed names one arrival order.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Shuffles, duplicates some inputs, and splits into batches.
fn arrival(mut v: Vec<Input>, seed: u64) -> Vec<Vec<Input>> {
    let mut rng = Rng(seed | 1);
    let dups = rng.below(v.len() / 2 + 1);
    for _ in 0..dups {
        let i = rng.below(v.len());
        v.push(v[i].clone());
    }
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
    let mut batches = Vec::new();
    while !v.is_empty() {
        let n = 1 + rng.below(v.len().min(6));
        batches.push(v.drain(..n).collect());
    }
    batches
}

/// The report JSON, the outstanding set, and outstanding counts per masked subject.
type Outcome = (
    String,
    Vec<(String, i32, String, String, i64, i64)>,
    BTreeMap<String, usize>,
);

fn run(batches: &[Vec<Input>]) -> Outcome {
    let mut h = Harness::new();
    for b in batches {
        h.feed(b);
    }
    let mut per_subject: BTreeMap<String, usize> = BTreeMap::new();
    for a in h.outstanding.values() {
        *per_subject.entry(a.subject.clone()).or_default() += 1;
    }
    let outstanding = h.outstanding_set();
    let report = h.close_and_report().to_json().expect("json");
    (report, outstanding, per_subject)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arrival_order_never_changes_the_outcome(
        limits in proptest::collection::vec(0u32..4, CODES.len()),
        sales in proptest::collection::vec(sale(), 1..14),
        pts in proptest::collection::vec(points(), 0..10),
        opening in 0i64..100,
        seed in any::<u64>(),
    ) {
        let all = inputs(&limits, &sales, &pts, opening, None);
        let (report_a, outstanding_a, per_subject) = run(std::slice::from_ref(&all));
        let (report_b, outstanding_b, _) = run(&arrival(all, seed));
        prop_assert_eq!(&report_a, &report_b);
        prop_assert_eq!(&outstanding_a, &outstanding_b);

        for (i, code) in CODES.iter().enumerate() {
            let counted = sales.iter().filter(|s| s.coupon == i && !s.released).count();
            let limit = limits[i] as usize;
            let want = if limit == 0 { 0 } else { counted.saturating_sub(limit) };
            let subject = format!("{}\u{2026}{}", &code[..2], &code[code.len() - 2..]);
            prop_assert_eq!(per_subject.get(&subject).copied().unwrap_or(0), want, "coupon {}", i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The same with per-profile limits and the offline policy in play.
    #[test]
    fn arrival_order_never_changes_the_outcome_under_every_rule(
        limits in proptest::collection::vec(0u32..4, CODES.len()),
        per_profile in 0u32..3,
        offline_allowed in any::<bool>(),
        sales in proptest::collection::vec(sale(), 1..16),
        pts in proptest::collection::vec(points(), 0..10),
        opening in 0i64..100,
        seed in any::<u64>(),
    ) {
        let all = inputs(&limits, &sales, &pts, opening, Some((per_profile, offline_allowed)));
        let (report_a, outstanding_a, _) = run(std::slice::from_ref(&all));
        let (report_b, outstanding_b, _) = run(&arrival(all, seed));
        prop_assert_eq!(&report_a, &report_b);
        prop_assert_eq!(&outstanding_a, &outstanding_b);
    }
}

const MINUTE_MS: i64 = 60_000;
/// Minutes in six days: longer than the 72 h horizon, so decisions become final on the way.
const SPAN_MINUTES: i64 = 6 * 24 * 60;

/// A redemption of one single-use or small-limit coupon, with its own sync delay: most sync at
/// once, some offline ones days later (past the horizon).
#[derive(Clone, Debug)]
struct Late {
    coupon: usize,
    store: u8,
    minute: i64,
    delay_minutes: i64,
    profile: Option<u8>,
    released_after: Option<i64>,
}

fn late() -> impl Strategy<Value = Late> {
    (
        0..CODES.len(),
        0u8..4,
        0i64..SPAN_MINUTES,
        prop_oneof![3 => 0i64..5, 1 => 0i64..(5 * 24 * 60)],
        proptest::option::of(0u8..2),
        proptest::option::weighted(0.15, 1i64..(4 * 24 * 60)),
    )
        .prop_map(
            |(coupon, store, minute, delay_minutes, profile, released_after)| Late {
                coupon,
                store,
                minute,
                delay_minutes,
                profile,
                released_after,
            },
        )
}

/// Every fact with its sync time fixed: the set of records does not depend on arrival order.
fn synced_inputs(limits: &[u32], per_profile: u32, sales: &[Late]) -> Vec<Input> {
    let mut v = Vec::new();
    for (i, code) in CODES.iter().enumerate() {
        v.push(Input::Synced(
            Box::new(Input::Coupon(coupon(code, limits[i], per_profile))),
            0,
        ));
    }
    for (n, s) in sales.iter().enumerate() {
        let n = n as u32 + 1;
        let mut f = redeem(
            n,
            CODES[s.coupon],
            &format!("store-{}", s.store),
            s.minute,
            100 + i64::from(n),
        );
        f.profile_id = s.profile.map(|p| format!("profile-{p}"));
        f.offline = s.delay_minutes > 5;
        let synced = (s.minute + s.delay_minutes) * MINUTE_MS;
        v.push(Input::Synced(Box::new(Input::Redemption(f)), synced));
        if let Some(after) = s.released_after {
            let at = s.minute + s.delay_minutes + after;
            v.push(Input::Synced(
                Box::new(Input::Redemption(release(1000 + n, n, CODES[s.coupon], at))),
                at * MINUTE_MS,
            ));
        }
    }
    v
}

/// Every action emitted, in any of the runs, keeps one content per id.
fn one_meaning_per_id(actions: &[pb::CompensatingAction]) -> Result<(), String> {
    let mut seen: BTreeMap<&str, &pb::CompensatingAction> = BTreeMap::new();
    for a in actions {
        if let Some(prev) = seen.insert(&a.id, a) {
            if prev != a {
                return Err(format!("action {} emitted as {prev:?} and as {a:?}", a.id));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Over days, with offline redemptions synced past the horizon and releases: the same facts
    /// (with their sync times) give the same ledgers and outstanding compensations whatever the
    /// arrival order, duplicates and batches, and after the state is wiped at a random point
    /// and restored from the topics; an id carries the same content in every run.
    #[test]
    fn finality_in_sync_time_does_not_depend_on_arrival(
        limits in proptest::collection::vec(1u32..3, CODES.len()),
        per_profile in 0u32..2,
        sales in proptest::collection::vec(late(), 1..14),
        seed in any::<u64>(),
        wipe_at in any::<usize>(),
    ) {
        let all = synced_inputs(&limits, per_profile, &sales);
        let mut by_sync = all.clone();
        by_sync.sort_by_key(|i| match i { Input::Synced(_, at) => *at, _ => 0 });
        // Live: one record at a time in sync order.
        let live: Vec<Vec<Input>> = by_sync.into_iter().map(|i| vec![i]).collect();
        let mut h = Harness::new();
        for b in &live {
            h.feed(b);
        }
        let mut actions = h.actions.clone();
        let outstanding_live = h.outstanding_set();
        let report_live = h.close_and_report().to_json().expect("json");
        // Live again, with the state wiped at a random point and restored from the topics.
        let mut h = Harness::new();
        let wipe_at = wipe_at % live.len();
        for (i, b) in live.iter().enumerate() {
            if i == wipe_at {
                h.wipe_and_restore();
            }
            h.feed(b);
        }
        actions.extend(h.actions.iter().cloned());
        prop_assert_eq!(&h.outstanding_set(), &outstanding_live, "wiped after {} records", wipe_at);
        prop_assert_eq!(&h.close_and_report().to_json().expect("json"), &report_live);
        // Live again, killed at the same point after sending the outputs of up to three batches
        // it had not committed, then restarted on its intact state.
        let mut h = Harness::new();
        let unsent = 1 + seed as usize % 3;
        let mut i = 0;
        while i < live.len() {
            if i == wipe_at {
                let end = (i + unsent).min(live.len());
                h.kill_after_sending(&live[i..end]);
                i = end;
                continue;
            }
            h.feed(&live[i]);
            i += 1;
        }
        actions.extend(h.actions.iter().cloned());
        prop_assert_eq!(&h.outstanding_set(), &outstanding_live, "killed after {} records", wipe_at);
        prop_assert_eq!(&h.close_and_report().to_json().expect("json"), &report_live);
        // A backlog: everything at once; and a random arrival with duplicates and batches.
        for batches in [vec![all.clone()], arrival(all.clone(), seed)] {
            let mut h = Harness::new();
            for b in &batches {
                h.feed(b);
            }
            actions.extend(h.actions.iter().cloned());
            prop_assert_eq!(&h.outstanding_set(), &outstanding_live);
            prop_assert_eq!(&h.close_and_report().to_json().expect("json"), &report_live);
        }
        let meanings = one_meaning_per_id(&actions);
        prop_assert!(meanings.is_ok(), "{:?}", meanings);
    }
}
