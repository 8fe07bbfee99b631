//! `kafka-delay dlq list|replay` on the real broker: dead letters counted by
//! reason, replayed with their contents, a replay killed part-way and run
//! again publishes every record, none a second time past its last batch.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;
use kafka_delay::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::faults::{heavy, BIN};
use crate::helpers::*;

/// Runs `kafka-delay dlq <args>` against `settings`.
fn dlq(settings: &Settings, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("dlq")
        .args(args)
        .envs(settings.env_overrides())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kafka-delay dlq")
}

/// `dlq <args> --json`, asserting success.
fn dlq_json(settings: &Settings, args: &[&str]) -> Value {
    let out = dlq(settings, &[args, &["--json"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dlq {args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Offsets committed by `group` on `topic`, summed over partitions.
fn committed_total(settings: &Settings, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka::consumer_config(settings, group, false)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|c| {
            c.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The ingress topic's end offsets, summed.
fn ingress_end(settings: &Settings) -> i64 {
    let consumer: BaseConsumer = kafka::consumer_config(settings, "ends", false)
        .create()
        .unwrap();
    let topic = &settings.topics.ingress;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .unwrap()
                .1
        })
        .sum()
}

#[test]
fn dead_letters_are_listed_and_replayed_once_even_after_kill_9() {
    let _heavy = heavy();
    let (settings, targets) = setup("dlq", &["orders"]);
    let later = format!("{}later", settings.topics.tier_prefix);
    let n = 40_000;
    let bad = 10;
    {
        // Records for a topic that does not exist yet: dead-lettered with
        // reason unknown_target; and a few with a bad delay.
        let service = Service::start(&settings);
        let p = producer(&settings);
        for i in 0..n {
            let trace = format!("t{i}");
            let headers = [
                ("x-delay", "500"),
                ("x-target-topic", later.as_str()),
                ("trace", trace.as_str()),
            ];
            publish(
                &p,
                &settings,
                Some(&format!("k{i}")),
                &format!("v{i}"),
                &headers,
            );
        }
        for i in 0..bad {
            let headers = [("x-delay", "soon"), ("x-target-topic", targets[0].as_str())];
            publish(&p, &settings, None, &format!("bad{i}"), &headers);
        }
        let dead = read(
            &settings,
            &[&settings.topics.dead_letter],
            n + bad,
            Duration::from_secs(120),
            Duration::from_secs(1),
        );
        assert_eq!(dead.len(), n + bad, "every record dead-lettered once");
        service.stop();
    }

    let listed = dlq_json(&settings, &["list"]);
    println!("dlq list: {listed}");
    assert_eq!(listed["total"], (n + bad) as u64);
    assert_eq!(listed["by_reason"]["unknown_target"], n as u64);
    assert_eq!(listed["by_reason"]["invalid_delay"], bad as u64);
    assert_eq!(listed["by_target"][&later], n as u64);
    let only_bad = dlq_json(&settings, &["list", "--reason", "invalid_delay"]);
    assert_eq!(only_bad["total"], bad as u64);
    let bad_flag = dlq(&settings, &["list", "--since", "yesterday"]);
    assert_eq!(
        bad_flag.status.code(),
        Some(64),
        "a bad --since is a usage error"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(kafka_delay_tools::demo::create_targets(
        &settings,
        &[&later],
        3,
    ))
    .unwrap();

    // A dry run publishes and records nothing.
    let before = ingress_end(&settings);
    let dry = dlq_json(
        &settings,
        &["replay", "--reason", "unknown_target", "--dry-run"],
    );
    assert_eq!(dry["published"], n as u64, "{dry}");
    assert_eq!(ingress_end(&settings), before, "a dry run published");
    let group = format!("{}.dlq.replay", settings.kafka.group_id);
    let dlq_topic = settings.topics.dead_letter.clone();
    assert_eq!(committed_total(&settings, &group, &dlq_topic), 0);

    // kill -9 once the first batch is recorded.
    let mut child = Command::new(BIN)
        .args(["dlq", "replay", "--reason", "unknown_target"])
        .envs(settings.env_overrides())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while committed_total(&settings, &group, &dlq_topic) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no position recorded"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished_early = child.try_wait().unwrap().is_some();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !finished_early,
        "the replay ended before the kill: nothing interrupted"
    );
    let first = ingress_end(&settings) - before;
    println!("killed after publishing {first} of {n}");
    assert!(
        first > 0 && (first as usize) < n,
        "interrupted part-way: {first}"
    );

    let second = dlq_json(&settings, &["replay", "--reason", "unknown_target"]);
    println!("second replay: {second}");
    let third = dlq_json(&settings, &["replay", "--reason", "unknown_target"]);
    assert_eq!(third["published"], 0, "run twice, published twice: {third}");
    assert_eq!(third["read"], 0, "{third}");

    let service = Service::start(&settings);
    let reader = Reader::start(&settings, &[&later, &targets[0]]);
    let arrivals = reader.wait(n, Duration::from_secs(180), Duration::from_secs(3));
    drop(service);
    let (_, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    println!("replayed {n} records: {duplicates} duplicates after the kill -9");
    assert!(
        duplicates as u64 <= kafka_delay::cli::dlq::BATCH,
        "{duplicates} duplicates: more than one batch"
    );
    assert!(
        arrivals
            .iter()
            .all(|a| rdkafka::Message::topic(&a.msg) == later),
        "a record not asked for was replayed"
    );
    for a in &arrivals {
        let i = &a.value()[1..];
        assert_eq!(a.header("trace").as_deref(), Some(format!("t{i}").as_str()));
        let key = rdkafka::Message::key(&a.msg).map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(key, Some(format!("k{i}")));
        assert!(a.header("x-delay-error").is_none() && a.header("x-delay-reason").is_none());
    }
}
