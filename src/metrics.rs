//! Prometheus metrics: one method per event, so call sites never spell a
//! metric name.
//!
//! Names follow `kafka_delay_<name>_<unit>`, `_total` for counters; labels
//! come from small fixed sets (tier label, reason, outcome, error code).
//! Per-tier children are resolved once at start-up so the hot path only
//! touches an atomic.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::envelope::EnvelopeError;

/// Where a record came from: the ingress topic or a tier (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Ingress,
    Tier(usize),
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
}

/// All of the service's metrics, registered in one [`Registry`].
pub struct Metrics {
    registry: Registry,
    ingested: [IntCounter; 4],
    forwarded: Vec<IntCounter>,
    delivered: IntCounter,
    tier_writes: Vec<IntCounter>,
    dead_lettered: Vec<IntCounter>,
    late_appends: Vec<IntCounter>,
    paused: Vec<IntGauge>,
    pending: Vec<IntGauge>,
    oldest_due: Vec<IntGauge>,
    lateness: Histogram,
    timer_records: IntGauge,
    rebalances: IntCounter,
    produce_errors: IntCounterVec,
    commit_errors: IntCounter,
    commit_latency: Histogram,
}

/// Lateness buckets in seconds, 1 ms to 1 h.
const LATENESS_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0, 600.0, 3600.0,
];

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENESS_BUCKETS.to_vec());
    let histogram = Histogram::with_opts(opts).expect("valid histogram");
    registry
        .register(Box::new(histogram.clone()))
        .expect("unique metric");
    histogram
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid counter");
    registry
        .register(Box::new(counter.clone()))
        .expect("unique metric");
    counter
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

impl Metrics {
    /// Registers every metric; `tiers` are the tier labels (`1s`, `1m`, …).
    pub fn new(tiers: &[String]) -> Self {
        let registry = Registry::new();
        let sources: Vec<&str> = std::iter::once("ingress")
            .chain(tiers.iter().map(String::as_str))
            .collect();
        let ingested = counter_vec(
            &registry,
            "kafka_delay_records_ingested_total",
            "Ingress records by outcome.",
            "outcome",
        );
        let forwarded = counter_vec(
            &registry,
            "kafka_delay_records_forwarded_total",
            "Records delivered to their target, by the topic they were last read from.",
            "from",
        );
        let delivered = counter(
            &registry,
            "kafka_delay_records_delivered_total",
            "Target deliveries acknowledged by the broker.",
        );
        let tier_writes = counter_vec(
            &registry,
            "kafka_delay_tier_writes_total",
            "Records written into a tier topic.",
            "tier",
        );
        let dead = counter_vec(
            &registry,
            "kafka_delay_records_dead_lettered_total",
            "Records sent to the dead-letter topic, by reason.",
            "reason",
        );
        let late = counter_vec(
            &registry,
            "kafka_delay_late_appends_total",
            "Tier records appended after their bucket's release time (clock skew or latency).",
            "tier",
        );
        let paused = gauge_vec(
            &registry,
            "kafka_delay_partitions_paused",
            "Tier partitions paused until their head's release time or their next turn.",
            "tier",
        );
        let pending = gauge_vec(
            &registry,
            "kafka_delay_records_pending",
            "Records waiting in a tier: end offset minus committed offset, over assigned partitions.",
            "tier",
        );
        let oldest = gauge_vec(
            &registry,
            "kafka_delay_oldest_pending_due_timestamp_seconds",
            "Earliest due time among held tier heads, Unix seconds (0: none held).",
            "tier",
        );
        let lateness = histogram(
            &registry,
            "kafka_delay_delivery_lateness_seconds",
            "Delivery time minus due time of forwarded records.",
        );
        let timer_records = IntGauge::new(
            "kafka_delay_timer_records",
            "Records held in the in-memory due-soon timer.",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(timer_records.clone()))
            .expect("unique metric");
        let rebalances = counter(
            &registry,
            "kafka_delay_rebalances_total",
            "Consumer-group rebalances seen (assign or revoke).",
        );
        let produce_errors = counter_vec(
            &registry,
            "kafka_delay_produce_errors_total",
            "Failed produce attempts, by librdkafka error code.",
            "code",
        );
        let commit_errors = counter(
            &registry,
            "kafka_delay_commit_errors_total",
            "Offset commits that failed.",
        );
        let commit_latency = histogram(
            &registry,
            "kafka_delay_commit_latency_seconds",
            "Time from an offset commit request to the broker's answer.",
        );
        let tier_labels: Vec<&str> = tiers.iter().map(String::as_str).collect();
        let each = |vec: &IntCounterVec, labels: &[&str]| -> Vec<IntCounter> {
            labels.iter().map(|l| vec.with_label_values(&[l])).collect()
        };
        let each_gauge = |vec: &IntGaugeVec| -> Vec<IntGauge> {
            tier_labels
                .iter()
                .map(|l| vec.with_label_values(&[l]))
                .collect()
        };
        Self {
            ingested: ["tier", "timer", "delivered", "dead_lettered"]
                .map(|o| ingested.with_label_values(&[o])),
            forwarded: each(&forwarded, &sources),
            delivered,
            tier_writes: each(&tier_writes, &tier_labels),
            dead_lettered: each(&dead, &EnvelopeError::REASONS),
            late_appends: each(&late, &tier_labels),
            paused: each_gauge(&paused),
            pending: each_gauge(&pending),
            oldest_due: each_gauge(&oldest),
            lateness,
            timer_records,
            rebalances,
            produce_errors,
            commit_errors,
            commit_latency,
            registry,
        }
    }

