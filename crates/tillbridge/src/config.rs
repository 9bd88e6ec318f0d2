//! The configuration as the binary composes it: core's sections, and each crate's own section
//! checked by that crate's types, every one of them at load whatever the command.

use anyhow::Context;
use tillbridge_core::config::Config;
use tillbridge_core::config::DEFAULT_FINGERPRINT_KEY;
use tillbridge_fraud_guard::FraudGuardConfig;
use tillbridge_reconciler::ReconcilerConfig;

/// Loads the configuration (see [`Config::load`]) and checks every section, whatever the command
/// and the stages it runs: a typo under `[fraud_guard]` or `[router]` is an error for `report`
/// and `topics create` as much as for `run`. On a Kafka cluster the fingerprint key must be set:
/// the default is public, so fingerprints made with it could be reversed for short codes.
pub fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let config = Config::load(file)?;
    match section_problems(&config).into_iter().next() {
        Some(first) => Err(first),
        None => Ok(config),
    }
}

/// What is wrong with the sections each crate owns, and with the fingerprint key: every problem,
/// not only the first.
fn section_problems(config: &Config) -> Vec<anyhow::Error> {
    type Check<'a> = &'a dyn Fn(&Config) -> anyhow::Result<()>;
    let checks: [Check; 5] = [
        &|c| fraud_guard_config(c).map(drop),
        &|c| reconciler_config(c).map(drop),
        &|c| router_rules(c).map(drop),
        &|c| delivery_config(c).map(drop),
        &|c| {
            let key = fingerprint_key(c)?;
            let key = key.trim();
            if c.kafka.is_some() && (key.is_empty() || key == DEFAULT_FINGERPRINT_KEY) {
                anyhow::bail!(
                    "fingerprint.key is {}: set a secret of your own (TILLBRIDGE_FINGERPRINT__KEY) \
                     before running against a Kafka cluster",
                    if key.is_empty() {
                        "empty"
                    } else {
                        "the default"
                    }
                );
            }
            Ok(())
        },
    ];
    checks
        .iter()
        .filter_map(|check| check(config).err())
        .collect()
}

/// What `tillbridge config check` found: errors (the configuration would not start) and
/// warnings (ignored environment variables).
#[derive(Debug, Default)]
pub struct ConfigCheck {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks a configuration the way [`load_config`] does, but goes on past the first problem:
/// unknown sections, each section on its own (an unknown key, a bad value), the cross-field
/// checks, each crate's own section and the fingerprint key. Messages name keys, never values
/// of `[kafka.properties]`.
pub fn check_config(file: Option<&std::path::Path>) -> ConfigCheck {
    use figment::Provider;
    use serde::de::DeserializeOwned;
    use tillbridge_core::config::{stray_env_vars, SECTIONS};

    let mut check = ConfigCheck {
        warnings: stray_env_vars()
            .into_iter()
            .map(|v| format!("environment variable {v} names no config section: ignored"))
            .collect(),
        ..ConfigCheck::default()
    };
    let fig = match Config::figment(file) {
        Ok(fig) => fig,
        Err(e) => {
            check.errors.push(e.to_string());
            return check;
        }
    };
    match fig.data() {
        Ok(data) => {
            for dict in data.values() {
                for key in dict.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
                    check.errors.push(format!("unknown section [{key}]"));
                }
            }
        }
        Err(e) => {
            check.errors.extend(e.into_iter().map(|e| e.to_string()));
            return check;
        }
    }
    let mut config = Config::default();
    fn section<T: DeserializeOwned>(
        fig: &figment::Figment,
        name: &str,
        errors: &mut Vec<String>,
    ) -> Option<T> {
        if fig.find_value(name).is_err() {
            return None;
        }
        fig.extract_inner(name)
            .map_err(|e| errors.extend(e.into_iter().map(|e| e.to_string())))
            .ok()
    }
    let errors = &mut check.errors;
    if let Some(v) = section(&fig, "topics", errors) {
        config.topics = v;
    }
    config.kafka = section::<Option<_>>(&fig, "kafka", errors).flatten();
    if let Some(v) = section(&fig, "embedded", errors) {
        config.embedded = v;
    }
    if let Some(v) = section(&fig, "state", errors) {
        config.state = v;
    }
    if let Some(v) = section(&fig, "ingest", errors) {
        config.ingest = v;
    }
    if let Some(v) = section(&fig, "fingerprint", errors) {
        config.fingerprint = v;
    }
    for (name, slot) in [
        ("reconciler", &mut config.reconciler),
        ("fraud_guard", &mut config.fraud_guard),
        ("router", &mut config.router),
        ("delivery", &mut config.delivery),
    ] {
        if let Some(v) = section(&fig, name, errors) {
            *slot = v;
        }
    }
    if let Err(e) = config.validate() {
        errors.push(e.to_string());
    }
    // The secrets' sources (variables, files) are there and readable.
    if let Some(Err(e)) = config.kafka.as_ref().map(|k| k.client_properties()) {
        errors.push(e.to_string());
    }
    errors.extend(section_problems(&config).iter().map(|e| format!("{e:#}")));
    check
}

