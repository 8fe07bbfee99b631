//! Changing the wheel with records pending: the tier topics of the earlier
//! layout are drained into the current one, every record delivered at its
//! due time, none early (docs/architecture.md, "Changing the wheel").

use std::time::Duration;

use kafka_delay::kafka::{layout, topics};
use rdkafka::producer::Producer;

use crate::faults::{heavy, wait_until, Account, Instance};
use crate::helpers::*;

/// Lateness a restart between the layouts may cost, ms: the records are
/// due 15 s or more after they are published, after the restart.
const RESTART_BOUND_MS: i64 = 3_000;

/// Lateness a rebalance may cost the partitions it moves, ms (as in the
/// never-stuck tests), or a kill -9 (the session timeout, 10 s).
const REBALANCE_BOUND_MS: i64 = 6_000;
const KILL_BOUND_MS: i64 = 15_000;

/// The test ticks changed to coarser ones: every tier topic is renamed.
fn changed_ticks(settings: &kafka_delay::config::Settings) -> kafka_delay::config::Settings {
    let mut changed = settings.clone();
    changed.wheel.ticks = ["100ms", "1s", "10s"]
        .iter()
        .map(|t| humantime::parse_duration(t).unwrap().into())
        .collect();
    changed
}

#[test]
fn records_pending_in_the_tiers_are_delivered_after_the_ticks_change() {
    let _heavy = heavy();
    // The operator's report: ticks 50ms/500ms/5s, 300 records with delays
    // of 15–40 s waiting in the tiers; stop, ticks 100ms/1s/10s, `topics
    // apply`, start. Before the retired-tier drain none was ever delivered.
    let (settings, targets) = setup("layout", &["target"]);
    let target = &targets[0];
    let reader = Reader::start(&settings, &[target]);
    let mut a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let n = 300;
    let producer = producer(&settings);
    publish_numbered(&producer, &settings, target, n, |i| {
        15_000 + (i * 83) % 25_000
    });
    producer.flush(Duration::from_secs(30)).unwrap();
    // Routed into the tiers (some cascading down already) and committed.
    assert!(
        wait_until(Duration::from_secs(20), || {
            a.metric("kafka_delay_records_ingested_total{outcome=\"tier\"}")
                .is_some_and(|v| v >= n as f64)
        }),
        "the records did not reach the tiers"
    );
    std::thread::sleep(Duration::from_secs(2));
    a.terminate();

    let changed = changed_ticks(&settings);
    apply_topics(&changed, &[]);
    // `pending` under the new layout counts what the old tiers hold.
    let scan = kafka_delay::cli::pending::scan(&changed, None, |_, _| {}).unwrap();
    let in_retired: u64 = scan
        .tiers
        .iter()
        .filter(|t| t.tier.ends_with("(retired)"))
        .map(|t| t.records)
        .sum();
    assert!(
        in_retired >= n as u64,
        "pending shows {in_retired} records in retired tiers: {:?}",
        scan.tiers
    );
    // The latest due time of each retired tier that holds records (what
    // `topics plan` prints beside it): at most the latest published.
    let latest_published = kafka_delay::model::clock::wall_ms() + 40_000;
    for t in scan.tiers.iter().filter(|t| t.tier.ends_with("(retired)")) {
        if t.records > 0 {
            let due = t.latest_due_ms.expect("a latest due time");
            assert!(due <= latest_published, "{t:?}");
        }
    }
    // `topics plan` names the old tiers; `topics prune` keeps those that
    // hold records (all 300 of them) and deletes the empty ones.
    let plan = layout::plan(&changed, &topics::Spec::load(None).unwrap()).unwrap();
    let retire: Vec<_> = plan
        .iter()
        .filter(|l| matches!(l, layout::PlanLine::Retire(_)))
        .collect();
    assert_eq!(retire.len(), 3, "{plan:?}");
    let pruned = prune(&changed);
    let kept: i64 = pruned
        .iter()
        .map(|p| match p {
            layout::Pruned::Kept(r) => r.records,
            layout::Pruned::Deleted(_) => 0,
        })
        .sum();
    assert!(kept >= n as i64, "prune kept {kept} records: {pruned:?}");
    let mut b = Instance::start("B", &changed);
    b.wait_ready(Duration::from_secs(30));
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(1));
    let account = Account::of(&changed, target, &arrivals, n);
    account.assert_ok("ticks changed with records pending", RESTART_BOUND_MS);
    let drained = b
        .metric("kafka_delay_records_forwarded_total{from=\"retired\"}")
        .unwrap_or(0.0)
        + b.metric("kafka_delay_tier_writes_total{tier=\"1s\"}")
            .unwrap_or(0.0)
        + b.metric("kafka_delay_tier_writes_total{tier=\"10s\"}")
            .unwrap_or(0.0);
    assert!(drained > 0.0, "B routed nothing from the retired tiers");
    let retired_5s = format!(
        "kafka_delay_retired_tier_records{{topic=\"{}\"}}",
        tier_topic(&settings, "5s")
    );
    assert!(
        wait_until(Duration::from_secs(10), || b.metric(&retired_5s)
            == Some(0.0)),
        "{retired_5s} is {:?}, not 0 once drained",
        b.metric(&retired_5s)
    );
    // Drained and committed: `topics prune` deletes the old tiers.
    b.terminate();
    let pruned = prune(&changed);
    assert!(
        !pruned.is_empty()
            && pruned
                .iter()
                .all(|p| matches!(p, layout::Pruned::Deleted(_))),
        "{pruned:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || layout::retired_tiers(&changed)
            .unwrap()
            .is_empty()),
        "retired tiers still listed after prune"
    );
}

