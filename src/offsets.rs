//! Offset tracking for at-least-once delivery.
//!
//! A source offset may be committed only when every record at or below it has
//! been delivered and acknowledged by the broker (DESIGN §3). Records of one
//! partition are taken in offset order and acknowledged in any order; the
//! commit position is the first offset still pending, or one past the last
//! taken offset when nothing is pending — the contiguous acked prefix, as in
//! rust-rdkafka's `at_least_once` example.

use std::collections::VecDeque;

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
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            self.pending[i].1 = true;
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
