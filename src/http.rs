//! `/metrics`, `/healthz` and `/readyz` for Prometheus and Kubernetes probes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::consumer::{now_ms, Health};
use crate::metrics::Metrics;

/// A loop iteration older than this makes `/healthz` fail (ms).
const STALL_MS: i64 = 30_000;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Alive while the consumer loop keeps turning.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let last = state.health.last_loop_ms.load(Ordering::Relaxed);
    if last == 0 || now_ms() - last < STALL_MS {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "consumer loop stalled\n")
    }
}

/// Ready once the consumer group was joined (an instance may legitimately
/// own no partition when there are more instances than partitions).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.joined.load(Ordering::Relaxed) {
        let assigned = state.health.assigned.load(Ordering::Relaxed);
        (
            StatusCode::OK,
            format!("ready: {assigned} partitions assigned\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet in the consumer group\n".to_owned(),
        )
    }
}

/// Serves the endpoints on `addr` until the process exits.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}
