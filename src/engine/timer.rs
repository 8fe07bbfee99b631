//! The due-soon timer: a min-heap of records due within the due-soon window,
//! fired at their exact due time.
//!
//! Ordered by (due time, insertion sequence): records with equal due times
//! fire in the order they were scheduled, which is source-offset order for
//! one source partition (docs/architecture.md, "Ordering"). Memory is bounded by the
//! due-soon window, not by the number of pending records.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A min-heap of `T` keyed by due time (epoch ms).
#[derive(Debug)]
pub struct Timer<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
}

#[derive(Debug)]
struct Entry<T> {
    due_ms: i64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

impl<T> Default for Timer<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> Timer<T> {
    /// Schedules `item` at `due_ms` (epoch ms).
    pub fn schedule(&mut self, due_ms: i64, item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            due_ms,
            seq: self.seq,
            item,
        }));
    }

    /// The earliest due time, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse(e)| e.due_ms)
    }

    /// Removes and returns the earliest item if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<(i64, T)> {
        if self.next_due()? > now_ms {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.due_ms, e.item))
    }

    /// Drops every item for which `keep` is false (partitions revoked).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|Reverse(e)| keep(&e.item));
    }

    /// Number of scheduled items.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_nothing_before_due() {
        let mut timer = Timer::default();
        timer.schedule(100, "a");
        assert_eq!(timer.pop_due(99), None);
        assert_eq!(timer.pop_due(100), Some((100, "a")));
        assert!(timer.is_empty());
    }

    #[test]
    fn retain_drops_revoked_items() {
        let mut timer = Timer::default();
        timer.schedule(5, 1);
        timer.schedule(6, 2);
        timer.retain(|&p| p != 1);
        assert_eq!(timer.len(), 1);
        assert_eq!(timer.pop_due(10), Some((6, 2)));
    }

    proptest! {
        #[test]
        fn fires_in_due_then_insertion_order(dues in proptest::collection::vec(0_i64..50, 0..200)) {
            let mut timer = Timer::default();
            for (i, &due) in dues.iter().enumerate() {
                timer.schedule(due, i);
            }
            let mut fired = Vec::new();
            for now in 0..50 {
                while let Some((due, i)) = timer.pop_due(now) {
                    prop_assert!(due <= now);
                    fired.push((due, i));
                }
            }
            let mut expected: Vec<(i64, usize)> = dues.iter().copied().zip(0..).collect();
            expected.sort();
            prop_assert_eq!(fired, expected);
        }
    }
}
