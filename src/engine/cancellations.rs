//! The outstanding cancellations of one instance (the contract is in
//! [`crate::model::cancel`]) and the reader that fills them from the cancel
//! topic.
//!
//! Every instance reads the whole topic on a thread of its own
//! ([`reader`]; no consumer group: each needs every cancellation), from the
//! beginning at start-up — the service forwards nothing before it has
//! caught up, so a restart or a rebalance never forgets one — then follows
//! it. The loops look a record up just before they forward it or write it
//! to a tier; a record without an id costs nothing.
//!
//! Trust boundary: any principal that may write the cancel topic can cancel
//! any record with an `x-delay-id`, for any target. The service bounds what
//! such a writer can cost it: a cancellation's `until` is clamped to the
//! time it is read plus `wheel.max_delay` (no record published before then
//! can be due later), its `target` must be a valid topic name, its id at
//! most [`ID_MAX_BYTES`](crate::model::cancel::ID_MAX_BYTES), and at most `service.max_cancellations` are held —
//! beyond that, cancellations of new ids are refused and counted
//! (`kafka_delay_cancellations_refused_total`, an alert), never the old
//! ones dropped.

mod reader;

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use crate::model::cancel::{Cancel, EXPIRY_SLACK_MS};

pub use reader::{CancelReader, ReaderError};

/// What [`Cancellations::apply`] did with a record of the cancel topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A cancellation of an id not yet held.
    Added,
    /// The id's earlier cancellation was replaced (the latest wins).
    Replaced,
    /// A tombstone withdrew the id's cancellation (or there was none).
    Withdrawn,
    /// A cancellation of a new id, refused: the limit is reached.
    Refused,
}

/// The outstanding cancellations of one instance, by id, at most `limit`.
#[derive(Debug)]
pub struct Cancellations {
    by_id: RwLock<HashMap<Box<str>, Cancel>>,
    limit: usize,
}

impl Default for Cancellations {
    /// No limit (tests); the service uses [`Cancellations::with_limit`].
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl Cancellations {
    /// A registry holding at most `limit` cancellations.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            by_id: RwLock::default(),
            limit,
        }
    }

    /// True if a record with `id`, for `target`, published at
    /// `original_timestamp_ms`, is cancelled.
    pub fn cancels(&self, id: &str, target: &str, original_timestamp_ms: i64) -> bool {
        let map = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        map.get(id).is_some_and(|c| {
            original_timestamp_ms < c.before && c.target.as_deref().is_none_or(|t| t == target)
        })
    }

    /// Applies one record of the cancel topic (the latest per id wins). A
    /// cancellation of a new id is refused once `limit` are held; one of an
    /// id already held, and a tombstone, always apply.
    pub fn apply(&self, id: &str, cancel: Option<Cancel>) -> Applied {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        match cancel {
            Some(c) => {
                if let Some(held) = map.get_mut(id) {
                    *held = c;
                    Applied::Replaced
                } else if map.len() >= self.limit {
                    Applied::Refused
                } else {
                    map.insert(id.into(), c);
                    Applied::Added
                }
            }
            None => {
                map.remove(id);
                Applied::Withdrawn
            }
        }
    }

    /// Forgets cancellations that can no longer affect a record at
    /// `now_ms`; returns how many remain.
    pub fn expire(&self, now_ms: i64) -> usize {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, c| c.until.saturating_add(EXPIRY_SLACK_MS) >= now_ms);
        map.len()
    }

    /// The most cancellations held.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Outstanding cancellations.
    pub fn len(&self) -> usize {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when none is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancellation_covers_records_published_before_it_only() {
        let c = Cancellations::default();
        c.apply("order-42", Some(Cancel::of(1_000, 9_000, None)));
        assert!(c.cancels("order-42", "any", 999));
        assert!(
            !c.cancels("order-42", "any", 1_000),
            "a reschedule published after it"
        );
        assert!(!c.cancels("order-43", "any", 500));
    }

    #[test]
    fn a_target_narrows_a_cancellation() {
        let c = Cancellations::default();
        c.apply("x", Some(Cancel::of(1_000, 9_000, Some("orders"))));
        assert!(c.cancels("x", "orders", 10));
        assert!(!c.cancels("x", "billing", 10));
    }

    #[test]
    fn the_latest_record_per_id_wins_and_a_tombstone_withdraws() {
        let c = Cancellations::default();
        c.apply("x", Some(Cancel::of(1_000, 9_000, None)));
        c.apply("x", Some(Cancel::of(2_000, 9_000, None)));
        assert!(c.cancels("x", "t", 1_500));
        c.apply("x", None);
        assert!(!c.cancels("x", "t", 1_500));
        assert!(c.is_empty());
    }

    #[test]
    fn cancellations_expire_after_their_latest_due_time() {
        let c = Cancellations::default();
        c.apply("old", Some(Cancel::of(1_000, 5_000, None)));
        c.apply("new", Some(Cancel::of(1_000, 50_000_000, None)));
        assert_eq!(c.expire(5_000 + EXPIRY_SLACK_MS), 2);
        assert_eq!(c.expire(5_001 + EXPIRY_SLACK_MS), 1);
        assert!(!c.cancels("old", "t", 10));
        assert!(c.cancels("new", "t", 10));
    }

    #[test]
    fn until_is_clamped_to_the_maximum_delay_from_when_it_is_read() {
        let max_delay = 3_600_000;
        let forever = Cancel::of(1_000, i64::MAX, None).bounded(2_000, max_delay);
        assert_eq!(forever.until, 2_000 + max_delay);
        let near = Cancel::of(1_000, 5_000, None).bounded(2_000, max_delay);
        assert_eq!(near.until, 5_000, "a near until is kept");
        let future_before = Cancel::of(i64::MAX - 1, i64::MAX, None).bounded(2_000, max_delay);
        assert!(future_before.until >= future_before.before);
        let c = Cancellations::default();
        c.apply("x", Some(forever));
        assert_eq!(c.expire(2_000 + max_delay + EXPIRY_SLACK_MS + 1), 0);
    }

    #[test]
    fn beyond_the_limit_new_ids_are_refused_and_old_ones_kept() {
        let c = Cancellations::with_limit(2);
        assert_eq!(c.apply("a", Some(Cancel::of(10, 20, None))), Applied::Added);
        assert_eq!(c.apply("b", Some(Cancel::of(10, 20, None))), Applied::Added);
        assert_eq!(
            c.apply("c", Some(Cancel::of(10, 20, None))),
            Applied::Refused
        );
        assert!(c.cancels("a", "t", 5) && c.cancels("b", "t", 5));
        assert!(!c.cancels("c", "t", 5));
        assert_eq!(
            c.apply("a", Some(Cancel::of(30, 40, None))),
            Applied::Replaced
        );
        assert!(c.cancels("a", "t", 25), "an held id is still updated");
        assert_eq!(c.apply("b", None), Applied::Withdrawn);
        assert_eq!(c.apply("c", Some(Cancel::of(10, 20, None))), Applied::Added);
        assert_eq!(c.len(), 2);
    }
}
