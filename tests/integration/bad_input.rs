//! Bad input never blocks, never crashes, never loses: each hostile or
//! careless record lands in the dead-letter topic with its reason (or is
//! delivered, where it is valid), the records behind it on the same
//! partition are delivered, and the service stays up.

use std::time::Duration;

use kafka_delay::kafka::native::{self, NativeProducer, OutHeaders, PolledProducer};
use kafka_delay::model::clock::wall_ms as now_ms;
use kafka_delay::model::envelope;
use rdkafka::producer::{DefaultProducerContext, Producer};
use rdkafka::Message;

use crate::helpers::*;

type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// Publishes one record with byte-exact header keys and values.
fn publish_raw(
    p: &TestProducer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    value: &[u8],
    headers: &[RawHeader<'_>],
) {
    publish_raw_at(p, topic, (partition, now_ms()), key, value, headers);
}

/// [`publish_raw`] with the record timestamp given.
fn publish_raw_at(
    p: &TestProducer,
    topic: &str,
    (partition, timestamp_ms): (Option<i32>, i64),
    key: &[u8],
    value: &[u8],
    headers: &[RawHeader<'_>],
) {
    let mut out = OutHeaders::with_capacity(headers.len());
    for (k, v) in headers {
        out.add(k, *v);
    }
    let record = native::Outgoing {
        partition,
        key: Some(key),
        value: Some(value),
        timestamp_ms,
        headers: out,
        opaque: 0,
    };
    // Records published through `p` before this one stay ahead of it: they
    // are acknowledged before this producer writes.
    p.flush(Duration::from_secs(10)).unwrap();
    let config = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .clone();
    let polled = PolledProducer::create(&config, DefaultProducerContext).unwrap();
    let mut native = NativeProducer::new(polled.clone());
    native.produce(topic, record).map_err(|(e, _)| e).unwrap();
    drop(native);
    polled.flush(Duration::from_secs(10)).unwrap();
}

/// The dead letters, by value.
fn dead_letters(settings: &kafka_delay::config::Settings, n: usize) -> Vec<Arrival> {
    read(
        settings,
        &[&settings.topics.dead_letter],
        n,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
}

fn error_of(a: &Arrival) -> String {
    a.header(envelope::ERROR).expect("x-delay-error")
}

#[test]
fn header_bytes_pass_through_and_lookalike_keys_are_dead_lettered() {
    let (settings, targets) = setup("bytes", &["target"]);
    let t = targets[0].as_bytes();
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    let bad_key: &[u8] = &[0xff, 0xfe, b'k'];
    // A non-UTF-8 key (not a routing header): delivered, key intact.
    publish_raw(
        &producer,
        &settings.topics.ingress,
        Some(0),
        b"k",
        b"binary-key",
        &[
            (b"x-delay", Some(b"100")),
            (b"x-target-topic", Some(t)),
            (bad_key, Some(&[0, 1, 2])),
        ],
    );
    // Lookalikes of routing headers: dead letters, byte-for-byte.
    let cases: [(&str, &[u8]); 4] = [
        ("nul", b"x-delay\0zz"),
        ("case", b"X-Delay"),
        ("space", b"x-delay "),
        ("target-case", b"X-Target-Topic"),
    ];
    for (name, key) in cases {
        publish_raw(
            &producer,
            &settings.topics.ingress,
            Some(0),
            b"k",
            name.as_bytes(),
            &[(key, Some(b"5")), (b"x-target-topic", Some(t))],
        );
    }
    // Epoch seconds in x-deliver-at; a producer's own x-delay-error.
    publish_raw(
        &producer,
        &settings.topics.ingress,
        Some(0),
        b"k",
        b"seconds",
        &[
            (b"x-deliver-at", Some(b"1700000000")),
            (b"x-target-topic", Some(t)),
        ],
    );
    publish_raw(
        &producer,
        &settings.topics.ingress,
        Some(0),
        b"k",
        b"forged-error",
        &[
            (b"x-delay-error", Some(b"forged")),
            (b"x-delay", Some(b"-1")),
            (b"x-target-topic", Some(t)),
        ],
    );
    // Records behind them on the same partition.
    for i in 0..10 {
        let v = format!("after-{i}");
        publish_raw(
            &producer,
            &settings.topics.ingress,
            Some(0),
            b"k",
            v.as_bytes(),
            &[(b"x-delay", Some(b"50")), (b"x-target-topic", Some(t))],
        );
    }
    let delivered = read(
        &settings,
        &[&targets[0]],
        11,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    let binary = delivered
        .iter()
        .find(|a| a.value() == "binary-key")
        .expect("delivered");
    let view = native::RecordHeaders::header_view(&binary.msg);
    assert!(
        view.iter()
            .any(|(k, v)| k == bad_key && v == Some(&[0, 1, 2][..])),
        "a non-UTF-8 header key must pass through byte-for-byte"
    );
    for i in 0..10 {
        assert!(
            delivered.iter().any(|a| a.value() == format!("after-{i}")),
            "after-{i} lost"
        );
    }

    let dead = dead_letters(&settings, 6);
    for (name, key) in cases {
        let letter = dead
            .iter()
            .find(|a| a.value() == name)
            .unwrap_or_else(|| panic!("{name} not dead-lettered"));
        assert!(
            error_of(letter).contains("is not exactly"),
            "{name}: {}",
            error_of(letter)
        );
        let view = native::RecordHeaders::header_view(&letter.msg);
        assert!(
            view.iter().any(|(k, _)| k == key),
            "{name}: key not kept byte-for-byte"
        );
    }
    let seconds = dead
        .iter()
        .find(|a| a.value() == "seconds")
        .expect("seconds");
    assert!(
        error_of(seconds).contains("epoch seconds"),
        "{}",
        error_of(seconds)
    );
    let forged = dead
        .iter()
        .find(|a| a.value() == "forged-error")
        .expect("forged");
    let errors: Vec<_> = native::RecordHeaders::header_view(&forged.msg)
        .iter()
        .filter(|(k, _)| *k == envelope::ERROR.as_bytes())
        .map(|(_, v)| String::from_utf8_lossy(v.unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(errors.len(), 1, "exactly one x-delay-error: {errors:?}");
    assert!(errors[0].contains("negative"), "{errors:?}");
}

/// Headers librdkafka cannot parse (more than 100,000) would read as "no
/// headers" — with a default target, delivered at once, delay ignored —
/// and a negative record timestamp would be written into a tier and
/// refused there as corrupt: both are dead-lettered at ingress, with their
/// reason, and the record behind them is delivered.
#[test]
fn unparsable_headers_and_negative_timestamps_are_dead_lettered() {
    let (mut settings, targets) = setup("unparsable", &["target"]);
    let t = targets[0].as_bytes();
    settings.topics.default_target = Some(targets[0].clone());
    let _service = Service::start(&settings);
    let reader = Reader::start(&settings, &[&targets[0]]);
    let producer = producer(&settings);
    let ingress = settings.topics.ingress.as_str();
    let mut headers: Vec<RawHeader<'_>> = vec![(b"x-delay", Some(b"600000"))];
    headers.extend(std::iter::repeat_n((b"h".as_slice(), None), 100_000));
    publish_raw(
        &producer,
        ingress,
        Some(0),
        b"k",
        b"too-many-headers",
        &headers,
    );
    let before_1970 = [
        (b"x-delay".as_slice(), Some(b"1000".as_slice())),
        (b"x-target-topic", Some(t)),
    ];
    publish_raw_at(
        &producer,
        ingress,
        (Some(0), -5),
        b"k",
        b"before-1970",
        &before_1970,
    );
    publish_raw(
        &producer,
        ingress,
        Some(0),
        b"k",
        b"after",
        &[(b"x-delay", Some(b"0")), (b"x-target-topic", Some(t))],
    );
    let dead = dead_letters(&settings, 2);
    let arrived = reader.wait(1, Duration::from_secs(20), Duration::from_secs(2));
    let values: Vec<String> = arrived.iter().map(Arrival::value).collect();
    assert_eq!(values, vec!["after"], "only the valid record is delivered");
    let by_value = |v: &str| {
        dead.iter()
            .find(|a| a.value() == v)
            .unwrap_or_else(|| panic!("{v} dead-lettered"))
    };
    let headers_error = error_of(by_value("too-many-headers"));
    assert!(
        headers_error.contains("headers cannot be parsed"),
        "{headers_error}"
    );
    let ts_error = error_of(by_value("before-1970"));
    assert!(ts_error.contains("timestamp is negative"), "{ts_error}");
    assert_eq!(
        by_value("before-1970").header("x-delay").as_deref(),
        Some("1000")
    );
}

#[test]
fn records_too_large_for_their_target_are_dead_lettered_and_never_block() {
    let (settings, targets) = setup("large", &["target"]);
    let target = &targets[0];
    // A target and a dead-letter topic that take at most 200 000 bytes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let small = format!("{target}-small");
    runtime.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = kafka_delay::kafka::admin_config(&settings)
            .create()
            .unwrap();
        let topic =
            NewTopic::new(&small, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "200000");
        admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .unwrap();
    });
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    let big = vec![b'x'; 199_950];
    let control = vec![1_u8; 170_000];
    publish_raw(
        &producer,
        &settings.topics.ingress,
        Some(0),
        b"k",
        &big,
        &[(b"x-target-topic", Some(small.as_bytes()))],
    );
    // An invalid delay with a huge header of control bytes: the error must
    // not repeat it.
    publish_raw(
        &producer,
        &settings.topics.ingress,
        Some(0),
        b"k",
        b"control",
        &[
            (b"x-delay", Some(&control)),
            (b"x-target-topic", Some(target.as_bytes())),
        ],
    );
    for i in 0..5 {
        let v = format!("after-{i}");
        publish_raw(
            &producer,
            &settings.topics.ingress,
            Some(0),
            b"k",
            v.as_bytes(),
            &[(b"x-target-topic", Some(target.as_bytes()))],
        );
    }
    let delivered = read(
        &settings,
        &[target],
        5,
        Duration::from_secs(30),
        Duration::ZERO,
    );
    assert_eq!(
        delivered.len(),
        5,
        "the records behind the large ones are delivered"
    );
    let dead = dead_letters(&settings, 2);
    let control_letter = dead
        .iter()
        .find(|a| a.value() == "control")
        .expect("control dead-lettered");
    assert!(
        error_of(control_letter).len() < 300,
        "error header repeats the value"
    );
    let large = dead
        .iter()
        .find(|a| a.value().starts_with("xxx"))
        .expect("large record dead-lettered");
    assert!(error_of(large).contains("too large"), "{}", error_of(large));
    assert_eq!(
        large.msg.payload().map(<[u8]>::len),
        Some(big.len()),
        "dead letter is byte-for-byte"
    );
}

#[test]
fn a_zstd_batch_from_another_client_is_delivered() {
    let (settings, targets) = setup("zstd", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let producer: TestProducer = kafka_delay::kafka::producer_config(&settings)
        .set("compression.type", "zstd")
        .create_with_context(Acks::default())
        .unwrap();
    for i in 0..20 {
        publish(
            &producer,
            &settings,
            Some("k"),
            &format!("z{i}"),
            &[("x-delay", "200"), ("x-target-topic", target)],
        );
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let delivered = read(
        &settings,
        &[target],
        20,
        Duration::from_secs(30),
        Duration::ZERO,
    );
    assert_eq!(delivered.len(), 20);
}

#[test]
fn thousands_of_missing_targets_do_not_delay_valid_records() {
    let (settings, targets) = setup("missing", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let n = 100;
    for i in 0..4_000 {
        let missing = format!("{}nope-{i}", settings.topics.tier_prefix);
        publish(
            &producer,
            &settings,
            Some("m"),
            &format!("m{i}"),
            &[("x-target-topic", &missing)],
        );
        if i % 40 == 0 {
            let v = format!("v{}", i / 40);
            publish(
                &producer,
                &settings,
                Some(&v),
                &v,
                &[("x-delay", "500"), ("x-target-topic", target)],
            );
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::ZERO);
    let (worst, _) = assert_all_arrived_never_early(&arrivals, n);
    println!("4 000 missing targets: worst lateness of valid records {worst} ms");
    assert!(
        worst < 3_000,
        "valid records {worst} ms late behind missing targets"
    );
    let dead = dead_letters(&settings, 4_000);
    assert_eq!(dead.len(), 4_000);
    assert!(error_of(&dead[0]).contains("does not exist"));
}

#[test]
fn forged_tier_records_are_dead_lettered_without_blocking_their_partition() {
    let (settings, targets) = setup("forged", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let producer = producer(&settings);
    // The 500 ms tier: 14 slots; partition 0 serves slot 0.
    let tier = tier_topic(&settings, "500ms");
    let now = now_ms();
    let far_bucket = (now / 500 + 14 * 1_000) / 14 * 14;
    let due = |b: i64| (b * 500 + 1).to_string();
    let forged: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "far-bucket",
            vec![
                ("x-delay-due-at".into(), due(far_bucket)),
                ("x-delay-target".into(), target.clone()),
                ("x-delay-bucket".into(), far_bucket.to_string()),
                ("x-delay-original-timestamp".into(), now.to_string()),
            ],
        ),
        (
            "internal-target",
            vec![
                ("x-delay-due-at".into(), now.to_string()),
                ("x-delay-target".into(), "__consumer_offsets".into()),
                ("x-delay-bucket".into(), (now / 500 / 14 * 14).to_string()),
                ("x-delay-original-timestamp".into(), now.to_string()),
            ],
        ),
        (
            "five-years",
            vec![
                (
                    "x-delay-due-at".into(),
                    (now + 5 * 365 * 86_400_000).to_string(),
                ),
                ("x-delay-target".into(), target.clone()),
                ("x-delay-bucket".into(), (now / 500 / 14 * 14).to_string()),
                ("x-delay-original-timestamp".into(), now.to_string()),
            ],
        ),
    ];
    for (name, headers) in &forged {
        let raw: Vec<RawHeader<'_>> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
            .collect();
        publish_raw(&producer, &tier, Some(0), b"k", name.as_bytes(), &raw);
    }
    // A genuine record routed through the same tier partition afterwards.
    let bucket = (now_ms() / 500 + 3) / 14 * 14 + 14;
    let deliver_at = (bucket * 500 + 10).to_string();
    publish(
        &producer,
        &settings,
        Some("k"),
        "genuine",
        &[("x-deliver-at", &deliver_at), ("x-target-topic", target)],
    );
    let dead = dead_letters(&settings, forged.len());
    for (name, _) in &forged {
        let letter = dead
            .iter()
            .find(|a| a.value() == *name)
            .unwrap_or_else(|| panic!("{name} not dead-lettered"));
        println!("{name}: {}", error_of(letter));
    }
    let delivered = read(
        &settings,
        &[target],
        1,
        Duration::from_secs(30),
        Duration::ZERO,
    );
    assert_eq!(
        delivered.first().map(Arrival::value).as_deref(),
        Some("genuine")
    );
}

/// A record written for the *next* turn of a slot while its current turn
/// drains (a forger: routing never writes it; the horizon check lets it
/// through) must not hold the partition: the current turn's record behind
/// it is delivered on time, and it is delivered at its own due time.
#[test]
fn a_record_of_the_next_turn_does_not_hold_back_the_current_one() {
    // Asserts lateness: not beside the scenarios that load the machine.
    let _heavy = crate::faults::heavy();
    let (settings, targets) = setup("nextturn", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let reader = Reader::start(&settings, &[target]);
    let producer = producer(&settings);
    // The 500 ms tier; partition 0 serves slot 0.
    let tier = tier_topic(&settings, "500ms");
    let table = settings.tier_table().unwrap();
    let t = &table.tiers()[1];
    let (slots, tick) = (t.slots, t.tick_ms);
    let now = now_ms();
    let current = ((now + 400) / tick / slots + 1) * slots;
    // Sleep into the current turn: released (`lead` before its bucket).
    let released_at = current * tick - t.lead_ms;
    std::thread::sleep(Duration::from_millis((released_at - now + 30) as u64));
    let forge = |name: &str, bucket: i64, due: i64| {
        let headers = [
            ("x-delay-due-at", due.to_string()),
            ("x-delay-target", target.clone()),
            ("x-delay-bucket", bucket.to_string()),
            ("x-delay-original-timestamp", now.to_string()),
        ];
        let raw: Vec<RawHeader<'_>> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
            .collect();
        publish_raw(&producer, &tier, Some(0), b"k", name.as_bytes(), &raw);
    };
    let next_due = (current + slots) * tick + 1;
    let current_due = current * tick + 300;
    forge("next-turn", current + slots, next_due);
    forge("current-turn", current, current_due);
    let arrivals = reader.wait(2, Duration::from_secs(20), Duration::from_secs(1));
    let got: Vec<String> = arrivals.iter().map(Arrival::value).collect();
    let dead: Vec<String> = read(
        &settings,
        &[&settings.topics.dead_letter],
        0,
        Duration::ZERO,
        Duration::from_secs(2),
    )
    .iter()
    .map(|a| format!("{}: {:?}", a.value(), a.header(envelope::ERROR)))
    .collect();
    println!("delivered {got:?}, dead letters {dead:?}");
    for (name, due) in [("current-turn", current_due), ("next-turn", next_due)] {
        let a = arrivals
            .iter()
            .find(|a| a.value() == name)
            .unwrap_or_else(|| panic!("{name} not delivered"));
        let late = a.seen_ms - due;
        println!("{name}: {late} ms late");
        assert!(late >= 0, "{name} delivered {} ms early", -late);
        assert!(
            late < 2_000,
            "{name} delivered {late} ms late (a turn is {} ms)",
            slots * tick
        );
    }
}

#[test]
fn a_refusing_dead_letter_topic_stops_the_partition_until_it_accepts() {
    use crate::faults::{heavy, wait_until, Instance};
    let _heavy = heavy();
    let (mut settings, targets) = setup("dlqgone", &["target"]);
    let target = &targets[0];
    settings
        .kafka
        .producer_properties
        .insert("topic.metadata.propagation.max.ms".into(), "1000".into());
    let instance = Instance::start("A", &settings);
    instance.wait_ready(Duration::from_secs(30));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: rdkafka::admin::AdminClient<_> = kafka_delay::kafka::admin_config(&settings)
        .create()
        .unwrap();
    let options = rdkafka::admin::AdminOptions::new();
    runtime
        .block_on(admin.delete_topics(&[&settings.topics.dead_letter], &options))
        .unwrap();
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    publish_raw(
        &producer,
        &settings.topics.ingress,
        Some(0),
        b"k",
        b"bad",
        &[(b"x-delay", Some(b"soon"))],
    );
    for i in 0..5 {
        let v = format!("v{i}");
        publish_raw(
            &producer,
            &settings.topics.ingress,
            Some(0),
            b"k",
            v.as_bytes(),
            &[(b"x-target-topic", Some(target.as_bytes()))],
        );
    }
    // Blocked, not spinning, not skipping: readiness goes false.
    let blocked = wait_until(Duration::from_secs(30), || {
        instance
            .metric("kafka_delay_partitions_blocked{source=\"ingress\"}")
            .is_some_and(|n| n >= 1.0)
    });
    assert!(blocked, "the partition was not blocked");
    assert!(
        wait_until(Duration::from_secs(10), || http_get(
            &instance.http,
            "/readyz"
        )
        .is_some_and(|(s, _)| s == 503)),
        "readiness must fail while the dead-letter topic refuses records"
    );
    // The dead-letter topic comes back: the dead letter lands, nothing is lost.
    runtime.block_on(async {
        let topic = rdkafka::admin::NewTopic::new(
            &settings.topics.dead_letter,
            3,
            rdkafka::admin::TopicReplication::Fixed(1),
        );
        admin.create_topics(&[topic], &options).await.unwrap();
    });
    let dead = dead_letters(&settings, 1);
    assert_eq!(dead.first().map(Arrival::value).as_deref(), Some("bad"));
    let arrivals = reader.wait(5, Duration::from_secs(60), Duration::ZERO);
    assert_all_arrived_never_early(&arrivals, 5);
    assert!(
        wait_until(Duration::from_secs(30), || http_get(
            &instance.http,
            "/readyz"
        )
        .is_some_and(|(s, _)| s == 200)),
        "ready again once the dead-letter topic accepts records"
    );
}
