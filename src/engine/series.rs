//! The loop's side of recurring schedules ([`crate::model::series`]): a
//! series' record that comes due delivers its occurrence and writes the
//! record of the next occurrence into the wheel. Both writes come from one
//! source record, [held](crate::delivery::ledger::Book::hold) in the ledger
//! until both are acknowledged: a crash between them re-reads the record
//! and may deliver the occurrence twice, never lose the series. In
//! exactly-once mode both writes and the offset are in one transaction.

use super::records::ToOwnedMessage;
use super::ConsumerLoop;
use crate::delivery::forwarder::Record;
use crate::delivery::ledger::Ticket;
use crate::model::envelope::{Envelope, EnvelopeError};
use crate::model::series::{RawSeries, SeriesError, OCCURRENCE};
use crate::ops::metrics::Source;
use crate::wheel::{key_lane, Route};

impl ConsumerLoop {
    /// Delivers a record that is due: a plain record to its target, a
    /// series' record by its [plan](crate::model::series::Series::plan).
    pub(super) fn deliver_due<M: Record + ToOwnedMessage>(
        &mut self,
        msg: &M,
        env: &Envelope<'_>,
        from: Source,
        ticket: Ticket,
        now: i64,
    ) {
        let Some(number) = env.occurrence else {
            return self.forwarder.deliver(msg, env, from, ticket, now);
        };
        let view = msg.header_view();
        let series = match RawSeries::of(view.iter()).and_then(|raw| raw.parse()) {
            Ok(Some(series)) => series,
            Ok(None) => {
                let error = EnvelopeError::CorruptTierRecord(OCCURRENCE);
                return self.reject(msg, &error, ticket, from);
            }
            Err(error) => return self.reject(msg, &error.into(), ticket, from),
        };
        let plan = series.plan(env.due_ms, number, now);
        tracing::debug!(
            id = env.id,
            due = env.due_ms,
            number,
            ?plan,
            "series occurrence"
        );
        if let Some((next_ms, next_number)) = plan.next {
            if !self.ledger.book_unacked().hold(ticket) {
                // Revoked: the partition's new owner reads the record again.
                return;
            }
            let next = Envelope {
                due_ms: next_ms,
                bucket: None,
                occurrence: Some(next_number),
                ..env.clone()
            };
            if next_ms - now > self.policy.max_delay_ms {
                let beyond = crate::model::clock::rfc3339_ms(next_ms);
                let error = SeriesError::NextBeyondMaxDelay(beyond).into();
                self.forwarder.write_dead_letter(msg, &error, ticket);
            } else {
                self.write_next_occurrence(msg, &next, from, ticket, now);
            }
        }
        match plan.deliver {
            Some(at) => {
                let occurrence = Envelope {
                    due_ms: at,
                    occurrence: Some(number),
                    ..env.clone()
                };
                self.forwarder.deliver(msg, &occurrence, from, ticket, now);
            }
            None => self.ledger.acknowledge(ticket),
        }
    }

    /// Writes the series' record for its next occurrence `next` into its
    /// tier; one due soon (or already, catching up) waits in the timer.
    fn write_next_occurrence<M: Record + ToOwnedMessage>(
        &mut self,
        msg: &M,
        next: &Envelope<'_>,
        from: Source,
        ticket: Ticket,
        now: i64,
    ) {
        match self.table.route(now, next.due_ms) {
            Route::Tier { tier, bucket, .. } => {
                let slot = self.table.slot(tier, bucket);
                let lane = key_lane(msg.key_bytes(), self.lanes, msg.lane_seed());
                let partition = self.table.partition(tier, slot, lane);
                self.forwarder
                    .write_tier(msg, next, (tier, bucket, partition), ticket, now);
            }
            Route::Deliver | Route::Timer => self.hold_in_timer(msg, next, from, ticket),
        }
    }
}
