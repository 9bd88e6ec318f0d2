//! The HTTP destination against a promotion core that fails 30% of requests (half of them after
//! applying them), holds some past the client's timeout, answers 429 for a while and goes down
//! for several seconds: every session event arrives, each idempotency key is applied once, the
//! order of each session holds, the rate limit is never exceeded, refused requests are
//! dead-lettered with their status and body; the same with the process SIGKILLed in the middle;
//! and a full outbox pauses consumption until the core drains it.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use kit::flaky_core::{FlakyCore, Plan};
use prost::Message;
use tillbridge::{Stages, Transport};
use tillbridge_core::config::Config;
use tillbridge_core::log::{BatchLimits, EmbeddedLog, OutRecord};
use tillbridge_core::stage::{self, Until};
use tillbridge_delivery::HttpConfig;
use tillbridge_proto::pb;
use tokio_util::sync::CancellationToken;

const RATE: u32 = 100;
const BURST: u32 = 10;
const REJECT_STORE: &str = "S-REJECT";

/// Events of `tills` tills, `per_till` each, in till order, as an outside client sends them
/// (JSON): sales, cancellations of the till's previous sale (same session), till status
/// changes and manual overrides (keyed by till, so one long ordered lane per till). The last
/// till belongs to a store the core refuses.
fn workload(tills: usize, per_till: usize) -> (Vec<kit::events::Sent>, Vec<pb::TillEvent>) {
    let base = chrono::Utc::now().timestamp() - 3600;
    let mut sent = Vec::new();
    let mut events = Vec::new();
    for t in 0..tills {
        let store = if t == tills - 1 {
            REJECT_STORE.to_owned()
        } else {
            format!("S{}", t / 3)
        };
        let till = format!("T{}", t % 3);
        for k in 0..per_till {
            let seq = k as u64 + 1;
            let mut ev = pb::TillEvent {
                event_id: uuid::Uuid::new_v4().to_string(),
                store_id: store.clone(),
                till_id: till.clone(),
                till_seq: seq,
                occurred_at: Some(prost_types::Timestamp {
                    seconds: base + (t * per_till + k) as i64,
                    nanos: 0,
                }),
                currency: "EUR".into(),
                ..Default::default()
            };
            let sale_session = |k: usize| format!("R-{store}-{till}-{k}");
            ev.body = Some(match k % 4 {
                0 => {
                    ev.session_id = sale_session(k);
                    pb::till_event::Body::Sale(pb::Sale {
                        lines: vec![pb::SaleLine {
                            sku: "SKU-1".into(),
                            quantity: 1,
                            unit_price_minor: 1000 + k as i64,
                            discount_minor: 0,
                        }],
                        coupons: Vec::new(),
                        loyalty: None,
                        total_minor: None,
                    })
                }
                1 => {
                    ev.session_id = sale_session(k - 1);
                    pb::till_event::Body::SessionCancelled(pb::SessionCancelled {
                        reason: "customer left".into(),
                    })
                }
                2 => pb::till_event::Body::TillStatus(pb::TillStatus {
                    status: pb::till_status::Status::Online as i32,
                    last_synced_seq: seq - 1,
                }),
                _ => {
                    ev.cashier_id = Some("C1".into());
                    pb::till_event::Body::ManualOverride(pb::ManualOverride {
                        kind: pb::manual_override::Kind::Discount as i32,
                        amount_minor: 50,
                        reason: "damaged box".into(),
                        approved_by: None,
                    })
                }
            });
            sent.push(kit::events::Sent {
                key: format!("{store}/{till}"),
                payload: tillbridge_proto::to_json(&ev).into_bytes(),
                content_type: Some("application/json"),
            });
            events.push(ev);
        }
    }
    (sent, events)
}

fn key_of(ev: &pb::TillEvent) -> String {
    tillbridge_core::ids::derive(&ev.event_id, "http", 0).to_string()
}

/// The events the core must apply (all but the refused store's), by idempotency key.
fn expected(events: &[pb::TillEvent]) -> BTreeMap<String, &pb::TillEvent> {
    events
        .iter()
        .filter(|e| e.store_id != REJECT_STORE)
        .map(|e| (key_of(e), e))
        .collect()
}

fn http_config(core: &FlakyCore) -> HttpConfig {
    let mut h = HttpConfig::new(format!("http://{}/sessions/{{session_id}}", core.addr));
    h.rate_limit_per_second = RATE;
    h.burst = BURST;
    h.timeout = Duration::from_millis(500);
    h.backoff_initial = Duration::from_millis(50);
    h.backoff_max = Duration::from_secs(1);
    h
}

