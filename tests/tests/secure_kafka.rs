//! TLS and SASL against a broker of the test's own: Apache Kafka with a TLS listener that
//! requires a client certificate (mTLS), a TLS listener whose certificate names another host, and
//! a SASL_SSL listener with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (users created through the
//! admin API). Certificates are made here with the openssl command. tillbridge's own clients
//! (`KafkaLog`: admin, producer, table reader) and the `tillbridge` binary connect with the right
//! CA, certificate or password, and fail at once with a clear error with a wrong CA, a host name
//! the certificate does not name, or a wrong password; no secret ever shows in an error or a log.
//!
//! Needs java (the broker) and openssl: without them the test fails, it is never skipped.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tillbridge_core::config::{Config, KafkaConfig, SecretSource, Topics};
use tillbridge_core::log::{BatchLimits, KafkaLog, OutRecord, Sink, Source};

/// The librdkafka linked in has TLS and SCRAM (the `ssl-vendored` feature), so `SSL` and
/// `SASL_SSL` are not refused at start-up.
#[test]
fn librdkafka_is_built_with_tls_and_scram() {
    let features = rdkafka::config::ClientConfig::new()
        .create_native_config()
        .unwrap()
        .get("builtin.features")
        .unwrap();
    let features: Vec<&str> = features.split(',').collect();
    for f in ["ssl", "sasl_plain", "sasl_scram"] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
}

/// A mistyped property is refused naming the property, never echoing its value.
#[tokio::test]
async fn a_mistyped_property_is_named_without_its_value() {
    let secret = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let mut k = KafkaConfig::new("127.0.0.1:1");
    k.properties.insert("sasl.pasword".into(), secret.clone());
    let e = KafkaLog::new(k.clone()).sink().expect_err("refused");
    let text = format!("{e} / {e:?}");
    assert!(text.contains("sasl.pasword"), "{text}");
    assert!(!text.contains(&secret), "the value is echoed: {text}");
    let e = KafkaLog::new(k.clone())
        .create_topics(&["t"], 1)
        .await
        .expect_err("refused");
    assert!(!e.to_string().contains(&secret), "{e}");
    // Secret-looking properties, misspelt or not, are redacted in the configuration's Debug.
    k.properties.insert("sasl.password".into(), secret.clone());
    let shown = format!("{k:?}");
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.contains("sasl.password"), "{shown}");
}

/// Runs a command, panicking with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test's certificates: a CA, the broker's certificate for 127.0.0.1 and localhost, one for
/// another host name, a client certificate with its key encrypted, and a CA nobody uses.
struct Certs {
    dir: PathBuf,
    key_password: String,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        let sh = |script: &str| {
            run(Command::new("bash")
                .arg("-euo")
                .arg("pipefail")
                .arg("-c")
                .arg(script)
                .current_dir(dir));
        };
        let ca = |name: &str| {
            format!(
                "openssl req -x509 -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.pem \
                 -days 2 -subj /CN={name} -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null\n"
            )
        };
        let leaf = |name: &str, san: &str| {
            format!(
                "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr \
                 -subj /CN={name} 2>/dev/null\n\
                 printf 'subjectAltName=%s\\n' '{san}' > {name}.ext\n\
                 openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 2 -extfile {name}.ext 2>/dev/null\n\
                 cat {name}.key {name}.pem > {name}.keystore.pem\n"
            )
        };
        let key_password = format!("kp-{}", uuid::Uuid::new_v4().simple());
        sh(&[
            ca("ca"),
            ca("wrong-ca"),
            leaf("server", "DNS:localhost,IP:127.0.0.1"),
            leaf("otherhost", "DNS:wrong.example"),
            leaf("client", "DNS:tillbridge-client"),
            format!(
                "openssl pkcs8 -topk8 -in client.key -out client.enc.key -v2 aes-256-cbc \
                 -passout pass:{key_password}\nrm client.key\n"
            ),
        ]
        .concat());
        Certs {
            dir: dir.to_owned(),
            key_password,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// The test's broker: PLAINTEXT (for setting it up), `SSL` (mTLS), `OTHERHOST` (TLS with a
/// certificate for another host name) and `SASL_SSL`.
struct SecureBroker {
    own: kit::process::OwnBroker,
    ssl: String,
    otherhost: String,
    sasl: String,
    libs: PathBuf,
}

const CAROL_PLAIN: &str = "carol-plain-password";

impl SecureBroker {
    fn start(dir: &Path, certs: &Certs) -> SecureBroker {
        let (ssl, other, sasl) = (free_port(), free_port(), free_port());
        let p = |n: &str| certs.path(n);
        let extra = format!(
            "listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,\
             SSL://127.0.0.1:{ssl},OTHERHOST://127.0.0.1:{other},SASL_SSL://127.0.0.1:{sasl}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:@PORT@,SSL://127.0.0.1:{ssl},\
             OTHERHOST://127.0.0.1:{other},SASL_SSL://127.0.0.1:{sasl}\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,\
             OTHERHOST:SSL,SASL_SSL:SASL_SSL\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={}\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={}\n\
             listener.name.ssl.ssl.client.auth=required\n\
             listener.name.otherhost.ssl.keystore.type=PEM\n\
             listener.name.otherhost.ssl.keystore.location={}\n\
             sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
             listener.name.sasl_ssl.plain.sasl.jaas.config=\
             org.apache.kafka.common.security.plain.PlainLoginModule required \
             user_carol=\"{CAROL_PLAIN}\";\n\
             listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=\
             org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
             org.apache.kafka.common.security.scram.ScramLoginModule required;\n",
            p("server.keystore.pem"),
            p("ca.pem"),
            p("otherhost.keystore.pem"),
        );
        let extra_file = dir.join("extra.properties");
        std::fs::write(&extra_file, extra).unwrap();
        let broker_dir = dir.join("broker");
        let address = run(Command::new("bash")
            .arg(kit::process::workspace_file("scripts/test-broker.sh"))
            .arg("start")
            .arg(&broker_dir)
            .env("TILLBRIDGE_BROKER_EXTRA", &extra_file))
        .trim()
        .to_owned();
        let own = kit::process::OwnBroker {
            dir: broker_dir,
            address,
        };
        let version = run(Command::new("bash")
            .arg(kit::process::workspace_file("scripts/test-broker.sh"))
            .arg("version"));
        let cache = std::env::var("TILLBRIDGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tillbridge")
            });
        SecureBroker {
            own,
            ssl: format!("127.0.0.1:{ssl}"),
            otherhost: format!("127.0.0.1:{other}"),
            sasl: format!("127.0.0.1:{sasl}"),
            libs: cache.join(format!("kafka-{}", version.trim())).join("libs"),
        }
    }

