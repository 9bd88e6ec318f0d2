//! Running it for real: `topics create` and `topics check` on the broker, `config check`,
//! stray `TILLBRIDGE_*` variables, the probes of `/healthz` and `/readyz` following the stages
//! and the broker, `--version` and `tillbridge_build_info`, and JSON logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use kit::process::{output, tillbridge, with_config, Instance, OwnBroker};
use tillbridge_core::config::{Config, KafkaConfig};
use tillbridge_core::log::KafkaLog;

/// `GET path` on `addr`: (status code, body).
fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

/// Waits until `GET path` answers `status`; returns the body.
async fn await_status(addr: &str, path: &str, status: u16, limit: Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        let (a, p) = (addr.to_owned(), path.to_owned());
        let got = tokio::task::spawn_blocking(move || get(&a, &p))
            .await
            .unwrap();
        match got {
            Ok((s, body)) if s == status => return body,
            other => assert!(
                start.elapsed() < limit,
                "GET {path} did not answer {status} within {limit:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The address `run --metrics-addr 127.0.0.1:0` bound, from its log.
async fn bound_address(instance: &mut Instance) -> String {
    let start = std::time::Instant::now();
    loop {
        assert!(instance.running());
        let log = instance.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("serving /metrics")) {
            let addr = line
                .split("bound=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .expect("bound address in the log line");
            return addr.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no metrics address logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_stages_and_the_broker() {
    if kit::kafka::broker().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A broker of the test's own: it is killed and started again.
    let broker = OwnBroker::start(&dir.path().join("broker"));
    let mut config = Config {
        kafka: Some(KafkaConfig::new(&broker.address)),
        ..Config::default()
    };
    config.fingerprint.key = "a-secret-of-ours".into();
    config.state.dir = dir.path().join("state");
    let (ok, out, err) =
        output(with_config(&config).args(["topics", "create", "--partitions", "2"]));
    assert!(ok, "topics create failed: {out}{err}");
    let mut run = Instance::new(
        &config,
        dir.path(),
        "a",
        &[
            "run",
            "--stages",
            "ingest,fraud-guard",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        "info",
    );
    run.start();
    let addr = bound_address(&mut run).await;
    assert_eq!(get(&addr, "/healthz").unwrap(), (200, "ok\n".to_owned()));
    assert_eq!(get(&addr, "/no-such-path").unwrap().0, 404);
    let ready = Duration::from_secs(90);
    await_status(&addr, "/readyz", 200, ready).await;
    let (status, metrics) = get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let info = metrics
        .lines()
        .find(|l| l.starts_with("tillbridge_build_info{"))
        .expect("tillbridge_build_info in the scrape");
    assert!(info.ends_with(" 1"), "{info}");
    for label in ["version=\"", "git=\"", "librdkafka=\"", "features=\""] {
        assert!(info.contains(label), "{label} missing from {info}");
    }

    // The broker goes away: not ready (the process lives on); it comes back: ready again.
    broker.kill();
    let body = await_status(&addr, "/readyz", 503, ready).await;
    assert!(body.contains("does not answer"), "{body}");
    assert_eq!(get(&addr, "/healthz").unwrap().0, 200);
    broker.restart();
    await_status(&addr, "/readyz", 200, ready).await;
    run.stop();
}

/// `config` with every topic and the group prefix renamed by a tag of its own.
fn renamed(config: &Config) -> Config {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut c = config.clone();
    let t = &mut c.topics;
    for name in [
        &mut t.till_events,
        &mut t.coupons,
        &mut t.loyalty_balances,
        &mut t.stores,
        &mut t.sessions,
        &mut t.redemptions,
        &mut t.loyalty,
        &mut t.compensations,
        &mut t.alerts,
        &mut t.dlq,
    ] {
        *name = format!("{name}-{tag}");
    }
    // The router's quarantine destination too, so no other test's topic is checked here.
    c.router = serde_json::json!({
        "destinations": { "quarantine": format!("tillbridge.quarantine-{tag}") },
    });
    c.kafka.as_mut().unwrap().group_prefix = format!("test-{tag}");
    c.state.dir = c.state.dir.with_file_name(tag);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_makes_compacted_tables_and_check_reports_drift() {
    let Some(broker) = kit::kafka::broker() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaLog::new(KafkaConfig::new(&broker));

    // A fresh deployment: `topics create` makes every topic as it should be.
    let fresh = renamed(&kit::kafka::config(&broker, &dir.path().join("x")).await);
    let (ok, out, err) =
        output(with_config(&fresh).args(["topics", "create", "--partitions", "3"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("(12 created)"), "{out}");
    let (ok, out, err) = output(with_config(&fresh).args(["topics", "check"]));
    assert!(
        ok,
        "a cluster just made by `topics create` drifts: {out}{err}"
    );
    assert!(out.contains("topics match the configuration"), "{out}");
    let changelog = format!(
        "{}.ingest-changelog",
        fresh.kafka.as_ref().unwrap().group_prefix
    );
    let names = [
        fresh.topics.till_events.as_str(),
        fresh.topics.coupons.as_str(),
        fresh.topics.stores.as_str(),
        changelog.as_str(),
    ];
    let states = kafka.describe_topics(&names).await.unwrap();
    let states: Vec<_> = states.into_iter().map(Option::unwrap).collect();
    assert!(states.iter().all(|s| s.partitions == 3));
    assert_eq!(states[0].configs["cleanup.policy"], "delete");
    // The 7-day dedup window (longer than the 3-day horizon) plus the 7-day margin.
    assert_eq!(
        states[0].configs["retention.ms"],
        (14 * 24 * 3600 * 1000).to_string()
    );
    for s in &states[1..] {
        assert_eq!(s.configs["cleanup.policy"], "compact");
    }

    // A deployment whose topics were made by hand, all deleted by age, with no changelog and
    // no quarantine topic: every difference is reported, and the exit status says so.
    let by_hand = renamed(&kit::kafka::config(&broker, &dir.path().join("y")).await);
    kafka.create_topics(&by_hand.topics.all(), 2).await.unwrap();
    let (ok, out, _) = output(with_config(&by_hand).args(["topics", "check"]));
    assert!(!ok, "drift must fail the check: {out}");
    let quarantine = by_hand.router["destinations"]["quarantine"]
        .as_str()
        .unwrap();
    assert!(out.contains(&format!("{quarantine}: missing")), "{out}");
    for t in [
        &by_hand.topics.coupons,
        &by_hand.topics.loyalty_balances,
        &by_hand.topics.stores,
    ] {
        assert!(
            out.contains(&format!("{t}: cleanup.policy is delete, should be compact")),
            "{t} not reported:\n{out}"
        );
    }
    let changelog = format!(
        "{}.ingest-changelog",
        by_hand.kafka.as_ref().unwrap().group_prefix
    );
    assert!(out.contains(&format!("{changelog}: missing")), "{out}");
    assert_eq!(out.lines().count(), 5, "{out}");
    // `create` (under its former name too) leaves existing topics alone and adds the missing one.
    let (ok, out, err) = output(with_config(&by_hand).args(["create-topics"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("created {changelog}")), "{out}");
    assert!(out.contains("(2 created)"), "{out}");
    let (ok, out, _) = output(with_config(&by_hand).args(["topics", "check"]));
    assert!(!ok);
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn config_check_reports_every_problem_at_once_and_stray_variables_only_warn() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[ingest]\nbatch_size = 10\nbogus = 1\n\n[nonsense]\nx = 1\n\n\
         [fraud_guard.offline_exposure]\ncap_minor = \"lots\"\n\n[embedded]\npartitions = 0\n",
    )
    .unwrap();
    let (ok, out, _) = output(
        tillbridge()
            .arg("--config")
            .arg(&file)
            .args(["config", "check"])
            .env("TILLBRIDGE_PORT", "tcp://10.0.0.1:9464"),
    );
    assert!(!ok, "{out}");
    for expected in [
        "warning: environment variable TILLBRIDGE_PORT names no config section: ignored",
        "error: unknown section [nonsense]",
        "bogus",
        "[fraud_guard]",
        "embedded.partitions must be at least 1",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }

    // A secret whose variable is not set is named (never a value).
    std::fs::write(
        &file,
        "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n\n[kafka.secrets]\n\
         \"sasl.password\" = { env = \"NO_SUCH_VARIABLE_OF_OURS\" }\n",
    )
    .unwrap();
    let (ok, out, _) = output(
        tillbridge()
            .arg("--config")
            .arg(&file)
            .args(["config", "check"]),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("NO_SUCH_VARIABLE_OF_OURS is not set"), "{out}");
    assert!(out.contains("fingerprint.key is the default"), "{out}");

    // A good file: OK, and a stray variable does not stop any command.
    std::fs::write(&file, "[ingest]\nbatch_size = 10\n").unwrap();
    let check = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = tillbridge();
        cmd.arg("--config").arg(&file).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::null());
        output(&mut cmd)
    };
    let stray = [("TILLBRIDGE_SERVICE_PORT", "9464")];
    let (ok, out, _) = check(&stray, &["config", "check"]);
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("TILLBRIDGE_SERVICE_PORT"), "{out}");
    let (ok, out, err) = check(&stray, &["publish", "--check"]);
    assert!(ok, "a stray variable stopped a command: {out}{err}");
    assert!(err.contains("TILLBRIDGE_SERVICE_PORT"), "no warning: {err}");
    // A variable that names a real section is configuration: a wrong key there is an error.
    let (ok, out, _) = check(&[("TILLBRIDGE_INGEST__BOGUS", "1")], &["config", "check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("bogus"), "{out}");
    let (ok, _, err) = check(
        &[("TILLBRIDGE_INGEST__BOGUS", "1")],
        &["publish", "--check"],
    );
    assert!(!ok && err.contains("bogus"), "{err}");
}

#[test]
fn version_names_the_commit_and_librdkafka_with_tls_and_sasl() {
    let (ok, out, err) = output(tillbridge().arg("--version"));
    assert!(ok, "{err}");
    let git = out
        .split("(git ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no git hash in {out:?}"));
    assert!(
        git.len() == 12 && git.chars().all(|c| c.is_ascii_hexdigit()),
        "{git:?} is not a commit hash"
    );
    assert!(out.contains("librdkafka 2."), "{out}");
    for feature in ["ssl", "sasl_scram", "sasl_plain"] {
        assert!(
            out.split(['(', ')', ',']).any(|f| f.trim() == feature),
            "librdkafka lacks {feature}: {out}"
        );
    }
}

/// A configuration on an embedded log of its own in `dir`.
fn embedded(dir: &std::path::Path) -> Config {
    Config {
        state: tillbridge_core::config::StateConfig {
            dir: dir.join("state"),
        },
        embedded: tillbridge_core::config::EmbeddedConfig {
            path: dir.join("log"),
            partitions: 2,
        },
        ..Config::default()
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded(dir.path());
    let (ok, _, err) = output(
        with_config(&config)
            .args(["--log-format", "json", "run", "--until-idle"])
            .env("TILLBRIDGE_LOG", "info"),
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "hardly any log: {err}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// `tillbridge report` while an embedded `run` holds the state and the log: the report snapshot
/// that process writes; once it has stopped, its last snapshot equals the report of its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_beside_a_running_embedded_process_is_its_snapshot() {
    use kit::same_answers::{in_sync_order, records};
    let dir = tempfile::tempdir().unwrap();
    let config = kit::same_answers::config(dir.path(), 2000);
    {
        let log = tillbridge_core::log::EmbeddedLog::open(
            &config.embedded.path,
            config.embedded.partitions,
        )
        .unwrap();
        log.append(in_sync_order(records(&config))).await.unwrap();
    }
    let mut run = Instance::new(&config, dir.path(), "state", &["run"], "info");
    // Instance::new puts the state in dir/state: the same as the config above.
    assert_eq!(run.config.state.dir, config.state.dir);
    let report = |out: &str| {
        output(
            with_config(&config)
                .args(["report", "--out"])
                .arg(dir.path().join(out))
                .env_remove("RUST_BACKTRACE"),
        )
    };
    // Before the first snapshot: a typed error that says why and what to do.
    run.start();
    let start = std::time::Instant::now();
    while !run.log_text().contains("reconciler restored") {
        assert!(run.running());
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot = config.state.dir.join("report-snapshot");
    let (ok, out, err) = report("early");
    if ok {
        // Only if the first snapshot came first.
        assert!(snapshot.exists(), "{out}{err}");
    } else {
        assert!(
            err.contains("is held by a running `tillbridge run`") && !err.contains("corrupt"),
            "{err}"
        );
    }
    // The snapshot, with cases (the fleet's records make some), while the process runs.
    let cases = |path: &std::path::Path| -> usize {
        let text = std::fs::read_to_string(path.join("report.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["cases"].as_array().map_or(0, Vec::len)
    };
    let start = std::time::Instant::now();
    loop {
        assert!(run.running());
        let (ok, out, err) = report("while-running");
        if ok && cases(&dir.path().join("while-running")) > 0 {
            assert!(err.contains("report snapshot"), "{err}");
            for f in ["report.json", "report.csv", "report.html"] {
                assert!(out.contains(f), "{out}");
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no report with cases while running: {out}{err}\n{}",
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run.stop();
    // Stopped: the report of the state, which the last snapshot equals.
    let (ok, out, err) = report("stopped");
    assert!(ok, "{out}{err}");
    assert!(!err.contains("snapshot"), "{err}");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(
        read(snapshot.join("report.json")),
        read(dir.path().join("stopped").join("report.json"))
    );
    assert!(cases(&dir.path().join("stopped")) > 0);
    // Two snapshots at most are kept.
    let kept = std::fs::read_dir(&config.state.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("report-snapshot."))
        .count();
    assert!((1..=2).contains(&kept), "{kept} snapshots kept");
}
