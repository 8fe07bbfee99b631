//! Exactly-once mode: each source partition's records are written in
//! offset order.
//!
//! A transaction commits, for each source partition, one offset: every
//! record below it is written (in this or an earlier transaction), none at
//! or above it. That holds only if no record is written while an earlier
//! record of its partition still waits — in the due-soon timer or parked
//! for a target look-up. So while a partition has such an *open* record,
//! the records read after it wait here, in order, and are handled when the
//! last open one is written. The price is lateness: a record due before an
//! open record of its partition leaves with it, at most one tick of the
//! lowest tier (or the ingress timer's horizon) late. At-least-once mode
//! does not use this.
//!
//! Writes that failed are remembered by source offset ([`Poison`]): the
//! transaction is aborted, and when the record is read again it is
//! dead-lettered instead of failing the next transaction too.

use std::collections::{HashMap, VecDeque};

use rdkafka::message::OwnedMessage;

use crate::delivery::failures::{classify, Class};
use crate::delivery::forwarder::{Failure, Kind, OwnedRecord};
use crate::model::envelope::EnvelopeError;

/// What to write instead of a record whose write failed.
pub enum Poison {
    /// A dead letter with this reason.
    DeadLetter(EnvelopeError),
    /// Its dead letter (this record, with reason index) was too large:
    /// write a cut-down copy.
    Truncated(OwnedRecord, u8),
    /// Its dead letter failed for another reason: try it again (the
    /// dead-letter topic may come back).
    Retry(EnvelopeError),
}

/// Per-partition write order (see the module documentation).
#[derive(Default)]
pub struct Order {
    /// Records of each partition taken and not yet written.
    open: HashMap<i32, usize>,
    /// Records read behind an open one, oldest first.
    waiting: HashMap<i32, VecDeque<OwnedMessage>>,
    /// Partitions whose last open record was written: drain their waiting
    /// records.
    ready: Vec<i32>,
    /// Failed writes by source (partition, offset).
    poisoned: HashMap<(i32, i64), Poison>,
}

impl Order {
    /// True when a record of `p` must wait.
    pub fn blocks(&self, p: i32) -> bool {
        self.open.get(&p).is_some_and(|&n| n > 0)
            || self.waiting.get(&p).is_some_and(|q| !q.is_empty())
    }

    /// True while `p` has an open record (its waiting records stay).
    pub fn is_open(&self, p: i32) -> bool {
        self.open.get(&p).is_some_and(|&n| n > 0)
    }

    /// A record of `p` went into the timer or was parked.
    pub fn open(&mut self, p: i32) {
        *self.open.entry(p).or_default() += 1;
    }

    /// An open record of `p` was written (or cancelled).
    pub fn close(&mut self, p: i32) {
        if let Some(n) = self.open.get_mut(&p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&p);
                if self.waiting.contains_key(&p) {
                    self.ready.push(p);
                }
            }
        }
    }

    /// Queues `msg` behind the open records of its partition.
    pub fn wait(&mut self, p: i32, msg: OwnedMessage) {
        self.waiting.entry(p).or_default().push_back(msg);
    }

    /// The next waiting record of `p`, while nothing of `p` is open.
    pub fn next_waiting(&mut self, p: i32) -> Option<OwnedMessage> {
        if self.is_open(p) {
            return None;
        }
        let queue = self.waiting.get_mut(&p)?;
        let msg = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&p);
        }
        msg
    }

    /// Partitions ready to drain.
    pub fn take_ready(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.ready)
    }

    /// Records waiting in `p`.
    pub fn waiting_len(&self, p: i32) -> usize {
        self.waiting.get(&p).map_or(0, VecDeque::len)
    }

    /// Forgets a revoked partition (its records are read again by the next
    /// owner).
    pub fn forget(&mut self, p: i32) {
        self.open.remove(&p);
        self.waiting.remove(&p);
        self.poisoned.retain(|&(q, _), _| q != p);
    }

    /// Forgets every open and waiting record (after an abort); failed
    /// writes are kept.
    pub fn reset(&mut self) {
        self.open.clear();
        self.waiting.clear();
        self.ready.clear();
    }

    /// Remembers that the write of source (`p`, `offset`) failed.
    pub fn poison(&mut self, p: i32, offset: i64, failure: Failure) {
        let error = failure.error.to_string();
        let class = classify(&failure.error);
        let poison = match failure.inflight.kind {
            Kind::DeadLetter if class == Class::TooLarge => {
                Poison::Truncated(failure.record, failure.inflight.reason)
            }
            Kind::DeadLetter | Kind::TruncatedDeadLetter => {
                Poison::Retry(EnvelopeError::DeliveryFailed(error))
            }
            Kind::Target | Kind::Tier if class == Class::TooLarge => {
                Poison::DeadLetter(EnvelopeError::TooLarge(error))
            }
            Kind::Target | Kind::Tier => Poison::DeadLetter(EnvelopeError::DeliveryFailed(error)),
        };
        self.poisoned.insert((p, offset), poison);
    }

    /// Writes `poison` instead of source (`p`, `offset`) when its turn
    /// comes (a record known bad before it is handled).
    pub fn poison_with(&mut self, p: i32, offset: i64, poison: Poison) {
        self.poisoned.insert((p, offset), poison);
    }

    /// True while a dead letter of partition `p` waits to be written again
    /// because the dead-letter topic refused it: the partition is blocked.
    pub fn retrying(&self, p: i32) -> bool {
        self.poisoned
            .iter()
            .any(|(&(q, _), poison)| q == p && matches!(poison, Poison::Retry(_)))
    }

    /// What to write instead of source (`p`, `offset`), if its write failed.
    pub fn take_poison(&mut self, p: i32, offset: i64) -> Option<Poison> {
        if self.poisoned.is_empty() {
            return None;
        }
        self.poisoned.remove(&(p, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Message;

    use crate::test_support::bare_record as msg;

    #[test]
    fn records_behind_an_open_one_wait_in_order_until_it_is_written() {
        let mut order = Order::default();
        assert!(!order.blocks(0));
        order.open(0);
        order.open(0);
        assert!(order.blocks(0) && !order.blocks(1));
        order.wait(0, msg(0, 5));
        order.wait(0, msg(0, 6));
        assert!(order.next_waiting(0).is_none(), "open: nothing leaves");
        order.close(0);
        assert!(order.take_ready().is_empty(), "one still open");
        order.close(0);
        assert_eq!(order.take_ready(), vec![0]);
        assert_eq!(order.next_waiting(0).map(|m| m.offset()), Some(5));
        // A drained record opened again: the rest keep waiting.
        order.open(0);
        assert!(order.next_waiting(0).is_none());
        assert!(order.blocks(0));
        order.close(0);
        assert_eq!(order.next_waiting(0).map(|m| m.offset()), Some(6));
        assert!(order.next_waiting(0).is_none());
        assert!(!order.blocks(0));
    }

    #[test]
    fn revoke_and_reset_forget_open_and_waiting_records() {
        let mut order = Order::default();
        order.open(1);
        order.wait(1, msg(1, 9));
        order.open(2);
        order.forget(1);
        assert!(!order.blocks(1) && order.blocks(2));
        order.reset();
        assert!(!order.blocks(2));
        assert_eq!(order.waiting_len(1), 0);
    }
}
