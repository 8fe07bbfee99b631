//! The baseline: a plain consume→produce copy, the fastest honest shape
//! measured here (BaseConsumer + ThreadedProducer with a delivery callback
//! counting acknowledgements; docs/architecture.md, "The benchmark baseline"), with the service's own client
//! settings (`kafka::consumer_config`, `kafka::producer_config`: the same
//! fetch waits, linger, idempotence and acks) and the service's own produce
//! path (`kafka_delay::kafka::native`: headers read as bytes and copied with
//! `rd_kafka_header_add`, produced with a topic handle looked up once).
//! rdkafka's safe API (`BaseRecord` + `OwnedHeaders`, a topic look-up per
//! send) costs the copy more CPU per record than the service spends
//! (measured in BENCHMARKS.md), so it would flatter the service. It runs as
//! a child process, like the service, so that both are measured alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;
use kafka_delay::kafka;
use kafka_delay::kafka::native::{
    NativeProducer, OutHeaders, Outgoing, PolledProducer, RecordHeaders,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

struct Acks(Arc<AtomicU64>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, _: usize) {
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
    // The service's producer and delivery thread, so that the copy is like for like.
    let producer = PolledProducer::create(&kafka::producer_config(settings), Acks(acked.clone()))?;
    let mut producer = NativeProducer::new(producer);
    // Warm-up, as the service is warm when measured: producer id, metadata.
    let warm_up = Outgoing {
        partition: None,
        key: None,
        value: Some(b"warm-up"),
        timestamp_ms: 0,
        headers: OutHeaders::with_capacity(0),
        opaque: 0,
    };
    producer
        .produce(dest, warm_up)
        .map_err(|(code, _)| KafkaError::MessageProduction(code))?;
    producer.producer().flush(Duration::from_secs(30))?;
    let target = n + 1;
    consumer.subscribe(&[source])?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let view = msg.header_view();
        let mut headers = OutHeaders::with_capacity(view.len());
        for (key, value) in view.iter() {
            headers.add(key, value);
        }
        loop {
            let record = Outgoing {
                partition: Some(msg.partition()),
                key: msg.key(),
                value: msg.payload(),
                timestamp_ms: 0,
                headers,
                opaque: 0,
            };
            match producer.produce(dest, record) {
                Ok(()) => break,
                Err((RDKafkaErrorCode::QueueFull, back)) => {
                    headers = back;
                    producer.producer().poll(Duration::from_millis(1));
                }
                Err((code, _)) => return Err(KafkaError::MessageProduction(code)),
            }
        }
    }
    producer.producer().flush(Duration::from_secs(30))
}