    fn source_index(source: Source) -> usize {
        match source {
            Source::Ingress => 0,
            Source::Tier(tier) => tier + 1,
        }
    }

    /// An ingress record was routed.
    pub fn ingested(&self, outcome: Outcome) {
        self.ingested[outcome as usize].inc();
    }

    /// A record was handed to the producer for its target; `lateness_ms` is
    /// delivery time minus due time.
    pub fn forwarded(&self, from: Source, lateness_ms: i64) {
        self.forwarded[Self::source_index(from)].inc();
        self.lateness.observe(lateness_ms.max(0) as f64 / 1000.0);
    }

    /// The broker acknowledged a target delivery.
    pub fn delivered(&self) {
        self.delivered.inc();
    }

    /// Target deliveries acknowledged so far.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.get()
    }

    /// A record was written into tier `tier`.
    pub fn tier_write(&self, tier: usize) {
        self.tier_writes[tier].inc();
    }

    /// A record was dead-lettered for `reason` (an [`EnvelopeError::reason`]).
    pub fn dead_lettered(&self, reason: &str) {
        let index = EnvelopeError::REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(EnvelopeError::REASONS.len() - 1);
        self.dead_lettered[index].inc();
    }

    /// A tier record arrived after its bucket's release time.
    pub fn late_append(&self, tier: usize) {
        self.late_appends[tier].inc();
    }

    /// Paused partitions of tier `tier`, now.
    pub fn set_paused(&self, tier: usize, count: usize) {
        self.paused[tier].set(count as i64);
    }

    /// Records pending in tier `tier` (end offset − committed).
    pub fn set_pending(&self, tier: usize, count: i64) {
        self.pending[tier].set(count);
    }

    /// Earliest due time (epoch ms) of the held heads of tier `tier`.
    pub fn set_oldest_due(&self, tier: usize, due_ms: Option<i64>) {
        self.oldest_due[tier].set(due_ms.map_or(0, |ms| ms / 1000));
    }

    /// Size of the due-soon timer.
    pub fn set_timer_records(&self, count: usize) {
        self.timer_records.set(count as i64);
    }

    /// A rebalance event (assign or revoke) was handled.
    pub fn rebalance(&self) {
        self.rebalances.inc();
    }

    /// A produce failed with librdkafka error `code`.
    pub fn produce_error(&self, code: &str) {
        self.produce_errors.with_label_values(&[code]).inc();
    }

    /// An offset commit was answered after `seconds`.
    pub fn commit_latency(&self, seconds: f64) {
        self.commit_latency.observe(seconds);
    }

    /// An offset commit failed.
    pub fn commit_error(&self) {
        self.commit_errors.inc();
    }

    /// Records written into any tier so far (for writes per record).
    pub fn tier_writes_total(&self) -> u64 {
        self.tier_writes.iter().map(IntCounter::get).sum()
    }

    /// Records delivered to targets so far.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.iter().map(IntCounter::get).sum()
    }

    /// Late appends over all tiers so far.
    pub fn late_appends_total(&self) -> u64 {
        self.late_appends.iter().map(IntCounter::get).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_up_in_the_exposition() {
        let m = Metrics::new(&["1s".into(), "1m".into()]);
        m.ingested(Outcome::Timer);
        m.forwarded(Source::Tier(1), 12);
        m.dead_lettered("missing_target");
        m.set_paused(0, 3);
        let text = m.render();
        assert!(text.contains("kafka_delay_records_ingested_total{outcome=\"timer\"} 1"));
        assert!(text.contains("kafka_delay_records_forwarded_total{from=\"1m\"} 1"));
        assert!(
            text.contains("kafka_delay_records_dead_lettered_total{reason=\"missing_target\"} 1")
        );
        assert!(text.contains("kafka_delay_partitions_paused{tier=\"1s\"} 3"));
        assert!(text.contains("kafka_delay_delivery_lateness_seconds_bucket{le=\"0.02\"} 1"));
    }
}
