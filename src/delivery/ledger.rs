//! The in-flight ledger: which source records are taken and not yet
//! acknowledged, and the offsets that may be committed.
//!
//! A source offset may be committed only when every record at or below it has
//! been delivered and acknowledged by the broker (docs/architecture.md, "Invariants"). Records of one
//! partition are taken in offset order and acknowledged in any order; the
//! commit position is the first offset still pending, or one past the last
//! taken offset when nothing is pending — the contiguous acked prefix, as in
//! rust-rdkafka's `at_least_once` example.
//!
//! Every taken record gets a [`Ticket`]: a 64-bit word naming the assignment
//! (slot and generation) and the record's sequence number within it. The
//! ticket is the producer's delivery opaque, so a produce needs no heap
//! allocation (a `Box` freed on the producer's thread cost ~15 % of the CPU
//! per record, measured with `kafka-delay bench`).
//!
//! Over 500 lines: the per-partition offset book and the instance's book of
//! assignments are one data structure, kept together with their tests
//! (docs/architecture.md, "Files over 500 lines").

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Bits of the sequence number in a [`Ticket`]. Sequence numbers wrap; that
/// is harmless while fewer than 2^33 records of one partition are in flight.
const SEQ_BITS: u32 = 33;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// Bits of the generation: a slot reused by a later assignment has another
/// generation, so late acknowledgements of the old one are ignored.
const GEN_BITS: u32 = 8;
/// Bits of the slot: at most 65 536 partitions assigned at once.
const SLOT_BITS: u32 = 16;
/// Where the caller's tag starts, and its width (7 bits).
const TAG_SHIFT: u32 = SEQ_BITS + SLOT_BITS + GEN_BITS;
const TAG_MASK: u8 = 0x7f;

/// One assignment of one partition: slot and generation, packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Assignment(u32);

impl Assignment {
    fn new(slot: usize, generation: u8) -> Self {
        Self(((generation as u32) << SLOT_BITS) | slot as u32)
    }

    fn slot(self) -> usize {
        (self.0 & ((1 << SLOT_BITS) - 1)) as usize
    }

    fn generation(self) -> u8 {
        (self.0 >> SLOT_BITS) as u8
    }
}

/// A taken record: its assignment, its sequence number (mod 2^33) and seven
/// spare bits for the caller (the produce kind and a reason). Fits a
/// `usize` on 64-bit targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Ticket {
    fn new(assignment: Assignment, seq: u64) -> Self {
        Self(((assignment.0 as u64) << SEQ_BITS) | (seq & SEQ_MASK))
    }

    /// The assignment the record was taken under.
    pub fn assignment(self) -> Assignment {
        Assignment(((self.0 >> SEQ_BITS) & ((1 << (SLOT_BITS + GEN_BITS)) - 1)) as u32)
    }

    fn seq(self) -> u64 {
        self.0 & SEQ_MASK
    }

    /// The ticket with six caller bits (0–63) attached.
    pub fn with_tag(self, tag: u8) -> u64 {
        self.0 | (u64::from(tag & TAG_MASK) << TAG_SHIFT)
    }

    /// Splits a word made by [`Ticket::with_tag`].
    pub fn from_tagged(word: u64) -> (Self, u8) {
        (
            Self(word & ((1 << TAG_SHIFT) - 1)),
            (word >> TAG_SHIFT) as u8 & TAG_MASK,
        )
    }

    /// The ticket as a plain word (a map key).
    pub fn word(self) -> u64 {
        self.0
    }
}

/// Pending offsets of one source partition.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// Taken offsets in ascending order, with the writes of theirs still
    /// unacknowledged (1 when taken, more when [held](Self::hold); 0: done)
    /// and their size (key and value bytes).
    pending: VecDeque<(i64, u8, u32)>,
    /// Key and value bytes of the records taken and not yet done.
    bytes: u64,
    /// Sequence number of `pending.front()`.
    front_seq: u64,
    /// One past the last taken offset.
    next: Option<i64>,
}

impl PartitionOffsets {
    /// Records that `offset` is being processed; returns its sequence number.
    /// Offsets must be taken in ascending order; a smaller or repeated offset
    /// is refused (None).
    #[cfg(test)]
    pub fn take(&mut self, offset: i64) -> Option<u64> {
        self.take_sized(offset, 0)
    }

