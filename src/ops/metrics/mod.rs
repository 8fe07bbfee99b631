//! Prometheus metrics, by domain: [`ingress`], [`tier`], [`delivery`],
//! [`loops`], [`transactions`], [`cancellations`]; instance-wide gauges
//! (clock, readiness) here. One method per event, so call sites never spell
//! a metric name: `metrics.tier.write(t)`, `metrics.delivery.forwarded(..)`.
//!
//! Names follow `kafka_delay_<name>_<unit>`, `_total` for counters; labels
//! come from small fixed sets: `tier` (tier labels such as `1s`), `source`
//! (`ingress` or a tier label), `reason`, `outcome`, `kind`, `code`.
//! Per-label children are resolved once at start-up so the hot path only
//! touches an atomic.

mod cancellations;
mod delivery;
mod ingress;
mod loops;
mod series;
mod tier;
mod transactions;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use cancellations::CancellationMetrics;
pub use delivery::DeliveryMetrics;
pub use ingress::IngressMetrics;
pub use loops::LoopMetrics;
pub use series::{SeriesMetrics, SeriesOutcome};
pub use tier::TierMetrics;
pub use transactions::TransactionMetrics;

use crate::model::envelope::EnvelopeError;

/// Where a record came from: the ingress topic or a tier (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The ingress topic.
    Ingress,
    /// A tier, by index (finest first).
    Tier(usize),
    /// A tier topic of an earlier layout, being drained (label `retired`).
    Retired,
}

impl Source {
    /// Index into per-source metric children, of which there are `sources`:
    /// ingress 0, tier `t` at `t + 1`, retired tiers last.
    pub fn index(self, sources: usize) -> usize {
        match self {
            Source::Ingress => 0,
            Source::Tier(tier) => tier + 1,
            Source::Retired => sources - 1,
        }
    }
}

/// What happened to an ingress record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written to a tier topic.
    Tier,
    /// Held in the due-soon timer.
    Timer,
    /// Forwarded to its target at once.
    Delivered,
    /// Sent to the dead-letter topic.
    DeadLettered,
    /// Cancelled (`x-delay-id`): neither delivered nor written to a tier.
    Cancelled,
}

/// What a produce was for (label `kind`).
pub const KINDS: [&str; 3] = ["target", "tier", "dead_letter"];

/// The source revision the binary was built from: `KAFKA_DELAY_REVISION` in
/// the build's environment (the Dockerfile passes the git commit), else
/// `unknown`.
pub const BUILD_REVISION: &str = match option_env!("KAFKA_DELAY_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// All of the service's metrics, registered in one [`Registry`], by domain.
pub struct Metrics {
    registry: Registry,
    /// Ingress outcomes.
    pub ingress: IngressMetrics,
    /// Tier writes, holds, pending records.
    pub tier: TierMetrics,
    /// Deliveries, lateness, dead letters, produce errors.
    pub delivery: DeliveryMetrics,
    /// Consumer loops: partitions, in flight, timer, rebalances, commits.
    pub loops: LoopMetrics,
    /// Exactly-once transactions.
    pub transactions: TransactionMetrics,
    /// Cancellations and the cancel reader.
    pub cancellations: CancellationMetrics,
    /// Occurrences of recurring series.
    pub series: SeriesMetrics,
    clock_offset: Gauge,
    clock_error: Gauge,
    clock_limit: Gauge,
    ready: IntGauge,
}

/// Lateness buckets in seconds, 1 ms to 1 h.
const LATENESS_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0, 600.0, 3600.0,
];

pub(super) fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

pub(super) fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

pub(super) fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENESS_BUCKETS.to_vec());
    register(
        registry,
        Histogram::with_opts(opts).expect("valid histogram"),
    )
}

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

/// One counter per value of `label` (children of a vector registered as `name`).
pub(super) fn labelled_counters(
    r: &Registry,
    (name, help): (&str, &str),
    label: &str,
    values: &[&str],
) -> Vec<IntCounter> {
    let vec = counter_vec(r, name, help, label);
    children(values, |l| vec.with_label_values(&[l]))
}

