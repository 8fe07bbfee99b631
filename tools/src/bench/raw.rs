//! The baseline: a plain rdkafka consume→produce copy, the fastest shape
//! measured here (BaseConsumer + ThreadedProducer with a delivery callback
//! counting acknowledgements; DESIGN §6), with the service's own client
//! settings (`kafka::consumer_config`, `kafka::producer_config`: the same
//! fetch waits, linger, idempotence and acks). It runs as a child process,
//! like the service, so that both are measured alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;
use kafka_delay::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

struct Acks(Arc<AtomicU64>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Copies `n` records from `source` to `dest` (same partition, key, value,
/// headers), after warming its producer up; returns when all `n` were
/// acknowledged (or after 10 minutes).
pub fn copy(settings: &Settings, source: &str, dest: &str, n: u64) -> Result<(), KafkaError> {
    let group = format!("bench-raw-{source}");
    let consumer: BaseConsumer = kafka::consumer_config(settings, &group, false).create()?;
    let acked = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Acks> =
        kafka::producer_config(settings).create_with_context(Acks(acked.clone()))?;
    // Warm-up, as the service is warm when measured: producer id, metadata.
    producer
        .send(BaseRecord::<[u8], [u8]>::to(dest).payload(b"warm-up".as_slice()))
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))?;
    let target = n + 1;
    consumer.subscribe(&[source])?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let headers = msg.headers().map_or_else(OwnedHeaders::new, |h| h.detach());
        let mut record = BaseRecord::<[u8], [u8]>::to(dest)
            .partition(msg.partition())
            .headers(headers);
        record.key = msg.key();
        record.payload = msg.payload();
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
    producer.flush(Duration::from_secs(30))
}
