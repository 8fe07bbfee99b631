//! Never stuck: every record is delivered, never early, within a bound,
//! whatever a rebalance, the broker, a clock or a crash does (docs/guarantees.md).
//! Each scenario prints its account (sent, delivered, lost, early,
//! duplicates, lateness) and fails on a loss, an early record or lateness
//! beyond its bound.

use std::time::Duration;

use kafka_delay::model::clock::wall_ms as now_ms;

use crate::faults::*;
use crate::helpers::*;

/// Lateness bound outside failover: generous for a loaded CI machine.
const QUIET_BOUND_MS: i64 = 3_000;

/// Publishes `n` numbered records at `rate` per second from a thread
/// (records flow while faults happen); returns when all were acknowledged.
fn publish_paced(
    settings: &kafka_delay::config::Settings,
    target: &str,
    n: usize,
    rate: f64,
    delay_ms: impl Fn(usize) -> usize + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let (settings, target) = (settings.clone(), target.to_owned());
    std::thread::spawn(move || {
        use rdkafka::producer::Producer;
        let producer = producer(&settings);
        let start = std::time::Instant::now();
        for i in 0..n {
            let at = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let delay = delay_ms(i).to_string();
            publish(
                &producer,
                &settings,
                Some(&format!("k{i}")),
                &format!("v{i}"),
                &[("x-delay", &delay), ("x-target-topic", &target)],
            );
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    })
}

#[test]
fn a_partition_that_returns_to_the_same_instance_is_fetched_again() {
    let _heavy = heavy();
    // Tier 0 has a 1 s tick and 64 slots: a missed turn costs 64 s.
    let ticks = ["1s", "1m"];
    let (settings, targets) = setup_on(&bootstrap(), "return", &["target"], &ticks);
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target]);
    // Records flow (and wait in every tier, their partitions paused until
    // their release) through both rebalances.
    let n = 1_200;
    let publisher = publish_paced(&settings, target, n, 100.0, |i| 3_000 + (i * 41) % 22_000);
    std::thread::sleep(Duration::from_secs(3));
    let mut b = Instance::start("B", &settings);
    b.wait_ready(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(4));
    // B leaves: its partitions return to A, some still paused by A.
    b.terminate();
    publisher.join().unwrap();
    let arrivals = reader.wait(n, Duration::from_secs(45), Duration::from_secs(1));
    // A rebalance costs the moved partitions a few seconds.
    Account::of(&settings, target, &arrivals, n).assert_ok("partition returns", 6_000);
}

#[test]
fn two_instances_release_every_tier_on_time() {
    let _heavy = heavy();
    // The test ticks (50 ms, 500 ms, 5 s) and two instances, each owning
    // about half of every tier, records spread over the tiers. A slot is
    // released by resuming its partition; librdkafka does not wake an idle
    // broker thread on a resume (it sleeps up to 1 s), and with few
    // partitions per instance a loop's broker thread is often idle: without
    // the service's wake-up (`watcher::wake_loop`) the records behind a
    // released head arrived up to ~1 s late (bench, spread shape:
    // p99 660 ms with two instances, 27 ms with one).
    let (settings, targets) = setup("twotiers", &["target"]);
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    let b = Instance::start("B", &settings);
    for i in [&a, &b] {
        i.wait_ready(Duration::from_secs(30));
    }
    let sources = sources(&settings);
    assert!(
        wait_until(Duration::from_secs(30), || balanced(&[&a, &b], &sources)),
        "groups did not settle: {:?}",
        shares(&[&a, &b], &sources)
    );
    let reader = Reader::start(&settings, &[target]);
    let n = 4_000;
    let publisher = publish_paced(&settings, target, n, 1_000.0, |i| {
        300 + (i * 7_919) % 12_000
    });
    publisher.join().unwrap();
    let arrivals = reader.wait(n, Duration::from_secs(40), Duration::from_secs(1));
    let account = Account::of(&settings, target, &arrivals, n);
    account.assert_ok("two instances, every tier", QUIET_BOUND_MS);
    // Without the wake-up p95 was 552 ms here (p99 725 ms, a quiet
    // machine); with it p99 is 20–30 ms. `make test` runs this test alone,
    // after the others: inside the full suite (some 50 tests, brokers and
    // child processes on two cores) it measured the machine's contention
    // — p95 304 ms in one run, a 7.3 s worst record in another, both
    // 2026-12-04 — while alone and beside the other never_stuck tests it
    // stayed at p99 22 ms.
    let p95 = percentile(&account.lateness_ms, 0.95);
    println!("p95 {p95} ms");
    assert!(
        p95 <= 300,
        "p95 lateness {p95} ms with two instances (bound 300 ms)"
    );
}

