//! Consumer loops: partitions assigned, throttled and blocked, records in flight and in the due-soon timer, rebalances, offset commits.

use super::*;

/// Consumer loops: partitions assigned, throttled and blocked, records in flight and in the due-soon timer, rebalances, offset commits.
pub struct LoopMetrics {
    assigned: Vec<IntGauge>,
    throttled: Vec<IntGauge>,
    blocked: Vec<IntGauge>,
    in_flight: Vec<IntGauge>,
    timer_records: Vec<IntGauge>,
    timer_bytes: Vec<IntGauge>,
    rebalances: IntCounter,
    commit_errors: IntCounter,
    commit_latency: Histogram,
}

impl LoopMetrics {
    /// Registers this domain's metrics in `r`; `source` are the label
    /// values of the loops' topics (`ingress`, then the tiers).
    pub(super) fn new(r: &Registry, source: &[&str]) -> Self {
        let source_gauge =
            |name: &str, help: &str| labelled_gauges(r, (name, help), "source", source);
        Self {
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
            timer_records: source_gauge(
                "kafka_delay_timer_records",
                "Records held in the in-memory due-soon timer.",
            ),
            timer_bytes: source_gauge(
                "kafka_delay_timer_bytes",
                "Key, value and header bytes held in the due-soon timer.",
            ),
            rebalances: counter(
                r,
                "kafka_delay_rebalances_total",
                "Consumer-group rebalance events seen (assign or revoke), all groups.",
            ),
            commit_errors: counter(
                r,
                "kafka_delay_commit_errors_total",
                "Offset commits that failed.",
            ),
            commit_latency: histogram(
                r,
                "kafka_delay_commit_latency_seconds",
                "Time from an offset commit request to the broker's answer.",
            ),
        }
    }

    /// Per-source gauges of one consumer loop, now.
    pub fn set_source(&self, source: Source, gauges: SourceGauges) {
        let i = source.index(self.assigned.len());
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

    /// An offset commit was answered after `seconds`.
    pub fn commit_latency(&self, seconds: f64) {
        self.commit_latency.observe(seconds);
    }

    /// An offset commit failed.
    pub fn commit_error(&self) {
        self.commit_errors.inc();
    }
}
