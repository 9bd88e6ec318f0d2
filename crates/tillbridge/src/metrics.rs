//! The operations endpoint: Prometheus metrics, liveness and readiness.

use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use tillbridge_core::log::KafkaLog;
use tokio_util::sync::CancellationToken;

/// How long `/readyz` waits for the broker's answer.
const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves on `addr` until `shutdown` (connections served concurrently; other paths 404, other
/// methods 405), and returns the bound address (so `127.0.0.1:0` picks a free port):
/// - `GET /metrics`: the metrics in Prometheus text format;
/// - `GET /healthz`: 200 while the process serves (liveness);
/// - `GET /readyz`: 200 once every stage has opened its state, finished its preloads and
///   restores and read from its source, while no partition is being restored, and (on Kafka,
///   `broker` given) a broker answers a metadata request; else 503 with the reasons, one a line.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    broker: Option<KafkaLog>,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    tillbridge_core::metrics::render(),
                )
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || readiness(broker.clone())),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(bound)
}

async fn readiness(broker: Option<KafkaLog>) -> (StatusCode, String) {
    let mut reasons = tillbridge_core::health::not_ready();
    if let Some(k) = broker {
        let answered = tokio::task::spawn_blocking(move || k.ping(BROKER_PROBE_TIMEOUT)).await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => reasons.push(format!("the Kafka cluster does not answer: {e}")),
            Err(e) => reasons.push(format!("the broker probe failed: {e}")),
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", reasons.join("\n")),
        )
    }
}

/// The build, for `--version` and `tillbridge_build_info`: the crate version, the git commit it
/// was built from, and librdkafka's version and compiled-in features.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    pub version: &'static str,
    pub git: &'static str,
    pub librdkafka: String,
    pub features: String,
}

impl BuildInfo {
    pub fn get() -> Self {
        let (librdkafka, features) = tillbridge_core::log::librdkafka_build();
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            git: env!("TILLBRIDGE_GIT_HASH"),
            librdkafka,
            features,
        }
    }

    /// Sets `tillbridge_build_info` to 1 with this build's labels.
    pub fn export(&self) {
        tillbridge_core::metrics::BUILD_INFO
            .with_label_values(&[self.version, self.git, &self.librdkafka, &self.features])
            .set(1);
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (git {})\nlibrdkafka {} ({})",
            self.version, self.git, self.librdkafka, self.features
        )
    }
}
