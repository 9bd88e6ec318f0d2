//! A promotion core that misbehaves on purpose, for the HTTP destination's tests: it fails a
//! share of requests with 500 (half of them after applying the request, as a core does when it
//! commits and then times out), holds some past the client's timeout, answers 429 for a while,
//! and goes down (its listener closed, so connections are refused) for several seconds. It
//! honours `Idempotency-Key` as a promotion core does: a key applied once is never applied
//! again, and the test reads what was applied, in which order, and when requests arrived.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng};

/// How the core misbehaves.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Share of requests answered 500 (half of them after applying).
    pub fail_ratio: f64,
    /// Share of requests applied and then held past the client's timeout.
    pub slow_ratio: f64,
    pub slow_for: Duration,
    /// From the n-th request on, answer 429 (`Retry-After: 1`) for this long.
    pub throttle: Option<(usize, Duration)>,
    /// At the n-th request, close the listener for this long.
    pub outage: Option<(usize, Duration)>,
    /// Requests of this store are refused with 422 and a body that holds a card number.
    pub reject_store: Option<String>,
    pub seed: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            fail_ratio: 0.3,
            slow_ratio: 0.02,
            slow_for: Duration::from_millis(1500),
            throttle: Some((150, Duration::from_millis(1500))),
            outage: Some((300, Duration::from_secs(3))),
            reject_store: Some("S-REJECT".into()),
            seed: 11,
        }
    }
}

/// How late the server may see a request that was sent on time (see `check_rate`).
pub const ARRIVAL_JITTER: Duration = Duration::from_millis(50);

/// One request as the core saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub key: String,
    pub session: String,
    pub status: u16,
    /// The `x-sender-run` header: which run of the sending process sent it (tests set it).
    pub run: String,
}

/// One application of a request.
#[derive(Clone, Debug)]
pub struct Applied {
    pub key: String,
    pub session: String,
    pub event_id: String,
    pub store_id: String,
    pub till_seq: u64,
}

#[derive(Debug)]
struct Inner {
    plan: Plan,
    rng: rand::rngs::SmallRng,
    requests: Vec<Seen>,
    applied: Vec<Applied>,
    applied_keys: HashMap<String, usize>,
    /// Requests whose key was applied before (re-sends), answered without applying again.
    replays: usize,
    throttled_until: Option<Instant>,
    throttle_done: bool,
    outage_done: bool,
}

