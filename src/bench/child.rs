//! The service as a child process (`kafka-delay run`), configured through
//! environment overrides, for measurements of its own memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Settings;

/// Starts `kafka-delay run` for `settings`, serving metrics on `port`.
pub fn spawn(settings: &Settings, port: u16) -> std::io::Result<Child> {
    let mut settings = settings.clone();
    settings.http.enabled = true;
    settings.http.bind = format!("127.0.0.1:{port}");
    Command::new(std::env::current_exe()?)
        .arg("run")
        .envs(settings.env_overrides())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
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
