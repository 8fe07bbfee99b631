//! `kafka-delay demo`: a local broker, the topics, the service and a handful
//! of records whose delays land in every tier of a small tick table; prints
//! each arrival with its lateness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

use crate::broker::LocalBroker;
use kafka_delay::config::Settings;
use kafka_delay::kafka::topics::{self, Spec};
use kafka_delay::model::clock::wall_ms as now_ms;
use kafka_delay::{kafka, model::envelope, service};

/// Settings for a single local broker: replication 1, fast group joins and
/// fetches, tier topics under `prefix`, the given ticks.
pub fn local_settings(bootstrap: &str, prefix: &str, ticks: &[&str]) -> Settings {
    let mut s = Settings::default();
    s.kafka.bootstrap_servers = bootstrap.to_owned();
    s.kafka.group_id = format!("{prefix}group");
    s.topics.ingress = format!("{prefix}in");
    s.topics.dead_letter = format!("{prefix}dlq");
    s.topics.cancel = format!("{prefix}cancel");
    s.topics.clock = format!("{prefix}clock");
    s.topics.tier_prefix = prefix.to_owned();
    s.wheel.ticks = ticks
        .iter()
        .map(|t| humantime::parse_duration(t).expect("valid tick").into())
        .collect();
    s.wheel.top_slots = 3;
    s.wheel.replication_factor = 1;
    s.http.enabled = false;
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
        ("max.poll.interval.ms", "7000"),
    ] {
        s.kafka.consumer_properties.insert(k.into(), v.into());
    }
    s
}

/// Creates plain application topics (targets) with `partitions` each.
pub async fn create_targets(
    settings: &Settings,
    names: &[&str],
    partitions: i32,
) -> Result<(), rdkafka::error::KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka::admin_config(settings).create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    admin.create_topics(&topics, &AdminOptions::new()).await?;
    Ok(())
}

/// The demo's records: (label, delay ms).
const RECORDS: [(&str, i64); 7] = [
    ("due now", 0),
    ("timer (in memory)", 250),
    ("tier 50ms", 700),
    ("tier 500ms", 4_000),
    ("tier 5s", 12_000),
    ("roll-over past the 5s tier's horizon", 22_000),
    ("tier 500ms, second record", 3_000),
];

/// Runs the demo; returns the largest lateness seen (ms).
pub fn run() -> anyhow::Result<i64> {
    let broker = LocalBroker::start()?;
    let prefix = format!("demo{}.", std::process::id());
    let mut settings = local_settings(&broker.bootstrap, &prefix, &["50ms", "500ms", "5s"]);
    settings.wheel.clock = broker.clock;
    let table = settings.tier_table()?;
    println!("broker {}; tier table:", broker.bootstrap);
    for (tier, name) in table.tiers().iter().zip(settings.tier_topics(&table)) {
        println!(
            "  {name:<16} tick {:>5} ms, {:>2} slots, horizon {:>6} ms, lead {:>4} ms",
            tier.tick_ms,
            tier.slots,
            tier.horizon_ms(),
            tier.lead_ms
        );
    }
    println!(
        "  due-soon window {} ms (held in memory)",
        table.due_soon_window_ms()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let target = format!("{prefix}target");
    runtime.block_on(async {
        let reports = topics::apply(&settings, &Spec::load(None)?).await?;
        for r in &reports {
            println!("  {r}");
        }
        create_targets(&settings, &[&target], 1).await?;
        anyhow::Ok(())
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let service = {
        let (settings, stop) = (settings.clone(), stop.clone());
        std::thread::spawn(move || service::run(&settings, stop, false))
    };

    let mut consumer_settings = settings.clone();
    consumer_settings.kafka.group_id = format!("{prefix}reader");
    let reader: BaseConsumer =
        kafka::consumer_config(&consumer_settings, &consumer_settings.kafka.group_id, false)
            .create()?;
    reader.subscribe(&[&target])?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(&settings).create()?;
    // Warm-up: a new idempotent producer's first acknowledgement and the
    // first delivery to a topic the service has not seen cost a round trip
    // or two; pay them before the clock starts.
    let publish = |label: &str, delay: i64| -> anyhow::Result<()> {
        let delay_text = delay.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: envelope::DELAY,
                value: Some(&delay_text),
            })
            .insert(Header {
                key: envelope::TARGET_TOPIC,
                value: Some(&target),
            });
        let record = BaseRecord::<str, str>::to(&settings.topics.ingress)
            .key(label)
            .payload(label)
            .headers(headers)
            .timestamp(now_ms());
        producer.send(record).map_err(|(e, _)| e)?;
        Ok(())
    };
    let started = Instant::now();
    publish("warm-up", 0)?;
    producer.flush(Duration::from_secs(10))?;
    while !matches!(reader.poll(Duration::from_millis(100)), Some(Ok(_))) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "warm-up record never arrived"
        );
    }
    println!(
        "warm-up record delivered after {} ms (group joins, producer start-up, target metadata)",
        started.elapsed().as_millis()
    );
    // No flush here: the reader must be polling when the first record lands.
    for (label, delay) in RECORDS {
        publish(label, delay)?;
    }
    println!(
        "published {} records; waiting for them on {target}:",
        RECORDS.len()
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worst = 0;
    let mut arrived = 0;
    while arrived < RECORDS.len() && Instant::now() < deadline {
        let Some(Ok(msg)) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let now = now_ms();
        let scheduled = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == envelope::SCHEDULED_AT))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok())
            .unwrap_or(now);
        let lateness = now - scheduled;
        worst = worst.max(lateness);
        arrived += 1;
        let label = msg
            .payload_view::<str>()
            .and_then(Result::ok)
            .unwrap_or("?");
        println!(
            "  arrived: {label:<40} lateness {lateness:>4} ms{}",
            if lateness < 0 { "  EARLY!" } else { "" }
        );
    }
    stop.store(true, Ordering::Relaxed);
    service.join().expect("service thread")?;
    println!(
        "{arrived}/{} records arrived; worst lateness {worst} ms",
        RECORDS.len()
    );
    anyhow::ensure!(arrived == RECORDS.len(), "records missing");
    Ok(worst)
}
