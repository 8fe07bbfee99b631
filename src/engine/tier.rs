//! The tier stage: records written into a tier by the service. A tier
//! partition is held until its head record's release time, then drained:
//! each record is re-routed down the wheel (a finer tier, the due-soon
//! timer, its target) until the head belongs to a later turn. A drained
//! partition sleeps until its slot's next turn ([`ConsumerLoop::sleep_drained`]).

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use super::ingress::Stage;
use super::records::{kv_bytes, ToOwnedMessage};
use super::ConsumerLoop;
use crate::delivery::forwarder::Record;
use crate::model::envelope::{self, Envelope, EnvelopeError, TierSlot};
use crate::ops::metrics::Source;

impl ConsumerLoop {
    /// A tier record fresh from `poll`: deferred behind a held head, held
    /// until its release, or routed on.
    pub(super) fn on_tier_record(&mut self, msg: &BorrowedMessage<'_>, tier: usize, now: i64) {
        let p = msg.partition();
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
                        self.shared.metrics.tier.later_turn(tier);
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
                    self.shared.metrics.tier.late_append(tier);
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

    /// Ends holds and sleeps that are due: handles the held records in
    /// order up to the first one of a later turn, which is held again.
    pub(super) fn wake_partitions(&mut self, now: i64) {
        let Stage::Tier(tier) = self.stage else {
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

    /// Puts drained partitions of `tier` to sleep until their slot's next
    /// turn (or until the watcher sees a record appended).
    pub(super) fn sleep_drained(&mut self, tier: usize, now: i64) {
        let table = &self.table;
        self.partitions.sleep_drained(now, self.grace_ms, |p| {
            let slot = table.slot_of_partition(tier, p);
            let next = table.next_turn_release(tier, slot, now);
            let t = &table.tiers()[tier];
            // The turn released last: its bucket starts `lead` after
            // its release and lasts one tick.
            let bucket_end = next - t.slots * t.tick_ms + t.lead_ms + t.tick_ms;
            (next, bucket_end)
        });
    }

    /// The tier's gauges: paused and stalled partitions, the oldest held
    /// due time, pending records.
    pub(super) fn refresh_tier_gauges(&self, tier: usize) {
        let metrics = &self.shared.metrics;
        let (paused, stalled) = self.partitions.counts();
        metrics.tier.set_partitions(tier, paused, stalled);
        metrics
            .tier
            .set_oldest_due(tier, self.partitions.oldest_held_due());
        metrics.tier.set_pending(tier, self.partitions.pending());
    }
}
