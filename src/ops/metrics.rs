//! Prometheus metrics: one method per event, so call sites never spell a
//! metric name.
//!
//! Names follow `kafka_delay_<name>_<unit>`, `_total` for counters; labels
//! come from small fixed sets: `tier` (tier labels such as `1s`), `source`
//! (`ingress` or a tier label), `reason`, `outcome`, `kind`, `code`.
//! Per-label children are resolved once at start-up so the hot path only
//! touches an atomic.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::model::envelope::EnvelopeError;

/// Where a record came from: the ingress topic or a tier (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The ingress topic.
    Ingress,
    /// A tier, by index (finest first).
    Tier(usize),
}

impl Source {
    /// Index into per-source metric children: ingress 0, tier `t` at `t + 1`.
    pub fn index(self) -> usize {
        match self {
            Source::Ingress => 0,
            Source::Tier(tier) => tier + 1,
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

/// All of the service's metrics, registered in one [`Registry`].
pub struct Metrics {
    registry: Registry,
    ingested: [IntCounter; 5],
    forwarded: Vec<IntCounter>,
    delivered: IntCounter,
    tier_writes: Vec<IntCounter>,
    dead_lettered: Vec<IntCounter>,
    dead_letter_attempts: Vec<IntCounter>,
    dead_letter_failures: IntCounter,
    late_appends: Vec<IntCounter>,
    later_turns: Vec<IntCounter>,
    stalls: Vec<IntCounter>,
    paused: Vec<IntGauge>,
    stalled: Vec<IntGauge>,
    pending: Vec<IntGauge>,
    oldest_due: Vec<IntGauge>,
    assigned: Vec<IntGauge>,
    throttled: Vec<IntGauge>,
    blocked: Vec<IntGauge>,
    in_flight: Vec<IntGauge>,
    lateness: Histogram,
    timer_records: Vec<IntGauge>,
    timer_bytes: Vec<IntGauge>,
    rebalances: IntCounter,
    produce_errors: IntCounterVec,
    retries: Vec<IntCounter>,
    commit_errors: IntCounter,
    commit_latency: Histogram,
    clock_offset: Gauge,
    clock_limit: Gauge,
    ready: IntGauge,
    cancelled: IntCounter,
    cancellations: IntGauge,
    cancellations_too_late: IntCounter,
    cancellations_invalid: IntCounter,
    cancellations_refused: IntCounter,
    cancellations_limit: IntGauge,
    cancel_reader_lag: IntGauge,
    cancel_reader_up: IntGauge,
    transactions_committed: IntCounter,
    transactions_aborted: IntCounter,
    transaction_duration: Histogram,
}

/// Lateness buckets in seconds, 1 ms to 1 h.
const LATENESS_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0, 600.0, 3600.0,
];

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENESS_BUCKETS.to_vec());
    register(
        registry,
        Histogram::with_opts(opts).expect("valid histogram"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

fn children<V>(labels: &[&str], child: impl Fn(&str) -> V) -> Vec<V> {
    labels.iter().map(|l| child(l)).collect()
}

impl Metrics {
    /// Registers every metric; `tiers` are the tier labels (`1s`, `1m`, …).
    pub fn new(tiers: &[String]) -> Self {
        let r = Registry::new();
        let tier: Vec<&str> = tiers.iter().map(String::as_str).collect();
        let source: Vec<&str> = std::iter::once("ingress")
            .chain(tier.iter().copied())
            .collect();
        let per_tier = |name: &str, help: &str| {
            let vec = counter_vec(&r, name, help, "tier");
            children(&tier, |l| vec.with_label_values(&[l]))
        };
        let tier_gauge = |name: &str, help: &str| {
            let vec = gauge_vec(&r, name, help, "tier");
            children(&tier, |l| vec.with_label_values(&[l]))
        };
        let source_gauge = |name: &str, help: &str| {
            let vec = gauge_vec(&r, name, help, "source");
            children(&source, |l| vec.with_label_values(&[l]))
        };
        let ingested = counter_vec(
            &r,
            "kafka_delay_records_ingested_total",
            "Ingress records by outcome.",
            "outcome",
        );
        let forwarded = counter_vec(
            &r,
            "kafka_delay_records_forwarded_total",
            "Records handed to the producer for their target, by the topic they were last read from.",
            "from",
        );
        let dead = counter_vec(
            &r,
            "kafka_delay_records_dead_lettered_total",
            "Dead letters acknowledged by the broker, by reason.",
            "reason",
        );
        let dead_attempts = counter_vec(
            &r,
            "kafka_delay_dead_letter_attempts_total",
            "Records sent towards the dead-letter topic, by reason (acknowledged or not).",
            "reason",
        );
        let retries = counter_vec(
            &r,
            "kafka_delay_produce_retries_total",
            "Produces retried after a transient failure, by kind (target, tier, dead_letter).",
            "kind",
        );
        let clock_offset = register(
            &r,
            Gauge::new(
                "kafka_delay_clock_offset_seconds",
                "Estimated offset of this instance's clock from the broker's (positive: ahead); \
                 NaN when unknown.",
            )
            .expect("valid gauge"),
        );
        clock_offset.set(f64::NAN);
        Self {
            ingested: ["tier", "timer", "delivered", "dead_lettered", "cancelled"]
                .map(|o| ingested.with_label_values(&[o])),
            forwarded: children(&source, |l| forwarded.with_label_values(&[l])),
            delivered: counter(
                &r,
                "kafka_delay_records_delivered_total",
                "Target deliveries acknowledged by the broker.",
            ),
            tier_writes: per_tier(
                "kafka_delay_tier_writes_total",
                "Records written into a tier topic.",
            ),
            dead_lettered: children(&EnvelopeError::REASONS, |l| dead.with_label_values(&[l])),
            dead_letter_attempts: children(&EnvelopeError::REASONS, |l| {
                dead_attempts.with_label_values(&[l])
            }),
            dead_letter_failures: counter(
                &r,
                "kafka_delay_dead_letter_failures_total",
                "Dead-letter writes the broker refused (the source partition stops until one succeeds).",
            ),
            late_appends: per_tier(
                "kafka_delay_late_appends_total",
                "Tier records read after their partition was drained past their bucket's release \
                 (a writer's clock behind, a slow produce): delivered at once, counted by the owner.",
            ),
            later_turns: per_tier(
                "kafka_delay_later_turn_records_total",
                "Tier records read for a later turn of their slot than the next (forged, or re-sent long after routing): re-routed at once instead of held.",
            ),
            stalls: per_tier(
                "kafka_delay_stalls_total",
                "Times the watchdog resumed a partition that fetched nothing while behind its end offset.",
            ),
            paused: tier_gauge(
                "kafka_delay_partitions_paused",
                "Tier partitions paused by the service: holding a head until its release, or asleep \
                 until their next turn.",
            ),
            stalled: tier_gauge(
                "kafka_delay_partitions_stalled",
                "Tier partitions behind their end offset that made no progress at the last check.",
            ),
            pending: tier_gauge(
                "kafka_delay_records_pending",
                "Records waiting in a tier: end offset minus committed offset (both fresh from the \
                 broker), over this instance's partitions.",
            ),
            oldest_due: tier_gauge(
                "kafka_delay_oldest_pending_due_timestamp_seconds",
                "Earliest due time among held tier heads, Unix seconds (0: none held).",
            ),
            assigned: source_gauge(
                "kafka_delay_partitions_assigned",
                "Partitions assigned to this instance, by source topic.",
            ),
            throttled: source_gauge(
                "kafka_delay_partitions_throttled",
                "Partitions paused for backpressure (in-flight or timer caps, producer queue full).",
            ),
            blocked: source_gauge(
                "kafka_delay_partitions_blocked",
                "Partitions stopped because the dead-letter topic refuses their records.",
            ),
            in_flight: source_gauge(
                "kafka_delay_in_flight_records",
                "Records read and not yet acknowledged (timer, produce queue, retries).",
            ),
            lateness: histogram(
                &r,
                "kafka_delay_delivery_lateness_seconds",
                "Delivery time minus due time of forwarded records.",
            ),
            timer_records: source_gauge(
                "kafka_delay_timer_records",
                "Records held in the in-memory due-soon timer.",
            ),
            timer_bytes: source_gauge(
                "kafka_delay_timer_bytes",
                "Key, value and header bytes held in the due-soon timer.",
            ),
            rebalances: counter(
                &r,
                "kafka_delay_rebalances_total",
                "Consumer-group rebalance events seen (assign or revoke), all groups.",
            ),
            produce_errors: counter_vec(
                &r,
                "kafka_delay_produce_errors_total",
                "Failed produce attempts, by librdkafka error code.",
                "code",
            ),
            retries: children(&KINDS, |l| retries.with_label_values(&[l])),
            commit_errors: counter(
                &r,
                "kafka_delay_commit_errors_total",
                "Offset commits that failed.",
            ),
            commit_latency: histogram(
                &r,
                "kafka_delay_commit_latency_seconds",
                "Time from an offset commit request to the broker's answer.",
            ),
            clock_offset,
            clock_limit: register(
                &r,
                Gauge::new(
                    "kafka_delay_clock_skew_limit_seconds",
                    "The configured wheel.max_clock_skew.",
                )
                .expect("valid gauge"),
            ),
            ready: register(
                &r,
                IntGauge::new("kafka_delay_ready", "1 while /readyz answers 200.")
                    .expect("valid gauge"),
            ),
            cancelled: counter(
                &r,
                "kafka_delay_records_cancelled_total",
                "Records not delivered because a cancellation names their x-delay-id.",
            ),
            cancellations: register(
                &r,
                IntGauge::new(
                    "kafka_delay_cancellations_outstanding",
                    "Cancellations held in memory (not yet past the latest due time they can affect).",
                )
                .expect("valid gauge"),
            ),
            cancellations_too_late: counter(
                &r,
                "kafka_delay_cancellations_too_late_total",
                "Cancellations issued after the latest due time they could affect (the record was due already).",
            ),
            cancellations_invalid: counter(
                &r,
                "kafka_delay_cancellations_invalid_total",
                "Records of the cancel topic ignored: a key that is not an x-delay-id, or a bad value.",
            ),
            cancellations_refused: counter(
                &r,
                "kafka_delay_cancellations_refused_total",
                "Cancellations of new ids refused because service.max_cancellations are outstanding (the record they name will be delivered).",
            ),
            cancellations_limit: register(
                &r,
                IntGauge::new(
                    "kafka_delay_cancellations_limit",
                    "The configured service.max_cancellations.",
                )
                .expect("valid gauge"),
            ),
            cancel_reader_lag: register(
                &r,
                IntGauge::new(
                    "kafka_delay_cancel_reader_lag_records",
                    "Records of the cancel topic not yet read by this instance (end offset minus position, summed over partitions).",
                )
                .expect("valid gauge"),
            ),
            cancel_reader_up: register(
                &r,
                IntGauge::new(
                    "kafka_delay_cancel_reader_up",
                    "1 while the cancel topic is loaded and readable; 0 while loading, or when it is missing or unreadable.",
                )
                .expect("valid gauge"),
            ),
            transactions_committed: counter(
                &r,
                "kafka_delay_transactions_committed_total",
                "Kafka transactions committed (exactly-once mode).",
            ),
            transactions_aborted: counter(
                &r,
                "kafka_delay_transactions_aborted_total",
                "Kafka transactions aborted (exactly-once mode); their source records are read again.",
            ),
            transaction_duration: histogram(
                &r,
                "kafka_delay_transaction_duration_seconds",
                "Time from a transaction's first write to its commit (exactly-once mode).",
            ),
            registry: r,
        }
    }

    /// Index of `reason` in [`EnvelopeError::REASONS`] (`other` when unknown).
    pub fn reason_index(reason: &str) -> usize {
        EnvelopeError::REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(EnvelopeError::REASONS.len() - 1)
    }

    /// An ingress record was routed.
    pub fn ingested(&self, outcome: Outcome) {
        self.ingested[outcome as usize].inc();
    }

    /// A record was handed to the producer for its target; `lateness_ms` is
    /// delivery time minus due time.
    pub fn forwarded(&self, from: Source, lateness_ms: i64) {
        self.forwarded[from.index()].inc();
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

    /// A record was sent towards the dead-letter topic for `reason` (an
    /// [`EnvelopeError::reason`]).
    pub fn dead_letter_attempt(&self, reason: &str) {
        self.dead_letter_attempts[Self::reason_index(reason)].inc();
    }

    /// The broker acknowledged a dead letter; `reason` is the index into
    /// [`EnvelopeError::REASONS`].
    pub fn dead_lettered(&self, reason: usize) {
        if let Some(c) = self.dead_lettered.get(reason) {
            c.inc();
        }
    }

    /// Dead letters acknowledged for `reason` so far.
    pub fn dead_lettered_total(&self, reason: &str) -> u64 {
        self.dead_lettered[Self::reason_index(reason)].get()
    }

    /// The dead-letter topic refused a record.
    pub fn dead_letter_failure(&self) {
        self.dead_letter_failures.inc();
    }

    /// A tier record arrived after its partition had drained past its release.
    pub fn late_append(&self, tier: usize) {
        self.late_appends[tier].inc();
    }

    /// A tier record of a later turn than its slot's next was re-routed.
    pub fn later_turn(&self, tier: usize) {
        self.later_turns[tier].inc();
    }

    /// The watchdog resumed a stalled partition of tier `tier`.
    pub fn stall(&self, tier: usize) {
        self.stalls[tier].inc();
    }

    /// Per-tier partition gauges, now.
    pub fn set_tier_partitions(&self, tier: usize, paused: usize, stalled: usize) {
        self.paused[tier].set(paused as i64);
        self.stalled[tier].set(stalled as i64);
    }

    /// Records pending in tier `tier` (end offset − committed).
    pub fn set_pending(&self, tier: usize, count: i64) {
        self.pending[tier].set(count);
    }

    /// Earliest due time (epoch ms) of the held heads of tier `tier`.
    pub fn set_oldest_due(&self, tier: usize, due_ms: Option<i64>) {
        self.oldest_due[tier].set(due_ms.map_or(0, |ms| ms / 1000));
    }

    /// Per-source gauges of one consumer loop, now.
    pub fn set_source(&self, source: Source, gauges: SourceGauges) {
        let i = source.index();
        self.assigned[i].set(gauges.assigned as i64);
        self.throttled[i].set(gauges.throttled as i64);
        self.blocked[i].set(gauges.blocked as i64);
        self.in_flight[i].set(gauges.in_flight as i64);
        self.timer_records[i].set(gauges.timer_records as i64);
        self.timer_bytes[i].set(gauges.timer_bytes as i64);
    }

    /// A rebalance event (assign or revoke) was handled.
    pub fn rebalance(&self) {
        self.rebalances.inc();
    }

    /// A produce failed with librdkafka error `code`.
    pub fn produce_error(&self, code: &str) {
        self.produce_errors.with_label_values(&[code]).inc();
    }

    /// A produce of kind `kind` (index into [`KINDS`]) is retried.
    pub fn retry(&self, kind: usize) {
        self.retries[kind].inc();
    }

    /// An offset commit was answered after `seconds`.
    pub fn commit_latency(&self, seconds: f64) {
        self.commit_latency.observe(seconds);
    }

    /// A transaction committed after being open `seconds`.
    pub fn transaction_committed(&self, seconds: f64) {
        self.transactions_committed.inc();
        self.transaction_duration.observe(seconds);
    }

    /// A transaction was aborted.
    pub fn transaction_aborted(&self) {
        self.transactions_aborted.inc();
    }

    /// Transactions committed so far.
    pub fn transactions_committed_total(&self) -> u64 {
        self.transactions_committed.get()
    }

    /// Transactions aborted so far.
    pub fn transactions_aborted_total(&self) -> u64 {
        self.transactions_aborted.get()
    }

    /// An offset commit failed.
    pub fn commit_error(&self) {
        self.commit_errors.inc();
    }

    /// The clock offset estimate (ms), and the configured limit (ms).
    pub fn set_clock(&self, offset_ms: Option<i64>, limit_ms: i64) {
        self.clock_offset
            .set(offset_ms.map_or(f64::NAN, |ms| ms as f64 / 1000.0));
        self.clock_limit.set(limit_ms as f64 / 1000.0);
    }

    /// Readiness, as `/readyz` reports it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// A record was cancelled instead of forwarded or written to a tier.
    pub fn cancelled(&self) {
        self.cancelled.inc();
    }

    /// Cancellations held in memory.
    pub fn set_cancellations_outstanding(&self, n: usize) {
        self.cancellations.set(n as i64);
    }

    /// A cancellation arrived after the latest due time it could affect.
    pub fn cancellation_too_late(&self) {
        self.cancellations_too_late.inc();
    }

    /// A record of the cancel topic was ignored.
    pub fn cancellation_invalid(&self) {
        self.cancellations_invalid.inc();
    }

    /// A cancellation of a new id was refused: the limit is reached.
    pub fn cancellation_refused(&self) {
        self.cancellations_refused.inc();
    }

    /// The configured limit of outstanding cancellations.
    pub fn set_cancellations_limit(&self, limit: usize) {
        self.cancellations_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// The cancel reader's lag (records) and whether it is up.
    pub fn set_cancel_reader(&self, lag_records: i64, up: bool) {
        self.cancel_reader_lag.set(lag_records);
        self.cancel_reader_up.set(i64::from(up));
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
    use super::*;

    #[test]
    fn events_show_up_in_the_exposition() {
        let m = Metrics::new(&["1s".into(), "1m".into()]);
        m.ingested(Outcome::Timer);
        m.forwarded(Source::Tier(1), 12);
        m.dead_letter_attempt("missing_target");
        m.dead_lettered(Metrics::reason_index("missing_target"));
        m.set_tier_partitions(0, 3, 1);
        m.set_source(
            Source::Ingress,
            SourceGauges {
                throttled: 2,
                ..Default::default()
            },
        );
        m.set_clock(Some(-250), 500);
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
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }
}
