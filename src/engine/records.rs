//! What the loop does with each record: parse, route, hold, park, deliver;
//! and with what comes back: timers, woken partitions, failed produces,
//! target answers, rebalances.

use std::sync::atomic::Ordering;

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::Message;

use super::rebalance::RebalanceEvent;
use super::{ConsumerLoop, Role};
use crate::delivery::exactly_once::order::Poison;
use crate::delivery::forwarder::Record;
use crate::delivery::ledger::Ticket;
use crate::kafka::native::RecordHeaders;
use crate::kafka::targets::Known;
use crate::model::envelope::{self, Envelope, EnvelopeError, TierSlot};
use crate::ops::metrics::{Outcome, Source};
use crate::wheel::{key_lane, Route};

/// A record waiting in the due-soon timer.
pub struct Scheduled {
    ticket: Ticket,
    from: Source,
    target: String,
    original_timestamp_ms: i64,
    id: Option<Box<str>>,
    record: OwnedMessage,
    bytes: usize,
}

/// An ingress record waiting for the answer to "does its target exist?".
pub struct Parked {
    ticket: Ticket,
    target: String,
    record: OwnedMessage,
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
        match self.role {
            Role::Ingress => {
                if let Some(why) = crate::kafka::native::unreadable_headers(msg) {
                    // Read as "no headers" it would be delivered at once:
                    // dead-letter it (exactly-once: when its turn comes).
                    let error = EnvelopeError::UnreadableHeaders(why);
                    if let Some(order) = self.order.as_mut() {
                        if order.blocks(p) {
                            order.poison_with(p, msg.offset(), Poison::DeadLetter(error));
                            order.wait(p, msg.detach());
                            return;
                        }
                    }
                    let ticket =
                        self.ledger
                            .book_unacked()
                            .take_sized(id, msg.offset(), kv_bytes(msg));
                    if let Some(ticket) = ticket {
                        self.reject(msg, &error, ticket, Source::Ingress);
                    }
                    return;
                }
                if self.must_wait(p, || msg.detach()) {
                    return;
                }
                let taken = self
                    .ledger
                    .book_unacked()
                    .take_sized(id, msg.offset(), kv_bytes(msg));
                let Some(ticket) = taken else {
                    return;
                };
                self.ingest(msg, ticket, now);
            }
            Role::Tier(tier) => {
                self.partitions.wake_sleeper(p, now);
                if self.partitions.get(p).is_some_and(|part| part.is_holding()) {
                    self.partitions.defer(p, msg.detach());
                    return;
                }
                if self.must_wait(p, || msg.detach()) {
                    return;
                }
                if let Some((release, due)) = self.tier_record(msg, tier, now) {
                    self.partitions.hold(p, msg.detach(), release, due, now);
                }
            }
        }
    }

    /// An ingress record: dead letter, target, timer or tier; parked while
    /// its target's existence is being looked up.
    pub(super) fn ingest<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        ticket: Ticket,
        now: i64,
    ) {
        if self.write_poisoned(msg, ticket, Source::Ingress, now) {
            return;
        }
        let view = msg.header_view();
        let policy = self.policy.clone();
        let parsed = envelope::parse_ingress_trusting(
            view.iter(),
            msg.timestamp_ms(),
            now,
            &policy,
            &self.trusted.0,
        );
        let env = match parsed {
            Ok(env) => env,
            Err(error) => return self.reject(msg, &error, ticket, Source::Ingress),
        };
        if env.target != self.trusted.0 {
            let known = match &mut self.targets {
                Some(targets) => targets.check(env.target, now),
                None => Known::Exists,
            };
            match known {
                Known::Exists => self.trusted = (env.target.to_owned(), now),
                Known::Missing => {
                    let error = EnvelopeError::UnknownTarget(env.target.to_owned());
                    return self.reject(msg, &error, ticket, Source::Ingress);
                }
                Known::Pending => {
                    let target = env.target.to_owned();
                    self.opened(msg.partition());
                    return self.parked.push_back(Parked {
                        ticket,
                        target,
                        record: msg.to_owned_message(),
                    });
                }
            }
        }
        let outcome = self.route(msg, &env, ticket, Source::Ingress, now);
        self.shared.metrics.ingested(outcome);
    }

    pub(super) fn reject<M: Record>(
        &mut self,
        msg: &M,
        error: &EnvelopeError,
        ticket: Ticket,
        from: Source,
    ) {
        if from == Source::Ingress {
            self.shared.metrics.ingested(Outcome::DeadLettered);
        }
        tracing::debug!(%error, "dead-lettering record");
        self.forwarder.write_dead_letter(msg, error, ticket);
    }

    /// A tier record, read fresh or taken from the held queue. Returns its
    /// (release, due) time when it must be held; otherwise it is routed (or
    /// dead-lettered when its headers are not the service's).
    pub(super) fn tier_record<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        tier: usize,
        now: i64,
    ) -> Option<(i64, i64)> {
        let p = msg.partition();
        let t = &self.table.tiers()[tier];
        let place = TierSlot {
            tick_ms: t.tick_ms,
            slots: t.slots,
            slot: self.table.slot_of_partition(tier, p),
        };
        let view = msg.header_view();
        let parsed = envelope::parse_tier(view.iter(), place, now, &self.policy);
        let env = match parsed {
            Ok(env) => {
                let release = self
                    .table
                    .release_time(tier, env.bucket.unwrap_or_default());
                if release > now {
                    if self.may_hold(tier, place.slot, &env, release, now) {
                        return Some((release, env.due_ms));
                    }
                    // Routing would not put it here now. Either it is close
                    // enough to move down already (read early: moved now
                    // rather than at its release), or it is a forged record
                    // or one written for a later turn than its slot holds
                    // next: held, it would make the records behind it wait a
                    // whole turn. Moved to where routing puts it, it never
                    // comes straight back.
                    if self.moves_on_normally(tier, &env, now) {
                        tracing::debug!(
                            partition = p,
                            offset = msg.offset(),
                            "tier record read early moves down now"
                        );
                    } else {
                        tracing::warn!(
                            topic = self.topic,
                            partition = p,
                            offset = msg.offset(),
                            release,
                            due = env.due_ms,
                            "tier record of a later turn than its slot holds next: re-routed instead of held"
                        );
                        self.shared.metrics.later_turn(tier);
                    }
                    return self.route_tier_record(msg, tier, Ok(env), now);
                }
                if self
                    .partitions
                    .get(p)
                    .is_some_and(|part| part.drained_since(release))
                {
                    tracing::debug!(
                        topic = self.topic,
                        partition = p,
                        offset = msg.offset(),
                        release,
                        written = msg.timestamp_ms(),
                        "late append"
                    );
                    self.shared.metrics.late_append(tier);
                }
                Ok(env)
            }
            Err(e) => Err(e),
        };
        self.route_tier_record(msg, tier, env, now)
    }

    /// Routes (or dead-letters) a tier record that is not held.
    fn route_tier_record<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        tier: usize,
        env: Result<Envelope<'_>, EnvelopeError>,
        now: i64,
    ) -> Option<(i64, i64)> {
        let p = msg.partition();
        let id = self.partitions.get(p)?.id;
        let ticket = self
            .ledger
            .book_unacked()
            .take_sized(id, msg.offset(), kv_bytes(msg))?;
        if self.write_poisoned(msg, ticket, Source::Tier(tier), now) {
            return None;
        }
        match env {
            Ok(env) => {
                self.route(msg, &env, ticket, Source::Tier(tier), now);
            }
            Err(error) => self.reject(msg, &error, ticket, Source::Tier(tier)),
        }
        None
    }

    /// Sends a parsed record on: to its target now, into the timer, or into a tier.
    fn route<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        env: &Envelope<'_>,
        ticket: Ticket,
        from: Source,
        now: i64,
    ) -> Outcome {
        if self.is_cancelled(env) {
            self.shared.metrics.cancelled();
            self.ledger.acknowledge(ticket);
            return Outcome::Cancelled;
        }
        match self.table.route(now, env.due_ms) {
            Route::Deliver => {
                self.fire_timers(now);
                self.forwarder.deliver(msg, env, from, ticket, now);
                Outcome::Delivered
            }
            Route::Timer => {
                self.opened(msg.partition());
                let bytes = record_bytes(msg);
                self.timer_bytes += bytes;
                self.timer.schedule(
                    env.due_ms,
                    Scheduled {
                        ticket,
                        from,
                        target: env.target.to_owned(),
                        original_timestamp_ms: env.original_timestamp_ms,
                        id: env.id.map(Box::from),
                        record: msg.to_owned_message(),
                        bytes,
                    },
                );
                Outcome::Timer
            }
            Route::Tier { tier, bucket, .. } => {
                let slot = self.table.slot(tier, bucket);
                let lane = key_lane(msg.key(), self.lanes, msg.offset() as u64);
                let partition = self.table.partition(tier, slot, lane);
                self.forwarder
                    .write_tier(msg, env, (tier, bucket, partition), ticket, now);
                if self.order.is_some() {
                    self.urge_if_released_soon(self.table.release_time(tier, bucket), now);
                }
                Outcome::Tier
            }
        }
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
            };
            if self.is_cancelled(&env) {
                self.shared.metrics.cancelled();
                self.ledger.acknowledge(s.ticket);
            } else {
                self.forwarder
                    .deliver(&s.record, &env, s.from, s.ticket, now);
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

    /// Ends holds and sleeps that are due: handles the held records in
    /// order up to the first one of a later turn, which is held again.
    pub(super) fn wake_partitions(&mut self, now: i64) {
        let Role::Tier(tier) = self.role else {
            return;
        };
        for p in self.partitions.due(now) {
            self.partitions.wake(p);
            while let Some(head) = self.partitions.pop_held(p) {
                if self.must_wait(p, || head.clone()) {
                    continue;
                }
                if let Some((release, due)) = self.tier_record(&head, tier, now) {
                    self.partitions.hold(p, head, release, due, now);
                    break;
                }
            }
            self.partitions.settle(p, now);
        }
    }

    /// Failed produces: retries, dead letters, blocked partitions; and
    /// records waiting for room in librdkafka's queue.
    pub(super) fn handle_failures(&mut self, now: i64) {
        if self.order.is_some() {
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
            for f in &failed {
                if let Some(targets) = &mut self.targets {
                    targets.forget(&f.record.topic);
                }
            }
            self.trusted.0.clear();
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

    /// Parked ingress records whose target is now known.
    pub(super) fn resolve_parked(&mut self, now: i64) {
        let Some(targets) = &mut self.targets else {
            return;
        };
        if !targets.receive(now) || self.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        for item in parked {
            let known = match &mut self.targets {
                Some(t) => t.check(&item.target, now),
                None => Known::Exists,
            };
            if known == Known::Pending {
                self.parked.push_back(item);
                continue;
            }
            // Parsed again (it parsed before): routing depends on `now`.
            self.trusted.0.clear();
            self.ingest_known(&item.record, item.ticket, known, now);
            self.closed(item.record.partition());
        }
    }

    fn ingest_known(&mut self, msg: &OwnedMessage, ticket: Ticket, known: Known, now: i64) {
        let view = msg.header_view();
        let policy = self.policy.clone();
        match envelope::parse_ingress(view.iter(), msg.timestamp_ms(), now, &policy) {
            Err(error) => self.reject(msg, &error, ticket, Source::Ingress),
            Ok(env) if known == Known::Missing => {
                let error = EnvelopeError::UnknownTarget(env.target.to_owned());
                self.reject(msg, &error, ticket, Source::Ingress);
            }
            Ok(env) => {
                let outcome = self.route(msg, &env, ticket, Source::Ingress, now);
                self.shared.metrics.ingested(outcome);
            }
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
                    if let Some(order) = self.order.as_mut() {
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
                    self.parked.retain(|p| live(p.ticket.assignment()));
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

/// An owned copy of a record (for the timer and the parked queue).
pub trait ToOwnedMessage {
    fn to_owned_message(&self) -> OwnedMessage;
}

impl ToOwnedMessage for BorrowedMessage<'_> {
    fn to_owned_message(&self) -> OwnedMessage {
        self.detach()
    }
}

impl ToOwnedMessage for OwnedMessage {
    fn to_owned_message(&self) -> OwnedMessage {
        self.clone()
    }
}