#[test]
fn a_single_instance_that_loses_its_session_delivers_everything() {
    let _heavy = heavy();
    if external_cluster() {
        return println!("skipped: needs a broker this test may stop");
    }
    let broker = PrivateBroker::memory();
    let (settings, targets) = setup_on(&broker.bootstrap, "session", &["target"], &TICKS);
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target]);
    let producer = producer(&settings);
    // Records wait in the tiers, their partitions paused, through the outage.
    let n = 400;
    publish_numbered(&producer, &settings, target, n, |i| {
        14_000 + (i * 41) % 10_000
    });
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Longer than session.timeout.ms (6 s): the member is evicted and rejoins.
    broker.pause();
    std::thread::sleep(Duration::from_secs(9));
    broker.resume();
    let arrivals = reader.wait(n, Duration::from_secs(45), Duration::from_secs(1));
    // Records due during the outage are late by up to its length.
    Account::of(&settings, target, &arrivals, n).assert_ok("session loss", QUIET_BOUND_MS);
}

#[test]
fn a_broker_stall_at_a_release_does_not_cost_a_turn() {
    let _heavy = heavy();
    if external_cluster() {
        return println!("skipped: needs a broker this test may stop");
    }
    // Tier 1 has a 1 s tick and 13 slots: a missed turn costs 13 s.
    let ticks = ["100ms", "1s", "10s"];
    let broker = PrivateBroker::memory();
    let (settings, targets) = setup_on(&broker.bootstrap, "stall", &["target"], &ticks);
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    // Empty tier partitions go to sleep until their next turn.
    std::thread::sleep(Duration::from_secs(4));
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let bucket = now_ms() / 1_000 + 7;
    let release = bucket * 1_000 - 200;
    let n = 100;
    publish_due_at(&producer, &settings, target, n, |i| {
        bucket * 1_000 + (i as i64 * 9) % 900
    });
    std::thread::sleep(Duration::from_millis(
        (release - 1_000 - now_ms()).max(0) as u64
    ));
    broker.pause();
    std::thread::sleep(Duration::from_secs(3));
    broker.resume();
    let arrivals = reader.wait(n, Duration::from_secs(30), Duration::from_secs(1));
    // The stall ends ~1.8 s after the first due time.
    Account::of(&settings, target, &arrivals, n).assert_ok("broker stall at release", 5_000);
}

