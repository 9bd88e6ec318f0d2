//! The reconciler reads the coupon catalog to its end before it judges any fact: redemptions that
//! sit before their coupon's definition on the topics (a backlog, a replay) are never judged
//! UNKNOWN_COUPON on the way, whatever the batch size.

#![allow(clippy::unwrap_used)]

use kit::events::{envelope, Sale};
use prost::Message;
use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

fn sale(id: &str, store: &str, session: &str) -> String {
    Sale::new(id, store, "T1", 1)
        .session(session)
        .line("A", 2, 1000)
        .coupon("SPRING-25", 250)
        .total(1750)
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_before_their_definition_are_judged_against_the_whole_catalog() {
    for batch_size in [1, 2, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.embedded.path = dir.path().join("log");
        config.state.dir = dir.path().join("state");
        config.ingest.batch_size = batch_size;
        let transport = Transport::from_config(&config).unwrap();
        let t = config.topics.clone();
        // Two stores redeem a single-use coupon; its definition reaches the catalog topic later.
        let lines = [
            envelope(
                &t.till_events,
                "S1/T1",
                1_793_614_500_000,
                &sale("0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c11", "S1", "R-1"),
            ),
            envelope(
                &t.till_events,
                "S2/T1",
                1_793_614_500_001,
                &sale("0b6f2a59-3f8e-4f54-8a57-7b2f0f7c1c12", "S2", "R-2"),
            ),
            envelope(
                &t.coupons,
                "SPRING-25",
                1_793_614_900_000,
                r#"{"code":"SPRING-25","usageLimit":1}"#,
            ),
        ]
        .join("\n");
        let report = tillbridge::publish::publish(
            lines.as_bytes(),
            Some(&transport),
            &t,
            &Default::default(),
            None,
            false,
        )
        .await
        .unwrap();
        assert_eq!(report.rejected(), 0, "{report}");

        tillbridge::run(
            &config,
            &transport,
            Stages::ALL,
            true,
            CancellationToken::new(),
        )
        .await
        .unwrap();

        let Transport::Embedded(log) = &transport else {
            unreachable!()
        };
        let actions: Vec<pb::CompensatingAction> = log
            .read_all(&t.compensations)
            .unwrap()
            .iter()
            .map(|r| pb::CompensatingAction::decode(r.payload.as_deref().unwrap()).unwrap())
            .collect();
        let reasons: Vec<&str> = actions.iter().map(|a| a.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec!["OVER_LIMIT"],
            "batch size {batch_size}: one over-redemption, and nothing judged without its \
             definition: {actions:#?}"
        );
    }
}
