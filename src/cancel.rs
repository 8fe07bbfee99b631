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
//! Every instance reads the whole topic on a thread of its own
//! ([`reader`]; no consumer group: each needs every cancellation), from the
//! beginning at start-up — the service forwards nothing before it has
//! caught up, so a restart or a rebalance never forgets one — then follows
//! it. The loops look a record up just before they forward it or write it
//! to a tier; a record without an id costs nothing.
//!
//! Trust boundary: any principal that may write the cancel topic can cancel
//! any record with an `x-delay-id`, for any target. The service bounds what
//! such a writer can cost it: a cancellation's `until` is clamped to the
//! time it is read plus `wheel.max_delay` (no record published before then
//! can be due later), its `target` must be a valid topic name, its id at
//! most [`ID_MAX_BYTES`], and at most `service.max_cancellations` are held —
//! beyond that, cancellations of new ids are refused and counted
//! (`kafka_delay_cancellations_refused_total`, an alert), never the old
//! ones dropped.

mod reader;

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Settings;

pub use reader::{CancelReader, ReaderError};

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
    #[error("target {0:?} is not a valid Kafka topic name")]
    BadTarget(String),
}

impl Cancel {
    /// This cancellation with `until` clamped to `now_ms + max_delay_ms`:
    /// a record published before `now_ms` cannot be due later, so a larger
    /// `until` (up to `i64::MAX`) would only keep it in memory for ever.
    /// `until` never drops below `before`.
    pub fn bounded(mut self, now_ms: i64, max_delay_ms: i64) -> Self {
        let latest = now_ms.saturating_add(max_delay_ms).max(self.before);
        self.until = self.until.min(latest);
        self
    }
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
    if let Some(target) = &cancel.target {
        if !crate::envelope::is_valid_topic_name(target) {
            let shown: String = target.chars().take(64).collect();
            return Err(CancelError::BadTarget(shown));
        }
    }
    Ok((id, Some(cancel)))
}

/// What [`Cancellations::apply`] did with a record of the cancel topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A cancellation of an id not yet held.
    Added,
    /// The id's earlier cancellation was replaced (the latest wins).
    Replaced,
    /// A tombstone withdrew the id's cancellation (or there was none).
    Withdrawn,
    /// A cancellation of a new id, refused: the limit is reached.
    Refused,
}

/// The outstanding cancellations of one instance, by id, at most `limit`.
#[derive(Debug)]
pub struct Cancellations {
    by_id: RwLock<HashMap<Box<str>, Cancel>>,
    limit: usize,
}

impl Default for Cancellations {
    /// No limit (tests); the service uses [`Cancellations::with_limit`].
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl Cancellations {
    /// A registry holding at most `limit` cancellations.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            by_id: RwLock::default(),
            limit,
        }
    }

    /// True if a record with `id`, for `target`, published at
    /// `original_timestamp_ms`, is cancelled.
    pub fn cancels(&self, id: &str, target: &str, original_timestamp_ms: i64) -> bool {
        let map = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        map.get(id).is_some_and(|c| {
            original_timestamp_ms < c.before && c.target.as_deref().is_none_or(|t| t == target)
        })
    }

    /// Applies one record of the cancel topic (the latest per id wins). A
    /// cancellation of a new id is refused once `limit` are held; one of an
    /// id already held, and a tombstone, always apply.
    pub fn apply(&self, id: &str, cancel: Option<Cancel>) -> Applied {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        match cancel {
            Some(c) => {
                if let Some(held) = map.get_mut(id) {
                    *held = c;
                    Applied::Replaced
                } else if map.len() >= self.limit {
                    Applied::Refused
                } else {
                    map.insert(id.into(), c);
                    Applied::Added
                }
            }
            None => {
                map.remove(id);
                Applied::Withdrawn
            }
        }
    }

    /// Forgets cancellations that can no longer affect a record at
    /// `now_ms`; returns how many remain.
    pub fn expire(&self, now_ms: i64) -> usize {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, c| c.until.saturating_add(EXPIRY_SLACK_MS) >= now_ms);
        map.len()
    }

    /// The most cancellations held.
    pub fn limit(&self) -> usize {
        self.limit
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
    fn until_is_clamped_to_the_maximum_delay_from_when_it_is_read() {
        let max_delay = 3_600_000;
        let forever = cancel(1_000, i64::MAX, None).bounded(2_000, max_delay);
        assert_eq!(forever.until, 2_000 + max_delay);
        let near = cancel(1_000, 5_000, None).bounded(2_000, max_delay);
        assert_eq!(near.until, 5_000, "a near until is kept");
        let future_before = cancel(i64::MAX - 1, i64::MAX, None).bounded(2_000, max_delay);
        assert!(future_before.until >= future_before.before);
        let c = Cancellations::default();
        c.apply("x", Some(forever));
        assert_eq!(c.expire(2_000 + max_delay + EXPIRY_SLACK_MS + 1), 0);
    }

    #[test]
    fn beyond_the_limit_new_ids_are_refused_and_old_ones_kept() {
        let c = Cancellations::with_limit(2);
        assert_eq!(c.apply("a", Some(cancel(10, 20, None))), Applied::Added);
        assert_eq!(c.apply("b", Some(cancel(10, 20, None))), Applied::Added);
        assert_eq!(c.apply("c", Some(cancel(10, 20, None))), Applied::Refused);
        assert!(c.cancels("a", "t", 5) && c.cancels("b", "t", 5));
        assert!(!c.cancels("c", "t", 5));
        assert_eq!(c.apply("a", Some(cancel(30, 40, None))), Applied::Replaced);
        assert!(c.cancels("a", "t", 25), "an held id is still updated");
        assert_eq!(c.apply("b", None), Applied::Withdrawn);
        assert_eq!(c.apply("c", Some(cancel(10, 20, None))), Applied::Added);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_target_must_be_a_topic_name() {
        let huge = format!(
            r#"{{"before": 1, "until": 2, "target": "{}"}}"#,
            "t".repeat(1 << 20)
        );
        for value in [
            huge.as_str(),
            r#"{"before": 1, "until": 2, "target": "a b"}"#,
            r#"{"before": 1, "until": 2, "target": ""}"#,
        ] {
            assert!(
                matches!(
                    parse_record(Some(b"x"), Some(value.as_bytes())),
                    Err(CancelError::BadTarget(ref t)) if t.len() <= 64
                ),
                "{}",
                &value[..value.len().min(80)]
            );
        }
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
