//! `kafka-delay run`: wires metrics, the HTTP endpoints, signals and the
//! consumer loop together.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Settings;
use crate::consumer::{Engine, EngineError, Health};
use crate::metrics::Metrics;
use crate::topics::{self, Spec, TopicsError};
use crate::{config, http, shutdown};

/// Start-up or run-time failure of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Topics(#[from] TopicsError),
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// Tier labels for metrics, lowest tier first.
pub fn tier_labels(settings: &Settings) -> Result<Vec<String>, config::ConfigError> {
    let table = settings.tier_table()?;
    Ok(table
        .tiers()
        .iter()
        .map(|t| config::tick_label(t.tick_ms))
        .collect())
}

/// Runs the service until `stop` is set (by a signal when `signals` is true).
/// Checks that the topics exist first.
pub fn run(settings: &Settings, stop: Arc<AtomicBool>, signals: bool) -> Result<(), ServiceError> {
    let metrics = Arc::new(Metrics::new(
        &tier_labels(settings).map_err(EngineError::from)?,
    ));
    run_with(
        settings,
        stop,
        signals,
        metrics,
        Arc::new(Health::default()),
    )
}

/// [`run`] with the caller's metrics and health (tests and the benchmark
/// read them).
pub fn run_with(
    settings: &Settings,
    stop: Arc<AtomicBool>,
    signals: bool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<(), ServiceError> {
    let spec = Spec::load(settings.topics.spec_file.as_deref())?;
    topics::verify(settings, &spec)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if settings.http.enabled {
        let addr: SocketAddr = settings.http.bind.parse().expect("validated");
        let (m, h) = (metrics.clone(), health.clone());
        runtime.spawn(async move {
            if let Err(error) = http::serve(addr, m, h).await {
                tracing::error!(%error, "HTTP endpoints stopped");
            }
        });
    }
    if signals {
        runtime.spawn(shutdown::on_signal(stop.clone()));
    }
    let engine = Engine::new(settings, metrics, health)?;
    tracing::info!(
        bootstrap = %settings.kafka.bootstrap_servers,
        group = %settings.kafka.group_id,
        "kafka-delay running"
    );
    engine.run(&stop)?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
