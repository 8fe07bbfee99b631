//! Cancel and reschedule (`x-delay-id`, the cancel topic): a cancelled
//! record is never delivered, a rescheduled one is delivered once at its
//! new time, and cancellations survive a restart (each instance reads the
//! whole cancel topic before it forwards anything).

use std::time::Duration;

use kafka_delay::cancel;
use kafka_delay::consumer::now_ms;

use crate::faults::*;
use crate::helpers::*;

type Producer = rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// Publishes `value` for `target`, due in `delay_ms`, with `x-delay-id` `id`.
fn publish_with_id(
    producer: &Producer,
    settings: &kafka_delay::config::Settings,
    target: &str,
    id: Option<&str>,
    value: &str,
    delay_ms: i64,
) {
    let delay = delay_ms.to_string();
    let mut headers = vec![("x-delay", delay.as_str()), ("x-target-topic", target)];
    if let Some(id) = id {
        headers.push(("x-delay-id", id));
    }
    publish(producer, settings, Some(value), value, &headers);
    rdkafka::producer::Producer::flush(producer, Duration::from_secs(10)).unwrap();
}

fn values(arrivals: &[Arrival]) -> Vec<String> {
    let mut v: Vec<String> = arrivals.iter().map(Arrival::value).collect();
    v.sort();
    v
}

#[test]
fn cancelled_records_are_not_delivered_and_a_rescheduled_one_is_once() {
    let _heavy = heavy();
    let (settings, targets) = setup("cancel", &["target", "other"]);
    let (target, other) = (&targets[0], &targets[1]);
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target, other]);
    let p = producer(&settings);
    // Due in 9 s: in a tier when cancelled. "late" is due in 0.3 s: it is
    // delivered before the cancellation of its id, which changes nothing.
    publish_with_id(&p, &settings, target, Some("order-1"), "cancelled", 9_000);
    publish_with_id(&p, &settings, target, Some("order-2"), "moved-old", 9_000);
    publish_with_id(&p, &settings, target, None, "plain", 9_000);
    publish_with_id(&p, &settings, other, Some("order-3"), "other-target", 9_000);
    publish_with_id(
        &p,
        &settings,
        target,
        Some("order-3"),
        "same-id-target",
        9_000,
    );
    publish_with_id(&p, &settings, target, Some("order-4"), "late", 300);
    std::thread::sleep(Duration::from_millis(1_000));
    let now = now_ms();
    // (Each publish starts a producer of its own, as the CLI does.)
    cancel::publish(&settings, "order-1", None, now, now + 15_000).unwrap();
    cancel::publish(&settings, "order-4", None, now, now + 15_000).unwrap();
    // Only order-3's records for `target`.
    cancel::publish(&settings, "order-3", Some(target), now, now + 15_000).unwrap();
    // Reschedule: cancel, then publish again with the same id, earlier.
    cancel::publish(&settings, "order-2", None, now, now + 15_000).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    publish_with_id(&p, &settings, target, Some("order-2"), "moved-new", 1_500);
    let arrivals = reader.wait(4, Duration::from_secs(25), Duration::from_secs(3));
    let got = values(&arrivals);
    println!("delivered: {got:?}");
    assert_eq!(got, vec!["late", "moved-new", "other-target", "plain"]);
    for a in &arrivals {
        let due: i64 = a.header("x-delay-scheduled-at").unwrap().parse().unwrap();
        assert!(a.seen_ms >= due, "{} arrived early", a.value());
    }
    // The moved record keeps its id; a record is delivered with it.
    let moved = arrivals.iter().find(|a| a.value() == "moved-new").unwrap();
    assert_eq!(moved.header("x-delay-id").as_deref(), Some("order-2"));
    assert!(
        wait_until(Duration::from_secs(5), || a
            .metric("kafka_delay_records_cancelled_total")
            == Some(3.0)),
        "cancelled: {:?}",
        a.metric("kafka_delay_records_cancelled_total")
    );
    assert_eq!(a.metric("kafka_delay_cancellations_outstanding"), Some(4.0));
}

#[test]
fn cancellations_survive_a_restart() {
    let _heavy = heavy();
    let (settings, targets) = setup("cancelrestart", &["target"]);
    let target = &targets[0];
    let mut a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    publish_with_id(&p, &settings, target, Some("r-1"), "cancelled", 6_000);
    publish_with_id(&p, &settings, target, None, "kept", 6_000);
    let now = now_ms();
    cancel::publish(&settings, "r-1", None, now + 1, now + 20_000).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The instance that read the cancellation dies; a fresh one must know
    // it before it forwards anything.
    a.kill();
    let b = Instance::start("B", &settings);
    b.wait_ready(Duration::from_secs(30));
    let arrivals = reader.wait(1, Duration::from_secs(20), Duration::from_secs(3));
    assert_eq!(values(&arrivals), vec!["kept"]);
    assert_eq!(b.metric("kafka_delay_records_cancelled_total"), Some(1.0));
}

#[test]
fn an_invalid_id_is_dead_lettered_with_its_reason() {
    let _heavy = heavy();
    let (settings, targets) = setup("badid", &["target"]);
    let target = &targets[0];
    let a = Instance::start("A", &settings);
    a.wait_ready(Duration::from_secs(30));
    let dlq = Reader::start(&settings, &[settings.topics.dead_letter.as_str()]);
    let long = "i".repeat(cancel::ID_MAX_BYTES + 1);
    let p = producer(&settings);
    publish_with_id(&p, &settings, target, Some(&long), "too-long", 0);
    let dead = dlq.wait(1, Duration::from_secs(20), Duration::from_secs(1));
    assert_eq!(dead.len(), 1);
    let error = dead[0].header("x-delay-error").unwrap();
    assert!(
        error.starts_with("x-delay-id must be UTF-8, 1 to 256 bytes"),
        "{error}"
    );
}
