//! `kafka-delay bench`: measures the service beside a raw rdkafka
//! consume→produce copy on the same broker, in the same run.
//!
//! Phases: (1) raw copy of N records; (2) the service forwarding N records
//! that are all due now (throughput, CPU); (3) M records with delays spread
//! over every tier (lateness percentiles, early / lost / duplicate counts,
//! writes per record); optionally (4) `--park` records in the far tiers and
//! resident memory before and after. Benchmarks measure; they assert nothing.

mod child;
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
use crate::demo::{create_targets, local_settings};
use crate::health::Health;
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
    /// Rounds of the throughput comparison (raw copy, then the service, in
    /// each round); the best round of each side is reported.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Records in the lateness phase (delays uniform over 0..delay-max).
    #[arg(long, default_value_t = 20_000)]
    pub delayed: usize,
    /// Publishing rate of the lateness phase, records/s (a burst would
    /// measure the publisher's queue, not the service).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Shortest delay of the lateness phase (delays are uniform over
    /// delay-min..delay-max; e.g. 1h..2h with the default ticks to load one
    /// tier only).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub delay_min: Duration,
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
    pub rounds: usize,
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
    let health = Arc::new(Health::new(&service::loop_names(settings)?));
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
    while !health.joined() {
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
    let rounds = args.rounds.max(1);
    let mut r = Results {
        records: n,
        rounds,
        payload_bytes: args.payload,
        partitions: args.partitions,
        delayed_records: args.delayed,
        ..Default::default()
    };
    for round in 0..rounds {
        throughput_round(&settings, args, round, [target, raw_src, raw_dst], &mut r)?;
    }
    r.ratio_to_raw = ratio(r.service_records_per_sec, r.raw_records_per_sec);
    r.throughput_check = load::verify(&settings, target, n * rounds, Duration::from_secs(10))?;

    eprintln!(
        "service, {} records with delays over {:?}..{:?}…",
        args.delayed, args.delay_min, args.delay_max
    );
    let service = start_service(&settings)?;
    let reader = {
        let (s, t, m) = (settings.clone(), delayed_target.clone(), args.delayed);
        let idle = args.delay_max + Duration::from_secs(15);
        std::thread::spawn(move || load::verify(&s, &t, m, idle))
    };
    std::thread::sleep(Duration::from_secs(3));
    let max = args.delay_max.as_millis() as i64;
    let min = (args.delay_min.as_millis() as i64).min(max);
    let mut rng = fastrand::Rng::with_seed(42);
    let ingress = &settings.topics.ingress;
    let delayed = 0..args.delayed;
    load::publish(
        &settings,
        ingress,
        delayed,
        load::Shape {
            size: args.payload,
            keys: args.keys,
            rate: Some(args.rate),
        },
        Some(delayed_target),
        |_| Some(rng.i64(min..=max)),
    )?;
    let check = reader.join().expect("reader thread")?;
    let lat = &check.lateness_ms;
    r.lateness_p50_ms = load::percentile(lat, 0.50);
    r.lateness_p90_ms = load::percentile(lat, 0.90);
    r.lateness_p99_ms = load::percentile(lat, 0.99);
    r.lateness_max_ms = load::percentile(lat, 1.0);
    r.writes_per_record = service.metrics.tier_writes_total() as f64 / args.delayed.max(1) as f64;
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

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// One round: publish N records for each side, raw copy, then the service
/// (started fresh, measured from its first acknowledgement to its N-th).
/// Keeps the best rate of each side in `r`.
fn throughput_round(
    settings: &Settings,
    args: &BenchArgs,
    round: usize,
    [target, raw_src, raw_dst]: [&String; 3],
    r: &mut Results,
) -> anyhow::Result<()> {
    let n = args.records;
    let range = round * n..(round + 1) * n;
    eprintln!("round {}: publishing {n} records for each side…", round + 1);
    let shape = load::Shape {
        size: args.payload,
        keys: args.keys,
        rate: None,
    };
    load::publish(
        settings,
        raw_src,
        range.clone(),
        shape,
        Some(target),
        |_| Some(0),
    )?;
    load::publish(
        settings,
        &settings.topics.ingress,
        range,
        shape,
        Some(target),
        |_| Some(0),
    )?;

    let cpu = cpu_seconds();
    let raw_rate = raw::copy(settings, raw_src, raw_dst, n as u64)?;
    let raw_cpu = cpu_seconds() - cpu;
    eprintln!("  raw rdkafka copy {raw_rate:>9.0} records/s");
    if raw_rate > r.raw_records_per_sec {
        (r.raw_records_per_sec, r.raw_cpu_seconds) = (raw_rate, raw_cpu);
    }

    let cpu = cpu_seconds();
    let service = start_service(settings)?;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (service.metrics.delivered_total() as usize) < n && Instant::now() < deadline {
        if first.is_none() && service.metrics.delivered_total() > 0 {
            first = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let rate = ratio(service.metrics.delivered_total() as f64, elapsed);
    service.stop();
    let service_cpu = cpu_seconds() - cpu;
    eprintln!("  kafka-delay      {rate:>9.0} records/s");
    if rate > r.service_records_per_sec {
        (r.service_records_per_sec, r.service_cpu_seconds) = (rate, service_cpu);
    }
    Ok(())
}

/// Parks `args.park` records in the 1 h and 1 d tiers of the default tick
/// table and compares the service's resident memory before and after. The
/// service runs as a child process so that only its memory is measured.
fn park(bootstrap: &str, args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let prefix = format!("park{}.", std::process::id());
    let mut settings = local_settings(bootstrap, &prefix, &["1s", "1m", "1h", "1d"]);
    settings.wheel.top_slots = Settings::default().wheel.top_slots;
    let target = format!("{prefix}target");
    prepare(&settings, args.partitions, &[&target])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = child::spawn(&settings, port)?;
    let result = (|| {
        child::wait_for(port, |m| m.contains("kafka_delay_rebalances_total"))?;
        std::thread::sleep(Duration::from_secs(2));
        r.park_rss_before_mib = child::rss_mib(child.id());
        eprintln!("parking {} records in the far tiers…", args.park);
        let mut rng = fastrand::Rng::with_seed(9);
        let (hour, month) = (3_600_000_i64, 30 * 86_400_000_i64);
        let shape = load::Shape {
            size: args.payload,
            keys: args.keys,
            rate: None,
        };
        let ingress = &settings.topics.ingress;
        load::publish(
            &settings,
            ingress,
            0..args.park,
            shape,
            Some(&target),
            |_| Some(rng.i64(2 * hour..month)),
        )?;
        let parked = child::wait_for(port, |m| child::tier_writes(m) >= args.park as u64)?;
        r.parked_records = child::tier_writes(&parked) as usize;
        std::thread::sleep(Duration::from_secs(3));
        r.park_rss_after_mib = child::rss_mib(child.id());
        anyhow::Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn print(r: &Results) {
    let t = &r.throughput_check;
    let d = &r.delayed_check;
    println!(
        "kafka-delay bench — {} records × {} B, {} partitions, best of {} rounds",
        r.records, r.payload_bytes, r.partitions, r.rounds
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
        "    CPU per record: raw {:.1} µs, kafka-delay {:.1} µs (whole process incl. librdkafka threads)",
        r.raw_cpu_seconds * 1e6 / r.records as f64,
        r.service_cpu_seconds * 1e6 / r.records as f64
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
