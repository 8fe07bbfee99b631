//! Ingress: what became of each record published to the ingress topic.

use super::*;

/// Ingress: what became of each record published to the ingress topic.
pub struct IngressMetrics {
    ingested: [IntCounter; 5],
}

impl IngressMetrics {
    /// Registers this domain's metrics in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        let ingested = counter_vec(
            r,
            "kafka_delay_records_ingested_total",
            "Ingress records by outcome.",
            "outcome",
        );
        Self {
            ingested: ["tier", "timer", "delivered", "dead_lettered", "cancelled"]
                .map(|o| ingested.with_label_values(&[o])),
        }
    }

    /// An ingress record was routed.
    pub fn ingested(&self, outcome: Outcome) {
        self.ingested[outcome as usize].inc();
    }
}