    /// Records that `offset` is being processed, for a record of `bytes`
    /// key and value bytes, counted in [`PartitionOffsets::bytes`] until it
    /// is done; returns its sequence number. Offsets must be taken in
    /// ascending order; a smaller or repeated offset is refused (None).
    pub fn take_sized(&mut self, offset: i64, bytes: usize) -> Option<u64> {
        if self.next.is_some_and(|next| offset < next) {
            return None;
        }
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.bytes += u64::from(bytes);
        self.pending.push_back((offset, 1, bytes));
        self.next = Some(offset + 1);
        Some(self.front_seq + self.pending.len() as u64 - 1)
    }

    /// One more write for the record with sequence number `seq` must be
    /// acknowledged before it is done: a series occurrence writes its target
    /// record and the series' next occurrence from one source record, and
    /// its offset may be committed only when both are acknowledged. False
    /// (nothing held) when the record is done or unknown.
    pub fn hold(&mut self, seq: u64) -> bool {
        let index = (seq.wrapping_sub(self.front_seq) & SEQ_MASK) as usize;
        match self.pending.get_mut(index) {
            Some(entry) if entry.1 > 0 && entry.1 < u8::MAX => {
                entry.1 += 1;
                true
            }
            _ => false,
        }
    }

    /// Acknowledges one write of the record with sequence number `seq`
    /// (mod 2^33): it is delivered when none is outstanding. Unknown or done
    /// sequence numbers are ignored.
    pub fn done(&mut self, seq: u64) {
        let index = (seq.wrapping_sub(self.front_seq) & SEQ_MASK) as usize;
        if let Some(entry) = self.pending.get_mut(index) {
            if entry.1 > 0 {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.bytes -= u64::from(entry.2);
                }
            }
        }
        while self.pending.front().is_some_and(|&(_, left, _)| left == 0) {
            self.pending.pop_front();
            self.front_seq += 1;
        }
    }

    /// The offset to commit (the next record to read after a restart), or
    /// None when nothing was taken yet.
    pub fn commit_position(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(offset, _, _)) => Some(offset),
            None => self.next,
        }
    }

    /// The offset of the record with sequence number `seq`, while pending.
    pub fn offset_of(&self, seq: u64) -> Option<i64> {
        let index = (seq.wrapping_sub(self.front_seq) & SEQ_MASK) as usize;
        self.pending.get(index).map(|&(offset, _, _)| offset)
    }

    /// Records taken but not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Key and value bytes of the records taken but not yet delivered.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True once the record with sequence number `seq` was delivered (or
    /// never taken).
    pub fn is_done(&self, seq: u64) -> bool {
        let index = (seq.wrapping_sub(self.front_seq) & SEQ_MASK) as usize;
        self.pending
            .get(index)
            .is_none_or(|&(_, left, _)| left == 0)
    }
}

/// Offsets of every assigned source partition: taken by the consumer loop,
/// marked done from the producer's acknowledgements, committed by the loop
/// and on revoke.
#[derive(Debug, Default)]
pub struct Book {
    entries: Vec<Option<BookEntry>>,
    generations: Vec<u8>,
    free: Vec<usize>,
    ids: HashMap<(String, i32), Assignment>,
}

#[derive(Debug)]
struct BookEntry {
    topic: String,
    partition: i32,
    offsets: PartitionOffsets,
    stored: Option<i64>,
}

