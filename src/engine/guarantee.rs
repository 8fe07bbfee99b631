//! The delivery guarantee a loop keeps (`delivery.mode`), as one value
//! rather than checks of an optional write order:
//!
//! * **at-least-once** — the acknowledged prefix of every partition is
//!   committed every `service.commit_interval` (commit after the broker
//!   acknowledged every record below the offset; a crash re-reads, never
//!   loses);
//! * **exactly-once** — each partition's records are written in offset
//!   order ([`Order`]), and writes and source offsets commit in one Kafka
//!   transaction ([`super::exactly_once`]); an abort reads the partitions
//!   again.

use std::time::{Duration, Instant};

use super::ConsumerLoop;
use crate::config::Settings;
use crate::delivery::exactly_once::order::Order;

/// How a loop commits what it has read.
pub(super) enum Guarantee {
    /// Commits the acknowledged prefix every `interval`.
    AtLeastOnce {
        /// `service.commit_interval`.
        interval: Duration,
        /// When offsets were last handed to the committer.
        last_commit: Instant,
    },
    /// Writes in offset order, committed with the offsets in a transaction.
    ExactlyOnce {
        /// Per-partition write order and the records waiting behind it.
        order: Order,
        /// Aborts in a row (back-off before reading again).
        aborts: u32,
    },
}

impl Guarantee {
    /// The guarantee `delivery.mode` asks for.
    pub(super) fn of(settings: &Settings) -> Self {
        if settings.delivery.exactly_once() {
            Self::ExactlyOnce {
                order: Order::default(),
                aborts: 0,
            }
        } else {
            Self::AtLeastOnce {
                interval: *settings.service.commit_interval,
                last_commit: Instant::now(),
            }
        }
    }

    /// True in exactly-once mode.
    pub(super) fn is_exactly_once(&self) -> bool {
        matches!(self, Self::ExactlyOnce { .. })
    }

    /// The write order (exactly-once mode only).
    pub(super) fn order(&self) -> Option<&Order> {
        match self {
            Self::ExactlyOnce { order, .. } => Some(order),
            Self::AtLeastOnce { .. } => None,
        }
    }

    /// The write order, to change (exactly-once mode only).
    pub(super) fn order_mut(&mut self) -> Option<&mut Order> {
        match self {
            Self::ExactlyOnce { order, .. } => Some(order),
            Self::AtLeastOnce { .. } => None,
        }
    }
}

impl ConsumerLoop {
    /// Once per loop turn: commits what the guarantee allows — the open
    /// transaction when it is due, or the acknowledged prefix when the
    /// commit interval has passed.
    pub(super) fn settle(&mut self) {
        match &mut self.guarantee {
            Guarantee::ExactlyOnce { .. } => self.transact(false),
            Guarantee::AtLeastOnce {
                interval,
                last_commit,
            } => {
                if last_commit.elapsed() >= *interval {
                    *last_commit = Instant::now();
                    self.commit();
                }
            }
        }
    }
}
