//! Same facts, same answers: the records every determinism variant reads (the demo's fleet with
//! planted cases) and what must not depend on how they arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use prost::Message;

use crate::events::Sale;
use tillbridge::{Stages, Transport};
use tillbridge_core::config::{Config, Topics};
use tillbridge_core::log::{EmbeddedLog, OutRecord};
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

/// The key of report fingerprints in every variant.
pub const FINGERPRINT_KEY: &str = "determinism-key";

pub const SEED: u64 = 11;
/// 2026-11-02T08:00:00Z, the simulator's day.
pub const D0_MS: i64 = 1_793_606_400_000;
pub const HOUR_MS: i64 = 3_600_000;

fn event(id: u128, store: &str, till: &str, at_ms: i64, offline: bool, code: &str) -> String {
    Sale::new(uuid::Uuid::from_u128(0xd00d_0000 + id), store, till, 1)
        .at_ms(at_ms)
        .offline(offline)
        .session(format!("H-{id}"))
        .line("A", 1, 2000)
        .coupon(code, 500)
        .total(1500)
        .json()
}

fn json(topic: &str, key: &str, ts: i64, payload: String) -> OutRecord {
    OutRecord::new(topic, key, payload.into_bytes())
        .with_header("content-type", "application/json")
        .with_timestamp(Some(ts))
}

/// The fleet plus the planted cases, as records with their sync times.
pub fn records(config: &Config) -> Vec<OutRecord> {
    let t = &config.topics;
    let fleet = tillbridge::sim::fleet(SEED, &t.till_events, &t.coupons, &t.loyalty_balances);
    let mut v: Vec<OutRecord> = fleet
        .coupons
        .into_iter()
        .chain(fleet.balances)
        .chain(fleet.till_events)
        .filter(|r| r.payload.as_ref().is_none_or(|p| p.len() < 1_000_000))
        .collect();
    // A single-use coupon: online at S01 (synced at once), offline at S02 (an hour earlier,
    // synced an hour later) and offline at S04 (earlier still, synced four days later: past
    // the horizon).
    v.push(json(
        &t.coupons,
        "HORIZON-1",
        D0_MS - HOUR_MS,
        r#"{"code":"HORIZON-1","usageLimit":1,"offlineAllowed":true}"#.into(),
    ));
    for (id, store, at, synced, offline) in [
        (1, "S01", D0_MS + 2 * HOUR_MS, D0_MS + 2 * HOUR_MS, false),
        (2, "S02", D0_MS + HOUR_MS, D0_MS + 3 * HOUR_MS, true),
        (3, "S04", D0_MS + HOUR_MS / 2, D0_MS + 96 * HOUR_MS, true),
    ] {
        v.push(json(
            &t.till_events,
            &format!("{store}/T9"),
            synced,
            event(id, store, "T9", at, offline, "HORIZON-1"),
        ));
    }
    // A coupon the core defines only after two stores redeemed it.
    for (id, store) in [(4, "S01"), (5, "S03")] {
        v.push(json(
            &t.till_events,
            &format!("{store}/T8"),
            D0_MS + 5 * HOUR_MS + id as i64,
            event(id, store, "T8", D0_MS + 5 * HOUR_MS, false, "LATE-DEF"),
        ));
    }
    v.push(json(
        &t.coupons,
        "LATE-DEF",
        D0_MS + 6 * HOUR_MS,
        r#"{"code":"LATE-DEF","usageLimit":1}"#.into(),
    ));
    v
}

/// The records as a broker holds them: in the order they reached it (their record timestamps).
/// Every variant reads the same topics; only how and when they are consumed differs.
pub fn in_sync_order(mut recs: Vec<OutRecord>) -> Vec<OutRecord> {
    recs.sort_by_key(|r| r.timestamp_ms);
    recs
}

/// What must not depend on how the records arrived.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// Outstanding compensations over the whole topic: id to encoded action.
    pub outstanding: BTreeMap<String, Vec<u8>>,
    pub report: Vec<u8>,
    /// Alerts: id to encoded alert (every rule).
    pub alerts: BTreeMap<String, Vec<u8>>,
    /// Every alert written: id to encoded alert (checked for one content per id).
    pub all_alerts: Vec<(String, Vec<u8>)>,
    /// Every compensation emitted: id to encoded action (checked for one content per id).
    pub all: Vec<(String, Vec<u8>)>,
}

