//! The retired stage: a tier topic of an earlier wheel layout (other ticks,
//! another prefix family member; see [`crate::kafka::layout::retired_tiers`]).
//! Nothing routes to it any more, but it may hold records written under
//! the old layout. Its loop reads it in the consumer group its tier had, so
//! it goes on from the offsets committed then, and re-routes every record at
//! once through the current wheel by its due time: delivered when due, else
//! into the due-soon timer or a current tier. Nothing is held here, so a
//! partition's slot under the old layout does not matter, and nothing is
//! delivered early: routing compares the due time with now, as for every
//! record. The source offset is committed once the new write is
//! acknowledged, like any tier record's.

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use super::records::{kv_bytes, ToOwnedMessage};
use super::ConsumerLoop;
use crate::delivery::forwarder::Record;
use crate::delivery::ledger::{Assignment, Ticket};
use crate::model::envelope;
use crate::ops::metrics::Source;

impl ConsumerLoop {
    /// A record of a retired tier fresh from `poll`, of the partition with
    /// assignment `id`: taken into the ledger and re-routed (exactly-once:
    /// when its partition's turn comes).
    pub(super) fn on_retired_record(
        &mut self,
        msg: &BorrowedMessage<'_>,
        id: Assignment,
        now: i64,
    ) {
        if self.must_wait(msg.partition(), || msg.detach()) {
            return;
        }
        let taken = self
            .ledger
            .book_unacked()
            .take_sized(id, msg.offset(), kv_bytes(msg));
        if let Some(ticket) = taken {
            self.retired_record(msg, ticket, now);
        }
    }

    /// Re-routes a retired tier's record by its due time and target (its
    /// old bucket is ignored); a record whose service headers do not parse
    /// is dead-lettered with its reason, as in any tier.
    pub(super) fn retired_record<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        ticket: Ticket,
        now: i64,
    ) {
        if self.write_poisoned(msg, ticket, Source::Retired, now) {
            return;
        }
        let view = msg.header_view();
        let policy = self.policy.clone();
        match envelope::parse_tier_headers(view.iter(), &policy) {
            Ok(env) => {
                self.route(msg, &env, ticket, Source::Retired, now);
            }
            Err(error) => self.reject(msg, &error, ticket, Source::Retired),
        }
    }
}
