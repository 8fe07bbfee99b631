//! Changing the wheel with records pending: the tier topics of the earlier
//! layout are drained into the current one, every record delivered at its
//! due time, none early (docs/architecture.md, "Changing the wheel").

use std::time::Duration;

use rdkafka::producer::Producer;

use crate::faults::{heavy, wait_until, Account, Instance};
use crate::helpers::*;

/// Lateness a restart between the layouts may cost, ms: the records are
/// due 15 s or more after they are published, after the restart.
const RESTART_BOUND_MS: i64 = 3_000;

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

    let mut changed = settings.clone();
    changed.wheel.ticks = ["100ms", "1s", "10s"]
        .iter()
        .map(|t| humantime::parse_duration(t).unwrap().into())
        .collect();
    apply_topics(&changed, &[]);
    let b = Instance::start("B", &changed);
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
}
