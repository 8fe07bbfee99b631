//! Cancellations: records that must not be delivered (cancel and
//! reschedule, `x-delay-id`).
//!
//! A cancellation is a record on the cancel topic (`topics.cancel`, default
//! `delay.cancel`; compacted, so the latest cancellation per id is kept),
//! keyed by the `x-delay-id` it cancels. Its value is JSON:
//!
//! ```json
//! {"before": 1796000000000, "until": 1796003600000, "target": "orders.timeouts"}
//! ```
//!
//! It cancels every record with that id — and that target, when `target` is
//! given — whose ingress timestamp (`x-delay-original-timestamp`, epoch ms)
//! is before `before`, so that a record published again with the same id
//! after the cancellation (a reschedule) is delivered. `until` is the
//! latest due time (epoch ms) it can still affect: a cancellation is
//! forgotten [`EXPIRY_SLACK_MS`] after it, so memory grows with the
//! outstanding cancellations only, never with the pending records. An
//! empty value (a tombstone) withdraws the cancellation of its id.
//!
//! Every instance reads the whole topic on a thread of its own (no
//! consumer group: each needs every cancellation), from the beginning at
//! start-up — the service forwards nothing before it has caught up, so a
//! restart or a rebalance never forgets one — then follows it. The loops
//! look a record up just before they forward it or write it to a tier; a
//! record without an id costs nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::now_ms;
use crate::config::Settings;
use crate::metrics::Metrics;

/// Longest accepted `x-delay-id`, bytes.
pub const ID_MAX_BYTES: usize = 256;

/// How long after its `until` a cancellation is kept (ms): records
/// delivered late (a failover, a slow writer) are still cancelled.
pub const EXPIRY_SLACK_MS: i64 = 10 * 60 * 1000;

/// The value of a cancellation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Cancels records whose ingress timestamp is before this (epoch ms).
    pub before: i64,
    /// The latest due time it can affect (epoch ms).
    pub until: i64,
    /// Only records for this target, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Why a cancellation record was ignored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("the key must be an x-delay-id: UTF-8, 1 to {ID_MAX_BYTES} bytes")]
    BadId,
    #[error("the value must be JSON {{\"before\": ms, \"until\": ms, \"target\"?: topic}}: {0}")]
    BadValue(String),
    #[error("until ({until}) is before before ({before})")]
    Inverted { before: i64, until: i64 },
}

/// Checks an `x-delay-id` value: UTF-8, 1 to [`ID_MAX_BYTES`] bytes.
pub fn parse_id(raw: &[u8]) -> Option<&str> {
    if raw.is_empty() || raw.len() > ID_MAX_BYTES {
        return None;
    }
    std::str::from_utf8(raw).ok()
}

/// Parses a cancellation record: `Ok(None)` for a tombstone.
pub fn parse_record<'a>(
    key: Option<&'a [u8]>,
    value: Option<&[u8]>,
) -> Result<(&'a str, Option<Cancel>), CancelError> {
    let id = key.and_then(parse_id).ok_or(CancelError::BadId)?;
    let value = match value {
        None | Some([]) => return Ok((id, None)),
        Some(v) => v,
    };
    let cancel: Cancel =
        serde_json::from_slice(value).map_err(|e| CancelError::BadValue(e.to_string()))?;
    if cancel.until < cancel.before {
        return Err(CancelError::Inverted {
            before: cancel.before,
            until: cancel.until,
        });
    }
    Ok((id, Some(cancel)))
}

/// The outstanding cancellations of one instance, by id.
#[derive(Debug, Default)]
pub struct Cancellations {
    by_id: RwLock<HashMap<Box<str>, Cancel>>,
}

impl Cancellations {
    /// True if a record with `id`, for `target`, published at
    /// `original_timestamp_ms`, is cancelled.
    pub fn cancels(&self, id: &str, target: &str, original_timestamp_ms: i64) -> bool {
        let map = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        map.get(id).is_some_and(|c| {
            original_timestamp_ms < c.before && c.target.as_deref().is_none_or(|t| t == target)
        })
    }

    /// Applies one record of the cancel topic (the latest per id wins).
    pub fn apply(&self, id: &str, cancel: Option<Cancel>) {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        match cancel {
            Some(c) => map.insert(id.into(), c),
            None => map.remove(id),
        };
    }