/// The top tier's slots raised from 3 to 5: its topic gets 5 partitions.
fn changed_top_slots(settings: &kafka_delay::config::Settings) -> kafka_delay::config::Settings {
    let mut changed = settings.clone();
    changed.wheel.top_slots = 5;
    changed
}

/// Two partitions per slot: every tier topic gets twice as many.
fn changed_partitions_per_slot(
    settings: &kafka_delay::config::Settings,
) -> kafka_delay::config::Settings {
    let mut changed = settings.clone();
    changed.wheel.partitions_per_slot = 2;
    changed
}

/// The slot order before 0.2: slot `s` on partition `s`, plain tier names.
fn sequential(settings: &kafka_delay::config::Settings) -> kafka_delay::config::Settings {
    let mut before = settings.clone();
    before.wheel.slot_order = kafka_delay::config::SlotOrder::Sequential;
    apply_topics(&before, &[]);
    before
}

/// Stop, change a partition count, `topics apply`, start: the re-partitioned
/// tiers get topics of their own (`<tier>.s<partitions>`), and the old ones
/// — `renamed` of them — are drained into them.
fn repartition_with_records_pending(
    test: &str,
    change: fn(&kafka_delay::config::Settings) -> kafka_delay::config::Settings,
    renamed: usize,
) {
    layout_change_with_records_pending(test, Clone::clone, change, renamed);
}

/// Stop an instance of layout `before`, change to `change`, `topics
/// apply`, start: the `renamed` tier topics of the old layout are drained.
fn layout_change_with_records_pending(
    test: &str,
    before: fn(&kafka_delay::config::Settings) -> kafka_delay::config::Settings,
    change: fn(&kafka_delay::config::Settings) -> kafka_delay::config::Settings,
    renamed: usize,
) {
    let _heavy = heavy();
    let (defaults, targets) = setup(test, &["target"]);
    let settings = before(&defaults);
    let target = &targets[0];
    let reader = Reader::start(&settings, &[target]);
    let mut a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let n = 300;
    let producer = producer(&settings);
    publish_numbered(&producer, &settings, target, n, |i| {
        15_000 + (i * 83) % 25_000
    });
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            a.metric("kafka_delay_records_ingested_total{outcome=\"tier\"}")
                .is_some_and(|v| v >= n as f64)
        }),
        "the records did not reach the tiers"
    );
    std::thread::sleep(Duration::from_secs(2));
    a.terminate();
    let changed = change(&defaults);
    apply_topics(&changed, &[]);
    let plan = layout::plan(&changed, &topics::Spec::load(None).unwrap()).unwrap();
    let retire = plan
        .iter()
        .filter(|l| matches!(l, layout::PlanLine::Retire(_)))
        .count();
    assert_eq!(retire, renamed, "{plan:?}");
    let mut b = Instance::start("B", &changed);
    b.wait_ready(Duration::from_secs(30));
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(1));
    let account = Account::of(&changed, target, &arrivals, n);
    account.assert_ok(&format!("{test}: records pending"), RESTART_BOUND_MS);
    b.terminate();
    let pruned = prune(&changed);
    assert_eq!(
        pruned
            .iter()
            .filter(|p| matches!(p, layout::Pruned::Deleted(_)))
            .count(),
        renamed,
        "{pruned:?}"
    );
}

