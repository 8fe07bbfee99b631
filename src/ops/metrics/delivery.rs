//! Delivery: records handed to their targets, their lateness, dead letters, failed and retried produces.

use super::*;

/// Delivery: records handed to their targets, their lateness, dead letters, failed and retried produces.
pub struct DeliveryMetrics {
    forwarded: Vec<IntCounter>,
    delivered: IntCounter,
    dead_lettered: Vec<IntCounter>,
    dead_letter_attempts: Vec<IntCounter>,
    dead_letter_failures: IntCounter,
    lateness: Histogram,
    produce_errors: IntCounterVec,
    retries: Vec<IntCounter>,
}

impl DeliveryMetrics {
    /// Registers this domain's metrics in `r`; `source` are the label
    /// values of the topic a record was last read from (`ingress`, then the
    /// tiers).
    pub(super) fn new(r: &Registry, source: &[&str]) -> Self {
        let forwarded = counter_vec(
            r,
            "kafka_delay_records_forwarded_total",
            "Records handed to the producer for their target, by the topic they were last read from.",
            "from",
        );
        let dead = counter_vec(
            r,
            "kafka_delay_records_dead_lettered_total",
            "Dead letters acknowledged by the broker, by reason.",
            "reason",
        );
        let dead_attempts = counter_vec(
            r,
            "kafka_delay_dead_letter_attempts_total",
            "Records sent towards the dead-letter topic, by reason (acknowledged or not).",
            "reason",
        );
        let retries = counter_vec(
            r,
            "kafka_delay_produce_retries_total",
            "Produces retried after a transient failure, by kind (target, tier, dead_letter).",
            "kind",
        );
        Self {
            forwarded: children(source, |l| forwarded.with_label_values(&[l])),
            delivered: counter(
                r,
                "kafka_delay_records_delivered_total",
                "Target deliveries acknowledged by the broker.",
            ),
            dead_lettered: children(&EnvelopeError::REASONS, |l| dead.with_label_values(&[l])),
            dead_letter_attempts: children(&EnvelopeError::REASONS, |l| {
                dead_attempts.with_label_values(&[l])
            }),
            dead_letter_failures: counter(
                r,
                "kafka_delay_dead_letter_failures_total",
                "Dead-letter writes the broker refused (the source partition stops until one succeeds).",
            ),
            lateness: histogram(
                r,
                "kafka_delay_delivery_lateness_seconds",
                "Delivery time minus due time of forwarded records.",
            ),
            produce_errors: counter_vec(
                r,
                "kafka_delay_produce_errors_total",
                "Failed produce attempts, by librdkafka error code.",
                "code",
            ),
            retries: children(&KINDS, |l| retries.with_label_values(&[l])),
        }
    }

    /// A record was handed to the producer for its target; `lateness_ms` is
    /// delivery time minus due time.
    pub fn forwarded(&self, from: Source, lateness_ms: i64) {
        self.forwarded[from.index(self.forwarded.len())].inc();
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

    /// A produce failed with librdkafka error `code`.
    pub fn produce_error(&self, code: &str) {
        self.produce_errors.with_label_values(&[code]).inc();
    }

    /// A produce of kind `kind` (index into [`KINDS`]) is retried.
    pub fn retry(&self, kind: usize) {
        self.retries[kind].inc();
    }

    /// Records delivered to targets so far.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.iter().map(IntCounter::get).sum()
    }

    /// Index of `reason` in [`EnvelopeError::REASONS`] (`other` when unknown).
    pub fn reason_index(reason: &str) -> usize {
        EnvelopeError::REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(EnvelopeError::REASONS.len() - 1)
    }
}