    /// Forgets cancellations that can no longer affect a record at
    /// `now_ms`; returns how many remain.
    pub fn expire(&self, now_ms: i64) -> usize {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, c| c.until.saturating_add(EXPIRY_SLACK_MS) >= now_ms);
        map.len()
    }

    /// Outstanding cancellations.
    pub fn len(&self) -> usize {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when none is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Publishes a cancellation of `id` (only for `target`, when given) to the
/// cancel topic: it covers records published before `before_ms` and due
/// up to `until_ms` (epoch ms). The record is timestamped `before_ms`.
pub fn publish(
    settings: &Settings,
    id: &str,
    target: Option<&str>,
    before_ms: i64,
    until_ms: i64,
) -> Result<(), KafkaError> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        crate::kafka::producer_config(settings).create()?;
    let value = serde_json::to_string(&Cancel {
        before: before_ms,
        until: until_ms,
        target: target.map(str::to_owned),
    })
    .expect("serializable");
    producer
        .send(
            BaseRecord::to(&settings.topics.cancel)
                .key(id)
                .payload(&value)
                .timestamp(before_ms),
        )
        .map_err(|(error, _)| error)?;
    producer.flush(Duration::from_secs(30))
}

/// Errors starting the reader.
#[derive(Debug, Error)]
pub enum ReaderError {
    #[error("cancel topic {topic}: {error}. Fix: run `kafka-delay topics apply` (it creates topics.cancel)")]
    Topic { topic: String, error: String },
    #[error("kafka: {}", crate::kafka::describe(.0))]
    Kafka(#[from] KafkaError),
    #[error("the cancel topic {topic} was not read to its end within {waited:?}. Fix: check the cluster, or raise service.startup_timeout")]
    NotLoaded { topic: String, waited: Duration },
}

/// The thread that reads the cancel topic into [`Cancellations`].
pub struct CancelReader {
    stop: Arc<AtomicBool>,
    loaded: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CancelReader {
    /// Assigns every partition of `settings.topics.cancel` from the
    /// beginning and follows it; [`CancelReader::wait_loaded`] tells when
    /// the records present at start have been applied.
    pub fn start(
        settings: &Settings,
        cancellations: Arc<Cancellations>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ReaderError> {
        let topic = settings.topics.cancel.clone();
        let group = format!("{}.cancel-reader", settings.kafka.group_id);
        let consumer: BaseConsumer<ReaderContext> =
            crate::kafka::consumer_config(settings, &group, true)
                .create_with_context(ReaderContext)?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(ReaderError::Topic {
                topic,
                error: "does not exist or has no partitions".into(),
            });
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let loaded = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, loaded) = (stop.clone(), loaded.clone());
            std::thread::Builder::new()
                .name("kd-cancel".into())
                .spawn(move || {
                    read_loop(
                        &consumer,
                        partitions.len(),
                        &cancellations,
                        &metrics,
                        &stop,
                        &loaded,
                    )
                })
                .map_err(|e| ReaderError::Topic {
                    topic: topic.clone(),
                    error: e.to_string(),
                })?
        };
        Ok(Self {
            stop,
            loaded,
            thread: Some(thread),
        })
    }