#[test]
fn records_pending_are_delivered_after_top_slots_change() {
    repartition_with_records_pending("topslots", changed_top_slots, 1);
}

#[test]
fn records_pending_are_delivered_after_partitions_per_slot_change() {
    repartition_with_records_pending("perslot", changed_partitions_per_slot, 3);
}

/// The upgrade to the spread slot order: records pending in the plain tier
/// topics of the sequential order are drained into `<tier>.s<N>`.
#[test]
fn records_pending_are_delivered_after_the_slot_order_changes_to_spread() {
    layout_change_with_records_pending("spread", sequential, Clone::clone, 3);
}

#[test]
fn top_slots_changed_while_old_and_new_run_side_by_side() {
    let _heavy = heavy();
    // A rolling change of a partition count: an instance with 3 top slots
    // keeps routing into the old top tier while one with 5 starts.
    let (settings, targets) = setup("rollslots", &["target"]);
    let target = &targets[0];
    let reader = Reader::start(&settings, &[target]);
    let mut old = Instance::start("A", &settings);
    old.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let n = 600;
    let delay = |i: usize| 8_000 + (i * 97) % 25_000;
    for i in 0..n / 2 {
        publish_one(&producer, &settings, target, i, delay(i));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let changed = changed_top_slots(&settings);
    apply_topics(&changed, &[]);
    let new = Instance::start("B", &changed);
    new.wait_ready(Duration::from_secs(30));
    for i in n / 2..n {
        publish_one(&producer, &settings, target, i, delay(i));
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    old.terminate();
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(1));
    let account = Account::of(&changed, target, &arrivals, n);
    account.assert_ok("top slots changed side by side", REBALANCE_BOUND_MS);
}

#[test]
fn records_pending_are_delivered_after_a_tier_prefix_change() {
    let _heavy = heavy();
    // Stop, tier_prefix `<p>` -> `<p>v2.` with the old one listed in
    // topics.previous_tier_prefixes, `topics apply`, start.
    let (settings, targets) = setup("prefix", &["target"]);
    let target = &targets[0];
    let reader = Reader::start(&settings, &[target]);
    let mut a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let n = 300;
    let producer = producer(&settings);
    publish_numbered(&producer, &settings, target, n, |i| {
        15_000 + (i * 83) % 25_000
    });
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            a.metric("kafka_delay_records_ingested_total{outcome=\"tier\"}")
                .is_some_and(|v| v >= n as f64)
        }),
        "the records did not reach the tiers"
    );
    std::thread::sleep(Duration::from_secs(2));
    a.terminate();
    let mut changed = settings.clone();
    changed.topics.tier_prefix = format!("{}v2.", settings.topics.tier_prefix);
    changed.topics.previous_tier_prefixes = vec![settings.topics.tier_prefix.clone()];
    apply_topics(&changed, &[]);
    let retired = layout::retired_tiers(&changed).unwrap();
    assert_eq!(retired.len(), 3, "{retired:?}");
    let held: i64 = retired.iter().map(|r| r.records).sum();
    assert!(held >= n as i64, "the old tiers hold {held}: {retired:?}");
    let mut b = Instance::start("B", &changed);
    b.wait_ready(Duration::from_secs(30));
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(1));
    let account = Account::of(&changed, target, &arrivals, n);
    account.assert_ok("tier_prefix changed with records pending", RESTART_BOUND_MS);
    b.terminate();
    let pruned = prune(&changed);
    assert!(
        pruned.len() == 3
            && pruned
                .iter()
                .all(|p| matches!(p, layout::Pruned::Deleted(_))),
        "{pruned:?}"
    );
}

