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
///
/// Its [`Debug`] shows `<redacted>` in place of the value of every property that holds a secret
/// ([`is_secret_property`]), so a logged configuration never shows one.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
    /// Extra librdkafka properties, applied after tillbridge's own to every client the process
    /// makes (stage consumers and producers, admin calls, table and changelog readers): TLS,
    /// SASL and the like. Keep secrets out of here: use [`KafkaConfig::secrets`].
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (`sasl.password`, `ssl.key.password`,
    /// `ssl.key.pem`, ...), each read from an environment variable or a file when a client is
    /// made, so the configuration file never holds them:
    /// `"sasl.password" = { env = "KAFKA_PASSWORD" }` or
    /// `"ssl.key.password" = { file = "/run/secrets/kafka-key-password" }`. Applied after
    /// `properties`; a property may not be in both.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
}

/// Where the value of a secret librdkafka property comes from: exactly one of `env` and `file`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the process holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file holding the value (a mounted secret); a trailing line break is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// The secret from an environment variable.
    pub fn env(var: impl Into<String>) -> Self {
        SecretSource {
            env: Some(var.into()),
            file: None,
        }
    }

    /// The secret from a file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SecretSource {
            env: None,
            file: Some(path.into()),
        }
    }

    /// Reads the value for property `key`. Errors name the key and the source, never a value.
    fn read(&self, key: &str) -> Result<String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|e| {
                Error::Config(format!(
                    "kafka.secrets.{key:?}: environment variable {var} {}",
                    match e {
                        std::env::VarError::NotPresent => "is not set",
                        std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                    }
                ))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!(
                    "kafka.secrets.{key:?}: cannot read {}: {}",
                    path.display(),
                    e.kind()
                ))
            })?,
            _ => {
                return Err(Error::Config(format!(
                    "kafka.secrets.{key:?}: give exactly one of env and file"
                )))
            }
        };
        let value = value.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(Error::Config(format!(
                "kafka.secrets.{key:?}: the secret is empty"
            )));
        }
        Ok(value.to_owned())
    }
}

/// Whether the value of librdkafka property `key` may be a secret, never to be shown: a password
/// (`sasl.password`, `ssl.key.password`, `ssl.keystore.password`, ...), anything named
/// `secret`, a key in PEM (`ssl.key.pem`), an OAUTHBEARER configuration or token, and their
/// likely misspellings (`sasl.pasword`): the net is wide on purpose, and also hides some values
/// that are no secret (`ssl.key.location`).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "pass", "pasw", "pswd", "pwd", "word", "secret", "key", "token", "cred", "jaas", "oauth",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_prefix", &self.group_prefix)
            .field("instance_id", &self.instance_id)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field(
                "queued_max_messages_kbytes",
                &self.queued_max_messages_kbytes,
            )
            .field("delivery_timeout", &self.delivery_timeout)
            .field("properties", &properties)
            .field("secrets", &self.secrets)
            .finish()
    }
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
            secrets: BTreeMap::new(),
        }
    }

    /// The librdkafka properties every client gets after tillbridge's own: `properties`, then
    /// every secret read from its source (read again for each client, so a rotated file is
    /// picked up by the next client). Errors name keys and sources, never a value.
    pub fn client_properties(&self) -> Result<BTreeMap<String, String>> {
        let mut all = self.properties.clone();
        for (key, source) in &self.secrets {
            if all.contains_key(key) {
                return Err(Error::Config(format!(
                    "kafka property {key:?} is in both kafka.properties and kafka.secrets"
                )));
            }
            all.insert(key.clone(), source.read(key)?);
        }
        Ok(all)
    }

    /// The keys whose values must never be shown: every key of `secrets`, and every property
    /// [`is_secret_property`] names.
    pub fn is_secret_key(&self, key: &str) -> bool {
        self.secrets.contains_key(key) || is_secret_property(key)
    }

    /// A copy to show (a `config` command's output): every secret-looking value of `properties`
    /// is `<redacted>`. `secrets` holds only where secrets are, so it is shown as is.
    pub fn redacted(&self) -> KafkaConfig {
        let mut shown = self.clone();
        for (k, v) in shown.properties.iter_mut() {
            if is_secret_property(k) {
                *v = "<redacted>".into();
            }
        }
        shown
    }
}

#[cfg(test)]
mod kafka_secrets_tests {
    use super::*;

