//! Transactions (exactly-once mode): commits, aborts, durations.

use super::*;

/// Transactions (exactly-once mode): commits, aborts, durations.
pub struct TransactionMetrics {
    transactions_committed: IntCounter,
    transactions_aborted: IntCounter,
    transaction_duration: Histogram,
}

impl TransactionMetrics {
    /// Registers this domain's metrics in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            transactions_committed: counter(
                r,
                "kafka_delay_transactions_committed_total",
                "Kafka transactions committed (exactly-once mode).",
            ),
            transactions_aborted: counter(
                r,
                "kafka_delay_transactions_aborted_total",
                "Kafka transactions aborted (exactly-once mode); their source records are read again.",
            ),
            transaction_duration: histogram(
                r,
                "kafka_delay_transaction_duration_seconds",
                "Time from a transaction's first write to its commit (exactly-once mode).",
            ),

        }
    }

    /// A transaction committed after being open `seconds`.
    pub fn committed(&self, seconds: f64) {
        self.transactions_committed.inc();
        self.transaction_duration.observe(seconds);
    }

    /// A transaction was aborted.
    pub fn aborted(&self) {
        self.transactions_aborted.inc();
    }

    /// Transactions committed so far.
    pub fn committed_total(&self) -> u64 {
        self.transactions_committed.get()
    }

    /// Transactions aborted so far.
    pub fn aborted_total(&self) -> u64 {
        self.transactions_aborted.get()
    }
}
