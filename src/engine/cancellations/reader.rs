//! The thread that reads the cancel topic into [`Cancellations`].
//!
//! It assigns every partition from the beginning (no consumer group) and
//! follows the topic for as long as the service runs. Start-up waits until
//! every partition was read to the end it had at start
//! ([`CancelReader::wait_loaded`]): progress is logged, a stop signal
//! interrupts the wait, and only a reader that makes *no progress* for
//! `service.startup_timeout` fails start-up — a large topic loads slowly,
//! never into a crash loop. While it runs, the reader exports its lag
//! (`kafka_delay_cancel_reader_lag_records`) and marks the instance not
//! ready while the topic is missing or unreadable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use thiserror::Error;

use super::{Applied, Cancellations};
use crate::config::Settings;
use crate::model::cancel::parse_record;
use crate::model::clock::now_ms;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// How often the reader checks that the topic still exists and is
/// readable, and refreshes its lag.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Timeout of that metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How often start-up logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Errors starting the reader.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum ReaderError {
    #[error("cancel topic {topic}: {error}. Fix: run `kafka-delay topics apply` (it creates topics.cancel)")]
    Topic { topic: String, error: String },
    #[error("kafka: {}", crate::kafka::describe(.0))]
    Kafka(#[from] KafkaError),
    #[error("cannot start the cancel reader's thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the cancel topic {topic} made no progress for {waited:?} while loading ({read} of about {total} records read). Fix: check the cluster, or raise service.startup_timeout")]
    NotLoaded {
        topic: String,
        waited: Duration,
        read: u64,
        total: u64,
    },
}

/// How far loading has come.
#[derive(Debug, Default)]
struct Progress {
    /// Records read so far.
    read: AtomicU64,
    /// Records the topic held at start (end minus start offsets).
    total: AtomicU64,
    /// Every partition was read to the end it had at start.
    loaded: AtomicBool,
}

/// The running reader; [`CancelReader::stop`] ends its thread.
pub struct CancelReader {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
}

/// What the reader thread needs besides its consumer.
struct ReadLoop {
    topic: String,
    partitions: usize,
    max_delay_ms: i64,
    cancellations: Arc<Cancellations>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
}

