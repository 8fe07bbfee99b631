//! `kafka-delay run`: checks the topics, binds the HTTP endpoints, starts
//! one consumer loop per topic (ingress, then each tier) on its own thread,
//! and stops them all on SIGTERM/SIGINT or when one fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ClockSource, Settings};
use crate::engine::cancellations::{CancelReader, Cancellations};
use crate::engine::{ConsumerLoop, EngineError, Limits, Role, Shared};
use crate::kafka::clock_probe::{ClockProbe, ProbeError};
use crate::kafka::layout;
use crate::kafka::topics::{self, Spec, TopicsError};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::{config, ops::http, ops::shutdown};

/// Start-up or run-time failure of the service.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Engine(Box<EngineError>),
    #[error(transparent)]
    Topics(Box<TopicsError>),
    #[error("cannot serve HTTP on {addr} (http.bind): {error}. Fix: free the port or set http.bind to another address")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Cancel(#[from] crate::engine::cancellations::ReaderError),
    #[error(transparent)]
    Clock(#[from] ProbeError),
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
    #[error("a consumer loop panicked (see the log above); the other loops were stopped")]
    Panicked,
    #[error("{0}")]
    Librdkafka(String),
}

/// Sets the stop flag when dropped: at the end of a loop's thread, whether
/// the loop returned or panicked.
struct StopOnExit<'a>(&'a AtomicBool);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl From<EngineError> for ServiceError {
    fn from(error: EngineError) -> Self {
        Self::Engine(Box::new(error))
    }
}