#[test]
fn records_written_by_a_slow_clock_into_a_released_bucket_arrive_within_bounds() {
    let _heavy = heavy();
    // Tier 0 has a 250 ms tick and 97 slots: a missed turn costs 24 s.
    // Tier 1 (20 s) is released by whichever instance owns its partition.
    // Before one clock, the instance whose host clock is 3 s behind
    // released 3 s late and wrote the bucket's first records into tier-0
    // buckets that the other instance had already released; now both read
    // the broker's clock (clock.rs has the scenario), and this
    // keeps the non-default wheel with a 3.5 s margin covered.
    let ticks = ["250ms", "20s"];
    let prefix = unique_prefix("skew");
    let mut settings = kafka_delay_tools::demo::local_settings(&bootstrap(), &prefix, &ticks);
    // The tier table absorbs clocks up to 3.5 s apart (slot margin, see
    // wheel.rs): late appends never wait behind a later turn.
    settings.wheel.max_clock_skew = Duration::from_millis(3_500).into();
    let targets = apply_topics(&settings, &["target"]);
    let target = &targets[0];
    let writer = Instance::start_skewed("W", &settings, -3_000);
    writer.wait_ready(Duration::from_secs(30));
    let owner = Instance::start("O", &settings);
    owner.wait_ready(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let reader = Reader::start(&settings, &[target]);
    let producer = producer(&settings);
    let n = 300;
    publish_numbered(&producer, &settings, target, n, |i| {
        25_000 + (i * 97) % 30_000
    });
    let arrivals = reader.wait(n, Duration::from_secs(75), Duration::from_secs(1));
    for a in &arrivals {
        let due: i64 = a
            .header(kafka_delay::model::envelope::SCHEDULED_AT)
            .unwrap()
            .parse()
            .unwrap();
        if a.seen_ms - due > 5_000 {
            println!("late: {} due {due} by {} ms", a.value(), a.seen_ms - due);
        }
    }
    // The skewed instance releases its own partitions ~3 s late by its
    // clock; late appends must not wait a turn (24 s). Measured: worst
    // 5.4 s alone, 7.6 s while the rest of the suite loads the two cores;
    // the bound catches a missed turn, not the load.
    Account::of(&settings, target, &arrivals, n)
        .assert_ok("writer clock 3 s behind", 3_000 + 7_000);
    let late: f64 = [&writer, &owner]
        .iter()
        .filter_map(|i| i.metric("kafka_delay_late_appends_total{tier=\"250ms\"}"))
        .sum();
    println!("late appends counted: {late}");
}

#[test]
fn a_record_appended_to_a_released_bucket_is_delivered_at_once_and_counted() {
    let _heavy = heavy();
    // Tier 0 has a 1 s tick and 64 slots: a missed turn costs 64 s.
    let ticks = ["1s", "1m"];
    let (settings, targets) = setup_on(&bootstrap(), "late", &["target"], &ticks);
    let target = &targets[0];
    let owner = Instance::start("O", &settings);
    owner.wait_ready(Duration::from_secs(30));
    // The empty partitions drain, then sleep until their next turn.
    std::thread::sleep(Duration::from_secs(4));
    let reader = Reader::start(&settings, &[target]);
    let producer = producer(&settings);
    // What a writer 3 s behind does: append to a bucket released 2 s ago.
    let now = now_ms();
    let bucket = now / 1_000 - 2;
    let due = bucket * 1_000 + 500;
    let tier = tier_topic(&settings, "1s");
    let table = settings.tier_table().unwrap();
    let mut headers = rdkafka::message::OwnedHeaders::new();
    for (k, v) in [
        ("x-delay-due-at", due.to_string()),
        ("x-delay-target", target.clone()),
        ("x-delay-bucket", bucket.to_string()),
        ("x-delay-original-timestamp", now.to_string()),
    ] {
        headers = headers.insert(rdkafka::message::Header {
            key: k,
            value: Some(&v),
        });
    }
    let record = rdkafka::producer::BaseRecord::<str, str>::to(&tier)
        .partition(table.partition(0, table.slot(0, bucket), 0))
        .payload("v0")
        .headers(headers)
        .timestamp(now);
    producer.send(record).map_err(|(e, _)| e).unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let written = now_ms();
    let arrivals = reader.wait(1, Duration::from_secs(20), Duration::ZERO);
    let seen = arrivals.first().map(|a| a.seen_ms - written);
    println!("late append delivered {seen:?} ms after it was written");
    assert!(
        seen.is_some_and(|ms| ms <= 2_500),
        "late append not delivered within 2.5 s: {seen:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || owner
            .metric("kafka_delay_late_appends_total{tier=\"1s\"}")
            .is_some_and(|n| n >= 1.0)),
        "the owner did not count the late append"
    );
}

