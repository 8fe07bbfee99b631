//! What happens to a produce the broker did not acknowledge.
//!
//! Every failure is classified ([`classify`]):
//!
//! * **too large** — the record cannot fit once the service's headers are
//!   added: dead-lettered with the reason; a dead letter that is itself too
//!   large is cut down (value to [`TRUNCATED_VALUE_BYTES`], key to
//!   [`TRUNCATED_KEY_BYTES`], headers dropped) and says so in
//!   `x-delay-truncated`;
//! * **permanent** — the target is missing, forbidden or refuses the record:
//!   dead-lettered with the reason;
//! * **fatal** — the idempotent producer cannot go on: the loop stops and the
//!   process exits non-zero; nothing unacknowledged was committed, so the
//!   next owner redelivers it;
//! * **transient** — anything else: retried with exponential back-off
//!   ([`RetryPolicy`]), other partitions unaffected; a target or tier write
//!   still failing after `delivery_timeout` is dead-lettered with the last
//!   error.
//!
//! A dead letter the broker refuses is retried with back-off for as long as
//! it takes, and its source partition is **blocked** (paused, readiness
//! false, `kafka_delay_partitions_blocked`) until one succeeds: never spin,
//! never skip. Dead letters of a failed delivery carry `x-target-topic` and
//! `x-deliver-at`, so they can be published to the ingress again as they are.
//!
//! Over 500 lines: every failure path of a write (classification, retry, dead
//! letter, block) in one place, with its tests (docs/architecture.md, "Files
//! over 500 lines").

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::forwarder::{copy_headers, Forwarder, Inflight, Kind, OwnedRecord, Parts};
use crate::delivery::ledger::{Assignment, Ticket};
use crate::kafka::native::{HeaderView, OutHeaders};
use crate::model::envelope::{self, EnvelopeError};
use crate::ops::metrics::Metrics;

/// Value bytes kept in a truncated dead letter.
pub const TRUNCATED_VALUE_BYTES: usize = 64 * 1024;
/// Key bytes kept in a truncated dead letter.
pub const TRUNCATED_KEY_BYTES: usize = 1024;

/// A produce the broker (or librdkafka) did not acknowledge.
pub struct Failure {
    pub inflight: Inflight,
    pub record: OwnedRecord,
    pub error: KafkaError,
}

/// How a produce failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    TooLarge,
    Permanent,
    Fatal,
    Transient,
}

/// Classifies a produce error by its librdkafka code.
pub fn classify(error: &KafkaError) -> Class {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => {
            Class::TooLarge
        }
        Some(
            C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic
            | C::InvalidRecord
            | C::InvalidMessage
            | C::InvalidTimestamp
            | C::PolicyViolation
            | C::InvalidRequiredAcks
            | C::UnsupportedForMessageFormat
            | C::BadMessage,
        ) => Class::Permanent,
        Some(C::Fatal | C::ProducerFenced | C::InvalidProducerEpoch) => Class::Fatal,
        _ => Class::Transient,
    }
}

/// Errors about the record itself rather than the topic: a dead letter
/// refused so is sent again as a cut-down copy stamped now.
fn refuses_this_record(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::InvalidTimestamp | C::InvalidRecord | C::InvalidMessage)
    )
}

/// Back-off and give-up times for transient failures, ms.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// A target or tier write failing this long is dead-lettered.
    pub delivery_timeout_ms: i64,
    /// First back-off; doubles per attempt.
    pub backoff_min_ms: i64,
    /// Longest back-off.
    pub backoff_max_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            delivery_timeout_ms: 600_000,
            backoff_min_ms: 100,
            backoff_max_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// Back-off before attempt `attempt` (1-based): `min · 2^(attempt−1)`,
    /// capped, with ±20 % jitter so that many failures do not retry in step.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let exp = self
            .backoff_min_ms
            .saturating_mul(1_i64 << attempt.saturating_sub(1).min(30))
            .min(self.backoff_max_ms);
        exp + fastrand::i64(-exp / 5..=exp / 5)
    }
}

/// A record waiting for its next attempt.
struct Waiting {
    record: OwnedRecord,
    inflight: Inflight,
}

