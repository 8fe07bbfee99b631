//! Recurring schedules on the real broker: a 1 s series delivers each
//! occurrence once and never early, survives kill -9 of one of two
//! instances, ends at a cancellation, and 100,000 active series cost the
//! service no memory.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_delay::model::clock::wall_ms as now_ms;

use crate::faults::*;
use crate::helpers::*;

/// Publishes a series `id` for `target` with `expression` and `extra`
/// headers; value `v-<id>`, key `k-<id>`.
pub fn publish_series(
    p: &TestProducer,
    settings: &kafka_delay::config::Settings,
    target: &str,
    id: &str,
    expression: &str,
    extra: &[(&str, &str)],
) {
    let mut headers = vec![
        ("x-delay-schedule", expression),
        ("x-delay-id", id),
        ("x-target-topic", target),
    ];
    headers.extend_from_slice(extra);
    publish(
        p,
        settings,
        Some(&format!("k-{id}")),
        &format!("v-{id}"),
        &headers,
    );
}

/// Publishes `n` series `<prefix>0..` of one occurrence a second, `count`
/// occurrences each, and waits until the broker has them.
fn publish_every_second(
    p: &TestProducer,
    settings: &kafka_delay::config::Settings,
    target: &str,
    prefix: &str,
    n: usize,
    count: usize,
) {
    let count = count.to_string();
    for i in 0..n {
        publish_series(
            p,
            settings,
            target,
            &format!("{prefix}{i}"),
            "* * * * * *",
            &[("x-delay-schedule-count", &count)],
        );
    }
    rdkafka::producer::Producer::flush(p, Duration::from_secs(10)).unwrap();
}

/// Distinct (series, occurrence number) pairs among `arrivals`.
fn distinct_occurrences(arrivals: &[Arrival]) -> usize {
    arrivals
        .iter()
        .map(|a| (a.header("x-delay-id"), a.header("x-delay-occurrence")))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// One delivered occurrence: its series, number, time and lateness.
#[derive(Debug)]
pub struct Occurrence {
    pub id: String,
    pub number: u64,
    pub scheduled_ms: i64,
    pub late_ms: i64,
}

pub fn occurrences<'a>(arrivals: impl IntoIterator<Item = &'a Arrival>) -> Vec<Occurrence> {
    arrivals
        .into_iter()
        .map(|a| {
            let scheduled_ms: i64 = a.header("x-delay-scheduled-at").unwrap().parse().unwrap();
            Occurrence {
                id: a.header("x-delay-id").unwrap(),
                number: a.header("x-delay-occurrence").unwrap().parse().unwrap(),
                scheduled_ms,
                late_ms: a.seen_ms - scheduled_ms,
            }
        })
        .collect()
}

/// Per series: every occurrence number from 1 to its last exactly once
/// (duplicates counted), one second apart, none early. Returns (series,
/// occurrences, duplicates, lateness sorted).
pub fn check_every_second(all: &[Occurrence]) -> (usize, usize, usize, Vec<i64>) {
    let mut by_id: BTreeMap<&str, BTreeMap<u64, (i64, usize)>> = BTreeMap::new();
    let mut late = Vec::new();
    for o in all {
        assert!(o.late_ms >= 0, "{o:?} delivered early");
        let seen = by_id
            .entry(&o.id)
            .or_default()
            .entry(o.number)
            .or_insert((o.scheduled_ms, 0));
        assert_eq!(seen.0, o.scheduled_ms, "{o:?}: a copy with another time");
        seen.1 += 1;
        late.push(o.late_ms);
    }
    let mut duplicates = 0;
    for (id, numbers) in &by_id {
        let first = numbers.values().next().unwrap().0;
        for (expected, (&number, &(scheduled, copies))) in (1..).zip(numbers) {
            assert_eq!(
                number, expected,
                "series {id}: occurrence {expected} missing"
            );
            assert_eq!(
                scheduled,
                first + (number as i64 - 1) * 1_000,
                "series {id}: occurrence {number} not one second after the one before"
            );
            duplicates += copies - 1;
        }
    }
    late.sort_unstable();
    (
        by_id.len(),
        by_id.values().map(BTreeMap::len).sum(),
        duplicates,
        late,
    )
}

