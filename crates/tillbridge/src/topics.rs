//! The topics a deployment needs, as `tillbridge topics create` makes them and `topics check`
//! compares them with a cluster.
//!
//! - The three tables the contract calls compacted (`promo.coupons`, `promo.loyalty.balances`,
//!   `promo.stores`) and ingest's changelog are compacted: their latest value per key is the
//!   truth, and deleting by age would lose it.
//! - Every other topic is deleted by age, kept for the longer of the dedup window and the
//!   settlement horizon plus [`RETENTION_MARGIN`]: a state rebuilt by replaying its inputs must
//!   find every event the window and the horizon still judge, also after an outage that lasted
//!   the margin.
//! - The replication factor defaults to the smaller of 3 and the cluster's broker count; with 3 or
//!   more, `min.insync.replicas` is 2, so an acknowledged write survives the loss of a broker.

use std::time::Duration;

use tillbridge_core::config::Config;
use tillbridge_core::log::{changelog_topic, KafkaLog, TopicSpec, TopicState};

/// Time on top of the longer window for an operator to notice an outage and replay.
pub const RETENTION_MARGIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The retention of the event topics: the longer of `ingest.dedup_window` and
/// `reconciler.settlement_horizon`, plus [`RETENTION_MARGIN`].
pub fn event_retention(config: &Config) -> anyhow::Result<Duration> {
    let horizon = crate::reconciler_config(config)?.settlement_horizon;
    Ok(config.ingest.dedup_window.max(horizon) + RETENTION_MARGIN)
}

/// Every topic of the deployment with `partitions` partitions and `replication` replicas each
/// (`None`: the cluster's default).
pub fn topic_specs(
    config: &Config,
    kafka: &KafkaLog,
    partitions: i32,
    replication: Option<i32>,
) -> anyhow::Result<Vec<TopicSpec>> {
    let retention = event_retention(config)?.as_millis().to_string();
    let mut compacted = vec![
        config.topics.coupons.clone(),
        config.topics.loyalty_balances.clone(),
        config.topics.stores.clone(),
    ];
    let changelog = changelog_topic(&kafka.group("ingest"));
    let mut names = crate::all_topics(config)?;
    names.push(changelog.clone());
    compacted.push(changelog);
    Ok(names
        .into_iter()
        .map(|name| {
            let mut configs = std::collections::BTreeMap::new();
            if compacted.contains(&name) {
                configs.insert("cleanup.policy".to_owned(), "compact".to_owned());
            } else {
                configs.insert("cleanup.policy".to_owned(), "delete".to_owned());
                configs.insert("retention.ms".to_owned(), retention.clone());
            }
            if replication.is_some_and(|r| r >= 3) {
                configs.insert("min.insync.replicas".to_owned(), "2".to_owned());
            }
            TopicSpec {
                name,
                partitions,
                replication,
                configs,
            }
        })
        .collect())
}

/// The replication factor `topics create` uses when none is given: min(3, brokers).
pub fn default_replication(kafka: &KafkaLog) -> anyhow::Result<i32> {
    Ok(kafka.broker_count()?.clamp(1, 3) as i32)
}

/// Creates every topic of the deployment that does not exist yet (`tillbridge topics create`);
/// returns the names it created. Existing topics are left alone: `topics check` tells how they
/// differ.
pub async fn create(
    config: &Config,
    kafka: &KafkaLog,
    partitions: i32,
    replication: Option<i32>,
) -> anyhow::Result<Vec<String>> {
    let replication = match replication {
        Some(r) => r,
        None => default_replication(kafka)?,
    };
    let specs = topic_specs(config, kafka, partitions, Some(replication))?;
    Ok(kafka.create_topic_specs(&specs).await?)
}

/// How the cluster's topics differ from what the deployment needs (`tillbridge topics check`),
/// one line each; empty when they match.
pub async fn check(
    config: &Config,
    kafka: &KafkaLog,
    replication: Option<i32>,
) -> anyhow::Result<Vec<String>> {
    let replication = match replication {
        Some(r) => r,
        None => default_replication(kafka)?,
    };
    // Partition counts are the operator's choice; only the changelog's is checked, against
    // its input's.
    let specs = topic_specs(config, kafka, 0, Some(replication))?;
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let states = kafka.describe_topics(&names).await?;
    let changelog = changelog_topic(&kafka.group("ingest"));
    Ok(drift(
        &specs,
        &states,
        &config.topics.till_events,
        &changelog,
    ))
}

