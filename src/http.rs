//! `/metrics`, `/healthz` and `/readyz` for Prometheus and Kubernetes probes,
//! on `http.bind`. The address is bound before the service starts: a port
//! already taken stops start-up with an error naming it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::clock::now_ms;
use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .set_ready(state.health.ready(now_ms()).is_ok());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Alive while every consumer loop keeps turning.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.live(now_ms()) {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Ready once every loop joined its group, while the broker answers, and
/// while no partition is blocked by the dead-letter topic (see [`Health`]).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.ready(now_ms()) {
        Ok(summary) => (StatusCode::OK, format!("{summary}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Binds `addr` now (so that a taken port fails start-up), to be served by
/// [`serve`].
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the endpoints on `listener` until the process exits.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}
