//! One run per load shape: topics, publishing, the service instances (and,
//! for the flood, the raw copy), the reader's account.

use std::time::Duration;

use kafka_delay::config::{tick_label, Settings};
use kafka_delay::model::clock::wall_ms as now_ms;

use super::child::{self, CpuTrace, Measured};
use super::load::{self, Due, Reader, Verification};
use super::{percentile, Bench, RunResult, Stat, SETTLE};

/// A load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Records already due, a backlog drained; beside the raw copy.
    Flood,
    /// Delays uniform over every tier, published at a steady rate.
    Spread,
    /// One fixed delay beyond the top tier's reach: a hop through every tier.
    Rollover,
    /// Every record due at the same instant.
    Herd,
    /// 100 KB records, delays over every tier.
    Large,
    /// `--rate` records/s for `--duration` seconds, delays uniform over
    /// 0–20 s: due records arrive at the rate they were published, and the
    /// report gives lateness per second of due time (the knee).
    Sustained,
}

/// Arrival times and sorted lateness of the run, for the plots.
pub struct Timeline {
    pub arrivals_ms: Vec<i64>,
    pub lateness_ms: Vec<i64>,
}

/// Runs `shape` with `instances` service instances.
pub(crate) fn run(
    bench: &mut Bench<'_>,
    shape: Shape,
    instances: usize,
) -> anyhow::Result<(RunResult, Timeline)> {
    match shape {
        Shape::Flood => flood(bench, instances),
        _ => delayed(bench, shape, instances),
    }
}

/// Starts `n` instances and waits until all are ready and every topic's
/// partitions are spread over them.
fn start(settings: &Settings, n: usize, ingress: i32) -> anyhow::Result<Vec<Measured>> {
    let mut children = (0..n)
        .map(|_| child::spawn_service(settings))
        .collect::<anyhow::Result<Vec<_>>>()?;
    child::wait_ready(&mut children, Duration::from_secs(60))?;
    let table = settings.tier_table()?;
    let k = f64::from(settings.wheel.partitions_per_slot);
    let expected: Vec<(String, f64)> = std::iter::once(("ingress".to_string(), f64::from(ingress)))
        .chain(
            table
                .tiers()
                .iter()
                .map(|t| (tick_label(t.tick_ms), t.slots as f64 * k)),
        )
        .collect();
    child::wait_settled(&mut children, &expected, Duration::from_secs(120))?;
    Ok(children)
}

/// What the instances did, from their metrics and once stopped.
struct Stopped {
    tier_writes: f64,
    /// Tier records read after their partition drained past their bucket.
    late_appends: f64,
    /// Times a watchdog resumed a partition that made no progress.
    stalls: f64,
    assignments: Vec<String>,
    /// CPU seconds summed over the instances.
    cpu_seconds: f64,
    /// Highest peak RSS of one instance, MiB.
    rss_mib: f64,
}

fn stop(children: Vec<Measured>) -> anyhow::Result<Stopped> {
    let mut stopped = Stopped {
        tier_writes: child::metric_sum(&children, "kafka_delay_tier_writes_total{"),
        late_appends: child::metric_sum(&children, "kafka_delay_late_appends_total{"),
        stalls: child::metric_sum(&children, "kafka_delay_stalls_total{"),
        assignments: child::assignments(&children),
        cpu_seconds: 0.0,
        rss_mib: 0.0,
    };
    for c in children {
        let cost = c.stop()?;
        stopped.cpu_seconds += cost.cpu_seconds;
        stopped.rss_mib = stopped.rss_mib.max(cost.peak_rss_mib);
    }
    Ok(stopped)
}

/// Waits for the reader while sampling the children's memory and CPU.
fn finish(
    reader: Reader,
    children: &mut [Measured],
    broker: Option<u32>,
) -> anyhow::Result<(Verification, CpuTrace)> {
    let handle = std::thread::spawn(move || reader.finish());
    let pids: Vec<u32> = children.iter().map(Measured::pid).collect();
    let mut tick = 0;
    let trace = CpuTrace::record(&pids, broker, || {
        tick += 1;
        if tick % 4 == 0 {
            for c in children.iter_mut() {
                c.sample();
            }
        }
        handle.is_finished()
    });
    Ok((handle.join().expect("reader")?, trace))
}