#[test]
fn an_upgrade_from_the_single_group_layout_redelivers_nothing() {
    let _heavy = heavy();
    // 0.1 read every topic in one group, `kafka.group_id`. Its state is
    // made by an instance under another group id whose offsets are copied
    // into that single group, as 0.1 committed them; then this release
    // starts under `kafka.group_id` (its per-topic groups are new).
    let (settings, targets) = setup("onegroup", &["target"]);
    let target = &targets[0];
    let mut before = settings.clone();
    before.kafka.group_id = format!("{}-before", settings.kafka.group_id);
    let reader = Reader::start(&settings, &[target]);
    let mut a = Instance::start("A", &before);
    a.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let n = 300;
    // Half delivered before the upgrade, half pending in the tiers.
    publish_numbered(&producer, &settings, target, n, |i| match i % 2 {
        0 => 500 + i * 10,
        _ => 15_000 + (i * 83) % 20_000,
    });
    producer.flush(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    a.terminate();
    let table = settings.tier_table().unwrap();
    let loops = std::iter::once(("ingress".to_owned(), settings.topics.ingress.clone())).chain(
        settings
            .tier_group_labels(&table)
            .into_iter()
            .zip(settings.tier_topics(&table)),
    );
    for (label, topic) in loops {
        kafka_delay::kafka::groups::seed_offsets(
            &settings,
            &topic,
            &before.group_of(&label),
            &settings.kafka.group_id,
        )
        .unwrap();
    }
    let b = Instance::start("B", &settings);
    b.wait_ready(Duration::from_secs(30));
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(3));
    let account = Account::of(&settings, target, &arrivals, n);
    account.assert_ok("upgrade from the single group", RESTART_BOUND_MS);
    assert_eq!(
        account.duplicates, 0,
        "records delivered again after the upgrade"
    );
}

fn prune(settings: &kafka_delay::config::Settings) -> Vec<layout::Pruned> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(layout::prune(settings))
        .unwrap()
}

#[test]
fn old_and_new_layouts_side_by_side_deliver_everything() {
    let _heavy = heavy();
    // A rolling change: an instance of the old layout keeps running (and
    // routing into the old tiers) while one of the new layout starts; then
    // the old one stops. The new instance reads the old tiers in their own
    // groups beside it, and alone once it has gone.
    let (settings, targets) = setup("rolling", &["target"]);
    let target = &targets[0];
    let reader = Reader::start(&settings, &[target]);
    let mut old = Instance::start("A", &settings);
    old.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let n = 600;
    let delay = |i: usize| 8_000 + (i * 97) % 20_000;
    for i in 0..n / 2 {
        publish_one(&producer, &settings, target, i, delay(i));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let changed = changed_ticks(&settings);
    apply_topics(&changed, &[]);
    let new = Instance::start("B", &changed);
    new.wait_ready(Duration::from_secs(30));
    // Both layouts route ingress records now.
    for i in n / 2..n {
        publish_one(&producer, &settings, target, i, delay(i));
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    old.terminate();
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(1));
    let account = Account::of(&changed, target, &arrivals, n);
    account.assert_ok("old and new layouts side by side", REBALANCE_BOUND_MS);
}

#[test]
fn a_crash_in_the_middle_of_a_migration_loses_nothing() {
    let _heavy = heavy();
    let (settings, targets) = setup("migcrash", &["target"]);
    let target = &targets[0];
    let reader = Reader::start(&settings, &[target]);
    let mut a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let n = 300;
    publish_numbered(&producer, &settings, target, n, |i| {
        12_000 + (i * 83) % 25_000
    });
    producer.flush(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    a.terminate();
    let changed = changed_ticks(&settings);
    apply_topics(&changed, &[]);
    // The new layout's instance is killed (-9) while draining, and restarted.
    let mut b = Instance::start("B", &changed);
    b.wait_ready(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    b.kill_and_restart();
    b.wait_ready(Duration::from_secs(60));
    let arrivals = reader.wait(n, Duration::from_secs(90), Duration::from_secs(1));
    let account = Account::of(&changed, target, &arrivals, n);
    account.assert_ok("a crash in the middle of a migration", KILL_BOUND_MS);
}

/// Publishes record `i` (`k{i}`, `v{i}`) due `delay_ms` after now.
fn publish_one(
    producer: &crate::helpers::TestProducer,
    settings: &kafka_delay::config::Settings,
    target: &str,
    i: usize,
    delay_ms: usize,
) {
    let delay = delay_ms.to_string();
    publish(
        producer,
        settings,
        Some(&format!("k{i}")),
        &format!("v{i}"),
        &[("x-delay", &delay), ("x-target-topic", target)],
    );
}