/// One gauge per value of `label` (children of a vector registered as `name`).
pub(super) fn labelled_gauges(
    r: &Registry,
    (name, help): (&str, &str),
    label: &str,
    values: &[&str],
) -> Vec<IntGauge> {
    let vec = gauge_vec(r, name, help, label);
    children(values, |l| vec.with_label_values(&[l]))
}

pub(super) fn children<V>(labels: &[&str], child: impl Fn(&str) -> V) -> Vec<V> {
    labels.iter().map(|l| child(l)).collect()
}

impl Metrics {
    /// Registers every metric; `tiers` are the tier labels (`1s`, `1m`, …).
    pub fn new(tiers: &[String]) -> Self {
        let r = Registry::new();
        let tier: Vec<&str> = tiers.iter().map(String::as_str).collect();
        let source: Vec<&str> = std::iter::once("ingress")
            .chain(tier.iter().copied())
            .chain(std::iter::once("retired"))
            .collect();
        let clock_offset = register(
            &r,
            Gauge::new(
                "kafka_delay_clock_offset_seconds",
                "How far this host's wall clock is from the broker's (positive: ahead), for \
                 the people who run NTP: decisions read the broker's clock, whatever this is; \
                 NaN before the first clock probe.",
            )
            .expect("valid gauge"),
        );
        clock_offset.set(f64::NAN);
        let clock_error = register(
            &r,
            Gauge::new(
                "kafka_delay_clock_error_seconds",
                "How far the broker's clock may be ahead of this instance's reading of it \
                 (the best clock probe's round trip plus 2 ms per second since): records are \
                 late by at most this, never early; +Inf before the first clock probe.",
            )
            .expect("valid gauge"),
        );
        clock_error.set(f64::INFINITY);
        let build = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "kafka_delay_build_info",
                    "1, labelled with the service's version and the source revision it was built \
                     from (KAFKA_DELAY_REVISION at build time; `unknown` when unset).",
                ),
                &["version", "revision"],
            )
            .expect("valid metric"),
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_REVISION])
            .set(1);
        // The Prometheus client libraries' standard process metrics
        // (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
        // `process_open_fds`, `process_max_fds`, …), read from /proc.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics registered once per registry");
        Self {
            ingress: IngressMetrics::new(&r),
            tier: TierMetrics::new(&r, &tier),
            delivery: DeliveryMetrics::new(&r, &source),
            loops: LoopMetrics::new(&r, &source),
            transactions: TransactionMetrics::new(&r),
            cancellations: CancellationMetrics::new(&r),
            series: SeriesMetrics::new(&r),
            clock_offset,
            clock_error,
            clock_limit: register(
                &r,
                Gauge::new(
                    "kafka_delay_clock_skew_limit_seconds",
                    "The configured wheel.max_clock_skew: the bound on kafka_delay_clock_error_seconds.",
                )
                .expect("valid gauge"),
            ),
            ready: register(
                &r,
                IntGauge::new("kafka_delay_ready", "1 while /readyz answers 200.")
                    .expect("valid gauge"),
            ),
            registry: r,
        }
    }

    /// The wall clock's offset from the broker's (ms), the error of the
    /// estimate of the broker's clock (ms; None: no estimate yet) and the
    /// configured bound on it (ms).
    pub fn set_clock(&self, offset_ms: Option<i64>, error_ms: Option<i64>, limit_ms: i64) {
        self.clock_offset
            .set(offset_ms.map_or(f64::NAN, |ms| ms as f64 / 1000.0));
        self.clock_error
            .set(error_ms.map_or(f64::INFINITY, |ms| ms as f64 / 1000.0));
        self.clock_limit.set(limit_ms as f64 / 1000.0);
    }

    /// Readiness, as `/readyz` reports it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// Gauges one consumer loop reports about its own partitions and memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceGauges {
    /// Partitions assigned to the loop.
    pub assigned: usize,
    /// Partitions paused by backpressure.
    pub throttled: usize,
    /// Partitions blocked behind a refused dead letter.
    pub blocked: usize,
    /// Records written but not yet acknowledged.
    pub in_flight: usize,
    /// Records in the due-soon timer.
    pub timer_records: usize,
    /// Key, value and header bytes in the due-soon timer.
    pub timer_bytes: usize,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Label names of every metric family, after one event of each metric
    /// whose children are made on demand.
    fn label_names() -> BTreeMap<String, BTreeSet<String>> {
        let m = Metrics::new(&["1s".into(), "1m".into()]);
        m.delivery.produce_error("QueueFull");
        let mut names = BTreeMap::new();
        for family in m.registry.gather() {
            let labels: &mut BTreeSet<String> = names.entry(family.name().to_owned()).or_default();
            for metric in family.get_metric() {
                labels.extend(metric.get_label().iter().map(|l| l.name().to_owned()));
            }
        }
        names
    }

    /// Every `by (...)` of the Grafana dashboard names labels its metric has
    /// (or the scrape's own: namespace, job, instance, pod; `le` of a
    /// histogram's buckets): a label the metric lacks draws a blank legend
    /// and merges the series.
    #[test]
    fn dashboard_groups_by_labels_its_metrics_have() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../helm/files/dashboard.json"))
                .expect("dashboard is JSON");
        let labels = label_names();
        let mut exprs = Vec::new();
        collect_exprs(&dashboard, &mut exprs);
        assert!(exprs.len() > 10, "found {} expressions", exprs.len());
        let mut wrong = Vec::new();
        for expr in &exprs {
            let Some(start) = expr.find("kafka_delay_") else {
                continue;
            };
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| labels.contains_key(*base))
                })
                .unwrap_or(&name);
            let Some(known) = labels.get(family) else {
                wrong.push(format!("{name}: no such metric"));
                continue;
            };
            let mut rest = expr.as_str();
            while let Some(i) = rest.find("by (") {
                let group = &rest[i + 4..];
                let group = &group[..group.find(')').unwrap_or(group.len())];
                for label in group.split(',').map(str::trim) {
                    let scrape = ["namespace", "job", "instance", "pod"].contains(&label);
                    let bucket = label == "le" && name.ends_with("_bucket");
                    if !(scrape || bucket || known.contains(label)) {
                        wrong.push(format!("{name} has no label {label}"));
                    }
                }
                rest = &rest[i + 4..];
            }
        }
        assert!(wrong.is_empty(), "dashboard: {wrong:?}");
    }

    fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn events_show_up_in_the_exposition() {
        let m = Metrics::new(&["1s".into(), "1m".into()]);
        m.ingress.ingested(Outcome::Timer);
        m.delivery.forwarded(Source::Tier(1), 12);
        m.delivery.dead_letter_attempt("missing_target");
        m.delivery
            .dead_lettered(DeliveryMetrics::reason_index("missing_target"));
        m.tier.set_partitions(0, 3, 1);
        m.loops.set_source(
            Source::Ingress,
            SourceGauges {
                throttled: 2,
                ..Default::default()
            },
        );
        m.set_clock(Some(-250), Some(7), 500);
        m.ingress.set_backlog(7);
        m.tier.set_retired_pending("delay.50ms", 3);
        let text = m.render();
        for line in [
            "kafka_delay_records_ingested_total{outcome=\"timer\"} 1",
            "kafka_delay_records_forwarded_total{from=\"1m\"} 1",
            "kafka_delay_records_dead_lettered_total{reason=\"missing_target\"} 1",
            "kafka_delay_dead_letter_attempts_total{reason=\"missing_target\"} 1",
            "kafka_delay_partitions_paused{tier=\"1s\"} 3",
            "kafka_delay_partitions_stalled{tier=\"1s\"} 1",
            "kafka_delay_partitions_throttled{source=\"ingress\"} 2",
            "kafka_delay_delivery_lateness_seconds_bucket{le=\"0.02\"} 1",
            "kafka_delay_clock_offset_seconds -0.25",
            "kafka_delay_clock_skew_limit_seconds 0.5",
            "kafka_delay_clock_error_seconds 0.007",
            "kafka_delay_ingress_backlog_records 7",
            "kafka_delay_retired_tier_records{topic=\"delay.50ms\"} 3",
            "kafka_delay_build_info{revision=",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }
}
