//! The forwarder: produces target, tier and dead-letter records for one
//! consumer loop and turns broker acknowledgements into offset marks.
//!
//! One idempotent producer per consumer loop (`acks=all`). Its delivery
//! callback, on the producer's own thread, marks the source offset done in
//! the loop's [`Ledger`] or queues the record as a [`Failure`];
//! [`failures`](super::failures) decides what happens to it (retry with back-off, dead
//! letter, stop the partition). Nothing is marked done before the broker
//! acknowledged it, so a crash loses nothing.
//!
//! Headers are bytes throughout ([`native`](crate::kafka::native)): a key that is not UTF-8 or
//! holds a NUL byte passes through unchanged. When librdkafka's queue is
//! full the record is kept here ([`Forwarder::queue_full`]) and the loop
//! pauses its sources while it keeps polling; nothing blocks.
//!
//! Over 500 lines: one write path (target, tier, dead letter) and the
//! delivery callback that acknowledges it (docs/architecture.md, "Files over
//! 500 lines").

mod record;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Timestamp};

use crate::delivery::ledger::{Ledger, Ticket};
use crate::kafka::native::{NativeProducer, OutHeaders, Outgoing, PolledProducer, RecordHeaders};
use crate::model::clock::{broker, mono_us, now_ms};
use crate::model::envelope::{self, Envelope, EnvelopeError};
use crate::ops::metrics::{Metrics, Source};

pub use super::failures::Failure;
pub use record::{OwnedRecord, Record};

/// What a produced record is, for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Delivery to the target topic.
    Target,
    /// A write into a tier.
    Tier,
    /// A dead letter, byte-for-byte plus `x-delay-error`.
    DeadLetter,
    /// A dead letter cut down to fit (see [`envelope::TRUNCATED`]).
    TruncatedDeadLetter,
}

impl Kind {
    /// Index into [`crate::ops::metrics::KINDS`].
    pub fn metric_index(self) -> usize {
        match self {
            Kind::Target => 0,
            Kind::Tier => 1,
            Kind::DeadLetter | Kind::TruncatedDeadLetter => 2,
        }
    }
}

/// The source record a produce came from (its [`Ticket`]), what the produce
/// is and, for dead letters, the reason (index into
/// [`EnvelopeError::REASONS`]). Travels as the producer's delivery opaque,
/// packed into one `usize`: no allocation per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    pub ticket: Ticket,
    pub kind: Kind,
    pub reason: u8,
}

#[cfg(not(target_pointer_width = "64"))]
compile_error!("kafka-delay packs delivery opaques into 64-bit words");

impl Inflight {
    /// A produce of `kind` for `ticket`.
    pub fn new(ticket: Ticket, kind: Kind) -> Self {
        Self {
            ticket,
            kind,
            reason: 0,
        }
    }

    fn pack(self) -> usize {
        let kind = match self.kind {
            Kind::Target => 0,
            Kind::Tier => 1,
            Kind::DeadLetter => 2,
            Kind::TruncatedDeadLetter => 3,
        };
        self.ticket.with_tag(kind | (self.reason & 0x1f) << 2) as usize
    }

    fn unpack(word: usize) -> Self {
        let (ticket, tag) = Ticket::from_tagged(word as u64);
        let kind = match tag & 3 {
            0 => Kind::Target,
            1 => Kind::Tier,
            2 => Kind::DeadLetter,
            _ => Kind::TruncatedDeadLetter,
        };
        Self {
            ticket,
            kind,
            reason: tag >> 2,
        }
    }
}

/// A series' occurrence number (`x-delay-occurrence`), when `env` has one.
fn add_occurrence(headers: &mut OutHeaders, env: &Envelope<'_>) {
    if let Some(n) = env.occurrence {
        headers.add_number(crate::model::series::OCCURRENCE, n as i64);
    }
}

