//! The tillbridge process: the library behind the thin binary (`main.rs` parses arguments and
//! calls it). Files, each on one job:
//!
//! - `config`: the configuration as the binary composes it (core's sections plus each crate's
//!   own, every one checked at load: [`load_config`]).
//! - `transport`: [`Transport`] (Kafka when configured, else the embedded sled log) and reading
//!   topics to their end outside any consumer group.
//! - `tables`: tables read whole before a stage starts ([`preload`]), the reconciler's restore,
//!   and the store table followed while ingest runs.
//! - `run`: [`run`] wires the chosen [`Stages`] to the transport and runs them concurrently under
//!   one shutdown token; a stage that fails cancels the others.
//! - `report`: [`write_report`]; `metrics`: [`serve_metrics`]; [`signals`]: SIGTERM and Ctrl-C
//!   start the same drain; [`logging`].
//! - [`publish`]: the integrator's first tool (check JSON lines against the contract, append).
//! - [`tail`]: a topic's records decoded and masked, one a line; [`dlq`]: dead letters an
//!   operator fixed, published again to the topic they came from.
//! - [`demo`] and [`sim`]: a simulated POS fleet through every stage, ending in a reconciliation
//!   report.

pub mod config;
pub mod demo;
pub mod dlq;
pub mod logging;
mod metrics;
pub mod publish;
mod report;
mod run;
pub mod signals;
pub mod sim;
mod tables;
pub mod tail;
pub mod topics;
mod transport;

pub use config::{
    all_topics, check_config, delivery_config, fingerprint_key, fraud_guard_config, load_config,
    reconciler_config, router_config, router_rules, ConfigCheck,
};
pub use metrics::{serve_metrics, BuildInfo};
pub use report::{
    build_report, build_report_from_topics, write_report, write_report_from, ReportFrom,
};
pub use run::{run, run_stage, RunSummary, Stages};
pub use tables::preload;
pub use transport::Transport;
