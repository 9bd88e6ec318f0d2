//! The files of `deploy/` (the container image, the compose file, the Kubernetes manifests, the
//! systemd unit) cannot run here, so this test reads every one of them and holds it to the code:
//!
//! - every file of `deploy/` is one this test knows how to read, and it parses (every YAML
//!   document, every TOML file; the kustomization lists every manifest);
//! - every configuration (the ConfigMap's, the TOML files, the one compose and the unit use)
//!   loads strictly, and with the environment each deployment sets, `tillbridge config check`
//!   passes with no warning; every `TILLBRIDGE_*` variable set names a real config key;
//! - every command line (Dockerfile CMD, compose commands, container args, ExecStart) uses
//!   subcommands and flags the binary's `--help` lists;
//! - `run` serves on one port everywhere: `--metrics-addr`, EXPOSE, the container port, the
//!   probes (`/healthz` liveness, `/readyz` readiness), the Service, compose's ports and health
//!   check;
//! - every topic named anywhere in `deploy/` is one the configuration has;
//! - the image is multi-stage and runs as a non-root user; the binary name matches the crate's;
//! - stopping waits longer than [`tillbridge::signals::DRAIN_TIMEOUT`] (systemd, Kubernetes,
//!   compose), with SIGTERM; state lives on the per-instance volume / the writable directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kit::process::{bin, workspace_file};
use serde::Deserialize;
use serde_json::Value;
use tillbridge::signals::DRAIN_TIMEOUT;
use tillbridge_core::config::{Config, KafkaConfig, SECTIONS};

/// The port `run --metrics-addr` serves `/metrics`, `/healthz` and `/readyz` on in every
/// deployment (docs/OPERATIONS.md).
const METRICS_PORT: u16 = 9464;

/// `TILLBRIDGE_*` variables of the process itself, which name no config key.
const PROCESS_VARS: &[&str] = &[
    "TILLBRIDGE_CONFIG",
    "TILLBRIDGE_LOG",
    "TILLBRIDGE_LOG_FORMAT",
];

fn deploy_dir() -> PathBuf {
    workspace_file("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `deploy/`, relative to it, sorted.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read deploy dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).expect("under deploy/");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &deploy_dir(), &mut out);
    out.sort();
    out
}

/// Every document of a YAML file, merge keys (`<<: *anchor`) applied, as JSON.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut value = serde_yaml_ng::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{rel}: not valid YAML: {e}"));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
        if value.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(&value).unwrap_or_else(|e| panic!("{rel}: {e}")));
    }
    docs
}

/// The Kubernetes objects of `deploy/kubernetes/`, by `Kind/name`.
fn manifests() -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for rel in deploy_files() {
        if !rel.starts_with("kubernetes/") || rel.ends_with("kustomization.yaml") {
            continue;
        }
        for doc in yaml_docs(&rel) {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
            assert!(
                objects.insert(format!("{kind}/{name}"), doc).is_none(),
                "{kind}/{name} twice"
            );
        }
    }
    objects
}

fn object<'a>(objects: &'a BTreeMap<String, Value>, key: &str) -> &'a Value {
    objects
        .get(key)
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {key}"))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(str_of).collect())
        .unwrap_or_default()
}

/// Reads `30`, `30s`, `45s`, `1min`, `1m 30s` (systemd, compose).
fn duration(text: &str) -> Duration {
    let mut total = 0u64;
    for part in text.split_whitespace() {
        let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        let n: u64 = digits
            .parse()
            .unwrap_or_else(|_| panic!("a duration: {text}"));
        total += n * match &part[digits.len()..] {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            unit => panic!("unit {unit:?} of {text}"),
        };
    }
    Duration::from_secs(total)
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile.

#[derive(Debug)]
struct Instruction {
    op: String,
    args: String,
}

/// The Dockerfile's instructions (continuation lines joined, comments dropped), by stage.
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read("Dockerfile");
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    let mut line = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && line.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            line.push_str(head);
            line.push(' ');
            continue;
        }
        line.push_str(trimmed);
        let full = std::mem::take(&mut line);
        let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let ins = Instruction {
            op: op.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if ins.op == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("an instruction before the first FROM")
            .push(ins);
    }
    stages
}