/// The producer's context: acknowledgements mark offsets done; failures are
/// queued for the consumer loop.
pub struct DeliveryContext {
    ledger: Arc<Ledger>,
    failures: Arc<Mutex<Vec<Failure>>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let inflight = Inflight::unpack(opaque);
        match result {
            Ok(msg) => {
                match inflight.kind {
                    Kind::Target => self.metrics.delivery.delivered(),
                    Kind::Tier => {
                        if let Timestamp::LogAppendTime(broker_ms) = msg.timestamp() {
                            broker().sample_ack(mono_us(), broker_ms);
                        }
                    }
                    Kind::DeadLetter | Kind::TruncatedDeadLetter => {
                        self.metrics
                            .delivery
                            .dead_lettered(usize::from(inflight.reason));
                    }
                }
                self.ledger.acknowledge(inflight.ticket);
            }
            Err((error, msg)) => {
                let code = error
                    .rdkafka_error_code()
                    .map_or_else(|| "unknown".to_owned(), |c| format!("{c:?}"));
                self.metrics.delivery.produce_error(&code);
                let partition = (inflight.kind != Kind::Target).then(|| msg.partition());
                self.failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Failure {
                        inflight,
                        record: OwnedRecord::of(msg, partition),
                        error: error.clone(),
                    });
            }
        }
    }
}

