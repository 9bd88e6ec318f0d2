//! The shipped example configuration loads, keeps the defaults it documents, and typos fail.

#![allow(clippy::unwrap_used)]

use tillbridge_core::config::Config;

fn example() -> std::path::PathBuf {
    kit::process::workspace_file("deploy/tillbridge.example.toml")
}

#[test]
fn the_example_config_loads_and_matches_the_defaults() {
    let config = Config::load(Some(&example())).unwrap();
    let fg = tillbridge::fraud_guard_config(&config).unwrap();
    assert_eq!(fg, tillbridge_fraud_guard::FraudGuardConfig::default());
    let router: tillbridge_ingest::route::RouterConfig =
        serde_json::from_value(config.router.clone()).unwrap();
    assert_eq!(router, tillbridge_ingest::route::RouterConfig::default());
    tillbridge::router_rules(&config).unwrap();
    let defaults = Config::default();
    assert_eq!(config.topics, defaults.topics);
    assert_eq!(config.ingest, defaults.ingest);
    assert_eq!(
        tillbridge::reconciler_config(&config).unwrap(),
        tillbridge_reconciler::ReconcilerConfig::default()
    );
    assert_eq!(config.fingerprint, defaults.fingerprint);
    assert_eq!(config.kafka.unwrap().bootstrap_servers, "127.0.0.1:9092");
}

#[test]
fn typos_in_any_section_are_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    for (from, to) in [
        ("max_clock_skew", "max_clock_skw"),
        (
            "[fraud_guard.clock_drift]\nenabled",
            "[fraud_guard.clock_drift]\nenabeld",
        ),
        ("weight = 20", "weight = 200"),
        ("delivery_timeout = \"30s\"", "delivery_timeout = \"soon\""),
        ("quarantine = \"quarantine\"", "quarantine = \"nowhere\""),
        (
            "review_only = [\"UNKNOWN_COUPON\"]",
            "review_only = [\"UNKNOWN\"]",
        ),
        ("settlement_horizon", "settlement_horizn"),
    ] {
        assert!(text.contains(from), "{from}");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text.replacen(from, to, 1)).unwrap();
        let loaded = Config::load(Some(&f));
        let failed = match loaded {
            Err(_) => true,
            Ok(c) => {
                tillbridge::fraud_guard_config(&c).is_err()
                    || tillbridge::router_rules(&c).is_err()
                    || tillbridge::reconciler_config(&c).is_err()
            }
        };
        assert!(failed, "{to} was accepted");
    }
}

#[test]
fn the_example_http_destination_uncommented_loads_with_its_documented_defaults() {
    let text = std::fs::read_to_string(example()).unwrap();
    let start = text.find("# [delivery]").unwrap();
    let block: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, format!("{}\n{block}\n", &text[..start])).unwrap();
    let config = Config::load(Some(&f)).unwrap();
    tillbridge::router_rules(&config).unwrap();
    let http = tillbridge::delivery_config(&config).unwrap().unwrap();
    let mut want = tillbridge_delivery::HttpConfig::new(
        "https://core.example.com/v2/customer_sessions/{session_id}",
    );
    want.headers
        .insert("Authorization".into(), "ApiKey-v1 change-me".into());
    assert_eq!(http, want, "the example shows the defaults");
    // Mistakes in it are start-up errors.
    for (from, to) in [
        ("burst = 10", "burts = 10"),
        ("{session_id}", "{session}"),
        ("destination = \"sessions\"", "destination = \"nowhere\""),
        ("timeout = \"10s\"", "timeout = \"later\""),
    ] {
        std::fs::write(
            &f,
            format!("{}\n{}\n", &text[..start], block.replacen(from, to, 1)),
        )
        .unwrap();
        let failed = match Config::load(Some(&f)) {
            Err(_) => true,
            Ok(c) => tillbridge::delivery_config(&c).is_err(),
        };
        assert!(failed, "{to} was accepted");
    }
    // Its former place, [router.http], is still read; both at once is refused.
    let old = block
        .replace("[delivery]", "[router.http]")
        .replace("[delivery.headers]", "[router.http.headers]");
    std::fs::write(&f, format!("{}\n{old}\n", &text[..start])).unwrap();
    let config = Config::load(Some(&f)).unwrap();
    assert_eq!(tillbridge::delivery_config(&config).unwrap().unwrap(), want);
    tillbridge::router_rules(&config).unwrap();
    std::fs::write(&f, format!("{}\n{block}\n{old}\n", &text[..start])).unwrap();
    let config = Config::load(Some(&f)).unwrap();
    assert!(tillbridge::delivery_config(&config).is_err());
}

/// Runs `tillbridge --config <toml> <args>` and returns (success, stderr).
fn tillbridge_with(toml: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, toml).unwrap();
    let (ok, _, stderr) = kit::process::output(
        kit::process::tillbridge()
            .arg("--config")
            .arg(&f)
            .args(args)
            .env("TILLBRIDGE_STATE__DIR", dir.path().join("state"))
            .envs(env.iter().copied()),
    );
    (ok, stderr)
}

#[test]
fn every_command_checks_every_section() {
    for (toml, section) in [
        (
            "[fraud_guard.clock_drift]\nenabeld = true\n",
            "[fraud_guard]",
        ),
        ("[router]\nquarantine_topic = \"x\"\n", "[router]"),
        ("[reconciler]\nreview_onyl = []\n", "[reconciler]"),
    ] {
        for args in [
            &["report", "--out", "r"][..],
            &["run", "--stages", "ingest"][..],
        ] {
            let (ok, err) = tillbridge_with(toml, args, &[]);
            assert!(!ok, "{args:?} accepted {toml:?}");
            assert!(err.contains(section), "{args:?}: {err}");
        }
    }
}

#[test]
fn the_default_fingerprint_key_is_refused_on_a_kafka_cluster() {
    let kafka = "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n";
    let (ok, err) = tillbridge_with(kafka, &["report", "--out", "r"], &[]);
    assert!(!ok);
    assert!(err.contains("fingerprint.key"), "{err}");
    // With a key of its own the configuration passes (the report then finds no state).
    let (_, err) = tillbridge_with(
        kafka,
        &["report", "--out", "r"],
        &[("TILLBRIDGE_FINGERPRINT__KEY", "a-secret-of-ours")],
    );
    assert!(!err.contains("fingerprint.key"), "{err}");
    // The embedded log accepts the default, for a first look.
    let (_, err) = tillbridge_with("", &["report", "--out", "r"], &[]);
    assert!(!err.contains("fingerprint.key"), "{err}");
}

#[test]
fn the_former_report_key_is_read_with_a_warning_and_both_keys_are_refused() {
    let kafka = "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n";
    let old = format!("{kafka}[reconciler]\nreport_key = \"an-old-secret\"\n");
    let (_, err) = tillbridge_with(&old, &["report", "--out", "r"], &[]);
    assert!(err.contains("deprecated"), "{err}");
    assert!(!err.contains("fingerprint.key is"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, &old).unwrap();
    let config = Config::load(Some(&f)).unwrap();
    assert_eq!(
        tillbridge::fingerprint_key(&config).unwrap(),
        "an-old-secret"
    );
    let both = format!("{old}[fingerprint]\nkey = \"a-new-secret\"\n");
    let (ok, err) = tillbridge_with(&both, &["report", "--out", "r"], &[]);
    assert!(!ok && err.contains("both"), "{err}");
}