/// CPU µs per record in the throughput window (after the warm-up): the
/// measured processes', the broker's.
fn window_cpu(v: &Verification, k: usize, trace: &CpuTrace) -> (f64, f64) {
    let a = &v.arrivals_ms;
    if a.len() < k + 2 {
        return (0.0, 0.0);
    }
    let (cpu, broker) = trace.between(a[k], a[a.len() - 1]);
    let records = (a.len() - 1 - k) as f64;
    (cpu * 1e6 / records, broker * 1e6 / records)
}

fn account(r: &mut RunResult, v: &Verification) {
    r.lateness_p50_ms = percentile(&v.lateness_ms, 0.5);
    r.lateness_p99_ms = percentile(&v.lateness_ms, 0.99);
    r.lateness_max_ms = percentile(&v.lateness_ms, 1.0);
    r.early = v.early;
    r.lost = v.lost;
    r.refused = v.refused;
    r.missed_live = v.missed_live;
    r.duplicates = v.duplicates;
}

/// The flood: N records already due, drained by the raw copy and by the
/// service in alternating rounds, each timed after the same warm-up.
fn flood(bench: &mut Bench<'_>, instances: usize) -> anyhow::Result<(RunResult, Timeline)> {
    let args = bench.args;
    let n = args.records;
    let k = (n as f64 * args.warmup) as usize;
    let shape = load::Shape {
        size: args.payload,
        keys: args.keys,
        rate: None,
    };
    let (mut raw_rates, mut rates, mut raw_cpu, mut cpu) = (vec![], vec![], vec![], vec![]);
    let (mut broker_cpu, mut raw_broker_cpu) = (vec![], vec![]);
    let mut r = RunResult {
        shape: "flood".into(),
        instances,
        records: n,
        ..Default::default()
    };
    let mut timeline = None;
    for round in 0..args.rounds.max(1) {
        let (settings, names) = bench.prepare("flood", &["target", "raw-src", "raw-dst"])?;
        let [target, raw_src, raw_dst] = [&names[0], &names[1], &names[2]];
        eprintln!(
            "  round {}: publishing {n} records for each side…",
            round + 1
        );
        // Both sides read the same records: key, value and the two routing
        // headers (`x-delay: 0`, `x-target-topic`). The raw copy moves them
        // with their headers, as an honest copy does; the service replaces
        // them with its own two.
        let [raw_refused, refused] =
            [raw_src.as_str(), settings.topics.ingress.as_str()].map(|topic| {
                load::publish(&settings, topic, 0..n, shape, Some(target), |_| {
                    Due::Delay(0)
                })
            });
        let (raw_refused, refused) = (raw_refused?, refused?);

        let reader = Reader::start(&settings, raw_dst, n, Duration::from_secs(60))?;
        let mut copy = [child::spawn_raw_copy(&settings, raw_src, raw_dst, n)?];
        let (mut v, trace) = finish(reader, &mut copy, bench.broker_pid)?;
        v.discount_refused(&raw_refused);
        v.recheck(&settings, raw_dst)?;
        let [copy] = copy;
        copy.wait_exit(Duration::from_secs(60))?;
        let (cpu_us, broker_us) = window_cpu(&v, k, &trace);
        raw_rates.push(v.rate_after(k));
        raw_cpu.push(cpu_us);
        raw_broker_cpu.push(broker_us);
        eprintln!("    raw copy   {:>9.0} records/s", v.rate_after(k));

        let reader = Reader::start(&settings, target, n, Duration::from_secs(60))?;
        let mut children = (0..instances)
            .map(|_| child::spawn_service(&settings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (mut v, trace) = finish(reader, &mut children, bench.broker_pid)?;
        v.discount_refused(&refused);
        v.recheck(&settings, target)?;
        let stopped = stop(children)?;
        let (cpu_us, broker_us) = window_cpu(&v, k, &trace);
        broker_cpu.push(broker_us);
        rates.push(v.rate_after(k));
        cpu.push(cpu_us);
        eprintln!("    kafka-delay {:>9.0} records/s", v.rate_after(k));
        r.writes_per_record = 1.0 + stopped.tier_writes / n as f64;
        r.peak_rss_mib = r.peak_rss_mib.max(stopped.rss_mib);
        r.late_appends += stopped.late_appends;
        r.stalls += stopped.stalls;
        r.assignments = stopped.assignments;
        account(&mut r, &v);
        timeline = Some(Timeline {
            arrivals_ms: v.arrivals_ms,
            lateness_ms: v.lateness_ms,
        });
    }
    r.rate = Stat::of(&rates);
    let raw = Stat::of(&raw_rates);
    r.ratio_to_raw = Some(if raw.median > 0.0 {
        r.rate.median / raw.median
    } else {
        0.0
    });
    r.raw_rate = Some(raw);
    r.cpu_us_per_record = Stat::of(&cpu).median;
    r.raw_cpu_us_per_record = Some(Stat::of(&raw_cpu).median);
    if bench.broker_pid.is_some() {
        r.broker_cpu_us_per_record = Some(Stat::of(&broker_cpu).median);
        r.raw_broker_cpu_us_per_record = Some(Stat::of(&raw_broker_cpu).median);
    }
    Ok((r, timeline.expect("at least one round")))
}

/// The shapes with delays: the instances run first, the records are
/// published into them, the reader accounts for every one.
fn delayed(
    bench: &mut Bench<'_>,
    shape: Shape,
    instances: usize,
) -> anyhow::Result<(RunResult, Timeline)> {
    let args = bench.args;
    let name = format!("{shape:?}").to_lowercase();
    let (settings, names) = bench.prepare(&name, &["target"])?;
    let target = &names[0];
    let table = settings.tier_table()?;
    let top = table.tiers().last().expect("a tier");
    let reach_ms = top.reach() * top.tick_ms;
    let (n, size, rate) = match shape {
        Shape::Spread | Shape::Rollover => (args.delayed, args.payload, Some(args.rate)),
        Shape::Herd => (args.herd, args.payload, None),
        Shape::Large => (args.large, 100 * 1024, Some(args.rate.min(200.0))),
        Shape::Sustained => (
            (args.rate * args.duration as f64) as usize,
            args.payload,
            Some(args.rate),
        ),
        Shape::Flood => unreachable!("flood has its own run"),
    };
    let shape_load = load::Shape {
        size,
        keys: args.keys,
        rate,
    };
    let broker_cpu_before = bench.broker_pid.map(crate::broker::cpu_seconds_of);
    let load_cpu_before = crate::broker::cpu_seconds_of(std::process::id());
    let mut children = start(&settings, instances, bench.args.partitions)?;
    let reader = Reader::start(
        &settings,
        target,
        n,
        SETTLE + Duration::from_millis(reach_ms as u64),
    )?;
    let mut rng = fastrand::Rng::with_seed(42);
    // Delays over every tier: up to a little beyond the top tier's reach.
    let spread_max = reach_ms + reach_ms / 3;
    let herd_at = now_ms() + 15_000 + n as i64 / 100;
    eprintln!("  publishing {n} records…");
    let refused = load::publish(
        &settings,
        &settings.topics.ingress,
        0..n,
        shape_load,
        Some(target),
        |_| match shape {
            Shape::Rollover => Due::Delay(reach_ms + 5_000),
            Shape::Herd => Due::At(herd_at),
            Shape::Sustained => Due::Delay(rng.i64(0..=20_000)),
            _ => Due::Delay(rng.i64(0..=spread_max)),
        },
    )?;
    let (mut v, _) = finish(reader, &mut children, None)?;
    v.discount_refused(&refused);
    v.recheck(&settings, target)?;
    let stopped = stop(children)?;
    // The broker's CPU over the whole run (start, publishing, delivery and
    // stop), per record: its share of the work, beside the service's.
    let broker_cpu_us_per_record = bench
        .broker_pid
        .zip(broker_cpu_before)
        .map(|(pid, before)| (crate::broker::cpu_seconds_of(pid) - before) * 1e6 / n as f64);
    let mut r = RunResult {
        shape: name,
        instances,
        records: n,
        rate: Stat::of(&[v.rate_after((n as f64 * args.warmup) as usize)]),
        cpu_us_per_record: stopped.cpu_seconds * 1e6 / n as f64,
        writes_per_record: 1.0 + stopped.tier_writes / n as f64,
        peak_rss_mib: stopped.rss_mib,
        late_appends: stopped.late_appends,
        stalls: stopped.stalls,
        assignments: stopped.assignments,
        broker_cpu_us_per_record,
        load_cpu_us_per_record: Some(
            (crate::broker::cpu_seconds_of(std::process::id()) - load_cpu_before) * 1e6 / n as f64,
        ),
        lateness_over_time: if shape == Shape::Sustained {
            crate::bench::SecondLateness::of(&v.due_lateness_ms)
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    account(&mut r, &v);
    Ok((
        r,
        Timeline {
            arrivals_ms: v.arrivals_ms,
            lateness_ms: v.lateness_ms,
        },
    ))
}