#[test]
fn three_instances_under_kill_and_freeze_lose_nothing() {
    let _heavy = heavy();
    // Every tier is used (delays up to 30 s); a missed turn of tier 1 costs
    // 24 s, of tier 2 one minute.
    let ticks = ["100ms", "1s", "20s"];
    let (settings, targets) = setup_on(&bootstrap(), "chaos", &["target"], &ticks);
    let target = &targets[0];
    let mut instances = [
        Instance::start("A", &settings),
        Instance::start("B", &settings),
        Instance::start("C", &settings),
    ];
    for i in &instances {
        i.wait_ready(Duration::from_secs(30));
    }
    let reader = Reader::start(&settings, &[target]);
    let n = 1_500;
    let publisher = publish_paced(&settings, target, n, 50.0, |i| (i * 37) % 30_000);
    let mut rng = fastrand::Rng::with_seed(11);
    let faults_end = std::time::Instant::now() + Duration::from_secs(28);
    while std::time::Instant::now() < faults_end {
        std::thread::sleep(Duration::from_secs(4));
        let victim = &mut instances[rng.usize(0..3)];
        if rng.bool() {
            println!("chaos: kill -9 and restart {}", victim.name);
            victim.kill_and_restart();
        } else {
            // Longer than the session timeout: evicted, then it comes back.
            println!("chaos: SIGSTOP {} for 8 s", victim.name);
            victim.freeze();
            std::thread::sleep(Duration::from_secs(8));
            victim.thaw();
        }
    }
    publisher.join().unwrap();
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(2));
    // Failover: session timeout (6 s) + rebalance + catch-up.
    Account::of(&settings, target, &arrivals, n).assert_ok("chaos, 3 instances", 25_000);
}

#[test]
fn a_broker_restart_on_persistent_storage_loses_nothing() {
    let _heavy = heavy();
    if external_cluster() {
        return println!("skipped: needs a broker this test may restart");
    }
    // Tier 0 has a 1 s tick and 64 slots: a missed turn costs 64 s.
    let ticks = ["1s", "1m"];
    let mut broker = PrivateBroker::sqlite("restart");
    let (settings, targets) = setup_on(&broker.bootstrap, "brestart", &["target"], &ticks);
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target]);
    let producer = producer(&settings);
    let n = 300;
    // Records wait in the tiers, their partitions paused, through the restart.
    publish_numbered(&producer, &settings, target, n, |i| {
        12_000 + (i * 41) % 10_000
    });
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    drop(producer);
    std::thread::sleep(Duration::from_secs(2));
    // Down longer than the session timeout (6 s): the group starts over.
    broker.restart(libc::SIGKILL, Duration::from_secs(8));
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(2));
    // Records due while the broker was down are late by up to its 8 s.
    Account::of(&settings, target, &arrivals, n)
        .assert_ok("broker restart (sqlite)", 8_000 + 5_000);
}

/// Every source topic of the loops (`ingress`, each tier label) and its
/// partition count (6 ingress partitions in the test spec; slots per tier).
fn sources(settings: &kafka_delay::config::Settings) -> Vec<(String, i64)> {
    let table = settings.tier_table().unwrap();
    std::iter::once(("ingress".to_owned(), 6))
        .chain(
            table
                .tiers()
                .iter()
                .map(|t| (kafka_delay::config::tick_label(t.tick_ms), t.slots)),
        )
        .collect()
}

/// Each instance's partitions of every source topic, from its metrics.
fn shares(instances: &[&Instance], sources: &[(String, i64)]) -> Vec<Vec<i64>> {
    sources
        .iter()
        .map(|(source, _)| {
            instances
                .iter()
                .map(|i| {
                    i.metric(&format!(
                        "kafka_delay_partitions_assigned{{source=\"{source}\"}}"
                    ))
                    .unwrap_or(-1.0) as i64
                })
                .collect()
        })
        .collect()
}

/// True when every source's partitions are spread ⌊P/N⌋ or ⌈P/N⌉ per instance.
fn balanced(instances: &[&Instance], sources: &[(String, i64)]) -> bool {
    let n = instances.len() as i64;
    shares(instances, sources)
        .iter()
        .zip(sources)
        .all(|(counts, (_, p))| {
            counts.iter().sum::<i64>() == *p
                && counts.iter().all(|&c| c == p / n || c == (p + n - 1) / n)
        })
}

