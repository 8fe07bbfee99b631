//! Exactly-once mode (`delivery.mode = "exactly_once"`): the writes of one
//! consumer loop and the source offsets they consumed commit in one Kafka
//! transaction.
//!
//! The design is KIP-447's ("Producer scalability for exactly once
//! semantics", Apache Kafka 2.5): one transactional producer per consumer,
//! offsets sent with the consumer's group metadata
//! (`send_offsets_to_transaction`), so that a member that lost its
//! partitions in a rebalance cannot commit them: the group coordinator
//! refuses its generation. Each producer's `transactional.id` is
//! `<group_id>.<loop>.<instance_id>` ([`Settings::transactional_id`]): a
//! restarted instance's `init_transactions` aborts whatever its
//! predecessor left open.
//!
//! One transaction is open at a time per loop. It commits when it holds
//! `delivery.transaction_max_records` writes or is
//! `delivery.transaction_interval` old, on revoke, and at shutdown:
//! flush (every write acknowledged), then the committable offset of every
//! partition ([`crate::delivery::ledger`]), then commit. Anything else aborts it, and
//! the loop reads its partitions again from the committed offsets
//! ([`crate::engine`]'s rewind).

pub(crate) mod order;

use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use crate::kafka::native::PolledProducer;
use rdkafka::{Offset, TopicPartitionList};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::Settings;
use crate::delivery::forwarder::{DeliveryContext, Failure, Forwarder};
use crate::ops::metrics::Metrics;

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The transaction was aborted and a new one begun: its writes are
    /// discarded and its source records must be read again.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// The producer cannot go on (fenced by a newer instance with the same
    /// `transactional.id`, or the broker refused the transaction): the
    /// process must exit; nothing uncommitted is visible to
    /// `read_committed` readers.
    #[error("transactional producer failed: {0}")]
    Fatal(String),
}

/// The open transaction of one loop's producer.
pub struct Transaction {
    producer: PolledProducer<DeliveryContext>,
    /// The forwarder's count of writes issued.
    sent: Arc<AtomicU64>,
    /// The forwarder's failed writes (any fails the transaction).
    failures: Arc<Mutex<Vec<Failure>>>,
    metrics: Arc<Metrics>,
    /// Bound on each blocking call (the transaction timeout, at most 30 s).
    timeout: Duration,
    max_records: u64,
    interval: Duration,
    opened: Instant,
    /// The write count when the transaction began.
    sent_at_begin: u64,
    /// Set by [`Transaction::finish`]: commit without beginning another.
    last: bool,
    /// A write of this transaction must be readable soon (see
    /// [`Transaction::urge`]): commit at the loop's next turn.
    urgent: bool,
}

/// Time allowed for a commit to become readable, ms (for
/// [`Transaction::urgent_within_ms`]).
const URGENT_COMMIT_MS: i64 = 200;

/// Longest a single transactional call may block the loop.
const CALL_TIMEOUT_MAX: Duration = Duration::from_secs(30);

impl Transaction {
    /// Registers the producer's `transactional.id` with the broker (fencing
    /// a predecessor of the same id and aborting what it left open) and
    /// begins the first transaction. Blocks up to the transaction timeout.
    ///
    /// Errors: the broker refuses transactions (e.g.
    /// `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`) or is unreachable.
    pub fn start(
        forwarder: &Forwarder,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let d = &settings.delivery;
        let timeout = (*d.transaction_timeout).min(CALL_TIMEOUT_MAX);
        let producer = forwarder.producer_handle();
        producer.init_transactions(timeout)?;
        producer.begin_transaction()?;
        let sent = forwarder.sent_counter();
        Ok(Self {
            producer,
            sent_at_begin: sent.load(Ordering::Relaxed),
            sent,
            failures: forwarder.failures_handle(),
            metrics,
            timeout,
            max_records: d.transaction_max_records as u64,
            interval: *d.transaction_interval,
            opened: Instant::now(),
            last: false,
            urgent: false,
        })
    }

    /// Marks the transaction urgent: it holds a tier write whose bucket is
    /// released before the transaction would commit on its own (the write
    /// is readable only after the commit; later, the owner would find it
    /// as a late append, up to a watch interval late).
    pub fn urge(&mut self) {
        self.urgent = true;
    }

    /// How soon a tier write's bucket may be released before its
    /// transaction must commit at once: the interval plus time to commit.
    pub fn urgent_within_ms(&self) -> i64 {
        self.interval.as_millis() as i64 + URGENT_COMMIT_MS
    }

    /// True when the transaction should commit.
    pub fn due(&self) -> bool {
        self.urgent
            || self.sent.load(Ordering::Relaxed) - self.sent_at_begin >= self.max_records
            || self.opened.elapsed() >= self.interval
    }

