//! Every metric tillbridge exports, named in one place (Prometheus text format on
//! `tillbridge run --metrics-addr`; docs/CONFIG.md lists them).

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The registry `tillbridge run --metrics-addr` serves.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Registering a new, uniquely named metric cannot fail; if it did, the metric still counts.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
}

/// Records read by a stage.
pub static RECORDS_CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_records_consumed_total",
        "Records a stage has processed and acknowledged.",
        &["stage"],
    )
});
/// Records a stage read from the beginning of a topic before its own loop: compacted tables
/// read to their end, or every input while its state is restored.
pub static RECORDS_PRELOADED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_records_preloaded_total",
        "Records read from the beginning before a stage's loop (tables, or inputs while restoring).",
        &["stage"],
    )
});
/// Restores of a stage's state from the topics, completed.
pub static RESTORES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_state_restores_total",
        "Restores of a stage's state from the topics (a partition of it, from a changelog), completed.",
        &["stage"],
    )
});
/// Output records a stage made durable.
pub static RECORDS_PRODUCED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_records_produced_total",
        "Output records a stage wrote, per topic.",
        &["stage", "topic"],
    )
});
/// Retries of a failed send.
pub static SEND_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_send_retries_total",
        "Sends retried after a retryable failure.",
        &["stage"],
    )
});
/// Transient consumer errors a stage polled through, and offset stores it retried.
pub static CONSUMER_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_consumer_retries_total",
        "Transient consumer errors a stage polled through and offset stores it retried.",
        &["stage"],
    )
});
/// Till events accepted by ingest.
pub static EVENTS_ACCEPTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_events_accepted_total",
        "Till events accepted by ingest.",
        &["body"],
    )
});
/// Plain duplicates dropped by ingest.
pub static DUPLICATES_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_duplicates_dropped_total",
        "Resent till events dropped by ingest.",
        &[],
    )
});
/// Dead letters by reason code.
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_dead_letters_total",
        "Records dead-lettered, by reason code.",
        &["reason"],
    )
});
/// Size of the dedup index.
pub static DEDUP_INDEX_ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_dedup_index_entries",
        "Event ids in the dedup index.",
        &[],
    )
});
/// Receipts never seen below their till's highest sequence number, over all tills (one series:
/// a label per till would grow with the fleet).
pub static TILL_SEQUENCE_GAPS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_till_sequence_gaps",
        "Missing till_seq numbers below the highest seen, over all tills.",
        &[],
    )
});
/// Consumer lag per partition.
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_consumer_lag",
        "Records not yet consumed, per partition.",
        &["group", "topic", "partition"],
    )
});

/// Records a stage still has to read, per partition, to rebuild its state from the topic (a new
/// state, or a partition back from another member); 0 once caught up.
pub static RESTORE_REMAINING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_restore_records_remaining",
        "Records a stage still has to read to rebuild its state of a partition from the topic.",
        &["group", "topic", "partition"],
    )
});

/// Records routed by ingest, per destination topic (session records and facts).
pub static ROUTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_routed_total",
        "Records routed by ingest and made durable, per destination topic.",
        &["destination"],
    )
});
/// Requests waiting in the HTTP outbox.
pub static OUTBOX_ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_outbox_entries",
        "Requests waiting in the HTTP outbox.",
        &["destination"],
    )
});
/// Bytes held by the HTTP outbox (what its disk budget counts).
pub static OUTBOX_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_outbox_bytes",
        "Bytes of the requests waiting in the HTTP outbox (counted against http.disk_budget).",
        &["destination"],
    )
});
/// Age of the oldest request in the HTTP outbox.
pub static OUTBOX_OLDEST_AGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_outbox_oldest_age_seconds",
        "Seconds since the oldest request still waiting in the HTTP outbox was enqueued.",
        &["destination"],
    )
});
/// Whether consumption toward the HTTP outbox is paused because its disk budget is full.
pub static OUTBOX_PAUSED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_outbox_paused",
        "1 while the delivery stage has stopped consuming because the outbox is over its budget.",
        &["destination"],
    )
});
/// HTTP responses by status (or `timeout`, `connect`, `io` for requests with no response).
pub static HTTP_RESPONSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_http_responses_total",
        "Responses of the promotion core by status code, or the failure without a response.",
        &["destination", "status"],
    )
});
/// Requests retried, by cause.
pub static HTTP_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tillbridge_http_retries_total",
        "Requests scheduled for another attempt, by cause (429, 5xx, timeout, connect, io).",
        &["destination", "cause"],
    )
});

/// The build of this process: always 1, its labels say which (`tillbridge_build_info`).
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tillbridge_build_info",
        "Always 1; the labels give the version, the git commit and librdkafka's version and features.",
        &["version", "git", "librdkafka", "features"],
    )
});

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&REGISTRY.gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    buf
}
