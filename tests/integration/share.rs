//! Two instances share every window of due times: with the default ticks,
//! consecutive seconds (consecutive slots of the 1 s tier) alternate between
//! the two halves of the tier's partitions (`wheel.slot_order = "spread"`),
//! and librdkafka's assignor hands each instance a contiguous half, so each
//! delivers 40–60 % of any 10-second window of a spread load. With the
//! sequential order (the layout before) one instance delivered 99.5 %.

use std::time::{Duration, Instant};

use kafka_delay::config::Settings;

use crate::faults::{heavy, wait_until, Instance};
use crate::helpers::*;

/// Each instance's deliveries, sampled: (ms since the first sample, A, B).
type Samples = Vec<(i64, f64, f64)>;

/// Runs the spread load on two instances of `settings` and returns the
/// lowest and highest share of instance A over the sliding 10 s windows.
fn window_shares(settings: &Settings, target: &str) -> (f64, f64) {
    let a = Instance::start("A", settings);
    a.wait_ready(Duration::from_secs(60));
    let b = Instance::start("B", settings);
    b.wait_ready(Duration::from_secs(60));
    let tier = "kafka_delay_partitions_assigned{source=\"1s\"}";
    let balanced = wait_until(Duration::from_secs(60), || {
        a.metric(tier) == Some(32.0) && b.metric(tier) == Some(32.0)
    });
    assert!(
        balanced,
        "1 s tier not split 32/32: {:?} {:?}",
        a.metric(tier),
        b.metric(tier)
    );
    // The field report's load: 6,000 records, delays 2–25 s.
    let producer = producer(settings);
    let n = 6_000;
    let mut rng = fastrand::Rng::with_seed(24);
    let delays: Vec<usize> = (0..n).map(|_| rng.usize(2_000..25_000)).collect();
    publish_numbered(&producer, settings, target, n, |i| delays[i]);
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    let delivered = "kafka_delay_records_delivered_total";
    let started = Instant::now();
    let mut samples: Samples = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        let (x, y) = (a.metric(delivered), b.metric(delivered));
        let (x, y) = (x.unwrap_or(0.0), y.unwrap_or(0.0));
        samples.push((started.elapsed().as_millis() as i64, x, y));
        if x + y >= n as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let last = samples.last().copied().unwrap_or_default();
    assert!(
        last.1 + last.2 >= n as f64,
        "delivered {} of {n}",
        last.1 + last.2
    );
    println!("deliveries: A {} B {}", last.1, last.2);
    // Windows inside the load: from the first delivery to the last (at its
    // edges a window holds fewer than ten seconds of due times).
    let first = samples.iter().find(|s| s.1 + s.2 > 0.0).map_or(0, |s| s.0);
    let (mut low, mut high) = (1.0_f64, 0.0_f64);
    for (i, &(t0, a0, b0)) in samples.iter().enumerate() {
        if t0 < first || t0 + 10_000 > last.0 {
            continue;
        }
        let Some(&(_, a1, b1)) = samples[i..].iter().rev().find(|s| s.0 <= t0 + 10_000) else {
            continue;
        };
        let (da, db) = (a1 - a0, b1 - b0);
        let share = da / (da + db);
        println!("window from {t0} ms: A {da} B {db} ({share:.3})");
        low = low.min(share);
        high = high.max(share);
    }
    assert!(high > 0.0, "no 10 s window inside the load");
    (low, high)
}

#[test]
fn two_instances_share_every_10s_window_of_a_spread_load() {
    let _heavy = heavy();
    let (mut settings, targets) = setup_on(
        &bootstrap(),
        "share",
        &["target"],
        &["1s", "1m", "1h", "1d"],
    );
    settings.wheel.top_slots = 32;
    apply_topics(&settings, &[]);
    let (low, high) = window_shares(&settings, &targets[0]);
    println!("instance A's share of each 10 s window: {low:.3} to {high:.3}");
    assert!(
        low >= 0.4 && high <= 0.6,
        "a 10 s window shared {low:.3}..{high:.3}, outside 40/60"
    );
}