/// The binary's name, from crates/tillbridge/Cargo.toml.
fn binary_name() -> String {
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(workspace_file("crates/tillbridge/Cargo.toml"))
            .expect("read crate manifest"),
    )
    .expect("crate manifest");
    manifest["bin"][0]["name"]
        .as_str()
        .expect("[[bin]] name")
        .to_owned()
}

#[test]
fn the_image_is_multi_stage_and_runs_the_binary_as_a_non_root_user() {
    let name = binary_name();
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "the Dockerfile must be multi-stage");
    let build_stage = stages[0][0]
        .args
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0].eq_ignore_ascii_case("AS"))
        .map(|w| w[1].to_owned())
        .expect("the first stage is named (FROM ... AS build)");
    let builds = stages[0]
        .iter()
        .any(|i| i.op == "RUN" && i.args.contains("cargo build") && i.args.contains("--locked"));
    assert!(builds, "the first stage runs cargo build --locked");
    let runtime = stages.last().expect("a stage");
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.op == "USER")
        .expect("the runtime stage sets USER");
    let user = user.args.split(':').next().unwrap_or_default();
    assert!(
        !["", "root", "0"].contains(&user),
        "the runtime stage runs as {user:?}"
    );
    let copy = runtime
        .iter()
        .find(|i| i.op == "COPY" && i.args.starts_with(&format!("--from={build_stage} ")))
        .expect("the runtime stage copies from the build stage");
    let copied: Vec<&str> = copy.args.split_whitespace().skip(1).collect();
    assert!(
        copied.iter().all(|p| p.ends_with(&format!("/{name}"))),
        "the binary copied is {name}: {copy:?}"
    );
    let build_run = stages[0]
        .iter()
        .find(|i| i.op == "RUN" && i.args.contains("cargo build"))
        .expect("cargo build");
    assert!(
        build_run.args.contains(&format!("--bin {name}"))
            && build_run.args.contains(&format!("target/release/{name}")),
        "the build makes and installs the binary {name}: {build_run:?}"
    );
    let entrypoint = runtime
        .iter()
        .find(|i| i.op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.args).expect("exec form");
    assert!(
        entrypoint.len() == 1 && Path::new(&entrypoint[0]).ends_with(&name),
        "ENTRYPOINT runs {name}: {entrypoint:?}"
    );
    if let Some(stop) = runtime.iter().find(|i| i.op == "STOPSIGNAL") {
        assert_eq!(stop.args, "SIGTERM");
    }
    let exposed: Vec<&str> = runtime
        .iter()
        .filter(|i| i.op == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert_eq!(exposed, [METRICS_PORT.to_string()], "EXPOSE");
}

// ---------------------------------------------------------------------------------------------
// Configurations and environments.

/// A deployment's configuration: the TOML file `run` gets and the environment it sets.
#[derive(Debug)]
struct Deployment {
    what: String,
    toml: Option<String>,
    env: BTreeMap<String, String>,
}

/// Resolves a container's `env` (values, `$(VAR)` references, Secret keys, pod fields).
fn container_env(container: &Value, objects: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = var.get("value") {
            let mut v = str_of(v);
            for (k, known) in &env {
                v = v.replace(&format!("$({k})"), known);
            }
            assert!(!v.contains("$("), "{name}: an unresolved reference: {v}");
            v
        } else if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
            let secret_name = secret["name"].as_str().expect("secret name");
            let key = secret["key"].as_str().expect("secret key");
            let secret = object(objects, &format!("Secret/{secret_name}"));
            str_of(
                secret["stringData"]
                    .get(key)
                    .unwrap_or_else(|| panic!("Secret/{secret_name} has no key {key}")),
            )
        } else if let Some(field) = var["valueFrom"].get("fieldRef") {
            assert_eq!(field["fieldPath"], "metadata.name", "{name}");
            "tillbridge-0".to_owned()
        } else {
            panic!("{name}: an env var of a kind this test does not read: {var}")
        };
        env.insert(name, value);
    }
    env
}

/// The containers running the tillbridge image (kustomize's image name `tillbridge`) in the
/// Kubernetes objects: `(object, container)`.
fn tillbridge_containers(objects: &BTreeMap<String, Value>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (key, obj) in objects {
        let spec = &obj["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().into_iter().flatten() {
            if c["image"] == "tillbridge" {
                out.push((key.clone(), c.clone()));
            }
        }
    }
    assert!(!out.is_empty(), "no container runs the tillbridge image");
    out
}