#[test]
fn every_tier_is_shared_evenly_across_joins_and_leaves() {
    let _heavy = heavy();
    let (settings, _) = setup("shares", &[]);
    let sources = sources(&settings);
    let a = Instance::start("A", &settings);
    let mut b = Instance::start("B", &settings);
    let c = Instance::start("C", &settings);
    for i in [&a, &b, &c] {
        i.wait_ready(Duration::from_secs(30));
    }
    let three = wait_until(Duration::from_secs(30), || {
        balanced(&[&a, &b, &c], &sources)
    });
    println!("3 instances: {:?}", shares(&[&a, &b, &c], &sources));
    assert!(
        three,
        "uneven shares with 3 instances: {:?}",
        shares(&[&a, &b, &c], &sources)
    );
    b.terminate();
    let two = wait_until(Duration::from_secs(30), || balanced(&[&a, &c], &sources));
    println!("2 instances: {:?}", shares(&[&a, &c], &sources));
    assert!(
        two,
        "uneven shares after a leave: {:?}",
        shares(&[&a, &c], &sources)
    );
    let d = Instance::start("D", &settings);
    d.wait_ready(Duration::from_secs(30));
    let again = wait_until(Duration::from_secs(30), || {
        balanced(&[&a, &c, &d], &sources)
    });
    println!("3 instances again: {:?}", shares(&[&a, &c, &d], &sources));
    assert!(
        again,
        "uneven shares after a join: {:?}",
        shares(&[&a, &c, &d], &sources)
    );
}

/// Tier writes that fail in an outage longer than `message.timeout.ms`
/// are routed again by their due time when retried (not re-sent to the
/// partition chosen before the outage): the broker stops just before a
/// 1 s bucket is released, so the writes of its records into the 100 ms
/// tier time out; every record arrives, none early, late by about the
/// outage.
#[test]
fn tier_writes_that_time_out_in_an_outage_are_routed_again() {
    let _heavy = heavy();
    if external_cluster() {
        return println!("skipped: needs a broker this test may stop");
    }
    let ticks = ["100ms", "1s", "10s"];
    let broker = PrivateBroker::memory();
    let (mut settings, targets) = setup_on(&broker.bootstrap, "outage", &["target"], &ticks);
    settings
        .kafka
        .producer_properties
        .insert("message.timeout.ms".into(), "1500".into());
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let bucket = now_ms() / 1_000 + 7;
    let release = bucket * 1_000 - 200;
    let n = 200;
    // Due 500–900 ms into the bucket: written into the 100 ms tier at the
    // release.
    publish_due_at(&producer, &settings, target, n, |i| {
        bucket * 1_000 + 500 + (i as i64 * 7) % 400
    });
    std::thread::sleep(Duration::from_millis(
        (release - 300 - now_ms()).max(0) as u64
    ));
    broker.pause();
    std::thread::sleep(Duration::from_secs(4));
    broker.resume();
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(1));
    let retries = a.metric("kafka_delay_produce_retries_total{kind=\"tier\"}");
    println!("tier write retries: {retries:?}");
    Account::of(&settings, target, &arrivals, n).assert_ok("tier writes through an outage", 8_000);
    assert!(
        retries.is_some_and(|r| r > 0.0),
        "no tier write failed: the outage missed the release"
    );
}

/// Publishes records `v0..v{n}` (keys `k0..`) due at `due_ms(i)` (epoch ms)
/// for `target`, and waits until the broker has them.
fn publish_due_at(
    producer: &crate::helpers::TestProducer,
    settings: &kafka_delay::config::Settings,
    target: &str,
    n: usize,
    due_ms: impl Fn(usize) -> i64,
) {
    for i in 0..n {
        let due = due_ms(i).to_string();
        publish(
            producer,
            settings,
            Some(&format!("k{i}")),
            &format!("v{i}"),
            &[("x-deliver-at", &due), ("x-target-topic", target)],
        );
    }
    rdkafka::producer::Producer::flush(producer, Duration::from_secs(10)).unwrap();
}
