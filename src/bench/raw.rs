//! The baseline: a plain rdkafka consume→produce copy, the fastest shape
//! measured here (BaseConsumer + ThreadedProducer with a delivery callback
//! counting acknowledgements; DESIGN §6).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

use crate::config::Settings;
use crate::kafka;

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
/// headers); returns records per second from the first to the last
/// acknowledgement.
pub fn copy(settings: &Settings, source: &str, dest: &str, n: u64) -> Result<f64, KafkaError> {
    let mut s = settings.clone();
    s.kafka.group_id = format!("bench-raw-{source}");
    let consumer: BaseConsumer = kafka::consumer_config(&s, &s.kafka.group_id, false)
        .set("enable.auto.offset.store", "true")
        .create()?;
    consumer.subscribe(&[source])?;
    let acked = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Acks> =
        kafka::producer_config(settings).create_with_context(Acks(acked.clone()))?;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        first.get_or_insert_with(Instant::now);
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
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
    let elapsed = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let copied = acked.load(Ordering::Relaxed);
    Ok(if elapsed > 0.0 {
        copied as f64 / elapsed
    } else {
        0.0
    })
}
