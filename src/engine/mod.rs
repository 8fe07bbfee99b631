//! The consumer loop: one consumer group over one topic — the ingress or a
//! tier — on its own thread. An instance runs one loop per topic
//! ([`crate::service`]), so that the group of each tier spreads that tier's
//! partitions evenly over the instances.
//!
//! Every tier partition is paused until its head record's release time,
//! then resumed and drained: each released record is re-routed by
//! [`TierTable::route`](crate::wheel::TierTable::route) — to a lower tier, the due-soon timer, or its
//! target — until the head belongs to a later turn. A drained partition
//! stays resumed for `wheel.grace`, then sleeps until its slot's next turn,
//! or until the watcher sees a record appended to it. Ingress partitions
//! are paused only for backpressure.
//!
//! The loop never waits on the network: polling, timers, pause/resume and
//! offset marks run here; produces are queued in librdkafka; commits and
//! offset queries run on the [`round_trips`] threads; target
//! look-ups on the [`targets`](crate::kafka::targets) thread. Per record the work
//! is header parsing and one produce call — no future, no task.
//!
//! One file per job (docs/architecture.md draws them):
//!
//! * [`driver`] — the loop itself: poll, housekeeping, backpressure, gauges,
//!   shutdown; and building a loop's clients and state;
//! * [`ingress`] — records of the ingress topic: parse, check the target,
//!   route; records parked on a target look-up;
//! * [`tier`] — records of a tier: hold until the release, wake, re-route;
//!   [`retired`] — records of a tier of an earlier layout: re-routed at
//!   once through the current wheel;
//!   [`reroute`] — what a tier may hold, failed tier writes routed again;
//! * [`records`] — what both share: routing, the due-soon timer's
//!   deliveries, cancellations, failed writes, rebalance events;
//! * [`guarantee`] — at-least-once (commit the acknowledged prefix) or
//!   exactly-once ([`exactly_once`]: transactions, abort and read again);
//! * [`partitions`] — the partition table, the only caller of pause/resume;
//!   [`timer`] — the due-soon min-heap; [`flow`] — backpressure caps;
//!   [`rebalance`] — the consumer group's callbacks; [`round_trips`] — broker
//!   round trips off the loop's thread; [`cancellations`] — the registry and
//!   the cancel topic's reader.

pub mod cancellations;
mod driver;
mod exactly_once;
mod flow;
mod guarantee;
mod ingress;
pub(crate) mod partitions;
mod rebalance;
mod records;
mod reroute;
mod retired;
pub(crate) mod round_trips;
mod series;
mod tier;
pub(crate) mod timer;

use std::sync::Arc;

use rdkafka::error::KafkaError;
use thiserror::Error;

use crate::config::ConfigError;
use crate::kafka::layout::RetiredTier;
use crate::ops::health::Health;
use crate::ops::metrics::{Metrics, Source};

pub(crate) use driver::ConsumerLoop;
pub(crate) use flow::Limits;

/// Why the service could not start or stopped.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka: {}", crate::kafka::describe(.0))]
    Kafka(#[from] KafkaError),
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("delivery.mode = \"exactly_once\" needs a broker with Kafka transactions; the {topic} producer could not register: {}. Fix: use a broker that supports transactions, or set delivery.mode = \"at_least_once\"", crate::kafka::describe(.error))]
    Transactions {
        topic: String,
        #[source]
        error: KafkaError,
    },
    #[error("the {topic} producer failed fatally ({error}); exiting so that the orchestrator restarts the instance (nothing unacknowledged was committed)")]
    FatalProducer { topic: String, error: String },
}

/// Which topic a loop consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The ingress topic.
    Ingress,
    /// A tier topic, by index (finest first).
    Tier(usize),
    /// A tier topic of an earlier wheel layout, by index into
    /// [`Shared::retired`]: drained into the current wheel.
    Retired(usize),
}

impl Role {
    fn source(self) -> Source {
        match self {
            Role::Ingress => Source::Ingress,
            Role::Tier(t) => Source::Tier(t),
            Role::Retired(_) => Source::Retired,
        }
    }
}

/// What every loop of an instance shares.
#[derive(Clone)]
pub(crate) struct Shared {
    /// The instance's metrics.
    pub metrics: Arc<Metrics>,
    /// Outstanding cancellations, read from the cancel topic.
    pub cancellations: Arc<cancellations::Cancellations>,
    /// Series occurrences handled lately: twins are dropped.
    pub recent_occurrences: Arc<series::RecentOccurrences>,
    /// Liveness and readiness, one entry per loop.
    pub health: Arc<Health>,
    /// Backpressure caps over all loops.
    pub limits: Arc<Limits>,
    /// Tier topics of earlier layouts that this instance drains.
    pub retired: Arc<Vec<RetiredTier>>,
}
