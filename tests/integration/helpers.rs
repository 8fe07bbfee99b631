//! Test harness: one real broker per test binary (started here unless
//! `KAFKA_BROKERS` points at one), unique topics and groups per test, the
//! service run in-process, and readers for target and dead-letter topics.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;
use kafka_delay::model::clock::wall_ms as now_ms;
use kafka_delay::ops::health::Health;
use kafka_delay::ops::metrics::Metrics;
use kafka_delay::{kafka, kafka::topics, model::envelope, service};
use kafka_delay_tools::{broker, demo};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;

/// Test tick table: every tier, cascade and roll-over within seconds.
pub const TICKS: [&str; 3] = ["50ms", "500ms", "5s"];

/// Bootstrap address of the shared broker.
pub fn bootstrap() -> String {
    broker::start_for_process().expect("a broker: run `make broker` or set KAFKA_BROKERS")
}

/// The topic of the tier with tick label `label` (`500ms`, `1s`) under
/// `settings` (its name carries the slot order: `<prefix>500ms.s<N>`).
pub fn tier_topic(settings: &Settings, label: &str) -> String {
    let table = settings.tier_table().unwrap();
    table
        .tiers()
        .iter()
        .zip(settings.tier_topics(&table))
        .find(|(t, _)| kafka_delay::config::tick_label(t.tick_ms) == label)
        .map(|(_, name)| name)
        .unwrap_or_else(|| panic!("no tier {label}"))
}

/// A unique topic prefix for one test.
pub fn unique_prefix(test: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}-{}.",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// Local settings under a unique prefix, topics applied, `targets` created.
pub fn setup(test: &str, targets: &[&str]) -> (Settings, Vec<String>) {
    setup_on(&bootstrap(), test, targets, &TICKS)
}

/// [`setup`] on the broker at `bootstrap` with tier `ticks`.
pub fn setup_on(
    bootstrap: &str,
    test: &str,
    targets: &[&str],
    ticks: &[&str],
) -> (Settings, Vec<String>) {
    let prefix = unique_prefix(test);
    let settings = demo::local_settings(bootstrap, &prefix, ticks);
    let targets = apply_topics(&settings, targets);
    (settings, targets)
}

/// Applies the service's topics for `settings` and creates `targets`
/// (names under the settings' prefix); returns the target names.
pub fn apply_topics(settings: &Settings, targets: &[&str]) -> Vec<String> {
    let prefix = settings.topics.tier_prefix.clone();
    let targets: Vec<String> = targets.iter().map(|t| format!("{prefix}{t}")).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reports = topics::apply(settings, &topics::Spec::load(None).unwrap())
            .await
            .unwrap();
        assert!(!topics::has_drift(&reports));
        let warmup = format!("{prefix}warmup");
        let names: Vec<&str> = targets
            .iter()
            .map(String::as_str)
            .chain([warmup.as_str()])
            .collect();
        demo::create_targets(settings, &names, 3).await.unwrap();
    });
    targets
}

/// The service running in a thread; stopped (gracefully) on drop.
pub struct Service {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub metrics: Arc<Metrics>,
}

