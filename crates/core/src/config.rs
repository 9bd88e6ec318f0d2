//! Configuration: defaults, then an optional TOML file, then `TILLBRIDGE_`-prefixed environment
//! variables (`TILLBRIDGE_KAFKA__BOOTSTRAP_SERVERS=...`). Unknown keys are errors; cross-field
//! checks run in [`Config::validate`] at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The whole configuration of a tillbridge process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Topic names; every one can be renamed.
    pub topics: Topics,
    /// The Kafka cluster. When absent, every stage runs on the embedded log.
    pub kafka: Option<KafkaConfig>,
    /// The embedded log, used when `kafka` is absent.
    pub embedded: EmbeddedConfig,
    /// Where stage state (sled) lives.
    pub state: StateConfig,
    /// The ingest stage.
    pub ingest: IngestConfig,
    /// The key of coupon-code fingerprints, shared by every stage.
    pub fingerprint: FingerprintConfig,
    /// The reconciler stage. Checked strictly by the reconciler crate, which owns its type.
    pub reconciler: serde_json::Value,
    /// The fraud-guard rules. Checked strictly (unknown keys are errors) by the fraud-guard
    /// crate, which owns their types.
    pub fraud_guard: serde_json::Value,
    /// Routing rules and the store table. Checked strictly by ingest's `route` module, which owns
    /// their types.
    pub router: serde_json::Value,
    /// The HTTP destination toward the promotion core (absent: none). Checked strictly by the
    /// delivery crate, which owns its type. `[router.http]` is read too, with a warning.
    pub delivery: serde_json::Value,
}

/// Topic names (defaults from the wire contract v1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Till events from POS fleets, keyed `{store_id}/{till_id}`.
    pub till_events: String,
    /// Coupon definitions from the promotion core (compacted), keyed by code.
    pub coupons: String,
    /// Loyalty balance snapshots from the promotion core (compacted), keyed by profile id.
    pub loyalty_balances: String,
    /// The store table (compacted), keyed by store id: metadata routing rules match on.
    pub stores: String,
    /// Accepted till events toward the promotion core, keyed by session id.
    pub sessions: String,
    /// Coupon redemption facts, keyed by coupon code.
    pub redemptions: String,
    /// Loyalty facts, keyed by profile id.
    pub loyalty: String,
    /// Compensating actions, keyed by coupon code or profile id.
    pub compensations: String,
    /// Fraud alerts, keyed by store id.
    pub alerts: String,
    /// Dead letters, keyed by the original key.
    pub dlq: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            till_events: "till.events".into(),
            coupons: "promo.coupons".into(),
            loyalty_balances: "promo.loyalty.balances".into(),
            stores: "promo.stores".into(),
            sessions: "promo.sessions".into(),
            redemptions: "tillbridge.redemptions".into(),
            loyalty: "tillbridge.loyalty".into(),
            compensations: "tillbridge.compensations".into(),
            alerts: "tillbridge.alerts".into(),
            dlq: "tillbridge.dlq".into(),
        }
    }
}

impl Topics {
    /// Every topic, for creating them.
    pub fn all(&self) -> Vec<&str> {
        vec![
            &self.till_events,
            &self.coupons,
            &self.loyalty_balances,
            &self.stores,
            &self.sessions,
            &self.redemptions,
            &self.loyalty,
            &self.compensations,
            &self.alerts,
            &self.dlq,
        ]
    }
}

/// A Kafka cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Prefix of the consumer group ids; each stage appends its own name.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// `group.instance.id` (static membership): a process restarted with the same id takes its
    /// partitions back at once instead of waiting for the old member's session to expire. Give
    /// each instance its own stable id; leave unset for dynamic membership.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch while no data is there. Kafka
    /// answers as soon as data arrives, so this bounds idle round trips, not latency.
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u32,
    /// `queued.max.messages.kbytes`: the consumer's prefetch budget per partition, bounding memory.
    #[serde(default = "default_queued_max_kbytes")]
    pub queued_max_messages_kbytes: u32,
    /// How long a produced batch may take to be acknowledged before the stage retries it.
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties, applied last (for TLS, SASL and the like).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_prefix() -> String {
    "tillbridge".into()
}
fn default_fetch_wait_max_ms() -> u32 {
    100
}
fn default_queued_max_kbytes() -> u32 {
    16 * 1024
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}

