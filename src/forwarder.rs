//! The forwarder: produces tier, target and dead-letter records, and turns
//! broker acknowledgements into offset marks.
//!
//! One idempotent `ThreadedProducer` (`acks=all`); its delivery callback
//! marks the source offset done in the shared [`Book`] or, on failure, queues
//! the record for the consumer loop to retry or dead-letter. Nothing is
//! marked done before the broker acknowledged it, so a crash loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::envelope::{self, Envelope};
use crate::metrics::{Metrics, Source};
use crate::offsets::{Book, Ticket};

/// State shared by the consumer loop, the delivery callback and the
/// rebalance callback.
///
/// Only the consumer-loop thread (which also runs the rebalance callbacks)
/// locks the book, so it is never contended; the producer's thread appends
/// acknowledgements to a list the loop swaps out in one go
/// ([`Shared::book`]).
pub struct Shared {
    /// Offsets of every assigned source partition.
    book: Mutex<Book>,
    /// Acknowledged (assignment id, source offset) pairs not yet applied.
    acks: Mutex<Vec<Ticket>>,
    /// Records whose produce failed, for the consumer loop.
    failures: Mutex<Vec<Failure>>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// New shared state around `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            book: Mutex::new(Book::default()),
            acks: Mutex::new(Vec::with_capacity(4096)),
            failures: Mutex::new(Vec::new()),
            metrics,
        })
    }

    /// Locks the book as it is (enough to take new offsets).
    pub fn book_unacked(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the book with every acknowledgement received so far applied
    /// (a panic elsewhere never loses the offsets).
    pub fn book(&self) -> MutexGuard<'_, Book> {
        let mut book = self.book_unacked();
        let acks = std::mem::take(&mut *self.acks.lock().unwrap_or_else(PoisonError::into_inner));
        for ticket in acks {
            book.done(ticket);
        }
        book
    }

    fn failures(&self) -> MutexGuard<'_, Vec<Failure>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the queued failures.
    pub fn take_failures(&self) -> Vec<Failure> {
        std::mem::take(&mut *self.failures())
    }
}

/// What a produced record is, for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Delivery to the target topic.
    Target,
    /// A write into a tier.
    Tier,
    /// A dead letter.
    DeadLetter,
}

/// The source record a produce came from (its [`Ticket`]) and what the
/// produce is. Travels as the producer's delivery opaque, packed into one
/// `usize`: no allocation per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    pub ticket: Ticket,
    pub kind: Kind,
}

#[cfg(not(target_pointer_width = "64"))]
compile_error!("kafka-delay packs delivery opaques into 64-bit words");

impl Inflight {
    fn pack(self) -> usize {
        let tag = match self.kind {
            Kind::Target => 0,
            Kind::Tier => 1,
            Kind::DeadLetter => 2,
        };
        self.ticket.with_tag(tag) as usize
    }

    fn unpack(word: usize) -> Self {
        let (ticket, tag) = Ticket::from_tagged(word as u64);
        let kind = match tag {
            0 => Kind::Target,
            1 => Kind::Tier,
            _ => Kind::DeadLetter,
        };
        Self { ticket, kind }
    }
}

/// A produce the broker did not acknowledge.
pub struct Failure {
    pub inflight: Inflight,
    pub record: OwnedMessage,
    pub error: KafkaError,
}

impl Failure {
    /// True when retrying cannot help: the target is missing, forbidden or
    /// refuses the record.
    pub fn is_permanent(&self) -> bool {
        use RDKafkaErrorCode as C;
        matches!(
            self.error.rdkafka_error_code(),
            Some(
                C::UnknownTopicOrPartition
                    | C::UnknownTopic
                    | C::TopicAuthorizationFailed
                    | C::MessageSizeTooLarge
                    | C::InvalidRecord
                    | C::InvalidTopic
                    | C::MessageBatchTooLarge
            )
        )
    }
}