impl Service {
    /// Starts the service and waits until it joined its consumer group.
    pub fn start(settings: &Settings) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let labels = service::tier_labels(settings).unwrap();
        let metrics = Arc::new(Metrics::new(&labels));
        let health = Arc::new(Health::new(&service::loop_names(settings).unwrap()));
        let (s, flag, m, h) = (
            settings.clone(),
            stop.clone(),
            metrics.clone(),
            health.clone(),
        );
        let handle = std::thread::spawn(move || {
            service::run_with(&s, flag, false, m, h).expect("service runs")
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health.joined() {
            assert!(
                Instant::now() < deadline,
                "service did not join its group in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            stop,
            handle: Some(handle),
            metrics,
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("service thread");
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A test producer's delivery reports: the values of the records the
/// broker did not acknowledge, so a test can tell a record it never
/// published from one the service lost.
#[derive(Default)]
pub struct Acks {
    failed: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, msg)) = result {
            let value = String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned();
            eprintln!(
                "test producer: {value} to {} not acknowledged: {e}",
                msg.topic()
            );
            self.failed.lock().unwrap().push(value);
        }
    }
}

impl Acks {
    /// Values of the records the broker refused or timed out so far.
    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }
}

/// The producer tests publish with.
pub type TestProducer = ThreadedProducer<Acks>;

/// A producer for test records, warmed up: a new idempotent producer's
/// first acknowledgement can take ~1 s on Tansu, which is not the service's
/// lateness.
pub fn producer(settings: &Settings) -> TestProducer {
    let p: TestProducer = kafka::producer_config(settings)
        .create_with_context(Acks::default())
        .unwrap();
    let warmup = format!("{}warmup", settings.topics.tier_prefix);
    p.send(BaseRecord::<str, str>::to(&warmup).payload("warm-up"))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    p
}

/// Where the records with the values in `values` are now: for each value
/// found, the topics holding a copy, read from their start (the ingress,
/// every tier, `targets` and the dead-letter topic). For a failure message
/// that tells a record the live reader missed (it is on its target) from one
/// the service lost (it stopped in the ingress or a tier).
pub fn locate(
    settings: &Settings,
    targets: &[String],
    values: &[String],
) -> HashMap<String, Vec<String>> {
    let table = settings.tier_table().unwrap();
    let topics = [&settings.topics.ingress, &settings.topics.dead_letter]
        .into_iter()
        .cloned()
        .chain(settings.tier_topics(&table))
        .chain(targets.iter().cloned());
    let wanted: std::collections::HashSet<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    for topic in topics {
        kafka_delay_tools::bench::load::scan(settings, &topic, |msg| {
            if let Some(v) = msg.payload().filter(|v| wanted.contains(v)) {
                let places = found
                    .entry(String::from_utf8_lossy(v).into_owned())
                    .or_default();
                if !places.contains(&topic) {
                    places.push(topic.clone());
                }
            }
        })
        .unwrap();
    }
    found
}

/// Publishes one ingress record with `headers` (key, value).
pub fn publish(
    p: &TestProducer,
    settings: &Settings,
    key: Option<&str>,
    value: &str,
    headers: &[(&str, &str)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = BaseRecord::<str, str>::to(&settings.topics.ingress)
        .payload(value)
        .headers(h)
        .timestamp(now_ms());
    if let Some(key) = key {
        record = record.key(key);
    }
    p.send(record).map_err(|(e, _)| e).unwrap();
}

/// A record read by a test, with the reader's clock at arrival.
pub struct Arrival {
    pub msg: OwnedMessage,
    pub seen_ms: i64,
}

impl Arrival {
    pub fn header(&self, key: &str) -> Option<String> {
        header(&self.msg, key)
    }

    pub fn value(&self) -> String {
        String::from_utf8_lossy(self.msg.payload().unwrap_or_default()).into_owned()
    }
}

/// The first value of header `key`.
pub fn header(msg: &OwnedMessage, key: &str) -> Option<String> {
    let headers = msg.headers()?;
    let h = headers.iter().find(|h| h.key == key)?;
    Some(String::from_utf8_lossy(h.value?).into_owned())
}

/// Reads `topics` from the beginning on its own thread, stamping each
/// record with the reader's clock the moment it arrives. Start it before
/// publishing so that lateness is the service's, not the reader's start-up.
pub struct Reader {
    arrivals: Arc<std::sync::Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Reader {
    /// Subscribes and waits (up to 30 s) until partitions are assigned.
    pub fn start(settings: &Settings, topics: &[&str]) -> Self {
        let mut s = settings.clone();
        s.kafka.group_id = format!("{}reader-{}", settings.topics.tier_prefix, topics.join("+"));
        let consumer: BaseConsumer = kafka::consumer_config(&s, &s.kafka.group_id, false)
            .create()
            .unwrap();
        consumer.subscribe(topics).unwrap();
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (out, flag) = (arrivals.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            while !flag.load(Ordering::Relaxed) {
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(20)) {
                    let seen_ms = now_ms();
                    out.lock().unwrap().push(Arrival {
                        msg: msg.detach(),
                        seen_ms,
                    });
                }
                if ready.is_some() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    let _ = ready.take().unwrap().send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("reader got no partitions in 30 s");
        Self {
            arrivals,
            stop,
            handle: Some(handle),
        }
    }

    /// Waits until `expected` distinct records arrived or `timeout` passed,
    /// then `linger` more to catch duplicates; returns everything read.
    pub fn wait(self, expected: usize, timeout: Duration, linger: Duration) -> Vec<Arrival> {
        let distinct = |arrivals: &[Arrival]| {
            arrivals
                .iter()
                .map(|a| a.msg.payload().unwrap_or_default())
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        self.wait_until(|a| distinct(a) >= expected, timeout, linger)
    }

    /// Waits (the reader goes on) until `n` records arrived or `timeout`
    /// passed; returns how many arrived.
    pub fn await_count(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.arrivals.lock().unwrap().len();
            if arrived >= n || Instant::now() >= deadline {
                return arrived;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `done(arrivals)` or `timeout` passed, then `linger`
    /// more; returns everything read.
    pub fn wait_until(
        mut self,
        done: impl Fn(&[Arrival]) -> bool,
        timeout: Duration,
        linger: Duration,
    ) -> Vec<Arrival> {
        let deadline = Instant::now() + timeout;
        while !done(&self.arrivals.lock().unwrap()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(linger);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }
}

/// Reads `topics` until `expected` records arrived (see [`Reader`]).
pub fn read(
    settings: &Settings,
    topics: &[&str],
    expected: usize,
    timeout: Duration,
    linger: Duration,
) -> Vec<Arrival> {
    Reader::start(settings, topics).wait(expected, timeout, linger)
}

/// Publishes records `v0..v{n}` (keys `k0..`) to be delivered to `target`
/// after `delay_ms(i)`.
pub fn publish_numbered(
    p: &TestProducer,
    settings: &Settings,
    target: &str,
    n: usize,
    delay_ms: impl Fn(usize) -> usize,
) {
    for i in 0..n {
        let delay = delay_ms(i).to_string();
        let headers = [("x-delay", delay.as_str()), ("x-target-topic", target)];
        publish(
            p,
            settings,
            Some(&format!("k{i}")),
            &format!("v{i}"),
            &headers,
        );
    }
}

/// Asserts that every one of `v0..v{n}` arrived and none before its due
/// time; returns (worst lateness ms, duplicates).
pub fn assert_all_arrived_never_early(arrivals: &[Arrival], n: usize) -> (i64, usize) {
    let counts = count_values(arrivals);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !counts.contains_key(&format!("v{i}")))
        .collect();
    assert!(missing.is_empty(), "lost records: {missing:?}");
    let mut worst = 0;
    for a in arrivals {
        let scheduled: i64 = a
            .header(envelope::SCHEDULED_AT)
            .expect("scheduled-at")
            .parse()
            .unwrap();
        assert!(
            a.seen_ms >= scheduled,
            "{} arrived {} ms early",
            a.value(),
            scheduled - a.seen_ms
        );
        worst = worst.max(a.seen_ms - scheduled);
    }
    (worst, counts.values().map(|c| c - 1).sum())
}

/// Counts values, to find lost and duplicated records.
pub fn count_values(arrivals: &[Arrival]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for a in arrivals {
        *counts.entry(a.value()).or_insert(0) += 1;
    }
    counts
}

/// Lateness percentile (ms) of a sorted slice.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A plain HTTP/1.1 GET on loopback: (status, whole response).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap()
}
