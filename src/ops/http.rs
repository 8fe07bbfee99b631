//! `/metrics`, `/healthz` and `/readyz` for Prometheus and Kubernetes probes,
//! on `http.bind`. The address is bound before the service starts: a port
//! already taken stops start-up with an error naming it.
//!
//! The accept loop is ours (hyper's HTTP/1 server under axum's router) so
//! that a client cannot hold the endpoints: at most [`MAX_CONNECTIONS`] at
//! once (more wait in the listen backlog), request headers must arrive
//! within [`HEADER_READ_TIMEOUT`], and a connection lives at most
//! [`CONNECTION_LIFETIME`]. Probes and scrapes take milliseconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::model::clock::now_ms;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait, go on.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    fn serve_in_background() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(&["1s".to_owned()]));
        let health = Arc::new(Health::new(&["ingress".to_owned()]));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, metrics, health)).unwrap();
        });
        addr
    }

    #[test]
    fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let addr = serve_in_background();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.set_read_timeout(Some(HEADER_READ_TIMEOUT * 3))
            .unwrap();
        let started = Instant::now();
        let mut buf = [0_u8; 256];
        let closed = match slow.read(&mut buf) {
            Ok(_) => true, // EOF or an error response, then close
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(
            closed && started.elapsed() < HEADER_READ_TIMEOUT * 2,
            "the connection was still open after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn idle_connections_beyond_the_cap_do_not_stop_a_probe_for_long() {
        let addr = serve_in_background();
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 10)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let started = Instant::now();
        let mut probe = TcpStream::connect(addr).unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        probe
            .set_read_timeout(Some(HEADER_READ_TIMEOUT * 4))
            .unwrap();
        let mut answer = String::new();
        let _ = probe.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(started.elapsed() < HEADER_READ_TIMEOUT * 3);
        drop(idle);
    }
}
