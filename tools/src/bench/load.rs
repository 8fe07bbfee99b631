//! Load generation and verification for the benchmark: publish numbered
//! records, read a topic back and count lost, duplicate and early records.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

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

/// Collects the numbers of the records the broker refused (their delivery
/// report is an error): they never entered the service, so a reader that
/// misses them has not found a lost record.
#[derive(Default)]
struct Refusals(std::sync::Mutex<Vec<usize>>);

impl ClientContext for Refusals {}

impl ProducerContext for Refusals {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let Err((error, _)) = result {
            let mut refused = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if refused.is_empty() {
                eprintln!("  the broker refused record {index}: {error}");
            }
            refused.push(index);
        }
    }
}

/// Publishes records numbered `range` to `topic`; `due(i)` gives each
/// record's routing header. Returns the numbers the broker refused (a
/// failed delivery report), which [`Verification::discount_refused`] takes
/// out of the lost count.
pub fn publish(
    settings: &Settings,
    topic: &str,
    range: std::ops::Range<usize>,
    shape: Shape,
    target: Option<&str>,
    mut due: impl FnMut(usize) -> Due,
) -> Result<Vec<usize>, KafkaError> {
    let Shape { size, keys, rate } = shape;

    let linger = if rate.is_some() { "1" } else { "20" };
    let producer: ThreadedProducer<Refusals> = kafka::producer_config(settings)
        .set("linger.ms", linger)
        .create_with_context(Refusals::default())?;
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
        let mut record = BaseRecord::<str, [u8], usize>::with_opaque_to(topic, i)
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
    producer.flush(Duration::from_secs(120))?;
    let refused = std::mem::take(
        &mut *producer
            .context()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    if !refused.is_empty() {
        eprintln!(
            "  the broker refused {} of the published records",
            refused.len()
        );
    }
    Ok(refused)
}

/// What reading a target topic back found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verification {
    pub expected: usize,
    pub received: usize,
    /// Published, acknowledged and never read back.
    pub lost: usize,
    /// Refused by the broker at publishing and never read back (not lost:
    /// they never entered the service).
    pub refused: usize,
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
    /// Numbers of the records never read back.
    #[serde(skip)]
    pub missing: Vec<usize>,
    /// Times the live reader was handed a record beyond the next offset of
    /// its partition, and the offsets so skipped (the broker's doing: no
    /// producer here writes control records).
    pub offset_gaps: usize,
    pub skipped_offsets: usize,
    /// Missed by the live reader but found when the topic was read again
    /// from the start after the run: delivered, so not lost.
    pub missed_live: usize,
}

impl Verification {
    /// When records are missing, reads `topic` again from its start to its
    /// end offsets with a new consumer: the ones found there were delivered
    /// and only missed by the live reader ([`Verification::missed_live`]).
    pub fn recheck(&mut self, settings: &Settings, topic: &str) -> Result<(), KafkaError> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let found = read_all(settings, topic, &self.missing)?;
        if !found.is_empty() {
            eprintln!(
                "  {} of the {} records the live reader missed are in {topic} (offset gaps seen live: {}, offsets skipped: {})",
                found.len(),
                self.missing.len(),
                self.offset_gaps,
                self.skipped_offsets
            );
        }
        self.missed_live = found.len();
        self.missing.retain(|i| !found.contains(i));
        self.lost = self.missing.len();
        Ok(())
    }

    /// Takes the records the broker refused at publishing (`refused`, from
    /// [`publish`]) out of the lost count.
    pub fn discount_refused(&mut self, refused: &[usize]) {
        let refused: std::collections::HashSet<usize> = refused.iter().copied().collect();
        let (never, lost) = self
            .missing
            .iter()
            .partition::<Vec<usize>, _>(|i| refused.contains(i));
        self.refused = never.len();
        self.lost = lost.len();
        if !lost.is_empty() {
            let first: Vec<String> = lost.iter().take(20).map(usize::to_string).collect();
            eprintln!("  lost records (first 20 numbers): {}", first.join(" "));
        }
    }

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

/// The numbers among `wanted` found in `topic`, read from the start of every
/// partition to its end offset now.
fn read_all(
    settings: &Settings,
    topic: &str,
    wanted: &[usize],
) -> Result<std::collections::HashSet<usize>, KafkaError> {
    let wanted: std::collections::HashSet<usize> = wanted.iter().copied().collect();
    let mut found = std::collections::HashSet::new();
    scan(settings, topic, |msg| {
        if let Some(i) = msg
            .payload()
            .and_then(index_of)
            .filter(|i| wanted.contains(i))
        {
            found.insert(i);
        }
    })?;
    Ok(found)
}

/// Reads `topic` from the start of every partition to its end offset as of
/// the call, with a consumer of its own (no group offsets are committed),
/// handing each record to `visit`; gives up after 120 s. For checks after a
/// run: where did a record the live reader did not see end up?
///
/// Errors: the metadata, watermark or assignment call failed.
pub fn scan(
    settings: &Settings,
    topic: &str,
    mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    use rdkafka::{Offset, TopicPartitionList};
    let group = format!("kafka-delay-scan-{}", now_ms());
    let consumer: BaseConsumer = kafka::consumer_config(settings, &group, false).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut ends = std::collections::HashMap::new();
    let mut list = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            ends.insert(p.id(), high);
            list.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
        }
    }
    consumer.assign(&list)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        visit(&msg);
        if ends
            .get(&msg.partition())
            .is_some_and(|&end| msg.offset() + 1 >= end)
        {
            ends.remove(&msg.partition());
        }
    }
    Ok(())
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
    // Next offset expected per partition: a record past it means the broker
    // handed the reader a stream with a hole (no control records here).
    let mut next_offset: std::collections::HashMap<i32, i64> = Default::default();
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
        let expected_offset = next_offset.insert(msg.partition(), msg.offset() + 1);
        if let Some(gap) = expected_offset.map(|o| msg.offset() - o).filter(|&g| g > 0) {
            v.offset_gaps += 1;
            v.skipped_offsets += gap as usize;
        }
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
    v.missing = (0..expected).filter(|&i| seen[i] == 0).collect();
    v.lost = v.missing.len();
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
