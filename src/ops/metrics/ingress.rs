//! Ingress: what became of each record published to the ingress topic.

use super::*;

/// Ingress: what became of each record published to the ingress topic.
pub struct IngressMetrics {
    ingested: [IntCounter; 5],
    backlog: IntGauge,
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
            backlog: register(
                r,
                IntGauge::new(
                    "kafka_delay_ingress_backlog_records",
                    "Records published to the ingress topic and not yet committed as routed: end offset \
                     minus committed offset (both fresh from the broker), over this instance's \
                     ingress partitions.",
                )
                .expect("valid gauge"),
            ),
        }
    }

    /// An ingress record was routed.
    pub fn ingested(&self, outcome: Outcome) {
        self.ingested[outcome as usize].inc();
    }

    /// Records published and not yet routed, over this instance's ingress
    /// partitions (end offset − committed offset).
    pub fn set_backlog(&self, records: i64) {
        self.backlog.set(records);
    }
}
