//! `kafka-delay bench`: measures the service beside a raw rdkafka
//! consume→produce copy on the same broker, in the same run.
//!
//! Phases: (1) raw copy of N records; (2) the service forwarding N records
//! that are all due now (throughput, CPU); (3) M records with delays spread
//! over every tier (lateness percentiles, early / lost / duplicate counts,
//! writes per record); optionally (4) `--park` records in the far tiers and
//! resident memory before and after. Benchmarks measure; they assert nothing.

mod load;
mod raw;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::broker::LocalBroker;
use crate::config::Settings;
use crate::consumer::Health;
use crate::demo::{create_targets, local_settings};
use crate::metrics::Metrics;
use crate::service;
use crate::topics::{self, Spec};

/// Benchmark options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Records in the throughput phases (raw copy and service).
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000)]
    pub keys: usize,
    /// Partitions of the ingress, target and raw topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Records in the lateness phase (delays uniform over 0..delay-max).
    #[arg(long, default_value_t = 20_000)]
    pub delayed: usize,
    /// Longest delay of the lateness phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub delay_max: Duration,
    /// Tier ticks of the throughput and lateness phases.
    #[arg(long, value_delimiter = ',', default_value = "50ms,500ms,5s")]
    pub ticks: Vec<String>,
    /// Records to park in the far tiers (default tick table, delays 2 h–30 d)
    /// to show resident memory stays flat; 0 skips the phase.
    #[arg(long, default_value_t = 0)]
    pub park: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Everything the benchmark measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub records: usize,
    pub payload_bytes: usize,
    pub partitions: i32,
    pub raw_records_per_sec: f64,
    pub raw_cpu_seconds: f64,
    pub service_records_per_sec: f64,
    pub service_cpu_seconds: f64,
    pub ratio_to_raw: f64,
    pub throughput_check: load::Verification,
    pub delayed_records: usize,
    pub lateness_p50_ms: i64,
    pub lateness_p90_ms: i64,
    pub lateness_p99_ms: i64,
    pub lateness_max_ms: i64,
    pub delayed_check: load::Verification,
    pub writes_per_record: f64,
    pub late_appends: u64,
    pub peak_rss_mib: f64,
    pub parked_records: usize,
    pub park_rss_before_mib: f64,
    pub park_rss_after_mib: f64,
}

/// Resident and peak resident memory of this process, MiB (Linux).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) of this process so far, seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The service in a thread, with its metrics.
struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

