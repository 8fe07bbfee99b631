//! Routing a tier record again instead of holding or re-sending it: a
//! record read before its release is held only where routing would put it
//! now, and a failed tier write is routed again by its due time when its
//! retry comes. Neither can then sit at a partition's head for a turn
//! (docs/guarantees.md).

use super::ConsumerLoop;
use crate::delivery::forwarder::{Inflight, OwnedRecord};
use crate::kafka::native::RecordHeaders;
use crate::model::envelope::{self, Envelope};
use crate::wheel::{key_lane, Route};

impl ConsumerLoop {
    /// Whether a tier record not yet released may be held as its
    /// partition's head: routing would put it in this very bucket now, or
    /// it is a roll-over (beyond the top tier's horizon) waiting for a turn
    /// of its slot no later than the next. Anything else is moved on.
    pub(super) fn may_hold(
        &self,
        tier: usize,
        slot: i64,
        env: &Envelope<'_>,
        release: i64,
        now: i64,
    ) -> bool {
        match self.table.route(now, env.due_ms) {
            Route::Tier {
                tier: t, bucket, ..
            } if t == tier && Some(bucket) == env.bucket => true,
            Route::Tier {
                tier: t,
                rollover: true,
                ..
            } if t == tier => release <= self.table.next_turn_release(tier, slot, now),
            _ => false,
        }
    }

    /// Whether routing now moves a record of `tier` on the normal way: to a
    /// lower tier, the timer or its target, or — a roll-over — to a later
    /// bucket of its own tier. (Not normal: a higher tier, or an earlier
    /// bucket than the one it was written to.)
    pub(super) fn moves_on_normally(&self, tier: usize, env: &Envelope<'_>, now: i64) -> bool {
        match self.table.route(now, env.due_ms) {
            Route::Tier {
                tier: t, bucket, ..
            } => t < tier || (t == tier && Some(bucket) > env.bucket),
            Route::Timer | Route::Deliver => true,
        }
    }

    /// A failed tier write whose back-off ended: routed again by its due
    /// time — to the tier and bucket routing picks now, to its target when
    /// due (kept until then when it is due within the due-soon window), or
    /// dropped when a cancellation names it.
    pub(super) fn retry_tier_write(&mut self, record: OwnedRecord, inflight: Inflight, now: i64) {
        let view = record.header_view();
        let Ok(env) = envelope::parse_tier_headers(view.iter(), &self.policy) else {
            // Not one of ours after all: as it was.
            return self.forwarder.resend(record, inflight);
        };
        if self.is_cancelled(&env) {
            self.shared.metrics.cancellations.cancelled();
            self.ledger.acknowledge(inflight.ticket);
            return;
        }
        let from = self.role().source();
        match self.table.route(now, env.due_ms) {
            Route::Deliver => self.deliver_due(&record, &env, from, inflight.ticket, now),
            Route::Timer => {
                let due = env.due_ms;
                self.failures.wait_until(record, inflight, due);
            }
            Route::Tier { tier, bucket, .. } => {
                let slot = self.table.slot(tier, bucket);
                let lane = key_lane(record.key.as_deref(), self.lanes, 0);
                let partition = self.table.partition(tier, slot, lane);
                self.forwarder.write_tier(
                    &record,
                    &env,
                    (tier, bucket, partition),
                    inflight.ticket,
                    now,
                );
            }
        }
    }
}
