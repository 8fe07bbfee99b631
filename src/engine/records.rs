//! What both stages share: a record fresh from `poll` handed to its stage,
//! routing (deliver now, the due-soon timer, a tier), cancellations, dead
//! letters, the timer's deliveries, failed writes and rebalance events.

use std::sync::atomic::Ordering;

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::Message;

use super::ingress::Stage;
use super::rebalance::RebalanceEvent;
use super::ConsumerLoop;
use crate::delivery::forwarder::Record;
use crate::delivery::ledger::Ticket;
use crate::model::envelope::{Envelope, EnvelopeError};
use crate::ops::metrics::{Outcome, Source};
use crate::wheel::{key_lane, Route};

/// A record waiting in the due-soon timer.
pub struct Scheduled {
    ticket: Ticket,
    from: Source,
    target: String,
    original_timestamp_ms: i64,
    id: Option<Box<str>>,
    occurrence: Option<u64>,
    record: OwnedMessage,
    bytes: usize,
}

/// Key and value bytes of a record (what the in-flight byte cap counts:
/// reading the header sizes would cost a header parse per record).
pub(super) fn kv_bytes<M: Record>(msg: &M) -> usize {
    msg.key_bytes().map_or(0, <[u8]>::len) + msg.value_bytes().map_or(0, <[u8]>::len)
}

/// Key, value and header bytes of a record.
fn record_bytes<M: Record>(msg: &M) -> usize {
    msg.key_bytes().map_or(0, <[u8]>::len)
        + msg.value_bytes().map_or(0, <[u8]>::len)
        + msg.header_view().byte_size()
}

impl ConsumerLoop {
    /// A record fresh from `poll`.
    pub(super) fn on_record(&mut self, msg: &BorrowedMessage<'_>, now: i64) {
        let p = msg.partition();
        let Some(part) = self.partitions.note_record(p, msg.offset(), now) else {
            tracing::debug!(
                topic = msg.topic(),
                partition = p,
                "record from an unassigned partition"
            );
            return;
        };
        let id = part.id;
        match self.stage {
            Stage::Ingress(_) => self.on_ingress_record(msg, id, now),
            Stage::Tier(tier) => self.on_tier_record(msg, tier, now),
            Stage::Retired(..) => self.on_retired_record(msg, id, now),
        }
    }

    pub(super) fn reject<M: Record>(
        &mut self,
        msg: &M,
        error: &EnvelopeError,
        ticket: Ticket,
        from: Source,
    ) {
        if from == Source::Ingress {
            self.shared.metrics.ingress.ingested(Outcome::DeadLettered);
        }
        tracing::debug!(%error, "dead-lettering record");
        self.forwarder.write_dead_letter(msg, error, ticket);
    }