/// Failed produces of one consumer loop: retries due later, dead-letter
/// writes being refused, a fatal producer error.
#[derive(Default)]
pub struct Failures {
    policy: RetryPolicy,
    /// (first failure epoch ms, attempts) per ticket word.
    attempts: HashMap<u64, (i64, u32)>,
    waiting: BTreeMap<(i64, u64), Waiting>,
    seq: u64,
    /// Tickets whose dead letter the broker refused, per source partition.
    blocked: HashMap<Assignment, BTreeSet<u64>>,
    fatal: Option<String>,
}

impl Failures {
    /// Failure handling with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            ..Default::default()
        }
    }

    /// Handles the failures the producer reported. `is_live` tells whether
    /// the source partition is still assigned: a failure of a revoked
    /// partition is dropped (its offset was not committed; the next owner
    /// reads the record again).
    pub fn handle(
        &mut self,
        forwarder: &mut Forwarder,
        failures: Vec<Failure>,
        now_ms: i64,
        is_live: impl Fn(Assignment) -> bool,
        metrics: &Metrics,
    ) {
        for failure in failures {
            let Failure {
                inflight,
                record,
                error,
            } = failure;
            if !is_live(inflight.ticket.assignment()) {
                self.attempts.remove(&inflight.ticket.word());
                continue;
            }
            let class = classify(&error);
            if class == Class::Fatal {
                self.fatal = Some(error.to_string());
                continue;
            }
            match inflight.kind {
                Kind::Target | Kind::Tier => {
                    let give_up = |why: EnvelopeError| Some(why);
                    let dead = match class {
                        Class::TooLarge => give_up(EnvelopeError::TooLarge(format!(
                            "{} bytes to {}: {error}",
                            record.byte_size(),
                            record.topic
                        ))),
                        Class::Permanent => give_up(EnvelopeError::DeliveryFailed(format!(
                            "{}: {error}",
                            record.topic
                        ))),
                        _ => {
                            let (first, _) = self.note_attempt(inflight.ticket, now_ms);
                            (now_ms - first >= self.policy.delivery_timeout_ms).then(|| {
                                EnvelopeError::DeliveryFailed(format!(
                                    "{}: still failing after {} s: {error}",
                                    record.topic,
                                    (now_ms - first) / 1000
                                ))
                            })
                        }
                    };
                    match dead {
                        Some(why) => {
                            tracing::warn!(error = %why, "dead-lettering a record that cannot be delivered");
                            self.attempts.remove(&inflight.ticket.word());
                            dead_letter_failed_delivery(forwarder, &record, inflight, &why);
                        }
                        None => {
                            tracing::debug!(%error, topic = record.topic, "produce failed; retrying");
                            self.wait(record, inflight, now_ms, metrics);
                        }
                    }
                }
                Kind::DeadLetter if class == Class::TooLarge || refuses_this_record(&error) => {
                    truncated_dead_letter(forwarder, &record, inflight, now_ms);
                }
                Kind::DeadLetter | Kind::TruncatedDeadLetter => {
                    metrics.delivery.dead_letter_failure();
                    tracing::error!(%error, topic = record.topic, "the dead-letter topic refused a record; its partition stops until it is accepted");
                    self.blocked
                        .entry(inflight.ticket.assignment())
                        .or_default()
                        .insert(inflight.ticket.word());
                    self.note_attempt(inflight.ticket, now_ms);
                    self.wait(record, inflight, now_ms, metrics);
                }
            }
        }
    }

    fn note_attempt(&mut self, ticket: Ticket, now_ms: i64) -> (i64, u32) {
        let entry = self.attempts.entry(ticket.word()).or_insert((now_ms, 0));
        entry.1 += 1;
        *entry
    }

    fn wait(&mut self, record: OwnedRecord, inflight: Inflight, now_ms: i64, metrics: &Metrics) {
        let attempt = self
            .attempts
            .get(&inflight.ticket.word())
            .map_or(1, |a| a.1);
        let at = now_ms + self.policy.backoff_ms(attempt);
        self.seq += 1;
        metrics.delivery.retry(inflight.kind.metric_index());
        self.waiting
            .insert((at, self.seq), Waiting { record, inflight });
    }

    /// Takes the failed tier writes whose back-off ended by `now_ms`: the
    /// loop re-routes them by their due time. Re-sent as they were, to the
    /// partition they were routed to long before, they could land behind
    /// the head of their slot's next turn and wait a whole turn.
    pub fn take_due_tier_writes(&mut self, now_ms: i64) -> Vec<(OwnedRecord, Inflight)> {
        let due: Vec<(i64, u64)> = self
            .waiting
            .range(..(now_ms + 1, 0))
            .filter(|(_, w)| w.inflight.kind == Kind::Tier)
            .map(|(&k, _)| k)
            .collect();
        due.into_iter()
            .filter_map(|k| self.waiting.remove(&k))
            .map(|w| (w.record, w.inflight))
            .collect()
    }

    /// Keeps `record` until `at_ms` (a re-routed tier write that is due
    /// within the due-soon window waits here until it is due); then it comes
    /// back from [`Failures::take_due_tier_writes`].
    pub fn wait_until(&mut self, record: OwnedRecord, inflight: Inflight, at_ms: i64) {
        self.seq += 1;
        self.waiting
            .insert((at_ms, self.seq), Waiting { record, inflight });
    }

    /// Re-sends the records whose back-off ended by `now_ms`.
    pub fn resend_due(&mut self, forwarder: &mut Forwarder, now_ms: i64) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let Waiting { record, inflight } = entry.remove();
            forwarder.resend(record, inflight);
        }
    }

    /// Forgets tickets whose record is done (acknowledged, or its partition
    /// revoked); a partition whose refused dead letters are all done is
    /// unblocked.
    pub fn forget_done(&mut self, is_done: impl Fn(u64) -> bool) {
        if self.attempts.is_empty() && self.blocked.is_empty() {
            return;
        }
        self.attempts.retain(|&word, _| !is_done(word));
        self.blocked.retain(|_, tickets| {
            tickets.retain(|&word| !is_done(word));
            !tickets.is_empty()
        });
    }

    /// Drops waiting retries of partitions no longer assigned.
    pub fn drop_revoked(&mut self, is_live: impl Fn(Assignment) -> bool) {
        self.waiting
            .retain(|_, w| is_live(w.inflight.ticket.assignment()));
        self.blocked.retain(|a, _| is_live(*a));
    }

    /// Source partitions whose dead letters the broker refuses.
    pub fn blocked(&self) -> impl Iterator<Item = Assignment> + '_ {
        self.blocked.keys().copied()
    }

    /// When the next retry is due (epoch ms).
    pub fn next_due(&self) -> Option<i64> {
        self.waiting.keys().next().map(|k| k.0)
    }

    /// Records waiting for a retry.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The producer's fatal error, once one happened.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }
}