    /// Creates `user`'s SCRAM credential for `mechanism` through the admin API (Kafka's
    /// ConfigCommand, AlterUserScramCredentials), over the PLAINTEXT listener.
    fn add_scram_user(&self, mechanism: &str, user: &str, password: &str) {
        run(Command::new("java")
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg("kafka.admin.ConfigCommand")
            .args(["--bootstrap-server", &self.own.address, "--alter"])
            .args([
                "--add-config",
                &format!("{mechanism}=[password={password}]"),
            ])
            .args(["--entity-type", "users", "--entity-name", user]));
    }
}

fn tls(bootstrap: &str, certs: &Certs, ca: &str) -> KafkaConfig {
    let mut k = KafkaConfig::new(bootstrap);
    k.group_prefix = format!("secure-{}", uuid::Uuid::new_v4().simple());
    for (key, value) in [
        ("security.protocol", "SSL".to_owned()),
        ("ssl.ca.location", certs.path(ca)),
        ("ssl.certificate.location", certs.path("client.pem")),
        ("ssl.key.location", certs.path("client.enc.key")),
    ] {
        k.properties.insert(key.into(), value);
    }
    k
}

fn sasl(bootstrap: &str, certs: &Certs, mechanism: &str, user: &str) -> KafkaConfig {
    let mut k = KafkaConfig::new(bootstrap);
    k.group_prefix = format!("secure-{}", uuid::Uuid::new_v4().simple());
    for (key, value) in [
        ("security.protocol", "SASL_SSL".to_owned()),
        ("ssl.ca.location", certs.path("ca.pem")),
        ("sasl.mechanism", mechanism.to_owned()),
        ("sasl.username", user.to_owned()),
    ] {
        k.properties.insert(key.into(), value);
    }
    k
}

