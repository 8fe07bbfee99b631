//! Graceful shutdown: SIGTERM or SIGINT sets a flag the consumer loop checks
//! every iteration (at most ~50 ms apart); the loop then flushes, commits and
//! leaves the group within `service.shutdown_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Waits for SIGTERM or SIGINT, then sets `stop`.
pub async fn on_signal(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    stop.store(true, Ordering::Relaxed);
}