/// What differs between `specs` and the cluster (`states`, in the same order), one line each.
/// `input` is ingest's input topic, whose partition count its `changelog` must at least have.
pub fn drift(
    specs: &[TopicSpec],
    states: &[Option<TopicState>],
    input: &str,
    changelog: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    let input_partitions = specs
        .iter()
        .zip(states)
        .find(|(s, _)| s.name == input)
        .and_then(|(_, st)| st.as_ref().map(|st| st.partitions));
    for (spec, state) in specs.iter().zip(states) {
        let name = &spec.name;
        let Some(state) = state else {
            lines.push(format!("{name}: missing"));
            continue;
        };
        let want_policy = &spec.configs["cleanup.policy"];
        let policy = state
            .configs
            .get("cleanup.policy")
            .map(String::as_str)
            .unwrap_or("delete");
        if policy != want_policy {
            lines.push(format!(
                "{name}: cleanup.policy is {policy}, should be {want_policy}"
            ));
        }
        if let Some(want) = spec.configs.get("retention.ms") {
            let have: i64 = state
                .configs
                .get("retention.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1);
            let want: i64 = want.parse().unwrap_or(i64::MAX);
            if have >= 0 && have < want {
                lines.push(format!(
                    "{name}: retention.ms is {have} ({}), shorter than the {} the dedup window \
                     and settlement horizon need",
                    days(have),
                    days(want)
                ));
            }
        }
        if let Some(want) = spec.replication {
            if state.replication < want as usize {
                lines.push(format!(
                    "{name}: replication factor {}, should be at least {want}",
                    state.replication
                ));
            }
        }
        if spec.name == changelog {
            if let Some(p) = input_partitions.filter(|p| state.partitions < *p) {
                lines.push(format!(
                    "{name}: {} partitions, fewer than its input {input}'s {p}: ingest refuses \
                     to start; recreate it with at least {p}",
                    state.partitions
                ));
            }
        }
    }
    lines
}

/// `ms` in days (with hours when not whole).
fn days(ms: i64) -> String {
    let hours = ms / 3_600_000;
    match (hours / 24, hours % 24) {
        (d, 0) => format!("{d} d"),
        (d, h) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        name: &str,
        policy: &str,
        retention: Option<&str>,
        replication: Option<i32>,
    ) -> TopicSpec {
        let mut configs = std::collections::BTreeMap::new();
        configs.insert("cleanup.policy".to_owned(), policy.to_owned());
        if let Some(r) = retention {
            configs.insert("retention.ms".to_owned(), r.to_owned());
        }
        TopicSpec {
            name: name.to_owned(),
            partitions: 4,
            replication,
            configs,
        }
    }

    fn state(partitions: usize, replication: usize, configs: &[(&str, &str)]) -> TopicState {
        TopicState {
            partitions,
            replication,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn every_kind_of_drift_is_reported_and_a_matching_cluster_reports_none() {
        let specs = [
            spec("till.events", "delete", Some("1209600000"), Some(3)),
            spec("promo.coupons", "compact", None, Some(3)),
            spec("tillbridge.alerts", "delete", Some("1209600000"), Some(3)),
            spec("tillbridge.ingest-changelog", "compact", None, Some(3)),
            spec("tillbridge.dlq", "delete", Some("1209600000"), Some(3)),
        ];
        let good = [
            Some(state(
                4,
                3,
                &[("cleanup.policy", "delete"), ("retention.ms", "1209600000")],
            )),
            Some(state(4, 3, &[("cleanup.policy", "compact")])),
            Some(state(
                4,
                3,
                &[("cleanup.policy", "delete"), ("retention.ms", "-1")],
            )),
            Some(state(4, 3, &[("cleanup.policy", "compact")])),
            Some(state(
                8,
                3,
                &[("cleanup.policy", "delete"), ("retention.ms", "2000000000")],
            )),
        ];
        assert_eq!(
            drift(&specs, &good, "till.events", "tillbridge.ingest-changelog"),
            Vec::<String>::new()
        );
        let bad = [
            Some(state(
                4,
                1,
                &[("cleanup.policy", "delete"), ("retention.ms", "86400000")],
            )),
            Some(state(4, 3, &[("cleanup.policy", "delete")])),
            None,
            Some(state(2, 3, &[("cleanup.policy", "compact")])),
            Some(state(
                4,
                3,
                &[("cleanup.policy", "delete"), ("retention.ms", "1209600000")],
            )),
        ];
        assert_eq!(
            drift(&specs, &bad, "till.events", "tillbridge.ingest-changelog"),
            vec![
                "till.events: retention.ms is 86400000 (1 d), shorter than the 14 d the dedup \
                 window and settlement horizon need"
                    .to_owned(),
                "till.events: replication factor 1, should be at least 3".to_owned(),
                "promo.coupons: cleanup.policy is delete, should be compact".to_owned(),
                "tillbridge.alerts: missing".to_owned(),
                "tillbridge.ingest-changelog: 2 partitions, fewer than its input till.events's 4: \
                 ingest refuses to start; recreate it with at least 4"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn retention_covers_the_longer_window_plus_the_margin() {
        let mut config = Config::default();
        assert_eq!(
            event_retention(&config).unwrap(),
            Duration::from_secs(14 * 24 * 3600),
            "the 7-day dedup window is longer than the 3-day horizon"
        );
        config.reconciler = serde_json::json!({ "settlement_horizon": "30d" });
        assert_eq!(
            event_retention(&config).unwrap(),
            Duration::from_secs(37 * 24 * 3600)
        );
    }
}