impl KafkaConfig {
    /// A configuration with defaults for `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            group_prefix: default_group_prefix(),
            instance_id: None,
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
            queued_max_messages_kbytes: default_queued_max_kbytes(),
            delivery_timeout: default_delivery_timeout(),
            properties: BTreeMap::new(),
        }
    }
}

/// The embedded sled-backed log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Directory of the log.
    pub path: PathBuf,
    /// Partitions of each topic.
    pub partitions: u32,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: PathBuf::from("tillbridge-data/log"),
            partitions: 4,
        }
    }
}

/// Where stage state lives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory holding one sled database per stage.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("tillbridge-data/state"),
        }
    }
}

/// The ingest stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Payloads larger than this are dead-lettered as OVERSIZED.
    pub max_payload_bytes: usize,
    /// An event whose `occurred_at` is further ahead of its record timestamp is CLOCK_SKEW.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// How long (in event time) an event id is remembered for deduplication.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most records handled in one batch (the bound between consuming and processing).
    pub batch_size: usize,
    /// Most payload bytes held in one batch.
    pub batch_bytes: usize,
    /// How long ingest may go on with batches whose outputs are durable before it makes its
    /// state, its changelog records and its offsets durable together (Kafka Streams'
    /// `commit.interval.ms`); 0 commits every batch. A crash replays at most this much, with the
    /// same outputs.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_payload_bytes: 1024 * 1024,
            max_clock_skew: Duration::from_secs(5 * 60),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            batch_size: 2000,
            batch_bytes: 16 * 1024 * 1024,
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// The key of the HMAC that fingerprints coupon codes wherever one is shown or kept in place
/// of the code: report case ids and subjects, fraud alerts' subjects. One key for every stage, so
/// an analyst can match a case with the alerts about the same coupon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FingerprintConfig {
    /// The secret. The default is public and is refused when a Kafka cluster is configured.
    pub key: String,
}

/// The default fingerprint key: fine for a first look on the embedded log, refused on Kafka.
pub const DEFAULT_FINGERPRINT_KEY: &str = "change-me";

impl Default for FingerprintConfig {
    fn default() -> Self {
        FingerprintConfig {
            key: DEFAULT_FINGERPRINT_KEY.into(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `TILLBRIDGE_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Error::Config(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file(file));
        }
        // TILLBRIDGE_CONFIG, TILLBRIDGE_LOG, TILLBRIDGE_TEST_KAFKA and TILLBRIDGE_CRASH_AT name
        // no config key.
        fig = fig.merge(
            Env::prefixed("TILLBRIDGE_")
                .ignore(&["config", "log", "test_kafka", "crash_at"])
                .split("__"),
        );
        let config: Config = fig.extract().map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<()> {
        let topics = self.topics.all();
        for (i, t) in topics.iter().enumerate() {
            if t.is_empty() {
                return Err(Error::Config("topic names must not be empty".into()));
            }
            if topics[..i].contains(t) {
                return Err(Error::Config(format!("topic {t:?} is configured twice")));
            }
        }
        if self.embedded.partitions == 0 {
            return Err(Error::Config(
                "embedded.partitions must be at least 1".into(),
            ));
        }
        if self.ingest.batch_size == 0 || self.ingest.batch_bytes == 0 {
            return Err(Error::Config("ingest batch limits must be positive".into()));
        }
        if self.ingest.commit_interval > Duration::from_secs(60) {
            return Err(Error::Config(
                "ingest.commit_interval must be at most 60s (a crash replays up to that much)"
                    .into(),
            ));
        }
        if self.ingest.max_payload_bytes == 0 {
            return Err(Error::Config(
                "ingest.max_payload_bytes must be positive".into(),
            ));
        }
        if let Some(k) = &self.kafka {
            if k.bootstrap_servers.trim().is_empty() {
                return Err(Error::Config("kafka.bootstrap_servers is empty".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[ingest]\nmax_clock_skew = \"10m\"\nbogus = 1\n").unwrap();
        assert!(matches!(Config::load(Some(&f)), Err(Error::Config(_))));
        std::fs::write(&f, "[ingest]\nmax_clock_skew = \"10m\"\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.ingest.max_clock_skew, Duration::from_secs(600));
        std::fs::write(&f, "[topics]\nsessions = \"till.events\"\n").unwrap();
        assert!(matches!(Config::load(Some(&f)), Err(Error::Config(_))));
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
