//! The reconciler: event-time coupon and loyalty ledgers that find double redemptions and
//! overdrawn balances after the fact, and say what must be done about them.
//!
//! Parts:
//! - [`Reconciler`]: the stage's [`Processor`](tillbridge_core::stage::Processor). It reads
//!   redemption and loyalty facts from the router, coupon definitions and balance snapshots from
//!   the promotion core, keeps one ledger per coupon code and per loyalty profile in sled, and
//!   emits [`pb::CompensatingAction`](tillbridge_proto::pb::CompensatingAction)s.
//! - The coupon ledger (`coupon`): ordering rule, limits, validity, offline policy, releases,
//!   settlement horizon and finality.
//! - The loyalty ledger (`loyalty`): balance over event time from the latest snapshot, pro-rata
//!   return rollback, cancellation rollback, points deficits.
//! - Cases: one per coupon or profile incident, with status, exposure and a full timeline,
//!   persisted next to the ledgers.
//! - [`report()`] and [`Report`]: JSON, CSV and self-contained HTML for fraud analysts.
//!
//! Files, each importing only files listed before it:
//! - `config.rs`: [`ReconcilerConfig`], the `[reconciler]` section, and [`CASE_REASONS`].
//! - `error.rs`: [`Error`].
//! - `model.rs`: the persisted state (facts, ledgers, compensations, cases with their
//!   [`TimelineEntry`]s) and what judging a ledger gives (`Desired`, `Evaluation`).
//! - `coupon.rs`, `loyalty.rs`: the two ledgers' rules, each a function from a ledger to its
//!   evaluation.
//! - `state.rs`: the sled layout (format, key prefixes, offsets, restore marker), the changes
//!   staged until commit, ledgers loaded once per batch, and the cases read back for a report.
//! - `input.rs`: decoding input records and applying them to the ledgers; malformed ones skipped.
//! - `settle.rs`: the settlement policy: evaluations into compensations and retractions, their
//!   ids, and adopting what an earlier life emitted after a restore.
//! - `processor.rs`: [`Reconciler`] and [`input_topics`]: batches, offsets, commit, restore.
//! - `report/mod.rs`: [`report()`] and the report model ([`Report`], [`CaseReport`], [`Bucket`],
//!   [`Totals`], [`Summary`]) built from the persisted cases; one file per output format:
//!   `report/json.rs`, `report/csv.rs`, `report/html.rs`, and `report/write.rs` writing the three.
//! - `lib.rs`: this documentation, the module list and the public re-exports.
//!
//! **Delivery.** `process` stages every state change in memory; `commit` writes the state and the
//! input offsets it reflects in one atomic sled batch, after the stage has made the outputs
//! durable. A record at or below a stored offset is skipped, so a replay after a crash never
//! applies a fact twice; a fact delivered twice under different offsets is kept once by its id.
//! The outputs of a replayed batch carry the same deterministic ids, so consumers can drop them.
//!
//! **Compensations and retractions.** Each compensation acts on one fact (a redemption) of one
//! case; its id is UUIDv5 over the case id, the fact id, its whole content (reason, points,
//! exposure, the event ids it rests on, `decided_at`) and a revision, so an id never names two
//! different actions, whatever order the facts came in. `decided_at` is the sync time of the
//! newest fact the decision rests on, not the moment it was computed. When a later
//! fact (a late offline sale, a release, a definition change) means a compensation is no longer
//! due, a RETRACT naming it is emitted (its id follows from the retracted action's); if the same
//! action becomes due again, it is re-issued under the next revision, so the re-issue has a new
//! id.
//!
//! **Worked example** (usage limit 1, horizon 72 h). Store A redeems code X at 10:00 while
//! offline; store B redeems it online at 10:05. B's fact arrives first: it stands, nothing is
//! emitted. A syncs at 14:00: in event time A comes first, so A stands and B becomes OVER_LIMIT:
//! one REVERSE_COUPON_REDEMPTION for B (exposure = B's discount). If A's sale is then cancelled,
//! a RELEASED fact frees the slot: B stands again and a RETRACT names the compensation for B.
//! Now let a fact of the coupon sync more than 72 h after B did, so B's standing is final, and
//! a redemption C from 09:55 sync days later. In event time C comes first, but it cannot
//! displace a final redemption: C itself is the over-redemption and gets the compensation.
//! Finality is judged in sync time (record timestamps), never by when facts are read, so the
//! outcome is the same live, as a backlog or in a replay (docs/RECONCILER.md).
//!
//! Coupon codes are bearer secrets: outputs carry a masked code, reports a masked code and a
//! keyed fingerprint, logs neither. The codes live only in the state store and as record keys.

mod config;
mod coupon;
mod error;
mod input;
mod loyalty;
mod model;
mod processor;
mod report;
mod settle;
mod state;

pub use config::{ReconcilerConfig, CASE_REASONS};
pub use error::Error;
pub use model::TimelineEntry;
pub use processor::{input_topics, Reconciler};
pub use report::{report, Bucket, CaseReport, Report, ReportReader, Summary, Totals};