/// The value of header `key` in `view`, as text.
fn header_text<'a>(view: HeaderView<'a>, key: &str) -> Option<&'a str> {
    view.iter()
        .find(|(k, _)| *k == key.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v?).ok())
}

/// Dead-letters a target or tier write that failed: the user's headers,
/// `x-target-topic` and `x-deliver-at` (so it can be published again as it
/// is), the original timestamp, and `x-delay-error`.
fn dead_letter_failed_delivery(
    forwarder: &mut Forwarder,
    record: &OwnedRecord,
    inflight: Inflight,
    why: &EnvelopeError,
) {
    let view = HeaderView::of(&record.headers);
    let (target, due) = match inflight.kind {
        Kind::Tier => (
            header_text(view, envelope::TARGET).unwrap_or_default(),
            header_text(view, envelope::DUE_AT),
        ),
        _ => (
            record.topic.as_str(),
            header_text(view, envelope::SCHEDULED_AT),
        ),
    };
    let original = header_text(view, envelope::ORIGINAL_TIMESTAMP).and_then(|t| t.parse().ok());
    let mut headers = copy_headers(record, 3, |key| !envelope::is_owned_header(key));
    headers.add(envelope::TARGET_TOPIC.as_bytes(), Some(target.as_bytes()));
    if let Some(due) = due {
        headers.add(envelope::DELIVER_AT.as_bytes(), Some(due.as_bytes()));
    }
    headers.add(envelope::ERROR.as_bytes(), Some(why.to_string().as_bytes()));
    let parts = Parts {
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        timestamp_ms: original.unwrap_or(record.timestamp_ms),
        partition: None,
        headers,
    };
    forwarder.dead_letter(parts, why.reason(), inflight.ticket, Kind::DeadLetter);
}