/// Writes `secret` to a file of its own and returns the source naming it.
fn secret_file(dir: &Path, secret: &str) -> SecretSource {
    let path = dir.join(format!("secret-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    SecretSource::file(path)
}

/// Through tillbridge's own clients: creates a topic (admin), writes a record (idempotent
/// producer) and reads it back (table reader).
async fn round_trip(k: &KafkaConfig) -> Result<(), String> {
    let log = KafkaLog::new(k.clone());
    let topic = format!("secure-{}", uuid::Uuid::new_v4().simple());
    log.create_topics(&[&topic], 1)
        .await
        .map_err(|e| format!("create_topics: {e}"))?;
    let sink = log.sink().map_err(|e| format!("sink: {e}"))?;
    let payload = uuid::Uuid::new_v4().as_bytes().to_vec();
    sink.send(vec![OutRecord::new(&topic, "k", payload.clone())])
        .await
        .map_err(|e| format!("send: {e}"))?;
    let (mut source, _) = log
        .table_source(&topic)
        .map_err(|e| format!("table_source: {e}"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let batch = source
            .next_batch(BatchLimits {
                max_records: 100,
                max_bytes: 1 << 20,
                wait: Duration::from_millis(500),
            })
            .await
            .map_err(|e| format!("next_batch: {e}"))?;
        if batch
            .iter()
            .any(|r| r.payload.as_deref() == Some(&payload[..]))
        {
            return Ok(());
        }
    }
    Err(format!("the record did not come back from {topic}"))
}

/// Expects `k` to be refused: the admin call fails within seconds (not after a timeout as if the
/// broker were down) with an error containing `expected`, and none of `secrets`.
async fn refused(k: &KafkaConfig, expected: &[&str], secrets: &[&str]) -> String {
    let start = Instant::now();
    let topic = format!("secure-{}", uuid::Uuid::new_v4().simple());
    let e = KafkaLog::new(k.clone())
        .create_topics(&[&topic], 1)
        .await
        .expect_err("the connection must be refused")
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "refused only after {:?}: {e}",
        start.elapsed()
    );
    assert!(
        expected.iter().any(|x| e.contains(x)),
        "the error does not say why ({expected:?}): {e}"
    );
    for s in secrets {
        assert!(!e.contains(s), "a secret shows in the error: {e}");
    }
    eprintln!("refused as expected after {:?}: {e}", start.elapsed());
    e
}

/// A configuration of the binary on `k` with topics no other test uses.
fn binary_config(k: KafkaConfig, state: &Path) -> Config {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let t = Topics::default();
    let r = |s: &str| format!("{s}-{tag}");
    let mut config = Config {
        topics: Topics {
            till_events: r(&t.till_events),
            coupons: r(&t.coupons),
            loyalty_balances: r(&t.loyalty_balances),
            stores: r(&t.stores),
            sessions: r(&t.sessions),
            redemptions: r(&t.redemptions),
            loyalty: r(&t.loyalty),
            compensations: r(&t.compensations),
            alerts: r(&t.alerts),
            dlq: r(&t.dlq),
        },
        kafka: Some(k),
        ..Config::default()
    };
    config.state.dir = state.to_owned();
    config.fingerprint.key = format!("test-key-{tag}");
    config
}

/// A child process killed if the test fails while it runs.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_connect_with_the_right_secrets_and_fail_clearly_without() {
    for (tool, arg) in [("java", "-version"), ("openssl", "version")] {
        let found = Command::new(tool).arg(arg).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is needed by this test (the broker, the certificates); it is not skipped"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    std::fs::create_dir(&certs_dir).unwrap();
    let certs = Certs::make(&certs_dir);
    let broker = SecureBroker::start(dir.path(), &certs);
    let key_password = secret_file(dir.path(), &certs.key_password);

    // mTLS: the right CA, the client certificate, its key's password from a file.
    let mut good = tls(&broker.ssl, &certs, "ca.pem");
    good.secrets
        .insert("ssl.key.password".into(), key_password.clone());
    round_trip(&good).await.expect("mTLS with the right CA");
    assert!(
        !format!("{good:?}").contains(&certs.key_password),
        "Debug shows the key password"
    );

    // A CA that did not sign the broker's certificate.
    let mut wrong_ca = tls(&broker.ssl, &certs, "wrong-ca.pem");
    wrong_ca
        .secrets
        .insert("ssl.key.password".into(), key_password.clone());
    let e = refused(
        &wrong_ca,
        &["certificate verify failed"],
        &[&certs.key_password],
    )
    .await;
    assert!(e.contains("SSL handshake failed"), "{e}");

    // Host names are verified by default: the OTHERHOST listener's certificate, signed by the
    // right CA, names wrong.example, not 127.0.0.1.
    let mut otherhost = tls(&broker.otherhost, &certs, "ca.pem");
    otherhost
        .secrets
        .insert("ssl.key.password".into(), key_password.clone());
    refused(
        &otherhost,
        &["certificate verify failed"],
        &[&certs.key_password],
    )
    .await;
    // ... and only the name was wrong: the explicit opt-out connects.
    otherhost.properties.insert(
        "ssl.endpoint.identification.algorithm".into(),
        "none".into(),
    );
    round_trip(&otherhost)
        .await
        .expect("TLS without host name verification");

    // The key's password is wrong: the client cannot even load its key.
    let mut bad_key = good.clone();
    bad_key.secrets.insert(
        "ssl.key.password".into(),
        secret_file(dir.path(), "not-the-key-password"),
    );
    let e = KafkaLog::new(bad_key)
        .create_topics(&["never"], 1)
        .await
        .expect_err("a key that cannot be decrypted");
    assert!(!e.to_string().contains("not-the-key-password"), "{e}");

    // SASL_SSL with SCRAM users made through the admin API.
    let alice = format!("alice-{}", uuid::Uuid::new_v4().simple());
    let bob = format!("bob-{}", uuid::Uuid::new_v4().simple());
    let alice_pw = format!("a-{}", uuid::Uuid::new_v4().simple());
    let bob_pw = format!("b-{}", uuid::Uuid::new_v4().simple());
    broker.add_scram_user("SCRAM-SHA-256", &alice, &alice_pw);
    broker.add_scram_user("SCRAM-SHA-512", &bob, &bob_pw);

    let mut scram256 = sasl(&broker.sasl, &certs, "SCRAM-SHA-256", &alice);
    scram256
        .secrets
        .insert("sasl.password".into(), secret_file(dir.path(), &alice_pw));
    round_trip(&scram256).await.expect("SCRAM-SHA-256");

    let mut wrong_pw = scram256.clone();
    let wrong = format!("w-{}", uuid::Uuid::new_v4().simple());
    wrong_pw
        .secrets
        .insert("sasl.password".into(), secret_file(dir.path(), &wrong));
    let e = refused(
        &wrong_pw,
        &["Authentication failed", "SASL authentication error"],
        &[&wrong, &alice_pw],
    )
    .await;
    assert!(e.contains("SCRAM-SHA-256"), "{e}");

    let mut plain = sasl(&broker.sasl, &certs, "PLAIN", "carol");
    plain
        .secrets
        .insert("sasl.password".into(), secret_file(dir.path(), CAROL_PLAIN));
    round_trip(&plain).await.expect("PLAIN");

    // The binary, SCRAM-SHA-512, the password from an environment variable: `create-topics`
    // creates the topics, and neither its log (at debug) nor its output holds the password.
    let var = format!("TB_SECURE_TEST_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let mut scram512 = sasl(&broker.sasl, &certs, "SCRAM-SHA-512", &bob);
    scram512
        .secrets
        .insert("sasl.password".into(), SecretSource::env(&var));
    // librdkafka's own debug output, its configuration dump included, goes to the log too.
    scram512
        .properties
        .insert("debug".into(), "security,conf,broker".into());
    let config = binary_config(scram512, &dir.path().join("state"));
    let file = kit::process::config_file(&config);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&bob_pw),
        "the config file holds the password"
    );
    let (ok, out, err) = kit::process::output(
        kit::process::with_config(&config)
            .arg("create-topics")
            .env("TILLBRIDGE_LOG", "debug")
            .env(&var, &bob_pw),
    );
    assert!(ok, "create-topics over SASL_SSL failed: {out}{err}");
    assert!(
        !out.contains(&bob_pw) && !err.contains(&bob_pw),
        "the password shows in the output"
    );
    let plaintext = KafkaLog::new(KafkaConfig::new(&broker.own.address));
    assert_eq!(
        plaintext
            .partition_count(&config.topics.till_events)
            .unwrap(),
        4,
        "create-topics made the topics"
    );

    // The same with a wrong password: a clear error, no password anywhere.
    let wrong = format!("w-{}", uuid::Uuid::new_v4().simple());
    let (ok, out, err) = kit::process::output(
        kit::process::with_config(&config)
            .arg("create-topics")
            .env("TILLBRIDGE_LOG", "debug")
            .env(&var, &wrong),
    );
    assert!(
        !ok,
        "create-topics with a wrong password succeeded: {out}{err}"
    );
    assert!(
        err.contains("Authentication failed") || err.contains("SASL authentication error"),
        "no clear error: {err}"
    );
    assert!(!out.contains(&wrong) && !err.contains(&wrong), "{err}");

    // A stage (ingest, whose start-up checks its input and changelog topics) runs over
    // SASL_SSL: librdkafka's debug log says it authenticated, and never shows the password.
    let log = dir.path().join("run.log");
    let mut running = Running(kit::process::spawn_logged(
        kit::process::with_config(&config)
            .args(["run", "--stages", "ingest"])
            .env("TILLBRIDGE_LOG", "debug")
            .env(&var, &bob_pw),
        &log,
    ));
    let authenticated = format!("Authenticated as {bob} using SCRAM-SHA-512");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&authenticated) {
            break;
        }
        assert!(
            running.0.try_wait().unwrap().is_none(),
            "run exited: {}",
            kit::process::log_tail(&log)
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {authenticated:?} in the log: {}",
            kit::process::log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kit::process::terminate(&mut running.0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&bob_pw), "the password shows in run's log");

    // The variable unset: refused at start, naming the variable, not a value.
    let (ok, _, err) =
        kit::process::output(kit::process::with_config(&config).arg("create-topics"));
    assert!(!ok && err.contains(&var), "{err}");
    drop(broker);
}
