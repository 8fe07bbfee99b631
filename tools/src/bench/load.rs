//! Load generation and verification for the benchmark: publish numbered
//! records, read a topic back and count lost, duplicate and early records.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use kafka_delay::config::Settings;
use kafka_delay::model::clock::wall_ms as now_ms;
use kafka_delay::{kafka, model::envelope};

/// Payload of record `index`: its zero-padded number, padded to `size` bytes.
pub fn payload(index: usize, size: usize) -> Vec<u8> {
    let mut p = format!("{index:010}").into_bytes();
    p.resize(size.max(10), b'.');
    p
}

fn index_of(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload.get(..10)?).ok()?.parse().ok()
}

/// Shape of a published load.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Payload bytes.
    pub size: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Records per second; None: as fast as possible.
    pub rate: Option<f64>,
}

/// When a published record is due.
#[derive(Debug, Clone, Copy)]
pub enum Due {
    /// `x-delay`, ms.
    Delay(i64),
    /// `x-deliver-at`, epoch ms.
    At(i64),
}

/// Publishes records numbered `range` to `topic`; `due(i)` gives each
/// record's routing header.
pub fn publish(
    settings: &Settings,
    topic: &str,
    range: std::ops::Range<usize>,
    shape: Shape,
    target: Option<&str>,
    mut due: impl FnMut(usize) -> Due,
) -> Result<(), KafkaError> {
    let Shape { size, keys, rate } = shape;

    let linger = if rate.is_some() { "1" } else { "20" };
    let producer: ThreadedProducer<DefaultProducerContext> = kafka::producer_config(settings)
        .set("linger.ms", linger)
        .create()?;
    if rate.is_some() {
        // A new idempotent producer acquires its producer id first (~1 s on
        // Tansu); records stamped meanwhile would look late.
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(1));
    }
    let (start, first) = (Instant::now(), range.start);
    for i in range {
        if let Some(rate) = rate.filter(|_| i % 16 == 0) {
            let due = start + Duration::from_secs_f64((i - first) as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let value = payload(i, size);
        let key = format!("key-{}", i % keys.max(1));
        let mut headers = OwnedHeaders::new_with_capacity(2);
        let (name, when) = match due(i) {
            Due::Delay(ms) => (envelope::DELAY, ms.to_string()),
            Due::At(ms) => (envelope::DELIVER_AT, ms.to_string()),
        };
        headers = headers.insert(Header {
            key: name,
            value: Some(&when),
        });
        if let Some(target) = target {
            headers = headers.insert(Header {
                key: envelope::TARGET_TOPIC,
                value: Some(target),
            });
        }
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(now_ms());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
    producer.flush(Duration::from_secs(120))
}

/// What reading a target topic back found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verification {
    pub expected: usize,
    pub received: usize,
    pub lost: usize,
    pub duplicates: usize,
    /// Seen (reader's clock) before `x-delay-scheduled-at`.
    pub early: usize,
    /// Reader's arrival time minus due time, ms, sorted.
    #[serde(skip)]
    pub lateness_ms: Vec<i64>,
    /// Arrival time (reader's clock, epoch ms) of each distinct record, in
    /// arrival order: the throughput window and the timeline.
    #[serde(skip)]
    pub arrivals_ms: Vec<i64>,
    /// (due time, lateness) of each delivery, ms, in arrival order: the
    /// lateness over time of the sustained shape.
    #[serde(skip)]
    pub due_lateness_ms: Vec<(i64, i64)>,
}

impl Verification {
    /// Records per second between the `k`-th and the last distinct arrival
    /// (0 when fewer than two arrivals follow the warm-up).
    pub fn rate_after(&self, k: usize) -> f64 {
        let a = &self.arrivals_ms;
        if a.len() < k + 2 {
            return 0.0;
        }
        let span_ms = (a[a.len() - 1] - a[k]).max(1);
        (a.len() - 1 - k) as f64 * 1000.0 / span_ms as f64
    }
}

/// A reader started before a run: reads `topic` from the beginning on its
/// own thread and stamps each record on arrival.
pub struct Reader {
    handle: std::thread::JoinHandle<Result<Verification, KafkaError>>,
}

impl Reader {
    /// Starts reading; returns once the reader has its partitions. It stops
    /// when `expected` distinct records arrived (plus a short linger for
    /// duplicates) or nothing arrived for `idle`.
    pub fn start(
        settings: &Settings,
        topic: &str,
        expected: usize,
        idle: Duration,
    ) -> Result<Self, KafkaError> {
        let mut s = settings.clone();
        s.kafka.group_id = format!("bench-reader-{topic}-{}", now_ms());
        let consumer: BaseConsumer =
            kafka::consumer_config(&s, &s.kafka.group_id, false).create()?;
        consumer.subscribe(&[topic])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer.assignment().map_or(0, |a| a.count()) == 0 && Instant::now() < deadline {
            consumer.poll(Duration::from_millis(50));
        }
        let handle = std::thread::spawn(move || read(&consumer, expected, idle));
        Ok(Self { handle })
    }

    /// Waits for the reader to finish.
    pub fn finish(self) -> Result<Verification, KafkaError> {
        self.handle.join().expect("reader thread")
    }
}

fn read(
    consumer: &BaseConsumer,
    expected: usize,
    idle: Duration,
) -> Result<Verification, KafkaError> {
    let mut seen = vec![0_u32; expected];
    let mut v = Verification {
        expected,
        ..Default::default()
    };
    let mut distinct = 0;
    // Diagnosis: KAFKA_DELAY_BENCH_LATE_MS prints every record later than that.
    let late_report: Option<i64> = std::env::var("KAFKA_DELAY_BENCH_LATE_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut last = Instant::now();
    let mut linger: Option<Instant> = None;
    loop {
        if let Some(since) = linger {
            if since.elapsed() > Duration::from_millis(500) {
                break;
            }
        } else if distinct >= expected || last.elapsed() > idle {
            linger = Some(Instant::now());
        }
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = now_ms();
        let Some(i) = msg.payload().and_then(index_of).filter(|&i| i < expected) else {
            continue;
        };
        last = Instant::now();
        v.received += 1;
        seen[i] += 1;
        if seen[i] == 1 {
            distinct += 1;
            v.arrivals_ms.push(now);
        }
        let scheduled = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == envelope::SCHEDULED_AT))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok());
        if let Some(scheduled) = scheduled {
            v.early += usize::from(now < scheduled);
            v.lateness_ms.push(now - scheduled);
            v.due_lateness_ms.push((scheduled, now - scheduled));
            if late_report.is_some_and(|bound| now - scheduled > bound) {
                report_late(&msg, scheduled, now);
            }
        }
    }
    v.lost = seen.iter().filter(|&&c| c == 0).count();
    v.duplicates = seen.iter().map(|&c| c.saturating_sub(1) as usize).sum();
    v.lateness_ms.sort_unstable();
    Ok(v)
}

/// Prints one late record: its due and arrival times (epoch ms), the
/// target write's timestamp and its headers.
fn report_late(msg: &BorrowedMessage<'_>, scheduled: i64, now: i64) {
    let headers: Vec<String> = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    format!(
                        "{}={}",
                        h.key,
                        String::from_utf8_lossy(h.value.unwrap_or_default())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "late {} ms: due {scheduled} arrived {now} written {:?} {headers:?}",
        now - scheduled,
        msg.timestamp()
    );
}

/// Percentile `p` (0–1) of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