/// The producer's context: acknowledgements mark offsets done.
pub struct DeliveryContext {
    shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let inflight = Inflight::unpack(opaque);
        match result {
            Ok(_) => {
                if inflight.kind == Kind::Target {
                    self.shared.metrics.delivered();
                }
                self.shared
                    .acks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(inflight.ticket);
            }
            Err((error, message)) => {
                let code = error
                    .rdkafka_error_code()
                    .map_or_else(|| "unknown".to_owned(), |c| format!("{c:?}"));
                self.shared.metrics.produce_error(&code);
                self.shared.failures().push(Failure {
                    inflight,
                    record: message.detach(),
                    error: error.clone(),
                });
            }
        }
    }
}

/// How long a negative "target exists" answer is trusted.
const MISSING_TARGET_TTL: Duration = Duration::from_secs(10);
/// Timeout of one metadata request for a target topic.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Produces records for the consumer loop.
pub struct Forwarder {
    producer: ThreadedProducer<DeliveryContext>,
    shared: Arc<Shared>,
    dead_letter: String,
    tier_topics: Vec<String>,
    targets: HashMap<String, (bool, Instant)>,
    /// The last target found to exist: most records go to few topics.
    last_target: String,
}

/// Writes `value` as ASCII decimal into a header.
fn number(headers: OwnedHeaders, key: &str, value: i64) -> OwnedHeaders {
    let mut buf = itoa::Buffer::new();
    headers.insert(Header {
        key,
        value: Some(buf.format(value)),
    })
}

/// Copies `msg`'s headers, leaving out the ones the service owns.
fn user_headers<M: Message>(msg: &M, extra: usize) -> OwnedHeaders {
    copy_headers(msg, extra, |key| !envelope::is_owned_header(key))
}