impl CancelReader {
    /// Assigns every partition of `settings.topics.cancel` from the
    /// beginning and follows it; [`CancelReader::wait_loaded`] tells when
    /// the records present at start have been applied.
    pub fn start(
        settings: &Settings,
        cancellations: Arc<Cancellations>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, ReaderError> {
        let topic = settings.topics.cancel.clone();
        let group = format!("{}.cancel-reader", settings.kafka.group_id);
        let consumer: BaseConsumer<ReaderContext> =
            crate::kafka::consumer_config(settings, &group, true)
                .create_with_context(ReaderContext)?;
        let partitions = partitions_of(&consumer, &topic).map_err(|error| ReaderError::Topic {
            topic: topic.clone(),
            error,
        })?;
        let progress = Arc::new(Progress::default());
        let mut total = 0;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            total += u64::try_from(high - low).unwrap_or(0);
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        progress.total.store(total, Ordering::Relaxed);
        consumer.assign(&tpl)?;
        metrics
            .cancellations
            .set_limit(settings.service.max_cancellations);
        let stop = Arc::new(AtomicBool::new(false));
        let read_loop = ReadLoop {
            topic: topic.clone(),
            partitions: partitions.len(),
            max_delay_ms: i64::try_from(settings.wheel.max_delay.as_millis()).unwrap_or(i64::MAX),
            cancellations,
            metrics,
            health,
            progress: progress.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kd-cancel".into())
            .spawn(move || read_loop.run(&consumer))?;
        Ok(Self {
            stop,
            progress,
            thread: Some(thread),
        })
    }

    /// Waits until every partition was read to the end it had at start.
    /// Returns `Ok(false)` when `stop` was set first (a signal during
    /// start-up), and fails only when no record was read for `stall`.
    pub fn wait_loaded(
        &self,
        topic: &str,
        stall: Duration,
        stop: &AtomicBool,
    ) -> Result<bool, ReaderError> {
        let started = Instant::now();
        let (mut last_read, mut last_move) = (0, Instant::now());
        let mut last_log = Instant::now();
        while !self.progress.loaded.load(Ordering::Acquire) {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let read = self.progress.read.load(Ordering::Relaxed);
            let total = self.progress.total.load(Ordering::Relaxed);
            if read != last_read {
                (last_read, last_move) = (read, Instant::now());
            } else if last_move.elapsed() > stall {
                return Err(ReaderError::NotLoaded {
                    topic: topic.to_owned(),
                    waited: stall,
                    read,
                    total,
                });
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                tracing::info!(
                    topic,
                    read,
                    total,
                    elapsed_s = started.elapsed().as_secs(),
                    "loading cancellations; the instance is not ready until they are all known"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    /// Stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The partitions of `topic`, or why it cannot be read.
fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT.max(Duration::from_secs(10)))
        .map_err(|e| crate::kafka::describe(&e))?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found {
        Some(t) if t.error().is_some() => Err(format!("{:?}", t.error())),
        Some(t) if !t.partitions().is_empty() => {
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        }
        _ => Err("does not exist or has no partitions".into()),
    }
}

impl ReadLoop {
    fn run(self, consumer: &BaseConsumer<ReaderContext>) {
        let mut at_end = vec![false; self.partitions];
        let mut last_expiry = Instant::now();
        let mut last_check = Instant::now();
        let mut refused_logged = false;
        while !self.stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    self.progress.read.fetch_add(1, Ordering::Relaxed);
                    self.apply(&msg, &mut refused_logged);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(flag) = usize::try_from(p).ok().and_then(|p| at_end.get_mut(p)) {
                        *flag = true;
                    }
                    if at_end.iter().all(|&e| e) && !self.progress.loaded.load(Ordering::Relaxed) {
                        self.progress.loaded.store(true, Ordering::Release);
                        self.health
                            .cancel_reader
                            .loaded
                            .store(true, Ordering::Relaxed);
                        self.metrics.cancellations.set_reader(0, true);
                        tracing::info!(
                            topic = self.topic,
                            read = self.progress.read.load(Ordering::Relaxed),
                            outstanding = self.cancellations.len(),
                            "cancellations loaded"
                        );
                    }
                }
                Some(Err(error)) => {
                    let problem = crate::kafka::describe(&error);
                    tracing::warn!(topic = self.topic, %problem, "cannot read the cancel topic");
                    self.health.cancel_reader.set_problem(Some(problem));
                }
                None => {}
            }
            if last_expiry.elapsed() >= Duration::from_secs(1) {
                last_expiry = Instant::now();
                let outstanding = self.cancellations.expire(now_ms());
                self.metrics.cancellations.set_outstanding(outstanding);
                if outstanding < self.cancellations.limit() {
                    refused_logged = false;
                }
            }
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                self.check(consumer);
            }
        }
    }

    /// Applies one record of the cancel topic.
    fn apply(&self, msg: &rdkafka::message::BorrowedMessage<'_>, refused_logged: &mut bool) {
        let (id, cancel) = match parse_record(msg.key(), msg.payload()) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.metrics.cancellations.invalid();
                tracing::warn!(%error, partition = msg.partition(), offset = msg.offset(), "cancellation record ignored");
                return;
            }
        };
        let now = now_ms();
        let issued = msg.timestamp().to_millis().unwrap_or(now);
        if let Some(c) = &cancel {
            if issued > c.until {
                self.metrics.cancellations.too_late();
                tracing::info!(
                    id,
                    until = c.until,
                    issued,
                    "cancellation issued after the latest due time it could affect"
                );
            }
        }
        let cancel = cancel.map(|c| c.bounded(now, self.max_delay_ms));
        tracing::debug!(
            id,
            ?cancel,
            partition = msg.partition(),
            offset = msg.offset(),
            "cancellation"
        );
        if self.cancellations.apply(id, cancel) == Applied::Refused {
            self.metrics.cancellations.refused();
            if !*refused_logged {
                *refused_logged = true;
                tracing::error!(
                    id,
                    limit = self.cancellations.limit(),
                    "cancellation refused: service.max_cancellations are outstanding; the records it names will be delivered. Fix: raise service.max_cancellations, or find the writer of the cancel topic"
                );
            }
        }
    }

    /// Whether the topic still exists and can be read; the lag.
    fn check(&self, consumer: &BaseConsumer<ReaderContext>) {
        let problem = match partitions_of(consumer, &self.topic) {
            Ok(p) if p.len() == self.partitions => None,
            Ok(p) => Some(format!(
                "has {} partitions, the reader assigned {} (restart the instance)",
                p.len(),
                self.partitions
            )),
            Err(error) => Some(error),
        };
        if let Some(problem) = &problem {
            tracing::warn!(topic = self.topic, %problem, "cannot read the cancel topic");
        }
        let up = problem.is_none() && self.progress.loaded.load(Ordering::Relaxed);
        self.health.cancel_reader.set_problem(problem);
        let mut lag = 0;
        if let Ok(positions) = consumer.position() {
            for e in positions.elements() {
                let Offset::Offset(position) = e.offset() else {
                    continue;
                };
                let cached = crate::kafka::native::cached_high_watermark(
                    consumer,
                    &self.topic,
                    e.partition(),
                );
                if let Some(high) = cached {
                    lag += (high - position).max(0);
                }
            }
        }
        self.metrics.cancellations.set_reader(lag, up);
    }
}

/// The reader's client context: end-of-partition events, which librdkafka
/// also reports as client errors, are expected (they mark "caught up").
struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        tracing::warn!(
            "cancel topic reader: {}: {reason}",
            crate::kafka::describe(&error)
        );
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}
