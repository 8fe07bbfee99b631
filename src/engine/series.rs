//! The loop's side of recurring schedules ([`crate::model::series`]): a
//! series' record that comes due delivers its occurrence and writes the
//! record of the next occurrence into the wheel. Both writes come from one
//! source record, [held](crate::delivery::ledger::Book::hold) in the ledger
//! until both are acknowledged: a crash between them re-reads the record
//! and may deliver the occurrence twice, never lose the series. In
//! exactly-once mode both writes and the offset are in one transaction.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use super::records::ToOwnedMessage;
use super::ConsumerLoop;
use crate::delivery::forwarder::Record;
use crate::delivery::ledger::Ticket;
use crate::model::envelope::{Envelope, EnvelopeError};
use crate::model::series::{RawSeries, SeriesError, OCCURRENCE};
use crate::ops::metrics::{SeriesOutcome, Source};
use crate::wheel::{key_lane, Route};

/// How long a handled occurrence is remembered (ms): twins travel the same
/// partitions and meet within a few hops (seconds).
const RECENT_TTL_MS: i64 = 120_000;
/// At most this many remembered occurrences (~40 bytes each); the oldest
/// are forgotten first.
const RECENT_MAX: usize = 1_000_000;

/// The occurrences of series this instance handled lately, over all its
/// loops (at-least-once mode).
///
/// A crash between an occurrence's writes and its offset commit makes the
/// next owner read the series' record again: it delivers the occurrence a
/// second time (at-least-once) and writes a second record of the next
/// occurrence — a twin. Twins are identical (same id, target, original
/// timestamp, due time and number), so they are routed to the same tier
/// partitions and end up read by one instance; the second to come due is
/// dropped here and counted (`kafka_delay_series_occurrences_total{outcome="twin"}`),
/// so a series never runs twice. Exactly-once mode needs none of this: an
/// aborted transaction leaves no twin.
#[derive(Default)]
pub(crate) struct RecentOccurrences {
    inner: Mutex<Recent>,
}

/// The remembered occurrence keys, and (handled at, key) oldest first.
type Recent = (HashSet<u64>, VecDeque<(i64, u64)>);

impl RecentOccurrences {
    /// Remembers the occurrence `key` handled at `now`; false when it was
    /// handled already within [`RECENT_TTL_MS`].
    fn first_time(&self, key: u64, now: i64) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, order) = &mut *guard;
        while let Some(&(at, old)) = order.front() {
            if at + RECENT_TTL_MS >= now && order.len() < RECENT_MAX {
                break;
            }
            seen.remove(&old);
            order.pop_front();
        }
        if !seen.insert(key) {
            return false;
        }
        order.push_back((now, key));
        true
    }
}

/// The identity of occurrence `number` of the series record `env`.
fn occurrence_key(env: &Envelope<'_>, number: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        env.id,
        env.target,
        env.original_timestamp_ms,
        env.due_ms,
        number,
    )
        .hash(&mut h);
    h.finish()
}

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
        let metrics = self.shared.metrics.clone();
        if !self.guarantee.is_exactly_once()
            && !self
                .shared
                .recent_occurrences
                .first_time(occurrence_key(env, number), now)
        {
            tracing::info!(
                id = env.id,
                due = env.due_ms,
                number,
                "a twin of a series occurrence handled already (re-read after a crash): dropped"
            );
            metrics.series.counted(SeriesOutcome::Twin);
            return self.ledger.acknowledge(ticket);
        }
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
        if plan.next.is_none() {
            metrics.series.counted(SeriesOutcome::Ended);
        }
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
                metrics.series.counted(SeriesOutcome::Delivered);
                let occurrence = Envelope {
                    due_ms: at,
                    occurrence: Some(number),
                    ..env.clone()
                };
                self.forwarder.deliver(msg, &occurrence, from, ticket, now);
            }
            None => {
                metrics.series.counted(SeriesOutcome::Skipped);
                self.ledger.acknowledge(ticket);
            }
        }
    }

    /// Writes the series' record for its next occurrence `next` into a
    /// tier, so that the source offset can be committed once it is
    /// acknowledged: where routing puts it, or — due within the due-soon
    /// window, as a series of seconds always is — into the lowest tier's
    /// bucket of its due time while that bucket is not yet released. Only
    /// an occurrence already due (a series catching up) waits in the
    /// timer, holding the source offset until the series is back on time.
    fn write_next_occurrence<M: Record + ToOwnedMessage>(
        &mut self,
        msg: &M,
        next: &Envelope<'_>,
        from: Source,
        ticket: Ticket,
        now: i64,
    ) {
        let (tier, bucket) = match self.table.route(now, next.due_ms) {
            Route::Tier { tier, bucket, .. } => (tier, bucket),
            Route::Deliver | Route::Timer => {
                let bucket = next.due_ms.div_euclid(self.table.tiers()[0].tick_ms);
                if self.table.release_time(0, bucket) <= now {
                    return self.hold_in_timer(msg, next, from, ticket);
                }
                (0, bucket)
            }
        };
        let slot = self.table.slot(tier, bucket);
        let lane = key_lane(msg.key_bytes(), self.lanes, msg.lane_seed());
        let partition = self.table.partition(tier, slot, lane);
        self.forwarder
            .write_tier(msg, next, (tier, bucket, partition), ticket, now);
    }
}