/// Copies the headers of `msg` whose key passes `keep`, with room for
/// `extra` more.
pub fn copy_headers<M: RecordHeaders>(
    msg: &M,
    extra: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> OutHeaders {
    let view = msg.header_view();
    let mut out = OutHeaders::with_capacity(view.len() + extra);
    for (key, value) in view.iter() {
        if keep(key) {
            out.add(key, value);
        }
    }
    out
}

/// Copies `msg`'s headers, leaving out the ones the service owns.
fn user_headers<M: RecordHeaders>(msg: &M, extra: usize) -> OutHeaders {
    copy_headers(msg, extra, |key| !envelope::is_owned_header(key))
}

/// Produces records for one consumer loop. The producer and its topic
/// handles are one [`NativeProducer`], which releases the handles before
/// the producer; records waiting for room in librdkafka's queue are dropped
/// first (`Drop`).
pub struct Forwarder {
    producer: NativeProducer<DeliveryContext>,
    failures: Arc<Mutex<Vec<Failure>>>,
    metrics: Arc<Metrics>,
    dead_letter: String,
    tiers: Vec<String>,
    /// Records refused with `QueueFull`, oldest first, with their opaque.
    overflow: VecDeque<(OwnedRecord, usize)>,
    /// Writes issued so far (exactly-once mode sizes transactions by it).
    sent: Arc<AtomicU64>,
}

impl Forwarder {
    /// Creates the producer from `config`.
    pub fn new(
        config: &rdkafka::ClientConfig,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        dead_letter: &str,
        tier_topics: &[String],
    ) -> Result<Self, KafkaError> {
        let failures = Arc::new(Mutex::new(Vec::new()));
        let producer = PolledProducer::create(
            config,
            DeliveryContext {
                ledger,
                failures: failures.clone(),
                metrics: metrics.clone(),
            },
        )?;
        Ok(Self {
            dead_letter: dead_letter.to_owned(),
            tiers: tier_topics.to_vec(),
            producer: NativeProducer::new(producer),
            failures,
            metrics,
            overflow: VecDeque::new(),
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Produces `record`; a full queue keeps it for [`Forwarder::drain_overflow`],
    /// any other refusal becomes a [`Failure`].
    fn send(&mut self, record: Parts<'_>, dest: Dest<'_>, inflight: Inflight) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let opaque = inflight.pack();
        let Parts {
            key,
            value,
            timestamp_ms,
            partition,
            headers,
        } = record;
        let owned = |topic: &str, headers| OwnedRecord {
            topic: topic.to_owned(),
            partition,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp_ms,
            headers,
        };
        let topic = match dest {
            Dest::DeadLetter => self.dead_letter.as_str(),
            Dest::Tier(tier) => self.tiers[tier].as_str(),
            Dest::Target(name) => name,
        };
        if !self.overflow.is_empty() {
            let record = owned(topic, headers);
            self.overflow.push_back((record, opaque));
            return;
        }
        let out = Outgoing {
            partition,
            key,
            value,
            timestamp_ms,
            headers,
            opaque,
        };
        if let Err((code, headers)) = self.producer.produce(topic, out) {
            let record = owned(topic, headers);
            self.refused(record, opaque, code);
        }
    }

    fn refused(&mut self, record: OwnedRecord, opaque: usize, code: RDKafkaErrorCode) {
        if code == RDKafkaErrorCode::QueueFull {
            self.overflow.push_back((record, opaque));
            return;
        }
        self.metrics.delivery.produce_error(&format!("{code:?}"));
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Failure {
                inflight: Inflight::unpack(opaque),
                record,
                error: KafkaError::MessageProduction(code),
            });
    }

    /// Re-sends records refused with `QueueFull`, oldest first, until the
    /// queue refuses again.
    pub fn drain_overflow(&mut self) {
        while let Some((record, opaque)) = self.overflow.pop_front() {
            let OwnedRecord {
                topic,
                partition,
                key,
                value,
                timestamp_ms,
                headers,
            } = record;
            let out = Outgoing {
                partition,
                key: key.as_deref(),
                value: value.as_deref(),
                timestamp_ms,
                headers,
                opaque,
            };
            if let Err((code, headers)) = self.producer.produce(&topic, out) {
                let back = OwnedRecord {
                    topic,
                    partition,
                    key,
                    value,
                    timestamp_ms,
                    headers,
                };
                if code == RDKafkaErrorCode::QueueFull {
                    self.overflow.push_front((back, opaque));
                    return;
                }
                self.refused(back, opaque, code);
            }
        }
    }

    /// True while records wait for room in librdkafka's queue: the loop
    /// pauses its sources until it drains.
    pub fn queue_full(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Delivers `msg` to its target now: routing and internal headers are
    /// removed, `x-delay-scheduled-at` and `x-delay-original-timestamp` added,
    /// the timestamp is the delivery time.
    pub fn deliver<M: Record>(
        &mut self,
        msg: &M,
        env: &Envelope<'_>,
        from: Source,
        ticket: Ticket,
        now_ms: i64,
    ) {
        let mut headers = user_headers(msg, 3);
        headers.add_number(envelope::SCHEDULED_AT, env.due_ms);
        headers.add_number(envelope::ORIGINAL_TIMESTAMP, env.original_timestamp_ms);
        add_occurrence(&mut headers, env);
        self.metrics.delivery.forwarded(from, now_ms - env.due_ms);
        self.send(
            Parts::of(msg, now_ms, None, headers),
            Dest::Target(env.target),
            Inflight::new(ticket, Kind::Target),
        );
    }

    /// Writes `msg` into `partition` of tier `tier` for `bucket`.
    pub fn write_tier<M: Record>(
        &mut self,
        msg: &M,
        env: &Envelope<'_>,
        (tier, bucket, partition): (usize, i64, i32),
        ticket: Ticket,
        now_ms: i64,
    ) {
        let mut headers = user_headers(msg, 5);
        headers.add_number(envelope::DUE_AT, env.due_ms);
        headers.add(envelope::TARGET.as_bytes(), Some(env.target.as_bytes()));
        headers.add_number(envelope::BUCKET, bucket);
        headers.add_number(envelope::ORIGINAL_TIMESTAMP, env.original_timestamp_ms);
        add_occurrence(&mut headers, env);
        self.metrics.tier.write(tier);
        self.send(
            Parts::of(msg, now_ms, Some(partition), headers),
            Dest::Tier(tier),
            Inflight::new(ticket, Kind::Tier),
        );
    }

    /// Sends `msg` to the dead-letter topic byte-for-byte (key, value,
    /// timestamp, headers — but a producer's own `x-delay-error`) with an
    /// `x-delay-error` header saying why ([`Forwarder::dead_letter`] adds
    /// `x-delay-reason`).
    pub fn write_dead_letter<M: Record>(&mut self, msg: &M, error: &EnvelopeError, ticket: Ticket) {
        let mut headers = copy_headers(msg, 1, |key| {
            key != envelope::ERROR.as_bytes()
                && key != envelope::TRUNCATED.as_bytes()
                && key != envelope::REASON.as_bytes()
        });
        headers.add(
            envelope::ERROR.as_bytes(),
            Some(error.to_string().as_bytes()),
        );
        let timestamp_ms = msg.timestamp_ms().unwrap_or_else(now_ms);
        let parts = Parts::of(msg, timestamp_ms, None, headers);
        self.dead_letter(parts, error.reason(), ticket, Kind::DeadLetter);
    }

    /// Sends `parts` to the dead-letter topic with `x-delay-reason: reason`
    /// (every dead letter carries its label, for `kafka-delay dlq`).
    pub(super) fn dead_letter(
        &mut self,
        mut parts: Parts<'_>,
        reason: &str,
        ticket: Ticket,
        kind: Kind,
    ) {
        parts
            .headers
            .add(envelope::REASON.as_bytes(), Some(reason.as_bytes()));
        self.metrics.delivery.dead_letter_attempt(reason);
        let inflight = Inflight {
            ticket,
            kind,
            reason: crate::ops::metrics::DeliveryMetrics::reason_index(reason) as u8,
        };
        self.send(parts, Dest::DeadLetter, inflight);
    }

    /// Produces a failed record again, to the same topic and partition.
    pub fn resend(&mut self, record: OwnedRecord, inflight: Inflight) {
        let opaque = inflight.pack();
        if !self.overflow.is_empty() {
            self.overflow.push_back((record, opaque));
            return;
        }
        self.overflow.push_front((record, opaque));
        self.drain_overflow();
    }

    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.producer().flush(timeout)
    }

    /// Another handle on the same producer (for the rebalance callback).
    pub fn producer_handle(&self) -> PolledProducer<DeliveryContext> {
        self.producer.producer().clone()
    }

    /// The failures reported so far, for [`Failures::handle`](super::failures::Failures::handle).
    pub fn take_failures(&self) -> Vec<Failure> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The count of writes issued, shared with this layer's transaction
    /// ([`crate::delivery::exactly_once`]) only.
    pub(super) fn sent_counter(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// The failures queue, shared with this layer's transaction only (it
    /// aborts when the queue is not empty).
    pub(super) fn failures_handle(&self) -> Arc<Mutex<Vec<Failure>>> {
        self.failures.clone()
    }

    /// True when failed writes wait to be handled.
    pub fn has_failures(&self) -> bool {
        !self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Drops the records waiting for room in librdkafka's queue (exactly-once
    /// mode, after an abort: their sources are read again).
    pub fn discard_unsent(&mut self) {
        self.overflow.clear();
    }
}

impl Drop for Forwarder {
    /// Records still waiting for room in librdkafka's queue are dropped
    /// first (their sources were never acknowledged, so they are read
    /// again); the producer then releases its topic handles before itself.
    fn drop(&mut self) {
        self.overflow.clear();
    }
}

/// Where a record goes.
#[derive(Clone, Copy)]
enum Dest<'a> {
    Target(&'a str),
    Tier(usize),
    DeadLetter,
}

/// A record to send: key and value borrowed from its source, new headers.
pub(super) struct Parts<'a> {
    pub(super) key: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    pub(super) timestamp_ms: i64,
    pub(super) partition: Option<i32>,
    pub(super) headers: OutHeaders,
}

impl<'a> Parts<'a> {
    pub(super) fn of<M: Record>(
        msg: &'a M,
        timestamp_ms: i64,
        partition: Option<i32>,
        headers: OutHeaders,
    ) -> Self {
        Self {
            key: msg.key_bytes(),
            value: msg.value_bytes(),
            timestamp_ms,
            partition,
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::ledger::Book;

    #[test]
    fn the_delivery_opaque_carries_kind_and_reason() {
        let mut book = Book::default();
        let a = book.register("t", 3);
        let ticket = book.take(a, 42).unwrap();
        for kind in [
            Kind::Target,
            Kind::Tier,
            Kind::DeadLetter,
            Kind::TruncatedDeadLetter,
        ] {
            for reason in [0_u8, 7, 12] {
                let inflight = Inflight {
                    ticket,
                    kind,
                    reason,
                };
                assert_eq!(Inflight::unpack(inflight.pack()), inflight);
            }
        }
    }
}
