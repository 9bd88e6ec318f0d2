//! The Prometheus endpoint.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Serves the metrics in Prometheus text format at `GET /metrics` on `addr` until `shutdown`
/// (other paths 404, other methods 405, connections served concurrently); returns the bound
/// address (so `127.0.0.1:0` picks a free port).
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
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
    );
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