/// The value of `flag` in `args` (`--flag value` or `--flag=value`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_owned)
        }
    })
}

/// The compose services built from deploy/Dockerfile, with their merged settings.
fn compose_tillbridge_services() -> Vec<(String, Value)> {
    let compose = yaml_docs("compose.yaml").remove(0);
    let services: Vec<(String, Value)> = compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"] == "deploy/Dockerfile")
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    assert!(services.len() >= 2, "compose: topics creation and run");
    services
}

/// `${VAR:?message}` / `${VAR:-default}` / `${VAR}` of compose: a stand-in value.
fn compose_interpolate(value: &str) -> String {
    if value.contains("${") {
        "compose-interpolated-value".to_owned()
    } else {
        value.to_owned()
    }
}

/// The host file compose mounts at `target` in `service`.
fn compose_mount(service: &Value, target: &str) -> Option<PathBuf> {
    strings(&service["volumes"]).iter().find_map(|v| {
        let mut parts = v.split(':');
        let (source, dest) = (parts.next()?, parts.next()?);
        (dest == target && source.starts_with('.')).then(|| deploy_dir().join(source))
    })
}

/// systemd's `[Service]` settings, in order (a key may repeat).
fn unit_settings() -> Vec<(String, String)> {
    let text = read("systemd/tillbridge.service");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("tillbridge.service: not a setting: {line}"));
        if section == "[Service]" {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    assert!(
        !out.is_empty(),
        "tillbridge.service has a [Service] section"
    );
    out
}

fn unit_get(settings: &[(String, String)], key: &str) -> Vec<String> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn unit_one(settings: &[(String, String)], key: &str) -> String {
    let mut all = unit_get(settings, key);
    assert_eq!(all.len(), 1, "tillbridge.service: {key} once");
    all.remove(0)
}