impl Outcome {
    /// From the payloads of the compensations and alerts topics and a report.json.
    pub fn new(compensations: Vec<Vec<u8>>, alert_records: Vec<Vec<u8>>, report: Vec<u8>) -> Self {
        let mut issued = BTreeMap::new();
        let mut retracted = Vec::new();
        let mut all = Vec::new();
        for bytes in compensations {
            let a = pb::CompensatingAction::decode(bytes.as_slice()).unwrap();
            all.push((a.id.clone(), bytes.clone()));
            match a.retracts {
                Some(t) => retracted.push(t),
                None => {
                    issued.insert(a.id, bytes);
                }
            }
        }
        for t in retracted {
            issued.remove(&t);
        }
        let mut alerts = BTreeMap::new();
        let mut all_alerts = Vec::new();
        for bytes in alert_records {
            let a = pb::FraudAlert::decode(bytes.as_slice()).unwrap();
            all_alerts.push((a.id.clone(), bytes.clone()));
            alerts.insert(a.id, bytes);
        }
        Outcome {
            outstanding: issued,
            report,
            alerts,
            all_alerts,
            all,
        }
    }

    /// The rules that raised alerts.
    pub fn rules(&self) -> BTreeSet<i32> {
        self.alerts
            .values()
            .map(|b| pb::FraudAlert::decode(b.as_slice()).unwrap().rule)
            .collect()
    }

    /// Checks the planted cases on a reference run.
    pub fn check_reference(&self) {
        assert!(self.outstanding.len() >= 5, "{:?}", self.outstanding.keys());
        let rules = self.rules();
        assert!(rules.len() >= 4, "alerts of several rules: {rules:?}");
        // The late sync past the horizon: S02 (earliest to sync among the first two) stands,
        // the online S01 redemption and the one synced four days later are reversed.
        let mut got: Vec<String> = self
            .outstanding
            .values()
            .map(|b| pb::CompensatingAction::decode(b.as_slice()).unwrap())
            .filter_map(|a| a.event_ids.first().cloned())
            .filter(|e| e.starts_with("00000000-0000-0000-0000-0000d00d"))
            .collect();
        let planted = |n: u128| uuid::Uuid::from_u128(0xd00d_0000 + n).to_string();
        let mut want = vec![planted(1), planted(3), planted(5)];
        want.sort();
        got.sort();
        assert_eq!(
            got, want,
            "HORIZON-1: S01 and S04 reversed; LATE-DEF: the second one"
        );
    }

    /// What differs from `reference` (`Ok` when nothing): outstanding compensations, report,
    /// alerts, and any id written with two contents here or with another content than there.
    pub fn compare(&self, reference: &Outcome) -> Result<(), String> {
        if self.outstanding.keys().ne(reference.outstanding.keys()) {
            return Err(format!(
                "outstanding compensation ids: {:?} vs the reference's {:?}",
                self.outstanding.keys().collect::<Vec<_>>(),
                reference.outstanding.keys().collect::<Vec<_>>()
            ));
        }
        if self.outstanding != reference.outstanding {
            return Err("outstanding compensations differ in content".into());
        }
        if self.alerts.keys().ne(reference.alerts.keys()) {
            return Err(format!(
                "alert ids: {:?} vs the reference's {:?}",
                self.alerts.keys().collect::<Vec<_>>(),
                reference.alerts.keys().collect::<Vec<_>>()
            ));
        }
        for (id, bytes) in &self.alerts {
            if reference.alerts[id] != *bytes {
                return Err(format!(
                    "alert {id} differs:\n{:?}\nvs the reference's\n{:?}",
                    pb::FraudAlert::decode(bytes.as_slice()).unwrap(),
                    pb::FraudAlert::decode(reference.alerts[id].as_slice()).unwrap()
                ));
            }
        }
        for (id, bytes) in &self.all_alerts {
            if self.alerts[id] != *bytes {
                return Err(format!("alert {id} with two contents"));
            }
        }
        let mut contents: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (id, bytes) in reference.all.iter().chain(&self.all) {
            let first = *contents.entry(id).or_insert(bytes);
            if first != bytes.as_slice() {
                return Err(format!("compensation {id} with two contents"));
            }
        }
        if self.report != reference.report {
            return Err("report.json differs".into());
        }
        Ok(())
    }
}

