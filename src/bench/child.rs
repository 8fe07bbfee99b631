//! The service as a child process (`kafka-delay run`), configured through
//! environment overrides, for measurements of its own memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Settings;

/// Starts `kafka-delay run` for `settings`, serving metrics on `port`.
pub fn spawn(settings: &Settings, port: u16) -> std::io::Result<Child> {
    let ticks: Vec<String> = settings
        .wheel
        .ticks
        .iter()
        .map(|t| format!("{}ms", t.as_millis()))
        .collect();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .env(
            "KAFKA_DELAY__KAFKA__BOOTSTRAP_SERVERS",
            &settings.kafka.bootstrap_servers,
        )
        .env("KAFKA_DELAY__KAFKA__GROUP_ID", &settings.kafka.group_id)
        .env("KAFKA_DELAY__TOPICS__INGRESS", &settings.topics.ingress)
        .env(
            "KAFKA_DELAY__TOPICS__DEAD_LETTER",
            &settings.topics.dead_letter,
        )
        .env(
            "KAFKA_DELAY__TOPICS__TIER_PREFIX",
            &settings.topics.tier_prefix,
        )
        .env("KAFKA_DELAY__WHEEL__TICKS", ticks.join(","))
        .env(
            "KAFKA_DELAY__WHEEL__TOP_SLOTS",
            settings.wheel.top_slots.to_string(),
        )
        .env("KAFKA_DELAY__WHEEL__REPLICATION_FACTOR", "1")
        .env("KAFKA_DELAY__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in &settings.kafka.consumer_properties {
        let key = format!(
            "KAFKA_DELAY__KAFKA__CONSUMER_PROPERTIES__{}",
            k.replace('.', "_").to_uppercase()
        );
        cmd.env(key, v);
    }
    cmd.spawn()
}

/// GET /metrics from the child.
fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Scrapes until `done(metrics)` holds (up to 15 minutes); returns the text.
pub fn wait_for(port: u16, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(text) = scrape(port).filter(|t| done(t)) {
            return Ok(text);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the service child never got there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sum of `kafka_delay_tier_writes_total` over tiers.
pub fn tier_writes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kafka_delay_tier_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Resident memory of process `pid`, MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}