    /// Commits the writes made so far together with `offsets` — the
    /// committable position of each moved source partition as
    /// (topic, partition, offset), computed by `offsets` after every write
    /// was acknowledged — then begins the next transaction. A transaction
    /// with no write and no moved offset is not sent; one with a failed
    /// write is aborted.
    pub fn commit(
        &mut self,
        group: Option<ConsumerGroupMetadata>,
        offsets: impl FnOnce() -> Vec<(String, i32, i64)>,
    ) -> Result<(), TransactionError> {
        let sent = self.sent.load(Ordering::Relaxed);
        if let Err(error) = self.producer.flush(self.timeout) {
            return Err(self.abort(&format!("writes not acknowledged: {error}"), sent));
        }
        let failed = !self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if failed {
            return Err(self.abort("a write failed", sent));
        }
        let moved = offsets();
        if sent == self.sent_at_begin && moved.is_empty() {
            self.opened = Instant::now();
            self.urgent = false;
            if self.last {
                // Nothing was sent: end the (local) transaction quietly.
                let _ = self.producer.abort_transaction(self.timeout);
            }
            return Ok(());
        }
        if !moved.is_empty() {
            let Some(group) = group else {
                return Err(self.abort("no consumer group metadata (not a member)", sent));
            };
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, offset) in &moved {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
            let producer = &self.producer;
            let timeout = self.timeout;
            if let Err(error) = retrying(timeout, || {
                producer.send_offsets_to_transaction(&tpl, &group, timeout)
            }) {
                return Err(self.fail(&error, sent));
            }
        }
        let (producer, timeout) = (&self.producer, self.timeout);
        if let Err(error) = retrying(timeout, || producer.commit_transaction(timeout)) {
            return Err(self.fail(&error, sent));
        }
        self.metrics
            .transactions
            .committed(self.opened.elapsed().as_secs_f64());
        self.begin(sent)
    }

    /// The last commit, at shutdown: like [`Transaction::commit`] but no
    /// transaction is begun after it, so the producer closes with none
    /// open (a begun transaction left behind can keep the broker from
    /// registering the next instance under the same `transactional.id`).
    pub fn finish(
        mut self,
        group: Option<ConsumerGroupMetadata>,
        offsets: impl FnOnce() -> Vec<(String, i32, i64)>,
    ) -> Result<(), TransactionError> {
        self.last = true;
        self.commit(group, offsets)
    }

    /// Aborts the open transaction (revoke with the partitions lost, a
    /// failed write) and begins the next one. Returns
    /// [`TransactionError::Aborted`], or `Fatal` when even that failed.
    pub fn abort_now(&mut self, why: &str) -> TransactionError {
        let sent = self.sent.load(Ordering::Relaxed);
        self.abort(why, sent)
    }

    fn abort(&mut self, why: &str, sent: u64) -> TransactionError {
        tracing::warn!(why, "aborting the transaction");
        if let Err(error) = self.producer.abort_transaction(self.timeout) {
            return TransactionError::Fatal(format!("abort failed: {error}"));
        }
        self.metrics.transactions.aborted();
        match self.begin(sent) {
            Ok(()) => TransactionError::Aborted(why.to_owned()),
            Err(e) => e,
        }
    }

    /// A failed transactional call: fatal errors stop the producer;
    /// anything else aborts.
    fn fail(&mut self, error: &KafkaError, sent: u64) -> TransactionError {
        let fatal = match error {
            KafkaError::Transaction(e) => e.is_fatal(),
            _ => false,
        };
        if fatal {
            return TransactionError::Fatal(crate::kafka::describe(error));
        }
        self.abort(&crate::kafka::describe(error), sent)
    }

    fn begin(&mut self, sent: u64) -> Result<(), TransactionError> {
        if self.last {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| TransactionError::Fatal(format!("cannot begin: {e}")))?;
        self.opened = Instant::now();
        self.sent_at_begin = sent;
        self.urgent = false;
        Ok(())
    }
}

/// Calls `call` again while it fails with an error librdkafka marks
/// retriable (`rd_kafka_error_is_retriable`: e.g. a commit that timed out
/// while the coordinator still works on it), for at most `budget`, backing
/// off from 50 ms. librdkafka requires the same call to be repeated then:
/// an abort in that state is refused. Other errors are returned at once.
fn retrying(
    budget: Duration,
    call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    retry_while(
        budget,
        Duration::from_millis(50),
        call,
        |e| matches!(e, KafkaError::Transaction(t) if t.is_retriable()),
    )
}

/// Calls `call` until it succeeds, fails with an error `retriable` refuses,
/// or `budget` is spent; the back-off starts at `backoff` and doubles up to
/// 1 s.
fn retry_while<E: std::fmt::Display>(
    budget: Duration,
    mut backoff: Duration,
    mut call: impl FnMut() -> Result<(), E>,
    retriable: impl Fn(&E) -> bool,
) -> Result<(), E> {
    let started = Instant::now();
    loop {
        match call() {
            Err(e) if retriable(&e) && started.elapsed() < budget => {
                tracing::info!(error = %e, "transactional call failed retriably; trying again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_errors_are_tried_again_within_the_budget_and_others_returned() {
        let mut calls = 0;
        let ok = retry_while(
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                calls += 1;
                if calls < 3 {
                    Err("retriable")
                } else {
                    Ok(())
                }
            },
            |e| *e == "retriable",
        );
        assert!(ok.is_ok());
        assert_eq!(calls, 3, "called again until it succeeded");
        let mut calls = 0;
        let fatal = retry_while(
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                calls += 1;
                Err("fatal")
            },
            |e| *e == "retriable",
        );
        assert_eq!((fatal, calls), (Err("fatal"), 1), "other errors at once");
        let mut calls = 0;
        let spent = retry_while(
            Duration::from_millis(30),
            Duration::from_millis(10),
            || {
                calls += 1;
                Err("retriable")
            },
            |e| *e == "retriable",
        );
        assert!(spent.is_err() && (2..10).contains(&calls), "{calls} calls");
        // A plain produce error is never a retriable transaction error.
        let mut calls = 0;
        let plain = retrying(Duration::from_secs(5), || {
            calls += 1;
            Err(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::QueueFull,
            ))
        });
        assert!(plain.is_err() && calls == 1);
    }
}