/// Copies the headers of `msg` whose key passes `keep`, with room for
/// `extra` more.
fn copy_headers<M: Message>(msg: &M, extra: usize, keep: impl Fn(&str) -> bool) -> OwnedHeaders {
    let count = msg.headers().map_or(0, |h| h.count());
    let mut out = OwnedHeaders::new_with_capacity(count + extra);
    if let Some(headers) = msg.headers() {
        for h in headers.iter() {
            if keep(h.key) {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    out
}

impl Forwarder {
    /// Creates the producer from `config`.
    pub fn new(
        config: &rdkafka::ClientConfig,
        shared: Arc<Shared>,
        dead_letter: String,
        tier_topics: Vec<String>,
    ) -> Result<Self, KafkaError> {
        let producer = config.create_with_context(DeliveryContext {
            shared: shared.clone(),
        })?;
        Ok(Self {
            producer,
            shared,
            dead_letter,
            tier_topics,
            targets: HashMap::new(),
            last_target: String::new(),
        })
    }

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], usize>) {
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, back)) => {
                    // Not accepted locally (e.g. too large): hand it to the
                    // failure path like a failed delivery.
                    let inflight = Inflight::unpack(back.delivery_opaque);
                    let owned = OwnedMessage::new(
                        back.payload.map(<[u8]>::to_vec),
                        back.key.map(<[u8]>::to_vec),
                        back.topic.to_owned(),
                        rdkafka::Timestamp::from(back.timestamp.unwrap_or(0)),
                        back.partition.unwrap_or(-1),
                        0,
                        back.headers,
                    );
                    self.shared.metrics.produce_error("local");
                    self.shared.failures().push(Failure {
                        inflight,
                        record: owned,
                        error,
                    });
                    return;
                }
            }
        }
    }

    /// Delivers `msg` to its target now: routing and internal headers are
    /// removed, `x-delay-scheduled-at` and `x-delay-original-timestamp` added,
    /// the timestamp is the delivery time.
    pub fn to_target<M: Message>(
        &self,
        msg: &M,
        env: &Envelope<'_>,
        from: Source,
        inflight: Inflight,
        now_ms: i64,
    ) {
        let headers = user_headers(msg, 2);
        let headers = number(headers, envelope::SCHEDULED_AT, env.due_ms);
        let headers = number(
            headers,
            envelope::ORIGINAL_TIMESTAMP,
            env.original_timestamp_ms,
        );
        self.shared.metrics.forwarded(from, now_ms - env.due_ms);
        self.send(record(msg, env.target, inflight, headers, now_ms));
    }

    /// Writes `msg` into `partition` of tier `tier` for `bucket`.
    pub fn to_tier<M: Message>(
        &self,
        msg: &M,
        env: &Envelope<'_>,
        (tier, bucket, partition): (usize, i64, i32),
        inflight: Inflight,
        now_ms: i64,
    ) {
        let headers = user_headers(msg, 4);
        let headers = number(headers, envelope::DUE_AT, env.due_ms);
        let headers = headers.insert(Header {
            key: envelope::TARGET,
            value: Some(env.target),
        });
        let headers = number(headers, envelope::BUCKET, bucket);
        let headers = number(
            headers,
            envelope::ORIGINAL_TIMESTAMP,
            env.original_timestamp_ms,
        );
        self.shared.metrics.tier_write(tier);
        let topic = &self.tier_topics[tier];
        self.send(record(msg, topic, inflight, headers, now_ms).partition(partition));
    }

    /// Sends `msg` unchanged to the dead-letter topic with an `x-delay-error`
    /// header saying `why`.
    pub fn to_dead_letter<M: Message>(&self, msg: &M, reason: &str, why: &str, inflight: Inflight) {
        let headers = copy_headers(msg, 1, |_| true).insert(Header {
            key: envelope::ERROR,
            value: Some(why),
        });
        self.shared.metrics.dead_lettered(reason);
        let timestamp = msg.timestamp().to_millis().unwrap_or(0);
        let inflight = Inflight {
            kind: Kind::DeadLetter,
            ..inflight
        };
        self.send(record(msg, &self.dead_letter, inflight, headers, timestamp));
    }

    /// Produces a failed record again, to the same topic and partition.
    pub fn retry(&self, failure: Failure) {
        let msg = &failure.record;
        let headers = msg.headers().cloned().unwrap_or_default();
        let timestamp = msg.timestamp().to_millis().unwrap_or(0);
        let mut rec = record(msg, msg.topic(), failure.inflight, headers, timestamp);
        if failure.inflight.kind != Kind::Target {
            rec = rec.partition(msg.partition());
        }
        self.send(rec);
    }

    /// Whether `topic` exists, from a cached metadata lookup (positive
    /// answers are kept until a delivery fails, negative ones for 10 s).
    pub fn target_exists(&mut self, topic: &str) -> bool {
        if topic == self.last_target {
            return true;
        }
        if let Some(&(exists, checked)) = self.targets.get(topic) {
            if exists {
                topic.clone_into(&mut self.last_target);
            }
            if exists || checked.elapsed() < MISSING_TARGET_TTL {
                return exists;
            }
        }
        let exists = match self
            .producer
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
            Err(error) => {
                tracing::warn!(%topic, %error, "metadata lookup failed; assuming the target exists");
                true
            }
        };
        self.targets
            .insert(topic.to_owned(), (exists, Instant::now()));
        exists
    }

    /// The last target found to exist (and so already accepted by the
    /// target policy); empty at first.
    pub fn last_target(&self) -> &str {
        &self.last_target
    }

    /// Forgets what is known of `topic` (after a failed delivery).
    pub fn forget_target(&mut self, topic: &str) {
        self.targets.remove(topic);
        self.last_target.clear();
    }

    /// Another handle on the same producer (for the rebalance callback).
    pub fn producer_handle(&self) -> ThreadedProducer<DeliveryContext> {
        self.producer.clone()
    }

    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Records handed to librdkafka and not yet acknowledged.
    pub fn queued(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

fn record<'a, M: Message>(
    msg: &'a M,
    topic: &'a str,
    inflight: Inflight,
    headers: OwnedHeaders,
    timestamp_ms: i64,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let mut rec = BaseRecord::with_opaque_to(topic, inflight.pack())
        .headers(headers)
        .timestamp(timestamp_ms);
    rec.key = msg.key();
    rec.payload = msg.payload();
    rec
}