/// Everything the issue asks of a run against the flaky core.
fn check_core(core: &FlakyCore, events: &[pb::TillEvent]) {
    let want = expected(events);
    let applied = core.applied();
    let keys: BTreeSet<&String> = applied.iter().map(|a| &a.key).collect();
    assert_eq!(keys.len(), applied.len(), "a key was applied twice");
    assert_eq!(
        keys,
        want.keys().collect::<BTreeSet<_>>(),
        "every session event arrives, under its deterministic idempotency key, and nothing else"
    );
    for a in &applied {
        let ev = want[&a.key];
        assert_eq!(a.event_id, ev.event_id);
        let session = if ev.session_id.is_empty() {
            format!("{}/{}", ev.store_id, ev.till_id)
        } else {
            ev.session_id.clone()
        };
        assert_eq!(a.session, session, "the URL names the event's session");
    }
    // Per-session order: the applied till_seq of each session only grows.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &applied {
        if let Some(prev) = last.insert(&a.session, a.till_seq) {
            assert!(
                a.till_seq > prev,
                "session {} applied till_seq {} after {prev}",
                a.session,
                a.till_seq
            );
        }
    }
    core.check_rate(f64::from(RATE), BURST as usize)
        .unwrap_or_else(|e| panic!("rate limit exceeded: {e}"));
    let statuses = core.statuses();
    println!(
        "core saw {} requests {statuses:?}; {} applied, {} re-sends of applied keys",
        core.requests().len(),
        applied.len(),
        core.replays()
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 0,
        "429s happened"
    );
    assert!(
        statuses.get(&500).copied().unwrap_or(0) > 0,
        "500s happened"
    );
    assert!(
        core.replays() > 0,
        "requests applied before a failure were re-sent, and not applied again"
    );
    assert_eq!(
        core.faults_done(),
        (true, true),
        "throttling and outage happened"
    );
}

/// The refused store's requests are on the DLQ with their status and the core's body, masked.
fn check_dlq(broker: &str, topic: &str, events: &[pb::TillEvent]) {
    let refused: BTreeSet<String> = events
        .iter()
        .filter(|e| e.store_id == REJECT_STORE)
        .map(|e| e.event_id.clone())
        .collect();
    let dlq = kit::read_all(broker, topic);
    let mut got = BTreeSet::new();
    for g in &dlq {
        let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
        assert_eq!(dl.reason, "HTTP_REJECTED");
        assert_eq!(g.headers["tillbridge-http-status"], b"422");
        assert!(dl.detail.contains("422"), "{}", dl.detail);
        assert!(dl.detail.contains("store not found"), "{}", dl.detail);
        assert!(
            !dl.detail.contains("4111"),
            "card digits reached the DLQ: {}",
            dl.detail
        );
        got.insert(dl.event_id.unwrap());
    }
    assert_eq!(got, refused, "each refused request dead-lettered");
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_event_reaches_a_flaky_core_once_in_order_within_the_rate() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let core = FlakyCore::start(Plan::default()).await;
    let state = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, state.path()).await;
    config.router = serde_json::json!({ "http": http_config(&core) });
    let (sent, events) = workload(13, 24);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;

    let shutdown = CancellationToken::new();
    let transport = Transport::from_config(&config).unwrap();
    let stages = Stages {
        ingest: true,
        delivery: true,
        ..Default::default()
    };
    let run = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(
            async move { tillbridge::run(&config, &transport, stages, false, shutdown).await },
        )
    };
    let want = expected(&events).len();
    wait_for("every request applied", Duration::from_secs(180), || {
        core.applied_count() >= want || run.is_finished()
    })
    .await;
    let b = broker.clone();
    let dlq = config.topics.dlq.clone();
    tokio::task::spawn_blocking(move || {
        kit::read_until(&b, &dlq, Duration::from_secs(60), |g| g.len() >= 24)
    })
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    check_core(&core, &events);
    check_dlq(&broker, &config.topics.dlq, &events);
    // While the core was down its port refused connections, and those requests were retried.
    let refused = tillbridge_core::metrics::HTTP_RESPONSES
        .with_label_values(&["sessions", "connect"])
        .get();
    let retried = tillbridge_core::metrics::HTTP_RETRIES
        .with_label_values(&["sessions", "connect"])
        .get();
    println!("{refused} connections refused during the outage, {retried} retried");
    assert!(refused > 0 && retried == refused);
}