    /// Waits until every partition was read to the end it had at start.
    pub fn wait_loaded(&self, topic: &str, timeout: Duration) -> Result<(), ReaderError> {
        let started = Instant::now();
        while !self.loaded.load(Ordering::Acquire) {
            if started.elapsed() > timeout {
                return Err(ReaderError::NotLoaded {
                    topic: topic.to_owned(),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

fn read_loop(
    consumer: &BaseConsumer<ReaderContext>,
    partition_count: usize,
    cancellations: &Cancellations,
    metrics: &Metrics,
    stop: &AtomicBool,
    loaded: &AtomicBool,
) {
    let mut at_end = vec![false; partition_count];
    let mut last_expiry = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => match parse_record(msg.key(), msg.payload()) {
                Ok((id, cancel)) => {
                    let issued = msg.timestamp().to_millis().unwrap_or_else(now_ms);
                    if let Some(c) = &cancel {
                        if issued > c.until {
                            metrics.cancellation_too_late();
                            tracing::info!(
                                id,
                                until = c.until,
                                issued,
                                "cancellation issued after the latest due time it could affect"
                            );
                        }
                    }
                    tracing::debug!(
                        id,
                        ?cancel,
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "cancellation"
                    );
                    cancellations.apply(id, cancel);
                }
                Err(error) => {
                    metrics.cancellation_invalid();
                    tracing::warn!(%error, partition = msg.partition(), offset = msg.offset(), "cancellation record ignored");
                }
            },
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(flag) = usize::try_from(p).ok().and_then(|p| at_end.get_mut(p)) {
                    *flag = true;
                }
                if at_end.iter().all(|&e| e) {
                    loaded.store(true, Ordering::Release);
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "cancel topic"),
            None => {}
        }
        if last_expiry.elapsed() >= Duration::from_secs(1) {
            last_expiry = Instant::now();
            metrics.set_cancellations_outstanding(cancellations.expire(now_ms()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancel(before: i64, until: i64, target: Option<&str>) -> Cancel {
        Cancel {
            before,
            until,
            target: target.map(str::to_owned),
        }
    }

    #[test]
    fn a_cancellation_covers_records_published_before_it_only() {
        let c = Cancellations::default();
        c.apply("order-42", Some(cancel(1_000, 9_000, None)));
        assert!(c.cancels("order-42", "any", 999));
        assert!(
            !c.cancels("order-42", "any", 1_000),
            "a reschedule published after it"
        );
        assert!(!c.cancels("order-43", "any", 500));
    }

    #[test]
    fn a_target_narrows_a_cancellation() {
        let c = Cancellations::default();
        c.apply("x", Some(cancel(1_000, 9_000, Some("orders"))));
        assert!(c.cancels("x", "orders", 10));
        assert!(!c.cancels("x", "billing", 10));
    }

    #[test]
    fn the_latest_record_per_id_wins_and_a_tombstone_withdraws() {
        let c = Cancellations::default();
        c.apply("x", Some(cancel(1_000, 9_000, None)));
        c.apply("x", Some(cancel(2_000, 9_000, None)));
        assert!(c.cancels("x", "t", 1_500));
        c.apply("x", None);
        assert!(!c.cancels("x", "t", 1_500));
        assert!(c.is_empty());
    }

    #[test]
    fn cancellations_expire_after_their_latest_due_time() {
        let c = Cancellations::default();
        c.apply("old", Some(cancel(1_000, 5_000, None)));
        c.apply("new", Some(cancel(1_000, 50_000_000, None)));
        assert_eq!(c.expire(5_000 + EXPIRY_SLACK_MS), 2);
        assert_eq!(c.expire(5_001 + EXPIRY_SLACK_MS), 1);
        assert!(!c.cancels("old", "t", 10));
        assert!(c.cancels("new", "t", 10));
    }

    #[test]
    fn records_of_the_cancel_topic_are_parsed_strictly() {
        let json = br#"{"before": 10, "until": 20, "target": "t"}"#;
        assert_eq!(
            parse_record(Some(b"id-1"), Some(json)),
            Ok(("id-1", Some(cancel(10, 20, Some("t")))))
        );
        assert_eq!(parse_record(Some(b"id-1"), None), Ok(("id-1", None)));
        assert_eq!(parse_record(Some(b"id-1"), Some(b"")), Ok(("id-1", None)));
        assert_eq!(parse_record(None, None), Err(CancelError::BadId));
        assert_eq!(
            parse_record(Some(&[0xff, 0xfe]), None),
            Err(CancelError::BadId)
        );
        assert_eq!(
            parse_record(Some(&[b'a'; 257]), None),
            Err(CancelError::BadId)
        );
        assert!(matches!(
            parse_record(Some(b"x"), Some(br#"{"before": 10}"#)),
            Err(CancelError::BadValue(_))
        ));
        assert!(matches!(
            parse_record(
                Some(b"x"),
                Some(br#"{"before": 10, "until": 20, "extra": 1}"#)
            ),
            Err(CancelError::BadValue(_))
        ));
        assert_eq!(
            parse_record(Some(b"x"), Some(br#"{"before": 30, "until": 20}"#)),
            Err(CancelError::Inverted {
                before: 30,
                until: 20
            })
        );
    }
}