fn start_service(settings: &Settings) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new(&service::tier_labels(settings)?));
    let health = Arc::new(Health::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (s, flag, m, h) = (
        settings.clone(),
        stop.clone(),
        metrics.clone(),
        health.clone(),
    );
    let handle = std::thread::Builder::new()
        .name("kd-engine".into())
        .spawn(move || {
            if let Err(error) = service::run_with(&s, flag, false, m, h) {
                eprintln!("service failed: {error}");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health.joined.load(Ordering::Relaxed) {
        anyhow::ensure!(Instant::now() < deadline, "service did not join its group");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Running {
        stop,
        handle,
        metrics,
    })
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

fn prepare(settings: &Settings, partitions: i32, extra: &[&str]) -> anyhow::Result<()> {
    let mut spec = Spec::load(None)?;
    spec.ingress.partitions = partitions;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let reports = topics::apply(settings, &spec).await?;
        anyhow::ensure!(!topics::has_drift(&reports), "topic drift: {reports:?}");
        create_targets(settings, extra, partitions).await?;
        anyhow::Ok(())
    })
}

/// Runs the benchmark and prints (and optionally writes) the results.
pub fn run(args: &BenchArgs) -> anyhow::Result<Results> {
    let broker = LocalBroker::start()?;
    let prefix = format!("bench{}.", std::process::id());
    let ticks: Vec<&str> = args.ticks.iter().map(String::as_str).collect();
    let settings = local_settings(&broker.bootstrap, &prefix, &ticks);
    let names = ["target", "delayed", "raw-src", "raw-dst"].map(|n| format!("{prefix}{n}"));
    let [target, delayed_target, raw_src, raw_dst] = &names;
    prepare(
        &settings,
        args.partitions,
        &names.each_ref().map(String::as_str),
    )?;
    let n = args.records;
    let mut r = Results {
        records: n,
        payload_bytes: args.payload,
        partitions: args.partitions,
        delayed_records: args.delayed,
        ..Default::default()
    };

    eprintln!("publishing {n} records for the raw copy and {n} for the service…");
    load::publish(
        &settings,
        raw_src,
        n,
        args.payload,
        args.keys,
        Some(target),
        |_| Some(0),
    )?;
    load::publish(
        &settings,
        &settings.topics.ingress,
        n,
        args.payload,
        args.keys,
        Some(target),
        |_| Some(0),
    )?;

    eprintln!("raw rdkafka copy…");
    let cpu = cpu_seconds();
    r.raw_records_per_sec = raw::copy(&settings, raw_src, raw_dst, n as u64)?;
    r.raw_cpu_seconds = cpu_seconds() - cpu;

    eprintln!("service, all records due now…");
    let cpu = cpu_seconds();
    let service = start_service(&settings)?;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (service.metrics.delivered_total() as usize) < n && Instant::now() < deadline {
        if first.is_none() && service.metrics.delivered_total() > 0 {
            first = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    r.service_records_per_sec = if elapsed > 0.0 {
        service.metrics.delivered_total() as f64 / elapsed
    } else {
        0.0
    };
    r.service_cpu_seconds = cpu_seconds() - cpu;
    r.ratio_to_raw = if r.raw_records_per_sec > 0.0 {
        r.service_records_per_sec / r.raw_records_per_sec
    } else {
        0.0
    };
    r.throughput_check = load::verify(&settings, target, n, Duration::from_secs(10))?;

    eprintln!(
        "service, {} records with delays over 0..{:?}…",
        args.delayed, args.delay_max
    );
    let writes_before = service.metrics.tier_writes_total();
    let reader = {
        let (s, t, m) = (settings.clone(), delayed_target.clone(), args.delayed);
        let idle = args.delay_max + Duration::from_secs(15);
        std::thread::spawn(move || load::verify(&s, &t, m, idle))
    };
    std::thread::sleep(Duration::from_secs(3));
    let max = args.delay_max.as_millis() as i64;
    let mut rng = fastrand::Rng::with_seed(42);
    load::publish(
        &settings,
        &settings.topics.ingress,
        args.delayed,
        args.payload,
        args.keys,
        Some(delayed_target),
        |_| Some(rng.i64(0..=max)),
    )?;
    let check = reader.join().expect("reader thread")?;
    let lat = &check.lateness_ms;
    r.lateness_p50_ms = load::percentile(lat, 0.50);
    r.lateness_p90_ms = load::percentile(lat, 0.90);
    r.lateness_p99_ms = load::percentile(lat, 0.99);
    r.lateness_max_ms = load::percentile(lat, 1.0);
    r.writes_per_record =
        (service.metrics.tier_writes_total() - writes_before) as f64 / args.delayed.max(1) as f64;
    r.late_appends = service.metrics.late_appends_total();
    r.delayed_check = check;
    service.stop();
    r.peak_rss_mib = rss_mib().1;

    if args.park > 0 {
        park(&broker.bootstrap, args, &mut r)?;
    }
    print(&r);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(r)
}

/// Parks `args.park` records in the 1 h and 1 d tiers of the default tick
/// table and compares resident memory before and after.
fn park(bootstrap: &str, args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let prefix = format!("park{}.", std::process::id());
    let mut settings = local_settings(bootstrap, &prefix, &["1s", "1m", "1h", "1d"]);
    settings.wheel.top_slots = Settings::default().wheel.top_slots;
    let target = format!("{prefix}target");
    prepare(&settings, args.partitions, &[&target])?;
    let service = start_service(&settings)?;
    std::thread::sleep(Duration::from_secs(2));
    r.park_rss_before_mib = rss_mib().0;
    eprintln!("parking {} records in the far tiers…", args.park);
    let mut rng = fastrand::Rng::with_seed(9);
    let (hour, month) = (3_600_000_i64, 30 * 86_400_000_i64);
    load::publish(
        &settings,
        &settings.topics.ingress,
        args.park,
        args.payload,
        args.keys,
        Some(&target),
        |_| Some(rng.i64(2 * hour..month)),
    )?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while (service.metrics.tier_writes_total() as usize) < args.park && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    r.park_rss_after_mib = rss_mib().0;
    r.parked_records = service.metrics.tier_writes_total() as usize;
    service.stop();
    Ok(())
}

fn print(r: &Results) {
    let t = &r.throughput_check;
    let d = &r.delayed_check;
    println!(
        "kafka-delay bench — {} records × {} B, {} partitions",
        r.records, r.payload_bytes, r.partitions
    );
    println!(
        "  raw rdkafka copy      {:>10.0} records/s  ({:.1} CPU s)",
        r.raw_records_per_sec, r.raw_cpu_seconds
    );
    println!(
        "  kafka-delay (due now) {:>10.0} records/s  ({:.1} CPU s)  = {:.0} % of raw",
        r.service_records_per_sec,
        r.service_cpu_seconds,
        r.ratio_to_raw * 100.0
    );
    println!(
        "    delivered {}/{}: lost {}, duplicates {}",
        t.received, t.expected, t.lost, t.duplicates
    );
    println!(
        "  delayed records {}: lateness p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        r.delayed_records,
        r.lateness_p50_ms,
        r.lateness_p90_ms,
        r.lateness_p99_ms,
        r.lateness_max_ms
    );
    println!(
        "    early {}, lost {}, duplicates {}; tier writes per record {:.2}; late appends {}",
        d.early, d.lost, d.duplicates, r.writes_per_record, r.late_appends
    );
    println!(
        "  peak resident memory  {:.0} MiB (whole bench process)",
        r.peak_rss_mib
    );
    if r.parked_records > 0 {
        println!(
            "  parked {} records in far tiers: resident {:.0} MiB before, {:.0} MiB after",
            r.parked_records, r.park_rss_before_mib, r.park_rss_after_mib
        );
    }
}