/// The `[reconciler]` section of `config`, checked strictly.
pub fn reconciler_config(config: &Config) -> anyhow::Result<ReconcilerConfig> {
    if config.reconciler.is_null() {
        return Ok(ReconcilerConfig::default());
    }
    let rc: ReconcilerConfig = serde_json::from_value(config.reconciler.clone())
        .context("invalid [reconciler] section")?;
    rc.validate()
        .map_err(|e| anyhow::anyhow!("invalid [reconciler] section: {e}"))?;
    Ok(rc)
}

/// The key of coupon-code fingerprints, shared by the reconciler and fraud-guard:
/// `[fingerprint] key`. Its former place, `reconciler.report_key`, is read with a warning; both
/// at once is an error.
pub fn fingerprint_key(config: &Config) -> anyhow::Result<String> {
    let key = &config.fingerprint.key;
    match reconciler_config(config)?.report_key {
        None => Ok(key.clone()),
        Some(_) if key != DEFAULT_FINGERPRINT_KEY => anyhow::bail!(
            "both [fingerprint] key and reconciler.report_key are set: keep [fingerprint] key only"
        ),
        Some(old) => {
            tracing::warn!("reconciler.report_key is deprecated: move it to [fingerprint] key");
            Ok(old)
        }
    }
}

/// The fraud-guard rules of `config`, checked strictly.
pub fn fraud_guard_config(config: &Config) -> anyhow::Result<FraudGuardConfig> {
    if config.fraud_guard.is_null() {
        return Ok(FraudGuardConfig::default());
    }
    let fg: FraudGuardConfig = serde_json::from_value(config.fraud_guard.clone())
        .context("invalid [fraud_guard] section")?;
    fg.validate().context("invalid [fraud_guard] section")?;
    Ok(fg)
}

/// The `[router]` section of `config`, checked strictly (without `http`, which is the former
/// place of `[delivery]`).
pub fn router_config(config: &Config) -> anyhow::Result<tillbridge_ingest::route::RouterConfig> {
    let mut router = config.router.clone();
    if let Some(section) = router.as_object_mut() {
        section.remove("http");
    }
    if router.is_null() {
        return Ok(tillbridge_ingest::route::RouterConfig::default());
    }
    serde_json::from_value(router).context("invalid [router] section")
}

/// The `[delivery]` section of `config` (`None`: no HTTP destination), checked strictly,
/// including that its destination is one the routing rules name. `[router.http]`, its former
/// place, is read with a warning; both at once is an error.
pub fn delivery_config(config: &Config) -> anyhow::Result<Option<tillbridge_delivery::HttpConfig>> {
    let old = config.router.get("http").filter(|v| !v.is_null());
    let section = match (config.delivery.is_null(), old) {
        (true, None) => return Ok(None),
        (false, None) => config.delivery.clone(),
        (true, Some(old)) => {
            tracing::warn!("[router.http] is deprecated: move it to [delivery]");
            old.clone()
        }
        (false, Some(_)) => {
            anyhow::bail!("both [delivery] and [router.http] are set: keep [delivery] only")
        }
    };
    let http: tillbridge_delivery::HttpConfig =
        serde_json::from_value(section).context("invalid [delivery] section")?;
    http.validate().context("invalid [delivery] section")?;
    let rules = router_rules(config)?;
    if rules.topic_of(&http.destination).is_none() {
        anyhow::bail!(
            "invalid [delivery] section: destination {:?} is not a destination of [router]; known: {}",
            http.destination,
            rules.destination_names().join(", ")
        );
    }
    Ok(Some(http))
}

/// The routing rules of `config`, compiled (every mistake is a start-up error).
pub fn router_rules(config: &Config) -> anyhow::Result<tillbridge_ingest::route::Rules> {
    Ok(tillbridge_ingest::route::Rules::compile(
        &config.topics,
        &router_config(config)?,
    )?)
}

/// Every topic the configuration names, router destinations included.
pub fn all_topics(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut topics: Vec<String> = config.topics.all().into_iter().map(str::to_owned).collect();
    for t in router_rules(config)?.destination_topics() {
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    Ok(topics)
}