/// `KEY=value` lines of an environment file (systemd's EnvironmentFile).
fn env_file(rel: &str) -> BTreeMap<String, String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{rel}: {l}"));
            (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// Where a deployment's `--config` path comes from in this repository: the ConfigMap's file
/// for Kubernetes, the example for compose (mounted) and systemd (installed from it).
fn every_deployment() -> Vec<Deployment> {
    let mut out = Vec::new();
    // Kubernetes.
    let objects = manifests();
    let configmap = object(&objects, "ConfigMap/tillbridge-config");
    let k8s_toml = str_of(&configmap["data"]["tillbridge.toml"]);
    for (key, container) in tillbridge_containers(&objects) {
        let args = strings(&container["args"]);
        assert_eq!(
            flag_value(&args, "--config").as_deref(),
            Some("/etc/tillbridge/tillbridge.toml"),
            "{key}: --config"
        );
        let mounted = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| {
                m["mountPath"] == "/etc/tillbridge/tillbridge.toml"
                    && m["subPath"] == "tillbridge.toml"
            });
        assert!(
            mounted,
            "{key}: the ConfigMap's file is mounted where --config says"
        );
        out.push(Deployment {
            what: key,
            toml: Some(k8s_toml.clone()),
            env: container_env(&container, &objects),
        });
    }
    // Compose.
    for (name, service) in compose_tillbridge_services() {
        let args = strings(&service["command"]);
        let config = flag_value(&args, "--config").expect("compose: --config");
        let file = compose_mount(&service, &config)
            .unwrap_or_else(|| panic!("compose {name}: nothing mounted at {config}"));
        let env = service["environment"]
            .as_object()
            .expect("compose environment as a map")
            .iter()
            .map(|(k, v)| (k.clone(), compose_interpolate(&str_of(v))))
            .collect();
        out.push(Deployment {
            what: format!("compose service {name}"),
            toml: Some(std::fs::read_to_string(&file).expect("mounted config")),
            env,
        });
    }
    // systemd: the unit's Environment= and its EnvironmentFile (the example beside it).
    let settings = unit_settings();
    let mut env = BTreeMap::new();
    for file in unit_get(&settings, "EnvironmentFile") {
        let base = Path::new(file.trim_start_matches('-'))
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        env.extend(env_file(&format!("systemd/{base}")));
    }
    for line in unit_get(&settings, "Environment") {
        for assignment in line.split_whitespace() {
            let (k, v) = assignment.split_once('=').expect("Environment=K=V");
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    out.push(Deployment {
        what: "systemd unit".into(),
        toml: Some(read("tillbridge.example.toml")),
        env,
    });
    // The image on its own: ENV of the runtime stage, no config file.
    let env = dockerfile_stages()
        .last()
        .expect("a stage")
        .iter()
        .filter(|i| i.op == "ENV")
        .filter_map(|i| i.args.split_once(['=', ' ']))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    out.push(Deployment {
        what: "Dockerfile".into(),
        toml: None,
        env,
    });
    out
}

/// A configuration with every section present, as JSON: the keys a variable may name.
fn all_keys() -> Value {
    let config = Config {
        kafka: Some(KafkaConfig::new("broker:9092")),
        ..Config::default()
    };
    serde_json::to_value(config).expect("config as JSON")
}

/// Whether `TILLBRIDGE_A__B[__C]` names a key of the configuration.
fn names_a_config_key(var: &str, keys: &Value) -> bool {
    let Some(rest) = var.strip_prefix("TILLBRIDGE_") else {
        return true;
    };
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if !SECTIONS.contains(&path[0].as_str()) || path.len() < 2 {
        return false;
    }
    let mut at = keys;
    for segment in &path {
        match at {
            // A section another crate owns (fraud_guard, router, ...): `config check` judges it.
            Value::Null => return true,
            Value::Object(map) => match map.get(segment) {
                Some(next) => at = next,
                None => return false,
            },
            _ => return false,
        }
    }
    true
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[test]
fn every_configuration_loads_and_every_variable_names_a_config_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = all_keys();
    // Every TOML file of deploy/ loads strictly (core's sections, then each crate's own).
    for rel in deploy_files().iter().filter(|f| f.ends_with(".toml")) {
        let path = write_temp(dir.path(), "file.toml", &read(rel));
        let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        section_checks(&config, rel);
    }
    for d in every_deployment() {
        let mut cmd = Command::new(bin());
        if let Some(toml) = &d.toml {
            let path = write_temp(dir.path(), "deployment.toml", toml);
            let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", d.what));
            section_checks(&config, &d.what);
            cmd.arg("--config").arg(&path);
        }
        for var in d.env.keys().filter(|v| v.starts_with("TILLBRIDGE_")) {
            assert!(
                PROCESS_VARS.contains(&var.as_str()) || names_a_config_key(var, &keys),
                "{}: {var} names no config key",
                d.what
            );
        }
        // The binary itself, with the deployment's environment: every problem, and warnings
        // for variables it would ignore.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TILLBRIDGE_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .args(["config", "check"])
            .envs(&d.env)
            .output()
            .expect("run config check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("warning"),
            "{}: tillbridge config check:\n{stdout}{}",
            d.what,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn section_checks(config: &Config, what: &str) {
    tillbridge::fraud_guard_config(config).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    tillbridge::reconciler_config(config).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    tillbridge::router_rules(config).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    tillbridge::delivery_config(config).unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

#[test]
fn state_lives_on_the_instance_volume_and_secrets_come_from_the_secret() {
    let objects = manifests();
    let sts = object(&objects, "StatefulSet/tillbridge");
    let toml = str_of(&object(&objects, "ConfigMap/tillbridge-config")["data"]["tillbridge.toml"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::load(Some(&write_temp(dir.path(), "c.toml", &toml))).expect("config");
    let claims: Vec<String> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates")
        .iter()
        .map(|c| str_of(&c["metadata"]["name"]))
        .collect();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let on_claim: Vec<String> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .filter(|m| claims.contains(&str_of(&m["name"])))
        .map(|m| str_of(&m["mountPath"]))
        .collect();
    for (key, path) in [
        ("state.dir", &config.state.dir),
        ("embedded.path", &config.embedded.path),
    ] {
        assert!(
            on_claim.iter().any(|m| path.starts_with(m)),
            "{key} {} is on no volume of volumeClaimTemplates ({on_claim:?})",
            path.display()
        );
    }
    // Static membership: one id per pod.
    let env = container_env(container, &objects);
    assert_eq!(
        env.get("TILLBRIDGE_KAFKA__INSTANCE_ID").map(String::as_str),
        Some("tillbridge-0"),
        "kafka.instance_id is the pod's name"
    );
    // The fingerprint key and every [kafka.secrets] variable come from the Secret.
    let mut from_secret = vec!["TILLBRIDGE_FINGERPRINT__KEY".to_owned()];
    let kafka = config.kafka.as_ref().expect("[kafka] in the ConfigMap");
    from_secret.extend(kafka.secrets.values().filter_map(|s| s.env.clone()));
    for var in from_secret {
        let from = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == var.as_str())
            .unwrap_or_else(|| panic!("the StatefulSet does not set {var}"));
        assert!(
            from["valueFrom"].get("secretKeyRef").is_some(),
            "{var} comes from a Secret"
        );
    }
    // The Service, the PDB and the pods agree.
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&sts["spec"]["selector"]["matchLabels"]));
    let pdb = object(&objects, "PodDisruptionBudget/tillbridge");
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"]),
        "the PDB selects the pods"
    );
    let service_name = str_of(&sts["spec"]["serviceName"]);
    let service = object(&objects, &format!("Service/{service_name}"));
    assert!(
        selects(&service["spec"]["selector"]),
        "the Service selects the pods"
    );
    // The kustomization lists every manifest.
    let kustomization = yaml_docs("kubernetes/kustomization.yaml").remove(0);
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = deploy_files()
        .into_iter()
        .filter_map(|f| f.strip_prefix("kubernetes/").map(str::to_owned))
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources");
}

// ---------------------------------------------------------------------------------------------
// Commands, flags and ports.

/// `tillbridge <path> --help`, when the binary has that command.
fn help(path: &[&str]) -> Option<String> {
    let out = Command::new(bin())
        .args(path)
        .arg("--help")
        .output()
        .expect("run --help");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The subcommands a help text lists.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Checks that the binary has the subcommand `args` run and every flag they give, and returns
/// the subcommand path (`["topics", "create"]`).
fn check_command(what: &str, args: &[String]) -> Vec<String> {
    let top = help(&[]).expect("tillbridge --help");
    let mut path: Vec<String> = Vec::new();
    let mut commands = subcommands(&top);
    for a in args {
        if !a.starts_with('-') && commands.contains(a) {
            path.push(a.clone());
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            commands = help(&p).map(|h| subcommands(&h)).unwrap_or_default();
        }
    }
    assert!(
        !path.is_empty(),
        "{what}: no tillbridge subcommand in {args:?}"
    );
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    // `topics create` lands as the new name of `create-topics`, which stays as an alias.
    let text = match (help(&p), p.as_slice()) {
        (Some(h), _) => h,
        (None, ["topics", "create"]) => help(&["create-topics"]).expect("create-topics"),
        (None, _) => panic!("{what}: the binary has no command {p:?}"),
    };
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap_or_default();
        assert!(
            text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
            "{what}: `tillbridge {}` has no flag {flag}",
            p.join(" ")
        );
    }
    path
}

/// The port of `--metrics-addr` in a `run` command line.
fn metrics_port(what: &str, args: &[String]) -> u16 {
    let addr = flag_value(args, "--metrics-addr")
        .unwrap_or_else(|| panic!("{what}: run without --metrics-addr (no probes, no metrics)"));
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{what}: --metrics-addr {addr}: {e}"))
        .port()
}

/// Every tillbridge command line in deploy/: `(where, arguments after the binary)`.
fn every_command_line() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let runtime = dockerfile_stages().pop().expect("a stage");
    let cmd = runtime.iter().find(|i| i.op == "CMD").expect("CMD");
    out.push((
        "Dockerfile CMD".to_owned(),
        serde_json::from_str(&cmd.args).expect("CMD in exec form"),
    ));
    for (name, service) in compose_tillbridge_services() {
        assert!(
            service.get("entrypoint").is_none(),
            "compose {name}: the image's entrypoint"
        );
        out.push((format!("compose {name}"), strings(&service["command"])));
    }
    for (key, container) in tillbridge_containers(&manifests()) {
        assert!(
            container.get("command").is_none(),
            "{key}: the image's entrypoint"
        );
        out.push((key, strings(&container["args"])));
    }
    let name = binary_name();
    let settings = unit_settings();
    for key in ["ExecStartPre", "ExecStart"] {
        for line in unit_get(&settings, key) {
            let mut words = line.split_whitespace().map(str::to_owned);
            let program = words.next().expect("a program");
            assert!(
                program.starts_with('/') && Path::new(&program).ends_with(&name),
                "systemd {key} runs {program}"
            );
            out.push((format!("systemd {key}"), words.collect()));
        }
    }
    out
}

#[test]
fn commands_flags_ports_and_probes_agree_with_the_binary() {
    let mut run_ports = Vec::new();
    let mut commands = BTreeSet::new();
    for (what, args) in every_command_line() {
        let path = check_command(&what, &args);
        if path == ["run"] {
            run_ports.push((what.clone(), metrics_port(&what, &args)));
        }
        commands.insert(path.join(" "));
    }
    for needed in ["run", "topics create"] {
        assert!(
            commands.contains(needed),
            "no deployment runs `{needed}`: {commands:?}"
        );
    }
    for (what, port) in &run_ports {
        assert_eq!(*port, METRICS_PORT, "{what}: --metrics-addr");
    }
    // Kubernetes: container port, probes, Service, scrape annotation.
    let objects = manifests();
    let sts = object(&objects, "StatefulSet/tillbridge");
    let pod = &sts["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let ports: BTreeMap<String, u16> = container["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .map(|p| {
            let port = p["containerPort"].as_u64().expect("containerPort") as u16;
            (str_of(&p["name"]), port)
        })
        .collect();
    assert_eq!(ports.values().copied().collect::<Vec<_>>(), [METRICS_PORT]);
    let resolve = |port: &Value| match port {
        Value::Number(n) => n.as_u64().expect("port") as u16,
        Value::String(name) => *ports
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("a port: {other}"),
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve(&get["port"]), METRICS_PORT, "{probe} port");
    }
    if let Some(startup) = container.get("startupProbe") {
        assert_eq!(startup["httpGet"]["path"], "/healthz", "startupProbe");
        assert_eq!(resolve(&startup["httpGet"]["port"]), METRICS_PORT);
    }
    let service = object(
        &objects,
        &format!("Service/{}", str_of(&sts["spec"]["serviceName"])),
    );
    for p in service["spec"]["ports"].as_array().expect("service ports") {
        assert_eq!(
            resolve(&p["targetPort"]),
            METRICS_PORT,
            "Service targetPort"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    if let Some(port) = annotations.get("prometheus.io/port") {
        assert_eq!(str_of(port), METRICS_PORT.to_string(), "scrape annotation");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }
    // Compose: the published port and the health check of the service that runs.
    for (name, service) in compose_tillbridge_services() {
        if strings(&service["command"]).iter().any(|a| a == "run") {
            let published: Vec<String> = strings(&service["ports"]);
            assert!(
                published
                    .iter()
                    .any(|p| p.rsplit(':').next() == Some(&METRICS_PORT.to_string())),
                "compose {name}: ports {published:?}"
            );
            let check = strings(&service["healthcheck"]["test"]).join(" ");
            assert!(
                check.contains("/readyz") && check.contains(&METRICS_PORT.to_string()),
                "compose {name}: the health check asks /readyz on {METRICS_PORT}: {check}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Topics.

#[test]
fn every_topic_named_in_deploy_is_configured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut known: BTreeSet<String> = Config::default()
        .topics
        .all()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut configs: Vec<String> = deploy_files()
        .iter()
        .filter(|f| f.ends_with(".toml"))
        .map(|f| read(f))
        .collect();
    configs.push(str_of(
        &object(&manifests(), "ConfigMap/tillbridge-config")["data"]["tillbridge.toml"],
    ));
    for toml in configs {
        let config = Config::load(Some(&write_temp(dir.path(), "t.toml", &toml))).expect("config");
        known.extend(tillbridge::all_topics(&config).expect("topics"));
        let prefix = config
            .kafka
            .as_ref()
            .map_or("tillbridge".to_owned(), |k| k.group_prefix.clone());
        known.insert(tillbridge_core::log::changelog_topic(&format!(
            "{prefix}.ingest"
        )));
    }
    let mut named = 0;
    for rel in deploy_files() {
        // The TOML files' comments show optional settings (`# web = "promo.sessions.web"`).
        let text: String = if rel.ends_with(".toml") {
            read(&rel)
                .lines()
                .map(|l| l.split('#').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            read(&rel)
        };
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)));
        for word in words {
            let word = word.trim_end_matches('.');
            let topicish = ["till.", "promo.", "tillbridge."]
                .iter()
                .any(|p| word.starts_with(p));
            let file = [".toml", ".service", ".env", ".yaml", ".yml", ".md"]
                .iter()
                .any(|s| word.ends_with(s));
            if topicish && !file {
                named += 1;
                assert!(
                    known.contains(word),
                    "deploy/{rel} names topic {word:?}, which no configuration has: {known:?}"
                );
            }
        }
    }
    assert!(
        named > 0,
        "no topic named in deploy/: is this test still reading it?"
    );
}

// ---------------------------------------------------------------------------------------------
// Stopping, and every file accounted for.

#[test]
fn stopping_outlasts_the_drain_and_the_unit_is_hardened() {
    let settings = unit_settings();
    assert_eq!(unit_one(&settings, "KillSignal"), "SIGTERM");
    let stop = duration(&unit_one(&settings, "TimeoutStopSec"));
    assert!(
        stop > DRAIN_TIMEOUT,
        "TimeoutStopSec {stop:?} <= drain {DRAIN_TIMEOUT:?}"
    );
    assert!(["simple", "exec"].contains(&unit_one(&settings, "Type").as_str()));
    assert_eq!(unit_one(&settings, "Restart"), "on-failure");
    let user = unit_one(&settings, "User");
    assert!(!["root", "0"].contains(&user.as_str()), "User={user}");
    assert_eq!(unit_one(&settings, "NoNewPrivileges"), "yes");
    assert_eq!(unit_one(&settings, "ProtectSystem"), "strict");
    // Under ProtectSystem=strict, only these are writable: state must be under them.
    let mut writable: Vec<String> = unit_get(&settings, "ReadWritePaths")
        .iter()
        .flat_map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    writable.extend(unit_get(&settings, "StateDirectory").iter().flat_map(|l| {
        l.split_whitespace()
            .map(|d| format!("/var/lib/{d}"))
            .collect::<Vec<_>>()
    }));
    let env: BTreeMap<String, String> = unit_get(&settings, "Environment")
        .iter()
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|a| a.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    for var in ["TILLBRIDGE_STATE__DIR", "TILLBRIDGE_EMBEDDED__PATH"] {
        let dir = env
            .get(var)
            .unwrap_or_else(|| panic!("the unit sets {var} (absolute, under a writable path)"));
        assert!(
            writable.iter().any(|w| Path::new(dir).starts_with(w)),
            "{var}={dir} is not under a writable path {writable:?}"
        );
    }
    // Kubernetes.
    let objects = manifests();
    let sts = object(&objects, "StatefulSet/tillbridge");
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > DRAIN_TIMEOUT,
        "terminationGracePeriodSeconds {grace} <= drain {DRAIN_TIMEOUT:?}"
    );
    let security = &sts["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    // Compose: Docker's default 10 s would cut the drain short.
    for (name, service) in compose_tillbridge_services() {
        if strings(&service["command"]).iter().any(|a| a == "run") {
            let grace = duration(&str_of(&service["stop_grace_period"]));
            assert!(
                grace > DRAIN_TIMEOUT,
                "compose {name}: stop_grace_period {grace:?}"
            );
            if let Some(signal) = service.get("stop_signal") {
                assert_eq!(signal, "SIGTERM");
            }
        }
    }
}

#[test]
fn every_file_in_deploy_is_read_by_this_test() {
    let known = |f: &str| {
        f == "Dockerfile"
            || f == "Dockerfile.dockerignore"
            || f == "compose.yaml"
            || f == "systemd/tillbridge.service"
            || f == "systemd/tillbridge.env"
            || (f.starts_with("kubernetes/") && f.ends_with(".yaml"))
            || (!f.contains('/') && f.ends_with(".toml"))
    };
    for f in deploy_files() {
        assert!(
            known(&f),
            "deploy/{f}: a file this test does not check; teach it"
        );
        if f.ends_with(".yaml") {
            assert!(!yaml_docs(&f).is_empty(), "deploy/{f}: no document");
        }
    }
    // The environment file sets nothing the unit does not expect.
    for var in env_file("systemd/tillbridge.env").keys() {
        if var.starts_with("TILLBRIDGE_") {
            assert!(
                names_a_config_key(var, &all_keys()),
                "tillbridge.env: {var}"
            );
        }
    }
}
