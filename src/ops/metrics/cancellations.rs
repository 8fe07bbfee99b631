//! Cancellations: records cancelled, cancellations held, refused and ignored, the cancel reader.

use super::*;

/// Cancellations: records cancelled, cancellations held, refused and ignored, the cancel reader.
pub struct CancellationMetrics {
    cancelled: IntCounter,
    cancellations: IntGauge,
    cancellations_too_late: IntCounter,
    cancellations_invalid: IntCounter,
    cancellations_refused: IntCounter,
    cancellations_limit: IntGauge,
    cancel_reader_lag: IntGauge,
    cancel_reader_up: IntGauge,
}

impl CancellationMetrics {
    /// Registers this domain's metrics in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            cancelled: counter(
                r,
                "kafka_delay_records_cancelled_total",
                "Records not delivered because a cancellation names their x-delay-id.",
            ),
            cancellations: register(
                r,
                IntGauge::new(
                    "kafka_delay_cancellations_outstanding",
                    "Cancellations held in memory (not yet past the latest due time they can affect).",
                )
                .expect("valid gauge"),
            ),
            cancellations_too_late: counter(
                r,
                "kafka_delay_cancellations_too_late_total",
                "Cancellations issued after the latest due time they could affect (the record was due already).",
            ),
            cancellations_invalid: counter(
                r,
                "kafka_delay_cancellations_invalid_total",
                "Records of the cancel topic ignored: a key that is not an x-delay-id, or a bad value.",
            ),
            cancellations_refused: counter(
                r,
                "kafka_delay_cancellations_refused_total",
                "Cancellations of new ids refused because service.max_cancellations are outstanding (the record they name will be delivered).",
            ),
            cancellations_limit: register(
                r,
                IntGauge::new(
                    "kafka_delay_cancellations_limit",
                    "The configured service.max_cancellations.",
                )
                .expect("valid gauge"),
            ),
            cancel_reader_lag: register(
                r,
                IntGauge::new(
                    "kafka_delay_cancel_reader_lag_records",
                    "Records of the cancel topic not yet read by this instance (end offset minus position, summed over partitions).",
                )
                .expect("valid gauge"),
            ),
            cancel_reader_up: register(
                r,
                IntGauge::new(
                    "kafka_delay_cancel_reader_up",
                    "1 while the cancel topic is loaded and readable; 0 while loading, or when it is missing or unreadable.",
                )
                .expect("valid gauge"),
            ),
        }
    }

    /// A record was cancelled instead of forwarded or written to a tier.
    pub fn cancelled(&self) {
        self.cancelled.inc();
    }

    /// Cancellations held in memory.
    pub fn set_outstanding(&self, n: usize) {
        self.cancellations.set(n as i64);
    }

    /// A cancellation arrived after the latest due time it could affect.
    pub fn too_late(&self) {
        self.cancellations_too_late.inc();
    }

    /// A record of the cancel topic was ignored.
    pub fn invalid(&self) {
        self.cancellations_invalid.inc();
    }

    /// A cancellation of a new id was refused: the limit is reached.
    pub fn refused(&self) {
        self.cancellations_refused.inc();
    }

    /// The configured limit of outstanding cancellations.
    pub fn set_limit(&self, limit: usize) {
        self.cancellations_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// The cancel reader's lag (records) and whether it is up.
    pub fn set_reader(&self, lag_records: i64, up: bool) {
        self.cancel_reader_lag.set(lag_records);
        self.cancel_reader_up.set(i64::from(up));
    }
}