    fn kafka(toml: &str) -> std::result::Result<KafkaConfig, String> {
        Figment::from(Toml::string(toml))
            .extract()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn secrets_come_from_a_file_or_the_environment_and_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let var = format!("TB_CONFIG_TEST_{}", std::process::id());
        let k = kafka(&format!(
            "bootstrap_servers = \"b:9093\"\n[properties]\n\"sasl.username\" = \"u\"\n\
             [secrets]\n\"sasl.password\" = {{ file = \"{}\" }}\n\
             \"ssl.key.password\" = {{ env = \"{var}\" }}\n",
            file.display()
        ))
        .unwrap();
        // The variable is not set: an error naming the property and the variable only.
        let e = k.client_properties().unwrap_err().to_string();
        assert!(e.contains("ssl.key.password") && e.contains(&var), "{e}");
        let mut k = k;
        k.secrets
            .insert("ssl.key.password".into(), SecretSource::file(&file));
        let all = k.client_properties().unwrap();
        assert_eq!(all["sasl.password"], "from-file");
        assert_eq!(all["sasl.username"], "u");
        // Both sources, neither, an unknown field: refused.
        assert!(
            kafka("bootstrap_servers = \"b\"\n[secrets]\n\"x\" = { env = \"A\", nope = 1 }\n")
                .is_err()
        );
        k.secrets.insert(
            "sasl.password".into(),
            SecretSource {
                env: Some("A".into()),
                file: Some(file.clone()),
            },
        );
        assert!(k.client_properties().is_err());
        k.secrets
            .insert("sasl.password".into(), SecretSource::default());
        assert!(k.client_properties().is_err());
        // A property in both tables, an empty or missing file: refused.
        k.secrets
            .insert("sasl.password".into(), SecretSource::file(&file));
        k.properties.insert("sasl.password".into(), "x".into());
        assert!(k.client_properties().is_err());
        k.properties.remove("sasl.password");
        std::fs::write(&file, "\n").unwrap();
        assert!(k.client_properties().is_err());
        k.secrets.insert(
            "sasl.password".into(),
            SecretSource::file(dir.path().join("missing")),
        );
        assert!(k.client_properties().is_err());
    }

    #[test]
    fn secret_values_are_redacted_from_debug() {
        let mut k = KafkaConfig::new("b:9093");
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.pasword",
        ] {
            k.properties.insert(key.into(), format!("hidden-{key}"));
        }
        k.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        for shown in [format!("{k:?}"), format!("{:?}", k.redacted())] {
            assert!(!shown.contains("hidden-"), "{shown}");
            assert!(shown.contains("SASL_SSL"), "{shown}");
        }
        let config = Config {
            kafka: Some(k.clone()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hidden-"));
        assert_eq!(k.redacted().properties["security.protocol"], "SASL_SSL");
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
    /// How many ingest tasks one process runs on Kafka, each a member of ingest's consumer group
    /// with a state of its own (its partitions' share), so that one process uses several cores
    /// as several processes would. 1 on the embedded log.
    pub tasks: usize,
}

/// The most ingest tasks one process runs.
pub const MAX_INGEST_TASKS: usize = 64;

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_payload_bytes: 1024 * 1024,
            max_clock_skew: Duration::from_secs(5 * 60),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            batch_size: 2000,
            batch_bytes: 16 * 1024 * 1024,
            commit_interval: Duration::from_millis(100),
            tasks: 1,
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

/// The top-level sections of the configuration file (the fields of [`Config`]).
pub const SECTIONS: &[&str] = &[
    "topics",
    "kafka",
    "embedded",
    "state",
    "ingest",
    "fingerprint",
    "reconciler",
    "fraud_guard",
    "router",
    "delivery",
];

/// `TILLBRIDGE_*` variables that are the process's own and name no config key.
const NOT_CONFIG: &[&str] = &["config", "log", "log_format", "test_kafka", "crash_at"];

/// The section a `TILLBRIDGE_*` variable names (`TILLBRIDGE_KAFKA__BOOTSTRAP_SERVERS`: `kafka`),
/// from its name without the prefix.
fn section_of(var: &str) -> String {
    var.split("__")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The `TILLBRIDGE_*` environment variables that name no section of the configuration (a
/// Kubernetes Service named tillbridge injects `TILLBRIDGE_PORT` and friends): they are ignored
/// with a warning. A variable that names a section is configuration, and a key that section
/// does not have is an error.
pub fn stray_env_vars() -> Vec<String> {
    let mut stray: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            k.strip_prefix("TILLBRIDGE_").is_some_and(|rest| {
                let lower = rest.to_ascii_lowercase();
                !NOT_CONFIG.contains(&lower.as_str())
                    && !SECTIONS.contains(&section_of(rest).as_str())
            })
        })
        .collect();
    stray.sort();
    stray
}

impl Config {
    /// Defaults, then `file` (if given), then `TILLBRIDGE_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        for var in stray_env_vars() {
            tracing::warn!(%var, "ignoring an environment variable that names no config section");
        }
        let config: Config = Self::figment(file)?
            .extract()
            .map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The layers [`Config::load`] extracts: defaults, `file`, then the `TILLBRIDGE_*` variables
    /// that name a section (see [`stray_env_vars`]).
    pub fn figment(file: Option<&Path>) -> Result<Figment> {
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
        Ok(fig.merge(
            Env::prefixed("TILLBRIDGE_")
                .filter(|k| SECTIONS.contains(&section_of(k.as_str()).as_str()))
                .split("__"),
        ))
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
        if !(1..=MAX_INGEST_TASKS).contains(&self.ingest.tasks) {
            return Err(Error::Config(format!(
                "ingest.tasks must be between 1 and {MAX_INGEST_TASKS}"
            )));
        }
        if self.ingest.tasks > 1 && self.kafka.is_none() {
            return Err(Error::Config(
                "ingest.tasks above 1 needs [kafka] (the embedded log has one reader per stage)"
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

    #[test]
    fn several_ingest_tasks_need_kafka() {
        let mut c = Config::default();
        c.ingest.tasks = 0;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        c.ingest.tasks = 2;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("needs [kafka]"), "{err}");
        c.kafka = Some(KafkaConfig::new("127.0.0.1:9092"));
        assert!(c.validate().is_ok());
        c.ingest.tasks = MAX_INGEST_TASKS + 1;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
    }
}