impl From<TopicsError> for ServiceError {
    fn from(error: TopicsError) -> Self {
        Self::Topics(Box::new(error))
    }
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

/// The loops of an instance, in order: ingress, then every tier.
fn roles(tiers: usize) -> Vec<Role> {
    std::iter::once(Role::Ingress)
        .chain((0..tiers).map(Role::Tier))
        .collect()
}

/// Names of the loops (for health and thread names): `ingress`, tier labels.
pub fn loop_names(settings: &Settings) -> Result<Vec<String>, config::ConfigError> {
    Ok(std::iter::once("ingress".to_owned())
        .chain(tier_labels(settings)?)
        .collect())
}

/// Runs the service until `stop` is set (by a signal when `signals` is true).
pub fn run(settings: &Settings, stop: Arc<AtomicBool>, signals: bool) -> Result<(), ServiceError> {
    let metrics = Arc::new(Metrics::new(
        &tier_labels(settings).map_err(EngineError::from)?,
    ));
    let health = Arc::new(Health::new(
        &loop_names(settings).map_err(EngineError::from)?,
    ));
    run_with(settings, stop, signals, metrics, health)
}

/// Waits until the cluster answers and the topics are right; an unreachable
/// cluster is retried with back-off for `service.startup_timeout`. Returns
/// `settings` with the tier topics' names as found in the cluster
/// ([`layout::resolve`]).
fn verify_topics(
    settings: &Settings,
    spec: &Spec,
    stop: &AtomicBool,
) -> Result<Settings, ServiceError> {
    let deadline = Instant::now() + *settings.service.startup_timeout;
    let mut backoff = Duration::from_millis(500);
    loop {
        match layout::resolve(settings)
            .and_then(|resolved| topics::verify(&resolved, spec).map(|()| resolved))
        {
            Ok(resolved) => return Ok(resolved),
            Err(TopicsError::Kafka(error @ rdkafka::error::KafkaError::ClientConfig(..))) => {
                return Err(TopicsError::Kafka(error).into())
            }
            Err(TopicsError::Kafka(error))
                if Instant::now() + backoff < deadline && !stop.load(Ordering::Relaxed) =>
            {
                let error = crate::kafka::describe(&error);
                tracing::warn!(%error, bootstrap = %settings.kafka.bootstrap_servers, "cluster not reachable yet; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(TopicsError::Kafka(error)) => {
                return Err(TopicsError::Unreachable {
                    bootstrap: settings.kafka.bootstrap_servers.clone(),
                    waited: *settings.service.startup_timeout,
                    error,
                }
                .into())
            }
            Err(other) => return Err(other.into()),
        }
    }
}

/// Upgrades from 0.1, which read every topic in the single group
/// `kafka.group_id`: each topic's own group starts where that one committed
/// ([`crate::kafka::groups`]), so nothing is redelivered.
fn seed_from_single_group(settings: &Settings) -> Result<(), ServiceError> {
    let table = settings.tier_table().map_err(EngineError::from)?;
    let loops = std::iter::once(("ingress".to_owned(), settings.topics.ingress.clone())).chain(
        settings
            .tier_group_labels(&table)
            .into_iter()
            .zip(settings.tier_topics(&table)),
    );
    let legacy = &settings.kafka.group_id;
    for (label, topic) in loops {
        let group = settings.group_of(&label);
        let seeded =
            crate::kafka::groups::seed_offsets(settings, &topic, legacy, &group).map_err(|e| {
                ServiceError::Librdkafka(format!(
                    "reading the offsets of group {legacy} on {topic}: {e}"
                ))
            })?;
        if seeded > 0 {
            tracing::info!(topic, %group, from = %legacy, partitions = seeded, "took over the offsets 0.1's single consumer group committed");
        }
    }
    Ok(())
}

/// [`run`] with the caller's metrics and health (tests and the benchmark
/// read them). `health` must have one entry per loop ([`loop_names`]).
pub fn run_with(
    settings: &Settings,
    stop: Arc<AtomicBool>,
    signals: bool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<(), ServiceError> {
    crate::kafka::native::check_librdkafka_version().map_err(ServiceError::Librdkafka)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if signals {
        runtime.spawn(shutdown::on_signal(stop.clone()));
    }
    if settings.http.enabled {
        let addr: SocketAddr = settings.http.bind.parse().expect("validated");
        let listener = http::bind(addr).map_err(|error| ServiceError::Bind { addr, error })?;
        let (m, h) = (metrics.clone(), health.clone());
        let _guard = runtime.enter();
        runtime.spawn(async move {
            if let Err(error) = http::serve(listener, m, h).await {
                tracing::error!(%error, "HTTP endpoints stopped");
            }
        });
    }
    let spec = Spec::load(settings.topics.spec_file.as_deref())?;
    let settings = &verify_topics(settings, &spec, &stop)?;
    // No decision before the broker's clock is known: the first probe is
    // acknowledged before anything else reads the clock.
    let probe = match settings.wheel.clock {
        ClockSource::Broker => {
            let probe = ClockProbe::start(settings)?;
            if !probe.wait_first(*settings.service.startup_timeout, &stop)? {
                tracing::info!("stopped while reading the broker's clock");
                runtime.shutdown_timeout(Duration::from_secs(1));
                return Ok(());
            }
            crate::ops::clock::log_first_reading();
            Some(probe)
        }
        ClockSource::Host => {
            crate::model::clock::use_host_clock();
            tracing::warn!("wheel.clock = \"host\": due times are judged by this host's wall clock; a host clock ahead of the broker's delivers early by as much (docs/guarantees.md, \"Time\")");
            None
        }
    };
    let table = settings.tier_table().map_err(EngineError::from)?;
    let roles = roles(table.tiers().len());
    let s = &settings.service;
    // Nothing is forwarded before every cancellation on record is known.
    let cancellations = Arc::new(Cancellations::with_limit(s.max_cancellations));
    let cancel_reader = CancelReader::start(
        settings,
        cancellations.clone(),
        metrics.clone(),
        health.clone(),
    )?;
    if !cancel_reader.wait_loaded(&settings.topics.cancel, *s.startup_timeout, &stop)? {
        tracing::info!("stopped while loading cancellations");
        cancel_reader.stop();
        runtime.shutdown_timeout(Duration::from_secs(1));
        return Ok(());
    }
    metrics.cancellations.set_outstanding(cancellations.len());
    // Tier topics of an earlier layout are drained into this one: nothing
    // routes to them any more, but they may hold records.
    seed_from_single_group(settings)?;
    let retired = layout::retired_tiers(settings)?;
    for r in &retired {
        let group = &r.group;
        if let Some(from) = &r.seed_from {
            // A tier of a previous tier_prefix: drained in a group of its
            // own, from where its tier's group stopped.
            crate::kafka::groups::seed_offsets(settings, &r.topic, from, group).map_err(|e| {
                ServiceError::Librdkafka(format!(
                    "reading the offsets of group {from} on {}: {e}",
                    r.topic
                ))
            })?;
        }
        if r.records > 0 {
            tracing::warn!(topic = r.topic, records = r.records, %group, "tier topic of an earlier wheel layout holds records: draining them into the current tiers");
        } else {
            tracing::info!(topic = r.topic, %group, "tier topic of an earlier wheel layout holds no record: read while instances of that layout may still write it; delete it once none runs");
        }
    }
    let retired_names: Vec<String> = retired
        .iter()
        .map(|r| format!("retired-{}", r.label))
        .collect();
    // Retired loops report to a health list of their own: draining an old
    // layout does not decide readiness.
    let retired_health = Arc::new(Health::new(&retired_names));
    let roles: Vec<Role> = roles
        .into_iter()
        .chain((0..retired.len()).map(Role::Retired))
        .collect();
    let shared = Shared {
        metrics: metrics.clone(),
        cancellations,
        recent_occurrences: Default::default(),
        health: health.clone(),
        limits: Arc::new(Limits::new(
            (s.max_in_flight, s.max_in_flight_bytes),
            s.max_in_flight_per_partition,
            s.max_timer_records,
            s.max_timer_bytes,
            roles.len(),
        )),
        retired: Arc::new(retired),
    };
    let limit_ms = settings.wheel.max_clock_skew.as_millis() as i64;
    let mut names = loop_names(settings).map_err(EngineError::from)?;
    names.extend(retired_names);
    let mut threads = Vec::new();
    for (index, role) in roles.into_iter().enumerate() {
        let shared = match role {
            Role::Retired(_) => Shared {
                health: retired_health.clone(),
                ..shared.clone()
            },
            _ => shared.clone(),
        };
        let consumer_loop = ConsumerLoop::new(settings, role, index, shared)?;
        threads.push(spawn_loop(&names[index], stop.clone(), move |flag| {
            consumer_loop.run(flag)
        })?);
    }
    tracing::info!(
        bootstrap = %settings.kafka.bootstrap_servers,
        groups = %settings.group_of("*"),
        "kafka-delay running"
    );
    let mut watch = crate::ops::clock::ClockWatch::default();
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        watch.check(&metrics, limit_ms);
    }
    let result = join_loops(threads);
    cancel_reader.stop();
    if let Some(probe) = probe {
        probe.stop();
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

type LoopThread = std::thread::JoinHandle<Result<(), EngineError>>;

/// Runs one consumer loop on a thread named `kd-<name>`. When it ends — an
/// error or a panic — it sets `stop`, so that every other loop stops too
/// and the process exits non-zero rather than run on without it.
fn spawn_loop(
    name: &str,
    stop: Arc<AtomicBool>,
    run: impl FnOnce(&AtomicBool) -> Result<(), EngineError> + Send + 'static,
) -> std::io::Result<LoopThread> {
    std::thread::Builder::new()
        .name(format!("kd-{name}"))
        .spawn(move || {
            let _stop_all = StopOnExit(&stop);
            run(&stop)
        })
}

/// Waits for every loop; the first error, or [`ServiceError::Panicked`].
fn join_loops(threads: Vec<LoopThread>) -> Result<(), ServiceError> {
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Err(error)) if result.is_ok() => result = Err(error.into()),
            Ok(_) => {}
            Err(_) => {
                tracing::error!("a consumer loop panicked; the service stops");
                if result.is_ok() {
                    result = Err(ServiceError::Panicked);
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_loop_stops_the_others_and_the_service_fails() {
        let stop = Arc::new(AtomicBool::new(false));
        let waits = spawn_loop("waits", stop.clone(), |flag| {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })
        .unwrap();
        let panics = spawn_loop("panics", stop.clone(), |_| panic!("injected")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(waits.is_finished() && panics.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "a loop still runs 10 s after another panicked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(
            join_loops(vec![waits, panics]),
            Err(ServiceError::Panicked)
        ));
    }
}