/// Dead-letters a cut-down copy, stamped `now_ms`, of a dead letter the
/// broker refused as too large or as an invalid record.
/// Writes a cut-down copy of dead letter `record`, which was too large
/// for the dead-letter topic (see the module documentation).
pub(crate) fn truncated_dead_letter(
    forwarder: &mut Forwarder,
    record: &OwnedRecord,
    inflight: Inflight,
    now_ms: i64,
) {
    let view = HeaderView::of(&record.headers);
    let error = header_text(view, envelope::ERROR).unwrap_or("too large for the dead-letter topic");
    let key = record.key.as_deref();
    let value = record.value.as_deref();
    fn cut(b: Option<&[u8]>, max: usize) -> Option<&[u8]> {
        b.map(|b| &b[..b.len().min(max)])
    }
    let note = format!(
        "value {} bytes cut to {}; key {} bytes cut to {}; {} headers ({} bytes) dropped; \
         original timestamp {}",
        value.map_or(0, <[u8]>::len),
        value.map_or(0, |v| v.len().min(TRUNCATED_VALUE_BYTES)),
        key.map_or(0, <[u8]>::len),
        key.map_or(0, |k| k.len().min(TRUNCATED_KEY_BYTES)),
        view.len(),
        view.byte_size(),
        record.timestamp_ms,
    );
    let mut headers = OutHeaders::with_capacity(2);
    // The error text is ours and bounded (envelope::quote), but keep the
    // copy small whatever it says.
    let end = error
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= 1024)
        .last()
        .unwrap_or(0);
    let error = &error[..end];
    headers.add(envelope::ERROR.as_bytes(), Some(error.as_bytes()));
    headers.add(envelope::TRUNCATED.as_bytes(), Some(note.as_bytes()));
    let reason = EnvelopeError::REASONS
        .get(usize::from(inflight.reason))
        .copied()
        .unwrap_or("other");
    let parts = Parts {
        key: cut(key, TRUNCATED_KEY_BYTES),
        value: cut(value, TRUNCATED_VALUE_BYTES),
        timestamp_ms: now_ms,
        partition: None,
        headers,
    };
    forwarder.dead_letter(parts, reason, inflight.ticket, Kind::TruncatedDeadLetter);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Class::TooLarge
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition)),
            Class::Permanent
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Class::Permanent
        );
        assert_eq!(classify(&e(RDKafkaErrorCode::Fatal)), Class::Fatal);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            Class::Transient
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::NotEnoughReplicas)),
            Class::Transient
        );
    }

    fn record(topic: &str) -> OwnedRecord {
        OwnedRecord {
            topic: topic.to_owned(),
            partition: Some(3),
            key: None,
            value: Some(b"v".to_vec()),
            timestamp_ms: 0,
            headers: OutHeaders::with_capacity(0),
        }
    }

    #[test]
    fn due_tier_writes_go_back_to_the_loop_other_retries_are_re_sent() {
        let mut book = crate::delivery::ledger::Book::default();
        let a = book.register("t", 0);
        let mut ticket = |o| book.take(a, o).unwrap();
        let (t1, t2, t3) = (ticket(1), ticket(2), ticket(3));
        let mut f = Failures::default();
        f.wait_until(record("delay.1s"), Inflight::new(t1, Kind::Tier), 1_000);
        f.wait_until(record("target"), Inflight::new(t2, Kind::Target), 1_000);
        f.wait_until(record("delay.1m"), Inflight::new(t3, Kind::Tier), 5_000);
        assert!(f.take_due_tier_writes(999).is_empty());
        let due = f.take_due_tier_writes(1_000);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].0.topic.as_str(), due[0].1.ticket), ("delay.1s", t1));
        assert_eq!(
            f.waiting(),
            2,
            "the target retry and the later tier write wait on"
        );
        assert_eq!(f.next_due(), Some(1_000));
        let later = f.take_due_tier_writes(10_000);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].1.ticket, t3);
    }

    #[test]
    fn back_off_doubles_up_to_its_cap_with_jitter() {
        let p = RetryPolicy::default();
        for (attempt, base) in [(1, 100), (2, 200), (5, 1_600), (20, 30_000), (200, 30_000)] {
            let b = p.backoff_ms(attempt);
            assert!(
                (base * 4 / 5..=base * 6 / 5).contains(&b),
                "attempt {attempt}: {b}"
            );
        }
    }
}