impl Book {
    /// Starts tracking a newly assigned partition.
    ///
    /// # Panics
    /// With more than 65 536 partitions assigned to one instance at once.
    pub fn register(&mut self, topic: &str, partition: i32) -> Assignment {
        if let Some(old) = self.ids.get(&(topic.to_owned(), partition)).copied() {
            self.release(old);
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.entries.push(None);
            self.generations.push(0);
            self.entries.len() - 1
        });
        assert!(
            slot < 1 << SLOT_BITS,
            "more than 65536 partitions assigned to one instance"
        );
        self.entries[slot] = Some(BookEntry {
            topic: topic.to_owned(),
            partition,
            offsets: PartitionOffsets::default(),
            stored: None,
        });
        let assignment = Assignment::new(slot, self.generations[slot]);
        self.ids.insert((topic.to_owned(), partition), assignment);
        assignment
    }

    fn release(&mut self, assignment: Assignment) -> Option<BookEntry> {
        let slot = assignment.slot();
        let entry = self.entries[slot].take()?;
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.free.push(slot);
        Some(entry)
    }

    /// True while `assignment` is current.
    pub fn is_live(&self, assignment: Assignment) -> bool {
        let slot = assignment.slot();
        self.entries.get(slot).is_some_and(Option::is_some)
            && self.generations[slot] == assignment.generation()
    }

    fn entry(&mut self, assignment: Assignment) -> Option<&mut BookEntry> {
        if !self.is_live(assignment) {
            return None;
        }
        self.entries[assignment.slot()].as_mut()
    }

    /// Takes `offset` (see [`PartitionOffsets::take`]); None for a revoked
    /// assignment or an offset already taken.
    #[cfg(test)]
    pub fn take(&mut self, assignment: Assignment, offset: i64) -> Option<Ticket> {
        self.take_sized(assignment, offset, 0)
    }

    /// Takes `offset` of `assignment` for a record of `bytes` key and value
    /// bytes, counted in [`Book::in_flight_bytes`] until acknowledged; None
    /// for a revoked assignment or an offset already taken.
    pub fn take_sized(
        &mut self,
        assignment: Assignment,
        offset: i64,
        bytes: usize,
    ) -> Option<Ticket> {
        let seq = self.entry(assignment)?.offsets.take_sized(offset, bytes)?;
        Some(Ticket::new(assignment, seq))
    }

    /// One more write to acknowledge for the ticket's record (see
    /// [`PartitionOffsets::hold`]); false for a revoked assignment or a
    /// record already done.
    pub fn hold(&mut self, ticket: Ticket) -> bool {
        self.entry(ticket.assignment())
            .is_some_and(|e| e.offsets.hold(ticket.seq()))
    }

    /// Acknowledges one write of the ticket's record (ignored for revoked
    /// assignments).
    pub fn done(&mut self, ticket: Ticket) {
        if let Some(e) = self.entry(ticket.assignment()) {
            e.offsets.done(ticket.seq());
        }
    }

    /// Stops tracking a revoked partition; returns its commit position.
    pub fn remove(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let assignment = self.ids.remove(&(topic.to_owned(), partition))?;
        self.release(assignment)?.offsets.commit_position()
    }

    /// Commit positions that moved since the last call, as
    /// (topic, partition, offset), marking them stored.
    pub fn unstored(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for e in self.entries.iter_mut().flatten() {
            let position = e.offsets.commit_position();
            if position.is_some() && position != e.stored {
                e.stored = position;
                out.push((e.topic.clone(), e.partition, position.unwrap_or_default()));
            }
        }
        out
    }

    /// Commit position of every assigned partition, as (topic, partition, offset).
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.entries
            .iter()
            .flatten()
            .filter_map(|e| Some((e.topic.clone(), e.partition, e.offsets.commit_position()?)))
            .collect()
    }

    /// Records taken but not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.entries
            .iter()
            .flatten()
            .map(|e| e.offsets.in_flight())
            .sum()
    }

    /// Key and value bytes of the records taken but not yet acknowledged,
    /// over all partitions: what the loop (retries, parked and overflow
    /// records, the write order) and librdkafka's produce queue hold of them.
    pub fn in_flight_bytes(&self) -> usize {
        let bytes: u64 = self
            .entries
            .iter()
            .flatten()
            .map(|e| e.offsets.bytes())
            .sum();
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

impl Book {
    /// Records of `assignment` taken but not yet acknowledged (0 when revoked).
    pub fn in_flight_of(&self, assignment: Assignment) -> usize {
        if !self.is_live(assignment) {
            return 0;
        }
        self.entries[assignment.slot()]
            .as_ref()
            .map_or(0, |e| e.offsets.in_flight())
    }

    /// True once the record of `ticket` (a [`Ticket::word`]) was delivered,
    /// or its partition revoked.
    pub fn is_done(&self, word: u64) -> bool {
        let ticket = Ticket(word);
        let assignment = ticket.assignment();
        if !self.is_live(assignment) {
            return true;
        }
        self.entries[assignment.slot()]
            .as_ref()
            .is_none_or(|e| e.offsets.is_done(ticket.seq()))
    }

    /// The source (partition, offset) of a pending record's ticket.
    pub fn source_of(&self, ticket: Ticket) -> Option<(i32, i64)> {
        let assignment = ticket.assignment();
        if !self.is_live(assignment) {
            return None;
        }
        let e = self.entries[assignment.slot()].as_ref()?;
        Some((e.partition, e.offsets.offset_of(ticket.seq())?))
    }
}

/// The book of one consumer loop plus the acknowledgements its producer's
/// thread reports. Only the loop's thread (which also runs the rebalance
/// callbacks) locks the book, so that lock is never contended; the
/// producer's thread appends to `acks`, which the loop swaps out in one go.
#[derive(Debug, Default)]
pub struct Ledger {
    book: Mutex<Book>,
    acks: Mutex<Vec<Ticket>>,
}

impl Ledger {
    /// Locks the book as it is (enough to take new offsets).
    pub fn book_unacked(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the book with every acknowledgement received so far applied.
    pub fn book(&self) -> MutexGuard<'_, Book> {
        let mut book = self.book_unacked();
        let acks = std::mem::take(&mut *self.acks.lock().unwrap_or_else(PoisonError::into_inner));
        for ticket in acks {
            book.done(ticket);
        }
        book
    }

    /// An acknowledgement from the producer's thread.
    pub fn acknowledge(&self, ticket: Ticket) {
        self.acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_held_record_is_done_only_when_every_write_is_acknowledged() {
        let mut p = PartitionOffsets::default();
        let a = p.take(7).unwrap();
        let b = p.take(8).unwrap();
        assert!(p.hold(a));
        p.done(b);
        p.done(a);
        assert_eq!(p.commit_position(), Some(7), "one write of 7 is still out");
        assert!(!p.is_done(a));
        p.done(a);
        assert_eq!(p.commit_position(), Some(9));
        assert!(!p.hold(a), "a done record cannot be held again");
    }

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.commit_position(), None);
        let seqs: Vec<u64> = (10..15).map(|o| p.take(o).unwrap()).collect();
        p.done(seqs[2]);
        p.done(seqs[1]);
        assert_eq!(p.commit_position(), Some(10));
        p.done(seqs[0]);
        assert_eq!(p.commit_position(), Some(13));
        p.done(seqs[3]);
        p.done(seqs[4]);
        assert_eq!(p.commit_position(), Some(15));
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.take(3), None);
    }

    #[test]
    fn in_flight_bytes_count_until_each_record_is_done_once() {
        let mut book = Book::default();
        let a = book.register("t", 0);
        let b = book.register("t", 1);
        let t1 = book.take_sized(a, 10, 900_000).unwrap();
        let t2 = book.take_sized(a, 11, 100).unwrap();
        let t3 = book.take_sized(b, 5, 50).unwrap();
        assert_eq!(book.in_flight_bytes(), 900_150);
        book.done(t2);
        book.done(t2);
        assert_eq!(
            book.in_flight_bytes(),
            900_050,
            "a repeated ack counts once"
        );
        book.done(t1);
        book.done(t3);
        assert_eq!(book.in_flight_bytes(), 0);
        book.take_sized(b, 6, 7).unwrap();
        book.remove("t", 1);
        assert_eq!(
            book.in_flight_bytes(),
            0,
            "a revoked partition holds nothing"
        );
    }

    #[test]
    fn a_new_assignment_ignores_acks_of_the_old_one() {
        let mut book = Book::default();
        let old = book.register("t", 0);
        let stale = book.take(old, 5).unwrap();
        let new = book.register("t", 0);
        assert!(!book.is_live(old));
        assert_eq!(new.slot(), old.slot(), "slots are reused");
        book.done(stale);
        let ticket = book.take(new, 5).unwrap();
        assert_eq!(book.unstored(), vec![("t".to_owned(), 0, 5)]);
        book.done(ticket);
        assert_eq!(book.unstored(), vec![("t".to_owned(), 0, 6)]);
        assert!(book.unstored().is_empty());
        assert_eq!(book.remove("t", 0), Some(6));
        assert!(!book.is_live(new));
    }

    #[test]
    fn tickets_carry_a_tag_and_wrap_their_sequence() {
        let mut p = PartitionOffsets {
            front_seq: SEQ_MASK - 1,
            ..Default::default()
        };
        let a = p.take(0).unwrap();
        let b = p.take(1).unwrap();
        let c = p.take(2).unwrap();
        let ticket = Ticket::new(Assignment::new(7, 3), c);
        let (back, tag) = Ticket::from_tagged(ticket.with_tag(45));
        assert_eq!((back, tag), (ticket, 45));
        assert_eq!(back.assignment(), Assignment::new(7, 3));
        p.done(back.seq());
        p.done(b & SEQ_MASK);
        assert_eq!(p.commit_position(), Some(0));
        p.done(a & SEQ_MASK);
        assert_eq!(p.commit_position(), Some(3));
    }

    proptest! {
        #[test]
        fn never_commits_past_an_undelivered_offset(
            n in 1_usize..100,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 1..100),
        ) {
            let mut p = PartitionOffsets::default();
            let seqs: Vec<u64> = (0..n as i64).map(|o| p.take(o).unwrap()).collect();
            let mut undelivered: Vec<i64> = (0..n as i64).collect();
            for idx in order {
                if undelivered.is_empty() { break; }
                let o = undelivered.remove(idx.index(undelivered.len()));
                p.done(seqs[o as usize]);
                let first_open = undelivered.iter().min().copied().unwrap_or(n as i64);
                prop_assert_eq!(p.commit_position(), Some(first_open));
            }
        }
    }
}
