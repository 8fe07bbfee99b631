//! The loop's side of exactly-once mode: committing the transaction,
//! aborting it and reading the partitions again, and the per-partition
//! write order ([`crate::delivery::exactly_once::order`]).

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::guarantee::Guarantee;
use super::ingress::Stage;
use super::{ConsumerLoop, Role};
use crate::delivery::exactly_once::order::Poison;
use crate::delivery::exactly_once::TransactionError;
use crate::delivery::failures::truncated_dead_letter;
use crate::delivery::forwarder::{Inflight, Kind, Record};
use crate::delivery::ledger::{Assignment, Ticket};
use crate::engine::timer::Timer;
use crate::model::clock::now_ms;
use crate::ops::metrics::Source;

/// Whether a failed write failed only because the transaction did: after
/// a permanent error librdkafka purges every queued and in-flight write of
/// the transaction (`_PURGE_QUEUE`, `_PURGE_INFLIGHT`) and refuses new ones
/// until it is aborted (`_STATE`). Only the write that failed for its own
/// sake may be dead-lettered.
pub(super) fn is_collateral(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::PurgeQueue | C::PurgeInflight | C::State)
    )
}

/// Bound on the committed-offset query and the seek after an abort.
const REWIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause after aborts in a row (doubling from 100 ms): a write that
/// keeps failing (the dead-letter topic is gone) must not spin.
const ABORT_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl ConsumerLoop {
    /// Commits the open transaction when it is due (or `force`), with the
    /// committable offset of every moved partition; an abort reads the
    /// partitions again.
    pub(super) fn transact(&mut self, force: bool) {
        let consumer = self.consumer.clone();
        let context = consumer.context();
        let mut slot = context.lock_transaction();
        let Some(txn) = slot.as_mut() else {
            return;
        };
        if !force && !txn.due() {
            return;
        }
        let ledger = &self.ledger;
        let result = txn.commit(consumer.group_metadata(), || ledger.book().unstored());
        drop(slot);
        self.after_transaction(result);
    }

    /// At shutdown: commits the last transaction and begins none (what the
    /// timer holds stays uncommitted: the next owner reads it). The
    /// closing consumer's revoke then finds no transaction and commits
    /// nothing.
    pub(super) fn finish_transaction(&mut self) {
        let consumer = self.consumer.clone();
        let context = consumer.context();
        context
            .committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(txn) = context.lock_transaction().take() else {
            return;
        };
        let ledger = &self.ledger;
        if let Err(error) = txn.finish(consumer.group_metadata(), || ledger.book().unstored()) {
            tracing::warn!(topic = self.topic, %error, "last transaction not committed; the next owner reads its records again");
        }
    }

    /// Aborts the open transaction now (a write failed) and reads the
    /// partitions again.
    pub(super) fn abort_transaction(&mut self, why: &str) {
        let consumer = self.consumer.clone();
        let error = match consumer.context().lock_transaction().as_mut() {
            Some(txn) => txn.abort_now(why),
            None => return,
        };
        self.after_transaction(Err(error));
    }

    fn after_transaction(&mut self, result: Result<(), TransactionError>) {
        match result {
            Ok(()) => {
                if let Guarantee::ExactlyOnce { aborts, .. } = &mut self.guarantee {
                    *aborts = 0;
                }
            }
            Err(TransactionError::Aborted(why)) => self.rewind(&why),
            Err(TransactionError::Fatal(error)) => self.consumer.context().set_fatal(error),
        }
    }

    /// After an abort: forgets everything read since the last commit and
    /// reads every assigned partition again from its committed offset.
    /// Failed writes are remembered by source offset, so that their records
    /// are dead-lettered when read again.
    pub(super) fn rewind(&mut self, why: &str) {
        let failed = self.forwarder.take_failures();
        let Some(order) = self.guarantee.order_mut() else {
            return;
        };
        {
            let book = self.ledger.book();
            for failure in failed {
                if is_collateral(&failure.error) {
                    // Purged or refused because another write failed the
                    // transaction: nothing is wrong with this record; it is
                    // read and written again.
                    continue;
                }
                if matches!(
                    failure.inflight.kind,
                    Kind::DeadLetter | Kind::TruncatedDeadLetter
                ) {
                    self.shared.metrics.delivery.dead_letter_failure();
                }
                if let Some((p, offset)) = book.source_of(failure.inflight.ticket) {
                    order.poison(p, offset, failure);
                }
            }
        }
        order.reset();
        self.forwarder.discard_unsent();
        self.timer = Timer::default();
        self.timer_bytes = 0;
        if let Stage::Ingress(ingress) = &mut self.stage {
            ingress.parked.clear();
        }
        self.failures.drop_revoked(|_| false);
        let parts: Vec<i32> = self.partitions.iter().map(|(p, _)| p).collect();
        tracing::warn!(
            topic = self.topic,
            partitions = parts.len(),
            why,
            "transaction aborted; reading the partitions again from their committed offsets"
        );
        self.partitions.revoke(&parts);
        let list: Vec<(i32, Assignment)> = {
            let mut book = self.ledger.book();
            parts
                .iter()
                .map(|&p| (p, book.register(&self.topic, p)))
                .collect()
        };
        if let Err(error) = self.seek_committed(&parts) {
            self.consumer.context().set_fatal(format!(
                "cannot read the committed offsets again after an abort: {error}"
            ));
        }
        let aborts = match &mut self.guarantee {
            Guarantee::ExactlyOnce { aborts, .. } => {
                *aborts += 1;
                *aborts
            }
            Guarantee::AtLeastOnce { .. } => 1,
        };
        let backoff = Duration::from_millis(100 << aborts.min(5)).min(ABORT_BACKOFF_MAX);
        std::thread::sleep(backoff);
        self.partitions.assign(&list, now_ms());
    }

    /// Moves each of `parts` back to its committed offset (the beginning
    /// when nothing was committed).
    fn seek_committed(&self, parts: &[i32]) -> Result<(), String> {
        if parts.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in parts {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, REWIND_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let mut to = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            to.add_partition_offset(e.topic(), e.partition(), offset)
                .map_err(|e| e.to_string())?;
        }
        let done = self
            .consumer
            .seek_partitions(to, REWIND_TIMEOUT)
            .map_err(|e| e.to_string())?;
        for e in done.elements() {
            if let Err(error) = e.error() {
                return Err(format!("partition {}: {error}", e.partition()));
            }
        }
        Ok(())
    }

    /// True (and the record queued) when `msg` must wait behind an open
    /// record of its partition.
    pub(super) fn must_wait(&mut self, p: i32, msg: impl FnOnce() -> OwnedMessage) -> bool {
        match self.guarantee.order_mut() {
            Some(order) if order.blocks(p) => {
                order.wait(p, msg());
                true
            }
            _ => false,
        }
    }

    /// A tier write for a bucket released at `release_ms`: its transaction
    /// commits at once when the release comes before it would otherwise.
    pub(super) fn urge_if_released_soon(&mut self, release_ms: i64, now: i64) {
        if let Some(txn) = self.consumer.context().lock_transaction().as_mut() {
            if release_ms - now <= txn.urgent_within_ms() {
                txn.urge();
            }
        }
    }

    /// A record of `p` went into the timer or was parked.
    pub(super) fn opened(&mut self, p: i32) {
        if let Some(order) = self.guarantee.order_mut() {
            order.open(p);
        }
    }

    /// An open record of `p` was written or cancelled.
    pub(super) fn closed(&mut self, p: i32) {
        if let Some(order) = self.guarantee.order_mut() {
            order.close(p);
        }
    }

    /// Handles the waiting records of every partition whose open records
    /// were all written, in order, until one opens again.
    pub(super) fn drain_ready(&mut self, now: i64) {
        let Some(order) = self.guarantee.order_mut() else {
            return;
        };
        for p in order.take_ready() {
            while let Some(msg) = self.guarantee.order_mut().and_then(|o| o.next_waiting(p)) {
                self.handle_owned(msg, now);
            }
        }
    }

    /// A record that waited: handled as if just read.
    fn handle_owned(&mut self, msg: OwnedMessage, now: i64) {
        let p = msg.partition();
        let Some(id) = self.partitions.get(p).map(|part| part.id) else {
            return;
        };
        match self.role() {
            Role::Ingress => {
                let taken = self.ledger.book_unacked().take_sized(
                    id,
                    msg.offset(),
                    super::records::kv_bytes(&msg),
                );
                let Some(ticket) = taken else {
                    return;
                };
                self.ingest(&msg, ticket, now);
            }
            Role::Tier(tier) => {
                self.partitions.wake_sleeper(p, now);
                if self.partitions.get(p).is_some_and(|part| part.is_holding()) {
                    self.partitions.defer(p, msg);
                    return;
                }
                if let Some((release, due)) = self.tier_record(&msg, tier, now) {
                    self.partitions.hold(p, msg, release, due, now);
                }
            }
            Role::Retired(_) => {
                let taken = self.ledger.book_unacked().take_sized(
                    id,
                    msg.offset(),
                    super::records::kv_bytes(&msg),
                );
                if let Some(ticket) = taken {
                    self.retired_record(&msg, ticket, now);
                }
            }
        }
    }

    /// When the write of this source record failed before: writes its
    /// dead letter instead and returns true.
    pub(super) fn write_poisoned<M: Record + Message>(
        &mut self,
        msg: &M,
        ticket: Ticket,
        from: Source,
        now: i64,
    ) -> bool {
        let Some(order) = self.guarantee.order_mut() else {
            return false;
        };
        let Some(poison) = order.take_poison(msg.partition(), msg.offset()) else {
            return false;
        };
        match poison {
            Poison::DeadLetter(error) | Poison::Retry(error) => {
                self.reject(msg, &error, ticket, from)
            }
            Poison::Truncated(record, reason) => {
                let inflight = Inflight {
                    ticket,
                    kind: Kind::TruncatedDeadLetter,
                    reason,
                };
                truncated_dead_letter(&mut self.forwarder, &record, inflight, now);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn purged_and_refused_writes_are_collateral_the_failed_one_is_not() {
        for code in [C::PurgeQueue, C::PurgeInflight, C::State] {
            assert!(
                is_collateral(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            C::MessageSizeTooLarge,
            C::UnknownTopicOrPartition,
            C::MessageTimedOut,
            C::TopicAuthorizationFailed,
        ] {
            assert!(
                !is_collateral(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
    }
}
