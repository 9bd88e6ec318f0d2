//! Crash points, for the tests that kill a stage between two of its writes.
//!
//! `TILLBRIDGE_CRASH_AT=<stage>:<point>:<n>` aborts the process the `n`-th time (counting from 1)
//! the stage named `<stage>` reaches the point named `<point>`. The abort is immediate (SIGABRT):
//! no destructor runs and nothing is flushed, as when the process is SIGKILLed there. Without the
//! variable (always, outside tests) a point costs one load of an initialised cell.
//!
//! The points of the stage loop (`stage::run`), for every stage:
//! - `processed`: outputs computed, nothing written;
//! - `sent`: outputs (and the changelog records of a state that has one) durable, state not;
//! - `committed`: outputs and state durable, offsets not acknowledged;
//! - `preload_sent`: a table batch's outputs durable during the preload, state not;
//! - `restore_applied`: a chunk of a changelog partition applied to the state during a restore
//!   from the changelog, its position not yet written.
//!
//! The HTTP delivery stage (`delivery`) also has `delivered` (the promotion core accepted a request, the outbox
//! does not know yet) and `dead_lettered` (a refused request's dead letter written, the outbox
//! does not know yet).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const VAR: &str = "TILLBRIDGE_CRASH_AT";

struct Plan {
    stage: String,
    point: String,
    nth: u64,
    hits: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var(VAR).ok()?;
        let mut parts = spec.rsplitn(3, ':');
        let nth = parts.next()?.parse().ok()?;
        let point = parts.next()?.to_owned();
        let stage = parts.next()?.to_owned();
        tracing::warn!(%stage, %point, nth, "{VAR} is set: the process will abort there");
        Some(Plan {
            stage,
            point,
            nth,
            hits: AtomicU64::new(0),
        })
    })
    .as_ref()
}

/// Aborts the process here if [`VAR`] names this stage and point and this is its `n`-th hit.
pub fn point(stage: &str, point: &str) {
    let Some(plan) = plan() else {
        return;
    };
    if plan.stage == stage
        && plan.point == point
        && plan.hits.fetch_add(1, Ordering::SeqCst) + 1 == plan.nth
    {
        eprintln!(
            "crash point {stage}:{point} reached the {}th time: aborting",
            plan.nth
        );
        std::process::abort();
    }
}
