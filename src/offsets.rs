//! Offset tracking for at-least-once delivery.
//!
//! A source offset may be committed only when every record at or below it has
//! been delivered and acknowledged by the broker (DESIGN §3). Records of one
//! partition are taken in offset order and acknowledged in any order; the
//! commit position is the first offset still pending, or one past the last
//! taken offset when nothing is pending — the contiguous acked prefix, as in
//! rust-rdkafka's `at_least_once` example.

use std::collections::{HashMap, VecDeque};

/// Pending offsets of one source partition.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// Taken offsets in ascending order, with their done flag.
    pending: VecDeque<(i64, bool)>,
    /// One past the last taken offset.
    next: Option<i64>,
}

impl PartitionOffsets {
    /// Records that `offset` is being processed. Offsets must be taken in
    /// ascending order; a smaller or repeated offset is ignored (returns false).
    pub fn take(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.push_back((offset, false));
        self.next = Some(offset + 1);
        true
    }

    /// Marks `offset` as delivered. Unknown offsets are ignored.
    pub fn done(&mut self, offset: i64) {
        // Acknowledgements mostly arrive in offset order: the head first.
        match self.pending.front_mut() {
            Some(front) if front.0 == offset => front.1 = true,
            _ => {
                if let Ok(i) = self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
                    self.pending[i].1 = true;
                }
            }
        }
        while self.pending.front().is_some_and(|&(_, done)| done) {
            self.pending.pop_front();
        }
    }

    /// The offset to commit (the next record to read after a restart), or
    /// None when nothing was taken yet.
    pub fn commit_position(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.next,
        }
    }

    /// Records taken but not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// Offsets of every assigned source partition, shared by the consumer loop
/// (take), the producer's delivery callback (done) and the rebalance
/// callback (commit on revoke).
///
/// Each assignment of a partition gets a fresh id, so a late acknowledgement
/// from a previous assignment can never mark an offset of the current one.
#[derive(Debug, Default)]
pub struct Book {
    entries: Vec<Option<BookEntry>>,
    ids: HashMap<(String, i32), u32>,
}

#[derive(Debug)]
struct BookEntry {
    topic: String,
    partition: i32,
    offsets: PartitionOffsets,
    stored: Option<i64>,
}

impl Book {
    /// Starts tracking a newly assigned partition; returns its id.
    pub fn register(&mut self, topic: &str, partition: i32) -> u32 {
        let id = self.entries.len() as u32;
        self.entries.push(Some(BookEntry {
            topic: topic.to_owned(),
            partition,
            offsets: PartitionOffsets::default(),
            stored: None,
        }));
        if let Some(old) = self.ids.insert((topic.to_owned(), partition), id) {
            self.entries[old as usize] = None;
        }
        id
    }

    /// The id of an assigned partition.
    pub fn id(&self, topic: &str, partition: i32) -> Option<u32> {
        self.ids.get(&(topic.to_owned(), partition)).copied()
    }

    /// True while the assignment `id` is current.
    pub fn is_live(&self, id: u32) -> bool {
        self.entries.get(id as usize).is_some_and(Option::is_some)
    }

    fn entry(&mut self, id: u32) -> Option<&mut BookEntry> {
        self.entries.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// See [`PartitionOffsets::take`]; false for a revoked assignment.
    pub fn take(&mut self, id: u32, offset: i64) -> bool {
        self.entry(id).is_some_and(|e| e.offsets.take(offset))
    }

    /// See [`PartitionOffsets::done`].
    pub fn done(&mut self, id: u32, offset: i64) {
        if let Some(e) = self.entry(id) {
            e.offsets.done(offset);
        }
    }

    /// Stops tracking a revoked partition; returns its commit position.
    pub fn remove(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let id = self.ids.remove(&(topic.to_owned(), partition))?;
        self.entries[id as usize]
            .take()
            .and_then(|e| e.offsets.commit_position())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.commit_position(), None);
        for o in 10..15 {
            assert!(p.take(o));
        }
        p.done(12);
        p.done(11);
        assert_eq!(p.commit_position(), Some(10));
        p.done(10);
        assert_eq!(p.commit_position(), Some(13));
        p.done(13);
        p.done(14);
        assert_eq!(p.commit_position(), Some(15));
        assert_eq!(p.in_flight(), 0);
        assert!(!p.take(3));
    }

    #[test]
    fn a_new_assignment_ignores_acks_of_the_old_one() {
        let mut book = Book::default();
        let old = book.register("t", 0);
        assert!(book.take(old, 5));
        let new = book.register("t", 0);
        assert!(!book.is_live(old));
        book.done(old, 5);
        assert!(book.take(new, 5));
        assert_eq!(book.unstored(), vec![("t".to_owned(), 0, 5)]);
        book.done(new, 5);
        assert_eq!(book.unstored(), vec![("t".to_owned(), 0, 6)]);
        assert!(book.unstored().is_empty());
        assert_eq!(book.remove("t", 0), Some(6));
        assert_eq!(book.id("t", 0), None);
    }

    proptest! {
        #[test]
        fn never_commits_past_an_undelivered_offset(
            n in 1_usize..100,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 1..100),
        ) {
            let mut p = PartitionOffsets::default();
            for o in 0..n as i64 {
                p.take(o);
            }
            let mut undelivered: Vec<i64> = (0..n as i64).collect();
            for idx in order {
                if undelivered.is_empty() { break; }
                let o = undelivered.remove(idx.index(undelivered.len()));
                p.done(o);
                let first_open = undelivered.iter().min().copied().unwrap_or(n as i64);
                prop_assert_eq!(p.commit_position(), Some(first_open));
            }
        }
    }
}
