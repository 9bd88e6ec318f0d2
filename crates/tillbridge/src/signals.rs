//! The one way the process stops: SIGTERM (what supervisors and Kubernetes send) and SIGINT
//! (Ctrl-C) both cancel the shutdown token. Every stage then finishes the batch in hand (outputs,
//! state, offsets), the Kafka clients flush and commit, and `run` returns. A drain that outlasts
//! its timeout, or a second signal, ends the process at once with exit code 1; nothing is lost
//! then either, because what was not acknowledged is read again at the next start.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// How long a drain may take before the process exits without finishing it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Listens for SIGTERM and SIGINT in a task: the first cancels `shutdown`; a second, or
/// `drain_timeout` after the first, exits the process with code 1.
pub fn on_signals(shutdown: CancellationToken, drain_timeout: Duration) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(
            signal = first,
            timeout = ?drain_timeout,
            "draining: every stage finishes the batch in hand"
        );
        shutdown.cancel();
        let why = tokio::select! {
            _ = term.recv() => "a second signal (SIGTERM)",
            _ = int.recv() => "a second signal (SIGINT)",
            _ = tokio::time::sleep(drain_timeout) => "the drain timed out",
        };
        tracing::error!(
            "{why}: exiting without finishing the drain; unacknowledged records are read again at the next start"
        );
        std::process::exit(1);
    });
    Ok(())
}
