//! The service's producer ([`PolledProducer`]): its delivery thread sleeps
//! while nothing is in flight and wakes as soon as a delivery report is
//! queued.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_delay::kafka::native::PolledProducer;
use kafka_delay::model::clock::wall_ms as now_ms;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::helpers::*;

/// Records when the last delivery report arrived (epoch ms).
#[derive(Default)]
struct LastReport(Arc<AtomicI64>);

impl ClientContext for LastReport {}

impl ProducerContext for LastReport {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        assert!(result.is_ok(), "delivery failed: {result:?}");
        self.0.store(now_ms(), Ordering::SeqCst);
    }
}

/// CPU time (user + system, clock ticks) of this process's thread named
/// `name`; None if there is none.
fn thread_ticks(name: &str) -> Option<u64> {
    let mut ticks = None;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        ticks = Some(ticks.unwrap_or(0) + used);
    }
    ticks
}

#[test]
fn an_idle_producer_sleeps_and_a_delivery_report_wakes_it_at_once() {
    let (settings, topics) = setup("polled", &["t"]);
    let last = Arc::new(AtomicI64::new(0));
    let producer = PolledProducer::create(
        &kafka_delay::kafka::producer_config(&settings),
        LastReport(last.clone()),
    )
    .unwrap();
    producer
        .send(BaseRecord::<str, str>::to(&topics[0]).payload("warm-up"))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    // Idle: rdkafka's ThreadedProducer spends about 1 % of a core here
    // (30 ms in 3 s) polling with a zero wait; ours wakes 10 times a second.
    let thread = PolledProducer::thread_name(&producer);
    let before = thread_ticks(&thread).expect("the delivery thread runs");
    std::thread::sleep(Duration::from_secs(3));
    let idle_ms = (thread_ticks(&thread).unwrap() - before) * 1000 / clock_ticks_per_second();
    assert!(
        idle_ms <= 10,
        "idle delivery thread used {idle_ms} ms of CPU in 3 s"
    );

    // Awake: each report arrives while the thread would otherwise sleep
    // (records 150 ms apart, longer than its 100 ms idle wake-up).
    let mut worst_ms = 0;
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        let sent = Instant::now();
        producer
            .send(BaseRecord::<str, str>::to(&topics[0]).payload(&format!("r{i}")))
            .map_err(|(e, _)| e)
            .unwrap();
        let start = now_ms();
        while last.load(Ordering::SeqCst) < start {
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "no delivery report"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        worst_ms = worst_ms.max(sent.elapsed().as_millis());
    }
    // The broker's acknowledgement plus linger.ms (5) take a few ms; a
    // report left for the 100 ms idle wake-up would take up to 100 ms more.
    assert!(
        worst_ms < 60,
        "slowest delivery report {worst_ms} ms after the send"
    );
    drop(producer);
    assert_eq!(
        thread_ticks(&thread),
        None,
        "the delivery thread outlived the producer"
    );
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}