/// The child process: ingest and delivery over `config` toward `core`; its requests carry
/// `x-sender-run: {run}`; `crash_at` arms a crash point (in batches of 10, so that every point
/// is reached whatever the fetch timing).
fn spawn(
    config: &Config,
    core: &FlakyCore,
    run: usize,
    log: &std::path::Path,
    crash_at: Option<&str>,
) -> Child {
    let mut config = config.clone();
    let mut http = http_config(core);
    http.headers.insert("x-sender-run".into(), run.to_string());
    config.delivery = serde_json::to_value(&http).unwrap();
    config.fingerprint.key = "http-delivery-key".into();
    config.kafka.as_mut().unwrap().instance_id = Some("sigkill".into());
    if crash_at.is_some() {
        // Small batches, each committed (no commit interval): every stage passes its crash
        // points dozens of times, with work left after each.
        config.ingest.batch_size = 10;
        config.ingest.commit_interval = Duration::ZERO;
    }
    kit::process::spawn_logged(
        kit::process::with_config(&config)
            .args(["run", "--stages", "ingest,delivery"])
            .env("TILLBRIDGE_LOG", "info")
            .envs(crash_at.map(|c| (tillbridge_core::crash::VAR, c))),
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_sigkills_of_the_router() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let core = FlakyCore::start(Plan {
        seed: 12,
        ..Plan::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, &state.path().join("state")).await;
    let (sent, events) = workload(13, 24);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;
    let log = state.path().join("child.log");
    let want = expected(&events).len();
    // SIGKILL at a quarter, half and three quarters of the requests applied, then run to the end.
    for (i, share) in [0.25, 0.5, 0.75, 1.0].into_iter().enumerate() {
        // Each run tags its requests, so the rate limit (a bucket per process, full at start)
        // is checked per run.
        let mut child = spawn(&config, &core, i, &log, None);
        let target = ((want as f64) * share) as usize;
        let start = Instant::now();
        while core.applied_count() < target {
            assert!(
                child.try_wait().unwrap().is_none(),
                "tillbridge exited; see {}",
                log.display()
            );
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "no progress; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if share < 1.0 {
            let waiting = core.requests().len();
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            println!(
                "SIGKILL #{} with {} of {want} applied, {waiting} requests seen",
                i + 1,
                core.applied_count()
            );
        } else {
            finish(&core, want, &broker, &config, child).await;
        }
    }
    check_core(&core, &events);
    check_dead_letters(&broker, &config);
}

/// Lets `child` run until the core applied `want` requests and all 24 refused events are
/// dead-lettered, then stops it.
async fn finish(
    core: &FlakyCore,
    want: usize,
    broker: &str,
    config: &tillbridge_core::config::Config,
    mut child: Child,
) {
    let start = Instant::now();
    while core.applied_count() < want {
        assert!(child.try_wait().unwrap().is_none(), "tillbridge exited");
        assert!(start.elapsed() < Duration::from_secs(180), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = broker.to_owned();
    let dlq = config.topics.dlq.clone();
    tokio::task::spawn_blocking(move || {
        kit::read_until(&b, &dlq, Duration::from_secs(60), |g| {
            let ids: BTreeSet<Vec<u8>> = g
                .iter()
                .filter_map(|g| pb::DeadLetter::decode(g.payload.as_slice()).ok())
                .map(|d| d.event_id.unwrap_or_default().into_bytes())
                .collect();
            ids.len() >= 24
        })
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every refused event has one dead letter id, however often it was re-sent after a kill.
fn check_dead_letters(broker: &str, config: &tillbridge_core::config::Config) {
    let dlq = kit::read_all(broker, &config.topics.dlq);
    let by_event: BTreeMap<String, BTreeSet<String>> =
        dlq.iter().fold(BTreeMap::new(), |mut m, g| {
            let dl = pb::DeadLetter::decode(g.payload.as_slice()).unwrap();
            m.entry(dl.event_id.unwrap()).or_default().insert(dl.id);
            m
        });
    assert!(by_event.values().all(|ids| ids.len() == 1));
    assert_eq!(by_event.len(), 24);
}

/// The process aborted (`tillbridge_core::crash`) between two writes of the delivery stage and of
/// ingest before it, one point per run, then run to the end: every request applied once, under
/// its key, every refusal dead-lettered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_kill_between_any_two_writes() {
    use std::os::unix::process::ExitStatusExt;
    let Some(broker) = kit::broker() else {
        return;
    };
    let core = FlakyCore::start(Plan {
        seed: 14,
        ..Plan::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let config = kit::config(&broker, &state.path().join("state")).await;
    let (sent, events) = workload(15, 24);
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, &sent).await;
    let log = state.path().join("child.log");
    // Batches of at most 10 records, so that each stage has dozens of batches whatever the
    // fetch timing; the points that need work left come before the ones that finish it.
    let kills = [
        "ingest:sent:2",
        "ingest:committed:2",
        "delivery:processed:1",
        "delivery:sent:2",
        "delivery:committed:3",
        "delivery:dead_lettered:1",
        "delivery:delivered:5",
    ];
    for (i, spec) in kills.into_iter().enumerate() {
        let mut child = spawn(&config, &core, i, &log, Some(spec));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "{spec} not reached; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            status.signal(),
            Some(6),
            "{spec}: not aborted there ({status})"
        );
        println!("aborted at {spec} with {} applied", core.applied_count());
    }
    let want = expected(&events).len();
    let child = spawn(&config, &core, kills.len(), &log, None);
    finish(&core, want, &broker, &config, child).await;
    check_core(&core, &events);
    check_dead_letters(&broker, &config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_pauses_consumption_until_the_core_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&dir.path().join("log"), 2).unwrap();
    // The delivery stage reads promo.sessions as ingest writes it: protobuf keyed by session.
    let (_, events) = workload(5, 40);
    let events: Vec<pb::TillEvent> = events
        .into_iter()
        .filter(|e| e.store_id != REJECT_STORE)
        .collect();
    let records: Vec<OutRecord> = events
        .iter()
        .map(|e| {
            let key = if e.session_id.is_empty() {
                format!("{}/{}", e.store_id, e.till_id)
            } else {
                e.session_id.clone()
            };
            OutRecord::new("promo.sessions", key, e.encode_to_vec())
        })
        .collect();
    log.append(records).await.unwrap();
    let addr = FlakyCore::free_addr();
    let quiet = Plan {
        fail_ratio: 0.0,
        slow_ratio: 0.0,
        throttle: None,
        outage: None,
        reject_store: None,
        ..Plan::default()
    };
    let core = FlakyCore::down_at(addr, quiet);
    let mut http = HttpConfig::new(format!("http://{addr}/sessions/{{session_id}}"));
    http.destination = "budget-test".into();
    http.disk_budget_bytes = 16 * 1024;
    http.rate_limit_per_second = 1000;
    http.burst = 50;
    http.backoff_initial = Duration::from_millis(20);
    http.backoff_max = Duration::from_millis(200);
    let state = dir.path().join("state");
    let stop = CancellationToken::new();
    let limits = BatchLimits {
        max_records: 10,
        max_bytes: 1 << 20,
        wait: Duration::from_millis(50),
    };
    let run_once = |stop: CancellationToken| {
        let (mut delivery, drainer) =
            tillbridge_delivery::outbox::open(&state, "tillbridge.dlq", &http).unwrap();
        let outbox = drainer.outbox();
        let log = log.clone();
        let task = tokio::spawn(async move {
            let mut source = log
                .source_from("delivery", &["promo.sessions"], false)
                .unwrap();
            let sink = log.sink();
            let stage = stage::run(
                "delivery",
                &mut source,
                &sink,
                &mut delivery,
                limits,
                Until::Shutdown,
                stop.clone(),
            );
            let drain = drainer.run(&sink, stop.clone());
            let (s, d) = tokio::join!(stage, drain);
            s.unwrap();
            d.unwrap();
        });
        (outbox, task)
    };
    let (outbox, task) = run_once(stop.clone());
    wait_for("consumption paused", Duration::from_secs(30), || {
        outbox.paused()
    })
    .await;
    let enqueued = outbox
        .stats()
        .enqueued
        .load(std::sync::atomic::Ordering::Relaxed);
    let bytes = outbox.bytes();
    assert!(
        bytes >= http.disk_budget_bytes && bytes < http.disk_budget_bytes + 10 * 2048,
        "the outbox stops within one batch past its budget: {bytes} bytes"
    );
    assert!(
        (enqueued as usize) < events.len(),
        "consumption paused before the topic's end ({enqueued} of {})",
        events.len()
    );
    // The gauges report the backlog.
    wait_for("gauges refreshed", Duration::from_secs(10), || {
        tillbridge_core::metrics::OUTBOX_ENTRIES
            .with_label_values(&["budget-test"])
            .get()
            > 0
            && tillbridge_core::metrics::OUTBOX_PAUSED
                .with_label_values(&["budget-test"])
                .get()
                == 1
    })
    .await;
    // A clean restart finds the same requests waiting.
    let waiting = outbox.len();
    stop.cancel();
    task.await.unwrap();
    drop(outbox);
    let stop = CancellationToken::new();
    let (outbox, task) = run_once(stop.clone());
    assert_eq!(outbox.len(), waiting, "the outbox survives a restart");
    // The core comes up: everything drains, and consumption resumes to the topic's end.
    core.up();
    wait_for("every request applied", Duration::from_secs(60), || {
        core.applied_count() >= events.len()
    })
    .await;
    wait_for("outbox empty", Duration::from_secs(10), || {
        outbox.is_empty()
    })
    .await;
    assert!(!outbox.paused());
    stop.cancel();
    task.await.unwrap();
    let applied = core.applied();
    let keys: BTreeSet<String> = applied.iter().map(|a| a.key.clone()).collect();
    assert_eq!(keys, events.iter().map(key_of).collect::<BTreeSet<_>>());
    assert_eq!(applied.len(), events.len(), "each key applied once");
    let refused = core.requests().iter().filter(|r| r.status != 200).count();
    assert_eq!(refused, 0, "a quiet core answered every request with 200");
}

/// Scale-in: two processes deliver to a core that goes down; one of them is stopped for good
/// with requests still in its outbox. The group's offset of its partitions stopped at their
/// oldest undelivered record, so the remaining process takes them up there once the core is
/// back: every request is applied (once), none waits for a process that never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_process_leaves_no_request_behind_in_its_outbox() {
    let Some(broker) = kit::broker() else {
        return;
    };
    let core = FlakyCore::start(Plan {
        fail_ratio: 0.0,
        slow_ratio: 0.0,
        throttle: None,
        outage: None,
        reject_store: None,
        seed: 14,
        ..Plan::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = kit::config(&broker, &dir.path().join("state")).await;
    let mut http = http_config(&core);
    http.backoff_max = Duration::from_millis(200);
    config.delivery = serde_json::to_value(&http).unwrap();
    let (sent, events) = workload(12, 16);
    // No store is refused here: every event is a request to apply.
    let want: BTreeSet<String> = events.iter().map(key_of).collect();
    let (first, second) = sent.split_at(sent.len() / 2);
    let mut instances: Vec<kit::process::Instance> = ["a", "b"]
        .into_iter()
        .map(|name| {
            kit::process::Instance::new(
                &config,
                dir.path(),
                name,
                &["run", "--stages", "ingest,delivery"],
                "info,tillbridge_delivery=debug",
            )
        })
        .collect();
    // `a` alone first: it has every partition.
    instances[0].start();
    let producer = kit::producer(&broker);
    kit::produce_sent(&producer, &config.topics.till_events, first).await;
    let until = |what: &str, done: &dyn Fn() -> bool, instances: &mut [kit::process::Instance]| {
        let start = Instant::now();
        while !done() {
            for i in instances.iter_mut() {
                i.running();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{what}: not within 120 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    tokio::task::block_in_place(|| {
        until(
            "the first half applied",
            &|| core.applied_count() >= first.len(),
            &mut instances[..1],
        )
    });
    // `b` joins and takes some of the destination topic's partitions (its new outbox starts at
    // the group's offset: nothing of the first half is sent again); then the core goes down, and
    // what comes next in those partitions reaches only `b`.
    instances[1].start();
    let b_log = instances[1].log.clone();
    let b_says = |what: &str, also: &str| {
        std::fs::read_to_string(&b_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(what) && l.contains(also) && !l.contains("partitions=0"))
    };
    let delivery_group = format!(
        "group={}.delivery",
        config.kafka.as_ref().unwrap().group_prefix
    );
    tokio::task::block_in_place(|| {
        until(
            "b assigned partitions of the destination topic",
            &|| b_says("partitions assigned", &delivery_group),
            &mut instances,
        )
    });
    assert!(
        !b_says("replaying from the beginning", &config.topics.sessions),
        "a new outbox replays the destination topic from its beginning"
    );
    core.down().await;
    kit::produce_sent(&producer, &config.topics.till_events, second).await;
    // `b` holds requests it cannot send: its drainer retries them.
    tokio::task::block_in_place(|| {
        until(
            "b retrying requests",
            &|| b_says("retrying later", ""),
            &mut instances,
        )
    });
    instances[1].stop();
    core.up();
    tokio::task::block_in_place(|| {
        until(
            "every request applied without b",
            &|| core.applied_count() >= want.len(),
            &mut instances[..1],
        )
    });
    instances[0].stop();
    let applied = core.applied();
    let keys: BTreeSet<&String> = applied.iter().map(|a| &a.key).collect();
    assert_eq!(keys.len(), applied.len(), "a key was applied twice");
    assert_eq!(
        keys,
        want.iter().collect::<BTreeSet<_>>(),
        "every session event was applied"
    );
    println!(
        "{} applied, {} requests seen, {} re-sends of applied keys",
        applied.len(),
        core.requests().len(),
        core.replays()
    );
}