    /// Sends a parsed record on: to its target now, into the timer, or into a tier.
    pub(super) fn route<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        env: &Envelope<'_>,
        ticket: Ticket,
        from: Source,
        now: i64,
    ) -> Outcome {
        if self.is_cancelled(env) {
            self.shared.metrics.cancellations.cancelled();
            self.ledger.acknowledge(ticket);
            return Outcome::Cancelled;
        }
        match self.table.route(now, env.due_ms) {
            Route::Deliver => {
                self.fire_timers(now);
                self.deliver_due(msg, env, from, ticket, now);
                Outcome::Delivered
            }
            Route::Timer => {
                self.hold_in_timer(msg, env, from, ticket);
                Outcome::Timer
            }
            Route::Tier { tier, bucket, .. } => {
                let slot = self.table.slot(tier, bucket);
                let lane = key_lane(msg.key(), self.lanes, msg.offset() as u64);
                let partition = self.table.partition(tier, slot, lane);
                self.forwarder
                    .write_tier(msg, env, (tier, bucket, partition), ticket, now);
                if self.guarantee.is_exactly_once() {
                    self.urge_if_released_soon(self.table.release_time(tier, bucket), now);
                }
                Outcome::Tier
            }
        }
    }

    /// Keeps `msg` in the due-soon timer until `env.due_ms`.
    pub(super) fn hold_in_timer<M: Record + ToOwnedMessage>(
        &mut self,
        msg: &M,
        env: &Envelope<'_>,
        from: Source,
        ticket: Ticket,
    ) {
        self.opened(msg.source_partition());
        let bytes = record_bytes(msg);
        self.timer_bytes += bytes;
        self.timer.schedule(
            env.due_ms,
            Box::new(Scheduled {
                ticket,
                from,
                target: env.target.to_owned(),
                original_timestamp_ms: env.original_timestamp_ms,
                id: env.id.map(Box::from),
                occurrence: env.occurrence,
                record: msg.to_owned_message(),
                bytes,
            }),
        );
    }

    /// Delivers every timer record that is due.
    pub(super) fn fire_timers(&mut self, now: i64) {
        while let Some((due_ms, s)) = self.timer.pop_due(now) {
            self.timer_bytes -= s.bytes;
            let env = Envelope {
                due_ms,
                target: &s.target,
                original_timestamp_ms: s.original_timestamp_ms,
                bucket: None,
                id: s.id.as_deref(),
                occurrence: s.occurrence,
            };
            if self.is_cancelled(&env) {
                self.shared.metrics.cancellations.cancelled();
                self.ledger.acknowledge(s.ticket);
            } else {
                self.deliver_due(&s.record, &env, s.from, s.ticket, now);
            }
            self.closed(s.record.partition());
        }
    }

    /// Whether a cancellation names this record (checked before every
    /// forward and tier write; records without an id skip the look-up).
    pub(super) fn is_cancelled(&self, env: &Envelope<'_>) -> bool {
        let Some(id) = env.id else {
            return false;
        };
        let cancelled =
            self.shared
                .cancellations
                .cancels(id, env.target, env.original_timestamp_ms);
        if cancelled {
            tracing::debug!(
                id,
                target = env.target,
                due = env.due_ms,
                "record cancelled"
            );
        }
        cancelled
    }

    /// Failed produces: retries, dead letters, blocked partitions; and
    /// records waiting for room in librdkafka's queue.
    pub(super) fn handle_failures(&mut self, now: i64) {
        if self.guarantee.is_exactly_once() {
            // Exactly-once: a failed write fails its transaction.
            if self.forwarder.has_failures() {
                self.abort_transaction("a write failed");
            }
            if self.forwarder.queue_full() {
                self.forwarder.drain_overflow();
            }
            return;
        }
        let failed = self.forwarder.take_failures();
        if !failed.is_empty() {
            if let Stage::Ingress(ingress) = &mut self.stage {
                ingress.forget_targets(failed.iter().map(|f| f.record.topic.as_str()));
            }
            let book = self.ledger.book_unacked();
            let live = |a| book.is_live(a);
            self.failures
                .handle(&mut self.forwarder, failed, now, live, &self.shared.metrics);
        }
        for (record, inflight) in self.failures.take_due_tier_writes(now) {
            self.retry_tier_write(record, inflight, now);
        }
        self.failures.resend_due(&mut self.forwarder, now);
        if self.forwarder.queue_full() {
            self.forwarder.drain_overflow();
        }
    }

    /// Applies the rebalance events queued during `poll`.
    pub(super) fn handle_rebalances(&mut self) {
        let events = self.consumer.context().take_events();
        let now = crate::model::clock::now_ms();
        for event in events {
            match event {
                RebalanceEvent::Assigned(list) => {
                    self.partitions.assign(&list, now);
                    tracing::info!(
                        topic = self.topic,
                        assigned = self.partitions.len(),
                        "partitions assigned"
                    );
                    self.loop_health().reconciled.store(true, Ordering::Relaxed);
                }
                RebalanceEvent::Revoked(list) => {
                    self.partitions.revoke(&list);
                    if let Some(order) = self.guarantee.order_mut() {
                        for &p in &list {
                            order.forget(p);
                        }
                    }
                    let book = self.ledger.book_unacked();
                    let live = |a| book.is_live(a);
                    let mut freed = 0;
                    self.timer.retain(|s| {
                        let keep = live(s.ticket.assignment());
                        if !keep {
                            freed += s.bytes;
                        }
                        keep
                    });
                    if let Stage::Ingress(ingress) = &mut self.stage {
                        ingress.parked.retain(|p| live(p.ticket.assignment()));
                    }
                    self.failures.drop_revoked(live);
                    drop(book);
                    self.timer_bytes -= freed;
                    tracing::info!(
                        topic = self.topic,
                        assigned = self.partitions.len(),
                        "partitions revoked"
                    );
                }
            }
        }
        if self.consumer.context().take_rewind() {
            self.rewind("the transaction of a rebalance was aborted");
        }
    }
}

/// An owned copy of a record (for the timer and the parked queue), and
/// what the timer needs of the record it came from.
pub trait ToOwnedMessage {
    fn to_owned_message(&self) -> OwnedMessage;
    /// The partition the record was read from.
    fn source_partition(&self) -> i32;
    /// The key-less record's lane seed (its offset).
    fn lane_seed(&self) -> u64;
}

impl ToOwnedMessage for BorrowedMessage<'_> {
    fn to_owned_message(&self) -> OwnedMessage {
        self.detach()
    }
    fn source_partition(&self) -> i32 {
        self.partition()
    }
    fn lane_seed(&self) -> u64 {
        self.offset() as u64
    }
}

impl ToOwnedMessage for OwnedMessage {
    fn to_owned_message(&self) -> OwnedMessage {
        self.clone()
    }
    fn source_partition(&self) -> i32 {
        self.partition()
    }
    fn lane_seed(&self) -> u64 {
        self.offset() as u64
    }
}

/// A failed tier write routed again ([`ConsumerLoop::retry_tier_write`]):
/// only a series' record that is due gets here (its next occurrence may
/// wait in the timer). Its source partition is unknown, so it is -1: the
/// timer uses it only for exactly-once mode's write order, where a failed
/// write aborts the transaction instead of being retried.
impl ToOwnedMessage for crate::delivery::forwarder::OwnedRecord {
    fn to_owned_message(&self) -> OwnedMessage {
        use crate::kafka::native::RecordHeaders;
        use rdkafka::message::{Header, OwnedHeaders};
        let view = self.header_view();
        let mut headers = OwnedHeaders::new_with_capacity(view.iter().count());
        for (key, value) in view.iter() {
            headers = headers.insert(Header {
                key: &String::from_utf8_lossy(key),
                value,
            });
        }
        OwnedMessage::new(
            self.value.clone(),
            self.key.clone(),
            self.topic.clone(),
            rdkafka::Timestamp::CreateTime(self.timestamp_ms),
            -1,
            0,
            Some(headers),
        )
    }
    fn source_partition(&self) -> i32 {
        -1
    }
    fn lane_seed(&self) -> u64 {
        0
    }
}