/// The server. Dropping it stops it.
#[derive(Clone, Debug)]
pub struct FlakyCore {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    serving: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

impl FlakyCore {
    /// Starts the core on a free port of 127.0.0.1.
    pub async fn start(plan: Plan) -> FlakyCore {
        let l = listener("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = l.local_addr().unwrap();
        let core = FlakyCore::new(addr, plan);
        core.serve(l);
        core
    }

    /// A core on `addr` that is down until [`FlakyCore::up`].
    pub fn down_at(addr: SocketAddr, plan: Plan) -> FlakyCore {
        FlakyCore::new(addr, plan)
    }

    /// A free port nobody listens on yet.
    pub fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn new(addr: SocketAddr, plan: Plan) -> FlakyCore {
        FlakyCore {
            addr,
            inner: Arc::new(Mutex::new(Inner {
                rng: rand::rngs::SmallRng::seed_from_u64(plan.seed),
                plan,
                requests: Vec::new(),
                applied: Vec::new(),
                applied_keys: HashMap::new(),
                replays: 0,
                throttled_until: None,
                throttle_done: false,
                outage_done: false,
            })),
            serving: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts listening (again).
    pub fn up(&self) {
        let l = listener(self.addr).expect("rebind the core's port");
        self.serve(l);
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route(
                "/sessions/{session}",
                axum::routing::put(handle).post(handle),
            )
            .with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        *self.serving.lock().unwrap() = Some(task);
    }

    /// Closes the listener: new connections are refused until [`FlakyCore::up`].
    pub async fn down(&self) {
        let task = self.serving.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn applied(&self) -> Vec<Applied> {
        self.inner.lock().unwrap().applied.clone()
    }

    pub fn applied_count(&self) -> usize {
        self.inner.lock().unwrap().applied.len()
    }

    pub fn replays(&self) -> usize {
        self.inner.lock().unwrap().replays
    }

    /// Whether the planned outage and throttling happened.
    pub fn faults_done(&self) -> (bool, bool) {
        let i = self.inner.lock().unwrap();
        (i.throttle_done, i.outage_done)
    }

    /// Requests per status.
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for r in self.requests() {
            *m.entry(r.status).or_default() += 1;
        }
        m
    }

    /// Checks the arrival times against a token bucket of `rate` per second and `burst`: no
    /// window of arrivals may hold more than `burst + rate * (span + ARRIVAL_JITTER)` requests.
    /// Arrivals are seen at the server, after a new connection, the kernel and its runtime: a
    /// request sent on time may be seen up to `ARRIVAL_JITTER` late, bunched with later ones. The
    /// bucket
    /// is per process and starts full, so the requests of each run of the sender (told apart by
    /// their `x-sender-run` header) are checked on their own.
    pub fn check_rate(&self, rate: f64, burst: usize) -> Result<(), String> {
        let mut runs: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        for r in self.requests() {
            runs.entry(r.run).or_default().push(r.at);
        }
        runs.values()
            .try_for_each(|at| Self::check_run(at, rate, burst))
    }

    fn check_run(at: &[Instant], rate: f64, burst: usize) -> Result<(), String> {
        let jitter = ARRIVAL_JITTER.as_secs_f64();
        for i in 0..at.len() {
            for j in i..at.len() {
                let span = at[j].duration_since(at[i]).as_secs_f64();
                let allowed = burst as f64 + rate * (span + jitter);
                if (j - i + 1) as f64 > allowed {
                    return Err(format!(
                        "{} requests arrived within {span:.3}s; the limit allows {allowed:.1}",
                        j - i + 1
                    ));
                }
                if span > 2.0 {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn status(code: StatusCode, headers: &[(&'static str, &'static str)], body: String) -> Response {
    let mut r = (code, body).into_response();
    // One request per connection, so closing the listener really refuses the next request.
    r.headers_mut()
        .insert("connection", "close".parse().unwrap());
    for (k, v) in headers {
        r.headers_mut().insert(*k, v.parse().unwrap());
    }
    r
}

enum Decision {
    Answer(Response),
    Slow(Duration),
}

async fn handle(
    State(core): State<FlakyCore>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let run = headers
        .get("x-sender-run")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let event_id = v["eventId"].as_str().unwrap_or_default().to_owned();
    let store_id = v["storeId"].as_str().unwrap_or_default().to_owned();
    let till_seq: u64 = v["tillSeq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["tillSeq"].as_u64())
        .unwrap_or(0);
    let now = Instant::now();
    let mut outage = None;
    let decision = {
        let mut i = core.inner.lock().unwrap();
        let n = i.requests.len() + 1;
        let apply = |i: &mut Inner| {
            if i.applied_keys.contains_key(&key) {
                i.replays += 1;
            } else {
                i.applied_keys.insert(key.clone(), i.applied.len());
                i.applied.push(Applied {
                    key: key.clone(),
                    session: session.clone(),
                    event_id: event_id.clone(),
                    store_id: store_id.clone(),
                    till_seq,
                });
            }
        };
        if let Some((at, d)) = i.plan.throttle {
            if n >= at && !i.throttle_done && i.throttled_until.is_none() {
                i.throttled_until = Some(now + d);
            }
        }
        if let Some((at, d)) = i.plan.outage {
            if n >= at && !i.outage_done {
                i.outage_done = true;
                outage = Some(d);
            }
        }
        let throttled = match i.throttled_until {
            Some(t) if now < t => true,
            Some(_) => {
                i.throttled_until = None;
                i.throttle_done = true;
                false
            }
            None => false,
        };
        let roll: f64 = i.rng.gen();
        let (fail, slow) = (i.plan.fail_ratio, i.plan.slow_ratio);
        let (code, decision) = if throttled {
            (
                429,
                Decision::Answer(status(
                    StatusCode::TOO_MANY_REQUESTS,
                    &[("retry-after", "1")],
                    "slow down".into(),
                )),
            )
        } else if i.plan.reject_store.as_deref() == Some(store_id.as_str()) {
            (
                422,
                Decision::Answer(status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &[],
                    r#"{"message":"store not found","card":"4111 1111 1111 1111"}"#.into(),
                )),
            )
        } else if roll < fail / 2.0 {
            (
                500,
                Decision::Answer(status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &[],
                    "oops".into(),
                )),
            )
        } else if roll < fail {
            apply(&mut i);
            (
                503,
                Decision::Answer(status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &[],
                    "committed, then failed".into(),
                )),
            )
        } else if roll < fail + slow {
            apply(&mut i);
            (0, Decision::Slow(i.plan.slow_for))
        } else {
            apply(&mut i);
            (
                200,
                Decision::Answer(status(StatusCode::OK, &[], "{}".into())),
            )
        };
        i.requests.push(Seen {
            at: now,
            key: key.clone(),
            session: session.clone(),
            status: code,
            run: run.clone(),
        });
        decision
    };
    if let Some(d) = outage {
        let c = core.clone();
        tokio::spawn(async move {
            c.down().await;
            tokio::time::sleep(d).await;
            c.up();
        });
    }
    match decision {
        Decision::Answer(r) => r,
        Decision::Slow(d) => {
            tokio::time::sleep(d).await;
            status(StatusCode::OK, &[], "{}".into())
        }
    }
}