#[test]
fn a_one_second_series_delivers_sixty_occurrences_once_and_never_early() {
    let (settings, targets) = setup("series60", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    let published = now_ms();
    publish_series(
        &p,
        &settings,
        target,
        "every-second",
        "* * * * * *",
        &[("x-delay-schedule-count", "60")],
    );
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    let arrivals = reader.wait_until(
        |a| a.len() >= 60,
        Duration::from_secs(90),
        Duration::from_secs(3),
    );
    let all = occurrences(&arrivals);
    let (series, distinct, duplicates, late) = check_every_second(&all);
    println!(
        "1 s series: {} deliveries, {distinct} distinct occurrences, {duplicates} duplicates; \
         lateness p50 {} ms, p99 {} ms, max {} ms",
        all.len(),
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or_default()
    );
    assert_eq!((series, distinct, duplicates), (1, 60, 0));
    let first = all.iter().map(|o| o.scheduled_ms).min().unwrap();
    assert!(
        first >= published && first - published <= 1_000,
        "first occurrence {first}, published {published}"
    );
    let a = &arrivals[0];
    assert_eq!(a.value(), "v-every-second");
    assert_eq!(a.header("x-delay-schedule").as_deref(), Some("* * * * * *"));
    assert_eq!(
        rdkafka::Message::key(&a.msg),
        Some(b"k-every-second".as_slice())
    );
    // The service's own tier headers never reach the target.
    assert!(a.header("x-delay-due-at").is_none() && a.header("x-delay-bucket").is_none());
}

#[test]
fn series_survive_kill_9_of_one_of_two_instances() {
    let _heavy = heavy();
    let (settings, targets) = setup("serieskill", &["target"]);
    let target = &targets[0];
    let mut first = Instance::start("first", &settings);
    let second = Instance::start("second", &settings);
    first.wait_ready(Duration::from_secs(30));
    second.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    // Twenty series with distinct keys: spread over both instances' tier
    // partitions; 40 occurrences each.
    let (n, count) = (20, 40);
    publish_every_second(&p, &settings, target, "s", n, count);
    std::thread::sleep(Duration::from_secs(12));
    first.kill();
    let arrivals = reader.wait_until(
        |a| distinct_occurrences(a) >= n * count,
        Duration::from_secs(120),
        Duration::from_secs(3),
    );
    drop(second);
    let all = occurrences(&arrivals);
    let (series, distinct, duplicates, late) = check_every_second(&all);
    println!(
        "kill -9 mid-series: {series} series, {distinct} distinct occurrences of {}, \
         {duplicates} duplicates; lateness p50 {} ms, p99 {} ms, max {} ms",
        n * count,
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or_default()
    );
    assert_eq!(
        (series, distinct),
        (n, n * count),
        "every occurrence of every series"
    );
}

#[test]
fn a_cancelled_series_delivers_nothing_after_the_cancellation() {
    let (settings, targets) = setup("seriescancel", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    publish_series(&p, &settings, target, "to-cancel", "* * * * * *", &[]);
    publish_series(
        &p,
        &settings,
        target,
        "to-keep",
        "* * * * * *",
        &[("x-delay-schedule-count", "12")],
    );
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    reader.await_count(10, Duration::from_secs(30));
    let cancelled_at = now_ms();
    kafka_delay::cli::cancel::publish(
        &settings,
        "to-cancel",
        None,
        cancelled_at,
        cancelled_at + 3_600_000,
    )
    .unwrap();
    let arrivals = reader.wait_until(|_| false, Duration::from_secs(10), Duration::ZERO);
    let all = occurrences(&arrivals);
    let cancelled: Vec<&Occurrence> = all.iter().filter(|o| o.id == "to-cancel").collect();
    let kept = all.iter().filter(|o| o.id == "to-keep").count();
    let after: Vec<&&Occurrence> = cancelled
        .iter()
        .filter(|o| o.scheduled_ms > cancelled_at + 1_000)
        .collect();
    println!(
        "cancel mid-series: {} occurrences before the cancellation, {} due more than 1 s after it \
         delivered; the other series: {kept} of 12",
        cancelled.len(),
        after.len()
    );
    assert!(
        cancelled.len() >= 3,
        "the series ran before the cancellation"
    );
    assert!(
        after.is_empty(),
        "delivered after the cancellation: {after:?}"
    );
    assert_eq!(kept, 12, "the other series goes on");
}

#[test]
fn a_hundred_thousand_active_series_cost_the_service_no_memory() {
    let _heavy = heavy();
    // Daily series wait in the 1 h tier: Kafka holds them, not the service.
    // A broker of its own: 101,000 records would otherwise stay in the
    // shared broker's memory for the rest of the suite.
    let broker = (!external_cluster()).then(PrivateBroker::memory);
    let bootstrap = broker
        .as_ref()
        .map_or_else(bootstrap, |b| b.bootstrap.clone());
    let (settings, _) = setup_on(&bootstrap, "seriesmem", &["target"], &["1s", "1min", "1h"]);
    let target = format!("{}target", settings.topics.tier_prefix);
    let instance = Instance::start("A", &settings);
    instance.wait_ready(Duration::from_secs(30));
    let p = producer(&settings);
    let ingested = || {
        instance
            .metric("kafka_delay_records_ingested_total{outcome=\"tier\"}")
            .unwrap_or(0.0)
    };
    let publish_many = |from: usize, to: usize| {
        for i in from..to {
            publish_series(&p, &settings, &target, &format!("s{i}"), "@daily", &[]);
        }
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(60)).unwrap();
    };
    // A first thousand warms every path up; then the baseline.
    publish_many(0, 1_000);
    assert!(
        wait_until(Duration::from_secs(60), || ingested() >= 1_000.0),
        "{}",
        ingested()
    );
    std::thread::sleep(Duration::from_secs(3));
    let before = rss_kib(instance.pid());
    let n = 100_000;
    publish_many(1_000, 1_000 + n);
    assert!(
        wait_until(Duration::from_secs(120), || ingested()
            >= (1_000 + n) as f64),
        "ingested {}",
        ingested()
    );
    std::thread::sleep(Duration::from_secs(5));
    let after = rss_kib(instance.pid());
    let pending = kafka_delay::cli::pending::scan(&settings, Some("s4242"), |_, _| {}).unwrap();
    println!(
        "100,000 active series: service RSS {} MiB with 1,000, {} MiB with 101,000 ({:+} MiB); \
         {} records pending in the tiers",
        before / 1024,
        after / 1024,
        (after - before) / 1024,
        pending.total
    );
    assert!(
        pending.total >= (1_000 + n) as u64,
        "every series waits in the wheel"
    );
    let found = pending.found.expect("series s4242 is pending");
    assert!(found
        .headers
        .iter()
        .any(|(k, v)| k == b"x-delay-schedule" && v.as_deref() == Some(b"@daily".as_slice())));
    assert!(
        after - before < 16 * 1024,
        "RSS grew {} MiB with 100,000 series",
        (after - before) / 1024
    );
}

/// (value, headers, what the error says).
type BadCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_series_are_dead_lettered_with_their_reason_and_block_nothing() {
    let (settings, targets) = setup("seriesbad", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let p = producer(&settings);
    let cases: [BadCase; 5] = [
        (
            "no-id",
            &[("x-delay-schedule", "* * * * *")],
            "needs an x-delay-id",
        ),
        (
            "bad-expression",
            &[("x-delay-schedule", "every day"), ("x-delay-id", "a")],
            "must be a cron expression",
        ),
        (
            "bad-zone",
            &[
                ("x-delay-schedule", "@daily"),
                ("x-delay-schedule-zone", "Europe/Atlantis"),
                ("x-delay-id", "b"),
            ],
            "IANA time zone",
        ),
        (
            "bad-missed",
            &[
                ("x-delay-schedule", "@daily"),
                ("x-delay-schedule-missed", "never"),
                ("x-delay-id", "c"),
            ],
            "latest, all or skip",
        ),
        (
            "ended",
            &[
                ("x-delay-schedule", "0 0 0 1 1 * 2020"),
                ("x-delay-id", "d"),
            ],
            "no occurrence",
        ),
    ];
    for (value, headers, _) in &cases {
        let mut all = headers.to_vec();
        all.push(("x-target-topic", target));
        publish(&p, &settings, Some("same-key"), value, &all);
    }
    publish(
        &p,
        &settings,
        Some("same-key"),
        "behind",
        &[("x-delay", "10"), ("x-target-topic", target)],
    );
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    let delivered = read(
        &settings,
        &[target],
        1,
        Duration::from_secs(30),
        Duration::from_millis(200),
    );
    assert_eq!(delivered.len(), 1, "the record behind them is delivered");
    let dead = read(
        &settings,
        &[&settings.topics.dead_letter],
        cases.len(),
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    for (value, _, says) in &cases {
        let letter = dead
            .iter()
            .find(|a| a.value() == *value)
            .unwrap_or_else(|| panic!("{value} not dead-lettered"));
        assert_eq!(
            letter.header("x-delay-reason").as_deref(),
            Some("invalid_schedule"),
            "{value}"
        );
        let error = letter.header("x-delay-error").unwrap();
        assert!(error.contains(says), "{value}: {error}");
        println!("{value}: {error}");
    }
}

#[test]
fn pending_shows_a_series_and_reschedule_changes_its_expression() {
    let (settings, targets) = setup("seriesresched", &["target"]);
    let target = &targets[0];
    let _service = Service::start(&settings);
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    // Every 3 s: its record waits in a tier between occurrences.
    publish_series(&p, &settings, target, "s", "*/3 * * * * *", &[]);
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    reader.await_count(2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let scan = kafka_delay::cli::pending::scan(&settings, Some("s"), |_, _| {}).unwrap();
    let found = scan.found.expect("the series waits in a tier");
    println!("pending: {found:?}");
    assert_eq!(found.schedule.as_deref(), Some("*/3 * * * * *"));
    assert!(found.occurrence.unwrap() >= 3, "{:?}", found.occurrence);
    assert_eq!(found.due_ms % 3_000, 0, "due at its next occurrence");
    let edit = kafka_delay::cli::reschedule::SeriesEdit {
        schedule: Some("*/5 * * * * *".into()),
        zone: None,
    };
    let now_when = kafka_delay::cli::produce::When::Delay(Duration::ZERO);
    let outcome =
        kafka_delay::cli::reschedule::reschedule_series(&settings, &["s".into()], &now_when, &edit)
            .unwrap();
    // The cancellation of the old series is acknowledged by now: its
    // occurrences due more than 1 s later are never delivered.
    let moved_at = now_ms();
    let kafka_delay::cli::reschedule::Outcome::Moved { due_ms, .. } = &outcome[0].1 else {
        panic!("not moved: {outcome:?}");
    };
    assert_eq!(due_ms % 5_000, 0, "reported by its first occurrence");
    let arrivals = reader.wait_until(|_| false, Duration::from_secs(12), Duration::ZERO);
    let expression = |a: &&Arrival| a.header("x-delay-schedule").unwrap_or_default();
    let (new, old): (Vec<&Arrival>, Vec<&Arrival>) = arrivals
        .iter()
        .partition(|a| expression(a) == "*/5 * * * * *");
    let new = occurrences(new);
    let old_late: Vec<Occurrence> = occurrences(old)
        .into_iter()
        .filter(|o| o.scheduled_ms > moved_at + 1_000)
        .collect();
    println!("the new series: {new:?}; the old one due after the reschedule: {old_late:?}");
    assert!(
        old_late.is_empty(),
        "the old expression ran on after the reschedule"
    );
    assert!(new.len() >= 2, "the new series runs");
    for (i, o) in new.iter().enumerate() {
        assert_eq!(
            o.number,
            i as u64 + 1,
            "the new series numbers from 1: {new:?}"
        );
        assert_eq!(o.scheduled_ms % 5_000, 0, "{o:?}");
    }
}

/// The default wheel's lowest tick (1 s): a series of seconds is always due
/// within the due-soon window. Killed and restarted, one instance repeats
/// at most the occurrences it had not committed, and the series does not
/// run twice afterwards.
#[test]
fn a_killed_instance_repeats_at_most_its_last_occurrences_and_no_series_runs_twice() {
    let _heavy = heavy();
    let (settings, targets) = setup_on(
        &bootstrap(),
        "seriesrestart",
        &["target"],
        &["1s", "1min", "1h"],
    );
    let target = &targets[0];
    let mut instance = Instance::start("A", &settings);
    instance.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    let (n, count) = (5, 40);
    publish_every_second(&p, &settings, target, "r", n, count);
    reader.await_count(n * 12, Duration::from_secs(30));
    let killed_at = now_ms();
    instance.kill_and_restart();
    instance.wait_ready(Duration::from_secs(30));
    let arrivals = reader.wait_until(
        |a| distinct_occurrences(a) >= n * count,
        Duration::from_secs(120),
        Duration::from_secs(5),
    );
    let twins = instance.metric("kafka_delay_series_occurrences_total{outcome=\"twin\"}");
    drop(instance);
    let all = occurrences(&arrivals);
    let (series, distinct, duplicates, late) = check_every_second(&all);
    let mut copies: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for o in &all {
        *copies.entry((&o.id, o.number)).or_default() += 1;
    }
    let repeated_late: Vec<_> = all
        .iter()
        .filter(|o| o.scheduled_ms > killed_at + 20_000 && copies[&(o.id.as_str(), o.number)] > 1)
        .map(|o| (&o.id, o.number))
        .collect();
    println!(
        "kill -9 and restart: {series} series, {distinct} of {} occurrences, {duplicates} \
         duplicates (at most 2 per series allowed), {} repeated 20 s after the kill, twins \
         dropped after the restart {twins:?}; lateness p50 {} ms, p99 {} ms",
        n * count,
        repeated_late.len(),
        percentile(&late, 0.5),
        percentile(&late, 0.99)
    );
    assert_eq!((series, distinct), (n, n * count), "every occurrence");
    assert!(duplicates <= 2 * n, "{duplicates} duplicates");
    assert!(
        repeated_late.is_empty(),
        "a series runs twice after the restart: {repeated_late:?}"
    );
}
