//! The clock probe: a small record written to the clock topic every
//! [`PROBE_INTERVAL`], whose `LogAppendTime` stamp bounds the broker's
//! clock from both sides ([`crate::model::clock::BrokerClock`]). Tier
//! writes add lower bounds of their own; the probe gives the first estimate
//! before any loop runs, the upper bound (the estimate's error), and keeps
//! the estimate fresh while nothing is written to a tier.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::message::{DeliveryResult, Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::Settings;
use crate::model::clock::{broker, mono_us, ProbeOutcome};

/// How often a probe is written: one small record per instance per second.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a probe may take before it is given up (its bound would be
/// loose anyway; the next one is sent).
const PROBE_TIMEOUT_MS: &str = "5000";

/// Why the first estimate could not be taken.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot create the clock probe's producer: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("cannot start the clock probe's thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("no acknowledgement from the clock topic {topic} within {waited:?} (service.startup_timeout): the service reads the broker's clock from it before it delivers anything. Fix: check that the topic exists (`kafka-delay topics apply`) and that this instance may write it (`kafka-delay topics acls`){last}")]
    NoEstimate {
        topic: String,
        waited: Duration,
        /// The last delivery error, as `; last error: …`, or empty.
        last: String,
    },
    #[error("the clock topic {topic} stamps records with the producer's time (CreateTime): the broker's clock cannot be read from it. Fix: `kafka-configs --alter --entity-type topics --entity-name {topic} --add-config message.timestamp.type=LogAppendTime`, or delete it and run `kafka-delay topics apply`. A broker that ignores the setting (Tansu) cannot give its clock: set wheel.clock = \"host\" to trust this host's clock instead (docs/guarantees.md, \"Time\")")]
    CreateTime { topic: String },
}

/// The probe's delivery reports: each acknowledged probe is a sample.
#[derive(Default)]
struct ProbeContext {
    /// Probes acknowledged with a `LogAppendTime` stamp.
    acked: AtomicU64,
    /// Probes acknowledged with a `CreateTime` stamp (a misconfigured topic).
    create_time: AtomicBool,
    /// The last delivery error, for the start-up message.
    last_error: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {}

impl ProducerContext for ProbeContext {
    /// The probe's send time, monotonic µs.
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: Box<i64>) {
        let ack_us = mono_us();
        match result {
            Ok(msg) => match msg.timestamp() {
                Timestamp::LogAppendTime(stamp_ms) => {
                    if let ProbeOutcome::Contradicts(gap_ms) =
                        broker().sample_probe(*sent_us, ack_us, stamp_ms)
                    {
                        tracing::warn!(
                            gap_ms,
                            "the broker's clock moved back, or ran more than 1,000 ppm off this host's: the estimate starts again from this probe (records wait longer, none is early)"
                        );
                    }
                    self.acked.fetch_add(1, Ordering::Relaxed);
                }
                _ => self.create_time.store(true, Ordering::Relaxed),
            },
            Err((error, _)) => {
                tracing::debug!(%error, "clock probe not acknowledged");
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(super::describe(error));
            }
        }
    }
}

/// Writes a probe every [`PROBE_INTERVAL`] on a thread of its own, until
/// [`ClockProbe::stop`] (or drop).
pub struct ClockProbe {
    stop: Arc<AtomicBool>,
    context: Arc<ProbeContext>,
    thread: Option<std::thread::JoinHandle<()>>,
    topic: String,
}

impl ClockProbe {
    /// Starts probing `topics.clock`. Errors: the producer cannot be
    /// created (its configuration), or its thread cannot start.
    pub fn start(settings: &Settings) -> Result<Self, ProbeError> {
        let mut config = super::producer_config(settings);
        // Acknowledged by the leader alone and sent at once: the shortest
        // round trip, the tightest bound. The stamp is the leader's either way.
        config
            .set("enable.idempotence", "false")
            .set("acks", "1")
            .set("linger.ms", "0")
            .set("message.timeout.ms", PROBE_TIMEOUT_MS)
            .remove("transactional.id");
        let producer: BaseProducer<ProbeContext> =
            config.create_with_context(ProbeContext::default())?;
        let context = producer.context().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let topic = settings.topics.clock.clone();
        let thread = {
            let (stop, topic) = (stop.clone(), topic.clone());
            std::thread::Builder::new()
                .name("kd-clock".into())
                .spawn(move || probe_loop(&producer, &topic, &stop))?
        };
        Ok(Self {
            stop,
            context,
            thread: Some(thread),
            topic,
        })
    }

    /// Waits for the first acknowledged probe, at most `timeout` (or until
    /// `stop` is set: Ok(false)). Errors: none within `timeout`, or the
    /// clock topic stamps `CreateTime`.
    pub fn wait_first(&self, timeout: Duration, stop: &AtomicBool) -> Result<bool, ProbeError> {
        let deadline = Instant::now() + timeout;
        while self.context.acked.load(Ordering::Relaxed) == 0 {
            if self.context.create_time.load(Ordering::Relaxed) {
                return Err(ProbeError::CreateTime {
                    topic: self.topic.clone(),
                });
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                let last = self
                    .context
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map_or_else(String::new, |e| format!("; last error: {e}"));
                return Err(ProbeError::NoEstimate {
                    topic: self.topic.clone(),
                    waited: timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    /// Stops the thread; its producer is dropped there.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ClockProbe {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One probe per interval: sent, then polled until acknowledged or timed
/// out, so that a probe waits behind no other.
fn probe_loop(producer: &BaseProducer<ProbeContext>, topic: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let record = BaseRecord::<(), [u8], Box<i64>>::with_opaque_to(topic, Box::new(mono_us()))
            .payload(&[][..]);
        match producer.send(record) {
            Ok(()) => {
                while producer.in_flight_count() > 0 && !stop.load(Ordering::Relaxed) {
                    producer.poll(Duration::from_millis(50));
                }
            }
            Err((error, _)) => tracing::debug!(%error, "clock probe not sent"),
        }
        while started.elapsed() < PROBE_INTERVAL && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Nothing of a probe is worth waiting for at shutdown.
    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    producer.poll(Duration::ZERO);
}