pub fn config(dir: &Path, batch_size: usize) -> Config {
    let mut config = Config::default();
    config.embedded.path = dir.join("log");
    config.state.dir = dir.join("state");
    config.fingerprint.key = FINGERPRINT_KEY.into();
    config.ingest.batch_size = batch_size;
    config
}

/// `tillbridge run --until-idle` as a process over `config`'s embedded log and state, in batches
/// of `config.ingest.batch_size`, with `env` added; its output discarded.
pub fn spawn_run(config: &Config, env: &[(&str, &str)]) -> std::process::Child {
    crate::process::with_config(config)
        .args(["run", "--until-idle"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `tillbridge run --until-idle` to the end over `config` (after whatever stopped an earlier
/// run), then panics naming `after` unless the outcome equals `reference`.
pub fn finish_and_compare(config: &Config, dir: &Path, reference: &Outcome, after: &str) {
    let status = spawn_run(config, &[]).wait().unwrap();
    assert!(status.success(), "the run {after} ended with {status}");
    let transport = Transport::from_config(config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    let got = outcome(config, log, dir);
    if let Err(e) = got.compare(reference) {
        panic!("{after}: {e}");
    }
}

pub async fn run_all(config: &Config, transport: &Transport) {
    tillbridge::run(
        config,
        transport,
        Stages::ALL,
        true,
        CancellationToken::new(),
    )
    .await
    .unwrap();
}

pub fn wipe(config: &Config) {
    for stage in ["ingest", "reconciler", "fraud-guard"] {
        let dir = config.state.dir.join(stage);
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

pub fn outcome(config: &Config, log: &EmbeddedLog, dir: &Path) -> Outcome {
    let payloads = |topic: &str| -> Vec<Vec<u8>> {
        log.read_all(topic)
            .unwrap()
            .into_iter()
            .filter_map(|r| r.payload)
            .collect()
    };
    let out = dir.join("report");
    tillbridge::write_report(config, &out).unwrap();
    Outcome::new(
        payloads(&config.topics.compensations),
        payloads(&config.topics.alerts),
        std::fs::read(out.join("report.json")).unwrap(),
    )
}

/// The outcome on Kafka: the compensations and alerts on `config`'s topics, with `report` (a
/// report written from the topics, or while the stages run, the reference's).
pub fn kafka_outcome(broker: &str, config: &Config, report: Vec<u8>) -> Outcome {
    let payloads = |topic: &str| -> Vec<Vec<u8>> {
        crate::kafka::read_all(broker, topic)
            .into_iter()
            .map(|g| g.payload)
            .collect()
    };
    Outcome::new(
        payloads(&config.topics.compensations),
        payloads(&config.topics.alerts),
        report,
    )
}

/// The deployment's report.json, as an analyst makes it: `tillbridge report` from the topics,
/// in a process of its own, into `out`.
pub fn report_from_topics(config: &Config, out: &Path) -> Vec<u8> {
    let (ok, stdout, stderr) = crate::process::output(
        crate::process::with_config(config)
            .args(["report", "--out"])
            .arg(out),
    );
    assert!(ok, "{stdout}{stderr}");
    std::fs::read(out.join("report.json")).unwrap()
}

/// A single-instance reference over `records` on `topics`: every record appended at once to an
/// embedded log, then processed by every stage. Its outcome, and the ids of the events it
/// accepted (on `promo.sessions`).
pub async fn reference(topics: &Topics, records: Vec<OutRecord>) -> (Outcome, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), Config::default().ingest.batch_size);
    config.topics = topics.clone();
    let transport = Transport::from_config(&config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    log.append(records).await.unwrap();
    run_all(&config, &transport).await;
    let accepted = log
        .read_all(&config.topics.sessions)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.payload)
        .map(|p| pb::TillEvent::decode(p.as_slice()).unwrap().event_id)
        .collect();
    (outcome(&config, log, dir.path()), accepted)
}

/// A backlog: everything appended at once, then processed with `batch_size`; optionally every stage's state wiped and rebuilt at the end.
pub async fn backlog(batch_size: usize, wipe_at_end: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), batch_size);
    let transport = Transport::from_config(&config).unwrap();
    let Transport::Embedded(log) = &transport else {
        unreachable!()
    };
    log.append(in_sync_order(records(&config))).await.unwrap();
    run_all(&config, &transport).await;
    if wipe_at_end {
        wipe(&config);
        run_all(&config, &transport).await;
    }
    outcome(&config, log, dir.path())
}
