//! Rebalances of one consumer loop's group.
//!
//! librdkafka runs the rebalance callback inside `poll`, on the loop's
//! thread. On revoke the callback waits (bounded) for in-flight produces,
//! then commits the acknowledged prefix of each revoked partition through
//! the committer thread (bounded wait) before librdkafka lets the
//! partitions go. Both directions are queued as events for the loop, which
//! updates its partition table (resuming every assigned partition
//! explicitly), timer, parked records and retries right after `poll`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::Producer;

use crate::kafka::native::PolledProducer;
use rdkafka::ClientContext;

use crate::delivery::exactly_once::{Transaction, TransactionError};
use crate::delivery::forwarder::DeliveryContext;
use crate::delivery::ledger::{Assignment, Ledger};
use crate::engine::round_trips::Committer;
use crate::model::clock::now_ms;
use crate::ops::health::LoopHealth;
use crate::ops::metrics::Metrics;

/// A rebalance, as the loop handles it after `poll`.
pub enum RebalanceEvent {
    Assigned(Vec<(i32, Assignment)>),
    Revoked(Vec<i32>),
}

/// Longest a revoke waits for in-flight produces and for its commit, each.
/// The callback runs inside `poll`: it must stay well inside
/// `max.poll.interval.ms`, or the member is dropped from the group.
const REVOKE_WAIT_MAX: Duration = Duration::from_secs(5);

/// The consumer context of one loop.
pub struct GroupContext {
    pub(super) topic: String,
    pub(super) ledger: Arc<Ledger>,
    pub(super) producer: PolledProducer<DeliveryContext>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<crate::ops::health::Health>,
    pub(super) health_index: usize,
    /// Set once the committer thread runs; taken away at shutdown.
    pub(super) committer: Mutex<Option<Committer>>,
    /// How long a revoke may wait for produces, and again for its commit:
    /// a quarter of `max.poll.interval.ms`, at most [`REVOKE_WAIT_MAX`].
    pub(super) revoke_wait: Duration,
    pub(super) assigned: Mutex<BTreeSet<i32>>,
    pub(super) events: Mutex<Vec<RebalanceEvent>>,
    /// Set when `events` is non-empty: checked after every polled record.
    pub(super) events_pending: AtomicBool,
    /// Exactly-once mode: the open transaction (committed on revoke).
    pub(super) transaction: Mutex<Option<Transaction>>,
    /// Set when a revoke aborted the transaction: the loop reads its
    /// partitions again.
    pub(super) rewind: AtomicBool,
    /// A transactional failure the process cannot go on after.
    pub(super) fatal: Mutex<Option<String>>,
}

impl GroupContext {
    /// The revoke wait for a consumer with `max_poll_ms` (`max.poll.interval.ms`).
    pub fn revoke_wait(max_poll_ms: u64) -> Duration {
        Duration::from_millis(max_poll_ms / 4).min(REVOKE_WAIT_MAX)
    }

    fn loop_health(&self) -> &LoopHealth {
        &self.health.loops[self.health_index].1
    }

    fn committer(&self) -> Option<Committer> {
        self.committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_assigned(&self, change: impl FnOnce(&mut BTreeSet<i32>)) {
        let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut assigned);
        self.loop_health()
            .assigned
            .store(assigned.len(), Ordering::Relaxed);
        if let Some(c) = self.committer() {
            c.set_assigned(assigned.iter().copied().collect());
        }
    }

    fn push(&self, event: RebalanceEvent) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        self.events_pending.store(true, Ordering::Relaxed);
    }

    /// The open transaction (exactly-once mode).
    pub(super) fn lock_transaction(&self) -> MutexGuard<'_, Option<Transaction>> {
        self.transaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a fatal transactional error for the loop.
    pub(super) fn set_fatal(&self, error: String) {
        tracing::error!(topic = self.topic, %error, "transactional producer failed");
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// The fatal transactional error, if any.
    pub(super) fn take_fatal(&self) -> Option<String> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// True (once) after a revoke aborted the transaction.
    pub(super) fn take_rewind(&self) -> bool {
        self.rewind.swap(false, Ordering::Relaxed)
    }

    /// Exactly-once revoke: commits the open transaction with the offsets
    /// of every partition (the revoked ones included) before they go; with
    /// the partitions lost, aborts it (the group would refuse its offsets).
    /// Returns false in at-least-once mode.
    fn end_transaction(&self, consumer: &BaseConsumer<Self>, lost: bool) -> bool {
        let mut slot = self.lock_transaction();
        let Some(txn) = slot.as_mut() else {
            return false;
        };
        let started = std::time::Instant::now();
        let result = if lost {
            Err(txn.abort_now("consumer group membership lost"))
        } else {
            txn.commit(consumer.group_metadata(), || self.ledger.book().unstored())
        };
        drop(slot);
        tracing::debug!(
            topic = self.topic,
            lost,
            took_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "transaction ended on revoke"
        );
        match result {
            Ok(()) => {}
            Err(TransactionError::Aborted(_)) => self.rewind.store(true, Ordering::Relaxed),
            Err(TransactionError::Fatal(error)) => self.set_fatal(error),
        }
        true
    }

    /// Takes the queued events.
    pub(super) fn take_events(&self) -> Vec<RebalanceEvent> {
        if !self.events_pending.swap(false, Ordering::Relaxed) {
            return Vec::new();
        }
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's client-level errors. End-of-partition events arrive
    /// here too (they are expected: the loop reads them from `poll`); the
    /// rest are logged once each, without repeating values.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        tracing::warn!(
            topic = self.topic,
            "librdkafka: {}: {reason}",
            crate::kafka::describe(&error)
        );
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.metrics.loops.rebalance();
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut book = self.ledger.book();
                let list: Vec<(i32, Assignment)> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| (e.partition(), book.register(e.topic(), e.partition())))
                    .collect();
                drop(book);
                tracing::debug!(
                    topic = self.topic,
                    partitions = ?list.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                    "partitions assigned"
                );
                self.set_assigned(|a| a.extend(list.iter().map(|(p, _)| *p)));
                self.loop_health().lost_since_ms.store(0, Ordering::Relaxed);
                self.push(RebalanceEvent::Assigned(list));
            }
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                let transactional = self.end_transaction(consumer, lost);
                if lost {
                    self.loop_health()
                        .lost_since_ms
                        .store(now_ms(), Ordering::Relaxed);
                    tracing::warn!(
                        topic = self.topic,
                        "consumer group membership lost; rejoining"
                    );
                } else if transactional {
                    // Committed (or aborted) with the transaction.
                } else if let Err(error) = self.producer.flush(self.revoke_wait) {
                    tracing::warn!(%error, "in-flight records not acknowledged before revoke; they will be redelivered");
                }
                let mut book = self.ledger.book();
                let mut positions = Vec::new();
                let mut revoked = Vec::new();
                for e in tpl.elements().iter().filter(|e| e.topic() == self.topic) {
                    if let Some(position) = book.remove(e.topic(), e.partition()) {
                        positions.push((e.partition(), position));
                    }
                    revoked.push(e.partition());
                }
                drop(book);
                // No committer: the loop is closing and committed already.
                if let (false, false, false, Some(committer)) =
                    (transactional, lost, positions.is_empty(), self.committer())
                {
                    if !committer.commit_and_wait(positions, self.revoke_wait) {
                        tracing::warn!(topic = self.topic, "commit on revoke not confirmed; the next owner may redeliver some records");
                    }
                }
                self.set_assigned(|a| {
                    for p in &revoked {
                        a.remove(p);
                    }
                });
                self.push(RebalanceEvent::Revoked(revoked));
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
    }
}
